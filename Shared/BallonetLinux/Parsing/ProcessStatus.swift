/// /proc/<pid>/status: a process's identity and memory use ("Key:\tvalue" lines).
///
/// Memory lines are in bytes. Kernel threads have no memory lines; those read as 0, as their memory use is.
public struct ProcessStatus: Hashable, Sendable {
    /// Name: the command name (at most 15 bytes for most processes), with the kernel's escapes.
    public var name: String
    /// State, as printed: "R (running)", "S (sleeping)", ...
    public var state: String
    /// Pid: the ID of this thread (the process ID when reading /proc/<pid>/status).
    public var processID: Int32
    /// PPid: the parent's process ID; 0 for init and kernel threads of kthreadd's kind.
    public var parentProcessID: Int32
    /// Threads: the number of threads in the process.
    public var threads: UInt64
    /// VmPeak: the largest virtual size so far.
    public var vmPeak: UInt64
    /// VmSize: virtual size.
    public var vmSize: UInt64
    /// VmLck: mlocked memory (the guest balloon's pinned pages show here).
    public var vmLck: UInt64
    /// VmPin: pinned memory (long-term pins such as RDMA or vfio).
    public var vmPin: UInt64
    /// VmHWM: the largest resident set so far.
    public var vmHWM: UInt64
    /// VmRSS: resident set, RssAnon + RssFile + RssShmem.
    public var vmRSS: UInt64
    public var rssAnon: UInt64
    public var rssFile: UInt64
    /// RssShmem: resident shared memory, memfd guest RAM included.
    public var rssShmem: UInt64
    /// VmSwap: swapped-out anonymous memory.
    public var vmSwap: UInt64

    /// Every line's value as text, blanks trimmed, by the file's name for it.
    public var fields: [String: String]

    static let memoryFields: Set<String> = [
        "VmPeak", "VmSize", "VmLck", "VmPin", "VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmSwap",
    ]

    public init(parsing text: String, file: String = "/proc/self/status") throws(ProcParseError) {
        try self.init(parsing: Array(text.utf8), file: file)
    }

    public init(parsing bytes: [UInt8], file: String = "/proc/self/status") throws(ProcParseError) {
        var fields: [String: String] = [:]
        var memory: [String: UInt64] = [:]
        var lineNumbers: [String: Int] = [:]
        try bytes.withUnsafeBufferPointer { (buffer) throws(ProcParseError) in
            try ByteParsing.forEachLine(buffer) { (line, number) throws(ProcParseError) in
                guard let (keyRange, value) = ByteParsing.keyAndValue(buffer, line) else { return }
                let key = ByteParsing.string(buffer, keyRange)
                fields[key] = ByteParsing.string(buffer, value)
                lineNumbers[key] = number
                guard ProcessStatus.memoryFields.contains(key) else { return }
                switch ByteParsing.amount(buffer, value) {
                case .success(.bytes(let amount)):
                    memory[key] = amount
                case .success(.count):
                    throw ProcParseError(file: file, line: number, what: "\(key): expected an amount in kB, found \(ByteParsing.excerpt(buffer, value))")
                case .failure(.overflowsInBytes):
                    throw ProcParseError(file: file, line: number, what: "\(key): \(ByteParsing.excerpt(buffer, value)) overflows 64 bits when converted to bytes")
                case .failure(.malformed):
                    throw ProcParseError(file: file, line: number, what: "\(key): \(ByteParsing.excerpt(buffer, value)) is not an amount in kB")
                }
            }
        }
        func required(_ key: String) throws(ProcParseError) -> String {
            guard let value = fields[key] else {
                throw ProcParseError(file: file, line: 0, what: "no \(key) line")
            }
            return value
        }
        func parseProcessID(_ key: String) throws(ProcParseError) -> Int32 {
            let text = try required(key)
            guard let value = Int32(text), value >= 0 else {
                throw ProcParseError(file: file, line: lineNumbers[key] ?? 0, what: "\(key): \(text.debugDescription) is not a process ID")
            }
            return value
        }
        name = try required("Name")
        state = try required("State")
        processID = try parseProcessID("Pid")
        parentProcessID = try parseProcessID("PPid")
        let threadsText = try required("Threads")
        guard let threads = UInt64(threadsText) else {
            throw ProcParseError(file: file, line: lineNumbers["Threads"] ?? 0, what: "Threads: \(threadsText.debugDescription) is not a count")
        }
        self.threads = threads
        vmPeak = memory["VmPeak"] ?? 0
        vmSize = memory["VmSize"] ?? 0
        vmLck = memory["VmLck"] ?? 0
        vmPin = memory["VmPin"] ?? 0
        vmHWM = memory["VmHWM"] ?? 0
        vmRSS = memory["VmRSS"] ?? 0
        rssAnon = memory["RssAnon"] ?? 0
        rssFile = memory["RssFile"] ?? 0
        rssShmem = memory["RssShmem"] ?? 0
        vmSwap = memory["VmSwap"] ?? 0
        self.fields = fields
    }
}
