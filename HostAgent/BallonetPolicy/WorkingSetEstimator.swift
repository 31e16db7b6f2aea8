/// ESX's working-set estimator: a slow and a fast moving average of the sampled active memory, and the
/// newest sample itself (ESX: "a version of the faster average that incorporates counts from the current
/// sampling period"); the estimate is their maximum. So it rises with the first sample that shows more
/// memory in use and falls only as fast as the slow average lets it: quick to give, slow to take.
///
/// A pure value: the caller says how much time each sample covers; there is no clock in here.
public struct WorkingSetEstimator: Equatable, Sendable {
    public let settings: EstimatorSettings
    public private(set) var fast: Double = 0
    public private(set) var slow: Double = 0
    public private(set) var latest: UInt64 = 0
    public private(set) var samples: UInt64 = 0

    public init(settings: EstimatorSettings = EstimatorSettings()) { self.settings = settings }

    /// The estimate in bytes, or nil before the first sample.
    public var estimateBytes: UInt64? {
        guard samples > 0 else { return nil }
        return max(latest, Self.bytes(fast), Self.bytes(slow))
    }

    /// Takes one sample: `activeBytes` measured over the `elapsedMillis` since the previous sample.
    public mutating func observe(activeBytes: UInt64, elapsedMillis: UInt64) {
        let value = Double(activeBytes)
        if samples == 0 {
            fast = value
            slow = value
        } else {
            fast += Self.gain(elapsedMillis: elapsedMillis, halfLifeMillis: settings.fastHalfLifeMillis) * (value - fast)
            slow += Self.gain(elapsedMillis: elapsedMillis, halfLifeMillis: settings.slowHalfLifeMillis) * (value - slow)
        }
        latest = activeBytes
        samples &+= 1
    }

    /// The weight a sample covering `elapsedMillis` gets in an average with half-life `halfLifeMillis`:
    /// 1 − 2^(−elapsed/halfLife), so two samples 1 s apart move the average as far as one sample 2 s apart.
    static func gain(elapsedMillis: UInt64, halfLifeMillis: UInt64) -> Double {
        guard halfLifeMillis > 0 else { return 1 }
        return 1 - exp2(-Double(elapsedMillis) / Double(halfLifeMillis))
    }

    static func bytes(_ value: Double) -> UInt64 {
        guard value > 0 else { return 0 }
        return value >= 1.8e19 ? .max : UInt64(value.rounded(.up))
    }
}

/// How the host's two working-set estimates of a VM make the one the policy uses.
///
/// - The host's sampler (`IdlePageSampler`: accessed bits of QEMU's guest-RAM mapping, cleared and read
///   back each period) sees every page the guest touched in the period, with or without a guest agent,
///   and nothing it did not touch: memory the guest keeps but reads rarely (a database's cold cache, a
///   kernel's slab) looks idle.
/// - The guest agent's sample (its kernel's active LRU lists and the memory outside them) sees what the
///   guest's kernel would keep under pressure, aged over minutes; it does not exist without the agent and
///   is guest input (bounded, but a hostile guest may claim it is busy, which only keeps its own memory).
///
/// The rule: the larger of the two estimates that are fresh. Each source misses what the other sees, and
/// the policy's error is asymmetric: trimming a guest below what it uses costs it swap storms, while
/// trimming it less costs the host only memory the state machine can still take when memory is short
/// (allocations from soft down do not depend on the estimate beyond the idle tax). A VM with neither is
/// counted fully active.
public enum WorkingSetSources {
    public static func combined(host: UInt64?, guest: UInt64?) -> UInt64? {
        switch (host, guest) {
        case let (host?, guest?): max(host, guest)
        case let (host?, nil): host
        case let (nil, guest?): guest
        case (nil, nil): nil
        }
    }
}

/// 2^x for the estimator's gains, without Foundation (this module has no dependencies).
func exp2(_ x: Double) -> Double {
    // 2^x = 2^i · 2^f with i integral and f in [0, 1); 2^f from its Taylor series in f·ln 2, which converges
    // to double precision in 20 terms.
    guard x.isFinite else { return x > 0 ? .infinity : 0 }
    if x < -1074 { return 0 }
    if x > 1023 { return .infinity }
    let whole = x.rounded(.down)
    let y = (x - whole) * 0.693_147_180_559_945_3
    var term = 1.0
    var sum = 1.0
    for n in 1...20 {
        term *= y / Double(n)
        sum += term
    }
    return Double(sign: .plus, exponent: Int(whole), significand: sum)
}
