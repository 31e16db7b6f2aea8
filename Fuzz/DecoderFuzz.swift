// libFuzzer target over the wire decoder (`make fuzz`). It is compiled together with the sources of
// Shared/BallonetWire into one module, so it reaches the decoder without an import.
//
// For every input it checks three properties, and traps (which libFuzzer reports as a crash) if one fails:
//  1. the decoder returns for any bytes (ASan also catches any out-of-bounds read);
//  2. the input decodes to the same events in one buffer and in chunks whose sizes the input itself
//     chooses, and the decoder never buffers more than one frame;
//  3. every frame it accepts re-encodes to a frame that decodes to the same envelope.
// Random bytes rarely carry a matching CRC32C, so the input is also wrapped whole as one frame with
// correct checksums (first byte the type, the rest the payload): that drives the payload parsers deep.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    checkStream(input)
    if size >= 1 && size - 1 <= WireLimits.maxPayloadLength {
        var frame = ByteWriter()
        frame.bytes = FrameHeader.magic
        frame.u8(WireLimits.currentProtocolVersion)
        frame.u8(input[0])
        frame.u16(0)
        frame.u32(1)
        frame.u32(UInt32(size - 1))
        frame.u32(CRC32C.checksum(frame.bytes))
        let payload = UnsafeRawBufferPointer(rebasing: input[1...])
        frame.u32(CRC32C.checksum(payload))
        frame.bytes.append(contentsOf: payload)
        frame.bytes.withUnsafeBytes { checkStream($0) }
    }
    return 0
}

private func checkStream(_ input: UnsafeRawBufferPointer) {
    let size = input.count

    var whole = FrameDecoder()
    var wholeEvents: [DecodeEvent] = []
    whole.feed(input) { wholeEvents.append($0) }
    whole.finish { wholeEvents.append($0) }

    var chunked = FrameDecoder()
    var chunkedEvents: [DecodeEvent] = []
    var offset = 0
    var step = 0
    while offset < size {
        let length = min(size - offset, 1 + Int(input[step % size]) % 97)
        chunked.feed(UnsafeRawBufferPointer(rebasing: input[offset..<offset + length])) { chunkedEvents.append($0) }
        if chunked.bufferedByteCount > WireLimits.maxFrameLength { fatalError("decoder buffered past its limit") }
        offset += length
        step += 1
    }
    chunked.finish { chunkedEvents.append($0) }
    if wholeEvents != chunkedEvents { fatalError("chunking changed what the decoder saw") }

    for case .frame(let envelope) in wholeEvents {
        guard let bytes = try? FrameEncoder.encode(envelope.message, requestID: envelope.requestID) else {
            fatalError("a decoded message does not re-encode: \(envelope)")
        }
        var again = FrameDecoder()
        var events: [DecodeEvent] = []
        bytes.withUnsafeBytes { again.feed($0) { events.append($0) } }
        if events != [.frame(envelope)] { fatalError("re-encoded frame decodes differently: \(envelope)") }
    }
}
