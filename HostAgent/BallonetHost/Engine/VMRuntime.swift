import BallonetLinux
import BallonetPolicy
import BallonetWire
import Logging

/// Everything the engine holds for one VM: its endpoint, the RAM map and reclaimer once attached, the
/// port connection and its session, the steering, and the account. Only the engine's thread touches it.
final class VMRuntime {
    /// host.toml's settings for the VM, with `ballonetctl set`'s over them.
    var configuration: VMConfiguration
    let endpoint: VMEndpoint
    var logger: Logger
    var account: VMAccount
    var steering: BalloonSteering
    /// A target set by `ballonetctl set-target` (overrides the config's and the budget's).
    var commandedTargetBytes: UInt64?
    /// The working-set estimate from the guest agent's samples.
    var estimator: WorkingSetEstimator
    /// Until when (engine clock) the estimate counts: an estimate nobody refreshes is dropped.
    var estimateFreshUntilMillis: UInt64 = 0
    /// The host's own estimate, from `sampler`, and until when it counts.
    var hostEstimator: WorkingSetEstimator
    var hostEstimateFreshUntilMillis: UInt64 = 0
    var sampler: IdlePageSampler?
    /// Hypervisor swapping: the mechanism (chosen at attach), whether the balloon delivers, the pause.
    private(set) var swapper: HypervisorSwapper?
    let swapMode: SwapMode
    var balloonDelivery = BalloonDelivery()
    private(set) var paused = false
    /// Guest RAM's figures as of this round, and when smaps was last read for them (`GuestRAMCounterCalibration`).
    private(set) var figures: GuestRAMFigures?
    private var calibration: GuestRAMCounterCalibration?
    private var smapsReadMillis: UInt64?
    /// Where the agent notes the VMs it paused, so a restarted agent resumes them (`PauseMarkers`).
    let pauseMarkers: PauseMarkers
    let memoryCgroups: (root: String, version: MemoryCgroup.Version)?
    /// The policy has decided a target for this VM (its previous target is `account.targetBytes`).
    var hasPolicyTarget = false
    var explanation: MemoryPolicy.Explanation?

    private(set) var map: GuestRAMMap?
    private(set) var reclaimer: GuestRAMReclaimer?
    private var port: Connection?
    private(set) var session: HostSession?
    private var nextConnectMillis: UInt64 = 0
    private var reconnectDelayMillis: UInt64 = RuntimeTiming.reconnectMinMillis
    private var helloSentMillis: UInt64 = 0

    final class Connection {
        let descriptor: FileDescriptor
        var decoder = FrameDecoder()
        var outbox: [UInt8] = []
        init(_ descriptor: consuming FileDescriptor) { self.descriptor = descriptor }
    }

    init(configuration: VMConfiguration, endpoint: VMEndpoint, steering: BalloonSteering.Settings, estimator: EstimatorSettings,
         samplingPeriodMillis: UInt64?, pauseMarkers: PauseMarkers, memoryCgroups: (root: String, version: MemoryCgroup.Version)?,
         logger: Logger) {
        self.estimator = WorkingSetEstimator(settings: estimator)
        self.hostEstimator = WorkingSetEstimator(settings: estimator)
        self.sampler = samplingPeriodMillis.map { IdlePageSampler(periodMillis: $0) }
        self.swapMode = configuration.swap
        self.pauseMarkers = pauseMarkers
        self.memoryCgroups = memoryCgroups
        self.configuration = configuration
        self.endpoint = endpoint
        var logger = logger
        logger[metadataKey: "vm"] = "\(endpoint.name)"
        self.logger = logger
        account = VMAccount(name: endpoint.name)
        account.sharing = endpoint.sharing.map { "\($0.on ? "on" : "off"): \($0.decidedBy)" }
        self.steering = BalloonSteering(settings: steering)
    }

    /// Balloon batches of this VM are left to KSM's zero page instead of paged out (set by the engine each
    /// round: `SharingPolicy.balloonReclaim`).
    var leaveBalloonToKSM = false

    /// The VM has no ballonet-guest port and its virtio balloon is driven through libvirt instead.
    private(set) var drivesVirtioBalloon = false

