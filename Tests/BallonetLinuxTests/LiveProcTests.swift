import BallonetLinux
import Testing

/// The parsers against this machine's /proc, read through the layer.
extension LinuxLayerTests {
    @Suite struct LiveProc {
        @Test func meminfoIsConsistent() throws {
            let meminfo = try ProcFiles.meminfo()
            #expect(meminfo.memTotal > 0)
            #expect(meminfo.memAvailable <= meminfo.memTotal)
            #expect(meminfo.memFree <= meminfo.memTotal)
            #expect(meminfo.memTotal % 1024 == 0, "kB values come out in whole KiB")
        }

        @Test func pageFaultCounterGrowsWhenMemoryIsTouched() throws {
            let pageCount = 256
            let region = try MappedRegion(anonymousLength: pageCount * Memory.pageSize)
            // One fault per base page, not one per huge page.
            try region.advise(.noHugePage)
            let before = try #require(ProcFiles.vmstat().pgfault)
            for page in 0..<pageCount {
                region.bytes.storeBytes(of: 1, toByteOffset: page * Memory.pageSize, as: UInt8.self)
            }
            let after = try #require(ProcFiles.vmstat().pgfault)
            #expect(after - before >= UInt64(pageCount))
        }

        @Test func memoryPressureParses() throws {
            let pressure = try ProcFiles.memoryPressure()
            let some = try #require(pressure.some)
            #expect(some.avg10 <= 10_000 && some.avg60 <= 10_000 && some.avg300 <= 10_000)
            #expect(pressure.full != nil)
        }

        @Test func memoryPressureTriggerIsAcceptedAndPollsQuietWithoutPressure() throws {
            // The guest's pressure guard: a PSI trigger ("some" stall of 150 ms within 2 s, the shortest
            // window callers without CAP_SYS_RESOURCE may use) makes the file poll with POLLPRI.
            let pressure = try FileDescriptor.open("/proc/pressure/memory", .readWrite)
            try pressure.write(all: Array(text: "some 150000 2000000") + [0])
            #expect(try pressure.poll(for: .priority, timeout: .milliseconds(10)).isEmpty)
            #expect(expectSystemCallError { try pressure.write(all: Array(text: "some 150000 2000000") + [0]) }?.errno == .EBUSY,
                    "one trigger per open file")
        }

        @Test func statusDescribesThisProcess() throws {
            let status = try ProcFiles.status()
            #expect(status.processID == ProcessControl.currentID)
            #expect(status.vmRSS > 0)
            #expect(status.threads >= 1)
            #expect(status.vmHWM >= status.vmRSS)
            let byID = try ProcFiles.status(of: .id(ProcessControl.currentID))
            #expect(byID.name == status.name)
        }

        @Test func smapsHasTheHeapAllocationAndItsRssAgreesWithStatus() throws {
            let allocation = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 16)
            defer { allocation.deallocate() }
            allocation.storeBytes(of: 1, as: UInt8.self)
            let address = UInt64(UInt(bitPattern: allocation))

            let before = try ProcFiles.status()
            let smaps = try ProcFiles.smaps()
            let after = try ProcFiles.status()

