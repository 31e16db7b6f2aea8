import Testing
@testable import BallonetHost
@testable import BallonetWire

/// Drives a `HostSession` with decoded frames as a guest would send them, and reads its actions.
struct SessionDriver {
    static let hostID: UInt64 = 0x1001
    static let guestID: UInt64 = 0x77
    static let map = try! GuestRAMMap.parse(memoryTree: MemoryTreeSamples.pc512MiB, guestRAMBlocks: ["ram0"])

    var session = HostSession(sessionID: hostID, map: map, nowMillis: 0)
    var now: UInt64 = 0
    var nextFreshID: UInt64 = 0x2001
    var nextRequestID: UInt32 = 1
    /// Every host hello the session asked to send (as an action) or the engine sent (`hostHello`).
    var hellosSent = 0

    mutating func receive(_ message: Message, at millis: UInt64? = nil) -> [HostSessionAction] {
        if let millis { now = millis }
        defer { nextRequestID += 1 }
        return receive(.frame(Envelope(requestID: nextRequestID, message: message)))
    }

    mutating func receive(_ event: DecodeEvent) -> [HostSessionAction] {
        var fresh = nextFreshID
        let actions = session.receive(event, nowMillis: now) {
            defer { fresh += 1 }
            return fresh
        }
        nextFreshID = fresh
        hellosSent += actions.sentMessages.filter { if case .hello = $0 { true } else { false } }.count
        return actions
    }

    /// The engine's hello when the port connects.
    mutating func hostHello(at millis: UInt64) -> Message {
        now = millis
        hellosSent += 1
        return session.hello(nowMillis: millis)
    }

    static func guestHello(id: UInt64 = guestID, balloonPages: UInt64 = 0, min: UInt8 = 1, max: UInt8 = 1) -> Message {
        .hello(Hello(role: .guest, minVersion: min, maxVersion: max, sessionID: id,
                     capabilities: [.statsSamples, .pressureRelease], balloonPages: balloonPages))
    }

    static func inflate(host: UInt64 = hostID, batch: UInt64, after: UInt64, _ pairs: (UInt64, UInt64)...) -> Message {
        let ranges = try! PFNRangeList(validating: pairs.map { PFNRange(start: $0.0, count: $0.1) })
        return .inflateReport(InflateReport(hostSessionID: host, batchID: batch, pageOrder: 0, balloonPagesAfter: after,
                                            ranges: ranges))
    }

    static func deflate(_ reason: DeflateReason, after: UInt64, _ pairs: (UInt64, UInt64)...) -> Message {
        let ranges = try! PFNRangeList(validating: pairs.map { PFNRange(start: $0.0, count: $0.1) })
        return .deflateReport(DeflateReport(reason: reason, balloonPagesAfter: after, ranges: ranges))
    }

    /// A session whose handshake is done.
    static func established() -> SessionDriver {
        var driver = SessionDriver()
        _ = driver.receive(guestHello())
        return driver
    }

    /// Reports a batch and has it reclaimed: the pages are then in the host's count of the balloon.
    mutating func inflateAndReclaim(batch: UInt64, after: UInt64, _ pairs: (UInt64, UInt64)...) throws -> [HostSessionAction] {
        let ranges = try PFNRangeList(validating: pairs.map { PFNRange(start: $0.0, count: $0.1) })
        let actions = receive(.inflateReport(InflateReport(hostSessionID: session.sessionID, batchID: batch, pageOrder: 0,
                                                           balloonPagesAfter: after, ranges: ranges)))
        let request = try #require(actions.reclaimRequests.first)
        return session.reclaimFinished(request, outcome: .success(ReclaimOutcome(requestedBytes: ranges.pageCount * 4096,
                                                                                 freedBytes: ranges.pageCount * 4096)))
    }
}

