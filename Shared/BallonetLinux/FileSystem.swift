#if canImport(Glibc)
import Glibc
#endif

/// Calls on paths: whole-file reads and writes for /proc and /sys, directories, links, mounts.
public enum FileSystem {
    /// The first read of a file whose size is unknown asks for this much: /proc's seq_file fills whatever
    /// buffer it is given, so one read of 64 KiB returns meminfo, vmstat or status whole, and only large
    /// files (smaps) need more reads.
    static let firstReadBytes = 64 * 1024

    /// Longest target readLink accepts: PATH_MAX, the kernel's limit for a path it resolves.
    public static let maximumLinkTargetBytes = 4096

    /// Reads a whole file, failing with EFBIG if it holds more than `maxBytes`.
    ///
    /// Works for /proc files (whose stat size is 0) by reading until end of file. The bound keeps a
    /// misbehaving or hostile source from making the caller allocate without limit; `ProcFileLimits` names
    /// the bounds for the /proc files Ballonet reads.
    public static func readFile(_ path: String, maxBytes: Int) throws(SystemCallError) -> [UInt8] {
        let file = try FileDescriptor.open(path, .readOnly)
        return try file.readToEnd(maxBytes: maxBytes, context: quoted(path))
    }

    /// Writes `bytes` to an existing file in one write where the kernel allows it, as /proc/sys and
    /// /proc/<pid>/clear_refs need: they take each write(2) as one value.
    /// With `creatingWithPermissions`, creates or truncates the file first.
    public static func writeFile(
        _ path: String,
        _ bytes: [UInt8],
        creatingWithPermissions permissions: UInt32? = nil
    ) throws(SystemCallError) {
        let options: FileDescriptor.OpenOptions = permissions == nil ? [] : [.create, .truncate]
        let file = try FileDescriptor.open(path, .writeOnly, options: options, permissions: permissions ?? 0)
        try file.write(all: bytes)
        try file.close()
    }

    /// rename(2): replaces `destination` atomically, so a reader sees the old file or the new, never half.
    public static func rename(_ source: String, to destination: String) throws(SystemCallError) {
        _ = try systemCall("rename", quoted(source)) { Glibc.rename(source, destination) }
    }

    /// Writes `bytes` to `path` through a temporary file beside it, synced to disk, and a rename: a crash,
    /// a power loss or a full disk leaves the old file or the new one, whole.
    public static func replaceFile(_ path: String, _ bytes: [UInt8], permissions: UInt32) throws(SystemCallError) {
        let temporary = path + ".new"
        do {
            let file = try FileDescriptor.open(temporary, .writeOnly, options: [.create, .truncate], permissions: permissions)
            try file.write(all: bytes)
            try file.synchronize()
            try file.close()
            try rename(temporary, to: path)
        } catch {
            try? removeFile(temporary)
            throw error
        }
        // The rename itself reaches the disk with the directory.
        let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        if let handle = try? FileDescriptor.open(directory.isEmpty ? "/" : directory, .readOnly) {
            try? handle.synchronize()
        }
    }

    /// `writeFile` with the text's UTF-8 bytes, such as "1" for clear_refs or "0\n" for a sysctl.
    public static func writeFile(
        _ path: String,
        _ text: String,
        creatingWithPermissions permissions: UInt32? = nil
    ) throws(SystemCallError) {
        try writeFile(path, Array(text.utf8), creatingWithPermissions: permissions)
    }

    /// The names in a directory, without "." and "..", in the order the file system gives them.
    public static func listDirectory(_ path: String) throws(SystemCallError) -> [String] {
        guard let directory = opendir(path) else {
            throw SystemCallError("opendir", .current, path: path)
        }
        defer { closedir(directory) }
        var names: [String] = []
        while true {
            // readdir returns NULL both at the end and on error; only errno tells them apart.
            Glibc.errno = 0
            guard let entry = readdir(directory) else {
                let failure = Errno.current
                if failure.rawValue != 0 {
                    throw SystemCallError("readdir", failure, path: path)
                }
                return names
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." {
                names.append(name)
            }
        }
    }

