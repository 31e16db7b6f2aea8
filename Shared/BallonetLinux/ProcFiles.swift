/// The most bytes each /proc file may hold before reading it fails with EFBIG. Each is far above what a
/// real kernel prints and far below what would hurt the reader: a bound exists so that a broken or hostile
/// file cannot make an agent allocate without limit.
public enum ProcFileLimits {
    /// /proc/meminfo: about 60 lines of under 30 bytes (1.5 KiB on Linux 6.18); 64 KiB leaves room for
    /// kernels that print 40 times as much.
    public static let meminfoBytes = 64 * 1024
    /// /proc/vmstat: about 200 lines, 4 KiB on Linux 6.18; the list has doubled in ten years, 64 KiB is
    /// sixteen times today's.
    public static let vmstatBytes = 64 * 1024
    /// /proc/pressure/*: two lines of under 60 bytes.
    public static let pressureBytes = 4 * 1024
    /// /proc/<pid>/status: about 1.5 KiB; the CPU and NUMA masks grow with the machine (8192 CPUs add
    /// about 5 KiB), 64 KiB covers any machine Ballonet will run on.
    public static let statusBytes = 64 * 1024
    /// /proc/<pid>/smaps: about 800 bytes per mapping, and a process may have at most vm.max_map_count
    /// mappings (65530 by default), so a default kernel prints at most about 52 MB. QEMU has a few
    /// hundred to a few thousand mappings (0.3 to 3 MB). Use `ProcFiles.forEachSmapsMapping` to read
    /// without holding the whole file.
    public static let smapsBytes = 64 * 1024 * 1024
    /// /proc/<pid>/maps: about 100 bytes per mapping, at most vm.max_map_count (65530 by default)
    /// mappings: 6.5 MB.
    public static let mapsBytes = 8 * 1024 * 1024
    /// /proc/<pid>/smaps_rollup: one entry, under 1 KiB.
    public static let smapsRollupBytes = 16 * 1024
    /// /proc/<pid>/ksm_stat: six short lines.
    public static let ksmStatBytes = 4 * 1024
    /// Files with one number (/proc/sys, /sys/kernel/mm): a 64-bit number and a newline fit in 21 bytes.
    public static let singleValueBytes = 4 * 1024
    /// One smaps line when streaming: a header line is at most about 80 bytes plus a path, whose
    /// PATH_MAX (4096) bytes the kernel may print escaped ("\012" for a newline), so up to 4 x 4096.
    public static let smapsLineBytes = 4 * 4096 + 256
}

/// Which process's /proc directory.
public enum ProcessReference: Hashable, Sendable {
    case current
    case id(Int32)

    /// "/proc/self" or "/proc/<pid>".
    public var directory: String {
        switch self {
        case .current: "/proc/self"
        case .id(let processID): "/proc/\(processID)"
        }
    }
}

/// Reads and parses the /proc files Ballonet uses. These throw `SystemCallError` when the file cannot be
/// read and `ProcParseError` when it does not parse.
public enum ProcFiles {
    public static func meminfo(path: String = "/proc/meminfo") throws -> Meminfo {
        try Meminfo(parsing: FileSystem.readFile(path, maxBytes: ProcFileLimits.meminfoBytes), file: path)
    }

    public static func vmstat(path: String = "/proc/vmstat") throws -> VMStat {
        try VMStat(parsing: FileSystem.readFile(path, maxBytes: ProcFileLimits.vmstatBytes), file: path)
    }

    /// /proc/pressure/memory, or another PSI file given by `path`.
    public static func memoryPressure(path: String = "/proc/pressure/memory") throws -> PressureStall {
        try PressureStall(parsing: FileSystem.readFile(path, maxBytes: ProcFileLimits.pressureBytes), file: path)
    }

    public static func status(of process: ProcessReference = .current) throws -> ProcessStatus {
        let path = process.directory + "/status"
        return try ProcessStatus(parsing: FileSystem.readFile(path, maxBytes: ProcFileLimits.statusBytes), file: path)
    }

    /// The whole smaps file at once (bounded by `ProcFileLimits.smapsBytes`).
    public static func smaps(of process: ProcessReference = .current) throws -> Smaps {
        let path = process.directory + "/smaps"
        return try Smaps(parsing: FileSystem.readFile(path, maxBytes: ProcFileLimits.smapsBytes), file: path)
    }

    /// /proc/<pid>/maps: the mappings without amounts, far cheaper for the kernel to print than smaps
    /// (no page-table walk); enough to find a mapping by address or pathname.
    public static func maps(of process: ProcessReference = .current) throws -> Smaps {
        let path = process.directory + "/maps"
        return try Smaps(parsing: FileSystem.readFile(path, maxBytes: ProcFileLimits.mapsBytes), file: path)
    }

