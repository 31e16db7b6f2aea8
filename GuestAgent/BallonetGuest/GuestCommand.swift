import ArgumentParser
import BallonetLinux
import BallonetWire
import Logging

/// `ballonet-guest`: the agent installed in guest images.
public struct GuestCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ballonet-guest",
        abstract: "Ballonet guest agent: gives guest memory back to the host through an mlock'd balloon.",
        discussion: """
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
            """,
        version: BallonetVersion.software
    )

    @Option(name: .customLong("config"), help: ArgumentHelp("Configuration file.", valueName: "file"))
    var configPath: String?

    @Option(name: .customLong("port"), help: ArgumentHelp("The virtio-serial port to the host.", valueName: "path"))
    var port: String?

    @Option(name: .customLong("socket"),
            help: ArgumentHelp("Connect to the host over this UNIX socket instead of the port (testing, running outside a VM).",
                               valueName: "path"))
    var socket: String?

    @Option(name: .customLong("balloon-dir"),
            help: ArgumentHelp("Directory of the balloon file; a tmpfs is mounted there unless it is one already.", valueName: "dir"))
    var balloonDirectory: String?

    @Option(name: .customLong("batch-mib"), help: ArgumentHelp("MiB pinned and reported per batch.", valueName: "MiB"))
    var batchMiB: UInt64?

    @Option(name: .customLong("floor-mib"),
            help: ArgumentHelp("Never inflate below this much MemAvailable (the larger of this and --floor-percent).", valueName: "MiB"))
    var floorMiB: UInt64?

    @Option(name: .customLong("floor-percent"), help: ArgumentHelp("Floor as a share of MemTotal.", valueName: "percent"))
    var floorPercent: UInt64?

    @Option(name: .customLong("sample-seconds"), help: ArgumentHelp("Seconds between stats samples.", valueName: "seconds"))
    var sampleSeconds: UInt64?

    @Flag(inversion: .prefixedNo, help: "Pin 2 MiB pages where the guest kernel has them.")
    var hugePages: Bool?

    @Flag(name: .customLong("mount-tmpfs"), inversion: .prefixedNo, help: "Mount a tmpfs of its own on the balloon directory.")
    var mountTmpfs: Bool?

    @Option(name: .customLong("log-level"),
            help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
    var logLevel: String?

    public init() {}

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
                throw ValidationError("--log-level \(logLevel): expected one of \(GuestLogLevel.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            overrides.logLevel = level
        }
        var configuration: GuestConfiguration
        do {
            configuration = try GuestConfiguration.load(path: configPath)
        } catch {
            throw ValidationError("\(error)")
        }
        configuration.apply(overrides)
        do {
            try configuration.validate()
        } catch {
            throw ValidationError("\(error)")
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
            throw ExitCode(1)
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
            throw ExitCode(1)
        }
        let status = daemon.run()
        if status != 0 { throw ExitCode(status) }
    }

    static func capabilities(_ configuration: GuestConfiguration, method: GuestSampler.WorkingSetMethod) -> Capabilities {
        var capabilities: Capabilities = [.statsSamples, .pressureRelease, .crashAdoption]
        if configuration.balloon.hugePages { capabilities.insert(.hugePages) }
        if method == .mglruAges { capabilities.insert(.mglruWorkingSet) }
        return capabilities
    }
}
