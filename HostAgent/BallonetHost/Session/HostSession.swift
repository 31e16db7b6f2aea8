import BallonetWire

/// The bounds the host puts on what one guest may send (safety invariant 6: a hostile guest can hurt
/// only itself). Each is per VM.
public enum GuestInputLimits {
    /// The period a stats sample says it covers weighs it in the working-set estimate. A guest samples
    /// every 1 s to 1 h (its own configuration's bounds); anything outside is taken as the nearest bound,
    /// so a hostile period can neither freeze the estimate (0) nor make one sample erase its history.
    public static let samplePeriodMillis: ClosedRange<UInt64> = 100...3_600_000
    /// Frames a guest may send per second on average. A guest inflating 4 GiB/s in 4 MiB batches sends
    /// about 1,000 reports a second, far past what any guest does (TCG guests here manage ~1 GiB/s), plus
    /// a sample every few seconds and pings; 2,000 leaves room, and a flood past it costs the host
    /// little before the session is reset.
    public static let framesPerSecond: UInt64 = 2_000
    /// The burst above that rate: a deflate after a pressure spike sends many reports at once.
    public static let frameBurst: UInt64 = 4_000
    /// Frames that failed to decode in one session before the host gives the session up. A healthy
    /// port never corrupts a frame; a few can come from a reset in the middle of a frame.
    public static let decodeErrorsPerSession = 8
    /// Reports refused (bad ranges, stale sessions, unexpected messages) in one session before the
    /// host resets it: one refusal can be a race, dozens are a broken or hostile guest.
    public static let refusalsPerSession = 32
}

/// What the host's session asks its engine to do. The session itself does no I/O.
public enum HostSessionAction: Equatable, Sendable {
    case send(Message, requestID: UInt32)
    /// The handshake completed.
    case established(NegotiatedSession, guestBalloonPages: UInt64)
    /// Reclaim the memory behind these extents, then call `reclaimFinished` with the batch.
    case reclaim(ReclaimRequest)
    /// The guest's balloon changed size (inflate report, deflate report, or its hello).
    case balloonChanged(pages: UInt64, reason: String)
    /// The guest released pages under pressure: the steering must back off from re-inflating.
    case guestReleasedUnderPressure(pages: UInt64)
    case statsReceived(StatsSample)
    /// A guest message refused (logged and counted; never acted on).
    case refused(String)
    /// End this session: after the queued frames, close the port and reconnect after a wait.
    case reset(String)
    case note(String)
}

/// One batch the session found fit to reclaim: what to free, and what to answer afterwards.
public struct ReclaimRequest: Equatable, Sendable {
    public var batchID: UInt64
    public var requestID: UInt32
    public var ranges: PFNRangeList
    public var extents: [BlockExtent]
    public var balloonPagesAfter: UInt64
}

/// The host side of the protocol's session state machine (docs/PROTOCOL.md, "Sessions"), as a pure value:
/// decoded frames and clock ticks in, actions out. It enforces safety invariants 1 and 6: a batch is
/// reclaimed only if it was reported in this host session, all its pages are guest RAM by the VM's map,
/// and none is already in the balloon; everything else is refused and never acted on.
public struct HostSession: Sendable {
    public enum State: Equatable, Sendable {
        case awaitingHello
        case established(NegotiatedSession)
    }

    public private(set) var state: State = .awaitingHello
    /// This host session's id: the fence every inflate report must carry.
    public private(set) var sessionID: UInt64
    public private(set) var guestBalloonPages: UInt64 = 0
    public private(set) var knownBalloon = BalloonPageSet()
    /// Batches handed to reclaim and not yet answered.
    public private(set) var batchesInReclaim: Set<UInt64> = []
    public private(set) var refusals = 0
    public private(set) var decodeErrors = 0
    public private(set) var ignoredBeforeHello = 0

    let map: GuestRAMMap
    private var tokens: UInt64 = GuestInputLimits.frameBurst
    private var tokensUpdatedMillis: UInt64
    private var lastHeardMillis: UInt64
    private var pingSentMillis: UInt64?
    private var nextRequestID: UInt32 = 1
    /// Ping a guest after this long without a frame, and reset after twice that without an answer: the
    /// guest samples every few seconds, so silence this long means the port or the agent is stuck.
    public static let pingAfterMillis: UInt64 = 15_000

