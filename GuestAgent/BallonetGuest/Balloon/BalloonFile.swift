import BallonetLinux
import BallonetWire

/// What is missing or wrong when the balloon cannot work: said plainly, for an operator.
public struct BalloonSetupError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One pinned region of the balloon file, mapped and mlocked. A class so that the mapping (a noncopyable
/// value) can live in a dictionary; it unmaps itself when dropped.
final class PinnedRegion {
    let mapping: MappedRegion
    let fileOffset: Int64

    init(mapping: consuming MappedRegion, fileOffset: Int64) {
        self.mapping = mapping
        self.fileOffset = fileOffset
    }
}

/// A batch as pinned: where it is, and which guest pages it holds.
public struct PinnedBatch: Sendable, Equatable {
    public var fileOffset: UInt64
    public var pageCount: UInt64
    public var ranges: PFNRangeList
    public var pageOrder: UInt8
}

/// The balloon's memory: a file on a tmpfs the agent owns, pinned batch by batch.
///
/// Each batch occupies one slot of the file (slot i at byte i × slot size, the slot being the largest
/// batch rounded up to 2 MiB). Pinning a batch maps its slot shared and mlocks it, which faults the pages
/// in (the kernel allocates and zeroes them); the pages then cannot move or be swapped (safety invariant 4,
/// with `vm.compact_unevictable_allowed=0`), and their PFNs are read from `/proc/self/pagemap`. Releasing
/// unmaps the slot and punches the whole slot out of the file, which frees the pages to the guest.
///
/// Huge pages: the tmpfs is mounted `huge=advise`, and a batch that is a whole number of 2 MiB is advised
/// `MADV_HUGEPAGE` before it is faulted in, so the kernel backs it with 2 MiB pages where it has free ones
/// (three times faster to pin, DESIGN.md's figures) and with 4 KiB pages where memory is fragmented. A
/// smaller batch (the last bit of a target) gets 4 KiB pages, so that no huge page is half wasted.
///
/// The file outlives the process (safety invariant 3): after a crash the pages stay allocated in the
/// tmpfs, and `adoptExistingBatches` maps and locks them again from what the file holds.
public final class BalloonFile {
    public static let twoMiB: UInt64 = 2 << 20
    /// The name of the balloon file inside the balloon directory.
    public static let fileName = "balloon"

    public let path: String
    public let slotBytes: UInt64
    public let hugePages: Bool
    private let file: FileDescriptor
    private let pagemap: FileDescriptor
    private var regions: [UInt64: PinnedRegion] = [:]  // by slot index
    private var slotsInUse = Set<UInt64>()

    /// Opens (creating it if need be) the balloon file in `directory`. With `mountTmpfs`, the directory
    /// gets a tmpfs of its own first unless it already is one (`huge=advise` when `hugePages`); without,
    /// it must already be on a tmpfs.
    public init(directory: String, mountTmpfs: Bool, hugePages: Bool, maxBatchPages: UInt64) throws {
        slotBytes = (maxBatchPages * wirePageSize + Self.twoMiB - 1) / Self.twoMiB * Self.twoMiB
        self.hugePages = hugePages
        try Self.makeDirectories(directory)
        // A tmpfs of its own, not merely any tmpfs: /run is one too, but capped at half of RAM and shared
        // with everything else there. A directory that is already a tmpfs mount point is the agent's
        // own from an earlier run (after a crash), holding the balloon to adopt.
        let parent = directory.split(separator: "/").dropLast().joined(separator: "/")
        let isMountPoint = try FileSystem.status(ofPath: directory).device != FileSystem.status(ofPath: "/" + parent).device
        let onTmpfs = try FileSystem.isOnTmpfs(directory)
        if !mountTmpfs {
            guard onTmpfs else {
                throw BalloonSetupError("\(directory) is not on a tmpfs, and mounting one is turned off ([balloon] mount_tmpfs): "
                                        + "the balloon file must live in RAM")
            }
        } else if !(isMountPoint && onTmpfs) {
            do {
                try FileSystem.mount(source: "ballonet-balloon", target: directory, type: "tmpfs",
                                     // size=100%: a tmpfs holds half of RAM by default, and the balloon may
                                     // need more; the floor, not the mount, is what limits it.
                                     data: "mode=0700,size=100%" + (hugePages ? ",huge=advise" : ",huge=never"))
            } catch {
                throw BalloonSetupError("cannot mount the balloon's tmpfs on \(directory): \(error)"
                                        + (error.errno == .EPERM ? " (mounting needs CAP_SYS_ADMIN)" : ""))
            }
        }
        path = directory + "/" + Self.fileName
        file = try FileDescriptor.open(path, .readWrite, options: [.create], permissions: 0o600)
        pagemap = try ProcFiles.openPagemap()
    }

    /// Creates `directory` and any missing parents (as `mkdir -p`), owner-only.
    static func makeDirectories(_ directory: String) throws {
        var path = ""
        for component in directory.split(separator: "/") {
            path += "/" + component
            if !FileSystem.exists(path) { try FileSystem.makeDirectory(path, permissions: 0o700) }
        }
    }

    /// Pages pinned now.
    public var pinnedPages: UInt64 {
        regions.values.reduce(0) { $0 + UInt64($1.mapping.length) / wirePageSize }
    }

    /// Allocates, maps and locks a batch of `pages`, and reads which guest pages it got.
    public func pin(pages: UInt64) throws -> PinnedBatch {
        precondition(pages > 0 && pages * wirePageSize <= slotBytes, "a batch fits its slot")
        var slot: UInt64 = 0
        while slotsInUse.contains(slot) { slot += 1 }
        let offset = Int64(slot * slotBytes)
        let length = Int(pages * wirePageSize)
        // A mapping past the end of the file cannot be faulted in: grow the file over the slot first
        // (size only; a tmpfs allocates nothing until the pages are touched).
        if try file.status().size < offset + Int64(slotBytes) {
            try file.truncate(toSize: offset + Int64(slotBytes))
        }
        do {
            return try map(slot: slot, offset: offset, length: length,
                           huge: hugePages && UInt64(length) % Self.twoMiB == 0)
        } catch {
            try? file.punchHole(offset: offset, length: Int64(slotBytes))
            throw error
        }
    }

    private func map(slot: UInt64, offset: Int64, length: Int, huge: Bool) throws -> PinnedBatch {
        let mapping = try MappedRegion(file: file, offset: offset, length: length, protection: .readWrite, sharing: .shared)
        if huge { try mapping.advise(.hugePage) }
        do {
            try mapping.lock()
        } catch {
            throw BalloonSetupError("mlock of \(length >> 20) MiB failed: \(error)"
                                    + (error.errno == .EPERM || error.errno == .ENOMEM ? " (pinning needs CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK)" : ""))
        }
        let region = PinnedRegion(mapping: mapping, fileOffset: offset)
        regions[slot] = region
        slotsInUse.insert(slot)
        let (ranges, order) = try frames(of: region)
        return PinnedBatch(fileOffset: UInt64(offset), pageCount: UInt64(length) / wirePageSize, ranges: ranges, pageOrder: order)
    }

    /// The guest pages behind a pinned batch, read from pagemap now: the report sends these, read right
    /// before it is sent (safety invariant 4).
    public func frames(ofBatchAt fileOffset: UInt64) throws -> (PFNRangeList, pageOrder: UInt8) {
        guard let region = regions[fileOffset / slotBytes] else {
            throw BalloonSetupError("no pinned batch at offset \(fileOffset)")
        }
        return try frames(of: region)
    }

    private func frames(of region: PinnedRegion) throws -> (PFNRangeList, pageOrder: UInt8) {
        let pageCount = region.mapping.length / Int(wirePageSize)
        let entries = try Pagemap.entries(in: pagemap, virtualAddress: region.mapping.address, pageCount: pageCount)
        var pfns: [UInt64] = []
        pfns.reserveCapacity(pageCount)
        for entry in entries {
            guard let pfn = entry.frameNumber, pfn != 0 else {
                throw BalloonSetupError("/proc/self/pagemap shows no page frame numbers: reading them needs CAP_SYS_ADMIN")
            }
            pfns.append(pfn)
        }
        guard pfns.count == pageCount else { throw BalloonSetupError("pagemap returned \(pfns.count) of \(pageCount) entries") }
        let ranges = try PFNRangeList.coalescing(pfns: pfns)
        // 2 MiB pages show as 512-page runs starting on a 512-page boundary.
        let huge = ranges.allSatisfy { $0.start % 512 == 0 && $0.count % 512 == 0 }
        return (ranges, huge ? 9 : 0)
    }

    /// Unlocks, unmaps and frees a batch's pages back to the guest.
    public func release(batchAt fileOffset: UInt64) throws {
        let slot = fileOffset / slotBytes
        guard let region = regions.removeValue(forKey: slot) else { return }
        _ = consume region  // unmaps (and so unlocks) when the last reference goes
        slotsInUse.remove(slot)
        // The whole slot: a huge page reaching past the batch's last byte goes too.
        try file.punchHole(offset: Int64(slot * slotBytes), length: Int64(slotBytes))
    }

    /// Maps and locks again what the file still holds from an earlier run of the agent (after a crash or
    /// an upgrade), slot by slot. Each slot holds one batch from its start; anything else in a slot (a
    /// batch half-allocated when the agent died) is punched out, since no host was ever told of it.
    public func adoptExistingBatches() throws -> [PinnedBatch] {
        let size = try file.status().size
        var adopted: [PinnedBatch] = []
        var slot: UInt64 = 0
        while Int64(slot * slotBytes) < size {
            let start = Int64(slot * slotBytes)
            let end = min(start + Int64(slotBytes), size)
            defer { slot += 1 }
            guard let data = try nextData(from: start), data < end else { continue }
            let hole = min(try file.seek(to: data, from: .nextHole), end)
            guard data == start else {
                try file.punchHole(offset: start, length: end - start)
                continue
            }
            if hole < end { try file.punchHole(offset: hole, length: end - hole) }
            adopted.append(try map(slot: slot, offset: start, length: Int(hole - start), huge: false))
        }
        return adopted
    }

    private func nextData(from offset: Int64) throws -> Int64? {
        do {
            return try file.seek(to: offset, from: .nextData)
        } catch where error.errno == .ENXIO {
            return nil  // no data at or after offset
        }
    }
}
