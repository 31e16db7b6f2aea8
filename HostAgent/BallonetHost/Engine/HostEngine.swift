import BallonetLinux
import BallonetWire
import Foundation
import Logging
import Synchronization

/// The host agent's event loop: one thread that owns every VM's runtime, the control socket and the
/// timers, so decisions never race. Syscalls here are short (punches take microseconds, reading smaps
/// a few milliseconds); QMP is used only when a VM is attached.
public final class HostEngine: @unchecked Sendable {
    public let configuration: HostConfiguration
    let inventory: VMInventory
    var logger: Logger
    private var vms: [VMRuntime] = []
    private let stopRequested = Atomic<Bool>(false)
    private let wakeReader: SharedDescriptor
    private let wakeWriter: SharedDescriptor
    private var control: ControlServer?
    private var nextSampleMillis: UInt64 = 0


    /// How often resident memory is read from smaps and the budget is shared out: once a second is
    /// what an operator's live table shows, and costs a few milliseconds per VM.
    static let sampleMillis: UInt64 = 1_000
    /// The loop's longest sleep: steering and pings are checked at least this often.
    static let tickMillis: UInt64 = 100

    public init(configuration: HostConfiguration, inventory: VMInventory, logger: Logger) throws {
        self.configuration = configuration
        self.inventory = inventory
        self.logger = logger
        let pair = try UnixSocket.pair()
        let first = pair.first, second = pair.second
        try first.setNonBlocking(true)
        try second.setNonBlocking(true)
        wakeReader = SharedDescriptor(first)
        wakeWriter = SharedDescriptor(second)
    }

    /// Asks the loop to finish (from any thread: the service's shutdown handler).
    public func requestStop() {
        stopRequested.store(true, ordering: .sequentiallyConsistent)
        _ = try? wakeWriter.descriptor.send(all: [1])
    }

    static func nowMillis() -> UInt64 {
        let elapsed = MonotonicInstant.now().duration(since: MonotonicInstant(nanoseconds: 0))
        return UInt64(elapsed.components.seconds) * 1000 + UInt64(elapsed.components.attoseconds / 1_000_000_000_000_000)
    }

    /// Sets the VMs up, says READY to systemd, and runs until `requestStop`.
    public func run(onReady: () -> Void = {}) throws {
        let endpoints = try inventory.endpoints(logger: logger)
        for endpoint in endpoints {
            let configuration = configuration.vms.first { $0.name == endpoint.name } ?? VMConfiguration(name: endpoint.name)
            vms.append(VMRuntime(configuration: configuration, endpoint: endpoint, steering: self.configuration.steering, logger: logger))
        }
        control = try ControlServer(path: configuration.effectiveControlSocket, logger: logger)
        let budget = configuration.budgetMiB > 0 ? "budget \(configuration.budgetMiB) MiB" : "no budget"
        logger.notice("ballonet-host \(BallonetVersion.software) running: \(vms.count) VMs, control socket \(configuration.effectiveControlSocket), \(budget)")
        onReady()
        defer {
            for vm in vms { vm.close(reason: "ballonet-host is stopping") }
            control = nil
            inventory.shutdown(logger: logger)
            logger.notice("ballonet-host stopped")
        }
        while !stopRequested.load(ordering: .sequentiallyConsistent) {
            let now = Self.nowMillis()
            for vm in vms {
                vm.connectIfDue(nowMillis: now)
                vm.tick(nowMillis: now)
            }
            if now >= nextSampleMillis {
                nextSampleMillis = now + Self.sampleMillis
                for vm in vms { vm.sampleHostFigures() }
                shareBudget()
            }
            try waitAndHandle(timeoutMillis: Self.tickMillis)
        }
    }

