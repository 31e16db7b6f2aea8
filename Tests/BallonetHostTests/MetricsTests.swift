@testable import BallonetHost
import BallonetLinux
import Foundation
import Logging
import Testing

/// A strict reader of the Prometheus text exposition format 0.0.4, for checking what the metrics
/// endpoint serves: stricter than Prometheus itself, so that whatever passes here Prometheus reads too.
///
/// Every line ends in a line feed, none is empty; each family has one `# HELP` and one `# TYPE` line, both
/// before its first sample, and all its lines together; samples are `name{label="value",...} value`
/// with an optional integer timestamp; label values use only the escapes \\, \" and \n; counters end in
/// `_total` and are not negative; no series (name and label set) appears twice.
enum PrometheusParser {
    struct Sample: Equatable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    struct Failure: Error, CustomStringConvertible {
        let line: Int
        let message: String
        var description: String { "line \(line): \(message)" }
    }

    /// The samples keyed by series: `name` alone without labels, else `name{a="x",b="y"}` with the labels
    /// sorted by name and their values escaped as in the format.
    static func parsePrometheus(_ text: String) throws -> [String: Double] {
        var series: [String: Double] = [:]
        for sample in try parseSamples(text) {
            series[seriesKey(sample.name, sample.labels)] = sample.value
        }
        return series
    }

