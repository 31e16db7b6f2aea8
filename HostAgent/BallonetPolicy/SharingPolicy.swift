/// When and how hard the kernel's ksmd scans for identical pages (ESX's content-based page sharing, done by
/// KSM on Linux). Pure: the facts of the last period in, a setting for ksmd out; `SharingController` in
/// ballonet-host reads the facts and writes the settings.
///
/// The rules, and why:
/// - Nothing to merge (no VM's RAM is mergeable): ksmd stops.
/// - Balloon pages of VMs with sharing on wait for the zero page: ksmd scans at the full CPU bound, since
///   that is reclaim the host asked for, until two passes in a row free none of it (what is left is not
///   zero-filled: KSM cannot free it).
/// - Memory short (soft, hard or low state): ksmd scans at the full bound while scans still merge, and at
///   the calm rate when two whole passes merged almost nothing (pages may change; a slow pass keeps up).
/// - Memory plentiful (high state): ksmd scans at half the bound while passes merge at least
///   `calmYieldMiBPerCPUSecond`, and stops after two whole passes below it: a calm host does not spend CPU
///   for savings nobody needs. It looks again after `recheckMillis`, or at once when the mergeable memory
///   grows (a VM started) or memory gets short.
/// KSM merges a page only when a pass finds its checksum unchanged since the pass before, so the first pass
/// after a start never counts as one that merged nothing.
///
/// Where the kernel has the scan-time advisor, calm scanning goes through it (a pass in `calmScanSeconds`,
/// at most the budget of a core): that is what it was made for. Scanning at the bound (memory short,
/// balloon pages waiting) uses the raw rate, paced by ksmd's measured CPU: the advisor aims at a pass time,
/// not a rate, and here (Linux 6.18, a few small guests whose passes end within a second) it cut
/// pages_to_scan to 10 and ksmd to 0.2 % of a core while 220 MiB of balloon pages waited.
public enum SharingPolicy {
    public struct Settings: Equatable, Sendable {
        /// ksmd's CPU, in percent of one core, at most: its bound when memory is short. 20 %: at the ~6 % of
        /// a core ksmd took here for `pages_to_scan` 2000 every 10 ms, three 1 GiB guests saved 218 MiB in
        /// 40 s; 20 % lets it keep up with ten times that, and stays a fifth of one core of the host's many.
        public var maxCPUPercent: Double = 20
        /// What a pass must merge per ksmd CPU-second for a calm host to keep scanning: 8 MiB. A first pass
        /// over idle guests booted from one image merges about 90 MiB per CPU-second here; a pass over guests
        /// that have nothing left in common merges under 1.
        public var calmYieldMiBPerCPUSecond: Double = 8
        /// What a pass must merge per CPU-second while memory is short to keep the full rate: 1 MiB.
        public var shortYieldMiBPerCPUSecond: Double = 1
        /// How long a stopped ksmd waits on a calm host before one more look: 5 minutes.
        public var recheckMillis: UInt64 = 300_000
        /// Mergeable memory must grow by this much (a VM started, or one turned sharing on) to start a new
        /// look at once: 64 MiB, less than any VM's RAM and more than QEMU's own mergeable allocations move.
        public var newCandidateBytes: UInt64 = 64 << 20

        public init() {}
    }

    /// How to make ksmd scan at a CPU budget.
    public enum Rate: Equatable, Sendable {
        /// Through the kernel's scan-time advisor (Linux 6.7+): it sets pages_to_scan itself so that a pass
        /// takes `targetScanSeconds`, between its own floor of 10 % and `maxCPUPercent` of a core while it runs.
        case advisor(maxCPUPercent: UInt64, targetScanSeconds: UInt64)
        /// Raw: `pagesToScan` pages every `sleepMillis`.
        case raw(pagesToScan: UInt64, sleepMillis: UInt64)
    }

