import BallonetLinux
import Logging

/// How the host may swap one VM's memory itself, per host.toml's `swap` for the VM.
public enum SwapMode: String, CaseIterable, Equatable, Sendable {
    /// The VM's memory cgroup when QEMU has one of its own, else pageout.
    case auto
    /// Only through the memory cgroup (a VM without one of its own is not swapped, and the log says why).
    case cgroup
    /// Only through `process_madvise(MADV_PAGEOUT)`.
    case pageout
    /// Never: ballooning only.
    case off
}

/// Carries out `HypervisorSwapPolicy`'s limit on one VM's resident guest RAM.
///
/// - cgroup: the limit goes to the VM's memory cgroup (v2 `memory.high`, v1 `memory.limit_in_bytes`),
///   raised by what QEMU itself holds beside guest RAM, and the kernel swaps the group's coldest pages by
///   its own LRU: the accessed bits the sampler clears each period make "cold" mean "not touched in the
///   last period". The limit also stops the VM from growing back while it is in force.
/// - pageout: where QEMU shares its cgroup (an attached QEMU in a service's group), the swapper pages out
///   2 MiB ranges of guest RAM chosen at random, as ESX did, until the VM is at its limit: the host has no
///   per-page access information for a process without page_idle (`IdlePageSamplingSupport`). Content is
///   kept in host swap; pages the guest touches again come back by fault.
public final class HypervisorSwapper {
    public enum Mechanism {
        case cgroup(MemoryCgroup)
        /// A libvirt domain's own memory cgroup, limited through libvirt's memory tunables, so libvirt's live
        /// `<memtune>` says what is in force and libvirt's own writes do not undo ours: v2's `soft_limit`
        /// (memory.high: reclaim and swap, never the OOM killer), v1's `hard_limit` (memory.limit_in_bytes,
        /// v1 has no high). The cgroup is read for the usage only.
        case libvirt(MemoryCgroup, LibvirtDomainAccess)
        case pageout

        public var name: String {
            switch self {
            case .cgroup(let group): "cgroup \(group.version.rawValue) (\(group.path))"
            case .libvirt(let group, _): "libvirt \(Self.tunable(group)) (\(group.path))"
            case .pageout: "pageout of random 2 MiB ranges"
            }
        }

        /// The limit OOM-kills when the group cannot reclaim: v1's memory.limit_in_bytes (directly or as
        /// libvirt's hard_limit). v2's memory.high only throttles; pageout holds nothing.
        public var isHardLimit: Bool {
            switch self {
            case .cgroup(let group), .libvirt(let group, _): group.version == .v1
            case .pageout: false
            }
        }

        static func tunable(_ group: MemoryCgroup) -> String { group.version == .v2 ? "soft_limit" : "hard_limit" }

        func setGroupLimit(_ bytes: UInt64?) throws {
            switch self {
            case .cgroup(let group): try group.setLimit(bytes)
            case .libvirt(let group, let domain):
                try domain.domain().setMemoryParameter(Self.tunable(group), kibibytes: bytes.map { ($0 + 1023) >> 10 })
            case .pageout: break
            }
        }
    }

    public let mechanism: Mechanism
    /// The limit on guest RAM in force (nil: none).
    public private(set) var limitBytes: UInt64?
    /// What the cgroup limit was last set to (guest limit + QEMU's own memory).
    private var groupLimitBytes: UInt64?
    /// Bytes paged out by the pageout mechanism since the agent started (what the kernel advised).
    public private(set) var pagedOutBytes: UInt64 = 0
    private var random = SystemRandomNumberGenerator()

    /// Pageout picks ranges of this size: a huge page, so a THP-backed guest's pages are not split, and
    /// 512 ranges a GiB keep each advice call short.
    static let rangeBytes: UInt64 = 2 << 20

    public init(mechanism: Mechanism) { self.mechanism = mechanism }

