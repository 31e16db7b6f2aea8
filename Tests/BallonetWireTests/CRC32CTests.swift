import Testing
@testable import BallonetWire

@Suite struct CRC32CTests {
    @Test func knownVectors() {
        // The check value of CRC-32C, and the iSCSI test vectors of RFC 3720, B.4.
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(CRC32C.checksum([UInt8]()) == 0)
    }

    @Test func updateContinuesAChecksum() {
        var generator = SeededGenerator(seed: 1)
        for _ in 0..<200 {
            let bytes = (0..<Int.random(in: 0..<100, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let split = Int.random(in: 0...bytes.count, using: &generator)
            let first = CRC32C.checksum(bytes[..<split])
            let whole = Array(bytes[split...]).withUnsafeBytes { CRC32C.update(first, $0) }
            #expect(whole == CRC32C.checksum(bytes))
        }
    }
}
