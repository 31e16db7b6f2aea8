import BallonetConfig
import BallonetLinux
import BallonetPolicy

/// A scenario for `ballonet-host simulate`, read from a TOML file (the subset `TOMLSubset` reads) into the
/// `PolicySimulation.Scenario` the real policy runs against. scenarios/*.toml are worked examples.
///
/// ```
/// [simulation]
/// name = "idle-memory-tax"            # optional; default: the file name without .toml
/// duration_seconds = 3600             # required, at most 7 days
/// step_seconds = 1                    # one policy round per step (default 1)
/// sample_seconds = 30                 # working-set sampling period (default 10)
/// host_memory_mib = 400               # required: total host memory; the free-memory states are % of this
/// host_use_mib = 18                   # required: what the host itself uses (not for VMs)
/// balloon_mib_per_second = 256        # optional: how fast a VM above its target gives memory back
/// swap_mib_per_second = 128           #   hypervisor swap, added to the balloon in the hard and low states
/// grow_mib_per_second = 64            #   how fast a VM below its target fills memory (page cache)
///
/// [policy]                            # all optional; defaults from PolicyParameters; as in host.toml
/// idle_tax = 0.75                     # τ, 0 … 0.99
/// trimming = true
/// trim_buffer_percent = 20
/// trim_minimum_buffer_mib = 64
/// max_decrease_percent_per_second = 5 # of the VM's max; 0 = no limit
/// max_increase_percent_per_second = 0 # 0 = no limit (the default)
/// fast_half_life_seconds = 2
/// slow_half_life_seconds = 6
/// high_percent = 6                    # free-memory thresholds, % of host_memory_mib:
/// soft_percent = 4                    #   low < hard < soft < high
/// hard_percent = 2
/// low_percent = 1
/// hysteresis_percent = 0.5
///
/// [[vm]]                              # one per VM, at least one
/// name = "vm1"                        # letters, digits, '-', '_', '.'; unique
/// max_mib = 256                       # required: its RAM
/// min_mib = 0                         # default 0
/// shares = 1000                       # default 1000
/// start_seconds = 0                   # optional
/// stop_seconds = 2000                 # optional, after start_seconds
/// working_set = "0:20 600:250 1200:50"  # required: step curve of "seconds:MiB" points, separated by spaces
/// fills = "0:256"                     # optional: what it would hold unconstrained (default: max_mib)
///
/// [[event]]                           # any number, at_seconds not decreasing
/// at_seconds = 1800
/// idle_tax = 0.75                     # exactly one of: idle_tax, shares (with vm = "name"), trimming
/// ```
///
/// Where a number is meant, integers and floats are both accepted (`idle_tax = 0`, `step_seconds = 0.5`).
/// A curve's times are seconds from the start of the run, strictly ascending, within the run; before its
/// first point, the first value holds. Its MiB are at most the VM's max_mib.
///
/// Everything else is refused with a `ConfigurationError` that names the file, the line and the key:
/// unknown tables and keys, wrong types, values out of range (`SimulationScenarioLimits`).
public enum SimulationScenarioFile {
    public static let knownKeys: [(table: String, keys: [String])] = [
        ("simulation", ["name", "duration_seconds", "step_seconds", "sample_seconds", "host_memory_mib", "host_use_mib",
                        "balloon_mib_per_second", "swap_mib_per_second", "grow_mib_per_second"]),
        // The same [policy] table host.toml has (`PolicyTable`), so a policy tried here is written the same there.
        ("policy", PolicyTable.keys),
        ("vm", ["name", "max_mib", "min_mib", "shares", "start_seconds", "stop_seconds", "working_set", "fills"]),
        ("event", ["at_seconds", "idle_tax", "shares", "vm", "trimming"]),
    ]

    /// Tables written `[[name]]`, one element per VM or event.
    static let arrayTables: Set<String> = ["vm", "event"]