    static func seriesKey(_ name: String, _ labels: [String: String]) -> String {
        guard !labels.isEmpty else { return name }
        let pairs = labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\(escape($0.value))\"" }
        return name + "{" + pairs.joined(separator: ",") + "}"
    }

    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    /// The samples in the order they appear.
    static func parseSamples(_ text: String) throws -> [Sample] {
        guard text.hasSuffix("\n") else { throw Failure(line: 0, message: "the text must end with a line feed") }
        var help: [String: String] = [:]
        var types: [String: String] = [:]
        var sampled: Set<String> = []
        var finished: Set<String> = []
        var current: String?
        var seen: Set<String> = []
        var samples: [Sample] = []

        func enter(_ family: String, line: Int) throws {
            guard family != current else { return }
            if let current { finished.insert(current) }
            guard !finished.contains(family) else { throw Failure(line: line, message: "the lines of family \(family) are not together") }
            current = family
        }

        for (index, line) in text.dropLast().split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            guard !line.isEmpty else { throw Failure(line: number, message: "empty line") }
            if line.hasPrefix("#") {
                let words = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
                guard words.count >= 3, words[0] == "#", words[1] == "HELP" || words[1] == "TYPE" else { continue }
                let name = String(words[2])
                guard isMetricName(name) else { throw Failure(line: number, message: "bad metric name \(name.debugDescription)") }
                try enter(name, line: number)
                guard !sampled.contains(name) else { throw Failure(line: number, message: "\(words[1]) for \(name) after its samples") }
                let rest = words.count == 4 ? String(words[3]) : ""
                if words[1] == "HELP" {
                    guard help[name] == nil else { throw Failure(line: number, message: "second HELP for \(name)") }
                    guard !rest.isEmpty else { throw Failure(line: number, message: "empty HELP for \(name)") }
                    help[name] = rest
                } else {
                    guard types[name] == nil else { throw Failure(line: number, message: "second TYPE for \(name)") }
                    guard ["counter", "gauge", "histogram", "summary", "untyped"].contains(rest) else {
                        throw Failure(line: number, message: "bad TYPE \(rest.debugDescription) for \(name)")
                    }
                    types[name] = rest
                }
                continue
            }
            let sample = try parseSample(Array(line.utf8), line: number)
            var family = sample.name
            for suffix in ["_bucket", "_sum", "_count"] where types[family] == nil && sample.name.hasSuffix(suffix) {
                let base = String(sample.name.dropLast(suffix.count))
                if types[base] == "histogram" || types[base] == "summary" { family = base }
            }
            try enter(family, line: number)
            guard help[family] != nil else { throw Failure(line: number, message: "\(sample.name) has no HELP before it") }
            guard let type = types[family] else { throw Failure(line: number, message: "\(sample.name) has no TYPE before it") }
            if type == "counter" {
                guard sample.name.hasSuffix("_total") else { throw Failure(line: number, message: "counter \(sample.name) does not end in _total") }
                guard sample.value >= 0 else { throw Failure(line: number, message: "counter \(sample.name) is \(sample.value)") }
            }
            guard seen.insert(seriesKey(sample.name, sample.labels)).inserted else {
                throw Failure(line: number, message: "duplicate series \(seriesKey(sample.name, sample.labels))")
            }
            sampled.insert(family)
            samples.append(sample)
        }
        return samples
    }

    static func isMetricName(_ name: String) -> Bool {
        guard let first = name.utf8.first, isNameStart(first) || first == UInt8(ascii: ":") else { return false }
        return name.utf8.allSatisfy { isNameStart($0) || $0 == UInt8(ascii: ":") || isDigit($0) }
    }

    private static func isNameStart(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")) || byte == UInt8(ascii: "_")
    }

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private static func parseSample(_ bytes: [UInt8], line: Int) throws -> Sample {
        var index = 0
        func fail(_ message: String) -> Failure { Failure(line: line, message: message) }
        func take(while predicate: (UInt8) -> Bool) -> String {
            let start = index
            while index < bytes.count, predicate(bytes[index]) { index += 1 }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }

        let name = take { isNameStart($0) || isDigit($0) || $0 == UInt8(ascii: ":") }
        guard isMetricName(name) else { throw fail("bad metric name \(name.debugDescription)") }
        var labels: [String: String] = [:]
        if index < bytes.count, bytes[index] == UInt8(ascii: "{") {
            index += 1
            while true {
                guard index < bytes.count else { throw fail("unterminated label set") }
                if bytes[index] == UInt8(ascii: "}"), labels.isEmpty { index += 1; break }
                let label = take { isNameStart($0) || isDigit($0) }
                guard let first = label.utf8.first, isNameStart(first), !label.hasPrefix("__") else {
                    throw fail("bad label name \(label.debugDescription)")
                }
                guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "="), bytes[index + 1] == UInt8(ascii: "\"") else {
                    throw fail("expected =\" after label \(label)")
                }
                index += 2
                var value: [UInt8] = []
                while true {
                    guard index < bytes.count else { throw fail("unterminated value of label \(label)") }
                    let byte = bytes[index]
                    index += 1
                    if byte == UInt8(ascii: "\"") { break }
                    if byte == UInt8(ascii: "\\") {
                        guard index < bytes.count else { throw fail("unterminated escape") }
                        switch bytes[index] {
                        case UInt8(ascii: "\\"): value.append(UInt8(ascii: "\\"))
                        case UInt8(ascii: "\""): value.append(UInt8(ascii: "\""))
                        case UInt8(ascii: "n"): value.append(UInt8(ascii: "\n"))
                        default: throw fail("bad escape \\\(Character(Unicode.Scalar(bytes[index]))) in label \(label)")
                        }
                        index += 1
                    } else {
                        value.append(byte)
                    }
                }
                guard labels.updateValue(String(decoding: value, as: UTF8.self), forKey: label) == nil else {
                    throw fail("label \(label) twice")
                }
                guard index < bytes.count else { throw fail("unterminated label set") }
                if bytes[index] == UInt8(ascii: "}") { index += 1; break }
                guard bytes[index] == UInt8(ascii: ","), index + 1 < bytes.count, bytes[index + 1] != UInt8(ascii: "}") else {
                    throw fail("expected , or } after label \(label)")
                }
                index += 1
            }
        }
        guard index < bytes.count, bytes[index] == UInt8(ascii: " ") else { throw fail("expected one space before the value") }
        index += 1
        let fields = String(decoding: bytes[index...], as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count == 1 || fields.count == 2 else { throw fail("expected a value and at most a timestamp") }
        if fields.count == 2 {
            guard let timestamp = Int64(fields[1]), timestamp.description == fields[1] else { throw fail("bad timestamp \(fields[1])") }
        }
        let text = String(fields[0])
        let value: Double
        switch text {
        case "+Inf": value = .infinity
        case "-Inf": value = -.infinity
        case "NaN": value = .nan
        default:
            guard !text.isEmpty, text.utf8.allSatisfy({ isDigit($0) || "+-.eE".utf8.contains($0) }), let number = Double(text) else {
                throw fail("bad value \(text.debugDescription)")
            }
            value = number
        }
        return Sample(name: name, labels: labels, value: value)
    }
}

@Suite struct MetricsTests {
    static let version = "0.9.0 \"dev\" \\ build\nline two"

