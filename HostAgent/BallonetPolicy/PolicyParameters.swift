/// The policy's settings, each default with its reason. Everything here is a plain value: the host agent
/// fills it from host.toml, the simulator from a scenario file, the tests directly.
public struct PolicyParameters: Equatable, Sendable {
    /// The idle memory tax rate τ in [0, `maximumIdleTaxRate`]: the largest fraction of a VM's idle memory that
    /// may be reclaimed for others. ESX's default, 0.75, makes an idle page cost four active ones (k = 4): most
    /// idle memory can move to VMs that use theirs, and a quarter stays as a buffer against a working set that
    /// grows faster than ballooning can give memory back. τ = 0 is pure proportional share.
    public var idleTaxRate: Double = 0.75
    public var estimator = EstimatorSettings()
    public var thresholds = FreeMemoryThresholds()
    public var changeLimit = ChangeLimit()
    public var trimming = Trimming()
    public var swap = SwapSettings()

    /// At τ = 1, k = 1/(1−τ) is infinite and an idle page costs infinitely many shares; 0.99 (k = 100)
    /// is already "take nearly all idle memory".
    public static let maximumIdleTaxRate = 0.99

    public init() {}

    /// k = 1/(1−τ): how many active pages one idle page costs.
    public var idleCost: Double { 1 / (1 - min(max(idleTaxRate, 0), Self.maximumIdleTaxRate)) }
}

/// How fast the working-set estimate follows its samples. Gains are half-lives in time, not per sample, so
/// the estimate behaves the same whether a guest reports every 2 s or every 30 s.
///
/// ESX took 100 random pages per 30 s period and needed long averages to smooth that statistical noise.
/// Ballonet's samples are counts, not samples: the guest kernel's own LRU lists or MGLRU ages, or the host's
/// Referenced bits over all of guest RAM. With less noise to smooth, the averages can be short, so idle
/// memory returns to the host in tens of seconds rather than minutes:
/// - fast (2 s): after a brief burst the estimate stays up for a couple of seconds, not just one sample;
/// - slow (6 s): a working set that halves is followed within 30 s (5 half-lives leave 3 % of the drop),
///   still slow enough that a pause of a second or two between two bursts does not trim the VM.
/// A rise is followed at once: the newest sample is the third term of the maximum.
public struct EstimatorSettings: Equatable, Sendable {
    public var fastHalfLifeMillis: UInt64 = 2_000
    public var slowHalfLifeMillis: UInt64 = 6_000
    public init(fastHalfLifeMillis: UInt64 = 2_000, slowHalfLifeMillis: UInt64 = 6_000) {
        self.fastHalfLifeMillis = fastHalfLifeMillis
        self.slowHalfLifeMillis = slowHalfLifeMillis
    }
}

/// Free host memory thresholds, in percent of the memory they are measured against (ESX's defaults).
///
/// The state falls as soon as free memory drops below a threshold: below `soft` (4 %) the host balloons,
/// below `hard` (2 %) it also swaps at the hypervisor, below `low` (1 %) it also pauses VMs above target.
/// It rises only when free memory is back above the next threshold up by `hysteresisPercent`: out of low
/// above 2 % + h, out of hard above 4 % + h, out of soft (to high) above `high` (6 %) + h. So a host whose
/// free memory hovers at one threshold does not flap between two states.
public struct FreeMemoryThresholds: Equatable, Sendable {
    public var highPercent: Double = 6
    public var softPercent: Double = 4
    public var hardPercent: Double = 2
    public var lowPercent: Double = 1
    /// 0.5 % of host memory: more than the noise of one second's allocations on a busy host (a few tens of
    /// MiB on 16 GiB), small against the 2 % between two thresholds.
    public var hysteresisPercent: Double = 0.5
    public init() {}
}

/// How fast a VM's target may fall, so a guest is not whipsawed by estimates that move.
///
/// Falls are limited to `maximumDecreasePercentPerSecond` of the VM's max while the host is calm (the high
/// state, where only trimming takes memory): 5 %/s trims a 4 GiB VM by at most 200 MiB a second, ten times
/// oVirt MoM's 5 % per 10 s, so a working set that halves is trimmed within 30 s as the estimator allows.
/// When the host is short (soft and below) targets are the allocation at once, so they never add up to
/// more than the host has; the balloon's own pace (`inflate_step_mib`) and hypervisor swap carry them
/// out, and the estimator's slow fall is what keeps a guest from being whipsawed. Rises are not limited
/// by default: a guest that needs memory must get it at once (deflating never hurts a guest);
/// `maximumIncreasePercentPerSecond` can limit them too.
public struct ChangeLimit: Equatable, Sendable {
    public var maximumDecreasePercentPerSecond: Double? = 5
    public var maximumIncreasePercentPerSecond: Double? = nil
    public init() {}
}

/// Proactive trimming, beyond ESX: even on a calm host each VM is trimmed toward its estimated working set
/// plus a buffer, never below its min, so idle guest memory returns to the host before anyone needs it.
///
/// The buffer is 20 % of the estimate (Hyper-V's Dynamic Memory buffer) but at least 64 MiB: a guest's
/// kernel needs room for a burst of page cache and slab that no LRU-based estimate shows, and 64 MiB is
/// what a small Debian guest's page cache churns through while the balloon catches up.
public struct Trimming: Equatable, Sendable {
    public var enabled = true
    public var bufferPercent: Double = 20
    public var minimumBufferBytes: UInt64 = 64 << 20
    public init() {}

    /// The memory a VM with working set `estimate` should keep: estimate + buffer.
    public func demand(forEstimate estimate: UInt64) -> UInt64 {
        let percent = Double(estimate) * bufferPercent / 100
        let buffer = max(percent >= 1.8e19 ? UInt64.max : UInt64(percent), minimumBufferBytes)
        let (sum, overflow) = estimate.addingReportingOverflow(buffer)
        return overflow ? .max : sum
    }
}