    /// Chooses the mechanism for QEMU `processID` under `mode`; nil when the VM is not to be swapped (with
    /// the reason).
    static func choose(mode: SwapMode, processID: Int32, hierarchy: (root: String, version: MemoryCgroup.Version)?,
                       memoryTunables: LibvirtDomainAccess? = nil) -> (mechanism: Mechanism?, note: String)
    {
        var own: MemoryCgroup?
        if let hierarchy, let group = MemoryCgroup.of(process: processID, hierarchy: hierarchy)?.domainGroup,
           let members = try? group.processes(), members == [processID] {
            own = group
        }
        if let own, let memoryTunables, mode == .auto || mode == .cgroup {
            return (.libvirt(own, memoryTunables),
                    "hypervisor swap through libvirt's \(Mechanism.tunable(own)) on the domain's memory cgroup \(own)")
        }
        switch mode {
        case .off:
            return (nil, "hypervisor swapping is off for this VM (swap = \"off\")")
        case .pageout:
            return (.pageout, "hypervisor swap by pageout of random 2 MiB ranges (swap = \"pageout\")")
        case .cgroup, .auto:
            if let own { return (.cgroup(own), "hypervisor swap through memory cgroup \(own)") }
            let why = hierarchy == nil ? "this host has no memory cgroup controller"
                : "QEMU pid \(processID) does not have a memory cgroup of its own"
            if mode == .cgroup { return (nil, "no hypervisor swapping: swap = \"cgroup\" but \(why)") }
            return (.pageout, "hypervisor swap by pageout of random 2 MiB ranges: \(why)")
        }
    }

    /// Brings the VM toward `limit` (nil: releases any limit). `figures` is guest RAM as smaps showed it
    /// this round. Returns a line for the log when something was done. `limitBytes` becomes `limit` once it
    /// is in force; a write the kernel refused (v1's EBUSY when it cannot reclaim enough) leaves it as it was.
    public func apply(limit: UInt64?, figures: GuestRAMFigures, reclaimer: GuestRAMReclaimer) throws -> String? {
        switch mechanism {
        case .cgroup(let group), .libvirt(let group, _):
            guard let limit else {
                guard groupLimitBytes != nil || limitBytes != nil else { return nil }
                try mechanism.setGroupLimit(nil)
                groupLimitBytes = nil
                limitBytes = nil
                return "cgroup limit removed"
            }
            // What QEMU holds beside guest RAM (its heap, TCG's code buffer, I/O buffers) is charged to the
            // group too; the limit is on guest RAM, so the group gets that much more.
            let usage = try group.usageBytes()
            let own = usage > figures.residentBytes ? usage - figures.residentBytes : 0
            let groupLimit = limit + own
            // QEMU's own memory moves by a few MiB from round to round (its page cache, TCG's buffers): a
            // limit within 8 MiB of the one in force (the policy's tolerance) is left as it is.
            if let previous = groupLimitBytes, (groupLimit >= previous ? groupLimit - previous : previous - groupLimit) < 8 << 20 {
                limitBytes = limit
                return nil
            }
            try mechanism.setGroupLimit(groupLimit)
            groupLimitBytes = groupLimit
            limitBytes = limit
            return "cgroup limit \(groupLimit >> 20) MiB (guest RAM \(limit >> 20) MiB + QEMU's own \(own >> 20) MiB; group used \(usage >> 20) MiB)"
        case .pageout:
            // The limit is the policy's; pageout holds nothing in the kernel, it acts while resident is above.
            limitBytes = limit
            guard let limit, figures.residentBytes > limit else { return nil }
            let excess = figures.residentBytes - limit
            let ranges = chooseRanges(excessBytes: excess, residentBytes: figures.residentBytes, in: reclaimer.hostRanges)
            let advised = try reclaimer.pageOut(ranges)
            pagedOutBytes &+= advised
            return "paged out \(advised >> 20) MiB in \(ranges.count) random 2 MiB ranges (resident \(figures.residentBytes >> 20) MiB, limit \(limit >> 20) MiB)"
        }
    }

    /// Random 2 MiB ranges of guest RAM, enough that (with the fraction of RAM resident) they hold about
    /// `excessBytes` of resident memory. Ranges not resident cost the kernel a page-table walk and nothing
    /// more; the next round measures again and takes more if needed.
    func chooseRanges(excessBytes: UInt64, residentBytes: UInt64, in ranges: [AddressRange]) -> [AddressRange] {
        var slots: [AddressRange] = []
        for range in ranges {
            var offset: UInt64 = 0
            while offset < range.length {
                slots.append(AddressRange(start: range.start + offset, length: min(Self.rangeBytes, range.length - offset)))
                offset += Self.rangeBytes
            }
        }
        guard !slots.isEmpty, residentBytes > 0 else { return [] }
        // Resident bytes per range on average, and so how many ranges carry the excess.
        let residentPerRange = max(residentBytes / UInt64(slots.count), 1)
        let wanted = min(Int((excessBytes + residentPerRange - 1) / residentPerRange), slots.count)
        slots.shuffle(using: &random)
        return Array(slots.prefix(wanted)).sorted { $0.start < $1.start }
    }
}