extension [HostSessionAction] {
    var sentMessages: [Message] {
        compactMap { if case .send(let message, _) = $0 { message } else { nil } }
    }
    var reclaimRequests: [ReclaimRequest] {
        compactMap { if case .reclaim(let request) = $0 { request } else { nil } }
    }
    var resets: [String] { compactMap { if case .reset(let why) = $0 { why } else { nil } } }
    var refusals: [String] { compactMap { if case .refused(let why) = $0 { why } else { nil } } }
    var notes: [String] { compactMap { if case .note(let text) = $0 { text } else { nil } } }
    var errorCodes: [ErrorCode] {
        sentMessages.compactMap { if case .error(let report) = $0 { report.code } else { nil } }
    }
    var declines: [ReclaimDeclined] {
        sentMessages.compactMap { if case .reclaimDeclined(let declined) = $0 { declined } else { nil } }
    }
    var acks: [ReclaimAck] {
        sentMessages.compactMap { if case .reclaimAck(let ack) = $0 { ack } else { nil } }
    }
    var hellos: [Hello] {
        sentMessages.compactMap { if case .hello(let hello) = $0 { hello } else { nil } }
    }
    var goodbyes: [Goodbye] {
        sentMessages.compactMap { if case .goodbye(let goodbye) = $0 { goodbye } else { nil } }
    }
}

@Suite struct HostSessionHandshakeTests {
    @Test func guestHelloEstablishes() {
        var driver = SessionDriver()
        #expect(driver.session.state == .awaitingHello)
        let actions = driver.receive(SessionDriver.guestHello(balloonPages: 300))
        let expected = NegotiatedSession(version: 1, localSessionID: SessionDriver.hostID, remoteSessionID: SessionDriver.guestID,
                                         hostSessionID: SessionDriver.hostID, remoteCapabilities: [.statsSamples, .pressureRelease],
                                         remoteSoftwareVersion: BallonetVersion.software)
        #expect(actions == [.established(expected, guestBalloonPages: 300), .balloonChanged(pages: 300, reason: "guest hello")])
        #expect(driver.session.state == .established(expected))
        #expect(driver.session.negotiated == expected)
        #expect(driver.session.guestBalloonPages == 300)
        #expect(driver.session.sessionID == SessionDriver.hostID)
        #expect(driver.hellosSent == 0)
    }

    @Test func hostHelloCarriesTheSessionID() {
        var session = HostSession(sessionID: 42, map: SessionDriver.map, nowMillis: 0)
        guard case .hello(let hello) = session.hello(nowMillis: 0) else {
            Issue.record("not a hello")
            return
        }
        #expect(hello.role == .host)
        #expect(hello.sessionID == 42)
        #expect(hello.capabilities.contains(.reclaim))
        #expect(hello.balloonPages == 0)
    }

    @Test func incompatibleVersionsEndTheSession() {
        var driver = SessionDriver()
        let actions = driver.receive(SessionDriver.guestHello(min: 2, max: 3))
        #expect(actions.errorCodes == [.incompatibleVersion])
        #expect(actions.goodbyes.map(\.reason) == [.incompatibleVersion])
        #expect(actions.resets.count == 1)
        #expect(!actions.contains { if case .established = $0 { true } else { false } })
        // The goodbye goes out before the reset that closes the port.
        let goodbyeIndex = actions.firstIndex { if case .send(.goodbye, _) = $0 { true } else { false } }
        let resetIndex = actions.firstIndex { if case .reset = $0 { true } else { false } }
        #expect(goodbyeIndex! < resetIndex!)
        #expect(driver.session.state == .awaitingHello)
        #expect(driver.session.negotiated == nil)
    }

    @Test func aGuestClaimingToBeTheHostIsRefused() {
        var driver = SessionDriver()
        let actions = driver.receive(.hello(Hello(role: .host, sessionID: 5, capabilities: [])))
        #expect(actions.errorCodes == [.unexpectedMessage])
        #expect(actions.resets.count == 1)
        #expect(driver.session.state == .awaitingHello)
    }

