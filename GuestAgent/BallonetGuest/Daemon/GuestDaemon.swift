import BallonetLinux
import BallonetWire
import Logging

/// Everything the daemon needs to know, resolved from defaults, the config file and flags.
public struct GuestDaemonSettings: Sendable {
    public var address: HostPortAddress
    public var reconnectMinMillis: UInt64 = 200
    public var reconnectMaxMillis: UInt64 = 10_000
    public var balloonDirectory: String
    public var mountTmpfs: Bool = true
    public var hugePages: Bool = true
    public var limits: BalloonLimits
    public var pressure: PressureGuard.Settings
    public var samplePeriodMillis: UInt64 = 10_000
    public var workingSetMethod: GuestSampler.WorkingSetMethod
    public var session: GuestSession.Settings
    /// On SIGTERM, how long to wait for the host to answer batches in flight before exiting with them
    /// still pinned (they stay in the balloon file; the next agent adopts them).
    public var shutdownAnswerWaitMillis: UInt64 = 5_000

    public init(address: HostPortAddress, balloonDirectory: String, limits: BalloonLimits,
                pressure: PressureGuard.Settings, session: GuestSession.Settings,
                workingSetMethod: GuestSampler.WorkingSetMethod) {
        self.address = address
        self.workingSetMethod = workingSetMethod
        self.balloonDirectory = balloonDirectory
        self.limits = limits
        self.pressure = pressure
        self.session = session
    }
}

/// The guest agent's daemon: one thread, one poll loop over the host port, the signal descriptor and the
/// PSI trigger. It carries out what the pure parts decide (the session, the balloon controller, the
/// pressure guard) and reports facts back to them.
///
/// Why a poll loop and not an async service group: the agent watches three descriptors and must stay
/// small (the guest pays for every MiB it uses); a single thread with no runtime threads behind it is the
/// least memory and the easiest to reason about for the ordering rules of safety invariant 2.
public final class GuestDaemon {
    let settings: GuestDaemonSettings
    var logger: Logger
    let balloon: BalloonFile
    var ledger = BalloonLedger()
    var session: GuestSession
    var pressure: PressureGuard
    var sampler: GuestSampler
    var port: HostPort?
    var decoder = FrameDecoder()
    var nextBatchID: UInt64 = 1
    var targetKnown = false
    var reconnectDelayMillis: UInt64
    var nextConnectMillis: UInt64 = 0
    var nextSampleMillis: UInt64 = 0
    /// When the pressure guard last looked, and how long until it looks again while the balloon is active
    /// (set by that look: sooner near the floor or while memory falls fast).
    var lastPressureCheckMillis: UInt64 = 0
    var activeCheckIntervalMillis: UInt64 = GuestDaemon.idleCheckMillis
    /// Look now: at start, and when the PSI trigger fired.
    var pressureCheckRequested = true
    var lastAssessment = PressureAssessment(underPressure: false, reason: nil, inflationHeldBack: false)
    var availablePages: UInt64 = 0
    var inflationPausedUntilMillis: UInt64 = 0
    var stopping = false
    let signals: FileDescriptor
    let pressureTrigger: PressureTrigger?
    /// MemAvailable for the checks between samples; nil when /proc/meminfo could not be opened (each check
    /// then reads it whole, and a failed read counts as no memory available).
    let memAvailableProbe: MemAvailableProbe?

    /// How often the daemon looks at memory when nothing wakes it while the balloon holds pages the guest
    /// could take back (or is about to pin some): once a second bounds how late a floor breach without a
    /// PSI stall is noticed. A look reads MemAvailable alone, through `MemAvailableProbe`.
    static let idleCheckMillis: UInt64 = 1_000
    /// How often while the balloon holds nothing to give back: a look could only log pressure and hold
    /// back the next inflation, and a target that asks for more pages brings a fresh look first. Every
    /// look costs guest CPU (under TCG about a millisecond), and most guests sit here most of the time.
    static let restingCheckMillis: UInt64 = 10_000
    /// How often once MemAvailable is within twice the floor: a guest without swap can go from there to
    /// the OOM killer in well under a second when something allocates fast, so look ten times as often.
    static let nearFloorCheckMillis: UInt64 = 100
    /// How often while MemAvailable is falling by a batch or more between looks: something is allocating
    /// fast (at TCG speeds, hundreds of MiB a second), and only a prompt release keeps the OOM killer away.
    static let fallingCheckMillis: UInt64 = 10
    /// The PSI trigger's window: 1 s (the kernel takes 500 ms to 10 s). Its stall threshold is the
    /// guard's avg10 threshold applied to the window (10 % gives 100 ms), so no avg10 can reach the
    /// threshold without the trigger firing first: an average of 2 s periods is at or above it only
    /// if one period was, and such a period holds a 1 s window at or above it. That is why the checks
    /// between trigger events need not read PSI at all while there is no pressure.
    static let psiTriggerWindowMicros: UInt64 = 1_000_000

