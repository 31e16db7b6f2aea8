/// A mapping's permissions, as the four letters "rw-p" / "r-xs" of maps and smaps.
public struct MappingPermissions: Hashable, Sendable, CustomStringConvertible {
    public var read: Bool
    public var write: Bool
    public var execute: Bool
    /// 's': writes reach the backing file and other mappings of it (memfd guest RAM with share=on);
    /// 'p': copy-on-write private mapping.
    public var shared: Bool

    public init(read: Bool, write: Bool, execute: Bool, shared: Bool) {
        self.read = read
        self.write = write
        self.execute = execute
        self.shared = shared
    }

    public var description: String {
        (read ? "r" : "-") + (write ? "w" : "-") + (execute ? "x" : "-") + (shared ? "s" : "p")
    }
}

/// A device number as maps prints it, "fe:00" (hexadecimal major:minor).
public struct DeviceNumber: Hashable, Sendable, CustomStringConvertible {
    public var major: UInt32
    public var minor: UInt32

    public init(major: UInt32, minor: UInt32) {
        self.major = major
        self.minor = minor
    }

    public var description: String {
        let majorText = String(major, radix: 16)
        let minorText = String(minor, radix: 16)
        return (majorText.count < 2 ? "0" : "") + majorText + ":" + (minorText.count < 2 ? "0" : "") + minorText
    }
}

/// The "<n> kB" lines of an smaps entry, by the kernel's names.
public enum SmapsField: String, CaseIterable, Sendable {
    case size = "Size"
    case kernelPageSize = "KernelPageSize"
    case mmuPageSize = "MMUPageSize"
    case rss = "Rss"
    case pss = "Pss"
    case pssDirty = "Pss_Dirty"
    case pssAnon = "Pss_Anon"
    case pssFile = "Pss_File"
    case pssShmem = "Pss_Shmem"
    case sharedClean = "Shared_Clean"
    case sharedDirty = "Shared_Dirty"
    case privateClean = "Private_Clean"
    case privateDirty = "Private_Dirty"
    case referenced = "Referenced"
    case anonymous = "Anonymous"
    case ksm = "KSM"
    case lazyFree = "LazyFree"
    case anonHugePages = "AnonHugePages"
    case shmemPmdMapped = "ShmemPmdMapped"
    case filePmdMapped = "FilePmdMapped"
    case sharedHugetlb = "Shared_Hugetlb"
    case privateHugetlb = "Private_Hugetlb"
    case swap = "Swap"
    case swapPss = "SwapPss"
    case locked = "Locked"

    /// Names as bytes, in the order the kernel prints them, so a line's name is found without making a
    /// String (smaps of a QEMU process has tens of thousands of lines).
    static let names: [[UInt8]] = allCases.map { Array($0.rawValue.utf8) }
    static let ordered: [SmapsField] = allCases

    /// The field named by `key`, trying the one after `hint` first: lines come in table order.
    static func find(_ buffer: UnsafeBufferPointer<UInt8>, _ key: Range<Int>, after hint: inout Int) -> SmapsField? {
        let count = names.count
        for step in 0..<count {
            let index = (hint + step) % count
            let name = names[index]
            guard name.count == key.count else { continue }
            var same = true
            for offset in 0..<name.count where buffer[key.lowerBound + offset] != name[offset] {
                same = false
                break
            }
            if same {
                hint = index + 1
                return ordered[index]
            }
        }
        return nil
    }
}

/// One mapping of a process: a line of /proc/<pid>/maps, with the lines smaps adds below it.
///
/// Amounts are in bytes (the file's "kB" means KiB). Fields the file did not have are 0 (maps has none).
public struct SmapsMapping: Hashable, Sendable {
    public var start: UInt64
    /// One past the last byte.
    public var end: UInt64
    public var permissions: MappingPermissions
    /// Offset into the backing file, in bytes.
    public var offset: UInt64
    public var device: DeviceNumber
    public var inode: UInt64
    /// The backing file, "[heap]", "[stack]", "[anon:name]", "/memfd:pc.ram (deleted)", ...; nil for
    /// anonymous memory. Spaces inside are kept; leading spaces cannot be told from the kernel's padding.
    /// Bytes that are not UTF-8 become U+FFFD.
    public var pathname: String?

