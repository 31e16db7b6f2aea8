import BallonetLinux

/// How the host gets the memory behind balloon pages back.
public enum ReclaimMethod: String, Sendable, Codable {
    /// `fallocate(PUNCH_HOLE)` on the memfd or file behind shared guest RAM: the pages are freed at once
    /// and the guest reads zeroes if it ever touches them again.
    case punch
    /// `process_madvise(MADV_PAGEOUT)` on QEMU's mapping of anonymous guest RAM: the pages go to host swap
    /// (content kept), so it frees memory only where the host has swap or zswap.
    case pageout
}

/// Where one RAM block lives in QEMU, and how its memory is reclaimed.
public struct RAMBlockBacking: Sendable, CustomStringConvertible {
    public var block: String
    /// QEMU's virtual address of block offset 0.
    public var hostAddress: UInt64
    /// Bytes of the block that guest RAM segments use (the largest offset + length).
    public var length: UInt64
    public var method: ReclaimMethod
    /// For `.punch`: the file behind the mapping as QEMU holds it (`/proc/<pid>/fd/N`) and the file
    /// offset of block offset 0.
    public var filePath: String?
    public var fileOffset: UInt64

    public var description: String {
        switch method {
        case .punch: "\(block): \(length >> 20) MiB at 0x\(String(hostAddress, radix: 16)), punch \(filePath ?? "?") from offset \(fileOffset)"
        case .pageout: "\(block): \(length >> 20) MiB at 0x\(String(hostAddress, radix: 16)), anonymous, pageout"
        }
    }
}

/// What one reclaim did.
public struct ReclaimOutcome: Sendable, Equatable {
    /// Bytes of guest RAM the host acted on.
    public var requestedBytes: UInt64
    /// Bytes of host memory freed, as measured: for punch, the drop in the file's allocated blocks (fstat);
    /// for pageout, what the kernel says it advised (the sampled resident figure shows what really left).
    public var freedBytes: UInt64
}

/// Why reclaim could not be set up or carried out. The batch is then declined: its pages keep their
/// contents, and the guest may take them back.
public struct ReclaimError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Carries out reclaim for one VM: finds each RAM block's mapping in QEMU and its file, then punches or
/// pages out the extents of acknowledged-to-be batches. It is the only place the host discards guest
/// memory; the session decides what may be discarded (safety invariants 1 and 6).
public final class GuestRAMReclaimer {
    public let processID: Int32
    public let backings: [String: RAMBlockBacking]
    private let process: SharedDescriptor
    private var files: [String: SharedDescriptor] = [:]


    /// Resolves each block of `map`: `hostAddressOf` gives QEMU's address of a guest-physical address
    /// (HMP `gpa2hva`); QEMU's /proc/<pid>/maps says which mapping holds it and whether it is shared and
    /// file-backed (punch) or anonymous (pageout).
    public init(processID: Int32, map: GuestRAMMap, hostAddressOf: (UInt64) throws -> UInt64) throws {
        self.processID = processID
        do {
            process = SharedDescriptor(try ProcessControl.openDescriptor(forProcess: processID))
        } catch {
            throw ReclaimError("cannot open QEMU process \(processID): \(error)")
        }
        let mappings: [SmapsMapping]
        do {
            mappings = try ProcFiles.maps(of: .id(processID)).mappings
        } catch {
            throw ReclaimError("cannot read /proc/\(processID)/maps: \(error)")
        }
        var backings: [String: RAMBlockBacking] = [:]
        for block in map.blocks {
            let segments = map.segments.filter { $0.block == block }
            let first = segments[0]
            let address = try hostAddressOf(first.guestPhysicalStart)
            guard address >= first.blockOffset else { throw ReclaimError("QEMU put block \(block) at an impossible address") }
            let base = address - first.blockOffset
            let length = segments.map { $0.blockOffset + $0.length }.max() ?? 0
            guard let mapping = mappings.first(where: { $0.start <= base && base + length <= $0.end }) else {
                throw ReclaimError("no single mapping of QEMU \(processID) holds block \(block) (\(length >> 20) MiB at 0x\(String(base, radix: 16)))")
            }
            var backing = RAMBlockBacking(block: block, hostAddress: base, length: length, method: .pageout,
                                          filePath: nil, fileOffset: 0)
            if mapping.permissions.shared, mapping.inode != 0 {
                let (path, file) = try Self.openFile(ofProcess: processID, inode: mapping.inode, block: block)
                backing.method = .punch
                backing.filePath = path
                backing.fileOffset = mapping.offset + (base - mapping.start)
                files[block] = file
            }
            backings[block] = backing
        }
        self.backings = backings
    }

