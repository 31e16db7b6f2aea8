import BallonetConfig
import BallonetLinux
import BallonetPolicy

/// One VM the host agent manages: either a QEMU it starts itself from `launch`, or a running QEMU it
/// attaches to through its QMP and port sockets.
public struct VMConfiguration: Equatable, Sendable {
    public enum RAMBacking: String, Equatable, Sendable {
        /// `memory-backend-memfd,share=on`: balloon pages are reclaimed by punching holes (immediate).
        case memfd
        /// `memory-backend-ram`: anonymous memory, reclaimed by pageout (needs host swap), mergeable by KSM.
        case anonymous
    }

    /// How to start a QEMU for this VM (managed VMs).
    public struct Launch: Equatable, Sendable {
        public var memoryMiB: UInt64 = 512
        public var cpus: UInt64 = 1
        /// Direct kernel boot (the guest test image), or
        public var kernel = ""
        public var initrd = ""
        public var append = ""
        /// a disk image to boot from (virtio-blk, format from the file: qcow2 or raw).
        public var disk = ""
        public var ramBacking: RAMBacking = .memfd
        /// Extra QEMU arguments, split on spaces (devices a guest needs beyond the defaults).
        public var extraArguments = ""
        /// The QEMU binary.
        public var qemu = "qemu-system-x86_64"
        /// QEMU accelerators in order of preference: KVM, and TCG where KVM is missing. A host whose KVM
        /// initialises but cannot run the guest (nested setups like this project's test machines) sets ["tcg"].
        public var accelerators = ["kvm", "tcg"]
    }

    public var name: String
    /// nil: attach to `qmpSocket` and `portSocket` instead of starting QEMU.
    public var launch: Launch?
    /// Attached VMs: QEMU's QMP socket and the host end of its `org.ballonet.0` port (a chardev socket
    /// QEMU listens on). Managed VMs get both in the state directory.
    public var qmpSocket = ""
    public var portSocket = ""
    /// The VM's resident memory target in MiB; nil leaves it to the host budget (or to all its RAM).
    public var targetMiB: UInt64?
    /// The least memory the policy may leave the VM, MiB.
    public var minMiB: UInt64 = 128
    /// The most it may hold, MiB; nil: all its RAM.
    public var maxMiB: UInt64?
    /// Its shares; nil: 10 per MiB of its max (as vSphere's "normal"), so VMs of different sizes with
    /// default shares lose the same fraction of their memory under pressure, not the same amount.
    public var shares: UInt64?
    /// How the host may swap this VM when ballooning cannot deliver (`SwapMode`).
    public var swap: SwapMode = .auto
    /// Page sharing (KSM) for a VM the agent starts: QEMU's mem-merge. nil: `[sharing] default`. Only
    /// anonymous RAM can be merged; attached QEMUs and libvirt domains decide for themselves.
    public var sharing: Bool?

    /// The shares the policy uses for a VM whose max is `maxBytes`.
    public func effectiveShares(maxBytes: UInt64) -> UInt64 { shares ?? max(1, (maxBytes >> 20) * 10) }

    public init(name: String) { self.name = name }
}

/// The host agent's settings: defaults, then /etc/ballonet/host.toml, then flags. The defaults run a
/// host agent with no VMs of its own, waiting for `--attach`; packaging/host.toml is the commented file.
public struct HostConfiguration: Equatable, Sendable {
    public static let defaultPath = "/etc/ballonet/host.toml"