    public var size: UInt64 = 0
    public var kernelPageSize: UInt64 = 0
    public var mmuPageSize: UInt64 = 0
    public var rss: UInt64 = 0
    public var pss: UInt64 = 0
    public var pssDirty: UInt64 = 0
    /// Only in smaps_rollup.
    public var pssAnon: UInt64 = 0
    /// Only in smaps_rollup.
    public var pssFile: UInt64 = 0
    /// Only in smaps_rollup.
    public var pssShmem: UInt64 = 0
    public var sharedClean: UInt64 = 0
    public var sharedDirty: UInt64 = 0
    public var privateClean: UInt64 = 0
    public var privateDirty: UInt64 = 0
    /// Referenced: memory touched since the last write to clear_refs (idle page sampling reads this).
    public var referenced: UInt64 = 0
    public var anonymous: UInt64 = 0
    public var ksm: UInt64 = 0
    public var lazyFree: UInt64 = 0
    public var anonHugePages: UInt64 = 0
    public var shmemPmdMapped: UInt64 = 0
    public var filePmdMapped: UInt64 = 0
    public var sharedHugetlb: UInt64 = 0
    public var privateHugetlb: UInt64 = 0
    public var swap: UInt64 = 0
    public var swapPss: UInt64 = 0
    public var locked: UInt64 = 0

    /// THPeligible: whether the mapping may get transparent huge pages; nil if the line is missing.
    public var thpEligible: Bool?
    /// ProtectionKey: the memory protection key, on machines with pkeys.
    public var protectionKey: UInt32?
    /// VmFlags: two-letter flags such as "rd", "wr", "sh", "lo" (locked), "mg" (KSM mergeable), "hg".
    public var vmFlags: Set<String> = []
    /// Lines this type has no property for, by name: bytes for "kB" lines, plain numbers for the rest.
    public var otherFields: [String: UInt64] = [:]

    public init(
        start: UInt64, end: UInt64, permissions: MappingPermissions, offset: UInt64,
        device: DeviceNumber, inode: UInt64, pathname: String?
    ) {
        self.start = start
        self.end = end
        self.permissions = permissions
        self.offset = offset
        self.device = device
        self.inode = inode
        self.pathname = pathname
    }

    /// The mapping's extent in bytes, from its addresses (0 for a value made with end before start).
    public var length: UInt64 { end > start ? end - start : 0 }

    public func contains(address: UInt64) -> Bool {
        address >= start && address < end
    }

    /// Whether the backing file was unlinked (memfds always are).
    public var isDeleted: Bool {
        pathname?.hasSuffix(" (deleted)") ?? false
    }

    public subscript(field: SmapsField) -> UInt64 {
        get {
            switch field {
            case .size: size
            case .kernelPageSize: kernelPageSize
            case .mmuPageSize: mmuPageSize
            case .rss: rss
            case .pss: pss
            case .pssDirty: pssDirty
            case .pssAnon: pssAnon
            case .pssFile: pssFile
            case .pssShmem: pssShmem
            case .sharedClean: sharedClean
            case .sharedDirty: sharedDirty
            case .privateClean: privateClean
            case .privateDirty: privateDirty
            case .referenced: referenced
            case .anonymous: anonymous
            case .ksm: ksm
            case .lazyFree: lazyFree
            case .anonHugePages: anonHugePages
            case .shmemPmdMapped: shmemPmdMapped
            case .filePmdMapped: filePmdMapped
            case .sharedHugetlb: sharedHugetlb
            case .privateHugetlb: privateHugetlb
            case .swap: swap
            case .swapPss: swapPss
            case .locked: locked
            }
        }
        set {
            switch field {
            case .size: size = newValue
            case .kernelPageSize: kernelPageSize = newValue
            case .mmuPageSize: mmuPageSize = newValue
            case .rss: rss = newValue
            case .pss: pss = newValue
            case .pssDirty: pssDirty = newValue
            case .pssAnon: pssAnon = newValue
            case .pssFile: pssFile = newValue
            case .pssShmem: pssShmem = newValue
            case .sharedClean: sharedClean = newValue
            case .sharedDirty: sharedDirty = newValue
            case .privateClean: privateClean = newValue
            case .privateDirty: privateDirty = newValue
            case .referenced: referenced = newValue
            case .anonymous: anonymous = newValue
            case .ksm: ksm = newValue
            case .lazyFree: lazyFree = newValue
            case .anonHugePages: anonHugePages = newValue
            case .shmemPmdMapped: shmemPmdMapped = newValue
            case .filePmdMapped: filePmdMapped = newValue
            case .sharedHugetlb: sharedHugetlb = newValue
            case .privateHugetlb: privateHugetlb = newValue
            case .swap: swap = newValue
            case .swapPss: swapPss = newValue
            case .locked: locked = newValue
            }
        }
    }
}

