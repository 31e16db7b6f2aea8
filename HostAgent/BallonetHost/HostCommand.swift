import ArgumentParser
import BallonetConfig
import BallonetLinux
import BallonetPolicy
import BallonetWire
import Foundation
import Logging
import ServiceLifecycle

/// `ballonet-host`: the daemon beside QEMU.
@available(macOS 10.15, *)  // ArgumentParser runs an async root command only with this, even on Linux.
public struct HostCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ballonet-host",
        abstract: "Ballonet host agent: overcommits VM memory safely by ballooning, swapping and page sharing.",
        discussion: """
            ballonet-host runs beside QEMU. It drives the ballonet-guest balloon in each VM over the \
            virtio-serial port org.ballonet.0 and gives the host the memory behind balloon pages back: hole \
            punching for memfd-backed guest RAM, pageout for anonymous RAM. It discards guest memory only \
            behind pages the guest reported pinned in the current session and not yet acknowledged, and only \
            after checking every reported page against the VM's RAM map; anything else a guest sends is \
            refused and logged, never acted on.

            Config:  /etc/ballonet/host.toml (every key shown, commented, with its default)
            Control: ballonetctl, over /run/ballonet/control.sock
            libvirt: its running domains are managed too ([libvirt] uri, default qemu:///system);             `ballonet-host admit` is the admission hook (/usr/share/ballonet/libvirt-qemu-hook)
            """,
        version: BallonetVersion.software,
        subcommands: [Run.self, SimulateCommand.self, AdmitCommand.self]
    )

    public init() {}
}

