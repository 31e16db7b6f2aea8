import Testing
@testable import BallonetPolicy
import BallonetTestSupport

@Suite struct FreeMemoryStateTests {
    static let total: UInt64 = 100 * gib

    static func next(_ previous: FreeMemoryState, freePercent: Double) -> FreeMemoryState {
        FreeMemoryState.next(after: previous, freeBytes: Int64(Double(total) * freePercent / 100), totalBytes: total,
                             thresholds: FreeMemoryThresholds())
    }

    @Test func fallingCrossesEachThreshold() {
        #expect(Self.next(.high, freePercent: 10) == .high)
        #expect(Self.next(.high, freePercent: 5) == .high)      // between soft and high: not reclaiming yet
        #expect(Self.next(.high, freePercent: 3.9) == .soft)
        #expect(Self.next(.high, freePercent: 1.9) == .hard)
        #expect(Self.next(.high, freePercent: 0.5) == .low)
        #expect(Self.next(.soft, freePercent: -3) == .low)      // VMs beyond a budget
    }

    @Test func risingNeedsTheNextThresholdUpPlusHysteresis() {
        #expect(Self.next(.soft, freePercent: 6.2) == .soft)
        #expect(Self.next(.soft, freePercent: 6.6) == .high)
        #expect(Self.next(.hard, freePercent: 4.2) == .hard)
        #expect(Self.next(.hard, freePercent: 4.6) == .soft)
        #expect(Self.next(.low, freePercent: 2.4) == .low)
        #expect(Self.next(.low, freePercent: 2.6) == .hard)
        // A big recovery climbs all the way at once.
        #expect(Self.next(.low, freePercent: 20) == .high)
    }

    @Test func noFlappingWhenFreeMemoryHoversAtAThreshold() {
        var random = SeededGenerator(seed: 7)
        for threshold in [4.0, 2.0, 1.0] {
            var state = Self.next(.high, freePercent: threshold - 0.01)
            var changes = 0
            for _ in 0..<1_000 {
                // ±0.4 % around the threshold: less than the hysteresis.
                let free = threshold + Double.random(in: -0.4...0.4, using: &random)
                let next = Self.next(state, freePercent: free)
                if next != state { changes += 1 }
                state = next
            }
            #expect(changes <= 1, "threshold \(threshold) %: \(changes) changes")
        }
    }

    @Test func eachStateAllowsWhatTheNextAllowsLess() {
        #expect(FreeMemoryState.high.actions.isEmpty)
        #expect(FreeMemoryState.soft.actions == [.balloon])
        #expect(FreeMemoryState.hard.actions == [.balloon, .hypervisorSwap])
        #expect(FreeMemoryState.low.actions == [.balloon, .hypervisorSwap, .pauseAboveTarget])
        #expect(FreeMemoryState.low.actions.names == ["balloon", "hypervisor swap", "pause VMs above target"])
    }
}
