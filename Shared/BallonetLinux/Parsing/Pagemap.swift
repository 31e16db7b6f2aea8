/// One 64-bit entry of /proc/<pid>/pagemap: what backs one virtual page (Documentation/admin-guide/mm/pagemap.rst).
public struct PagemapEntry: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(rawValue: UInt64) {
        self.rawValue = rawValue
    }

    /// Bit 63: the page is in RAM.
    public var isPresent: Bool { rawValue & (1 << 63) != 0 }
    /// Bit 62: the page is in swap.
    public var isSwapped: Bool { rawValue & (1 << 62) != 0 }
    /// Bit 61: a file page or shared anonymous page (tmpfs, memfd).
    public var isFileOrSharedAnonymous: Bool { rawValue & (1 << 61) != 0 }
    /// Bit 56: mapped by this process only.
    public var isExclusivelyMapped: Bool { rawValue & (1 << 56) != 0 }
    /// Bit 55: written since the soft-dirty bits were last cleared.
    public var isSoftDirty: Bool { rawValue & (1 << 55) != 0 }

    /// Bits 0-54: the page frame number, when the page is present. nil if absent, or if the reader lacks
    /// CAP_SYS_ADMIN, in which case the kernel reports 0 (no real page sits at frame 0 in a process).
    public var frameNumber: UInt64? {
        guard isPresent else { return nil }
        let frame = rawValue & ((1 << 55) - 1)
        return frame == 0 ? nil : frame
    }

    public var description: String {
        if let frameNumber { return "present, pfn 0x\(String(frameNumber, radix: 16))" }
        if isPresent { return "present, pfn hidden" }
        return isSwapped ? "swapped" : "not present"
    }
}

public enum Pagemap {
    /// Bytes per pagemap entry: one UInt64 per virtual page.
    public static let entryBytes = 8

    /// The entries for `pageCount` pages from `virtualAddress` (page-aligned), read from an open
    /// /proc/<pid>/pagemap (`ProcFiles.openPagemap`). Pages past the end of the address space are left out.
    public static func entries(
        in pagemap: borrowing FileDescriptor,
        virtualAddress: UInt64,
        pageCount: Int
    ) throws(SystemCallError) -> [PagemapEntry] {
        let pageSize = UInt64(Memory.pageSize)
        // The file offsets of the entries must fit off_t; no real address range comes near that.
        let (byteCount, overflowed) = max(pageCount, 0).multipliedReportingOverflow(by: entryBytes)
        let firstPage = virtualAddress / pageSize
        guard !overflowed, firstPage <= UInt64(Int64.max - Int64(byteCount)) / UInt64(entryBytes) else {
            throw SystemCallError("pread", .EINVAL, context: "pagemap, \(pageCount) pages from 0x\(String(virtualAddress, radix: 16))")
        }
        let firstOffset = Int64(firstPage) * Int64(entryBytes)
        var raw = [UInt64](repeating: 0, count: max(pageCount, 0))
        let received = try raw.withUnsafeMutableBufferPointer { (buffer) throws(SystemCallError) -> Int in
            let bytes = UnsafeMutableRawBufferPointer(buffer)
            var done = 0
            while done < byteCount {
                let count = try pagemap.read(
                    into: UnsafeMutableRawBufferPointer(rebasing: bytes[done..<byteCount]),
                    atOffset: firstOffset + Int64(done))
                if count == 0 { break }
                done += count
            }
            return done
        }
        return raw.prefix(received / entryBytes).map(PagemapEntry.init(rawValue:))
    }
}
