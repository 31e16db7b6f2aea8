import BallonetLinux
import BallonetWire
import Logging

/// `ballonet-guest`: the agent installed in guest images.
///
/// Its command line is parsed here by hand rather than by swift-argument-parser: that package links
/// FoundationEssentials, which makes the static binary 17.5 MB instead of 10 MB and costs the agent about
/// 3 MiB of resident memory in every guest (DESIGN.md's figures; the agent's budget is 8 MiB). ballonet-host
/// and ballonetctl, which run once per host, keep the package.
public struct GuestCommand: Equatable {
    static let name = "ballonet-guest"
    static let abstract = "Ballonet guest agent: gives guest memory back to the host through an mlock'd balloon."
    static let discussion = """
        ballonet-guest runs inside a virtual machine. When the host asks, it pins guest pages in a balloon \
        (memory locked in a file on a tmpfs of its own, so it survives an agent crash), tells the host which \
        guest page frames it holds over the virtio-serial port org.ballonet.0, and releases them once the \
        host has acknowledged or declined them, or at once when the guest comes under memory pressure. It \
        never inflates below its free-memory floor, and it reports the guest's memory figures and working \
        set every sampling period.

        Settings come from built-in defaults, then /etc/ballonet/guest.toml (or --config), then these \
        flags. It needs CAP_IPC_LOCK (to pin pages) and CAP_SYS_ADMIN (to read page frame numbers and to \
        mount its tmpfs); it says which one is missing. SIGTERM tells the host, releases the balloon and \
        exits; under systemd (Type=notify) it reports readiness.

        Files:   /dev/virtio-ports/org.ballonet.0   the port to the host
                 /etc/ballonet/guest.toml           configuration
                 /run/ballonet/balloon/balloon      the balloon file (re-adopted after a crash)

        Exit status: 0 after a clean stop, 1 when it cannot start or run, 64 for a bad command line.
        """

    /// One option of the command line.
    struct Option {
        var name: String
        /// nil for a flag (`--name` / `--no-name`).
        var valueName: String?
        var help: String
    }

    static let options: [Option] = [
        Option(name: "config", valueName: "file", help: "Configuration file."),
        Option(name: "port", valueName: "path", help: "The virtio-serial port to the host."),
        Option(name: "socket", valueName: "path",
               help: "Connect to the host over this UNIX socket instead of the port (testing, running outside a VM)."),
        Option(name: "balloon-dir", valueName: "dir",
               help: "Directory of the balloon file; a tmpfs is mounted there unless it is one already."),
        Option(name: "batch-mib", valueName: "MiB", help: "MiB pinned and reported per batch."),
        Option(name: "floor-mib", valueName: "MiB",
               help: "Never inflate below this much MemAvailable (the larger of this and --floor-percent)."),
        Option(name: "floor-percent", valueName: "percent", help: "Floor as a share of MemTotal."),
        Option(name: "sample-seconds", valueName: "seconds", help: "Seconds between stats samples."),
        Option(name: "huge-pages", valueName: nil, help: "Pin 2 MiB pages where the guest kernel has them."),
        Option(name: "mount-tmpfs", valueName: nil, help: "Mount a tmpfs of its own on the balloon directory."),
        Option(name: "log-level", valueName: "level", help: "trace, debug, info, notice, warning, error or critical."),
    ]

    /// What `--help` prints.
    public static var helpText: String {
        var usage = "USAGE: \(name)"
        for option in options {
            usage += option.valueName.map { " [--\(option.name) <\($0)>]" } ?? " [--[no-]\(option.name)]"
        }
        var text = "OVERVIEW: \(abstract)\n\n\(wrapped(discussion))\n\n\(wrapped(usage))\n\nOPTIONS:\n"
        let rows = options.map { option in
            (option.valueName.map { "--\(option.name) <\($0)>" } ?? "--\(option.name)/--no-\(option.name)", option.help)
        } + [("--version", "Show the version."), ("-h, --help", "Show help information.")]
        let width = (rows.map(\.0.count).max() ?? 0) + 2
        for (left, right) in rows {
            text += "  " + left + String(repeating: " ", count: width - left.count) + right + "\n"
        }
        return text
    }

