/// A memory cgroup: the kernel's way to hold a group of processes to a memory limit, reclaiming (swapping)
/// its coldest pages by its own LRU when the group is above it. Both versions the Debian hosts Ballonet
/// runs on may have: v2 (the unified hierarchy, Debian 11 and later by default) and v1 (hybrid setups, as on
/// the machines this project is tested on).
///
/// Limits: v2's `memory.high` throttles and reclaims above the limit but never calls the OOM killer; v1 has
/// only `memory.limit_in_bytes`, which reclaims as v2's `memory.max` does and can OOM-kill when nothing is
/// left to reclaim, so its callers lower it only as far as free host swap allows.
public struct MemoryCgroup: Equatable, Sendable, CustomStringConvertible {
    public enum Version: String, Equatable, Sendable {
        case v1, v2
    }

    /// The cgroup's directory, such as /sys/fs/cgroup/memory/ballonet/vm1 (v1) or
    /// /sys/fs/cgroup/machine.slice/machine-qemu-1-vm1.scope (v2).
    public let path: String
    public let version: Version

    public init(path: String, version: Version) {
        self.path = path
        self.version = version
    }

    public var description: String { "\(path) (cgroup \(version.rawValue))" }

    /// /proc/self/mountinfo and /proc/<pid>/cgroup are a few KiB even on busy hosts; 1 MiB is a bound, not
    /// an expectation.
    static let maximumTableBytes = 1 << 20
    /// cgroup.procs of a VM's group lists a handful of pids; 1 MiB is a bound.
    static let maximumProcsBytes = 1 << 20

    /// Where the memory controller is mounted and which version it is: a v1 hierarchy with the `memory`
    /// option wins (a hybrid host binds the controller there), else the v2 hierarchy if it offers `memory`.
    public static func hierarchy(mountinfo: String = "/proc/self/mountinfo") -> (root: String, version: Version)? {
        guard let bytes = try? FileSystem.readFile(mountinfo, maxBytes: maximumTableBytes) else { return nil }
        var unified: String?
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            // "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory": six fixed
            // fields, optional ones, a lone "-" (paths have their spaces escaped as \040), then three more.
            let fields = line.split(separator: " ")
            guard let dash = fields.indices.dropFirst(6).first(where: { fields[$0] == "-" }), fields.count >= dash + 4 else { continue }
            let mountPoint = String(fields[4]), fileSystem = fields[dash + 1], superOptions = fields[dash + 3]
            if fileSystem == "cgroup", superOptions.split(separator: ",").contains("memory") { return (mountPoint, .v1) }
            if fileSystem == "cgroup2" { unified = mountPoint }
        }
        if let unified, let controllers = try? FileSystem.readFile(unified + "/cgroup.controllers", maxBytes: 4096),
           String(decoding: controllers, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("memory") {
            return (unified, .v2)
        }
        return nil
    }

    /// The memory cgroup `processID` is in, or nil if it is the hierarchy's root (no limit can be set there)
    /// or the process is gone.
    public static func of(process processID: Int32, hierarchy: (root: String, version: Version)) -> MemoryCgroup? {
        guard let bytes = try? FileSystem.readFile("/proc/\(processID)/cgroup", maxBytes: maximumTableBytes) else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            // v1: "4:memory:/machine.slice/x"; v2: "0::/machine.slice/x".
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            let matches = hierarchy.version == .v1 ? fields[1].split(separator: ",").contains("memory") : fields[0] == "0" && fields[1].isEmpty
            guard matches else { continue }
            let relative = String(fields[2])
            guard relative != "/", !relative.split(separator: "/").contains("..") else { return nil }
            return MemoryCgroup(path: hierarchy.root + relative, version: hierarchy.version)
        }
        return nil
    }

    /// The group that carries this one's memory limits. On v2, libvirt puts QEMU's threads in threaded
    /// children of the domain's group (`…/libvirt/emulator`, `vcpu0`, `iothread1`), which have no memory
    /// controller of their own: the limits live one level up. v1 groups are returned as they are.
    public var domainGroup: MemoryCgroup {
        guard version == .v2, let slash = path.lastIndex(of: "/") else { return self }
        let leaf = path[path.index(after: slash)...]
        let threaded = leaf == "emulator" || ["vcpu", "iothread"].contains { prefix in
            leaf.hasPrefix(prefix) && leaf.count > prefix.count && leaf.dropFirst(prefix.count).allSatisfy(\.isNumber)
        }
        return threaded ? MemoryCgroup(path: String(path[..<slash]), version: version) : self
    }

    /// Creates (or reuses) the cgroup `relative` below the hierarchy's root, parents included. On v2 the
    /// parent must pass the memory controller down: this enables it in each parent's subtree_control.
    public static func create(_ relative: String, hierarchy: (root: String, version: Version)) throws(SystemCallError) -> MemoryCgroup {
        var path = hierarchy.root
        for component in relative.split(separator: "/") {
            if hierarchy.version == .v2 {
                try? FileSystem.writeFile(path + "/cgroup.subtree_control", "+memory")
            }
            path += "/" + component
            try FileSystem.makeDirectory(path, permissions: 0o755, orExisting: true)
        }
        return MemoryCgroup(path: path, version: hierarchy.version)
    }

    /// Moves `processID` (all its threads, on v2; the thread group leader's process on v1) into the group.
    /// Memory it already holds stays charged where it was: a VM must enter its group before it touches its RAM.
    public func add(process processID: Int32) throws(SystemCallError) {
        try FileSystem.writeFile(path + "/cgroup.procs", "\(processID)")
    }

    /// The processes in the group.
    public func processes() throws(SystemCallError) -> [Int32] {
        let bytes = try FileSystem.readFile(path + "/cgroup.procs", maxBytes: Self.maximumProcsBytes)
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { Int32($0) }
    }

    /// Memory charged to the group now (v1 memory.usage_in_bytes, v2 memory.current).
    public func usageBytes() throws -> UInt64 {
        try ProcFiles.unsignedValue(path: path + (version == .v1 ? "/memory.usage_in_bytes" : "/memory.current"))
    }

    /// The limit in force, nil for none (v1 memory.limit_in_bytes, which says "none" with a number near 2^63;
    /// v2 memory.high, "max").
    public func limitBytes() throws -> UInt64? {
        switch version {
        case .v1:
            let value = try ProcFiles.unsignedValue(path: path + "/memory.limit_in_bytes")
            return value >= Self.unlimitedV1 ? nil : value
        case .v2:
            let bytes = try FileSystem.readFile(path + "/memory.high", maxBytes: 64)
            let text = String(decoding: bytes, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
            return text == "max" ? nil : UInt64(text)
        }
    }

    /// v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes (0x7FFFFFFFFFFFF000 with 4 KiB pages); any
    /// value from 2^62 up is no limit a host could reach.
    static let unlimitedV1: UInt64 = 1 << 62

    /// Sets the limit (nil: none). Lowering it below what the group uses makes the kernel reclaim inside
    /// this write until the group fits; v1 fails with EBUSY if it cannot, v2's memory.high never fails.
    public func setLimit(_ bytes: UInt64?) throws(SystemCallError) {
        switch version {
        case .v1: try FileSystem.writeFile(path + "/memory.limit_in_bytes", bytes.map { "\($0)" } ?? "-1")
        case .v2: try FileSystem.writeFile(path + "/memory.high", bytes.map { "\($0)" } ?? "max")
        }
    }

    /// Removes the (empty) group.
    public func remove() throws(SystemCallError) {
        try FileSystem.removeDirectory(path)
    }
}