    /// What ksmd should do.
    public struct Decision: Equatable, Sendable {
        /// nil: stopped (KSM's run = 0: merged pages stay merged, nothing new is scanned).
        public var rate: Rate?
        /// The CPU budget the rate aims at, percent of one core (0 when stopped).
        public var cpuBudgetPercent: Double
        /// One sentence for the log and status.
        public var reason: String
        public var running: Bool { rate != nil }
    }

    /// What was measured over the period since the last decision.
    public struct Observation: Equatable, Sendable {
        public var elapsedMillis: UInt64
        /// ksmd's CPU time in the period, nanoseconds.
        public var ksmdCPUNanos: UInt64
        /// Memory KSM saves now (pages_sharing + zero pages, bytes).
        public var savedBytes: UInt64
        /// Whole passes ksmd finished, since boot.
        public var fullScans: UInt64
        /// Guest RAM of running VMs whose RAM is mergeable (sharing on, anonymous RAM).
        public var mergeableBytes: UInt64
        /// Balloon pages of such VMs not yet given to the zero page (bytes): reclaim waiting for ksmd.
        public var pendingZeroMergeBytes: UInt64
        /// The host's free-memory state this round.
        public var state: FreeMemoryState
        /// Whether the kernel has the scan-time advisor.
        public var advisorAvailable: Bool

        public init(elapsedMillis: UInt64, ksmdCPUNanos: UInt64, savedBytes: UInt64, fullScans: UInt64, mergeableBytes: UInt64,
                    pendingZeroMergeBytes: UInt64 = 0, state: FreeMemoryState, advisorAvailable: Bool) {
            self.elapsedMillis = elapsedMillis
            self.ksmdCPUNanos = ksmdCPUNanos
            self.savedBytes = savedBytes
            self.fullScans = fullScans
            self.mergeableBytes = mergeableBytes
            self.pendingZeroMergeBytes = pendingZeroMergeBytes
            self.state = state
            self.advisorAvailable = advisorAvailable
        }
    }

    /// What the policy remembers between rounds.
    public struct Memory: Equatable, Sendable {
        /// ksmd runs (as last decided), and has been started at least once.
        public var running = false
        public var hasLooked = false
        /// Savings and ksmd CPU at the start of the current pass, and how many passes ksmd finished then.
        public var passStartSavedBytes: UInt64 = 0
        /// Balloon memory waiting at the start of the pass, and passes in a row that freed none of it.
        public var passStartPendingBytes: UInt64 = 0
        public var stuckPendingPasses = 0
        public var passCPUNanos: UInt64 = 0
        public var passStartFullScans: UInt64?
        /// Passes finished since ksmd was last started, and how many in a row merged too little.
        public var passesSinceStart = 0
        public var quietPasses = 0
        /// The yield of the last finished pass, MiB per ksmd CPU-second.
        public var lastPassYield: Double?
        /// Time since ksmd was stopped, and the mergeable memory then.
        public var stoppedForMillis: UInt64 = 0
        public var mergeableBytesAtStop: UInt64 = 0
        /// pages_to_scan of the raw rate now, and whether the last round used the raw rate.
        public var pagesToScan: UInt64 = SharingPolicy.initialPagesToScan
        public var usedRawRate = false

        public init() {}
    }

    /// The raw rate's sleep between batches: the kernel's default, 20 ms.
    public static let sleepMillis: UInt64 = 20
    /// The raw rate's batch: 100 pages to start (the kernel's default), within 64 to 30,000 (the advisor's
    /// own ceiling): 30,000 pages every 20 ms is 5.8 GiB/s, more than ksmd can scan on any core.
    public static let initialPagesToScan: UInt64 = 100
    public static let pagesToScanRange: ClosedRange<UInt64> = 64...30_000
    /// Target pass times, which the advisor meets only within the CPU bound: 30 s when calm (KSM merges a
    /// page on the second pass that finds it unchanged, so savings show within a minute or two, and a calm
    /// host stops ksmd two quiet passes later). The raw rate's passes while memory is short (20 s) and while
    /// balloon pages wait (5 s) are what the bound allows; these name the aim.
    public static let calmScanSeconds: UInt64 = 30
    public static let shortScanSeconds: UInt64 = 20
    public static let reclaimScanSeconds: UInt64 = 5