    private func waitAndHandle(timeoutMillis: UInt64) throws {
        var requests = [PollRequest(descriptor: wakeReader.descriptor.rawValue, events: .readable)]
        if let control { requests.append(PollRequest(descriptor: control.descriptor, events: .readable)) }
        var owners: [VMRuntime] = []
        for vm in vms {
            guard let descriptor = vm.portDescriptor else { continue }
            requests.append(PollRequest(descriptor: descriptor, events: vm.wantsToWrite ? [.readable, .writable] : .readable))
            owners.append(vm)
        }
        try Poll.wait(&requests, timeout: .milliseconds(Int64(timeoutMillis)))
        if !requests[0].returnedEvents.isEmpty { _ = try? wakeReader.descriptor.receive(upTo: 64) }
        var index = 1
        if let control {
            if !requests[1].returnedEvents.isEmpty { control.serveOne { handle($0) } }
            index = 2
        }
        let now = Self.nowMillis()
        for vm in owners {
            let events = requests[index].returnedEvents
            index += 1
            if events.contains(.writable) { vm.flush() }
            if !events.intersection([.readable, .hangUp, .error]).isEmpty { vm.readPort(nowMillis: now) }
        }
    }

    /// Sets every VM's target: a command's, the config's, or a share of the budget.
    private func shareBudget() {
        let demands = vms.map { vm in
            BudgetSplit.Demand(name: vm.endpoint.name, memoryBytes: vm.account.memoryBytes, minBytes: vm.configuration.minMiB << 20,
                               fixedTargetBytes: vm.commandedTargetBytes ?? vm.configuration.targetMiB.map { $0 << 20 },
                               guestUsedBytes: vm.isEstablished ? vm.account.guestUsedBytes : nil)
        }
        let budget = configuration.budgetMiB > 0 ? configuration.budgetMiB << 20 : nil
        for (vm, target) in zip(vms, BudgetSplit.targets(demands, budgetBytes: budget)) where vm.account.memoryBytes > 0 {
            let bytes = target.bytes & ~4095
            let moved = bytes > vm.account.targetBytes ? bytes - vm.account.targetBytes : vm.account.targetBytes - bytes
            // Log a decision when it moves by more than 8 MiB (or its reason changes), not every second.
            if moved > 8 << 20 || target.reason != vm.account.targetReason {
                vm.logger.info("target \(bytes >> 20) MiB: \(target.reason)")
            }
            vm.account.targetBytes = bytes
            vm.account.targetReason = target.reason
        }
    }

    public func status() -> HostStatus {
        HostStatus(version: BallonetVersion.software,
                   budgetBytes: configuration.budgetMiB > 0 ? configuration.budgetMiB << 20 : nil,
                   vms: vms.map(\.account))
    }

    /// One control request.
    func handle(_ request: ControlRequest) -> ControlResponse {
        switch request.command {
        case "status":
            return ControlResponse(ok: true, status: status())
        case "set-target":
            guard let name = request.vm, let vm = vms.first(where: { $0.endpoint.name == name }) else {
                return ControlResponse(ok: false, error: "no VM named \(request.vm ?? "(none)"); VMs: \(vms.map(\.endpoint.name).joined(separator: ", "))")
            }
            guard let mib = request.mib else {
                vm.commandedTargetBytes = nil
                vm.logger.notice("target set by command cleared; back to the config and budget")
                return ControlResponse(ok: true, status: status())
            }
            let memoryMiB = vm.account.memoryBytes >> 20
            guard memoryMiB == 0 || mib <= memoryMiB else {
                return ControlResponse(ok: false, error: "VM \(name) has \(memoryMiB) MiB of RAM; a target of \(mib) MiB is more than it has")
            }
            vm.commandedTargetBytes = mib << 20
            vm.account.targetBytes = mib << 20
            vm.account.targetReason = "set by command: \(mib) MiB"
            vm.logger.notice("target set by command: \(mib) MiB")
            return ControlResponse(ok: true, status: status())
        default:
            return ControlResponse(ok: false, error: "unknown command \(request.command); commands: status, set-target")
        }
    }
}
