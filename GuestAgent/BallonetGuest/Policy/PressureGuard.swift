/// What the pressure guard says about the guest right now; it fills `BalloonObservation.underPressure`
/// and `.inflationHeldBack`.
public struct PressureAssessment: Equatable, Sendable {
    /// The guest is short of memory: release what may be released, at once (safety invariant 5).
    public var underPressure: Bool
    /// Why, while `underPressure`, for the log and for `ballonetctl explain`: "PSI some avg10 12.50 % ≥
    /// 10.00 %", "MemAvailable 50 MiB under the floor of 64 MiB". nil when there is no pressure.
    public var reason: String?
    /// Pin nothing new: true while under pressure and until the backoff has passed since the last pressure.
    public var inflationHeldBack: Bool

    public init(underPressure: Bool, reason: String?, inflationHeldBack: Bool) {
        self.underPressure = underPressure
        self.reason = reason
        self.inflationHeldBack = inflationHeldBack
    }
}

/// Decides when the guest is under memory pressure: pure, values in, an assessment out; the clock is
/// the caller's `nowMillis`.
///
/// Pressure begins when PSI memory "some" avg10 reaches the threshold or MemAvailable falls under the
/// floor. It ends only when both are clearly better: PSI under half the threshold and MemAvailable above
/// the floor plus one batch. The gap is hysteresis, for two reasons. avg10 is a decaying average: after
/// the balloon released pages it slides down through the threshold over several seconds, and a guard
/// that ended pressure at the threshold would flip back and forth on its noise. And a guest just over
/// the floor would fall under it again with the next batch pinned; asking for one batch of room means
/// the next inflation cannot by itself bring pressure straight back.
///
/// After pressure ends, inflation stays held back for `backoffMillis` (counted from the last assessment
/// under pressure), so the host's target does not pull the balloon back into the stall it caused.
///
/// With no PSI figure (a kernel without CONFIG_PSI, or booted with psi=0) the floor alone decides.
public struct PressureGuard: Sendable {
    public struct Settings: Equatable, Sendable {
        /// PSI "some" avg10 at or above this means pressure, in hundredths of a percent (1000 = 10 %).
        public var psiSomeAvg10Threshold: UInt32
        /// MemAvailable under this many pages means pressure.
        public var floorPages: UInt64
        /// The balloon's batch: pressure ends only with this much room above the floor.
        public var batchPages: UInt64
        /// No inflation this long after the last pressure.
        public var backoffMillis: UInt64

        public init(psiSomeAvg10Threshold: UInt32, floorPages: UInt64, batchPages: UInt64, backoffMillis: UInt64) {
            self.psiSomeAvg10Threshold = psiSomeAvg10Threshold
            self.floorPages = floorPages
            self.batchPages = batchPages
            self.backoffMillis = backoffMillis
        }

        /// The settings a configuration gives a guest with `memTotalBytes` of MemTotal.
        public init(_ configuration: GuestConfiguration, memTotalBytes: UInt64) {
            self.init(psiSomeAvg10Threshold: configuration.psiSomeAvg10Hundredths,
                      floorPages: configuration.floorPages(memTotalBytes: memTotalBytes),
                      batchPages: configuration.batchPages,
                      backoffMillis: configuration.backoffMillis)
        }
    }

    public var settings: Settings
    /// Whether the last assessment found pressure.
    public private(set) var underPressure = false
    /// When the guard last found pressure; nil if never.
    public private(set) var lastPressureMillis: UInt64?

    public init(settings: Settings) {
        self.settings = settings
    }

    /// Assesses one sample. `psiSomeAvg10` is in hundredths of a percent, nil when the kernel has no PSI;
    /// `availablePages` is MemAvailable in 4 KiB pages.
    public mutating func assess(psiSomeAvg10: UInt32?, availablePages: UInt64, nowMillis: UInt64) -> PressureAssessment {
        let threshold = settings.psiSomeAvg10Threshold
        let reason: String?
        if !underPressure {
            if let psi = psiSomeAvg10, psi >= threshold {
                reason = "PSI some avg10 \(percent(psi)) ≥ \(percent(threshold))"
            } else if availablePages < settings.floorPages {
                reason = "MemAvailable \(mebibytes(availablePages)) under the floor of \(mebibytes(settings.floorPages))"
            } else {
                reason = nil
            }
        } else {
            // Half the threshold, rounded up so that a threshold of 0.01 % still has a level to fall under.
            let releaseLevel = threshold / 2 + threshold % 2
            let room = settings.floorPages.addingReportingOverflow(settings.batchPages)
            let wantedAvailable = room.overflow ? UInt64.max : room.partialValue
            if let psi = psiSomeAvg10, psi >= releaseLevel {
                reason = "PSI some avg10 \(percent(psi)) not yet under \(percent(releaseLevel))"
            } else if availablePages <= wantedAvailable {
                reason = "MemAvailable \(mebibytes(availablePages)) not yet above the floor and one batch (\(mebibytes(wantedAvailable)))"
            } else {
                reason = nil
            }
        }
        underPressure = reason != nil
        if underPressure {
            lastPressureMillis = nowMillis
        }
        return PressureAssessment(underPressure: underPressure, reason: reason,
                                  inflationHeldBack: underPressure || backingOff(nowMillis: nowMillis))
    }

    /// Whether less than the backoff has passed since the last pressure. A clock that reads earlier than
    /// the last pressure (it should not: the daemon passes a monotonic clock) counts as no time passed.
    private func backingOff(nowMillis: UInt64) -> Bool {
        guard let last = lastPressureMillis else { return false }
        guard nowMillis >= last else { return true }
        return nowMillis - last < settings.backoffMillis
    }

    /// Hundredths of a percent as "12.50 %".
    private func percent(_ hundredths: UInt32) -> String {
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction) %"
    }

    /// 4 KiB pages as whole MiB, rounded down: "50 MiB".
    private func mebibytes(_ pages: UInt64) -> String {
        "\(pages / GuestConfiguration.pagesPerMiB) MiB"
    }
}
