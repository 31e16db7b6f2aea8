import BallonetLinux
import Testing

extension LinuxLayerTests {
    @Suite struct StatusCaptures {
        @Test func capturedValuesComeOutInBytes() throws {
            let status = try ProcessStatus(parsing: Capture.bytes("status"))
            #expect(status.name == "capture")
            #expect(status.state == "R (running)")
            #expect(status.processID == 3557)
            #expect(status.parentProcessID == 3547)
            #expect(status.threads == 1)
            #expect(status.vmPeak == 7976 * 1024)
            #expect(status.vmLck == 1536 * 1024)
            #expect(status.vmRSS == 4860 * 1024)
            #expect(status.rssAnon + status.rssFile + status.rssShmem == status.vmRSS)
            #expect(status.rssShmem == 3072 * 1024)
            #expect(status.fields["Uid"] == "0\t0\t0\t0")
            #expect(status.fields["Cpus_allowed_list"] == "0-1")
        }

        @Test func kernelThreadWithoutMemoryLinesReadsAsZero() throws {
            let text = "Name:\tkthreadd\nState:\tS (sleeping)\nTgid:\t2\nPid:\t2\nPPid:\t0\nThreads:\t1\n"
            let status = try ProcessStatus(parsing: text)
            #expect(status.vmRSS == 0)
            #expect(status.parentProcessID == 0)
        }

        @Test func missingPidIsAnError() throws {
            let bytes = try Capture.bytes("malformed/status-no-pid")
            let error = expectParseError { _ = try ProcessStatus(parsing: bytes, file: "/proc/3557/status") }
            #expect(error?.description == "/proc/3557/status: no Pid line")
        }

        @Test func memoryLineInAnotherUnitIsAnErrorOnItsLine() throws {
            let bytes = try Capture.bytes("malformed/status-bad-vmrss")
            let error = expectParseError { _ = try ProcessStatus(parsing: bytes) }
            #expect(error?.line == 23)
            #expect(error?.what.contains("VmRSS") == true)
        }
    }

    @Suite struct SmapsCaptures {
        static let guestRAMStart: UInt64 = 0x7fa1_93dd_e000
        static let balloonStart: UInt64 = 0x7fa1_93cd_e000
        static let lockedAnonymousStart: UInt64 = 0x7fa1_93c5_e000

        @Test func memfdGuestRAMMappingHasItsHeaderAndAmounts() throws {
            let smaps = try Smaps(parsing: Capture.bytes("smaps"))
            #expect(smaps.mappings.count == 26)
            let ram = try #require(smaps.mappings.first { $0.start == Self.guestRAMStart })
            #expect(ram.end == 0x7fa1_941d_e000)
            #expect(ram.length == 4 * 1024 * 1024)
            #expect(ram.pathname == "/memfd:pc.ram (deleted)")
            #expect(ram.isDeleted)
            #expect(ram.permissions == MappingPermissions(read: true, write: true, execute: false, shared: true))
            #expect(ram.permissions.description == "rw-s")
            #expect(ram.device == DeviceNumber(major: 0, minor: 1))
            #expect(ram.inode == 1047)
            #expect(ram.size == 4096 * 1024)
            #expect(ram.rss == 2048 * 1024)
            #expect(ram.privateDirty == 2048 * 1024)
            #expect(ram.referenced == 2048 * 1024)
            #expect(ram.kernelPageSize == 4096)
            #expect(ram.locked == 0)
            #expect(ram.thpEligible == false)
            #expect(ram.vmFlags == ["rd", "wr", "sh", "mr", "mw", "me", "ms"])
            #expect(ram.otherFields.isEmpty, "this kernel's lines all have properties")
        }

        @Test func pathnameWithSpacesIsKeptWhole() throws {
            let smaps = try Smaps(parsing: Capture.bytes("smaps"))
            let balloon = try #require(smaps.mapping(containing: Self.balloonStart + 4096))
            #expect(balloon.pathname == "/dev/shm/ballonet capture/balloon pages (deleted)")
            #expect(balloon.device.description == "00:1b")
            #expect(balloon.locked == 1024 * 1024)
            #expect(balloon.vmFlags.contains("lo"))
            #expect(balloon.vmFlags.contains("sh"))
        }

        @Test func anonymousMappingHasNoPathname() throws {
            let smaps = try Smaps(parsing: Capture.bytes("smaps"))
            let anonymous = try #require(smaps.mappings.first { $0.start == Self.lockedAnonymousStart })
            #expect(anonymous.pathname == nil)
            #expect(anonymous.permissions.shared == false)
            #expect(anonymous.locked == 512 * 1024)
            #expect(anonymous.anonymous == 512 * 1024)
        }

        @Test func totalsAgreeWithTheRollupAndStatusOfTheSameProcess() throws {
            let smaps = try Smaps(parsing: Capture.bytes("smaps"))
            let rollup = try #require(Smaps(parsing: Capture.bytes("smaps_rollup")).mappings.first)
            let status = try ProcessStatus(parsing: Capture.bytes("status"))
            #expect(rollup.pathname == "[rollup]")
            #expect(smaps.total(.rss) == rollup.rss)
            #expect(smaps.total(.rss) == status.vmRSS)
            #expect(smaps.total(.locked) == status.vmLck)
            #expect(smaps.total(.anonymous) == rollup.anonymous)
            #expect(rollup.pssAnon == 620 * 1024)
            #expect(rollup.pssShmem == 3072 * 1024)
        }