    @Test func framesBeforeHelloAreIgnored() {
        var driver = SessionDriver()
        let messages: [Message] = [
            SessionDriver.inflate(batch: 1, after: 16, (0x100, 16)),
            SessionDriver.deflate(.guestPressure, after: 0, (0x100, 16)),
            .ping(Ping(nonce: 9)),
            .goodbye(Goodbye(reason: .shutdown, message: "bye")),
        ]
        for message in messages {
            let actions = driver.receive(message)
            #expect(actions.count == 1)
            #expect(actions.notes.count == 1)
        }
        #expect(driver.session.ignoredBeforeHello == messages.count)
        #expect(driver.session.refusals == 0)
        #expect(driver.session.batchesInReclaim.isEmpty)
        #expect(driver.session.state == .awaitingHello)
        #expect(driver.session.tick(nowMillis: 1_000_000) == [])
    }

    @Test func aGuestHelloInsideTheWindowAnswersOurs() {
        var driver = SessionDriver()
        _ = driver.hostHello(at: 1_000)
        let actions = driver.receive(SessionDriver.guestHello(), at: 1_500)
        #expect(actions.hellos.isEmpty)
        #expect(actions.contains { if case .established = $0 { true } else { false } })
        #expect(driver.session.sessionID == SessionDriver.hostID)
        #expect(driver.hellosSent == 1)
    }

    @Test func helloExchangeStaysBounded() {
        var driver = SessionDriver()
        // The port connects: our hello, and the guest's answer inside the window.
        _ = driver.hostHello(at: 0)
        _ = driver.receive(SessionDriver.guestHello(id: 0xa), at: 200)
        #expect(driver.session.negotiated?.remoteSessionID == 0xa)
        #expect(driver.hellosSent == 1)

        // Much later, the guest restarts: a new host session fences the old one, and our hello goes out.
        let restart = driver.receive(SessionDriver.guestHello(id: 0xb), at: 60_000)
        #expect(driver.session.sessionID == 0x2001)
        #expect(restart.hellos.map(\.sessionID) == [0x2001])
        #expect(driver.session.negotiated?.hostSessionID == 0x2001)
        #expect(driver.session.negotiated?.remoteSessionID == 0xb)
        #expect(driver.hellosSent == 2)

        // A guest whose session still stood answers our hello with a new one of its own: that completes
        // the handshake, with no further hello and no new host session.
        let answer = driver.receive(SessionDriver.guestHello(id: 0xc), at: 60_300)
        #expect(answer.hellos.isEmpty)
        #expect(driver.session.sessionID == 0x2001)
        #expect(driver.session.negotiated?.remoteSessionID == 0xc)
        #expect(driver.hellosSent == 2)

        // A guest that answers every host hello with a new hello of its own (as one whose session stands
        // does), a moment later: each guest restart costs one host hello, and then the exchange stops.
        var now: UInt64 = 100_000
        for restart in 0..<UInt64(10) {
            var pending: [Message] = [SessionDriver.guestHello(id: 0x100 + restart)]
            var delivered = 0
            while delivered < 10, let hello = pending.popLast() {
                delivered += 1
                let actions = driver.receive(hello, at: now)
                now += 300
                for _ in actions.hellos { pending.append(SessionDriver.guestHello(id: 0x1000 + now)) }
            }
            #expect(pending.isEmpty)
            #expect(delivered == 2)
            #expect(driver.session.negotiated != nil)
            now += 60_000
        }
        #expect(driver.hellosSent == 2 + 10)
    }

    @Test func aGuestHelloInsideTheWindowIsNoRestart() {
        var driver = SessionDriver.established()
        _ = driver.hostHello(at: 1_000)  // the engine repeats its hello (a reconnect)
        let answer = driver.receive(SessionDriver.guestHello(id: 0xd), at: 1_000 + HostSession.helloAnswerMillis - 1)
        #expect(answer.hellos.isEmpty)
        #expect(driver.session.sessionID == SessionDriver.hostID)
        #expect(driver.session.negotiated?.remoteSessionID == 0xd)
    }

    @Test func aGuestHelloAfterTheWindowIsARestart() {
        var driver = SessionDriver.established()
        _ = driver.hostHello(at: 1_000)  // the engine repeats its hello (a reconnect)
        let late = driver.receive(SessionDriver.guestHello(id: 0xd), at: 1_000 + HostSession.helloAnswerMillis)
        #expect(late.hellos.count == 1)
        #expect(driver.session.sessionID == 0x2001)
    }

