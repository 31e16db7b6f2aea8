/// A pressure stall information file: /proc/pressure/memory (or cpu, io, or a cgroup's memory.pressure).
///
///     some avg10=0.12 avg60=0.05 avg300=0.01 total=123456
///     full avg10=0.00 avg60=0.00 avg300=0.00 total=6789
///
/// "some" is the share of time at least one task stalled on the resource, "full" the share of time all
/// non-idle tasks did. Either line may be missing (cpu had no "full" before Linux 5.13); a file with
/// neither is an error.
public struct PressureStall: Hashable, Sendable {
    /// One line of the file.
    public struct Line: Hashable, Sendable {
        /// Average share of stalled time over 10 s, in hundredths of a percent ("1.23" is 123, 100 % is
        /// 10000): fixed point keeps parsing exact and free of floating-point formatting rules.
        public var avg10: UInt32
        /// Over 60 s, hundredths of a percent.
        public var avg60: UInt32
        /// Over 300 s, hundredths of a percent.
        public var avg300: UInt32
        /// Total stalled time since boot, microseconds. Differences of two readings give exact stall
        /// time over any interval, which the averages cannot.
        public var total: UInt64

        public init(avg10: UInt32, avg60: UInt32, avg300: UInt32, total: UInt64) {
            self.avg10 = avg10
            self.avg60 = avg60
            self.avg300 = avg300
            self.total = total
        }
    }

    public var some: Line?
    public var full: Line?

    public init(some: Line?, full: Line?) {
        self.some = some
        self.full = full
    }

    public init(parsing text: String, file: String = "/proc/pressure/memory") throws(ProcParseError) {
        try self.init(parsing: Array(text.utf8), file: file)
    }

    public init(parsing bytes: [UInt8], file: String = "/proc/pressure/memory") throws(ProcParseError) {
        var some: Line?
        var full: Line?
        try bytes.withUnsafeBufferPointer { (buffer) throws(ProcParseError) in
            try ByteParsing.forEachLine(buffer) { (line, number) throws(ProcParseError) in
                let tokens = ByteParsing.tokens(buffer, in: line)
                guard let kind = tokens.first else { return }
                let isSome = ByteParsing.equals(buffer, kind, "some")
                // Another first word is a line kind this parser does not know yet.
                guard isSome || ByteParsing.equals(buffer, kind, "full") else { return }
                let parsed = try PressureStall.parseLine(buffer, tokens.dropFirst(), file: file, line: number)
                if isSome { some = parsed } else { full = parsed }
            }
        }
        guard some != nil || full != nil else {
            throw ProcParseError(file: file, line: 0, what: "neither a some nor a full line")
        }
        self.some = some
        self.full = full
    }

    private static func parseLine(
        _ buffer: UnsafeBufferPointer<UInt8>,
        _ pairs: ArraySlice<Range<Int>>,
        file: String,
        line: Int
    ) throws(ProcParseError) -> Line {
        var avg10: UInt32?
        var avg60: UInt32?
        var avg300: UInt32?
        var total: UInt64?
        for pair in pairs {
            guard let equals = ByteParsing.firstIndex(of: ByteParsing.equals, buffer, in: pair) else {
                throw ProcParseError(file: file, line: line, what: "\(ByteParsing.excerpt(buffer, pair)) is not key=value")
            }
            let key = pair.lowerBound..<equals
            let value = (equals + 1)..<pair.upperBound
            func invalid() -> ProcParseError {
                ProcParseError(file: file, line: line, what: "\(ByteParsing.excerpt(buffer, pair)) has a malformed value")
            }
            if ByteParsing.equals(buffer, key, "avg10") {
                guard let parsed = ByteParsing.hundredths(buffer, value) else { throw invalid() }
                avg10 = parsed
            } else if ByteParsing.equals(buffer, key, "avg60") {
                guard let parsed = ByteParsing.hundredths(buffer, value) else { throw invalid() }
                avg60 = parsed
            } else if ByteParsing.equals(buffer, key, "avg300") {
                guard let parsed = ByteParsing.hundredths(buffer, value) else { throw invalid() }
                avg300 = parsed
            } else if ByteParsing.equals(buffer, key, "total") {
                guard let parsed = ByteParsing.decimal(buffer, value) else { throw invalid() }
                total = parsed
            }
            // Other keys are left for kernels that add them.
        }
        guard let avg10, let avg60, let avg300, let total else {
            throw ProcParseError(file: file, line: line, what: "needs avg10, avg60, avg300 and total")
        }
        return Line(avg10: avg10, avg60: avg60, avg300: avg300, total: total)
    }
}
