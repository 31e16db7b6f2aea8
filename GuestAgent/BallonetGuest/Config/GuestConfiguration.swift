import BallonetConfig
import BallonetLinux

/// The guest agent's settings: defaults, then /etc/ballonet/guest.toml, then command-line flags, each
/// overriding the one before. The defaults work with no file at all; packaging/guest.toml is the same
/// defaults written out, commented, with the reason for each.
public struct GuestConfiguration: Equatable, Sendable {
    /// Where the packaged configuration lives. A missing file there means "use the defaults"; a file
    /// named on the command line must exist.
    public static let defaultPath = "/etc/ballonet/guest.toml"

    /// `[port]`: how the agent reaches the host.
    public struct Port: Equatable, Sendable {
        /// The virtio-serial port QEMU gives the guest for the `org.ballonet.0` channel.
        public var path = "/dev/virtio-ports/org.ballonet.0"
        /// A UNIX socket to connect to instead of the port (tests run the agent outside a VM). Empty: use
        /// `path`.
        public var socket = ""
        /// First wait before reconnecting after the port broke or was absent: short, because a port is
        /// usually back within moments (the host agent restarted, QEMU reopened the chardev).
        public var reconnectMinMillis: UInt64 = 200
        /// The wait doubles up to this: a guest without a host agent polls every 10 s, which costs
        /// nothing and still picks the host up quickly when it appears.
        public var reconnectMaxMillis: UInt64 = 10_000

        public init() {}
    }

    /// `[balloon]`: where and how the agent pins pages.
    public struct Balloon: Equatable, Sendable {
        /// Where the agent mounts its own tmpfs for the balloon file (safety invariant 3: the pages
        /// outlive an agent crash because they live in a file, not in the agent).
        public var directory = "/run/ballonet/balloon"
        /// Mount a tmpfs of its own at `directory` (with huge pages when `hugePages`); false uses
        /// whatever is mounted there already.
        public var mountTmpfs = true
        /// Ask the tmpfs for 2 MiB pages (`huge=always`): pinning them costs about a third of what 4 KiB
        /// pages cost (DESIGN.md, measured 727–864 against 212–289 MiB/s), and the agent falls back to
        /// 4 KiB pages when guest memory is too fragmented.
        public var hugePages = true
        /// Pages pinned per batch, in MiB. The guest zero-fills each page it pins, so the host backs it
        /// until it has discarded it: small batches keep that transient small (4 MiB per batch, at most
        /// `maxUnansweredBatches` of them in flight).
        public var batchMiB: UInt64 = 4
        /// Reported batches awaiting the host's answer before the agent pins more. Unanswered pages
        /// cannot be released under pressure (safety invariant 2), so this bounds them: 16 MiB by default.
        public var maxUnansweredBatches = 4
        /// The floor (safety invariant 5): inflating never takes MemAvailable below
        /// max(floorPercent % of MemTotal, floorMinMiB). 5 % is a last-resort safety margin, not a policy:
        /// how much a guest keeps free is the host policy's decision (it leaves working set plus a buffer),
        /// and oVirt MoM's 20 % guest free floor is that kind of host-side knob. Repeating 20 % here would
        /// put a fifth of every guest out of the host's reach even when the host is short; the guest's
        /// floor only has to stop a host that asks too much, or acts on stale figures, from starving it.
        public var floorPercent: UInt64 = 5
        /// The floor's lower bound in MiB: in a small guest 5 % is too little (25 MiB of 512 MiB) to keep
        /// the kernel's reserves, the page cache of the programs that must keep running (init, journald,
        /// sshd, this agent) and room for a burst while the pressure guard reacts.
        public var floorMinMiB: UInt64 = 64

        public init() {}
    }

