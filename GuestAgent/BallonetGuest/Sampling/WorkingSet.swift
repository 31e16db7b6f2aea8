import BallonetLinux
import BallonetWire

/// A working-set figure and where it came from: what a stats sample carries under `workingSetPages`
/// and `workingSetSource`.
public struct WorkingSetEstimate: Equatable, Sendable {
    public var pages: UInt64
    public var source: WorkingSetSource

    public init(pages: UInt64, source: WorkingSetSource) {
        self.pages = pages
        self.source = source
    }
}

// MARK: - MGLRU page ages

/// One generation of one lruvec in /sys/kernel/debug/lru_gen.
public struct MGLRUGeneration: Equatable, Sendable {
    /// The generation's sequence number (`max_gen_nr` is the youngest).
    public var sequence: UInt64
    /// Milliseconds since the generation was created. The kernel prints it as a 32-bit count, which wraps
    /// after 49.7 days: an old generation can look young, so only the youngest run of generations is
    /// trusted (`MGLRUSnapshot.youngPages`).
    public var ageMillis: UInt64
    public var anonPages: UInt64
    public var filePages: UInt64

    public init(sequence: UInt64, ageMillis: UInt64, anonPages: UInt64, filePages: UInt64) {
        self.sequence = sequence
        self.ageMillis = ageMillis
        self.anonPages = anonPages
        self.filePages = filePages
    }
}

/// The generations of one memory cgroup on one NUMA node: MGLRU keeps one set of lists per pair.
public struct MGLRULruvec: Equatable, Sendable {
    /// The memcg's id, as the kernel takes it back in aging commands.
    public var memcgID: UInt64
    /// Its cgroup path ("/" for the root, "" when the kernel has no memory cgroups).
    public var memcgPath: String
    public var node: Int
    /// In file order: oldest first.
    public var generations: [MGLRUGeneration]

    public init(memcgID: UInt64, memcgPath: String, node: Int, generations: [MGLRUGeneration]) {
        self.memcgID = memcgID
        self.memcgPath = memcgPath
        self.node = node
        self.generations = generations
    }

    /// The youngest generation's sequence number, `max_gen_nr`, which an aging command names.
    public var maxSequence: UInt64? { generations.map(\.sequence).max() }
}

/// The content of /sys/kernel/debug/lru_gen (Documentation/admin-guide/mm/multigen_lru.rst; printed by
/// lru_gen_seq_show in mm/vmscan.c). Linux 6.1 prints:
///
///     memcg     1 /system.slice
///      node     0
///              12      45123        1024        2048 
///              13       9876         512         300 
///
/// that is `memcg %5hu %s` (later kernels: `memcg %llu %s`), printed only before the first node of each
/// memcg; ` node %5d`; then per generation, oldest first, ` %10lu %10u %10lu%c %10lu%c`: sequence number,
/// age in milliseconds, anon pages, file pages, each size followed by a mark that is a blank here and
/// `x` only in lru_gen_full (a generation already evicted for that type). Each page is counted once:
/// lists are per memcg, not hierarchical, so the sum over all lruvecs is every page on an LRU list.
/// Unevictable pages (mlocked, the balloon's own) are on none of them.
public struct MGLRUSnapshot: Equatable, Sendable {
    public var lruvecs: [MGLRULruvec]

    public init(lruvecs: [MGLRULruvec]) {
        self.lruvecs = lruvecs
    }

