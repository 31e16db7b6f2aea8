#if canImport(Glibc)
import Glibc
import CBallonetLinux
#endif

/// Calls on memory: page size, locking, advice, memfd.
public enum Memory {
    /// The base page size (4096 on x86_64; 4096, 16384 or 65536 on aarch64 kernels).
    public static let pageSize: Int = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// mlock(2): fault the pages in and keep them resident until unlocked or unmapped.
    public static func lock(_ region: UnsafeRawBufferPointer) throws(SystemCallError) {
        _ = try systemCall("mlock", describe(region)) { Glibc.mlock(region.baseAddress, region.count) }
    }

    /// munlock(2).
    public static func unlock(_ region: UnsafeRawBufferPointer) throws(SystemCallError) {
        _ = try systemCall("munlock", describe(region)) { Glibc.munlock(region.baseAddress, region.count) }
    }

    /// madvise(2). The region must start on a page boundary.
    public static func advise(_ region: UnsafeRawBufferPointer, _ advice: MemoryAdvice) throws(SystemCallError) {
        _ = try systemCall("madvise", "\(describe(region)), \(advice)") {
            Glibc.madvise(UnsafeMutableRawPointer(mutating: region.baseAddress), region.count, advice.rawValue)
        }
    }

    /// Options for `createMemoryFile`, from linux/memfd.h. MFD_CLOEXEC is always set.
    public struct MemoryFileOptions: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// Allow fcntl(F_ADD_SEALS) later.
        public static let allowSealing = MemoryFileOptions(rawValue: 0x0002)
        /// Back the file with hugetlbfs pages (needs reserved huge pages).
        public static let hugeTLB = MemoryFileOptions(rawValue: 0x0004)
    }

    /// memfd_create(2): an anonymous file in memory, like QEMU's memory-backend-memfd. `name` shows in
    /// /proc/<pid>/maps and fd links as "/memfd:<name> (deleted)".
    public static func createMemoryFile(named name: String, options: MemoryFileOptions = []) throws(SystemCallError) -> FileDescriptor {
        let flags = options.rawValue | LinuxConstant.memfdCloseOnExec
        let number = try systemCall("memfd_create", quoted(name)) {
            cballonet_memfd_create(name, flags)
        }
        return FileDescriptor(adopting: number)
    }

    static func describe(_ region: UnsafeRawBufferPointer) -> String {
        "0x\(String(UInt(bitPattern: region.baseAddress), radix: 16)), \(region.count) bytes"
    }
}

/// An madvise(2) advice value. Values are Linux ABI (asm-generic/mman-common.h), the same on x86_64 and
/// aarch64.
public struct MemoryAdvice: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let normal = MemoryAdvice(rawValue: 0)
    public static let random = MemoryAdvice(rawValue: 1)
    public static let sequential = MemoryAdvice(rawValue: 2)
    public static let willNeed = MemoryAdvice(rawValue: 3)
    /// Drop the pages now: private anonymous memory reads back as zeros, shared memory keeps its content.
    public static let dontNeed = MemoryAdvice(rawValue: 4)
    /// Drop private anonymous pages lazily, when the kernel needs memory.
    public static let free = MemoryAdvice(rawValue: 8)
    /// Free the backing of shared memory (tmpfs, memfd) too, like a hole punch.
    public static let remove = MemoryAdvice(rawValue: 9)
    public static let dontFork = MemoryAdvice(rawValue: 10)
    public static let doFork = MemoryAdvice(rawValue: 11)
    /// Let KSM merge identical pages in the range.
    public static let mergeable = MemoryAdvice(rawValue: 12)
    public static let unmergeable = MemoryAdvice(rawValue: 13)
    public static let hugePage = MemoryAdvice(rawValue: 14)
    public static let noHugePage = MemoryAdvice(rawValue: 15)
    public static let dontDump = MemoryAdvice(rawValue: 16)
    public static let doDump = MemoryAdvice(rawValue: 17)
    /// Move the pages to the inactive list: first to go when memory is short. Content is kept.
    public static let cold = MemoryAdvice(rawValue: 20)
    /// Reclaim the pages now (write anonymous ones to swap). Content is kept.
    public static let pageOut = MemoryAdvice(rawValue: 21)
    public static let populateRead = MemoryAdvice(rawValue: 22)
    public static let populateWrite = MemoryAdvice(rawValue: 23)
    public static let collapse = MemoryAdvice(rawValue: 25)

    public var description: String {
        switch rawValue {
        case 0: "MADV_NORMAL"
        case 1: "MADV_RANDOM"
        case 2: "MADV_SEQUENTIAL"
        case 3: "MADV_WILLNEED"
        case 4: "MADV_DONTNEED"
        case 8: "MADV_FREE"
        case 9: "MADV_REMOVE"
        case 10: "MADV_DONTFORK"
        case 11: "MADV_DOFORK"
        case 12: "MADV_MERGEABLE"
        case 13: "MADV_UNMERGEABLE"
        case 14: "MADV_HUGEPAGE"
        case 15: "MADV_NOHUGEPAGE"
        case 16: "MADV_DONTDUMP"
        case 17: "MADV_DODUMP"
        case 20: "MADV_COLD"
        case 21: "MADV_PAGEOUT"
        case 22: "MADV_POPULATE_READ"
        case 23: "MADV_POPULATE_WRITE"
        case 25: "MADV_COLLAPSE"
        default: "madvise \(rawValue)"
        }
    }
}

