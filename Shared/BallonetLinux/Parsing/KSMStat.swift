/// /proc/<pid>/ksm_stat (Linux 6.1+): what KSM saves in one process, for per-VM sharing reports.
///
///     ksm_rmap_items 0
///     ksm_zero_pages 0
///     ksm_merging_pages 0
///     ksm_process_profit 0
///     ksm_merge_any: no
///     ksm_mergeable: no
///
/// Counters are nil when the kernel does not print them (older kernels print fewer lines).
public struct KSMProcessStat: Hashable, Sendable {
    /// ksm_merging_pages: pages of this process merged with others.
    public var mergingPages: UInt64?
    /// ksm_zero_pages: pages merged with the shared zero page (needs use_zero_pages).
    public var zeroPages: UInt64?
    /// ksm_rmap_items: KSM's bookkeeping entries for this process (each costs kernel memory).
    public var rmapItems: UInt64?
    /// ksm_process_profit: bytes saved minus bookkeeping cost; negative when KSM costs more than it saves.
    public var processProfit: Int64?
    /// ksm_mergeable: whether any of the process's memory is registered with KSM.
    public var mergeable: Bool?
    /// ksm_merge_any: whether the whole process was opted in (prctl PR_SET_MEMORY_MERGE).
    public var mergeAny: Bool?

    /// Every line's value as text, by name (without the colon some lines have).
    public var fields: [String: String]

    public init(parsing text: String, file: String = "/proc/self/ksm_stat") throws(ProcParseError) {
        try self.init(parsing: Array(text.utf8), file: file)
    }

    public init(parsing bytes: [UInt8], file: String = "/proc/self/ksm_stat") throws(ProcParseError) {
        var fields: [String: String] = [:]
        var numbers: [String: Int64] = [:]
        var flags: [String: Bool] = [:]
        try bytes.withUnsafeBufferPointer { (buffer) throws(ProcParseError) in
            try ByteParsing.forEachLine(buffer) { (line, number) throws(ProcParseError) in
                let tokens = ByteParsing.tokens(buffer, in: line)
                guard tokens.count == 2 else { return }
                var nameRange = tokens[0]
                if nameRange.count > 1 && buffer[nameRange.upperBound - 1] == ByteParsing.colon {
                    nameRange = nameRange.lowerBound..<(nameRange.upperBound - 1)
                }
                let name = ByteParsing.string(buffer, nameRange)
                fields[name] = ByteParsing.string(buffer, tokens[1])
                if let value = ByteParsing.signedDecimal(buffer, tokens[1]) {
                    numbers[name] = value
                } else if ByteParsing.equals(buffer, tokens[1], "yes") {
                    flags[name] = true
                } else if ByteParsing.equals(buffer, tokens[1], "no") {
                    flags[name] = false
                } else if KSMProcessStat.knownFields.contains(name) {
                    throw ProcParseError(file: file, line: number, what: "\(name): \(ByteParsing.excerpt(buffer, tokens[1])) is neither a number nor yes/no")
                }
            }
        }
        func unsigned(_ name: String) throws(ProcParseError) -> UInt64? {
            guard let value = numbers[name] else { return nil }
            guard value >= 0 else {
                throw ProcParseError(file: file, line: 0, what: "\(name): \(value) is negative")
            }
            return UInt64(value)
        }
        mergingPages = try unsigned("ksm_merging_pages")
        zeroPages = try unsigned("ksm_zero_pages")
        rmapItems = try unsigned("ksm_rmap_items")
        processProfit = numbers["ksm_process_profit"]
        mergeable = flags["ksm_mergeable"]
        mergeAny = flags["ksm_merge_any"]
        guard !fields.isEmpty else {
            throw ProcParseError(file: file, line: 0, what: "no ksm_ lines")
        }
        self.fields = fields
    }

    static let knownFields: Set<String> = [
        "ksm_merging_pages", "ksm_zero_pages", "ksm_rmap_items", "ksm_process_profit", "ksm_mergeable", "ksm_merge_any",
    ]
}

/// Files that hold one number, such as /sys/kernel/mm/ksm/pages_to_scan or /proc/sys/vm/swappiness.
public enum SingleValue {
    /// The number, with surrounding blanks and one trailing newline allowed.
    public static func parseSigned(_ bytes: [UInt8], file: String) throws(ProcParseError) -> Int64 {
        try parse(bytes, file: file, as: "an integer", ByteParsing.signedDecimal)
    }

    /// As parseSigned, for files that hold an unsigned number (all of UInt64's range).
    public static func parseUnsigned(_ bytes: [UInt8], file: String) throws(ProcParseError) -> UInt64 {
        try parse(bytes, file: file, as: "an unsigned integer", ByteParsing.decimal)
    }

    private static func parse<Number>(
        _ bytes: [UInt8],
        file: String,
        as kind: String,
        _ number: (UnsafeBufferPointer<UInt8>, Range<Int>) -> Number?
    ) throws(ProcParseError) -> Number {
        try bytes.withUnsafeBufferPointer { (buffer) throws(ProcParseError) -> Number in
            var end = buffer.count
            if end > 0 && buffer[end - 1] == ByteParsing.newline { end -= 1 }
            guard let value = number(buffer, ByteParsing.trimmed(buffer, 0..<end)) else {
                throw ProcParseError(file: file, line: 1, what: "\(ByteParsing.excerpt(buffer, 0..<end)) is not \(kind)")
            }
            return value
        }
    }
}
