// `make bench-wire`: how fast frames encode and decode, and how many bytes an inflate report costs on
// the wire. Prints a Markdown report (the Makefile keeps a copy in docs/benchmarks/wire.md).
import BallonetWire

let clock = ContinuousClock()

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

/// `value` with `digits` decimals (integer arithmetic: no libm needed).
func format(_ value: Double, _ digits: Int = 1) -> String {
    var scale = 1
    for _ in 0..<digits { scale *= 10 }
    let scaled = Int(value * Double(scale) + 0.5)
    guard digits > 0 else { return String(scaled) }
    let fraction = String(scaled % scale)
    return "\(scaled / scale).\(String(repeating: "0", count: digits - fraction.count))\(fraction)"
}

/// Runs `body` repeatedly for at least `minimum` seconds; returns iterations per second.
func rate(minimum: Double = 1.0, _ body: () -> Void) -> Double {
    var iterations = 0
    let start = clock.now
    var elapsed = 0.0
    while elapsed < minimum {
        for _ in 0..<16 { body() }
        iterations += 16
        elapsed = seconds(clock.now - start)
    }
    return Double(iterations) / elapsed
}

let pagesPerGiB: UInt64 = 262_144
/// Pages of the guest agent's default inflate batch (4 MiB), the unit it reports in.
let defaultBatchPages: UInt64 = 1024

/// A guest's pinned pages in three layouts, 1 GiB of them each, starting at 1 GiB of guest-physical space.
let layouts: [(name: String, ranges: PFNRangeList)] = [
    ("contiguous", try! PFNRangeList(validating: [PFNRange(start: pagesPerGiB, count: pagesPerGiB)])),
    ("2 MiB runs (every other 2 MiB block)", try! PFNRangeList(validating: (0..<pagesPerGiB / 512).map {
        PFNRange(start: pagesPerGiB + $0 * 1024, count: 512)
    })),
    ("every other 4 KiB page", try! PFNRangeList(validating: (0..<pagesPerGiB).map {
        PFNRange(start: pagesPerGiB + $0 * 2, count: 1)
    })),
]

func inflateFrames(_ chunks: [PFNRangeList]) -> [UInt8] {
    var bytes: [UInt8] = []
    var total: UInt64 = 0
    for (batch, chunk) in chunks.enumerated() {
        total += chunk.pageCount
        try! FrameEncoder.append(.inflateReport(InflateReport(hostSessionID: 0x1234_5678_9ABC, batchID: UInt64(batch),
                                                              pageOrder: 0, balloonPagesAfter: total, ranges: chunk)),
                                 requestID: UInt32(batch), to: &bytes)
    }
    return bytes
}

/// Splits a 1 GiB layout into the reports the agent sends: one per batch of `defaultBatchPages` pages.
func perBatch(_ list: PFNRangeList) -> [PFNRangeList] {
    var batches: [PFNRangeList] = []
    var current: [PFNRange] = []
    var pages: UInt64 = 0
    for var range in list.ranges {
        while range.count > 0 {
            let take = min(range.count, defaultBatchPages - pages)
            current.append(PFNRange(start: range.start, count: take))
            pages += take
            range.start += take
            range.count -= take
            if pages == defaultBatchPages {
                batches.append(try! PFNRangeList(validating: current))
                current = []
                pages = 0
            }
        }
    }
    if !current.isEmpty { batches.append(try! PFNRangeList(validating: current)) }
    return batches
}

print("# Wire format benchmark")
print()
print("Ballonet \(BallonetVersion.software), release build, one core.")
print()
print("## Bytes on the wire for an inflate report of 1 GiB (262,144 pages of 4 KiB)")
print()
print("| pinned pages | ranges | as 4 MiB batches: frames | bytes | packed in max-size frames: frames | bytes | fixed 16-byte ranges would be | decode of the batches |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for layout in layouts {
    let batches = perBatch(layout.ranges)
    let batchBytes = inflateFrames(batches)
    let packed = layout.ranges.chunked()
    let packedBytes = inflateFrames(packed)
    var frames = 0
    let decodeRate = rate(minimum: 0.5) {
        var decoder = FrameDecoder()
        batchBytes.withUnsafeBytes { decoder.feed($0) { if case .frame = $0 { frames += 1 } } }
    }
    print("| \(layout.name) | \(layout.ranges.count) | \(batches.count) | \(batchBytes.count) | \(packed.count) | \(packedBytes.count) "
          + "| \(layout.ranges.count * 16 + packed.count * (WireLimits.headerLength + 29)) | \(format(1000 / decodeRate, 2)) ms |")
}
print()

// Throughput: a realistic mix of single frames, encoded one at a time and decoded from a stream.
let statsEntries = (1...30).map { StatEntry(StatKey(rawValue: UInt16($0)), UInt64($0) * 123_457) }
let scattered = try! PFNRangeList(validating: (0..<512).map { PFNRange(start: 300_000 + $0 * 2, count: 1) })
let cases: [(name: String, message: Message)] = [
    ("ping", .ping(Ping(nonce: 42))),
    ("stats sample, 30 figures", .statsSample(StatsSample(sequence: 9, guestMillis: 123_456, periodMillis: 30_000, entries: statsEntries))),
    ("inflate report, 4 MiB as two 2 MiB pages", .inflateReport(InflateReport(hostSessionID: 1, batchID: 2, pageOrder: 9, balloonPagesAfter: 1024,
        ranges: try! PFNRangeList(validating: [PFNRange(start: 262_144, count: 512), PFNRange(start: 263_168, count: 512)])))),
    ("inflate report, 4 MiB as 512 scattered 4 KiB pages", .inflateReport(InflateReport(hostSessionID: 1, batchID: 2, pageOrder: 0,
        balloonPagesAfter: 512, ranges: scattered))),
]

print("## Encode and decode throughput")
print()
print("| message | frame bytes | encode frames/s | encode MB/s | decode frames/s | decode MB/s |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for entry in cases {
    let one = try! FrameEncoder.encode(entry.message, requestID: 1)
    let encodeRate = rate { _ = try! FrameEncoder.encode(entry.message, requestID: 1) }
    let count = max(1, (1 << 20) / one.count)
    var stream: [UInt8] = []
    for _ in 0..<count { stream += one }
    var decoded = 0
    let streamRate = rate {
        var decoder = FrameDecoder()
        var offset = 0
        stream.withUnsafeBytes { all in
            while offset < all.count {
                let end = min(all.count, offset + 65_536)  // reads of 64 KiB, as from a socket
                decoder.feed(UnsafeRawBufferPointer(rebasing: all[offset..<end])) { if case .frame = $0 { decoded += 1 } }
                offset = end
            }
        }
    }
    let decodeRate = streamRate * Double(count)
    print("| \(entry.name) | \(one.count) | \(format(encodeRate, 0)) | \(format(encodeRate * Double(one.count) / 1e6)) "
          + "| \(format(decodeRate, 0)) | \(format(decodeRate * Double(one.count) / 1e6)) |")
}
print()
let crcInput = [UInt8](repeating: 0xA5, count: 1 << 20)
let crcRate = rate { _ = CRC32C.checksum(crcInput) }
print("CRC32C (software, slicing-by-8): \(format(crcRate * Double(crcInput.count) / 1e6, 0)) MB/s.")