/// mmap(2) protection.
public struct MemoryProtection: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let read = MemoryProtection(rawValue: PROT_READ)
    public static let write = MemoryProtection(rawValue: PROT_WRITE)
    public static let execute = MemoryProtection(rawValue: PROT_EXEC)
    public static let readWrite: MemoryProtection = [.read, .write]
}

/// A mapping made by mmap(2), owned: it is unmapped exactly once, by `unmap()` or when the value goes away.
///
/// Sendable because it is noncopyable: whoever holds it is the only owner of the address range.
public struct MappedRegion: ~Copyable, @unchecked Sendable {
    public let baseAddress: UnsafeMutableRawPointer
    public let length: Int

    /// Whether writes reach the file (and other mappings of it) or stay private to this mapping.
    public enum Sharing: Sendable {
        case shared, `private`
    }

    /// Extra mmap(2) flags.
    public struct Options: OptionSet, Sendable, Hashable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }

        /// Fault every page in now (MAP_POPULATE).
        public static let populate = Options(rawValue: MAP_POPULATE)
        /// Do not reserve swap for the mapping (MAP_NORESERVE).
        public static let noReserve = Options(rawValue: MAP_NORESERVE)
        /// mlock the mapping as it is made (MAP_LOCKED); failures to lock are not reported, prefer lock().
        public static let locked = Options(rawValue: MAP_LOCKED)
        /// Back the mapping with hugetlbfs pages (MAP_HUGETLB).
        public static let hugeTLB = Options(rawValue: MAP_HUGETLB)
    }

    /// Takes ownership of a mapping made elsewhere, or given up earlier with `take()`.
    public init(adopting baseAddress: UnsafeMutableRawPointer, length: Int) {
        self.baseAddress = baseAddress
        self.length = length
    }

    /// Maps `length` bytes of fresh zero-filled private memory.
    public init(anonymousLength length: Int, protection: MemoryProtection = .readWrite, options: Options = []) throws(SystemCallError) {
        try self.init(
            length: length, protection: protection, flags: MAP_PRIVATE | MAP_ANONYMOUS | options.rawValue,
            file: -1, offset: 0, context: "anonymous, \(length) bytes")
    }

    /// Maps `length` bytes of `file` from `offset` (a multiple of the page size). The mapping stays valid
    /// after the descriptor is closed.
    public init(
        file: borrowing FileDescriptor,
        offset: Int64 = 0,
        length: Int,
        protection: MemoryProtection = .readWrite,
        sharing: Sharing = .shared,
        options: Options = []
    ) throws(SystemCallError) {
        let sharingFlag = sharing == .shared ? MAP_SHARED : MAP_PRIVATE
        try self.init(
            length: length, protection: protection, flags: sharingFlag | options.rawValue,
            file: file.rawValue, offset: offset, context: "fd \(file.rawValue), offset \(offset), \(length) bytes")
    }

    private init(length: Int, protection: MemoryProtection, flags: Int32, file: Int32, offset: Int64, context: String) throws(SystemCallError) {
        // mmap is not interrupted by signals, so there is no EINTR to retry.
        let address = Glibc.mmap(nil, length, protection.rawValue, flags, file, off_t(offset))
        guard let address, address != MAP_FAILED else {
            throw SystemCallError("mmap", .current, context: context)
        }
        baseAddress = address
        self.length = length
    }

    /// The mapped bytes.
    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: baseAddress, count: length)
    }

    /// The start address as a number, as /proc/<pid>/smaps and process_madvise ranges use it.
    public var address: UInt64 { UInt64(UInt(bitPattern: baseAddress)) }

    /// mlock(2) on `length` bytes from `offset`, or on the whole mapping.
    public func lock(offset: Int = 0, length: Int? = nil) throws(SystemCallError) {
        try Memory.lock(UnsafeRawBufferPointer(try range("mlock", offset: offset, length: length)))
    }

    /// munlock(2) on `length` bytes from `offset`, or on the whole mapping.
    public func unlock(offset: Int = 0, length: Int? = nil) throws(SystemCallError) {
        try Memory.unlock(UnsafeRawBufferPointer(try range("munlock", offset: offset, length: length)))
    }

    /// madvise(2) on `length` bytes from `offset`, or on the whole mapping.
    public func advise(_ advice: MemoryAdvice, offset: Int = 0, length: Int? = nil) throws(SystemCallError) {
        try Memory.advise(UnsafeRawBufferPointer(try range("madvise", offset: offset, length: length)), advice)
    }

    /// mprotect(2) on the whole mapping.
    public func protect(_ protection: MemoryProtection) throws(SystemCallError) {
        let base = baseAddress
        let count = length
        _ = try systemCall("mprotect", Memory.describe(UnsafeRawBufferPointer(bytes))) {
            Glibc.mprotect(base, count, protection.rawValue)
        }
    }

    /// A sub-range of this mapping. Ranges outside it are refused here rather than passed on: advice such
    /// as MADV_DONTNEED on a neighbouring mapping would destroy memory this value does not own.
    private func range(_ call: String, offset: Int, length: Int?) throws(SystemCallError) -> UnsafeMutableRawBufferPointer {
        let count = length ?? (self.length - offset)
        guard offset >= 0, count >= 0, offset <= self.length, count <= self.length - offset else {
            throw SystemCallError(call, .EINVAL, context: "offset \(offset), length \(count), outside a mapping of \(self.length) bytes")
        }
        return UnsafeMutableRawBufferPointer(start: baseAddress + offset, count: count)
    }

    /// Unmaps now and reports a failure, which `deinit` cannot.
    public consuming func unmap() throws(SystemCallError) {
        let base = baseAddress
        let count = length
        discard self
        if Glibc.munmap(base, count) == -1 {
            throw SystemCallError("munmap", .current, context: Memory.describe(UnsafeRawBufferPointer(start: base, count: count)))
        }
    }

    /// Gives up ownership without unmapping: the mapping then lives until the process ends or it is
    /// adopted again with `init(adopting:)`.
    public consuming func take() -> UnsafeMutableRawBufferPointer {
        let region = bytes
        discard self
        return region
    }

    deinit {
        _ = Glibc.munmap(baseAddress, length)
    }
}