    /// `[pressure]`: when the guest takes its memory back without asking.
    public struct Pressure: Equatable, Sendable {
        /// PSI memory "some" avg10 at or above this (percent) means pressure: tasks spent at least a
        /// tenth of the last 10 s waiting for memory, which users feel. senpai aims for far less (about
        /// 0.1 %) because it trims on purpose until it sees a trace of pressure; this is a release
        /// trigger for when the balloon has gone too far, so it fires only on stalls that hurt.
        public var psiSomeAvg10Percent = 10.0
        /// No re-inflation this long after the last pressure: three sampling periods, and long enough for
        /// avg10 (a 10 s decaying average) to settle, so the balloon does not grow straight back into
        /// the pressure it just released.
        public var backoffSeconds: UInt64 = 30

        public init() {}
    }

    /// `[sampling]`: the stats samples the agent sends.
    public struct Sampling: Equatable, Sendable {
        /// Seconds between samples. ESX's paper sampled over 30 s; the host's fast moving average and its
        /// change limits (like MoM's 5 % per 10 s) act on periods of about 10 s, and a sample is a few
        /// /proc reads, so 10 s lets the host see a growing working set three times sooner for little cost.
        public var periodSeconds: UInt64 = 10
        /// Turn MGLRU on (`/sys/kernel/mm/lru_gen/enabled`) and mount debugfs when they are off, so the
        /// working set comes from page ages. Ages give a measured working set where the fallback only
        /// estimates one from LRU list sizes; MGLRU is built into Debian 12's kernel and enabling it costs
        /// little. False leaves the kernel's settings alone: ages are still used if MGLRU is on and
        /// debugfs mounted already.
        public var enableMGLRU = true

        public init() {}
    }

    /// `[log]`.
    public struct Log: Equatable, Sendable {
        /// "info": sessions, balloon moves and pressure events, about a line per event.
        public var level = GuestLogLevel.info

        public init() {}
    }

    public var port = Port()
    public var balloon = Balloon()
    public var pressure = Pressure()
    public var sampling = Sampling()
    public var log = Log()

    /// The defaults.
    public init() {}

    // MARK: Derived figures, in the wire's 4 KiB pages

    /// 4 KiB pages per MiB.
    public static let pagesPerMiB: UInt64 = 256
    /// The wire's page size.
    public static let pageBytes: UInt64 = 4096

    /// Pages pinned per batch.
    public var batchPages: UInt64 { balloon.batchMiB * GuestConfiguration.pagesPerMiB }

    /// The floor in pages for a guest with `memTotalBytes` of MemTotal: max(floorPercent %, floorMinMiB).
    public func floorPages(memTotalBytes: UInt64) -> UInt64 {
        let byPercent = memTotalBytes / GuestConfiguration.pageBytes * balloon.floorPercent / 100
        return max(byPercent, balloon.floorMinMiB * GuestConfiguration.pagesPerMiB)
    }

    /// The balloon controller's limits for this guest.
    public func balloonLimits(memTotalBytes: UInt64) -> BalloonLimits {
        BalloonLimits(batchPages: batchPages, floorPages: floorPages(memTotalBytes: memTotalBytes),
                      maxUnansweredBatches: balloon.maxUnansweredBatches)
    }

    /// The PSI threshold in hundredths of a percent, the unit of `PressureStall` and of stats samples.
    public var psiSomeAvg10Hundredths: UInt32 { UInt32((pressure.psiSomeAvg10Percent * 100).rounded()) }

    public var samplingPeriodMillis: UInt64 { sampling.periodSeconds * 1000 }
    public var backoffMillis: UInt64 { pressure.backoffSeconds * 1000 }
}

/// Log levels, the names swift-log uses.
public enum GuestLogLevel: String, CaseIterable, Equatable, Sendable {
    case trace, debug, info, notice, warning, error, critical
}

/// What the command line sets; nil leaves the file's (or the default) value.
public struct GuestConfigurationOverrides: Equatable, Sendable {
    public var portPath: String?
    public var portSocket: String?
    public var reconnectMinMillis: UInt64?
    public var reconnectMaxMillis: UInt64?
    public var balloonDirectory: String?
    public var mountTmpfs: Bool?
    public var hugePages: Bool?
    public var batchMiB: UInt64?
    public var maxUnansweredBatches: Int?
    public var floorPercent: UInt64?
    public var floorMinMiB: UInt64?
    public var psiSomeAvg10Percent: Double?
    public var backoffSeconds: UInt64?
    public var periodSeconds: UInt64?
    public var enableMGLRU: Bool?
    public var logLevel: GuestLogLevel?

