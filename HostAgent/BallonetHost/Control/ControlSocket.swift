import BallonetLinux
import BallonetPolicy
import Foundation
import Logging

/// A request on the control socket: one line of JSON.
public struct ControlRequest: Codable, Sendable {
    public var command: String
    public var vm: String?
    public var mib: UInt64?
    /// `set`: the VM's new shares, min and max (MiB); nil leaves one as it is.
    public var shares: UInt64?
    public var minMiB: UInt64?
    public var maxMiB: UInt64?

    public init(command: String, vm: String? = nil, mib: UInt64? = nil, shares: UInt64? = nil, minMiB: UInt64? = nil,
                maxMiB: UInt64? = nil) {
        self.command = command
        self.vm = vm
        self.mib = mib
        self.shares = shares
        self.minMiB = minMiB
        self.maxMiB = maxMiB
    }
}

/// The answer: one line of JSON, then the server closes the connection.
public struct ControlResponse: Codable, Sendable {
    public var ok: Bool
    public var error: String?
    public var status: HostStatus?
    /// `explain`: the policy's numbers behind the VM's target.
    public var explanation: MemoryPolicy.Explanation?
    /// `admit`: admission control's sentence, whichever way it went.
    public var message: String?

    public init(ok: Bool, error: String? = nil, status: HostStatus? = nil) {
        self.ok = ok
        self.error = error
        self.status = status
    }
}

public enum ControlLimits {
    /// A request is a command and two arguments: 4 KiB is ample, and a client cannot make the daemon buffer more.
    public static let maximumRequestBytes = 4096
    /// A client gets this long to send its request: the loop serves VMs meanwhile, so it must be short.
    public static let requestTimeout: Duration = .milliseconds(500)
}

/// The daemon's end of the control socket. Who may use it: root, the daemon's own user, and members of
/// the group `ballonet` where that group exists (the socket is then mode 0660, group ballonet; else 0600).
/// Each client's credentials are checked again on accept (SO_PEERCRED and its supplementary groups), so
/// a socket whose mode an operator loosened does not let anyone else in.
final class ControlServer {
    /// The group whose members may use the control socket besides root.
    static let groupName = "ballonet"

    let path: String
    private let listener: SharedDescriptor
    let logger: Logger
    /// `ballonet`'s gid, when the group exists.
    let allowedGroup: UInt32?


    var descriptor: Int32 { listener.descriptor.rawValue }

    init(path: String, logger: Logger) throws {
        self.path = path
        self.logger = logger
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !directory.isEmpty { try FileSystem.makeDirectory(directory, permissions: 0o755, orExisting: true) }
        listener = SharedDescriptor(try UnixSocket.listen(at: path, replacingStaleSocket: true))
        var group = ProcessControl.groupID(named: Self.groupName)
        if let gid = group {
            do {
                try FileSystem.setGroup(path, gid)
            } catch {
                // A daemon not running as root, and not in the group, cannot hand the socket to it.
                logger.warning("control socket stays owner-only: cannot give it to group \(Self.groupName): \(error)")
                group = nil
            }
        }
        allowedGroup = group
        try FileSystem.setPermissions(path, group == nil ? 0o600 : 0o660)
    }

    /// Whether the peer may use the socket: root, our own user, or a member of `ballonet`.
    func permits(_ credentials: PeerCredentials) -> Bool {
        if credentials.userID == 0 || credentials.userID == ProcessControl.currentUserID { return true }
        guard let group = allowedGroup else { return false }
        if credentials.groupID == group { return true }
        // Supplementary groups are not in SO_PEERCRED; /proc/<pid>/status lists them ("Groups:").
        guard let status = try? ProcFiles.status(of: .id(credentials.processID)),
              let groups = status.fields["Groups"] else { return false }
        return groups.split(whereSeparator: { $0 == " " || $0 == "\t" }).contains { UInt32($0) == group }
    }

    deinit { try? FileSystem.removeFile(path) }

    private var acceptFailures = AcceptFailures()