    /// One round.
    public static func decide(_ observation: Observation, memory previous: Memory, settings: Settings) -> (Decision, Memory) {
        var memory = previous
        let cpuSeconds = Double(observation.ksmdCPUNanos) / 1e9
        // Account the period to the pass in progress, and close it when ksmd finished one.
        if memory.running {
            memory.passCPUNanos &+= observation.ksmdCPUNanos
            if let start = memory.passStartFullScans, observation.fullScans > start {
                let gained = observation.savedBytes > memory.passStartSavedBytes ? observation.savedBytes - memory.passStartSavedBytes : 0
                let passCPU = max(Double(memory.passCPUNanos) / 1e9, 0.001)
                let yield = Double(gained) / 1_048_576 / passCPU
                memory.lastPassYield = yield
                memory.passesSinceStart += 1
                let bar = observation.state == .high ? settings.calmYieldMiBPerCPUSecond : settings.shortYieldMiBPerCPUSecond
                // The first pass after a start only records checksums: it cannot merge, so it never counts as quiet.
                memory.quietPasses = memory.passesSinceStart > 1 && yield < bar ? memory.quietPasses + 1 : 0
                let freedPending = memory.passStartPendingBytes > observation.pendingZeroMergeBytes
                    && memory.passStartPendingBytes - observation.pendingZeroMergeBytes >= 1 << 20
                memory.stuckPendingPasses = observation.pendingZeroMergeBytes > 0 && memory.passesSinceStart > 1 && !freedPending
                    ? memory.stuckPendingPasses + 1 : 0
                memory.passStartPendingBytes = observation.pendingZeroMergeBytes
                memory.passStartFullScans = observation.fullScans
                memory.passStartSavedBytes = observation.savedBytes
                memory.passCPUNanos = 0
            } else if memory.passStartFullScans == nil {
                memory.passStartFullScans = observation.fullScans
                memory.passStartSavedBytes = observation.savedBytes
            }
        } else {
            memory.stoppedForMillis &+= observation.elapsedMillis
        }
        let maxBudget = max(settings.maxCPUPercent, 0)
        let calmBudget = maxBudget / 2

        func run(_ budget: Double, scanSeconds: UInt64, useAdvisor: Bool, _ reason: String) -> (Decision, Memory) {
            if !memory.running {
                memory.running = true
                memory.hasLooked = true
                memory.passesSinceStart = 0
                memory.quietPasses = 0
                memory.passStartFullScans = observation.fullScans
                memory.passStartSavedBytes = observation.savedBytes
                memory.passCPUNanos = 0
            }
            let rate: Rate
            if observation.advisorAvailable && useAdvisor {
                rate = .advisor(maxCPUPercent: UInt64(max(budget.rounded(), 1)), targetScanSeconds: scanSeconds)
            } else {
                if !(previous.running && previous.usedRawRate) { memory.pagesToScan = startingPagesToScan(budgetPercent: budget) }
                memory.pagesToScan = nextPagesToScan(current: memory.pagesToScan, budgetPercent: budget,
                                                     cpuSeconds: cpuSeconds, elapsedMillis: observation.elapsedMillis,
                                                     wasRunning: previous.running && previous.usedRawRate)
                rate = .raw(pagesToScan: memory.pagesToScan, sleepMillis: sleepMillis)
            }
            memory.usedRawRate = !(observation.advisorAvailable && useAdvisor)
            return (Decision(rate: rate, cpuBudgetPercent: budget, reason: reason), memory)
        }
        func stop(_ reason: String) -> (Decision, Memory) {
            if memory.running {
                memory.running = false
                memory.stoppedForMillis = 0
                memory.mergeableBytesAtStop = observation.mergeableBytes
                memory.passStartFullScans = nil
                // A later start (memory short, a new VM) begins with a clean record.
                memory.quietPasses = 0
                memory.passesSinceStart = 0
            }
            return (Decision(rate: nil, cpuBudgetPercent: 0, reason: reason), memory)
        }

        let mergeableMiB = observation.mergeableBytes >> 20
        guard observation.mergeableBytes > 0, maxBudget > 0 else {
            return stop(maxBudget > 0 ? "no VM's RAM is mergeable (sharing is off, or RAM is memfd)" : "the CPU bound is 0")
        }
        let yieldText = memory.lastPassYield.map { "last pass merged \(MemoryPolicy.format($0, 1)) MiB per ksmd CPU-second" } ?? "no pass finished yet"
        if observation.pendingZeroMergeBytes == 0 { memory.stuckPendingPasses = 0 }
        if observation.pendingZeroMergeBytes > 0 && memory.stuckPendingPasses < 2 {
            return run(maxBudget, scanSeconds: reclaimScanSeconds, useAdvisor: false,
                       "\(observation.pendingZeroMergeBytes >> 20) MiB of balloon pages wait for the zero page: scanning at the bound")
        }
        if observation.state != .high {
            if memory.quietPasses >= 2 || memory.stuckPendingPasses >= 2 {
                return run(calmBudget, scanSeconds: calmScanSeconds, useAdvisor: true,
                           "memory is short (\(observation.state.rawValue)) but two passes merged almost nothing (\(yieldText)): scanning at the calm rate")
            }
            return run(maxBudget, scanSeconds: shortScanSeconds, useAdvisor: false,
                       "memory is short (\(observation.state.rawValue)): scanning \(mergeableMiB) MiB of mergeable guest RAM at the bound; \(yieldText)")
        }
        if memory.running {
            if memory.quietPasses >= 2 {
                return stop("host calm and two passes merged under \(MemoryPolicy.format(settings.calmYieldMiBPerCPUSecond, 0)) MiB per ksmd CPU-second (\(yieldText)): ksmd stops; merged pages stay merged")
            }
            return run(calmBudget, scanSeconds: calmScanSeconds, useAdvisor: true, "host calm, scans still merging: scanning \(mergeableMiB) MiB at half the bound; \(yieldText)")
        }
        let grown = observation.mergeableBytes > memory.mergeableBytesAtStop
            && observation.mergeableBytes - memory.mergeableBytesAtStop >= settings.newCandidateBytes
        if !memory.hasLooked {
            return run(calmBudget, scanSeconds: calmScanSeconds, useAdvisor: true, "\(mergeableMiB) MiB of guest RAM is mergeable: a first look at half the bound")
        }
        if grown {
            return run(calmBudget, scanSeconds: calmScanSeconds, useAdvisor: true, "mergeable guest RAM grew to \(mergeableMiB) MiB: a new look at half the bound")
        }
        if memory.stoppedForMillis >= settings.recheckMillis {
            return run(calmBudget, scanSeconds: calmScanSeconds, useAdvisor: true, "host calm; \(settings.recheckMillis / 60_000) minutes since the last look: one more at half the bound")
        }
        return (Decision(rate: nil, cpuBudgetPercent: 0, reason: "host calm and nothing left to merge: ksmd idle for \(memory.stoppedForMillis / 1000) s (looks again after \(settings.recheckMillis / 1000) s)"), memory)
    }

