import Testing
@testable import BallonetWire

/// The decoder over streams: chunking does not matter, malformed input gives its typed error, and the
/// next good frame still decodes.
@Suite struct DecoderTests {
    static func stream(seed: UInt64, frames: Int) -> (bytes: [UInt8], events: [DecodeEvent]) {
        var generator = SeededGenerator(seed: seed)
        var bytes: [UInt8] = []
        var events: [DecodeEvent] = []
        for id in 0..<UInt32(frames) {
            let message = generator.message()
            try! FrameEncoder.append(message, requestID: id, to: &bytes)
            events.append(.frame(Envelope(requestID: id, message: message)))
        }
        return (bytes, events)
    }

    @Test func aStreamDecodesTheSameInOneBufferByteByByteAndInRandomChunks() {
        let (bytes, expected) = Self.stream(seed: 7, frames: 300)
        #expect(decode(bytes) == expected)
        #expect(decode(bytes, chunks: { _ in 1 }) == expected)
        for seed in 0..<5 as Range<UInt64> {
            #expect(decode(bytes, chunks: { Int.random(in: 1...3000, using: &$0) }, seed: seed) == expected)
        }
    }

    @Test(arguments: 0..<100 as Range<UInt64>)
    func corruptedStreamsDecodeTheSameHoweverChunked(seed: UInt64) {
        // Corrupt a valid stream at random (flips, cuts, insertions): whatever the decoder makes of it,
        // it must make the same of it in any chunking, never trap, and never buffer past its limit.
        var (bytes, _) = Self.stream(seed: seed, frames: 40)
        var generator = SeededGenerator(seed: seed ^ 0xC0FFEE)
        for _ in 0..<Int.random(in: 1...6, using: &generator) {
            let at = Int.random(in: 0..<bytes.count, using: &generator)
            switch Int.random(in: 0..<3, using: &generator) {
            case 0: bytes[at] ^= UInt8(1) << UInt8.random(in: 0..<8, using: &generator)
            case 1: bytes.removeSubrange(at..<Swift.min(bytes.count, at + Int.random(in: 1...200, using: &generator)))
            default: bytes.insert(contentsOf: (0..<Int.random(in: 1...50, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }, at: at)
            }
        }
        let whole = decode(bytes)
        #expect(decode(bytes, chunks: { _ in 1 }) == whole)
        #expect(decode(bytes, chunks: { Int.random(in: 1...500, using: &$0) }, seed: seed) == whole)
    }

    /// Each malformed case gives its own typed error, then the good frame behind it decodes.
    @Test func badMagic() {
        #expect(decode(Array("garbage, not a frame".utf8) + goodFrame) == [.error(.badMagic), goodFrameEvent])
        // A run of garbage is one fault, however long and however it arrives.
        let noise = [UInt8](repeating: 0x42, count: 10_000)  // 'B' again and again: partial magics everywhere
        #expect(decode(noise + goodFrame, chunks: { _ in 1 }) == [.error(.badMagic), goodFrameEvent])
    }

    @Test func badHeaderChecksum() {
        var bad = frame(ping7, id: 1)
        bad[FrameHeader.requestIDOffset] ^= 0x01
        #expect(decode(bad + goodFrame) == [.error(.badHeaderChecksum), goodFrameEvent])
    }

    @Test func badPayloadChecksum() {
        var bad = frame(ping7, id: 1)
        bad[WireLimits.headerLength] ^= 0x80
        #expect(decode(bad + goodFrame) == [.error(.badPayloadChecksum(type: MessageType.ping.rawValue, requestID: 1)), goodFrameEvent])
    }

    @Test func unsupportedVersion() {
        #expect(decode(frame(ping7, id: 1, version: 9) + goodFrame) == [.error(.unsupportedVersion(9)), goodFrameEvent])
        #expect(decode(frame(ping7, id: 1, version: 0) + goodFrame) == [.error(.unsupportedVersion(0)), goodFrameEvent])
    }

    @Test func oversizeLength() {
        // A sound header announcing one byte over the limit; the decoder must not wait for, or buffer, it.
        let huge = rawFrame(type: MessageType.ping.rawValue, payload: [], announcedLength: UInt32(WireLimits.maxPayloadLength + 1))
        #expect(decode(huge + goodFrame) == [.error(.oversizeFrame(length: UInt32(WireLimits.maxPayloadLength + 1))), goodFrameEvent])
        let max = rawFrame(type: 1, payload: [], announcedLength: .max)
        #expect(decode(max + goodFrame, chunks: { _ in 1 }) == [.error(.oversizeFrame(length: .max)), goodFrameEvent])
    }

    @Test func truncatedFrame() {
        let cut = Array(frame(.statsSample(StatsSample(sequence: 1, guestMillis: 1, periodMillis: 1, entries: [StatEntry(.memFree, 1)])))
            .prefix(30))
        let full = 24 + 8 + 8 + 4 + 2 + 10
        // Cut short and followed by another frame: found by the sound header inside its payload …
        #expect(decode(cut + goodFrame + goodFrame) == [.error(.truncatedFrame(expected: full, received: 30)), goodFrameEvent, goodFrameEvent])
        // … or, when the stream ends first, at the end of the stream.
        #expect(decode(cut + goodFrame) == [.error(.truncatedFrame(expected: full, received: 30)), goodFrameEvent])
        #expect(decode(cut) == [.error(.truncatedFrame(expected: full, received: 30))])
        #expect(decode(Array(goodFrame.prefix(10))) == [.error(.truncatedFrame(expected: 24, received: 10))])
    }

    @Test func aStalledFrameCanBeAbandoned() {
        // A writer died mid-frame and a new one began: the session abandons the stall, the rest decodes.
        var decoder = FrameDecoder()
        let sample = frame(.statsSample(StatsSample(sequence: 1, guestMillis: 1, periodMillis: 1,
                                                    entries: (0..<20).map { StatEntry(StatKey(rawValue: $0), 0) })))
        let cut = Array(sample.prefix(28))
        #expect(decoder.feed(cut + goodFrame) == [])  // 60 bytes: fewer than the stats frame announced
        #expect(decoder.bufferedByteCount == 60)
        var events: [DecodeEvent] = []
        decoder.abandonPartialFrame { events.append($0) }
        #expect(events == [.error(.truncatedFrame(expected: sample.count, received: 28)), goodFrameEvent])
        #expect(decoder.bufferedByteCount == 0)
        #expect(decoder.feed(goodFrame) == [goodFrameEvent])
    }

    @Test func unknownType() {
        #expect(decode(rawFrame(type: 200, payload: [1, 2, 3], id: 4) + goodFrame) == [.error(.unknownType(200, requestID: 4)), goodFrameEvent])
    }

    static func inflatePayload(ranges: [(UInt64, UInt64)], count: UInt32? = nil) -> [UInt8] {
        var w = ByteWriter()
        w.u64(1); w.u64(2); w.u8(0); w.u64(3)
        w.u32(count ?? UInt32(ranges.count))
        for (start, length) in ranges { w.uleb128(start); w.uleb128(length) }
        return w.bytes
    }

    static func malformed(_ payload: [UInt8], type: MessageType = .inflateReport) -> [DecodeEvent] {
        decode(rawFrame(type: type.rawValue, payload: payload, id: 8) + goodFrame)
    }

    static func expectRejected(_ payload: [UInt8], type: MessageType = .inflateReport, _ error: PayloadError,
                               sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(malformed(payload, type: type) == [.error(.malformedPayload(type: type, requestID: 8, error)), goodFrameEvent],
                sourceLocation: sourceLocation)
    }

    @Test func badRanges() {
        Self.expectRejected(Self.inflatePayload(ranges: [(10, 2), (5, 1)]), .badRanges(.unsorted(index: 1)))
        Self.expectRejected(Self.inflatePayload(ranges: [(10, 5), (12, 1)]), .badRanges(.overlapping(index: 1)))
        Self.expectRejected(Self.inflatePayload(ranges: [(10, 5), (15, 1)]), .badRanges(.adjacent(index: 1)))
        Self.expectRejected(Self.inflatePayload(ranges: [(10, 5), (20, 0)]), .badRanges(.empty(index: 1)))
        Self.expectRejected(Self.inflatePayload(ranges: [(UInt64.max, 2)]), .badRanges(.overflow(index: 0)))
        Self.expectRejected(Self.inflatePayload(ranges: [(WireLimits.pfnLimit - 1, 2)]), .badRanges(.overflow(index: 0)))
        Self.expectRejected(Self.inflatePayload(ranges: [], count: UInt32(WireLimits.maxRangesPerMessage + 1)),
                            .badRanges(.tooMany(count: WireLimits.maxRangesPerMessage + 1)))
        Self.expectRejected(Self.inflatePayload(ranges: []), .invalidValue(field: "range count", value: 0))
        // A count that the payload cannot hold is caught before anything is reserved for it.
        Self.expectRejected(Self.inflatePayload(ranges: [(1, 1)], count: 5000), .truncated(field: "ranges"))
        // The largest legal range is fine.
        #expect(Self.malformed(Self.inflatePayload(ranges: [(0, WireLimits.pfnLimit)])).count == 2)
    }

    @Test func badFields() {
        var w = ByteWriter()
        w.u8(3)  // no such role
        Self.expectRejected(w.bytes, type: .hello, .invalidValue(field: "role", value: 3))

        var zeroSession = ByteWriter()
        zeroSession.u8(1); zeroSession.u8(1); zeroSession.u8(1); zeroSession.u64(0)
        Self.expectRejected(zeroSession.bytes, type: .hello, .invalidValue(field: "session id", value: 0))

        Self.expectRejected([1, 2, 3], type: .ping, .truncated(field: "nonce"))
        Self.expectRejected([0x01, 0x00, 2, 0xC3, 0x28], type: .error, .invalidUTF8(field: "error message"))
        Self.expectRejected(Self.inflatePayload(ranges: [(1, 1)]) .dropLast(2) + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 1],
                            .varintOverflow(field: "range start"))

        var duplicate = ByteWriter()
        duplicate.u64(0); duplicate.u64(0); duplicate.u32(0); duplicate.u16(2)
        duplicate.u16(5); duplicate.u64(1); duplicate.u16(5); duplicate.u64(2)
        Self.expectRejected(duplicate.bytes, type: .statsSample, .duplicateStat(key: 5))

        var tooManyStats = ByteWriter()
        tooManyStats.u64(0); tooManyStats.u64(0); tooManyStats.u32(0); tooManyStats.u16(UInt16(WireLimits.maxStatEntries + 1))
        Self.expectRejected(tooManyStats.bytes, type: .statsSample, .tooManyStats(count: WireLimits.maxStatEntries + 1))

        Self.expectRejected([7, 0, 0, 0, 0, 0, 0, 0, 0x01], type: .ping, .truncatedExtension)
        Self.expectRejected([7, 0, 0, 0, 0, 0, 0, 0] + Array(repeating: [0, 0, 0, 0], count: WireLimits.maxExtensions + 1).flatMap { $0 },
                            type: .ping, .tooManyExtensions)
    }