    /// Parses the file's bytes. A line of another shape is an error rather than skipped: a format this
    /// parser does not know would give a wrong working set, and the sampler falls back to the LRU-list
    /// estimate for a file it cannot read.
    public init(parsing bytes: [UInt8], file: String = MGLRU.lruGenPath) throws(ProcParseError) {
        var lruvecs: [MGLRULruvec] = []
        var memcg: (id: UInt64, path: String)?
        var lineNumber = 0
        for rawLine in bytes.split(separator: MGLRUSnapshot.newline, omittingEmptySubsequences: false) {
            lineNumber += 1
            let tokens = MGLRUSnapshot.tokens(rawLine)
            guard let first = tokens.first else { continue }
            func fail(_ what: String) -> ProcParseError {
                ProcParseError(file: file, line: lineNumber, what: what)
            }
            func number(_ token: ArraySlice<UInt8>, _ name: String) throws(ProcParseError) -> UInt64 {
                guard let value = MGLRUSnapshot.decimal(token) else {
                    throw fail("\(name) \"\(String(decoding: token, as: UTF8.self))\" is not a number")
                }
                return value
            }
            if first.elementsEqual("memcg".utf8) {
                guard tokens.count >= 2 else { throw fail("a memcg line without an id") }
                let id = try number(tokens[1], "memcg id")
                // The path is the rest of the line after one blank (it may hold blanks itself).
                var pathStart = tokens[1].endIndex
                if pathStart < rawLine.endIndex { pathStart += 1 }
                memcg = (id, String(decoding: rawLine[pathStart...], as: UTF8.self))
            } else if first.elementsEqual("node".utf8) {
                guard let memcg else { throw fail("a node line before any memcg line") }
                guard tokens.count == 2 else { throw fail("a node line needs one node id") }
                let node = try number(tokens[1], "node id")
                guard node <= MGLRU.maximumNodeID else { throw fail("node id \(node) is past \(MGLRU.maximumNodeID)") }
                lruvecs.append(MGLRULruvec(memcgID: memcg.id, memcgPath: memcg.path, node: Int(node), generations: []))
            } else if let byte = first.first, MGLRUSnapshot.isDigit(byte) {
                guard !lruvecs.isEmpty else { throw fail("a generation line before any node line") }
                guard tokens.count == 4 else {
                    throw fail("a generation line needs 4 fields (sequence, age ms, anon pages, file pages), found \(tokens.count)")
                }
                let generation = MGLRUGeneration(
                    sequence: try number(tokens[0], "sequence"),
                    ageMillis: try number(tokens[1], "age"),
                    anonPages: try number(MGLRUSnapshot.withoutMark(tokens[2]), "anon pages"),
                    filePages: try number(MGLRUSnapshot.withoutMark(tokens[3]), "file pages"))
                lruvecs[lruvecs.count - 1].generations.append(generation)
            } else {
                throw fail("unexpected line \"\(String(decoding: rawLine.prefix(60), as: UTF8.self))\"")
            }
        }
        self.lruvecs = lruvecs
    }

    public init(parsing text: String, file: String = MGLRU.lruGenPath) throws(ProcParseError) {
        try self.init(parsing: Array(text.utf8), file: file)
    }

    /// Pages accessed within `windowMillis`: per lruvec, the generations from the youngest down to the
    /// first one at least that old. Stopping there keeps an ancient generation whose 32-bit age wrapped
    /// around from being counted as young.
    public func youngPages(windowMillis: UInt64) -> UInt64 {
        var total: UInt64 = 0
        for lruvec in lruvecs {
            for generation in lruvec.generations.sorted(by: { $0.sequence > $1.sequence }) {
                guard generation.ageMillis < windowMillis else { break }
                total = total.addingClamped(generation.anonPages).addingClamped(generation.filePages)
            }
        }
        return total
    }

    /// Whether some lruvec has a generation younger than `windowMillis`. After an aging command the
    /// youngest generation is new, so a snapshot without one says aging has not run lately (the
    /// commands failed): its ages say nothing about the last period.
    public func hasGeneration(youngerThan windowMillis: UInt64) -> Bool {
        lruvecs.contains { lruvec in lruvec.generations.contains { $0.ageMillis < windowMillis } }
    }

    /// Every page on the LRU lists.
    public var totalPages: UInt64 {
        lruvecs.reduce(0) { sum, lruvec in
            lruvec.generations.reduce(sum) { $0.addingClamped($1.anonPages).addingClamped($1.filePages) }
        }
    }

    /// One aging command per lruvec: `+ memcg_id node_id max_gen_nr 1 1`. It marks the pages accessed
    /// since the last aging as members of generation max_gen_nr and opens a new, empty generation.
    /// The first 1 is can_swap (Linux 6.1 parses it with "%u"; later kernels read the same field as a
    /// swappiness, where any nonzero value also ages anon pages): anon pages are aged even in a guest
    /// without swap, where the kernel would otherwise leave them out and anon memory would look cold.
    /// The second is force_scan, so the kernel merges the oldest generations instead of refusing when
    /// all MAX_NR_GENS are in use, which they are in a guest that never reclaims.
    public var agingCommands: [String] {
        lruvecs.compactMap { lruvec in
            lruvec.maxSequence.map { "+ \(lruvec.memcgID) \(lruvec.node) \($0) 1 1" }
        }
    }

    static let newline = UInt8(ascii: "\n")
    static let space = UInt8(ascii: " ")
    static let tab = UInt8(ascii: "\t")

    static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    static func tokens(_ line: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        line.split(whereSeparator: { $0 == space || $0 == tab })
    }

    /// lru_gen_full marks a generation already evicted for a type with an `x` after its size.
    static func withoutMark(_ token: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        token.last == UInt8(ascii: "x") ? token.dropLast() : token
    }

