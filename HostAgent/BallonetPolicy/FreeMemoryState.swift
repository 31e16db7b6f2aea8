/// How much free memory the host has, as ESX's four states, and what each lets the host do.
public enum FreeMemoryState: String, Codable, Comparable, Sendable, CaseIterable {
    /// Enough free memory: nothing is reclaimed beyond proactive trimming.
    case high
    /// Reclaim toward targets by ballooning.
    case soft
    /// Also swap at the hypervisor level where ballooning cannot deliver.
    case hard
    /// Also pause VMs above their targets until memory recovers.
    case low

    public static func < (a: Self, b: Self) -> Bool { a.severity < b.severity }

    var severity: Int {
        switch self {
        case .high: 0
        case .soft: 1
        case .hard: 2
        case .low: 3
        }
    }

    /// What the host's mechanisms may do in this state.
    public var actions: Actions {
        switch self {
        case .high: []
        case .soft: [.balloon]
        case .hard: [.balloon, .hypervisorSwap]
        case .low: [.balloon, .hypervisorSwap, .pauseAboveTarget]
        }
    }

    public struct Actions: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let balloon = Actions(rawValue: 1)
        public static let hypervisorSwap = Actions(rawValue: 2)
        public static let pauseAboveTarget = Actions(rawValue: 4)

        public var names: [String] {
            var names: [String] = []
            if contains(.balloon) { names.append("balloon") }
            if contains(.hypervisorSwap) { names.append("hypervisor swap") }
            if contains(.pauseAboveTarget) { names.append("pause VMs above target") }
            return names
        }
    }

    /// The next state given the last one and free memory now (`freeBytes` of `totalBytes`), with hysteresis:
    /// see `FreeMemoryThresholds`. Free memory may be negative (VMs resident beyond a budget): pass it
    /// signed.
    public static func next(after previous: FreeMemoryState, freeBytes: Int64, totalBytes: UInt64,
                            thresholds: FreeMemoryThresholds) -> FreeMemoryState {
        guard totalBytes > 0 else { return .low }
        let percent = Double(freeBytes) / Double(totalBytes) * 100
        // Where free memory alone puts the host, falling.
        let falling: FreeMemoryState = percent < thresholds.lowPercent ? .low
            : percent < thresholds.hardPercent ? .hard
            : percent < thresholds.softPercent ? .soft : .high
        if falling >= previous { return falling }
        // Rising: step up past each threshold only with the hysteresis margin above it.
        var state = previous
        while state != .high {
            let bar: Double = switch state {
            case .low: thresholds.hardPercent
            case .hard: thresholds.softPercent
            case .soft: thresholds.highPercent
            case .high: 0
            }
            guard percent >= bar + thresholds.hysteresisPercent else { break }
            state = state.oneUp
        }
        return state
    }

    var oneUp: FreeMemoryState {
        switch self {
        case .low: .hard
        case .hard: .soft
        case .soft, .high: .high
        }
    }
}
