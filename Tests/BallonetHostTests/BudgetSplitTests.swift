import Testing
import BallonetHost

@Suite struct BudgetSplitTests {
    static let mib: UInt64 = 1 << 20
    static let gib: UInt64 = 1 << 30

    static func demand(_ name: String, memory: UInt64, min: UInt64 = 128 << 20, fixed: UInt64? = nil,
                       used: UInt64? = nil) -> BudgetSplit.Demand {
        BudgetSplit.Demand(name: name, memoryBytes: memory, minBytes: min, fixedTargetBytes: fixed, guestUsedBytes: used)
    }

    /// What a guest using `used` needs: +20 % and 64 MiB, within [min, RAM].
    static func need(used: UInt64, min: UInt64, memory: UInt64) -> UInt64 {
        Swift.min(memory, Swift.max(min, used + used / 5 + 64 * mib))
    }

    @Test func needsThatFitAreMet() {
        let demands = [
            Self.demand("web", memory: 4 * Self.gib, min: 256 * Self.mib, used: 1 * Self.gib),
            Self.demand("small", memory: 2 * Self.gib, min: 512 * Self.mib, used: 100 * Self.mib),   // below min
            Self.demand("full", memory: 1 * Self.gib, min: 128 * Self.mib, used: 2 * Self.gib),      // above RAM
        ]
        let targets = BudgetSplit.targets(demands, budgetBytes: 16 * Self.gib)
        #expect(targets.map(\.name) == ["web", "small", "full"])
        #expect(targets[0].bytes == Self.gib + Self.gib / 5 + 64 * Self.mib)
        #expect(targets[0].bytes == Self.need(used: Self.gib, min: 256 * Self.mib, memory: 4 * Self.gib))
        #expect(targets[1].bytes == 512 * Self.mib)
        #expect(targets[2].bytes == 1 * Self.gib)
        #expect(targets.allSatisfy { $0.reason.contains("+20 %") })
    }

