/// The part of TOML (https://toml.io/en/v1.0.0) that Ballonet's configuration files use, parsed without a
/// dependency: the guest agent links nothing it does not need.
///
/// What is read:
/// - blank lines and comments (`#` to the end of a line, also after a value);
/// - table headers, `[name]`, with a bare name, and arrays of tables, `[[name]]` (each header starts one
///   more element: the host's `[[vm]]` list);
/// - `key = value` with a bare key (letters, digits, `_`, `-`);
/// - values: basic strings (`"…"` with the escapes `\"`, `\\`, `\n`, `\t`), integers (optional sign,
///   `_` between digits), floats (`digits.digits`, optional sign, `_` between digits), `true`, `false`.
///
/// Anything else TOML has (dotted keys, quoted keys, arrays, inline tables, literal and multi-line
/// strings, dates, exponents, hex) is a syntax error that says so, rather than a silent misreading:
/// a configuration file that does not mean what its author thinks is worse than one that is refused.
public enum TOMLSubset {
    /// Parses `text`; `path` only names the file in errors.
    public static func parse(_ text: String, path: String) throws(ConfigurationError) -> TOMLDocument {
        var document = TOMLDocument()
        var currentTable: Int?
        var lineNumber = 0
        // Split the bytes, not the characters: Swift reads "\r\n" as one Character, which is not "\n".
        for rawLine in Array(text.utf8).split(separator: newline, omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Array(rawLine)
            // A file written on Windows ends its lines with CR LF.
            if line.last == carriageReturn { line.removeLast() }
            var reader = LineReader(bytes: line, path: path, line: lineNumber)
            reader.skipBlanks()
            if reader.atEndOrComment { continue }
            if reader.peek == openBracket {
                let (name, isArrayElement) = try reader.tableHeader()
                if let earlier = document.tables.first(where: { $0.name == name }),
                   !(earlier.isArrayElement && isArrayElement) {
                    let message = earlier.isArrayElement == isArrayElement
                        ? "table [\(name)] appears twice (first on line \(earlier.line))"
                        : "[\(name)] and [[\(name)]] cannot both appear (first on line \(earlier.line))"
                    throw ConfigurationError(path: path, line: lineNumber, kind: .duplicateTable, message: message)
                }
                document.tables.append(TOMLTable(name: name, line: lineNumber, entries: [], isArrayElement: isArrayElement))
                currentTable = document.tables.count - 1
                continue
            }
            let entry = try reader.keyValue()
            let existing = currentTable.map { document.tables[$0].entries } ?? document.rootEntries
            if let earlier = existing.first(where: { $0.key == entry.key }) {
                let place = currentTable.map { "in [\(document.tables[$0].name)] " } ?? ""
                throw ConfigurationError(path: path, line: lineNumber, kind: .duplicateKey,
                                         message: "key \"\(entry.key)\" \(place)is set twice (first on line \(earlier.line))")
            }
            if let currentTable {
                document.tables[currentTable].entries.append(entry)
            } else {
                document.rootEntries.append(entry)
            }
        }
        return document
    }

    static let newline = UInt8(ascii: "\n")
    static let carriageReturn = UInt8(ascii: "\r")
    static let openBracket = UInt8(ascii: "[")
}

/// A parsed file: its tables in file order, and the keys that come before any table header.
public struct TOMLDocument: Equatable, Sendable {
    public var rootEntries: [TOMLEntry] = []
    public var tables: [TOMLTable] = []

    public init(rootEntries: [TOMLEntry] = [], tables: [TOMLTable] = []) {
        self.rootEntries = rootEntries
        self.tables = tables
    }
}

/// One `[name]` section and its keys, in file order.
public struct TOMLTable: Equatable, Sendable {
    public var name: String
    /// The line of the header, for error messages.
    public var line: Int
    public var entries: [TOMLEntry]
    /// Written `[[name]]`: one element of an array of tables; the document may hold several.
    public var isArrayElement: Bool

    public init(name: String, line: Int, entries: [TOMLEntry], isArrayElement: Bool = false) {
        self.name = name
        self.line = line
        self.entries = entries
        self.isArrayElement = isArrayElement
    }
}

/// One `key = value` line.
public struct TOMLEntry: Equatable, Sendable {
    public var key: String
    public var value: TOMLValue
    /// Where it was written, so that a value out of range can be blamed on its line.
    public var line: Int

    public init(key: String, value: TOMLValue, line: Int) {
        self.key = key
        self.value = value
        self.line = line
    }
}

public enum TOMLValue: Equatable, Sendable {
    case string(String)
    case integer(Int64)
    case float(Double)
    case boolean(Bool)

    /// How an error message names the value's type: "found a string".
    public var typeDescription: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .float: "a float"
        case .boolean: "a boolean"
        }
    }
}

/// Reads one line, byte by byte. Every failure is a `ConfigurationError` of kind `.syntax` on this line.
private struct LineReader {
    let bytes: [UInt8]
    let path: String
    let line: Int
    var index = 0

