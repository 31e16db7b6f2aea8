/// Little-endian writer for payloads. Internal: messages encode themselves through it.
struct ByteWriter {
    var bytes: [UInt8]

    init(reservingCapacity capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    mutating func u8(_ value: UInt8) { bytes.append(value) }

    mutating func u16(_ value: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: value))
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
    }

    mutating func u32(_ value: UInt32) {
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    mutating func u64(_ value: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    /// Unsigned LEB128: 7 bits a byte, high bit set on all but the last. PFNs and page counts are small
    /// numbers in big fields, so this keeps an inflate report 3 to 4 times smaller than fixed width.
    mutating func uleb128(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    /// A text field: one length byte, then UTF-8. The caller has checked the length.
    mutating func text(_ utf8: [UInt8]) {
        u8(UInt8(utf8.count))
        bytes.append(contentsOf: utf8)
    }
}

/// Bounds-checked little-endian reader over a payload. Every read that would pass the end throws
/// `PayloadError.truncated(field:)`, naming what was being read.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }
    var isAtEnd: Bool { offset == bytes.count }

    private mutating func take(_ count: Int, _ field: StaticString) throws(PayloadError) -> Int {
        guard count <= remaining else { throw .truncated(field: String(describing: field)) }
        defer { offset += count }
        return offset
    }

    mutating func u8(_ field: StaticString) throws(PayloadError) -> UInt8 {
        bytes[try take(1, field)]
    }

    mutating func u16(_ field: StaticString) throws(PayloadError) -> UInt16 {
        UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(2, field), as: UInt16.self))
    }

    mutating func u32(_ field: StaticString) throws(PayloadError) -> UInt32 {
        UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(4, field), as: UInt32.self))
    }

    mutating func u64(_ field: StaticString) throws(PayloadError) -> UInt64 {
        UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(8, field), as: UInt64.self))
    }

    /// Unsigned LEB128 of at most 10 bytes whose value fits 64 bits; anything else is malformed
    /// (an endless run of continuation bytes must not make the reader loop past the field).
    mutating func uleb128(_ field: StaticString) throws(PayloadError) -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try u8(field)
            let bits = UInt64(byte & 0x7F)
            if shift == 63 && bits > 1 { throw .varintOverflow(field: String(describing: field)) }
            value |= bits << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
            if shift > 63 { throw .varintOverflow(field: String(describing: field)) }
        }
    }

    mutating func raw(_ count: Int, _ field: StaticString) throws(PayloadError) -> UnsafeRawBufferPointer {
        let start = try take(count, field)
        return UnsafeRawBufferPointer(rebasing: bytes[start..<start + count])
    }

    /// A text field: one length byte, then that many bytes of valid UTF-8.
    mutating func text(_ field: StaticString) throws(PayloadError) -> String {
        let length = Int(try u8(field))
        let utf8 = try raw(length, field)
        guard let string = String(validating: utf8, as: UTF8.self) else {
            throw .invalidUTF8(field: String(describing: field))
        }
        return string
    }
}
