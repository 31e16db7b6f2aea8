import BallonetLinux
import BallonetWire
import Testing
@testable import BallonetGuest

/// Captures/ beside this file: meminfo, vmstat and pressure-memory copied from BallonetLinuxTests (a
/// 24 GiB development machine); lru_gen, lru_gen-no-memcg and pressure-memory-stalled written by hand in
/// the kernel's formats (see each test), because the machines here have no MGLRU and no stalls.
enum GuestCapture {
    static let directory: String = {
        let thisFile = #filePath
        return thisFile.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/") + "/Captures"
    }()

    static func path(_ name: String) -> String { directory + "/" + name }

    static func bytes(_ name: String) throws -> [UInt8] {
        try FileSystem.readFile(path(name), maxBytes: 1024 * 1024)
    }

    /// Sampler paths that read captures only.
    static func paths(pressure: String = "pressure-memory-stalled", lruGen: String = "lru_gen") -> GuestSampler.Paths {
        var paths = GuestSampler.Paths()
        paths.meminfo = path("meminfo")
        paths.vmstat = path("vmstat")
        paths.memoryPressure = path(pressure)
        paths.lruGenEnabled = path("lru_gen-enabled")
        paths.lruGen = path(lruGen)
        paths.lruGenAging = "/nonexistent/ballonet-test"
        return paths
    }
}

/// A scratch file for one test, removed when the test ends.
final class ScratchFile {
    let path: String

    init(_ contents: String = "") throws {
        path = "/tmp/ballonet-guest-tests-\(ProcessControl.currentID)-\(MonotonicInstant.now().nanoseconds)"
        try FileSystem.writeFile(path, contents, creatingWithPermissions: 0o600)
    }

    var contents: String {
        get throws { String(decoding: try FileSystem.readFile(path, maxBytes: 1024 * 1024), as: UTF8.self) }
    }

    deinit {
        try? FileSystem.removeFile(path)
    }
}

@Suite struct GuestSamplerTests {
    // MARK: Live /proc

    @Test func aLiveSampleIsSaneAndEncodes() throws {
        var sampler = GuestSampler(periodMillis: 10_000, method: GuestSampler.chooseMethod())
        let sample = sampler.sample(balloonPages: 1234, nowMillis: 99)
        let memTotal = try #require(sample[.memTotal])
        let memAvailable = try #require(sample[.memAvailable])
        #expect(memTotal > 0)
        #expect(memAvailable <= memTotal)
        #expect(sample[.balloonPages] == 1234)
        #expect(sample.sequence == 1)
        #expect(sample.guestMillis == 99)
        #expect(sample.periodMillis == 10_000)
        let keys = sample.entries.map(\.key)
        #expect(Set(keys).count == keys.count, "each key once")
        #expect(keys == keys.sorted())
        #expect(sample.entries.count <= WireLimits.maxStatEntries)
        #expect(sample[.workingSetPages] != nil)
        #expect(sample[.workingSetSource] != nil)
        if FileSystem.exists("/proc/pressure/memory") {
            #expect(sample[.psiSomeAvg10] != nil)
            #expect(sample[.psiSomeTotalMicros] != nil)
        }
        #expect(sampler.problems.isEmpty || !FileSystem.exists("/proc/pressure/memory"), "\(sampler.problems)")
        let frame = try FrameEncoder.encode(.statsSample(sample))
        #expect(!frame.isEmpty)
        var decoder = FrameDecoder()
        let events = decoder.feed(frame)
        #expect(events == [.frame(Envelope(requestID: 0, message: .statsSample(sample)))])

        let next = sampler.sample(balloonPages: 0, nowMillis: 10_099)
        #expect(next.sequence == 2)
        sampler.resetSequence()
        #expect(sampler.sample(balloonPages: 0, nowMillis: 20_099).sequence == 1)
    }

