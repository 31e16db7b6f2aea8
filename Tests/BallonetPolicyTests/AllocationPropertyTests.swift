import Testing
@testable import BallonetPolicy
import BallonetTestSupport

/// The allocation's properties over random hosts and VMs (fixed seeds: reproducible).
@Suite struct AllocationPropertyTests {
    static let cases = 400

    /// A random host in a state that reclaims (soft), with VMs whose mins fit (admission sees to that).
    static func randomCase(_ random: inout SeededGenerator, count: Int? = nil) -> (vms: [MemoryPolicy.VM], host: MemoryPolicy.Host) {
        let n = count ?? Int.random(in: 1...8, using: &random)
        var vms: [MemoryPolicy.VM] = []
        for index in 0..<n {
            let maximum = UInt64.random(in: 256...16_384, using: &random) * mib
            let minimum = UInt64.random(in: 0...(maximum / mib / 2), using: &random) * mib
            let estimate: UInt64? = Bool.random(using: &random) && index > 0 ? nil : UInt64.random(in: 0...(maximum / mib), using: &random) * mib
            vms.append(MemoryPolicy.VM(name: "vm\(index)", shares: UInt64.random(in: 1...10_000, using: &random),
                                       minBytes: minimum, maxBytes: maximum, workingSetBytes: estimate))
        }
        let minimums = vms.reduce(0) { $0 + $1.minBytes }
        let maximums = vms.reduce(0) { $0 + $1.maxBytes }
        let total = UInt64.random(in: (minimums / mib + 64)...(maximums / mib + 1024), using: &random) * mib
        let memoryForVMs = total
        return (vms, MemoryPolicy.Host(memoryForVMsBytes: memoryForVMs + total * 6 / 100, freeBytes: Int64(total / 40),
                                       totalBytes: total, previousState: .soft, elapsedMillis: 1_000))
    }

    /// Parameters under which the target is the allocation (no change limit), so properties of the
    /// allocation show in the targets.
    static func unlimited(tax: Double = 0.75, trimming: Bool = true) -> PolicyParameters {
        var parameters = PolicyParameters()
        parameters.idleTaxRate = tax
        parameters.changeLimit.maximumDecreasePercentPerSecond = nil
        parameters.trimming.enabled = trimming
        return parameters
    }

    @Test func targetsFitTheHostAndStayWithinMinAndMax() {
        var random = SeededGenerator(seed: 1)
        for _ in 0..<Self.cases {
            var (vms, host) = Self.randomCase(&random)
            let tax = [0, 0.5, 0.75, 0.95].randomElement(using: &random)!
            // Any previous target, even outside today's [min, max] (an operator just changed them).
            for index in vms.indices where Bool.random(using: &random) {
                vms[index].previousTargetBytes = UInt64.random(in: 0...(vms[index].maxBytes * 2), using: &random) & ~4095
            }
            if Bool.random(using: &random) { host.previousState = .high; host.freeBytes = Int64(host.totalBytes / 2) }
            let decision = MemoryPolicy.decide(vms: vms, host: host, parameters: Self.unlimited(tax: tax))
            let sum = decision.vms.reduce(0) { $0 + $1.targetBytes }
            if decision.state != .high {
                // Short of memory, targets fit; on a calm host a VM may keep more than its share.
                #expect(sum <= decision.capacityBytes)
                #expect(sum <= host.memoryForVMsBytes)
            }
            let allocations = decision.vms.reduce(0) { $0 + $1.explanation.allocationBytes }
            #expect(allocations <= decision.capacityBytes)
            for (vm, made) in zip(vms, decision.vms) {
                #expect(made.targetBytes >= vm.minBytes && made.targetBytes <= vm.maxBytes, "\(vm) got \(made.targetBytes)")
                #expect(made.targetBytes % 4096 == 0)
            }
        }
    }

    @Test func moreSharesNeverMeanASmallerTarget() {
        var random = SeededGenerator(seed: 2)
        for _ in 0..<Self.cases {
            let (vms, host) = Self.randomCase(&random)
            let parameters = Self.unlimited(tax: [0, 0.75].randomElement(using: &random)!)
            let before = MemoryPolicy.decide(vms: vms, host: host, parameters: parameters)
            let lucky = Int.random(in: 0..<vms.count, using: &random)
            var richer = vms
            richer[lucky].shares *= UInt64.random(in: 2...10, using: &random)
            let after = MemoryPolicy.decide(vms: richer, host: host, parameters: parameters)
            #expect(after.vms[lucky].targetBytes >= before.vms[lucky].targetBytes)
            // And nobody else gains from it.
            for index in vms.indices where index != lucky {
                #expect(after.vms[index].targetBytes <= before.vms[index].targetBytes)
            }
        }
    }

