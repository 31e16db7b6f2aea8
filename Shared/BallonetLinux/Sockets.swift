#if canImport(Glibc)
import Glibc
import CBallonetLinux
#endif

/// UNIX stream sockets: QEMU's chardev and QMP sockets, and the host daemon's control socket.
public enum UnixSocket {
    /// Longest path a socket address holds: sun_path is 108 bytes and the kernel wants room for a NUL.
    /// Longer paths fail with ENAMETOOLONG before any call is made.
    public static let maximumPathBytes = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    /// Connects to the socket listening at `path`.
    public static func connect(to path: String, nonBlocking: Bool = false) throws(SystemCallError) -> FileDescriptor {
        let socket = try makeSocket(nonBlocking: nonBlocking, context: quoted(path))
        try connect(socket, to: path)
        return socket
    }

    /// Binds a socket to `path` and listens on it.
    ///
    /// With `replacingStaleSocket`, a socket file left at `path` by a process that is gone is removed
    /// first. It counts as stale only if it is a socket and connecting to it is refused; a live listener,
    /// or a file that is not a socket, is left alone and binding fails with EADDRINUSE.
    public static func listen(
        at path: String,
        backlog: Int32 = 16,
        replacingStaleSocket: Bool,
        nonBlocking: Bool = false
    ) throws(SystemCallError) -> FileDescriptor {
        if replacingStaleSocket {
            try removeIfStale(path)
        }
        let socket = try makeSocket(nonBlocking: nonBlocking, context: quoted(path))
        let number = socket.rawValue
        _ = try withAddress(of: path, call: "bind") { (address, length) throws(SystemCallError) in
            try systemCall("bind", quoted(path)) { Glibc.bind(number, address, length) }
        }
        _ = try systemCall("listen", quoted(path)) { Glibc.listen(number, backlog) }
        return socket
    }

    /// Two connected sockets (socketpair(2)), for talking to oneself or to a child.
    public static func pair() throws(SystemCallError) -> SocketPair {
        var numbers: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        _ = try systemCall("socketpair") { Glibc.socketpair(AF_UNIX, type, 0, &numbers) }
        return SocketPair(first: FileDescriptor(adopting: numbers[0]), second: FileDescriptor(adopting: numbers[1]))
    }

    private static func makeSocket(nonBlocking: Bool, context: String) throws(SystemCallError) -> FileDescriptor {
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking {
            type |= Int32(SOCK_NONBLOCK.rawValue)
        }
        let number = try systemCall("socket", context) { Glibc.socket(AF_UNIX, type, 0) }
        return FileDescriptor(adopting: number)
    }

    private static func connect(_ socket: borrowing FileDescriptor, to path: String) throws(SystemCallError) {
        let number = socket.rawValue
        // A UNIX socket connect that is interrupted leaves the socket unconnected, so repeating it is safe.
        _ = try withAddress(of: path, call: "connect") { (address, length) throws(SystemCallError) in
            try systemCall("connect", quoted(path)) { Glibc.connect(number, address, length) }
        }
    }

    private static func removeIfStale(_ path: String) throws(SystemCallError) {
        guard let status = try? FileSystem.status(ofPath: path, followingSymbolicLinks: false),
              status.kind == .socket
        else { return }
        let probe = try makeSocket(nonBlocking: false, context: quoted(path))
        do throws(SystemCallError) {
            try connect(probe, to: path)
        } catch where error.errno == .ECONNREFUSED {
            try FileSystem.removeFile(path)
            return
        }
        throw SystemCallError("bind", .EADDRINUSE, context: "\(quoted(path)), a process is listening on it")
    }

    /// Builds a sockaddr_un for `path`, refusing paths that do not fit (the kernel would silently use a
    /// truncated path, or the copy would overrun).
    static func withAddress<Result>(
        of path: String,
        call: String,
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemCallError) -> Result
    ) throws(SystemCallError) -> Result {
        let bytes = Array(path.utf8)
        guard bytes.count <= maximumPathBytes else {
            throw SystemCallError(call, .ENAMETOOLONG, context: "\(quoted(path)), \(bytes.count) bytes, at most \(maximumPathBytes) fit")
        }
        guard !bytes.isEmpty, !bytes.contains(0) else {
            throw SystemCallError(call, .EINVAL, context: "\(quoted(path)), not a usable socket path")
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.size)
        return try withUnsafePointer(to: &address) { (pointer) throws(SystemCallError) -> Result in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (generic) throws(SystemCallError) -> Result in
                try body(generic, length)
            }
        }
    }
}