/// A resource limit (getrlimit(2)): the soft limit is enforced, the hard limit caps what an unprivileged
/// process may raise the soft limit to.
public struct ResourceLimit: Hashable, Sendable {
    /// RLIM_INFINITY.
    public static let unlimited = UInt64.max

    public var soft: UInt64
    public var hard: UInt64

    public init(soft: UInt64, hard: UInt64) {
        self.soft = soft
        self.hard = hard
    }

    /// Which limit.
    public enum Kind: Sendable {
        /// RLIMIT_MEMLOCK: bytes a process may mlock (not enforced with CAP_IPC_LOCK).
        case lockedMemory
        /// RLIMIT_NOFILE.
        case openFiles
        /// RLIMIT_CORE.
        case coreFileSize

        var resource: __rlimit_resource_t {
            switch self {
            case .lockedMemory: __rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue)
            case .openFiles: __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
            case .coreFileSize: __rlimit_resource_t(RLIMIT_CORE.rawValue)
            }
        }
    }

    /// getrlimit(2).
    public static func current(_ kind: Kind) throws(SystemCallError) -> ResourceLimit {
        var limit = rlimit()
        _ = try systemCall("getrlimit", "\(kind)") { getrlimit(kind.resource, &limit) }
        return ResourceLimit(soft: UInt64(limit.rlim_cur), hard: UInt64(limit.rlim_max))
    }

    /// setrlimit(2).
    public static func set(_ kind: Kind, to limit: ResourceLimit) throws(SystemCallError) {
        var value = rlimit(rlim_cur: rlim_t(limit.soft), rlim_max: rlim_t(limit.hard))
        _ = try systemCall("setrlimit", "\(kind), soft \(limit.soft), hard \(limit.hard)") { setrlimit(kind.resource, &value) }
    }
}