/// /proc/<pid>/smaps (also smaps_rollup, whose one entry is the whole process, and maps, whose entries
/// have no field lines).
public struct Smaps: Hashable, Sendable {
    public var mappings: [SmapsMapping]

    public init(mappings: [SmapsMapping]) {
        self.mappings = mappings
    }

    public init(parsing text: String, file: String = "/proc/self/smaps") throws(ProcParseError) {
        try self.init(parsing: Array(text.utf8), file: file)
    }

    public init(parsing bytes: [UInt8], file: String = "/proc/self/smaps") throws(ProcParseError) {
        var parser = SmapsParser(file: file)
        var mappings: [SmapsMapping] = []
        try bytes.withUnsafeBufferPointer { (buffer) throws(ProcParseError) in
            try ByteParsing.forEachLine(buffer) { (line, _) throws(ProcParseError) in
                if let finished = try parser.consume(line: UnsafeBufferPointer(rebasing: buffer[line])) {
                    mappings.append(finished)
                }
            }
        }
        if let last = parser.finish() {
            mappings.append(last)
        }
        self.mappings = mappings
    }

    /// The sum of `field` over all mappings (saturating: a sum past 16 EiB cannot be real memory).
    public func total(_ field: SmapsField) -> UInt64 {
        var sum: UInt64 = 0
        for mapping in mappings {
            let (next, overflowed) = sum.addingReportingOverflow(mapping[field])
            sum = overflowed ? .max : next
        }
        return sum
    }

    /// The mapping that holds `address`, if any.
    public func mapping(containing address: UInt64) -> SmapsMapping? {
        mappings.first { $0.contains(address: address) }
    }
}

/// Parses smaps one line at a time, so a large file (a QEMU process's) can be read in chunks and its
/// mappings handled one by one without holding the file or all mappings.
public struct SmapsParser: Sendable {
    public let file: String
    private var current: SmapsMapping?
    private var lineNumber = 0
    private var fieldHint = 0

    public init(file: String = "/proc/self/smaps") {
        self.file = file
    }

    /// Takes one line, without its newline. Returns the previous mapping, complete, when this line
    /// starts the next one.
    public mutating func consume(line: UnsafeBufferPointer<UInt8>) throws(ProcParseError) -> SmapsMapping? {
        lineNumber += 1
        let all = 0..<line.count
        guard let first = ByteParsing.token(line, in: all) else { return nil }
        if line[first.upperBound - 1] != ByteParsing.colon {
            // A mapping's first line: "start-end perms offset dev inode [pathname]".
            guard let mapping = SmapsParser.parseHeader(line) else {
                throw ProcParseError(file: file, line: lineNumber, what: "\(ByteParsing.excerpt(line, all)) is neither a mapping nor a field line")
            }
            let finished = current
            current = mapping
            fieldHint = 0
            return finished
        }
        guard current != nil else {
            throw ProcParseError(file: file, line: lineNumber, what: "field line \(ByteParsing.excerpt(line, all)) before any mapping line")
        }
        try consumeField(line, key: first.lowerBound..<(first.upperBound - 1), value: ByteParsing.trimmed(line, first.upperBound..<line.count))
        return nil
    }

    /// Ends the input: returns the last mapping, if any.
    public mutating func finish() -> SmapsMapping? {
        defer { current = nil }
        return current
    }

