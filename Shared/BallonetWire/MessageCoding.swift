/// Payload layouts. All integers are little-endian; PFNs and page counts inside range lists are
/// unsigned LEB128. After a message's fixed fields come zero or more extension fields, which a
/// receiver that does not know them skips (see docs/PROTOCOL.md, "Versioning and capabilities").

/// An optional field a later revision may append to any message: a tag, then up to 65535 bytes.
public struct WireExtension: Hashable, Sendable {
    public var tag: UInt16
    public var value: [UInt8]
    public init(tag: UInt16, value: [UInt8]) {
        self.tag = tag
        self.value = value
    }
}

extension Message {
    func encodePayload(into w: inout ByteWriter) throws(EncodeError) {
        switch self {
        case .hello(let m):
            guard m.minVersion <= m.maxVersion else { throw .invalidValue(field: "min version", value: UInt64(m.minVersion)) }
            guard m.sessionID != 0 else { throw .invalidValue(field: "session id", value: 0) }
            try checkPages(m.balloonPages, "balloon pages")
            w.u8(m.role.rawValue)
            w.u8(m.minVersion)
            w.u8(m.maxVersion)
            w.u64(m.sessionID)
            w.u64(m.capabilities.rawValue)
            w.u64(m.balloonPages)
            w.text(try checkedText(m.softwareVersion, "software version"))
        case .setTarget(let m):
            try checkPages(m.balloonPages, "balloon pages")
            w.u64(m.balloonPages)
        case .inflateReport(let m):
            guard m.pageOrder <= WireLimits.maxPageOrder else {
                throw .invalidValue(field: "page order", value: UInt64(m.pageOrder))
            }
            try checkPages(m.balloonPagesAfter, "balloon pages after")
            w.u64(m.hostSessionID)
            w.u64(m.batchID)
            w.u8(m.pageOrder)
            w.u64(m.balloonPagesAfter)
            try encodeRanges(m.ranges, into: &w)
        case .reclaimAck(let m):
            w.u64(m.hostSessionID)
            w.u64(m.batchID)
            w.u64(m.reclaimedPages)
        case .reclaimDeclined(let m):
            w.u64(m.hostSessionID)
            w.u64(m.batchID)
            w.u8(m.reason.rawValue)
        case .deflateReport(let m):
            try checkPages(m.balloonPagesAfter, "balloon pages after")
            w.u8(m.reason.rawValue)
            w.u64(m.balloonPagesAfter)
            try encodeRanges(m.ranges, into: &w)
        case .statsSample(let m):
            guard m.entries.count <= WireLimits.maxStatEntries else { throw .tooManyStats(count: m.entries.count) }
            var seen = Set<StatKey>()
            for entry in m.entries where !seen.insert(entry.key).inserted {
                throw .duplicateStat(key: entry.key.rawValue)
            }
            w.u64(m.sequence)
            w.u64(m.guestMillis)
            w.u32(m.periodMillis)
            w.u16(UInt16(m.entries.count))
            for entry in m.entries {
                w.u16(entry.key.rawValue)
                w.u64(entry.value)
            }
        case .error(let m):
            w.u16(m.code.rawValue)
            w.text(try checkedText(m.message, "error message"))
        case .ping(let m):
            w.u64(m.nonce)
        case .pong(let m):
            w.u64(m.nonce)
        case .goodbye(let m):
            w.u8(m.reason.rawValue)
            w.text(try checkedText(m.message, "goodbye message"))
        }
    }

