/// What the decoder says about bytes that are not a good frame. After each error the decoder has
/// already resynchronised: it goes on with the next frame it can trust.
public enum WireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Bytes that do not start with the frame magic where a frame should begin: the stream was cut or
    /// corrupted. The decoder skips to the next magic; how many bytes it skipped is in its statistics.
    case badMagic
    /// A header whose CRC32C does not match: its length cannot be trusted, so the decoder rescans from
    /// the byte after its magic.
    case badHeaderChecksum
    /// A header that is sound but announces a payload over `WireLimits.maxPayloadLength`.
    case oversizeFrame(length: UInt32)
    /// A payload whose CRC32C does not match its header.
    case badPayloadChecksum(type: UInt8, requestID: UInt32)
    /// A frame that ended early: another frame's header starts inside its payload, or the stream ended
    /// (or stalled and was abandoned) with it incomplete. Sizes are of the whole frame, header included;
    /// `expected` is the header's length when not even the header arrived.
    case truncatedFrame(expected: Int, received: Int)
    /// A sound frame of a version this build cannot read. The frame is skipped whole.
    case unsupportedVersion(UInt8)
    /// A sound frame of a type this build does not know. The frame is skipped whole.
    case unknownType(UInt8, requestID: UInt32)
    /// A sound frame whose payload does not parse as its type says.
    case malformedPayload(type: MessageType, requestID: UInt32, PayloadError)

    public var description: String {
        switch self {
        case .badMagic: "bytes without a frame magic (skipped to the next frame)"
        case .badHeaderChecksum: "frame header checksum mismatch"
        case .oversizeFrame(let length):
            "frame announces \(length) payload bytes, over the limit of \(WireLimits.maxPayloadLength)"
        case .badPayloadChecksum(let type, let id): "payload checksum mismatch (type \(type), request \(id))"
        case .truncatedFrame(let expected, let received):
            "truncated frame: \(received) of \(expected) bytes before the stream moved on"
        case .unsupportedVersion(let version):
            "frame version \(version) is not supported (this build reads \(WireLimits.supportedProtocolVersions))"
        case .unknownType(let type, let id): "unknown message type \(type) (request \(id))"
        case .malformedPayload(let type, let id, let error): "malformed \(type) (request \(id)): \(error)"
        }
    }
}

/// The kind of a `WireError`, without its details: what statistics and metrics count.
public enum WireErrorKind: String, CaseIterable, Hashable, Sendable {
    case badMagic, badHeaderChecksum, oversizeFrame, badPayloadChecksum, truncatedFrame
    case unsupportedVersion, unknownType, malformedPayload
}

extension WireError {
    public var kind: WireErrorKind {
        switch self {
        case .badMagic: .badMagic
        case .badHeaderChecksum: .badHeaderChecksum
        case .oversizeFrame: .oversizeFrame
        case .badPayloadChecksum: .badPayloadChecksum
        case .truncatedFrame: .truncatedFrame
        case .unsupportedVersion: .unsupportedVersion
        case .unknownType: .unknownType
        case .malformedPayload: .malformedPayload
        }
    }
}

/// Why a payload does not parse as its message type.
public enum PayloadError: Error, Hashable, Sendable, CustomStringConvertible {
    case truncated(field: String)
    case varintOverflow(field: String)
    case invalidUTF8(field: String)
    case invalidValue(field: String, value: UInt64)
    case badRanges(PFNRangeError)
    case tooManyStats(count: Int)
    case duplicateStat(key: UInt16)
    case tooManyExtensions
    /// Bytes after the last extension that do not form a whole extension field.
    case truncatedExtension

    public var description: String {
        switch self {
        case .truncated(let field): "payload ends inside \(field)"
        case .varintOverflow(let field): "\(field) is not a 64-bit varint"
        case .invalidUTF8(let field): "\(field) is not valid UTF-8"
        case .invalidValue(let field, let value): "\(field) has invalid value \(value)"
        case .badRanges(let error): "bad PFN ranges: \(error)"
        case .tooManyStats(let count): "\(count) stat entries, over the limit of \(WireLimits.maxStatEntries)"
        case .duplicateStat(let key): "stat key \(key) appears twice"
        case .tooManyExtensions: "more than \(WireLimits.maxExtensions) extension fields"
        case .truncatedExtension: "payload ends inside an extension field"
        }
    }
}

/// Why a message cannot be encoded: the encoder applies the receiver's rules, so a well-behaved sender
/// never puts on the wire what its peer would reject.
public enum EncodeError: Error, Hashable, Sendable {
    case textTooLong(field: String, bytes: Int)
    case badRanges(PFNRangeError)
    case tooManyStats(count: Int)
    case duplicateStat(key: UInt16)
    case invalidValue(field: String, value: UInt64)
    case tooManyExtensions(count: Int)
    case extensionTooLong(tag: UInt16, bytes: Int)
    case payloadTooLong(bytes: Int)
}
