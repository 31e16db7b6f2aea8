@testable import BallonetHost
import Testing

/// The sampler's bookkeeping without a process: periods, what a sample covers, and the cost bound.
@Suite struct IdlePageSamplerTests {
    @Test func aSampleCoversTheTimeSinceTheBitsWereCleared() {
        var sampler = IdlePageSampler(periodMillis: 5_000)
        #expect(!sampler.isDue(nowMillis: 100_000), "nothing cleared yet")
        #expect(sampler.finishPeriod(referencedBytes: 1, nowMillis: 100_000, readNanos: 0) == nil)
    }

    @Test func anExpensiveSampleLengthensThePeriodAndACheapOneShortensItBack() {
        var sampler = IdlePageSampler(periodMillis: 5_000)
        sampler.markCleared(atMillis: 0)
        // 80 ms for a 5 s period is 1.6 % of a core: over the 1 % bound.
        let sample = sampler.finishPeriod(referencedBytes: 64 << 20, nowMillis: 5_000, readNanos: 80_000_000)
        #expect(sample?.activeBytes == 64 << 20 && sample?.elapsedMillis == 5_000)
        #expect(sampler.periodMillis == 10_000)
        for round in 1...5 {
            sampler.markCleared(atMillis: UInt64(round) * 100_000)
            _ = sampler.finishPeriod(referencedBytes: 0, nowMillis: UInt64(round) * 100_000 + sampler.periodMillis, readNanos: 80_000_000 * 8)
        }
        #expect(sampler.periodMillis == IdlePageSampler.maximumPeriodMillis, "never beyond ESX's 60 s")
        sampler.markCleared(atMillis: 1_000_000)
        _ = sampler.finishPeriod(referencedBytes: 0, nowMillis: 1_060_000, readNanos: 1_000_000)
        #expect(sampler.periodMillis == 30_000, "halves back toward the period asked for")
        #expect(sampler.samples == 7)
    }
}