    init(bytes: [UInt8], path: String, line: Int) {
        self.bytes = bytes
        self.path = path
        self.line = line
    }

    static let space = UInt8(ascii: " ")
    static let tab = UInt8(ascii: "\t")
    static let hash = UInt8(ascii: "#")
    static let equals = UInt8(ascii: "=")
    static let quote = UInt8(ascii: "\"")
    static let backslash = UInt8(ascii: "\\")
    static let closeBracket = UInt8(ascii: "]")
    static let underscore = UInt8(ascii: "_")
    static let dot = UInt8(ascii: ".")
    static let plus = UInt8(ascii: "+")
    static let minus = UInt8(ascii: "-")
    static let zero = UInt8(ascii: "0")

    var peek: UInt8? { index < bytes.count ? bytes[index] : nil }
    var atEndOrComment: Bool { peek == nil || peek == LineReader.hash }

    func fail(_ message: String) -> ConfigurationError {
        ConfigurationError(path: path, line: line, kind: .syntax, message: message)
    }

    mutating func skipBlanks() {
        while let byte = peek, byte == LineReader.space || byte == LineReader.tab { index += 1 }
    }

    static func isBareKeyByte(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
            || isDigit(byte) || byte == underscore || byte == minus
    }

    static func isDigit(_ byte: UInt8) -> Bool { byte >= zero && byte <= UInt8(ascii: "9") }

    /// After a header or a value only blanks and a comment may follow.
    mutating func expectEndOfLine(after what: String) throws(ConfigurationError) {
        skipBlanks()
        guard atEndOrComment else {
            throw fail("unexpected \(excerpt(from: index)) after \(what); only a # comment may follow")
        }
    }

    /// Up to 40 bytes from `start`, quoted, for an error message.
    func excerpt(from start: Int) -> String {
        let end = min(bytes.count, start + 40)
        let text = String(decoding: bytes[start..<end], as: UTF8.self)
        return "\"" + text + (end < bytes.count ? "…" : "") + "\""
    }

