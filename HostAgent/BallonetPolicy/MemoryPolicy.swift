/// The policy: who gets how much memory, and what the host may do to get there. One call is one round: the
/// facts of now and the decisions of the last round in, the decisions of this round out. Pure: no clock, no
/// syscalls, no globals; `ballonet-host run`, `ballonet-host simulate` and the tests call the same function.
public enum MemoryPolicy {
    /// What the policy knows of one VM.
    public struct VM: Equatable, Sendable {
        public var name: String
        public var shares: UInt64
        public var minBytes: UInt64
        /// The most it may hold: its RAM, or less if configured.
        public var maxBytes: UInt64
        /// A target the operator set (config or `ballonetctl`): taken as it is, off the top.
        public var fixedTargetBytes: UInt64?
        /// The working-set estimate (`WorkingSetEstimator`), nil while there is none: such a VM is
        /// counted as fully active and is not trimmed (nothing is taken from a guest nobody has measured).
        public var workingSetBytes: UInt64?
        /// Its target after the last round; nil for a VM new in this round (which starts with all its RAM).
        public var previousTargetBytes: UInt64?
        /// What ballooning cannot take from it: memory its guest uses and could not page out (anonymous
        /// and kernel memory without guest swap). Trimming never goes below it: proactive reclaim takes
        /// free memory and cache, it does not force a guest to thrash. Memory that is short still may
        /// (the soft state and below), where hypervisor swap stands behind the balloon.
        public var unreclaimableBytes: UInt64?

        public init(name: String, shares: UInt64, minBytes: UInt64, maxBytes: UInt64, fixedTargetBytes: UInt64? = nil,
                    workingSetBytes: UInt64? = nil, previousTargetBytes: UInt64? = nil, unreclaimableBytes: UInt64? = nil) {
            self.unreclaimableBytes = unreclaimableBytes
            self.name = name
            self.shares = shares
            self.minBytes = minBytes
            self.maxBytes = maxBytes
            self.fixedTargetBytes = fixedTargetBytes
            self.workingSetBytes = workingSetBytes
            self.previousTargetBytes = previousTargetBytes
        }
    }

    /// What the policy knows of the host.
    public struct Host: Equatable, Sendable {
        /// M: memory for all VMs together (host RAM less its reserve and per-VM overheads, or a budget).
        /// Targets add up to M less the free memory the high threshold and its hysteresis keep
        /// ((`highPercent` + `hysteresisPercent`) of `totalBytes`): VMs at their targets leave the host
        /// in the high state, and a host that fell to soft climbs back to high once they are there.
        public var memoryForVMsBytes: UInt64
        /// Free memory now (negative when VMs hold more than a budget gives them) and what it is a share of;
        /// these decide the state.
        public var freeBytes: Int64
        public var totalBytes: UInt64
        public var previousState: FreeMemoryState
        /// Time since the last round: what the change limits scale with.
        public var elapsedMillis: UInt64
        /// What page sharing saves now, all VMs' credits together (`SharingAccounting`): memory for VMs
        /// beside M, since the guest pages it stands for are backed once.
        public var sharingSavedBytes: UInt64

        public init(memoryForVMsBytes: UInt64, freeBytes: Int64, totalBytes: UInt64, previousState: FreeMemoryState = .high,
                    elapsedMillis: UInt64 = 1_000, sharingSavedBytes: UInt64 = 0) {
            self.sharingSavedBytes = sharingSavedBytes
            self.memoryForVMsBytes = memoryForVMsBytes
            self.freeBytes = freeBytes
            self.totalBytes = totalBytes
            self.previousState = previousState
            self.elapsedMillis = elapsedMillis
        }
    }

    /// Which rule set a VM's target.
    public enum Bound: String, Codable, Sendable {
        /// The operator's fixed target.
        case fixed
        /// Held at its min.
        case min
        /// Given all it may hold.
        case max
        /// Trimmed to its working set plus buffer.
        case trimmed
        /// Its share of scarce memory (ρ equal to the others').
        case share
        /// Calm host: left where it was (nothing is reclaimed in the high state, beyond trimming).
        case held
        /// Moving toward the above, at the change limit.
        case changeLimit = "change limit"
    }