    @Test func aRestartFencesTheOldSession() throws {
        var driver = SessionDriver.established()
        _ = try driver.inflateAndReclaim(batch: 1, after: 16, (0x100, 16))
        #expect(driver.session.knownBalloon.pageCount == 16)
        // A batch of the old session is in reclaim when the guest restarts.
        let pending = try #require(driver.receive(SessionDriver.inflate(batch: 2, after: 32, (0x200, 16))).reclaimRequests.first)
        _ = driver.receive(SessionDriver.guestHello(id: 0xe, balloonPages: 0), at: 50_000)
        #expect(driver.session.sessionID != SessionDriver.hostID)
        #expect(driver.session.knownBalloon.pageCount == 0)
        #expect(driver.session.batchesInReclaim.isEmpty)
        // Its answer is dropped: no ack of an old batch under the new session.
        let late = driver.session.reclaimFinished(pending, outcome: .success(ReclaimOutcome(requestedBytes: 65536, freedBytes: 65536)))
        #expect(late == [])
        #expect(driver.session.knownBalloon.pageCount == 0)
        // A report still in the port for the old session is declined, never reclaimed.
        let stale = driver.receive(SessionDriver.inflate(host: SessionDriver.hostID, batch: 3, after: 48, (0x300, 16)))
        #expect(stale.reclaimRequests.isEmpty)
        #expect(stale.declines.map(\.reason) == [.notNeeded])
    }
}