            let mapping = try #require(smaps.mapping(containing: address))
            #expect(mapping.permissions.read && mapping.permissions.write)
            #expect(mapping.rss > 0)
            // status counts RSS in per-CPU batches that lag behind; smaps walks the page tables. Allow a
            // tenth plus 8 MiB, and for the process changing between the readings.
            let total = smaps.total(.rss)
            let low = min(before.vmRSS, after.vmRSS)
            let high = max(before.vmRSS, after.vmRSS)
            let tolerance = high / 10 + 8 * 1024 * 1024
            #expect(total + tolerance >= low)
            #expect(total <= high + tolerance)
        }

        @Test func streamingSmapsMatchesWholeFileAndCanStopEarly() throws {
            let whole = try ProcFiles.smaps()
            var starts: [UInt64] = []
            try ProcFiles.forEachSmapsMapping { mapping in
                starts.append(mapping.start)
                return true
            }
            // The process may map or unmap something between the two reads; most mappings stay.
            let common = Set(starts).intersection(whole.mappings.map(\.start))
            #expect(common.count >= whole.mappings.count - 4)

            var seen = 0
            try ProcFiles.forEachSmapsMapping { _ in
                seen += 1
                return seen < 3
            }
            #expect(seen == 3)
        }

        @Test func rollupMatchesTheSumOfMappings() throws {
            let rollup = try ProcFiles.smapsRollup()
            let smaps = try ProcFiles.smaps()
            let difference = max(rollup.rss, smaps.total(.rss)) - min(rollup.rss, smaps.total(.rss))
            #expect(difference <= 8 * 1024 * 1024)
        }

        @Test func clearingReferencedBitsMakesSmapsCountOnlyNewTouches() throws {
            let length = 64 * Memory.pageSize
            let region = try MappedRegion(anonymousLength: length)
            try region.advise(.noHugePage)
            func touch(pages: Int) {
                for page in 0..<pages {
                    region.bytes.storeBytes(of: 1, toByteOffset: page * Memory.pageSize, as: UInt8.self)
                }
            }
            let address = region.address
            // Streaming and stopping at the mapping, as the host's sampler reads a QEMU process's smaps.
            func referenced() throws -> UInt64? {
                var found: UInt64?
                try ProcFiles.forEachSmapsMapping { mapping in
                    if mapping.contains(address: address) { found = mapping.referenced }
                    return found == nil
                }
                return found
            }
            touch(pages: 64)
            #expect(try referenced() == UInt64(length))
            try ProcFiles.clearReferencedBits(of: .current)
            #expect(try referenced() == 0)
            touch(pages: 16)
            // x86 clears accessed bits without flushing the TLB, so a page whose translation is still
            // cached is touched without being marked again: Referenced may undercount (13 to 16 of 16
            // pages here), never overcount.
            let touched = try #require(try referenced())
            #expect(touched > 0)
            #expect(touched <= UInt64(16 * Memory.pageSize))
        }

        @Test func mapsListsTheSameMappingsAsSmapsWithoutAmounts() throws {
            let region = try MappedRegion(anonymousLength: 3 * Memory.pageSize)
            let maps = try ProcFiles.maps()
            let mapping = try #require(maps.mapping(containing: region.address + 1))
            #expect(mapping.start <= region.address && mapping.end >= region.address + 3 * UInt64(Memory.pageSize))
            #expect(mapping.rss == 0)
            #expect(maps.mappings.contains { $0.pathname == "[stack]" })
        }

        @Test func pagemapShowsTouchedPagesWithFrameNumbers() throws {
            let region = try MappedRegion(anonymousLength: 4 * Memory.pageSize)
            region.bytes.storeBytes(of: 1, toByteOffset: Memory.pageSize, as: UInt8.self)
            let pagemap = try ProcFiles.openPagemap()
            let entries = try Pagemap.entries(in: pagemap, virtualAddress: region.address, pageCount: 4)
            #expect(entries.count == 4)
            #expect(!entries[0].isPresent)
            #expect(entries[1].isPresent)
            #expect(entries[1].frameNumber != nil, "root sees frame numbers")
            #expect(entries[1].isExclusivelyMapped)
            #expect(!entries[2].isPresent)
        }

        @Test func ksmStatOfThisProcessParses() throws {
            let stat = try ProcFiles.ksmStat()
            #expect(stat.mergingPages != nil)
            #expect(stat.mergeable != nil)
        }

        @Test func sysctlValuesRead() throws {
            #expect(try ProcFiles.unsignedValue(path: "/proc/sys/vm/max_map_count") > 0)
            #expect(try ProcFiles.signedValue(path: "/proc/sys/vm/overcommit_memory") >= 0)
        }
    }
}