    /// The descriptor of QEMU's that names the file with `inode`, opened anew for writing.
    private static func openFile(ofProcess processID: Int32, inode: UInt64, block: String) throws -> (String, SharedDescriptor) {
        let directory = "/proc/\(processID)/fd"
        let entries: [String]
        do {
            entries = try FileSystem.listDirectory(directory)
        } catch {
            throw ReclaimError("cannot list \(directory): \(error)")
        }
        for entry in entries {
            let path = "\(directory)/\(entry)"
            guard let status = try? FileSystem.status(ofPath: path), status.kind == .regular, status.inode == inode else { continue }
            do {
                return (path, SharedDescriptor(try FileDescriptor.open(path, .readWrite)))
            } catch {
                throw ReclaimError("cannot open \(path), the file behind block \(block): \(error)")
            }
        }
        throw ReclaimError("QEMU \(processID) maps block \(block) shared from inode \(inode) but holds no descriptor for it")
    }

    /// Methods in use, for logs and status ("punch", "pageout", "punch+pageout").
    public var methodSummary: String {
        Set(backings.values.map(\.method.rawValue)).sorted().joined(separator: "+")
    }

    /// Bytes of host memory the guest-RAM files hold (punch blocks only; nil when there are none).
    public func fileAllocatedBytes() -> UInt64? {
        guard !files.isEmpty else { return nil }
        var total: UInt64 = 0
        for file in files.values {
            if let status = try? file.descriptor.status() { total += UInt64(max(status.allocatedBytes, 0)) }
        }
        return total
    }

    /// Reclaims the memory behind `extents` (already checked against the map by the session). Without
    /// `pageOut`, anonymous extents are left to KSM: their zero-filled pages go to the kernel's zero page
    /// when ksmd passes (the VM's RAM is mergeable and the host has no swap to page them out to).
    public func reclaim(_ extents: [BlockExtent], pageOut pagingOut: Bool = true) throws(ReclaimError) -> ReclaimOutcome {
        var requested: UInt64 = 0
        var freed: UInt64 = 0
        var pageout: [AddressRange] = []
        var punchedBefore: [String: Int64] = [:]
        for extent in extents {
            guard let backing = backings[extent.block] else { throw ReclaimError("no backing for block \(extent.block)") }
            guard extent.offset + extent.length <= backing.length else {
                throw ReclaimError("extent \(extent.offset)+\(extent.length) past the end of block \(extent.block)")
            }
            requested += extent.length
            switch backing.method {
            case .punch:
                guard let file = files[extent.block] else { throw ReclaimError("no file for block \(extent.block)") }
                if punchedBefore[extent.block] == nil {
                    punchedBefore[extent.block] = (try? file.descriptor.status().allocatedBytes) ?? 0
                }
                do {
                    try file.descriptor.punchHole(offset: Int64(backing.fileOffset + extent.offset), length: Int64(extent.length))
                } catch {
                    throw ReclaimError("punching \(extent.length) bytes of block \(extent.block) at \(extent.offset): \(error)")
                }
            case .pageout:
                if pagingOut { pageout.append(AddressRange(start: backing.hostAddress + extent.offset, length: extent.length)) }
            }
        }
        for (block, before) in punchedBefore {
            let after = (try? files[block]?.descriptor.status().allocatedBytes) ?? before
            freed += UInt64(max(before - after, 0))
        }
        if !pageout.isEmpty { freed += try pageOut(pageout) }
        return ReclaimOutcome(requestedBytes: requested, freedBytes: freed)
    }

    /// Guest RAM as QEMU's /proc/<pid>/smaps shows it now: the Rss, Swap and Referenced of the mappings
    /// that hold guest RAM blocks.
    public func guestRAMFigures() throws -> GuestRAMFigures {
        let ranges = backings.values.map { ($0.hostAddress, $0.hostAddress + $0.length) }
        var figures = GuestRAMFigures()
        try ProcFiles.forEachSmapsMapping(of: .id(processID)) { mapping in
            if ranges.contains(where: { mapping.start < $0.1 && $0.0 < mapping.end }) {
                figures.residentBytes += mapping.rss
                figures.swappedBytes += mapping.swap
                figures.referencedBytes += mapping.referenced
                figures.proportionalBytes += mapping.pss
                if mapping.vmFlags.contains("mg") { figures.mergeable = true }
            }
            return true
        }
        return figures
    }