    var portDescriptor: Int32? { port?.descriptor.rawValue }
    var wantsToWrite: Bool { !(port?.outbox.isEmpty ?? true) }
    var isEstablished: Bool { session?.negotiated != nil }
    /// Something in the guest can give memory back: ballonet-guest in session, or a virtio balloon.
    var hasBalloon: Bool { isEstablished || drivesVirtioBalloon }

    // MARK: Connecting

    /// Attaches (RAM map, reclaimer) and connects the port when due. Never throws: failures are logged,
    /// shown in the VM's state, and retried with backoff.
    func connectIfDue(nowMillis: UInt64) {
        guard port == nil, nowMillis >= nextConnectMillis else { return }
        do {
            if reclaimer == nil { try attach() }
            guard let portSocket = endpoint.portSocket else {
                // No ballonet-guest port: the virtio balloon (through libvirt) is driven instead, from `tick`.
                if endpoint.virtioBalloon != nil && !drivesVirtioBalloon {
                    drivesVirtioBalloon = true
                    account.state = "virtio-balloon through libvirt (no ballonet-guest port)"
                    account.reclaimMethod += " (virtio-balloon: QEMU discards)"
                    logger.notice("no \(LibvirtDomainDescription.channelName) channel: driving the domain's virtio balloon through libvirt instead")
                }
                return
            }
            let descriptor = try UnixSocket.connect(to: portSocket, nonBlocking: true)
            port = Connection(descriptor)
            var session = HostSession(sessionID: Self.freshSessionID(), map: map!, nowMillis: nowMillis)
            logger.info("connected to the guest's port; waiting for ballonet-guest", metadata: ["session": "\(session.sessionID)"])
            account.state = "waiting for the guest agent"
            let hello = session.hello(nowMillis: nowMillis)
            self.session = session
            send(hello)
            helloSentMillis = nowMillis
        } catch {
            account.state = "unreachable: \(error)"
            logger.warning("cannot reach VM: \(error); retrying in \(reconnectDelayMillis) ms")
            scheduleReconnect(nowMillis: nowMillis)
        }
    }

    private func scheduleReconnect(nowMillis: UInt64) {
        nextConnectMillis = nowMillis + reconnectDelayMillis
        reconnectDelayMillis = min(reconnectDelayMillis * 2, RuntimeTiming.reconnectMaxMillis)
    }