    /// The numbers behind one VM's target: what `ballonetctl explain` and the logs show.
    public struct Explanation: Codable, Equatable, Sendable {
        public var shares: UInt64
        public var minBytes: UInt64
        public var maxBytes: UInt64
        public var workingSetBytes: UInt64?
        /// What its guest cannot give back by ballooning (trimming's floor), if known.
        public var unreclaimableBytes: UInt64?
        /// What trimming says it needs (working set + buffer, within [min, max]); max when not trimming.
        public var demandBytes: UInt64
        /// Its share of M: the allocation ρ-balancing gives it (within [min, demand]).
        public var allocationBytes: UInt64
        /// Where the state rules want it this round, before the change limit.
        public var goalBytes: UInt64
        public var targetBytes: UInt64
        public var previousTargetBytes: UInt64?
        /// f: the active fraction of the target.
        public var activeFraction: Double
        /// ρ at the target, shares per MiB (ESX's adjusted shares-per-page ratio, per MiB for readability).
        public var sharesPerMiB: Double
        public var idleTaxRate: Double
        public var idleCost: Double
        public var state: FreeMemoryState
        public var bound: Bound
        /// M, for the sentence.
        public var memoryForVMsBytes: UInt64

        /// One sentence an operator reads: built when asked, not in every round (a round for 10,000 VMs
        /// must stay within milliseconds, and formatting is most of a VM's cost).
        public var summary: String { MemoryPolicy.summary(self, memoryForVMs: memoryForVMsBytes) }
    }

    public struct VMDecision: Equatable, Sendable {
        public var name: String
        public var targetBytes: UInt64
        public var explanation: Explanation
    }

    public struct Decision: Equatable, Sendable {
        public var state: FreeMemoryState
        public var actions: FreeMemoryState.Actions
        /// Free memory in percent of the total, as the state was decided on.
        public var freePercent: Double
        public var memoryForVMsBytes: UInt64
        /// What targets may add up to: M plus sharing's savings, less the high threshold's free memory and
        /// fixed targets.
        public var capacityBytes: UInt64
        /// The sharing savings counted in it.
        public var sharingSavedBytes: UInt64 = 0
        public var vms: [VMDecision]
        /// When the VMs' mins (and fixed targets) do not fit in M: what an operator must hear.
        public var warning: String?
    }

    static let page: UInt64 = 4096

