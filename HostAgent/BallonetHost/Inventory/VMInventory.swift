import BallonetLinux
import BallonetPolicy
import Foundation
import Logging

/// Why the inventory could not start or find a VM.
public struct InventoryError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Where a VM's QEMU can be reached: what the engine needs, whichever source found the VM.
public struct VMEndpoint: Sendable {
    public var name: String
    /// QEMU's monitor: its QMP socket, or libvirtd's pass-through for a domain libvirt runs.
    public var monitor: MonitorAccess
    /// The host end of the VM's `org.ballonet.0` port: a chardev socket QEMU (or libvirtd for it) listens on.
    /// nil: the VM has no such port, and is driven through its virtio balloon (`virtioBalloon`), if any.
    public var portSocket: String?
    /// The agent started this QEMU (and may stop it on exit).
    public var managed: Bool
    /// A domain without ballonet-guest's port but with a virtio balloon: libvirt's balloon is the fallback.
    public var virtioBalloon: LibvirtDomainAccess?
    /// A libvirt domain: hypervisor swapping sets its memory tunables through libvirt.
    public var memoryTunables: LibvirtDomainAccess?
    /// Per-VM settings the source carries (a libvirt domain's Ballonet metadata).
    public var metadata: BallonetDomainMetadata?
    /// Where the VM came from, for logs and status: "host.toml" or "libvirt <uri>".
    public var source: String
    /// Whether its source lets KSM merge its RAM, and who decided; nil: unknown (an attached QEMU, whose
    /// command line decided: smaps shows it).
    public var sharing: SharingChoice?

    public init(name: String, monitor: MonitorAccess, portSocket: String?, managed: Bool, virtioBalloon: LibvirtDomainAccess? = nil,
                memoryTunables: LibvirtDomainAccess? = nil, metadata: BallonetDomainMetadata? = nil, source: String = "host.toml") {
        self.name = name
        self.monitor = monitor
        self.portSocket = portSocket
        self.managed = managed
        self.virtioBalloon = virtioBalloon
        self.memoryTunables = memoryTunables
        self.metadata = metadata
        self.source = source
    }
}

/// Whether a VM's guest RAM may be merged by KSM, and what decided it.
public struct SharingChoice: Equatable, Sendable {
    public var on: Bool
    /// "host.toml sharing = true", "[sharing] default", "libvirt <nosharepages/>", ...
    public var decidedBy: String
    public init(on: Bool, decidedBy: String) {
        self.on = on
        self.decidedBy = decidedBy
    }
}

/// How the engine reaches a VM's QEMU monitor.
public enum MonitorAccess: Sendable {
    /// QEMU's own QMP socket (QEMUs from host.toml).
    case qmpSocket(String)
    /// libvirtd owns the monitor of its domains; commands go through virDomainQemuMonitorCommand.
    case libvirt(LibvirtDomainAccess)

    /// A monitor to talk to now (each use opens its own: QMP sockets take one client at a time).
    func open(timeout: Duration) throws -> QEMUMonitor {
        switch self {
        case .qmpSocket(let path): try QMPClient(path: path, timeout: timeout)
        case .libvirt(let domain): LibvirtMonitor(domain: domain)
        }
    }
}

/// What the engine asks of a QEMU monitor, whichever way it is reached.
protocol QEMUMonitor {
    /// A QMP command; returns its `return` value.
    @discardableResult
    func execute(_ command: String, arguments: [String: Any]?) throws -> Any
    /// An HMP command's text (`info mtree -f`, `gpa2hva`).
    func humanMonitor(_ commandLine: String) throws -> String
    /// QEMU's pid.
    func processID() throws -> Int32
    /// Stops and resumes the vCPUs (the low state's pause).
    func pause() throws
    func resume() throws
}

extension QEMUMonitor {
    @discardableResult
    func execute(_ command: String) throws -> Any { try execute(command, arguments: nil) }
}

extension QMPClient: QEMUMonitor {
    @discardableResult
    func execute(_ command: String, arguments: [String: Any]?) throws -> Any { try execute(command, arguments: arguments, timeout: QMPLimits.replyTimeout) }
    func processID() throws -> Int32 { try peerProcessID() }
    func pause() throws { try execute("stop") }
    func resume() throws { try execute("cont") }
}

/// A change in what an inventory knows, after startup.
public enum InventoryChange {
    /// A VM to manage from now on (a domain that started, or one found after libvirtd came back).
    case appeared(VMEndpoint)
    /// A VM that is gone (stopped, crashed, migrated away), with what happened, as a sentence.
    case disappeared(name: String, reason: String)
    /// The VM's per-VM settings changed at their source (`virsh metadata`).
    case settingsChanged(name: String, metadata: BallonetDomainMetadata)
}

