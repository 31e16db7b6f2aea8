/// Hypervisor-level swapping and pausing: what the host does when ballooning cannot bring a VM down to its
/// target. ESX swapped VM memory itself when the balloon was missing, too slow or refused, and paused VMs in
/// its low state. Ballonet decides here, per VM and per round, a limit on the VM's resident guest RAM (the
/// mechanism carries it out: a memory cgroup limit, or `MADV_PAGEOUT` over chosen ranges) and whether the VM
/// is paused. Pure: the facts of now and the last round's decisions in, this round's decisions out.
public enum HypervisorSwapPolicy {
    /// What the policy knows of one VM.
    public struct VM: Equatable, Sendable {
        public var name: String
        /// The policy's target for its resident guest RAM.
        public var targetBytes: UInt64
        /// Guest RAM resident in QEMU now, and in host swap.
        public var residentBytes: UInt64
        public var swappedBytes: UInt64
        /// Whether its balloon can bring it down: see `BalloonDelivery`.
        public var balloon: BalloonDelivery.Verdict
        /// The operator allows swapping this VM (per-VM `swap`, and a mechanism exists for it).
        public var swapAllowed: Bool
        /// The limit in force after the last round (nil: none).
        public var previousLimitBytes: UInt64?
        /// Paused by the last round.
        public var paused: Bool
        /// The target is the operator's (host.toml `target_mib` or `ballonetctl set-target`): a cap to
        /// hold the VM to whatever the state, enforced by swap where the balloon cannot deliver.
        public var fixedTarget: Bool
        /// The mechanism's limit is a hard one that calls the OOM killer when the group cannot reclaim (cgroup
        /// v1's memory.limit_in_bytes, libvirt's hard_limit on v1), unlike v2's memory.high (throttles) or
        /// pageout (holds nothing).
        public var hardLimit: Bool
        /// The VM's guest RAM: all of it may be touched again, whatever the limit.
        public var ramBytes: UInt64

        public init(name: String, targetBytes: UInt64, residentBytes: UInt64, swappedBytes: UInt64 = 0, balloon: BalloonDelivery.Verdict,
                    swapAllowed: Bool = true, previousLimitBytes: UInt64? = nil, paused: Bool = false,
                    fixedTarget: Bool = false, hardLimit: Bool = false, ramBytes: UInt64 = 0) {
            self.name = name
            self.hardLimit = hardLimit
            self.ramBytes = ramBytes
            self.fixedTarget = fixedTarget
            self.swappedBytes = swappedBytes
            self.targetBytes = targetBytes
            self.residentBytes = residentBytes
            self.balloon = balloon
            self.swapAllowed = swapAllowed
            self.previousLimitBytes = previousLimitBytes
            self.paused = paused
        }
    }

    /// One VM's decision.
    public struct Decision: Equatable, Sendable {
        public var name: String
        /// The VM's resident guest RAM is to be brought to at most this; nil: no limit (released).
        public var limitBytes: UInt64?
        /// Keep the VM paused (QMP `stop`) this round.
        public var pause: Bool
        /// Why, in words for the log and `ballonetctl status`.
        public var reason: String
    }