extension HostCommand {
    /// `ballonet-host run`: the daemon.
    public struct Run: AsyncParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Run the host agent: start or attach to the configured VMs and manage their memory until SIGTERM.",
            discussion: """
                VMs come from [[vm]] tables in the configuration: a VM with kernel (and initrd) or disk is a \
                QEMU this agent starts (memfd-backed RAM, the org.ballonet.0 port and QMP on sockets in \
                <state directory>/<vm>/); a VM with qmp_socket and port_socket is a running QEMU it attaches \
                to (--attach does the same from the command line). libvirt's running domains with the \
                org.ballonet.0 channel or a virtio balloon are followed as they start and stop, with min, max \
                and shares from their Ballonet metadata (virsh metadata; see docs/LIBVIRT.md). Started QEMUs keep running when the agent \
                exits (unless stop_vms_on_exit), and a restarted agent attaches to them again.

                Each VM's resident-memory target is its target_mib, a `ballonetctl set-target`, or what the \
                policy decides ([policy] in the configuration; docs/POLICY.md): its share of the memory for \
                VMs (budget_mib, or host RAM less reserve_mib and vm_overhead_mib per VM) by shares with an \
                idle memory tax, within min_mib and max_mib; on a calm host it is trimmed toward its \
                working set plus a buffer. The host's free memory sets a state (high, soft, hard, low) that \
                says how hard to reclaim. A VM the agent would start is refused when its min plus overhead \
                does not fit or host swap does not cover its max − min (require_swap). The agent moves \
                each balloon toward its target at most inflate_step_mib per second, at once when \
                giving memory back, and backs off when a guest releases pages under pressure.

                SIGTERM or SIGINT: goodbye to every guest, then exit 0. Under systemd, Type=notify.
                Exit status: 0 after a clean stop, 1 on a configuration or startup error.
                """
        )

        @Option(name: .long, help: ArgumentHelp("Configuration file.", valueName: "path"))
        var config: String?

        @Option(name: .long, help: ArgumentHelp("Where managed VMs' sockets and pid files live (default /run/ballonet).", valueName: "dir"))
        var stateDirectory: String?

        @Option(name: .long, help: ArgumentHelp("The control socket (default <state directory>/control.sock).", valueName: "path"))
        var controlSocket: String?

        @Option(name: .long, help: ArgumentHelp("Where `ballonetctl set` keeps per-VM shares, min and max (default /var/lib/ballonet/vm-settings.json).", valueName: "path"))
        var settingsFile: String?

        @Option(name: .long, help: ArgumentHelp("Serve Prometheus metrics at http://ADDRESS/metrics, loopback only (default 127.0.0.1:9848; \"\" for none).", valueName: "host:port"))
        var metricsAddress: String?

        @Option(name: .long, help: ArgumentHelp("Memory for all VMs together, MiB (0: no budget).", valueName: "MiB"))
        var budgetMib: UInt64?

        @Option(name: .long, parsing: .singleValue,
                help: ArgumentHelp("Attach to a running QEMU: NAME,QMP_SOCKET,PORT_SOCKET (repeatable).", valueName: "vm"))
        var attach: [String] = []

        @Option(name: .long, help: ArgumentHelp("Manage libvirt's domains at this URI too (default qemu:///system; \"\" for none).", valueName: "uri"))
        var libvirtUri: String?

        @Flag(name: .long, inversion: .prefixedNo, help: "Stop the QEMUs this agent started when it exits.")
        var stopVmsOnExit: Bool?

        @Option(name: .long, help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
        var logLevel: String?

        public init() {}

        func loadConfiguration() throws -> HostConfiguration {
            var configuration: HostConfiguration
            do {
                configuration = try HostConfiguration.load(path: config)
            } catch {
                throw ValidationError(error.description)
            }
            if let stateDirectory { configuration.stateDirectory = stateDirectory }
            if let controlSocket { configuration.controlSocket = controlSocket }
            if let settingsFile { configuration.settingsFile = settingsFile }
            if let metricsAddress { configuration.metricsAddress = metricsAddress }
            if let budgetMib {
                guard budgetMib <= HostConfigurationLimits.budgetMiB.upperBound else {
                    throw ValidationError("--budget-mib must be at most \(HostConfigurationLimits.budgetMiB.upperBound) (1 EiB)")
                }
                configuration.budgetMiB = budgetMib
            }
            if let stopVmsOnExit { configuration.stopVMsOnExit = stopVmsOnExit }
            if let libvirtUri { configuration.libvirtURI = libvirtUri }
            if let logLevel {
                guard HostLogLevel(rawValue: logLevel) != nil else {
                    throw ValidationError("--log-level must be one of \(HostLogLevel.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                configuration.logLevel = logLevel
            }
            for spec in attach {
                let parts = spec.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 3, !parts.contains(where: \.isEmpty) else {
                    throw ValidationError("--attach takes NAME,QMP_SOCKET,PORT_SOCKET, not \(spec)")
                }
                guard !configuration.vms.contains(where: { $0.name == parts[0] }) else {
                    throw ValidationError("--attach \(parts[0]): a VM of that name is already configured")
                }
                var vm = VMConfiguration(name: parts[0])
                vm.qmpSocket = parts[1]
                vm.portSocket = parts[2]
                configuration.vms.append(vm)
            }
            do {
                try configuration.validate(path: "command line")
            } catch {
                throw ValidationError(error.description)
            }
            return configuration
        }

        public func run() async throws {
            var configuration = try loadConfiguration()
            // `ballonetctl set`'s settings override host.toml before anything is decided (admission too).
            do {
                let saved = try VMSettingsFile.load(path: configuration.settingsFile)
                configuration.vms = configuration.vms.map { saved[$0.name]?.applied(to: $0) ?? $0 }
            } catch {
                throw ValidationError("\(error)")
            }
            let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            let logger = Logger(label: "ballonet-host")
            try? ProcessControl.ignoreBrokenPipeSignal()
            var inventories: [VMInventory] = [QEMUInventory(configuration: configuration)]
            if !configuration.libvirtURI.isEmpty {
                inventories.append(LibvirtInventory(uri: configuration.libvirtURI, reservedNames: Set(configuration.vms.map(\.name))))
            }
            let engine = try HostEngine(configuration: configuration, inventories: inventories, logger: logger)
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: [.init(service: HostService(engine: engine, logger: logger),
                                 successTerminationBehavior: .gracefullyShutdownGroup,
                                 failureTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
            do {
                try await group.run()
            } catch {
                logger.critical("ballonet-host failed: \(error)")
                throw ExitCode.failure
            }
        }
    }
}

/// `ballonetctl`: the operator's command line to a running ballonet-host.
public struct ControlCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ballonetctl",
        abstract: "Ask a running ballonet-host what it is doing, and tell it what to aim for.",
        discussion: """
            ballonetctl talks to ballonet-host over its control socket (/run/ballonet/control.sock by \
            default), which answers root and members of group ballonet only. Sizes are MiB in tables and \
            bytes in --json output. status, top and explain read; set and set-target change what the \
            policy aims for (set is kept across restarts of ballonet-host).

            Exit status: 0 on success; 1 when ballonet-host is not running, refuses the request or \
            the caller is not permitted; 64 on a usage error. Metrics for Prometheus are served by \
            ballonet-host itself (metrics_address, default http://127.0.0.1:9848/metrics); see \
            docs/OPERATING.md.
            """,
        version: BallonetVersion.software,
        subcommands: [Status.self, Top.self, Explain.self, Set.self, SetTarget.self]
    )

    public init() {}

    struct SocketOption: ParsableArguments {
        @Option(name: .long, help: ArgumentHelp("The host agent's control socket.", valueName: "path"))
        var socket = "/run/ballonet/control.sock"
    }

    static func ask(_ request: ControlRequest, socket: String) throws -> HostStatus {
        let response: ControlResponse
        // ControlError, not ValidationError: a refused request is not a usage mistake, so no usage text.
        response = try ControlClient.request(request, socket: socket)
        guard response.ok, let status = response.status else {
            throw ControlError(response.error ?? "ballonet-host refused the request")
        }
        return status
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the host's memory state and each VM: target, balloon, resident, swapped, hypervisor-swap limit, working set, min, max, shares, reclaimed memory, agent version and session.")

        @OptionGroup var socket: SocketOption
        @Flag(name: .long, help: "Print the status as JSON (sizes in bytes).")
        var json = false

        func run() throws {
            let status = try ControlCommand.ask(ControlRequest(command: "status"), socket: socket.socket)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(status), as: UTF8.self))
            } else {
                print(StatusTable.render(status), terminator: "")
            }
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show why a VM has its target: the policy's numbers (shares S, working set, active fraction f, ρ, τ, state).",
            discussion: """
                The policy gives each VM its share of the memory for VMs: memory is reclaimed first from the VM \
                with the lowest ρ = S / (P·(f + k·(1 − f))), k = 1/(1 − τ), so idle memory costs k times active \
                memory; on a calm host (state high) only trimming toward the working set plus a buffer moves \
                targets down.
                """)

        @OptionGroup var socket: SocketOption
        @Argument(help: "The VM's name, as `status` shows it.") var vm: String
        @Flag(name: .long, help: "Print the explanation as JSON (sizes in bytes).")
        var json = false

        func run() throws {
            let response = try ControlClient.request(ControlRequest(command: "explain", vm: vm), socket: socket.socket)
            guard response.ok, let explanation = response.explanation else {
                throw ControlError(response.error ?? "ballonet-host refused the request")
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(explanation), as: UTF8.self))
            } else {
                print(ExplanationText.render(vm: vm, explanation), terminator: "")
            }
        }
    }

    struct Top: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show `status` live, refreshed every --interval seconds, until interrupted (or --count times).",
            discussion: """
                On a terminal the screen is cleared before each refresh, as esxtop does; otherwise each \
                refresh is printed below the last, with a time stamp line. With --json, one JSON status per \
                line (sizes in bytes), for scripts.
                """)

        @OptionGroup var socket: SocketOption
        @Option(name: .long, help: ArgumentHelp("Seconds between refreshes (0.2 to 3600).", valueName: "seconds"))
        var interval: Double = 1
        @Option(name: .long, help: ArgumentHelp("Stop after this many refreshes (default: until interrupted).", valueName: "n"))
        var count: Int?
        @Flag(name: .long, help: "One JSON status per line instead of the table.")
        var json = false

        func validate() throws {
            guard interval >= 0.2 && interval <= 3600 else { throw ValidationError("--interval must be between 0.2 and 3600 seconds") }
            if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        }

        func run() throws {
            let terminal = Terminal.standardOutputIsTerminal && !json
            var shown = 0
            while count.map({ shown < $0 }) ?? true {
                if shown > 0 { Thread.sleep(forTimeInterval: interval) }
                let status = try ControlCommand.ask(ControlRequest(command: "status"), socket: socket.socket)
                if json {
                    print(String(decoding: try JSONEncoder().encode(status), as: UTF8.self))
                } else {
                    if terminal { print("\u{1B}[H\u{1B}[2J", terminator: "") }
                    print("ballonetctl top: \(Date().formatted(.iso8601)), every \(MemoryPolicy.format(interval, 1)) s")
                    print(StatusTable.render(status), terminator: "")
                    if !terminal { print("") }
                }
                Terminal.flushOutput()
                shown += 1
            }
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a VM's shares, min or max; kept across restarts of ballonet-host.",
            discussion: """
                The new values take effect in the policy's next round (within a second) and are kept in \
                the settings file (settings_file in host.toml, default /var/lib/ballonet/vm-settings.json), \
                where they override host.toml's values for the VM. `ballonetctl explain VM` shows the effect.
                """)

        @OptionGroup var socket: SocketOption
        @Argument(help: "The VM's name, as `status` shows it.") var vm: String
        @Option(name: .long, help: ArgumentHelp("Its shares (relative weight; default 10 per MiB of max).", valueName: "n")) var shares: UInt64?
        @Option(name: .long, help: ArgumentHelp("The least memory the policy leaves it, MiB.", valueName: "MiB")) var min: UInt64?
        @Option(name: .long, help: ArgumentHelp("The most it may hold, MiB (at most its RAM).", valueName: "MiB")) var max: UInt64?

        func validate() throws {
            guard shares != nil || min != nil || max != nil else { throw ValidationError("give at least one of --shares, --min, --max") }
        }

        func run() throws {
            let status = try ControlCommand.ask(ControlRequest(command: "set", vm: vm, shares: shares, minMiB: min, maxMiB: max),
                                                socket: socket.socket)
            if let account = status.vms.first(where: { $0.name == vm }) {
                func mib(_ bytes: UInt64?) -> String { bytes.map { "\($0 >> 20) MiB" } ?? "-" }
                print("\(vm): shares \(account.shares.map(String.init) ?? "-"), min \(mib(account.minBytes)), max \(mib(account.maxBytes)); target \(mib(account.targetBytes)) (\(account.targetReason))")
            }
        }
    }

    struct SetTarget: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-target",
            abstract: "Set a VM's resident-memory target in MiB (until the agent restarts), or --clear it.")

        @OptionGroup var socket: SocketOption
        @Argument(help: "The VM's name, as `status` shows it.") var vm: String
        @Argument(help: "Target in MiB (the balloon becomes RAM − target).") var mib: UInt64?
        @Flag(name: .long, help: "Drop the commanded target: back to the config and budget.") var clear = false

        func validate() throws {
            guard (mib == nil) == clear else { throw ValidationError("give a target in MiB or --clear, not both or neither") }
        }

        func run() throws {
            let status = try ControlCommand.ask(ControlRequest(command: "set-target", vm: vm, mib: mib), socket: socket.socket)
            if let account = status.vms.first(where: { $0.name == vm }) {
                print("\(vm): target \(account.targetBytes >> 20) MiB (\(account.targetReason)); balloon now \(account.balloonBytes >> 20) MiB")
            }
        }
    }
}