    /// `text` with its long lines broken at spaces to fit 100 columns (lines that start with a space, such
    /// as the file list, are laid out by hand and kept).
    static func wrapped(_ text: String, width: Int = 100) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            guard line.count > width, !line.hasPrefix(" ") else { return String(line) }
            var lines: [String] = []
            var current = ""
            for word in line.split(separator: " ") {
                if !current.isEmpty && current.count + 1 + word.count > width {
                    lines.append(current)
                    current = ""
                }
                current += (current.isEmpty ? "" : " ") + word
            }
            lines.append(current)
            return lines.joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// A command line that cannot be run, with what is wrong.
    public struct UsageError: Error, CustomStringConvertible, Equatable {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// What a command line asks for.
    public enum Request: Equatable {
        case help
        case version
        case run(GuestCommand)
    }

    var configPath: String?
    var port: String?
    var socket: String?
    var balloonDirectory: String?
    var batchMiB: UInt64?
    var floorMiB: UInt64?
    var floorPercent: UInt64?
    var sampleSeconds: UInt64?
    var hugePages: Bool?
    var mountTmpfs: Bool?
    var logLevel: String?

    public init() {}

    /// Parses `arguments` (without the program name): `--name value`, `--name=value`, `--flag`, `--no-flag`.
    public static func parse(_ arguments: [String]) throws(UsageError) -> Request {
        var command = GuestCommand()
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "-h" || argument == "--help" { return .help }
            if argument == "--version" { return .version }
            guard argument.hasPrefix("--") else { throw UsageError("unexpected argument '\(argument)'") }
            var key = String(argument.dropFirst(2))
            var inlineValue: String?
            if let equals = key.firstIndex(of: "=") {
                inlineValue = String(key[key.index(after: equals)...])
                key = String(key[..<equals])
            }
            if let flag = options.first(where: { $0.valueName == nil && ($0.name == key || "no-" + $0.name == key) }) {
                guard inlineValue == nil else { throw UsageError("--\(key) takes no value") }
                command.setFlag(flag.name, key == flag.name)
                continue
            }
            guard let option = options.first(where: { $0.valueName != nil && $0.name == key }) else {
                throw UsageError("unknown option '--\(key)'")
            }
            let value: String
            if let inlineValue {
                value = inlineValue
            } else {
                guard index < arguments.count else { throw UsageError("--\(key) needs a value (<\(option.valueName!)>)") }
                value = arguments[index]
                index += 1
            }
            try command.set(option.name, value)
        }
        return .run(command)
    }

    private mutating func setFlag(_ name: String, _ on: Bool) {
        if name == "huge-pages" { hugePages = on } else { mountTmpfs = on }
    }

    private mutating func set(_ name: String, _ value: String) throws(UsageError) {
        func number() throws(UsageError) -> UInt64 {
            guard let number = UInt64(value) else { throw UsageError("--\(name) \(value): expected a whole number") }
            return number
        }
        switch name {
        case "config": configPath = value
        case "port": port = value
        case "socket": socket = value
        case "balloon-dir": balloonDirectory = value
        case "batch-mib": batchMiB = try number()
        case "floor-mib": floorMiB = try number()
        case "floor-percent": floorPercent = try number()
        case "sample-seconds": sampleSeconds = try number()
        default: logLevel = value
        }
    }

