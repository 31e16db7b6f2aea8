/// A /proc file that does not say what its parser needs.
///
/// Its description reads like `/proc/meminfo line 1: MemTotal: "12x4" is not a number`.
public struct ProcParseError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The file, as the caller named it ("/proc/meminfo", "/proc/1234/smaps").
    public let file: String
    /// 1-based line number; 0 when the trouble is the file as a whole (a required line is missing).
    public let line: Int
    public let what: String

    public init(file: String, line: Int, what: String) {
        self.file = file
        self.line = line
        self.what = what
    }

    public var description: String {
        line > 0 ? "\(file) line \(line): \(what)" : "\(file): \(what)"
    }
}

/// Scanning helpers over a byte buffer. Every range they take comes from scanning the same buffer, so
/// indexes stay inside it; nothing here traps on any input.
enum ByteParsing {
    static let space: UInt8 = 0x20
    static let tab: UInt8 = 0x09
    static let newline: UInt8 = 0x0A
    static let colon: UInt8 = 0x3A
    static let dot: UInt8 = 0x2E
    static let dash: UInt8 = 0x2D
    static let equals: UInt8 = 0x3D

    @inline(__always)
    static func isBlank(_ byte: UInt8) -> Bool {
        byte == space || byte == tab
    }

    /// Calls `body` with each line's range (without its newline) and 1-based number. A last line without
    /// a newline counts; an empty file has no lines.
    static func forEachLine(
        _ bytes: UnsafeBufferPointer<UInt8>,
        _ body: (Range<Int>, Int) throws(ProcParseError) -> Void
    ) throws(ProcParseError) {
        var start = 0
        var number = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != newline {
                end += 1
            }
            number += 1
            try body(start..<end, number)
            start = end + 1
        }
    }

    /// The range without leading and trailing blanks.
    static func trimmed(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Range<Int> {
        var lower = range.lowerBound
        var upper = range.upperBound
        while lower < upper && isBlank(bytes[lower]) { lower += 1 }
        while upper > lower && isBlank(bytes[upper - 1]) { upper -= 1 }
        return lower..<upper
    }

    /// The first run of non-blank bytes at or after `range.lowerBound`, or nil if only blanks remain.
    static func token(_ bytes: UnsafeBufferPointer<UInt8>, in range: Range<Int>) -> Range<Int>? {
        var lower = range.lowerBound
        while lower < range.upperBound && isBlank(bytes[lower]) { lower += 1 }
        guard lower < range.upperBound else { return nil }
        var upper = lower
        while upper < range.upperBound && !isBlank(bytes[upper]) { upper += 1 }
        return lower..<upper
    }

    /// All blank-separated tokens in the range.
    static func tokens(_ bytes: UnsafeBufferPointer<UInt8>, in range: Range<Int>) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var rest = range
        while let next = token(bytes, in: rest) {
            result.append(next)
            rest = next.upperBound..<range.upperBound
        }
        return result
    }

    /// Index of the first `byte` in the range, if any.
    static func firstIndex(of byte: UInt8, _ bytes: UnsafeBufferPointer<UInt8>, in range: Range<Int>) -> Int? {
        var index = range.lowerBound
        while index < range.upperBound {
            if bytes[index] == byte { return index }
            index += 1
        }
        return nil
    }

    /// Splits "Key: value" at the first colon: the key as written, and the value with blanks trimmed.
    static func keyAndValue(_ bytes: UnsafeBufferPointer<UInt8>, _ line: Range<Int>) -> (key: Range<Int>, value: Range<Int>)? {
        guard let colon = firstIndex(of: colon, bytes, in: line), colon > line.lowerBound else { return nil }
        return (line.lowerBound..<colon, trimmed(bytes, (colon + 1)..<line.upperBound))
    }

    static func string(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    /// Whether the bytes in `range` are exactly `text`'s UTF-8 (compared without making a String).
    static func equals(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ text: StaticString) -> Bool {
        guard range.count == text.utf8CodeUnitCount else { return false }
        let expected = text.utf8Start
        for offset in 0..<range.count where bytes[range.lowerBound + offset] != expected[offset] {
            return false
        }
        return true
    }

    /// A string for messages: the bytes quoted, cut to a readable length.
    static func excerpt(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> String {
        // Long enough to recognise the text, short enough that garbage input cannot flood a log line.
        let maximumExcerptBytes = 40
        let shown = range.lowerBound..<min(range.upperBound, range.lowerBound + maximumExcerptBytes)
        let text = string(bytes, shown).debugDescription
        return shown.count < range.count ? text + "..." : text
    }

    // MARK: Numbers

    /// A decimal number of one or more ASCII digits with nothing else; nil if malformed or above UInt64.max.
    static func decimal(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> UInt64? {
        guard !range.isEmpty else { return nil }
        var value: UInt64 = 0
        for index in range {
            let digit = bytes[index] &- 0x30
            guard digit < 10 else { return nil }
            let (tenfold, overflowed) = value.multipliedReportingOverflow(by: 10)
            let (sum, carried) = tenfold.addingReportingOverflow(UInt64(digit))
            guard !overflowed && !carried else { return nil }
            value = sum
        }
        return value
    }

    /// A decimal number with an optional leading '-', within Int64.
    static func signedDecimal(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Int64? {
        guard !range.isEmpty else { return nil }
        if bytes[range.lowerBound] == dash {
            guard let magnitude = decimal(bytes, (range.lowerBound + 1)..<range.upperBound),
                  magnitude <= UInt64(Int64.max) + 1
            else { return nil }
            return magnitude == UInt64(Int64.max) + 1 ? .min : -Int64(magnitude)
        }
        guard let value = decimal(bytes, range), value <= UInt64(Int64.max) else { return nil }
        return Int64(value)
    }

    /// Hex digits that fit UInt64. The kernel zero-pads offsets to 8 digits and never prints more than
    /// 16, so a longer run is malformed rather than a number with leading zeros.
    static let maximumHexadecimalDigits = 16

    /// A hexadecimal number (digits only, no "0x"), either case; nil if malformed or above UInt64.max.
    static func hexadecimal(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> UInt64? {
        guard !range.isEmpty, range.count <= maximumHexadecimalDigits else { return nil }
        var value: UInt64 = 0
        for index in range {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case 0x30...0x39: digit = byte - 0x30
            case 0x61...0x66: digit = byte - 0x61 + 10
            case 0x41...0x46: digit = byte - 0x41 + 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }

    /// A fixed-point number such as "12.34" in hundredths (1234), as PSI prints its averages. One fraction
    /// digit counts as tenths; digits past the second are dropped. nil if malformed or above UInt32.max.
    static func hundredths(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> UInt32? {
        let dotIndex = firstIndex(of: dot, bytes, in: range)
        guard let whole = decimal(bytes, range.lowerBound..<(dotIndex ?? range.upperBound)) else { return nil }
        var fraction: UInt64 = 0
        if let dotIndex {
            let digits = (dotIndex + 1)..<range.upperBound
            guard !digits.isEmpty, allDigits(bytes, digits) else { return nil }
            let tenths = UInt64(bytes[digits.lowerBound] - 0x30)
            let hundredthsDigit = digits.count > 1 ? UInt64(bytes[digits.lowerBound + 1] - 0x30) : 0
            fraction = tenths * 10 + hundredthsDigit
        }
        let (scaled, overflowed) = whole.multipliedReportingOverflow(by: 100)
        guard !overflowed, scaled <= UInt64(UInt32.max) - fraction else { return nil }
        return UInt32(scaled + fraction)
    }

    static func allDigits(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Bool {
        for index in range where bytes[index] &- 0x30 >= 10 {
            return false
        }
        return true
    }

    /// A memory amount as /proc prints it: "<n> kB" in KiB, converted to bytes, or a bare "<n>", a count.
    enum Amount: Equatable {
        case bytes(UInt64)
        case count(UInt64)
    }

    enum AmountProblem: Error {
        case malformed
        case overflowsInBytes
    }

    static func amount(_ bytes: UnsafeBufferPointer<UInt8>, _ value: Range<Int>) -> Result<Amount, AmountProblem> {
        guard let number = token(bytes, in: value), let magnitude = decimal(bytes, number) else {
            return .failure(.malformed)
        }
        guard let unit = token(bytes, in: number.upperBound..<value.upperBound) else {
            return .success(.count(magnitude))
        }
        guard equals(bytes, unit, "kB"), token(bytes, in: unit.upperBound..<value.upperBound) == nil else {
            return .failure(.malformed)
        }
        let (inBytes, overflowed) = magnitude.multipliedReportingOverflow(by: 1024)
        return overflowed ? .failure(.overflowsInBytes) : .success(.bytes(inBytes))
    }
}
