/// A run of guest page frames: `count` 4 KiB pages from PFN `start`.
public struct PFNRange: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var count: UInt64

    public init(start: UInt64, count: UInt64) {
        self.start = start
        self.count = count
    }

    /// One past the last PFN. Only meaningful for a range that passed validation (no overflow).
    public var end: UInt64 { start &+ count }

    public var description: String { "[\(start), +\(count))" }
}

/// Why a list of PFN ranges is not acceptable. Each case names the offending range's index.
public enum PFNRangeError: Error, Hashable, Sendable {
    /// A range of zero pages: meaningless, and a cheap way to make the host do work for nothing.
    case empty(index: Int)
    /// start + count overflows, or reaches past `WireLimits.pfnLimit`.
    case overflow(index: Int)
    /// The range starts before the previous one.
    case unsorted(index: Int)
    /// The range starts inside the previous one.
    case overlapping(index: Int)
    /// The range starts exactly where the previous one ends: senders must merge such ranges, so that a
    /// list has one canonical form and its range count is the host's real work.
    case adjacent(index: Int)
    /// More ranges than `WireLimits.maxRangesPerMessage`.
    case tooMany(count: Int)
}

/// Sorted, non-overlapping, non-adjacent, non-empty PFN ranges below `WireLimits.pfnLimit`: the only
/// shape of page list that crosses the wire. The initializer checks it; the coalescing constructors
/// build it from raw PFNs or ranges.
public struct PFNRangeList: Hashable, Sendable, RandomAccessCollection {
    public private(set) var ranges: [PFNRange]

    /// Checks `ranges` against every rule above (but not the per-message count limit, which
    /// is the encoder's and decoder's to apply).
    public init(validating ranges: [PFNRange]) throws(PFNRangeError) {
        for index in ranges.indices {
            try Self.check(ranges[index], at: index, after: index > 0 ? ranges[index - 1] : nil)
        }
        self.ranges = ranges
    }

    /// The empty list.
    public init() { ranges = [] }

    /// Ranges the caller has just run through `check` one by one (the decoder does, as it reads them).
    init(checked ranges: [PFNRange]) { self.ranges = ranges }

    /// Checks one range given its predecessor (already checked). Shared with the decoder, which checks
    /// ranges as it reads them.
    static func check(_ range: PFNRange, at index: Int, after previous: PFNRange?) throws(PFNRangeError) {
        guard range.count > 0 else { throw .empty(index: index) }
        let (end, overflow) = range.start.addingReportingOverflow(range.count)
        guard !overflow, end <= WireLimits.pfnLimit else { throw .overflow(index: index) }
        if let previous {
            if range.start < previous.start { throw .unsorted(index: index) }
            if range.start < previous.end { throw .overlapping(index: index) }
            if range.start == previous.end { throw .adjacent(index: index) }
        }
    }

    /// Builds the canonical list from PFNs in any order, with duplicates allowed (as pagemap reads of a
    /// balloon give them: virtual order, physical PFNs scattered). A PFN at or past `WireLimits.pfnLimit`
    /// is an `overflow` error naming its place in the sorted order.
    public static func coalescing(pfns: [UInt64]) throws(PFNRangeError) -> PFNRangeList {
        var sorted = pfns
        sorted.sort()
        var list = PFNRangeList()
        for (index, pfn) in sorted.enumerated() {
            guard pfn < WireLimits.pfnLimit else { throw .overflow(index: index) }
            if let last = list.ranges.last, pfn < last.end { continue }  // duplicate
            if let last = list.ranges.last, pfn == last.end {
                list.ranges[list.ranges.count - 1].count += 1
            } else {
                list.ranges.append(PFNRange(start: pfn, count: 1))
            }
        }
        return list
    }

    /// Builds the canonical list from ranges in any order that may overlap or touch (empty ones are
    /// dropped). A range that overflows or reaches past `WireLimits.pfnLimit` is an `overflow` error.
    public static func coalescing(ranges input: [PFNRange]) throws(PFNRangeError) -> PFNRangeList {
        let sorted = input.filter { $0.count > 0 }.sorted { $0.start < $1.start }
        var list = PFNRangeList()
        for (index, range) in sorted.enumerated() {
            let (end, overflow) = range.start.addingReportingOverflow(range.count)
            guard !overflow, end <= WireLimits.pfnLimit else { throw .overflow(index: index) }
            if let last = list.ranges.last, range.start <= last.end {
                list.ranges[list.ranges.count - 1].count = Swift.max(last.end, range.end) - last.start
            } else {
                list.ranges.append(range)
            }
        }
        return list
    }

    /// Total pages in the list. Cannot overflow: every range ends below 2^40.
    public var pageCount: UInt64 { ranges.reduce(0) { $0 + $1.count } }

    /// Splits the list into lists of at most `limit` ranges, in order: how a report larger than one
    /// frame allows is sent as several.
    public func chunked(maxRanges limit: Int = WireLimits.maxRangesPerMessage) -> [PFNRangeList] {
        precondition(limit > 0)
        return stride(from: 0, to: ranges.count, by: limit).map { start in
            var chunk = PFNRangeList()
            chunk.ranges = Array(ranges[start..<Swift.min(start + limit, ranges.count)])
            return chunk
        }
    }

    public var startIndex: Int { ranges.startIndex }
    public var endIndex: Int { ranges.endIndex }
    public subscript(position: Int) -> PFNRange { ranges[position] }
}
