import BallonetLinux
import BallonetPolicy
import Logging

/// Page sharing on this host, as `ballonetctl status` and the metrics show it.
public struct SharingStatus: Codable, Equatable, Sendable {
    /// The agent steers ksmd ([sharing] steer_ksm), or only reports.
    public var steering: Bool
    /// ksmd runs (KSM's run = 1).
    public var running: Bool
    /// "advisor" (the kernel's scan-time advisor sets the rate) or "raw" (pages_to_scan and sleep_millisecs).
    public var rateMode: String?
    public var pagesToScan: UInt64
    public var sleepMillis: UInt64
    public var advisorMaxCPUPercent: UInt64?
    public var advisorTargetScanSeconds: UInt64?
    /// The CPU budget the rate aims at, and what ksmd used over the last round, percent of one core.
    public var cpuBudgetPercent: Double
    public var ksmdCPUPercent: Double?
    /// ksmd's CPU time since the agent started, seconds.
    public var ksmdCPUSeconds: Double
    /// Memory KSM saves: sharing entries and zero pages, bytes; and its profit after bookkeeping.
    public var savedBytes: UInt64
    public var sharedPages: UInt64
    public var sharingPages: UInt64
    public var zeroPages: UInt64?
    public var generalProfitBytes: Int64?
    public var fullScans: UInt64
    /// Guest RAM KSM may merge (VMs with sharing on and anonymous RAM), bytes.
    public var mergeableBytes: UInt64
    /// Why ksmd does what it does.
    public var reason: String
}

/// Carries out `SharingPolicy`'s decisions on /sys/kernel/mm/ksm and measures ksmd. It is the only writer of
/// KSM's settings; what it changed it puts back when the agent exits (`restore`).
final class SharingController {
    let settings: SharingSettings
    private var logger: Logger
    private var memory = SharingPolicy.Memory()
    private let ksmdProcessID: Int32?
    private var lastCPUNanos: UInt64?
    private var startCPUNanos: UInt64?
    private var lastDecision: SharingPolicy.Decision?
    /// The settings as they were before the agent first changed each, to put back.
    private var original: [(name: String, value: String)] = []
    private(set) var status: SharingStatus?
    /// Warned once that KSM's settings cannot be written.
    private var warnedWrite = false
    /// The agent has set KSM at least once. Until a VM it manages is mergeable it leaves KSM as it found it
    /// (another user's ksmd, or ksmtuned's, runs on undisturbed).
    private var tookOver = false

    /// The files the agent may change, in the order they are put back: the advisor first (writing
    /// advisor_mode resets pages_to_scan, and pages_to_scan cannot be written while an advisor runs).
    static let restoredFiles = ["advisor_mode", "advisor_max_cpu", "advisor_target_scan_time", "pages_to_scan", "sleep_millisecs", "use_zero_pages", "run"]

    /// nil when the kernel has no KSM.
    init?(settings: SharingSettings, logger: Logger) {
        guard KSMControl.isAvailable else { return nil }
        self.settings = settings
        var logger = logger
        logger[metadataKey: "mechanism"] = "ksm"
        self.logger = logger
        ksmdProcessID = KSMDaemon.processID()
        if settings.steerKSM {
            for name in Self.restoredFiles {
                if let value = KSMControl.savedValue(name) { original.append((name, value)) }
            }
        }
    }

    /// One round: measure, decide, write what changed. `mergeableBytes` and `pendingZeroMergeBytes` come from
    /// the VMs' figures, `state` from the memory policy's round.
    func round(elapsedMillis: UInt64, state: FreeMemoryState, mergeableBytes: UInt64, pendingZeroMergeBytes: UInt64) {
        guard let figures = try? KSMControl.read() else { return }
        let cpu = ksmdProcessID.flatMap { try? KSMDaemon.cpuNanoseconds(of: $0) }
        let cpuDelta = cpu.flatMap { now in lastCPUNanos.map { now > $0 ? now - $0 : 0 } } ?? 0
        if startCPUNanos == nil { startCPUNanos = cpu }
        lastCPUNanos = cpu ?? lastCPUNanos
        var decision = lastDecision
        var wrote = false
        if settings.steerKSM {
            let observation = SharingPolicy.Observation(
                elapsedMillis: elapsedMillis, ksmdCPUNanos: cpuDelta, savedBytes: figures.savedBytes, fullScans: figures.fullScans,
                mergeableBytes: mergeableBytes, pendingZeroMergeBytes: pendingZeroMergeBytes, state: state,
                advisorAvailable: figures.advisorMode != nil)
            let made = SharingPolicy.decide(observation, memory: memory, settings: settings.policy)
            memory = made.1
            wrote = apply(made.0, figures: figures)
            decision = made.0
            lastDecision = made.0
        }
        // What ksmd runs with now: read again only when this round changed it.
        let current = wrote ? (try? KSMControl.read()) ?? figures : figures
        let cpuPercent = elapsedMillis > 0 && lastCPUNanos != nil ? Double(cpuDelta) / 1e6 / Double(elapsedMillis) * 100 : nil
        status = SharingStatus(
            steering: settings.steerKSM, running: current.run == 1,
            rateMode: current.run == 1 ? (current.advisorMode == "scan-time" ? "advisor" : "raw") : nil,
            pagesToScan: current.pagesToScan, sleepMillis: current.sleepMillis,
            advisorMaxCPUPercent: current.advisorMode == "scan-time" ? current.advisorMaxCPUPercent : nil,
            advisorTargetScanSeconds: current.advisorMode == "scan-time" ? current.advisorTargetScanSeconds : nil,
            cpuBudgetPercent: decision?.cpuBudgetPercent ?? 0, ksmdCPUPercent: cpuPercent,
            ksmdCPUSeconds: Double((lastCPUNanos ?? 0) &- (startCPUNanos ?? 0)) / 1e9,
            savedBytes: current.savedBytes, sharedPages: current.pagesShared, sharingPages: current.pagesSharing,
            zeroPages: current.zeroPages, generalProfitBytes: current.generalProfit, fullScans: current.fullScans,
            mergeableBytes: mergeableBytes,
            reason: !settings.steerKSM ? "not steered ([sharing] steer_ksm = false): reporting only"
                : tookOver ? (decision?.reason ?? "") : "left as it is until a VM's RAM is mergeable")
    }