    /// Decides every VM's limit and pause for one round in `state`, with `swapFreeBytes` of host swap free
    /// and `elapsedMillis` since the last round (what the swap-out step scales with).
    ///
    /// The rules (docs/POLICY.md, "Hypervisor swapping"):
    /// - A VM starts being swapped when it is above its target by more than the tolerance and either the
    ///   state is hard or low, or the state is soft and its balloon cannot deliver (no agent, or no progress
    ///   for the grace period: the guest at its floor, refusing, or too slow). In high nothing new is swapped,
    ///   except to hold a VM to a target the operator fixed, when its balloon cannot deliver.
    /// - Once swapped, a VM keeps a limit that follows its target (stepping down, rising at once) for as
    ///   long as its target is below what it holds (resident + swapped): a VM swapped down does not grow
    ///   back while memory is short. In high the limit only rises (no swap-out while memory is plentiful),
    ///   and it is released once the target covers everything the VM holds, so it pages back in.
    /// - A limit falls by at most `stepBytesPerSecond` a round and never by more than the host swap that is
    ///   free beyond `swapReserveBytes`, taken by VMs in order: swap-out is I/O, and a full swap device
    ///   turns a limit into an OOM kill.
    /// - A hard limit (`VM.hardLimit`) never goes below RAM + `hardLimitHeadroomBytes` − the swap left for it:
    ///   the guest may touch all its RAM again, and what does not fit under the limit must fit in swap, or the
    ///   kernel kills QEMU. With too little swap such a VM gets no limit at all (and is paused in low).
    /// - low: VMs above their targets are paused, and stay paused until the state is better than low; the
    ///   round the state recovers, they are resumed.
    public static func decide(vms: [VM], state: FreeMemoryState, swapFreeBytes: UInt64, elapsedMillis: UInt64,
                              settings: SwapSettings) -> [Decision] {
        var swapLeft = swapFreeBytes > settings.swapReserveBytes ? swapFreeBytes - settings.swapReserveBytes : 0
        let step = scaled(settings.stepBytesPerSecond, elapsedMillis: elapsedMillis)
        return vms.map { vm in
            let tolerance = settings.tolerance(forTarget: vm.targetBytes)
            let above = vm.residentBytes > vm.targetBytes + tolerance
            // Paused until the state is better than low, even if swap brings the VM to its target first:
            // a VM resumed while memory is still low would grow and be paused again.
            let pause = state == .low && (above || vm.paused)
            let (holds, overflow) = vm.residentBytes.addingReportingOverflow(vm.swappedBytes)
            if vm.previousLimitBytes != nil, !overflow, vm.targetBytes >= holds {
                return Decision(name: vm.name, limitBytes: nil, pause: pause,
                                reason: "limit released: the target (\(vm.targetBytes >> 20) MiB) covers all the VM holds (\(holds >> 20) MiB)")
            }
            guard vm.swapAllowed else {
                return Decision(name: vm.name, limitBytes: nil, pause: pause,
                                reason: above ? "above target but this VM is not swapped (swap off, or no mechanism)" : "at target")
            }
            let balloonCannot = vm.balloon != .delivering
            if state == .high && !(vm.fixedTarget && (above && balloonCannot || vm.previousLimitBytes != nil)) {
                guard let previous = vm.previousLimitBytes else {
                    return Decision(name: vm.name, limitBytes: nil, pause: false, reason: "no limit: host memory is plentiful (high)")
                }
                let limit = max(previous, vm.targetBytes)
                return Decision(name: vm.name, limitBytes: limit, pause: false,
                                reason: "limit \(limit >> 20) MiB kept, rising with the target: no swap-out while host memory is plentiful (high)")
            }
            let needed = above && (state >= .hard || balloonCannot)
            guard vm.previousLimitBytes != nil || needed else {
                let reason = above ? "above target; the balloon is delivering (\(state.rawValue))" : "at target"
                return Decision(name: vm.name, limitBytes: nil, pause: pause, reason: reason)
            }
            // Step down from what the VM holds now (or the last limit, if lower), never below the target.
            let from = min(vm.previousLimitBytes ?? vm.residentBytes, vm.residentBytes)
            var limit = max(vm.targetBytes, from > step ? from - step : 0)
            // Swap-out needs swap: what lies between resident and the limit goes there.
            var why = state >= .hard ? "host memory is \(state.rawValue)"
                : balloonCannot ? "the balloon cannot deliver (\(vm.balloon.description))\(vm.fixedTarget && state == .high ? " to the operator's fixed target" : "")"
                : "swapped earlier; kept until the target covers all the VM holds"
            if vm.residentBytes > limit, vm.residentBytes - limit > swapLeft {
                limit = vm.residentBytes - swapLeft
                why = "host swap is short: only \(swapLeft >> 20) MiB more may be swapped out"
            }
            if vm.hardLimit {
                // Under a hard limit, all of RAM − limit (and QEMU's own growth) may have to go to swap.
                let (needed, overflow) = vm.ramBytes.addingReportingOverflow(settings.hardLimitHeadroomBytes)
                let floor = overflow ? UInt64.max : needed > swapLeft ? needed - swapLeft : 0
                guard floor < vm.ramBytes else {
                    return Decision(name: vm.name, limitBytes: nil, pause: pause,
                                    reason: "not swapped: its limit would be a hard one (cgroup v1), and with \(swapLeft >> 20) MiB of host swap left for it a guest touching its RAM again would be OOM-killed; add host swap")
                }
                if floor > limit {
                    limit = floor
                    why = "a hard limit (cgroup v1) stays at RAM − the \(swapLeft >> 20) MiB of host swap left, so a guest touching all its RAM is swapped, not OOM-killed"
                }
                swapLeft -= min(swapLeft, needed > limit ? needed - limit : 0)
            } else {
                swapLeft -= min(swapLeft, vm.residentBytes > limit ? vm.residentBytes - limit : 0)
            }
            let reason = limit > vm.targetBytes + tolerance
                ? "swapping toward target \(vm.targetBytes >> 20) MiB, limit \(limit >> 20) MiB now: \(why)"
                : "held at target \(vm.targetBytes >> 20) MiB by hypervisor swap: \(why)"
            return Decision(name: vm.name, limitBytes: limit, pause: pause, reason: reason)
        }
    }

