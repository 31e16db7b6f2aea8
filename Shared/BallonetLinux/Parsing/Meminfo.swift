/// /proc/meminfo: the system's memory, in bytes (the file's "kB" means KiB).
///
/// Lines a kernel does not print (built without the feature: no hugetlb, no THP, no swap) read as 0 here,
/// which is what they would show: the feature holds no memory. `fields` tells which lines were there.
public struct Meminfo: Hashable, Sendable {
    /// MemTotal: usable RAM (physical RAM minus what firmware and the kernel image reserve).
    public var memTotal: UInt64
    /// MemFree: RAM not used for anything.
    public var memFree: UInt64
    /// MemAvailable: the kernel's estimate of what could be allocated without swapping.
    public var memAvailable: UInt64
    public var buffers: UInt64
    public var cached: UInt64
    public var swapCached: UInt64
    public var active: UInt64
    public var inactive: UInt64
    /// Active(anon).
    public var activeAnon: UInt64
    /// Inactive(anon).
    public var inactiveAnon: UInt64
    /// Active(file).
    public var activeFile: UInt64
    /// Inactive(file).
    public var inactiveFile: UInt64
    public var unevictable: UInt64
    /// Mlocked: includes the guest balloon's pinned pages.
    public var mlocked: UInt64
    public var swapTotal: UInt64
    public var swapFree: UInt64
    public var dirty: UInt64
    public var anonPages: UInt64
    public var mapped: UInt64
    /// Shmem: tmpfs and shared memory, memfd guest RAM included.
    public var shmem: UInt64
    public var anonHugePages: UInt64
    public var shmemHugePages: UInt64
    /// HugePages_Total: a count of hugetlb pages, not bytes.
    public var hugePagesTotal: UInt64
    /// HugePages_Free: a count of hugetlb pages, not bytes.
    public var hugePagesFree: UInt64
    /// Hugepagesize: bytes per hugetlb page.
    public var hugePageSize: UInt64

    /// Every line that parsed, by the file's name for it: bytes for "kB" lines, plain numbers for the rest.
    public var fields: [String: UInt64]

    /// Lines that must be there: without them no memory figure Ballonet computes means anything.
    /// (MemAvailable exists since Linux 3.14; both agents need far newer kernels.)
    static let requiredFields = ["MemTotal", "MemFree", "MemAvailable"]

    /// Lines whose value is a page count rather than an amount of memory.
    static let countFields: Set<String> = ["HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp"]

    /// Lines this type exposes; a malformed one is an error, while a malformed unknown line is skipped
    /// (a newer kernel may print something this parser does not know how to read).
    static let knownFields: Set<String> = [
        "MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapCached", "Active", "Inactive",
        "Active(anon)", "Inactive(anon)", "Active(file)", "Inactive(file)", "Unevictable", "Mlocked",
        "SwapTotal", "SwapFree", "Dirty", "AnonPages", "Mapped", "Shmem", "AnonHugePages", "ShmemHugePages",
        "HugePages_Total", "HugePages_Free", "Hugepagesize",
    ]

    public init(parsing text: String, file: String = "/proc/meminfo") throws(ProcParseError) {
        try self.init(parsing: Array(text.utf8), file: file)
    }

    public init(parsing bytes: [UInt8], file: String = "/proc/meminfo") throws(ProcParseError) {
        let fields = try Meminfo.parseFields(bytes, file: file)
        func required(_ key: String) throws(ProcParseError) -> UInt64 {
            guard let value = fields[key] else {
                throw ProcParseError(file: file, line: 0, what: "no \(key) line")
            }
            return value
        }
        memTotal = try required("MemTotal")
        memFree = try required("MemFree")
        memAvailable = try required("MemAvailable")
        buffers = fields["Buffers"] ?? 0
        cached = fields["Cached"] ?? 0
        swapCached = fields["SwapCached"] ?? 0
        active = fields["Active"] ?? 0
        inactive = fields["Inactive"] ?? 0
        activeAnon = fields["Active(anon)"] ?? 0
        inactiveAnon = fields["Inactive(anon)"] ?? 0
        activeFile = fields["Active(file)"] ?? 0
        inactiveFile = fields["Inactive(file)"] ?? 0
        unevictable = fields["Unevictable"] ?? 0
        mlocked = fields["Mlocked"] ?? 0
        swapTotal = fields["SwapTotal"] ?? 0
        swapFree = fields["SwapFree"] ?? 0
        dirty = fields["Dirty"] ?? 0
        anonPages = fields["AnonPages"] ?? 0
        mapped = fields["Mapped"] ?? 0
        shmem = fields["Shmem"] ?? 0
        anonHugePages = fields["AnonHugePages"] ?? 0
        shmemHugePages = fields["ShmemHugePages"] ?? 0
        hugePagesTotal = fields["HugePages_Total"] ?? 0
        hugePagesFree = fields["HugePages_Free"] ?? 0
        hugePageSize = fields["Hugepagesize"] ?? 0
        self.fields = fields
    }

