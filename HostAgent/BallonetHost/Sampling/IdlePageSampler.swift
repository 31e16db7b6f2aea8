import BallonetLinux

/// What the host kernel offers for finding idle guest pages without the guest's help, and which of it the
/// sampler uses. Detected once at startup (read-only: nothing here disturbs another user of DAMON).
public struct IdlePageSamplingSupport: Equatable, Sendable, CustomStringConvertible {
    /// /sys/kernel/mm/page_idle/bitmap (CONFIG_IDLE_PAGE_TRACKING): per-PFN idle bits.
    public var pageIdle: Bool
    /// DAMON's sysfs interface, and whether it monitors virtual address spaces ("vaddr"): nil when no
    /// DAMON context exists to read `avail_operations` from (creating one would reset other users').
    public var damon: Bool
    public var damonVirtual: Bool?

    public static func detect() -> IdlePageSamplingSupport {
        let damonRoot = "/sys/kernel/mm/damon/admin/kdamonds"
        var virtual: Bool?
        if let kdamonds = try? FileSystem.listDirectory(damonRoot) {
            for kdamond in kdamonds where kdamond.allSatisfy(\.isNumber) {
                let contexts = (try? FileSystem.listDirectory("\(damonRoot)/\(kdamond)/contexts")) ?? []
                for context in contexts where context.allSatisfy(\.isNumber) {
                    if let bytes = try? FileSystem.readFile("\(damonRoot)/\(kdamond)/contexts/\(context)/avail_operations", maxBytes: 4096) {
                        virtual = String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("vaddr")
                    }
                }
            }
        }
        return IdlePageSamplingSupport(pageIdle: FileSystem.exists("/sys/kernel/mm/page_idle/bitmap"),
                                       damon: FileSystem.exists(damonRoot), damonVirtual: virtual)
    }

    /// One line for the startup log: the method in use, and what else the kernel has.
    public var description: String {
        let damonText = !damon ? "no DAMON" : damonVirtual == true ? "DAMON with vaddr"
            : damonVirtual == false ? "DAMON for physical addresses only" : "DAMON (operations unknown)"
        let others = "page_idle \(pageIdle ? "present" : "absent"), \(damonText)"
        return "idle page sampling by clear_refs and smaps Referenced (\(others)): one pass over QEMU's page tables per period"
    }
}

/// The host's own working-set sampler for one VM, after ESX's idle page sampling but counting every page
/// rather than 100 random ones: at the start of a period it clears the accessed bits of QEMU's pages
/// (`/proc/<pid>/clear_refs`); at its end the `Referenced` of the guest-RAM mappings in smaps is what the
/// guest (and QEMU on its behalf) touched during the period. The engine reads smaps every second anyway
/// for the resident figure, so a sample costs one extra clear_refs pass; both passes are timed and the
/// period lengthens if they cost too much.
///
/// Why not page_idle or DAMON: page_idle marks PFNs and needs a pagemap walk to find QEMU's (two passes
/// where clear_refs takes one); DAMON's vaddr monitoring adapts regions to find hot spots, which a single
/// per-VM count does not need. Neither is in the kernels Ballonet is tested on (`IdlePageSamplingSupport`
/// says what a host has).
struct IdlePageSampler {
    /// The period asked for (host.toml `[sampling] period_seconds`), and the one in use after cost
    /// adaptation.
    let requestedPeriodMillis: UInt64
    private(set) var periodMillis: UInt64
    /// When the accessed bits were last cleared (engine clock); nil until the first clear.
    private(set) var clearedAtMillis: UInt64?
    /// Cost of the last sample (clear_refs + the smaps read that took it) and in total, nanoseconds.
    private(set) var lastCostNanos: UInt64 = 0
    private(set) var totalCostNanos: UInt64 = 0
    private(set) var samples: UInt64 = 0
    /// What clearing the bits cost at the start of the current period.
    private var clearNanos: UInt64 = 0

    /// A sample may take at most this fraction of its period in the agent's CPU time: 1 % of a core per
    /// VM keeps a host of 50 VMs under half a core for sampling. The period doubles (up to
    /// `maximumPeriodMillis`) while a sample costs more.
    static let maximumCostFraction = 0.01
    /// ESX's period: the slowest the sampler gets, so even a huge VM's estimate follows within a minute.
    static let maximumPeriodMillis: UInt64 = 60_000

    init(periodMillis: UInt64) {
        requestedPeriodMillis = periodMillis
        self.periodMillis = periodMillis
    }

    /// A sample is due this round (a period has passed since the bits were cleared).
    func isDue(nowMillis: UInt64) -> Bool {
        guard let cleared = clearedAtMillis else { return false }
        return nowMillis >= cleared + periodMillis
    }

    /// The period starts now: clears QEMU's accessed bits (timed, for the cost).
    mutating func startPeriod(processID: Int32, nowMillis: UInt64) throws(SystemCallError) {
        let started = MonotonicInstant.now()
        try ProcFiles.clearReferencedBits(of: .id(processID))
        clearedAtMillis = nowMillis
        clearNanos = UInt64(clamping: MonotonicInstant.now().duration(since: started).nanosecondsClamped)
    }

    /// For tests: the bits were cleared at `nowMillis` at no cost.
    mutating func markCleared(atMillis nowMillis: UInt64) {
        clearedAtMillis = nowMillis
        clearNanos = 0
    }

    /// A period ended with `referencedBytes` touched, read from smaps in `readNanos`. Returns the active
    /// bytes and the time they cover, and adapts the period to the sample's cost (the clear and the read).
    mutating func finishPeriod(referencedBytes: UInt64, nowMillis: UInt64, readNanos: UInt64) -> (activeBytes: UInt64, elapsedMillis: UInt64)? {
        guard let cleared = clearedAtMillis, nowMillis > cleared else { return nil }
        let costNanos = clearNanos + readNanos
        lastCostNanos = costNanos
        totalCostNanos &+= costNanos
        samples &+= 1
        if Double(costNanos) > Self.maximumCostFraction * Double(periodMillis) * 1_000_000 {
            periodMillis = min(periodMillis * 2, Self.maximumPeriodMillis)
        } else if periodMillis > requestedPeriodMillis,
                  Double(costNanos) * 4 < Self.maximumCostFraction * Double(periodMillis) * 1_000_000 {
            periodMillis = max(periodMillis / 2, requestedPeriodMillis)
        }
        return (referencedBytes, nowMillis - cleared)
    }
}
