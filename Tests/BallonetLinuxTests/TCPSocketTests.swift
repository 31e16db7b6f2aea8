import BallonetLinux
import Testing

extension LinuxLayerTests {
    @Suite struct TCPSockets {
        /// O_CLOEXEC (02000000) and O_NONBLOCK (04000) in /proc/self/fdinfo/N's octal flags.
        static func openFlags(_ descriptor: borrowing FileDescriptor) throws -> UInt64 {
            let info = String(decoding: try FileSystem.readFile("/proc/self/fdinfo/\(descriptor.rawValue)", maxBytes: ProcFileLimits.statusBytes), as: UTF8.self)
            let flagsLine = try #require(info.split(separator: "\n").first { $0.hasPrefix("flags:") })
            return try #require(UInt64(flagsLine.dropFirst("flags:".count).trimmingPrefix { $0 == " " || $0 == "\t" }, radix: 8))
        }

        @Test func listenOnPortZeroLearnThePortConnectAndTalk() throws {
            let listener = try TCPSocket.listen(address: "127.0.0.1", port: 0)
            let port = try TCPSocket.boundPort(of: listener)
            #expect(port != 0, "the kernel picks a port for port 0")
            #expect(try Self.openFlags(listener) & 0o2000000 != 0, "close-on-exec")
            #expect(try listener.poll(for: .readable, timeout: .zero).isEmpty, "nobody has connected yet")

            let client = try TCPSocket.connect(address: "127.0.0.1", port: port)
            #expect(try Self.openFlags(client) & 0o2000000 != 0, "close-on-exec")
            #expect(try listener.poll(for: .readable, timeout: .seconds(1)).contains(.readable))
            let server = try listener.accept()
            #expect(try TCPSocket.boundPort(of: server) == port, "an accepted connection has the listener's local port")

            try client.send(all: Array(text: "GET /metrics HTTP/1.1\r\n\r\n"))
            #expect(try server.poll(for: .readable, timeout: .seconds(1)).contains(.readable))
            #expect(try server.receive(upTo: 100) == Array(text: "GET /metrics HTTP/1.1\r\n\r\n"))
            try server.send(all: Array(text: "HTTP/1.1 200 OK\r\n"))
            try server.shutdown(.writing)
            #expect(try client.receive(upTo: 100) == Array(text: "HTTP/1.1 200 OK\r\n"))
            #expect(try client.receive(upTo: 100).isEmpty, "end of stream after the server shut down writing")
        }

        @Test func nonBlockingListenerSaysEAGAINWhenNobodyWaits() throws {
            let listener = try TCPSocket.listen(address: "127.0.0.1", port: 0, nonBlocking: true)
            #expect(try Self.openFlags(listener) & 0o4000 != 0, "O_NONBLOCK")
            #expect(expectSystemCallError { _ = try listener.accept(nonBlocking: true) }?.errno == .EAGAIN)
        }

        @Test func aLiveListenersPortIsNotTakenTwice() throws {
            let listener = try TCPSocket.listen(address: "127.0.0.1", port: 0)
            let port = try TCPSocket.boundPort(of: listener)
            let error = expectSystemCallError { _ = try TCPSocket.listen(address: "127.0.0.1", port: port) }
            #expect(error?.errno == .EADDRINUSE)
            #expect(error?.systemCall == "bind")
        }

        @Test func connectingToAClosedPortIsRefused() throws {
            let listener = try TCPSocket.listen(address: "127.0.0.1", port: 0)
            let port = try TCPSocket.boundPort(of: listener)
            try listener.close()
            #expect(expectSystemCallError { _ = try TCPSocket.connect(address: "127.0.0.1", port: port) }?.errno == .ECONNREFUSED)
        }

        @Test(arguments: ["localhost", "::1", "127.1", "127.0.0.256", "1.2.3.4.5", "", " 127.0.0.1"])
        func onlyDottedQuadsAreAddresses(_ address: String) throws {
            let error = expectSystemCallError { _ = try TCPSocket.listen(address: address, port: 0) }
            #expect(error?.errno == .EINVAL)
            #expect(error?.description.contains("not an IPv4 address") == true)
            #expect(expectSystemCallError { _ = try TCPSocket.connect(address: address, port: 1) }?.errno == .EINVAL)
        }

        @Test func anAddressWithANULIsNotCutShort() {
            // C would read "127.0.0.1" and ignore the rest.
            #expect(expectSystemCallError { _ = try TCPSocket.listen(address: "127.0.0.1\0evil", port: 0) }?.errno == .EINVAL)
        }

        @Test func boundPortOfANonIPv4SocketIsAnError() throws {
            let pair = try UnixSocket.pair()
            #expect(expectSystemCallError { _ = try TCPSocket.boundPort(of: pair.first) }?.errno == .EINVAL)
        }
    }
}