    /// ksmd's pages per CPU-second, for the raw rate's first batch size (the CPU feedback corrects it):
    /// 250,000, about 1 GiB per CPU-second, as measured here for zero-filled pages.
    public static let estimatedPagesPerCPUSecond: Double = 250_000

    /// The raw rate's first pages_to_scan for a budget: what the estimate says ksmd scans in a sleep's time.
    static func startingPagesToScan(budgetPercent: Double) -> UInt64 {
        let pages = (budgetPercent / 100 * estimatedPagesPerCPUSecond * Double(sleepMillis) / 1000).rounded()
        return UInt64(min(max(pages, Double(pagesToScanRange.lowerBound)), Double(pagesToScanRange.upperBound)))
    }

    /// The raw rate's next pages_to_scan: scaled by budget ÷ measured CPU, at most 4× up or down a round,
    /// doubled when ksmd used no measurable CPU while running.
    static func nextPagesToScan(current: UInt64, budgetPercent: Double, cpuSeconds: Double, elapsedMillis: UInt64, wasRunning: Bool) -> UInt64 {
        guard wasRunning, elapsedMillis > 0 else { return min(max(current, pagesToScanRange.lowerBound), pagesToScanRange.upperBound) }
        let usedPercent = cpuSeconds * 100_000 / Double(elapsedMillis)
        let factor = usedPercent > 0.01 ? min(max(budgetPercent / usedPercent, 0.25), 4) : 2
        let next = (Double(current) * factor).rounded()
        return UInt64(min(max(next, Double(pagesToScanRange.lowerBound)), Double(pagesToScanRange.upperBound)))
    }
}