    @Test func withoutMGLRUHereTheEstimatorIsTheListEstimate() {
        // The development host's kernel has no MGLRU (DESIGN.md); a guest kernel with it is tested
        // through captures below.
        if !FileSystem.exists(MGLRU.enabledPath) {
            #expect(GuestSampler.chooseMethod() == .lruListEstimate)
        }
        var paths = GuestCapture.paths()
        #expect(GuestSampler.chooseMethod(paths: paths) == .mglruAges)
        paths.lruGenEnabled = GuestCapture.path("lru_gen-disabled")
        #expect(GuestSampler.chooseMethod(paths: paths) == .lruListEstimate)
        paths.lruGenEnabled = GuestCapture.path("lru_gen-enabled")
        paths.lruGen = "/nonexistent/lru_gen"
        #expect(GuestSampler.chooseMethod(paths: paths) == .lruListEstimate)
    }

    // MARK: Captures, exact values

    /// meminfo's kB values divided by 4.
    static let expectedMeminfoEntries: [StatEntry] = [
        StatEntry(.memTotal, 6_171_024), StatEntry(.memFree, 6_035_899), StatEntry(.memAvailable, 6_095_879),
        StatEntry(.buffers, 925), StatEntry(.cached, 109_960), StatEntry(.swapTotal, 0), StatEntry(.swapFree, 0),
        StatEntry(.anonPages, 1615), StatEntry(.shmem, 2197), StatEntry(.mlocked, 2543),
        StatEntry(.activeAnon, 378), StatEntry(.inactiveAnon, 649), StatEntry(.activeFile, 32_312),
        StatEntry(.inactiveFile, 76_376),
    ]

    static let expectedVMStatEntries: [StatEntry] = [
        StatEntry(.pgfault, 937_756), StatEntry(.pgmajfault, 344), StatEntry(.pswpin, 0), StatEntry(.pswpout, 0),
        StatEntry(.workingsetRefaultAnon, 0), StatEntry(.workingsetRefaultFile, 7750),
        StatEntry(.pgscanKswapd, 0), StatEntry(.pgscanDirect, 0),
    ]

    @Test func aSampleOfCapturesHasExactValues() {
        var sampler = GuestSampler(periodMillis: 10_000, method: .lruListEstimate, paths: GuestCapture.paths())
        let sample = sampler.sample(balloonPages: 1000, nowMillis: 42)
        #expect(sampler.problems == [])
        // Working set: Active(anon) + Active(file), no refaults in a first sample; in use outside the balloon
        // is 6,171,024 − 6,035,899 − 1000 = 134,125, so no clamp.
        let expected = Self.expectedMeminfoEntries + [StatEntry(.balloonPages, 1000)] + Self.expectedVMStatEntries + [
            StatEntry(.psiSomeAvg10, 1250), StatEntry(.psiFullAvg10, 375),
            StatEntry(.psiSomeTotalMicros, 8_123_456), StatEntry(.psiFullTotalMicros, 2_345_678),
            StatEntry(.workingSetPages, 32_690), StatEntry(.workingSetSource, WorkingSetSource.lruListEstimate.rawValue),
        ]
        #expect(sample.entries == expected)
        #expect(sample == StatsSample(sequence: 1, guestMillis: 42, periodMillis: 10_000, entries: expected))
    }

    @Test func everyStatKeyIsInAFullSample() {
        var sampler = GuestSampler(periodMillis: 10_000, method: .lruListEstimate, paths: GuestCapture.paths())
        let keys = Set(sampler.sample(balloonPages: 0, nowMillis: 0).entries.map(\.key))
        let all: [StatKey] = [
            .memTotal, .memFree, .memAvailable, .buffers, .cached, .swapTotal, .swapFree, .anonPages, .shmem, .mlocked,
            .activeAnon, .inactiveAnon, .activeFile, .inactiveFile, .balloonPages,
            .pgfault, .pgmajfault, .pswpin, .pswpout, .workingsetRefaultAnon, .workingsetRefaultFile,
            .pgscanKswapd, .pgscanDirect, .psiSomeAvg10, .psiFullAvg10, .psiSomeTotalMicros, .psiFullTotalMicros,
            .workingSetPages, .workingSetSource,
        ]
        #expect(keys == Set(all))
    }