    public init(settings: GuestDaemonSettings, logger: Logger) throws {
        self.settings = settings
        self.logger = logger
        let now = Self.nowMillis()
        session = GuestSession(sessionID: Self.randomSessionID(), settings: settings.session, nowMillis: now)
        pressure = PressureGuard(settings: settings.pressure)
        sampler = GuestSampler(periodMillis: UInt32(clamping: settings.samplePeriodMillis), method: settings.workingSetMethod)
        reconnectDelayMillis = settings.reconnectMinMillis

        // Signals arrive as readable bytes on a descriptor, in the loop, never in the middle of a batch.
        try ProcessControl.blockSignals([.terminate, .interrupt])
        signals = try ProcessControl.openSignalDescriptor(for: [.terminate, .interrupt])
        try ProcessControl.ignoreBrokenPipeSignal()

        Self.prepareSystem(logger: logger)
        balloon = try BalloonFile(directory: settings.balloonDirectory, mountTmpfs: settings.mountTmpfs,
                                  hugePages: settings.hugePages, maxBatchPages: settings.limits.batchPages)
        pressureTrigger = Self.openPressureTrigger(thresholdHundredths: settings.pressure.psiSomeAvg10Threshold, logger: logger)
        do {
            memAvailableProbe = try MemAvailableProbe()
        } catch {
            logger.warning("cannot open /proc/meminfo: \(error); each pressure check will try to read it anew")
            memAvailableProbe = nil
        }
        adoptBalloon()
    }

    static func nowMillis() -> UInt64 { MonotonicInstant.now().nanoseconds / 1_000_000 }

    static func randomSessionID() -> UInt64 { UInt64.random(in: 1...UInt64.max) }

    /// Settings the balloon's safety depends on; each failure is said plainly, none is fatal by itself
    /// (pinning will fail with its own clear error if the privilege is really missing).
    static func prepareSystem(logger: Logger) {
        // Safety invariant 4: mlocked pages must not be migrated by compaction, or reported PFNs go stale.
        do {
            try FileSystem.writeFile("/proc/sys/vm/compact_unevictable_allowed", "0\n")
        } catch {
            logger.warning("cannot set vm.compact_unevictable_allowed=0: \(error); pinned pages may move, so reports are re-read before every send")
        }
        // Killing the agent frees nothing (the balloon lives in its tmpfs file) and would leave the guest
        // without the one process that can give the balloon back: keep the OOM killer off it.
        do {
            try FileSystem.writeFile("/proc/self/oom_score_adj", "-1000\n")
        } catch {
            logger.warning("cannot set oom_score_adj: \(error); the OOM killer may pick the agent, which frees nothing")
        }
        if let limit = try? ResourceLimit.current(.lockedMemory), limit.soft != ResourceLimit.unlimited {
            let wanted = ResourceLimit(soft: ResourceLimit.unlimited, hard: ResourceLimit.unlimited)
            if (try? ResourceLimit.set(.lockedMemory, to: wanted)) == nil {
                _ = try? ResourceLimit.set(.lockedMemory, to: ResourceLimit(soft: limit.hard, hard: limit.hard))
            }
        }
        if let capabilities = try? Capability.effective() {
            for needed in [Capability.ipcLock, .sysAdmin] where !capabilities.contains(needed.bit) {
                let why = needed == .ipcLock ? "to pin balloon pages beyond RLIMIT_MEMLOCK" : "to read page frame numbers from /proc/self/pagemap and to mount the balloon's tmpfs"
                logger.error("ballonet-guest lacks \(needed.name), which it needs \(why)")
            }
        }
    }

    /// What is written to /proc/pressure/memory for an avg10 threshold of `thresholdHundredths` (hundredths
    /// of a percent): "some <stall µs> <window µs>", the stall being that share of the window, at least
    /// 1 µs (the kernel refuses 0) and at most the window.
    public static func psiTrigger(thresholdHundredths: UInt32) -> String {
        let stallMicros = max(1, UInt64(thresholdHundredths) * psiTriggerWindowMicros / 10_000)
        return "some \(min(stallMicros, psiTriggerWindowMicros)) \(psiTriggerWindowMicros)"
    }