@Suite struct HostSessionReclaimTests {
    @Test func aGoodReportIsReclaimedThenAcknowledged() throws {
        var driver = SessionDriver.established()
        let actions = driver.receive(SessionDriver.inflate(batch: 7, after: 48, (0x100, 16), (0x1000, 32)))
        #expect(actions.count == 1)
        let request = try #require(actions.reclaimRequests.first)
        #expect(request.batchID == 7)
        #expect(request.balloonPagesAfter == 48)
        #expect(request.ranges.pageCount == 48)
        #expect(request.extents == [BlockExtent(block: "ram0", offset: 0x10_0000, length: 16 * 4096),
                                    BlockExtent(block: "ram0", offset: 0x100_0000, length: 32 * 4096)])
        #expect(driver.session.batchesInReclaim == [7])
        // Nothing is counted until reclaim is done.
        #expect(driver.session.knownBalloon.pageCount == 0)

        let done = driver.session.reclaimFinished(request, outcome: .success(ReclaimOutcome(requestedBytes: 48 * 4096,
                                                                                            freedBytes: 40 * 4096)))
        #expect(done.acks == [ReclaimAck(hostSessionID: SessionDriver.hostID, batchID: 7, reclaimedPages: 40)])
        #expect(done.contains(.send(.reclaimAck(ReclaimAck(hostSessionID: SessionDriver.hostID, batchID: 7, reclaimedPages: 40)),
                                    requestID: request.requestID)))
        #expect(done.contains { if case .balloonChanged(48, _) = $0 { true } else { false } })
        #expect(driver.session.knownBalloon.pageCount == 48)
        #expect(driver.session.guestBalloonPages == 48)
        #expect(driver.session.batchesInReclaim.isEmpty)
        // A second answer for the same batch sends nothing.
        #expect(driver.session.reclaimFinished(request, outcome: .success(ReclaimOutcome(requestedBytes: 0, freedBytes: 0))) == [])
    }

    @Test func theAckEchoesTheRequestID() throws {
        var driver = SessionDriver.established()
        let actions = driver.receive(.frame(Envelope(requestID: 4242, message: SessionDriver.inflate(batch: 1, after: 1, (0x100, 1)))))
        let request = try #require(actions.reclaimRequests.first)
        #expect(request.requestID == 4242)
        let done = driver.session.reclaimFinished(request, outcome: .success(ReclaimOutcome(requestedBytes: 4096, freedBytes: 4096)))
        #expect(done.first == .send(.reclaimAck(ReclaimAck(hostSessionID: SessionDriver.hostID, batchID: 1, reclaimedPages: 1)),
                                    requestID: 4242))
    }

    @Test func aReportForAnotherHostSessionIsDeclined() {
        var driver = SessionDriver.established()
        let actions = driver.receive(SessionDriver.inflate(host: 0xdead, batch: 3, after: 16, (0x100, 16)))
        #expect(actions.reclaimRequests.isEmpty)
        #expect(actions.declines == [ReclaimDeclined(hostSessionID: 0xdead, batchID: 3, reason: .notNeeded)])
        #expect(actions.acks.isEmpty)
        #expect(driver.session.batchesInReclaim.isEmpty)
        #expect(driver.session.knownBalloon.pageCount == 0)
    }

    static let outsideRAM: [[(UInt64, UInt64)]] = [
        [(0xbf, 2)],                        // across the ROM hole at 0xc0000
        [(0xc0, 1)],                        // ROM
        [(0x1ffff, 2)],                     // past the end of RAM
        [(0x100, 16), (0xfec00, 1)],        // a good range, then the IOAPIC
        [(WireLimits.pfnLimit - 1, 1)],     // the largest PFN the wire allows
    ]

    @Test(arguments: outsideRAM)
    func rangesOutsideRAMAreRefused(_ pairs: [(UInt64, UInt64)]) throws {
        var driver = SessionDriver.established()
        let ranges = try PFNRangeList(validating: pairs.map { PFNRange(start: $0.0, count: $0.1) })
        let actions = driver.receive(.inflateReport(InflateReport(hostSessionID: SessionDriver.hostID, batchID: 9, pageOrder: 0,
                                                                  balloonPagesAfter: 100, ranges: ranges)))
        #expect(actions.reclaimRequests.isEmpty)
        #expect(actions.refusals.count == 1)
        #expect(actions.errorCodes == [.rangeOutsideGuestRAM])
        #expect(actions.declines == [ReclaimDeclined(hostSessionID: SessionDriver.hostID, batchID: 9, reason: .outsideGuestRAM)])
        #expect(actions.resets.isEmpty)
        #expect(driver.session.refusals == 1)
        #expect(driver.session.batchesInReclaim.isEmpty)
    }

    @Test func pagesAlreadyInTheBalloonAreRefused() throws {
        var driver = SessionDriver.established()
        _ = try driver.inflateAndReclaim(batch: 1, after: 16, (0x100, 16))
        for (batch, pairs) in [(UInt64(2), [(UInt64(0x100), UInt64(16))]), (3, [(0x10f, 1)]), (4, [(0x80, 1), (0xf0, 0x20)])] {
            let ranges = try PFNRangeList(validating: pairs.map { PFNRange(start: $0.0, count: $0.1) })
            let actions = driver.receive(.inflateReport(InflateReport(hostSessionID: SessionDriver.hostID, batchID: batch, pageOrder: 0,
                                                                      balloonPagesAfter: 32, ranges: ranges)))
            #expect(actions.reclaimRequests.isEmpty)
            #expect(actions.refusals.count == 1)
            #expect(actions.declines.map(\.batchID) == [batch])
        }
        #expect(driver.session.knownBalloon.pageCount == 16)
        // Pages next to the balloon are fine.
        let next = driver.receive(SessionDriver.inflate(batch: 5, after: 32, (0x110, 16)))
        #expect(next.reclaimRequests.count == 1)
    }

    @Test func aBatchReportedTwiceIsRefused() throws {
        var driver = SessionDriver.established()
        #expect(driver.receive(SessionDriver.inflate(batch: 1, after: 16, (0x100, 16))).reclaimRequests.count == 1)
        let again = driver.receive(SessionDriver.inflate(batch: 1, after: 32, (0x200, 16)))
        #expect(again.reclaimRequests.isEmpty)
        #expect(again.refusals.count == 1)
        #expect(again.declines.map(\.reason) == [.notNeeded])
    }

    @Test func anImpossiblePageOrderIsRefused() {
        var driver = SessionDriver.established()
        let ranges = try! PFNRangeList(validating: [PFNRange(start: 0x100, count: 16)])
        let actions = driver.receive(.inflateReport(InflateReport(hostSessionID: SessionDriver.hostID, batchID: 1, pageOrder: 40,
                                                                  balloonPagesAfter: 16, ranges: ranges)))
        #expect(actions.reclaimRequests.isEmpty)
        #expect(actions.refusals.count == 1)
    }

    @Test func aReclaimFailureIsDeclined() throws {
        var driver = SessionDriver.established()
        let request = try #require(driver.receive(SessionDriver.inflate(batch: 5, after: 16, (0x100, 16))).reclaimRequests.first)
        let actions = driver.session.reclaimFinished(request, outcome: .failure(ReclaimError("fallocate: EIO")))
        #expect(actions.declines == [ReclaimDeclined(hostSessionID: SessionDriver.hostID, batchID: 5, reason: .reclaimFailed)])
        #expect(actions.acks.isEmpty)
        #expect(driver.session.knownBalloon.pageCount == 0)
        #expect(driver.session.guestBalloonPages == 0)
        #expect(driver.session.batchesInReclaim.isEmpty)
        // The pages were never counted, so the guest may report them again.
        #expect(driver.receive(SessionDriver.inflate(batch: 6, after: 16, (0x100, 16))).reclaimRequests.count == 1)
    }

    @Test func deflateUnderPressureIsSaid() throws {
        var driver = SessionDriver.established()
        _ = try driver.inflateAndReclaim(batch: 1, after: 64, (0x100, 64))
        let actions = driver.receive(SessionDriver.deflate(.guestPressure, after: 48, (0x100, 16)))
        #expect(actions.contains(.guestReleasedUnderPressure(pages: 16)))
        #expect(actions.contains { if case .balloonChanged(48, _) = $0 { true } else { false } })
        #expect(driver.session.knownBalloon.pageCount == 48)
        #expect(driver.session.guestBalloonPages == 48)
        // The released pages may come back in a later batch.
        #expect(driver.receive(SessionDriver.inflate(batch: 2, after: 64, (0x100, 16))).reclaimRequests.count == 1)
    }

    @Test func deflateTheHostAskedForIsNotPressure() throws {
        var driver = SessionDriver.established()
        _ = try driver.inflateAndReclaim(batch: 1, after: 64, (0x100, 64))
        let actions = driver.receive(SessionDriver.deflate(.hostAsked, after: 0, (0x100, 64)))
        #expect(!actions.contains { if case .guestReleasedUnderPressure = $0 { true } else { false } })
        #expect(actions.contains { if case .balloonChanged(0, _) = $0 { true } else { false } })
        #expect(driver.session.knownBalloon.pageCount == 0)
    }

    @Test func otherGuestMessages() {
        var driver = SessionDriver.established()
        let sample = StatsSample(sequence: 1, guestMillis: 5, periodMillis: 1000, entries: [StatEntry(.memTotal, 131_072)])
        #expect(driver.receive(.statsSample(sample)) == [.statsReceived(sample)])
        #expect(driver.receive(.frame(Envelope(requestID: 77, message: .ping(Ping(nonce: 5))))) == [.send(.pong(Pong(nonce: 5)), requestID: 77)])
        let target = driver.receive(.setTarget(SetTarget(balloonPages: 1)))
        #expect(target.errorCodes == [.unexpectedMessage])
        #expect(target.refusals.count == 1)
        let goodbye = driver.receive(.goodbye(Goodbye(reason: .shutdown, message: "poweroff")))
        #expect(goodbye.resets.count == 1)
    }
}