    static func decimal(_ token: ArraySlice<UInt8>) -> UInt64? {
        guard !token.isEmpty else { return nil }
        var value: UInt64 = 0
        for byte in token {
            guard isDigit(byte) else { return nil }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(byte - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }
}

/// MGLRU's files: whether it is on, turning it on, mounting debugfs, reading generations and aging them.
/// These do I/O; the daemon calls them at start (`enable`, `mountDebugfsIfAbsent`) and the sampler each
/// period (`readSnapshot`, `requestAging`).
public enum MGLRU {
    /// The kill switch (Documentation/admin-guide/mm/multigen_lru.rst): prints a bit mask like "0x0007".
    public static let enabledPath = "/sys/kernel/mm/lru_gen/enabled"
    /// Where debugfs is mounted by convention.
    public static let debugfsDirectory = "/sys/kernel/debug"
    /// The generations of every memcg and node, and the file that takes aging commands.
    public static let lruGenPath = debugfsDirectory + "/lru_gen"

    /// The most lru_gen may hold before reading it fails. Each memcg takes a line plus its path, a node
    /// line and up to four generation lines (MAX_NR_GENS), about 250 bytes; a guest has tens to a few
    /// hundred memcgs (one per systemd unit), and 1 MiB holds some 4000 of them. A guest past that gets
    /// the LRU-list estimate rather than an agent that grows with its cgroup count.
    public static let maximumLruGenBytes = 1024 * 1024
    /// MAX_NUMNODES is at most 1 << 10 on any kernel configuration.
    public static let maximumNodeID: UInt64 = 1023

    /// Whether the kill switch's text says MGLRU is on: its main switch is bit 0x0001 (the other bits
    /// are components that may be set while the main switch is off).
    public static func isEnabled(switchText text: String) -> Bool {
        var digits = Substring(text.filter { !$0.isWhitespace })
        var radix = 10
        if digits.hasPrefix("0x") || digits.hasPrefix("0X") {
            digits = digits.dropFirst(2)
            radix = 16
        }
        if digits == "y" || digits == "Y" { return true }
        guard let value = UInt64(digits, radix: radix) else { return false }
        return value & 1 != 0
    }

    /// Reads the kill switch; false when there is none (a kernel without CONFIG_LRU_GEN).
    public static func isEnabled(path: String = enabledPath) -> Bool {
        guard let bytes = try? FileSystem.readFile(path, maxBytes: ProcFileLimits.singleValueBytes) else { return false }
        return isEnabled(switchText: String(decoding: bytes, as: UTF8.self))
    }

    /// Turns MGLRU and all its components on (writes "y"). Debian 12's 6.1 kernel builds MGLRU in but
    /// leaves it off; the agent turns it on when `[sampling] enable_mglru` says so.
    public static func enable(path: String = enabledPath) throws(SystemCallError) {
        try FileSystem.writeFile(path, "y")
    }

    public enum DebugfsMount: Equatable, Sendable {
        /// Something was mounted there already; nothing was done.
        case alreadyMounted
        /// The agent mounted debugfs.
        case mounted
    }

    /// Mounts debugfs at `directory` unless something is there already. An empty directory is how sysfs
    /// shows an unmounted /sys/kernel/debug; a non-empty one is a mounted debugfs (with or without
    /// lru_gen in it), which a second mount would only hide.
    public static func mountDebugfsIfAbsent(at directory: String = debugfsDirectory) throws(SystemCallError) -> DebugfsMount {
        if try !FileSystem.listDirectory(directory).isEmpty {
            return .alreadyMounted
        }
        try FileSystem.mount(source: "debugfs", target: directory, type: "debugfs",
                             flags: [.noSetUserID, .noDevices, .noExecute])
        return .mounted
    }

    /// Reads and parses lru_gen.
    public static func readSnapshot(path: String = lruGenPath) throws -> MGLRUSnapshot {
        try MGLRUSnapshot(parsing: FileSystem.readFile(path, maxBytes: maximumLruGenBytes), file: path)
    }

    /// Sends aging commands, one write each: the kernel stops at the first command of a write that fails
    /// (a memcg removed since the snapshot, a generation the kernel aged by itself meanwhile), and one
    /// such command must not cost the others their aging. Throws if lru_gen cannot be opened; returns the
    /// commands' failures, for the log.
    public static func requestAging(_ commands: [String], path: String = lruGenPath) throws(SystemCallError) -> [SystemCallError] {
        guard !commands.isEmpty else { return [] }
        let file = try FileDescriptor.open(path, .writeOnly)
        var failures: [SystemCallError] = []
        for command in commands {
            do throws(SystemCallError) {
                // The kernel takes a newline as the end of a command, as it takes "," and ";".
                try file.write(all: Array((command + "\n").utf8))
            } catch {
                failures.append(error)
            }
        }
        return failures
    }

    /// How far back a page's access still counts toward the working set of one sampling period, when
    /// the sampler ages once a period, just before it reads. The generation holding the period's accesses
    /// was born at the previous aging, one period ago; the one before it, two periods ago. Half-way between
    /// (1.5 periods) separates them whatever the timer's jitter.
    public static func ageWindowMillis(periodMillis: UInt64) -> UInt64 {
        periodMillis + periodMillis / 2
    }
}

// MARK: - Fallback: LRU lists and refaults

/// What the fallback estimate reads from one sample, in 4 KiB pages.
public struct LRUListReading: Equatable, Sendable {
    public var activeAnonPages: UInt64
    public var activeFilePages: UInt64
    public var memTotalPages: UInt64
    public var memFreePages: UInt64
    /// workingset_refault_anon + workingset_refault_file (workingset_refault before Linux 5.9), cumulative;
    /// nil when the kernel keeps neither.
    public var refaults: UInt64?

    public init(activeAnonPages: UInt64, activeFilePages: UInt64, memTotalPages: UInt64, memFreePages: UInt64,
                refaults: UInt64?) {
        self.activeAnonPages = activeAnonPages
        self.activeFilePages = activeFilePages
        self.memTotalPages = memTotalPages
        self.memFreePages = memFreePages
        self.refaults = refaults
    }

    public init(meminfo: Meminfo, vmstat: VMStat?) {
        let page = GuestConfiguration.pageBytes
        var refaults: UInt64?
        if let vmstat {
            if vmstat.workingsetRefaultAnon != nil || vmstat.workingsetRefaultFile != nil {
                refaults = (vmstat.workingsetRefaultAnon ?? 0) &+ (vmstat.workingsetRefaultFile ?? 0)
            } else {
                refaults = vmstat["workingset_refault"]
            }
        }
        self.init(activeAnonPages: meminfo.activeAnon / page, activeFilePages: meminfo.activeFile / page,
                  memTotalPages: meminfo.memTotal / page, memFreePages: meminfo.memFree / page, refaults: refaults)
    }
}

/// The working set without MGLRU: Active(anon) + Active(file) + refaults over the period × `refaultWeight`,
/// clamped to the memory in use outside the balloon (MemTotal − MemFree − balloon pages).
///
/// Why this rule: the active lists hold pages referenced at least twice recently, the kernel's own
/// guess at the working set; but they lag (pages move to the inactive list only when reclaim scans) and
/// they miss what reclaim already took. A refault is a page evicted and needed again soon, so refaults
/// during the period show a working set larger than what stayed resident. Each counts `refaultWeight`
/// times to err high: an overestimate costs the host some memory it could have reclaimed, an
/// underestimate makes it squeeze a guest that is already thrashing. The clamp keeps the sum from
/// exceeding what the guest actually uses; the balloon is taken out because its pages (mlocked,
/// unevictable) are on neither active list and are not the guest's working set.
public enum LRUListEstimate {
    /// How many pages of working set one refault stands for.
    public static let refaultWeight: UInt64 = 2

    /// `previous` is the reading one period earlier (nil for the first sample, which then counts no refaults).
    public static func workingSetPages(previous: LRUListReading?, current: LRUListReading, balloonPages: UInt64) -> UInt64 {
        var refaultsInPeriod: UInt64 = 0
        // A counter that went down (it should not) counts as no refaults rather than a wrapped huge one.
        if let before = previous?.refaults, let now = current.refaults, now >= before {
            refaultsInPeriod = now - before
        }
        let (weighted, overflow) = refaultsInPeriod.multipliedReportingOverflow(by: refaultWeight)
        let estimate = current.activeAnonPages.addingClamped(current.activeFilePages)
            .addingClamped(overflow ? .max : weighted)
        let inUse = current.memTotalPages.subtractingClamped(current.memFreePages).subtractingClamped(balloonPages)
        return min(estimate, inUse)
    }
}

extension UInt64 {
    /// Addition that stops at the maximum: a figure from a broken file must not trap the agent.
    func addingClamped(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }

    /// Subtraction that stops at zero.
    func subtractingClamped(_ other: UInt64) -> UInt64 {
        self > other ? self - other : 0
    }
}