    /// The program's entry: parses the command line, runs, and exits with the status `--help` documents.
    public static func main() -> Never {
        let request: Request
        do {
            request = try parse(Array(CommandLine.arguments.dropFirst()))
        } catch {
            Terminal.writeStandardError("Error: \(error)\nUsage: \(name) [options]\n  See '\(name) --help' for more information.\n")
            ProcessControl.exit(64)
        }
        switch request {
        case .help:
            Terminal.writeStandardOutput(helpText)
            ProcessControl.exit(0)
        case .version:
            Terminal.writeStandardOutput(BallonetVersion.software + "\n")
            ProcessControl.exit(0)
        case .run(let command):
            do {
                try command.run()
                ProcessControl.exit(0)
            } catch let error as UsageError {
                Terminal.writeStandardError("Error: \(error)\n")
                ProcessControl.exit(64)
            } catch let exit as GuestExit {
                ProcessControl.exit(exit.status)
            } catch {
                Terminal.writeStandardError("Error: \(error)\n")
                ProcessControl.exit(1)
            }
        }
    }

    public func run() throws {
        var overrides = GuestConfigurationOverrides()
        overrides.portPath = port
        overrides.portSocket = socket
        overrides.balloonDirectory = balloonDirectory
        overrides.batchMiB = batchMiB
        overrides.floorMinMiB = floorMiB
        overrides.floorPercent = floorPercent
        overrides.periodSeconds = sampleSeconds
        overrides.hugePages = hugePages
        overrides.mountTmpfs = mountTmpfs
        if let logLevel {
            guard let level = GuestLogLevel(rawValue: logLevel) else {
                throw UsageError("--log-level \(logLevel): expected one of \(GuestLogLevel.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            overrides.logLevel = level
        }
        var configuration: GuestConfiguration
        do {
            configuration = try GuestConfiguration.load(path: configPath)
        } catch {
            throw UsageError("\(error)")
        }
        configuration.apply(overrides)
        do {
            try configuration.validate()
        } catch {
            throw UsageError("\(error)")
        }

        let level = Logger.Level(rawValue: configuration.log.level.rawValue) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "ballonet-guest")

        let memTotal: UInt64
        do {
            memTotal = try ProcFiles.meminfo().memTotal
        } catch {
            logger.critical("cannot read /proc/meminfo: \(error)")
            throw GuestExit(status: 1)
        }
        if configuration.sampling.enableMGLRU && !MGLRU.isEnabled() {
            do { try MGLRU.enable() } catch { logger.notice("cannot turn MGLRU on (\(error)); the working set is estimated from the LRU lists") }
        }
        if configuration.sampling.enableMGLRU { _ = try? MGLRU.mountDebugfsIfAbsent() }
        let method = GuestSampler.chooseMethod()
        let address: HostPortAddress = configuration.port.socket.isEmpty
            ? .virtioPort(configuration.port.path) : .unixSocket(configuration.port.socket)
        var settings = GuestDaemonSettings(
            address: address, balloonDirectory: configuration.balloon.directory,
            limits: configuration.balloonLimits(memTotalBytes: memTotal),
            pressure: PressureGuard.Settings(configuration, memTotalBytes: memTotal),
            session: GuestSession.Settings(capabilities: Self.capabilities(configuration, method: method)),
            workingSetMethod: method)
        settings.reconnectMinMillis = configuration.port.reconnectMinMillis
        settings.reconnectMaxMillis = configuration.port.reconnectMaxMillis
        settings.mountTmpfs = configuration.balloon.mountTmpfs
        settings.hugePages = configuration.balloon.hugePages
        settings.samplePeriodMillis = configuration.samplingPeriodMillis

        let daemon: GuestDaemon
        do {
            daemon = try GuestDaemon(settings: settings, logger: logger)
        } catch {
            logger.critical("cannot start: \(error)")
            throw GuestExit(status: 1)
        }
        let status = daemon.run()
        if status != 0 { throw GuestExit(status: status) }
    }

    static func capabilities(_ configuration: GuestConfiguration, method: GuestSampler.WorkingSetMethod) -> Capabilities {
        var capabilities: Capabilities = [.statsSamples, .pressureRelease, .crashAdoption]
        if configuration.balloon.hugePages { capabilities.insert(.hugePages) }
        if method == .mglruAges { capabilities.insert(.mglruWorkingSet) }
        return capabilities
    }
}

/// The agent ends with this status (its error was already logged).
struct GuestExit: Error {
    var status: Int32
}

