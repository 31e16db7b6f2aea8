/// ESX's admission control: a VM may start only if its min plus its overhead fits in memory nobody has
/// reserved, and host swap covers the rest of its max (max − min), so every VM can be given its max by
/// swapping if ballooning cannot. Pure: the caller says what is reserved and how much swap there is.
public enum Admission {
    public struct Request: Equatable, Sendable {
        public var name: String
        public var minBytes: UInt64
        public var maxBytes: UInt64
        /// QEMU's own memory beside guest RAM (device models, page tables, code caches).
        public var overheadBytes: UInt64

        public init(name: String, minBytes: UInt64, maxBytes: UInt64, overheadBytes: UInt64) {
            self.name = name
            self.minBytes = minBytes
            self.maxBytes = maxBytes
            self.overheadBytes = overheadBytes
        }
    }

    public struct Host: Equatable, Sendable {
        /// Host memory VMs may reserve: RAM less the host's own reserve (or a budget).
        public var memoryBytes: UInt64
        /// min + overhead of every VM already admitted.
        public var reservedBytes: UInt64
        public var swapTotalBytes: UInt64
        /// max − min of every VM already admitted.
        public var reservedSwapBytes: UInt64
        /// Whether host swap must cover max − min (on by default; a host without swap can turn it off
        /// and accept that a VM may then be held below its max only as far as ballooning can).
        public var requireSwap: Bool

        public init(memoryBytes: UInt64, reservedBytes: UInt64, swapTotalBytes: UInt64, reservedSwapBytes: UInt64,
                    requireSwap: Bool = true) {
            self.memoryBytes = memoryBytes
            self.reservedBytes = reservedBytes
            self.swapTotalBytes = swapTotalBytes
            self.reservedSwapBytes = reservedSwapBytes
            self.requireSwap = requireSwap
        }
    }

    public enum Decision: Equatable, Sendable {
        case admit(String)
        case refuse(String)

        public var isAdmitted: Bool { if case .admit = self { true } else { false } }
        public var message: String {
            switch self {
            case .admit(let message), .refuse(let message): message
            }
        }
    }

    public static func decide(_ request: Request, host: Host) -> Decision {
        func mib(_ bytes: UInt64) -> UInt64 { (bytes >> 20) + (bytes & 0xFFFFF == 0 ? 0 : 1) }   // rounded up, never overflowing
        let minimum = min(request.minBytes, request.maxBytes)
        let (needed, overflow) = minimum.addingReportingOverflow(request.overheadBytes)
        let unreserved = host.memoryBytes > host.reservedBytes ? host.memoryBytes - host.reservedBytes : 0
        var problems: [String] = []
        if overflow || needed > unreserved {
            let short = overflow ? UInt64.max : needed - unreserved
            problems.append("its min \(mib(minimum)) MiB + overhead \(mib(request.overheadBytes)) MiB = \(overflow ? "more than" : "\(mib(needed))") MiB does not fit in the \(mib(unreserved)) MiB of host memory not reserved by other VMs (short by \(mib(short)) MiB)")
        }
        let swapNeeded = request.maxBytes - minimum   // minimum ≤ maxBytes
        let swapLeft = host.swapTotalBytes > host.reservedSwapBytes ? host.swapTotalBytes - host.reservedSwapBytes : 0
        if host.requireSwap && swapNeeded > swapLeft {
            problems.append("host swap does not cover its max − min = \(mib(swapNeeded)) MiB: \(mib(swapLeft)) MiB of swap is not reserved by other VMs (short by \(mib(swapNeeded - swapLeft)) MiB; add swap, raise its min, or set require_swap = false)")
        }
        if problems.isEmpty {
            return .admit("VM \(request.name) fits: min + overhead \(mib(needed)) MiB of \(mib(unreserved)) MiB unreserved"
                + (host.requireSwap ? ", max − min \(mib(swapNeeded)) MiB of \(mib(swapLeft)) MiB swap unreserved" : ", swap not required"))
        }
        return .refuse("VM \(request.name) cannot start: " + problems.joined(separator: "; and "))
    }
}
