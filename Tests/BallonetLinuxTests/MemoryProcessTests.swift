import BallonetLinux
import Testing

extension LinuxLayerTests {
    @Suite struct Mappings {
        @Test func lockingARegionShowsInVmLckAndUnlockingOrUnmappingRemovesIt() throws {
            let length = 4 * 1024 * 1024
            // CAP_IPC_LOCK lifts the limit, but an agent without it raises its soft limit this way.
            // (Raising the hard limit needs CAP_SYS_RESOURCE, which this machine's root lacks.)
            let limit = try ResourceLimit.current(.lockedMemory)
            try ResourceLimit.set(.lockedMemory, to: ResourceLimit(soft: limit.hard, hard: limit.hard))
            #expect(try ResourceLimit.current(.lockedMemory).soft == limit.hard)

            let baseline = try ProcFiles.status().vmLck
            let region = try MappedRegion(anonymousLength: length)
            try region.lock()
            #expect(try ProcFiles.status().vmLck == baseline + UInt64(length))
            try region.unlock()
            #expect(try ProcFiles.status().vmLck == baseline)

            try region.lock(offset: 0, length: length / 2)
            #expect(try ProcFiles.status().vmLck == baseline + UInt64(length / 2))
            try region.unmap()
            #expect(try ProcFiles.status().vmLck == baseline)
        }

        @Test func regionIsUnmappedWhenTheValueGoesAway() throws {
            var address: UInt64 = 0
            do {
                let region = try MappedRegion(anonymousLength: 64 * 1024)
                address = region.address
                #expect(try ProcFiles.maps().mapping(containing: address) != nil)
            }
            #expect(try ProcFiles.maps().mapping(containing: address) == nil)
        }

        @Test func takenRegionStaysMappedUntilAdoptedAgain() throws {
            var taken: UnsafeMutableRawBufferPointer
            do {
                let region = try MappedRegion(anonymousLength: 64 * 1024)
                region.bytes.storeBytes(of: 0x5A, as: UInt8.self)
                taken = region.take()
            }
            let base = try #require(taken.baseAddress)
            let address = UInt64(UInt(bitPattern: base))
            #expect(taken.load(as: UInt8.self) == 0x5A)
            #expect(try ProcFiles.maps().mapping(containing: address) != nil)
            try MappedRegion(adopting: base, length: taken.count).unmap()
            #expect(try ProcFiles.maps().mapping(containing: address) == nil)
        }

        @Test func protectionChangesShowInMaps() throws {
            let region = try MappedRegion(anonymousLength: 2 * Memory.pageSize)
            try region.protect(.read)
            let mapping = try #require(ProcFiles.maps().mapping(containing: region.address))
            #expect(mapping.permissions.description == "r--p")
        }

        @Test func rangesOutsideTheRegionAreRefusedWithoutTouchingNeighbours() throws {
            let region = try MappedRegion(anonymousLength: 8192)
            let error = expectSystemCallError { try region.advise(.dontNeed, offset: 4096, length: 8192) }
            #expect(error?.errno == .EINVAL)
            #expect(error?.systemCall == "madvise")
            #expect(expectSystemCallError { try region.lock(offset: -4096, length: 4096) }?.errno == .EINVAL)
        }

        @Test func dontNeedZeroesPrivateAnonymousMemory() throws {
            let region = try MappedRegion(anonymousLength: Memory.pageSize)
            region.bytes.storeBytes(of: 0x42, as: UInt8.self)
            try region.advise(.dontNeed)
            #expect(region.bytes.load(as: UInt8.self) == 0)
        }

        @Test func sharedMappingsOfOneMemfdSeeEachOthersWrites() throws {
            let file = try Memory.createMemoryFile(named: "shared")
            try file.truncate(toSize: Int64(Memory.pageSize))
            let first = try MappedRegion(file: file, length: Memory.pageSize)
            let second = try MappedRegion(file: file, length: Memory.pageSize)
            first.bytes.storeBytes(of: 0xBA, toByteOffset: 100, as: UInt8.self)
            #expect(second.bytes.load(fromByteOffset: 100, as: UInt8.self) == 0xBA)
            #expect(try file.read(upTo: 1, atOffset: 100) == [0xBA])
        }

        @Test func failedMappingIsATypedError() throws {
            let error = expectSystemCallError { _ = try MappedRegion(anonymousLength: 0) }
            #expect(error?.errno == .EINVAL)
            #expect(error?.systemCall == "mmap")
        }