    /// Reads and parses the scenario at `path`.
    public static func load(path: String) throws(ConfigurationError) -> PolicySimulation.Scenario {
        let bytes: [UInt8]
        do {
            bytes = try FileSystem.readFile(path, maxBytes: SimulationScenarioLimits.maximumFileBytes + 1)
        } catch {
            // readFile stops with EFBIG once more than maxBytes arrive.
            if error.errno == .EFBIG {
                throw ConfigurationError(path: path, line: 0, kind: .tooLarge,
                                         message: "larger than \(SimulationScenarioLimits.maximumFileBytes) bytes; is this a scenario file?")
            }
            throw ConfigurationError(path: path, line: 0, kind: error.errno == .ENOENT ? .missingFile : .unreadable,
                                     message: "cannot read: \(error)")
        }
        guard bytes.count <= SimulationScenarioLimits.maximumFileBytes else {
            throw ConfigurationError(path: path, line: 0, kind: .tooLarge,
                                     message: "larger than \(SimulationScenarioLimits.maximumFileBytes) bytes; is this a scenario file?")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigurationError(path: path, line: 0, kind: .notUTF8, message: "not UTF-8 text")
        }
        return try parse(text, path: path)
    }

    /// The name a scenario without `name` gets: its file name without the directory and `.toml`.
    public static func defaultName(path: String) -> String {
        var name = path.split(separator: "/", omittingEmptySubsequences: true).last.map(String.init) ?? path
        if name.hasSuffix(".toml") && name.count > 5 { name.removeLast(5) }
        return name
    }