/// Two connected sockets; take them apart with `let a = pair.first, b = pair.second`.
// @frozen lets other modules take the two descriptors out one by one: Swift allows partial consumption
// of a noncopyable struct from another module only when its layout is frozen.
@frozen
public struct SocketPair: ~Copyable, Sendable {
    public var first: FileDescriptor
    public var second: FileDescriptor
}

/// The process at the other end of a UNIX socket, as the kernel recorded it at connect time.
public struct PeerCredentials: Hashable, Sendable {
    public let processID: Int32
    public let userID: UInt32
    public let groupID: UInt32
}

extension FileDescriptor {
    /// accept(2) (as accept4 with SOCK_CLOEXEC): the next connection on a listening socket.
    public func accept(nonBlocking: Bool = false) throws(SystemCallError) -> FileDescriptor {
        let number = rawValue
        var flags = Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking {
            flags |= Int32(SOCK_NONBLOCK.rawValue)
        }
        let connection = try systemCall("accept4", "fd \(number)") {
            cballonet_accept4(number, nil, nil, flags)
        }
        return FileDescriptor(adopting: connection)
    }

    /// One send(2) with MSG_NOSIGNAL (a closed peer gives EPIPE, not SIGPIPE): the bytes sent.
    public func send(_ buffer: UnsafeRawBufferPointer) throws(SystemCallError) -> Int {
        let number = rawValue
        return try systemCall("send", "fd \(number)") {
            Glibc.send(number, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL))
        }
    }

    /// Sends all of `bytes`, repeating after short sends.
    public func send(all bytes: [UInt8]) throws(SystemCallError) {
        try withBytes(of: bytes) { (buffer) throws(SystemCallError) in
            var done = 0
            while done < buffer.count {
                done += try send(UnsafeRawBufferPointer(rebasing: buffer[done...]))
            }
        }
    }

    /// One recv(2): the bytes received, 0 when the peer has closed its end.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
        let number = rawValue
        return try systemCall("recv", "fd \(number)") {
            Glibc.recv(number, buffer.baseAddress, buffer.count, 0)
        }
    }

    /// One recv(2) of at most `count` bytes; empty when the peer has closed its end.
    public func receive(upTo count: Int) throws(SystemCallError) -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: max(count, 0)) { (buffer, initialized) throws(SystemCallError) in
            initialized = try receive(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// Which direction `shutdown` closes.
    public enum ShutdownDirection: Sendable {
        case reading, writing, both
    }

    /// shutdown(2): the peer reads end of file after `.writing`.
    public func shutdown(_ direction: ShutdownDirection) throws(SystemCallError) {
        let number = rawValue
        let how: Int32 = switch direction {
        case .reading: Int32(SHUT_RD)
        case .writing: Int32(SHUT_WR)
        case .both: Int32(SHUT_RDWR)
        }
        _ = try systemCall("shutdown", "fd \(number)") { Glibc.shutdown(number, how) }
    }

    /// getsockopt(SO_PEERCRED): who is at the other end of a UNIX socket, for the control socket to
    /// decide whom to obey.
    public func peerCredentials() throws(SystemCallError) -> PeerCredentials {
        let number = rawValue
        // struct ucred is behind _GNU_SOURCE; its layout is pid, uid, gid as 32-bit integers.
        var credentials: (Int32, UInt32, UInt32) = (0, 0, 0)
        var length = socklen_t(MemoryLayout.size(ofValue: credentials))
        _ = try systemCall("getsockopt(SO_PEERCRED)", "fd \(number)") {
            Glibc.getsockopt(number, SOL_SOCKET, SO_PEERCRED, &credentials, &length)
        }
        return PeerCredentials(processID: credentials.0, userID: credentials.1, groupID: credentials.2)
    }
}

/// TCP over IPv4: the host daemon's metrics endpoint (on loopback), and its clients in tests.
///
/// Addresses are dotted quads ("127.0.0.1"), parsed by inet_pton: no name lookup, which would block the
/// caller on DNS and make the address a listener ends up on depend on the resolver.
public enum TCPSocket {
    /// Binds a socket to `address`:`port` (port 0: the kernel picks a free one, see `boundPort(of:)`) and
    /// listens on it. SO_REUSEADDR is set, so a restarted daemon can bind again while connections of its
    /// previous run sit in TIME_WAIT; it does not let two live listeners share the port.
    public static func listen(
        address: String,
        port: UInt16,
        backlog: Int32 = 16,
        nonBlocking: Bool = false
    ) throws(SystemCallError) -> FileDescriptor {
        let context = endpoint(address, port)
        let socket = try makeSocket(nonBlocking: nonBlocking, context: context)
        let number = socket.rawValue
        var one: Int32 = 1
        _ = try systemCall("setsockopt(SO_REUSEADDR)", context) {
            Glibc.setsockopt(number, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        _ = try withAddress(address, port: port, call: "bind") { (pointer, length) throws(SystemCallError) in
            try systemCall("bind", context) { Glibc.bind(number, pointer, length) }
        }
        _ = try systemCall("listen", context) { Glibc.listen(number, backlog) }
        return socket
    }

    /// Connects to `address`:`port`, waiting until the connection is made or refused.
    public static func connect(address: String, port: UInt16) throws(SystemCallError) -> FileDescriptor {
        let context = endpoint(address, port)
        let socket = try makeSocket(nonBlocking: false, context: context)
        let number = socket.rawValue
        let failure = try withAddress(address, port: port, call: "connect") { (pointer, length) throws(SystemCallError) -> Errno? in
            Glibc.connect(number, pointer, length) == -1 ? Errno.current : nil
        }
        guard let failure else { return socket }
        // An interrupted TCP connect goes on in the background: calling connect again would fail with
        // EALREADY, so wait for the socket to become writable and ask it how the connect ended.
        guard failure == .EINTR else { throw SystemCallError("connect", failure, context: context) }
        _ = try socket.poll(for: .writable, timeout: nil)
        var pending: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try systemCall("getsockopt(SO_ERROR)", context) {
            Glibc.getsockopt(number, SOL_SOCKET, SO_ERROR, &pending, &length)
        }
        if pending != 0 { throw SystemCallError("connect", Errno(rawValue: pending), context: context) }
        return socket
    }

    /// getsockname(2): the port a TCP socket is bound to, for a listener bound to port 0.
    public static func boundPort(of socket: borrowing FileDescriptor) throws(SystemCallError) -> UInt16 {
        let number = socket.rawValue
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = try withUnsafeMutablePointer(to: &address) { (pointer) throws(SystemCallError) -> Int32 in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (generic) throws(SystemCallError) -> Int32 in
                try systemCall("getsockname", "fd \(number)") { Glibc.getsockname(number, generic, &length) }
            }
        }
        guard address.sin_family == sa_family_t(AF_INET) else {
            throw SystemCallError("getsockname", .EINVAL, context: "fd \(number), not an IPv4 socket")
        }
        return UInt16(bigEndian: address.sin_port)
    }

    private static func makeSocket(nonBlocking: Bool, context: String) throws(SystemCallError) -> FileDescriptor {
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking {
            type |= Int32(SOCK_NONBLOCK.rawValue)
        }
        let number = try systemCall("socket", context) { Glibc.socket(AF_INET, type, 0) }
        return FileDescriptor(adopting: number)
    }

    /// "127.0.0.1:9848", as error messages name an endpoint.
    private static func endpoint(_ address: String, _ port: UInt16) -> String {
        "\(quoted(address)), port \(port)"
    }

    /// Builds a sockaddr_in, refusing anything inet_pton does not read as a dotted quad (host names,
    /// IPv6, "127.1").
    static func withAddress<Result>(
        _ address: String,
        port: UInt16,
        call: String,
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(SystemCallError) -> Result
    ) throws(SystemCallError) -> Result {
        var socketAddress = sockaddr_in()
        socketAddress.sin_family = sa_family_t(AF_INET)
        socketAddress.sin_port = port.bigEndian
        let parsed = address.utf8.contains(0) ? 0 : Glibc.inet_pton(AF_INET, address, &socketAddress.sin_addr)
        guard parsed == 1 else {
            throw SystemCallError(call, .EINVAL, context: "\(quoted(address)), not an IPv4 address (a.b.c.d)")
        }
        let length = socklen_t(MemoryLayout<sockaddr_in>.size)
        return try withUnsafePointer(to: &socketAddress) { (pointer) throws(SystemCallError) -> Result in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (generic) throws(SystemCallError) -> Result in
                try body(generic, length)
            }
        }
    }
}