    public init() {}
}

/// The bounds on what a configuration may say, each with its reason.
public enum GuestConfigurationLimits {
    /// A configuration file is a few dozen lines; 64 KiB is a hundred times that, and refusing more keeps
    /// a wrong path (a log, a disk image) from being read into memory.
    public static let maximumFileBytes = 64 * 1024
    /// PATH_MAX: the longest path the kernel resolves.
    public static let maximumPathBytes = 4096
    /// sun_path holds 108 bytes with its terminating NUL.
    public static let maximumSocketPathBytes = 107
    /// Reconnect waits, milliseconds: under 10 ms would spin on a port that is gone; over 10 minutes
    /// leaves the host without figures for too long.
    public static let reconnectMillis: ClosedRange<UInt64> = 10...600_000
    /// A batch of at least 1 MiB is worth a report; at most 64 MiB, because one batch is one inflate
    /// report and a frame carries at most `WireLimits.maxRangesPerMessage` (16384) ranges: 64 MiB of
    /// 4 KiB pages at the worst fragmentation (every other page). Larger batches would also grow the
    /// host's transient backing and the pages stuck unanswered under pressure.
    public static let batchMiB: ClosedRange<UInt64> = 1...64
    /// At least one batch must be in flight to make progress; 64 is far past where more stops helping.
    public static let maxUnansweredBatches: ClosedRange<Int> = 1...64
    /// Above 90 % of MemTotal the floor would stop the balloon from doing anything.
    public static let floorPercent: ClosedRange<UInt64> = 0...90
    /// 1 TiB: larger than any guest.
    public static let floorMinMiB: ClosedRange<UInt64> = 0...1_048_576
    /// PSI is a share of time: 0.01 % is the smallest step /proc/pressure prints, 100 % the largest.
    public static let psiSomeAvg10Percent: ClosedRange<Double> = 0.01...100
    /// Up to an hour: a longer backoff would keep a guest from giving memory back for no reason.
    public static let backoffSeconds: ClosedRange<UInt64> = 0...3600
    /// At least a second (PSI's averages and the host's averages need periods, not bursts), at most
    /// an hour (the host would treat the guest as silent).
    public static let periodSeconds: ClosedRange<UInt64> = 1...3600
}

// MARK: Loading

extension GuestConfiguration {
    /// Every table and key a file may have, in the order packaging/guest.toml lists them; error
    /// messages list them so a typo shows what was meant.
    public static let knownKeys: [(table: String, keys: [String])] = [
        ("port", ["path", "socket", "reconnect_min_ms", "reconnect_max_ms"]),
        ("balloon", ["directory", "mount_tmpfs", "huge_pages", "batch_mib", "max_unanswered_batches",
                     "floor_percent", "floor_min_mib"]),
        ("pressure", ["psi_some_avg10_percent", "backoff_seconds"]),
        ("sampling", ["period_seconds", "enable_mglru"]),
        ("log", ["level"]),
    ]

    /// Reads the file with `FileSystem.readFile` and loads it. `path` nil means the default path, where
    /// a missing file gives the defaults; a path given explicitly must exist.
    public static func load(path: String?) throws(ConfigurationError) -> GuestConfiguration {
        let filePath = path ?? defaultPath
        let contents: [UInt8]?
        do throws(SystemCallError) {
            contents = try FileSystem.readFile(filePath, maxBytes: GuestConfigurationLimits.maximumFileBytes)
        } catch where error.errno == .ENOENT {
            contents = nil
        } catch where error.errno == .EFBIG {
            throw tooLarge(filePath)
        } catch {
            throw ConfigurationError(path: filePath, line: 0, kind: .unreadable, message: "cannot read: \(error)")
        }
        return try load(path: path, fileContents: contents)
    }