    @Test func needsThatExceedTheBudgetAreSharedInProportion() {
        let demands = [
            Self.demand("a", memory: 8 * Self.gib, min: 512 * Self.mib, used: 3 * Self.gib),
            Self.demand("b", memory: 4 * Self.gib, min: 256 * Self.mib, used: nil),               // needs all its RAM
            Self.demand("c", memory: 2 * Self.gib, min: 1 * Self.gib, used: 1 * Self.gib),
        ]
        let budget: UInt64 = 5 * Self.gib
        let targets = BudgetSplit.targets(demands, budgetBytes: budget)
        let needs = [Self.need(used: 3 * Self.gib, min: 512 * Self.mib, memory: 8 * Self.gib), 4 * Self.gib,
                     Self.need(used: 1 * Self.gib, min: 1 * Self.gib, memory: 2 * Self.gib)]
        #expect(needs.reduce(0, +) > budget)
        let total = targets.reduce(0) { $0 + $1.bytes }
        #expect(total <= budget)
        // Rounding down to pages loses at most a page per VM.
        #expect(total >= budget - 3 * 4096)
        for (index, target) in targets.enumerated() {
            let minimum = demands[index].minBytes
            #expect(target.bytes >= minimum)
            #expect(target.bytes <= needs[index])
            #expect(target.bytes % 4096 == 0)
            #expect(target.reason.contains("share"))
        }
        // Each gets the same fraction of how far its need is above its min.
        let fractions = targets.enumerated().map { index, target in
            Double(target.bytes - demands[index].minBytes) / Double(needs[index] - demands[index].minBytes)
        }
        for fraction in fractions { #expect(abs(fraction - fractions[0]) < 1e-4) }
        #expect(fractions[0] > 0 && fractions[0] < 1)
    }

    @Test func aBudgetBelowTheMinimumsLeavesEachItsMin() {
        let demands = [
            Self.demand("a", memory: 4 * Self.gib, min: 1 * Self.gib, used: 3 * Self.gib),
            Self.demand("b", memory: 4 * Self.gib, min: 2 * Self.gib, used: nil),
        ]
        let targets = BudgetSplit.targets(demands, budgetBytes: 2 * Self.gib)
        #expect(targets.map(\.bytes) == [1 * Self.gib, 2 * Self.gib])
    }

    @Test func aMinAboveRAMIsCappedAtRAM() {
        let demands = [Self.demand("a", memory: 1 * Self.gib, min: 4 * Self.gib, used: 10 * Self.mib)]
        #expect(BudgetSplit.targets(demands, budgetBytes: 8 * Self.gib).map(\.bytes) == [1 * Self.gib])
        #expect(BudgetSplit.targets(demands, budgetBytes: 512 * Self.mib).map(\.bytes) == [1 * Self.gib])
    }

    @Test func withoutStatsAVMKeepsAllItsRAM() {
        let demands = [
            Self.demand("new", memory: 2 * Self.gib),
            Self.demand("known", memory: 2 * Self.gib, used: 256 * Self.mib),
        ]
        let targets = BudgetSplit.targets(demands, budgetBytes: 8 * Self.gib)
        #expect(targets[0].bytes == 2 * Self.gib)
        #expect(targets[0].reason.contains("all its RAM"))
        #expect(targets[1].bytes == Self.need(used: 256 * Self.mib, min: 128 * Self.mib, memory: 2 * Self.gib))
    }

    @Test func fixedTargetsComeOffTheTop() {
        let demands = [
            Self.demand("pinned", memory: 4 * Self.gib, fixed: 3 * Self.gib, used: 100 * Self.mib),
            Self.demand("flex", memory: 4 * Self.gib, min: 256 * Self.mib, used: 2 * Self.gib),
            Self.demand("huge-fixed", memory: 1 * Self.gib, fixed: 64 * Self.gib),
        ]
        let targets = BudgetSplit.targets(demands, budgetBytes: 5 * Self.gib)
        // Fixed targets are taken as they are (capped at RAM), whatever the guest uses.
        #expect(targets[0].bytes == 3 * Self.gib)
        #expect(targets[0].reason.contains("fixed"))
        #expect(targets[2].bytes == 1 * Self.gib)
        // What is left for the flexible VM: 5 − 3 − 1 GiB, less than it needs, more than its min.
        #expect(targets[1].bytes <= 1 * Self.gib)
        #expect(targets[1].bytes >= 1 * Self.gib - 4096)
        // A budget the fixed targets already use up leaves the others their min.
        let tight = BudgetSplit.targets(demands, budgetBytes: 2 * Self.gib)
        #expect(tight[1].bytes == 256 * Self.mib)
        #expect(tight[0].bytes == 3 * Self.gib)
    }

    @Test func withoutABudgetEachKeepsItsFixedTargetOrItsRAM() {
        let demands = [
            Self.demand("pinned", memory: 4 * Self.gib, fixed: 1 * Self.gib, used: 3 * Self.gib),
            Self.demand("free", memory: 2 * Self.gib, used: 100 * Self.mib),
            Self.demand("unknown", memory: 3 * Self.gib),
        ]
        let targets = BudgetSplit.targets(demands, budgetBytes: nil)
        #expect(targets.map(\.bytes) == [1 * Self.gib, 2 * Self.gib, 3 * Self.gib])
        #expect(targets.map(\.name) == ["pinned", "free", "unknown"])
        #expect(BudgetSplit.targets([], budgetBytes: nil).isEmpty)
        #expect(BudgetSplit.targets([], budgetBytes: Self.gib).isEmpty)
    }

    /// Guest figures come from a guest, and a hostile one reports what it likes: the largest used size a
    /// stats sample can give is just under 2^64 bytes. No figure may trap the host.
    @Test(arguments: [nil, 0, 1 << 30, UInt64.max / 2, UInt64.max] as [UInt64?])
    func hugeNumbersDoNotTrap(budget: UInt64?) {
        let largestUsed = (UInt64(1) << 52 - 1) * 4096
        let demands = [
            Self.demand("hostile", memory: 4 * Self.gib, min: 256 * Self.mib, used: largestUsed),
            Self.demand("max-used", memory: UInt64.max, min: UInt64.max, used: UInt64.max),
            Self.demand("max-ram", memory: UInt64.max, min: 0, used: UInt64.max / 2),
            Self.demand("no-stats", memory: UInt64.max, min: 1 << 40),
            Self.demand("fixed-max", memory: UInt64.max, fixed: UInt64.max),
            Self.demand("fixed-max-2", memory: UInt64.max, fixed: UInt64.max - 1),
            Self.demand("modest", memory: 2 * Self.gib, min: 256 * Self.mib, used: 512 * Self.mib),
        ]
        // With the fixed targets, and without them (so that the flexible needs alone exceed 2^64).
        for list in [demands, demands.filter { $0.fixedTargetBytes == nil }] {
            let targets = BudgetSplit.targets(list, budgetBytes: budget)
            #expect(targets.count == list.count)
            for (demand, target) in zip(list, targets) {
                #expect(target.name == demand.name)
                #expect(target.bytes <= demand.memoryBytes)
                if demand.fixedTargetBytes == nil, budget != nil {
                    // Never below its min (or its RAM, when the min is above it), but for the page rounding.
                    #expect(target.bytes >= (min(demand.minBytes, demand.memoryBytes) & ~4095))
                }
            }
            // The hostile guest can at most claim all of its own RAM.
            #expect(targets[0].bytes <= 4 * Self.gib)
        }
    }
}