    /// Parses `text`; `path` names the file in errors and gives the default name.
    public static func parse(_ text: String, path: String) throws(ConfigurationError) -> PolicySimulation.Scenario {
        let document = try TOMLSubset.parse(text, path: path)
        let tableList = knownKeys.map { arrayTables.contains($0.table) ? "[[\($0.table)]]" : "[\($0.table)]" }
            .joined(separator: ", ")
        if let stray = document.rootEntries.first {
            throw ConfigurationError(path: path, line: stray.line, kind: .keyOutsideTable,
                                     message: "key \"\(stray.key)\" comes before any table; tables: \(tableList)")
        }
        for table in document.tables {
            guard let known = knownKeys.first(where: { $0.table == table.name }) else {
                throw ConfigurationError(path: path, line: table.line, kind: .unknownTable,
                                         message: "unknown table [\(table.name)]; known tables: \(tableList)")
            }
            let isArray = arrayTables.contains(table.name)
            guard table.isArrayElement == isArray else {
                let message = isArray ? "write each \(table.name) as [[\(table.name)]] (one per \(table.name == "vm" ? "VM" : "event"))"
                    : "write [\(table.name)] once, not as [[\(table.name)]]"
                throw ConfigurationError(path: path, line: table.line, kind: .unknownTable, message: message)
            }
            for entry in table.entries where !known.keys.contains(entry.key) {
                throw ConfigurationError(path: path, line: entry.line, kind: .unknownKey,
                                         message: "unknown key \"\(entry.key)\" in \(TOMLTableReader.place(table)); known keys: \(known.keys.joined(separator: ", "))")
            }
        }

        // [simulation]: the run and the host.
        guard let simulationTable = document.tables.first(where: { $0.name == "simulation" }) else {
            throw ConfigurationError(path: path, line: 0, kind: .outOfRange,
                                     message: "a scenario needs a [simulation] table with duration_seconds, host_memory_mib and host_use_mib")
        }
        let simulation = TOMLTableReader(path: path, table: simulationTable)
        let name = try simulation.name("name") ?? defaultName(path: path)
        guard let duration = try simulation.seconds("duration_seconds", in: SimulationScenarioLimits.durationSeconds) else {
            throw simulation.missing("duration_seconds", "how long the run is")
        }
        guard let hostMemoryMiB = try simulation.number("host_memory_mib", in: SimulationScenarioLimits.hostMemoryMiB) else {
            throw simulation.missing("host_memory_mib", "total host memory, MiB")
        }
        guard let hostUseMiB = try simulation.number("host_use_mib", in: 0...SimulationScenarioLimits.hostMemoryMiB.upperBound) else {
            throw simulation.missing("host_use_mib", "what the host itself uses, MiB")
        }
        guard hostUseMiB < hostMemoryMiB else {
            throw simulation.outOfRange("host_use_mib", "below host_memory_mib (\(TOMLTableReader.show(hostMemoryMiB)))", found: hostUseMiB)
        }
        var scenario = PolicySimulation.Scenario(name: name, durationMillis: millis(duration),
                                                 hostMemoryBytes: bytes(mib: hostMemoryMiB), hostUseBytes: bytes(mib: hostUseMiB),
                                                 vms: [])
        if let step = try simulation.seconds("step_seconds", in: SimulationScenarioLimits.stepSeconds) {
            guard step <= duration else { throw simulation.outOfRange("step_seconds", "at most duration_seconds (\(TOMLTableReader.show(duration)))", found: step) }
            scenario.stepMillis = max(millis(step), 1)
        }
        if let sample = try simulation.seconds("sample_seconds", in: SimulationScenarioLimits.sampleSeconds) {
            scenario.sampleMillis = max(millis(sample), 1)
        }
        if let pace = try simulation.number("balloon_mib_per_second", in: SimulationScenarioLimits.paceMiBPerSecond) {
            scenario.balloonBytesPerSecond = bytes(mib: pace)
        }
        if let pace = try simulation.number("swap_mib_per_second", in: SimulationScenarioLimits.paceMiBPerSecond) {
            scenario.swapBytesPerSecond = bytes(mib: pace)
        }
        if let pace = try simulation.number("grow_mib_per_second", in: SimulationScenarioLimits.paceMiBPerSecond) {
            scenario.growBytesPerSecond = bytes(mib: pace)
        }

        // [policy]: PolicyParameters, each key optional.
        if let policyTable = document.tables.first(where: { $0.name == "policy" }) {
            try PolicyTable.read(policyTable, path: path, into: &scenario.parameters)
        }

        // [[vm]]
        let vmTables = document.tables.filter { $0.name == "vm" }
        guard !vmTables.isEmpty else {
            throw ConfigurationError(path: path, line: 0, kind: .outOfRange, message: "a scenario needs at least one [[vm]]")
        }
        guard vmTables.count <= SimulationScenarioLimits.maximumVMs else {
            throw ConfigurationError(path: path, line: vmTables[SimulationScenarioLimits.maximumVMs].line, kind: .outOfRange,
                                     message: "more than \(SimulationScenarioLimits.maximumVMs) [[vm]] tables")
        }
        for table in vmTables {
            scenario.vms.append(try TOMLTableReader(path: path, table: table).vm(existing: scenario.vms, durationMillis: scenario.durationMillis))
        }
        let steps = scenario.durationMillis / scenario.stepMillis + 1
        let (vmSteps, overflow) = steps.multipliedReportingOverflow(by: UInt64(scenario.vms.count))
        guard !overflow, vmSteps <= SimulationScenarioLimits.maximumVMSteps else {
            throw ConfigurationError(path: path, line: simulation.entry("step_seconds")?.line ?? simulationTable.line, kind: .outOfRange,
                                     message: "\(steps) steps of \(scenario.vms.count) VMs is more than \(SimulationScenarioLimits.maximumVMSteps) VM-steps; raise step_seconds or shorten duration_seconds")
        }

        // [[event]]
        let eventTables = document.tables.filter { $0.name == "event" }
        guard eventTables.count <= SimulationScenarioLimits.maximumEvents else {
            throw ConfigurationError(path: path, line: eventTables[SimulationScenarioLimits.maximumEvents].line, kind: .outOfRange,
                                     message: "more than \(SimulationScenarioLimits.maximumEvents) [[event]] tables")
        }
        for table in eventTables {
            let event = try TOMLTableReader(path: path, table: table).event(vms: scenario.vms, durationMillis: scenario.durationMillis)
            if let previous = scenario.events.last, event.atMillis < previous.atMillis {
                throw TOMLTableReader(path: path, table: table).outOfRange(
                    "at_seconds", "at or after the previous event's (\(TOMLTableReader.show(Double(previous.atMillis) / 1000)) s): events come in time order",
                    found: Double(event.atMillis) / 1000)
            }
            scenario.events.append(event)
        }
        return scenario
    }

    static func millis(_ seconds: Double) -> UInt64 { UInt64((seconds * 1000).rounded()) }
    static func bytes(mib: Double) -> UInt64 { UInt64((mib * 1_048_576).rounded()) }

}

