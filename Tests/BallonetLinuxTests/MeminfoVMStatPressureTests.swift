import BallonetLinux
import Foundation
import Testing

extension LinuxLayerTests {
    @Suite struct MeminfoCaptures {
        @Test func capturedValuesComeOutInBytes() throws {
            let meminfo = try Meminfo(parsing: Capture.bytes("meminfo"))
            #expect(meminfo.memTotal == 24_684_096 * 1024)
            #expect(meminfo.memFree == 24_143_596 * 1024)
            #expect(meminfo.memAvailable == 24_383_516 * 1024)
            #expect(meminfo.cached == 439_840 * 1024)
            #expect(meminfo.activeAnon == 1512 * 1024)
            #expect(meminfo.inactiveFile == 305_504 * 1024)
            #expect(meminfo.mlocked == 10172 * 1024)
            #expect(meminfo.shmem == 8788 * 1024)
            #expect(meminfo.hugePageSize == 2 * 1024 * 1024)
            #expect(meminfo.hugePagesTotal == 0)
            #expect(meminfo.swapTotal == 0)
        }

        @Test func everyLineIsInFieldsIncludingOnesWithoutProperties() throws {
            let meminfo = try Meminfo(parsing: Capture.bytes("meminfo"))
            #expect(meminfo.fields.count == 54)
            #expect(meminfo.fields["VmallocTotal"] == 34_359_738_367 * 1024)
            #expect(meminfo.fields["DirectMap1G"] == UInt64(25_165_824) * 1024)
            #expect(meminfo.fields["HugePages_Surp"] == 0)
        }

        @Test func unknownLinesOfAnyShapeAreSkippedOrKept() throws {
            let meminfo = try Meminfo(parsing: Capture.bytes("malformed/meminfo-future"))
            #expect(meminfo.memTotal == 24_684_096 * 1024)
            #expect(meminfo.fields["Tiered(cxl)"] == 5 * 1024)
            #expect(meminfo.fields["Counted"] == 7)
            #expect(meminfo.fields["NewThing"] == nil, "an unknown unit is not guessed at")
        }

        @Test func valueThatOverflowsInBytesIsAnErrorOnItsLine() throws {
            let bytes = try Capture.bytes("malformed/meminfo-overflow")
            let error = expectParseError { _ = try Meminfo(parsing: bytes) }
            #expect(error?.line == 1)
            #expect(error?.description.contains("overflows") == true)
            #expect(error?.description.hasPrefix("/proc/meminfo line 1: MemTotal") == true)
        }

        @Test func largestValueThatFitsInBytesParses() throws {
            // 2^54 - 1 KiB is the largest amount whose byte count fits 64 bits.
            let text = "MemTotal: 18014398509481983 kB\nMemFree: 0 kB\nMemAvailable: 0 kB\n"
            let meminfo = try Meminfo(parsing: text)
            #expect(meminfo.memTotal == (UInt64(1) << 54 - 1) * 1024)
        }

        @Test func malformedNumberIsAnErrorOnItsLine() throws {
            let bytes = try Capture.bytes("malformed/meminfo-not-a-number")
            let error = expectParseError { _ = try Meminfo(parsing: bytes) }
            #expect(error?.line == 2)
            #expect(error?.what.contains("MemFree") == true)
        }

        @Test func missingMemTotalIsAnError() throws {
            let bytes = try Capture.bytes("malformed/meminfo-no-memtotal")
            let error = expectParseError { _ = try Meminfo(parsing: bytes) }
            #expect(error?.line == 0)
            #expect(error?.description == "/proc/meminfo: no MemTotal line")
        }

        @Test func knownAmountWithoutItsUnitIsAnError() throws {
            let bytes = try Capture.bytes("malformed/meminfo-missing-unit")
            let error = expectParseError { _ = try Meminfo(parsing: bytes) }
            #expect(error?.what.contains("Hugepagesize") == true)
        }

        @Test func fileNameGivenIsTheOneInErrors() throws {
            let error = expectParseError { _ = try Meminfo(parsing: "", file: "/host/proc/meminfo") }
            #expect(error?.file == "/host/proc/meminfo")
        }
    }

    /// MemAvailable alone, as the guest's once-a-second pressure check reads it.
    @Suite struct MemAvailableAlone {
        static func memAvailable(_ bytes: [UInt8]) throws -> UInt64? {
            try bytes.withUnsafeBufferPointer { buffer throws in try Meminfo.memAvailable(in: buffer) }
        }

