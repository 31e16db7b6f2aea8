/// A frame as decoded: the message and the header fields a session needs.
public struct Envelope: Hashable, Sendable {
    public var version: UInt8
    public var requestID: UInt32
    public var message: Message

    public init(version: UInt8 = WireLimits.currentProtocolVersion, requestID: UInt32, message: Message) {
        self.version = version
        self.requestID = requestID
        self.message = message
    }
}

/// What the decoder yields, in stream order.
public enum DecodeEvent: Hashable, Sendable {
    case frame(Envelope)
    case error(WireError)
}

/// What a decoder has seen, for logs and metrics.
public struct DecoderStatistics: Hashable, Sendable {
    public var bytesReceived: UInt64 = 0
    public var framesDecoded: UInt64 = 0
    /// Bytes thrown away while resynchronising (garbage, corrupt or truncated frames).
    public var bytesDiscarded: UInt64 = 0
    public var errors: [WireErrorKind: UInt64] = [:]

    public var errorCount: UInt64 { errors.values.reduce(0, +) }
}

/// Incremental frame decoder: feed it bytes as they arrive, in chunks of any size; it calls back with
/// each frame or error in stream order, and buffers at most one frame (`WireLimits.maxFrameLength`).
///
/// It never traps on any input. After any error it resynchronises: it scans for the next magic and
/// trusts a header only when the header's own CRC32C matches, so a corrupt length can neither make it
/// wait forever for bytes that never come nor swallow the frames behind it. Errors are reported once per
/// fault, not once per skipped byte, and the same stream gives the same events however it is chunked.
public struct FrameDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var parser = Parser()

    public init() {
        buffer.reserveCapacity(256)
    }

    public var statistics: DecoderStatistics { parser.statistics }

    /// Bytes held while waiting for the rest of a frame.
    public var bufferedByteCount: Int { buffer.count }

    /// Feeds bytes; calls `handle` for each event they complete.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ handle: (DecodeEvent) -> Void) {
        parser.statistics.bytesReceived += UInt64(bytes.count)
        var input = bytes[...]
        while !input.isEmpty {
            if buffer.isEmpty {
                // Fast path: parse straight from the caller's bytes, keep only an incomplete tail.
                let consumed = parser.parse(UnsafeRawBufferPointer(rebasing: input), atEnd: false, handle)
                buffer.append(contentsOf: input[(input.startIndex + consumed)...])
                return
            }
            let take = min(input.count, WireLimits.maxFrameLength - buffer.count)
            buffer.append(contentsOf: input.prefix(take))
            input = input.dropFirst(take)
            let consumed = buffer.withUnsafeBytes { parser.parse($0, atEnd: false, handle) }
            buffer.removeFirst(consumed)
        }
    }

    /// Feeds bytes from any collection; returns the events they complete.
    public mutating func feed(_ bytes: some Collection<UInt8>) -> [DecodeEvent] {
        var events: [DecodeEvent] = []
        if bytes.withContiguousStorageIfAvailable({ feed(UnsafeRawBufferPointer($0)) { events.append($0) } }) == nil {
            Array(bytes).withUnsafeBytes { feed($0) { events.append($0) } }
        }
        return events
    }

    /// The stream ended (the connection closed). An incomplete frame is reported as truncated and any
    /// whole frames buffered behind its start are still decoded. The decoder is then ready for a new stream.
    public mutating func finish(_ handle: (DecodeEvent) -> Void) {
        abandonPartialFrame(handle)
        parser.resynchronising = false
    }

    /// The same as `finish`, but the stream goes on: what a session calls when a frame has been
    /// incomplete for too long (a writer died mid-frame and a new one started), so that the frames
    /// behind it are not held hostage by a length that will never be met.
    public mutating func abandonPartialFrame(_ handle: (DecodeEvent) -> Void) {
        let consumed = buffer.withUnsafeBytes { parser.parse($0, atEnd: true, handle) }
        precondition(consumed == buffer.count, "a parse at the end of the stream consumes everything")
        buffer.removeAll(keepingCapacity: true)
    }

    /// Convenience for `finish(_:)` that returns the events.
    public mutating func finish() -> [DecodeEvent] {
        var events: [DecodeEvent] = []
        finish { events.append($0) }
        return events
    }
}

/// The decoding state machine, apart from the buffer so that it can parse the buffer it lives beside.
private struct Parser: Sendable {
    /// True after an error, until a header whose CRC matches is found: faults are reported once.
    var resynchronising = false
    var statistics = DecoderStatistics()

    private mutating func report(_ error: WireError, _ handle: (DecodeEvent) -> Void) {
        statistics.errors[error.kind, default: 0] += 1
        handle(.error(error))
    }

    private mutating func discard(_ count: Int) {
        statistics.bytesDiscarded += UInt64(count)
    }

