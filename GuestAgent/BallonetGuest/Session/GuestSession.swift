import BallonetWire

/// What the guest's session asks its daemon to do. The session itself does no I/O.
public enum GuestSessionAction: Equatable, Sendable {
    case send(Message, requestID: UInt32)
    /// A handshake completed: the host speaks `session.version`, its session id fences reclaim.
    case established(NegotiatedSession)
    /// The host asked for a new balloon size.
    case targetChanged(UInt64)
    /// The host declined batches: release them now (deflate, reason "declined by host").
    case releaseDeclined
    /// The session cannot go on (incompatible peer, protocol error, goodbye): after the frames already
    /// queued, wait `retryAfterMillis` and start a new session with a new hello.
    case restart(reason: String, retryAfterMillis: UInt64)
    /// Something worth a log line that changes nothing (an ignored stale frame, the host's error report).
    case note(String)
}

/// The guest side of the protocol's session state machine (docs/PROTOCOL.md, "Sessions"), as a pure
/// value: frames and clock ticks in, actions out. The balloon ledger is passed in so that acks,
/// declines and new host sessions change it in the same step that reads them.
public struct GuestSession: Sendable {
    public enum State: Equatable, Sendable {
        case awaitingHello
        case established(NegotiatedSession)
    }

    public struct Settings: Sendable, Equatable {
        public var capabilities: Capabilities
        /// Ping the host after this long without hearing from it…
        public var pingAfterMillis: UInt64
        /// …and give the session up after this long.
        public var silenceLimitMillis: UInt64
        /// Wait before a new session after an incompatible or misbehaving host.
        public var retryAfterMillis: UInt64

        public init(capabilities: Capabilities, pingAfterMillis: UInt64 = 10_000, silenceLimitMillis: UInt64 = 30_000,
                    retryAfterMillis: UInt64 = 5_000) {
            self.capabilities = capabilities
            self.pingAfterMillis = pingAfterMillis
            self.silenceLimitMillis = silenceLimitMillis
            self.retryAfterMillis = retryAfterMillis
        }
    }

    public private(set) var state: State = .awaitingHello
    public private(set) var sessionID: UInt64
    public private(set) var targetPages: UInt64 = 0
    /// Frames dropped before a handshake: stale bytes of an earlier session.
    public private(set) var ignoredFrames = 0
    let settings: Settings
    private var nextRequestID: UInt32 = 1
    private var lastHeardMillis: UInt64
    private var pingOutstanding = false

    public init(sessionID: UInt64, settings: Settings, nowMillis: UInt64) {
        self.sessionID = sessionID
        self.settings = settings
        lastHeardMillis = nowMillis
    }

    public var hostSession: NegotiatedSession? {
        if case .established(let session) = state { session } else { nil }
    }

    private mutating func requestID() -> UInt32 {
        defer { nextRequestID = nextRequestID == .max ? 1 : nextRequestID + 1 }
        return nextRequestID
    }

    /// The hello that opens this session.
    public func hello(balloonPages: UInt64) -> Message {
        .hello(Hello(role: .guest, sessionID: sessionID, capabilities: settings.capabilities, balloonPages: balloonPages))
    }

    /// Starts a new session with a fresh id: the daemon sends the returned hello.
    public mutating func restart(sessionID: UInt64, balloonPages: UInt64, nowMillis: UInt64) -> Message {
        self.sessionID = sessionID
        state = .awaitingHello
        lastHeardMillis = nowMillis
        pingOutstanding = false
        return hello(balloonPages: balloonPages)
    }

    /// A message (requestID of the next request the daemon sends itself, e.g. an inflate report).
    public mutating func nextRequest() -> UInt32 { requestID() }