    static func openPressureTrigger(thresholdHundredths: UInt32, logger: Logger) -> PressureTrigger? {
        do {
            return try PressureTrigger(psiTrigger(thresholdHundredths: thresholdHundredths))
        } catch {
            logger.notice("no PSI trigger (\(error)); the pressure guard reads PSI at every check instead")
            return nil
        }
    }

    /// Safety invariant 3: pages a previous agent left pinned come back under this one before it talks to
    /// any host. They count as never reported, so the next session hears of them afresh.
    func adoptBalloon() {
        do {
            for adopted in try balloon.adoptExistingBatches() {
                ledger.add(BalloonBatch(id: nextBatchID, fileOffset: adopted.fileOffset, pageCount: adopted.pageCount,
                                        pageOrder: adopted.pageOrder, ranges: adopted.ranges, state: .pinned))
                nextBatchID += 1
            }
        } catch {
            logger.error("cannot re-adopt the balloon left in \(balloon.path): \(error)")
        }
        if ledger.pinnedPages > 0 {
            logger.notice("re-adopted a balloon of \(ledger.pinnedPages / 256) MiB (\(ledger.batches.count) batches) left by an earlier agent")
        }
    }

    /// Runs until SIGTERM or SIGINT; returns the exit status.
    public func run() -> Int32 {
        _ = try? Systemd.notify("READY=1\nSTATUS=waiting for the host on \(settings.address)")
        logger.info("ballonet-guest \(BallonetVersion.software) started", metadata: [
            "port": "\(settings.address)", "floor_mib": "\(settings.limits.floorPages / 256)",
            "batch_mib": "\(settings.limits.batchPages / 256)"])
        while !stopping {
            let now = Self.nowMillis()
            if port == nil && now >= nextConnectMillis { connect(now: now) }
            if pressureCheckRequested || now >= pressureCheckDeadline() { checkPressure(now: now) }
            if now >= nextSampleMillis { sendSample(now: now) }
            perform(session.tick(nowMillis: now, ledger: &ledger))
            let worked = stepBalloon(now: now)
            waitForEvents(timeoutMillis: worked ? 0 : nextWakeMillis(now: now))
        }
        shutDown()
        return 0
    }

    func nextWakeMillis(now: UInt64) -> UInt64 {
        var wake = min(nextSampleMillis, pressureCheckDeadline())
        if port == nil { wake = min(wake, nextConnectMillis) }
        return wake > now ? wake - now : 0
    }

    func waitForEvents(timeoutMillis: UInt64) {
        var requests = [PollRequest(descriptor: signals.rawValue, events: .readable)]
        if let port { requests.append(PollRequest(descriptor: port.rawDescriptor, events: .readable)) }
        if let pressureTrigger { requests.append(PollRequest(descriptor: pressureTrigger.descriptor.rawValue, events: .priority)) }
        do {
            _ = try Poll.wait(&requests, timeout: .milliseconds(Int64(min(timeoutMillis, 60_000))))
        } catch {
            logger.error("poll failed: \(error)")
            MonotonicClock.sleep(for: .milliseconds(100))
            return
        }
        for request in requests where !request.returnedEvents.isEmpty {
            if request.descriptor == signals.rawValue {
                logger.notice("stopping on a signal: telling the host and releasing the balloon")
                stopping = true
            } else if request.descriptor == pressureTrigger?.descriptor.rawValue {
                pressureCheckRequested = true
            } else if port != nil {
                readFromHost()
            }
        }
    }

    // MARK: Connection

    func connect(now: UInt64) {
        do {
            let opened = try HostPort(settings.address)
            port = opened
            decoder = FrameDecoder()
            let hello = session.restart(sessionID: Self.randomSessionID(), balloonPages: ledger.pinnedPages, nowMillis: now)
            logger[metadataKey: "session"] = "\(session.sessionID)"
            try opened.write(try FrameEncoder.encode(hello))
            logger.info("connected to the host; hello sent", metadata: ["balloon_pages": "\(ledger.pinnedPages)"])
            reconnectDelayMillis = settings.reconnectMinMillis
        } catch {
            disconnect(reason: "cannot reach the host on \(settings.address): \(error)", now: now, level: .debug)
        }
    }

