import BallonetLinux
import Foundation

/// Why a QMP exchange failed.
public struct QMPError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The bounds on what a QEMU monitor may send us. QEMU is trusted more than a guest, but a wrong socket
/// path (a guest's port, another program) must not make the host agent buffer without end.
public enum QMPLimits {
    /// One QMP reply is one line of JSON. The largest we ask for, `info mtree -f` of a guest with many
    /// devices, is tens of KiB; 8 MiB is a hundred times that and still harmless to hold.
    public static let maximumLineBytes = 8 << 20
    /// QEMU answers a command in microseconds; 10 s covers a host under heavy load. Longer means it is
    /// hung or not QEMU, and the VM is treated as unreachable.
    public static let replyTimeout: Duration = .seconds(10)
}

/// A QMP (QEMU Machine Protocol) client over a UNIX socket: the greeting, `qmp_capabilities`, then one
/// command at a time, each answered by one `return` or `error` line (events in between are skipped).
/// Blocking, with a deadline on every reply; used by the inventory and the RAM map, not on the hot path.
public final class QMPClient {
    public let path: String
    private let socket: SharedDescriptor
    private var buffer: [UInt8] = []


    /// Connects and negotiates capabilities.
    public init(path: String, timeout: Duration = QMPLimits.replyTimeout) throws {
        self.path = path
        do {
            socket = SharedDescriptor(try UnixSocket.connect(to: path, nonBlocking: true))
        } catch {
            throw QMPError("cannot connect to the QMP socket \(path): \(error)")
        }
        let greeting = try readObject(timeout: timeout)
        guard greeting["QMP"] != nil else { throw QMPError("\(path) is not a QMP socket: its greeting was \(greeting)") }
        _ = try execute("qmp_capabilities", timeout: timeout)
    }

    /// The process at the other end: QEMU's pid, from the socket's peer credentials (SO_PEERCRED), so an
    /// attached VM needs no pid from the operator.
    public func peerProcessID() throws -> Int32 {
        try socket.descriptor.peerCredentials().processID
    }

    /// Runs a command; returns its `return` value.
    @discardableResult
    public func execute(_ command: String, arguments: [String: Any]? = nil,
                        timeout: Duration = QMPLimits.replyTimeout) throws -> Any {
        var request: [String: Any] = ["execute": command]
        if let arguments { request["arguments"] = arguments }
        var line = try JSONSerialization.data(withJSONObject: request)
        line.append(UInt8(ascii: "\n"))
        do {
            try socket.descriptor.send(all: [UInt8](line))
        } catch {
            throw QMPError("QMP \(command) on \(path): \(error)")
        }
        let deadline = MonotonicInstant.now().advanced(by: timeout)
        while true {
            let left = deadline - MonotonicInstant.now()
            let object = try readObject(timeout: max(left, .zero))
            if let value = object["return"] { return value }
            if let error = object["error"] as? [String: Any] {
                throw QMPError("QMP \(command) failed: \(error["class"] ?? "?"): \(error["desc"] ?? "?")")
            }
            // An asynchronous event ({"event": ...}); not ours to handle here.
        }
    }

    /// `human-monitor-command`: the text of an HMP command (`info mtree -f`, `gpa2hva`).
    public func humanMonitor(_ commandLine: String) throws -> String {
        let value = try execute("human-monitor-command", arguments: ["command-line": commandLine])
        guard let text = value as? String else { throw QMPError("HMP \(commandLine) returned \(value), not text") }
        return text
    }

    private func readObject(timeout: Duration) throws -> [String: Any] {
        let deadline = MonotonicInstant.now().advanced(by: timeout)
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Data(buffer[..<newline])
                buffer.removeSubrange(...newline)
                guard let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] else {
                    throw QMPError("\(path) sent a line that is not a JSON object: \(String(decoding: line.prefix(200), as: UTF8.self))")
                }
                return object
            }
            guard buffer.count <= QMPLimits.maximumLineBytes else {
                throw QMPError("\(path) sent a line longer than \(QMPLimits.maximumLineBytes) bytes")
            }
            let left = deadline - MonotonicInstant.now()
            guard left > .zero, try !socket.descriptor.poll(for: .readable, timeout: left).isEmpty else {
                throw QMPError("no answer from QEMU on \(path) within \(timeout)")
            }
            let bytes: [UInt8]
            do {
                bytes = try socket.descriptor.receive(upTo: 65_536)
            } catch {
                if error.errno == .EAGAIN { continue }
                throw QMPError("reading \(path): \(error)")
            }
            if bytes.isEmpty { throw QMPError("QEMU closed the QMP socket \(path)") }
            buffer.append(contentsOf: bytes)
        }
    }
}