    /// Reads the VM's RAM map over QMP and finds its backing in QEMU.
    private func attach() throws {
        let qmp = try endpoint.monitor.open(timeout: .seconds(5))
        let processID = try qmp.processID()
        var blocks: Set<String> = ["pc.ram"]
        if let memdevs = try qmp.execute("query-memdev") as? [[String: Any]] {
            for memdev in memdevs { if let id = memdev["id"] as? String { blocks.insert(id) } }
        }
        let map = try GuestRAMMap.parse(memoryTree: try qmp.humanMonitor("info mtree -f"), guestRAMBlocks: blocks)
        let reclaimer = try GuestRAMReclaimer(processID: processID, map: map) { address in
            let answer = try qmp.humanMonitor("gpa2hva 0x\(String(address, radix: 16))")
            // "Host virtual address for 0x100000 (ram0) is 0x7f91600ff000"
            guard let text = answer.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines),
                  text.hasPrefix("0x"), let value = UInt64(text.dropFirst(2), radix: 16) else {
                throw QMPError("gpa2hva 0x\(String(address, radix: 16)) answered \(answer)")
            }
            return value
        }
        self.map = map
        self.reclaimer = reclaimer
        account.processID = processID
        // The RAM the VM was given (its blocks' sizes), not the map's total, which leaves out the holes the
        // firmware shadows (256 KiB below 1 MiB on a pc): an operator thinks in -m sizes.
        account.memoryBytes = reclaimer.backings.values.reduce(0) { $0 + $1.length }
        account.reclaimMethod = reclaimer.methodSummary
        logger.notice("attached to QEMU pid \(processID): \(map.totalBytes >> 20) MiB of guest RAM in \(map.segments.count) segments; reclaim by \(reclaimer.methodSummary)",
                      metadata: ["blocks": "\(reclaimer.backings.values.map(\.description).sorted())"])
        let choice = HypervisorSwapper.choose(mode: swapMode, processID: processID, hierarchy: memoryCgroups,
                                              memoryTunables: endpoint.memoryTunables)
        swapper = choice.mechanism.map { HypervisorSwapper(mechanism: $0) }
        account.swapMechanism = choice.mechanism?.name
        logger.notice("\(choice.note)")
        if let group = swapper.flatMap({ if case .cgroup(let group) = $0.mechanism { group } else { nil } }),
           let limit = try? group.limitBytes() {
            // A limit an earlier agent left: released until the policy asks for one again.
            try? group.setLimit(nil)
            logger.notice("removed a memory limit of \(limit >> 20) MiB left on \(group.path) by an earlier run")
        }
        if pauseMarkers.contains(endpoint.name) {
            // An earlier agent paused this VM and did not live to resume it.
            do {
                try qmp.resume()
                logger.notice("resumed the VM an earlier ballonet-host paused (marker \(pauseMarkers.path(of: endpoint.name)))")
            } catch {
                logger.error("cannot resume the VM an earlier ballonet-host paused: \(error)")
            }
            pauseMarkers.remove(endpoint.name)
        }
    }

    /// Pauses (QMP `stop`) or resumes (`cont`) the VM for the low state. The marker is written before the
    /// stop and removed after the cont, so a VM this agent paused is always one it (or its successor) resumes.
    func setPaused(_ pause: Bool, reason: String) {
        guard pause != paused else { return }
        do {
            let qmp = try endpoint.monitor.open(timeout: .seconds(2))
            if pause {
                try pauseMarkers.add(endpoint.name)
                try qmp.pause()
            } else {
                try qmp.resume()
                pauseMarkers.remove(endpoint.name)
            }
            paused = pause
            account.paused = pause
            logger.notice("\(pause ? "paused" : "resumed"): \(reason)")
        } catch {
            logger.error("cannot \(pause ? "pause" : "resume") the VM: \(error)")
        }
    }

    /// Carries out this round's hypervisor-swap limit.
    func applySwapLimit(_ limit: UInt64?, reason: String) {
        account.swapReason = reason
        guard let swapper, let reclaimer, let figures else { return }
        let before = swapper.limitBytes
        do {
            if let done = try swapper.apply(limit: limit, figures: figures, reclaimer: reclaimer) {
                if before == nil && limit != nil { logger.notice("hypervisor swapping starts: \(reason)") }
                if before != nil && limit == nil { logger.notice("hypervisor swapping ends: \(reason)") }
                logger.info("\(done)", metadata: ["swap_limit_mib": "\(limit.map { "\($0 >> 20)" } ?? "none")"])
            }
        } catch {
            logger.warning("hypervisor swap by \(swapper.mechanism.name) failed: \(error)")
        }
        account.swapLimitBytes = swapper.limitBytes
        account.pagedOutBytes = swapper.pagedOutBytes
    }

    static func freshSessionID() -> UInt64 { UInt64.random(in: 1...UInt64.max) }

    /// Ends the port connection (the session with it) and reconnects after the backoff.
    func disconnect(nowMillis: UInt64, reason: String, misbehaved: Bool) {
        guard port != nil else { return }
        flush()
        port = nil
        session = nil
        steering.sessionStarted()
        account.state = "reconnecting: \(reason)"
        if misbehaved {
            logger.warning("session reset: \(reason)")
            scheduleReconnect(nowMillis: nowMillis)
        } else {
            logger.notice("session ended: \(reason)")
            reconnectDelayMillis = RuntimeTiming.reconnectMinMillis
            nextConnectMillis = nowMillis + reconnectDelayMillis
        }
    }

    // MARK: Traffic

    func send(_ message: Message, requestID: UInt32 = 0) {
        guard let port else { return }
        do {
            port.outbox += try FrameEncoder.encode(message, requestID: requestID)
        } catch {
            logger.error("cannot encode \(message.type): \(error)")
        }
        flush()
    }

    /// Writes what the port takes now; the rest waits for POLLOUT.
    func flush() {
        guard let port, !port.outbox.isEmpty else { return }
        do {
            let written = try port.outbox.withUnsafeBytes { buffer in try port.descriptor.send(buffer) }
            port.outbox.removeFirst(written)
        } catch let error as SystemCallError where error.errno == .EAGAIN {
            // The port is full; POLLOUT brings us back.
        } catch {
            logger.debug("write to port: \(error)")
        }
    }

    /// Reads what arrived and runs it through the session.
    func readPort(nowMillis: UInt64) {
        guard let port else { return }
        var bytes: [UInt8] = []
        do {
            bytes = try port.descriptor.receive(upTo: RuntimeTiming.readChunkBytes)
        } catch {
            if error.errno == .EAGAIN { return }
            disconnect(nowMillis: nowMillis, reason: "port read failed: \(error)", misbehaved: false)
            return
        }
        guard !bytes.isEmpty else {
            disconnect(nowMillis: nowMillis, reason: "QEMU closed the port socket", misbehaved: false)
            return
        }
        for event in port.decoder.feed(bytes) {
            guard var session else { return }
            let actions = session.receive(event, nowMillis: nowMillis, freshSessionID: Self.freshSessionID)
            self.session = session
            if perform(actions, nowMillis: nowMillis) == false { return }
        }
    }

    /// Periodic work: the session's pings, a repeated hello while the guest is silent, the steering.
    func tick(nowMillis: UInt64) {
        if drivesVirtioBalloon, !paused, reclaimer != nil {
            steerVirtioBalloon(nowMillis: nowMillis)
            return
        }
        // A paused guest cannot answer pings; its session waits with it.
        guard !paused, var session else { return }
        let actions = session.tick(nowMillis: nowMillis)
        self.session = session
        guard perform(actions, nowMillis: nowMillis) else { return }
        if session.negotiated == nil {
            // Our hello may have reached a guest that had already sent its own into an unconnected port:
            // a repeated hello makes an established guest begin anew and send a fresh one.
            if nowMillis >= helloSentMillis + RuntimeTiming.helloRepeatMillis {
                let hello = session.hello(nowMillis: nowMillis)
                self.session = session
                send(hello)
                helloSentMillis = nowMillis
            }
            return
        }
        steer(nowMillis: nowMillis)
    }

    /// The balloon size (pages) the steering asks for now, to bring the VM to its target; nil: nothing to send.
    private func nextBalloonRequest(nowMillis: UInt64) -> UInt64? {
        let memoryPages = account.memoryBytes / Self.pageSize
        let targetPages = min(account.targetBytes / Self.pageSize, memoryPages)
        return steering.next(wantedPages: memoryPages - targetPages, balloonPages: account.balloonBytes / Self.pageSize, nowMillis: nowMillis)
    }

    /// The wire's page: 4 KiB, whatever size the guest pins.
    static let pageSize: UInt64 = 4096

    private func steer(nowMillis: UInt64) {
        let pageSize = Self.pageSize
        guard let request = nextBalloonRequest(nowMillis: nowMillis), var session else { return }
        let requestID = session.nextRequest()
        self.session = session
        account.requestedBalloonBytes = request * pageSize
        logger.info("balloon target \((request * pageSize) >> 20) MiB (VM target \(account.targetBytes >> 20) MiB, balloon now \(account.balloonBytes >> 20) MiB)",
                    metadata: ["session": "\(session.sessionID)"])
        send(.setTarget(SetTarget(balloonPages: request)), requestID: requestID)
    }

    /// The fallback for a guest without ballonet-guest: the same steering, carried out by libvirt's balloon
    /// (the guest's virtio-balloon driver gives pages back and QEMU discards them). The balloon's size is
    /// RAM − the balloon's "actual", read from libvirt's statistics in `sampleHostFigures`.
    private func steerVirtioBalloon(nowMillis: UInt64) {
        guard let balloon = endpoint.virtioBalloon, account.targetBytes > 0, let request = nextBalloonRequest(nowMillis: nowMillis) else { return }
        let pageSize = Self.pageSize
        let keepKiB = (account.memoryBytes - request * pageSize) >> 10
        do {
            try balloon.domain().setBalloonTarget(kibibytes: keepKiB)
            account.requestedBalloonBytes = request * pageSize
            logger.info("virtio balloon target \((request * pageSize) >> 20) MiB: the guest keeps \(keepKiB >> 10) MiB (VM target \(account.targetBytes >> 20) MiB, balloon now \(account.balloonBytes >> 20) MiB)")
        } catch {
            logger.warning("cannot set the virtio balloon through libvirt: \(error)")
            steering.sessionStarted()
        }
    }

    /// Reads the virtio balloon's size (RAM − actual) from libvirt's statistics.
    private func readVirtioBalloon() {
        guard drivesVirtioBalloon, let balloon = endpoint.virtioBalloon else { return }
        do {
            let stats = try balloon.domain().memoryStats()
            // VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON, KiB: what the guest has now.
            guard let actualKiB = stats[6], actualKiB <= account.memoryBytes >> 10 else { return }
            account.recordBalloon(account.memoryBytes - actualKiB << 10)
        } catch {
            logger.debug("virtio balloon statistics: \(error)")
        }
    }

    /// Carries out the session's actions; false when the session ended.
    @discardableResult
    private func perform(_ actions: [HostSessionAction], nowMillis: UInt64) -> Bool {
        for action in actions {
            let sessionID = session?.sessionID ?? 0
            switch action {
            case .send(let message, let requestID):
                send(message, requestID: requestID)
            case .established(let negotiated, let balloonPages):
                account.sessions += 1
                account.agentVersion = negotiated.remoteSoftwareVersion
                account.state = "established"
                reconnectDelayMillis = RuntimeTiming.reconnectMinMillis
                steering.sessionStarted()
                logger.notice("session established with ballonet-guest \(negotiated.remoteSoftwareVersion), protocol \(negotiated.version); guest balloon \(VMAccount.bytes(ofPages: balloonPages) >> 20) MiB",
                              metadata: ["session": "\(sessionID)", "guest_session": "\(negotiated.remoteSessionID)"])
            case .reclaim(let request):
                reclaim(request, nowMillis: nowMillis)
            case .balloonChanged(let pages, let reason):
                account.recordBalloon(VMAccount.bytes(ofPages: pages))
                logger.debug("balloon \(VMAccount.bytes(ofPages: pages) >> 20) MiB: \(reason)", metadata: ["session": "\(sessionID)"])
            case .guestReleasedUnderPressure(let pages):
                account.pressureReleasedBytes = account.pressureReleasedBytes.addingReportingOverflow(VMAccount.bytes(ofPages: pages)).partialValue
                steering.guestReleasedUnderPressure(balloonPagesNow: account.balloonBytes / 4096, nowMillis: nowMillis)
                account.requestedBalloonBytes = (steering.requestedPages ?? 0) * 4096
                logger.notice("guest released \(VMAccount.bytes(ofPages: pages) >> 20) MiB under memory pressure; not inflating for \(steering.settings.pressureBackoffMillis / 1000) s",
                              metadata: ["session": "\(sessionID)"])
            case .statsReceived(let sample):
                account.record(sample)
                if let active = VMAccount.activeBytes(of: sample) {
                    // The guest says what period the sample covers; bounded, since it is guest input.
                    let period = min(max(UInt64(sample.periodMillis), GuestInputLimits.samplePeriodMillis.lowerBound),
                                     GuestInputLimits.samplePeriodMillis.upperBound)
                    estimator.observe(activeBytes: min(active, account.memoryBytes), elapsedMillis: period)
                    estimateFreshUntilMillis = nowMillis + RuntimeTiming.estimateLifetimeMillis(samplePeriodMillis: period)
                    account.guestWorkingSetEstimateBytes = estimator.estimateBytes
                }
            case .refused(let why):
                account.refusedMessages += 1
                account.lastRefusal = why
                logger.warning("refused guest message: \(why)", metadata: ["session": "\(sessionID)"])
            case .reset(let why):
                disconnect(nowMillis: nowMillis, reason: why, misbehaved: true)
                return false
            case .note(let text):
                logger.info("\(text)", metadata: ["session": "\(sessionID)"])
            }
        }
        return true
    }

    private func reclaim(_ request: ReclaimRequest, nowMillis: UInt64) {
        guard let reclaimer, var session else { return }
        let outcome: Result<ReclaimOutcome, ReclaimError>
        do {
            outcome = .success(try reclaimer.reclaim(request.extents, pageOut: !leaveBalloonToKSM))
        } catch {
            outcome = .failure(error)
        }
        switch outcome {
        case .success(let done):
            account.reclaimedBytes += done.freedBytes
            account.batchesReclaimed += 1
            logger.debug("reclaimed batch: \(done.requestedBytes >> 10) KiB asked, \(done.freedBytes >> 10) KiB freed",
                         metadata: ["session": "\(session.sessionID)", "batch": "\(request.batchID)"])
        case .failure(let error):
            account.batchesDeclined += 1
            logger.error("reclaim failed, declining the batch: \(error)", metadata: ["session": "\(session.sessionID)", "batch": "\(request.batchID)"])
        }
        let actions = session.reclaimFinished(request, outcome: outcome)
        self.session = session
        perform(actions, nowMillis: nowMillis)
    }

    /// Reads guest RAM's figures and the memfd's size; ends and begins the host sampler's periods. smaps (a
    /// walk of QEMU's page tables) is read when `precise` (the host is short of memory), while the VM is
    /// swapped or paused, when a sample is due, and at least every `RuntimeTiming.smapsMaximumIntervalMillis`;
    /// in between, QEMU's status counters stand in (`GuestRAMCounterCalibration`).
    func sampleHostFigures(nowMillis: UInt64, precise: Bool) {
        guard let reclaimer else { return }
        readVirtioBalloon()
        do {
            let samplerDue = sampler.map { $0.clearedAtMillis == nil || $0.isDue(nowMillis: nowMillis) } ?? false
            let stale = smapsReadMillis.map { nowMillis >= $0 + RuntimeTiming.smapsMaximumIntervalMillis } ?? true
            let needsSmaps = precise || samplerDue || stale || paused || swapper?.limitBytes != nil
            let figures: GuestRAMFigures
            var readNanos: UInt64 = 0
            if !needsSmaps, let calibration, let last = self.figures {
                figures = calibration.estimate(status: try ProcFiles.status(of: .id(reclaimer.processID)), last: last)
            } else {
                let started = MonotonicInstant.now()
                figures = try reclaimer.guestRAMFigures()
                readNanos = max(UInt64(clamping: MonotonicInstant.now().duration(since: started).nanosecondsClamped), 1)
                calibration = (try? ProcFiles.status(of: .id(reclaimer.processID))).map { GuestRAMCounterCalibration(figures: figures, status: $0) }
                smapsReadMillis = nowMillis
            }
            self.figures = figures
            account.residentBytes = figures.residentBytes
            account.swappedBytes = figures.swappedBytes
            account.backingFileBytes = reclaimer.fileAllocatedBytes()
            recordSharing(figures, processID: reclaimer.processID)
            if var sampler {
                if sampler.isDue(nowMillis: nowMillis), readNanos > 0,
                   let sample = sampler.finishPeriod(referencedBytes: figures.referencedBytes, nowMillis: nowMillis, readNanos: readNanos) {
                    hostEstimator.observe(activeBytes: min(sample.activeBytes, account.memoryBytes), elapsedMillis: sample.elapsedMillis)
                    hostEstimateFreshUntilMillis = nowMillis + RuntimeTiming.estimateLifetimeMillis(samplePeriodMillis: sampler.periodMillis)
                    account.hostReferencedBytes = sample.activeBytes
                    account.hostSamples &+= 1
                    account.hostWorkingSetEstimateBytes = hostEstimator.estimateBytes
                    account.samplingCostMicros = sampler.lastCostNanos / 1000
                    logger.debug("sampled: \(sample.activeBytes >> 20) MiB referenced in \(sample.elapsedMillis) ms, estimate \((hostEstimator.estimateBytes ?? 0) >> 20) MiB, cost \(sampler.lastCostNanos / 1000) µs",
                                 metadata: ["sampler": "clear_refs"])
                }
                if sampler.clearedAtMillis == nil || sampler.isDue(nowMillis: nowMillis) {
                    do {
                        try sampler.startPeriod(processID: reclaimer.processID, nowMillis: nowMillis)
                    } catch {
                        // The estimate goes stale and drops out; the resident figures above still count.
                        logger.warning("cannot clear QEMU's accessed bits for idle page sampling: \(error)")
                    }
                }
                account.samplingPeriodMillis = sampler.periodMillis
                self.sampler = sampler
            }
        } catch {
            logger.warning("cannot read QEMU's memory figures: \(error)")
            if !ProcessControl.exists(reclaimer.processID) {
                account.state = "QEMU (pid \(reclaimer.processID)) is gone"
                // Nothing is paused or limited any more; a marker left would resume a later VM of this name.
                if paused { pauseMarkers.remove(endpoint.name) }
                paused = false
                account.paused = false
                swapper = nil
                account.swapLimitBytes = nil
                self.reclaimer = nil
                self.map = nil
                self.figures = nil
                calibration = nil
                port = nil
                session = nil
            }
        }
    }

    /// Sharing's figures: whether guest RAM is mergeable (smaps), what KSM merged of it (ksm_stat), and what
    /// that saves the host (`SharingAccounting`).
    private func recordSharing(_ figures: GuestRAMFigures, processID: Int32) {
        account.mergeable = figures.mergeable
        if endpoint.sharing == nil {
            account.sharing = figures.mergeable ? "on: QEMU's mem-merge (attached QEMU)" : "off: QEMU's mem-merge or its RAM backing (attached QEMU)"
        }
        if figures.mergeable, let stat = try? ProcFiles.ksmStat(of: .id(processID)) {
            account.ksmMergingBytes = stat.mergingPages.map(VMAccount.bytes(ofPages:))
            account.ksmZeroPageBytes = stat.zeroPages.map(VMAccount.bytes(ofPages:))
            account.ksmProfitBytes = stat.processProfit
        } else if !figures.mergeable {
            account.ksmMergingBytes = nil
            account.ksmZeroPageBytes = nil
            account.ksmProfitBytes = nil
        }
        account.sharingSavedBytes = figures.mergeable
            ? SharingAccounting.savedBytes(residentBytes: figures.residentBytes, proportionalBytes: figures.proportionalBytes,
                                           zeroPageBytes: account.ksmZeroPageBytes ?? 0, balloonBytes: account.balloonBytes)
            : nil
        account.memoryMode = MemoryMode.describe(method: reclaimer?.methodSummary ?? "", mergeable: figures.mergeable,
                                                 leftToKSM: leaveBalloonToKSM, virtioBalloon: drivesVirtioBalloon)
    }

    /// Memory the host still waits for KSM to free behind this VM's balloon (while its balloon pages are left
    /// to KSM): what it holds above its target, at most its balloon. KSM's own zero-page count cannot say it:
    /// here a 219 MiB balloon left the host while ksm_zero_pages counted 0–23 MiB (the pages sat in host huge
    /// pages that ksmd split).
    /// Within `tolerance` of the target counts as there (the swap policy's tolerance, as for swapping).
    func pendingZeroMergeBytes(tolerance: UInt64) -> UInt64 {
        let (bar, overflow) = account.targetBytes.addingReportingOverflow(tolerance)
        guard leaveBalloonToKSM, account.mergeable == true, !overflow, account.residentBytes > bar else { return 0 }
        return min(account.residentBytes - account.targetBytes, account.balloonBytes)
    }

    /// Sends goodbye and closes (the agent is stopping).
    func close(reason: String) {
        guard port != nil else { return }
        if isEstablished { send(.goodbye(Goodbye(reason: .shutdown, message: reason))) }
        flush()
        port = nil
        session = nil
    }
}

/// The engine's timing constants.
enum RuntimeTiming {
    /// Reconnect quickly after a clean end (QEMU restarted the chardev), back off to 30 s after failures
    /// or a misbehaving guest, so a hostile guest cannot keep the host busy with handshakes.
    static let reconnectMinMillis: UInt64 = 500
    static let reconnectMaxMillis: UInt64 = 30_000
    /// How long the host waits for a guest's hello before saying hello again.
    static let helloRepeatMillis: UInt64 = 5_000
    /// How long a working-set estimate stays good without a new sample: three of the guest's periods, at
    /// least 30 s. After that the VM counts as fully active (not trimmed) until samples come again.
    static func estimateLifetimeMillis(samplePeriodMillis: UInt64) -> UInt64 { max(3 * samplePeriodMillis, 30_000) }
    /// The longest the host goes without reading a VM's smaps (when the sampler is off or slower): the
    /// status counters that stand in between reads drift with QEMU's own memory, and swap-in is seen only there.
    static let smapsMaximumIntervalMillis: UInt64 = 5_000
    /// One read from a port: a few frames' worth; the loop comes back for more.
    static let readChunkBytes = 256 << 10
}