    @Test func noIdleTaxIsProportionalShare() {
        var random = SeededGenerator(seed: 3)
        for _ in 0..<Self.cases {
            // No mins, maxima far above what there is: nothing clamps, so memory splits by shares alone,
            // whatever the working sets.
            let n = Int.random(in: 2...8, using: &random)
            let vms = (0..<n).map { index in
                MemoryPolicy.VM(name: "vm\(index)", shares: UInt64.random(in: 1...1000, using: &random), minBytes: 0,
                                maxBytes: 1 << 40, workingSetBytes: UInt64.random(in: 0...(1 << 30), using: &random))
            }
            let total: UInt64 = 64 * gib
            let host = MemoryPolicy.Host(memoryForVMsBytes: total, freeBytes: 0, totalBytes: total, previousState: .soft)
            let decision = MemoryPolicy.decide(vms: vms, host: host, parameters: Self.unlimited(tax: 0, trimming: false))
            let totalShares = Double(vms.reduce(0) { $0 + $1.shares })
            for (vm, made) in zip(vms, decision.vms) {
                let expected = Double(decision.capacityBytes) * Double(vm.shares) / totalShares
                #expect(abs(Double(made.targetBytes) - expected) <= 4096, "\(vm.name): \(made.targetBytes) vs \(expected)")
            }
        }
    }

    @Test func aHigherTaxTakesMoreFromTheIdlestVM() {
        var random = SeededGenerator(seed: 4)
        var moved = 0
        for _ in 0..<Self.cases {
            var (vms, host) = Self.randomCase(&random, count: Int.random(in: 2...6, using: &random))
            for index in vms.indices where vms[index].workingSetBytes == nil { vms[index].workingSetBytes = vms[index].maxBytes / 2 }
            // The idlest VM: the fewest active bytes per share.
            let idlest = vms.indices.min { a, b in
                Double(vms[a].workingSetBytes!) / Double(vms[a].shares) < Double(vms[b].workingSetBytes!) / Double(vms[b].shares)
            }!
            var previous: UInt64?
            for tax in [0, 0.25, 0.5, 0.75, 0.9] {
                let target = MemoryPolicy.decide(vms: vms, host: host, parameters: Self.unlimited(tax: tax, trimming: false)).vms[idlest].targetBytes
                if let previous {
                    #expect(target <= previous, "τ = \(tax): the idlest VM went from \(previous) to \(target)")
                    if target < previous { moved += 1 }
                }
                previous = target
            }
        }
        // The property is not vacuous: raising τ did take memory from idle VMs in many cases.
        #expect(moved > Self.cases / 4)
    }

    @Test func applyingThePolicyToItsOwnResultChangesNothing() {
        var random = SeededGenerator(seed: 5)
        for _ in 0..<Self.cases {
            var (vms, host) = Self.randomCase(&random)
            host.previousState = [.high, .soft, .hard].randomElement(using: &random)!
            let parameters = PolicyParameters()   // with the change limit: run it until it settles
            var decision = MemoryPolicy.decide(vms: vms, host: host, parameters: parameters)
            for _ in 0..<100 {
                for index in vms.indices { vms[index].previousTargetBytes = decision.vms[index].targetBytes }
                host.previousState = decision.state
                decision = MemoryPolicy.decide(vms: vms, host: host, parameters: parameters)
            }
            for index in vms.indices { vms[index].previousTargetBytes = decision.vms[index].targetBytes }
            host.previousState = decision.state
            let again = MemoryPolicy.decide(vms: vms, host: host, parameters: parameters)
            #expect(again.vms.map(\.targetBytes) == decision.vms.map(\.targetBytes))
            #expect(again.state == decision.state)
        }
    }