    /// Loads from contents already read: `fileContents` nil means there is no file. `path` nil means the
    /// default path (no file there is fine); an explicit path with no file is an error.
    public static func load(path: String?, fileContents: [UInt8]?) throws(ConfigurationError) -> GuestConfiguration {
        let filePath = path ?? defaultPath
        guard let fileContents else {
            if path == nil { return GuestConfiguration() }
            throw ConfigurationError(path: filePath, line: 0, kind: .missingFile,
                                     message: "no such file (the default, \(defaultPath), may be missing; a file named explicitly may not)")
        }
        guard fileContents.count <= GuestConfigurationLimits.maximumFileBytes else { throw tooLarge(filePath) }
        guard let text = String(validating: fileContents, as: UTF8.self) else {
            throw ConfigurationError(path: filePath, line: 0, kind: .notUTF8, message: "not UTF-8 text")
        }
        return try parse(text, path: filePath)
    }

    private static func tooLarge(_ path: String) -> ConfigurationError {
        ConfigurationError(path: path, line: 0, kind: .tooLarge,
                           message: "larger than \(GuestConfigurationLimits.maximumFileBytes / 1024) KiB; a configuration is a few lines")
    }

    /// The defaults with the file's settings applied: pure, no I/O. `path` names the file in errors.
    public static func parse(_ text: String, path: String) throws(ConfigurationError) -> GuestConfiguration {
        let document = try TOMLSubset.parse(text, path: path)
        if let stray = document.rootEntries.first {
            throw ConfigurationError(path: path, line: stray.line, kind: .keyOutsideTable,
                                     message: "key \"\(stray.key)\" comes before any [table]; tables: \(tableList)")
        }
        var configuration = GuestConfiguration()
        var lines: [String: Int] = [:]
        for table in document.tables {
            guard let known = knownKeys.first(where: { $0.table == table.name }) else {
                throw ConfigurationError(path: path, line: table.line, kind: .unknownTable,
                                         message: "unknown table [\(table.name)]; known tables: \(tableList)")
            }
            guard !table.isArrayElement else {
                throw ConfigurationError(path: path, line: table.line, kind: .unknownTable,
                                         message: "[[\(table.name)]] is an array of tables; write [\(table.name)] once")
            }
            for entry in table.entries {
                guard known.keys.contains(entry.key) else {
                    throw ConfigurationError(
                        path: path, line: entry.line, kind: .unknownKey,
                        message: "unknown key \"\(entry.key)\" in [\(table.name)]; known keys: \(known.keys.joined(separator: ", "))")
                }
                let setting = Setting(table: table.name, entry: entry, path: path)
                try configuration.apply(setting)
                lines[table.name + "." + entry.key] = entry.line
            }
        }
        try configuration.validate(origin: path, lines: lines)
        return configuration
    }

    private static var tableList: String { knownKeys.map { "[\($0.table)]" }.joined(separator: ", ") }

    /// Flags over the file: every non-nil field replaces the configured value. Call `validate()` after.
    public mutating func apply(_ overrides: GuestConfigurationOverrides) {
        if let value = overrides.portPath { port.path = value }
        if let value = overrides.portSocket { port.socket = value }
        if let value = overrides.reconnectMinMillis { port.reconnectMinMillis = value }
        if let value = overrides.reconnectMaxMillis { port.reconnectMaxMillis = value }
        if let value = overrides.balloonDirectory { balloon.directory = value }
        if let value = overrides.mountTmpfs { balloon.mountTmpfs = value }
        if let value = overrides.hugePages { balloon.hugePages = value }
        if let value = overrides.batchMiB { balloon.batchMiB = value }
        if let value = overrides.maxUnansweredBatches { balloon.maxUnansweredBatches = value }
        if let value = overrides.floorPercent { balloon.floorPercent = value }
        if let value = overrides.floorMinMiB { balloon.floorMinMiB = value }
        if let value = overrides.psiSomeAvg10Percent { pressure.psiSomeAvg10Percent = value }
        if let value = overrides.backoffSeconds { pressure.backoffSeconds = value }
        if let value = overrides.periodSeconds { sampling.periodSeconds = value }
        if let value = overrides.enableMGLRU { sampling.enableMGLRU = value }
        if let value = overrides.logLevel { log.level = value }
    }