    /// Where guest RAM is for the `RandomPageout` swapper: QEMU's address ranges of each block.
    public var hostRanges: [AddressRange] {
        backings.values.sorted { $0.hostAddress < $1.hostAddress }.map { AddressRange(start: $0.hostAddress, length: $0.length) }
    }

    /// `process_madvise(MADV_PAGEOUT)` over `ranges` of QEMU's memory (guest RAM the caller chose): content
    /// is kept, in host swap. Returns the bytes the kernel advised.
    public func pageOut(_ ranges: [AddressRange]) throws(ReclaimError) -> UInt64 {
        var advised: UInt64 = 0
        var index = 0
        while index < ranges.count {
            let chunk = Array(ranges[index..<min(index + ProcessControl.maximumRangesPerAdvice, ranges.count)])
            do {
                advised += UInt64(try ProcessControl.adviseMemory(ofProcess: process.descriptor, ranges: chunk, advice: .pageOut))
            } catch {
                throw ReclaimError("paging out \(chunk.count) ranges of QEMU \(processID): \(error)")
            }
            index += chunk.count
        }
        return advised
    }
}

/// Guest RAM in QEMU's smaps, bytes.
public struct GuestRAMFigures: Equatable, Sendable {
    public var residentBytes: UInt64 = 0
    public var swappedBytes: UInt64 = 0
    /// Touched since the accessed bits were last cleared (`ProcFiles.clearReferencedBits`).
    public var referencedBytes: UInt64 = 0
    /// Pss: resident pages, each divided by the number of mappings that share it. A KSM page merged from
    /// n guests' pages counts 1/n here, so resident − proportional is what sharing saves this VM.
    public var proportionalBytes: UInt64 = 0
    /// Guest RAM is marked for KSM (VmFlags "mg": QEMU's mem-merge on anonymous RAM).
    public var mergeable = false
    public init() {}

    /// What sharing saves this VM besides the zero page: its resident pages less its proportional share.
    public var sharingSavedBytes: UInt64 { residentBytes > proportionalBytes ? residentBytes - proportionalBytes : 0 }
}

/// Guest RAM's figures between two smaps reads, from QEMU's /proc/<pid>/status counters.
///
/// smaps walks every page table of QEMU (20 ms per GiB of guest RAM here: `make bench-sampling`), status
/// reads the kernel's per-process counters (microseconds). So smaps is read once per sampling period, and
/// every round while the host is short of memory or swapping the VM; in between, resident guest RAM is
/// QEMU's RssAnon + RssShmem less what QEMU held beside guest RAM at the last smaps read (its heap, TCG's
/// buffers, other shared memory), which moves little in a few seconds. Swap cannot be followed so (a
/// memfd's pages in swap are no swap entries in QEMU's page tables, so VmSwap misses them): it keeps its
/// last smaps figure until the next read.
public struct GuestRAMCounterCalibration: Equatable, Sendable {
    /// QEMU's counters less guest RAM's resident bytes, at the last smaps read (may be negative: counters
    /// and smaps are read a moment apart).
    public private(set) var residentOffset: Int64

    /// Calibrates from an smaps read and the status counters read right after it.
    public init(figures: GuestRAMFigures, status: ProcessStatus) {
        residentOffset = Int64(clamping: Self.counter(status)) - Int64(clamping: figures.residentBytes)
    }

    /// The figures now from `status`, with the swap and referenced figures of the last smaps read.
    public func estimate(status: ProcessStatus, last: GuestRAMFigures) -> GuestRAMFigures {
        var figures = last
        let resident = Int64(clamping: Self.counter(status)) - residentOffset
        figures.residentBytes = resident > 0 ? UInt64(resident) : 0
        // Pages that came or went since the smaps read are taken as unshared: the proportional figure moves
        // with the resident one, so the saving stays as last measured.
        let moved = Int64(clamping: figures.residentBytes) - Int64(clamping: last.residentBytes)
        let proportional = Int64(clamping: last.proportionalBytes) + moved
        figures.proportionalBytes = proportional > 0 ? min(UInt64(proportional), figures.residentBytes) : 0
        return figures
    }

    static func counter(_ status: ProcessStatus) -> UInt64 {
        let (sum, overflow) = status.rssAnon.addingReportingOverflow(status.rssShmem)
        return overflow ? .max : sum
    }
}