        @Test func mapsParsesToTheSameMappingsWithoutAmounts() throws {
            let smaps = try Smaps(parsing: Capture.bytes("smaps"))
            let maps = try Smaps(parsing: Capture.bytes("maps"), file: "/proc/self/maps")
            #expect(maps.mappings.count == smaps.mappings.count)
            for (short, long) in zip(maps.mappings, smaps.mappings) {
                #expect(short.start == long.start)
                #expect(short.end == long.end)
                #expect(short.pathname == long.pathname)
                #expect(short.rss == 0)
            }
            let vsyscall = try #require(maps.mappings.last)
            #expect(vsyscall.start == 0xffff_ffff_ff60_0000)
            #expect(vsyscall.permissions.description == "--xp")
        }

        @Test func anotherProcessCaptureParses() throws {
            let smaps = try Smaps(parsing: Capture.bytes("smaps-cat"))
            #expect(smaps.mappings.count == 38)
            #expect(smaps.mappings.first?.pathname == "/usr/bin/cat")
            #expect(smaps.mappings.first?.size == 8 * 1024)
        }

        @Test func streamingParserGivesTheSameMappingsAsWholeFileParsing() throws {
            let bytes = try Capture.bytes("smaps")
            var parser = SmapsParser()
            var streamed: [SmapsMapping] = []
            var lineStart = 0
            try bytes.withUnsafeBufferPointer { buffer in
                for index in buffer.indices where buffer[index] == 0x0A {
                    if let mapping = try parser.consume(line: UnsafeBufferPointer(rebasing: buffer[lineStart..<index])) {
                        streamed.append(mapping)
                    }
                    lineStart = index + 1
                }
            }
            if let last = parser.finish() { streamed.append(last) }
            #expect(streamed == (try Smaps(parsing: bytes)).mappings)
        }

        @Test func streamingFromAFileMatchesWholeFileParsing() throws {
            var streamed: [SmapsMapping] = []
            try ProcFiles.forEachSmapsMapping(inFile: Capture.directory + "/smaps-cat") { mapping in
                streamed.append(mapping)
                return true
            }
            #expect(streamed == (try Smaps(parsing: Capture.bytes("smaps-cat"))).mappings)
        }

        @Test func streamingRefusesALineLongerThanTheBound() throws {
            let scratch = try ScratchDirectory()
            let path = scratch.path + "/smaps"
            let longLine = "00400000-00401000 r-xp 00000000 08:01 12 /" + String(repeating: "x", count: ProcFileLimits.smapsLineBytes)
            try FileSystem.writeFile(path, longLine + "\nRss: 4 kB\n", creatingWithPermissions: 0o600)
            let error = expectParseError { try ProcFiles.forEachSmapsMapping(inFile: path) { _ in true } }
            #expect(error?.what.contains("longer than") == true)
        }

        @Test func unknownFieldsAreKeptOrSkippedByShape() throws {
            let smaps = try Smaps(parsing: Capture.bytes("malformed/smaps-future"))
            #expect(smaps.mappings.count == 26)
            #expect(smaps.mappings[0].otherFields == ["NewAmount": 12 * 1024])
        }

        @Test func protectionKeyIsReadWhenPresent() throws {
            let text = "00400000-00401000 r-xp 00000000 08:01 12 /bin/x\nRss: 4 kB\nProtectionKey:         3\nTHPeligible: 1\n"
            let mapping = try #require(Smaps(parsing: text).mappings.first)
            #expect(mapping.protectionKey == 3)
            #expect(mapping.thpEligible == true)
            #expect(mapping.rss == 4096)
        }

        @Test func malformedHeaderIsAnErrorOnItsLine() throws {
            let bytes = try Capture.bytes("malformed/smaps-bad-header")
            let error = expectParseError { _ = try Smaps(parsing: bytes) }
            #expect(error?.line == 151)
        }

        @Test func fieldBeforeAnyMappingIsAnError() throws {
            let bytes = try Capture.bytes("malformed/smaps-field-first")
            let error = expectParseError { _ = try Smaps(parsing: bytes) }
            #expect(error?.line == 1)
            #expect(error?.what.contains("before any mapping") == true)
        }

        @Test func malformedKnownAmountIsAnErrorOnItsLine() throws {
            let bytes = try Capture.bytes("malformed/smaps-bad-rss")
            let error = expectParseError { _ = try Smaps(parsing: bytes) }
            #expect(error?.line == 5)
            #expect(error?.what.hasPrefix("Rss:") == true)
        }

        @Test func addressRangeGoingBackwardsIsAnError() throws {
            let error = expectParseError { _ = try Smaps(parsing: "00402000-00401000 r-xp 00000000 08:01 12\n") }
            #expect(error?.line == 1)
        }
    }

    @Suite struct PagemapEntries {
        @Test func bitsAreReadAsDocumented() {
            let present = PagemapEntry(rawValue: 1 << 63 | 1 << 56 | 0x1234)
            #expect(present.isPresent)
            #expect(present.isExclusivelyMapped)
            #expect(!present.isSwapped)
            #expect(present.frameNumber == 0x1234)

            let hidden = PagemapEntry(rawValue: 1 << 63)
            #expect(hidden.isPresent)
            #expect(hidden.frameNumber == nil, "frame 0 means the reader may not see frame numbers")

            let swapped = PagemapEntry(rawValue: 1 << 62 | 0x55)
            #expect(swapped.isSwapped)
            #expect(swapped.frameNumber == nil)
        }
    }
}
