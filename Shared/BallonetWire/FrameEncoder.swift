/// Frame layout (little-endian; docs/PROTOCOL.md has the table):
///
///     0  magic "BLNT"        4  version     5  type     6  flags (reserved, 0)
///     8  request id (u32)   12  payload length (u32)
///    16  CRC32C of bytes 0..<16                         20  CRC32C of the payload
///    24  payload
public enum FrameHeader {
    /// "BLNT". A constant start lets a decoder find the next frame after garbage.
    public static let magic: [UInt8] = [0x42, 0x4C, 0x4E, 0x54]
    static let magicWord: UInt32 = 0x544E_4C42  // the magic read as a little-endian u32

    static let versionOffset = 4
    static let typeOffset = 5
    static let flagsOffset = 6
    static let requestIDOffset = 8
    static let lengthOffset = 12
    static let headerChecksumOffset = 16
    static let payloadChecksumOffset = 20
}

/// Turns messages into frames.
public enum FrameEncoder {
    /// One frame carrying `message`. `extensions` are optional trailing fields; a receiver that does not
    /// know them skips them (tests use them to show that older peers tolerate newer ones).
    public static func encode(_ message: Message, requestID: UInt32 = 0,
                              version: UInt8 = WireLimits.currentProtocolVersion,
                              extensions: [WireExtension] = []) throws(EncodeError) -> [UInt8] {
        var frame: [UInt8] = []
        try append(message, requestID: requestID, version: version, extensions: extensions, to: &frame)
        return frame
    }

    /// Appends one frame carrying `message` to `buffer`: the way to batch frames into one write.
    /// On error, `buffer` is left as it was.
    public static func append(_ message: Message, requestID: UInt32 = 0,
                              version: UInt8 = WireLimits.currentProtocolVersion,
                              extensions: [WireExtension] = [], to buffer: inout [UInt8]) throws(EncodeError) {
        var writer = ByteWriter(reservingCapacity: WireLimits.headerLength + 64)
        writer.bytes.append(contentsOf: repeatElement(0, count: WireLimits.headerLength))
        try message.encodePayload(into: &writer)
        try WireExtension.encode(extensions, into: &writer)
        let payloadLength = writer.bytes.count - WireLimits.headerLength
        guard payloadLength <= WireLimits.maxPayloadLength else { throw .payloadTooLong(bytes: payloadLength) }
        writer.bytes.withUnsafeMutableBytes { frame in
            for (offset, byte) in FrameHeader.magic.enumerated() { frame[offset] = byte }
            frame[FrameHeader.versionOffset] = version
            frame[FrameHeader.typeOffset] = message.type.rawValue
            frame.storeBytes(of: UInt16(0), toByteOffset: FrameHeader.flagsOffset, as: UInt16.self)
            frame.storeBytes(of: requestID.littleEndian, toByteOffset: FrameHeader.requestIDOffset, as: UInt32.self)
            frame.storeBytes(of: UInt32(payloadLength).littleEndian, toByteOffset: FrameHeader.lengthOffset, as: UInt32.self)
            let payload = UnsafeRawBufferPointer(rebasing: frame[WireLimits.headerLength...])
            frame.storeBytes(of: CRC32C.checksum(payload).littleEndian,
                             toByteOffset: FrameHeader.payloadChecksumOffset, as: UInt32.self)
            let covered = UnsafeRawBufferPointer(rebasing: frame[0..<FrameHeader.headerChecksumOffset])
            frame.storeBytes(of: CRC32C.checksum(covered).littleEndian,
                             toByteOffset: FrameHeader.headerChecksumOffset, as: UInt32.self)
        }
        buffer.append(contentsOf: writer.bytes)
    }
}
