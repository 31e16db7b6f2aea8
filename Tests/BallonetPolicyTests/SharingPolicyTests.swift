import Testing
@testable import BallonetPolicy
import BallonetTestSupport

/// When and how hard ksmd scans (`SharingPolicy`), simulated round by round with a model of KSM.
@Suite struct SharingPolicyTests {
    /// A model of ksmd: it scans `pagesPerCPUSecond` pages per CPU-second at the CPU share the decision
    /// gives it; each finished pass merges `gainPerPass` (a list, one per pass; the last repeats).
    struct KSMModel {
        var mergeableBytes: UInt64
        var gainPerPass: [UInt64]
        var pagesPerCPUSecond: Double = 250_000
        var savedBytes: UInt64 = 0
        var fullScans: UInt64 = 0
        var scannedInPass: Double = 0
        var advisor = true
        var zeroPending: UInt64 = 0

        /// One second under `decision`: the CPU it used, in nanoseconds.
        mutating func run(_ decision: SharingPolicy.Decision) -> UInt64 {
            guard decision.running else { return 0 }
            let cpuSeconds = min(max(decision.cpuBudgetPercent, 10), 100) / 100
            scannedInPass += pagesPerCPUSecond * cpuSeconds
            if zeroPending > 0 { zeroPending -= min(zeroPending, UInt64(pagesPerCPUSecond * cpuSeconds) * 4096) }
            let pages = Double(mergeableBytes / 4096)
            while scannedInPass >= pages {
                scannedInPass -= pages
                savedBytes += gainPerPass[min(Int(fullScans), gainPerPass.count - 1)]
                fullScans += 1
            }
            return UInt64(cpuSeconds * 1e9)
        }

        func observation(cpu: UInt64, state: FreeMemoryState) -> SharingPolicy.Observation {
            SharingPolicy.Observation(elapsedMillis: 1_000, ksmdCPUNanos: cpu, savedBytes: savedBytes, fullScans: fullScans,
                                      mergeableBytes: mergeableBytes, pendingZeroMergeBytes: zeroPending, state: state, advisorAvailable: advisor)
        }
    }

    /// Runs `seconds` rounds; returns the decisions.
    static func simulate(_ model: inout KSMModel, memory: inout SharingPolicy.Memory, seconds: Int,
                         state: (Int) -> FreeMemoryState = { _ in .high }, settings: SharingPolicy.Settings = .init()) -> [SharingPolicy.Decision] {
        var decisions: [SharingPolicy.Decision] = []
        var cpu: UInt64 = 0
        for second in 0..<seconds {
            let (decision, next) = SharingPolicy.decide(model.observation(cpu: cpu, state: state(second)), memory: memory, settings: settings)
            memory = next
            decisions.append(decision)
            cpu = model.run(decision)
        }
        return decisions
    }

    @Test func nothingMergeableStopsKsmd() {
        let (decision, _) = SharingPolicy.decide(
            .init(elapsedMillis: 1_000, ksmdCPUNanos: 0, savedBytes: 0, fullScans: 0, mergeableBytes: 0, state: .low, advisorAvailable: true),
            memory: .init(), settings: .init())
        #expect(!decision.running)
        #expect(decision.reason.contains("no VM's RAM is mergeable"))
    }

    @Test func aCalmHostLooksThenStopsWhenPassesStopMergingAndLooksAgainLater() {
        // 1 GiB mergeable; the second and third passes merge 200 and 50 MiB, then nothing.
        var model = KSMModel(mergeableBytes: 1 << 30, gainPerPass: [0, 200 << 20, 50 << 20, 0])
        var memory = SharingPolicy.Memory()
        let decisions = Self.simulate(&model, memory: &memory, seconds: 600)
        #expect(decisions[0].running && decisions[0].cpuBudgetPercent == 10, "a first look at half the 20 % bound")
        let stopped = decisions.firstIndex { !$0.running }
        #expect(stopped != nil)
        #expect(model.savedBytes == 250 << 20, "it ran until the savings were found")
        #expect(decisions[stopped!].reason.contains("two passes merged under"), "\(decisions[stopped!].reason)")
        // Idle until the recheck interval (5 minutes), then one more look.
        let restarted = decisions[stopped!...].firstIndex { $0.running }
        #expect(restarted != nil && restarted! - stopped! >= 299 && restarted! - stopped! <= 301, "\(String(describing: restarted)) after \(stopped!)")
    }