    /// Accepts one client, reads its request, answers, closes.
    func serveOne(_ handle: (ControlRequest) -> ControlResponse) {
        let connection: FileDescriptor
        do {
            connection = try listener.descriptor.accept(nonBlocking: false)
        } catch {
            acceptFailures.record(error, logger: logger, what: "control socket")
            return
        }
        let response: ControlResponse
        do {
            let credentials = try connection.peerCredentials()
            guard permits(credentials) else {
                throw ControlError("permission denied: the control socket answers root and members of group \(Self.groupName) only (uid \(credentials.userID) asked)")
            }
            var buffer: [UInt8] = []
            // One deadline for the whole request: a client sending a byte at a time cannot hold the loop
            // longer than one timeout.
            let deadline = MonotonicInstant.now().advanced(by: ControlLimits.requestTimeout)
            while !buffer.contains(UInt8(ascii: "\n")) {
                guard buffer.count <= ControlLimits.maximumRequestBytes else { throw ControlError("request longer than \(ControlLimits.maximumRequestBytes) bytes") }
                let left = deadline - MonotonicInstant.now()
                guard left > .zero, try !connection.poll(for: .readable, timeout: left).isEmpty else {
                    throw ControlError("no request within \(ControlLimits.requestTimeout)")
                }
                let bytes = try connection.receive(upTo: ControlLimits.maximumRequestBytes)
                if bytes.isEmpty { break }
                buffer += bytes
            }
            let request = try JSONDecoder().decode(ControlRequest.self, from: Data(buffer))
            response = handle(request)
        } catch let error as ControlError {
            response = ControlResponse(ok: false, error: error.description)
        } catch {
            response = ControlResponse(ok: false, error: "bad request: \(error)")
        }
        if let data = try? JSONEncoder().encode(response) {
            try? connection.send(all: [UInt8](data) + [UInt8(ascii: "\n")])
        }
    }
}

public struct ControlError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The client side, for `ballonetctl` and tests.
public enum ControlClient {
    public static func request(_ request: ControlRequest, socket path: String, timeout: Duration = .seconds(10)) throws -> ControlResponse {
        let connection: FileDescriptor
        do {
            connection = try UnixSocket.connect(to: path)
        } catch {
            if error.errno == .ENOENT || error.errno == .ECONNREFUSED {
                throw ControlError("ballonet-host is not running (no control socket at \(path)); start it with `ballonet-host run`")
            }
            if error.errno == .EACCES {
                throw ControlError("permission denied on \(path): ballonetctl needs root, or membership in group ballonet (`adduser USER ballonet`, then log in again)")
            }
            throw ControlError("cannot connect to \(path): \(error)")
        }
        try connection.send(all: [UInt8](try JSONEncoder().encode(request)) + [UInt8(ascii: "\n")])
        var buffer: [UInt8] = []
        let deadline = MonotonicInstant.now().advanced(by: timeout)
        while true {
            let left = deadline - MonotonicInstant.now()
            guard left > .zero, try !connection.poll(for: .readable, timeout: left).isEmpty else {
                throw ControlError("ballonet-host did not answer within \(timeout)")
            }
            let bytes = try connection.receive(upTo: 1 << 20)
            if bytes.isEmpty { break }
            buffer += bytes
        }
        guard !buffer.isEmpty else { throw ControlError("ballonet-host closed the connection without an answer") }
        return try JSONDecoder().decode(ControlResponse.self, from: Data(buffer))
    }
}

/// What a listener does when accept fails. Out of descriptors (EMFILE, ENFILE) the client stays queued, so
/// poll says "readable" again at once: without a pause the loop would spin at full CPU and log without end.
/// So: a warning at most every `warningIntervalMillis`, and a pause of `pauseMillis` before the loop goes on.
struct AcceptFailures {
    /// 10 s: an operator sees the problem in the journal without one line per client.
    static let warningIntervalMillis: UInt64 = 10_000
    /// 100 ms: the engine's own tick, so VMs are served as often as usual while descriptors are short.
    static let pauseMillis: Int64 = 100
    private var lastWarningMillis: UInt64?

    /// What `record` did: whether it logged, and whether it paused the caller.
    struct Outcome: Equatable {
        var warned: Bool
        var paused: Bool
    }

    @discardableResult
    mutating func record(_ error: SystemCallError, logger: Logger, what: String, nowMillis: UInt64 = HostEngine.nowMillis(),
                         pause: Bool = true) -> Outcome {
        // The client went away between poll and accept: nothing to say.
        guard error.errno != .EAGAIN, error.errno != .ECONNABORTED else { return Outcome(warned: false, paused: false) }
        var outcome = Outcome(warned: false, paused: false)
        let outOfDescriptors = error.errno == .EMFILE || error.errno == .ENFILE
        if lastWarningMillis.map({ nowMillis >= $0 + Self.warningIntervalMillis }) ?? true {
            lastWarningMillis = nowMillis
            outcome.warned = true
            logger.warning("\(what): cannot accept a connection: \(error)\(outOfDescriptors ? " (out of file descriptors: raise LimitNOFILE or find what holds them)" : "")")
        }
        if outOfDescriptors {
            outcome.paused = true
            if pause { MonotonicClock.sleep(for: .milliseconds(Self.pauseMillis)) }
        }
        return outcome
    }
}
