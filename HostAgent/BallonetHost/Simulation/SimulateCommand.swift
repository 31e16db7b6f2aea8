import ArgumentParser
import BallonetConfig
import BallonetPolicy
import Foundation

/// `ballonet-host simulate SCENARIO`: runs the real policy against a scenario file in simulated time and
/// writes what it decided as a CSV and an SVG plot.
public struct SimulateCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run the memory policy against a scenario in simulated time; write a CSV, an SVG plot and a summary.",
        discussion: """
            simulate runs the same policy code as ballonet-host run (shares with the idle memory tax, the \
            working-set estimator, the free-memory states with their hysteresis, trimming and change limits) \
            against a scenario: VMs with working-set curves, coming and going, on a host of a given size. No \
            VM, QEMU or guest is involved, and the run is deterministic: the same file gives the same output.

            The model, per step (one policy round): a VM above its target gives memory back at \
            balloon_mib_per_second, plus swap_mib_per_second in the hard and low states; a VM below its \
            target grows toward what it would hold unconstrained (fills, by default all its RAM, as a guest \
            fills free memory with page cache) at grow_mib_per_second, and takes its working set at once, \
            target or not. Every sample_seconds each VM's estimator observes its working set, as much of it as \
            is resident. Free memory is host_memory_mib less host_use_mib less what the VMs hold; the states \
            are percentages of host_memory_mib.

            The scenario file is TOML: [simulation] (duration_seconds, host_memory_mib, host_use_mib, \
            step_seconds, sample_seconds, paces), [policy] (idle_tax, trimming, thresholds, half-lives, \
            change limits), one [[vm]] per VM (name, max_mib, min_mib, shares, start_seconds, stop_seconds, \
            working_set = "seconds:MiB ..." and fills) and any [[event]]s (at_seconds with one of idle_tax, \
            shares with vm, trimming). The scenarios/ directory of the source tree has commented examples, \
            among them the idle memory tax experiment of Waldspurger's ESX paper (OSDI 2002, Figure 7).

            Output goes to --output (default: the current directory), in two files named after the \
            scenario (its name, or its file name without .toml):

            <name>.csv has a header line and one line per step: seconds, state, free_mib, idle_tax, then \
            per VM <vm>_working_set_mib, <vm>_estimate_mib, <vm>_allocation_mib, <vm>_target_mib and \
            <vm>_resident_mib (one decimal; empty while the VM is not running).

            <name>.svg plots each VM in its own colour over time: target solid, estimate dashed, working \
            set dotted, resident memory thin; the background shows the free-memory state (soft yellow, \
            hard orange, low red) and a dashed vertical line marks each event.

            Standard output gets a summary: each VM's target just before and just after each event and \
            how long the targets took to settle, the mean target over the last 10 % of the run, and the \
            time spent in each state; then the paths of the two files.

            Exit status: 0 when the files were written; 1 when the scenario is refused (the error names the \
            file, line and key) or a file cannot be written.
            """
    )

    @Argument(help: ArgumentHelp("The scenario file (TOML).", valueName: "scenario"))
    var scenario: String

    @Option(name: .long, help: ArgumentHelp("Directory for <name>.csv and <name>.svg (default: the current directory).", valueName: "dir"))
    var output: String?

    public init() {}

    public func run() throws {
        let loaded: PolicySimulation.Scenario
        do {
            loaded = try SimulationScenarioFile.load(path: scenario)
        } catch {
            Self.printError(error.description)
            throw ExitCode.failure
        }
        let rows = PolicySimulation(scenario: loaded).run()
        let report = SimulationReport(scenario: loaded, rows: rows)
        let directory = output ?? FileManager.default.currentDirectoryPath
        let csvPath = (directory as NSString).appendingPathComponent(loaded.name + ".csv")
        let svgPath = (directory as NSString).appendingPathComponent(loaded.name + ".svg")
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try report.csv().write(toFile: csvPath, atomically: true, encoding: .utf8)
            try report.svg().write(toFile: svgPath, atomically: true, encoding: .utf8)
        } catch {
            Self.printError("cannot write the results to \(directory): \(error.localizedDescription)")
            throw ExitCode.failure
        }
        print(report.summary(), terminator: "")
        print("wrote \(csvPath)")
        print("wrote \(svgPath)")
    }

    static func printError(_ message: String) {
        FileHandle.standardError.write(Data(("ballonet-host simulate: " + message + "\n").utf8))
    }
}
