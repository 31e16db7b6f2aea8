import BallonetLinux
import BallonetWire

/// Builds the stats sample the guest sends each period (docs/PROTOCOL.md, "stats sample") from
/// /proc/meminfo, /proc/vmstat, /proc/pressure/memory and the balloon size it is given, plus a working
/// set from MGLRU page ages or, without MGLRU, from the LRU lists.
///
/// Sizes are in 4 KiB pages, PSI averages in hundredths of a percent, counters cumulative since boot.
/// A source that cannot be read leaves its keys out (no PSI file on a kernel without PSI) and is named
/// in `problems`; the sample itself never fails.
///
/// The daemon, at start: when `[sampling] enable_mglru`, calls `MGLRU.enable()` if `MGLRU.isEnabled()`
/// is false and `MGLRU.mountDebugfsIfAbsent()`, logging what fails; then `chooseMethod(paths:)` picks
/// the estimator once (MGLRU ages whenever they are readable, turned on by the agent or not), and the
/// hello advertises `Capabilities.mglruWorkingSet` when it picked them. Each period it calls
/// `sample(balloonPages:nowMillis:)`; a period whose lru_gen fails says `lruListEstimate` in its sample.
public struct GuestSampler: Sendable {
    /// The files read; tests point them at captures.
    public struct Paths: Equatable, Sendable {
        public var meminfo = "/proc/meminfo"
        public var vmstat = "/proc/vmstat"
        public var memoryPressure = "/proc/pressure/memory"
        public var lruGenEnabled = MGLRU.enabledPath
        public var lruGen = MGLRU.lruGenPath
        /// Where aging commands go: lru_gen itself. Tests point it at a scratch file, so that a capture
        /// read as lru_gen is not overwritten.
        public var lruGenAging = MGLRU.lruGenPath

        public init() {}
    }

    /// How the working set is measured, picked once at start.
    public enum WorkingSetMethod: Equatable, Sendable {
        /// Age MGLRU's generations once a period and count the young ones.
        case mglruAges
        /// Active lists plus refaults (`LRUListEstimate`).
        case lruListEstimate
    }

    public let paths: Paths
    public let periodMillis: UInt32
    public let method: WorkingSetMethod
    /// The sequence number of the last sample (0 before the first).
    public private(set) var sequence: UInt64 = 0
    /// What could not be read or parsed in the last sample, for the log.
    public private(set) var problems: [String] = []
    private var previousLists: LRUListReading?
    private var previousSnapshot: MGLRUSnapshot?

    public init(periodMillis: UInt32, method: WorkingSetMethod, paths: Paths = Paths()) {
        self.periodMillis = periodMillis
        self.method = method
        self.paths = paths
    }

    /// MGLRU ages when MGLRU's main switch is on and lru_gen can be read (debugfs mounted, readable by
    /// this process); otherwise the LRU-list estimate.
    public static func chooseMethod(paths: Paths = Paths()) -> WorkingSetMethod {
        guard MGLRU.isEnabled(path: paths.lruGenEnabled),
              (try? MGLRU.readSnapshot(path: paths.lruGen)) != nil else {
            return .lruListEstimate
        }
        return .mglruAges
    }

    /// Starts the numbering again, for a new guest session: the host reads a gap in sequence numbers
    /// as lost samples.
    public mutating func resetSequence() {
        sequence = 0
    }

    /// One sample. `nowMillis` is the guest's monotonic clock; `balloonPages` the balloon's size now.
    public mutating func sample(balloonPages: UInt64, keptFreePages: UInt64? = nil, nowMillis: UInt64) -> StatsSample {
        problems = []
        let paths = self.paths
        let meminfo = read("meminfo") { try ProcFiles.meminfo(path: paths.meminfo) }
        let vmstat = read("vmstat") { try ProcFiles.vmstat(path: paths.vmstat) }
        let pressure = read("memory pressure") { try ProcFiles.memoryPressure(path: paths.memoryPressure) }

        var workingSet: WorkingSetEstimate?
        if method == .mglruAges {
            workingSet = mglruWorkingSet()
        }
        if let meminfo {
            let lists = LRUListReading(meminfo: meminfo, vmstat: vmstat)
            if workingSet == nil {
                workingSet = WorkingSetEstimate(
                    pages: LRUListEstimate.workingSetPages(previous: previousLists, current: lists, balloonPages: balloonPages),
                    source: .lruListEstimate)
            }
            // Kept in MGLRU mode too, so a period whose lru_gen failed still counts its refaults right.
            previousLists = lists
        }
        sequence += 1
        return StatsSample(
            sequence: sequence, guestMillis: nowMillis, periodMillis: periodMillis,
            entries: GuestSampler.entries(meminfo: meminfo, vmstat: vmstat, pressure: pressure,
                                          balloonPages: balloonPages, keptFreePages: keptFreePages, workingSet: workingSet))
    }