@Suite struct HostSessionLimitTests {
    @Test func aFloodIsReset() {
        var driver = SessionDriver.established()  // the hello took one token
        var firstReset: Int?
        for index in 1...(Int(GuestInputLimits.frameBurst) + 10) {
            let actions = driver.receive(.ping(Ping(nonce: UInt64(index))))
            if !actions.resets.isEmpty {
                #expect(actions.errorCodes == [.rateLimited])
                #expect(actions.sentMessages.contains { if case .pong = $0 { true } else { false } } == false)
                firstReset = firstReset ?? index
            }
        }
        // The burst is frameBurst frames, the hello among them.
        #expect(firstReset == Int(GuestInputLimits.frameBurst))
    }

    @Test func theRateRefills() {
        var driver = SessionDriver.established()
        for index in 1..<Int(GuestInputLimits.frameBurst) {
            #expect(driver.receive(.ping(Ping(nonce: UInt64(index)))).resets.isEmpty)
        }
        // One second later, framesPerSecond more frames go through.
        driver.now += 1_000
        for index in 0..<Int(GuestInputLimits.framesPerSecond) {
            let actions = driver.receive(.ping(Ping(nonce: UInt64(index))))
            #expect(actions.resets.isEmpty)
            if !actions.resets.isEmpty { break }
        }
        #expect(driver.receive(.ping(Ping(nonce: 0))).resets.count == 1)
    }

