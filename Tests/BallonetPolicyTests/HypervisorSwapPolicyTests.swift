import BallonetPolicy
import BallonetTestSupport
import Testing

/// The rules of hypervisor swapping and pausing, one round at a time and over simulated rounds.
@Suite struct HypervisorSwapPolicyTests {
    let settings = SwapSettings()
    let mib: UInt64 = 1 << 20

    func decide(_ vm: HypervisorSwapPolicy.VM, _ state: FreeMemoryState, swapFree: UInt64 = 4 << 30) -> HypervisorSwapPolicy.Decision {
        HypervisorSwapPolicy.decide(vms: [vm], state: state, swapFreeBytes: swapFree, elapsedMillis: 1_000, settings: settings)[0]
    }

    @Test func aDeliveringBalloonIsLeftAloneInSoftButNotInHard() {
        let vm = HypervisorSwapPolicy.VM(name: "a", targetBytes: 200 * mib, residentBytes: 400 * mib, balloon: .delivering)
        #expect(decide(vm, .soft).limitBytes == nil)
        let hard = decide(vm, .hard)
        #expect(hard.limitBytes == 272 * mib, "one 128 MiB step below resident: \(hard)")
        #expect(!hard.pause)
    }

    @Test func aBalloonThatCannotDeliverIsSwappedInSoft() {
        for verdict in [BalloonDelivery.Verdict.noAgent, .stalled(forMillis: 12_000)] {
            let vm = HypervisorSwapPolicy.VM(name: "a", targetBytes: 300 * mib, residentBytes: 400 * mib, balloon: verdict)
            let made = decide(vm, .soft)
            #expect(made.limitBytes == 300 * mib, "the step reaches the target: \(made)")
            #expect(made.reason.contains(verdict.description))
        }
    }

    @Test func nothingNewIsSwappedInHighAndALimitOnlyRisesThere() {
        let fresh = HypervisorSwapPolicy.VM(name: "a", targetBytes: 200 * mib, residentBytes: 400 * mib, balloon: .noAgent)
        #expect(decide(fresh, .high).limitBytes == nil)
        var limited = fresh
        limited.previousLimitBytes = 250 * mib
        limited.swappedBytes = 200 * mib
        #expect(decide(limited, .high).limitBytes == 250 * mib, "not lowered to the target in high")
        limited.targetBytes = 320 * mib
        #expect(decide(limited, .high).limitBytes == 320 * mib, "raised with the target")
        limited.targetBytes = 600 * mib
        let released = decide(limited, .high)
        #expect(released.limitBytes == nil, "the target covers resident + swapped: \(released)")
    }

    @Test func anOperatorsFixedTargetIsEnforcedInHighWhenTheBalloonCannot() {
        var vm = HypervisorSwapPolicy.VM(name: "a", targetBytes: 200 * mib, residentBytes: 300 * mib, balloon: .delivering, fixedTarget: true)
        #expect(decide(vm, .high).limitBytes == nil, "the balloon is still at it")
        vm.balloon = .stalled(forMillis: 10_000)
        let made = decide(vm, .high)
        #expect(made.limitBytes == 200 * mib && made.reason.contains("fixed target"), "\(made)")
    }

    @Test func aSwappedVMStaysLimitedWhileMemoryIsShortEvenWithADeliveringBalloon() {
        let vm = HypervisorSwapPolicy.VM(name: "a", targetBytes: 200 * mib, residentBytes: 205 * mib, swappedBytes: 150 * mib,
                                         balloon: .delivering, previousLimitBytes: 200 * mib)
        #expect(decide(vm, .soft).limitBytes == 200 * mib)
    }

    @Test func limitsStepAndNeverExceedFreeSwapBeyondTheReserve() {
        let vms = (0..<3).map { HypervisorSwapPolicy.VM(name: "vm\($0)", targetBytes: 100 * mib, residentBytes: 500 * mib, balloon: .noAgent) }
        // 64 MiB reserve, 264 MiB free: 200 MiB may go to swap this round, first come first served.
        let made = HypervisorSwapPolicy.decide(vms: vms, state: .hard, swapFreeBytes: 264 * mib, elapsedMillis: 1_000, settings: settings)
        #expect(made[0].limitBytes == 372 * mib)
        #expect(made[1].limitBytes == 428 * mib, "only the 72 MiB left: \(made[1])")
        #expect(made[1].reason.contains("host swap is short"))
        #expect(made[2].limitBytes == 500 * mib, "nothing left")
        // Half a second's round steps half as far.
        let half = HypervisorSwapPolicy.decide(vms: [vms[0]], state: .hard, swapFreeBytes: 4 << 30, elapsedMillis: 500, settings: settings)
        #expect(half[0].limitBytes == 436 * mib)
    }

