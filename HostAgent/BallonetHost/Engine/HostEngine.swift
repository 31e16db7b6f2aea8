import BallonetLinux
import BallonetPolicy
import BallonetWire
import Foundation
import Logging
import Synchronization

/// The host agent's event loop: one thread that owns every VM's runtime, the control socket and the
/// timers, so decisions never race. Syscalls here are short (punches take microseconds, reading smaps
/// a few milliseconds); QMP is used only when a VM is attached.
public final class HostEngine: @unchecked Sendable {
    public let configuration: HostConfiguration
    /// Where the VMs come from: host.toml's QEMUs, and libvirt's domains when `[libvirt] uri` is set.
    let inventories: [VMInventory]
    var logger: Logger
    private var vms: [VMRuntime] = []
    private let stopRequested = Atomic<Bool>(false)
    private let wakeReader: SharedDescriptor
    private let wakeWriter: SharedDescriptor
    private var control: ControlServer?
    private var metrics: MetricsServer?
    /// The metrics page as of the last round. A thread of its own serves it, so a slow or idle scraper
    /// (any local user can connect to a TCP port) never holds the engine's loop.
    private let metricsPage = MetricsPage()
    private let metricsThreadDone = DispatchSemaphore(value: 0)
    private var nextSampleMillis: UInt64 = 0
    private var lastRoundMillis: UInt64?
    private var lastDecision: MemoryPolicy.Decision?
    /// What `ballonetctl set` changed, as kept in the settings file.
    private var settings: [String: VMSettings] = [:]
    /// VMs the inventory would not start (admission control), with why: status shows them.
    private var refused: [(name: String, reason: String)] = []
    /// What the kernel offers for idle page sampling and swapping, found once at startup.
    let samplingSupport = IdlePageSamplingSupport.detect()
    let memoryCgroups = MemoryCgroup.hierarchy()
    private var swapTotalBytes: UInt64?
    private var swapFreeBytes: UInt64?
    /// Warned once that hypervisor swapping has no host swap to use.
    private var warnedNoSwap = false
    /// When the last swap round ran: a limit steps by the time since (a `set` runs an extra round).
    private var lastSwapRoundMillis: UInt64?
    /// Page sharing: ksmd steered by `SharingPolicy` (nil when the kernel has no KSM).
    private var sharing: SharingController?
    private var lastSharingRoundMillis: UInt64?


    /// How often the VMs' figures are read and the policy runs: once a second is what an operator's live
    /// table shows. On a calm host the figures come from QEMU's status counters (microseconds), with smaps
    /// read once per sampling period (`VMRuntime.sampleHostFigures`).
    static let sampleMillis: UInt64 = 1_000
    /// The loop's longest sleep: steering and pings are checked at least this often.
    static let tickMillis: UInt64 = 100

    public init(configuration: HostConfiguration, inventories: [VMInventory], logger: Logger) throws {
        self.configuration = configuration
        self.inventories = inventories
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
        wakeLoop()
    }

    /// Wakes the loop from its poll (from any thread: libvirt's event thread).
    func wakeLoop() {
        _ = try? wakeWriter.descriptor.send(all: [1])
    }

    static func nowMillis() -> UInt64 {
        MonotonicInstant.now().nanoseconds / 1_000_000
    }

