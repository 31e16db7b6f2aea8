import Foundation
import Testing
import BallonetLinux
import BallonetWire
@testable import BallonetGuest

/// The balloon file on this machine's real kernel: a tmpfs of its own, real mlock, real pagemap.
@Suite(.serialized) struct BalloonFileTests {
    /// A fresh directory with the balloon's tmpfs mounted on it, unmounted and removed afterwards.
    static func withBalloonDirectory(_ body: (String) throws -> Void) throws {
        let parent = "/tmp/ballonet-balloon-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let directory = parent + "/run/balloon"  // parents are created as needed
        defer {
            try? FileSystem.unmount(directory, detach: true)
            try? FileManager.default.removeItem(atPath: parent)
        }
        try body(directory)
    }

    static func lockedBytes() throws -> UInt64 { try ProcFiles.status().vmLck }

    @Test func pinnedPagesAreLockedReportedAsTheKernelMapsThemAndFreedOnRelease() throws {
        try Self.withBalloonDirectory { directory in
            let balloon = try BalloonFile(directory: directory, mountTmpfs: true, hugePages: true, maxBatchPages: 1024)
            #expect(try FileSystem.isOnTmpfs(directory))
            let lockedBefore = try Self.lockedBytes()
            let batch = try balloon.pin(pages: 1024)
            #expect(batch.pageCount == 1024)
            #expect(batch.ranges.pageCount == 1024)
            #expect(try Self.lockedBytes() - lockedBefore == 4 << 20)
            let file = try FileDescriptor.open(balloon.path, .readOnly)
            #expect(try file.status().allocatedBytes >= 4 << 20)

            // The ranges are what pagemap says of the mapping of the balloon file, page for page.
            let mapping = try #require(try ProcFiles.maps().mappings.first { $0.pathname == balloon.path })
            let pagemap = try ProcFiles.openPagemap()
            let entries = try Pagemap.entries(in: pagemap, virtualAddress: mapping.start, pageCount: 1024)
            #expect(try PFNRangeList.coalescing(pfns: entries.compactMap(\.frameNumber)) == batch.ranges)
            let (again, _) = try balloon.frames(ofBatchAt: batch.fileOffset)
            #expect(again == batch.ranges, "pinned pages do not move")

            try balloon.release(batchAt: batch.fileOffset)
            #expect(try Self.lockedBytes() == lockedBefore)
            #expect(try file.status().allocatedBytes == 0)
            #expect(balloon.pinnedPages == 0)
        }
    }

    @Test func aNewAgentAdoptsWhatTheFileHolds() throws {
        try Self.withBalloonDirectory { directory in
            var first: BalloonFile? = try BalloonFile(directory: directory, mountTmpfs: true, hugePages: true, maxBatchPages: 1024)
            let a = try first!.pin(pages: 1024)
            let b = try first!.pin(pages: 300)
            let c = try first!.pin(pages: 1024)
            try first!.release(batchAt: b.fileOffset)
            first = nil  // as if the agent died: mappings gone, file pages stay
            let file = try FileDescriptor.open(directory + "/" + BalloonFile.fileName, .readOnly)
            #expect(try file.status().allocatedBytes >= 8 << 20)

            let second = try BalloonFile(directory: directory, mountTmpfs: true, hugePages: true, maxBatchPages: 1024)
            let adopted = try second.adoptExistingBatches()
            #expect(adopted.map(\.fileOffset) == [a.fileOffset, c.fileOffset])
            #expect(adopted.map(\.pageCount) == [1024, 1024])
            #expect(second.pinnedPages == 2048)
            // The freed slot is reused by the next batch.
            let d = try second.pin(pages: 10)
            #expect(d.fileOffset == b.fileOffset)
            for batch in adopted + [d] { try second.release(batchAt: batch.fileOffset) }
            #expect(try file.status().allocatedBytes == 0)
        }
    }

    @Test func hugePagesShowAsAlignedRunsWhereTheKernelGivesThem() throws {
        try Self.withBalloonDirectory { directory in
            let balloon = try BalloonFile(directory: directory, mountTmpfs: true, hugePages: true, maxBatchPages: 1024)
            let batch = try balloon.pin(pages: 1024)
            defer { try? balloon.release(batchAt: batch.fileOffset) }
            // Whether the kernel found free 2 MiB blocks depends on its fragmentation; what must hold is that
            // the order claimed matches the ranges.
            if batch.pageOrder == 9 {
                #expect(batch.ranges.allSatisfy { $0.start % 512 == 0 && $0.count % 512 == 0 })
            } else {
                #expect(batch.pageOrder == 0)
            }
        }
    }
}