    /// /proc/<pid>/smaps_rollup: the process's totals as one entry, cheaper for the kernel than smaps.
    public static func smapsRollup(of process: ProcessReference = .current) throws -> SmapsMapping {
        let path = process.directory + "/smaps_rollup"
        let rollup = try Smaps(parsing: FileSystem.readFile(path, maxBytes: ProcFileLimits.smapsRollupBytes), file: path)
        guard let totals = rollup.mappings.first, rollup.mappings.count == 1 else {
            throw ProcParseError(file: path, line: 0, what: "expected one entry, found \(rollup.mappings.count)")
        }
        return totals
    }

    /// Reads smaps in chunks and hands each mapping to `body` as it completes: memory use stays at one
    /// chunk and one mapping however large the file. Returning false from `body` stops early.
    public static func forEachSmapsMapping(
        of process: ProcessReference = .current,
        _ body: (SmapsMapping) throws -> Bool
    ) throws {
        try forEachSmapsMapping(inFile: process.directory + "/smaps", body)
    }

    /// As `forEachSmapsMapping(of:)`, for smaps (or maps) content at any path. A line longer than
    /// `ProcFileLimits.smapsLineBytes` is an error, the only bound: the file itself may be any length.
    public static func forEachSmapsMapping(
        inFile path: String,
        _ body: (SmapsMapping) throws -> Bool
    ) throws {
        let file = try FileDescriptor.open(path, .readOnly)
        var parser = SmapsParser(file: path)
        var pending: [UInt8] = []
        pending.reserveCapacity(FileSystem.firstReadBytes + ProcFileLimits.smapsLineBytes)
        let tooLong = ProcParseError(file: path, line: 0, what: "a line longer than \(ProcFileLimits.smapsLineBytes) bytes")
        while true {
            let chunk = try file.read(upTo: FileSystem.firstReadBytes)
            if chunk.isEmpty { break }
            pending.append(contentsOf: chunk)
            var lineStart = 0
            var keepGoing = true
            try pending.withUnsafeBufferPointer { buffer in
                var index = 0
                while index < buffer.count && keepGoing {
                    if buffer[index] == ByteParsing.newline {
                        if index - lineStart > ProcFileLimits.smapsLineBytes { throw tooLong }
                        if let mapping = try parser.consume(line: UnsafeBufferPointer(rebasing: buffer[lineStart..<index])) {
                            keepGoing = try body(mapping)
                        }
                        lineStart = index + 1
                    }
                    index += 1
                }
            }
            if !keepGoing { return }
            pending.removeFirst(lineStart)
            if pending.count > ProcFileLimits.smapsLineBytes { throw tooLong }
        }
        if !pending.isEmpty {
            let last = try pending.withUnsafeBufferPointer { (buffer) throws(ProcParseError) in
                try parser.consume(line: buffer)
            }
            if let last, try !body(last) { return }
        }
        if let last = parser.finish() {
            _ = try body(last)
        }
    }

    public static func ksmStat(of process: ProcessReference = .current) throws -> KSMProcessStat {
        let path = process.directory + "/ksm_stat"
        return try KSMProcessStat(parsing: FileSystem.readFile(path, maxBytes: ProcFileLimits.ksmStatBytes), file: path)
    }

    /// A file holding one integer, such as /sys/kernel/mm/ksm/general_profit (which can be negative).
    public static func signedValue(path: String) throws -> Int64 {
        try SingleValue.parseSigned(FileSystem.readFile(path, maxBytes: ProcFileLimits.singleValueBytes), file: path)
    }

    /// A file holding one unsigned integer, such as /sys/kernel/mm/ksm/pages_to_scan.
    public static func unsignedValue(path: String) throws -> UInt64 {
        try SingleValue.parseUnsigned(FileSystem.readFile(path, maxBytes: ProcFileLimits.singleValueBytes), file: path)
    }

    /// Writes "1" to /proc/<pid>/clear_refs: clears the referenced bits of all the process's pages, so the
    /// Referenced lines of smaps count what is touched from now on (idle page sampling).
    public static func clearReferencedBits(of process: ProcessReference) throws(SystemCallError) {
        try FileSystem.writeFile(process.directory + "/clear_refs", "1")
    }

    /// Opens /proc/<pid>/pagemap for `Pagemap.entries`.
    public static func openPagemap(of process: ProcessReference = .current) throws(SystemCallError) -> FileDescriptor {
        try FileDescriptor.open(process.directory + "/pagemap", .readOnly)
    }
}
