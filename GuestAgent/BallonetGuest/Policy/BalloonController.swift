/// What the guest sees when it decides how to move its balloon. Pure values, in 4 KiB pages.
public struct BalloonObservation: Sendable, Equatable {
    /// The balloon size the host asked for (0 when no host has asked).
    public var targetPages: UInt64
    public var balloonPages: UInt64
    /// Pages of the balloon that may go back now (ack'd, declined, fenced or never reported).
    public var releasablePages: UInt64
    /// Reported batches waiting for the host's answer.
    public var unansweredBatches: Int
    /// MemAvailable of the guest.
    public var availablePages: UInt64
    /// Whether the pressure guard says the guest is under memory pressure right now.
    public var underPressure: Bool
    /// Whether the guard still holds inflation back after recent pressure.
    public var inflationHeldBack: Bool

    public init(targetPages: UInt64, balloonPages: UInt64, releasablePages: UInt64, unansweredBatches: Int,
                availablePages: UInt64, underPressure: Bool = false, inflationHeldBack: Bool = false) {
        self.targetPages = targetPages
        self.balloonPages = balloonPages
        self.releasablePages = releasablePages
        self.unansweredBatches = unansweredBatches
        self.availablePages = availablePages
        self.underPressure = underPressure
        self.inflationHeldBack = inflationHeldBack
    }
}

/// The guest's own limits on its balloon.
public struct BalloonLimits: Sendable, Equatable {
    /// Pages pinned per batch: small, so the host's transient (it backs each page the guest zero-fills
    /// before it can discard it) stays small. Default 4 MiB.
    public var batchPages: UInt64
    /// Free memory the balloon never takes from the guest (safety invariant 5).
    public var floorPages: UInt64
    /// Most reported batches awaiting an answer: bounds the pages the guest cannot release under pressure.
    public var maxUnansweredBatches: Int

    public init(batchPages: UInt64 = 1024, floorPages: UInt64, maxUnansweredBatches: Int = 4) {
        self.batchPages = batchPages
        self.floorPages = floorPages
        self.maxUnansweredBatches = maxUnansweredBatches
    }
}

/// What to do next.
public enum BalloonStep: Equatable, Sendable {
    case hold(why: HoldReason)
    /// Pin one batch of this many pages.
    case inflate(pages: UInt64)
    /// Release releasable batches: for `.pressure`, at least `pages` (as many whole batches as cover
    /// them); for `.target`, at most `pages`, so the balloon never undershoots its target.
    case deflate(pages: UInt64, because: DeflateCause)
}

public enum DeflateCause: Equatable, Sendable {
    case target
    case pressure
}

public enum HoldReason: Equatable, Sendable {
    case atTarget
    case atFloor
    case waitingForAnswers
    case backingOffAfterPressure
    /// Above target, but every page above it waits for the host's answer.
    case cannotReleaseYet
}

/// Decides the balloon's next step: the pure rule behind inflate and deflate.
/// - Pressure first: release what may be released, at once.
/// - Above target: release down to it.
/// - Below target: pin one more batch, if the floor, the backoff and the in-flight limit allow.
public func nextBalloonStep(_ now: BalloonObservation, limits: BalloonLimits) -> BalloonStep {
    if now.underPressure {
        guard now.releasablePages > 0 else { return .hold(why: .cannotReleaseYet) }
        // Free memory under the floor: give back what restores it with a margin of two batches, not the
        // whole balloon (a 1 MiB breach must not cost the host 700 MiB). A stall with memory above that
        // line is pressure the balloon cannot measure by size: give back everything it may.
        let line = limits.floorPages + 2 * limits.batchPages
        if now.availablePages < line {
            return .deflate(pages: min(now.releasablePages, line - now.availablePages), because: .pressure)
        }
        return .deflate(pages: now.releasablePages, because: .pressure)
    }
    if now.balloonPages > now.targetPages {
        let excess = now.balloonPages - now.targetPages
        guard now.releasablePages > 0 else { return .hold(why: .cannotReleaseYet) }
        return .deflate(pages: min(excess, now.releasablePages), because: .target)
    }
    let wanted = now.targetPages - now.balloonPages
    guard wanted > 0 else { return .hold(why: .atTarget) }
    guard !now.inflationHeldBack else { return .hold(why: .backingOffAfterPressure) }
    guard now.unansweredBatches < limits.maxUnansweredBatches else { return .hold(why: .waitingForAnswers) }
    // One batch of margin above the floor: MemAvailable moves while a batch is pinned, and the guard
    // must not fire on the balloon's own last batch.
    let stop = limits.floorPages + limits.batchPages
    guard now.availablePages > stop else { return .hold(why: .atFloor) }
    let room = now.availablePages - stop
    let pages = min(wanted, limits.batchPages, room)
    return .inflate(pages: pages)
}
