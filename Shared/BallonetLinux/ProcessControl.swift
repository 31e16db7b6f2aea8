#if canImport(Glibc)
import Glibc
import CBallonetLinux
#endif

/// A signal number.
public struct Signal: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Signal 0: delivers nothing, only checks that the process exists and may be signalled.
    public static let existenceCheck = Signal(rawValue: 0)
    public static let hangUp = Signal(rawValue: SIGHUP)
    public static let interrupt = Signal(rawValue: SIGINT)
    public static let quit = Signal(rawValue: SIGQUIT)
    public static let kill = Signal(rawValue: SIGKILL)
    public static let user1 = Signal(rawValue: SIGUSR1)
    public static let user2 = Signal(rawValue: SIGUSR2)
    public static let brokenPipe = Signal(rawValue: SIGPIPE)
    public static let alarm = Signal(rawValue: SIGALRM)
    public static let terminate = Signal(rawValue: SIGTERM)
    public static let child = Signal(rawValue: SIGCHLD)
    public static let `continue` = Signal(rawValue: SIGCONT)
    public static let stop = Signal(rawValue: SIGSTOP)

    public var description: String {
        switch rawValue {
        case 0: "signal 0"
        case SIGHUP: "SIGHUP"
        case SIGINT: "SIGINT"
        case SIGQUIT: "SIGQUIT"
        case SIGKILL: "SIGKILL"
        case SIGUSR1: "SIGUSR1"
        case SIGUSR2: "SIGUSR2"
        case SIGPIPE: "SIGPIPE"
        case SIGALRM: "SIGALRM"
        case SIGTERM: "SIGTERM"
        case SIGCHLD: "SIGCHLD"
        case SIGCONT: "SIGCONT"
        case SIGSTOP: "SIGSTOP"
        default: "signal \(rawValue)"
        }
    }
}

/// A range of virtual addresses in some process, for process_madvise.
public struct AddressRange: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var length: UInt64

    public init(start: UInt64, length: UInt64) {
        self.start = start
        self.length = length
    }

    public var end: UInt64 { start &+ length }

    public var description: String {
        "0x\(String(start, radix: 16))+\(length)"
    }
}

/// Calls on processes: identity, signals, pidfds, another process's memory.
public enum ProcessControl {
    /// The most ranges one process_madvise call takes: the kernel's UIO_MAXIOV. More fail with EINVAL.
    public static let maximumRangesPerAdvice = 1024

    /// getpid(2).
    public static var currentID: Int32 { getpid() }

    /// geteuid(2): the user whose rights this process has.
    public static var currentUserID: UInt32 { geteuid() }

    /// The id of the group `name` from the group database (getgrnam_r), nil when there is none.
    public static func groupID(named name: String) -> UInt32? {
        var group = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        while true {
            let status = getgrnam_r(name, &group, &buffer, buffer.count, &result)
            if status == ERANGE && buffer.count < 1 << 20 {
                buffer = [CChar](repeating: 0, count: buffer.count * 4)
                continue
            }
            guard status == 0, let found = result else { return nil }
            return found.pointee.gr_gid
        }
    }

    /// exit(3): flushes stdio and ends the process with `status`.
    public static func exit(_ status: Int32) -> Never {
        Glibc.exit(status)
    }

    /// kill(2).
    public static func send(_ signal: Signal, to processID: Int32) throws(SystemCallError) {
        _ = try systemCall("kill", "pid \(processID), \(signal)") { Glibc.kill(processID, signal.rawValue) }
    }