/// The seam between the engine and whatever knows the VMs: QEMU processes from host.toml, libvirt's
/// domains. A source turns its VMs into endpoints; QEMU, QMP and libvirt details stay behind it.
public protocol VMInventory: AnyObject {
    /// The VMs to manage now, starting any that the source starts itself.
    func endpoints(logger: Logger) throws -> [VMEndpoint]
    /// What changed since the last call; the engine calls it every turn of its loop, so it must be cheap
    /// when nothing happened.
    func changes(nowMillis: UInt64, logger: Logger) -> [InventoryChange]
    /// How the inventory wakes the engine's loop when something happens between turns (an event thread).
    func setWake(_ wake: @escaping @Sendable () -> Void)
    /// The agent is exiting.
    func shutdown(logger: Logger)
    /// VMs the source would not start, with the reason (admission control's refusal).
    var refused: [(name: String, reason: String)] { get }
}

extension VMInventory {
    public func changes(nowMillis: UInt64, logger: Logger) -> [InventoryChange] { [] }
    public func setWake(_ wake: @escaping @Sendable () -> Void) {}
}

/// VMs from host.toml: QEMUs this agent starts (`[[vm]]` with kernel or disk) and running QEMUs it
/// attaches to (`[[vm]]` with qmp_socket and port_socket).
///
/// A started QEMU is daemonized with a pid file in `<state directory>/<vm>/`, so it outlives the agent;
/// a restarted agent finds it there, alive and answering QMP, and attaches instead of starting another.
public final class QEMUInventory: VMInventory {
    public let configuration: HostConfiguration
    private var started: [String] = []
    /// Where the memory controller is (read from mountinfo once, when a VM first needs it).
    private lazy var memoryCgroups = MemoryCgroup.hierarchy()
    public private(set) var refused: [(name: String, reason: String)] = []

    public init(configuration: HostConfiguration) { self.configuration = configuration }

    public func directory(of vm: VMConfiguration) -> String { configuration.stateDirectory + "/" + vm.name }

    public func endpoints(logger: Logger) throws -> [VMEndpoint] {
        try FileSystem.makeDirectory(configuration.stateDirectory, permissions: 0o755, orExisting: true)
        var result: [VMEndpoint] = []
        let meminfo = try? ProcFiles.meminfo()
        var reservations = AdmissionLedger(configuration: configuration, meminfo: meminfo)
        // VMs that run already (attached, or started by an earlier agent) hold their reservations first.
        var toStart: [(VMConfiguration, VMConfiguration.Launch)] = []
        for vm in configuration.vms {
            guard let launch = vm.launch else {
                result.append(VMEndpoint(name: vm.name, monitor: .qmpSocket(vm.qmpSocket), portSocket: vm.portSocket, managed: false))
                reservations.add(vm, memoryMiB: nil)
                continue
            }
            let directory = directory(of: vm)
            var endpoint = VMEndpoint(name: vm.name, monitor: .qmpSocket(directory + "/qmp.sock"), portSocket: directory + "/ballonet.sock",
                                      managed: true)
            endpoint.sharing = sharingChoice(vm, launch: launch)
            if let pid = runningProcessID(directory: directory), (try? QMPClient(path: directory + "/qmp.sock", timeout: .seconds(2))) != nil {
                logger.notice("QEMU of \(vm.name) is already running (pid \(pid)); attaching to it", metadata: ["vm": "\(vm.name)"])
                reservations.add(vm, memoryMiB: launch.memoryMiB)
                result.append(endpoint)
            } else {
                toStart.append((vm, launch))
            }
        }
        for (vm, launch) in toStart {
            let decision = reservations.decide(vm, memoryMiB: launch.memoryMiB)
            guard decision.isAdmitted else {
                logger.error("\(decision.message)", metadata: ["vm": "\(vm.name)"])
                refused.append((vm.name, decision.message))
                continue
            }
            logger.info("\(decision.message)", metadata: ["vm": "\(vm.name)"])
            let directory = directory(of: vm)
            try start(vm, launch: launch, directory: directory, logger: logger)
            started.append(vm.name)
            reservations.add(vm, memoryMiB: launch.memoryMiB)
            var endpoint = VMEndpoint(name: vm.name, monitor: .qmpSocket(directory + "/qmp.sock"), portSocket: directory + "/ballonet.sock", managed: true)
            endpoint.sharing = sharingChoice(vm, launch: launch)
            result.append(endpoint)
        }
        return result
    }

