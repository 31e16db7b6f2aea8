#if canImport(Glibc)
import Glibc
import CBallonetLinux
#endif

/// An open file descriptor, owned: it is closed exactly once, by `close()` or when the value goes away.
///
/// Being noncopyable, it cannot be closed twice or used after close by mistake. Every descriptor this module
/// opens has close-on-exec set, so nothing leaks into a child process.
public struct FileDescriptor: ~Copyable, Sendable {
    private let descriptor: Int32

    /// Takes ownership of a descriptor obtained elsewhere (for example inherited from systemd).
    public init(adopting rawValue: Int32) {
        descriptor = rawValue
    }

    /// The descriptor number, for calls that take several (poll) or for messages. Ownership stays here.
    public var rawValue: Int32 { descriptor }

    /// Gives up ownership without closing; the caller now closes the returned number.
    public consuming func take() -> Int32 {
        let number = descriptor
        discard self
        return number
    }

    /// fsync(2): the file's data and metadata are on disk when this returns.
    public func synchronize() throws(SystemCallError) {
        _ = try systemCall("fsync", "fd \(descriptor)") { Glibc.fsync(descriptor) }
    }

    /// Closes now and reports a failure, which `deinit` cannot (on some file systems close reports a
    /// write error that happened earlier).
    public consuming func close() throws(SystemCallError) {
        let number = descriptor
        discard self
        if Glibc.close(number) == -1 {
            let failure = Errno.current
            // Linux frees the descriptor even when close is interrupted: retrying could close a descriptor
            // another thread has just been given.
            if failure == .EINTR { return }
            throw SystemCallError("close", failure, context: "fd \(number)")
        }
    }

    deinit {
        _ = Glibc.close(descriptor)
    }
}

// MARK: - Opening

extension FileDescriptor {
    public enum AccessMode: Sendable {
        case readOnly, writeOnly, readWrite

        var flags: Int32 {
            switch self {
            case .readOnly: O_RDONLY
            case .writeOnly: O_WRONLY
            case .readWrite: O_RDWR
            }
        }
    }

    /// Flags for `open` beyond the access mode. O_CLOEXEC is always added.
    public struct OpenOptions: OptionSet, Sendable, Hashable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }

        public static let create = OpenOptions(rawValue: O_CREAT)
        /// With `create`: fail with EEXIST if the file exists.
        public static let exclusive = OpenOptions(rawValue: O_EXCL)
        public static let truncate = OpenOptions(rawValue: O_TRUNC)
        public static let append = OpenOptions(rawValue: O_APPEND)
        public static let nonBlocking = OpenOptions(rawValue: O_NONBLOCK)
        public static let directory = OpenOptions(rawValue: O_DIRECTORY)
        public static let noFollow = OpenOptions(rawValue: O_NOFOLLOW)
        /// Do not make a terminal this the controlling terminal (serial ports, virtio consoles).
        public static let noControllingTerminal = OpenOptions(rawValue: O_NOCTTY)
    }

    /// Opens `path`; `permissions` apply only when `options` contains `create`.
    public static func open(
        _ path: String,
        _ access: AccessMode,
        options: OpenOptions = [],
        permissions: UInt32 = 0o600
    ) throws(SystemCallError) -> FileDescriptor {
        let flags = access.flags | options.rawValue | O_CLOEXEC
        let number = try systemCall("open", quoted(path)) {
            Glibc.open(path, flags, mode_t(permissions))
        }
        return FileDescriptor(adopting: number)
    }

    /// A second descriptor for the same open file (shared offset and flags), close-on-exec.
    public func duplicate() throws(SystemCallError) -> FileDescriptor {
        let number = descriptor
        let copy = try systemCall("fcntl(F_DUPFD_CLOEXEC)", "fd \(number)") {
            fcntl(number, F_DUPFD_CLOEXEC, 0)
        }
        return FileDescriptor(adopting: copy)
    }

    /// Sets or clears O_NONBLOCK (reads and writes then fail with EAGAIN instead of waiting).
    public func setNonBlocking(_ nonBlocking: Bool) throws(SystemCallError) {
        let number = descriptor
        let flags = try systemCall("fcntl(F_GETFL)", "fd \(number)") { fcntl(number, F_GETFL) }
        let wanted = nonBlocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        if wanted != flags {
            _ = try systemCall("fcntl(F_SETFL)", "fd \(number)") { fcntl(number, F_SETFL, wanted) }
        }
    }
}

// MARK: - Reading and writing

