import BallonetLinux
import BallonetWire

/// Where the host is: the virtio-serial port inside a VM, or a UNIX socket (tests, and running the agent
/// outside a VM).
public enum HostPortAddress: Equatable, Sendable, CustomStringConvertible {
    case virtioPort(String)
    case unixSocket(String)

    public var description: String {
        switch self {
        case .virtioPort(let path): "virtio-serial port \(path)"
        case .unixSocket(let path): "UNIX socket \(path)"
        }
    }
}

/// The host went away, or never came: the daemon closes the port and tries again later.
public struct HostPortClosed: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// An open connection to the host: non-blocking reads into the frame decoder, writes that wait a bounded
/// time for the host to read. The port is a byte stream that can break at any time.
public final class HostPort {
    /// Bytes read per read call: a few frames of the largest kind.
    static let readChunkBytes = 64 * 1024
    /// How long a write may wait for the host to take bytes before the connection counts as dead. A host
    /// that does not read for this long is hung or gone; waiting longer would stall the pressure guard.
    static let writeStallLimit: Duration = .seconds(5)

    public let address: HostPortAddress
    let descriptor: FileDescriptor
    private var buffer: [UInt8]

    public init(_ address: HostPortAddress) throws {
        self.address = address
        switch address {
        case .virtioPort(let path):
            descriptor = try FileDescriptor.open(path, .readWrite, options: [.nonBlocking])
        case .unixSocket(let path):
            descriptor = try UnixSocket.connect(to: path, nonBlocking: true)
        }
        buffer = [UInt8](repeating: 0, count: Self.readChunkBytes)
    }

    public var rawDescriptor: Int32 { descriptor.rawValue }

    /// Reads what is there (nothing if nothing is); throws `HostPortClosed` at end of stream.
    public func readAvailable(into decoder: inout FrameDecoder, _ handle: (DecodeEvent) -> Void) throws {
        while true {
            let count: Int
            do {
                count = try buffer.withUnsafeMutableBytes { try descriptor.read(into: $0) }
            } catch let error as SystemCallError where error.errno == .EAGAIN {
                return
            }
            guard count > 0 else { throw HostPortClosed(description: "the host closed \(address)") }
            buffer.withUnsafeBytes { decoder.feed(UnsafeRawBufferPointer(rebasing: $0[0..<count]), handle) }
            if count < buffer.count { return }
        }
    }

    /// Writes all of `bytes`, waiting for the host to read when the port is full.
    public func write(_ bytes: [UInt8]) throws {
        var offset = 0
        let deadline = MonotonicInstant.now().advanced(by: Self.writeStallLimit)
        while offset < bytes.count {
            do {
                offset += try bytes.withUnsafeBytes { try descriptor.write(UnsafeRawBufferPointer(rebasing: $0[offset...])) }
            } catch let error as SystemCallError where error.errno == .EAGAIN {
                let left = deadline - MonotonicInstant.now()
                guard left > .zero, try !descriptor.poll(for: .writable, timeout: left).isEmpty else {
                    throw HostPortClosed(description: "the host has not read \(address) for \(Self.writeStallLimit)")
                }
            } catch let error as SystemCallError where error.errno == .EPIPE || error.errno == .ECONNRESET {
                throw HostPortClosed(description: "the host closed \(address)")
            }
        }
    }
}
