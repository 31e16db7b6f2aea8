import Foundation
import Testing
@testable import BallonetWire

/// The fuzzer's seed corpus (Fuzz/corpus/decoder) is generated here, so it always matches the format:
/// this test fails when the committed seeds are stale, and `make fuzz-seeds` writes them anew.
@Suite struct FuzzSeedTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../Fuzz/corpus/decoder").standardized

    static var seeds: [(name: String, bytes: [UInt8])] {
        var generator = SeededGenerator(seed: 2026)
        var seeds: [(String, [UInt8])] = []
        for type in MessageType.allCases {
            var message = generator.message()
            while message.type != type { message = generator.message() }
            seeds.append(("\(type)", frame(message, id: 1)))
        }
        var stream: [UInt8] = []
        for id in 0..<12 as Range<UInt32> { try! FrameEncoder.append(generator.message(), requestID: id, to: &stream) }
        seeds.append(("stream", stream))
        var corrupt = stream
        corrupt[40] ^= 0x10
        corrupt.removeSubrange(100..<130)
        seeds.append(("stream-corrupted", corrupt))
        seeds.append(("truncated", Array(stream.prefix(stream.count / 2))))
        seeds.append(("with-extensions", frame(.ping(Ping(nonce: 1)), extensions: [WireExtension(tag: 9, value: [1, 2, 3])])))
        seeds.append(("bad-ranges", rawFrame(type: MessageType.inflateReport.rawValue,
                                             payload: DecoderTests.inflatePayload(ranges: [(10, 5), (12, 1)]))))
        return seeds.map { (name: $0.0, bytes: $0.1) }
    }

    @Test func committedSeedCorpusIsCurrent() throws {
        let write = ProcessInfo.processInfo.environment["BALLONET_WRITE_FUZZ_SEEDS"] == "1"
        if write { try FileManager.default.createDirectory(at: Self.corpus, withIntermediateDirectories: true) }
        for seed in Self.seeds {
            let url = Self.corpus.appendingPathComponent("seed-\(seed.name).bin")
            if write { try Data(seed.bytes).write(to: url) }
            let committed = try #require(FileManager.default.contents(atPath: url.path), "missing \(url.path): run make fuzz-seeds")
            #expect(Array(committed) == seed.bytes, "\(url.lastPathComponent) is stale: run make fuzz-seeds")
        }
    }
}
