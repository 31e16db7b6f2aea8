import Foundation
import BallonetLinux
#if canImport(Glibc)
import Glibc
#endif

/// A QEMU guest under TCG (KVM here cannot boot a stock kernel) booted from the guest test image
/// (packaging/guest-image): memfd-backed RAM as Ballonet's punch reclaim wants it, a virtio-serial port
/// `org.ballonet.0` on a UNIX socket for the host side of the wire, a QMP socket, and the serial
/// console on a UNIX socket that this object reads from and types into.
///
/// QEMU starts paused (`-S`) and is let go over QMP only once the console is connected, so
/// `consoleLog` holds everything the guest printed from its first line. `stop()` (and `deinit`) ends
/// QEMU by pid and reaps it: nothing is left running.
public final class TCGGuest: @unchecked Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// How the guest's RAM is backed on the host.
    public enum RAMBacking: Sendable {
        /// `memory-backend-memfd,share=on`: the host reclaims balloon pages by punching holes in the memfd.
        case memfd
        /// `memory-backend-ram`: anonymous private memory, which KSM can merge and pageout can reclaim.
        case anonymous
    }

    public let name: String
    /// The pid of the qemu-system-x86_64 child process.
    public let pid: Int32
    public let workDirectory: URL
    /// The host end of the guest's virtio-serial port `org.ballonet.0` (QEMU listens; connect to it).
    public let portSocketPath: String
    public let qmpSocketPath: String
    public let consoleSocketPath: String
    /// QEMU's own stdout and stderr.
    public let qemuLogPath: String
    public let memoryMiB: Int
    /// When QEMU was started; boot time is measured from here.
    public let startedAt: Date

    /// Everything the serial console printed so far (line ends as "\n").
    public var consoleLog: String { console.text(from: 0) }

    private let process: Process
    private let console: ConsoleConnection
    private let stopLock = NSLock()
    private var stopped = false
    private var commandCounter = 0

    /// The line /init prints once the guest has booted.
    public static let readyLine = "BALLONET-GUEST-READY"

    /// qemu-system-x86_64 on PATH or in /usr/bin, or nil if this machine has none.
    public static var qemuExecutable: URL? {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + ["/usr/bin"]
        return directories.lazy
            .map { URL(fileURLWithPath: $0).appendingPathComponent("qemu-system-x86_64") }
            .first { FileManager.default.isExecutableFile(atPath: $0.path) }
    }

    /// A fresh directory for one guest's sockets and logs, short enough for UNIX socket paths (108 bytes).
    public static func makeWorkDirectory(prefix: String) throws -> URL {
        let directory = URL(fileURLWithPath: "/tmp")
            .appendingPathComponent("ballonet-\(prefix)-\(getpid())-\(UInt32.random(in: 0 ... .max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    /// Starts QEMU with the image and returns once the guest runs (it is still booting: see `waitUntilReady`).
    public static func boot(
        name: String,
        memoryMiB: Int = 512,
        cpus: Int = 1,
        kernel: URL,
        initramfs: URL,
        appendArguments: String = "",
        virtioBalloon: Bool = false,
        ramBacking: RAMBacking = .memfd,
        sharing: Bool = false,
        startPaused: Bool = false,
        memoryCgroup: String? = nil,
        workDirectory: URL
    ) throws -> TCGGuest {
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
            throw Failure("guest name '\(name)' must be letters, digits and '-' (it becomes the hostname)")
        }
        guard let qemu = qemuExecutable else {
            throw Failure("no qemu-system-x86_64 on this machine: run scripts/install-deps.sh as root")
        }
        for file in [kernel, initramfs] where !FileManager.default.fileExists(atPath: file.path) {
            throw Failure("guest image file missing: \(file.path) (GuestImage.ensureBuilt builds it)")
        }
        try FileManager.default.createDirectory(at: workDirectory, withIntermediateDirectories: true)
        let path = { (file: String) in workDirectory.appendingPathComponent(file).path }
        let portSocket = path("ballonet.sock"), qmpSocket = path("qmp.sock"), consoleSocket = path("console.sock")
        for socketPath in [portSocket, qmpSocket, consoleSocket] {
            guard !socketPath.contains(",") else { throw Failure("QEMU options cannot take a path with ',': \(socketPath)") }
            guard socketPath.utf8.count < 108 else {
                throw Failure("socket path too long for a UNIX socket (\(socketPath.utf8.count) bytes): \(socketPath); use TCGGuest.makeWorkDirectory")
            }
            unlink(socketPath)
        }

        let backend = switch ramBacking {
        case .memfd: "memory-backend-memfd,id=ram0,size=\(memoryMiB)M,share=on"
        // KSM may merge anonymous RAM only with `sharing` (QEMU's mem-merge, on by QEMU's default).
        case .anonymous: "memory-backend-ram,id=ram0,size=\(memoryMiB)M,merge=\(sharing ? "on" : "off")"
        }
        // panic=-1 with -no-reboot: a guest that panics makes QEMU exit instead of hanging a test.
        let commandLine = "console=ttyS0 panic=-1 ballonet.hostname=\(name) \(appendArguments)"
            .trimmingCharacters(in: .whitespaces)
        var arguments = [
            "-name", name,
            "-accel", "tcg",
            // QEMU 7.2 marks anonymous RAM mergeable by the machine's mem-merge, whatever the backend says.
            "-machine", "pc,memory-backend=ram0,mem-merge=\(ramBacking == .anonymous && sharing ? "on" : "off")",
            "-object", backend,
            "-m", "\(memoryMiB)M",
            "-smp", "\(cpus)",
            // No default devices: no VGA, no NIC (and so no option ROMs to load), no default serial.
            "-nodefaults", "-no-user-config",
            "-display", "none",
            "-no-reboot",
            "-S",
            "-kernel", kernel.path,
            "-initrd", initramfs.path,
            "-append", commandLine,
            "-chardev", "socket,id=console0,path=\(consoleSocket),server=on,wait=off",
            "-serial", "chardev:console0",
            "-chardev", "socket,id=qmp0,path=\(qmpSocket),server=on,wait=off",
            "-mon", "chardev=qmp0,mode=control",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", "socket,id=ballonet0,path=\(portSocket),server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=ballonet0,name=org.ballonet.0,id=ballonetport0",
            // Entropy from the host: without it getrandom() in the guest blocks for seconds after boot,
            // and with it every Swift program that seeds a hash table (ballonet-guest included).
            "-device", "virtio-rng-pci",
        ]
        if virtioBalloon { arguments += ["-device", "virtio-balloon-pci,id=balloon0"] }

        let qemuLog = path("qemu.log")
        _ = FileManager.default.createFile(atPath: qemuLog, contents: nil)
        let logHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: qemuLog))
        defer { try? logHandle.close() }
        let process = Process()
        process.executableURL = qemu
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = logHandle
        process.standardError = logHandle
        let startedAt = Date()
        try process.run()

        func abandon(_ reason: String) -> Failure {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            let log = (try? String(contentsOfFile: qemuLog, encoding: .utf8)) ?? ""
            return Failure("\(reason)\nqemu \(arguments.joined(separator: " "))\nqemu.log:\n\(log)")
        }
        // QEMU creates its sockets before it starts the (paused) machine; wait for them.
        let console: ConsoleConnection
        do {
            let consoleFD = try RetryingUnixSocket.connect(path: consoleSocket, retryFor: 20, while: { process.isRunning })
            console = ConsoleConnection(fd: consoleFD, logPath: path("console.log"))
            let qmp = try QMPConnection(path: qmpSocket, retryFor: 20, while: { process.isRunning })
            defer { qmp.close() }
            // A paused machine (startPaused) never runs its guest: a QEMU with real guest RAM, a RAM map and
            // QMP, whose memory a test may punch without harming anyone (the hostile-guest tests do).
            // A memory cgroup of its own (as libvirt gives each domain), entered before the guest touches its RAM:
            // pages are charged where they are first touched.
            if let memoryCgroup {
                try "\(process.processIdentifier)".write(toFile: memoryCgroup + "/cgroup.procs", atomically: false, encoding: .utf8)
            }
            if !startPaused { _ = try qmp.execute(#"{"execute":"cont"}"#, timeout: 20) }
        } catch {
            throw abandon("QEMU did not come up: \(error)")
        }
        return TCGGuest(name: name, process: process, console: console, workDirectory: workDirectory,
                        portSocketPath: portSocket, qmpSocketPath: qmpSocket, consoleSocketPath: consoleSocket,
                        qemuLogPath: qemuLog, memoryMiB: memoryMiB, startedAt: startedAt)
    }

    private init(name: String, process: Process, console: ConsoleConnection, workDirectory: URL,
                 portSocketPath: String, qmpSocketPath: String, consoleSocketPath: String,
                 qemuLogPath: String, memoryMiB: Int, startedAt: Date) {
        self.name = name
        self.process = process
        self.pid = process.processIdentifier
        self.console = console
        self.workDirectory = workDirectory
        self.portSocketPath = portSocketPath
        self.qmpSocketPath = qmpSocketPath
        self.consoleSocketPath = consoleSocketPath
        self.qemuLogPath = qemuLogPath
        self.memoryMiB = memoryMiB
        self.startedAt = startedAt
    }

    deinit { stop() }

    public var isRunning: Bool { process.isRunning }

    /// Waits until /init printed `BALLONET-GUEST-READY`; returns the seconds since QEMU started.
    @discardableResult
    public func waitUntilReady(timeout: TimeInterval) throws -> TimeInterval {
        let found = console.wait(from: 0, timeout: timeout) { text in
            text.contains("\n\(Self.readyLine)\n") || text.hasPrefix("\(Self.readyLine)\n") ? true : nil
        }
        guard found != nil else {
            throw Failure("guest \(name) not ready within \(Int(timeout)) s (\(stateDescription))\n\(tail())")
        }
        return Date().timeIntervalSince(startedAt)
    }

    /// Types `command` into the guest's console shell and returns what it printed (stdout and stderr,
    /// line ends as "\n") and its exit status. One line, under 900 bytes; it must not read standard
    /// input (it would read the console). Ending it with `&` starts it in the background. One command
    /// at a time: the console is a single shell. On timeout it sends Ctrl-C to the shell and throws.
    public func run(_ command: String, timeout: TimeInterval) throws -> (output: String, status: Int32) {
        guard !command.contains("\n"), !command.contains("\r") else { throw Failure("run: one line only: \(command)") }
        stopLock.lock()
        commandCounter += 1
        let id = "\(commandCounter)-\(UInt32.random(in: 0 ... .max))"
        stopLock.unlock()
        // The console echoes what is typed; the quotes split the markers in the typed text so that only
        // the lines the shell prints match them.
        let begin = "BALLONET-BEGIN-\(id)", end = "BALLONET-END-\(id) status="
        let trimmed = command.trimmingCharacters(in: .whitespaces)
        let separator = trimmed.hasSuffix("&") && !trimmed.hasSuffix("&&") ? " " : "; "
        let line = "echo BALLONET-BEG''IN-\(id); \(trimmed)\(separator)echo \"BALLONET-E\"\"ND-\(id) status=$?\"\n"
        guard line.utf8.count < 1000 else { throw Failure("run: command too long for the console's line editor (\(line.utf8.count) bytes)") }
        let start = console.byteCount
        try console.write(line)
        let result = console.wait(from: start, timeout: timeout) { text -> (String, Int32)? in
            guard let beginRange = text.range(of: "\(begin)\n"),
                  let endRange = text.range(of: end, range: beginRange.upperBound ..< text.endIndex),
                  let lineEnd = text[endRange.upperBound...].firstIndex(of: "\n"),
                  let status = Int32(text[endRange.upperBound ..< lineEnd])
            else { return nil }
            var output = String(text[beginRange.upperBound ..< endRange.lowerBound])
            if output.hasSuffix("\n") { output.removeLast() }
            return (output, status)
        }
        guard let (output, status) = result else {
            try? console.write("\u{03}")
            throw Failure("guest \(name): `\(command)` did not finish within \(Int(timeout)) s (\(stateDescription))\n\(tail())")
        }
        return (output, status)
    }

    /// Sends one QMP command (a JSON object) on a fresh connection and returns QEMU's answer line.
    /// The connection is closed afterwards, so the QMP socket stays free for the software under test.
    public func qmp(_ command: String, timeout: TimeInterval = 30) throws -> String {
        let connection = try QMPConnection(path: qmpSocketPath, retryFor: 5, while: { self.process.isRunning })
        defer { connection.close() }
        return try connection.execute(command, timeout: timeout)
    }

    /// Ends QEMU: SIGTERM, SIGKILL after `grace` seconds, then reaps it. Safe to call more than once.
    public func stop(grace: TimeInterval = 5) {
        stopLock.lock()
        defer { stopLock.unlock() }
        guard !stopped else { return }
        stopped = true
        if process.isRunning {
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(grace)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(pid, SIGKILL) }
        }
        process.waitUntilExit()
        console.close()
    }

    /// The last `characters` of the console, for failure messages.
    public func tail(_ characters: Int = 3000) -> String {
        let log = consoleLog
        return "--- console (last \(min(characters, log.count)) characters) ---\n" + String(log.suffix(characters))
    }

    private var stateDescription: String {
        process.isRunning ? "QEMU pid \(pid) running" : "QEMU exited with status \(process.terminationStatus)"
    }
}