extension FileDescriptor {
    /// One read(2): the number of bytes read, 0 at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
        let number = descriptor
        return try systemCall("read", "fd \(number)") {
            Glibc.read(number, buffer.baseAddress, buffer.count)
        }
    }

    /// One read(2) of at most `count` bytes; empty at end of file.
    public func read(upTo count: Int) throws(SystemCallError) -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: max(count, 0)) { (buffer, initialized) throws(SystemCallError) in
            initialized = try read(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// One pread(2) at `offset`, leaving the file offset alone: the number of bytes read, 0 past the end.
    public func read(into buffer: UnsafeMutableRawBufferPointer, atOffset offset: Int64) throws(SystemCallError) -> Int {
        let number = descriptor
        return try systemCall("pread", "fd \(number), offset \(offset)") {
            Glibc.pread(number, buffer.baseAddress, buffer.count, off_t(offset))
        }
    }

    /// One pread(2) of at most `count` bytes at `offset`.
    public func read(upTo count: Int, atOffset offset: Int64) throws(SystemCallError) -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: max(count, 0)) { (buffer, initialized) throws(SystemCallError) in
            initialized = try read(into: UnsafeMutableRawBufferPointer(buffer), atOffset: offset)
        }
    }

    /// Reads from the current offset to end of file, failing with EFBIG once more than `maxBytes` arrive.
    ///
    /// Made for /proc and /sys files, whose stat size is 0: the only way to learn their length is to read
    /// them to the end.
    public func readToEnd(maxBytes: Int, context: String? = nil) throws(SystemCallError) -> [UInt8] {
        let number = descriptor
        // The size stat reports is a good first guess for regular files; /proc files report 0.
        var status = stat()
        let sizeHint = Glibc.fstat(number, &status) == 0 ? Int(clamping: status.st_size) : 0
        // Read up to one byte more than the bound allows, so a file of exactly maxBytes is accepted and a
        // longer one is noticed without reading all of it.
        let readLimit = maxBytes < Int.max ? max(maxBytes, 0) + 1 : Int.max
        var bytes: [UInt8] = []
        bytes.reserveCapacity(min(max(sizeHint, FileSystem.firstReadBytes), readLimit))
        while true {
            let wanted = min(max(bytes.capacity - bytes.count, FileSystem.firstReadBytes), readLimit - bytes.count)
            let start = bytes.count
            bytes.append(contentsOf: repeatElement(0, count: wanted))
            let received = try bytes.withUnsafeMutableBufferPointer { (buffer) throws(SystemCallError) -> Int in
                let window = UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buffer)[start...])
                return try systemCall("read", context ?? "fd \(number)") {
                    Glibc.read(number, window.baseAddress, window.count)
                }
            }
            bytes.removeLast(wanted - received)
            if received == 0 {
                return bytes
            }
            if bytes.count > maxBytes {
                throw SystemCallError("read", .EFBIG, context: "\(context ?? "fd \(number)"), limit \(maxBytes) bytes")
            }
        }
    }

    /// One write(2): the number of bytes written, which may be fewer than offered.
    public func write(_ buffer: UnsafeRawBufferPointer) throws(SystemCallError) -> Int {
        let number = descriptor
        return try systemCall("write", "fd \(number)") {
            Glibc.write(number, buffer.baseAddress, buffer.count)
        }
    }

    /// Writes all of `buffer`, repeating after short writes.
    public func write(all buffer: UnsafeRawBufferPointer) throws(SystemCallError) {
        var done = 0
        while done < buffer.count {
            done += try write(UnsafeRawBufferPointer(rebasing: buffer[done...]))
        }
    }

    /// Writes all of `bytes`, repeating after short writes.
    public func write(all bytes: [UInt8]) throws(SystemCallError) {
        try withBytes(of: bytes) { (buffer) throws(SystemCallError) in try write(all: buffer) }
    }

    /// One pwrite(2) at `offset`, leaving the file offset alone.
    public func write(_ buffer: UnsafeRawBufferPointer, atOffset offset: Int64) throws(SystemCallError) -> Int {
        let number = descriptor
        return try systemCall("pwrite", "fd \(number), offset \(offset)") {
            Glibc.pwrite(number, buffer.baseAddress, buffer.count, off_t(offset))
        }
    }

    /// Writes all of `bytes` starting at `offset`, repeating after short writes.
    public func write(all bytes: [UInt8], atOffset offset: Int64) throws(SystemCallError) {
        try withBytes(of: bytes) { (buffer) throws(SystemCallError) in
            var done = 0
            while done < buffer.count {
                done += try write(UnsafeRawBufferPointer(rebasing: buffer[done...]), atOffset: offset + Int64(done))
            }
        }
    }
}

// MARK: - File size and space

extension FileDescriptor {
    /// fstat(2).
    public func status() throws(SystemCallError) -> FileStatus {
        let number = descriptor
        var status = stat()
        _ = try systemCall("fstat", "fd \(number)") { Glibc.fstat(number, &status) }
        return FileStatus(status)
    }

    /// ftruncate(2): sets the file's size, dropping or adding (unallocated) bytes at the end.
    public func truncate(toSize size: Int64) throws(SystemCallError) {
        let number = descriptor
        _ = try systemCall("ftruncate", "fd \(number), size \(size)") { Glibc.ftruncate(number, off_t(size)) }
    }