/// The bounds on what a scenario file may say, each with its reason.
public enum SimulationScenarioLimits {
    /// A scenario is a few dozen lines even with long curves; refusing more than 1 MiB keeps a wrong path
    /// (a disk image) from being read into memory.
    public static let maximumFileBytes = 1 << 20
    /// A week is longer than any experiment the plot can show readably; every step is one policy round.
    public static let durationSeconds: ClosedRange<Double> = 0.001...(7 * 86_400)
    /// One policy round per step: from a millisecond to an hour.
    public static let stepSeconds: ClosedRange<Double> = 0.001...3600
    /// Working-set sampling: from a millisecond to a day (ESX sampled every 30 s; ballonet-guest every 2 s).
    public static let sampleSeconds: ClosedRange<Double> = 0.001...86_400
    /// Host memory: up to 64 TiB, more than any host of today.
    public static let hostMemoryMiB: ClosedRange<Double> = 1...Double(1 << 26)
    /// A VM's RAM: QEMU's -m takes up to 16 TiB (as `HostConfigurationLimits.memoryMiB`).
    public static let vmMemoryMiB: ClosedRange<Double> = 1...Double(16 << 20)
    /// Shares: any count the policy's arithmetic (doubles) holds exactly, times a large λ.
    public static let shares: ClosedRange<UInt64> = 1...(1 << 40)
    /// Balloon, swap and growth paces: 0 (never) to 1 TiB/s.
    public static let paceMiBPerSecond: ClosedRange<Double> = 0...Double(1 << 20)
    /// A plot of more than a thousand VMs is unreadable, and each step decides for all of them.
    public static let maximumVMs = 1000
    public static let maximumEvents = 10_000
    /// Points per working_set or fills curve: one every minute for a week.
    public static let maximumCurvePoints = 10_000
    /// Steps × VMs: every step keeps one row per VM in memory and one CSV line; 5 million VM-steps is a
    /// few hundred MiB and a run of tens of seconds (a week in 1 s steps for 8 VMs).
    public static let maximumVMSteps: UInt64 = 5_000_000
    /// A VM's or scenario's name becomes a file name and a CSV column prefix.
    public static let maximumNameBytes = 64
}

/// The tables of a scenario file beyond what every table reader has.
private extension TOMLTableReader {
    func seconds(_ key: String, in range: ClosedRange<Double>) throws(ConfigurationError) -> Double? {
        try number(key, in: range)
    }

    /// A name that becomes a file name or a CSV column prefix.
    func name(_ key: String) throws(ConfigurationError) -> String? {
        guard let name = try string(key) else { return nil }
        guard Self.isPlainName(name, maximumBytes: SimulationScenarioLimits.maximumNameBytes) else {
            throw outOfRange(key, "1–\(SimulationScenarioLimits.maximumNameBytes) letters, digits, '-', '_' or '.' (not starting with '.'), found \"\(name)\"")
        }
        return name
    }

    // MARK: [[vm]]

    func vm(existing: [PolicySimulation.VM], durationMillis: UInt64) throws(ConfigurationError) -> PolicySimulation.VM {
        guard let name = try name("name") else { throw missing("name", "letters, digits, '-', '_' or '.'") }
        if existing.contains(where: { $0.name == name }) {
            throw ConfigurationError(path: path, line: entry("name")!.line, kind: .duplicateTable, message: "two VMs are named \(name)")
        }
        guard let maxMiB = try number("max_mib", in: SimulationScenarioLimits.vmMemoryMiB) else { throw missing("max_mib", "its RAM, MiB") }
        let minMiB = try number("min_mib", in: 0...SimulationScenarioLimits.vmMemoryMiB.upperBound) ?? 0
        guard minMiB <= maxMiB else { throw outOfRange("min_mib", "at most max_mib (\(TOMLTableReader.show(maxMiB)))", found: minMiB) }
        let shares = try integer("shares", in: SimulationScenarioLimits.shares) ?? 1000
        let duration = Double(durationMillis) / 1000
        let start = try seconds("start_seconds", in: 0...duration) ?? 0
        let stop = try seconds("stop_seconds", in: 0...duration)
        if let stop, stop <= start {
            throw outOfRange("stop_seconds", "after start_seconds (\(TOMLTableReader.show(start)))", found: stop)
        }
        guard let workingSet = try curve("working_set", maxMiB: maxMiB, durationMillis: durationMillis) else {
            throw missing("working_set", "a curve of \"seconds:MiB\" points")
        }
        let fills = try curve("fills", maxMiB: maxMiB, durationMillis: durationMillis)
        return PolicySimulation.VM(name: name, shares: shares, minBytes: SimulationScenarioFile.bytes(mib: minMiB),
                                   maxBytes: SimulationScenarioFile.bytes(mib: maxMiB), workingSet: workingSet, fills: fills,
                                   startMillis: SimulationScenarioFile.millis(start), stopMillis: stop.map(SimulationScenarioFile.millis))
    }

