import Foundation
import BallonetLinux
import BallonetWire
import BallonetTestSupport

struct TestTimeout: Error, CustomStringConvertible {
    let description: String
}

/// The host side of the protocol, written in the test: listens where the agent connects, speaks frames,
/// and lets the test decide what to answer (or not).
final class TestHostPeer {
    let path: String
    let listener: FileDescriptor
    let sessionID = UInt64.random(in: 1...UInt64.max)
    private(set) var connection: PeerConnection?

    init(path: String) throws {
        self.path = path
        listener = try UnixSocket.listen(at: path, replacingStaleSocket: true)
    }

    deinit { try? FileSystem.removeFile(path) }

    /// Waits for the agent to connect.
    @discardableResult
    func accept(timeout: Duration = .seconds(20)) throws -> PeerConnection {
        guard try !listener.poll(for: .readable, timeout: timeout).isEmpty else {
            throw TestTimeout(description: "the agent did not connect to \(path) within \(timeout)")
        }
        let accepted = PeerConnection(descriptor: try listener.accept(nonBlocking: true))
        connection = accepted
        return accepted
    }

    /// Accepts, waits for the agent's hello, answers with ours; returns the agent's hello.
    func handshake(timeout: Duration = .seconds(20)) throws -> Hello {
        let connection = try accept(timeout: timeout)
        let envelope = try connection.next(timeout: timeout) { if case .hello = $0 { true } else { false } }
        guard case .hello(let hello) = envelope.message else { fatalError("unreachable") }
        try connection.send(.hello(Hello(role: .host, sessionID: sessionID, capabilities: [.reclaim], softwareVersion: "test-host")))
        return hello
    }
}

extension TestHostPeer {
    /// The host side of a TCG guest's port: QEMU listens on the chardev socket and the host connects.
    static func connect(toQEMUPort path: String) throws -> PeerConnection {
        PeerConnection(descriptor: try UnixSocket.connect(to: path, nonBlocking: true))
    }
}

extension PeerConnection {
    /// Waits for the agent's hello and answers with a host hello of session `sessionID`.
    func handshake(sessionID: UInt64, timeout: Duration = .seconds(60)) throws -> Hello {
        let envelope = try next(timeout: timeout) { if case .hello = $0 { true } else { false } }
        guard case .hello(let hello) = envelope.message else { fatalError("unreachable") }
        try send(.hello(Hello(role: .host, sessionID: sessionID, capabilities: [.reclaim], softwareVersion: "test-host")))
        return hello
    }
}

/// One accepted connection from the agent.
final class PeerConnection {
    let descriptor: FileDescriptor
    var decoder = FrameDecoder()
    /// Frames received but not yet taken by `next`.
    var pending: [Envelope] = []
    var errors: [WireError] = []
    var closed = false

    init(descriptor: consuming FileDescriptor) { self.descriptor = descriptor }

    func send(_ message: Message, requestID: UInt32 = 0) throws {
        try descriptor.write(all: try FrameEncoder.encode(message, requestID: requestID))
    }

    func sendRaw(_ bytes: [UInt8]) throws { try descriptor.write(all: bytes) }

    /// Reads whatever the agent sent within `timeout` (returns early once something arrived).
    func pump(timeout: Duration) throws {
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
    func next(timeout: Duration = .seconds(20), where matches: (Message) -> Bool) throws -> Envelope {
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
    func collect(for duration: Duration) throws -> [Envelope] {
        let deadline = ContinuousClock.now + duration
        while ContinuousClock.now < deadline {
            try pump(timeout: deadline - ContinuousClock.now)
        }
        defer { pending.removeAll() }
        return pending
    }
}

/// The agent binary, run as a child process with its log kept for the test's failure messages.
final class GuestAgentProcess {
    let process = Process()
    let logPath: String

    init(arguments: [String], logPath: String) throws {
        self.logPath = logPath
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = try BuiltCommand.path("ballonet-guest")
        process.arguments = arguments
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func kill(_ signal: BallonetLinux.Signal) { try? ProcessControl.send(signal, to: pid) }

    /// Waits for the process to exit; its exit status, or nil on timeout.
    func waitForExit(timeout: Duration) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.05) }
        return process.isRunning ? nil : process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(.kill)
            process.waitUntilExit()
        }
    }
}
