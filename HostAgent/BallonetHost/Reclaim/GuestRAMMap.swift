import BallonetWire

/// One stretch of guest-physical address space that is guest RAM, as QEMU's flat memory view has it.
public struct GuestRAMSegment: Hashable, Sendable {
    /// First guest-physical byte.
    public var guestPhysicalStart: UInt64
    /// Bytes.
    public var length: UInt64
    /// The RAM block (memory region) behind it: the memory backend's id (`ram0`, libvirt's `pc.ram`).
    public var block: String
    /// Where in that block the stretch starts.
    public var blockOffset: UInt64

    public init(guestPhysicalStart: UInt64, length: UInt64, block: String, blockOffset: UInt64) {
        self.guestPhysicalStart = guestPhysicalStart
        self.length = length
        self.block = block
        self.blockOffset = blockOffset
    }

    public var guestPhysicalEnd: UInt64 { guestPhysicalStart + length }
}

/// A piece of a reported PFN range, placed in its RAM block: what reclaim acts on.
public struct BlockExtent: Hashable, Sendable {
    public var block: String
    public var offset: UInt64
    public var length: UInt64
}

/// Why a guest's report cannot be placed in its RAM (safety invariant 6: never acted on).
public enum RAMMapError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Part of the range is not guest RAM (a hole, device memory, ROM, or past the end).
    case outsideGuestRAM(PFNRange)
    /// The range's byte address does not fit 64 bits (only a hostile report gets here).
    case addressOverflow(PFNRange)

    public var description: String {
        switch self {
        case .outsideGuestRAM(let range): "pages \(range) are not all guest RAM"
        case .addressOverflow(let range): "pages \(range) lie past the end of the address space"
        }
    }
}

/// The guest-physical → RAM-block map of one VM, read from QMP `human-monitor-command "info mtree -f"`.
///
/// Only regions of kind `ram` whose block is guest RAM count: ROM, device RAM (VGA memory, option ROMs) and
/// I/O never hold balloon pages, so a report that names them is refused, never reclaimed.
public struct GuestRAMMap: Hashable, Sendable {
    public static let pageSize: UInt64 = 4096
    /// Sorted by guest-physical address, non-overlapping.
    public let segments: [GuestRAMSegment]

    public init(segments: [GuestRAMSegment]) {
        self.segments = segments.sorted { $0.guestPhysicalStart < $1.guestPhysicalStart }
    }

    /// Bytes of guest RAM in the map.
    public var totalBytes: UInt64 { segments.reduce(0) { $0 + $1.length } }

    /// The blocks the map names, in order of first appearance.
    public var blocks: [String] {
        var seen: [String] = []
        for segment in segments where !seen.contains(segment.block) { seen.append(segment.block) }
        return seen
    }

    /// Places every page of `ranges` in its block, or throws for the first page that is not guest RAM:
    /// all or nothing, so a report is acted on whole or not at all. Adjacent pieces of one block merge.
    public func extents(of ranges: PFNRangeList) throws(RAMMapError) -> [BlockExtent] {
        var extents: [BlockExtent] = []
        for range in ranges {
            let (start, startOverflow) = range.start.multipliedReportingOverflow(by: Self.pageSize)
            let (length, lengthOverflow) = range.count.multipliedReportingOverflow(by: Self.pageSize)
            let (end, endOverflow) = start.addingReportingOverflow(length)
            guard !startOverflow, !lengthOverflow, !endOverflow else { throw .addressOverflow(range) }
            var cursor = start
            // Segments are sorted: find the first that ends past the cursor, then walk on.
            var index = firstSegment(endingAfter: cursor)
            while cursor < end {
                guard index < segments.count else { throw .outsideGuestRAM(range) }
                let segment = segments[index]
                guard segment.guestPhysicalStart <= cursor, cursor < segment.guestPhysicalEnd else {
                    throw .outsideGuestRAM(range)
                }
                let pieceEnd = min(end, segment.guestPhysicalEnd)
                let offset = segment.blockOffset + (cursor - segment.guestPhysicalStart)
                let length = pieceEnd - cursor
                if let last = extents.last, last.block == segment.block, last.offset + last.length == offset {
                    extents[extents.count - 1].length += length
                } else {
                    extents.append(BlockExtent(block: segment.block, offset: offset, length: length))
                }
                cursor = pieceEnd
                index += 1
            }
        }
        return extents
    }

