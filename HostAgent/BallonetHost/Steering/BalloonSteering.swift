/// Turns a VM's memory target into the balloon sizes the host asks its guest for, one decision per tick:
/// a pure value (nothing but numbers in and out), so convergence is tested without a VM.
///
/// The rules, each against a way balloons misbehave:
/// - Deflating (giving the guest memory) is never delayed: a guest that needs memory must get it now.
/// - Inflating moves by at most `inflateStepPages` per `stepMillis`, so a target that drops by gigabytes
///   does not hit the guest at once (oVirt MoM moves at most 5 % per 10 s; a TCG guest here inflates
///   about 1 GiB/s, so the default 256 MiB per second is a pace the guest can follow, and the host sees
///   each step land before it takes the next).
/// - A new request only goes out when the wanted size differs from the last one sent by more than
///   `deadbandPages`: small wobbles of the target (a working-set estimate moving by a few pages) do not
///   make the balloon twitch.
/// - When the guest released pages under pressure, the host does not ask for them back for
///   `pressureBackoffMillis`: without that, host and guest would pass the same pages back and forth.
/// Together: the requested size moves monotonically toward the target and stops there; it cannot
/// oscillate unless the target itself does.
public struct BalloonSteering: Sendable, Equatable {
    public struct Settings: Sendable, Equatable {
        public var inflateStepPages: UInt64
        public var stepMillis: UInt64
        public var deadbandPages: UInt64
        public var pressureBackoffMillis: UInt64

        /// 256 MiB per second; 1 MiB deadband; 30 s backoff after guest pressure (the guest's own default
        /// backoff is 30 s too, so the two give way for the same time).
        public init(inflateStepPages: UInt64 = 65_536, stepMillis: UInt64 = 1_000, deadbandPages: UInt64 = 256,
                    pressureBackoffMillis: UInt64 = 30_000) {
            self.inflateStepPages = inflateStepPages
            self.stepMillis = stepMillis
            self.deadbandPages = deadbandPages
            self.pressureBackoffMillis = pressureBackoffMillis
        }
    }

    public let settings: Settings
    /// The balloon size last asked of the guest in this session; nil before the first request.
    public private(set) var requestedPages: UInt64?
    private var requestedAtMillis: UInt64 = 0
    public private(set) var backoffUntilMillis: UInt64 = 0

    public init(settings: Settings = Settings()) { self.settings = settings }

    /// A new guest session: the guest starts without a target, so the next tick sends one.
    public mutating func sessionStarted() { requestedPages = nil }

    /// The guest released pages under pressure: hold the balloon where it is now for a while.
    public mutating func guestReleasedUnderPressure(balloonPagesNow: UInt64, nowMillis: UInt64) {
        backoffUntilMillis = nowMillis + settings.pressureBackoffMillis
        if let requested = requestedPages, requested > balloonPagesNow { requestedPages = balloonPagesNow }
    }

    /// Whether inflating is on hold after guest pressure.
    public func inBackoff(nowMillis: UInt64) -> Bool { nowMillis < backoffUntilMillis }

    /// The balloon size to ask for now, or nil to send nothing.
    /// - wantedPages: the balloon that would bring the VM to its target (RAM − target).
    /// - balloonPages: what the guest last said its balloon holds.
    public mutating func next(wantedPages: UInt64, balloonPages: UInt64, nowMillis: UInt64) -> UInt64? {
        var wanted = wantedPages
        if inBackoff(nowMillis: nowMillis) { wanted = min(wanted, max(balloonPages, requestedPages ?? 0)) }
        guard let requested = requestedPages else {
            // First request of a session: never more than one step above what the guest holds.
            let first = wanted <= balloonPages ? wanted : min(wanted, balloonPages + settings.inflateStepPages)
            return record(first, nowMillis: nowMillis)
        }
        if wanted < requested {
            // Deflate: at once, unless the change is inside the deadband (and not a full release).
            guard requested - wanted > settings.deadbandPages || wanted == 0 else { return nil }
            return record(wanted, nowMillis: nowMillis)
        }
        guard wanted > requested + settings.deadbandPages else { return nil }
        guard nowMillis >= requestedAtMillis + settings.stepMillis else { return nil }
        // Pace the guest: ask for the next step only once it holds all but one step of the last request,
        // so a guest that lags (or sits at its floor) is not pushed further and further behind.
        guard requested <= balloonPages + settings.inflateStepPages else { return nil }
        return record(min(wanted, requested + settings.inflateStepPages), nowMillis: nowMillis)
    }

    private mutating func record(_ pages: UInt64, nowMillis: UInt64) -> UInt64? {
        if pages == requestedPages { return nil }
        requestedPages = pages
        requestedAtMillis = nowMillis
        return pages
    }
}
