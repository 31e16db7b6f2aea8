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
///
/// The settings to put back are also kept in a file in the state directory from the moment the agent first
/// changes KSM until it has put them back. An agent killed in between (kill -9, a crash) leaves the file,
/// and the next agent puts those settings back as it starts; without it, the next agent would take the dead
/// one's settings for the operator's. /run is a tmpfs, and KSM's settings do not survive a reboot either.
final class SharingController {
    let settings: SharingSettings
    /// /sys/kernel/mm/ksm; tests point it at a copy.
    let ksmDirectory: String
    /// Where the settings to put back are kept while the agent has KSM changed; nil: nowhere.
    let originalsFile: String?
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

    /// The originals file holds one `name=value` line per restored file: about 150 bytes. 4 KiB bounds a
    /// file that is something else.
    static let originalsFileMaxBytes = 4096
    /// A KSM setting is a number or a word ("scan-time"); 32 bytes bound one read back from the file.
    static let originalValueMaxBytes = 32

    /// nil when the kernel has no KSM.
    init?(settings: SharingSettings, logger: Logger, originalsFile: String?, ksmDirectory: String = KSMControl.directory) {
        guard KSMControl.isAvailable(directory: ksmDirectory) else { return nil }
        self.settings = settings
        self.ksmDirectory = ksmDirectory
        self.originalsFile = originalsFile
        var logger = logger
        logger[metadataKey: "mechanism"] = "ksm"
        self.logger = logger
        ksmdProcessID = KSMDaemon.processID()
        if let left = readOriginals() {
            // An earlier agent changed KSM and never put it back: do it now, before reading "the originals",
            // and even when this agent is not to steer KSM (the operator's settings were never its to keep).
            original = left
            tookOver = true
            restore(why: "left changed by a ballonet-host that did not stop cleanly (\(originalsFile ?? ""))")
            original = []
            tookOver = false
        }
        if settings.steerKSM {
            for name in Self.restoredFiles {
                if let value = KSMControl.savedValue(name, directory: ksmDirectory) { original.append((name, value)) }
            }
        }
    }

    /// The settings an earlier agent kept and did not put back; nil when there is no file. A file that does
    /// not read as one is reported and removed.
    private func readOriginals() -> [(name: String, value: String)]? {
        guard let path = originalsFile, FileSystem.exists(path) else { return nil }
        let bytes: [UInt8]
        do {
            bytes = try FileSystem.readFile(path, maxBytes: Self.originalsFileMaxBytes)
        } catch {
            logger.warning("cannot read the KSM settings an earlier ballonet-host kept in \(path): \(error); KSM is left as it is")
            try? FileSystem.removeFile(path)
            return nil
        }
        var kept: [(name: String, value: String)] = []
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0]), value = parts.count == 2 ? String(parts[1]) : ""
            guard Self.restoredFiles.contains(name), !kept.contains(where: { $0.name == name }),
                  (1...Self.originalValueMaxBytes).contains(value.utf8.count),
                  value.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D || $0 == 0x5F }) else {
                logger.warning("ignoring \(path): line '\(line.prefix(64))' is not a KSM setting Ballonet keeps; KSM is left as it is")
                try? FileSystem.removeFile(path)
                return nil
            }
            kept.append((name, value))
        }
        // Put back in restoredFiles' order, whatever the file's.
        return Self.restoredFiles.compactMap { name in kept.first { $0.name == name } }
    }

    /// Keeps the settings to put back in `originalsFile`, before the agent first changes KSM.
    private func saveOriginals() {
        guard let path = originalsFile else { return }
        let text = original.map { "\($0.name)=\($0.value)\n" }.joined()
        do {
            let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
            if !directory.isEmpty { try FileSystem.makeDirectory(directory, permissions: 0o755, orExisting: true) }
            try FileSystem.replaceFile(path, Array(text.utf8), permissions: 0o644)
        } catch {
            logger.warning("cannot keep KSM's settings in \(path): \(error); if ballonet-host is killed, they stay as it left them")
        }
    }

    /// One round: measure, decide, write what changed. `mergeableBytes` and `pendingZeroMergeBytes` come from
    /// the VMs' figures, `state` from the memory policy's round.
    func round(elapsedMillis: UInt64, state: FreeMemoryState, mergeableBytes: UInt64, pendingZeroMergeBytes: UInt64) {
        guard let figures = try? KSMControl.read(directory: ksmDirectory) else { return }
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
        let current = wrote ? (try? KSMControl.read(directory: ksmDirectory)) ?? figures : figures
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
        if !tookOver { saveOriginals() }
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
                try KSMControl.write(name, value, directory: ksmDirectory)
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

    /// Puts back every KSM setting the agent changed (merged pages stay merged). Once all are back, the kept
    /// copy goes; if some could not be, it stays for the next agent to try.
    func restore(why: String = "as they were before ballonet-host started") {
        // Only steering takes KSM over, but a leftover file is put back whatever the agent is to do now.
        guard tookOver else { return }
        var failed: [String] = []
        for (name, value) in original where KSMControl.savedValue(name, directory: ksmDirectory) != value {
            // pages_to_scan cannot be written while the advisor that was put back runs; the advisor sets it.
            if name == "pages_to_scan", KSMControl.savedValue("advisor_mode", directory: ksmDirectory) == "scan-time" { continue }
            do {
                try KSMControl.write(name, value, directory: ksmDirectory)
            } catch {
                failed.append("\(name) (\(error))")
            }
        }
        if failed.isEmpty {
            logger.notice("KSM settings put back \(why): \(original.map { "\($0.name)=\($0.value)" }.joined(separator: ", "))")
            if let path = originalsFile { try? FileSystem.removeFile(path) }
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