    private static func parseFields(_ bytes: [UInt8], file: String) throws(ProcParseError) -> [String: UInt64] {
        var fields: [String: UInt64] = [:]
        try bytes.withUnsafeBufferPointer { (buffer) throws(ProcParseError) in
            try ByteParsing.forEachLine(buffer) { (line, number) throws(ProcParseError) in
                // A line without "Key:" is not meminfo's format; skipping it keeps a future line shape
                // from breaking the fields that are there.
                guard let (keyRange, value) = ByteParsing.keyAndValue(buffer, line) else { return }
                let key = ByteParsing.string(buffer, keyRange)
                let known = knownFields.contains(key)
                let expectsCount = countFields.contains(key)
                func fail(_ what: String) throws(ProcParseError) {
                    if known {
                        throw ProcParseError(file: file, line: number, what: "\(key): \(what)")
                    }
                }
                switch ByteParsing.amount(buffer, value) {
                case .success(.bytes(let amount)):
                    if known && expectsCount {
                        try fail("expected a page count, found \(ByteParsing.excerpt(buffer, value))")
                        return
                    }
                    fields[key] = amount
                case .success(.count(let count)):
                    if known && !expectsCount {
                        try fail("expected an amount in kB, found \(ByteParsing.excerpt(buffer, value))")
                        return
                    }
                    fields[key] = count
                case .failure(.overflowsInBytes):
                    try fail("\(ByteParsing.excerpt(buffer, value)) overflows 64 bits when converted to bytes")
                case .failure(.malformed):
                    try fail("\(ByteParsing.excerpt(buffer, value)) is not a number (with an optional kB)")
                }
            }
        }
        return fields
    }
}

extension Meminfo {
    /// MemAvailable in bytes from the start of a meminfo text, without parsing the rest; nil when no
    /// complete MemAvailable line is in `bytes`. Throws when that line is there but malformed.
    public static func memAvailable(in bytes: UnsafeBufferPointer<UInt8>, file: String = "/proc/meminfo") throws(ProcParseError) -> UInt64? {
        var found: UInt64?
        try ByteParsing.forEachLine(bytes) { (line, number) throws(ProcParseError) in
            guard found == nil, let (key, value) = ByteParsing.keyAndValue(bytes, line),
                  ByteParsing.equals(bytes, key, "MemAvailable") else { return }
            guard case .success(.bytes(let amount)) = ByteParsing.amount(bytes, value) else {
                throw ProcParseError(file: file, line: number,
                                     what: "MemAvailable: expected an amount in kB, found \(ByteParsing.excerpt(bytes, value))")
            }
            found = amount
        }
        return found
    }
}

/// MemAvailable, read as cheaply as Linux allows, for a check that runs every second: the file stays
/// open and is read again from offset 0 (procps reads meminfo the same way), into a buffer kept from
/// one read to the next, and only its MemAvailable line is parsed.
///
/// Why it matters: in a TCG guest, opening meminfo and parsing all of its 50-odd lines into a
/// dictionary cost about 3 ms of guest CPU, so a once-a-second check alone used 0.3 % of a vCPU.
public final class MemAvailableProbe {
    /// The first read's size: meminfo is about 1.5 KiB, and MemAvailable is its third line.
    public static let readBytes = 4096
    let path: String
    let file: FileDescriptor
    var buffer: [UInt8]

    public init(path: String = "/proc/meminfo") throws(SystemCallError) {
        self.path = path
        file = try FileDescriptor.open(path, .readOnly)
        buffer = [UInt8](repeating: 0, count: Self.readBytes)
    }

    /// MemAvailable in bytes now. Falls back to reading the whole file when its first 4 KiB hold no
    /// complete MemAvailable line.
    public func read() throws -> UInt64 {
        let path = self.path
        let found = try buffer.withUnsafeMutableBytes { (raw) throws -> UInt64? in
            let count = try self.file.read(into: raw, atOffset: 0)
            var complete = count
            if count == raw.count {
                // A full buffer may end inside a line: parse only up to its last newline.
                while complete > 0 && raw[complete - 1] != UInt8(ascii: "\n") { complete -= 1 }
            }
            return try Meminfo.memAvailable(in: UnsafeBufferPointer(rebasing: raw.bindMemory(to: UInt8.self)[0..<complete]), file: path)
        }
        if let found { return found }
        return try ProcFiles.meminfo(path: path).memAvailable
    }
}