    /// What decides sharing for a VM this agent starts.
    func sharingChoice(_ vm: VMConfiguration, launch: VMConfiguration.Launch) -> SharingChoice {
        if launch.ramBacking == .memfd { return SharingChoice(on: false, decidedBy: "memfd RAM, which KSM cannot merge") }
        if let sharing = vm.sharing { return SharingChoice(on: sharing, decidedBy: "host.toml sharing = \(sharing)") }
        return SharingChoice(on: configuration.sharing.defaultOn, decidedBy: "[sharing] default = \(configuration.sharing.defaultOn)")
    }

    private func runningProcessID(directory: String) -> Int32? {
        guard let bytes = try? FileSystem.readFile(directory + "/qemu.pid", maxBytes: 64),
              let pid = Int32(String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
              ProcessControl.exists(pid) else { return nil }
        return pid
    }

    /// The QEMU command line for a managed VM: memfd or anonymous RAM as Ballonet's reclaim wants it, the
    /// `org.ballonet.0` port on a socket, QMP on a socket, the serial console to a file, daemonized.
    /// `sharing`: QEMU's mem-merge (`sharingChoice`); QEMU's own default is on, Ballonet's off (docs/SHARING.md).
    public static func arguments(for vm: VMConfiguration, launch: VMConfiguration.Launch, directory: String, sharing: Bool = false) -> [String] {
        let merge = launch.ramBacking == .anonymous && sharing
        let backend = switch launch.ramBacking {
        case .memfd: "memory-backend-memfd,id=ram0,size=\(launch.memoryMiB)M,share=on"
        case .anonymous: "memory-backend-ram,id=ram0,size=\(launch.memoryMiB)M,merge=\(merge ? "on" : "off")"
        }
        var arguments = [
            "-name", vm.name,
            "-machine", "pc,memory-backend=ram0,mem-merge=\(merge ? "on" : "off")",
            "-object", backend,
            "-m", "\(launch.memoryMiB)M",
            "-smp", "\(launch.cpus)",
            "-nodefaults", "-no-user-config",
            "-display", "none",
            "-chardev", "socket,id=qmp0,path=\(directory)/qmp.sock,server=on,wait=off",
            "-mon", "chardev=qmp0,mode=control",
            "-chardev", "file,id=console0,path=\(directory)/console.log",
            "-serial", "chardev:console0",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", "socket,id=ballonet0,path=\(directory)/ballonet.sock,server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,chardev=ballonet0,name=org.ballonet.0",
            // Entropy from the host: without it getrandom() in the guest blocks for seconds after boot.
            "-device", "virtio-rng-pci",
            "-pidfile", "\(directory)/qemu.pid",
            "-D", "\(directory)/qemu.log",
            "-daemonize",
        ]
        // In order of preference: QEMU takes the first that initialises.
        for accelerator in launch.accelerators { arguments += ["-accel", accelerator] }
        if launch.kernel.isEmpty {
            arguments += ["-drive", "file=\(launch.disk),if=virtio"]
        } else {
            arguments += ["-kernel", launch.kernel, "-append", launch.append]
            if !launch.initrd.isEmpty { arguments += ["-initrd", launch.initrd] }
        }
        arguments += launch.extraArguments.split(separator: " ").map(String.init)
        return arguments
    }

    private func start(_ vm: VMConfiguration, launch: VMConfiguration.Launch, directory: String, logger: Logger) throws {
        try FileSystem.makeDirectory(directory, permissions: 0o700, orExisting: true)
        for socket in ["qmp.sock", "ballonet.sock", "qemu.pid"] { try? FileSystem.removeFile(directory + "/" + socket) }
        let sharing = sharingChoice(vm, launch: launch)
        let arguments = Self.arguments(for: vm, launch: launch, directory: directory, sharing: sharing.on)
        let executable = launch.qemu.contains("/") ? launch.qemu : "/usr/bin/" + launch.qemu
        // The daemonizing QEMU's own output (errors before it detaches) goes to a file beside its sockets.
        let startLog = directory + "/qemu-start.log"
        logger.info("starting QEMU for \(vm.name): \(launch.memoryMiB) MiB \(launch.ramBacking.rawValue) RAM, sharing \(sharing.on ? "on" : "off") (\(sharing.decidedBy)), \(launch.cpus) vCPU",
                    metadata: ["vm": "\(vm.name)", "command": "\(executable) \(arguments.joined(separator: " "))"])
        // QEMU starts inside a memory cgroup of its own, so hypervisor swapping can limit it: its pages are
        // charged where they are first touched, and a process moved later leaves its memory behind.
        var command = (executable, arguments)
        if vm.swap == .auto || vm.swap == .cgroup, let hierarchy = memoryCgroups {
            do {
                let group = try MemoryCgroup.create("ballonet/\(vm.name)", hierarchy: hierarchy)
                try? group.setLimit(nil)
                command = ("/bin/sh", ["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\"", group.path, executable] + arguments)
                logger.info("QEMU of \(vm.name) starts in memory cgroup \(group)", metadata: ["vm": "\(vm.name)"])
            } catch {
                logger.warning("cannot make a memory cgroup for \(vm.name) (\(error)); hypervisor swapping will page out instead",
                               metadata: ["vm": "\(vm.name)"])
            }
        }
        let status: Int32
        do {
            // With -daemonize the first process exits once the VM is set up (sockets and pid file exist).
            status = try ProcessControl.waitForExit(try ProcessControl.spawn(command.0, arguments: command.1, outputPath: startLog))
        } catch {
            throw InventoryError("cannot start \(executable) for VM \(vm.name): \(error)")
        }
        guard status == 0 else {
            let message = String(decoding: (try? FileSystem.readFile(startLog, maxBytes: 64 << 10)) ?? [], as: UTF8.self)
            throw InventoryError("QEMU for VM \(vm.name) failed to start (exit \(status)): \(message.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    public func shutdown(logger: Logger) {
        guard configuration.stopVMsOnExit else {
            if !started.isEmpty {
                logger.notice("leaving the VMs this agent started running (stop_vms_on_exit is off): \(started.joined(separator: ", "))")
            }
            return
        }
        for vm in configuration.vms where vm.launch != nil {
            let directory = directory(of: vm)
            guard let pid = runningProcessID(directory: directory) else { continue }
            logger.notice("stopping QEMU of \(vm.name) (pid \(pid))", metadata: ["vm": "\(vm.name)"])
            if let qmp = try? QMPClient(path: directory + "/qmp.sock", timeout: .seconds(2)) {
                _ = try? qmp.execute("quit")
            } else {
                try? ProcessControl.send(.terminate, to: pid)
            }
            for _ in 0..<50 where ProcessControl.exists(pid) { MonotonicClock.sleep(for: .milliseconds(100)) }
            if ProcessControl.exists(pid) { try? ProcessControl.send(.kill, to: pid) }
            // Its memory cgroup goes with it (rmdir fails harmlessly while a process is still in it).
            if let hierarchy = memoryCgroups {
                try? MemoryCgroup(path: hierarchy.root + "/ballonet/" + vm.name, version: hierarchy.version).remove()
            }
        }
    }
}

/// What admission control has handed out so far while the inventory starts VMs: min + overhead of memory,
/// max − min of swap, per VM, against the host's memory (or the budget) and its swap.
struct AdmissionLedger {
    let configuration: HostConfiguration
    let memoryBytes: UInt64
    let swapTotalBytes: UInt64
    var reservedBytes: UInt64 = 0
    var reservedSwapBytes: UInt64 = 0

    init(configuration: HostConfiguration, meminfo: Meminfo?) {
        self.configuration = configuration
        if configuration.budgetMiB > 0 {
            memoryBytes = configuration.budgetMiB << 20
        } else {
            let total = meminfo?.memTotal ?? 0
            memoryBytes = total > configuration.reserveMiB << 20 ? total - (configuration.reserveMiB << 20) : 0
        }
        swapTotalBytes = meminfo?.swapTotal ?? 0
    }

    /// `memoryMiB`: the VM's RAM; nil for an attached VM whose RAM is not known yet (its min is reserved).
    func request(_ vm: VMConfiguration, memoryMiB: UInt64?) -> Admission.Request {
        let maximum = min(vm.maxMiB ?? memoryMiB ?? vm.minMiB, memoryMiB ?? .max)
        // A budget is memory for guest RAM alone (the policy measures VMs against it by resident guest
        // RAM), so QEMU's overhead is charged only against host RAM.
        let overhead = configuration.budgetMiB > 0 ? 0 : configuration.vmOverheadMiB << 20
        return Admission.Request(name: vm.name, minBytes: min(vm.minMiB, maximum) << 20, maxBytes: maximum << 20,
                                 overheadBytes: overhead)
    }

    func decide(_ vm: VMConfiguration, memoryMiB: UInt64) -> Admission.Decision {
        Admission.decide(request(vm, memoryMiB: memoryMiB),
                         host: Admission.Host(memoryBytes: memoryBytes, reservedBytes: reservedBytes, swapTotalBytes: swapTotalBytes,
                                              reservedSwapBytes: reservedSwapBytes, requireSwap: configuration.requireSwap))
    }

    mutating func add(_ vm: VMConfiguration, memoryMiB: UInt64?) {
        let request = request(vm, memoryMiB: memoryMiB)
        reservedBytes += request.minBytes + request.overheadBytes
        reservedSwapBytes += request.maxBytes - request.minBytes
    }
}