/// Finds or builds the guest test image and the static agent that goes in it.
public enum GuestImage {
    /// The package root, found from this file's place in it (Tests/BallonetTestSupport/).
    public static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Where test guests' build products go: the static agent's scratch path and the image.
    public static let scratchDirectory = packageRoot.appendingPathComponent(".build-guest")

    private static let agentBuild = OnceResult<URL>()

    /// Builds `ballonet-guest` as guest images carry it (scripts/build-guest-agent.sh: one static
    /// executable) in `.build-guest`, once per test process; returns the binary.
    public static func buildStaticAgent() throws -> URL {
        try agentBuild.get {
            try runTool(URL(fileURLWithPath: "/bin/bash"), [packageRoot.appendingPathComponent("scripts/build-guest-agent.sh").path,
                                                           scratchDirectory.path],
                        in: packageRoot, what: "building the static ballonet-guest")
            return scratchDirectory.appendingPathComponent("release/ballonet-guest")
        }
    }

    /// Runs packaging/guest-image/build-initramfs.sh for `agent` (cached: cheap once built) and returns
    /// the kernel and initramfs.
    public static func ensureBuilt(agent: URL, outDirectory: URL? = nil) throws -> (kernel: URL, initramfs: URL) {
        let out = outDirectory ?? scratchDirectory.appendingPathComponent("guest-image")
        let script = packageRoot.appendingPathComponent("packaging/guest-image/build-initramfs.sh")
        try runTool(URL(fileURLWithPath: "/bin/bash"), [script.path, "--agent", agent.path, "--out", out.path],
                    in: packageRoot, what: "building the guest image")
        return (out.appendingPathComponent("vmlinuz"), out.appendingPathComponent("initramfs.cpio.gz"))
    }