    private func firstSegment(endingAfter address: UInt64) -> Int {
        var low = 0, high = segments.count
        while low < high {
            let middle = (low + high) / 2
            if segments[middle].guestPhysicalEnd <= address { low = middle + 1 } else { high = middle }
        }
        return low
    }
}

/// Why `info mtree -f` output could not be read.
public struct MemoryTreeParseError: Error, Hashable, Sendable, CustomStringConvertible {
    public let description: String
}

extension GuestRAMMap {
    /// Reads the flat view of address space "memory" from `info mtree -f` output, keeping the `ram`
    /// regions of the blocks in `guestRAMBlocks` (the memory backends' ids from `query-memdev`; QEMU
    /// without a backend calls its RAM `pc.ram`).
    ///
    /// The lines it reads look like
    /// `  0000000000100000-000000001fffffff (prio 0, ram): ram0 @0000000000100000 KVM`.
    public static func parse(memoryTree text: String, guestRAMBlocks: Set<String>) throws(MemoryTreeParseError) -> GuestRAMMap {
        var inMemoryView = false
        var found = false
        var segments: [GuestRAMSegment] = []
        // HMP ends lines with "\r\n", which Swift reads as one Character: split on any newline.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            let line = rawLine.trimmingSuffix { $0 == "\r" || $0 == " " }
            if line.hasPrefix("FlatView") {
                if found && inMemoryView { break }
                inMemoryView = false
                continue
            }
            if line.contains("AS \"memory\"") {
                inMemoryView = true
                found = true
                continue
            }
            guard inMemoryView, let region = parseRegion(line) else { continue }
            guard region.kind == "ram", guestRAMBlocks.contains(region.name) else { continue }
            guard region.end >= region.start, region.start % pageSize == 0, (region.end &+ 1) % pageSize == 0 else {
                throw MemoryTreeParseError(description: "guest RAM region \(region.name) is not page-aligned: \(line)")
            }
            segments.append(GuestRAMSegment(guestPhysicalStart: region.start, length: region.end - region.start + 1,
                                             block: region.name, blockOffset: region.offset))
        }
        guard found else {
            throw MemoryTreeParseError(description: "no flat view of address space \"memory\" in the memory tree")
        }
        guard !segments.isEmpty else {
            throw MemoryTreeParseError(
                description: "no guest RAM (blocks \(guestRAMBlocks.sorted().joined(separator: ", "))) in the memory tree")
        }
        let map = GuestRAMMap(segments: segments)
        for (a, b) in zip(map.segments, map.segments.dropFirst()) where a.guestPhysicalEnd > b.guestPhysicalStart {
            throw MemoryTreeParseError(description: "guest RAM regions overlap at 0x\(String(b.guestPhysicalStart, radix: 16))")
        }
        return map
    }

    struct Region {
        var start: UInt64
        var end: UInt64
        var kind: Substring
        var name: String
        var offset: UInt64
    }

    /// `START-END (prio P, KIND): NAME [@OFFSET] [flags]`, or nil for any other line.
    static func parseRegion(_ line: Substring) -> Region? {
        let trimmed = line.drop { $0 == " " }
        guard let dash = trimmed.firstIndex(of: "-"), let open = trimmed.firstIndex(of: "("),
              let close = trimmed.firstIndex(of: ")"), dash < open, open < close,
              let start = UInt64(trimmed[..<dash], radix: 16),
              let end = UInt64(trimmed[trimmed.index(after: dash)..<open].trimmingSuffix { $0 == " " }, radix: 16)
        else { return nil }
        let attributes = trimmed[trimmed.index(after: open)..<close].split(separator: ",").map { $0.drop { $0 == " " } }
        guard let kind = attributes.last else { return nil }
        let rest = trimmed[trimmed.index(after: close)...]
        guard rest.hasPrefix(": ") else { return nil }
        let words = rest.dropFirst(2).split(separator: " ")
        guard let name = words.first else { return nil }
        var offset: UInt64 = 0
        if words.count > 1, words[1].hasPrefix("@") {
            guard let value = UInt64(words[1].dropFirst(), radix: 16) else { return nil }
            offset = value
        }
        return Region(start: start, end: end, kind: kind, name: String(name), offset: offset)
    }
}

extension Substring {
    func trimmingSuffix(while predicate: (Character) -> Bool) -> Substring {
        var result = self
        while let last = result.last, predicate(last) { result = result.dropLast() }
        return result
    }
}
