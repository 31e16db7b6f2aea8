import BallonetWire

/// The guest pages the host knows to be in a VM's balloon, from this session's inflate and deflate
/// reports: sorted, non-overlapping ranges. It catches a guest that reports a page twice (a hostile or
/// broken guest would otherwise make the host count, and punch, the same memory again).
public struct BalloonPageSet: Hashable, Sendable {
    public private(set) var ranges: [PFNRange] = []
    public private(set) var pageCount: UInt64 = 0

    public init() {}

    /// The index of the first range that ends after `pfn`.
    private func firstIndex(endingAfter pfn: UInt64) -> Int {
        var low = 0, high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].end <= pfn { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// The first range of `list` that shares a page with the set, if any.
    public func firstOverlap(with list: PFNRangeList) -> PFNRange? {
        for range in list {
            let index = firstIndex(endingAfter: range.start)
            if index < ranges.count, ranges[index].start < range.end { return range }
        }
        return nil
    }

    /// Adds pages known not to overlap (check `firstOverlap` first).
    public mutating func insert(_ list: PFNRangeList) {
        for range in list {
            var index = firstIndex(endingAfter: range.start)
            var merged = range
            // Merge with an adjacent predecessor and successor so the set stays small.
            if index > 0, ranges[index - 1].end == merged.start {
                index -= 1
                merged = PFNRange(start: ranges[index].start, count: ranges[index].count + merged.count)
                ranges.remove(at: index)
            }
            if index < ranges.count, ranges[index].start == merged.end {
                merged.count += ranges[index].count
                ranges.remove(at: index)
            }
            ranges.insert(merged, at: index)
            pageCount += range.count
        }
    }

    /// Removes whatever pages of `list` the set holds; returns how many it held.
    @discardableResult
    public mutating func remove(_ list: PFNRangeList) -> UInt64 {
        var removed: UInt64 = 0
        for range in list {
            var index = firstIndex(endingAfter: range.start)
            while index < ranges.count, ranges[index].start < range.end {
                let existing = ranges[index]
                let cutStart = max(existing.start, range.start), cutEnd = min(existing.end, range.end)
                removed += cutEnd - cutStart
                var replacement: [PFNRange] = []
                if existing.start < cutStart { replacement.append(PFNRange(start: existing.start, count: cutStart - existing.start)) }
                if cutEnd < existing.end { replacement.append(PFNRange(start: cutEnd, count: existing.end - cutEnd)) }
                ranges.replaceSubrange(index...index, with: replacement)
                index += replacement.count
            }
        }
        pageCount -= removed
        return removed
    }

    public mutating func removeAll() {
        ranges.removeAll()
        pageCount = 0
    }
}