    @Test func memoryIsReclaimedFirstFromTheLowestRho() {
        // Three VMs with their max at first; M shrinks a little at a time: the first to lose memory is the one
        // with the lowest ρ at its max, and every VM still above its min ends at one ρ (as ESX's page-by-page
        // revocation would leave them).
        let vms = [
            MemoryPolicy.VM(name: "idle", shares: 1000, minBytes: 0, maxBytes: 1 * gib, workingSetBytes: 100 * mib),
            MemoryPolicy.VM(name: "busy", shares: 1000, minBytes: 0, maxBytes: 1 * gib, workingSetBytes: 900 * mib),
            MemoryPolicy.VM(name: "rich", shares: 4000, minBytes: 0, maxBytes: 1 * gib, workingSetBytes: 100 * mib),
        ]
        let parameters = Self.unlimited(tax: 0.75, trimming: false)
        let k = parameters.idleCost
        let rhoAtMax = vms.map { ShareAllocation.sharesPerPage(shares: Double($0.shares), pages: Double(gib / 4096),
                                                              active: Double($0.workingSetBytes! / 4096), idleCost: k) }
        #expect(rhoAtMax[0] < rhoAtMax[1] && rhoAtMax[0] < rhoAtMax[2])
        let first = MemoryPolicy.decide(vms: vms, host: MemoryPolicy.Host(memoryForVMsBytes: 3 * gib - 64 * mib, freeBytes: 0, totalBytes: 0,
                                                                          previousState: .soft), parameters: parameters)
        #expect(first.vms[0].targetBytes < gib)
        #expect(first.vms[1].targetBytes == gib && first.vms[2].targetBytes == gib)
        let tight = MemoryPolicy.decide(vms: vms, host: MemoryPolicy.Host(memoryForVMsBytes: 1536 * mib, freeBytes: 0, totalBytes: 0,
                                                                          previousState: .soft), parameters: parameters)
        let rhos = tight.vms.map { $0.explanation.sharesPerMiB }
        for rho in rhos { #expect(abs(rho - rhos[0]) / rhos[0] < 0.01, "\(rhos)") }
    }

    @Test func thePapersTwoVMsAtTaxZeroAndSeventyFivePercent() {
        // Section 5.4: two VMs with equal shares, 256 MB each, on a host where each gets 179 MB at τ = 0; one
        // idle (about 20 MB active), one using all of its memory.
        let vms = [
            MemoryPolicy.VM(name: "idle", shares: 1000, minBytes: 0, maxBytes: 256 * mib, workingSetBytes: 20 * mib),
            MemoryPolicy.VM(name: "active", shares: 1000, minBytes: 0, maxBytes: 256 * mib, workingSetBytes: 256 * mib),
        ]
        let host = MemoryPolicy.Host(memoryForVMsBytes: 358 * mib, freeBytes: 0, totalBytes: 0, previousState: .soft)
        let flat = MemoryPolicy.decide(vms: vms, host: host, parameters: Self.unlimited(tax: 0, trimming: false))
        #expect(flat.vms.map { $0.targetBytes >> 20 } == [179, 179])
        let taxed = MemoryPolicy.decide(vms: vms, host: host, parameters: Self.unlimited(tax: 0.75, trimming: false))
        #expect(taxed.vms.map { $0.targetBytes >> 20 } == [102, 256])
        #expect(taxed.vms[1].explanation.bound == .max)
        #expect(taxed.vms[0].explanation.bound == .share)
    }

    @Test func fixedTargetsComeOffTheTopAndMinsThatDoNotFitAreReported() {
        let vms = [
            MemoryPolicy.VM(name: "pinned", shares: 1000, minBytes: 0, maxBytes: 2 * gib, fixedTargetBytes: 1 * gib),
            MemoryPolicy.VM(name: "a", shares: 1000, minBytes: 256 * mib, maxBytes: 2 * gib),
        ]
        let host = MemoryPolicy.Host(memoryForVMsBytes: 1536 * mib, freeBytes: 0, totalBytes: 0, previousState: .soft)
        let decision = MemoryPolicy.decide(vms: vms, host: host, parameters: Self.unlimited())
        #expect(decision.vms[0].targetBytes == gib && decision.vms[0].explanation.bound == .fixed)
        #expect(decision.vms[1].targetBytes == 512 * mib)
        #expect(decision.warning == nil)
        let short = MemoryPolicy.decide(vms: vms, host: MemoryPolicy.Host(memoryForVMsBytes: 1 * gib, freeBytes: 0, totalBytes: 0,
                                                                          previousState: .soft), parameters: Self.unlimited())
        #expect(short.vms[1].targetBytes == 256 * mib)
        #expect(short.warning?.contains("1280 MiB") == true)
    }

    @Test func aCalmHostTrimsButDoesNotReclaimForOthers() {
        // Two 2 GiB VMs that have all their RAM; their share of a small M is 1 GiB each. Idle VM: working
        // set 200 MiB; busy VM: 1900 MiB.
        var vms = [
            MemoryPolicy.VM(name: "idle", shares: 1000, minBytes: 128 * mib, maxBytes: 2 * gib, workingSetBytes: 200 * mib,
                            previousTargetBytes: 2 * gib),
            MemoryPolicy.VM(name: "busy", shares: 1000, minBytes: 128 * mib, maxBytes: 2 * gib, workingSetBytes: 1900 * mib,
                            previousTargetBytes: 2 * gib),
        ]
        let total: UInt64 = 16 * gib
        let calm = MemoryPolicy.Host(memoryForVMsBytes: 2 * gib + total * 6 / 100, freeBytes: Int64(total / 2), totalBytes: total)
        let parameters = PolicyParameters()
        let first = MemoryPolicy.decide(vms: vms, host: calm, parameters: parameters)
        #expect(first.state == .high)
        // The idle VM is trimmed toward 200 + 64 MiB, but no faster than 5 % of 2 GiB per second.
        #expect(first.vms[0].targetBytes == 2 * gib - (2 * gib / 20 + 4095) / 4096 * 4096)
        #expect(first.vms[0].explanation.bound == .changeLimit)
        #expect(first.vms[0].explanation.goalBytes == 264 * mib)
        // The busy VM keeps what it has: nothing is reclaimed for others on a calm host.
        #expect(first.vms[1].targetBytes == 2 * gib)
        #expect(first.vms[1].explanation.bound == .held)
        // Short of memory (soft): both go to their allocations at once, which fit.
        for index in vms.indices { vms[index].previousTargetBytes = first.vms[index].targetBytes }
        var short = calm
        short.freeBytes = Int64(total * 3 / 100)
        let second = MemoryPolicy.decide(vms: vms, host: short, parameters: parameters)
        #expect(second.state == .soft)
        #expect(second.vms[0].targetBytes == 264 * mib)
        #expect(second.vms[0].targetBytes + second.vms[1].targetBytes <= second.capacityBytes)
        #expect(second.vms[1].explanation.bound == .share)
    }
}