    /// Checks every value against `GuestConfigurationLimits`. `origin` names where the values came from
    /// ("command line" after `apply`); `lines` gives the file line of each "table.key" that a file set.
    public func validate(origin: String = "command line", lines: [String: Int] = [:]) throws(ConfigurationError) {
        func fail(_ table: String, _ key: String, _ message: String) -> ConfigurationError {
            ConfigurationError(path: origin, line: lines[table + "." + key] ?? 0, kind: .outOfRange,
                               message: "\(key) in [\(table)] \(message)")
        }
        func check<Value: Comparable>(_ value: Value, _ range: ClosedRange<Value>, _ table: String, _ key: String,
                                      unit: String) throws(ConfigurationError) {
            guard range.contains(value) else {
                throw fail(table, key, "must be between \(range.lowerBound) and \(range.upperBound)\(unit), found \(value)")
            }
        }
        func checkPath(_ value: String, _ table: String, _ key: String, allowEmpty: Bool = false,
                       maximumBytes: Int = GuestConfigurationLimits.maximumPathBytes) throws(ConfigurationError) {
            if value.isEmpty && allowEmpty { return }
            guard value.hasPrefix("/") else {
                throw fail(table, key, "must be an absolute path, found \"\(value)\"")
            }
            guard value.utf8.count <= maximumBytes else {
                throw fail(table, key, "is \(value.utf8.count) bytes long; at most \(maximumBytes) are allowed")
            }
            guard !value.utf8.contains(0) else {
                throw fail(table, key, "contains a NUL byte")
            }
        }
        try checkPath(port.path, "port", "path")
        try checkPath(port.socket, "port", "socket", allowEmpty: true,
                      maximumBytes: GuestConfigurationLimits.maximumSocketPathBytes)
        try check(port.reconnectMinMillis, GuestConfigurationLimits.reconnectMillis, "port", "reconnect_min_ms", unit: " ms")
        try check(port.reconnectMaxMillis, GuestConfigurationLimits.reconnectMillis, "port", "reconnect_max_ms", unit: " ms")
        guard port.reconnectMinMillis <= port.reconnectMaxMillis else {
            let key = lines["port.reconnect_max_ms"] != nil ? "reconnect_max_ms" : "reconnect_min_ms"
            throw fail("port", key, "must keep reconnect_min_ms (\(port.reconnectMinMillis)) ≤ reconnect_max_ms (\(port.reconnectMaxMillis))")
        }
        try checkPath(balloon.directory, "balloon", "directory")
        try check(balloon.batchMiB, GuestConfigurationLimits.batchMiB, "balloon", "batch_mib", unit: " MiB")
        try check(balloon.maxUnansweredBatches, GuestConfigurationLimits.maxUnansweredBatches, "balloon",
                  "max_unanswered_batches", unit: "")
        try check(balloon.floorPercent, GuestConfigurationLimits.floorPercent, "balloon", "floor_percent", unit: " %")
        try check(balloon.floorMinMiB, GuestConfigurationLimits.floorMinMiB, "balloon", "floor_min_mib", unit: " MiB")
        guard pressure.psiSomeAvg10Percent.isFinite else {
            throw fail("pressure", "psi_some_avg10_percent", "must be a finite number")
        }
        try check(pressure.psiSomeAvg10Percent, GuestConfigurationLimits.psiSomeAvg10Percent, "pressure",
                  "psi_some_avg10_percent", unit: " %")
        try check(pressure.backoffSeconds, GuestConfigurationLimits.backoffSeconds, "pressure", "backoff_seconds", unit: " s")
        try check(sampling.periodSeconds, GuestConfigurationLimits.periodSeconds, "sampling", "period_seconds", unit: " s")
    }

    /// One `key = value` from a file, with what an error about it needs.
    private struct Setting {
        let table: String
        let entry: TOMLEntry
        let path: String