    /// A hard limit (cgroup v1) OOM-kills a guest that touches its RAM again with swap full: the limit stays
    /// at RAM + headroom − the swap left for it, or is not set at all.
    @Test func aHardLimitNeverAsksMoreOfSwapThanIsLeft() {
        let vm = HypervisorSwapPolicy.VM(name: "v1", targetBytes: 300 * mib, residentBytes: 469 * mib, balloon: .stalled(forMillis: 12_000),
                                         hardLimit: true, ramBytes: 512 * mib)
        let none = decide(vm, .soft, swapFree: 0)
        #expect(none.limitBytes == nil && none.reason.contains("OOM-killed"), "\(none)")
        // 264 MiB free, 64 reserved: 200 MiB of swap; RAM 512 + 64 headroom − 200 = 376 MiB at the least.
        let clamped = decide(vm, .soft, swapFree: 264 * mib)
        #expect(clamped.limitBytes == 376 * mib, "\(clamped)")
        // The same VM with memory.high (not hard) steps to the target as before.
        var soft = vm
        soft.hardLimit = false
        #expect(decide(soft, .soft, swapFree: 264 * mib).limitBytes == 341 * mib)
        // Two hard-limited VMs share the swap: the second gets what the first leaves.
        let both = HypervisorSwapPolicy.decide(vms: [vm, vm], state: .hard, swapFreeBytes: 349 * mib, elapsedMillis: 1_000, settings: settings)
        #expect(both[0].limitBytes == 341 * mib, "285 MiB of swap covers 576 − 341: \(both[0])")
        #expect(both[1].limitBytes == nil, "the 50 MiB left is not enough for a second: \(both[1])")
    }

    @Test(arguments: 0..<200)
    func hardLimitsAlwaysFitInSwap(seed: Int) {
        var random = SeededGenerator(seed: UInt64(seed))
        let vms = (0..<4).map { index -> HypervisorSwapPolicy.VM in
            let ram = UInt64.random(in: 256...2048, using: &random) * mib
            let resident = UInt64.random(in: 0...(ram / mib), using: &random) * mib
            return HypervisorSwapPolicy.VM(name: "vm\(index)", targetBytes: UInt64.random(in: 64...(ram / mib), using: &random) * mib,
                                           residentBytes: resident, balloon: Bool.random(using: &random) ? .noAgent : .delivering,
                                           previousLimitBytes: Bool.random(using: &random) ? resident : nil,
                                           hardLimit: Bool.random(using: &random), ramBytes: ram)
        }
        let swapFree = UInt64.random(in: 0...4096, using: &random) * mib
        let state = [FreeMemoryState.soft, .hard, .low][seed % 3]
        let made = HypervisorSwapPolicy.decide(vms: vms, state: state, swapFreeBytes: swapFree, elapsedMillis: 1_000, settings: settings)
        var promised: UInt64 = 0
        for (vm, decision) in zip(vms, made) {
            guard let limit = decision.limitBytes else { continue }
            if vm.hardLimit {
                #expect(limit < vm.ramBytes)
                promised += vm.ramBytes + settings.hardLimitHeadroomBytes - min(limit, vm.ramBytes + settings.hardLimitHeadroomBytes)
            } else if vm.residentBytes > limit {
                promised += vm.residentBytes - limit
            }
        }
        let room = swapFree > settings.swapReserveBytes ? swapFree - settings.swapReserveBytes : 0
        #expect(promised <= room, "limits ask \(promised >> 20) MiB of swap; \(room >> 20) MiB is there")
    }

    @Test func swapOffMeansNoLimitButStillPausesInLow() {
        let vm = HypervisorSwapPolicy.VM(name: "a", targetBytes: 200 * mib, residentBytes: 400 * mib, balloon: .noAgent, swapAllowed: false)
        let made = decide(vm, .low)
        #expect(made.limitBytes == nil && made.pause)
    }

