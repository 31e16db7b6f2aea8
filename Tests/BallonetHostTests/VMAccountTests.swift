import BallonetHost
import BallonetWire
import Testing

/// Every figure in an account that comes from a guest is hostile input (safety invariant 6): huge values
/// saturate instead of trapping the host agent.
@Suite struct VMAccountTests {
    @Test func hugeGuestFiguresSaturateInsteadOfCrashingTheHost() {
        var account = VMAccount(name: "evil")
        account.record(StatsSample(sequence: 1, guestMillis: 0, periodMillis: 1000, entries: [
            StatEntry(.memTotal, .max), StatEntry(.memAvailable, .max - 1), StatEntry(.balloonPages, .max),
            StatEntry(.workingSetPages, .max)]))
        #expect(account.guestUsedBytes == 0)
        #expect(account.guestAvailableBytes == .max)
        #expect(account.guestWorkingSetBytes == .max)
        #expect(VMAccount.bytes(ofPages: 1 << 52) == .max)
        #expect(VMAccount.bytes(ofPages: 256) == 1 << 20)
    }

    @Test func usedIsWhatIsNeitherAvailableNorBalloon() {
        var account = VMAccount(name: "vm")
        account.record(StatsSample(sequence: 1, guestMillis: 0, periodMillis: 1000, entries: [
            StatEntry(.memTotal, 131_072), StatEntry(.memAvailable, 32_768), StatEntry(.balloonPages, 65_536)]))
        #expect(account.guestUsedBytes == 128 << 20)
    }

    @Test func whatBallooningCannotTakeFollowsTheGuestsKeptFreeMemory() {
        // 512 MiB of RAM, balloon 100 MiB, MemAvailable 200 MiB, the agent keeps 68 MiB free: the balloon can
        // grow by 132 MiB more, so 512 − 100 − 132 = 280 MiB cannot be taken by ballooning.
        let pages = { (mib: UInt64) in mib * 256 }
        let sample = StatsSample(sequence: 1, guestMillis: 0, periodMillis: 2000, entries: [
            StatEntry(.memTotal, pages(457)), StatEntry(.memAvailable, pages(200)), StatEntry(.balloonPages, pages(100)),
            StatEntry(.keptFreePages, pages(68)),
        ])
        #expect(VMAccount.unreclaimableBytes(sample: sample, memoryBytes: 512 << 20) == 280 << 20)
        // Without the kept figure: used (457 − 200 − 100 = 157) plus what the kernel reserved (55).
        var older = sample
        older.entries.removeLast()
        #expect(VMAccount.unreclaimableBytes(sample: older, memoryBytes: 512 << 20) == 212 << 20)
        // Hostile figures saturate, never trap.
        let hostile = StatsSample(sequence: 1, guestMillis: 0, periodMillis: 2000, entries: [
            StatEntry(.memTotal, .max), StatEntry(.memAvailable, .max), StatEntry(.balloonPages, .max), StatEntry(.keptFreePages, 0),
        ])
        #expect(VMAccount.unreclaimableBytes(sample: hostile, memoryBytes: 512 << 20) == 0)
        #expect(VMAccount.unreclaimableBytes(sample: older, memoryBytes: 0) != nil)
    }
}