    func disconnect(reason: String, now: UInt64, level: Logger.Level = .notice, retryAfterMillis: UInt64? = nil) {
        if port != nil || level != .debug { logger.log(level: level, "\(reason); retrying in \(retryAfterMillis ?? reconnectDelayMillis) ms") }
        port = nil
        ledger.endHostSession()
        targetKnown = false
        nextConnectMillis = now + (retryAfterMillis ?? reconnectDelayMillis)
        reconnectDelayMillis = min(reconnectDelayMillis * 2, settings.reconnectMaxMillis)
    }

    func readFromHost() {
        guard let port else { return }
        var events: [DecodeEvent] = []
        do {
            try port.readAvailable(into: &decoder) { events.append($0) }
        } catch {
            disconnect(reason: "\(error)", now: Self.nowMillis())
        }
        let now = Self.nowMillis()
        for event in events {
            guard self.port != nil else { break }  // the session ended on an earlier event
            if case .error(let error) = event { logger.warning("bad bytes from the host: \(error)") }
            perform(session.receive(event, nowMillis: now, ledger: &ledger, freshSessionID: Self.randomSessionID))
        }
    }

    func send(_ message: Message, requestID: UInt32? = nil) {
        guard let port else { return }
        do {
            try port.write(try FrameEncoder.encode(message, requestID: requestID ?? session.nextRequest()))
        } catch let error as EncodeError {
            logger.error("cannot encode \(message.type): \(error)")
        } catch {
            disconnect(reason: "\(error)", now: Self.nowMillis())
        }
    }

    func perform(_ actions: [GuestSessionAction]) {
        for action in actions {
            switch action {
            case .send(let message, let requestID):
                send(message, requestID: requestID)
            case .established(let negotiated):
                logger[metadataKey: "host_session"] = "\(negotiated.hostSessionID)"
                logger.notice("session established with ballonet-host \(negotiated.remoteSoftwareVersion), protocol \(negotiated.version)")
                _ = try? Systemd.notify("STATUS=connected to ballonet-host \(negotiated.remoteSoftwareVersion)")
                reportUnreportedBatches()
            case .targetChanged(let pages):
                if !targetKnown || pages != session.targetPages {
                    logger.info("host set the balloon target to \(pages / 256) MiB", metadata: ["target_pages": "\(pages)"])
                }
                targetKnown = true
            case .releaseDeclined:
                release(ledger.declined, reason: .declined)
            case .restart(let reason, let retry):
                disconnect(reason: "session ended: \(reason)", now: Self.nowMillis(), level: .warning, retryAfterMillis: retry)
            case .note(let text):
                logger.info("\(text)")
            }
        }
    }

    // MARK: Balloon

    /// Batches the current host has not heard of (re-adopted ones, fenced ones): reported afresh, PFNs
    /// re-read now, so this host may reclaim behind them.
    func reportUnreportedBatches() {
        for batch in ledger.batches where batch.state == .pinned || batch.state == .fenced {
            report(batch.id, fileOffset: batch.fileOffset)
        }
    }

    func report(_ id: UInt64, fileOffset: UInt64) {
        guard let hostSession = session.hostSession?.hostSessionID else { return }
        do {
            let (ranges, order) = try balloon.frames(ofBatchAt: fileOffset)
            ledger.markReported(id, ranges: ranges, pageOrder: order)
            send(.inflateReport(InflateReport(hostSessionID: hostSession, batchID: id, pageOrder: order,
                                              balloonPagesAfter: ledger.pinnedPages, ranges: ranges)))
            logger.debug("reported batch", metadata: ["batch": "\(id)", "pages": "\(ranges.pageCount)", "ranges": "\(ranges.count)", "order": "\(order)"])
        } catch {
            logger.error("cannot read the frames of batch \(id): \(error)", metadata: ["batch": "\(id)"])
        }
    }

