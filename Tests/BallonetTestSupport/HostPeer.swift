import Foundation
import BallonetLinux
import BallonetWire

public struct TestTimeout: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// The host side of the protocol, written for tests and benchmarks: listens where the agent connects, speaks frames,
/// and lets the test decide what to answer (or not).
public final class TestHostPeer {
    public let path: String
    let listener: FileDescriptor
    public let sessionID = UInt64.random(in: 1...UInt64.max)
    public private(set) var connection: PeerConnection?

    public init(path: String) throws {
        self.path = path
        listener = try UnixSocket.listen(at: path, replacingStaleSocket: true)
    }

    deinit { try? FileSystem.removeFile(path) }

    /// Waits for the agent to connect.
    @discardableResult
    public func accept(timeout: Duration = .seconds(20)) throws -> PeerConnection {
        guard try !listener.poll(for: .readable, timeout: timeout).isEmpty else {
            throw TestTimeout(description: "the agent did not connect to \(path) within \(timeout)")
        }
        let accepted = PeerConnection(descriptor: try listener.accept(nonBlocking: true))
        connection = accepted
        return accepted
    }

    /// Accepts, waits for the agent's hello, answers with ours; returns the agent's hello.
    public func handshake(timeout: Duration = .seconds(20)) throws -> Hello {
        let connection = try accept(timeout: timeout)
        let envelope = try connection.next(timeout: timeout) { if case .hello = $0 { true } else { false } }
        guard case .hello(let hello) = envelope.message else { fatalError("unreachable") }
        try connection.send(.hello(Hello(role: .host, sessionID: sessionID, capabilities: [.reclaim], softwareVersion: "test-host")))
        return hello
    }
}

extension TestHostPeer {
    /// The host side of a TCG guest's port: QEMU listens on the chardev socket and the host connects.
    public static func connect(toQEMUPort path: String) throws -> PeerConnection {
        PeerConnection(descriptor: try UnixSocket.connect(to: path, nonBlocking: true))
    }
}

extension PeerConnection {
    /// Waits for the agent's hello and answers with a host hello of session `sessionID`.
    public func handshake(sessionID: UInt64, timeout: Duration = .seconds(60)) throws -> Hello {
        let envelope = try next(timeout: timeout) { if case .hello = $0 { true } else { false } }
        guard case .hello(let hello) = envelope.message else { fatalError("unreachable") }
        try send(.hello(Hello(role: .host, sessionID: sessionID, capabilities: [.reclaim], softwareVersion: "test-host")))
        return hello
    }
}

/// One accepted connection from the agent.
public final class PeerConnection {
    let descriptor: FileDescriptor
    var decoder = FrameDecoder()
    /// Frames received but not yet taken by `next`.
    public var pending: [Envelope] = []
    public var errors: [WireError] = []
    public var closed = false

    init(descriptor: consuming FileDescriptor) { self.descriptor = descriptor }

    public func send(_ message: Message, requestID: UInt32 = 0) throws {
        try descriptor.write(all: try FrameEncoder.encode(message, requestID: requestID))
    }

    public func sendRaw(_ bytes: [UInt8]) throws { try descriptor.write(all: bytes) }

    /// Reads whatever the agent sent within `timeout` (returns early once something arrived).
    public func pump(timeout: Duration) throws {
        guard !closed, try !descriptor.poll(for: .readable, timeout: timeout).isEmpty else { return }
        while true {
            guard let bytes = try readSome() else { return }
            if bytes.isEmpty {
                closed = true
                return
            }
            for event in decoder.feed(bytes) {
                switch event {
                case .frame(let envelope):
                    // A host answers pings, or the agent gives the session up as dead.
                    if case .ping(let ping) = envelope.message {
                        try send(.pong(Pong(nonce: ping.nonce)), requestID: envelope.requestID)
                    }
                    pending.append(envelope)
                case .error(let error): errors.append(error)
                }
            }
        }
    }

    /// What one read returns; nil when nothing is there yet (EAGAIN), empty at end of stream.
    private func readSome() throws -> [UInt8]? {
        do {
            return try descriptor.read(upTo: 65_536)
        } catch {
            if error.errno == .EAGAIN { return nil }
            throw error
        }
    }

    /// The next frame for which `matches` holds, skipping (and keeping in `skipped`) the others.
    public func next(timeout: Duration = .seconds(20), where matches: (Message) -> Bool) throws -> Envelope {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let index = pending.firstIndex(where: { matches($0.message) }) {
                let found = pending.remove(at: index)
                return found
            }
            let left = deadline - ContinuousClock.now
            guard left > .zero, !closed else {
                throw TestTimeout(description: "no matching frame within \(timeout); got \(pending.map(\.message.type)), "
                                  + "closed: \(closed), decode errors: \(errors), decoder: \(decoder.statistics)")
            }
            try pump(timeout: min(left, .milliseconds(200)))
        }
    }

    /// Collects frames for `duration`, returning all that arrived.
    public func collect(for duration: Duration) throws -> [Envelope] {
        let deadline = ContinuousClock.now + duration
        while ContinuousClock.now < deadline {
            try pump(timeout: deadline - ContinuousClock.now)
        }
        defer { pending.removeAll() }
        return pending
    }
}

