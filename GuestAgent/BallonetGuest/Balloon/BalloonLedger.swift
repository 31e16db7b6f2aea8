import BallonetWire

/// One batch of balloon pages: a region of the balloon file, pinned together, reported together, and
/// answered together by the host.
public struct BalloonBatch: Hashable, Sendable {
    /// Where a batch stands in the ack protocol (docs/PROTOCOL.md, "Balloon batches").
    public enum State: Hashable, Sendable {
        /// Pinned, not yet reported: the host knows nothing of it, so it may be released at any time.
        case pinned
        /// Reported to this host session, not yet answered: the host may be discarding the memory behind
        /// it right now, so it must stay pinned.
        case reported(hostSession: UInt64)
        /// The host answered with an ack: it is done with these pages; they may be released.
        case acknowledged(hostSession: UInt64)
        /// The host declined it: it never touched the memory, and does not want the pages, so they go
        /// back to the guest at once.
        case declined
        /// Reported to a host session that has since ended: no host can act on it any more.
        case fenced
    }

    public let id: UInt64
    /// Byte offset of the batch in the balloon file.
    public let fileOffset: UInt64
    /// 4 KiB pages in the batch.
    public let pageCount: UInt64
    /// Order of the pages the kernel gave (0: 4 KiB, 9: 2 MiB), as the inflate report says.
    public var pageOrder: UInt8
    /// The guest-physical pages behind the batch, read from pagemap right before the report.
    public var ranges: PFNRangeList
    public var state: State

    public init(id: UInt64, fileOffset: UInt64, pageCount: UInt64, pageOrder: UInt8 = 0,
                ranges: PFNRangeList = PFNRangeList(), state: State = .pinned) {
        self.id = id
        self.fileOffset = fileOffset
        self.pageCount = pageCount
        self.pageOrder = pageOrder
        self.ranges = ranges
        self.state = state
    }

    /// Safety invariant 2: a page goes back to the guest only if the host can no longer be discarding
    /// the memory behind it.
    public var mayRelease: Bool {
        switch state {
        case .pinned, .acknowledged, .declined, .fenced: true
        case .reported: false
        }
    }
}

/// What the ledger made of a host's answer.
public enum AnswerOutcome: Equatable, Sendable {
    case applied
    /// The answer names a host session that is not the current one: stale bytes from an earlier
    /// connection. Ignored.
    case staleSession
    /// No reported batch has that id in this session (never reported, already answered, or released).
    case unknownBatch
}

/// Every batch of the balloon and its state: the pure bookkeeping behind safety invariant 2. The
/// balloon mechanism pins and releases; this decides what may be released.
public struct BalloonLedger: Sendable {
    public private(set) var batches: [BalloonBatch] = []
    public private(set) var hostSession: UInt64?

    public init() {}

    public var pinnedPages: UInt64 { batches.reduce(0) { $0 + $1.pageCount } }
    /// Pages whose batches are reported and unanswered: the reserve the guest cannot give back yet.
    public var unansweredPages: UInt64 { batches.filter { !$0.mayRelease }.reduce(0) { $0 + $1.pageCount } }
    public var unansweredBatchCount: Int { batches.filter { !$0.mayRelease }.count }
    public var releasablePages: UInt64 { batches.filter(\.mayRelease).reduce(0) { $0 + $1.pageCount } }

    public func batch(_ id: UInt64) -> BalloonBatch? { batches.first { $0.id == id } }

    public mutating func add(_ batch: BalloonBatch) {
        precondition(self.batch(batch.id) == nil, "batch ids are unique")
        batches.append(batch)
    }

    /// A new host session began (its hello arrived): every batch reported to an older session is fenced,
    /// and acknowledgements from older sessions no longer count for anything but release.
    public mutating func beginHostSession(_ session: UInt64) {
        hostSession = session
        for index in batches.indices {
            if case .reported(let old) = batches[index].state, old != session { batches[index].state = .fenced }
        }
    }

    /// The connection to the host is gone. Reported batches stay reported: the same host session might
    /// still be acting on them until a new session id proves otherwise.
    public mutating func endHostSession() {
        hostSession = nil
    }

    /// Records that `id` was reported to the current host session with these ranges.
    public mutating func markReported(_ id: UInt64, ranges: PFNRangeList, pageOrder: UInt8) {
        guard let session = hostSession, let index = batches.firstIndex(where: { $0.id == id }) else { return }
        batches[index].ranges = ranges
        batches[index].pageOrder = pageOrder
        batches[index].state = .reported(hostSession: session)
    }

    /// The host acknowledged a batch.
    public mutating func acknowledge(hostSession session: UInt64, batch id: UInt64) -> AnswerOutcome {
        answer(session, id, with: .acknowledged(hostSession: session))
    }

    /// The host declined a batch: it never touched the memory, so the batch may go back at once.
    public mutating func decline(hostSession session: UInt64, batch id: UInt64) -> AnswerOutcome {
        answer(session, id, with: .declined)
    }

    /// Batches the host declined: to be released at once.
    public var declined: [BalloonBatch] { batches.filter { $0.state == .declined } }

    private mutating func answer(_ session: UInt64, _ id: UInt64, with state: BalloonBatch.State) -> AnswerOutcome {
        guard session == hostSession else { return .staleSession }
        guard let index = batches.firstIndex(where: { $0.id == id }),
              batches[index].state == .reported(hostSession: session) else { return .unknownBatch }
        batches[index].state = state
        return .applied
    }

    /// Batches that may be released, newest first, enough to cover `pages` (whole batches: the last one
    /// may overshoot). Newest first keeps the oldest, longest-settled pages in the balloon.
    public func releasable(covering pages: UInt64) -> [BalloonBatch] {
        var chosen: [BalloonBatch] = []
        var total: UInt64 = 0
        for batch in batches.reversed() where batch.mayRelease && total < pages {
            chosen.append(batch)
            total += batch.pageCount
        }
        return chosen
    }

    /// Releasable batches, newest first, adding up to no more than `pages`: how the balloon comes down to
    /// a target without overshooting it (and then climbing back, and oscillating).
    public func releasable(notExceeding pages: UInt64) -> [BalloonBatch] {
        var chosen: [BalloonBatch] = []
        var total: UInt64 = 0
        for batch in batches.reversed() where batch.mayRelease && total + batch.pageCount <= pages {
            chosen.append(batch)
            total += batch.pageCount
        }
        return chosen
    }

    /// Forgets released batches. Refuses (and returns false for) any that may not be released.
    @discardableResult
    public mutating func remove(_ ids: [UInt64]) -> Bool {
        let removable = Set(ids)
        guard batches.allSatisfy({ !removable.contains($0.id) || $0.mayRelease }) else { return false }
        batches.removeAll { removable.contains($0.id) }
        return true
    }
}