        func wrongType(_ expected: String) -> ConfigurationError {
            ConfigurationError(path: path, line: entry.line, kind: .wrongType,
                               message: "\(entry.key) in [\(table)] must be \(expected), found \(entry.value.typeDescription)")
        }

        func string() throws(ConfigurationError) -> String {
            guard case .string(let value) = entry.value else { throw wrongType("a string in double quotes") }
            return value
        }

        func boolean() throws(ConfigurationError) -> Bool {
            guard case .boolean(let value) = entry.value else { throw wrongType("true or false") }
            return value
        }

        /// An integer that must fit `range` (checked here because a negative value has no UInt64 to be
        /// checked as later).
        func integer<Value: FixedWidthInteger>(in range: ClosedRange<Value>, unit: String) throws(ConfigurationError) -> Value {
            guard case .integer(let value) = entry.value else { throw wrongType("an integer") }
            guard let converted = Value(exactly: value), range.contains(converted) else {
                throw ConfigurationError(
                    path: path, line: entry.line, kind: .outOfRange,
                    message: "\(entry.key) in [\(table)] must be between \(range.lowerBound) and \(range.upperBound)\(unit), found \(value)")
            }
            return converted
        }

        /// A float; an integer is taken too ("10" for 10.0 loses nothing, and people write it).
        func float() throws(ConfigurationError) -> Double {
            switch entry.value {
            case .float(let value): return value
            case .integer(let value): return Double(value)
            default: throw wrongType("a number")
            }
        }
    }

    private mutating func apply(_ setting: Setting) throws(ConfigurationError) {
        typealias Limits = GuestConfigurationLimits
        switch (setting.table, setting.entry.key) {
        case ("port", "path"): port.path = try setting.string()
        case ("port", "socket"): port.socket = try setting.string()
        case ("port", "reconnect_min_ms"): port.reconnectMinMillis = try setting.integer(in: Limits.reconnectMillis, unit: " ms")
        case ("port", "reconnect_max_ms"): port.reconnectMaxMillis = try setting.integer(in: Limits.reconnectMillis, unit: " ms")
        case ("balloon", "directory"): balloon.directory = try setting.string()
        case ("balloon", "mount_tmpfs"): balloon.mountTmpfs = try setting.boolean()
        case ("balloon", "huge_pages"): balloon.hugePages = try setting.boolean()
        case ("balloon", "batch_mib"): balloon.batchMiB = try setting.integer(in: Limits.batchMiB, unit: " MiB")
        case ("balloon", "max_unanswered_batches"):
            balloon.maxUnansweredBatches = try setting.integer(in: Limits.maxUnansweredBatches, unit: "")
        case ("balloon", "floor_percent"): balloon.floorPercent = try setting.integer(in: Limits.floorPercent, unit: " %")
        case ("balloon", "floor_min_mib"): balloon.floorMinMiB = try setting.integer(in: Limits.floorMinMiB, unit: " MiB")
        case ("pressure", "psi_some_avg10_percent"): pressure.psiSomeAvg10Percent = try setting.float()
        case ("pressure", "backoff_seconds"): pressure.backoffSeconds = try setting.integer(in: Limits.backoffSeconds, unit: " s")
        case ("sampling", "period_seconds"): sampling.periodSeconds = try setting.integer(in: Limits.periodSeconds, unit: " s")
        case ("sampling", "enable_mglru"): sampling.enableMGLRU = try setting.boolean()
        case ("log", "level"):
            let name = try setting.string()
            guard let level = GuestLogLevel(rawValue: name) else {
                throw ConfigurationError(
                    path: setting.path, line: setting.entry.line, kind: .outOfRange,
                    message: "level in [log] must be one of \(GuestLogLevel.allCases.map(\.rawValue).joined(separator: ", ")), found \"\(name)\"")
            }
            log.level = level
        default:
            // knownKeys lists a key this switch does not set: a programming error, caught by the tests
            // that parse packaging/guest.toml.
            throw ConfigurationError(path: setting.path, line: setting.entry.line, kind: .unknownKey,
                                     message: "key \"\(setting.entry.key)\" in [\(setting.table)] is known but not handled")
        }
    }
}