    /// Sockets, logs and pid files of managed VMs, and the default control socket.
    public var stateDirectory = "/run/ballonet"
    /// The control socket `ballonetctl` talks to; empty: `<stateDirectory>/control.sock`.
    public var controlSocket = ""
    /// Where `ballonetctl set` keeps per-VM shares, min and max across restarts.
    public var settingsFile = VMSettingsFile.defaultPath
    /// Prometheus metrics at http://ADDRESS/metrics; empty: none. Loopback only: the metrics carry no
    /// authentication. 9848: unassigned in Prometheus's port allocation list, next to other exporters.
    public var metricsAddress = "127.0.0.1:9848"
    /// Memory for all VMs together, MiB; 0: no budget: host RAM less `reserveMiB` and the VMs' overheads.
    /// With a budget, the free-memory states are measured against it (budget − what the VMs hold).
    public var budgetMiB: UInt64 = 0
    /// Host memory kept for the host itself (systemd, libvirtd, the page cache a host needs), MiB.
    /// 1 GiB: what a Debian host running only VMs keeps in use, with room for bursts.
    public var reserveMiB: UInt64 = 1024
    /// QEMU's memory beside guest RAM, per VM, MiB: 64 MiB covers device models, page tables and I/O
    /// buffers of a KVM guest (ESX reserved 32 MB per VM in 2002; QEMU's are larger). Admission control and M
    /// count it.
    public var vmOverheadMiB: UInt64 = 64
    /// Admission control requires host swap to cover each started VM's max − min (ESX's rule: every VM
    /// can be given its max by swapping when ballooning cannot).
    public var requireSwap = true
    public var policy = PolicyParameters()
    /// Stop the QEMUs this agent started when it exits. Off by default: like libvirt's domains outlive
    /// libvirtd, VMs outlive their host agent, and a restarted agent attaches to them again.
    public var stopVMsOnExit = false
    public var logLevel = "info"
    public var steering = BalloonSteering.Settings()
    /// The host's idle page sampler (`IdlePageSampler`): its period, or 0 for none. 5 s: the guest agent's
    /// default sample period too, long enough that a working set re-touched every few seconds shows whole,
    /// short enough that the estimate follows a rise within seconds.
    public var samplingPeriodMillis: UInt64 = 5_000
    public var vms: [VMConfiguration] = []
    /// libvirt's domains are managed too when this URI is set (empty: libvirt is not used). qemu:///system is
    /// the libvirtd every Debian host with `libvirt-daemon-system` runs; a host without it costs one failed
    /// connect per 30 s.
    public var libvirtURI = "qemu:///system"
    public var sharing = SharingSettings()

    public init() {}

    public var effectiveControlSocket: String {
        controlSocket.isEmpty ? stateDirectory + "/control.sock" : controlSocket
    }
}

/// `[sharing]`: the KSM controller and the per-VM default.
public struct SharingSettings: Equatable, Sendable {
    /// The agent steers ksmd (on, off, how hard). Off: KSM is left as it is (to ksmtuned, or to nobody),
    /// and the agent only reports what it saves.
    public var steerKSM = true
    /// Sharing for VMs the agent starts that do not say: off. Cross-VM sharing lets one guest learn
    /// whether another holds a page of known content (docs/SHARING.md), so it is for VMs that trust
    /// each other, and an operator turns it on.
    public var defaultOn = false
    public var policy = SharingPolicy.Settings()
    public init() {}
}

/// The bounds on what host.toml may say, each with its reason.
public enum HostConfigurationLimits {
    /// A host configuration is a few hundred lines even with many VMs; refusing more than 1 MiB keeps a
    /// wrong path (a disk image) from being read into memory.
    public static let maximumFileBytes = 1 << 20
    /// A VM name becomes a directory, a log field and a QEMU -name: letters, digits, '-', '_', '.', at
    /// most 64 bytes (libvirt allows more, but no operator types more in a status table).
    public static let maximumNameBytes = 64
    /// QEMU's -m takes up to its maximum RAM; 16 TiB covers any host of today.
    public static let memoryMiB: ClosedRange<UInt64> = 64...(16 << 20)
    /// QEMU's maximum vCPUs for the pc machine.
    public static let cpus: ClosedRange<UInt64> = 1...255
    /// Inflate steps of 1 MiB (slow but steady) to 64 GiB (one step for any guest).
    public static let inflateStepMiB: ClosedRange<UInt64> = 1...65_536
    /// Up to an hour of backoff after guest pressure.
    public static let backoffSeconds: ClosedRange<UInt64> = 0...3600
    /// A budget up to 2^40 MiB (1 EiB): any host of today, and its bytes (2^60) fit every signed sum.
    public static let budgetMiB: ClosedRange<UInt64> = 0...(UInt64(1) << 40)
    /// Shares are relative; 1 to 10^9 leaves room for 10 per MiB of a 16 TiB VM and keeps every sum of
    /// shares exact in the policy's arithmetic.
    public static let shares: ClosedRange<UInt64> = 1...1_000_000_000
    /// sun_path holds 108 bytes with its NUL.
    public static let maximumSocketPathBytes = 107
}