/// Who is charged for a shared page, and what sharing adds to the memory for VMs.
///
/// The paper's ESX counts every guest page a VM has against its allocation, shared or not, and lets the
/// savings lower the pressure on the whole system. Ballonet keeps that for targets and ρ (a target is guest
/// pages the VM may keep, whether the host backs them once or shares them), and makes the savings explicit:
/// - a page merged from n guests' pages is charged 1/n to each (the kernel's Pss), so VM i saves its
///   resident bytes less its proportional bytes, and the savings of all VMs add up to KSM's pages_sharing;
/// - a page merged into the kernel's zero page costs nothing; zero pages up to the VM's balloon size are
///   taken to be balloon pages (which the guest zero-fills, and which are outside its target anyway), so
///   only the zero pages beyond the balloon are credited;
/// - the credits of all VMs are memory for VMs: targets may add up to M + Σ credits.
public enum SharingAccounting {
    /// What sharing saves the host for one VM, bytes (every input is a host measurement; saturating).
    public static func savedBytes(residentBytes: UInt64, proportionalBytes: UInt64, zeroPageBytes: UInt64, balloonBytes: UInt64) -> UInt64 {
        let shared = residentBytes > proportionalBytes ? residentBytes - proportionalBytes : 0
        let zero = zeroPageBytes > balloonBytes ? zeroPageBytes - balloonBytes : 0
        let (sum, overflow) = shared.addingReportingOverflow(zero)
        return overflow ? .max : sum
    }

    /// What the VM costs the host: resident less what sharing saves it (never below 0).
    public static func chargedBytes(residentBytes: UInt64, savedBytes: UInt64) -> UInt64 {
        residentBytes > savedBytes ? residentBytes - savedBytes : 0
    }
}

extension SharingPolicy {
    /// How the host gets the memory behind balloon pages of an anonymous-RAM VM back.
    public enum BalloonReclaim: String, Equatable, Sendable {
        /// process_madvise(MADV_PAGEOUT) into host swap: about 1.4 GiB/s here, and since Linux 6.12 a
        /// zero-filled page costs a swap slot but no I/O.
        case pageout
        /// Left to ksmd, which points zero-filled pages at the kernel's zero page: about 1.1 GiB per ksmd
        /// CPU-second here (216 MiB/s at 20 % of a core), and no swap at all.
        case zeroPage = "zero page"
    }

    /// Host swap kept beside a VM's balloon before pageout is preferred: 64 MiB, the hard limit's headroom.
    public static let pageoutSwapReserveBytes: UInt64 = 64 << 20

    /// Pageout while host swap has room for the whole balloon (it frees memory faster than ksmd within its
    /// CPU bound); the zero page when it has not and the VM's RAM is mergeable and ksmd is steered (pageout
    /// would free nothing, or run the swap dry that hypervisor swapping needs).
    public static func balloonReclaim(mergeable: Bool, ksmSteered: Bool, swapFreeBytes: UInt64, balloonBytes: UInt64) -> BalloonReclaim {
        guard mergeable, ksmSteered else { return .pageout }
        let (needed, overflow) = balloonBytes.addingReportingOverflow(pageoutSwapReserveBytes)
        return overflow || swapFreeBytes < needed ? .zeroPage : .pageout
    }
}
