import Testing
@testable import BallonetPolicy

@Suite struct WorkingSetEstimatorTests {
    /// Feeds `trace` (one sample per `period`) and returns the estimate after each sample.
    static func estimates(_ trace: [UInt64], periodMillis: UInt64 = 2_000) -> [UInt64] {
        var estimator = WorkingSetEstimator()
        return trace.map { sample in
            estimator.observe(activeBytes: sample, elapsedMillis: periodMillis)
            return estimator.estimateBytes!
        }
    }

    @Test func nothingBeforeTheFirstSample() {
        #expect(WorkingSetEstimator().estimateBytes == nil)
    }

    @Test func aStepUpIsFollowedWithinOnePeriod() {
        let trace = Array(repeating: 64 * mib, count: 10) + Array(repeating: 192 * mib, count: 5)
        let estimates = Self.estimates(trace)
        // The first sample of the new level is the estimate.
        #expect(estimates[10] == 192 * mib)
        #expect(estimates[10...].allSatisfy { $0 == 192 * mib })
    }

    @Test func aStepDownDecaysOverSeveralPeriods() {
        let trace = Array(repeating: 192 * mib, count: 30) + Array(repeating: 64 * mib, count: 30)
        for periodMillis: UInt64 in [1_000, 2_000, 10_000] {
            let estimates = Self.estimates(trace, periodMillis: periodMillis)
            let after = Array(estimates[30...])
            // Never below what is touched, never up again, and strictly falling while above it.
            #expect(after.allSatisfy { $0 >= 64 * mib })
            for (a, b) in zip(after, after.dropFirst()) { #expect(b <= a) }
            // Not in one period: one period keeps more than half of the drop when periods are short
            // against the slow half-life (6 s).
            if periodMillis <= 2_000 { #expect(after[0] > 64 * mib + 64 * mib) }
            // Gone within 30 s: under 5 % of the drop left.
            let periodsIn30Seconds = Int(30_000 / periodMillis)
            #expect(after[periodsIn30Seconds - 1] < 64 * mib + (128 * mib) / 20,
                    "period \(periodMillis) ms: \(after[periodsIn30Seconds - 1] >> 20) MiB after 30 s")
        }
    }

    @Test func constantInputConvergesToItself() {
        let estimates = Self.estimates(Array(repeating: 100 * mib, count: 20))
        #expect(estimates.allSatisfy { $0 == 100 * mib })
        // And after a disturbance, back to it.
        let disturbed = Self.estimates([100 * mib, 300 * mib] + Array(repeating: 100 * mib, count: 60))
        #expect(disturbed.last! >= 100 * mib && disturbed.last! - 100 * mib < 4096)
    }

    @Test func gainsScaleWithTimeNotWithTheNumberOfSamples() {
        // Two 1 s samples move the averages as far as one 2 s sample.
        var twice = WorkingSetEstimator()
        var once = WorkingSetEstimator()
        twice.observe(activeBytes: 200 * mib, elapsedMillis: 1_000)
        once.observe(activeBytes: 200 * mib, elapsedMillis: 1_000)
        twice.observe(activeBytes: 0, elapsedMillis: 1_000)
        twice.observe(activeBytes: 0, elapsedMillis: 1_000)
        once.observe(activeBytes: 0, elapsedMillis: 2_000)
        #expect(abs(twice.slow - once.slow) < 1)
        #expect(abs(twice.fast - once.fast) < 1)
        // One half-life halves what is above the new level.
        #expect(abs(WorkingSetEstimator.gain(elapsedMillis: 6_000, halfLifeMillis: 6_000) - 0.5) < 1e-12)
    }

    @Test func exp2MatchesKnownValues() {
        for (x, expected) in [(0.0, 1.0), (1, 2), (-1, 0.5), (10, 1024), (-0.5, 0.7071067811865476), (0.25, 1.189207115002721)] {
            #expect(abs(exp2(x) - expected) <= expected * 1e-14)
        }
        #expect(exp2(-2000) == 0)
    }
}
