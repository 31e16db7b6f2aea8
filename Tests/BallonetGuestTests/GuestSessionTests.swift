import Testing
import BallonetWire
@testable import BallonetGuest

@Suite struct GuestSessionTests {
    let settings = GuestSession.Settings(capabilities: [.hugePages, .statsSamples], pingAfterMillis: 1_000,
                                         silenceLimitMillis: 5_000, retryAfterMillis: 2_000)
    let hostHello = Hello(role: .host, sessionID: 500, capabilities: [.reclaim], softwareVersion: "9.9")

    func frame(_ message: Message, id: UInt32 = 3) -> DecodeEvent { .frame(Envelope(requestID: id, message: message)) }

    func established(_ ledger: inout BalloonLedger) -> GuestSession {
        var session = GuestSession(sessionID: 42, settings: settings, nowMillis: 0)
        _ = session.receive(frame(.hello(hostHello)), nowMillis: 0, ledger: &ledger, freshSessionID: { 43 })
        return session
    }

    @Test func theHostsHelloEstablishesTheSessionAndItsFence() {
        var ledger = BalloonLedger()
        var session = GuestSession(sessionID: 42, settings: settings, nowMillis: 0)
        #expect(session.hello(balloonPages: 9) == .hello(Hello(role: .guest, sessionID: 42, capabilities: [.hugePages, .statsSamples], balloonPages: 9)))
        let actions = session.receive(frame(.hello(hostHello)), nowMillis: 0, ledger: &ledger, freshSessionID: { 43 })
        guard case .established(let negotiated)? = actions.last else {
            Issue.record("no session: \(actions)")
            return
        }
        #expect(negotiated.hostSessionID == 500)
        #expect(negotiated.remoteSoftwareVersion == "9.9")
        #expect(ledger.hostSession == 500)
    }

    @Test func framesBeforeTheHelloAreStaleAndIgnored() {
        var ledger = BalloonLedger()
        var session = GuestSession(sessionID: 42, settings: settings, nowMillis: 0)
        let actions = session.receive(frame(.setTarget(SetTarget(balloonPages: 100))), nowMillis: 0, ledger: &ledger, freshSessionID: { 1 })
        #expect(session.targetPages == 0)
        #expect(session.ignoredFrames == 1)
        #expect(actions.allSatisfy { if case .note = $0 { true } else { false } })
    }

    @Test func anIncompatibleHostGetsAnErrorAndAGoodbyeAndWeRetryLater() {
        var ledger = BalloonLedger()
        var session = GuestSession(sessionID: 42, settings: settings, nowMillis: 0)
        var future = hostHello
        future.minVersion = 7
        future.maxVersion = 9
        let actions = session.receive(frame(.hello(future)), nowMillis: 0, ledger: &ledger, freshSessionID: { 1 })
        #expect(actions.count == 3)
        guard case .send(.error(let report), _) = actions[0], case .send(.goodbye(let goodbye), _) = actions[1],
              case .restart(_, let retry) = actions[2] else {
            Issue.record("unexpected \(actions)")
            return
        }
        #expect(report.code == .incompatibleVersion)
        #expect(report.message.contains("7–9"))
        #expect(goodbye.reason == .incompatibleVersion)
        #expect(retry == 2_000)
        #expect(session.hostSession == nil)
    }

    @Test func targetsAcksDeclinesAndPings() {
        var ledger = BalloonLedger()
        var session = established(&ledger)
        #expect(session.receive(frame(.setTarget(SetTarget(balloonPages: 4096))), nowMillis: 1, ledger: &ledger, freshSessionID: { 1 }) == [.targetChanged(4096)])
        ledger.add(BalloonBatch(id: 1, fileOffset: 0, pageCount: 1024))
        ledger.add(BalloonBatch(id: 2, fileOffset: 4 << 20, pageCount: 1024))
        let ranges = try! PFNRangeList(validating: [PFNRange(start: 1, count: 1024)])
        ledger.markReported(1, ranges: ranges, pageOrder: 0)
        ledger.markReported(2, ranges: ranges, pageOrder: 0)
        #expect(session.receive(frame(.reclaimAck(ReclaimAck(hostSessionID: 500, batchID: 1, reclaimedPages: 1024))),
                                nowMillis: 2, ledger: &ledger, freshSessionID: { 1 }) == [])
        #expect(ledger.batch(1)?.state == .acknowledged(hostSession: 500))
        let stale = session.receive(frame(.reclaimAck(ReclaimAck(hostSessionID: 499, batchID: 2, reclaimedPages: 1024))),
                                    nowMillis: 2, ledger: &ledger, freshSessionID: { 1 })
        #expect(stale.count == 1 && ledger.batch(2)?.mayRelease == false)
        let declined = session.receive(frame(.reclaimDeclined(ReclaimDeclined(hostSessionID: 500, batchID: 2, reason: .notNeeded))),
                                       nowMillis: 3, ledger: &ledger, freshSessionID: { 1 })
        #expect(declined.last == .releaseDeclined)
        #expect(session.receive(frame(.ping(Ping(nonce: 77)), id: 12), nowMillis: 4, ledger: &ledger, freshSessionID: { 1 })
                == [.send(.pong(Pong(nonce: 77)), requestID: 12)])
    }

    @Test func aMalformedFrameResetsTheSession() {
        var ledger = BalloonLedger()
        var session = established(&ledger)
        let actions = session.receive(.error(.badPayloadChecksum(type: 2, requestID: 1)), nowMillis: 1, ledger: &ledger, freshSessionID: { 1 })
        guard actions.count == 3, case .send(.error(let report), _) = actions[0], case .send(.goodbye(let goodbye), _) = actions[1],
              case .restart = actions[2] else {
            Issue.record("unexpected \(actions)")
            return
        }
        #expect(report.code == .malformedFrame)
        #expect(goodbye.reason == .protocolError)
    }

    @Test func aRestartedHostFencesTheOldReportsAndGetsANewHello() {
        var ledger = BalloonLedger()
        var session = established(&ledger)
        ledger.add(BalloonBatch(id: 1, fileOffset: 0, pageCount: 1024))
        ledger.markReported(1, ranges: try! PFNRangeList(validating: [PFNRange(start: 1, count: 1024)]), pageOrder: 0)
        var restarted = hostHello
        restarted.sessionID = 501
        let actions = session.receive(frame(.hello(restarted)), nowMillis: 1, ledger: &ledger, freshSessionID: { 4242 })
        #expect(session.sessionID == 4242)
        #expect(actions.contains(.send(.hello(Hello(role: .guest, sessionID: 4242, capabilities: settings.capabilities, balloonPages: 1024)), requestID: 0)))
        #expect(session.hostSession?.hostSessionID == 501)
        #expect(ledger.batch(1)?.state == .fenced)
    }

    @Test func aQuietHostIsPingedAndASilentOneGivenUp() {
        var ledger = BalloonLedger()
        var session = established(&ledger)
        #expect(session.tick(nowMillis: 500, ledger: &ledger) == [])
        let ping = session.tick(nowMillis: 1_000, ledger: &ledger)
        guard case .send(.ping, _)? = ping.first else {
            Issue.record("no ping: \(ping)")
            return
        }
        #expect(session.tick(nowMillis: 2_000, ledger: &ledger) == [], "one ping outstanding at a time")
        guard case .restart? = session.tick(nowMillis: 5_000, ledger: &ledger).first else {
            Issue.record("a silent host is not given up")
            return
        }
        #expect(session.hostSession == nil)
    }
}
