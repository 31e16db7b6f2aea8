#if canImport(Glibc)
import Glibc
import CBallonetLinux
#endif

/// The systemd notification protocol (sd_notify(3)) without libsystemd: one datagram to the socket
/// named by $NOTIFY_SOCKET. What `Type=notify` units wait for before they count as started.
public enum Systemd {
    /// Sends `state` (e.g. "READY=1", "STOPPING=1", "STATUS=…") if the process runs under systemd with
    /// notification; returns false (and does nothing) when $NOTIFY_SOCKET is unset.
    @discardableResult
    public static func notify(_ state: String) throws(SystemCallError) -> Bool {
        guard let raw = getenv("NOTIFY_SOCKET"), case let path = String(cString: raw), !path.isEmpty else { return false }
        // An abstract socket ("@name") is a sun_path that starts with a NUL byte.
        var pathBytes = Array(path.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }
        guard pathBytes.count <= UnixSocket.maximumPathBytes else {
            throw SystemCallError("sendto", .ENAMETOOLONG, context: "NOTIFY_SOCKET \(path)")
        }
        let number = try systemCall("socket", "AF_UNIX datagram") {
            Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        let socket = FileDescriptor(adopting: number)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: pathBytes) }
        // For an abstract address the length counts exactly the name's bytes; for a path, the NUL too.
        let length = socklen_t(MemoryLayout.offset(of: \sockaddr_un.sun_path)! + pathBytes.count + (pathBytes[0] == 0 ? 0 : 1))
        let message = Array(state.utf8)
        let descriptor = socket.rawValue
        _ = try withUnsafePointer(to: &address) { (pointer) throws(SystemCallError) -> Int in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (generic) throws(SystemCallError) -> Int in
                try withBytes(of: message) { (bytes) throws(SystemCallError) -> Int in
                    try systemCall("sendto", "NOTIFY_SOCKET \(path)") {
                        Glibc.sendto(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), generic, length)
                    }
                }
            }
        }
        return true
    }
}

extension FileSystem {
    /// statfs(2)'s f_type of tmpfs (TMPFS_MAGIC in linux/magic.h).
    static let tmpfsMagic = 0x0102_1994

    /// Whether `path` lies on a tmpfs: where the balloon file must be, so that its pages are RAM that
    /// punching a hole gives back, and so that it outlives the agent.
    public static func isOnTmpfs(_ path: String) throws(SystemCallError) -> Bool {
        try systemCall("statfs", quoted(path)) { cballonet_filesystem_type(path) } == tmpfsMagic
    }
}

/// Linux capabilities (capabilities(7)) the agents check for, so that they can say what is missing
/// instead of failing with a bare EPERM.
public struct Capability: Hashable, Sendable, CustomStringConvertible {
    public let bit: Int
    public let name: String

    public static let sysAdmin = Capability(bit: 21, name: "CAP_SYS_ADMIN")
    public static let ipcLock = Capability(bit: 14, name: "CAP_IPC_LOCK")
    public static let sysResource = Capability(bit: 24, name: "CAP_SYS_RESOURCE")
    public static let sysNice = Capability(bit: 23, name: "CAP_SYS_NICE")
    public static let sysPtrace = Capability(bit: 19, name: "CAP_SYS_PTRACE")

    public var description: String { name }

    /// The effective set of the calling process (`CapEff` in /proc/self/status).
    public static func effective() throws -> Set<Int> {
        let status = try ProcFiles.status()
        guard let text = status.fields["CapEff"], let mask = UInt64(text.filter { $0 != " " && $0 != "\t" }, radix: 16) else {
            throw ProcParseError(file: "/proc/self/status", line: 0, what: "no CapEff line")
        }
        return Set((0..<64).filter { mask & (1 << UInt64($0)) != 0 })
    }
}