    /// One step of the balloon toward the target; true if it did something (so the loop comes straight back).
    func stepBalloon(now: UInt64) -> Bool {
        let connected = session.hostSession != nil && targetKnown
        if connected && session.targetPages > ledger.pinnedPages, let available = try? readMemAvailable() {
            // Before each batch, what the kernel says now: the floor check must not run on a stale figure.
            availablePages = available / wirePageSize
        }
        let observation = BalloonObservation(
            targetPages: connected ? session.targetPages : ledger.pinnedPages,
            balloonPages: ledger.pinnedPages, releasablePages: ledger.releasablePages,
            unansweredBatches: ledger.unansweredBatchCount, availablePages: availablePages,
            underPressure: lastAssessment.underPressure,
            inflationHeldBack: lastAssessment.inflationHeldBack || now < inflationPausedUntilMillis)
        switch nextBalloonStep(observation, limits: settings.limits) {
        case .hold:
            return false
        case .inflate(let pages):
            guard connected else { return false }
            return inflate(pages: pages, now: now)
        case .deflate(let pages, let cause):
            let batches = cause == .pressure ? ledger.releasable(covering: pages) : ledger.releasable(notExceeding: pages)
            guard !batches.isEmpty else { return false }
            if cause == .pressure {
                logger.warning("memory pressure: releasing \(batches.reduce(0) { $0 + $1.pageCount } / 256) MiB at once (\(lastAssessment.reason ?? "pressure"))")
            }
            release(batches, reason: cause == .pressure ? .guestPressure : .hostAsked)
            return cause == .target
        }
    }

    func inflate(pages: UInt64, now: UInt64) -> Bool {
        let id = nextBatchID
        nextBatchID += 1
        do {
            let pinned = try balloon.pin(pages: pages)
            ledger.add(BalloonBatch(id: id, fileOffset: pinned.fileOffset, pageCount: pinned.pageCount,
                                    pageOrder: pinned.pageOrder, ranges: pinned.ranges, state: .pinned))
            // The PFNs were read from pagemap just now, after the pages were locked: report them as read.
            if let hostSession = session.hostSession?.hostSessionID {
                ledger.markReported(id, ranges: pinned.ranges, pageOrder: pinned.pageOrder)
                send(.inflateReport(InflateReport(hostSessionID: hostSession, batchID: id, pageOrder: pinned.pageOrder,
                                                  balloonPagesAfter: ledger.pinnedPages, ranges: pinned.ranges)))
            }
            return true
        } catch {
            logger.error("cannot pin \(pages / 256) MiB: \(error); holding inflation for \(settings.pressure.backoffMillis / 1000) s")
            inflationPausedUntilMillis = now + settings.pressure.backoffMillis
            return false
        }
    }

    /// Releases batches that the ledger allows releasing, and tells the host which pages came back.
    func release(_ batches: [BalloonBatch], reason: DeflateReason) {
        var freed: [PFNRange] = []
        var released: [UInt64] = []
        for batch in batches where batch.mayRelease {
            do {
                try balloon.release(batchAt: batch.fileOffset)
                freed += batch.ranges.ranges
                released.append(batch.id)
            } catch {
                logger.error("cannot release batch \(batch.id): \(error)", metadata: ["batch": "\(batch.id)"])
            }
        }
        guard ledger.remove(released) else {
            preconditionFailure("released a batch the ledger does not allow releasing")
        }
        guard !freed.isEmpty else { return }
        logger.info("released \(released.count) batches (\(reason))", metadata: ["pages": "\(freed.reduce(0) { $0 + $1.count })"])
        guard let list = try? PFNRangeList.coalescing(ranges: freed) else { return }
        for chunk in list.chunked() {
            send(.deflateReport(DeflateReport(reason: reason, balloonPagesAfter: ledger.pinnedPages, ranges: chunk)))
        }
    }

    // MARK: Pressure and samples

    /// When the guard looks next: on the active cadence while the balloon holds or is about to pin pages
    /// the guest could need back, else at the resting one.
    func pressureCheckDeadline() -> UInt64 {
        let active = ledger.pinnedPages > 0 || (targetKnown && session.targetPages > ledger.pinnedPages)
        return lastPressureCheckMillis + (active ? activeCheckIntervalMillis : Self.restingCheckMillis)
    }

    func readMemAvailable() throws -> UInt64 {
        if let memAvailableProbe { return try memAvailableProbe.read() }
        return try ProcFiles.meminfo().memAvailable
    }

