/// Runs the real policy (`MemoryPolicy.decide`, `WorkingSetEstimator`) against a scenario in simulated time:
/// VMs with working-set curves, coming and going, and a simple model of how a VM's resident memory follows
/// its target. Pure and deterministic, so tests assert on it and `ballonet-host simulate` plots it.
///
/// The memory model, per step:
/// - A VM above its target gives memory back at `balloonBytesPerSecond` (the host's inflate pace); in the
///   hard and low states hypervisor swap adds `swapBytesPerSecond`.
/// - In hard and low, hypervisor swap can hold a VM below its working set, and keeps holding it there
///   until its target covers its working set (a cgroup limit stays until it is raised).
/// - A VM below its target grows toward what it would hold unconstrained (`fills`, by default all its
///   RAM: a guest fills free memory with page cache) at `growBytesPerSecond`; it takes its working set at
///   once, target or not (the guest agent deflates under pressure).
/// - Every `sampleMillis` each VM's estimator observes its working set, as much of it as is resident.
/// - Free memory = host memory − what the host itself uses − what the VMs hold.
public struct PolicySimulation: Sendable {
    /// A value over time: each point holds from its time until the next (a step function).
    public struct Curve: Equatable, Sendable {
        public var points: [(millis: UInt64, bytes: UInt64)]
        /// `points` in any order (they are sorted by time; the scenario parser refuses files out of order).
        public init(_ points: [(millis: UInt64, bytes: UInt64)]) { self.points = points.sorted { $0.millis < $1.millis } }
        public init(constant bytes: UInt64) { points = [(0, bytes)] }

        public func value(at millis: UInt64) -> UInt64 {
            var value = points.first?.bytes ?? 0
            for point in points where point.millis <= millis { value = point.bytes }
            return value
        }

        public static func == (a: Curve, b: Curve) -> Bool {
            a.points.count == b.points.count && zip(a.points, b.points).allSatisfy { $0.millis == $1.millis && $0.bytes == $1.bytes }
        }
    }

    public struct VM: Equatable, Sendable {
        public var name: String
        public var shares: UInt64
        public var minBytes: UInt64
        public var maxBytes: UInt64
        public var workingSet: Curve
        /// What it would hold unconstrained; nil: all its RAM.
        public var fills: Curve?
        public var startMillis: UInt64 = 0
        public var stopMillis: UInt64?

        public init(name: String, shares: UInt64, minBytes: UInt64, maxBytes: UInt64, workingSet: Curve, fills: Curve? = nil,
                    startMillis: UInt64 = 0, stopMillis: UInt64? = nil) {
            self.name = name
            self.shares = shares
            self.minBytes = minBytes
            self.maxBytes = maxBytes
            self.workingSet = workingSet
            self.fills = fills
            self.startMillis = startMillis
            self.stopMillis = stopMillis
        }
    }

    /// A change during the run.
    public struct Event: Equatable, Sendable {
        public enum Change: Equatable, Sendable {
            case idleTaxRate(Double)
            case shares(vm: String, shares: UInt64)
            case trimming(Bool)
        }
        public var atMillis: UInt64
        public var change: Change
        public init(atMillis: UInt64, change: Change) {
            self.atMillis = atMillis
            self.change = change
        }
    }

    public struct Scenario: Equatable, Sendable {
        public var name: String
        public var durationMillis: UInt64
        /// One policy round per step (the host agent runs one a second).
        public var stepMillis: UInt64 = 1_000
        /// How often working sets are sampled (the guest agent's period; ESX's was 30 s).
        public var sampleMillis: UInt64 = 10_000
        public var hostMemoryBytes: UInt64
        /// What the host itself uses (kept out of M).
        public var hostUseBytes: UInt64
        public var balloonBytesPerSecond: UInt64 = 256 << 20
        public var swapBytesPerSecond: UInt64 = 128 << 20
        public var growBytesPerSecond: UInt64 = 64 << 20
        public var parameters = PolicyParameters()
        public var vms: [VM]
        public var events: [Event] = []

        public init(name: String, durationMillis: UInt64, hostMemoryBytes: UInt64, hostUseBytes: UInt64, vms: [VM]) {
            self.name = name
            self.durationMillis = durationMillis
            self.hostMemoryBytes = hostMemoryBytes
            self.hostUseBytes = hostUseBytes
            self.vms = vms
        }
    }

    /// One VM at one step.
    public struct VMRow: Equatable, Sendable {
        public var running: Bool
        public var workingSetBytes: UInt64
        public var estimateBytes: UInt64?
        public var allocationBytes: UInt64
        public var targetBytes: UInt64
        public var residentBytes: UInt64
        public var bound: MemoryPolicy.Bound?
    }

    public struct Row: Equatable, Sendable {
        public var millis: UInt64
        public var state: FreeMemoryState
        public var freeBytes: Int64
        public var idleTaxRate: Double
        public var vms: [VMRow]
    }

    public let scenario: Scenario
    public init(scenario: Scenario) { self.scenario = scenario }