    static func decodePayload(type: MessageType, from r: inout ByteReader) throws(PayloadError) -> Message {
        let message: Message
        switch type {
        case .hello:
            let rawRole = try r.u8("role")
            guard let role = PeerRole(rawValue: rawRole) else { throw .invalidValue(field: "role", value: UInt64(rawRole)) }
            let minVersion = try r.u8("min version")
            let maxVersion = try r.u8("max version")
            guard minVersion <= maxVersion else { throw .invalidValue(field: "min version", value: UInt64(minVersion)) }
            let sessionID = try r.u64("session id")
            guard sessionID != 0 else { throw .invalidValue(field: "session id", value: 0) }
            let capabilities = Capabilities(rawValue: try r.u64("capabilities"))
            let balloonPages = try r.u64("balloon pages")
            guard balloonPages <= WireLimits.pfnLimit else { throw .invalidValue(field: "balloon pages", value: balloonPages) }
            let software = try r.text("software version")
            message = .hello(Hello(role: role, minVersion: minVersion, maxVersion: maxVersion, sessionID: sessionID,
                                   capabilities: capabilities, softwareVersion: software, balloonPages: balloonPages))
        case .setTarget:
            let pages = try r.u64("balloon pages")
            guard pages <= WireLimits.pfnLimit else { throw .invalidValue(field: "balloon pages", value: pages) }
            message = .setTarget(SetTarget(balloonPages: pages))
        case .inflateReport:
            let session = try r.u64("host session id")
            let batch = try r.u64("batch id")
            let order = try r.u8("page order")
            guard order <= WireLimits.maxPageOrder else { throw .invalidValue(field: "page order", value: UInt64(order)) }
            let after = try r.u64("balloon pages after")
            guard after <= WireLimits.pfnLimit else { throw .invalidValue(field: "balloon pages after", value: after) }
            message = .inflateReport(InflateReport(hostSessionID: session, batchID: batch, pageOrder: order,
                                                   balloonPagesAfter: after, ranges: try decodeRanges(from: &r)))
        case .reclaimAck:
            message = .reclaimAck(ReclaimAck(hostSessionID: try r.u64("host session id"), batchID: try r.u64("batch id"),
                                             reclaimedPages: try r.u64("reclaimed pages")))
        case .reclaimDeclined:
            message = .reclaimDeclined(ReclaimDeclined(hostSessionID: try r.u64("host session id"),
                                                       batchID: try r.u64("batch id"),
                                                       reason: DeclineReason(rawValue: try r.u8("reason"))))
        case .deflateReport:
            let reason = DeflateReason(rawValue: try r.u8("reason"))
            let after = try r.u64("balloon pages after")
            guard after <= WireLimits.pfnLimit else { throw .invalidValue(field: "balloon pages after", value: after) }
            message = .deflateReport(DeflateReport(reason: reason, balloonPagesAfter: after, ranges: try decodeRanges(from: &r)))
        case .statsSample:
            let sequence = try r.u64("sequence")
            let millis = try r.u64("guest millis")
            let period = try r.u32("period millis")
            let count = Int(try r.u16("entry count"))
            guard count <= WireLimits.maxStatEntries else { throw .tooManyStats(count: count) }
            var entries: [StatEntry] = []
            entries.reserveCapacity(count)
            var seen = Set<UInt16>()
            for _ in 0..<count {
                let key = try r.u16("stat key")
                guard seen.insert(key).inserted else { throw .duplicateStat(key: key) }
                entries.append(StatEntry(StatKey(rawValue: key), try r.u64("stat value")))
            }
            message = .statsSample(StatsSample(sequence: sequence, guestMillis: millis, periodMillis: period, entries: entries))
        case .error:
            message = .error(ErrorReport(code: ErrorCode(rawValue: try r.u16("code")), message: try r.text("error message")))
        case .ping:
            message = .ping(Ping(nonce: try r.u64("nonce")))
        case .pong:
            message = .pong(Pong(nonce: try r.u64("nonce")))
        case .goodbye:
            message = .goodbye(Goodbye(reason: GoodbyeReason(rawValue: try r.u8("reason")), message: try r.text("goodbye message")))
        }
        try skipExtensions(from: &r)
        return message
    }
}

/// A page count: at most the whole PFN space.
private func checkPages(_ pages: UInt64, _ field: String) throws(EncodeError) {
    guard pages <= WireLimits.pfnLimit else { throw .invalidValue(field: field, value: pages) }
}

private func checkedText(_ text: String, _ field: String) throws(EncodeError) -> [UInt8] {
    let utf8 = Array(text.utf8)
    guard utf8.count <= WireLimits.maxTextBytes else { throw .textTooLong(field: field, bytes: utf8.count) }
    return utf8
}

/// Range list: a u32 count, then each range as LEB128 start and LEB128 count.
private func encodeRanges(_ list: PFNRangeList, into w: inout ByteWriter) throws(EncodeError) {
    guard !list.isEmpty else { throw .invalidValue(field: "range count", value: 0) }
    guard list.count <= WireLimits.maxRangesPerMessage else { throw .badRanges(.tooMany(count: list.count)) }
    w.u32(UInt32(list.count))
    for range in list {
        w.uleb128(range.start)
        w.uleb128(range.count)
    }
}

private func decodeRanges(from r: inout ByteReader) throws(PayloadError) -> PFNRangeList {
    let count = Int(try r.u32("range count"))
    guard count > 0 else { throw .invalidValue(field: "range count", value: 0) }
    guard count <= WireLimits.maxRangesPerMessage else { throw .badRanges(.tooMany(count: count)) }
    // Each range takes at least two bytes: never reserve more than the payload could hold.
    guard count <= r.remaining / 2 else { throw .truncated(field: "ranges") }
    var ranges: [PFNRange] = []
    ranges.reserveCapacity(count)
    for index in 0..<count {
        let range = PFNRange(start: try r.uleb128("range start"), count: try r.uleb128("range count"))
        do {
            try PFNRangeList.check(range, at: index, after: ranges.last)
        } catch {
            throw .badRanges(error)
        }
        ranges.append(range)
    }
    return PFNRangeList(checked: ranges)
}

private func skipExtensions(from r: inout ByteReader) throws(PayloadError) {
    var count = 0
    while !r.isAtEnd {
        guard r.remaining >= 4 else { throw .truncatedExtension }
        count += 1
        guard count <= WireLimits.maxExtensions else { throw .tooManyExtensions }
        _ = try r.u16("extension tag")
        let length = Int(try r.u16("extension length"))
        guard length <= r.remaining else { throw .truncatedExtension }
        _ = try r.raw(length, "extension value")
    }
}

extension WireExtension {
    static func encode(_ extensions: [WireExtension], into w: inout ByteWriter) throws(EncodeError) {
        guard extensions.count <= WireLimits.maxExtensions else { throw .tooManyExtensions(count: extensions.count) }
        for ext in extensions {
            guard ext.value.count <= Int(UInt16.max) else { throw .extensionTooLong(tag: ext.tag, bytes: ext.value.count) }
            w.u16(ext.tag)
            w.u16(UInt16(ext.value.count))
            w.bytes.append(contentsOf: ext.value)
        }
    }
}
