import Testing
import BallonetPolicy

@Suite struct AdmissionTests {
    static let request = Admission.Request(name: "web", minBytes: 1 * gib, maxBytes: 4 * gib, overheadBytes: 64 * mib)

    @Test func aVMThatFitsIsAdmitted() {
        let host = Admission.Host(memoryBytes: 16 * gib, reservedBytes: 8 * gib, swapTotalBytes: 8 * gib, reservedSwapBytes: 2 * gib)
        let decision = Admission.decide(Self.request, host: host)
        #expect(decision.isAdmitted)
        #expect(decision.message.contains("1088 MiB"))
    }

    @Test func memoryThatDoesNotFitIsRefusedWithWhatIsMissing() {
        let host = Admission.Host(memoryBytes: 16 * gib, reservedBytes: 15 * gib, swapTotalBytes: 8 * gib, reservedSwapBytes: 0)
        let decision = Admission.decide(Self.request, host: host)
        #expect(!decision.isAdmitted)
        #expect(decision.message.contains("VM web cannot start"))
        #expect(decision.message.contains("1088 MiB does not fit in the 1024 MiB"))
        #expect(decision.message.contains("short by 64 MiB"))
    }

    @Test func swapMustCoverMaxMinusMin() {
        let host = Admission.Host(memoryBytes: 16 * gib, reservedBytes: 0, swapTotalBytes: 4 * gib, reservedSwapBytes: 2 * gib)
        let decision = Admission.decide(Self.request, host: host)
        #expect(!decision.isAdmitted)
        #expect(decision.message.contains("max − min = 3072 MiB"))
        #expect(decision.message.contains("short by 1024 MiB"))
        var noSwapNeeded = host
        noSwapNeeded.requireSwap = false
        #expect(Admission.decide(Self.request, host: noSwapNeeded).isAdmitted)
    }

    @Test func bothShortfallsAreSaidAtOnce() {
        let host = Admission.Host(memoryBytes: 1 * gib, reservedBytes: 0, swapTotalBytes: 0, reservedSwapBytes: 0)
        let message = Admission.decide(Self.request, host: host).message
        #expect(message.contains("short by 64 MiB") && message.contains("short by 3072 MiB"))
    }

    @Test func hugeFiguresAreRefusedWithoutTrapping() {
        let huge = Admission.Request(name: "x", minBytes: .max, maxBytes: .max, overheadBytes: 1)
        let host = Admission.Host(memoryBytes: .max, reservedBytes: 0, swapTotalBytes: .max, reservedSwapBytes: 0)
        let decision = Admission.decide(huge, host: host)
        #expect(!decision.isAdmitted)
        #expect(decision.message.contains("more than"))
    }
}