/// What `ballonetctl explain` prints.
public enum ExplanationText {
    public static func render(vm: String, _ e: MemoryPolicy.Explanation) -> String {
        func mib(_ bytes: UInt64?) -> String { bytes.map { "\($0 >> 20) MiB" } ?? "none yet" }
        let lines = [
            "\(vm): \(e.summary)",
            "  rule          \(e.bound.rawValue)",
            "  target        \(mib(e.targetBytes))" + (e.previousTargetBytes.map { " (was \($0 >> 20) MiB)" } ?? ""),
            "  goal          \(mib(e.goalBytes))   (before the change limit)",
            "  allocation    \(mib(e.allocationBytes))   (its share of memory for VMs)",
            "  demand        \(mib(e.demandBytes))   (working set + buffer within [min, max]; max when not trimming)",
            "  min / max     \(mib(e.minBytes)) / \(mib(e.maxBytes))",
            "  shares S      \(e.shares)",
            "  working set   \(mib(e.workingSetBytes))",
            "  unreclaimable \(mib(e.unreclaimableBytes))   (what its guest uses and cannot page out: trimming's floor)",
            "  active f      \(MemoryPolicy.format(e.activeFraction, 3))",
            "  ρ             \(MemoryPolicy.format(e.sharesPerMiB, 3)) shares per MiB",
            "  idle tax τ    \(MemoryPolicy.format(e.idleTaxRate, 2))  (k = \(MemoryPolicy.format(e.idleCost, 2)): an idle page costs k active ones)",
            "  host state    \(e.state.rawValue)",
        ]
        return lines.joined(separator: "\n") + "\n"
    }
}