    static func sampleStatus() -> HostStatus {
        var web = VMAccount(name: "web-1.example_x")
        web.state = "established"
        web.memoryBytes = 4 << 30
        web.targetBytes = 3 << 30
        web.requestedBalloonBytes = 1 << 30
        web.balloonBytes = (1 << 30) - 4096
        web.residentBytes = 2_999_000_000
        web.swappedBytes = 12_288
        web.reclaimedBytes = 900 << 20
        web.inflatedBytes = 1_500 << 20
        web.deflatedBytes = 476 << 20
        web.workingSetEstimateBytes = 1_234_567_890
        web.shares = 2000
        web.minBytes = 512 << 20
        web.maxBytes = 4 << 30
        web.sessions = 3
        web.batchesReclaimed = 1111
        web.batchesDeclined = 7
        web.refusedMessages = 2
        web.pressureReleasedBytes = 64 << 20
        web.hostWorkingSetEstimateBytes = 1_000_000_000
        web.samplingCostMicros = 2_500
        web.swapLimitBytes = 3 << 30
        web.paused = true
        web.pagedOutBytes = 96 << 20
        // Beyond 2^53: printed exactly, read back as the nearest double.
        web.reclaimedBytes = (1 << 60) + 1

        var waiting = VMAccount(name: "db")
        waiting.state = "waiting for the guest agent"
        waiting.memoryBytes = 2 << 30

        var refused = VMAccount(name: "big")
        refused.state = "refused: its min does not fit"

        var status = HostStatus(version: version, budgetBytes: 16 << 30, vms: [web, waiting, refused])
        status.state = "soft"
        status.actions = ["balloon"]
        status.freePercent = 5.3
        status.memoryForVMsBytes = 15 << 30
        status.capacityBytes = 14 << 30
        status.idleTaxRate = 0.75
        return status
    }

    @Test func renderedStatusParsesBackToItsFigures() throws {
        let status = Self.sampleStatus()
        let text = PrometheusText.render(status)
        let series = try PrometheusParser.parsePrometheus(text)

        var expected: [String: Double] = [
            "ballonet_info{version=\"\(PrometheusParser.escape(Self.version))\"}": 1,
            "ballonet_host_state{state=\"high\"}": 0,
            "ballonet_host_state{state=\"soft\"}": 1,
            "ballonet_host_state{state=\"hard\"}": 0,
            "ballonet_host_state{state=\"low\"}": 0,
            "ballonet_host_free_ratio": 5.3 / 100,
            "ballonet_host_memory_for_vms_bytes": Double(15 << 30),
            "ballonet_host_target_capacity_bytes": Double(14 << 30),
            "ballonet_host_budget_bytes": Double(16 << 30),
            "ballonet_idle_tax_rate": 0.75,
            "ballonet_vm_refused{vm=\"big\"}": 1,
        ]
        for vm in status.vms where !vm.state.hasPrefix("refused") {
            func put(_ name: String, _ value: UInt64?) {
                if let value { expected["\(name){vm=\"\(vm.name)\"}"] = Double(value) }
            }
            put("ballonet_vm_memory_bytes", vm.memoryBytes)
            put("ballonet_vm_target_bytes", vm.targetBytes)
            put("ballonet_vm_balloon_bytes", vm.balloonBytes)
            put("ballonet_vm_balloon_requested_bytes", vm.requestedBalloonBytes)
            put("ballonet_vm_resident_bytes", vm.residentBytes)
            put("ballonet_vm_swapped_bytes", vm.swappedBytes)
            put("ballonet_vm_working_set_estimate_bytes", vm.workingSetEstimateBytes)
            put("ballonet_vm_min_bytes", vm.minBytes)
            put("ballonet_vm_max_bytes", vm.maxBytes)
            put("ballonet_vm_shares", vm.shares)
            put("ballonet_vm_guest_agent_up", vm.state == "established" ? 1 : 0)
            put("ballonet_vm_reclaimed_bytes_total", vm.reclaimedBytes)
            put("ballonet_vm_inflated_bytes_total", vm.inflatedBytes)
            put("ballonet_vm_deflated_bytes_total", vm.deflatedBytes)
            put("ballonet_vm_sessions_total", vm.sessions)
            put("ballonet_vm_batches_reclaimed_total", vm.batchesReclaimed)
            put("ballonet_vm_batches_declined_total", vm.batchesDeclined)
            put("ballonet_vm_refused_messages_total", vm.refusedMessages)
            put("ballonet_vm_pressure_released_bytes_total", vm.pressureReleasedBytes)
            put("ballonet_vm_refused", 0)
            put("ballonet_vm_host_working_set_estimate_bytes", vm.hostWorkingSetEstimateBytes)
            if let cost = vm.samplingCostMicros { expected["ballonet_vm_sampling_cost_seconds{vm=\"\(vm.name)\"}"] = Double(cost) / 1_000_000 }
            put("ballonet_vm_swap_limit_bytes", vm.swapLimitBytes)
            put("ballonet_vm_paused", vm.paused ? 1 : 0)
            put("ballonet_vm_paged_out_bytes_total", vm.pagedOutBytes)
        }
        #expect(series == expected)
        for key in Set(series.keys).symmetricDifference(expected.keys).sorted() { Issue.record("series \(key) only on one side") }

        // The version label went through the escapes and came back whole.
        let info = try PrometheusParser.parseSamples(text).filter { $0.name == "ballonet_info" }
        #expect(info.map(\.labels) == [["version": Self.version]])
        #expect(text.contains(#"ballonet_info{version="0.9.0 \"dev\" \\ build\nline two"} 1"#))

        // Integers are printed as integers, exactly, even where a double could not hold them.
        #expect(text.contains("ballonet_vm_reclaimed_bytes_total{vm=\"web-1.example_x\"} 1152921504606846977\n"))
        #expect(text.contains("ballonet_vm_memory_bytes{vm=\"db\"} 2147483648\n"))
        #expect(text.contains("ballonet_host_free_ratio \((5.3 / 100).description)\n"))
        // The refused VM has its refused gauge and nothing else.
        #expect(!text.contains("vm=\"big\"} 0"))
        #expect(text.split(separator: "\n").filter { $0.contains("vm=\"big\"") } == ["ballonet_vm_refused{vm=\"big\"} 1"])
    }