    private static func runTool(_ executable: URL, _ arguments: [String], in directory: URL, what: String) throws {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.currentDirectoryURL = directory
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TCGGuest.Failure("\(what) failed (exit \(process.terminationStatus)): \(executable.path) \(arguments.joined(separator: " "))\n\(output.suffix(4000))")
        }
    }
}

/// A value computed once per process, by the first caller; later callers wait for it. A failure is
/// not remembered, so a later caller tries again.
final class OnceResult<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value?

    func get(_ make: () throws -> Value) throws -> Value {
        lock.lock()
        defer { lock.unlock() }
        if let value { return value }
        let made = try make()
        value = made
        return made
    }
}

/// The console socket: a thread reads everything QEMU's serial port sends into a buffer (and
/// console.log); waiters are woken as bytes arrive.
final class ConsoleConnection: @unchecked Sendable {
    private let fd: Int32
    private let logFD: Int32
    private let condition = NSCondition()
    private var bytes: [UInt8] = []
    private var readerFinished = false
    private var closed = false

    init(fd: Int32, logPath: String) {
        self.fd = fd
        self.logFD = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let thread = Thread { [self] in readLoop() }
        thread.name = "TCGGuest console"
        thread.start()
    }

    private func readLoop() {
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            condition.lock()
            if count > 0 {
                bytes.append(contentsOf: buffer[0 ..< count])
                if logFD >= 0 { _ = buffer.withUnsafeBytes { Glibc.write(logFD, $0.baseAddress, count) } }
            } else {
                readerFinished = true // EOF (QEMU exited or close()) or an error
            }
            condition.broadcast()
            condition.unlock()
            if count <= 0 { return }
        }
    }

    var byteCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return bytes.count
    }

    func text(from offset: Int) -> String {
        condition.lock()
        defer { condition.unlock() }
        return Self.decode(bytes[min(offset, bytes.count)...])
    }

    /// Calls `found` on the text from `offset` each time more arrives, until it returns a value, the
    /// console ends, or `timeout` passes.
    func wait<T>(from offset: Int, timeout: TimeInterval, until found: (String) -> T?) -> T? {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        var checked = -1
        while true {
            if bytes.count != checked {
                checked = bytes.count
                if let result = found(Self.decode(bytes[min(offset, bytes.count)...])) { return result }
            }
            if readerFinished || Date() >= deadline { return nil }
            _ = condition.wait(until: min(deadline, Date().addingTimeInterval(0.5)))
        }
    }

    func write(_ text: String) throws {
        condition.lock()
        let isClosed = closed || readerFinished
        condition.unlock()
        guard !isClosed else { throw TCGGuest.Failure("the console is closed") }
        var remaining = Array(text.utf8)[...]
        while !remaining.isEmpty {
            // MSG_NOSIGNAL: a QEMU that died must not take the test process with it through SIGPIPE.
            let sent = remaining.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0 {
                if errno == EINTR { continue }
                throw TCGGuest.Failure("writing to the console failed: errno \(errno)")
            }
            remaining = remaining.dropFirst(sent)
        }
    }

    /// Ends the reader (shutdown wakes it) and closes the socket once it has stopped using it.
    func close() {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return }
        closed = true
        shutdown(fd, Int32(SHUT_RDWR))
        let deadline = Date().addingTimeInterval(5)
        while !readerFinished && Date() < deadline { _ = condition.wait(until: deadline) }
        if readerFinished { Glibc.close(fd) } // else leak it rather than close under a reader
        if logFD >= 0 { Glibc.close(logFD) }
    }

    deinit { close() }

    private static func decode(_ slice: ArraySlice<UInt8>) -> String {
        String(decoding: slice, as: UTF8.self).replacingOccurrences(of: "\r", with: "")
    }
}