    public init(sessionID: UInt64, map: GuestRAMMap, nowMillis: UInt64) {
        self.sessionID = sessionID
        self.map = map
        tokensUpdatedMillis = nowMillis
        lastHeardMillis = nowMillis
    }

    public var negotiated: NegotiatedSession? {
        if case .established(let session) = state { session } else { nil }
    }

    /// Our hello, sent when the port connects, again while the guest stays silent, and as the answer to
    /// a restarted guest's hello.
    ///
    /// A guest that receives a host hello while its session stands begins a new session and sends a new
    /// hello; so a guest hello that arrives within `helloAnswerMillis` of ours is taken as that answer and
    /// completes the handshake, rather than as a restarted guest (which would make each side's new hello
    /// restart the other for ever). A guest that was waiting for our hello does not answer; the window
    /// then simply lapses.
    public mutating func hello(nowMillis: UInt64) -> Message {
        helloSentMillis = nowMillis
        return .hello(Hello(role: .host, sessionID: sessionID, capabilities: [.reclaim]))
    }

    /// How long a guest hello counts as the answer to ours: a TCG guest answers within a second; 10 s
    /// covers a guest that is busy, and a real guest restart inside the window costs only a ping timeout.
    public static let helloAnswerMillis: UInt64 = 10_000
    private var helloSentMillis: UInt64?

    private mutating func requestID() -> UInt32 {
        defer { nextRequestID = nextRequestID == .max ? 1 : nextRequestID + 1 }
        return nextRequestID
    }

    /// A request id for a frame the engine sends on its own (set target).
    public mutating func nextRequest() -> UInt32 { requestID() }

    /// Handles one decoded event. `freshSessionID` gives a new random id for when the guest restarts.
    public mutating func receive(_ event: DecodeEvent, nowMillis: UInt64, freshSessionID: () -> UInt64) -> [HostSessionAction] {
        lastHeardMillis = nowMillis
        pingSentMillis = nil
        guard rateAllows(nowMillis: nowMillis) else {
            return [.refused("more than \(GuestInputLimits.framesPerSecond) frames a second (burst \(GuestInputLimits.frameBurst))"),
                    .send(.error(ErrorReport(code: .rateLimited, message: "too many frames; session reset")), requestID: 0),
                    .send(.goodbye(Goodbye(reason: .protocolError, message: "rate limit exceeded")), requestID: 0),
                    .reset("the guest sent frames faster than \(GuestInputLimits.framesPerSecond) a second")]
        }
        let envelope: Envelope
        switch event {
        case .error(let error):
            decodeErrors += 1
            var actions: [HostSessionAction] = [
                .refused("malformed frame: \(error)"),
                .send(.error(ErrorReport(code: .malformedFrame, message: WireLimits.fittingText("\(error)"))), requestID: 0)]
            if decodeErrors > GuestInputLimits.decodeErrorsPerSession {
                actions += [.send(.goodbye(Goodbye(reason: .protocolError, message: "too many malformed frames")), requestID: 0),
                            .reset("\(decodeErrors) malformed frames in one session")]
            }
            return actions
        case .frame(let frame):
            envelope = frame
        }
        if case .hello(let hello) = envelope.message {
            return handshake(hello, nowMillis: nowMillis, freshSessionID: freshSessionID)
        }
        guard let session = negotiated else {
            ignoredBeforeHello += 1
            return [.note("ignored \(envelope.message.type) before the guest's hello (stale bytes of an earlier session)")]
        }
        switch envelope.message {
        case .inflateReport(let report):
            return inflate(report, requestID: envelope.requestID, session: session)
        case .deflateReport(let report):
            let known = knownBalloon.remove(report.ranges)
            guestBalloonPages = report.balloonPagesAfter
            var actions: [HostSessionAction] = [.balloonChanged(
                pages: report.balloonPagesAfter,
                reason: "guest released \(report.ranges.pageCount) pages (\(report.reason))"
                    + (known < report.ranges.pageCount ? ", \(report.ranges.pageCount - known) of them from before this session" : ""))]
            if report.reason == .guestPressure {
                actions.append(.guestReleasedUnderPressure(pages: report.ranges.pageCount))
            }
            return actions
        case .statsSample(let sample):
            if let balloon = sample[.balloonPages], balloon != guestBalloonPages {
                // Reports say each change; a sample only confirms. A mismatch is a lost report or a race
                // with one in flight: note it, and let the reports keep the count.
                return [.statsReceived(sample), .note("stats say the balloon holds \(balloon) pages, reports say \(guestBalloonPages)")]
            }
            return [.statsReceived(sample)]
        case .ping(let ping):
            return [.send(.pong(Pong(nonce: ping.nonce)), requestID: envelope.requestID)]
        case .pong:
            return []
        case .error(let report):
            return [.note("guest reported an error for request \(envelope.requestID): \(report.code): \(report.message)")]
        case .goodbye(let goodbye):
            return [.reset("guest said goodbye (\(goodbye.reason)): \(goodbye.message)")]
        case .setTarget, .reclaimAck, .reclaimDeclined, .hello:
            return refuse("a guest does not send \(envelope.message.type)", code: .unexpectedMessage, requestID: envelope.requestID)
        }
    }

