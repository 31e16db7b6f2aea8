import ArgumentParser
import BallonetConfig
import Foundation
import Testing
@testable import BallonetHost
import BallonetPolicy

/// `ballonet-host simulate`: the scenario files in scenarios/ give what the paper (and Ballonet's design)
/// says they should, the report files have the shape their readers expect, and bad scenarios are refused
/// with the line to fix.
@Suite struct SimulationTests {
    static let mib: UInt64 = 1 << 20
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static func scenarioPath(_ name: String) -> String { repositoryRoot + "/scenarios/" + name + ".toml" }

    static func run(_ name: String) throws -> SimulationReport {
        let scenario = try SimulationScenarioFile.load(path: scenarioPath(name))
        return SimulationReport(scenario: scenario, rows: PolicySimulation(scenario: scenario).run())
    }

    static func row(_ report: SimulationReport, atSeconds seconds: UInt64) -> PolicySimulation.Row {
        report.rows.first { $0.millis == seconds * 1000 }!
    }

    static func isNear(_ bytes: UInt64, _ mib: Double, within tolerance: Double = 3) -> Bool {
        abs(Double(bytes) / Double(Self.mib) - mib) <= tolerance
    }

    // MARK: The shipped scenarios

    /// Figure 7 of the ESX paper: 179 MiB each at τ = 0; at τ = 0.75 the idle VM drops to what the active one
    /// does not need (102 MiB here, 101 MB in the paper) and the active one gets all its memory (256 MiB here;
    /// the paper's ESX gave it 243 MB) within about a minute.
    @Test func idleMemoryTaxReproducesFigure7() throws {
        let report = try Self.run("idle-memory-tax")
        #expect(report.scenario.vms.map(\.name) == ["vm1", "vm2"])
        #expect(report.capacityBytes == 358 * Self.mib)

        let before = Self.row(report, atSeconds: 1799)
        #expect(before.idleTaxRate == 0)
        for vm in before.vms {
            #expect(Self.isNear(vm.targetBytes, 179), "target \(Double(vm.targetBytes) / Double(Self.mib)) MiB just before the τ change")
        }

        let end = report.meanTargets(fromMillis: 3240_000, toMillis: 3600_000)
        #expect(abs(end[0]! / Double(Self.mib) - 102) <= 3, "vm1 at the end: \(end[0]! / Double(Self.mib)) MiB")
        #expect(abs(end[1]! / Double(Self.mib) - 256) <= 3, "vm2 at the end: \(end[1]! / Double(Self.mib)) MiB")

        // The transition: from some time within 120 s of the change on, both targets stay at their new values.
        let settled = report.rows.lastIndex { row in
            !(Self.isNear(row.vms[0].targetBytes, 102) && Self.isNear(row.vms[1].targetBytes, 256))
        }.map { report.rows[$0 + 1].millis }
        #expect(settled != nil && settled! >= 1800_000 && settled! - 1800_000 <= 120_000,
                "targets settled at \(settled.map { "\($0 / 1000) s" } ?? "never")")
        #expect(report.summary().contains("before τ change 0.00 → 0.75 at 1800 s: vm1 179 MiB, vm2 179 MiB"), "\(report.summary())")
    }

    /// Ballonet's defaults on the same VMs: the idle VM is trimmed to its working set plus the 64 MiB minimum
    /// buffer soon after boot, the active one gets all its memory, and the host never runs short.
    @Test func idleMemoryTaxWithTrimmingGivesIdleMemoryBackEarly() throws {
        let report = try Self.run("idle-memory-tax-trimming")
        let end = report.meanTargets(fromMillis: 3240_000, toMillis: 3600_000)
        #expect(abs(end[0]! / Double(Self.mib) - 84) <= 3, "vm1 at the end: \(end[0]! / Double(Self.mib)) MiB")
        #expect(abs(end[1]! / Double(Self.mib) - 256) <= 3, "vm2 at the end: \(end[1]! / Double(Self.mib)) MiB")
        // Trimmed within a minute of boot, before vm2 starts at 240 s.
        #expect(Self.isNear(Self.row(report, atSeconds: 60).vms[0].targetBytes, 84))
        #expect(Self.isNear(Self.row(report, atSeconds: 239).vms[0].residentBytes, 84))
        #expect(report.rows.allSatisfy { $0.state == .high }, "states: \(report.timeInStates())")
    }

    /// Figure 8's shape: the working sets outgrow memory, the host goes through the lower states and comes
    /// back to high; targets never promise more than there is while memory is short, nor leave [min, max].
    @Test func dynamicReallocationCrossesTheStatesAndRecovers() throws {
        let report = try Self.run("dynamic-reallocation")
        let visited = Set(report.rows.map(\.state))
        #expect(!visited.isDisjoint(with: [.soft, .hard, .low]), "states visited: \(visited)")
        #expect(report.rows.last?.state == .high)
        let configured = report.scenario.vms.reduce(0) { $0 + $1.maxBytes }
        #expect(Double(configured) > 1.6 * Double(report.memoryForVMsBytes), "overcommitted by more than 60 %")
        #expect(report.scenario.vms.contains { $0.stopMillis != nil } && report.scenario.vms.contains { $0.startMillis > 0 })

        var overCapacity: [String] = []
        var outOfBounds: [String] = []
        for row in report.rows {
            var total: UInt64 = 0
            for (vm, state) in zip(report.scenario.vms, row.vms) where state.running {
                total += state.targetBytes
                if state.targetBytes < vm.minBytes & ~4095 || state.targetBytes > vm.maxBytes {
                    outOfBounds.append("\(row.millis / 1000) s \(vm.name) \(state.targetBytes >> 20) MiB")
                }
            }
            if row.state != .high && total > report.capacityBytes {
                overCapacity.append("\(row.millis / 1000) s (\(row.state.rawValue)): \(total >> 20) MiB")
            }
        }
        #expect(overCapacity.isEmpty, "targets add up to more than the \(report.capacityBytes >> 20) MiB there is, in \(overCapacity.count) rows: \(overCapacity.prefix(10))")
        #expect(outOfBounds.isEmpty, "targets outside [min, max]: \(outOfBounds.prefix(10))")
    }

    // MARK: The report files

    @Test(arguments: ["idle-memory-tax", "idle-memory-tax-trimming", "dynamic-reallocation"])
    func csvAndSVGHaveTheirShape(name: String) throws {
        let report = try Self.run(name)
        let vms = report.scenario.vms
        let lines = report.csv().split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == report.rows.count + 1)
        #expect(report.rows.count == Int(report.scenario.durationMillis / report.scenario.stepMillis) + 1)
        let header = lines.first!.split(separator: ",").map(String.init)
        #expect(Array(header.prefix(4)) == ["seconds", "state", "free_mib", "idle_tax"])
        #expect(header.count == 4 + 5 * vms.count)
        #expect(header[4...8] == ["\(vms[0].name)_working_set_mib", "\(vms[0].name)_estimate_mib", "\(vms[0].name)_allocation_mib",
                                  "\(vms[0].name)_target_mib", "\(vms[0].name)_resident_mib"])
        for line in lines {
            #expect(line.split(separator: ",", omittingEmptySubsequences: false).count == header.count, "\(line)")
        }
        let svg = report.svg()
        #expect(svg.hasPrefix("<svg"))
        #expect(svg.hasSuffix("</svg>\n"))
        #expect(svg.components(separatedBy: "<path").count - 1 == 4 * vms.count)
        #expect(svg.components(separatedBy: "<polyline").count == 1)
        for vm in vms { #expect(svg.contains(">\(vm.name)</text>")) }
    }

    @Test func csvLeavesCellsEmptyForAVMThatIsNotRunning() throws {
        let report = try Self.run("idle-memory-tax")
        let lines = report.csv().split(separator: "\n")
        #expect(lines[1].hasPrefix("0,high,"))
        #expect(lines[1].hasSuffix(",,,,,"), "vm2 starts at 240 s: \(lines[1])")
        let at1800 = lines[1801].split(separator: ",", omittingEmptySubsequences: false)
        #expect(at1800[0] == "1800" && at1800[3] == "0.75")
        // vm2 was held at 179 MiB, so its sampled working set is 179 MiB, all active: the τ change gives it
        // more at once, and all 256 MiB once a sample shows it using them.
        #expect(Double(at1800[12])! > 230, "vm2's target: \(at1800)")
        let at1860 = lines[1861].split(separator: ",", omittingEmptySubsequences: false)
        #expect(at1860[12] == "256.0", "vm2's target: \(at1860)")
    }

    // MARK: Bad scenarios

    static let valid = """
        [simulation]
        duration_seconds = 60
        host_memory_mib = 400
        host_use_mib = 18

        [policy]
        idle_tax = 0

        [[vm]]
        name = "vm1"
        max_mib = 256
        working_set = "0:20 30:100"
        """

    static func error(_ text: String) -> ConfigurationError? {
        do {
            _ = try SimulationScenarioFile.parse(text, path: "/tmp/bad.toml")
            return nil
        } catch {
            return error
        }
    }

    @Test func aValidScenarioTakesItsDefaults() throws {
        let scenario = try SimulationScenarioFile.parse(Self.valid, path: "/somewhere/short-run.toml")
        #expect(scenario.name == "short-run")
        #expect(scenario.durationMillis == 60_000 && scenario.stepMillis == 1_000 && scenario.sampleMillis == 10_000)
        #expect(scenario.hostMemoryBytes == 400 * Self.mib && scenario.hostUseBytes == 18 * Self.mib)
        #expect(scenario.parameters.idleTaxRate == 0)
        #expect(scenario.parameters.trimming == Trimming())
        #expect(scenario.vms == [PolicySimulation.VM(name: "vm1", shares: 1000, minBytes: 0, maxBytes: 256 * Self.mib,
                                                     workingSet: .init([(0, 20 * Self.mib), (30_000, 100 * Self.mib)]))])
        #expect(scenario.events.isEmpty)
    }

    @Test(arguments: [
        // (replace, with, line, kind, message part)
        ("idle_tax = 0", "idle_tax = 0\nidle_taks = 0.5", 8, ConfigurationError.Kind.unknownKey, "unknown key \"idle_taks\" in [policy]"),
        ("idle_tax = 0", "idle_tax = 1.5", 7, .outOfRange, "\"idle_tax\" in [policy] must be between 0.0 and 0.99"),
        ("idle_tax = 0", "idle_tax = \"0.5\"", 7, .wrongType, "\"idle_tax\" in [policy] must be a number, found a string"),
        ("idle_tax = 0", "high_percent = 6\nsoft_percent = 7", 6, .outOfRange, "thresholds must be ordered low_percent < hard_percent < soft_percent < high_percent"),
        ("idle_tax = 0", "hard_percent = 0.5", 6, .outOfRange, "(now 1.0 / 0.5 / 4.0 / 6.0)"),
        ("\"0:20 30:100\"", "\"0:20 x\"", 12, .outOfRange, "\"x\" is not a point"),
        ("\"0:20 30:100\"", "\"0:20 30:100 20:50\"", 12, .outOfRange, "times ascending"),
        ("\"0:20 30:100\"", "\"0:20 90:50\"", 12, .outOfRange, "after its end"),
        ("\"0:20 30:100\"", "\"0:300\"", 12, .outOfRange, "at most max_mib (256)"),
        ("\"0:20 30:100\"", "\"0:-5\"", 12, .outOfRange, "is not a point"),
        ("max_mib = 256", "max_mib = 256\nmin_mib = 300", 12, .outOfRange, "\"min_mib\" in [[vm]] must be at most max_mib (256), found 300"),
        ("max_mib = 256", "max_mib = \"256\"", 11, .wrongType, "must be a number"),
        ("max_mib = 256", "max_mib = 256\nshares = 1.5", 12, .wrongType, "\"shares\" in [[vm]] must be an integer"),
        ("max_mib = 256", "max_mib = 256\nstart_seconds = 30\nstop_seconds = 20", 13, .outOfRange, "after start_seconds (30)"),
        ("duration_seconds = 60", "duration_seconds = 700000", 2, .outOfRange, "between 0.001 and 604800"),
        ("host_use_mib = 18", "host_use_mib = 400", 4, .outOfRange, "below host_memory_mib (400)"),
        ("name = \"vm1\"", "name = \"vm/1\"", 10, .outOfRange, "letters, digits"),
        ("[policy]", "[policies]", 6, .unknownTable, "unknown table [policies]"),
        ("[[vm]]", "[vm]", 9, .unknownTable, "write each vm as [[vm]]"),
        ("[simulation]", "[[simulation]]", 1, .unknownTable, "write [simulation] once"),
        ("host_memory_mib = 400\n", "", 1, .outOfRange, "[simulation] needs host_memory_mib"),
    ])
    func aBadScenarioIsRefusedWithItsLine(replace: String, with: String, line: Int, kind: ConfigurationError.Kind, message: String) throws {
        let text = Self.valid.replacingOccurrences(of: replace, with: with)
        #expect(text != Self.valid)
        let error = try #require(Self.error(text))
        #expect(error.kind == kind, "\(error)")
        #expect(error.line == line, "\(error)")
        #expect(error.message.contains(message), "\(error)")
        #expect(error.description.hasPrefix("/tmp/bad.toml" + (line > 0 ? " line \(line): " : ": ")), "\(error)")
    }

    @Test(arguments: [
        ("[[event]]\nat_seconds = 30\nidle_tax = 0.5\ntrimming = false", 17, "one change"),
        ("[[event]]\nat_seconds = 30", 14, "needs one change"),
        ("[[event]]\nat_seconds = 30\nshares = 2000", 16, "needs vm"),
        ("[[event]]\nat_seconds = 30\nshares = 2000\nvm = \"vm9\"", 17, "found \"vm9\""),
        ("[[event]]\nat_seconds = 30\nidle_tax = 0.5\nvm = \"vm1\"", 17, "only goes with shares"),
        ("[[event]]\nat_seconds = 61\nidle_tax = 0.5", 15, "between 0 and 60"),
        ("[[event]]\nat_seconds = 30\nidle_tax = 0.5\n[[event]]\nat_seconds = 20\nidle_tax = 0", 18, "in time order"),
    ])
    func aBadEventIsRefusedWithItsLine(event: String, line: Int, message: String) throws {
        let error = try #require(Self.error(Self.valid + "\n\n" + event))
        #expect(error.line == line, "\(error)")
        #expect(error.message.contains(message), "\(error)")
    }

    @Test func eventsAndPolicyKeysAreRead() throws {
        let text = Self.valid.replacingOccurrences(of: "idle_tax = 0", with: """
            idle_tax = 0.5
            trimming = false
            trim_buffer_percent = 10
            trim_minimum_buffer_mib = 32
            max_decrease_percent_per_second = 0
            max_increase_percent_per_second = 2.5
            fast_half_life_seconds = 1
            slow_half_life_seconds = 30
            high_percent = 8
            soft_percent = 5
            hard_percent = 3
            low_percent = 1.5
            hysteresis_percent = 1
            """) + """


            [[event]]
            at_seconds = 10
            shares = 3000
            vm = "vm1"

            [[event]]
            at_seconds = 10
            trimming = true

            [[event]]
            at_seconds = 20.5
            idle_tax = 0
            """
        let scenario = try SimulationScenarioFile.parse(text, path: "/tmp/good.toml")
        let parameters = scenario.parameters
        #expect(parameters.idleTaxRate == 0.5 && !parameters.trimming.enabled)
        #expect(parameters.trimming.bufferPercent == 10 && parameters.trimming.minimumBufferBytes == 32 * Self.mib)
        #expect(parameters.changeLimit.maximumDecreasePercentPerSecond == nil && parameters.changeLimit.maximumIncreasePercentPerSecond == 2.5)
        #expect(parameters.estimator == EstimatorSettings(fastHalfLifeMillis: 1000, slowHalfLifeMillis: 30_000))
        #expect(parameters.thresholds.highPercent == 8 && parameters.thresholds.softPercent == 5 && parameters.thresholds.hardPercent == 3
                && parameters.thresholds.lowPercent == 1.5 && parameters.thresholds.hysteresisPercent == 1)
        #expect(scenario.events == [
            PolicySimulation.Event(atMillis: 10_000, change: .shares(vm: "vm1", shares: 3000)),
            PolicySimulation.Event(atMillis: 10_000, change: .trimming(true)),
            PolicySimulation.Event(atMillis: 20_500, change: .idleTaxRate(0)),
        ])
    }

    @Test func aFileThatIsTooLargeOrMissingIsRefused() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ballonet-sim-\(UInt32.random(in: 0 ... .max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let large = directory + "/large.toml"
        try String(repeating: "# padding\n", count: 110_000).write(toFile: large, atomically: true, encoding: .utf8)
        #expect(throws: ConfigurationError.self) { try SimulationScenarioFile.load(path: large) }
        do {
            _ = try SimulationScenarioFile.load(path: large)
        } catch {
            #expect(error.kind == .tooLarge)
        }
        do {
            _ = try SimulationScenarioFile.load(path: directory + "/missing.toml")
            Issue.record("a missing file was read")
        } catch {
            #expect(error.kind == .missingFile)
        }
    }

    // MARK: The command

    @Test func simulateWritesTheCSVAndThePlot() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ballonet-sim-\(UInt32.random(in: 0 ... .max))").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let command = try SimulateCommand.parse([Self.scenarioPath("idle-memory-tax"), "--output", directory + "/out"])
        try command.run()
        let csv = try String(contentsOfFile: directory + "/out/idle-memory-tax.csv", encoding: .utf8)
        #expect(csv.split(separator: "\n").count == 3602)
        let svg = try String(contentsOfFile: directory + "/out/idle-memory-tax.svg", encoding: .utf8)
        #expect(svg.hasPrefix("<svg"))
    }

    @Test func simulateRefusesABadScenarioWithStatus1() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ballonet-sim-\(UInt32.random(in: 0 ... .max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/bad.toml"
        try Self.valid.replacingOccurrences(of: "idle_tax = 0", with: "idle_tax = 1.5").write(toFile: path, atomically: true, encoding: .utf8)
        let command = try SimulateCommand.parse([path, "--output", directory])
        do {
            try command.run()
            Issue.record("a bad scenario was run")
        } catch let exit as ExitCode {
            #expect(exit.rawValue == 1)
        }
        #expect(!FileManager.default.fileExists(atPath: directory + "/bad.csv"))
        #expect(SimulateCommand.helpMessage().contains("Exit status"))
    }
}
