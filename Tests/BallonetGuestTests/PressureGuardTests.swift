import Testing
@testable import BallonetGuest

@Suite struct PressureGuardTests {
    /// 10 % threshold, a 64 MiB floor, 4 MiB batches, 30 s backoff: the defaults for a 1 GiB guest.
    static let settings = PressureGuard.Settings(psiSomeAvg10Threshold: 1000, floorPages: 16_384, batchPages: 1024,
                                                 backoffMillis: 30_000)
    /// Plenty of MemAvailable: 1 GiB.
    static let plenty: UInt64 = 262_144

    /// The PSI trigger wakes the guard when a 1 s window holds the avg10 threshold's share of stall, so
    /// avg10 cannot reach the threshold unseen between the checks that skip reading PSI.
    @Test func thePSITriggerIsTheThresholdAppliedToAOneSecondWindow() {
        #expect(GuestDaemon.psiTrigger(thresholdHundredths: 1000) == "some 100000 1000000")
        #expect(GuestDaemon.psiTrigger(thresholdHundredths: 1) == "some 100 1000000")
        #expect(GuestDaemon.psiTrigger(thresholdHundredths: 10_000) == "some 1000000 1000000")
        #expect(GuestDaemon.psiTrigger(thresholdHundredths: 0) == "some 1 1000000", "the kernel refuses a 0 µs stall")
    }

    @Test func quietGuestIsNotUnderPressure() {
        var guardian = PressureGuard(settings: Self.settings)
        let assessment = guardian.assess(psiSomeAvg10: 999, availablePages: Self.plenty, nowMillis: 0)
        #expect(assessment == PressureAssessment(underPressure: false, reason: nil, inflationHeldBack: false))
        #expect(guardian.lastPressureMillis == nil)
    }