    @Test func unknownFiguresAreLeftOutNotZero() throws {
        let status = HostStatus(version: "1", budgetBytes: nil, vms: [VMAccount(name: "fresh")])
        let series = try PrometheusParser.parsePrometheus(PrometheusText.render(status))
        #expect(series["ballonet_vm_memory_bytes{vm=\"fresh\"}"] == 0)
        #expect(series["ballonet_vm_guest_agent_up{vm=\"fresh\"}"] == 0)
        for absent in ["ballonet_host_state", "ballonet_host_free_ratio", "ballonet_host_budget_bytes", "ballonet_idle_tax_rate",
                       "ballonet_host_memory_for_vms_bytes", "ballonet_vm_working_set_estimate_bytes", "ballonet_vm_shares"] {
            #expect(!series.keys.contains { $0 == absent || $0.hasPrefix(absent + "{") }, "\(absent) is unknown, so not exported")
        }
        // No VMs at all: still valid, the host's lines alone.
        let empty = try PrometheusParser.parsePrometheus(PrometheusText.render(HostStatus(version: "1", budgetBytes: nil, vms: [])))
        #expect(empty == ["ballonet_info{version=\"1\"}": 1])
    }

    @Test func floatsAreWrittenSoPrometheusReadsThem() {
        #expect(PrometheusText.Number.real(0.1).text == "0.1")
        #expect(PrometheusText.Number.real(1e-7).text == "1e-07")
        #expect(PrometheusText.Number.real(.infinity).text == "+Inf")
        #expect(PrometheusText.Number.real(-.infinity).text == "-Inf")
        #expect(PrometheusText.Number.real(.nan).text == "NaN")
        #expect(PrometheusText.Number.integer(.max).text == "18446744073709551615")
    }

    @Test func aVMListedTwiceIsExportedOnce() throws {
        var status = Self.sampleStatus()
        var twin = VMAccount(name: "db")
        twin.state = "refused: duplicate"
        status.vms.append(twin)
        // Duplicate series would make Prometheus drop the whole scrape; the parser refuses them too.
        _ = try PrometheusParser.parsePrometheus(PrometheusText.render(status))
    }