extension HostConfiguration {
    public static let knownKeys: [(table: String, keys: [String])] = [
        ("host", ["state_directory", "control_socket", "settings_file", "metrics_address", "budget_mib", "reserve_mib", "vm_overhead_mib", "require_swap",
                  "stop_vms_on_exit", "log_level"]),
        ("steering", ["inflate_step_mib", "deadband_mib", "pressure_backoff_seconds"]),
        ("sampling", ["period_seconds"]),
        ("libvirt", ["uri"]),
        ("sharing", ["steer_ksm", "default", "max_cpu_percent", "recheck_minutes"]),
        ("policy", PolicyTable.keys),
        ("vm", ["name", "memory_mib", "cpus", "kernel", "initrd", "append", "disk", "ram_backing", "extra_arguments",
                "qemu", "accelerator", "qmp_socket", "port_socket", "target_mib", "min_mib", "max_mib", "shares", "swap", "sharing"]),
    ]

    /// Reads `path` (nil: the default path, where a missing file means the defaults).
    public static func load(path: String?) throws(ConfigurationError) -> HostConfiguration {
        let filePath = path ?? defaultPath
        let bytes: [UInt8]
        do {
            bytes = try FileSystem.readFile(filePath, maxBytes: HostConfigurationLimits.maximumFileBytes + 1)
        } catch {
            if error.errno == .ENOENT && path == nil { return HostConfiguration() }
            if error.errno == .EFBIG {
                throw ConfigurationError(path: filePath, line: 0, kind: .tooLarge,
                                         message: "larger than \(HostConfigurationLimits.maximumFileBytes) bytes; is this the right file?")
            }
            throw ConfigurationError(path: filePath, line: 0, kind: error.errno == .ENOENT ? .missingFile : .unreadable,
                                     message: "cannot read: \(error)")
        }
        guard bytes.count <= HostConfigurationLimits.maximumFileBytes else {
            throw ConfigurationError(path: filePath, line: 0, kind: .tooLarge,
                                     message: "larger than \(HostConfigurationLimits.maximumFileBytes) bytes; is this the right file?")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigurationError(path: filePath, line: 0, kind: .notUTF8, message: "not UTF-8 text")
        }
        return try parse(text, path: filePath)
    }

