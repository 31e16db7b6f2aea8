import Testing
@testable import BallonetWire

/// SplitMix64: a seeded generator, so every property test is reproducible from its seed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SeededGenerator {
    /// Values skewed toward the edges, where encoders break: 0, 1, powers of two, maxima.
    mutating func edgy(below limit: UInt64) -> UInt64 {
        switch UInt64.random(in: 0..<6, using: &self) {
        case 0: return 0
        case 1: return Swift.min(1, limit - 1)
        case 2: return limit - 1
        case 3: return Swift.min(UInt64(1) << UInt64.random(in: 0..<63, using: &self), limit - 1)
        default: return UInt64.random(in: 0..<limit, using: &self)
        }
    }

    mutating func any64() -> UInt64 { edgy(below: .max) }

    mutating func text(maxBytes: Int = WireLimits.maxTextBytes) -> String {
        let alphabet = Array("abcXYZ 0.1-_/é€😀\n")
        var result = ""
        while true {
            let next = String(alphabet[Int.random(in: 0..<alphabet.count, using: &self)])
            if result.utf8.count + next.utf8.count > maxBytes || Int.random(in: 0..<20, using: &self) == 0 { return result }
            result += next
        }
    }

    mutating func rangeList(maxRanges: Int = 300) -> PFNRangeList {
        let count = Int.random(in: 1...maxRanges, using: &self)
        var ranges: [PFNRange] = []
        var cursor = edgy(below: WireLimits.pfnLimit / 2)
        for _ in 0..<count {
            let gap = UInt64.random(in: 1...(1 << UInt64.random(in: 0..<20, using: &self)), using: &self)
            let length = UInt64.random(in: 1...(1 << UInt64.random(in: 0..<12, using: &self)), using: &self)
            let start = cursor + (ranges.isEmpty ? 0 : gap)
            guard start + length <= WireLimits.pfnLimit else { break }
            ranges.append(PFNRange(start: start, count: length))
            cursor = start + length
        }
        return try! PFNRangeList(validating: ranges)
    }

    mutating func message() -> Message {
        switch MessageType.allCases.randomElement(using: &self)! {
        case .hello:
            let minVersion = UInt8(truncatingIfNeeded: edgy(below: 256))
            return .hello(Hello(role: Bool.random(using: &self) ? .guest : .host, minVersion: minVersion,
                                maxVersion: UInt8.random(in: minVersion...255, using: &self),
                                sessionID: Swift.max(1, any64()), capabilities: Capabilities(rawValue: any64()),
                                softwareVersion: text(maxBytes: 64),
                                balloonPages: edgy(below: WireLimits.pfnLimit + 1)))
        case .setTarget:
            return .setTarget(SetTarget(balloonPages: edgy(below: WireLimits.pfnLimit + 1)))
        case .inflateReport:
            return .inflateReport(InflateReport(hostSessionID: any64(), batchID: any64(),
                                                pageOrder: Bool.random(using: &self) ? 0 : 9,
                                                balloonPagesAfter: edgy(below: WireLimits.pfnLimit + 1),
                                                ranges: rangeList()))
        case .reclaimAck:
            return .reclaimAck(ReclaimAck(hostSessionID: any64(), batchID: any64(), reclaimedPages: any64()))
        case .reclaimDeclined:
            return .reclaimDeclined(ReclaimDeclined(hostSessionID: any64(), batchID: any64(),
                                                    reason: DeclineReason(rawValue: UInt8.random(in: 0...255, using: &self))))
        case .deflateReport:
            return .deflateReport(DeflateReport(reason: DeflateReason(rawValue: UInt8.random(in: 0...255, using: &self)),
                                                balloonPagesAfter: edgy(below: WireLimits.pfnLimit + 1),
                                                ranges: rangeList()))
        case .statsSample:
            var keys = Set<UInt16>()
            let count = Int.random(in: 0...40, using: &self)
            while keys.count < count { keys.insert(UInt16.random(in: 0...UInt16.max, using: &self)) }
            return .statsSample(StatsSample(sequence: any64(), guestMillis: any64(),
                                            periodMillis: UInt32(truncatingIfNeeded: any64()),
                                            entries: keys.sorted().map { StatEntry(StatKey(rawValue: $0), any64()) }))
        case .error:
            return .error(ErrorReport(code: ErrorCode(rawValue: UInt16.random(in: 0...UInt16.max, using: &self)),
                                      message: text()))
        case .ping:
            return .ping(Ping(nonce: any64()))
        case .pong:
            return .pong(Pong(nonce: any64()))
        case .goodbye:
            return .goodbye(Goodbye(reason: GoodbyeReason(rawValue: UInt8.random(in: 0...255, using: &self)), message: text()))
        }
    }
}

/// Decodes `bytes` fed in the chunk sizes `chunks` returns, then ends the stream.
func decode(_ bytes: [UInt8], chunks: (inout SeededGenerator) -> Int = { _ in .max }, seed: UInt64 = 0) -> [DecodeEvent] {
    var decoder = FrameDecoder()
    var generator = SeededGenerator(seed: seed)
    var events: [DecodeEvent] = []
    var offset = 0
    while offset < bytes.count {
        let size = Swift.min(Swift.max(1, chunks(&generator)), bytes.count - offset)
        events += decoder.feed(bytes[offset..<offset + size])
        #expect(decoder.bufferedByteCount <= WireLimits.maxFrameLength)
        offset += size
    }
    events += decoder.finish()
    return events
}

func frame(_ message: Message, id: UInt32 = 0, version: UInt8 = WireLimits.currentProtocolVersion,
           extensions: [WireExtension] = []) -> [UInt8] {
    try! FrameEncoder.encode(message, requestID: id, version: version, extensions: extensions)
}

/// A frame with any type byte and payload, with correct checksums: for payloads the encoder refuses to write.
func rawFrame(type: UInt8, payload: [UInt8], id: UInt32 = 0, version: UInt8 = WireLimits.currentProtocolVersion,
              announcedLength: UInt32? = nil) -> [UInt8] {
    var w = ByteWriter()
    w.bytes = FrameHeader.magic
    w.u8(version)
    w.u8(type)
    w.u16(0)
    w.u32(id)
    w.u32(announcedLength ?? UInt32(payload.count))
    w.u32(CRC32C.checksum(w.bytes))
    w.u32(CRC32C.checksum(payload))
    return w.bytes + payload
}

let ping7 = Message.ping(Ping(nonce: 7))
let goodFrameEvent = DecodeEvent.frame(Envelope(requestID: 99, message: ping7))
let goodFrame = frame(ping7, id: 99)