    /// Sets the VMs up, says READY to systemd, and runs until `requestStop`.
    public func run(onReady: () -> Void = {}) throws {
        // What can fail without side effects comes first: nothing is started when the settings file is
        // bad or the metrics port is taken.
        settings = try VMSettingsFile.load(path: configuration.settingsFile)
        control = try ControlServer(path: configuration.effectiveControlSocket, logger: logger)
        let metricsServer = configuration.metricsAddress.isEmpty ? nil : try MetricsServer(address: configuration.metricsAddress, logger: logger)
        sharing = SharingController(settings: configuration.sharing, logger: logger,
                                    originalsFile: configuration.stateDirectory + "/ksm-settings-to-restore")
        for inventory in inventories {
            inventory.setWake { [weak self] in self?.wakeLoop() }
            for endpoint in try inventory.endpoints(logger: logger) { add(endpoint) }
            refused += inventory.refused
        }
        if let server = metricsServer {
            metrics = server
            metricsPage.update(PrometheusText.render(status()))
            let page = metricsPage, done = metricsThreadDone
            Thread.detachNewThread { [self] in
                while !stopRequested.load(ordering: .sequentiallyConsistent) {
                    var request = [PollRequest(descriptor: server.descriptor, events: .readable)]
                    // A short wait, so the thread sees a stop within a fifth of a second.
                    guard (try? Poll.wait(&request, timeout: .milliseconds(200))) != nil else { continue }
                    if !request[0].returnedEvents.isEmpty { server.serveOne { page.text } }
                }
                done.signal()
            }
        }
        let budget = configuration.budgetMiB > 0 ? "budget \(configuration.budgetMiB) MiB for VMs"
            : "no budget: host RAM less a \(configuration.reserveMiB) MiB reserve and \(configuration.vmOverheadMiB) MiB per VM"
        let policy = configuration.policy
        let metricsText = status().metricsAddress.map { "metrics at http://\($0)/metrics" } ?? "no metrics"
        logger.notice("ballonet-host \(BallonetVersion.software) running: \(vms.count) VMs, control socket \(configuration.effectiveControlSocket), \(metricsText), \(budget); idle tax \(MemoryPolicy.format(policy.idleTaxRate, 2)), trimming \(policy.trimming.enabled ? "on" : "off")")
        let sampling = configuration.samplingPeriodMillis > 0 ? "\(samplingSupport), every \(configuration.samplingPeriodMillis / 1000) s"
            : "host idle page sampling off ([sampling] period_seconds = 0)"
        logger.notice("\(sampling)")
        if sharing == nil {
            logger.notice("page sharing: this kernel has no KSM (CONFIG_KSM)")
        } else {
            let how = configuration.sharing.steerKSM
                ? "ksmd steered by free memory and merge yield, at most \(MemoryPolicy.format(configuration.sharing.policy.maxCPUPercent, 0)) % of a core"
                : "ksmd not steered ([sharing] steer_ksm = false): savings reported only"
            logger.notice("page sharing: \(how); VMs the agent starts share \(configuration.sharing.defaultOn ? "by default" : "only with sharing = true")")
        }
        let meminfo = try? ProcFiles.meminfo()
        let cgroups = memoryCgroups.map { "memory cgroup \($0.version.rawValue) at \($0.root)" } ?? "no memory cgroup controller"
        if let swap = meminfo?.swapTotal, swap > 0 {
            logger.notice("host swap \(swap >> 20) MiB (\((meminfo?.swapFree ?? 0) >> 20) MiB free) for hypervisor swapping; \(cgroups)")
        } else {
            logger.warning("no host swap: hypervisor swapping cannot act, so VMs the balloon cannot shrink stay above target (add swap: see docs/OPERATING.md); \(cgroups)")
        }
        onReady()
        defer {
            for vm in vms {
                // Never leave a VM paused or held to a limit nobody manages any more.
                vm.setPaused(false, reason: "ballonet-host is stopping")
                vm.applySwapLimit(nil, reason: "ballonet-host is stopping")
                vm.close(reason: "ballonet-host is stopping")
            }
            control = nil
            if metrics != nil {
                stopRequested.store(true, ordering: .sequentiallyConsistent)   // also when the loop ended by an error
                _ = metricsThreadDone.wait(timeout: .now() + 3)
                metrics = nil
            }
            for inventory in inventories { inventory.shutdown(logger: logger) }
            sharing?.restore()
            logger.notice("ballonet-host stopped")
        }
        while !stopRequested.load(ordering: .sequentiallyConsistent) {
            let now = Self.nowMillis()
            for inventory in inventories {
                for change in inventory.changes(nowMillis: now, logger: logger) { apply(change) }
            }
            for vm in vms {
                vm.connectIfDue(nowMillis: now)
                vm.tick(nowMillis: now)
            }
            if now >= nextSampleMillis {
                nextSampleMillis = now + Self.sampleMillis
                // Every round needs exact figures only when memory is short; a calm host reads smaps once a period.
                let precise = (lastDecision?.state ?? .high) != .high
                for vm in vms { vm.sampleHostFigures(nowMillis: now, precise: precise) }
                policyRound(nowMillis: now)
                if metrics != nil { metricsPage.update(PrometheusText.render(status())) }
            }
            try waitAndHandle(timeoutMillis: Self.tickMillis)
        }
    }