    static func scaled(_ perSecond: UInt64, elapsedMillis: UInt64) -> UInt64 {
        let (product, overflow) = perSecond.multipliedReportingOverflow(by: max(min(elapsedMillis, 10_000), 1))
        return overflow ? .max : product / 1000
    }
}

/// How hypervisor swapping may act, each default with its reason.
public struct SwapSettings: Equatable, Sendable {
    /// What QEMU itself may grow by under a hard limit (its heap, TCG's buffers, I/O): the same 64 MiB the
    /// host reserves per VM for it (`vm_overhead_mib`), to be covered by swap too.
    public var hardLimitHeadroomBytes: UInt64 = 64 << 20
    /// A balloon that has not brought the VM closer to its target for this long cannot deliver. 10 s is
    /// five of the guest agent's default inflate rounds: a healthy balloon moves within two, and a guest at
    /// its floor or backing off after pressure does not move at all.
    public var balloonGraceMillis: UInt64 = 10_000
    /// The largest swap-out per VM per second. Lowering a cgroup limit reclaims inside the write (the host
    /// agent's loop waits for it) and swap-out is disk I/O that every VM on the host shares: 128 MiB/s
    /// keeps a round under a few hundred milliseconds on a plain SSD and still takes 1 GiB in 8 s.
    public var stepBytesPerSecond: UInt64 = 128 << 20
    /// Host swap never filled beyond this: a full swap device turns the next limit into an OOM kill.
    public var swapReserveBytes: UInt64 = 64 << 20
    /// "At target" means within max(2 % of the target, 8 MiB): the sampled resident figure moves by that
    /// much from round to round in an idle guest (timer ticks, page cache), and swapping a VM for a few
    /// MiB would cost more than it gives.
    public var tolerancePercent: Double = 2
    public var minimumToleranceBytes: UInt64 = 8 << 20

    public init() {}

    public func tolerance(forTarget target: UInt64) -> UInt64 {
        let percent = Double(target) * tolerancePercent / 100
        return max(percent >= 1.8e19 ? .max : UInt64(percent), minimumToleranceBytes)
    }
}

/// Whether a VM's balloon is bringing it down: a pure tracker the engine feeds each round with the VM's
/// excess over its target and whether the guest agent is there.
public struct BalloonDelivery: Equatable, Sendable {
    public enum Verdict: Equatable, Sendable, CustomStringConvertible {
        /// At target, or moving toward it.
        case delivering
        /// No ballonet-guest session: nothing but the hypervisor can take memory from it.
        case noAgent
        /// Above target with no progress for the grace period.
        case stalled(forMillis: UInt64)

        public var description: String {
            switch self {
            case .delivering: "delivering"
            case .noAgent: "no guest agent"
            case .stalled(let millis): "no progress for \(millis / 1000) s"
            }
        }
    }

    /// The smallest excess seen since the last progress, and when that progress was made.
    public private(set) var bestExcessBytes: UInt64 = .max
    public private(set) var progressMillis: UInt64?

    /// Progress is a fall of at least this much: smaller moves are the noise of the resident figure.
    public static let progressBytes: UInt64 = 4 << 20

    public init() {}

    /// Takes this round's facts and says whether the balloon is delivering.
    public mutating func observe(excessBytes: UInt64, agentEstablished: Bool, nowMillis: UInt64,
                                 settings: SwapSettings, tolerance: UInt64) -> Verdict {
        guard agentEstablished else {
            bestExcessBytes = .max
            progressMillis = nil
            return .noAgent
        }
        if excessBytes <= tolerance || progressMillis == nil || excessBytes + Self.progressBytes <= bestExcessBytes {
            bestExcessBytes = excessBytes
            progressMillis = nowMillis
            return .delivering
        }
        let since = nowMillis >= progressMillis! ? nowMillis - progressMillis! : 0
        return since >= settings.balloonGraceMillis ? .stalled(forMillis: since) : .delivering
    }
}
