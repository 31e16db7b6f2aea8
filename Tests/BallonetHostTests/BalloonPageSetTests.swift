import Testing
import BallonetHost
import BallonetWire

@Suite struct BalloonPageSetTests {
    func list(_ pairs: (UInt64, UInt64)...) throws -> PFNRangeList {
        try PFNRangeList(validating: pairs.map { PFNRange(start: $0.0, count: $0.1) })
    }

    func ranges(_ pairs: (UInt64, UInt64)...) -> [PFNRange] { pairs.map { PFNRange(start: $0.0, count: $0.1) } }

    @Test func startsEmpty() throws {
        let set = BalloonPageSet()
        #expect(set.ranges.isEmpty)
        #expect(set.pageCount == 0)
        #expect(set.firstOverlap(with: try list((0, 100))) == nil)
    }

    @Test func insertKeepsRangesSortedAndCountsPages() throws {
        var set = BalloonPageSet()
        set.insert(try list((100, 10)))
        set.insert(try list((10, 5), (300, 1)))
        set.insert(try list((200, 20)))
        #expect(set.ranges == ranges((10, 5), (100, 10), (200, 20), (300, 1)))
        #expect(set.pageCount == 36)
    }

    @Test func insertMergesWithNeighbours() throws {
        var set = BalloonPageSet()
        set.insert(try list((10, 10), (30, 10)))
        // Fills the gap exactly: predecessor, new range and successor become one.
        set.insert(try list((20, 10)))
        #expect(set.ranges == ranges((10, 30)))
        // Touching the end and the start merge too.
        set.insert(try list((40, 5)))
        set.insert(try list((5, 5)))
        #expect(set.ranges == ranges((5, 40)))
        #expect(set.pageCount == 40)
        // A gap of one page does not merge.
        set.insert(try list((46, 1)))
        #expect(set.ranges == ranges((5, 40), (46, 1)))
        #expect(set.pageCount == 41)
    }

    @Test func firstOverlapFindsSharedPages() throws {
        var set = BalloonPageSet()
        set.insert(try list((100, 10), (200, 10)))
        #expect(set.firstOverlap(with: try list((0, 100))) == nil)           // ends where the set starts
        #expect(set.firstOverlap(with: try list((110, 90))) == nil)          // the gap exactly
        #expect(set.firstOverlap(with: try list((210, 5))) == nil)           // just past the end
        #expect(set.firstOverlap(with: try list((0, 101))) == PFNRange(start: 0, count: 101))
        #expect(set.firstOverlap(with: try list((109, 1))) == PFNRange(start: 109, count: 1))
        #expect(set.firstOverlap(with: try list((150, 100))) == PFNRange(start: 150, count: 100))  // covers a whole range
        #expect(set.firstOverlap(with: try list((0, 5), (205, 1), (300, 1))) == PFNRange(start: 205, count: 1))
        #expect(set.firstOverlap(with: try list((0, 5), (120, 1), (209, 2))) == PFNRange(start: 209, count: 2))
    }

    @Test func removeSplitsOnPartialRemoval() throws {
        var set = BalloonPageSet()
        set.insert(try list((100, 100)))
        // Out of the middle: two pieces remain.
        #expect(set.remove(try list((140, 20))) == 20)
        #expect(set.ranges == ranges((100, 40), (160, 40)))
        #expect(set.pageCount == 80)
        // The head of one piece and the tail of the other, with pages outside the set around them.
        #expect(set.remove(try list((90, 15), (190, 50))) == 15)
        #expect(set.ranges == ranges((105, 35), (160, 30)))
        #expect(set.pageCount == 65)
    }

    @Test func removeAcrossSeveralRanges() throws {
        var set = BalloonPageSet()
        set.insert(try list((0, 10), (20, 10), (40, 10), (60, 10)))
        // One range that cuts the first, swallows two, and cuts the last.
        #expect(set.remove(try list((5, 60))) == 5 + 10 + 10 + 5)
        #expect(set.ranges == ranges((0, 5), (65, 5)))
        #expect(set.pageCount == 10)
    }

    @Test func removeOfUnknownPagesChangesNothing() throws {
        var set = BalloonPageSet()
        set.insert(try list((100, 10)))
        #expect(set.remove(try list((0, 100), (110, 50))) == 0)
        #expect(set.ranges == ranges((100, 10)))
        #expect(set.pageCount == 10)
        #expect(set.remove(PFNRangeList()) == 0)
    }

    @Test func removeEverythingAndRemoveAll() throws {
        var set = BalloonPageSet()
        set.insert(try list((100, 10), (200, 10)))
        #expect(set.remove(try list((0, 1000))) == 20)
        #expect(set.ranges.isEmpty)
        #expect(set.pageCount == 0)
        set.insert(try list((5, 5)))
        set.removeAll()
        #expect(set.ranges.isEmpty)
        #expect(set.pageCount == 0)
    }

    /// Inserts and removes at random and compares with a plain set of PFNs.
    @Test func matchesASetOfPages() throws {
        var generator = SplitMix64(seed: 0xba11_0e7)
        var set = BalloonPageSet()
        var model = Set<UInt64>()
        for _ in 0..<400 {
            var pfns: [UInt64] = []
            let start = generator.next() % 480
            for pfn in start..<(start + 1 + generator.next() % 24) where generator.next() % 4 != 0 { pfns.append(pfn) }
            let change = try PFNRangeList.coalescing(pfns: pfns)
            if generator.next() % 3 == 0 {
                let held = UInt64(pfns.filter { model.contains($0) }.count)
                #expect(set.remove(change) == held)
                model.subtract(pfns)
            } else if set.firstOverlap(with: change) == nil {
                #expect(pfns.allSatisfy { !model.contains($0) })
                set.insert(change)
                model.formUnion(pfns)
            } else {
                #expect(pfns.contains { model.contains($0) })
            }
            #expect(set.pageCount == UInt64(model.count))
            // Canonical: sorted, non-empty, neither overlapping nor touching, and the same pages.
            #expect(throws: Never.self) { try PFNRangeList(validating: set.ranges) }
            #expect(Set(set.ranges.flatMap { $0.start..<$0.end }) == model)
        }
    }
}

/// A small deterministic generator, so a failure repeats.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
