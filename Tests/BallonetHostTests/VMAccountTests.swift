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
}
