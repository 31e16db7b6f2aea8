import BallonetLinux
import Foundation

/// Per-VM policy settings an operator changed with `ballonetctl set` (shares, min, max), kept across
/// restarts of the agent in one JSON file (default /var/lib/ballonet/vm-settings.json). They override
/// host.toml's values for the same VM; a VM that is gone keeps its entry until the operator sets it again.
public struct VMSettings: Codable, Equatable, Sendable {
    public var shares: UInt64?
    public var minMiB: UInt64?
    public var maxMiB: UInt64?

    public init(shares: UInt64? = nil, minMiB: UInt64? = nil, maxMiB: UInt64? = nil) {
        self.shares = shares
        self.minMiB = minMiB
        self.maxMiB = maxMiB
    }

    /// Why these settings cannot be used (the bounds host.toml has for the same keys), or nil.
    public func problem() -> String? {
        if let shares, !HostConfigurationLimits.shares.contains(shares) {
            return "shares must be between \(HostConfigurationLimits.shares.lowerBound) and \(HostConfigurationLimits.shares.upperBound)"
        }
        if let maxMiB, !HostConfigurationLimits.memoryMiB.contains(maxMiB) {
            return "max must be between \(HostConfigurationLimits.memoryMiB.lowerBound) and \(HostConfigurationLimits.memoryMiB.upperBound) MiB"
        }
        if let minMiB, minMiB > HostConfigurationLimits.memoryMiB.upperBound {
            return "min must be at most \(HostConfigurationLimits.memoryMiB.upperBound) MiB"
        }
        if let minMiB, let maxMiB, minMiB > maxMiB { return "min \(minMiB) MiB is above max \(maxMiB) MiB" }
        return nil
    }

    /// `configuration` with these settings over it.
    public func applied(to configuration: VMConfiguration) -> VMConfiguration {
        var result = configuration
        if let shares { result.shares = shares }
        if let minMiB { result.minMiB = minMiB }
        if let maxMiB { result.maxMiB = maxMiB }
        return result
    }
}

public enum VMSettingsFile {
    public static let defaultPath = "/var/lib/ballonet/vm-settings.json"
    /// One entry is under 100 bytes; 1 MiB holds ten thousand VMs and keeps a wrong file from being read whole.
    static let maximumFileBytes = 1 << 20

    /// The settings in `path`; none when it does not exist yet.
    public static func load(path: String) throws -> [String: VMSettings] {
        let bytes: [UInt8]
        do {
            bytes = try FileSystem.readFile(path, maxBytes: maximumFileBytes)
        } catch {
            if error.errno == .ENOENT { return [:] }
            throw ControlError("cannot read the VM settings file \(path): \(error)")
        }
        let settings: [String: VMSettings]
        do {
            settings = try JSONDecoder().decode([String: VMSettings].self, from: Data(bytes))
        } catch {
            throw ControlError("the VM settings file \(path) is not what ballonetctl set writes (\(error)); fix or remove it")
        }
        for (name, entry) in settings {
            if let problem = entry.problem() { throw ControlError("the VM settings file \(path), VM \(name): \(problem); fix or remove it") }
        }
        return settings
    }

    /// Writes all settings to `path` (atomically), making its directory if needed.
    public static func save(_ settings: [String: VMSettings], path: String) throws {
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !directory.isEmpty { try FileSystem.makeDirectory(directory, permissions: 0o755, orExisting: true) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try FileSystem.replaceFile(path, [UInt8](try encoder.encode(settings)) + [UInt8(ascii: "\n")], permissions: 0o644)
    }
}