    @Test func shortMemoryScansAtTheFullBoundAndAQuietHostScansAtTheCalmRate() {
        var model = KSMModel(mergeableBytes: 1 << 30, gainPerPass: [0, 100 << 20, 0])
        var memory = SharingPolicy.Memory()
        let decisions = Self.simulate(&model, memory: &memory, seconds: 400, state: { _ in .soft })
        #expect(decisions[0].cpuBudgetPercent == 20)
        #expect(decisions.allSatisfy { $0.running }, "memory is short: ksmd never stops")
        #expect(decisions.last!.cpuBudgetPercent == 10, "two passes that merged nothing: the calm rate")
        // At the bound the raw rate paces ksmd by its CPU; calm scanning goes through the advisor.
        if case .raw(let pages, _)? = decisions[0].rate {
            #expect(pages == SharingPolicy.startingPagesToScan(budgetPercent: 20))
        } else {
            Issue.record("scanning at the bound uses the raw rate: \(decisions[0])")
        }
        guard case .advisor(let maxCPU, let seconds)? = decisions.last!.rate else {
            Issue.record("calm scanning goes through the advisor: \(decisions.last!)")
            return
        }
        #expect(maxCPU == 10 && seconds == SharingPolicy.calmScanSeconds)
    }

    @Test func aStoppedKsmdStartsAgainWhenMemoryGetsShortOrANewVMComes() {
        var model = KSMModel(mergeableBytes: 1 << 30, gainPerPass: [0, 0])
        var memory = SharingPolicy.Memory()
        var decisions = Self.simulate(&model, memory: &memory, seconds: 120)
        #expect(!decisions.last!.running)
        // A second VM: 512 MiB more to look at.
        model.mergeableBytes += 512 << 20
        decisions = Self.simulate(&model, memory: &memory, seconds: 1)
        #expect(decisions[0].running && decisions[0].reason.contains("grew"), "\(decisions[0].reason)")
        decisions = Self.simulate(&model, memory: &memory, seconds: 200)
        #expect(!decisions.last!.running)
        decisions = Self.simulate(&model, memory: &memory, seconds: 1, state: { _ in .hard })
        #expect(decisions[0].running && decisions[0].cpuBudgetPercent == 20)
    }

    @Test func balloonPagesWaitingForTheZeroPageScanAtTheBound() {
        var model = KSMModel(mergeableBytes: 1 << 30, gainPerPass: [0])
        model.zeroPending = 256 << 20
        var memory = SharingPolicy.Memory()
        let decisions = Self.simulate(&model, memory: &memory, seconds: 5)
        #expect(decisions[0].cpuBudgetPercent == 20 && decisions[0].reason.contains("zero page"), "\(decisions[0].reason)")
        guard case .raw? = decisions[0].rate else {
            Issue.record("reclaim scans at the raw rate: \(decisions[0])")
            return
        }
    }

    @Test func theRawRateFollowsTheCPUBudget() {
        // Without the advisor: pages_to_scan scales by budget ÷ measured CPU, 4× per round at most.
        #expect(SharingPolicy.nextPagesToScan(current: 1000, budgetPercent: 20, cpuSeconds: 0.1, elapsedMillis: 1000, wasRunning: true) == 2000)
        #expect(SharingPolicy.nextPagesToScan(current: 1000, budgetPercent: 10, cpuSeconds: 0.8, elapsedMillis: 1000, wasRunning: true) == 250)
        #expect(SharingPolicy.nextPagesToScan(current: 20_000, budgetPercent: 20, cpuSeconds: 0, elapsedMillis: 1000, wasRunning: true) == 30_000)
        #expect(SharingPolicy.nextPagesToScan(current: 100, budgetPercent: 20, cpuSeconds: 0, elapsedMillis: 1000, wasRunning: false) == 100)
        var model = KSMModel(mergeableBytes: 1 << 30, gainPerPass: [0, 100 << 20, 100 << 20])
        model.advisor = false
        var memory = SharingPolicy.Memory()
        let decisions = Self.simulate(&model, memory: &memory, seconds: 30, state: { _ in .soft })
        guard case .raw(let pages, let sleep)? = decisions.last!.rate else {
            Issue.record("raw rate without the advisor: \(decisions.last!)")
            return
        }
        #expect(sleep == SharingPolicy.sleepMillis && SharingPolicy.pagesToScanRange.contains(pages))
    }

    @Test func balloonReclaimPagesOutWhileSwapHasRoomAndUsesTheZeroPageWhenItHasNot() {
        let balloon: UInt64 = 256 << 20
        #expect(SharingPolicy.balloonReclaim(mergeable: true, ksmSteered: true, swapFreeBytes: 1 << 30, balloonBytes: balloon) == .pageout)
        #expect(SharingPolicy.balloonReclaim(mergeable: true, ksmSteered: true, swapFreeBytes: 0, balloonBytes: balloon) == .zeroPage)
        #expect(SharingPolicy.balloonReclaim(mergeable: true, ksmSteered: true, swapFreeBytes: balloon, balloonBytes: balloon) == .zeroPage,
                "the reserve must fit too")
        #expect(SharingPolicy.balloonReclaim(mergeable: false, ksmSteered: true, swapFreeBytes: 0, balloonBytes: balloon) == .pageout,
                "sharing off: KSM never sees the pages")
        #expect(SharingPolicy.balloonReclaim(mergeable: true, ksmSteered: false, swapFreeBytes: 0, balloonBytes: balloon) == .pageout,
                "nobody steers ksmd to scan them")
    }
}