    private mutating func handshake(_ hello: Hello, nowMillis: UInt64, freshSessionID: () -> UInt64) -> [HostSessionAction] {
        var actions: [HostSessionAction] = []
        let answersOurs = helloSentMillis.map { nowMillis < $0 + Self.helloAnswerMillis } ?? false
        helloSentMillis = nil
        // Whatever the guest held before, a guest hello starts its count afresh: its hello says the size.
        knownBalloon.removeAll()
        if let current = negotiated, !answersOurs {
            // The guest restarted (a new agent, or its session ended): a new host session fences every
            // batch of the old one; none is in reclaim, since reclaim completes before the next frame.
            sessionID = freshSessionID()
            batchesInReclaim.removeAll()
            actions.append(.note("guest began a new session \(hello.sessionID) (was \(current.remoteSessionID)); host session is now \(sessionID)"))
            // A guest whose session still stood answers this with a new hello (inside the window); one
            // that restarted was waiting for it and does not.
            actions.append(.send(self.hello(nowMillis: nowMillis), requestID: 0))
        }
        let local = Hello(role: .host, sessionID: sessionID, capabilities: [.reclaim])
        switch negotiate(local: local, remote: hello) {
        case .failure(let error):
            state = .awaitingHello
            return actions + [
                .send(.error(ErrorReport(code: error.code, message: WireLimits.fittingText(error.description))), requestID: 0),
                .send(.goodbye(Goodbye(reason: error.code == .incompatibleVersion ? .incompatibleVersion : .protocolError,
                                       message: "handshake failed")), requestID: 0),
                .reset(error.description)]
        case .success(let negotiated):
            state = .established(negotiated)
            guestBalloonPages = hello.balloonPages
            return actions + [.established(negotiated, guestBalloonPages: hello.balloonPages),
                              .balloonChanged(pages: hello.balloonPages, reason: "guest hello")]
        }
    }