    /// Parses as much of `region` as it can and returns how many bytes it consumed. Unless `atEnd`,
    /// an incomplete frame at the end is left unconsumed; with `atEnd` everything is consumed.
    mutating func parse(_ region: UnsafeRawBufferPointer, atEnd: Bool, _ handle: (DecodeEvent) -> Void) -> Int {
        var position = 0
        while position < region.count {
            let available = region.count - position

            // 1. A frame starts with the magic; anything else is skipped up to the next magic.
            let candidate = Self.nextMagicCandidate(in: region, from: position)
            if candidate != position {
                if !resynchronising {
                    resynchronising = true
                    report(.badMagic, handle)
                }
                discard(candidate - position)
                position = candidate
                continue
            }

            // 2. The header, once whole, must match its own checksum before its length is believed.
            guard available >= WireLimits.headerLength else {
                guard atEnd else { return position }
                if !resynchronising && available >= FrameHeader.magic.count {
                    report(.truncatedFrame(expected: WireLimits.headerLength, received: available), handle)
                }
                discard(available)
                return region.count
            }
            guard Self.headerChecksumMatches(region, at: position) else {
                if !resynchronising {
                    resynchronising = true
                    report(.badHeaderChecksum, handle)
                }
                discard(1)
                position += 1
                continue
            }
            resynchronising = false

            let version = region[position + FrameHeader.versionOffset]
            let typeByte = region[position + FrameHeader.typeOffset]
            let requestID = Self.u32(region, position + FrameHeader.requestIDOffset)
            let length = Self.u32(region, position + FrameHeader.lengthOffset)
            guard length <= WireLimits.maxPayloadLength else {
                report(.oversizeFrame(length: length), handle)
                resynchronising = true
                discard(1)
                position += 1
                continue
            }

            // 3. The payload, once whole, must match the header's payload checksum.
            let frameLength = WireLimits.headerLength + Int(length)
            guard available >= frameLength else {
                guard atEnd else { return position }
                // The stream ended inside this frame: report it, then decode what sound frames follow it.
                let next = Self.firstSoundHeader(in: region, from: position + WireLimits.headerLength,
                                                 to: region.count) ?? region.count
                report(.truncatedFrame(expected: frameLength, received: next - position), handle)
                resynchronising = true
                discard(next - position)
                position = next
                continue
            }
            let payload = UnsafeRawBufferPointer(rebasing: region[(position + WireLimits.headerLength)..<(position + frameLength)])
            guard CRC32C.checksum(payload) == Self.u32(region, position + FrameHeader.payloadChecksumOffset) else {
                // A sound header inside the payload means this frame was cut short and another began.
                if let next = Self.firstSoundHeader(in: region, from: position + WireLimits.headerLength,
                                                    to: position + frameLength) {
                    report(.truncatedFrame(expected: frameLength, received: next - position), handle)
                    discard(next - position)
                    position = next
                } else {
                    report(.badPayloadChecksum(type: typeByte, requestID: requestID), handle)
                    resynchronising = true
                    discard(1)
                    position += 1
                }
                continue
            }
            position += frameLength

            // 4. A sound frame: from here on its boundaries are certain, so any fault skips it whole.
            guard WireLimits.supportedProtocolVersions.contains(version) else {
                report(.unsupportedVersion(version), handle)
                discard(frameLength)
                continue
            }
            guard let type = MessageType(rawValue: typeByte) else {
                report(.unknownType(typeByte, requestID: requestID), handle)
                discard(frameLength)
                continue
            }
            var reader = ByteReader(payload)
            do {
                let message = try Message.decodePayload(type: type, from: &reader)
                statistics.framesDecoded += 1
                handle(.frame(Envelope(version: version, requestID: requestID, message: message)))
            } catch {
                report(.malformedPayload(type: type, requestID: requestID, error), handle)
                discard(frameLength)
            }
        }
        return position
    }

    /// The first index at or after `start` where the magic begins, or where a prefix of it runs to the
    /// end of `region` (more bytes may complete it); `region.count` if neither.
    private static func nextMagicCandidate(in region: UnsafeRawBufferPointer, from start: Int) -> Int {
        let magic = FrameHeader.magic
        var index = start
        while index < region.count {
            if region[index] == magic[0] {
                let available = min(magic.count, region.count - index)
                var matches = true
                for offset in 1..<available where region[index + offset] != magic[offset] {
                    matches = false
                    break
                }
                if matches { return index }
            }
            index += 1
        }
        return region.count
    }

    private static func headerChecksumMatches(_ region: UnsafeRawBufferPointer, at position: Int) -> Bool {
        let covered = UnsafeRawBufferPointer(rebasing: region[position..<(position + FrameHeader.headerChecksumOffset)])
        return CRC32C.checksum(covered) == u32(region, position + FrameHeader.headerChecksumOffset)
    }

    /// The first index at or after `start` where a header with a matching checksum lies wholly before
    /// `end`. Only whole headers count, so the answer depends on the bytes up to `end` alone, never on
    /// how many more happen to be buffered: that keeps decoding independent of chunking.
    private static func firstSoundHeader(in region: UnsafeRawBufferPointer, from start: Int, to end: Int) -> Int? {
        var index = start
        while index + WireLimits.headerLength <= end {
            index = nextMagicCandidate(in: region, from: index)
            guard index + WireLimits.headerLength <= end else { return nil }
            if headerChecksumMatches(region, at: index) { return index }
            index += 1
        }
        return nil
    }

    private static func u32(_ region: UnsafeRawBufferPointer, _ offset: Int) -> UInt32 {
        UInt32(littleEndian: region.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
}