/// The table `ballonetctl status` prints, and `make demo` shows every second.
public enum StatusTable {
    public static func render(_ status: HostStatus) -> String {
        func mib(_ bytes: UInt64?) -> String { bytes.map { "\($0 >> 20)" } ?? "-" }
        var rows: [[String]] = [["VM", "TARGET", "BALLOON", "RESIDENT", "SWAPPED", "LIMIT", "WSET", "MIN", "MAX", "SHARES", "RECLAIMED",
                                 "SHARED", "METHOD", "AGENT", "STATE"]]
        for vm in status.vms {
            rows.append([vm.name, mib(vm.targetBytes), mib(vm.balloonBytes), mib(vm.residentBytes), mib(vm.swappedBytes), mib(vm.swapLimitBytes),
                         mib(vm.workingSetEstimateBytes), mib(vm.minBytes), mib(vm.maxBytes), vm.shares.map(String.init) ?? "-",
                         mib(vm.reclaimedBytes), mib(vm.sharingSavedBytes), vm.reclaimMethod.isEmpty ? "-" : vm.reclaimMethod, vm.agentVersion ?? "-",
                         vm.paused ? "paused by the host (low memory); " + vm.state : vm.state])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        var text = ""
        if let state = status.state {
            let actions = status.actions ?? []
            text += "host \(state)"
                + (status.freePercent.map { ": free \(MemoryPolicy.format($0, 1)) %" } ?? "")
                + (actions.isEmpty ? " (nothing reclaimed beyond trimming)" : " (" + actions.joined(separator: ", ") + ")")
                + (status.memoryForVMsBytes.map { "; \($0 >> 20) MiB for VMs" } ?? "")
                + (status.idleTaxRate.map { ", idle tax \(MemoryPolicy.format($0, 2))" } ?? "") + "\n"
        }
        if let warning = status.warning { text += "warning: \(warning)\n" }
        for row in rows {
            let cells = row.enumerated().map { index, cell in
                let pad = String(repeating: " ", count: widths[index] - cell.count)
                return index == 0 || index >= 12 ? cell + pad : pad + cell
            }
            text += cells.joined(separator: "  ").trimmingCharacters(in: .whitespaces) + "\n"
        }
        let resident = status.vms.reduce(0) { $0 + $1.residentBytes }
        let memory = status.vms.reduce(0) { $0 + $1.memoryBytes }
        let reclaimed = status.vms.reduce(0) { $0 + $1.reclaimedBytes }
        text += "sizes in MiB; the VMs have \(memory >> 20) MiB of RAM, \(resident >> 20) MiB of it resident on the host"
            + (status.budgetBytes.map { " (budget \($0 >> 20) MiB)" } ?? "") + "; \(reclaimed >> 20) MiB reclaimed so far"
            + (status.swapTotalBytes.map { total in "; host swap \((status.swapFreeBytes ?? 0) >> 20) of \(total >> 20) MiB free" } ?? "")
            + "; LIMIT: hypervisor-swap limit; SHARED: what page sharing saves the host\n"
        if let sharing = status.sharing {
            let running = sharing.running
                ? "ksmd scanning (" + (sharing.rateMode == "advisor"
                    ? "scan-time advisor, at most \(sharing.advisorMaxCPUPercent.map(String.init) ?? "?") % of a core"
                    : "\(sharing.pagesToScan) pages every \(sharing.sleepMillis) ms") + ")"
                : "ksmd stopped"
            let cpu = sharing.ksmdCPUPercent.map { ", using \(MemoryPolicy.format($0, 1)) % of a core" } ?? ""
            text += "sharing: \(running)\(cpu); saves \(sharing.savedBytes >> 20) MiB (\(sharing.sharingPages) pages merged into \(sharing.sharedPages), "
                + "\(sharing.zeroPages.map(String.init) ?? "-") into the zero page)"
                + (status.sharingCreditBytes.map { ", \($0 >> 20) MiB of it counted for VMs" } ?? "") + "; \(sharing.reason)\n"
        }
        for vm in status.vms {
            guard let mode = vm.memoryMode else { continue }
            text += "  \(vm.name): \(mode)" + (vm.sharing.map { "; sharing \($0)" } ?? "") + "\n"
        }
        return text
    }
}
