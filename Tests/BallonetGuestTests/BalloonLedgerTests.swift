import Testing
import BallonetWire
@testable import BallonetGuest

@Suite struct BalloonLedgerTests {
    func ledger(batches: Int, session: UInt64 = 7) -> BalloonLedger {
        var ledger = BalloonLedger()
        ledger.beginHostSession(session)
        for id in 0..<UInt64(batches) {
            ledger.add(BalloonBatch(id: id, fileOffset: id << 22, pageCount: 1024))
        }
        return ledger
    }

    let someRanges = try! PFNRangeList(validating: [PFNRange(start: 100, count: 1024)])

    @Test func aReportedBatchIsNeverReleasableUntilAnswered() {
        var ledger = ledger(batches: 2)
        ledger.markReported(0, ranges: someRanges, pageOrder: 0)
        #expect(ledger.unansweredPages == 1024)
        #expect(ledger.releasable(covering: .max).map(\.id) == [1])
        let removedTooEarly = ledger.remove([0])
        #expect(removedTooEarly == false, "the ledger refuses to release a reported batch")
        #expect(ledger.batch(0) != nil)
        do { let outcome = ledger.acknowledge(hostSession: 7, batch: 0); #expect(outcome == .applied) }
        #expect(ledger.releasable(covering: .max).map(\.id) == [1, 0])
        let removed = ledger.remove([0])
        #expect(removed)
    }

    @Test func answersFromAnotherSessionAreIgnored() {
        var ledger = ledger(batches: 1)
        ledger.markReported(0, ranges: someRanges, pageOrder: 0)
        do { let outcome = ledger.acknowledge(hostSession: 6, batch: 0); #expect(outcome == .staleSession) }
        do { let outcome = ledger.decline(hostSession: 6, batch: 0); #expect(outcome == .staleSession) }
        do { let outcome = ledger.acknowledge(hostSession: 7, batch: 9); #expect(outcome == .unknownBatch) }
        #expect(ledger.batch(0)?.mayRelease == false)
    }

    @Test func aNewHostSessionFencesTheOldOnesReports() {
        var ledger = ledger(batches: 2)
        ledger.markReported(0, ranges: someRanges, pageOrder: 0)
        ledger.markReported(1, ranges: someRanges, pageOrder: 0)
        ledger.endHostSession()
        #expect(ledger.unansweredBatchCount == 2, "losing the connection alone fences nothing")
        ledger.beginHostSession(8)
        #expect(ledger.batches.map(\.state) == [.fenced, .fenced])
        #expect(ledger.releasablePages == 2048)
        do { let outcome = ledger.acknowledge(hostSession: 7, batch: 0); #expect(outcome == .staleSession) }
    }

    @Test func declinedBatchesAreReleasableAtOnce() {
        var ledger = ledger(batches: 1)
        ledger.markReported(0, ranges: someRanges, pageOrder: 0)
        do { let outcome = ledger.decline(hostSession: 7, batch: 0); #expect(outcome == .applied) }
        #expect(ledger.declined.map(\.id) == [0])
        do { let again = ledger.acknowledge(hostSession: 7, batch: 0); #expect(again == .unknownBatch, "a batch is answered once") }
    }

    @Test func releaseChoosesNewestFirstAndCanStayUnderABound() {
        let ledger = ledger(batches: 3)
        #expect(ledger.releasable(covering: 1500).map(\.id) == [2, 1])
        #expect(ledger.releasable(notExceeding: 1500).map(\.id) == [2])
        #expect(ledger.releasable(notExceeding: 1000).isEmpty)
    }
}

@Suite struct BalloonControllerTests {
    let limits = BalloonLimits(batchPages: 1024, floorPages: 10_000)

    func observe(target: UInt64, balloon: UInt64, releasable: UInt64? = nil, unanswered: Int = 0,
                 available: UInt64 = 100_000, pressure: Bool = false, heldBack: Bool = false) -> BalloonObservation {
        BalloonObservation(targetPages: target, balloonPages: balloon, releasablePages: releasable ?? balloon,
                           unansweredBatches: unanswered, availablePages: available, underPressure: pressure,
                           inflationHeldBack: heldBack)
    }

    @Test func inflatesOneBatchAtATimeTowardTheTarget() {
        #expect(nextBalloonStep(observe(target: 5000, balloon: 0), limits: limits) == .inflate(pages: 1024))
        #expect(nextBalloonStep(observe(target: 5000, balloon: 4500), limits: limits) == .inflate(pages: 500))
        #expect(nextBalloonStep(observe(target: 5000, balloon: 5000), limits: limits) == .hold(why: .atTarget))
    }

    @Test func neverInflatesBelowTheFloor() {
        // The floor (10,000 pages) plus one batch of margin is where inflation stops.
        #expect(nextBalloonStep(observe(target: 50_000, balloon: 0, available: 11_524), limits: limits) == .inflate(pages: 500))
        #expect(nextBalloonStep(observe(target: 50_000, balloon: 0, available: 11_024), limits: limits) == .hold(why: .atFloor))
        #expect(nextBalloonStep(observe(target: 50_000, balloon: 0, available: 3_000), limits: limits) == .hold(why: .atFloor))
    }

    @Test func boundsTheBatchesInFlight() {
        #expect(nextBalloonStep(observe(target: 50_000, balloon: 4096, unanswered: 4), limits: limits) == .hold(why: .waitingForAnswers))
    }

    @Test func deflatesDownToTheTargetWithoutUndershooting() {
        #expect(nextBalloonStep(observe(target: 1000, balloon: 5096), limits: limits) == .deflate(pages: 4096, because: .target))
        #expect(nextBalloonStep(observe(target: 1000, balloon: 5096, releasable: 2048), limits: limits) == .deflate(pages: 2048, because: .target))
        #expect(nextBalloonStep(observe(target: 1000, balloon: 5096, releasable: 0), limits: limits) == .hold(why: .cannotReleaseYet))
    }

    @Test func pressureReleasesWhatRestoresTheFloorOrEverythingOnAStall() {
        // Under the floor: the deficit to floor + two batches (10,000 + 2,048 − 9,000 = 3,048 pages).
        #expect(nextBalloonStep(observe(target: 50_000, balloon: 8192, releasable: 6144, available: 9_000, pressure: true), limits: limits)
                == .deflate(pages: 3_048, because: .pressure))
        #expect(nextBalloonStep(observe(target: 50_000, balloon: 8192, releasable: 2_000, available: 9_000, pressure: true), limits: limits)
                == .deflate(pages: 2_000, because: .pressure))
        // A stall with plenty free: everything releasable goes.
        #expect(nextBalloonStep(observe(target: 50_000, balloon: 8192, releasable: 6144, pressure: true), limits: limits)
                == .deflate(pages: 6144, because: .pressure))
        #expect(nextBalloonStep(observe(target: 50_000, balloon: 0, heldBack: true), limits: limits) == .hold(why: .backingOffAfterPressure))
    }
}