    public func run() -> [Row] {
        var parameters = scenario.parameters
        var shares = scenario.vms.map(\.shares)
        var estimators = scenario.vms.map { _ in WorkingSetEstimator(settings: parameters.estimator) }
        var resident = [UInt64](repeating: 0, count: scenario.vms.count)
        var targets = [UInt64?](repeating: nil, count: scenario.vms.count)
        var lastSample = [UInt64?](repeating: nil, count: scenario.vms.count)
        // VMs hypervisor swap holds below their working set: the limit stays (as a cgroup limit would)
        // until their target covers their working set again.
        var swapLimited = [Bool](repeating: false, count: scenario.vms.count)
        var state = FreeMemoryState.high
        var rows: [Row] = []
        let step = max(scenario.stepMillis, 1)
        var now: UInt64 = 0
        let memoryForVMs = scenario.hostMemoryBytes > scenario.hostUseBytes ? scenario.hostMemoryBytes - scenario.hostUseBytes : 0
        while now <= scenario.durationMillis {
            for event in scenario.events where event.atMillis > now &- step && event.atMillis <= now || (now == 0 && event.atMillis == 0) {
                switch event.change {
                case .idleTaxRate(let rate): parameters.idleTaxRate = rate
                case .shares(let name, let value):
                    if let index = scenario.vms.firstIndex(where: { $0.name == name }) { shares[index] = value }
                case .trimming(let on): parameters.trimming.enabled = on
                }
            }
            let running = scenario.vms.map { vm in vm.startMillis <= now && vm.stopMillis.map { now < $0 } ?? true }
            for index in scenario.vms.indices where !running[index] {
                resident[index] = 0
                swapLimited[index] = false
                targets[index] = nil
                estimators[index] = WorkingSetEstimator(settings: parameters.estimator)
                lastSample[index] = nil
            }
            // A VM that starts holds its working set; each VM's working set is sampled every `sampleMillis`.
            for (index, vm) in scenario.vms.enumerated() where running[index] {
                let workingSet = min(vm.workingSet.value(at: now), vm.maxBytes)
                if targets[index] == nil && resident[index] == 0 { resident[index] = workingSet }
                let due = lastSample[index].map { now - $0 >= scenario.sampleMillis } ?? true
                guard due else { continue }
                estimators[index].observe(activeBytes: min(workingSet, resident[index]),
                                          elapsedMillis: lastSample[index].map { now - $0 } ?? scenario.sampleMillis)
                lastSample[index] = now
            }
            let used = resident.reduce(scenario.hostUseBytes, +)
            let free = Int64(scenario.hostMemoryBytes) - Int64(used)
            let inputs = scenario.vms.indices.filter { running[$0] }.map { index in
                MemoryPolicy.VM(name: scenario.vms[index].name, shares: shares[index], minBytes: scenario.vms[index].minBytes,
                                maxBytes: scenario.vms[index].maxBytes, workingSetBytes: estimators[index].estimateBytes,
                                previousTargetBytes: targets[index])
            }
            let decision = MemoryPolicy.decide(
                vms: inputs,
                host: MemoryPolicy.Host(memoryForVMsBytes: memoryForVMs, freeBytes: free, totalBytes: scenario.hostMemoryBytes,
                                        previousState: state, elapsedMillis: step),
                parameters: parameters)
            state = decision.state
            var row = Row(millis: now, state: state, freeBytes: free, idleTaxRate: parameters.idleTaxRate, vms: [])
            var decided = decision.vms.makeIterator()
            for (index, vm) in scenario.vms.enumerated() {
                guard running[index], let vmDecision = decided.next() else {
                    row.vms.append(VMRow(running: false, workingSetBytes: 0, estimateBytes: nil, allocationBytes: 0, targetBytes: 0,
                                         residentBytes: 0, bound: nil))
                    continue
                }
                targets[index] = vmDecision.targetBytes
                row.vms.append(VMRow(running: true, workingSetBytes: vm.workingSet.value(at: now), estimateBytes: estimators[index].estimateBytes,
                                     allocationBytes: vmDecision.explanation.allocationBytes, targetBytes: vmDecision.targetBytes,
                                     residentBytes: resident[index], bound: vmDecision.explanation.bound))
            }
            rows.append(row)
            // Resident memory follows the targets over the next step.
            let seconds = Double(step) / 1000
            for (index, vm) in scenario.vms.enumerated() where running[index] {
                let target = targets[index] ?? vm.maxBytes
                let workingSet = min(vm.workingSet.value(at: now + step), vm.maxBytes)
                let fills = min(vm.fills?.value(at: now + step) ?? vm.maxBytes, vm.maxBytes)
                var held = resident[index]
                if held > target {
                    var pace = Double(scenario.balloonBytesPerSecond)
                    if state >= .hard { pace += Double(scenario.swapBytesPerSecond) }
                    held -= min(held - target, UInt64(pace * seconds))
                } else {
                    let goal = min(target, max(fills, workingSet))
                    if held < goal { held += min(goal - held, UInt64(Double(scenario.growBytesPerSecond) * seconds)) }
                }
                // A guest touching its working set takes it whatever the target: ballonet-guest releases
                // balloon pages at once under pressure (safety invariant 5). Once the hard or low state
                // had hypervisor swap hold it at its target, it stays held there (it thrashes, as under
                // ESX) until its target covers its working set.
                if state >= .hard && target < workingSet { swapLimited[index] = true }
                if target >= workingSet { swapLimited[index] = false }
                resident[index] = swapLimited[index] ? max(held, min(workingSet, target)) : max(held, workingSet)
            }
            now += step
        }
        return rows
    }
}
