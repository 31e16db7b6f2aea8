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
        do {
            return try JSONDecoder().decode([String: VMSettings].self, from: Data(bytes))
        } catch {
            throw ControlError("the VM settings file \(path) is not what ballonetctl set writes (\(error)); fix or remove it")
        }
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
