import Testing
@testable import BallonetHost
@testable import BallonetWire

/// `info mtree -f` as QEMU's HMP prints it (lines end with "\r\n") for a 512 MiB pc guest started with
/// `-machine pc,memory-backend=ram0`: an SMM view and the I/O view before the "memory" view, and a bus
/// master view after it, each of the others holding ram0 lines of its own.
enum MemoryTreeSamples {
    static func hmp(_ lines: [String]) -> String { lines.map { $0 + "\r\n" }.joined() }

    static let smmView = [
        "FlatView #0",
        " AS \"cpu-smm-0\", root: memory",
        " Root memory region: memory",
        "  0000000000000000-00000000000bffff (prio 0, ram): ram0",
        "  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom",
        "  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000",
        "  0000000000100000-000000001fffffff (prio 0, ram): ram0 @0000000000100000",
        "  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios",
        "",
    ]
    static let ioView = [
        "FlatView #1",
        " AS \"I/O\", root: io",
        " Root memory region: io",
        "  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan",
        "  0000000000000008-000000000000000f (prio 0, i/o): dma-cont",
        "  0000000000000020-0000000000000021 (prio 0, i/o): kvm-pic",
        "  0000000000000cf8-0000000000000cfb (prio 0, i/o): pci-conf-idx",
        "",
    ]
    static let memoryView = [
        "FlatView #2",
        " AS \"memory\", root: system",
        " AS \"cpu-memory-0\", root: system",
        " Root memory region: system",
        "  0000000000000000-00000000000bffff (prio 0, ram): ram0",
        "  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom",
        "  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000",
        "  0000000000100000-000000001fffffff (prio 0, ram): ram0 @0000000000100000",
        "  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic",
        "  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet",
        "  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi",
        "  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios",
        "",
    ]
    static let busMasterView = [
        "FlatView #3",
        " AS \"piix3-ide\", root: bus master container",
        " Root memory region: bus master container",
        "  0000000000000000-00000000000bffff (prio 0, ram): ram0",
        "  0000000000100000-000000001fffffff (prio 0, ram): ram0 @0000000000100000",
        "",
    ]

    static let pc512MiB = hmp(["(qemu) info mtree -f"] + smmView + ioView + memoryView + busMasterView)

    /// A 6 GiB guest: 3 GiB below the PCI hole, 3 GiB above 4 GiB, one backend.
    static let above4G = hmp([
        "FlatView #0",
        " AS \"memory\", root: system",
        " Root memory region: system",
        "  0000000000000000-00000000000bffff (prio 0, ram): ram0 KVM",
        "  00000000000c0000-00000000000c9fff (prio 1, rom): pc.rom KVM",
        "  0000000000100000-00000000bfffffff (prio 0, ram): ram0 @0000000000100000 KVM",
        "  00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram KVM",
        "  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios KVM",
        "  0000000100000000-00000001bfffffff (prio 0, ram): ram0 @00000000c0000000 KVM",
        "",
    ])

    static func ranges(_ pairs: (UInt64, UInt64)...) throws -> PFNRangeList {
        try PFNRangeList(validating: pairs.map { PFNRange(start: $0.0, count: $0.1) })
    }
}