    mutating func bareKey(what: String) throws(ConfigurationError) -> String {
        let start = index
        while let byte = peek, LineReader.isBareKeyByte(byte) { index += 1 }
        guard index > start else {
            if peek == LineReader.quote {
                throw fail("quoted \(what)s are not supported; use letters, digits, _ and -")
            }
            throw fail("expected a \(what) (letters, digits, _ and -), found \(excerpt(from: start))")
        }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    /// `[name]` or `[[name]]`, the reader standing on `[`.
    mutating func tableHeader() throws(ConfigurationError) -> (name: String, isArrayElement: Bool) {
        index += 1
        let isArrayElement = peek == TOMLSubset.openBracket
        if isArrayElement { index += 1 }
        skipBlanks()
        let name = try bareKey(what: "table name")
        skipBlanks()
        if peek == LineReader.dot {
            throw fail("dotted table names are not supported")
        }
        guard peek == LineReader.closeBracket else {
            throw fail("expected ] to close the table header, found \(peek == nil ? "the end of the line" : excerpt(from: index))")
        }
        index += 1
        if isArrayElement {
            guard peek == LineReader.closeBracket else {
                throw fail("expected ]] to close the array-of-tables header [[\(name)]]")
            }
            index += 1
        }
        try expectEndOfLine(after: "the table header")
        return (name, isArrayElement)
    }

    /// `key = value`, the reader standing on the key.
    mutating func keyValue() throws(ConfigurationError) -> TOMLEntry {
        let key = try bareKey(what: "key")
        skipBlanks()
        if peek == LineReader.dot {
            throw fail("dotted keys are not supported; put \"\(key)\" in its own [table]")
        }
        guard peek == LineReader.equals else {
            throw fail("expected = after the key \"\(key)\", found \(peek == nil ? "the end of the line" : excerpt(from: index))")
        }
        index += 1
        skipBlanks()
        let value = try self.value(for: key)
        try expectEndOfLine(after: "the value of \"\(key)\"")
        return TOMLEntry(key: key, value: value, line: line)
    }

    mutating func value(for key: String) throws(ConfigurationError) -> TOMLValue {
        guard let first = peek, first != LineReader.hash else {
            throw fail("\"\(key)\" has no value")
        }
        if first == LineReader.quote {
            return .string(try basicString())
        }
        if first == UInt8(ascii: "'") {
            throw fail("literal strings ('…') are not supported; use double quotes")
        }
        if first == TOMLSubset.openBracket || first == UInt8(ascii: "{") {
            throw fail("arrays and inline tables are not supported")
        }
        // A bare word runs to the next blank or comment.
        let start = index
        while let byte = peek, byte != LineReader.space, byte != LineReader.tab, byte != LineReader.hash { index += 1 }
        let word = Array(bytes[start..<index])
        if word == Array("true".utf8) { return .boolean(true) }
        if word == Array("false".utf8) { return .boolean(false) }
        if let number = try number(word, start: start) { return number }
        throw fail("\(excerpt(from: start)) is not a value: strings need double quotes; "
            + "numbers are digits with an optional sign; booleans are true or false")
    }

    /// A basic string, the reader standing on its opening quote.
    mutating func basicString() throws(ConfigurationError) -> String {
        let opening = index
        index += 1
        if peek == LineReader.quote, index + 1 < bytes.count, bytes[index + 1] == LineReader.quote {
            throw fail("multi-line strings (\"\"\"…\"\"\") are not supported")
        }
        var result: [UInt8] = []
        while let byte = peek {
            index += 1
            switch byte {
            case LineReader.quote:
                guard let string = String(validating: result, as: UTF8.self) else {
                    throw fail("the string at \(excerpt(from: opening)) is not valid UTF-8")
                }
                return string
            case LineReader.backslash:
                guard let escaped = peek else { break }
                index += 1
                switch escaped {
                case LineReader.quote: result.append(LineReader.quote)
                case LineReader.backslash: result.append(LineReader.backslash)
                case UInt8(ascii: "n"): result.append(UInt8(ascii: "\n"))
                case UInt8(ascii: "t"): result.append(LineReader.tab)
                default:
                    throw fail("unsupported escape \\\(String(decoding: [escaped], as: UTF8.self)) in a string; "
                        + "the escapes are \\\" \\\\ \\n \\t")
                }
            default:
                // TOML forbids control characters in strings but the tab; they are invisible when the
                // file is read, so they are almost always a mistake.
                if byte < 0x20 && byte != LineReader.tab || byte == 0x7F {
                    throw fail("control character \(byte) in a string; write it with an escape")
                }
                result.append(byte)
            }
        }
        throw fail("unterminated string \(excerpt(from: opening)): it needs a closing \" on the same line")
    }

    /// An integer or a float, or nil when `word` does not look like a number at all.
    func number(_ word: [UInt8], start: Int) throws(ConfigurationError) -> TOMLValue? {
        var digits = word[...]
        var negative = false
        if let sign = digits.first, sign == LineReader.plus || sign == LineReader.minus {
            negative = sign == LineReader.minus
            digits = digits.dropFirst()
        }
        guard let first = digits.first, LineReader.isDigit(first) else { return nil }
        let parts = digits.split(separator: LineReader.dot, omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return nil }
        let integerPart = try digitRun(parts[0], word: word, start: start)
        if integerPart.count > 1 && integerPart.first == LineReader.zero {
            throw fail("\(excerpt(from: start)) has a leading zero, which TOML does not allow")
        }
        if parts.count == 1 {
            var magnitude: UInt64 = 0
            for digit in integerPart {
                let (times10, overflow1) = magnitude.multipliedReportingOverflow(by: 10)
                let (sum, overflow2) = times10.addingReportingOverflow(UInt64(digit - LineReader.zero))
                guard !overflow1, !overflow2 else { throw outOfRange(start: start) }
                magnitude = sum
            }
            if negative {
                guard magnitude <= UInt64(Int64.max) + 1 else { throw outOfRange(start: start) }
                return .integer(magnitude == UInt64(Int64.max) + 1 ? .min : -Int64(magnitude))
            }
            guard magnitude <= UInt64(Int64.max) else { throw outOfRange(start: start) }
            return .integer(Int64(magnitude))
        }
        let fractionPart = try digitRun(parts[1], word: word, start: start)
        guard !fractionPart.isEmpty else {
            throw fail("\(excerpt(from: start)) needs digits after the decimal point")
        }
        let text = (negative ? "-" : "") + String(decoding: integerPart, as: UTF8.self) + "."
            + String(decoding: fractionPart, as: UTF8.self)
        guard let value = Double(text), value.isFinite else { throw outOfRange(start: start) }
        return .float(value)
    }

    /// The digits of `run` without its `_` separators, each of which must stand between two digits.
    func digitRun(_ run: ArraySlice<UInt8>, word: [UInt8], start: Int) throws(ConfigurationError) -> [UInt8] {
        var result: [UInt8] = []
        var previousWasDigit = false
        for byte in run {
            if LineReader.isDigit(byte) {
                result.append(byte)
                previousWasDigit = true
            } else if byte == LineReader.underscore && previousWasDigit {
                previousWasDigit = false
            } else if byte == LineReader.underscore {
                throw fail("\(excerpt(from: start)): each _ in a number must stand between two digits")
            } else {
                throw fail("\(excerpt(from: start)) is not a number: only digits, one decimal point and _ separators are allowed")
            }
        }
        if !previousWasDigit && !run.isEmpty {
            throw fail("\(excerpt(from: start)): each _ in a number must stand between two digits")
        }
        return result
    }

    func outOfRange(start: Int) -> ConfigurationError {
        fail("\(excerpt(from: start)) does not fit a 64-bit number")
    }
}
