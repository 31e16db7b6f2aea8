import Testing
import BallonetHost

/// A guest that moves its balloon toward the last size the host asked for, by at most `pagesPerTick` a
/// tick (inflating; it deflates as fast as `deflatePerTick`), driven by a steering that decides every tick.
struct SteeringSimulation {
    var steering: BalloonSteering
    var balloon: UInt64 = 0
    var guestTarget: UInt64?
    var pagesPerTick: UInt64
    var deflatePerTick: UInt64 = .max
    var now: UInt64 = 0
    let tickMillis: UInt64 = 100
    /// Every request the host sent: (time, size, balloon the guest held when it was sent).
    var sent: [(millis: UInt64, pages: UInt64, balloon: UInt64)] = []

    init(settings: BalloonSteering.Settings, pagesPerTick: UInt64, balloon: UInt64 = 0) {
        steering = BalloonSteering(settings: settings)
        self.pagesPerTick = pagesPerTick
        self.balloon = balloon
    }

    /// One tick: the host decides, then the guest moves.
    @discardableResult
    mutating func tick(wanted: UInt64) -> UInt64? {
        let request = steering.next(wantedPages: wanted, balloonPages: balloon, nowMillis: now)
        if let request {
            sent.append((now, request, balloon))
            guestTarget = request
        }
        if let target = guestTarget {
            if balloon < target { balloon += min(pagesPerTick, target - balloon) }
            else if balloon > target { balloon -= min(deflatePerTick, balloon - target) }
        }
        now += tickMillis
        return request
    }

    mutating func run(wanted: UInt64, ticks: Int) {
        for _ in 0..<ticks { tick(wanted: wanted) }
    }
}

@Suite struct BalloonSteeringTests {
    static let settings = BalloonSteering.Settings(inflateStepPages: 1_000, stepMillis: 1_000, deadbandPages: 50,
                                                   pressureBackoffMillis: 30_000)

    @Test(arguments: [100, 400, 1_000, 5_000] as [UInt64])
    func convergesThenFallsSilent(pagesPerTick: UInt64) {
        var simulation = SteeringSimulation(settings: Self.settings, pagesPerTick: pagesPerTick)
        let wanted: UInt64 = 10_000
        simulation.run(wanted: wanted, ticks: 600)
        #expect(simulation.balloon == wanted)
        #expect(simulation.steering.requestedPages == wanted)
        let sentSoFar = simulation.sent.count
        // Settled: a long stretch of ticks, and wobbles of the wanted size inside the deadband, send nothing.
        simulation.run(wanted: wanted, ticks: 600)
        for wobble in [wanted - 50, wanted + 50, wanted + 1, wanted - 1] { simulation.run(wanted: wobble, ticks: 30) }
        #expect(simulation.sent.count == sentSoFar)
    }

    @Test(arguments: [100, 400, 1_000, 5_000] as [UInt64])
    func inflateStepsAreBoundedPacedAndMonotonic(pagesPerTick: UInt64) {
        var simulation = SteeringSimulation(settings: Self.settings, pagesPerTick: pagesPerTick, balloon: 200)
        simulation.run(wanted: 10_000, ticks: 600)
        let sent = simulation.sent
        #expect(sent.count >= 10)
        // The first request is at most one step above what the guest held.
        #expect(sent[0].pages <= 200 + Self.settings.inflateStepPages)
        for (earlier, later) in zip(sent, sent.dropFirst()) {
            #expect(later.pages > earlier.pages, "the requested size only grows while the wanted size is fixed")
            #expect(later.pages - earlier.pages <= Self.settings.inflateStepPages)
            #expect(later.millis - earlier.millis >= Self.settings.stepMillis)
        }
        #expect(sent.last?.pages == 10_000)
    }

    @Test func requestsNeverGrowPastTheWantedSize() {
        var simulation = SteeringSimulation(settings: Self.settings, pagesPerTick: 700)
        simulation.run(wanted: 3_333, ticks: 100)
        #expect(simulation.sent.allSatisfy { $0.pages <= 3_333 })
        #expect(simulation.balloon == 3_333)
    }

    @Test func deflateIsImmediate() {
        var simulation = SteeringSimulation(settings: Self.settings, pagesPerTick: 1_000)
        simulation.run(wanted: 8_000, ticks: 300)
        #expect(simulation.balloon == 8_000)
        // Right after an inflate step (inside stepMillis), a lower wanted size goes out at once, whole.
        simulation.run(wanted: 9_000, ticks: 1)
        #expect(simulation.steering.requestedPages == 9_000)
        #expect(simulation.tick(wanted: 2_000) == 2_000)
        // A full release goes out even when it is inside the deadband.
        simulation.run(wanted: 30, ticks: 5)
        #expect(simulation.steering.requestedPages == 30)
        #expect(simulation.tick(wanted: 10) == nil)
        #expect(simulation.tick(wanted: 0) == 0)
        simulation.run(wanted: 0, ticks: 3)
        #expect(simulation.balloon == 0)
    }

    @Test func smallChangesInsideTheDeadbandAreIgnored() {
        var steering = BalloonSteering(settings: Self.settings)
        #expect(steering.next(wantedPages: 500, balloonPages: 500, nowMillis: 0) == 500)
        #expect(steering.next(wantedPages: 550, balloonPages: 500, nowMillis: 5_000) == nil)
        #expect(steering.next(wantedPages: 450, balloonPages: 500, nowMillis: 5_000) == nil)
        #expect(steering.next(wantedPages: 551, balloonPages: 500, nowMillis: 5_000) == 551)
        #expect(steering.next(wantedPages: 500, balloonPages: 551, nowMillis: 5_000) == 500)
    }