    func checkPressure(now: UInt64) {
        // A trigger that fired, pressure already on, or no trigger at all: PSI must be read. Otherwise the
        // trigger vouches that avg10 is under the threshold (see `psiTriggerWindowMicros`).
        let readStall = pressureTrigger == nil || pressureCheckRequested || lastAssessment.underPressure
        pressureCheckRequested = false
        lastPressureCheckMillis = now
        let psi = readStall ? try? ProcFiles.memoryPressure() : nil
        let previous = availablePages
        // Unreadable counts as nothing available: the guard then gives the balloon back.
        availablePages = ((try? readMemAvailable()) ?? 0) / wirePageSize
        let falling = previous > availablePages && previous - availablePages >= settings.limits.batchPages
        let nearFloor = availablePages < 2 * settings.limits.floorPages
        activeCheckIntervalMillis = falling ? Self.fallingCheckMillis : nearFloor ? Self.nearFloorCheckMillis : Self.idleCheckMillis
        let assessment = pressure.assess(psiSomeAvg10: psi?.some?.avg10, availablePages: availablePages, nowMillis: now)
        if assessment.underPressure && !lastAssessment.underPressure {
            logger.warning("memory pressure: \(assessment.reason ?? "")")
            send(.statsSample(sampler.sample(balloonPages: ledger.pinnedPages, keptFreePages: settings.limits.floorPages + settings.limits.batchPages, nowMillis: now)))
        } else if !assessment.underPressure && lastAssessment.underPressure {
            logger.notice("memory pressure over; inflation held back for \(settings.pressure.backoffMillis / 1000) s")
        }
        lastAssessment = assessment
    }

    func sendSample(now: UInt64) {
        nextSampleMillis = now + settings.samplePeriodMillis
        guard session.hostSession != nil else { return }
        send(.statsSample(sampler.sample(balloonPages: ledger.pinnedPages, keptFreePages: settings.limits.floorPages + settings.limits.batchPages, nowMillis: now)))
    }

    // MARK: Shutdown

    /// A clean stop (safety invariant 3): tell the host, give back what may be given back, wait a bounded
    /// time for answers to batches in flight, then say goodbye. What is still unanswered stays pinned in
    /// the balloon file for the next agent.
    func shutDown() {
        _ = try? Systemd.notify("STOPPING=1")
        if handOver() { return }
        release(ledger.releasable(covering: .max), reason: .shutdown)
        let deadline = Self.nowMillis() + settings.shutdownAnswerWaitMillis
        while ledger.unansweredBatchCount > 0, port != nil, Self.nowMillis() < deadline {
            var requests = [PollRequest(descriptor: port!.rawDescriptor, events: .readable)]
            _ = try? Poll.wait(&requests, timeout: .milliseconds(Int64(deadline - Self.nowMillis())))
            if !requests[0].returnedEvents.isEmpty { readFromHost() }
            release(ledger.releasable(covering: .max), reason: .shutdown)
        }
        if ledger.pinnedPages > 0 {
            logger.warning("stopping with \(ledger.pinnedPages / 256) MiB still pinned (unanswered by the host); the next agent re-adopts it")
        }
        send(.goodbye(Goodbye(reason: .shutdown, message: "ballonet-guest stopping")))
        logger.notice("stopped")
    }
}

extension GuestDaemon {
    /// `<balloon directory>.handover`: written by the package's upgrade with the pid of the agent it is about
    /// to restart. That agent stops without giving the balloon back, and the new one re-adopts it.
    public static func handoverMarker(balloonDirectory: String) -> String { balloonDirectory + ".handover" }

    /// A stop for a handover (an upgrade restarting the agent): the marker names this agent's pid, so a
    /// marker left from an earlier agent never keeps a balloon that a real stop should give back. The
    /// balloon stays pinned in its file, as after a crash; the host is told, and the marker removed.
    func handOver() -> Bool {
        let marker = Self.handoverMarker(balloonDirectory: settings.balloonDirectory)
        // A pid and a newline; 64 bytes bound a file that is something else.
        guard let bytes = try? FileSystem.readFile(marker, maxBytes: 64),
              Int32(String(decoding: bytes, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == " " }).first ?? "") == ProcessControl.currentID
        else { return false }
        try? FileSystem.removeFile(marker)
        logger.notice("stopping for a handover (\(marker)): \(ledger.pinnedPages / 256) MiB stay pinned in the balloon file for the next agent")
        send(.goodbye(Goodbye(reason: .shutdown, message: "ballonet-guest restarting (handover); the balloon stays for the next agent")))
        return true
    }
}

/// A PSI trigger on /proc/pressure/memory: the descriptor polls as "priority" when tasks stall on memory
/// for the trigger's threshold within its window, so the pressure guard wakes at once, for free.
final class PressureTrigger {
    let descriptor: FileDescriptor

    init(_ trigger: String) throws {
        descriptor = try FileDescriptor.open("/proc/pressure/memory", .readWrite, options: [.nonBlocking])
        try descriptor.write(all: Array(trigger.utf8) + [0])
    }
}