    /// One round.
    public static func decide(vms: [VM], host: Host, parameters: PolicyParameters) -> Decision {
        let state = FreeMemoryState.next(after: host.previousState, freeBytes: host.freeBytes, totalBytes: host.totalBytes,
                                         thresholds: parameters.thresholds)
        let k = parameters.idleCost
        // The free memory of the high threshold (and its hysteresis) stays free; fixed targets come off the top.
        let keptFree = keptFreeBytes(totalBytes: host.totalBytes, thresholds: parameters.thresholds)
        let withSharing = saturatingAdd(host.memoryForVMsBytes, host.sharingSavedBytes)
        var capacity = withSharing > keptFree ? withSharing - keptFree : 0
        var fixedTotal: UInt64 = 0
        for vm in vms {
            if let fixed = vm.fixedTargetBytes { fixedTotal = saturatingAdd(fixedTotal, min(fixed, vm.maxBytes)) }
        }
        capacity = (capacity > fixedTotal ? capacity - fixedTotal : 0) & ~(page - 1)

        // Each flexible VM's claim: floor = min, ceiling = demand (trimmed or max), active = estimate.
        var claims: [ShareAllocation.Claim] = []
        var demands: [UInt64] = []
        var claimIndex: [Int?] = []
        var minimumsTotal: UInt64 = 0
        for vm in vms {
            let maximum = vm.maxBytes & ~(page - 1)
            let minimum = min(vm.minBytes, maximum) & ~(page - 1)
            var demand = maximum
            if parameters.trimming.enabled, let estimate = vm.workingSetBytes {
                let floor = max(minimum, vm.unreclaimableBytes ?? 0)
                demand = min(max(parameters.trimming.demand(forEstimate: estimate), floor), maximum)
                demand = min(roundUpToPage(demand), maximum)
            }
            demands.append(demand)
            guard vm.fixedTargetBytes == nil else { claimIndex.append(nil); continue }
            minimumsTotal = saturatingAdd(minimumsTotal, minimum)
            let active = min(vm.workingSetBytes ?? maximum, maximum)
            claimIndex.append(claims.count)
            claims.append(ShareAllocation.Claim(shares: Double(max(vm.shares, 1)), floor: Double(minimum / page),
                                                ceiling: Double(demand / page), active: Double(active / page)))
        }
        let pages = ShareAllocation.allocate(claims, capacity: Double(capacity / page), idleCost: k)

        var decisions: [VMDecision] = []
        decisions.reserveCapacity(vms.count)
        for (index, vm) in vms.enumerated() {
            let maximum = vm.maxBytes & ~(page - 1)
            let minimum = min(vm.minBytes, maximum) & ~(page - 1)
            let demand = demands[index]
            let target: UInt64
            let allocation: UInt64
            var goal: UInt64
            var bound: Bound
            if let fixed = vm.fixedTargetBytes {
                allocation = min(fixed, maximum) & ~(page - 1)
                target = allocation
                goal = allocation
                bound = .fixed
            } else {
                allocation = UInt64(pages[claimIndex[index]!]) * page
                bound = allocation >= demand ? (demand >= maximum ? .max : .trimmed) : allocation <= minimum ? .min : .share
                let previous = vm.previousTargetBytes ?? maximum
                var wanted = allocation
                if state == .high && allocation < demand {
                    // Calm host: nothing is reclaimed for others; the VM keeps what it holds, within
                    // [its allocation, its demand] (trimming still applies, rises still happen).
                    wanted = min(demand, max(allocation, previous))
                    if wanted != allocation {
                        bound = wanted == previous ? .held : wanted == demand ? (demand >= maximum ? .max : .trimmed) : .held
                    }
                }
                goal = wanted
                let limited = limit(from: previous, to: wanted, maxBytes: maximum, state: state, host: host,
                                    changeLimit: parameters.changeLimit)
                // The change limit paces moves; it never holds a target outside [min, max] (an operator
                // who lowers a max means it now).
                let clamped = min(max(limited, minimum), maximum)
                if clamped != wanted { bound = .changeLimit }
                target = clamped
            }
            let activeBytes = min(vm.workingSetBytes ?? target, target)
            let fraction = target > 0 ? Double(activeBytes) / Double(target) : 1
            let rho = ShareAllocation.sharesPerPage(shares: Double(vm.shares), pages: Double(target / page),
                                                    active: Double(activeBytes / page), idleCost: k) * 256
            let explanation = Explanation(
                shares: vm.shares, minBytes: minimum, maxBytes: maximum, workingSetBytes: vm.workingSetBytes,
                unreclaimableBytes: vm.unreclaimableBytes,
                demandBytes: demand, allocationBytes: allocation, goalBytes: goal, targetBytes: target,
                previousTargetBytes: vm.previousTargetBytes, activeFraction: fraction, sharesPerMiB: rho,
                idleTaxRate: parameters.idleTaxRate, idleCost: k, state: state, bound: bound,
                memoryForVMsBytes: host.memoryForVMsBytes)
            decisions.append(VMDecision(name: vm.name, targetBytes: target, explanation: explanation))
        }
        let needed = saturatingAdd(minimumsTotal, fixedTotal)
        let available = saturatingAdd(capacity, fixedTotal)
        let warning = needed > available
            ? "the VMs' mins and fixed targets add up to \(needed >> 20) MiB, more than the \(available >> 20) MiB for VMs (\(host.memoryForVMsBytes >> 20) MiB less \(keptFree >> 20) MiB kept free): each gets its min, and the host stays short of free memory"
            : nil
        let freePercent = host.totalBytes > 0 ? Double(host.freeBytes) / Double(host.totalBytes) * 100 : 0
        return Decision(state: state, actions: state.actions, freePercent: freePercent, memoryForVMsBytes: host.memoryForVMsBytes,
                        capacityBytes: capacity, sharingSavedBytes: host.sharingSavedBytes, vms: decisions, warning: warning)
    }