        @Test func agreesWithTheFullParseOnEveryCapture() throws {
            for name in ["meminfo", "malformed/meminfo-future"] {
                let bytes = try Capture.bytes(name)
                #expect(try Self.memAvailable(bytes) == (try Meminfo(parsing: bytes)).memAvailable, "\(name)")
            }
        }

        @Test func absentIsNilAndMalformedIsAnErrorOnItsLine() throws {
            #expect(try Self.memAvailable(Array("MemTotal: 100 kB\nMemFree: 50 kB\n".utf8)) == nil)
            #expect(try Self.memAvailable(Array("MemTotal: 100 kB\nMemAvailable: 2 kB\nMemAvailable: 9 kB\n".utf8)) == 2048,
                    "the first line counts")
            let error = expectParseError { _ = try Self.memAvailable(Array("MemTotal: 100 kB\nMemAvailable: lots\n".utf8)) }
            #expect(error?.line == 2)
            #expect(expectParseError { _ = try Self.memAvailable(Array("MemAvailable: 99999999999999999999 kB\n".utf8)) } != nil)
            #expect(expectParseError { _ = try Self.memAvailable(Array("MemAvailable: 12\n".utf8)) } != nil, "a count, not an amount")
        }

        @Test func probeRereadsTheOpenFileFromTheStart() throws {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("meminfo-\(getpid())-\(UInt32.random(in: 0 ... .max))").path
            defer { try? FileManager.default.removeItem(atPath: path) }
            var text = String(decoding: try Capture.bytes("meminfo"), as: UTF8.self)
            try FileSystem.writeFile(path, Array(text.utf8), creatingWithPermissions: 0o600)
            let probe = try MemAvailableProbe(path: path)
            #expect(try probe.read() == 24_383_516 * 1024)
            // Rewritten in place, as /proc regenerates it: the same descriptor sees the new figure.
            text = text.replacingOccurrences(of: "MemAvailable:   24383516 kB", with: "MemAvailable:      12345 kB")
            #expect(text.contains("MemAvailable:      12345 kB"))
            try FileSystem.writeFile(path, Array(text.utf8), creatingWithPermissions: 0o600)
            #expect(try probe.read() == 12345 * 1024)
        }

        @Test func probeReadsPastItsFirstReadWhenTheLineIsFurtherOn() throws {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("meminfo-\(getpid())-\(UInt32.random(in: 0 ... .max))").path
            defer { try? FileManager.default.removeItem(atPath: path) }
            // Filler pushes MemAvailable past the first read, and a line straddling the read's end.
            for fillerLines in [175, 176, 177, 250] {  // 176: the line spans bytes 4082–4107
                let filler = (0..<fillerLines).map { "Filler\(String(format: "%04d", $0)):       1 kB\n" }.joined()
                let text = "MemTotal: 1000 kB\nMemFree: 500 kB\n" + filler + "MemAvailable:     777 kB\n"
                try FileSystem.writeFile(path, Array(text.utf8), creatingWithPermissions: 0o600)
                #expect(try MemAvailableProbe(path: path).read() == 777 * 1024, "\(fillerLines) filler lines, \(text.utf8.count) bytes")
            }
        }