    /// The configuration a VM runs with: host.toml's (or the defaults), its source's metadata over that,
    /// and `ballonetctl set`'s settings over both.
    private func configuration(for name: String, metadata: BallonetDomainMetadata?) -> VMConfiguration {
        var vm = configuration.vms.first { $0.name == name } ?? VMConfiguration(name: name)
        if let metadata { vm = metadata.applied(to: vm) }
        if let saved = settings[name] { vm = saved.applied(to: vm) }
        return vm
    }

    /// Starts managing a VM an inventory found.
    private func add(_ endpoint: VMEndpoint) {
        guard !vms.contains(where: { $0.endpoint.name == endpoint.name }) else {
            logger.error("two VMs are named \(endpoint.name) (the second from \(endpoint.source)); only the first is managed",
                         metadata: ["vm": "\(endpoint.name)"])
            return
        }
        let vmConfiguration = configuration(for: endpoint.name, metadata: endpoint.metadata)
        if let saved = settings[endpoint.name] {
            logger.notice("settings from ballonetctl set (\(configuration.settingsFile)): shares \(saved.shares.map(String.init) ?? "-"), min \(saved.minMiB.map { "\($0) MiB" } ?? "-"), max \(saved.maxMiB.map { "\($0) MiB" } ?? "-")",
                          metadata: ["vm": "\(endpoint.name)"])
        }
        if endpoint.source != "host.toml" {
            logger.notice("managing VM \(endpoint.name) from \(endpoint.source): min \(vmConfiguration.minMiB) MiB, max \(vmConfiguration.maxMiB.map { "\($0) MiB" } ?? "its RAM"), shares \(vmConfiguration.shares.map(String.init) ?? "default"), \(endpoint.portSocket.map { "ballonet-guest port \($0)" } ?? "virtio balloon (no ballonet-guest port)")",
                          metadata: ["vm": "\(endpoint.name)"])
        }
        vms.append(VMRuntime(configuration: vmConfiguration, endpoint: endpoint, steering: configuration.steering,
                             estimator: configuration.policy.estimator,
                             samplingPeriodMillis: configuration.samplingPeriodMillis > 0 ? configuration.samplingPeriodMillis : nil,
                             pauseMarkers: PauseMarkers(stateDirectory: configuration.stateDirectory),
                             memoryCgroups: memoryCgroups, logger: logger))
    }