    @Test func aNewSessionStartsFromWhatTheGuestHolds() {
        var steering = BalloonSteering(settings: Self.settings)
        #expect(steering.next(wantedPages: 10_000, balloonPages: 0, nowMillis: 0) == 1_000)
        steering.sessionStarted()
        #expect(steering.requestedPages == nil)
        // A restarted guest that kept 7,000 pages: one step above that, not back to 1,000 or up to 10,000.
        #expect(steering.next(wantedPages: 10_000, balloonPages: 7_000, nowMillis: 100) == 8_000)
        steering.sessionStarted()
        // Wanting less than the guest holds: straight there.
        #expect(steering.next(wantedPages: 2_000, balloonPages: 7_000, nowMillis: 200) == 2_000)
    }

    @Test func pressureHoldsInflationUntilTheBackoffEnds() {
        var simulation = SteeringSimulation(settings: Self.settings, pagesPerTick: 1_000)
        simulation.run(wanted: 4_000, ticks: 100)
        #expect(simulation.balloon == 4_000)
        // The wanted size rises; the balloon is on its way when the guest gives pages back under pressure.
        simulation.run(wanted: 20_000, ticks: 25)
        #expect(simulation.balloon > 4_000)
        #expect(simulation.balloon < 20_000)
        simulation.balloon = 3_000
        simulation.guestTarget = nil  // the guest holds where its pressure guard left it
        let pressureAt = simulation.now
        simulation.steering.guestReleasedUnderPressure(balloonPagesNow: 3_000, nowMillis: pressureAt)
        #expect(simulation.steering.inBackoff(nowMillis: pressureAt))
        #expect(simulation.steering.requestedPages == 3_000)
        let before = simulation.sent.count
        while simulation.now < pressureAt + Self.settings.pressureBackoffMillis {
            simulation.tick(wanted: 20_000)
        }
        let duringBackoff = simulation.sent[before...]
        #expect(duringBackoff.allSatisfy { $0.pages <= 3_000 }, "nothing above the balloon is asked back during the backoff")
        #expect(!simulation.steering.inBackoff(nowMillis: simulation.now))
        // Then inflation resumes, a step at a time, to the wanted size.
        let resumed = simulation.tick(wanted: 20_000)
        #expect(resumed == 4_000)
        simulation.run(wanted: 20_000, ticks: 400)
        #expect(simulation.balloon == 20_000)
    }

    @Test func deflateStillWorksDuringTheBackoff() {
        var steering = BalloonSteering(settings: Self.settings)
        #expect(steering.next(wantedPages: 5_000, balloonPages: 5_000, nowMillis: 0) == 5_000)
        steering.guestReleasedUnderPressure(balloonPagesNow: 4_000, nowMillis: 1_000)
        #expect(steering.next(wantedPages: 5_000, balloonPages: 4_000, nowMillis: 2_000) == nil)
        #expect(steering.next(wantedPages: 1_000, balloonPages: 4_000, nowMillis: 2_000) == 1_000)
        #expect(steering.next(wantedPages: 5_000, balloonPages: 1_000, nowMillis: 20_000) == nil)
        #expect(steering.next(wantedPages: 5_000, balloonPages: 1_000, nowMillis: 31_000) == 2_000)
    }

    @Test func pressureWithoutARequestYet() {
        var steering = BalloonSteering(settings: Self.settings)
        steering.guestReleasedUnderPressure(balloonPagesNow: 600, nowMillis: 0)
        // The first request of the session during the backoff is what the guest already holds.
        #expect(steering.next(wantedPages: 10_000, balloonPages: 600, nowMillis: 10) == 600)
        #expect(steering.next(wantedPages: 10_000, balloonPages: 600, nowMillis: 29_999) == nil)
        #expect(steering.next(wantedPages: 10_000, balloonPages: 600, nowMillis: 30_000) == 1_600)
    }

    /// A guest that never inflates (it sits at its floor): the host asks for the step it is on and at most
    /// one step beyond it, then waits, however long the wanted size stays out of reach.
    @Test(arguments: [0, 5_000] as [UInt64])
    func aStuckGuestIsNotPushedFurther(holding: UInt64) {
        var simulation = SteeringSimulation(settings: Self.settings, pagesPerTick: 0, balloon: holding)
        simulation.run(wanted: holding + 50_000, ticks: 3_000)  // five minutes
        #expect(simulation.balloon == holding)
        #expect(simulation.sent.map(\.pages) == [holding + 1_000, holding + 2_000])
        let requested = simulation.steering.requestedPages ?? 0
        #expect(requested - holding <= 2 * Self.settings.inflateStepPages)
    }

    /// A guest that lags (inflates slower than the host's pace): the gap between what is asked and what it
    /// holds stays bounded instead of growing with time.
    @Test func aSlowGuestIsNotLeftFurtherAndFurtherBehind() {
        var simulation = SteeringSimulation(settings: Self.settings, pagesPerTick: 20)  // 200 pages a second
        var widest: UInt64 = 0
        for _ in 0..<1_200 {
            simulation.tick(wanted: 1_000_000)
            widest = max(widest, (simulation.steering.requestedPages ?? 0) - simulation.balloon)
        }
        #expect(widest <= 2 * Self.settings.inflateStepPages)
        #expect(simulation.balloon > 20 * 1_000)  // it still made progress for two minutes
    }
}