        @Test func probeAgreesWithThisMachinesMeminfo() throws {
            let probed = try MemAvailableProbe().read()
            let parsed = try ProcFiles.meminfo().memAvailable
            // Two readings a moment apart on a machine running other tests.
            let difference = probed > parsed ? probed - parsed : parsed - probed
            #expect(difference < 256 << 20, "probe \(probed), parse \(parsed)")
        }
    }

    @Suite struct VMStatCaptures {
        @Test func capturedCountersAreReadByName() throws {
            let vmstat = try VMStat(parsing: Capture.bytes("vmstat"))
            #expect(vmstat.counters.count == 192)
            #expect(vmstat.pgfault == 937_756)
            #expect(vmstat.pgmajfault == 344)
            #expect(vmstat.nrFreePages == 936_558)
            #expect(vmstat.nrMlock == 2543)
            #expect(vmstat.workingsetRefaultFile == 7750)
            #expect(vmstat.workingsetRefaultAnon == 0)
            #expect(vmstat.pswpin == 0)
            #expect(vmstat["pgfault"] == 937_756)
            #expect(vmstat.pagesScanned == 0)
            #expect(vmstat.allocationStalls == 0)
        }

        @Test func counterTheKernelDoesNotKeepIsNilNotZero() throws {
            let vmstat = try VMStat(parsing: "pgfault 5\n")
            #expect(vmstat.pgfault == 5)
            #expect(vmstat.pswpin == nil)
            #expect(vmstat.pagesScanned == nil)
        }

        @Test func sumsAddWhateverPartsExist() throws {
            let vmstat = try VMStat(parsing: "pgscan_kswapd 10\npgscan_direct 3\nallocstall_normal 2\nallocstall_movable 5\n")
            #expect(vmstat.pagesScanned == 13)
            #expect(vmstat.allocationStalls == 7)
        }

        @Test func malformedKnownCounterIsAnErrorOnItsLine() throws {
            let bytes = try Capture.bytes("malformed/vmstat-bad-pgfault")
            let error = expectParseError { _ = try VMStat(parsing: bytes) }
            let expectedLine = try #require(String(decoding: Capture.bytes("vmstat"), as: UTF8.self)
                .split(separator: "\n").firstIndex { $0.hasPrefix("pgfault ") }) + 1
            #expect(error?.line == expectedLine)
        }

        @Test func unknownCountersOfOddShapeAreSkippedAndLargestValueFits() throws {
            let vmstat = try VMStat(parsing: Capture.bytes("malformed/vmstat-future"))
            #expect(vmstat["nr_future_thing"] == nil)
            #expect(vmstat["brand_new_counter"] == UInt64.max)
            #expect(vmstat.pgfault == 937_756)
        }

        @Test func valueAboveUInt64IsAnErrorForAKnownCounter() throws {
            let error = expectParseError { _ = try VMStat(parsing: "pgfault 18446744073709551616\n") }
            #expect(error?.line == 1)
        }

        @Test func fileWithoutCountersIsAnError() throws {
            #expect(expectParseError { _ = try VMStat(parsing: "\n\n") }?.line == 0)
        }
    }

    @Suite struct PressureCaptures {
        @Test func averagesAreHundredthsAndTotalIsMicroseconds() throws {
            let cpu = try PressureStall(parsing: Capture.bytes("pressure-cpu"), file: "/proc/pressure/cpu")
            #expect(cpu.some == PressureStall.Line(avg10: 6066, avg60: 1663, avg300: 397, total: 15_748_390))
            #expect(cpu.full == PressureStall.Line(avg10: 0, avg60: 0, avg300: 0, total: 0))

            let io = try PressureStall(parsing: Capture.bytes("pressure-io"), file: "/proc/pressure/io")
            #expect(io.some == PressureStall.Line(avg10: 23, avg60: 51, avg300: 38, total: 2_622_461))
            #expect(io.full == PressureStall.Line(avg10: 22, avg60: 48, avg300: 37, total: 2_545_646))
        }

        @Test func memoryCaptureHasBothLines() throws {
            let memory = try PressureStall(parsing: Capture.bytes("pressure-memory"))
            #expect(memory.some?.total == 0)
            #expect(memory.full?.avg300 == 0)
        }

        @Test func oneLineAloneIsEnoughAndShortFractionsAndUnknownKeysAreAccepted() throws {
            let pressure = try PressureStall(parsing: Capture.bytes("malformed/pressure-some-only"))
            #expect(pressure.some == PressureStall.Line(avg10: 150, avg60: 25, avg300: 10000, total: 42))
            #expect(pressure.full == nil)
        }

        @Test func lineWithoutTotalIsAnError() throws {
            let bytes = try Capture.bytes("malformed/pressure-missing-total")
            #expect(expectParseError { _ = try PressureStall(parsing: bytes) }?.line == 1)
        }

        @Test func malformedAverageIsAnError() throws {
            let bytes = try Capture.bytes("malformed/pressure-bad-average")
            let error = expectParseError { _ = try PressureStall(parsing: bytes) }
            #expect(error?.what.contains("avg10=1.x3") == true)
        }

        @Test func fileWithNeitherLineIsAnError() throws {
            #expect(expectParseError { _ = try PressureStall(parsing: "other avg10=1.00\n") }?.line == 0)
        }
    }

    @Suite struct KSMSysfs {
        @Test func choiceFilesNameTheBracketedWord() {
            #expect(KSMControl.selectedChoice(Array("[none] scan-time\n".utf8)) == "none")
            #expect(KSMControl.selectedChoice(Array("none [scan-time]\n".utf8)) == "scan-time")
            #expect(KSMControl.selectedChoice(Array("20\n".utf8)) == nil)
        }

        @Test func aCopyOfTheKernelsDirectoryReads() throws {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ksm-\(getpid())-\(UInt32.random(in: 0 ... .max))").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let files = ["run": "1", "pages_to_scan": "2000", "sleep_millisecs": "10", "use_zero_pages": "1", "full_scans": "7",
                         "pages_scanned": "123456", "pages_shared": "100", "pages_sharing": "900", "pages_unshared": "50",
                         "pages_volatile": "3", "ksm_zero_pages": "24", "general_profit": "-4096", "advisor_mode": "none [scan-time]",
                         "advisor_max_cpu": "20", "advisor_target_scan_time": "30"]
            for (name, value) in files { try (value + "\n").write(toFile: directory + "/" + name, atomically: true, encoding: .utf8) }
            let figures = try KSMControl.read(directory: directory)
            #expect(figures.run == 1 && figures.pagesToScan == 2000 && figures.sleepMillis == 10 && figures.useZeroPages)
            #expect(figures.pagesSharing == 900 && figures.zeroPages == 24 && figures.generalProfit == -4096)
            #expect(figures.savedBytes == (900 + 24) * 4096)
            #expect(figures.advisorMode == "scan-time" && figures.advisorMaxCPUPercent == 20 && figures.advisorTargetScanSeconds == 30)
            #expect(KSMControl.savedValue("advisor_mode", directory: directory) == "scan-time")
            #expect(KSMControl.savedValue("pages_to_scan", directory: directory) == "2000")
            // An older kernel: no advisor, no zero-page count.
            for name in ["advisor_mode", "ksm_zero_pages", "general_profit"] { try FileManager.default.removeItem(atPath: directory + "/" + name) }
            let older = try KSMControl.read(directory: directory)
            #expect(older.advisorMode == nil && older.zeroPages == nil && older.savedBytes == 900 * 4096)
        }

        @Test(.enabled(if: KSMControl.isAvailable, "this kernel has no KSM"))
        func thisKernelsKSMAndKsmdRead() throws {
            let figures = try KSMControl.read()
            #expect(figures.run <= 2)
            let ksmd = try #require(KSMDaemon.processID(), "ksmd runs wherever /sys/kernel/mm/ksm exists")
            let first = try KSMDaemon.cpuNanoseconds(of: ksmd)
            #expect(try KSMDaemon.cpuNanoseconds(of: ksmd) >= first)
        }
    }

    @Suite struct KSMAndSingleValues {
        @Test func capturedKSMStatParses() throws {
            let stat = try KSMProcessStat(parsing: Capture.bytes("ksm_stat"))
            #expect(stat.mergingPages == 0)
            #expect(stat.processProfit == 0)
            #expect(stat.mergeable == false)
            #expect(stat.mergeAny == false)
            #expect(stat.fields.count == 6)
        }

        @Test func profitMayBeNegative() throws {
            let stat = try KSMProcessStat(parsing: "ksm_merging_pages 12\nksm_process_profit -4096\nksm_mergeable: yes\n")
            #expect(stat.mergingPages == 12)
            #expect(stat.processProfit == -4096)
            #expect(stat.mergeable == true)
            #expect(stat.zeroPages == nil)
        }

        @Test func singleValueFilesParseWithTheirNewline() throws {
            #expect(try SingleValue.parseUnsigned(Array(text: "100\n"), file: "pages_to_scan") == 100)
            #expect(try SingleValue.parseUnsigned(Array(text: "18446744073709551615\n"), file: "x") == .max)
            #expect(try SingleValue.parseSigned(Array(text: "-123\n"), file: "general_profit") == -123)
            #expect(try SingleValue.parseSigned(Array(text: "-9223372036854775808"), file: "x") == .min)
            #expect(expectParseError { _ = try SingleValue.parseUnsigned(Array(text: "-1\n"), file: "x") } != nil)
            #expect(expectParseError { _ = try SingleValue.parseSigned(Array(text: "1 2\n"), file: "x") } != nil)
            #expect(expectParseError { _ = try SingleValue.parseSigned(Array(text: "\n"), file: "x") } != nil)
        }
    }
}