    /// Ages every lruvec, then reads the generations and counts the young ones. Aging uses the
    /// previous period's snapshot for each lruvec's youngest generation (the first period reads one
    /// first). nil, with a problem noted, when lru_gen cannot be read or aging has not taken.
    private mutating func mglruWorkingSet() -> WorkingSetEstimate? {
        let paths = self.paths
        if previousSnapshot == nil {
            previousSnapshot = read("lru_gen") { try MGLRU.readSnapshot(path: paths.lruGen) }
        }
        if let previousSnapshot {
            do throws(SystemCallError) {
                let failures = try MGLRU.requestAging(previousSnapshot.agingCommands, path: paths.lruGenAging)
                if let first = failures.first {
                    problems.append("lru_gen aging: \(failures.count) of \(previousSnapshot.agingCommands.count) commands failed, first: \(first)")
                }
            } catch {
                problems.append("lru_gen aging: \(error)")
            }
        }
        guard let snapshot = read("lru_gen", { try MGLRU.readSnapshot(path: paths.lruGen) }) else {
            previousSnapshot = nil
            return nil
        }
        previousSnapshot = snapshot
        let window = MGLRU.ageWindowMillis(periodMillis: UInt64(periodMillis))
        guard snapshot.hasGeneration(youngerThan: window) else {
            problems.append("lru_gen: no generation younger than \(window) ms, aging is not taking; using the LRU-list estimate")
            return nil
        }
        return WorkingSetEstimate(pages: snapshot.youngPages(windowMillis: window), source: .mglruAges)
    }

    private mutating func read<Value>(_ name: String, _ body: () throws -> Value) -> Value? {
        do {
            return try body()
        } catch {
            problems.append("\(name): \(error)")
            return nil
        }
    }

    /// The sample's figures from what was read: pure. Absent sources leave their keys out. Sorted by key,
    /// each key once.
    public static func entries(meminfo: Meminfo?, vmstat: VMStat?, pressure: PressureStall?, balloonPages: UInt64,
                               keptFreePages: UInt64? = nil, workingSet: WorkingSetEstimate?) -> [StatEntry] {
        var entries: [StatEntry] = []
        if let meminfo {
            let page = GuestConfiguration.pageBytes
            entries += [
                StatEntry(.memTotal, meminfo.memTotal / page),
                StatEntry(.memFree, meminfo.memFree / page),
                StatEntry(.memAvailable, meminfo.memAvailable / page),
                StatEntry(.buffers, meminfo.buffers / page),
                StatEntry(.cached, meminfo.cached / page),
                StatEntry(.swapTotal, meminfo.swapTotal / page),
                StatEntry(.swapFree, meminfo.swapFree / page),
                StatEntry(.anonPages, meminfo.anonPages / page),
                StatEntry(.shmem, meminfo.shmem / page),
                StatEntry(.mlocked, meminfo.mlocked / page),
                StatEntry(.activeAnon, meminfo.activeAnon / page),
                StatEntry(.inactiveAnon, meminfo.inactiveAnon / page),
                StatEntry(.activeFile, meminfo.activeFile / page),
                StatEntry(.inactiveFile, meminfo.inactiveFile / page),
            ]
        }
        entries.append(StatEntry(.balloonPages, balloonPages))
        if let keptFreePages { entries.append(StatEntry(.keptFreePages, keptFreePages)) }
        if let vmstat {
            let counters: [(StatKey, UInt64?)] = [
                (.pgfault, vmstat.pgfault),
                (.pgmajfault, vmstat.pgmajfault),
                (.pswpin, vmstat.pswpin),
                (.pswpout, vmstat.pswpout),
                (.workingsetRefaultAnon, vmstat.workingsetRefaultAnon),
                (.workingsetRefaultFile, vmstat.workingsetRefaultFile),
                (.pgscanKswapd, vmstat.pgscanKswapd),
                (.pgscanDirect, vmstat.pgscanDirect),
            ]
            // A counter the kernel does not keep is left out: absent is not zero.
            for (key, value) in counters {
                if let value { entries.append(StatEntry(key, value)) }
            }
        }
        if let pressure {
            if let some = pressure.some {
                entries.append(StatEntry(.psiSomeAvg10, UInt64(some.avg10)))
            }
            if let full = pressure.full {
                entries.append(StatEntry(.psiFullAvg10, UInt64(full.avg10)))
            }
            if let some = pressure.some {
                entries.append(StatEntry(.psiSomeTotalMicros, some.total))
            }
            if let full = pressure.full {
                entries.append(StatEntry(.psiFullTotalMicros, full.total))
            }
        }
        if let workingSet {
            entries.append(StatEntry(.workingSetPages, workingSet.pages))
            entries.append(StatEntry(.workingSetSource, workingSet.source.rawValue))
        }
        return entries.sorted { $0.key < $1.key }
    }
}