    @Test func missingPSILeavesItsKeysOutAndTheRestIn() {
        var paths = GuestCapture.paths(pressure: "no-such-pressure-file")
        paths.vmstat = "/nonexistent/vmstat"
        var sampler = GuestSampler(periodMillis: 10_000, method: .lruListEstimate, paths: paths)
        let sample = sampler.sample(balloonPages: 7, nowMillis: 0)
        let keys = sample.entries.map(\.key)
        #expect(!keys.contains(.psiSomeAvg10) && !keys.contains(.psiFullTotalMicros))
        #expect(!keys.contains(.pgfault))
        #expect(sample[.memTotal] == 6_171_024)
        #expect(sample[.workingSetPages] == 32_690)
        #expect(sampler.problems.count == 2)
        #expect(sampler.problems.contains { $0.hasPrefix("memory pressure: open(") && $0.contains("ENOENT") })
    }

    @Test func withNothingReadableASampleStillCarriesTheBalloon() {
        var paths = GuestSampler.Paths()
        paths.meminfo = "/nonexistent/meminfo"
        paths.vmstat = "/nonexistent/vmstat"
        paths.memoryPressure = "/nonexistent/pressure"
        var sampler = GuestSampler(periodMillis: 1000, method: .lruListEstimate, paths: paths)
        #expect(sampler.sample(balloonPages: 5, nowMillis: 0).entries == [StatEntry(.balloonPages, 5)])
        #expect(sampler.problems.count == 3)
    }

