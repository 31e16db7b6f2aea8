import BallonetWire

/// What the host knows about one VM, as `ballonetctl status` shows it. Sizes are bytes.
public struct VMAccount: Codable, Equatable, Sendable {
    public var name: String
    /// "starting", "waiting for the guest agent", "established", "unreachable: …".
    public var state: String = "starting"
    public var processID: Int32?
    public var memoryBytes: UInt64 = 0
    /// Resident memory the host wants the VM at.
    public var targetBytes: UInt64 = 0
    /// Why the target is what it is (config, command, budget share).
    public var targetReason: String = ""
    /// The balloon size last asked of the guest.
    public var requestedBalloonBytes: UInt64 = 0
    /// The balloon the guest reports holding.
    public var balloonBytes: UInt64 = 0
    /// Guest RAM resident in QEMU, from /proc/<pid>/smaps.
    public var residentBytes: UInt64 = 0
    /// Guest RAM in host swap, from smaps.
    public var swappedBytes: UInt64 = 0
    /// Host memory freed behind balloon pages since the agent started (measured per batch).
    public var reclaimedBytes: UInt64 = 0
    /// For memfd-backed RAM: what the memfd holds now (fstat), the most direct measure of host memory use.
    public var backingFileBytes: UInt64?
    /// "punch" or "pageout".
    public var reclaimMethod: String = ""
    /// From the guest's last stats sample.
    public var guestUsedBytes: UInt64?
    public var guestAvailableBytes: UInt64?
    /// What ballooning cannot take from the guest (`unreclaimableBytes(sample:memoryBytes:)`): trimming
    /// stops there.
    public var guestUnreclaimableBytes: UInt64?
    public var guestWorkingSetBytes: UInt64?
    /// The policy's working-set estimate: the larger of the host's and the guest's (`WorkingSetSources`).
    public var workingSetEstimateBytes: UInt64?
    /// The two estimates it comes from: the host sampler's (accessed bits of QEMU's guest RAM) and the
    /// guest agent's (its samples), nil while a source has none or its estimate went stale.
    public var hostWorkingSetEstimateBytes: UInt64?
    public var guestWorkingSetEstimateBytes: UInt64?
    /// The host sampler's last sample: guest RAM referenced during its last period, and the period.
    public var hostReferencedBytes: UInt64?
    /// Samples the host sampler has taken of this VM.
    public var hostSamples: UInt64 = 0
    public var samplingPeriodMillis: UInt64?
    /// What the last sample cost the host agent (clear_refs and the smaps read), microseconds.
    public var samplingCostMicros: UInt64?
    /// How the host swaps this VM when ballooning cannot ("cgroup v1 (…)", "pageout of random 2 MiB
    /// ranges"), nil when it does not.
    public var swapMechanism: String?
    /// The limit on resident guest RAM in force, nil for none, and why it is what it is.
    public var swapLimitBytes: UInt64?
    public var swapReason: String?
    /// Bytes paged out by the pageout mechanism since the agent started.
    public var pagedOutBytes: UInt64 = 0
    /// Paused by the host in the low state (QMP stop), to be resumed when memory recovers.
    public var paused: Bool = false
    /// The policy's inputs for this VM.
    public var shares: UInt64?
    public var minBytes: UInt64?
    public var maxBytes: UInt64?
    public var guestStatsSequence: UInt64?
    public var agentVersion: String?
    public var sessions: UInt64 = 0
    public var batchesReclaimed: UInt64 = 0
    public var batchesDeclined: UInt64 = 0
    /// Guest messages refused (bad ranges, floods, malformed frames): never acted on.
    public var refusedMessages: UInt64 = 0
    public var lastRefusal: String?
    /// What the balloon grew and shrank by since the agent started, cumulative (rates for metrics).
    public var inflatedBytes: UInt64 = 0
    public var deflatedBytes: UInt64 = 0
    /// Pages the guest gave back under its own pressure.
    public var pressureReleasedBytes: UInt64 = 0
    /// Page sharing: "on" or "off" and what decided it ("on: host.toml sharing = true").
    public var sharing: String?
    /// How the VM's memory is reclaimed and shared, in one phrase (`MemoryMode`).
    public var memoryMode: String?
    /// Guest RAM is marked for KSM (smaps VmFlags "mg").
    public var mergeable: Bool?
    /// From /proc/<pid>/ksm_stat: pages merged with other pages, pages merged into the zero page, and
    /// KSM's profit for the process (saved less its bookkeeping), bytes.
    public var ksmMergingBytes: UInt64?
    public var ksmZeroPageBytes: UInt64?
    public var ksmProfitBytes: Int64?
    /// What sharing saves the host for this VM (`SharingAccounting`: its shared pages' 1/n rule, and zero
    /// pages beyond its balloon): counted as memory for VMs.
    public var sharingSavedBytes: UInt64?

    public init(name: String) { self.name = name }

    /// The balloon now holds `bytes`: the change is counted as inflated or deflated (wrapping, as counters do).
    mutating func recordBalloon(_ bytes: UInt64) {
        if bytes > balloonBytes {
            inflatedBytes &+= bytes - balloonBytes
        } else {
            deflatedBytes &+= balloonBytes - bytes
        }
        balloonBytes = bytes
    }

    /// Bytes of `pages` 4 KiB pages, saturating: every count comes from the guest (safety invariant 6),
    /// and a hostile one must not make the host trap on overflow.
    public static func bytes(ofPages pages: UInt64) -> UInt64 {
        let (bytes, overflow) = pages.multipliedReportingOverflow(by: 4096)
        return overflow ? .max : bytes
    }