    /// posix_spawn(3): starts `executable` (an absolute path) with `arguments`, stdin from /dev/null and
    /// stdout and stderr appended to `outputPath`; returns its pid. The child inherits no other descriptor
    /// of ours (they are all close-on-exec).
    public static func spawn(_ executable: String, arguments: [String], outputPath: String) throws(SystemCallError) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard result == 0 else { throw SystemCallError("posix_spawn", Errno(rawValue: result), path: executable) }
        return pid
    }

    /// waitpid(2) for a child of ours: its exit status, or 128 + the signal that ended it.
    public static func waitForExit(_ processID: Int32) throws(SystemCallError) -> Int32 {
        var status: Int32 = 0
        _ = try systemCall("waitpid", "pid \(processID)") { Glibc.waitpid(processID, &status, 0) }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : 128 + signal
    }

    /// Whether a process with this ID exists (it may belong to someone we cannot signal).
    public static func exists(_ processID: Int32) -> Bool {
        if Glibc.kill(processID, 0) == 0 { return true }
        return Errno.current == .EPERM
    }

    /// pidfd_open(2): a descriptor that names one process for good, immune to its ID being reused after
    /// it exits. process_madvise needs one.
    public static func openDescriptor(forProcess processID: Int32) throws(SystemCallError) -> FileDescriptor {
        // pidfds are always close-on-exec.
        let number = try systemCall("pidfd_open", "pid \(processID)") {
            cballonet_pidfd_open(processID, 0)
        }
        return FileDescriptor(adopting: Int32(number))
    }

    /// process_madvise(2): gives `advice` for ranges of the process `process` names. Returns the bytes
    /// advised, which may be fewer than asked if the kernel stopped early; at most
    /// `maximumRangesPerAdvice` ranges per call.
    ///
    /// For another process the kernel takes only `.cold`, `.pageOut`, `.willNeed` and `.collapse`, and
    /// wants ptrace-read rights over it and CAP_SYS_NICE (root has both); for the caller itself Linux 6.13
    /// and later take any advice (6.18 here does). Older kernels without the call fail with ENOSYS.
    public static func adviseMemory(
        ofProcess process: borrowing FileDescriptor,
        ranges: [AddressRange],
        advice: MemoryAdvice
    ) throws(SystemCallError) -> Int {
        let pidfd = Int(process.rawValue)
        let vectors = ranges.map { range in
            iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(truncatingIfNeeded: range.start)),
                  iov_len: Int(truncatingIfNeeded: range.length))
        }
        return try vectors.withUnsafeBufferPointer { (buffer) throws(SystemCallError) -> Int in
            try systemCall("process_madvise", "pidfd \(pidfd), \(ranges.count) ranges, \(advice)") {
                cballonet_process_madvise(Int32(pidfd), buffer.baseAddress, UInt(buffer.count), advice.rawValue, 0)
            }
        }
    }

    /// Ignores SIGPIPE process-wide, so writing to a closed pipe or socket fails with EPIPE instead of
    /// killing the process. (Socket sends here use MSG_NOSIGNAL and need not rely on this.)
    public static func ignoreBrokenPipeSignal() throws(SystemCallError) {
        // signal returns the previous handler, or SIG_ERR, which is the address -1.
        let previous = Glibc.signal(SIGPIPE, SIG_IGN)
        if let previous, unsafeBitCast(previous, to: Int.self) == -1 {
            throw SystemCallError("signal", .current, context: "SIGPIPE, SIG_IGN")
        }
    }

    /// Blocks `signals` for the calling thread (pthread_sigmask). Threads started afterwards inherit the
    /// mask, so a daemon does this first thing, before any thread starts, and then reads the signals from
    /// `openSignalDescriptor` instead of handling them asynchronously.
    public static func blockSignals(_ signals: [Signal]) throws(SystemCallError) {
        var set = signalSet(signals)
        let result = pthread_sigmask(SIG_BLOCK, &set, nil)
        if result != 0 {
            throw SystemCallError("pthread_sigmask", Errno(rawValue: result), context: "\(signals)")
        }
    }

    /// signalfd(2), non-blocking: a descriptor that becomes readable when one of `signals` is pending.
    /// The signals must be blocked (`blockSignals`) or they are delivered the usual way instead.
    public static func openSignalDescriptor(for signals: [Signal]) throws(SystemCallError) -> FileDescriptor {
        var set = signalSet(signals)
        let flags = LinuxConstant.signalfdCloseOnExec | LinuxConstant.signalfdNonBlocking
        let number = try systemCall("signalfd", "\(signals)") {
            cballonet_signalfd(-1, &set, flags)
        }
        return FileDescriptor(adopting: number)
    }

    /// Sends `signal` to the calling thread only (raise(3)).
    public static func signalCurrentThread(_ signal: Signal) throws(SystemCallError) {
        let result = Glibc.raise(signal.rawValue)
        if result != 0 {
            throw SystemCallError("raise", .current, context: "\(signal)")
        }
    }

    private static func signalSet(_ signals: [Signal]) -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals {
            sigaddset(&set, signal.rawValue)
        }
        return set
    }
}

extension FileDescriptor {
    /// Size of struct signalfd_siginfo, fixed by the kernel ABI; the signal number is its first field.
    static let signalInfoBytes = 128

    /// Reads one pending signal from a descriptor made by `ProcessControl.openSignalDescriptor`; nil when
    /// none is pending.
    public func readSignal() throws(SystemCallError) -> Signal? {
        var info = [UInt8](repeating: 0, count: FileDescriptor.signalInfoBytes)
        let received: Int
        do throws(SystemCallError) {
            received = try info.withUnsafeMutableBufferPointer { (buffer) throws(SystemCallError) -> Int in
                try read(into: UnsafeMutableRawBufferPointer(buffer))
            }
        } catch where error.errno == .EAGAIN {
            return nil
        }
        guard received == FileDescriptor.signalInfoBytes else {
            throw SystemCallError("read", .EINVAL, context: "fd \(rawValue), \(received) bytes of signalfd_siginfo")
        }
        // ssi_signo, in the machine's byte order.
        let number = info.withUnsafeBytes { $0.load(as: UInt32.self) }
        return Signal(rawValue: Int32(bitPattern: number))
    }
}
