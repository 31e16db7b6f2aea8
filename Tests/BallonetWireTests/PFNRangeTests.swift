import Testing
@testable import BallonetWire

@Suite struct PFNRangeTests {
    @Test func coalescingPFNsGivesTheCanonicalList() throws {
        let list = try PFNRangeList.coalescing(pfns: [9, 3, 4, 5, 5, 10, 20, 2])
        #expect(list.ranges == [PFNRange(start: 2, count: 4), PFNRange(start: 9, count: 2), PFNRange(start: 20, count: 1)])
        #expect(list.pageCount == 7)
        #expect(throws: PFNRangeError.overflow(index: 1)) { try PFNRangeList.coalescing(pfns: [1, WireLimits.pfnLimit]) }
    }

    @Test func coalescingRangesMergesOverlapsAndNeighbours() throws {
        let list = try PFNRangeList.coalescing(ranges: [PFNRange(start: 10, count: 5), PFNRange(start: 0, count: 2),
                                                        PFNRange(start: 12, count: 10), PFNRange(start: 22, count: 1),
                                                        PFNRange(start: 40, count: 0)])
        #expect(list.ranges == [PFNRange(start: 0, count: 2), PFNRange(start: 10, count: 13)])
        #expect(throws: PFNRangeError.overflow(index: 0)) { try PFNRangeList.coalescing(ranges: [PFNRange(start: .max, count: 1)]) }
    }

    @Test func validationNamesTheFirstBadRange() {
        #expect(throws: PFNRangeError.unsorted(index: 2)) {
            try PFNRangeList(validating: [PFNRange(start: 1, count: 1), PFNRange(start: 5, count: 1), PFNRange(start: 0, count: 1)])
        }
        #expect(throws: PFNRangeError.empty(index: 0)) { try PFNRangeList(validating: [PFNRange(start: 1, count: 0)]) }
    }

    @Test func chunkingKeepsOrderAndLimit() throws {
        let list = try PFNRangeList(validating: (0..<10).map { PFNRange(start: $0 * 3, count: 1) })
        let chunks = list.chunked(maxRanges: 4)
        #expect(chunks.map(\.count) == [4, 4, 2])
        #expect(chunks.flatMap(\.ranges) == list.ranges)
    }
}

@Suite struct HandshakeTests {
    let guest = Hello(role: .guest, minVersion: 1, maxVersion: 3, sessionID: 11, capabilities: [.hugePages], softwareVersion: "0.3.0")
    let host = Hello(role: .host, minVersion: 1, maxVersion: 2, sessionID: 22, capabilities: [.reclaim], softwareVersion: "0.2.0")

    @Test func bothSidesAgreeOnTheHighestCommonVersionAndTheHostSession() throws {
        let onGuest = try negotiate(local: guest, remote: host).get()
        let onHost = try negotiate(local: host, remote: guest).get()
        #expect(onGuest.version == 2 && onHost.version == 2)
        #expect(onGuest.hostSessionID == 22 && onHost.hostSessionID == 22)
        #expect(onGuest.remoteCapabilities == [.reclaim] && onHost.remoteCapabilities == [.hugePages])
    }

    @Test func disjointVersionsFailWithAClearMessage() {
        var old = host
        old.minVersion = 4
        old.maxVersion = 5
        guard case .failure(let error) = negotiate(local: guest, remote: old) else {
            Issue.record("versions 1–3 and 4–5 must not agree")
            return
        }
        #expect(error.code == .incompatibleVersion)
        #expect(error.description.contains("1–3") && error.description.contains("4–5") && error.description.contains("0.2.0"))
    }

    @Test func twoGuestsOnOnePortAreRefused() {
        #expect(throws: HandshakeError.sameRole(.guest)) { try negotiate(local: guest, remote: guest).get() }
    }
}