    /// What fallocate(2) does to a byte range. Values from linux/falloc.h.
    public struct AllocationMode: OptionSet, Sendable, Hashable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }

        /// Allocate (or, with punchHole, free) without changing the file size.
        public static let keepSize = AllocationMode(rawValue: 0x01)
        /// Free the range's blocks; reads of it return zeros afterwards. The kernel requires keepSize with it.
        public static let punchHole = AllocationMode(rawValue: 0x02)
        public static let collapseRange = AllocationMode(rawValue: 0x08)
        public static let zeroRange = AllocationMode(rawValue: 0x10)
        public static let insertRange = AllocationMode(rawValue: 0x20)
        public static let unshareRange = AllocationMode(rawValue: 0x40)

        /// The host's reclaim: give the memory behind a range of a memfd or tmpfs file back to the kernel.
        public static let punchHoleKeepingSize: AllocationMode = [.punchHole, .keepSize]
        /// Plain allocation, as posix_fallocate: back the range with blocks (or pages) now.
        public static let allocate: AllocationMode = []
    }

    /// fallocate(2) on `length` bytes from `offset`.
    public func fallocate(mode: AllocationMode, offset: Int64, length: Int64) throws(SystemCallError) {
        let number = descriptor
        _ = try systemCall("fallocate", "fd \(number), mode \(mode.rawValue), offset \(offset), length \(length)") {
            cballonet_fallocate(number, mode.rawValue, offset, length)
        }
    }

    /// Frees the memory (or disk blocks) behind `length` bytes from `offset`, keeping the file's size:
    /// the host's reclaim of guest RAM behind balloon pages. The range reads as zeros afterwards.
    public func punchHole(offset: Int64, length: Int64) throws(SystemCallError) {
        try fallocate(mode: .punchHoleKeepingSize, offset: offset, length: length)
    }

    /// Where a seek offset counts from.
    public enum SeekOrigin: Sendable {
        case start, current, end
        /// The next offset at or after the given one that holds data (fails with ENXIO if none).
        case nextData
        /// The next offset at or after the given one that is in a hole (the end of file counts as one).
        case nextHole

        var whence: Int32 {
            switch self {
            case .start: SEEK_SET
            case .current: SEEK_CUR
            case .end: SEEK_END
            // SEEK_DATA and SEEK_HOLE are behind _GNU_SOURCE; their values are Linux ABI.
            case .nextData: 3
            case .nextHole: 4
            }
        }
    }

    /// lseek(2): the resulting offset from the start of the file.
    @discardableResult
    public func seek(to offset: Int64, from origin: SeekOrigin = .start) throws(SystemCallError) -> Int64 {
        let number = descriptor
        let result = try systemCall("lseek", "fd \(number), offset \(offset)") {
            Glibc.lseek(number, off_t(offset), origin.whence)
        }
        return Int64(result)
    }
}

/// What stat(2) says about a file.
public struct FileStatus: Hashable, Sendable {
    public enum Kind: Sendable, Hashable {
        case regular, directory, symbolicLink, socket, fifo, characterDevice, blockDevice, unknown
    }

    public let kind: Kind
    /// Permission bits (the low 12 bits of st_mode).
    public let permissions: UInt32
    public let size: Int64
    /// Bytes of storage (or memory, on tmpfs and memfd) the file holds: st_blocks counts 512-byte units
    /// on Linux whatever the file system's block size. Punching a hole makes this drop.
    public let allocatedBytes: Int64
    public let preferredBlockSize: Int64
    public let inode: UInt64
    public let device: UInt64
    public let linkCount: UInt64
    public let userID: UInt32
    public let groupID: UInt32

    init(_ status: stat) {
        switch status.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symbolicLink
        case S_IFSOCK: kind = .socket
        case S_IFIFO: kind = .fifo
        case S_IFCHR: kind = .characterDevice
        case S_IFBLK: kind = .blockDevice
        default: kind = .unknown
        }
        permissions = UInt32(status.st_mode & 0o7777)
        size = Int64(status.st_size)
        allocatedBytes = Int64(status.st_blocks) * 512
        preferredBlockSize = Int64(status.st_blksize)
        inode = UInt64(status.st_ino)
        device = UInt64(status.st_dev)
        linkCount = UInt64(status.st_nlink)
        userID = status.st_uid
        groupID = status.st_gid
    }
}

/// A `FileDescriptor` held by reference, for places a noncopyable value cannot go: dictionaries,
/// optionals stored in classes, values captured by closures. It closes the descriptor when the last
/// reference goes.
public final class SharedDescriptor {
    public let descriptor: FileDescriptor
    public init(_ descriptor: consuming FileDescriptor) { self.descriptor = descriptor }
}