    /// Handles one decoded event. `freshSessionID` gives a new random session id, needed when the host
    /// begins a new session while ours stands.
    public mutating func receive(_ event: DecodeEvent, nowMillis: UInt64, ledger: inout BalloonLedger,
                                 freshSessionID: () -> UInt64) -> [GuestSessionAction] {
        lastHeardMillis = nowMillis
        pingOutstanding = false
        guard case .frame(let envelope) = event else {
            guard case .error(let error) = event else { return [] }
            // The host sent bytes that are not a good frame: say so, end the session, begin anew.
            return [.send(.error(ErrorReport(code: .malformedFrame, message: WireLimits.fittingText("\(error)"))), requestID: 0),
                    .send(.goodbye(Goodbye(reason: .protocolError, message: "malformed frame from host")), requestID: 0),
                    .restart(reason: "malformed frame from host: \(error)", retryAfterMillis: 0)]
        }
        let message = envelope.message
        if case .hello(let hello) = message {
            return handshake(hello, ledger: &ledger, freshSessionID: freshSessionID)
        }
        guard let session = hostSession else {
            ignoredFrames += 1
            return [.note("ignored \(message.type) before the host's hello (stale bytes of an earlier session)")]
        }
        switch message {
        case .setTarget(let target):
            targetPages = target.balloonPages
            return [.targetChanged(target.balloonPages)]
        case .reclaimAck(let ack):
            switch ledger.acknowledge(hostSession: ack.hostSessionID, batch: ack.batchID) {
            case .applied: return []
            case .staleSession: return [.note("ignored ack of batch \(ack.batchID) from host session \(ack.hostSessionID), not the current \(session.hostSessionID)")]
            case .unknownBatch: return [.note("ignored ack of batch \(ack.batchID): not awaiting an answer")]
            }
        case .reclaimDeclined(let declined):
            switch ledger.decline(hostSession: declined.hostSessionID, batch: declined.batchID) {
            case .applied: return [.note("host declined batch \(declined.batchID): \(declined.reason)"), .releaseDeclined]
            case .staleSession: return [.note("ignored decline of batch \(declined.batchID) from an earlier host session")]
            case .unknownBatch: return [.note("ignored decline of batch \(declined.batchID): not awaiting an answer")]
            }
        case .ping(let ping):
            return [.send(.pong(Pong(nonce: ping.nonce)), requestID: envelope.requestID)]
        case .pong:
            return []
        case .error(let report):
            return [.note("host reported an error for request \(envelope.requestID): \(report.code): \(report.message)")]
        case .goodbye(let goodbye):
            ledger.endHostSession()
            state = .awaitingHello
            return [.restart(reason: "host said goodbye (\(goodbye.reason)): \(goodbye.message)", retryAfterMillis: 0)]
        case .inflateReport, .deflateReport, .statsSample, .hello:
            return [.send(.error(ErrorReport(code: .unexpectedMessage, message: "a host does not send \(message.type)")),
                          requestID: envelope.requestID)]
        }
    }

    private mutating func handshake(_ hello: Hello, ledger: inout BalloonLedger,
                                    freshSessionID: () -> UInt64) -> [GuestSessionAction] {
        var actions: [GuestSessionAction] = []
        if let current = hostSession {
            // The host began a new session while ours stood (it restarted): begin ours anew too, with a new
            // hello, and take its hello as the handshake of the new session. It waits for ours; no loop.
            sessionID = freshSessionID()
            actions.append(.note("host began a new session \(hello.sessionID) (was \(current.remoteSessionID))"))
            actions.append(.send(self.hello(balloonPages: ledger.pinnedPages), requestID: 0))
        }
        let local = Hello(role: .guest, sessionID: sessionID, capabilities: settings.capabilities)
        switch negotiate(local: local, remote: hello) {
        case .failure(let error):
            state = .awaitingHello
            ledger.endHostSession()
            return actions + [
                .send(.error(ErrorReport(code: error.code, message: WireLimits.fittingText(error.description))), requestID: 0),
                .send(.goodbye(Goodbye(reason: error.code == .incompatibleVersion ? .incompatibleVersion : .protocolError,
                                       message: "handshake failed")), requestID: 0),
                .restart(reason: error.description, retryAfterMillis: settings.retryAfterMillis)]
        case .success(let negotiated):
            state = .established(negotiated)
            // Safety invariant 2: a new host session id fences every batch reported to an older one.
            ledger.beginHostSession(negotiated.hostSessionID)
            return actions + [.established(negotiated)]
        }
    }

    /// Clock tick: pings a quiet host, gives up on a silent one.
    public mutating func tick(nowMillis: UInt64, ledger: inout BalloonLedger) -> [GuestSessionAction] {
        guard hostSession != nil else { return [] }
        let quiet = nowMillis &- lastHeardMillis
        if quiet >= settings.silenceLimitMillis {
            ledger.endHostSession()
            state = .awaitingHello
            return [.restart(reason: "no word from the host for \(quiet / 1000) s", retryAfterMillis: 0)]
        }
        if quiet >= settings.pingAfterMillis && !pingOutstanding {
            pingOutstanding = true
            return [.send(.ping(Ping(nonce: nowMillis)), requestID: requestID())]
        }
        return []
    }
}
