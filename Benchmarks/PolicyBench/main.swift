// `make bench-policy`: the time of one policy round (MemoryPolicy.decide: state, estimates in, targets
// and explanations out) for 10, 100, 1,000 and 10,000 VMs on a host short of memory, so the ρ-balancing
// bisection runs every time. Goal: under 10 ms for 10,000 VMs. Prints a Markdown table (the Makefile keeps
// it in docs/benchmarks/policy.md).
import BallonetPolicy
import BallonetTestSupport

func milliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
}

let mib: UInt64 = 1 << 20
var random = SeededGenerator(seed: 42)
print("# Policy round time")
print("")
print("One `MemoryPolicy.decide` call (free-memory state, ρ-balancing allocation, change limits, one explanation")
print("per VM) on a host in the soft state with half the memory the VMs could hold; VMs of 512 MiB to 16 GiB with")
print("random shares, mins and working sets. Release build; the median of 21 rounds after 3 warm-up rounds.")
print("")
print("| VMs | median ms | min ms | max ms | µs per VM |")
print("| ---: | ---: | ---: | ---: | ---: |")
var previous: (count: Int, millis: Double)?
var growth: [String] = []
for count in [10, 100, 1_000, 10_000] {
    var vms: [MemoryPolicy.VM] = []
    for index in 0..<count {
        let maximum = UInt64.random(in: 512...16_384, using: &random) * mib
        vms.append(MemoryPolicy.VM(name: "vm\(index)", shares: UInt64.random(in: 1...100_000, using: &random),
                                   minBytes: maximum / 8, maxBytes: maximum,
                                   workingSetBytes: UInt64.random(in: 0...maximum, using: &random), previousTargetBytes: maximum))
    }
    let maximums = vms.reduce(0) { $0 + $1.maxBytes }
    let host = MemoryPolicy.Host(memoryForVMsBytes: maximums / 2, freeBytes: Int64(maximums / 2 * 3 / 100),
                                 totalBytes: maximums / 2, previousState: .soft)
    let parameters = PolicyParameters()
    var times: [Double] = []
    var sink: UInt64 = 0
    for round in 0..<24 {
        let clock = ContinuousClock()
        let start = clock.now
        let decision = MemoryPolicy.decide(vms: vms, host: host, parameters: parameters)
        let elapsed = clock.now - start
        sink &+= decision.vms.reduce(0) { $0 &+ $1.targetBytes }
        if round >= 3 { times.append(milliseconds(elapsed)) }
    }
    times.sort()
    let median = times[times.count / 2]
    print("| \(count) | \(MemoryPolicy.format(median, 3)) | \(MemoryPolicy.format(times.first!, 3)) | \(MemoryPolicy.format(times.last!, 3)) | \(MemoryPolicy.format(median * 1000 / Double(count), 2)) |")
    if let previous {
        growth.append("×\(count / previous.count) VMs: ×\(MemoryPolicy.format(median / previous.millis, 1)) time")
    }
    previous = (count, median)
    if sink == 42 { print("") }  // keeps the work from being optimised away
}
print("")
print("Growth: " + growth.joined(separator: "; ") + " (linear: each round is about a hundred passes over the VMs).")