    @Test func tooManyDecodeErrorsReset() {
        var driver = SessionDriver.established()
        for count in 1...GuestInputLimits.decodeErrorsPerSession {
            let actions = driver.receive(DecodeEvent.error(.badHeaderChecksum))
            #expect(actions.errorCodes == [.malformedFrame])
            #expect(actions.resets.isEmpty)
            #expect(driver.session.decodeErrors == count)
        }
        let last = driver.receive(DecodeEvent.error(.badMagic))
        #expect(last.errorCodes == [.malformedFrame])
        #expect(last.goodbyes.map(\.reason) == [.protocolError])
        #expect(last.resets.count == 1)
    }

    @Test func tooManyRefusalsReset() {
        var driver = SessionDriver.established()
        for batch in 1...UInt64(GuestInputLimits.refusalsPerSession) {
            let actions = driver.receive(SessionDriver.inflate(batch: batch, after: 1, (0xc0, 1)))
            #expect(actions.resets.isEmpty)
            #expect(actions.reclaimRequests.isEmpty)
        }
        let last = driver.receive(SessionDriver.inflate(batch: 999, after: 1, (0xc0, 1)))
        #expect(last.resets.count == 1)
        #expect(last.reclaimRequests.isEmpty)
        #expect(driver.session.refusals == GuestInputLimits.refusalsPerSession + 1)
    }

    @Test func aSilentGuestIsPingedThenReset() {
        var driver = SessionDriver()
        _ = driver.receive(SessionDriver.guestHello(), at: 1_000)
        #expect(driver.session.tick(nowMillis: 1_000 + HostSession.pingAfterMillis - 1) == [])
        let ping = driver.session.tick(nowMillis: 1_000 + HostSession.pingAfterMillis)
        #expect(ping.count == 1)
        #expect(ping.sentMessages.contains { if case .ping = $0 { true } else { false } })
        // One ping at a time; reset once it goes unanswered as long again.
        #expect(driver.session.tick(nowMillis: 1_000 + HostSession.pingAfterMillis + 5_000) == [])
        #expect(driver.session.tick(nowMillis: 1_000 + 2 * HostSession.pingAfterMillis - 1) == [])
        #expect(driver.session.tick(nowMillis: 1_000 + 2 * HostSession.pingAfterMillis).resets.count == 1)
    }

    @Test func anAnsweredPingKeepsTheSession() {
        var driver = SessionDriver()
        _ = driver.receive(SessionDriver.guestHello(), at: 0)
        let sent = driver.session.tick(nowMillis: HostSession.pingAfterMillis)
        guard case .send(.ping(let ping), _)? = sent.first else {
            Issue.record("no ping: \(sent)")
            return
        }
        #expect(driver.receive(.pong(Pong(nonce: ping.nonce)), at: HostSession.pingAfterMillis + 100) == [])
        #expect(driver.session.tick(nowMillis: 2 * HostSession.pingAfterMillis) == [])
        // A new ping after a new silence, not a reset.
        let again = driver.session.tick(nowMillis: 2 * HostSession.pingAfterMillis + 100)
        #expect(again.resets.isEmpty)
        #expect(again.sentMessages.count == 1)
    }
}
