/// /proc/vmstat: the kernel's memory counters ("name value" lines).
///
/// Event counters (pgfault, pswpin, ...) only grow; compare two readings for a rate. Gauges (nr_*) are
/// page counts at the moment of reading. Accessors are nil when the kernel does not keep the counter
/// (it depends on version and configuration), which is different from a counter at 0.
public struct VMStat: Hashable, Sendable {
    /// Every counter, by the kernel's name.
    public var counters: [String: UInt64]

    public subscript(name: String) -> UInt64? { counters[name] }

    /// Counters the accessors below read: a malformed line for one of these is an error, a malformed
    /// unknown line is skipped.
    static let knownCounters: Set<String> = [
        "pgfault", "pgmajfault", "pswpin", "pswpout", "pgpgin", "pgpgout",
        "pgscan_kswapd", "pgscan_direct", "pgscan_khugepaged", "pgscan_anon", "pgscan_file",
        "pgsteal_kswapd", "pgsteal_direct", "pgsteal_khugepaged", "pgsteal_anon", "pgsteal_file",
        "workingset_refault_anon", "workingset_refault_file",
        "workingset_activate_anon", "workingset_activate_file",
        "workingset_restore_anon", "workingset_restore_file",
        "compact_stall", "compact_fail", "compact_success",
        "thp_fault_alloc", "thp_fault_fallback", "thp_collapse_alloc",
        "allocstall_dma", "allocstall_dma32", "allocstall_normal", "allocstall_movable", "allocstall_device",
        "oom_kill", "nr_free_pages", "nr_mlock", "nr_unevictable", "nr_shmem", "nr_anon_pages", "nr_mapped",
        "nr_balloon_pages",
    ]

    public init(parsing text: String, file: String = "/proc/vmstat") throws(ProcParseError) {
        try self.init(parsing: Array(text.utf8), file: file)
    }

    public init(parsing bytes: [UInt8], file: String = "/proc/vmstat") throws(ProcParseError) {
        var counters: [String: UInt64] = [:]
        try bytes.withUnsafeBufferPointer { (buffer) throws(ProcParseError) in
            try ByteParsing.forEachLine(buffer) { (line, number) throws(ProcParseError) in
                let tokens = ByteParsing.tokens(buffer, in: line)
                guard let nameRange = tokens.first else { return }
                let name = ByteParsing.string(buffer, nameRange)
                if tokens.count == 2, let value = ByteParsing.decimal(buffer, tokens[1]) {
                    counters[name] = value
                } else if VMStat.knownCounters.contains(name) {
                    throw ProcParseError(
                        file: file, line: number,
                        what: "\(name): expected one unsigned decimal value, found \(ByteParsing.excerpt(buffer, line))")
                }
            }
        }
        guard !counters.isEmpty else {
            throw ProcParseError(file: file, line: 0, what: "no counters")
        }
        self.counters = counters
    }

    /// pgfault: page faults of every kind.
    public var pgfault: UInt64? { counters["pgfault"] }
    /// pgmajfault: faults that had to read from disk or swap.
    public var pgmajfault: UInt64? { counters["pgmajfault"] }
    /// pswpin: pages read back from swap.
    public var pswpin: UInt64? { counters["pswpin"] }
    /// pswpout: pages written to swap.
    public var pswpout: UInt64? { counters["pswpout"] }
    /// pgscan_kswapd: pages background reclaim looked at.
    public var pgscanKswapd: UInt64? { counters["pgscan_kswapd"] }
    /// pgscan_direct: pages allocating tasks looked at in direct reclaim (a sign of memory pressure).
    public var pgscanDirect: UInt64? { counters["pgscan_direct"] }
    /// pgsteal_kswapd: pages background reclaim freed.
    public var pgstealKswapd: UInt64? { counters["pgsteal_kswapd"] }
    /// pgsteal_direct: pages direct reclaim freed.
    public var pgstealDirect: UInt64? { counters["pgsteal_direct"] }
    /// pgsteal_anon: anonymous pages reclaim freed (Linux 5.8+).
    public var pgstealAnon: UInt64? { counters["pgsteal_anon"] }
    /// pgsteal_file: file pages reclaim freed (Linux 5.8+).
    public var pgstealFile: UInt64? { counters["pgsteal_file"] }
    /// workingset_refault_anon: reclaimed anonymous pages that were needed again soon (Linux 5.9+).
    public var workingsetRefaultAnon: UInt64? { counters["workingset_refault_anon"] }
    /// workingset_refault_file: reclaimed file pages that were needed again soon (Linux 5.9+).
    public var workingsetRefaultFile: UInt64? { counters["workingset_refault_file"] }
    /// workingset_activate_anon: refaulted anonymous pages put straight back on the active list.
    public var workingsetActivateAnon: UInt64? { counters["workingset_activate_anon"] }
    /// workingset_activate_file: refaulted file pages put straight back on the active list.
    public var workingsetActivateFile: UInt64? { counters["workingset_activate_file"] }
    /// compact_stall: allocations that waited for compaction.
    public var compactStall: UInt64? { counters["compact_stall"] }
    /// thp_fault_alloc: transparent huge pages allocated at fault time.
    public var thpFaultAlloc: UInt64? { counters["thp_fault_alloc"] }
    /// thp_fault_fallback: faults that wanted a huge page and got small ones (fragmentation).
    public var thpFaultFallback: UInt64? { counters["thp_fault_fallback"] }
    /// oom_kill: processes the OOM killer killed.
    public var oomKill: UInt64? { counters["oom_kill"] }
    /// nr_free_pages: free pages now.
    public var nrFreePages: UInt64? { counters["nr_free_pages"] }
    /// nr_mlock: mlocked pages now.
    public var nrMlock: UInt64? { counters["nr_mlock"] }

    /// Pages reclaim looked at, background and direct (and khugepaged's, where counted).
    public var pagesScanned: UInt64? { sum(["pgscan_kswapd", "pgscan_direct", "pgscan_khugepaged"]) }
    /// Pages reclaim freed, background and direct (and khugepaged's, where counted).
    public var pagesStolen: UInt64? { sum(["pgsteal_kswapd", "pgsteal_direct", "pgsteal_khugepaged"]) }
    /// Allocations that stalled in direct reclaim, all zones together.
    public var allocationStalls: UInt64? { sum(counters.keys.filter { $0.hasPrefix("allocstall_") }) }

    /// The sum of the named counters that exist (wrapping, as the kernel's own counters do); nil if none does.
    private func sum(_ names: [String]) -> UInt64? {
        var total: UInt64?
        for name in names {
            if let value = counters[name] {
                total = (total ?? 0) &+ value
            }
        }
        return total
    }
}
