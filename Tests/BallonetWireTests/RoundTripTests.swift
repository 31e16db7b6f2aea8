import Testing
@testable import BallonetWire

/// Property tests: any valid message survives encode → decode unchanged.
@Suite struct RoundTripTests {
    @Test(arguments: 0..<8)
    func everyMessageRoundTrips(batch: UInt64) {
        var generator = SeededGenerator(seed: batch)
        var seen = Set<MessageType>()
        for _ in 0..<250 {
            let message = generator.message()
            seen.insert(message.type)
            let id = UInt32(truncatingIfNeeded: generator.any64())
            #expect(decode(frame(message, id: id)) == [.frame(Envelope(requestID: id, message: message))])
        }
        #expect(seen == Set(MessageType.allCases), "the generator covers every message type")
    }

    @Test func unknownExtensionsAreSkipped() {
        // A newer peer appends optional fields; this one ignores them and keeps the message.
        var generator = SeededGenerator(seed: 42)
        for _ in 0..<200 {
            let message = generator.message()
            let extensions = (0..<Int.random(in: 1...4, using: &generator)).map { i in
                WireExtension(tag: UInt16(i) + 0x100, value: (0..<Int.random(in: 0...20, using: &generator)).map { UInt8($0) })
            }
            #expect(decode(frame(message, id: 5, extensions: extensions)) == [.frame(Envelope(requestID: 5, message: message))])
        }
    }

    @Test func unknownCodesAndKeysAreKept() {
        let sample = Message.statsSample(StatsSample(sequence: 1, guestMillis: 2, periodMillis: 3,
                                                     entries: [StatEntry(StatKey(rawValue: 60000), 9), StatEntry(.memFree, 4)]))
        guard case .frame(let envelope) = decode(frame(sample)).first, case .statsSample(let decoded) = envelope.message else {
            Issue.record("stats sample did not decode")
            return
        }
        #expect(decoded[StatKey(rawValue: 60000)] == 9)
        #expect(decoded[.memFree] == 4)
        let hello = Message.hello(Hello(role: .guest, sessionID: 3, capabilities: Capabilities(rawValue: 1 << 63 | 1)))
        #expect(decode(frame(hello)) == [.frame(Envelope(requestID: 0, message: hello))])
    }

    @Test func theEncoderRefusesWhatTheDecoderWouldReject() {
        let long = String(repeating: "x", count: WireLimits.maxTextBytes + 1)
        #expect(throws: EncodeError.textTooLong(field: "error message", bytes: 256)) {
            try FrameEncoder.encode(.error(ErrorReport(code: .internalError, message: long)))
        }
        let tooMany = try! PFNRangeList(validating: (0..<UInt64(WireLimits.maxRangesPerMessage + 1)).map { PFNRange(start: $0 * 2, count: 1) })
        #expect(throws: EncodeError.badRanges(.tooMany(count: WireLimits.maxRangesPerMessage + 1))) {
            try FrameEncoder.encode(.deflateReport(DeflateReport(reason: .hostAsked, balloonPagesAfter: 0, ranges: tooMany)))
        }
        #expect(throws: EncodeError.invalidValue(field: "range count", value: 0)) {
            try FrameEncoder.encode(.deflateReport(DeflateReport(reason: .hostAsked, balloonPagesAfter: 0, ranges: PFNRangeList())))
        }
        #expect(throws: EncodeError.invalidValue(field: "page order", value: 19)) {
            try FrameEncoder.encode(.inflateReport(InflateReport(hostSessionID: 1, batchID: 1, pageOrder: 19, balloonPagesAfter: 1,
                                                                 ranges: try! PFNRangeList(validating: [PFNRange(start: 1, count: 1)]))))
        }
        #expect(throws: EncodeError.invalidValue(field: "session id", value: 0)) {
            try FrameEncoder.encode(.hello(Hello(role: .guest, sessionID: 0, capabilities: [])))
        }
        #expect(throws: EncodeError.invalidValue(field: "min version", value: 3)) {
            try FrameEncoder.encode(.hello(Hello(role: .guest, minVersion: 3, maxVersion: 2, sessionID: 1, capabilities: [])))
        }
        #expect(throws: EncodeError.invalidValue(field: "balloon pages", value: WireLimits.pfnLimit + 1)) {
            try FrameEncoder.encode(.setTarget(SetTarget(balloonPages: WireLimits.pfnLimit + 1)))
        }
        #expect(throws: EncodeError.duplicateStat(key: 2)) {
            try FrameEncoder.encode(.statsSample(StatsSample(sequence: 0, guestMillis: 0, periodMillis: 0,
                                                             entries: [StatEntry(.memFree, 1), StatEntry(.memFree, 2)])))
        }
        // The largest report a frame may carry, with starts and counts as wide as the PFN space allows
        // (6 and 4 bytes each), still fits a frame.
        let widest = try! PFNRangeList(validating: (0..<UInt64(WireLimits.maxRangesPerMessage)).map {
            PFNRange(start: (1 << 39) + $0 << 25, count: 1 << 24)
        })
        let bytes = try! FrameEncoder.encode(.inflateReport(InflateReport(hostSessionID: 1, batchID: 1, pageOrder: 0,
                                                                          balloonPagesAfter: 0, ranges: widest)))
        #expect(bytes.count <= WireLimits.maxFrameLength)
    }
}

@Suite struct TextFittingTests {
    @Test func longTextIsCutAtACharacterBoundaryAndStillEncodes() throws {
        let long = String(repeating: "é😀x", count: 200)
        let fitted = WireLimits.fittingText(long)
        #expect(fitted.utf8.count <= WireLimits.maxTextBytes)
        #expect(fitted.hasSuffix("…"))
        #expect(long.hasPrefix(String(fitted.dropLast())))
        _ = try FrameEncoder.encode(.error(ErrorReport(code: .internalError, message: fitted)))
        #expect(WireLimits.fittingText("short") == "short")
    }
}