/// The charging rule (`SharingAccounting`) against a model of KSM's pages: random sets of guests, KSM pages
/// each mapped by some of them, zero pages and balloons, with Rss and Pss computed as the kernel does.
@Suite struct SharingAccountingPropertyTests {
    struct World {
        var resident: [UInt64]
        var proportional: [UInt64]
        var zero: [UInt64]
        var balloon: [UInt64]
        var pagesSharing: UInt64
        var zeroPages: UInt64
    }

    static func randomWorld(_ random: inout SeededGenerator) -> World {
        let n = Int.random(in: 1...6, using: &random)
        let page: UInt64 = 4096
        var resident = (0..<n).map { _ in UInt64.random(in: 0...50_000, using: &random) * page }
        var proportional = resident
        var zero = [UInt64](repeating: 0, count: n)
        var balloon = [UInt64](repeating: 0, count: n)
        var pagesSharing: UInt64 = 0
        // KSM pages, each mapped by 2...n guests (a guest may map one several times).
        for _ in 0..<Int.random(in: 0...400, using: &random) {
            let mappers = (0..<Int.random(in: 2...max(2, 2 * n), using: &random)).map { _ in Int.random(in: 0..<n, using: &random) }
            pagesSharing += UInt64(mappers.count - 1)
            for vm in mappers {
                resident[vm] += page
                // Pss: the page's size divided among its mappings (the kernel keeps the fraction exactly).
                proportional[vm] += page / UInt64(mappers.count)
            }
        }
        var zeroPages: UInt64 = 0
        for vm in 0..<n {
            let z = UInt64.random(in: 0...2_000, using: &random)
            zero[vm] = z * page
            zeroPages += z
            balloon[vm] = UInt64.random(in: 0...3_000, using: &random) * page
        }
        return World(resident: resident, proportional: proportional, zero: zero, balloon: balloon, pagesSharing: pagesSharing, zeroPages: zeroPages)
    }

    @Test func creditsAddUpToNoMoreThanKSMSavesAndSharedPagesToExactlyPagesSharing() {
        var random = SeededGenerator(seed: 11)
        for _ in 0..<300 {
            let world = Self.randomWorld(&random)
            var credits: UInt64 = 0
            var sharedCredits: UInt64 = 0
            for vm in world.resident.indices {
                let credit = SharingAccounting.savedBytes(residentBytes: world.resident[vm], proportionalBytes: world.proportional[vm],
                                                          zeroPageBytes: world.zero[vm], balloonBytes: world.balloon[vm])
                credits += credit
                sharedCredits += SharingAccounting.savedBytes(residentBytes: world.resident[vm], proportionalBytes: world.proportional[vm],
                                                              zeroPageBytes: 0, balloonBytes: 0)
                // A VM is never credited more than its resident pages and its zero pages beyond the balloon.
                let zeroBeyond = world.zero[vm] > world.balloon[vm] ? world.zero[vm] - world.balloon[vm] : 0
                #expect(credit <= world.resident[vm] + zeroBeyond)
                #expect(SharingAccounting.chargedBytes(residentBytes: world.resident[vm], savedBytes: credit) <= world.resident[vm])
            }
            // Each page shared by n is charged 1/n to each: the n − 1 copies it saves are what the credits add up
            // to (up to the rounding of 1/n: under a byte per mapping, at most 2 × pages_sharing bytes in all).
            let saved = world.pagesSharing * 4096
            #expect(sharedCredits >= saved && sharedCredits - saved <= 2 * world.pagesSharing,
                    "\(sharedCredits) vs pages_sharing \(saved)")
            #expect(credits <= sharedCredits + world.zeroPages * 4096)
        }
    }

    @Test func savingsRaiseTheCapacityAndNeverLowerATarget() {
        var random = SeededGenerator(seed: 12)
        for _ in 0..<200 {
            let (vms, host) = AllocationPropertyTests.randomCase(&random)
            let parameters = AllocationPropertyTests.unlimited()
            let saving = UInt64.random(in: 0...4096, using: &random) * mib
            var shared = host
            shared.sharingSavedBytes = saving
            let without = MemoryPolicy.decide(vms: vms, host: host, parameters: parameters)
            let with = MemoryPolicy.decide(vms: vms, host: shared, parameters: parameters)
            #expect(with.capacityBytes >= without.capacityBytes)
            #expect(with.capacityBytes - without.capacityBytes <= saving)
            for (a, b) in zip(without.vms, with.vms) { #expect(b.targetBytes >= a.targetBytes, "\(a.name): \(a.targetBytes) → \(b.targetBytes)") }
            let total = with.vms.reduce(UInt64(0)) { $0 + $1.targetBytes }
            let minimums = vms.reduce(UInt64(0)) { $0 + $1.minBytes }
            #expect(total <= max(with.capacityBytes, minimums) + UInt64(vms.count) * 4096)
            // No savings: the same decision as before sharing was counted.
            if saving == 0 { #expect(with == without) }
        }
    }
}