@Suite struct GuestRAMMapParseTests {
    @Test func readsTheMemoryFlatViewOnly() throws {
        let map = try GuestRAMMap.parse(memoryTree: MemoryTreeSamples.pc512MiB, guestRAMBlocks: ["ram0"])
        #expect(map.segments == [
            GuestRAMSegment(guestPhysicalStart: 0, length: 0xc_0000, block: "ram0", blockOffset: 0),
            GuestRAMSegment(guestPhysicalStart: 0x10_0000, length: 0x1ff0_0000, block: "ram0", blockOffset: 0x10_0000),
        ])
        // 512 MiB less the 256 KiB legacy hole at 0xc0000-0xfffff.
        #expect(map.totalBytes == (512 << 20) - 0x4_0000)
        #expect(map.blocks == ["ram0"])
    }

    @Test func theMemoryViewIsFoundWhereverItStands() throws {
        // Alone, last, or with LF line ends: the same map.
        let expected = try GuestRAMMap.parse(memoryTree: MemoryTreeSamples.pc512MiB, guestRAMBlocks: ["ram0"])
        let alone = MemoryTreeSamples.hmp(MemoryTreeSamples.memoryView)
        let last = MemoryTreeSamples.hmp(MemoryTreeSamples.smmView + MemoryTreeSamples.ioView + MemoryTreeSamples.memoryView)
        let lf = (MemoryTreeSamples.ioView + MemoryTreeSamples.memoryView).joined(separator: "\n")
        for text in [alone, last, lf] {
            #expect(try GuestRAMMap.parse(memoryTree: text, guestRAMBlocks: ["ram0"]) == expected)
        }
    }

    @Test func ramAbove4GiBKeepsItsBlockOffset() throws {
        let map = try GuestRAMMap.parse(memoryTree: MemoryTreeSamples.above4G, guestRAMBlocks: ["ram0"])
        #expect(map.segments.count == 3)
        #expect(map.segments.last == GuestRAMSegment(guestPhysicalStart: 0x1_0000_0000, length: 0xc000_0000,
                                                     block: "ram0", blockOffset: 0xc000_0000))
        #expect(map.totalBytes == (6 << 30) - 0x4_0000)
        // The first page above 4 GiB is byte 3 GiB of ram0; a range across the top of low RAM and the PCI
        // hole is refused.
        let high = try map.extents(of: MemoryTreeSamples.ranges((0x10_0000, 2)))
        #expect(high == [BlockExtent(block: "ram0", offset: 0xc000_0000, length: 2 * 4096)])
        let lastHigh = try map.extents(of: MemoryTreeSamples.ranges((0x1b_ffff, 1)))
        #expect(lastHigh == [BlockExtent(block: "ram0", offset: 0x1_7fff_f000, length: 4096)])
        #expect(throws: RAMMapError.self) { try map.extents(of: MemoryTreeSamples.ranges((0xb_ffff, 2))) }
        #expect(throws: RAMMapError.self) { try map.extents(of: MemoryTreeSamples.ranges((0x1c_0000, 1))) }
    }

    @Test func deviceRAMIsNotGuestRAM() throws {
        let map = try GuestRAMMap.parse(memoryTree: MemoryTreeSamples.above4G, guestRAMBlocks: ["ram0"])
        #expect(!map.blocks.contains("vga.vram"))
        #expect(!map.segments.contains { $0.guestPhysicalStart == 0xfd00_0000 })
        // VGA memory at 0xfd000000 (PFN 0xfd000) is refused, even though QEMU calls it ram.
        let vram = try MemoryTreeSamples.ranges((0xfd000, 16))
        #expect(throws: RAMMapError.outsideGuestRAM(vram[0])) { try map.extents(of: vram) }
    }

    @Test func onlyTheNamedBlocksCount() throws {
        // libvirt names its RAM pc.ram: asking for it in a ram0 guest finds no guest RAM at all.
        #expect(throws: MemoryTreeParseError.self) {
            try GuestRAMMap.parse(memoryTree: MemoryTreeSamples.pc512MiB, guestRAMBlocks: ["pc.ram"])
        }
        let withPCRAM = MemoryTreeSamples.pc512MiB.replacingAll("ram0", with: "pc.ram")
        let map = try GuestRAMMap.parse(memoryTree: withPCRAM, guestRAMBlocks: ["pc.ram", "ram0"])
        #expect(map.blocks == ["pc.ram"])
        #expect(map.totalBytes == (512 << 20) - 0x4_0000)
    }

    @Test func refusesTreesWithoutAMemoryView() {
        let onlyIO = MemoryTreeSamples.hmp(MemoryTreeSamples.ioView)
        #expect(throws: MemoryTreeParseError.self) { try GuestRAMMap.parse(memoryTree: onlyIO, guestRAMBlocks: ["ram0"]) }
        #expect(throws: MemoryTreeParseError.self) { try GuestRAMMap.parse(memoryTree: "", guestRAMBlocks: ["ram0"]) }
        // An SMM view whose root is the "memory" region is not the "memory" address space.
        let onlySMM = MemoryTreeSamples.hmp(MemoryTreeSamples.smmView)
        #expect(throws: MemoryTreeParseError.self) { try GuestRAMMap.parse(memoryTree: onlySMM, guestRAMBlocks: ["ram0"]) }
    }

    @Test func refusesMisalignedOrOverlappingRAM() {
        let misaligned = MemoryTreeSamples.hmp([
            "FlatView #0", " AS \"memory\", root: system", " Root memory region: system",
            "  0000000000000000-00000000000bf7ff (prio 0, ram): ram0",
        ])
        #expect(throws: MemoryTreeParseError.self) { try GuestRAMMap.parse(memoryTree: misaligned, guestRAMBlocks: ["ram0"]) }
        let overlapping = MemoryTreeSamples.hmp([
            "FlatView #0", " AS \"memory\", root: system", " Root memory region: system",
            "  0000000000000000-00000000000fffff (prio 0, ram): ram0",
            "  0000000000080000-00000000000bffff (prio 0, ram): ram1",
        ])
        #expect(throws: MemoryTreeParseError.self) {
            try GuestRAMMap.parse(memoryTree: overlapping, guestRAMBlocks: ["ram0", "ram1"])
        }
    }

    @Test func regionLines() throws {
        let region = try #require(GuestRAMMap.parseRegion("  0000000000100000-000000001fffffff (prio 0, ram): ram0 @0000000000100000 KVM"))
        #expect(region.start == 0x10_0000)
        #expect(region.end == 0x1fff_ffff)
        #expect(region.kind == "ram")
        #expect(region.name == "ram0")
        #expect(region.offset == 0x10_0000)
        #expect(GuestRAMMap.parseRegion(" Root memory region: system") == nil)
        #expect(GuestRAMMap.parseRegion(" AS \"memory\", root: system") == nil)
        #expect(GuestRAMMap.parseRegion("  0000000000100000-000000001fffffff (prio 0, ram): ram0 @zz") == nil)
    }
}

@Suite struct GuestRAMMapExtentTests {
    let map: GuestRAMMap

