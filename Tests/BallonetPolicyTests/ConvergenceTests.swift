import Testing
@testable import BallonetPolicy

/// The policy and the estimator together, in simulated time.
@Suite struct ConvergenceTests {
    @Test func aVMWhoseWorkingSetHalvesIsTrimmedWithin30Seconds() {
        // One 2 GiB VM on a calm host, working set 1200 MiB, halving at 120 s; samples every 2 s.
        let drop: UInt64 = 120_000
        var scenario = PolicySimulation.Scenario(
            name: "halving", durationMillis: 200_000, hostMemoryBytes: 16 * gib, hostUseBytes: 1 * gib,
            vms: [PolicySimulation.VM(name: "vm", shares: 20_480, minBytes: 256 * mib, maxBytes: 2 * gib,
                                      workingSet: .init([(0, 1200 * mib), (drop, 600 * mib)]))])
        scenario.sampleMillis = 2_000
        let rows = PolicySimulation(scenario: scenario).run()
        let trimming = scenario.parameters.trimming
        let before = trimming.demand(forEstimate: 1200 * mib)
        let after = trimming.demand(forEstimate: 600 * mib)
        let settledBefore = rows.first { $0.millis == drop - 1_000 }!.vms[0]
        #expect(settledBefore.targetBytes >= before - 4096 && settledBefore.targetBytes <= before + 4096)
        // Within 30 s of the drop, the target has come at least 96 % of the way from the old target to the new
        // one (five slow half-lives leave 3 %).
        let at30 = rows.first { $0.millis == drop + 30_000 }!.vms[0]
        #expect(at30.targetBytes <= after + (before - after) / 25, "target \(at30.targetBytes >> 20) MiB at +30 s, new target \(after >> 20) MiB")
        #expect(at30.targetBytes >= after - 4096)
        // The estimate never fell below what the VM touched, and the target never below the estimate.
        for row in rows {
            let vm = row.vms[0]
            #expect(vm.estimateBytes! >= vm.workingSetBytes, "at \(row.millis) ms")
            #expect(vm.targetBytes >= vm.estimateBytes!)
        }
        // Not in one step: the fall is gradual (a guest is not whipsawed).
        let at2 = rows.first { $0.millis == drop + 2_000 }!.vms[0]
        #expect(at2.targetBytes > after + (before - after) / 2)
    }

    @Test func aRisingWorkingSetGetsMemoryAtOnce() {
        var scenario = PolicySimulation.Scenario(
            name: "rise", durationMillis: 60_000, hostMemoryBytes: 16 * gib, hostUseBytes: 1 * gib,
            vms: [PolicySimulation.VM(name: "vm", shares: 1000, minBytes: 128 * mib, maxBytes: 2 * gib,
                                      workingSet: .init([(0, 200 * mib), (30_000, 1500 * mib)]))])
        scenario.sampleMillis = 10_000
        let rows = PolicySimulation(scenario: scenario).run()
        // The sample at 30 s sees the new working set; that round's target covers it plus buffer.
        let at30 = rows.first { $0.millis == 30_000 }!.vms[0]
        #expect(at30.targetBytes >= 1500 * mib + 300 * mib)
    }
}