    @Test func theDecoderNeverBuffersPastItsLimit() {
        // A sound header announcing the largest payload, then the payload trickling in: the decoder holds
        // exactly one frame at most, and garbage costs it nothing.
        var decoder = FrameDecoder()
        var generator = SeededGenerator(seed: 3)
        let noise = (0..<2_000_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var errors = 0
        for start in stride(from: 0, to: noise.count, by: 4096) {
            errors += decoder.feed(noise[start..<Swift.min(start + 4096, noise.count)]).count
            #expect(decoder.bufferedByteCount < WireLimits.headerLength)
        }
        #expect(errors >= 1)
        #expect(decoder.statistics.bytesDiscarded > 1_900_000)
        let big = rawFrame(type: MessageType.ping.rawValue, payload: [UInt8](repeating: 0, count: WireLimits.maxPayloadLength))
        var total = 0
        for start in stride(from: 0, to: big.count, by: 1000) {
            total += decoder.feed(big[start..<Swift.min(start + 1000, big.count)]).count
            #expect(decoder.bufferedByteCount <= WireLimits.maxFrameLength)
        }
        #expect(total == 1)  // a ping with a large unknown extension area: malformed (truncated extension)
    }

    @Test func statisticsCountWhatHappened() {
        var decoder = FrameDecoder()
        var bad = goodFrame
        bad[WireLimits.headerLength] ^= 1
        _ = decoder.feed(goodFrame + Array("xx".utf8) + goodFrame + bad + goodFrame)
        #expect(decoder.statistics.framesDecoded == 3)
        #expect(decoder.statistics.errors == [.badMagic: 1, .badPayloadChecksum: 1])
        #expect(decoder.statistics.bytesReceived == UInt64(goodFrame.count * 4 + 2))
    }
}
