/// The kernel's KSM (kernel samepage merging) as /sys/kernel/mm/ksm shows it and takes settings, and ksmd's
/// own CPU time. Files a kernel does not have (the advisor came in 6.7, ksm_zero_pages in 6.10) read as nil.
public struct KSMFigures: Equatable, Sendable {
    /// 0 stopped (merged pages stay merged), 1 merging, 2 unmerging everything.
    public var run: UInt64
    public var pagesToScan: UInt64
    public var sleepMillis: UInt64
    public var useZeroPages: Bool
    /// Full passes over all mergeable memory since boot.
    public var fullScans: UInt64
    /// Pages ksmd looked at since boot (6.8+).
    public var pagesScanned: UInt64?
    /// KSM pages in use (each one stands for several guest pages), and the page-table entries beyond the
    /// first that point at them: pages_sharing is the memory KSM saves.
    public var pagesShared: UInt64
    public var pagesSharing: UInt64
    /// Pages scanned that are unique so far, and pages that change too fast to merge.
    public var pagesUnshared: UInt64
    public var pagesVolatile: UInt64
    /// Pages KSM pointed at the kernel's zero page (use_zero_pages), which count in neither of the above.
    public var zeroPages: UInt64?
    /// Bytes saved less KSM's bookkeeping (negative when KSM costs more than it saves).
    public var generalProfit: Int64?
    /// The scan-time advisor: "none" or "scan-time"; nil when the kernel has none.
    public var advisorMode: String?
    public var advisorMaxCPUPercent: UInt64?
    public var advisorTargetScanSeconds: UInt64?

    public init(run: UInt64 = 0, pagesToScan: UInt64 = 100, sleepMillis: UInt64 = 20, useZeroPages: Bool = false,
                fullScans: UInt64 = 0, pagesScanned: UInt64? = nil, pagesShared: UInt64 = 0, pagesSharing: UInt64 = 0,
                pagesUnshared: UInt64 = 0, pagesVolatile: UInt64 = 0, zeroPages: UInt64? = nil, generalProfit: Int64? = nil,
                advisorMode: String? = nil, advisorMaxCPUPercent: UInt64? = nil, advisorTargetScanSeconds: UInt64? = nil) {
        self.run = run
        self.pagesToScan = pagesToScan
        self.sleepMillis = sleepMillis
        self.useZeroPages = useZeroPages
        self.fullScans = fullScans
        self.pagesScanned = pagesScanned
        self.pagesShared = pagesShared
        self.pagesSharing = pagesSharing
        self.pagesUnshared = pagesUnshared
        self.pagesVolatile = pagesVolatile
        self.zeroPages = zeroPages
        self.generalProfit = generalProfit
        self.advisorMode = advisorMode
        self.advisorMaxCPUPercent = advisorMaxCPUPercent
        self.advisorTargetScanSeconds = advisorTargetScanSeconds
    }

    /// Memory KSM saves now: the sharing entries and the zero-page entries, 4 KiB each.
    public var savedBytes: UInt64 {
        let pages = pagesSharing.addingReportingOverflow(zeroPages ?? 0)
        return pages.overflow ? .max : pages.partialValue.multipliedReportingOverflow(by: 4096).partialValue
    }
}

/// Reads and writes /sys/kernel/mm/ksm (root only for writes).
public enum KSMControl {
    public static let directory = "/sys/kernel/mm/ksm"

    /// Whether this kernel has KSM (CONFIG_KSM).
    public static var isAvailable: Bool { isAvailable(directory: directory) }

    /// Whether `directory` (the kernel's KSM directory, or a copy of it) has KSM's `run` file.
    public static func isAvailable(directory: String) -> Bool { (try? FileSystem.status(ofPath: directory + "/run")) != nil }

    /// All the figures, in one pass over the files.
    public static func read(directory: String = directory) throws -> KSMFigures {
        func number(_ name: String) throws -> UInt64 { try ProcFiles.unsignedValue(path: directory + "/" + name) }
        func optional(_ name: String) -> UInt64? { try? number(name) }
        var figures = KSMFigures(run: try number("run"), pagesToScan: try number("pages_to_scan"), sleepMillis: try number("sleep_millisecs"),
                                 useZeroPages: (optional("use_zero_pages") ?? 0) != 0, fullScans: try number("full_scans"),
                                 pagesScanned: optional("pages_scanned"), pagesShared: try number("pages_shared"),
                                 pagesSharing: try number("pages_sharing"), pagesUnshared: try number("pages_unshared"),
                                 pagesVolatile: try number("pages_volatile"), zeroPages: optional("ksm_zero_pages"))
        figures.generalProfit = try? ProcFiles.signedValue(path: directory + "/general_profit")
        if let text = try? FileSystem.readFile(directory + "/advisor_mode", maxBytes: ProcFileLimits.singleValueBytes) {
            figures.advisorMode = selectedChoice(text)
            figures.advisorMaxCPUPercent = optional("advisor_max_cpu")
            figures.advisorTargetScanSeconds = optional("advisor_target_scan_time")
        }
        return figures
    }

    /// The bracketed word of a sysfs choice file: "[none] scan-time" → "none".
    public static func selectedChoice(_ bytes: [UInt8]) -> String? {
        let text = String(decoding: bytes, as: UTF8.self)
        guard let open = text.firstIndex(of: "["), let close = text[open...].firstIndex(of: "]") else { return nil }
        return String(text[text.index(after: open)..<close])
    }

    /// Writes one setting ("run", "pages_to_scan", "advisor_mode", ...), in one write, truncating as
    /// `echo value > file` does: sysfs takes the write as the value, and a copy of the directory (tests)
    /// then holds it alone too.
    public static func write(_ name: String, _ value: String, directory: String = directory) throws(SystemCallError) {
        let file = try FileDescriptor.open(directory + "/" + name, .writeOnly, options: [.truncate])
        try file.write(all: Array(value.utf8))
        try file.close()
    }

    /// The raw text of one setting, to put back later ("[none] scan-time" is kept as "none").
    public static func savedValue(_ name: String, directory: String = directory) -> String? {
        guard let bytes = try? FileSystem.readFile(directory + "/" + name, maxBytes: ProcFileLimits.singleValueBytes) else { return nil }
        if let choice = selectedChoice(bytes) { return choice }
        let text = String(decoding: bytes, as: UTF8.self)
        return String(text.prefix { $0 != "\n" })
    }
}

/// ksmd, the kernel thread that scans and merges: found by name among the kernel's threads.
public enum KSMDaemon {
    /// ksmd's pid, or nil when it is not running (no KSM, or not found).
    public static func processID() -> Int32? {
        guard let entries = try? FileSystem.listDirectory("/proc") else { return nil }
        for entry in entries {
            guard let pid = Int32(entry), pid > 1 else { continue }
            // Kernel threads are children of kthreadd (pid 2) and come early in /proc; comm is "ksmd\n".
            guard let comm = try? FileSystem.readFile("/proc/\(pid)/comm", maxBytes: 64), comm == Array("ksmd\n".utf8) else { continue }
            return pid
        }
        return nil
    }

    /// CPU time a thread has run, nanoseconds: the first field of /proc/<pid>/schedstat.
    public static func cpuNanoseconds(of processID: Int32) throws -> UInt64 {
        let path = "/proc/\(processID)/schedstat"
        let bytes = try FileSystem.readFile(path, maxBytes: ProcFileLimits.singleValueBytes)
        let first = Array(bytes.prefix { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\n") })
        return try SingleValue.parseUnsigned(first, file: path)
    }
}