    @Test func theSecondListEstimateCountsRefaultsOfThePeriod() throws {
        let captured = String(decoding: try GuestCapture.bytes("vmstat"), as: UTF8.self)
        let vmstat = try ScratchFile(captured)
        var paths = GuestCapture.paths()
        paths.vmstat = vmstat.path
        var sampler = GuestSampler(periodMillis: 10_000, method: .lruListEstimate, paths: paths)
        #expect(sampler.sample(balloonPages: 0, nowMillis: 0)[.workingSetPages] == 32_690)
        // 100 more file refaults in the period count twice.
        let later = captured.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0 == "workingset_refault_file 7750" ? "workingset_refault_file 7850" : $0 }
            .joined(separator: "\n")
        try FileSystem.writeFile(vmstat.path, later, creatingWithPermissions: 0o600)
        #expect(sampler.sample(balloonPages: 0, nowMillis: 10_000)[.workingSetPages] == 32_690 + 200)
    }

    @Test func mglruSamplesAgeThenCountYoungGenerations() throws {
        let aging = try ScratchFile()
        var paths = GuestCapture.paths()
        paths.lruGenAging = aging.path
        var sampler = GuestSampler(periodMillis: 10_000, method: .mglruAges, paths: paths)
        let sample = sampler.sample(balloonPages: 0, nowMillis: 0)
        #expect(sampler.problems == [])
        #expect(sample[.workingSetPages] == 1194)
        #expect(sample[.workingSetSource] == WorkingSetSource.mglruAges.rawValue)
        #expect(try aging.contents == "+ 1 0 7 1 1\n+ 5 0 4 1 1\n+ 9 0 12 1 1\n+ 9 1 2 1 1\n")
        try FileSystem.writeFile(aging.path, "", creatingWithPermissions: 0o600)
        _ = sampler.sample(balloonPages: 0, nowMillis: 10_000)
        #expect(try aging.contents == "+ 1 0 7 1 1\n+ 5 0 4 1 1\n+ 9 0 12 1 1\n+ 9 1 2 1 1\n", "each period ages every lruvec again")
    }

    @Test func mglruFallsBackToTheListEstimateWhenAgingDoesNotTake() throws {
        // A 1 ms period: no generation in the capture is that young, as if the aging commands had failed.
        var sampler = GuestSampler(periodMillis: 1, method: .mglruAges, paths: GuestCapture.paths())
        let sample = sampler.sample(balloonPages: 0, nowMillis: 0)
        #expect(sample[.workingSetSource] == WorkingSetSource.lruListEstimate.rawValue)
        #expect(sample[.workingSetPages] == 32_690)
        #expect(sampler.problems.count == 2, "\(sampler.problems)")
        #expect(sampler.problems[0].hasPrefix("lru_gen aging: open(\"/nonexistent/ballonet-test\"): ENOENT"))
        #expect(sampler.problems[1].hasPrefix("lru_gen: no generation younger than 1 ms"))
    }

    @Test func mglruFallsBackWhenLruGenCannotBeRead() {
        var sampler = GuestSampler(periodMillis: 10_000, method: .mglruAges,
                                   paths: GuestCapture.paths(lruGen: "no-such-lru_gen"))
        let sample = sampler.sample(balloonPages: 0, nowMillis: 0)
        #expect(sample[.workingSetSource] == WorkingSetSource.lruListEstimate.rawValue)
        #expect(sampler.problems.contains { $0.hasPrefix("lru_gen: open(") })
    }

    @Test func entriesFromNothingAreTheBalloonAlone() {
        #expect(GuestSampler.entries(meminfo: nil, vmstat: nil, pressure: nil, balloonPages: 3, workingSet: nil)
            == [StatEntry(.balloonPages, 3)])
        let pressure = PressureStall(some: .init(avg10: 5, avg60: 0, avg300: 0, total: 9), full: nil)
        #expect(GuestSampler.entries(meminfo: nil, vmstat: nil, pressure: pressure, balloonPages: 0,
                                     workingSet: WorkingSetEstimate(pages: 4, source: .mglruAges))
            == [StatEntry(.balloonPages, 0), StatEntry(.psiSomeAvg10, 5), StatEntry(.psiSomeTotalMicros, 9),
                StatEntry(.workingSetPages, 4), StatEntry(.workingSetSource, 1)])
    }

    // MARK: MGLRU's lru_gen, pure

    @Test func lruGenParsesMemcgsNodesAndGenerations() throws {
        let snapshot = try MGLRUSnapshot(parsing: GuestCapture.bytes("lru_gen"))
        #expect(snapshot.lruvecs.map(\.memcgID) == [1, 5, 9, 9])
        #expect(snapshot.lruvecs.map(\.node) == [0, 0, 0, 1])
        #expect(snapshot.lruvecs.map(\.memcgPath) == ["/", "/system.slice/ssh.service",
                                                      "/user.slice/user-1000.slice/session 2.scope",
                                                      "/user.slice/user-1000.slice/session 2.scope"])
        #expect(snapshot.lruvecs[0].generations == [
            MGLRUGeneration(sequence: 4, ageMillis: 98_000, anonPages: 1000, filePages: 5000),
            MGLRUGeneration(sequence: 5, ageMillis: 31_000, anonPages: 200, filePages: 800),
            MGLRUGeneration(sequence: 6, ageMillis: 11_000, anonPages: 300, filePages: 400),
            MGLRUGeneration(sequence: 7, ageMillis: 1200, anonPages: 50, filePages: 60),
        ])
        #expect(snapshot.lruvecs.map(\.maxSequence) == [7, 4, 12, 2])
        #expect(snapshot.totalPages == 6000 + 1000 + 700 + 110 + 30 + 70 + 11 + 8000 + 150 + 300 + 15 + 3)
    }

    @Test func youngPagesCountTheYoungestRunOfGenerations() throws {
        let snapshot = try MGLRUSnapshot(parsing: GuestCapture.bytes("lru_gen"))
        // Window 15 s: memcg 1 gens 7 and 6 (110 + 700); memcg 5 gens 4 and 3 (11 + 70); memcg 9 node 0
        // gen 12 (300), not gen 10, whose wrapped age of 500 ms follows the 40 s old gen 11; node 1 gen 2 (3).
        #expect(snapshot.youngPages(windowMillis: 15_000) == 1194)
        #expect(snapshot.youngPages(windowMillis: 1000) == 11 + 3)
        #expect(snapshot.youngPages(windowMillis: 0) == 0)
        #expect(snapshot.youngPages(windowMillis: .max) == snapshot.totalPages)
        #expect(snapshot.hasGeneration(youngerThan: 101))
        #expect(!snapshot.hasGeneration(youngerThan: 100))
    }

    @Test func agingCommandsNameEachLruvecsYoungestGeneration() throws {
        let snapshot = try MGLRUSnapshot(parsing: GuestCapture.bytes("lru_gen"))
        #expect(snapshot.agingCommands == ["+ 1 0 7 1 1", "+ 5 0 4 1 1", "+ 9 0 12 1 1", "+ 9 1 2 1 1"])
    }

    @Test func lruGenWithoutMemoryCgroupsAndLaterKernelsSpacing() throws {
        let snapshot = try MGLRUSnapshot(parsing: GuestCapture.bytes("lru_gen-no-memcg"))
        #expect(snapshot.lruvecs == [MGLRULruvec(memcgID: 0, memcgPath: "", node: 0, generations: [
            MGLRUGeneration(sequence: 3, ageMillis: 25_000, anonPages: 100, filePages: 1000),
            MGLRUGeneration(sequence: 4, ageMillis: 5000, anonPages: 10, filePages: 20),
            MGLRUGeneration(sequence: 5, ageMillis: 10, anonPages: 1, filePages: 2),
        ])])
        #expect(snapshot.youngPages(windowMillis: 15_000) == 33)
    }

    @Test func lruGenFullMarksAreAccepted() throws {
        let snapshot = try MGLRUSnapshot(parsing: "memcg 3 /a\n node 0\n 5 100 7x 8 \n 6 10 1 2x\n")
        #expect(snapshot.lruvecs[0].generations.map(\.anonPages) == [7, 1])
        #expect(snapshot.lruvecs[0].generations.map(\.filePages) == [8, 2])
        #expect(try MGLRUSnapshot(parsing: "").lruvecs.isEmpty)
    }

    @Test func malformedLruGenIsAnErrorOnItsLine() {
        let cases: [(String, Int, String)] = [
            (" node 0\n", 1, "a node line before any memcg line"),
            ("memcg 1 /\n 4 100 1 2\n", 2, "a generation line before any node line"),
            ("memcg 1 /\n node 0\n 4 100 1\n", 3, "needs 4 fields"),
            ("memcg 1 /\n node 0\n 4 1o0 1 2\n", 3, "age \"1o0\" is not a number"),
            ("memcg x /\n", 1, "memcg id \"x\" is not a number"),
            ("memcg\n", 1, "a memcg line without an id"),
            ("memcg 1 /\n node 0 1\n", 2, "a node line needs one node id"),
            ("memcg 1 /\n node 5000\n", 2, "node id 5000 is past 1023"),
            ("memcg 1 /\n node 0\n 4 100 99999999999999999999 2\n", 3, "anon pages"),
            // A tier line of lru_gen_full is not a generation line.
            ("memcg 1 /\n node 0\n            0          0r          0e          0p\n", 3, "age \"0r\" is not a number"),
            ("lruvec 1\n", 1, "unexpected line \"lruvec 1\""),
        ]
        for (text, line, fragment) in cases {
            do throws(ProcParseError) {
                let snapshot = try MGLRUSnapshot(parsing: text, file: "lru_gen")
                Issue.record("parsed \(text.debugDescription) as \(snapshot)")
            } catch {
                #expect(error.line == line, "\(text.debugDescription)")
                #expect(error.what.contains(fragment), "\(error) lacks \(fragment)")
            }
        }
    }

    @Test func theKillSwitchIsOnWhenItsMainBitIs() {
        #expect(MGLRU.isEnabled(switchText: "0x0007\n"))
        #expect(MGLRU.isEnabled(switchText: "0x0001"))
        #expect(!MGLRU.isEnabled(switchText: "0x0000\n"))
        #expect(!MGLRU.isEnabled(switchText: "0x0006"), "components without the main switch")
        #expect(!MGLRU.isEnabled(switchText: ""))
        #expect(!MGLRU.isEnabled(switchText: "garbage"))
        #expect(MGLRU.isEnabled(path: GuestCapture.path("lru_gen-enabled")))
        #expect(!MGLRU.isEnabled(path: GuestCapture.path("lru_gen-disabled")))
        #expect(!MGLRU.isEnabled(path: "/nonexistent/enabled"))
    }

    @Test func enablingWritesYAndAMountedDebugfsIsLeftAlone() throws {
        let enabled = try ScratchFile()
        try MGLRU.enable(path: enabled.path)
        #expect(try enabled.contents == "y")
        // /proc is never empty, so nothing is mounted over it.
        #expect(try MGLRU.mountDebugfsIfAbsent(at: "/proc") == .alreadyMounted)
    }

    @Test func theAgeWindowIsOneAndAHalfPeriods() {
        #expect(MGLRU.ageWindowMillis(periodMillis: 10_000) == 15_000)
        #expect(MGLRU.ageWindowMillis(periodMillis: 1) == 1)
    }

    // MARK: The list estimate, pure

    static func reading(activeAnon: UInt64 = 1000, activeFile: UInt64 = 2000, total: UInt64 = 10_000, free: UInt64 = 2000,
                        refaults: UInt64? = 100) -> LRUListReading {
        LRUListReading(activeAnonPages: activeAnon, activeFilePages: activeFile, memTotalPages: total,
                       memFreePages: free, refaults: refaults)
    }

    @Test func theListEstimateAddsWeightedRefaultsOfThePeriod() {
        let current = Self.reading(refaults: 160)
        // 1000 + 2000 + 60 refaults × 2.
        #expect(LRUListEstimate.workingSetPages(previous: Self.reading(refaults: 100), current: current, balloonPages: 1000) == 3120)
        #expect(LRUListEstimate.workingSetPages(previous: nil, current: current, balloonPages: 0) == 3000,
                "a first sample has no period to count refaults over")
    }

    @Test func theListEstimateIsClampedToMemoryInUseOutsideTheBalloon() {
        let busy = Self.reading(activeAnon: 6000, activeFile: 1500, refaults: 100)
        // In use 10,000 − 2000 = 8000, less a 1000-page balloon.
        #expect(LRUListEstimate.workingSetPages(previous: busy, current: busy, balloonPages: 1000) == 7000)
        #expect(LRUListEstimate.workingSetPages(previous: busy, current: busy, balloonPages: 9000) == 0)
        let thrashing = Self.reading(refaults: .max)
        #expect(LRUListEstimate.workingSetPages(previous: Self.reading(refaults: 0), current: thrashing, balloonPages: 0) == 8000)
    }

    @Test func theListEstimateIgnoresRefaultCountersThatWentBackOrAreMissing() {
        #expect(LRUListEstimate.workingSetPages(previous: Self.reading(refaults: 500), current: Self.reading(refaults: 100),
                                                balloonPages: 0) == 3000)
        #expect(LRUListEstimate.workingSetPages(previous: Self.reading(refaults: nil), current: Self.reading(refaults: 100),
                                                balloonPages: 0) == 3000)
    }

    @Test func aListReadingComesFromMeminfoAndVMStat() throws {
        let meminfo = try Meminfo(parsing: GuestCapture.bytes("meminfo"))
        let vmstat = try VMStat(parsing: GuestCapture.bytes("vmstat"))
        #expect(LRUListReading(meminfo: meminfo, vmstat: vmstat)
            == LRUListReading(activeAnonPages: 378, activeFilePages: 32_312, memTotalPages: 6_171_024,
                              memFreePages: 6_035_899, refaults: 7750))
        // Kernels before 5.9 count refaults in one counter.
        let old = try VMStat(parsing: "pgfault 5\nworkingset_refault 42\n")
        #expect(LRUListReading(meminfo: meminfo, vmstat: old).refaults == 42)
        #expect(LRUListReading(meminfo: meminfo, vmstat: try VMStat(parsing: "pgfault 5\n")).refaults == nil)
        #expect(LRUListReading(meminfo: meminfo, vmstat: nil).refaults == nil)
    }
}
