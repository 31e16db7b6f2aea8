/// Reads the typed values of one table of a configuration file (host.toml, a simulator scenario, the
/// `[policy]` table both share). Every failure is a `ConfigurationError` that names the file, the line and
/// the key, and says what the key accepts.
public struct TOMLTableReader: Sendable {
    public let path: String
    public let table: TOMLTable

    public init(path: String, table: TOMLTable) {
        self.path = path
        self.table = table
    }

    /// How messages name a table: `[host]`, or `[[vm]]` for an element of an array of tables.
    public static func place(_ table: TOMLTable) -> String {
        table.isArrayElement ? "[[\(table.name)]]" : "[\(table.name)]"
    }

    public var place: String { Self.place(table) }

    public func entry(_ key: String) -> TOMLEntry? { table.entries.first { $0.key == key } }

    public func wrongType(_ entry: TOMLEntry, _ expected: String) -> ConfigurationError {
        ConfigurationError(path: path, line: entry.line, kind: .wrongType,
                           message: "\"\(entry.key)\" in \(place) must be \(expected), found \(entry.value.typeDescription)")
    }

    /// `key` is out of range: on its line (the table's when it is absent), with what was found if given.
    public func outOfRange(_ key: String, _ accepted: String, found: Double? = nil) -> ConfigurationError {
        ConfigurationError(path: path, line: entry(key)?.line ?? table.line, kind: .outOfRange,
                           message: "\"\(key)\" in \(place) must be \(accepted)" + (found.map { ", found \(Self.show($0))" } ?? ""))
    }

    public func missing(_ key: String, _ what: String) -> ConfigurationError {
        ConfigurationError(path: path, line: table.line, kind: .outOfRange, message: "\(place) needs \(key) (\(what))")
    }

    public func string(_ key: String) throws(ConfigurationError) -> String? {
        guard let entry = entry(key) else { return nil }
        guard case .string(let value) = entry.value else { throw wrongType(entry, "a string") }
        return value
    }

    public func boolean(_ key: String) throws(ConfigurationError) -> Bool? {
        guard let entry = entry(key) else { return nil }
        guard case .boolean(let value) = entry.value else { throw wrongType(entry, "true or false") }
        return value
    }

    public func integer(_ key: String, in range: ClosedRange<UInt64>) throws(ConfigurationError) -> UInt64? {
        guard let entry = entry(key) else { return nil }
        guard case .integer(let value) = entry.value else { throw wrongType(entry, "an integer") }
        guard value >= 0, range.contains(UInt64(value)) else {
            throw outOfRange(key, "between \(range.lowerBound) and \(range.upperBound)", found: Double(value))
        }
        return UInt64(value)
    }

    /// An integer or a float. `showingBounds` formats the range in the message: scenario files show whole
    /// numbers bare ("between 0 and 60"), the `[policy]` table as Swift prints a Double ("0.0 and 0.99").
    public func number(_ key: String, in range: ClosedRange<Double>,
                       showingBounds show: (Double) -> String = TOMLTableReader.show) throws(ConfigurationError) -> Double? {
        guard let entry = entry(key) else { return nil }
        let value: Double
        switch entry.value {
        case .integer(let integer): value = Double(integer)
        case .float(let float): value = float
        default: throw wrongType(entry, "a number")
        }
        guard range.contains(value) else { throw outOfRange(key, "between \(show(range.lowerBound)) and \(show(range.upperBound))", found: value) }
        return value
    }

    /// Whether `name` is 1 to `maximumBytes` ASCII letters, digits, '-', '_' or '.', not starting with '.':
    /// what may become a directory, a file name, a QEMU -name or a log field.
    public static func isPlainName(_ name: String, maximumBytes: Int) -> Bool {
        !name.isEmpty && name.utf8.count <= maximumBytes && name.first != "."
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7a) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }
    }

    /// A number as a message shows it: whole numbers without ".0".
    public static func show(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}