    public static func parse(_ text: String, path: String) throws(ConfigurationError) -> HostConfiguration {
        let document = try TOMLSubset.parse(text, path: path)
        let tableList = knownKeys.map { $0.table == "vm" ? "[[vm]]" : "[\($0.table)]" }.joined(separator: ", ")
        if let stray = document.rootEntries.first {
            throw ConfigurationError(path: path, line: stray.line, kind: .keyOutsideTable,
                                     message: "key \"\(stray.key)\" comes before any table; tables: \(tableList)")
        }
        var configuration = HostConfiguration()
        for table in document.tables {
            guard let known = knownKeys.first(where: { $0.table == table.name }) else {
                throw ConfigurationError(path: path, line: table.line, kind: .unknownTable,
                                         message: "unknown table [\(table.name)]; known tables: \(tableList)")
            }
            guard table.isArrayElement == (table.name == "vm") else {
                let message = table.name == "vm" ? "write each VM as [[vm]] (one per VM)" : "write [\(table.name)] once, not as [[\(table.name)]]"
                throw ConfigurationError(path: path, line: table.line, kind: .unknownTable, message: message)
            }
            let reader = TOMLTableReader(path: path, table: table)
            for entry in table.entries where !known.keys.contains(entry.key) {
                throw ConfigurationError(path: path, line: entry.line, kind: .unknownKey,
                                         message: "unknown key \"\(entry.key)\" in [\(table.name)]; known keys: \(known.keys.joined(separator: ", "))")
            }
            switch table.name {
            case "host":
                if let value = try reader.string("state_directory") { configuration.stateDirectory = value }
                if let value = try reader.string("control_socket") { configuration.controlSocket = value }
                if let value = try reader.string("settings_file") { configuration.settingsFile = value }
                if let value = try reader.string("metrics_address") { configuration.metricsAddress = value }
                if let value = try reader.integer("budget_mib", in: HostConfigurationLimits.budgetMiB) { configuration.budgetMiB = value }
                if let value = try reader.integer("reserve_mib", in: 0...(UInt64(1) << 40)) { configuration.reserveMiB = value }
                if let value = try reader.integer("vm_overhead_mib", in: 0...65_536) { configuration.vmOverheadMiB = value }
                if let value = try reader.boolean("require_swap") { configuration.requireSwap = value }
                if let value = try reader.boolean("stop_vms_on_exit") { configuration.stopVMsOnExit = value }
                if let value = try reader.string("log_level") {
                    guard HostLogLevel(rawValue: value) != nil else {
                        throw reader.outOfRange("log_level", "one of \(HostLogLevel.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                    configuration.logLevel = value
                }
            case "steering":
                if let value = try reader.integer("inflate_step_mib", in: HostConfigurationLimits.inflateStepMiB) {
                    configuration.steering.inflateStepPages = value * 256
                }
                if let value = try reader.integer("deadband_mib", in: 0...1024) { configuration.steering.deadbandPages = value * 256 }
                if let value = try reader.integer("pressure_backoff_seconds", in: HostConfigurationLimits.backoffSeconds) {
                    configuration.steering.pressureBackoffMillis = value * 1000
                }
            case "sampling":
                // 0 turns the sampler off; 1 s is the engine's round (it cannot sample faster), 60 s ESX's period.
                if let value = try reader.integer("period_seconds", in: 0...60) { configuration.samplingPeriodMillis = value * 1000 }
            case "libvirt":
                if let value = try reader.string("uri") {
                    // A libvirt URI is a short scheme://host/path?params; 1 KiB bounds a mistake.
                    guard value.utf8.count <= 1024, !value.contains(where: { $0.isWhitespace }) else {
                        throw ConfigurationError(path: path, line: table.line, kind: .outOfRange,
                                                 message: "uri must be a libvirt URI such as qemu:///system (or \"\" for none)")
                    }
                    configuration.libvirtURI = value
                }
            case "sharing":
                if let value = try reader.boolean("steer_ksm") { configuration.sharing.steerKSM = value }
                if let value = try reader.boolean("default") { configuration.sharing.defaultOn = value }
                // 1 % to 100 % of one core: ksmd is one kernel thread.
                if let value = try reader.integer("max_cpu_percent", in: 1...100) { configuration.sharing.policy.maxCPUPercent = Double(value) }
                // Up to a day between looks on a calm host.
                if let value = try reader.integer("recheck_minutes", in: 1...1440) { configuration.sharing.policy.recheckMillis = value * 60_000 }
            case "policy":
                try PolicyTable.read(table, path: path, into: &configuration.policy)
            default:
                configuration.vms.append(try reader.vm(existing: configuration.vms))
            }
        }
        try configuration.validate(path: path)
        return configuration
    }

    /// Checks what no single key can: socket path lengths. (Whether the VMs' mins fit is admission
    /// control's question, asked per VM as the agent starts it: `AdmissionLedger`.)
    public func validate(path: String) throws(ConfigurationError) {
        for vm in vms where vm.launch != nil {
            let socket = stateDirectory + "/" + vm.name + "/qmp.sock"
            guard socket.utf8.count <= HostConfigurationLimits.maximumSocketPathBytes else {
                throw ConfigurationError(path: path, line: 0, kind: .outOfRange,
                                         message: "state_directory \(stateDirectory) is too long for VM \(vm.name)'s sockets (\(socket.utf8.count) > 107 bytes)")
            }
        }
    }
}

/// swift-log levels by the names the configuration and --log-level take.
public enum HostLogLevel: String, CaseIterable, Sendable {
    case trace, debug, info, notice, warning, error, critical
}

/// The `[[vm]]` table of host.toml.
private extension TOMLTableReader {
    func vm(existing: [VMConfiguration]) throws(ConfigurationError) -> VMConfiguration {
        guard let name = try string("name") else {
            throw ConfigurationError(path: path, line: table.line, kind: .outOfRange, message: "a [[vm]] needs a name")
        }
        guard Self.isPlainName(name, maximumBytes: HostConfigurationLimits.maximumNameBytes) else {
            throw outOfRange("name", "1–64 letters, digits, '-', '_' or '.' (not starting with '.')")
        }
        if existing.contains(where: { $0.name == name }) {
            throw ConfigurationError(path: path, line: table.line, kind: .duplicateTable, message: "two VMs are named \(name)")
        }
        var vm = VMConfiguration(name: name)
        vm.qmpSocket = try string("qmp_socket") ?? ""
        vm.portSocket = try string("port_socket") ?? ""
        vm.targetMiB = try integer("target_mib", in: 0...HostConfigurationLimits.memoryMiB.upperBound)
        if let minimum = try integer("min_mib", in: 0...HostConfigurationLimits.memoryMiB.upperBound) { vm.minMiB = minimum }
        vm.maxMiB = try integer("max_mib", in: HostConfigurationLimits.memoryMiB)
        vm.shares = try integer("shares", in: HostConfigurationLimits.shares)
        if let value = try string("swap") {
            guard let mode = SwapMode(rawValue: value) else {
                throw outOfRange("swap", SwapMode.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", "))
            }
            vm.swap = mode
        }
        if let maximum = vm.maxMiB, vm.minMiB > maximum { throw outOfRange("min_mib", "at most max_mib (\(maximum))") }
        vm.sharing = try boolean("sharing")
        let attaching = !vm.qmpSocket.isEmpty || !vm.portSocket.isEmpty
        let launchKeys = ["memory_mib", "cpus", "kernel", "initrd", "append", "disk", "ram_backing", "extra_arguments", "qemu",
                          "accelerator", "sharing"]
        if attaching {
            guard !vm.qmpSocket.isEmpty, !vm.portSocket.isEmpty else {
                throw ConfigurationError(path: path, line: table.line, kind: .outOfRange,
                                         message: "VM \(name): attaching needs both qmp_socket and port_socket")
            }
            if let stray = launchKeys.first(where: { entry($0) != nil }) {
                throw ConfigurationError(path: path, line: entry(stray)!.line, kind: .outOfRange,
                                         message: "VM \(name) attaches to a running QEMU (qmp_socket); \"\(stray)\" is only for VMs the agent starts")
            }
            return vm
        }
        var launch = VMConfiguration.Launch()
        if let value = try integer("memory_mib", in: HostConfigurationLimits.memoryMiB) { launch.memoryMiB = value }
        if let value = try integer("cpus", in: HostConfigurationLimits.cpus) { launch.cpus = value }
        launch.kernel = try string("kernel") ?? ""
        launch.initrd = try string("initrd") ?? ""
        launch.append = try string("append") ?? ""
        launch.disk = try string("disk") ?? ""
        launch.extraArguments = try string("extra_arguments") ?? ""
        if let value = try string("qemu") { launch.qemu = value }
        if let value = try string("accelerator") {
            let names = value.split(separator: ",").map(String.init)
            guard !names.isEmpty, names.allSatisfy({ ["kvm", "tcg"].contains($0) }) else {
                throw outOfRange("accelerator", "\"kvm\", \"tcg\" or \"kvm,tcg\" (first that works)")
            }
            launch.accelerators = names
        }
        if let value = try string("ram_backing") {
            guard let backing = VMConfiguration.RAMBacking(rawValue: value) else { throw outOfRange("ram_backing", "\"memfd\" or \"anonymous\"") }
            launch.ramBacking = backing
        }
        guard launch.kernel.isEmpty != launch.disk.isEmpty else {
            throw ConfigurationError(path: path, line: table.line, kind: .outOfRange,
                                     message: "VM \(name) needs either kernel (with initrd) or disk, or qmp_socket and port_socket to attach")
        }
        if vm.sharing == true && launch.ramBacking == .memfd {
            throw outOfRange("sharing", "false with ram_backing = \"memfd\": KSM merges only anonymous RAM (set ram_backing = \"anonymous\")")
        }
        if let target = vm.targetMiB, target > launch.memoryMiB {
            throw outOfRange("target_mib", "at most memory_mib (\(launch.memoryMiB))")
        }
        if let maximum = vm.maxMiB, maximum > launch.memoryMiB { throw outOfRange("max_mib", "at most memory_mib (\(launch.memoryMiB))") }
        if entry("min_mib") != nil, vm.minMiB > launch.memoryMiB { throw outOfRange("min_mib", "at most memory_mib (\(launch.memoryMiB))") }
        vm.launch = launch
        return vm
    }
}