    @Test func pausedVMsStayPausedUntilTheStateRecovers() {
        var vm = HypervisorSwapPolicy.VM(name: "a", targetBytes: 200 * mib, residentBytes: 400 * mib, balloon: .noAgent)
        #expect(decide(vm, .low).pause)
        vm.paused = true
        vm.residentBytes = 200 * mib  // swapped to target, memory still low
        #expect(decide(vm, .low).pause, "still low: stays paused")
        #expect(!decide(vm, .hard).pause, "recovered: resumed")
        vm.paused = false
        #expect(!decide(vm, .low).pause, "a VM at its target is not paused")
    }

    /// Rounds of a VM without an agent whose resident memory follows its limit as a cgroup makes it:
    /// it reaches its target within ±tolerance, and the host never swaps more than it has.
    @Test func simulatedRoundsConvergeToTheTarget() {
        var resident: UInt64 = 900 * mib, swapped: UInt64 = 0, limit: UInt64? = nil
        for _ in 0..<20 {
            let vm = HypervisorSwapPolicy.VM(name: "a", targetBytes: 300 * mib, residentBytes: resident, swappedBytes: swapped,
                                             balloon: .noAgent, previousLimitBytes: limit)
            let made = decide(vm, .soft, swapFree: 2 << 30)
            limit = made.limitBytes
            if let limit, resident > limit {
                swapped += resident - limit
                resident = limit
            }
        }
        #expect(resident <= 300 * mib + settings.tolerance(forTarget: 300 * mib) && resident >= 300 * mib)
        #expect(swapped == 600 * mib)
    }
}

@Suite struct BalloonDeliveryTests {
    let settings = SwapSettings()

    @Test func progressKeepsItDeliveringAndAStallIsCalledAfterTheGrace() {
        var delivery = BalloonDelivery()
        let tolerance: UInt64 = 8 << 20
        #expect(delivery.observe(excessBytes: 300 << 20, agentEstablished: true, nowMillis: 0, settings: settings, tolerance: tolerance) == .delivering)
        #expect(delivery.observe(excessBytes: 200 << 20, agentEstablished: true, nowMillis: 5_000, settings: settings, tolerance: tolerance) == .delivering)
        // The guest reached its floor: the excess stays at 150 MiB.
        #expect(delivery.observe(excessBytes: 150 << 20, agentEstablished: true, nowMillis: 8_000, settings: settings, tolerance: tolerance) == .delivering)
        #expect(delivery.observe(excessBytes: 149 << 20, agentEstablished: true, nowMillis: 15_000, settings: settings, tolerance: tolerance) == .delivering)
        #expect(delivery.observe(excessBytes: 151 << 20, agentEstablished: true, nowMillis: 18_000, settings: settings, tolerance: tolerance)
                    == .stalled(forMillis: 10_000))
        // A guest growing faster than its balloon shrinks it is stalled too.
        var growing = BalloonDelivery()
        _ = growing.observe(excessBytes: 100 << 20, agentEstablished: true, nowMillis: 0, settings: settings, tolerance: tolerance)
        #expect(growing.observe(excessBytes: 180 << 20, agentEstablished: true, nowMillis: 11_000, settings: settings, tolerance: tolerance)
                    == .stalled(forMillis: 11_000))
        // At target again: delivering, and the clock starts over.
        #expect(growing.observe(excessBytes: 4 << 20, agentEstablished: true, nowMillis: 12_000, settings: settings, tolerance: tolerance) == .delivering)
    }

    @Test func noAgentIsItsOwnVerdict() {
        var delivery = BalloonDelivery()
        #expect(delivery.observe(excessBytes: 0, agentEstablished: false, nowMillis: 0, settings: settings, tolerance: 0) == .noAgent)
    }
}

@Suite struct WorkingSetSourcesTests {
    @Test func theLargerFreshEstimateWins() {
        #expect(WorkingSetSources.combined(host: 100, guest: 300) == 300)
        #expect(WorkingSetSources.combined(host: 400, guest: 300) == 400)
        #expect(WorkingSetSources.combined(host: 100, guest: nil) == 100)
        #expect(WorkingSetSources.combined(host: nil, guest: 7) == 7)
        #expect(WorkingSetSources.combined(host: nil, guest: nil) == nil)
    }
}
