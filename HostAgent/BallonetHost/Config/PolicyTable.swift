import BallonetConfig
import BallonetPolicy

/// The `[policy]` table, shared by host.toml and the simulator's scenario files, so a policy tried in
/// `ballonet-host simulate` is written the same way in the host's configuration.
public enum PolicyTable {
    public static let keys = [
        "idle_tax", "trimming", "trim_buffer_percent", "trim_minimum_buffer_mib", "max_decrease_percent_per_second",
        "max_increase_percent_per_second", "fast_half_life_seconds", "slow_half_life_seconds",
        "high_percent", "soft_percent", "hard_percent", "low_percent", "hysteresis_percent",
        "balloon_grace_seconds", "swap_step_mib", "swap_reserve_mib",
    ]

    /// Half-lives up to an hour: beyond that an estimate no longer follows a working set at all.
    static let halfLifeSeconds: ClosedRange<Double> = 0...3600

    /// Reads `table` over `parameters`; unknown keys are the caller's to refuse (its list is `keys`).
    public static func read(_ table: TOMLTable, path: String, into parameters: inout PolicyParameters) throws(ConfigurationError) {
        let reader = TOMLTableReader(path: path, table: table)
        // As this table has always said its bounds: "between 0.0 and 0.99".
        func number(_ key: String, in range: ClosedRange<Double>) throws(ConfigurationError) -> Double? {
            try reader.number(key, in: range, showingBounds: { "\($0)" })
        }
        if let value = try number("idle_tax", in: 0...PolicyParameters.maximumIdleTaxRate) { parameters.idleTaxRate = value }
        if let on = try reader.boolean("trimming") { parameters.trimming.enabled = on }
        if let value = try number("trim_buffer_percent", in: 0...1000) { parameters.trimming.bufferPercent = value }
        if let value = try number("trim_minimum_buffer_mib", in: 0...1_048_576) { parameters.trimming.minimumBufferBytes = UInt64(value * 1_048_576) & ~4095 }
        // 0 means no limit: a limit of nothing would freeze every target.
        if let value = try number("max_decrease_percent_per_second", in: 0...100) {
            parameters.changeLimit.maximumDecreasePercentPerSecond = value > 0 ? value : nil
        }
        if let value = try number("max_increase_percent_per_second", in: 0...100) {
            parameters.changeLimit.maximumIncreasePercentPerSecond = value > 0 ? value : nil
        }
        if let value = try number("fast_half_life_seconds", in: halfLifeSeconds) { parameters.estimator.fastHalfLifeMillis = UInt64(value * 1000) }
        if let value = try number("slow_half_life_seconds", in: halfLifeSeconds) { parameters.estimator.slowHalfLifeMillis = UInt64(value * 1000) }
        if let value = try number("high_percent", in: 0...50) { parameters.thresholds.highPercent = value }
        if let value = try number("soft_percent", in: 0...50) { parameters.thresholds.softPercent = value }
        if let value = try number("hard_percent", in: 0...50) { parameters.thresholds.hardPercent = value }
        if let value = try number("low_percent", in: 0...50) { parameters.thresholds.lowPercent = value }
        if let value = try number("hysteresis_percent", in: 0...10) { parameters.thresholds.hysteresisPercent = value }
        // A grace of up to 10 minutes: beyond that a VM the balloon cannot shrink is simply never swapped.
        if let value = try number("balloon_grace_seconds", in: 0...600) { parameters.swap.balloonGraceMillis = UInt64(value * 1000) }
        // MiB per second per VM: at least 1 (a limit that never moves would never be reached), at most 64 GiB.
        if let value = try reader.integer("swap_step_mib", in: 1...65_536) { parameters.swap.stepBytesPerSecond = value << 20 }
        if let value = try reader.integer("swap_reserve_mib", in: 0...(1 << 20)) { parameters.swap.swapReserveBytes = value << 20 }
        let t = parameters.thresholds
        guard t.lowPercent < t.hardPercent, t.hardPercent < t.softPercent, t.softPercent < t.highPercent else {
            throw ConfigurationError(path: path, line: table.line, kind: .outOfRange,
                                     message: "[\(table.name)] thresholds must be ordered low_percent < hard_percent < soft_percent < high_percent (now \(t.lowPercent) / \(t.hardPercent) / \(t.softPercent) / \(t.highPercent))")
        }
        guard parameters.estimator.fastHalfLifeMillis <= parameters.estimator.slowHalfLifeMillis else {
            throw ConfigurationError(path: path, line: table.line, kind: .outOfRange,
                                     message: "[\(table.name)] fast_half_life_seconds must not be longer than slow_half_life_seconds")
        }
    }
}