    /// The free memory targets leave: (high + hysteresis) % of `totalBytes`.
    public static func keptFreeBytes(totalBytes: UInt64, thresholds: FreeMemoryThresholds) -> UInt64 {
        let percent = thresholds.highPercent + thresholds.hysteresisPercent
        return UInt64(min(max(Double(totalBytes) * percent / 100, 0), 1.8e19))
    }

    /// What targets may add up to before fixed targets: M less the kept free memory, whole pages.
    public static func capacityBytes(memoryForVMsBytes: UInt64, totalBytes: UInt64, thresholds: FreeMemoryThresholds) -> UInt64 {
        let kept = keptFreeBytes(totalBytes: totalBytes, thresholds: thresholds)
        return (memoryForVMsBytes > kept ? memoryForVMsBytes - kept : 0) & ~(page - 1)
    }

    /// `wanted`, or as far toward it from `previous` as the change limit allows in `elapsedMillis`.
    static func limit(from previous: UInt64, to wanted: UInt64, maxBytes: UInt64, state: FreeMemoryState, host: Host,
                      changeLimit: ChangeLimit) -> UInt64 {
        let seconds = Double(host.elapsedMillis) / 1000
        if wanted < previous, state == .high, let percent = changeLimit.maximumDecreasePercentPerSecond {
            let step = roundUpToPage(UInt64(min(Double(maxBytes) * percent / 100 * seconds, 1.8e19)))
            if previous - wanted > step { return previous - step }
        }
        if wanted > previous, let percent = changeLimit.maximumIncreasePercentPerSecond {
            let step = roundUpToPage(UInt64(min(Double(maxBytes) * percent / 100 * seconds, 1.8e19)))
            if wanted - previous > step { return previous + step }
        }
        return wanted
    }

    static func summary(_ e: Explanation, memoryForVMs: UInt64) -> String {
        func mib(_ bytes: UInt64) -> String { "\(bytes >> 20) MiB" }
        let estimate = e.workingSetBytes.map { "working set \(mib($0))" } ?? "no working-set estimate yet (counted as all active)"
        let numbers = "S=\(e.shares), f=\(format(e.activeFraction, 2)), ρ=\(format(e.sharesPerMiB, 2)) shares/MiB, τ=\(format(e.idleTaxRate, 2)), state \(e.state.rawValue)"
        let why: String = switch e.bound {
        case .fixed: "fixed target set by the operator"
        case .min: "held at its min \(mib(e.minBytes)): memory is short and its ρ is the lowest"
        case .max: "all it may hold (max \(mib(e.maxBytes))): memory for VMs (\(mib(memoryForVMs))) is enough"
        case .trimmed: "trimmed to \(mib(e.demandBytes)): its \(estimate) plus buffer, not below its min or what its guest cannot give back"
        case .share: "its share of \(mib(memoryForVMs)) for VMs: reclaimed down to where its ρ equals the others'"
        case .held: "host calm (high state): kept where it was, between its share \(mib(e.allocationBytes)) and its demand \(mib(e.demandBytes))"
        case .changeLimit: "moving from \(e.previousTargetBytes.map(mib) ?? "-") toward \(mib(e.goalBytes)) at the change limit"
        }
        return "target \(mib(e.targetBytes)): \(why); \(estimate); \(numbers)"
    }

    /// `value` with `decimals` digits after the point (this module has no Foundation to format with).
    public static func format(_ value: Double, _ decimals: Int) -> String {
        guard value.isFinite else { return value > 0 ? "inf" : "-inf" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        let whole = UInt64(scaled / scale)
        var fraction = String(UInt64(scaled) - whole * UInt64(scale))
        while fraction.count < decimals { fraction = "0" + fraction }
        return (value < 0 && scaled > 0 ? "-" : "") + String(whole) + (decimals > 0 ? "." + fraction : "")
    }

    public static func saturatingAdd(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }

    static func roundUpToPage(_ bytes: UInt64) -> UInt64 {
        let (sum, overflow) = bytes.addingReportingOverflow(page - 1)
        return overflow ? .max & ~(page - 1) : sum & ~(page - 1)
    }
}
