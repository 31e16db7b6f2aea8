/// Protocol versions and every limit the wire format places on what a peer may send.
///
/// Each limit exists because the host treats every byte from a guest as hostile: a limit bounds
/// the memory a session may buffer and the work one frame may cause. A sender that would exceed one
/// fails to encode (`EncodeError`); a receiver that meets one rejects the frame (`WireError`).
public enum WireLimits {
    /// The frame version this build writes. A frame's version byte names the layout of its payloads.
    public static let currentProtocolVersion: UInt8 = 1

    /// The frame versions this build can read. Hello frames are version 1 forever, so that peers of any
    /// vintage can always read each other's handshake and fail with a clear error rather than silence.
    public static let supportedProtocolVersions: ClosedRange<UInt8> = 1...1

    /// Bytes in a frame header: magic, version, type, flags, request id, payload length and two CRCs.
    public static let headerLength = 24

    /// Largest payload a frame may carry: 256 KiB. It holds the largest inflate report
    /// (`maxRangesPerMessage` ranges at their widest encoding, 12 bytes each: 192 KiB) with room to spare,
    /// and it bounds what a decoder buffers per session (one frame), so a host with a hundred VMs
    /// holds at most ~25 MiB of partial frames even if every guest misbehaves at once.
    public static let maxPayloadLength = 256 * 1024

    /// Largest frame on the wire, header included; a decoder never buffers more than this.
    public static let maxFrameLength = headerLength + maxPayloadLength

    /// Most PFN ranges in one inflate or deflate report. The host does one `fallocate` or one
    /// `process_madvise` iovec per range, so this bounds the work one frame can cause. 16384 ranges
    /// cover a 64 MiB batch of 4 KiB pages in the worst fragmentation (every other page), sixteen
    /// times the guest's default batch.
    public static let maxRangesPerMessage = 16_384

    /// Page frame numbers are below 2^40: 52 bits of physical address (the most x86-64 and arm64 define)
    /// less the 12 bits of a 4 KiB page. A range reaching past this is corrupt or hostile.
    public static let pfnLimit: UInt64 = 1 << 40

    /// Largest page order a guest may say it pinned: 18 is a 1 GiB page. Today's agent pins order 0
    /// (4 KiB) or 9 (2 MiB); ranges are always counted in 4 KiB pages whatever the order.
    public static let maxPageOrder: UInt8 = 18

    /// Longest text field (software version, error and goodbye messages), in UTF-8 bytes. Text is for
    /// logs: a line an operator reads. Anything longer from a guest is log spam, and one length byte suffices.
    public static let maxTextBytes = 255

    /// Most entries in one stats sample. The agent reports about thirty counters today; 256 leaves room
    /// for counters added later without letting one sample cost the host more than a few KiB to parse.
    public static let maxStatEntries = 256

    /// Most extension fields after a message's fixed fields. Extensions are how a later minor revision
    /// adds optional fields that older peers skip; 32 is far more than any revision needs, and bounds
    /// the per-frame work of skipping them.
    public static let maxExtensions = 32
}

/// Size of a page as the wire counts it: every size and PFN is in 4 KiB pages, whatever the guest pinned.
public let wirePageSize: UInt64 = 4096

extension WireLimits {
    /// `text` cut at a character boundary to fit a text field: for messages built from strings of any
    /// length (an error's description, a path), which must never fail to encode for being long.
    public static func fittingText(_ text: String) -> String {
        guard text.utf8.count > maxTextBytes else { return text }
        var result = ""
        var bytes = 0
        for character in text {
            let size = character.utf8.count
            guard bytes + size <= maxTextBytes - 3 else { break }
            result.append(character)
            bytes += size
        }
        return result + "…"
    }
}