/// A QMP client just big enough for tests: one command at a time, answers read line by line.
final class QMPConnection {
    private let fd: Int32
    private var pending: [UInt8] = []

    init(path: String, retryFor seconds: TimeInterval, while alive: () -> Bool) throws {
        fd = try RetryingUnixSocket.connect(path: path, retryFor: seconds, while: alive)
        do {
            _ = try readLine(until: { $0.contains("\"QMP\"") }, timeout: 20)
            _ = try execute(#"{"execute":"qmp_capabilities"}"#, timeout: 20)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Sends `command` and returns its answer (the next line with "return" or "error"; events are skipped).
    func execute(_ command: String, timeout: TimeInterval) throws -> String {
        var data = Array((command + "\n").utf8)[...]
        while !data.isEmpty {
            let sent = data.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0 {
                if errno == EINTR { continue }
                throw TCGGuest.Failure("QMP: send failed: errno \(errno)")
            }
            data = data.dropFirst(sent)
        }
        let answer = try readLine(until: { $0.hasPrefix("{\"return\"") || $0.hasPrefix("{\"error\"") }, timeout: timeout)
        if answer.hasPrefix("{\"error\"") { throw TCGGuest.Failure("QMP \(command): \(answer)") }
        return answer
    }

    private func readLine(until accept: (String) -> Bool, timeout: TimeInterval) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<newline], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                pending.removeSubrange(...newline)
                if accept(line) { return line }
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw TCGGuest.Failure("QMP: no answer within \(Int(timeout)) s") }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&descriptor, 1, Int32(min(remaining, 1) * 1000) + 1)
            if ready < 0 && errno != EINTR { throw TCGGuest.Failure("QMP: poll failed: errno \(errno)") }
            guard ready > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw TCGGuest.Failure("QMP: connection closed") }
            pending += buffer[0 ..< count]
        }
    }

    func close() { Glibc.close(fd) }
}

enum RetryingUnixSocket {
    /// Connects to the UNIX socket at `path`, retrying while it does not exist yet (or refuses) and
    /// `alive()` says the server may still create it. Returns the raw descriptor, owned by the caller.
    static func connect(path: String, retryFor seconds: TimeInterval, while alive: () -> Bool) throws -> Int32 {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            do {
                return try BallonetLinux.UnixSocket.connect(to: path).take()
            } catch {
                guard error.errno == .ENOENT || error.errno == .ECONNREFUSED, alive(), Date() < deadline else {
                    throw TCGGuest.Failure("cannot connect to \(path): \(error)")
                }
            }
            usleep(10_000)
        }
    }
}