        @Test func pageSizeIsAPowerOfTwo() {
            #expect(Memory.pageSize >= 4096)
            #expect(Memory.pageSize & (Memory.pageSize - 1) == 0)
        }
    }

    @Suite struct Processes {
        @Test func pidfdOpensForThisProcessAndFailsForAMissingOne() throws {
            let pidfd = try ProcessControl.openDescriptor(forProcess: ProcessControl.currentID)
            #expect(try FileSystem.readLink("/proc/self/fd/\(pidfd.rawValue)") == "anon_inode:[pidfd]")
            // PIDs stop at 2^22 (pid_max's ceiling), so this one cannot exist.
            let error = expectSystemCallError { _ = try ProcessControl.openDescriptor(forProcess: 1 << 23) }
            #expect(error?.errno == .ESRCH)
        }

        @Test func processMadvisePagesOutOwnMemoryOrSaysWhyNot() throws {
            let length = 1024 * 1024
            let region = try MappedRegion(anonymousLength: length)
            for offset in stride(from: 0, to: length, by: Memory.pageSize) {
                region.bytes.storeBytes(of: 1, toByteOffset: offset, as: UInt8.self)
            }
            let pidfd = try ProcessControl.openDescriptor(forProcess: ProcessControl.currentID)
            let range = AddressRange(start: region.address, length: UInt64(length))
            do throws(SystemCallError) {
                let advised = try ProcessControl.adviseMemory(ofProcess: pidfd, ranges: [range], advice: .pageOut)
                #expect(advised == length)
            } catch {
                // Kernels without process_madvise, or that refuse it to this caller, say so this way.
                #expect([Errno.ENOSYS, .EPERM, .EINVAL].contains(error.errno))
                #expect(error.systemCall == "process_madvise")
            }
            // Page-out keeps content: what was written reads back.
            #expect(region.bytes.load(fromByteOffset: Memory.pageSize * 3, as: UInt8.self) == 1)
        }

        @Test func processMadviseTakesAtMostTheKernelsNumberOfRanges() throws {
            let region = try MappedRegion(anonymousLength: Memory.pageSize)
            let pidfd = try ProcessControl.openDescriptor(forProcess: ProcessControl.currentID)
            let range = AddressRange(start: region.address, length: UInt64(Memory.pageSize))
            let tooMany = [AddressRange](repeating: range, count: ProcessControl.maximumRangesPerAdvice + 1)
            let error = expectSystemCallError { _ = try ProcessControl.adviseMemory(ofProcess: pidfd, ranges: tooMany, advice: .cold) }
            #expect(error?.errno == .EINVAL)
        }

        @Test func signalZeroChecksExistence() throws {
            try ProcessControl.send(.existenceCheck, to: ProcessControl.currentID)
            #expect(ProcessControl.exists(ProcessControl.currentID))
            #expect(!ProcessControl.exists(1 << 23))
            let error = expectSystemCallError { try ProcessControl.send(.terminate, to: 1 << 23) }
            #expect(error?.errno == .ESRCH)
        }

        @Test func blockedSignalArrivesThroughItsDescriptor() throws {
            // Test functions run on one thread from start to end; the signal goes to that thread only.
            try ProcessControl.blockSignals([.user1])
            let signals = try ProcessControl.openSignalDescriptor(for: [.user1])
            #expect(try signals.poll(for: .readable, timeout: .zero).isEmpty)
            #expect(try signals.readSignal() == nil)
            try ProcessControl.signalCurrentThread(.user1)
            #expect(try signals.poll(for: .readable, timeout: .seconds(1)).contains(.readable))
            #expect(try signals.readSignal() == .user1)
            #expect(try signals.readSignal() == nil)
        }

        @Test func monotonicClockMovesForwardBySleeps() {
            let start = MonotonicInstant.now()
            MonotonicClock.sleep(for: .milliseconds(20))
            let elapsed = MonotonicInstant.now() - start
            #expect(elapsed >= .milliseconds(20))
            #expect(elapsed < .seconds(5))
            #expect(start.advanced(by: .milliseconds(5)).nanoseconds == start.nanoseconds + 5_000_000)
            #expect(start.duration(since: start.advanced(by: .seconds(1))) == .seconds(-1))
            #expect(MonotonicInstant(nanoseconds: 10).advanced(by: .seconds(-1)).nanoseconds == 0)
        }
    }
}
