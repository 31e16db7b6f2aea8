import BallonetLinux
import Testing

/// Every parser, on any bytes, returns or throws `ProcParseError`; none may trap. The inputs are prefixes
/// of the real captures (a read cut short), captures with bytes changed, and random bytes.
extension LinuxLayerTests {
    @Suite struct ParserRobustness {
        /// Each parser, run for its effect of not crashing; parse errors are an allowed outcome.
        static let parsers: [(name: String, parse: @Sendable ([UInt8]) -> Void)] = [
            ("meminfo", { _ = try? Meminfo(parsing: $0) }),
            ("vmstat", { _ = try? VMStat(parsing: $0) }),
            ("pressure", { _ = try? PressureStall(parsing: $0) }),
            ("status", { _ = try? ProcessStatus(parsing: $0) }),
            ("smaps", { _ = try? Smaps(parsing: $0) }),
            ("ksm_stat", { _ = try? KSMProcessStat(parsing: $0) }),
            ("single value", { _ = try? SingleValue.parseSigned($0, file: "x") }),
        ]

        /// Cutting at every offset of the large captures would take minutes in a debug build; a step
        /// that is prime to the line lengths still lands in every kind of place within a line.
        static let prefixStepForLargeCaptures = 53
        /// Captures up to this size (meminfo, vmstat, status, pressure) are cut at every offset.
        static let largeCaptureBytes = 4096

        @Test(arguments: Capture.realCaptures)
        func truncatedCapturesNeverCrashAnyParser(capture: String) throws {
            let bytes = try Capture.bytes(capture)
            let step = bytes.count > Self.largeCaptureBytes ? Self.prefixStepForLargeCaptures : 1
            for length in stride(from: 0, through: bytes.count, by: step) {
                let prefix = Array(bytes[..<length])
                for parser in Self.parsers {
                    parser.parse(prefix)
                }
            }
        }

        @Test(arguments: Capture.realCaptures)
        func capturesWithChangedBytesNeverCrashAnyParser(capture: String) throws {
            let original = try Capture.bytes(capture)
            var random = SplitMix64(state: UInt64(capture.utf8.count) &* 0x1234_5678)
            // Bytes that matter to the formats, so changes hit separators and digits, not only letters.
            let interesting: [UInt8] = Array(text: " \t\n:-=.kB0123456789abcdefx") + [0, 0xFF, 0xC3]
            for _ in 0..<60 {
                var bytes = original
                for _ in 0..<Int.random(in: 1...8, using: &random) {
                    let index = Int.random(in: 0..<bytes.count, using: &random)
                    bytes[index] = Bool.random(using: &random)
                        ? interesting.randomElement(using: &random)!
                        : UInt8.random(in: 0...255, using: &random)
                }
                for parser in Self.parsers {
                    parser.parse(bytes)
                }
            }
        }

        @Test func randomBytesNeverCrashAnyParser() {
            var random = SplitMix64(state: 42)
            let alphabet: [UInt8] = Array(text: " \t\n:-=.kB0123456789abcdef[]()/somefullavgtotal")
            for round in 0..<400 {
                let length = Int.random(in: 0...512, using: &random)
                let bytes: [UInt8] = (0..<length).map { _ in
                    round.isMultiple(of: 2) ? UInt8.random(in: 0...255, using: &random) : alphabet.randomElement(using: &random)!
                }
                for parser in Self.parsers {
                    parser.parse(bytes)
                }
            }
        }

        @Test func pagemapPastTheAddressSpaceIsEmptyAndOverflowingRequestsAreRefused() throws {
            let pagemap = try ProcFiles.openPagemap()
            #expect(try Pagemap.entries(in: pagemap, virtualAddress: .max - 4095, pageCount: 2).isEmpty)
            #expect(expectSystemCallError { _ = try Pagemap.entries(in: pagemap, virtualAddress: 0, pageCount: .max) }?.errno == .EINVAL)
        }

        @Test func extremeNumbersAreErrorsNotTraps() throws {
            let tooBig = "MemTotal: 99999999999999999999999999 kB\nMemFree: 1 kB\nMemAvailable: 1 kB\n"
            #expect(expectParseError { _ = try Meminfo(parsing: tooBig) }?.line == 1)
            #expect(expectParseError { _ = try PressureStall(parsing: "some avg10=99999999999.99 avg60=0 avg300=0 total=0\n") } != nil)
            // The largest whole number whose hundredths fit 64 bits, with a fraction on top.
            #expect(expectParseError { _ = try PressureStall(parsing: "some avg10=184467440737095516.99 avg60=0 avg300=0 total=0\n") } != nil)
            let largest = try PressureStall(parsing: "some avg10=42949672.95 avg60=0 avg300=0 total=18446744073709551615\n")
            #expect(largest.some == PressureStall.Line(avg10: .max, avg60: 0, avg300: 0, total: .max))
            #expect(expectParseError { _ = try Smaps(parsing: "ffffffffffffffffff-0 rw-p 0 0:0 0\n") } != nil)
            #expect(expectParseError { _ = try Smaps(parsing: "0-1 rw-p 0 0:0 0\nRss: 18014398509481984 kB\n") }?.line == 2)
            #expect(expectParseError { _ = try ProcessStatus(parsing: "Name:\tx\nState:\tR\nPid:\t99999999999\nPPid:\t1\nThreads:\t1\n") } != nil)
        }
    }
}