    private mutating func consumeField(_ line: UnsafeBufferPointer<UInt8>, key: Range<Int>, value: Range<Int>) throws(ProcParseError) {
        func fail(_ what: String) -> ProcParseError {
            ProcParseError(file: file, line: lineNumber, what: "\(ByteParsing.string(line, key)): \(what)")
        }
        if let field = SmapsField.find(line, key, after: &fieldHint) {
            switch ByteParsing.amount(line, value) {
            case .success(.bytes(let amount)):
                current?[field] = amount
            case .success(.count):
                throw fail("expected an amount in kB, found \(ByteParsing.excerpt(line, value))")
            case .failure(.overflowsInBytes):
                throw fail("\(ByteParsing.excerpt(line, value)) overflows 64 bits when converted to bytes")
            case .failure(.malformed):
                throw fail("\(ByteParsing.excerpt(line, value)) is not an amount in kB")
            }
        } else if ByteParsing.equals(line, key, "VmFlags") {
            var flags: Set<String> = []
            for flag in ByteParsing.tokens(line, in: value) {
                flags.insert(ByteParsing.string(line, flag))
            }
            current?.vmFlags = flags
        } else if ByteParsing.equals(line, key, "THPeligible") {
            guard let eligible = ByteParsing.decimal(line, value), eligible <= 1 else {
                throw fail("\(ByteParsing.excerpt(line, value)) is not 0 or 1")
            }
            current?.thpEligible = eligible == 1
        } else if ByteParsing.equals(line, key, "ProtectionKey") {
            guard let key = ByteParsing.decimal(line, value), let protectionKey = UInt32(exactly: key) else {
                throw fail("\(ByteParsing.excerpt(line, value)) is not a protection key")
            }
            current?.protectionKey = protectionKey
        } else {
            // A line from a newer kernel: kept if it reads like the others, skipped if not.
            switch ByteParsing.amount(line, value) {
            case .success(.bytes(let amount)), .success(.count(let amount)):
                current?.otherFields[ByteParsing.string(line, key)] = amount
            case .failure:
                break
            }
        }
    }

    /// "start-end perms offset major:minor inode [pathname]"; nil if any part is malformed.
    static func parseHeader(_ line: UnsafeBufferPointer<UInt8>) -> SmapsMapping? {
        let all = 0..<line.count
        guard let addresses = ByteParsing.token(line, in: all),
              let dash = ByteParsing.firstIndex(of: ByteParsing.dash, line, in: addresses),
              let start = ByteParsing.hexadecimal(line, addresses.lowerBound..<dash),
              let end = ByteParsing.hexadecimal(line, (dash + 1)..<addresses.upperBound),
              start <= end,
              let permissionsRange = ByteParsing.token(line, in: addresses.upperBound..<line.count),
              let permissions = parsePermissions(line, permissionsRange),
              let offsetRange = ByteParsing.token(line, in: permissionsRange.upperBound..<line.count),
              let offset = ByteParsing.hexadecimal(line, offsetRange),
              let deviceRange = ByteParsing.token(line, in: offsetRange.upperBound..<line.count),
              let colon = ByteParsing.firstIndex(of: ByteParsing.colon, line, in: deviceRange),
              let major = ByteParsing.hexadecimal(line, deviceRange.lowerBound..<colon).flatMap(UInt32.init(exactly:)),
              let minor = ByteParsing.hexadecimal(line, (colon + 1)..<deviceRange.upperBound).flatMap(UInt32.init(exactly:)),
              let inodeRange = ByteParsing.token(line, in: deviceRange.upperBound..<line.count),
              let inode = ByteParsing.decimal(line, inodeRange)
        else { return nil }
        // The pathname is the rest of the line after the padding; it may contain spaces.
        let pathRange = ByteParsing.trimmed(line, inodeRange.upperBound..<line.count)
        let pathname = pathRange.isEmpty ? nil : ByteParsing.string(line, pathRange)
        return SmapsMapping(
            start: start, end: end, permissions: permissions, offset: offset,
            device: DeviceNumber(major: major, minor: minor), inode: inode, pathname: pathname)
    }

    private static func parsePermissions(_ line: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> MappingPermissions? {
        guard range.count == 4 else { return nil }
        func flag(_ offset: Int, _ letter: UInt8) -> Bool? {
            let byte = line[range.lowerBound + offset]
            if byte == letter { return true }
            if byte == ByteParsing.dash { return false }
            return nil
        }
        let sharing = line[range.lowerBound + 3]
        guard let read = flag(0, 0x72), let write = flag(1, 0x77), let execute = flag(2, 0x78),
              sharing == 0x73 || sharing == 0x70
        else { return nil }
        return MappingPermissions(read: read, write: write, execute: execute, shared: sharing == 0x73)
    }
}