    /// Takes the figures of a stats sample (guest input: saturating arithmetic throughout).
    public mutating func record(_ sample: StatsSample) {
        guestStatsSequence = sample.sequence
        if let total = sample[.memTotal], let available = sample[.memAvailable] {
            let balloon = sample[.balloonPages] ?? 0
            let (kept, overflow) = available.addingReportingOverflow(balloon)
            // The balloon is locked, so MemAvailable leaves it out: what the guest uses itself is the rest.
            let used = !overflow && total > kept ? total - kept : 0
            guestUsedBytes = Self.bytes(ofPages: used)
            guestAvailableBytes = Self.bytes(ofPages: available)
            guestUnreclaimableBytes = Self.unreclaimableBytes(sample: sample, memoryBytes: memoryBytes)
        }
        if let workingSet = sample[.workingSetPages] { guestWorkingSetBytes = Self.bytes(ofPages: workingSet) }
    }
}

extension VMAccount {
    /// What a guest must keep resident, from one stats sample: its working set (MGLRU young pages, or its
    /// active lists and refaults) plus the memory on no LRU list at all (kernel, slab, page tables: used,
    /// but in no working-set figure, and not reclaimable by the guest). nil without a working-set figure.
    /// Guest input: saturating throughout.
    public static func activeBytes(of sample: StatsSample) -> UInt64? {
        guard let workingSet = sample[.workingSetPages] else { return nil }
        var pages = workingSet
        if let total = sample[.memTotal], let free = sample[.memFree], let activeAnon = sample[.activeAnon],
           let inactiveAnon = sample[.inactiveAnon], let activeFile = sample[.activeFile], let inactiveFile = sample[.inactiveFile] {
            let balloon = sample[.balloonPages] ?? 0
            var onLists: UInt64 = 0
            var overflow = false
            for value in [free, balloon, activeAnon, inactiveAnon, activeFile, inactiveFile] {
                let (sum, over) = onLists.addingReportingOverflow(value)
                onLists = sum
                overflow = overflow || over
            }
            if !overflow && total > onLists { pages = pages.addingReportingOverflow(total - onLists).overflow ? .max : pages + (total - onLists) }
        }
        return bytes(ofPages: pages)
    }
}

extension VMAccount {
    /// What ballooning cannot take from a VM of `memoryBytes` of RAM, from its guest's sample: all of RAM
    /// but the balloon and what the balloon can still grow by. The balloon grows until MemAvailable
    /// reaches the free memory the guest agent keeps (`keptFreePages`); a guest that does not say how
    /// much it keeps is taken to keep nothing beyond what it uses and cannot page out (used less its free
    /// swap) plus what its kernel reserved (RAM − MemTotal). Guest input: saturating throughout.
    public static func unreclaimableBytes(sample: StatsSample, memoryBytes: UInt64) -> UInt64? {
        guard let total = sample[.memTotal], let available = sample[.memAvailable] else { return nil }
        let balloon = bytes(ofPages: sample[.balloonPages] ?? 0)
        if let kept = sample[.keptFreePages] {
            let growable = bytes(ofPages: available > kept ? available - kept : 0)
            let (given, overflow) = balloon.addingReportingOverflow(growable)
            return !overflow && memoryBytes > given ? memoryBytes - given : 0
        }
        let (kept, overflow) = available.addingReportingOverflow(sample[.balloonPages] ?? 0)
        let used = !overflow && total > kept ? total - kept : 0
        let swappable = min(sample[.swapFree] ?? 0, sample[.anonPages] ?? 0)
        let reserved = memoryBytes > bytes(ofPages: total) ? memoryBytes - bytes(ofPages: total) : 0
        let (sum, over) = bytes(ofPages: used > swappable ? used - swappable : 0).addingReportingOverflow(reserved)
        return over ? .max : sum
    }
}

/// The host as a whole, for `ballonetctl status`.
public struct HostStatus: Codable, Equatable, Sendable {
    public var version: String
    public var budgetBytes: UInt64?
    /// The free-memory state (high, soft, hard, low) and what it lets the host do.
    public var state: String?
    public var actions: [String]?
    /// Free memory in percent of the host's memory (or of the budget).
    public var freePercent: Double?
    /// M: memory for VMs; capacity: what targets may add up to (M less the free memory kept and fixed targets).
    public var memoryForVMsBytes: UInt64?
    public var capacityBytes: UInt64?
    public var idleTaxRate: Double?
    /// The policy's warning when the VMs' mins do not fit.
    public var warning: String?
    /// Host swap, total and free, bytes: hypervisor swapping needs it.
    public var swapTotalBytes: UInt64?
    public var swapFreeBytes: UInt64?
    /// How the host samples idle guest pages, and what else its kernel offers.
    public var sampling: String?
    /// Where Prometheus metrics are served ("127.0.0.1:9848"), nil when they are off.
    public var metricsAddress: String?
    /// Page sharing (KSM): nil when the kernel has none.
    public var sharing: SharingStatus?
    /// The sharing savings the last policy round counted as memory for VMs.
    public var sharingCreditBytes: UInt64?
    public var vms: [VMAccount]

    public init(version: String, budgetBytes: UInt64?, vms: [VMAccount]) {
        self.version = version
        self.budgetBytes = budgetBytes
        self.vms = vms
    }
}