    /// Carries out what an inventory saw change.
    private func apply(_ change: InventoryChange) {
        switch change {
        case .appeared(let endpoint):
            add(endpoint)
        case .disappeared(let name, let reason):
            guard let index = vms.firstIndex(where: { $0.endpoint.name == name }) else { return }
            let vm = vms.remove(at: index)
            vm.close(reason: reason)
            forgetPause(of: vm)
            logger.notice("\(reason): no longer managed; its share goes to the other VMs", metadata: ["vm": "\(name)"])
            policyRound(nowMillis: Self.nowMillis())
        case .settingsChanged(let name, let metadata):
            guard let vm = vms.first(where: { $0.endpoint.name == name }) else { return }
            let updated = configuration(for: name, metadata: metadata)
            guard updated != vm.configuration else { return }
            vm.configuration = updated
            let maximum = updated.maxMiB.map { "\($0) MiB" } ?? "its RAM"
            vm.logger.notice("settings changed in the domain's metadata: min \(updated.minMiB) MiB, max \(maximum), shares \(updated.shares.map(String.init) ?? "default")\(settings[name] != nil ? " (ballonetctl set's values still override)" : "")")
            policyRound(nowMillis: Self.nowMillis())
        }
    }

    /// A VM that is gone leaves no pause marker behind (a later VM of the same name must not be resumed).
    private func forgetPause(of vm: VMRuntime) {
        if vm.paused { vm.pauseMarkers.remove(vm.endpoint.name) }
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
            if !requests[index].returnedEvents.isEmpty { control.serveOne { handle($0) } }
            index += 1
        }
        let now = Self.nowMillis()
        for vm in owners {
            let events = requests[index].returnedEvents
            index += 1
            if events.contains(.writable) { vm.flush() }
            if !events.intersection([.readable, .hangUp, .error]).isEmpty { vm.readPort(nowMillis: now) }
        }
    }

    /// The memory for VMs, free memory and its total, from the budget or from the host's /proc/meminfo
    /// (read once per round by the caller; nil when it could not be read).
    func hostMemory(participants: [VMRuntime], meminfo: Meminfo?) -> (memoryForVMs: UInt64, free: Int64, total: UInt64)? {
        if configuration.budgetMiB > 0 {
            let budget = configuration.budgetMiB << 20
            // A memfd's blocks count its pages in host swap too; what the VM holds in RAM is the rest.
            let held = participants.reduce(UInt64(0)) { sum, vm in
                let account = vm.account
                // Pages KSM merged from several VMs are held once: each VM counts its 1/n (its Pss).
                let shared = vm.figures?.sharingSavedBytes ?? 0
                let inRAM = account.backingFileBytes.map { $0 > account.swappedBytes ? $0 - account.swappedBytes : 0 }
                    ?? SharingAccounting.chargedBytes(residentBytes: account.residentBytes, savedBytes: shared)
                return sum + inRAM
            }
            // Both at most 2^63 − 1, so the difference cannot overflow.
            return (budget, Int64(clamping: budget) - Int64(clamping: held), budget)
        }
        guard let meminfo else { return nil }
        let reserved = (configuration.reserveMiB + configuration.vmOverheadMiB * UInt64(participants.count)) << 20
        let memoryForVMs = meminfo.memTotal > reserved ? meminfo.memTotal - reserved : 0
        return (memoryForVMs, Int64(min(meminfo.memAvailable, UInt64(Int64.max))), meminfo.memTotal)
    }

    /// One policy round: every attached VM's target, and the host's free-memory state. Rounds also run
    /// outside the loop's clock (a VM gone, a `set`) with a later time than the loop's, so times here are
    /// compared, never subtracted blindly.
    private func policyRound(nowMillis: UInt64) {
        let participants = vms.filter { $0.account.memoryBytes > 0 }
        // One read of /proc/meminfo serves the round: free memory for the state, host swap for swapping.
        let meminfo = try? ProcFiles.meminfo()
        guard !participants.isEmpty, let host = hostMemory(participants: participants, meminfo: meminfo) else {
            // No VM to share among: ksmd is stopped (and steered again when VMs come).
            sharingRound([], state: lastDecision?.state ?? .high, nowMillis: nowMillis)
            return
        }
        let inputs = participants.map { vm -> MemoryPolicy.VM in
            let ram = vm.account.memoryBytes
            let maxBytes = min(vm.configuration.maxMiB.map { $0 << 20 } ?? ram, ram)
            let fresh = nowMillis <= vm.estimateFreshUntilMillis
            let guestEstimate = fresh ? vm.estimator.estimateBytes : nil
            let hostEstimate = nowMillis <= vm.hostEstimateFreshUntilMillis ? vm.hostEstimator.estimateBytes : nil
            vm.account.guestWorkingSetEstimateBytes = guestEstimate
            vm.account.hostWorkingSetEstimateBytes = hostEstimate
            vm.account.workingSetEstimateBytes = WorkingSetSources.combined(host: hostEstimate, guest: guestEstimate)
            return MemoryPolicy.VM(name: vm.endpoint.name, shares: vm.configuration.effectiveShares(maxBytes: maxBytes),
                                   minBytes: vm.configuration.minMiB << 20, maxBytes: maxBytes,
                                   fixedTargetBytes: vm.commandedTargetBytes ?? vm.configuration.targetMiB.map { $0 << 20 },
                                   workingSetBytes: vm.account.workingSetEstimateBytes,
                                   previousTargetBytes: vm.hasPolicyTarget ? vm.account.targetBytes : nil,
                                   unreclaimableBytes: fresh ? vm.account.guestUnreclaimableBytes : nil)
        }
        let previousState = lastDecision?.state ?? .high
        let decision = MemoryPolicy.decide(
            vms: inputs,
            host: MemoryPolicy.Host(memoryForVMsBytes: host.memoryForVMs, freeBytes: host.free, totalBytes: host.total,
                                    previousState: previousState, elapsedMillis: lastRoundMillis.map { nowMillis > $0 ? nowMillis - $0 : 0 } ?? Self.sampleMillis,
                                    sharingSavedBytes: participants.reduce(0) { MemoryPolicy.saturatingAdd($0, $1.account.sharingSavedBytes ?? 0) }),
            parameters: configuration.policy)
        lastRoundMillis = nowMillis
        if decision.state != previousState {
            let actions = decision.actions.names
            logger.notice("host memory state \(previousState.rawValue) → \(decision.state.rawValue): free \(MemoryPolicy.format(decision.freePercent, 1)) % of \(host.total >> 20) MiB; \(actions.isEmpty ? "nothing is reclaimed beyond trimming" : "actions: " + actions.joined(separator: ", "))",
                          metadata: ["state": "\(decision.state.rawValue)"])
        }
        if let warning = decision.warning, warning != lastDecision?.warning { logger.warning("\(warning)") }
        for (vm, made) in zip(participants, decision.vms) {
            let old = vm.account.targetBytes
            let moved = made.targetBytes > old ? made.targetBytes - old : old - made.targetBytes
            // One line per decision that matters: a move of more than 8 MiB, or a different rule.
            if !vm.hasPolicyTarget || moved > 8 << 20 || made.explanation.bound != vm.explanation?.bound {
                vm.logger.info("\(made.explanation.summary)", metadata: ["bound": "\(made.explanation.bound.rawValue)"])
            }
            vm.account.targetBytes = made.targetBytes
            vm.account.targetReason = made.explanation.summary
            vm.account.shares = made.explanation.shares
            vm.account.minBytes = made.explanation.minBytes
            vm.account.maxBytes = made.explanation.maxBytes
            vm.explanation = made.explanation
            vm.hasPolicyTarget = true
        }
        lastDecision = decision
        swapRound(participants, decision: decision, meminfo: meminfo, nowMillis: nowMillis)
        sharingRound(participants, state: decision.state, nowMillis: nowMillis)
    }

    /// Page sharing for this round, after the targets: where balloon pages go (pageout or the zero page),
    /// and how hard ksmd scans (`SharingPolicy`).
    private func sharingRound(_ participants: [VMRuntime], state: FreeMemoryState, nowMillis: UInt64) {
        guard let sharing else { return }
        var mergeable: UInt64 = 0
        var pending: UInt64 = 0
        for vm in participants where vm.account.mergeable == true {
            mergeable = MemoryPolicy.saturatingAdd(mergeable, vm.account.memoryBytes)
            let choice = SharingPolicy.balloonReclaim(mergeable: true, ksmSteered: sharing.settings.steerKSM,
                                                      swapFreeBytes: swapFreeBytes ?? 0, balloonBytes: vm.account.balloonBytes)
            if (choice == .zeroPage) != vm.leaveBalloonToKSM {
                vm.leaveBalloonToKSM = choice == .zeroPage
                vm.logger.notice(choice == .zeroPage
                    ? "balloon pages now go to the zero page through KSM: host swap (\((swapFreeBytes ?? 0) >> 20) MiB free) cannot take the balloon"
                    : "balloon pages are paged out again: host swap has room")
            }
            let tolerance = configuration.policy.swap.tolerance(forTarget: vm.account.targetBytes)
            pending = MemoryPolicy.saturatingAdd(pending, vm.pendingZeroMergeBytes(tolerance: tolerance))
        }
        let elapsed = lastSharingRoundMillis.map { nowMillis > $0 ? nowMillis - $0 : 0 } ?? Self.sampleMillis
        lastSharingRoundMillis = nowMillis
        sharing.round(elapsedMillis: elapsed, state: state, mergeableBytes: mergeable, pendingZeroMergeBytes: pending)
    }

    /// Hypervisor swapping and pausing for this round (`HypervisorSwapPolicy`), after the targets.
    private func swapRound(_ participants: [VMRuntime], decision: MemoryPolicy.Decision, meminfo: Meminfo?, nowMillis: UInt64) {
        swapTotalBytes = meminfo?.swapTotal
        swapFreeBytes = meminfo?.swapFree
        let settings = configuration.policy.swap
        let inputs = participants.map { vm -> HypervisorSwapPolicy.VM in
            let target = vm.account.targetBytes
            let tolerance = settings.tolerance(forTarget: target)
            let excess = vm.account.residentBytes > target ? vm.account.residentBytes - target : 0
            let verdict = vm.balloonDelivery.observe(excessBytes: excess, agentEstablished: vm.hasBalloon, nowMillis: nowMillis,
                                                     settings: settings, tolerance: tolerance)
            return HypervisorSwapPolicy.VM(name: vm.endpoint.name, targetBytes: target, residentBytes: vm.account.residentBytes,
                                           swappedBytes: vm.account.swappedBytes, balloon: verdict, swapAllowed: vm.swapper != nil && vm.figures != nil,
                                           previousLimitBytes: vm.swapper?.limitBytes, paused: vm.paused,
                                           fixedTarget: vm.commandedTargetBytes != nil || vm.configuration.targetMiB != nil,
                                           hardLimit: vm.swapper?.mechanism.isHardLimit ?? false, ramBytes: vm.account.memoryBytes)
        }
        let elapsed = lastSwapRoundMillis.map { nowMillis > $0 ? nowMillis - $0 : 0 } ?? Self.sampleMillis
        lastSwapRoundMillis = nowMillis
        let decisions = HypervisorSwapPolicy.decide(vms: inputs, state: decision.state, swapFreeBytes: swapFreeBytes ?? 0,
                                                    elapsedMillis: elapsed, settings: settings)
        for (vm, made) in zip(participants, decisions) {
            if made.limitBytes != nil, (swapTotalBytes ?? 0) == 0, !warnedNoSwap {
                warnedNoSwap = true
                logger.warning("VM \(vm.endpoint.name) needs hypervisor swapping but the host has no swap: add a swap file or zswap")
            }
            vm.applySwapLimit(made.limitBytes, reason: made.reason)
            if made.pause != vm.paused {
                vm.setPaused(made.pause, reason: made.pause
                    ? "host memory is low (\(MemoryPolicy.format(decision.freePercent, 1)) % free) and the VM is above its target (\(vm.account.residentBytes >> 20) MiB resident, target \(vm.account.targetBytes >> 20) MiB)"
                    : "host memory recovered (\(decision.state.rawValue), \(MemoryPolicy.format(decision.freePercent, 1)) % free)")
            }
        }
    }

    public func status() -> HostStatus {
        var status = HostStatus(version: BallonetVersion.software,
                                budgetBytes: configuration.budgetMiB > 0 ? configuration.budgetMiB << 20 : nil,
                                vms: vms.map(\.account))
        status.state = lastDecision?.state.rawValue
        status.actions = lastDecision?.actions.names
        status.freePercent = lastDecision?.freePercent
        status.memoryForVMsBytes = lastDecision?.memoryForVMsBytes
        status.capacityBytes = lastDecision?.capacityBytes
        status.idleTaxRate = configuration.policy.idleTaxRate
        status.warning = lastDecision?.warning
        status.swapTotalBytes = swapTotalBytes
        status.swapFreeBytes = swapFreeBytes
        status.sampling = configuration.samplingPeriodMillis > 0 ? samplingSupport.description : "off"
        status.sharing = sharing?.status
        status.sharingCreditBytes = lastDecision?.sharingSavedBytes
        status.metricsAddress = metrics.map { "\($0.address[..<($0.address.lastIndex(of: ":") ?? $0.address.endIndex)]):\($0.port)" }
        for vm in refused {
            var account = VMAccount(name: vm.name)
            account.state = "refused: \(vm.reason)"
            status.vms.append(account)
        }
        return status
    }

    /// One control request.
    func handle(_ request: ControlRequest) -> ControlResponse {
        switch request.command {
        case "status":
            return ControlResponse(ok: true, status: status())
        case "explain":
            guard let name = request.vm, let vm = vms.first(where: { $0.endpoint.name == name }) else {
                return ControlResponse(ok: false, error: "no VM named \(request.vm ?? "(none)"); VMs: \(vms.map(\.endpoint.name).joined(separator: ", "))")
            }
            guard let explanation = vm.explanation else {
                return ControlResponse(ok: false, error: "VM \(name) has no target yet: \(vm.account.state)")
            }
            var response = ControlResponse(ok: true, status: status())
            response.explanation = explanation
            return response
        case "set":
            guard let name = request.vm, let vm = vms.first(where: { $0.endpoint.name == name }) else {
                return ControlResponse(ok: false, error: "no VM named \(request.vm ?? "(none)"); VMs: \(vms.map(\.endpoint.name).joined(separator: ", "))")
            }
            return set(vm, request)
        case "set-target":
            guard let name = request.vm, let vm = vms.first(where: { $0.endpoint.name == name }) else {
                return ControlResponse(ok: false, error: "no VM named \(request.vm ?? "(none)"); VMs: \(vms.map(\.endpoint.name).joined(separator: ", "))")
            }
            guard let mib = request.mib else {
                vm.commandedTargetBytes = nil
                vm.logger.notice("target set by command cleared; back to the policy")
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
        case "admit":
            return admit(request)
        default:
            return ControlResponse(ok: false, error: "unknown command \(request.command); commands: status, explain, set, set-target, admit")
        }
    }

    /// `ballonet-host admit` (libvirt's hook, before a domain starts): whether a VM of `mib` MiB with the
    /// given min, max and shares fits beside the VMs managed now. Answered from the engine's own state only:
    /// libvirt holds the domain's start job while the hook waits, so nothing here may call libvirt.
    private func admit(_ request: ControlRequest) -> ControlResponse {
        guard let name = request.vm, let memoryMiB = request.mib, memoryMiB > 0 else {
            return ControlResponse(ok: false, error: "admit needs the VM's name and its memory in MiB")
        }
        let vm = configuration(for: name, metadata: BallonetDomainMetadata(minMiB: request.minMiB, maxMiB: request.maxMiB, shares: request.shares))
        var ledger = AdmissionLedger(configuration: configuration, meminfo: try? ProcFiles.meminfo())
        for other in vms where other.endpoint.name != name {
            ledger.add(other.configuration, memoryMiB: other.account.memoryBytes > 0 ? other.account.memoryBytes >> 20 : nil)
        }
        let decision = ledger.decide(vm, memoryMiB: memoryMiB)
        if decision.isAdmitted {
            logger.notice("admission: \(decision.message)", metadata: ["vm": "\(name)"])
        } else {
            logger.error("admission refused a start: \(decision.message)", metadata: ["vm": "\(name)"])
        }
        var response = ControlResponse(ok: decision.isAdmitted, error: decision.isAdmitted ? nil : decision.message)
        response.message = decision.message
        return response
    }

    /// `ballonetctl set VM --shares/--min/--max`: checked, applied from the next round on, and kept in the
    /// settings file so a restarted agent has them too.
    private func set(_ vm: VMRuntime, _ request: ControlRequest) -> ControlResponse {
        let name = vm.endpoint.name
        guard request.shares != nil || request.minMiB != nil || request.maxMiB != nil else {
            return ControlResponse(ok: false, error: "nothing to set: give --shares, --min or --max")
        }
        var saved = settings[name] ?? VMSettings()
        if let shares = request.shares { saved.shares = shares }
        if let minimum = request.minMiB { saved.minMiB = minimum }
        if let maximum = request.maxMiB { saved.maxMiB = maximum }
        let updated = saved.applied(to: vm.configuration)
        let ramMiB = vm.account.memoryBytes >> 20
        if let problem = VMSettings(shares: updated.shares, minMiB: updated.minMiB, maxMiB: updated.maxMiB).problem() {
            return ControlResponse(ok: false, error: problem)
        }
        let maximum = updated.maxMiB ?? ramMiB
        if let maxMiB = updated.maxMiB, ramMiB > 0, maxMiB > ramMiB {
            return ControlResponse(ok: false, error: "VM \(name) has \(ramMiB) MiB of RAM; a max of \(maxMiB) MiB is more than it has")
        }
        if ramMiB > 0 || updated.maxMiB != nil, updated.minMiB > maximum {
            return ControlResponse(ok: false, error: "min \(updated.minMiB) MiB is above max \(maximum) MiB")
        }
        var all = settings
        all[name] = saved
        do {
            try VMSettingsFile.save(all, path: configuration.settingsFile)
        } catch {
            return ControlResponse(ok: false, error: "not changed: cannot save \(configuration.settingsFile): \(error)")
        }
        settings = all
        vm.configuration = updated
        vm.logger.notice("set by ballonetctl: shares \(updated.effectiveShares(maxBytes: maximum << 20)), min \(updated.minMiB) MiB, max \(maximum) MiB (kept in \(configuration.settingsFile))")
        policyRound(nowMillis: Self.nowMillis())
        return ControlResponse(ok: true, status: status())
    }
}

/// The text the metrics thread serves, replaced by the engine once a round.
final class MetricsPage: Sendable {
    private let current = Mutex("")
    var text: String { current.withLock { $0 } }
    func update(_ text: String) { current.withLock { $0 = text } }
}