    @Test func reachingThePSIThresholdIsPressure() {
        var guardian = PressureGuard(settings: Self.settings)
        let atThreshold = guardian.assess(psiSomeAvg10: 1000, availablePages: Self.plenty, nowMillis: 5)
        #expect(atThreshold == PressureAssessment(underPressure: true, reason: "PSI some avg10 10.00 % ≥ 10.00 %",
                                                  inflationHeldBack: true))
        var other = PressureGuard(settings: Self.settings)
        #expect(other.assess(psiSomeAvg10: 1250, availablePages: Self.plenty, nowMillis: 5).reason
            == "PSI some avg10 12.50 % ≥ 10.00 %")
        #expect(guardian.lastPressureMillis == 5)
    }

    @Test func fallingUnderTheFloorIsPressure() {
        var guardian = PressureGuard(settings: Self.settings)
        let assessment = guardian.assess(psiSomeAvg10: 0, availablePages: 50 * 256, nowMillis: 0)
        #expect(assessment == PressureAssessment(underPressure: true, reason: "MemAvailable 50 MiB under the floor of 64 MiB",
                                                 inflationHeldBack: true))
        var atFloor = PressureGuard(settings: Self.settings)
        #expect(atFloor.assess(psiSomeAvg10: 0, availablePages: 16_384, nowMillis: 0).underPressure == false,
                "exactly at the floor is not under it")
    }

    @Test func pressureFromPSIEndsOnlyUnderHalfTheThreshold() {
        var guardian = PressureGuard(settings: Self.settings)
        #expect(guardian.assess(psiSomeAvg10: 1200, availablePages: Self.plenty, nowMillis: 0).underPressure)
        let easing = guardian.assess(psiSomeAvg10: 900, availablePages: Self.plenty, nowMillis: 1000)
        #expect(easing.underPressure, "under the threshold but not under half of it")
        #expect(easing.reason == "PSI some avg10 9.00 % not yet under 5.00 %")
        #expect(guardian.assess(psiSomeAvg10: 500, availablePages: Self.plenty, nowMillis: 2000).underPressure)
        let over = guardian.assess(psiSomeAvg10: 499, availablePages: Self.plenty, nowMillis: 3000)
        #expect(over.underPressure == false)
        #expect(over.reason == nil)
        #expect(over.inflationHeldBack, "the backoff follows")
        // Once over, the full threshold applies again: 9 % does not start pressure.
        #expect(guardian.assess(psiSomeAvg10: 900, availablePages: Self.plenty, nowMillis: 4000).underPressure == false)
    }

    @Test func pressureFromTheFloorEndsOnlyOneBatchAboveIt() {
        var guardian = PressureGuard(settings: Self.settings)
        #expect(guardian.assess(psiSomeAvg10: 0, availablePages: 16_000, nowMillis: 0).underPressure)
        let justAbove = guardian.assess(psiSomeAvg10: 0, availablePages: 16_384 + 1024, nowMillis: 1000)
        #expect(justAbove.underPressure, "floor plus one batch is not yet above it")
        #expect(justAbove.reason == "MemAvailable 68 MiB not yet above the floor and one batch (68 MiB)")
        #expect(guardian.assess(psiSomeAvg10: 0, availablePages: 16_384 + 1025, nowMillis: 2000).underPressure == false)
    }

    @Test func bothConditionsMustClearToEndPressure() {
        var guardian = PressureGuard(settings: Self.settings)
        #expect(guardian.assess(psiSomeAvg10: 2000, availablePages: 10_000, nowMillis: 0).underPressure)
        #expect(guardian.assess(psiSomeAvg10: 100, availablePages: 10_000, nowMillis: 1000).underPressure, "PSI clear, floor not")
        #expect(guardian.assess(psiSomeAvg10: 800, availablePages: Self.plenty, nowMillis: 2000).underPressure, "floor clear, PSI not")
        #expect(guardian.assess(psiSomeAvg10: 100, availablePages: Self.plenty, nowMillis: 3000).underPressure == false)
    }

    @Test func inflationIsHeldBackForTheBackoffAfterTheLastPressure() {
        var guardian = PressureGuard(settings: Self.settings)
        _ = guardian.assess(psiSomeAvg10: 1500, availablePages: Self.plenty, nowMillis: 0)
        _ = guardian.assess(psiSomeAvg10: 1500, availablePages: Self.plenty, nowMillis: 10_000)
        #expect(guardian.lastPressureMillis == 10_000, "the backoff counts from the last assessment under pressure")
        let cleared = guardian.assess(psiSomeAvg10: 0, availablePages: Self.plenty, nowMillis: 20_000)
        #expect(cleared == PressureAssessment(underPressure: false, reason: nil, inflationHeldBack: true))
        #expect(guardian.assess(psiSomeAvg10: 0, availablePages: Self.plenty, nowMillis: 39_999).inflationHeldBack)
        #expect(guardian.assess(psiSomeAvg10: 0, availablePages: Self.plenty, nowMillis: 40_000).inflationHeldBack == false)
    }

    @Test func aZeroBackoffReleasesAtOnceAndAClockGoingBackHoldsBack() {
        var settings = Self.settings
        settings.backoffMillis = 0
        var guardian = PressureGuard(settings: settings)
        _ = guardian.assess(psiSomeAvg10: 1500, availablePages: Self.plenty, nowMillis: 1000)
        #expect(guardian.assess(psiSomeAvg10: 0, availablePages: Self.plenty, nowMillis: 1000).inflationHeldBack == false)

        var backwards = PressureGuard(settings: Self.settings)
        _ = backwards.assess(psiSomeAvg10: 1500, availablePages: Self.plenty, nowMillis: 100_000)
        #expect(backwards.assess(psiSomeAvg10: 0, availablePages: Self.plenty, nowMillis: 50).inflationHeldBack)
    }

    @Test func withoutPSITheFloorAloneDecides() {
        var guardian = PressureGuard(settings: Self.settings)
        #expect(guardian.assess(psiSomeAvg10: nil, availablePages: Self.plenty, nowMillis: 0).underPressure == false)
        let low = guardian.assess(psiSomeAvg10: nil, availablePages: 12_800, nowMillis: 1000)
        #expect(low.underPressure)
        #expect(low.reason == "MemAvailable 50 MiB under the floor of 64 MiB")
        #expect(guardian.assess(psiSomeAvg10: nil, availablePages: 17_000, nowMillis: 2000).underPressure)
        #expect(guardian.assess(psiSomeAvg10: nil, availablePages: 17_409, nowMillis: 3000).underPressure == false)
    }

    @Test func settingsComeFromTheConfiguration() {
        var configuration = GuestConfiguration()
        configuration.pressure.psiSomeAvg10Percent = 12.5
        configuration.pressure.backoffSeconds = 45
        configuration.balloon.batchMiB = 8
        let settings = PressureGuard.Settings(configuration, memTotalBytes: 1 << 30)
        #expect(settings == PressureGuard.Settings(psiSomeAvg10Threshold: 1250, floorPages: 16_384, batchPages: 2048,
                                                   backoffMillis: 45_000))
    }

    @Test func theAssessmentDrivesTheBalloonController() {
        var guardian = PressureGuard(settings: Self.settings)
        let limits = BalloonLimits(batchPages: 1024, floorPages: 16_384)
        func step(_ assessment: PressureAssessment) -> BalloonStep {
            nextBalloonStep(BalloonObservation(targetPages: 100_000, balloonPages: 50_000, releasablePages: 4096,
                                               unansweredBatches: 0, availablePages: Self.plenty,
                                               underPressure: assessment.underPressure,
                                               inflationHeldBack: assessment.inflationHeldBack),
                            limits: limits)
        }
        #expect(step(guardian.assess(psiSomeAvg10: 2000, availablePages: Self.plenty, nowMillis: 0))
            == .deflate(pages: 4096, because: .pressure))
        #expect(step(guardian.assess(psiSomeAvg10: 0, availablePages: Self.plenty, nowMillis: 10_000))
            == .hold(why: .backingOffAfterPressure))
        #expect(step(guardian.assess(psiSomeAvg10: 0, availablePages: Self.plenty, nowMillis: 30_000))
            == .inflate(pages: 1024))
    }
}