    /// Writes the decision's settings where they differ from the kernel's, and logs a change of course.
    /// Returns whether it wrote any.
    private func apply(_ decision: SharingPolicy.Decision, figures: KSMFigures) -> Bool {
        guard tookOver || decision.running else { return false }
        tookOver = true
        var writes: [(String, String)] = []
        if figures.useZeroPages == false && decision.running { writes.append(("use_zero_pages", "1")) }
        switch decision.rate {
        case nil:
            break
        case .advisor(let maxCPU, let scanSeconds)?:
            if figures.advisorMode != "scan-time" { writes.append(("advisor_mode", "scan-time")) }
            if figures.advisorMaxCPUPercent != maxCPU { writes.append(("advisor_max_cpu", "\(maxCPU)")) }
            if figures.advisorTargetScanSeconds != scanSeconds { writes.append(("advisor_target_scan_time", "\(scanSeconds)")) }
            if figures.sleepMillis != SharingPolicy.sleepMillis { writes.append(("sleep_millisecs", "\(SharingPolicy.sleepMillis)")) }
        case .raw(let pages, let sleep)?:
            if let mode = figures.advisorMode, mode != "none" { writes.append(("advisor_mode", "none")) }
            if figures.pagesToScan != pages { writes.append(("pages_to_scan", "\(pages)")) }
            if figures.sleepMillis != sleep { writes.append(("sleep_millisecs", "\(sleep)")) }
        }
        let run: UInt64 = decision.running ? 1 : 0
        if figures.run != run { writes.append(("run", "\(run)")) }
        for (name, value) in writes {
            do {
                try KSMControl.write(name, value)
            } catch {
                if !warnedWrite {
                    warnedWrite = true
                    logger.warning("cannot set KSM's \(name) to \(value): \(error); page sharing is left as it is (is /sys mounted read-only?)")
                }
                return true
            }
        }
        let before = lastDecision
        if before?.running != decision.running || before?.cpuBudgetPercent != decision.cpuBudgetPercent {
            let how: String = switch decision.rate {
            case nil: "ksmd stopped"
            case .advisor(let maxCPU, let scanSeconds)?: "ksmd scanning through the scan-time advisor: a pass in \(scanSeconds) s, at most \(maxCPU) % of a core"
            case .raw(let pages, let sleep)?: "ksmd scanning \(pages) pages every \(sleep) ms (aiming at \(MemoryPolicy.format(decision.cpuBudgetPercent, 1)) % of a core)"
            }
            logger.notice("\(how): \(decision.reason)")
        }
        return !writes.isEmpty
    }

    /// Puts back every KSM setting the agent changed (merged pages stay merged).
    func restore() {
        guard settings.steerKSM, tookOver else { return }
        var failed: [String] = []
        for (name, value) in original where KSMControl.savedValue(name) != value {
            // pages_to_scan cannot be written while the advisor that was put back runs; the advisor sets it.
            if name == "pages_to_scan", KSMControl.savedValue("advisor_mode") == "scan-time" { continue }
            do {
                try KSMControl.write(name, value)
            } catch {
                failed.append("\(name) (\(error))")
            }
        }
        if failed.isEmpty {
            logger.notice("KSM settings put back as they were before ballonet-host started: \(original.map { "\($0.name)=\($0.value)" }.joined(separator: ", "))")
        } else {
            logger.warning("could not put back KSM's \(failed.joined(separator: ", "))")
        }
    }
}

/// The trade-off between reclaim and sharing, in the words `ballonetctl status` shows per VM.
enum MemoryMode {
    static func describe(method: String, mergeable: Bool, leftToKSM: Bool, virtioBalloon: Bool) -> String {
        if virtioBalloon { return mergeable ? "virtio balloon (QEMU discards); sharing on" : "virtio balloon (QEMU discards); sharing off" }
        switch method {
        case "punch": return "memfd RAM: balloon pages punched at once; never shared (KSM merges only anonymous RAM)"
        case "pageout" where mergeable && leftToKSM:
            return "anonymous RAM, sharing on: balloon pages go to the zero page through KSM (host swap is short)"
        case "pageout" where mergeable:
            return "anonymous RAM, sharing on: balloon pages paged out to host swap; KSM merges the rest"
        case "pageout": return "anonymous RAM, sharing off: balloon pages paged out to host swap"
        default: return method.isEmpty ? "not attached yet" : "\(method) reclaim"
        }
    }
}