    /// "seconds:MiB seconds:MiB …", times strictly ascending within the run, MiB at most `maxMiB`.
    func curve(_ key: String, maxMiB: Double, durationMillis: UInt64) throws(ConfigurationError) -> PolicySimulation.Curve? {
        guard let text = try string(key) else { return nil }
        let example = "write \"seconds:MiB\" points separated by spaces, such as \"0:20 600:250\""
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard !words.isEmpty else { throw outOfRange(key, "at least one point: \(example)") }
        guard words.count <= SimulationScenarioLimits.maximumCurvePoints else {
            throw outOfRange(key, "at most \(SimulationScenarioLimits.maximumCurvePoints) points, found \(words.count)")
        }
        var points: [(millis: UInt64, bytes: UInt64)] = []
        points.reserveCapacity(words.count)
        for word in words {
            let parts = word.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let seconds = Self.decimal(parts[0]), let mib = Self.decimal(parts[1]) else {
                throw outOfRange(key, "a curve, but \"\(word)\" is not a point: \(example)")
            }
            let millis = SimulationScenarioFile.millis(seconds)
            guard seconds <= Double(durationMillis) / 1000 else {
                throw outOfRange(key, "a curve within the run, but \"\(word)\" is after its end (duration_seconds = \(TOMLTableReader.show(Double(durationMillis) / 1000)))")
            }
            guard mib <= maxMiB else {
                throw outOfRange(key, "a curve of at most max_mib (\(TOMLTableReader.show(maxMiB))) MiB, but \"\(word)\" is more")
            }
            if let last = points.last, millis <= last.millis {
                throw outOfRange(key, "a curve with its times ascending, but \"\(word)\" does not come after \(TOMLTableReader.show(Double(last.millis) / 1000)) s")
            }
            points.append((millis, SimulationScenarioFile.bytes(mib: mib)))
        }
        return PolicySimulation.Curve(points)
    }

    /// Digits with at most one decimal point and digits after it; nothing else (no sign, no exponent).
    static func decimal(_ text: Substring) -> Double? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, parts.allSatisfy({ !$0.isEmpty && $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }),
              parts[0].utf8.count <= 15 else { return nil }
        guard let value = Double(String(text)), value.isFinite else { return nil }
        return value
    }

    // MARK: [[event]]

    func event(vms: [PolicySimulation.VM], durationMillis: UInt64) throws(ConfigurationError) -> PolicySimulation.Event {
        guard let at = try seconds("at_seconds", in: 0...(Double(durationMillis) / 1000)) else {
            throw missing("at_seconds", "when it happens, seconds from the start")
        }
        let changes = ["idle_tax", "shares", "trimming"].filter { entry($0) != nil }
        guard changes.count == 1 else {
            let message = changes.isEmpty ? "an [[event]] needs one change: idle_tax, shares (with vm) or trimming"
                : "an [[event]] makes one change, this one has \(changes.joined(separator: " and ")): write one [[event]] each"
            throw ConfigurationError(path: path, line: changes.count > 1 ? entry(changes[1])!.line : table.line, kind: .outOfRange, message: message)
        }
        let change: PolicySimulation.Event.Change
        switch changes[0] {
        case "idle_tax":
            change = .idleTaxRate(try number("idle_tax", in: 0...PolicyParameters.maximumIdleTaxRate)!)
        case "trimming":
            change = .trimming(try boolean("trimming")!)
        default:
            let shares = try integer("shares", in: SimulationScenarioLimits.shares)!
            guard let vm = try string("vm") else {
                throw ConfigurationError(path: path, line: entry("shares")!.line, kind: .outOfRange,
                                         message: "a shares change in [[event]] needs vm = \"name\" of the VM whose shares change")
            }
            guard vms.contains(where: { $0.name == vm }) else {
                throw outOfRange("vm", "the name of a [[vm]] (\(vms.prefix(10).map(\.name).joined(separator: ", "))\(vms.count > 10 ? ", …" : "")), found \"\(vm)\"")
            }
            change = .shares(vm: vm, shares: shares)
        }
        if changes[0] != "shares", let stray = entry("vm") {
            throw ConfigurationError(path: path, line: stray.line, kind: .outOfRange,
                                     message: "\"vm\" in [[event]] only goes with shares")
        }
        return PolicySimulation.Event(atMillis: SimulationScenarioFile.millis(at), change: change)
    }
}