    init() throws {
        map = try GuestRAMMap.parse(memoryTree: MemoryTreeSamples.pc512MiB, guestRAMBlocks: ["ram0"])
    }

    @Test func placesPagesInTheirBlock() throws {
        let extents = try map.extents(of: MemoryTreeSamples.ranges((0, 1), (0x100, 16), (0x1ffff, 1)))
        #expect(extents == [
            BlockExtent(block: "ram0", offset: 0, length: 4096),
            BlockExtent(block: "ram0", offset: 0x10_0000, length: 16 * 4096),
            BlockExtent(block: "ram0", offset: 0x1fff_f000, length: 4096),
        ])
        // The last page below the hole and the first above it.
        #expect(try map.extents(of: MemoryTreeSamples.ranges((0xbf, 1), (0x100, 1))) == [
            BlockExtent(block: "ram0", offset: 0xb_f000, length: 4096),
            BlockExtent(block: "ram0", offset: 0x10_0000, length: 4096),
        ])
        #expect(try map.extents(of: PFNRangeList()) == [])
    }

    @Test func adjacentPiecesOfOneBlockMerge() throws {
        // Two segments of one block that continue each other in the block merge into one extent.
        let split = GuestRAMMap(segments: [
            GuestRAMSegment(guestPhysicalStart: 0x2000_0000, length: 0x10_0000, block: "ram0", blockOffset: 0x10_0000),
            GuestRAMSegment(guestPhysicalStart: 0, length: 0x10_0000, block: "ram0", blockOffset: 0),
            GuestRAMSegment(guestPhysicalStart: 0x10_0000, length: 0x10_0000, block: "ram1", blockOffset: 0),
        ])
        #expect(split.segments.map(\.guestPhysicalStart) == [0, 0x10_0000, 0x2000_0000])
        let ranges = try MemoryTreeSamples.ranges((0xff, 1), (0x20000, 1))
        #expect(try split.extents(of: ranges) == [BlockExtent(block: "ram0", offset: 0xf_f000, length: 0x2000)])
        // Contiguous guest-physical pages across two blocks give one extent per block.
        #expect(try split.extents(of: MemoryTreeSamples.ranges((0xff, 2))) == [
            BlockExtent(block: "ram0", offset: 0xf_f000, length: 4096),
            BlockExtent(block: "ram1", offset: 0, length: 4096),
        ])
    }

    @Test func aRangeAcrossTheROMHoleIsRefused() throws {
        // PFN 0xbf is RAM, 0xc0 is pc.rom.
        let ranges = try MemoryTreeSamples.ranges((0xbf, 2))
        #expect(throws: RAMMapError.outsideGuestRAM(ranges[0])) { try map.extents(of: ranges) }
        let rom = try MemoryTreeSamples.ranges((0xc0, 1))
        #expect(throws: RAMMapError.outsideGuestRAM(rom[0])) { try map.extents(of: rom) }
        let bios = try MemoryTreeSamples.ranges((0xfffc0, 1))
        #expect(throws: RAMMapError.outsideGuestRAM(bios[0])) { try map.extents(of: bios) }
    }

    @Test func allOrNothing() throws {
        // A good range followed by a bad one: the whole report is refused, naming the bad range.
        let ranges = try MemoryTreeSamples.ranges((0x80, 16), (0xdf, 1))
        #expect(throws: RAMMapError.outsideGuestRAM(ranges[1])) { try map.extents(of: ranges) }
    }

    @Test func pagesPastTheEndAreRefused() throws {
        let straddling = try MemoryTreeSamples.ranges((0x1ffff, 2))
        #expect(throws: RAMMapError.outsideGuestRAM(straddling[0])) { try map.extents(of: straddling) }
        let justPast = try MemoryTreeSamples.ranges((0x20000, 1))
        #expect(throws: RAMMapError.outsideGuestRAM(justPast[0])) { try map.extents(of: justPast) }
        let ioapic = try MemoryTreeSamples.ranges((0xfec00, 1))
        #expect(throws: RAMMapError.outsideGuestRAM(ioapic[0])) { try map.extents(of: ioapic) }
    }

    @Test func hugePFNsAreRefusedWithoutTrapping() throws {
        let top = try MemoryTreeSamples.ranges((WireLimits.pfnLimit - 1, 1))
        #expect(throws: RAMMapError.outsideGuestRAM(top[0])) { try map.extents(of: top) }
        let wide = try MemoryTreeSamples.ranges((0, WireLimits.pfnLimit))
        #expect(throws: RAMMapError.outsideGuestRAM(wide[0])) { try map.extents(of: wide) }
        // Past what the wire allows (a list built without its checks): the byte address overflows.
        let overflowing = PFNRangeList(checked: [PFNRange(start: UInt64.max / 4096 - 1, count: 4)])
        #expect(throws: RAMMapError.addressOverflow(overflowing[0])) { try map.extents(of: overflowing) }
        let start = PFNRangeList(checked: [PFNRange(start: UInt64.max / 2, count: 1)])
        #expect(throws: RAMMapError.addressOverflow(start[0])) { try map.extents(of: start) }
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