    /// The target of a symbolic link, such as "/memfd:pc.ram (deleted)" for /proc/<pid>/fd/<n>.
    public static func readLink(_ path: String) throws(SystemCallError) -> String {
        var buffer = [UInt8](repeating: 0, count: maximumLinkTargetBytes)
        let count = try buffer.withUnsafeMutableBufferPointer { (target) throws(SystemCallError) -> Int in
            try target.withMemoryRebound(to: CChar.self) { (characters) throws(SystemCallError) -> Int in
                try systemCall("readlink", quoted(path)) {
                    // The buffer is never empty, so it has an address.
                    Glibc.readlink(path, characters.baseAddress!, characters.count)
                }
            }
        }
        // readlink truncates silently; a target that fills the buffer may have been cut.
        if count >= maximumLinkTargetBytes {
            throw SystemCallError("readlink", .ENAMETOOLONG, path: path)
        }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    /// stat(2), or lstat(2) when `followingSymbolicLinks` is false.
    public static func status(ofPath path: String, followingSymbolicLinks: Bool = true) throws(SystemCallError) -> FileStatus {
        var status = stat()
        let flags = followingSymbolicLinks ? 0 : AT_SYMLINK_NOFOLLOW
        _ = try systemCall(followingSymbolicLinks ? "stat" : "lstat", quoted(path)) {
            fstatat(AT_FDCWD, path, &status, flags)
        }
        return FileStatus(status)
    }

    /// Whether something exists at `path` (a dangling symbolic link counts).
    public static func exists(_ path: String) -> Bool {
        var status = stat()
        return Glibc.lstat(path, &status) == 0
    }

    /// unlink(2).
    public static func removeFile(_ path: String) throws(SystemCallError) {
        _ = try systemCall("unlink", quoted(path)) { Glibc.unlink(path) }
    }

    /// mkdir(2).
    public static func makeDirectory(_ path: String, permissions: UInt32 = 0o700) throws(SystemCallError) {
        _ = try systemCall("mkdir", quoted(path)) { Glibc.mkdir(path, mode_t(permissions)) }
    }

    /// mkdir -p: creates `path` and any missing parents; a directory already there is fine when
    /// `orExisting` (its permissions are left as they are).
    public static func makeDirectory(_ path: String, permissions: UInt32 = 0o700, orExisting: Bool) throws(SystemCallError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            do {
                try makeDirectory(prefix, permissions: permissions)
            } catch {
                guard error.errno == .EEXIST, orExisting || prefix != path && prefix + "/" != path,
                      (try? status(ofPath: prefix).kind) == .directory else { throw error }
            }
        }
    }

    /// rmdir(2).
    public static func removeDirectory(_ path: String) throws(SystemCallError) {
        _ = try systemCall("rmdir", quoted(path)) { Glibc.rmdir(path) }
    }

    /// chmod(2).
    public static func setPermissions(_ path: String, _ permissions: UInt32) throws(SystemCallError) {
        _ = try systemCall("chmod", quoted(path)) { Glibc.chmod(path, mode_t(permissions)) }
    }

    /// chown(2): `group` only (the owner stays), as the control socket needs.
    public static func setGroup(_ path: String, _ group: UInt32) throws(SystemCallError) {
        _ = try systemCall("chown", quoted(path)) { Glibc.chown(path, uid_t.max, gid_t(group)) }
    }

    /// mount(2) flags, from linux/mount.h.
    public struct MountFlags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt
        public init(rawValue: UInt) { self.rawValue = rawValue }

        public static let readOnly = MountFlags(rawValue: 1)
        public static let noSetUserID = MountFlags(rawValue: 2)
        public static let noDevices = MountFlags(rawValue: 4)
        public static let noExecute = MountFlags(rawValue: 8)
        public static let remount = MountFlags(rawValue: 32)
    }

    /// mount(2). The balloon's tmpfs is one use: `mount(source: "ballonet", target: dir, type: "tmpfs",
    /// data: "huge=always,mode=0700")` gives 2 MiB pages where the guest kernel can find them.
    public static func mount(
        source: String,
        target: String,
        type: String,
        flags: MountFlags = [],
        data: String? = nil
    ) throws(SystemCallError) {
        _ = try systemCall("mount", "\(quoted(source)) on \(quoted(target)) type \(type)") {
            if let data {
                return Glibc.mount(source, target, type, flags.rawValue, data)
            }
            return Glibc.mount(source, target, type, flags.rawValue, nil)
        }
    }

    /// umount2(2); `detach` unmounts lazily (MNT_DETACH) while files on it are still open.
    public static func unmount(_ target: String, detach: Bool = false) throws(SystemCallError) {
        _ = try systemCall("umount2", quoted(target)) { Glibc.umount2(target, detach ? 2 : 0) }
    }
}
