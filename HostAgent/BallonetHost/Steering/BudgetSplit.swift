/// How the host budget is shared out until the policy engine (shares, idle memory tax, working-set
/// estimates) takes this over: a pure function, numbers in and targets out.
///
/// Each VM's need is what its guest uses (MemTotal − MemAvailable − balloon, from its last stats sample)
/// plus a buffer of 20 % and 64 MiB (Hyper-V's Dynamic Memory buffer is 20 %; the 64 MiB keeps a small
/// guest's page cache and a burst's room), within [min, RAM]. A VM without stats yet needs all its RAM:
/// nothing is taken from a guest the host knows nothing about. If the needs fit the budget, each VM gets
/// its need (the rest stays with the host); if not, each gets its min plus a share of what is left in
/// proportion to how far its need is above its min.
public enum BudgetSplit {
    public struct Demand: Equatable, Sendable {
        public var name: String
        public var memoryBytes: UInt64
        public var minBytes: UInt64
        /// A fixed target (config or command): taken as it is, off the top of the budget.
        public var fixedTargetBytes: UInt64?
        public var guestUsedBytes: UInt64?

        public init(name: String, memoryBytes: UInt64, minBytes: UInt64, fixedTargetBytes: UInt64?, guestUsedBytes: UInt64?) {
            self.name = name
            self.memoryBytes = memoryBytes
            self.minBytes = minBytes
            self.fixedTargetBytes = fixedTargetBytes
            self.guestUsedBytes = guestUsedBytes
        }
    }

    public struct Target: Equatable, Sendable {
        public var name: String
        public var bytes: UInt64
        public var reason: String
    }

    static let bufferBytes: UInt64 = 64 << 20

    /// `a + b`, or `UInt64.max` where that overflows: guest figures come from the guest, and no figure
    /// a hostile one reports may trap the host.
    static func saturatingSum(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }

    /// Targets for `demands` under `budgetBytes` (nil: no budget: fixed targets or all RAM).
    public static func targets(_ demands: [Demand], budgetBytes: UInt64?) -> [Target] {
        func mib(_ bytes: UInt64) -> UInt64 { bytes >> 20 }
        var targets: [Target?] = Array(repeating: nil, count: demands.count)
        var flexible: [(index: Int, need: UInt64, minimum: UInt64)] = []
        var fixedTotal: UInt64 = 0
        for (index, demand) in demands.enumerated() {
            let minimum = min(demand.minBytes, demand.memoryBytes)
            if let fixed = demand.fixedTargetBytes {
                let bytes = min(max(fixed, 0), demand.memoryBytes)
                targets[index] = Target(name: demand.name, bytes: bytes, reason: "fixed target \(mib(bytes)) MiB")
                fixedTotal = saturatingSum(fixedTotal, bytes)
            } else if budgetBytes == nil {
                targets[index] = Target(name: demand.name, bytes: demand.memoryBytes, reason: "no budget: all its RAM")
            } else if let used = demand.guestUsedBytes {
                let need = min(demand.memoryBytes, max(minimum, saturatingSum(saturatingSum(used, used / 5), bufferBytes)))
                flexible.append((index, need, minimum))
            } else {
                flexible.append((index, demand.memoryBytes, minimum))
            }
        }
        guard let budget = budgetBytes else { return targets.compactMap { $0 } }
        let left = budget > fixedTotal ? budget - fixedTotal : 0
        let needs = flexible.reduce(0) { saturatingSum($0, $1.need) }
        if needs <= left {
            for entry in flexible {
                let demand = demands[entry.index]
                let reason = demand.guestUsedBytes.map { "guest uses \(mib($0)) MiB, +20 % +64 MiB buffer, within min \(mib(entry.minimum)) MiB and RAM" }
                    ?? "no guest figures yet: all its RAM"
                targets[entry.index] = Target(name: demand.name, bytes: entry.need, reason: reason)
            }
        } else {
            let minimums = flexible.reduce(0) { saturatingSum($0, $1.minimum) }
            let spare = left > minimums ? left - minimums : 0
            let above = flexible.reduce(0) { saturatingSum($0, $1.need - $1.minimum) }
            for entry in flexible {
                // spare × (need − min) / above without overflow; the quotient is at most `spare`.
                let product = spare.multipliedFullWidth(by: entry.need - entry.minimum)
                let share = above == 0 ? 0 : above.dividingFullWidth(product).quotient
                let bytes = entry.minimum + min(share, entry.need - entry.minimum)
                targets[entry.index] = Target(name: demands[entry.index].name, bytes: bytes & ~4095,
                                              reason: "needs \(mib(entry.need)) MiB but the VMs need \(mib(needs)) MiB of \(mib(left)) MiB: min + its share of the rest")
            }
        }
        return targets.compactMap { $0 }
    }
}