    @Test(arguments: [
        ("# HELP a x\n# TYPE a gauge\na 1", "end with a line feed"),
        ("a 1\n", "no HELP"),
        ("# HELP a x\na 1\n", "no TYPE"),
        ("# HELP a x\n# TYPE a counter\na 1\n", "_total"),
        ("# HELP a x\n# TYPE a gauge\na 1\na 2\n", "duplicate series"),
        ("# HELP a x\n# TYPE a gauge\na{l=\"1\"} 1\n# HELP b x\n# TYPE b gauge\nb 1\na{l=\"2\"} 1\n", "not together"),
        ("# HELP a x\n# TYPE a gauge\na{l=\"\\t\"} 1\n", "bad escape"),
        ("# HELP a x\n# TYPE a gauge\na{l=\"1\",l=\"2\"} 1\n", "twice"),
        ("# HELP a x\n# TYPE a gauge\na one\n", "bad value"),
        ("# HELP a x\n# TYPE a gauge\n\na 1\n", "empty line"),
        ("# HELP a x\n# TYPE a gauge\na  1\n", "value"),
        ("# HELP a x\n# TYPE a gauge\na 1\n# TYPE a gauge\n", "TYPE for a after its samples"),
    ])
    func parserRefusesWhatPrometheusWouldNotTake(_ text: String, _ complaint: String) {
        #expect {
            _ = try PrometheusParser.parsePrometheus(text)
        } throws: { error in
            "\(error)".contains(complaint)
        }
    }

    // MARK: - The server

    static let logger = Logger(label: "ballonet-metrics-test")

    /// A client on its own thread: connects, sends `request`, reads until the server closes. The engine's
    /// side (poll, then serveOne) runs on the test's thread.
    final class Client: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private let lock = NSLock()
        private var received: [UInt8] = []
        private var failure: SystemCallError?

        /// `closeAfterSending`: leave without reading; `stallFor`: do not read for this long first.
        init(port: UInt16, request: [UInt8], closeAfterSending: Bool = false, stallFor stall: Duration = .zero) {
            Thread.detachNewThread { [self] in
                defer { done.signal() }
                do throws(SystemCallError) {
                    let connection = try TCPSocket.connect(address: "127.0.0.1", port: port)
                    // The server may answer and close before taking all of a long request: sending can
                    // fail then, and the answer is still to be read.
                    try? connection.send(all: request)
                    if closeAfterSending { return }
                    if stall > .zero { Thread.sleep(forTimeInterval: Double(stall.components.seconds) + Double(stall.components.attoseconds) / 1e18) }
                    while try !connection.poll(for: .readable, timeout: .seconds(10)).isEmpty {
                        let bytes = try connection.receive(upTo: 1 << 16)
                        if bytes.isEmpty { break }
                        lock.withLock { received += bytes }
                    }
                } catch {
                    lock.withLock { failure = error }
                }
            }
        }

        /// What the server sent, and the error that ended reading if one did.
        func finish() -> (bytes: [UInt8], failure: SystemCallError?) {
            #expect(done.wait(timeout: .now() + 20) == .success, "the client thread finished")
            return lock.withLock { (received, failure) }
        }
    }

    struct Response {
        var statusLine: String
        var headers: [String: String]
        var body: String

        init(_ bytes: [UInt8]) throws {
            let text = String(decoding: bytes, as: UTF8.self)
            let parts = text.components(separatedBy: "\r\n\r\n")
            guard parts.count >= 2 else { throw PrometheusParser.Failure(line: 0, message: "no end of head in \(text.debugDescription)") }
            let lines = parts[0].components(separatedBy: "\r\n")
            statusLine = lines[0]
            headers = [:]
            for line in lines.dropFirst() {
                let pair = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                headers[pair[0].lowercased()] = pair.count == 2 ? pair[1] : ""
            }
            body = parts.dropFirst().joined(separator: "\r\n\r\n")
        }
    }

    /// One exchange as the engine runs it: wait for the listener to be readable, serve one connection.
    static func exchange(_ server: MetricsServer, _ request: String, render: () -> String) throws -> (bytes: [UInt8], failure: SystemCallError?) {
        try exchange(server, Array(request.utf8), render: render)
    }

    static func exchange(_ server: MetricsServer, _ request: [UInt8], render: () -> String) throws -> (bytes: [UInt8], failure: SystemCallError?) {
        let client = Client(port: server.port, request: request)
        var requests = [PollRequest(descriptor: server.descriptor, events: .readable)]
        #expect(try Poll.wait(&requests, timeout: .seconds(10)) == 1, "the client connected")
        server.serveOne(render)
        return client.finish()
    }

    @Test func servesTheMetricsOverHTTP() throws {
        let server = try MetricsServer(address: "127.0.0.1:0", logger: Self.logger)
        #expect(server.port != 0)
        let body = PrometheusText.render(Self.sampleStatus())
        var renders = 0
        let render = { renders += 1; return body }

        let (bytes, failure) = try Self.exchange(server, "GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n", render: render)
        #expect(failure == nil)
        let response = try Response(bytes)
        #expect(response.statusLine == "HTTP/1.1 200 OK")
        #expect(response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
        #expect(response.headers["content-length"] == String(body.utf8.count))
        #expect(response.headers["connection"] == "close")
        #expect(response.body == body)
        _ = try PrometheusParser.parsePrometheus(response.body)
        #expect(renders == 1)

        // The root too, with a query, bare line feeds and HTTP/1.0.
        #expect(try Response(Self.exchange(server, "GET /?x=1 HTTP/1.0\n\n", render: render).bytes).body == body)
        // HEAD: the headers of GET, no body.
        let head = try Response(Self.exchange(server, "HEAD /metrics HTTP/1.1\r\n\r\n", render: render).bytes)
        #expect(head.statusLine == "HTTP/1.1 200 OK")
        #expect(head.headers["content-length"] == String(body.utf8.count))
        #expect(head.body.isEmpty)
        #expect(renders == 3)
    }

    @Test func answersEverythingElseWithAnErrorStatus() throws {
        let server = try MetricsServer(address: "127.0.0.1:0", logger: Self.logger)
        var renders = 0
        let render = { renders += 1; return "x 1\n" }
        let cases: [(request: String, status: String)] = [
            ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", "404 Not Found"),
            ("GET /metrics/extra HTTP/1.1\r\n\r\n", "404 Not Found"),
            ("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405 Method Not Allowed"),
            ("DELETE / HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
            ("garbage\r\n\r\n", "400 Bad Request"),
            ("GET /metrics\r\n\r\n", "400 Bad Request"),
            ("GET  /metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
            ("GET /metrics SPDY/3\r\n\r\n", "400 Bad Request"),
            ("GET metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
            ("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "400 Bad Request"),
            ("GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n", "400 Bad Request"),
            ("G\u{0}T /metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n", "200 OK"),
        ]
        for (request, status) in cases {
            let (bytes, failure) = try Self.exchange(server, request, render: render)
            #expect(failure == nil, "\(request.debugDescription)")
            let response = try Response(bytes)
            #expect(response.statusLine == "HTTP/1.1 \(status)", "\(request.debugDescription)")
            #expect(response.headers["connection"] == "close")
            #expect(response.headers["content-length"] == String(response.body.utf8.count))
            if status.hasPrefix("405") { #expect(response.headers["allow"] == "GET, HEAD") }
        }
        #expect(renders == 1, "only the one good request rendered the metrics")
    }

    @Test func hugeGarbageIsCutOffAndTheServerGoesOn() throws {
        let server = try MetricsServer(address: "127.0.0.1:0", logger: Self.logger)
        var garbage: [UInt8] = []
        var random = SystemRandomNumberGenerator()
        for _ in 0..<(100 * 1024) { garbage.append(UInt8.random(in: 0...255, using: &random) | 1) }
        for request in [garbage, Array(repeating: UInt8(ascii: "A"), count: 100 * 1024),
                        Array("GET /metrics HTTP/1.1\r\nCookie: \(String(repeating: "c", count: MetricsLimits.maximumRequestBytes))\r\n\r\n".utf8)] {
            let (bytes, failure) = try Self.exchange(server, request, render: { "x 1\n" })
            // Usually the 400 arrives; on a loaded machine the client may still be sending when the server
            // gives up lingering, and the kernel then resets the connection: cut off, which is fine too.
            if failure == nil || !bytes.isEmpty {
                let response = try Response(bytes)
                #expect(response.statusLine == "HTTP/1.1 400 Bad Request")
            } else {
                #expect(failure?.errno == .ECONNRESET)
            }
        }
        // Still serving.
        let after = try Response(Self.exchange(server, "GET /metrics HTTP/1.1\r\n\r\n", render: { "x 1\n" }).bytes)
        #expect(after.statusLine == "HTTP/1.1 200 OK")
        #expect(after.body == "x 1\n")
    }

    @Test func aClientThatSendsNoWholeRequestGetsATimeoutNotTheEngine() throws {
        let server = try MetricsServer(address: "127.0.0.1:0", logger: Self.logger)
        let start = MonotonicInstant.now()
        let (bytes, _) = try Self.exchange(server, "GET /metrics HTTP/1.1\r\nHost:", render: { "x 1\n" })
        let waited = MonotonicInstant.now() - start
        #expect(try Response(bytes).statusLine == "HTTP/1.1 408 Request Timeout")
        #expect(waited >= MetricsLimits.requestTimeout)
        #expect(waited < MetricsLimits.requestTimeout + .seconds(3))
    }

    @Test func aClientThatLeavesAtOnceCostsNothing() throws {
        let server = try MetricsServer(address: "127.0.0.1:0", logger: Self.logger)
        // Nobody there: serveOne returns at once (EAGAIN on the non-blocking listener).
        server.serveOne { Issue.record("rendered without a request"); return "" }

        let client = Client(port: server.port, request: [], closeAfterSending: true)
        _ = client.finish()
        var requests = [PollRequest(descriptor: server.descriptor, events: .readable)]
        #expect(try Poll.wait(&requests, timeout: .seconds(10)) == 1)
        let start = MonotonicInstant.now()
        server.serveOne { Issue.record("rendered for a client that sent nothing"); return "" }
        #expect(MonotonicInstant.now() - start < MetricsLimits.requestTimeout, "end of stream ends the wait")
    }

    @Test func aClientThatDoesNotReadHoldsTheEngineNoLongerThanTheResponseTimeout() throws {
        let server = try MetricsServer(address: "127.0.0.1:0", logger: Self.logger)
        // Far more than the socket buffers hold, so sending has to wait for the client.
        let body = String(repeating: "x 1\n", count: 16 << 20 / 4)
        let client = Client(port: server.port, request: Array("GET /metrics HTTP/1.1\r\n\r\n".utf8), stallFor: .seconds(3))
        var requests = [PollRequest(descriptor: server.descriptor, events: .readable)]
        #expect(try Poll.wait(&requests, timeout: .seconds(10)) == 1)
        let start = MonotonicInstant.now()
        server.serveOne { body }
        let held = MonotonicInstant.now() - start
        #expect(held >= MetricsLimits.responseTimeout)
        #expect(held < MetricsLimits.responseTimeout + .seconds(2))
        let (bytes, _) = client.finish()
        #expect(bytes.count < body.utf8.count, "the response was cut off")
    }

    @Test(arguments: ["0.0.0.0:9848", "10.1.2.3:9848", "192.168.0.1:80", "[::1]:9848", "::1:9848", "[::]:9848"])
    func nonLoopbackAddressesAreRefused(_ address: String) {
        #expect {
            _ = try MetricsServer(address: address, logger: Self.logger)
        } throws: { error in
            let message = "\(error)"
            return error is MetricsError && message.contains("loopback") && message.contains("authentication")
        }
    }

    @Test(arguments: ["127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80", "127.0.0.01:9848",
                      "127.1:9848", "example.com:9848", ":9848", "127.0.0.1:9848 "])
    func malformedAddressesAreRefused(_ address: String) {
        #expect(throws: MetricsError.self) { _ = try MetricsServer.parse(address: address) }
    }

    @Test func loopbackAddressesAreRead() throws {
        #expect(try MetricsServer.parse(address: "127.0.0.1:9848") == ("127.0.0.1", 9848))
        #expect(try MetricsServer.parse(address: "127.42.0.9:80") == ("127.42.0.9", 80))
        #expect(try MetricsServer.parse(address: "localhost:9848") == ("127.0.0.1", 9848))
        let server = try MetricsServer(address: "localhost:0", logger: Self.logger)
        #expect(server.port != 0)
    }

    @Test func aTakenPortIsReportedWithTheAddress() throws {
        let first = try MetricsServer(address: "127.0.0.1:0", logger: Self.logger)
        #expect {
            _ = try MetricsServer(address: "127.0.0.1:\(first.port)", logger: Self.logger)
        } throws: { error in
            "\(error)".contains("127.0.0.1:\(first.port)") && "\(error)".contains("EADDRINUSE")
        }
    }
}