    private mutating func inflate(_ report: InflateReport, requestID: UInt32, session: NegotiatedSession) -> [HostSessionAction] {
        func decline(_ reason: DeclineReason) -> HostSessionAction {
            .send(.reclaimDeclined(ReclaimDeclined(hostSessionID: report.hostSessionID, batchID: report.batchID, reason: reason)),
                  requestID: requestID)
        }
        // Invariant 1: only a batch pinned for this host session. A stale one may still be in the port.
        guard report.hostSessionID == sessionID else {
            return [.note("ignored inflate report of batch \(report.batchID) for host session \(report.hostSessionID), not ours (\(sessionID))"),
                    decline(.notNeeded)]
        }
        guard !batchesInReclaim.contains(report.batchID) else {
            return refuse("batch \(report.batchID) reported twice", code: .unexpectedMessage, requestID: requestID) + [decline(.notNeeded)]
        }
        guard report.pageOrder <= WireLimits.maxPageOrder else {
            return refuse("page order \(report.pageOrder) is impossible", code: .unexpectedMessage, requestID: requestID)
                + [decline(.outsideGuestRAM)]
        }
        let extents: [BlockExtent]
        do {
            extents = try map.extents(of: report.ranges)
        } catch {
            return refuse("batch \(report.batchID): \(error)", code: .rangeOutsideGuestRAM, requestID: requestID)
                + [decline(.outsideGuestRAM)]
        }
        if let overlap = knownBalloon.firstOverlap(with: report.ranges) {
            return refuse("batch \(report.batchID): pages \(overlap) are already in the balloon", code: .unexpectedMessage,
                          requestID: requestID) + [decline(.outsideGuestRAM)]
        }
        batchesInReclaim.insert(report.batchID)
        return [.reclaim(ReclaimRequest(batchID: report.batchID, requestID: requestID, ranges: report.ranges, extents: extents,
                                        balloonPagesAfter: report.balloonPagesAfter))]
    }

    /// What to tell the guest once reclaim of a batch is done: ack (and count the pages) or decline.
    public mutating func reclaimFinished(_ request: ReclaimRequest, outcome: Result<ReclaimOutcome, ReclaimError>) -> [HostSessionAction] {
        let batchID = request.batchID, requestID = request.requestID, ranges = request.ranges
        let balloonPagesAfter = request.balloonPagesAfter
        guard batchesInReclaim.remove(batchID) != nil else { return [] }
        switch outcome {
        case .success(let done):
            knownBalloon.insert(ranges)
            guestBalloonPages = balloonPagesAfter
            return [.send(.reclaimAck(ReclaimAck(hostSessionID: sessionID, batchID: batchID, reclaimedPages: done.freedBytes / 4096)),
                          requestID: requestID),
                    .balloonChanged(pages: balloonPagesAfter, reason: "batch \(batchID) reclaimed")]
        case .failure(let error):
            return [.note("batch \(batchID) declined: \(error)"),
                    .send(.reclaimDeclined(ReclaimDeclined(hostSessionID: sessionID, batchID: batchID, reason: .reclaimFailed)),
                          requestID: requestID)]
        }
    }

    /// The periodic check: ping a silent guest, give up on one that stays silent.
    public mutating func tick(nowMillis: UInt64) -> [HostSessionAction] {
        guard negotiated != nil else { return [] }
        if let sent = pingSentMillis {
            if nowMillis >= sent + Self.pingAfterMillis {
                return [.reset("no answer from the guest for \((nowMillis > lastHeardMillis ? nowMillis - lastHeardMillis : 0) / 1000) s")]
            }
            return []
        }
        if nowMillis >= lastHeardMillis + Self.pingAfterMillis {
            pingSentMillis = nowMillis
            return [.send(.ping(Ping(nonce: nowMillis)), requestID: requestID())]
        }
        return []
    }

    private mutating func refuse(_ why: String, code: ErrorCode, requestID: UInt32) -> [HostSessionAction] {
        refusals += 1
        var actions: [HostSessionAction] = [.refused(why),
                                            .send(.error(ErrorReport(code: code, message: WireLimits.fittingText(why))), requestID: requestID)]
        if refusals > GuestInputLimits.refusalsPerSession {
            actions += [.send(.goodbye(Goodbye(reason: .protocolError, message: "too many refused messages")), requestID: 0),
                        .reset("\(refusals) refused messages in one session")]
        }
        return actions
    }

    /// A token bucket: `framesPerSecond` tokens a second, at most `frameBurst` saved up.
    private mutating func rateAllows(nowMillis: UInt64) -> Bool {
        if nowMillis > tokensUpdatedMillis {
            let earned = (nowMillis - tokensUpdatedMillis) * GuestInputLimits.framesPerSecond / 1000
            if earned > 0 {
                tokens = min(GuestInputLimits.frameBurst, tokens + earned)
                tokensUpdatedMillis = nowMillis
            }
        }
        guard tokens > 0 else { return false }
        tokens -= 1
        return true
    }
}
