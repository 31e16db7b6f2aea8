import BallonetLinux
import Logging

public enum MetricsLimits {
    /// A scrape is a request line and a few headers (Prometheus sends about 300 bytes): 8 KiB is ample, and
    /// a client cannot make the daemon buffer more. A longer head is answered 400.
    public static let maximumRequestBytes = 8192
    /// A client gets this long to send its request head. The metrics thread serves one client at a time,
    /// so a client that stalls must not keep the next scrape waiting long.
    public static let requestTimeout: Duration = .milliseconds(500)
    /// And this long to take the response: a client that does not read must not hold the thread either.
    public static let responseTimeout: Duration = .milliseconds(500)
    /// After answering a request the server did not read to the end (a head too long, bytes after it), it
    /// reads and discards what else arrives for this long before closing: closing a socket with unread
    /// input makes the kernel reset the connection, and the client could lose the answer.
    public static let lingerTimeout: Duration = .milliseconds(100)
}

/// Why the metrics endpoint cannot be served as configured.
public struct MetricsError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The daemon's Prometheus endpoint: HTTP/1.1 on an IPv4 loopback address, one request per connection,
/// served one connection at a time by a thread of its own (`HostEngine` starts it), from the page the engine
/// renders each round, so no client can hold the engine's loop.
///
/// It answers `GET /metrics` (and `GET /`, and HEAD for both) with `PrometheusText`; anything else gets an
/// error status. It has no authentication, so it refuses to listen anywhere but on loopback.
/// Used by one thread at a time: created by the engine, then served only by the metrics thread.
final class MetricsServer: @unchecked Sendable {
    /// As configured, "127.0.0.1:9848".
    let address: String
    /// The port listened on: the configured one, or the one the kernel chose for port 0.
    let port: UInt16
    private let listener: SharedDescriptor
    let logger: Logger

    var descriptor: Int32 { listener.descriptor.rawValue }

    init(address: String, logger: Logger) throws {
        self.address = address
        self.logger = logger
        let (host, port) = try Self.parse(address: address)
        do {
            // Non-blocking: a client that gives up between the engine's poll and the accept must not
            // leave the engine waiting in accept.
            listener = SharedDescriptor(try TCPSocket.listen(address: host, port: port, nonBlocking: true))
            self.port = try TCPSocket.boundPort(of: listener.descriptor)
        } catch {
            throw MetricsError("cannot serve metrics on \(address): \(error)")
        }
    }

    /// Reads "127.0.0.1:9848" (or "localhost:9848"): an IPv4 address in 127.0.0.0/8 and a port.
    static func parse(address: String) throws -> (host: String, port: UInt16) {
        let example = "such as 127.0.0.1:9848"
        guard let colon = address.lastIndex(of: ":") else {
            throw MetricsError("metrics address \(address.debugDescription): expected host:port, \(example)")
        }
        var host = String(address[..<colon])
        let portText = address[address.index(after: colon)...]
        let loopbackOnly = "the metrics endpoint has no authentication, so ballonet-host serves it on IPv4 loopback only (127.0.0.0/8, \(example))"
        if host.contains(":") || host.hasPrefix("[") {
            throw MetricsError("metrics address \(address.debugDescription) refused: \(loopbackOnly)")
        }
        if host == "localhost" { host = "127.0.0.1" }
        guard let octets = Self.octets(of: host) else {
            throw MetricsError("metrics address \(address.debugDescription): \(host.debugDescription) is not an IPv4 address; \(loopbackOnly)")
        }
        guard octets[0] == 127 else {
            throw MetricsError("metrics address \(address.debugDescription) refused: \(loopbackOnly)")
        }
        guard !portText.isEmpty, portText.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let port = UInt16(portText)
        else {
            throw MetricsError("metrics address \(address.debugDescription): the port must be a number from 0 to 65535, \(example)")
        }
        return (host, port)
    }

    /// The four numbers of a dotted quad written plainly (no leading zeros, which some readers take for
    /// octal), nil for anything else.
    private static func octets(of host: String) -> [UInt8]? {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var octets: [UInt8] = []
        for part in parts {
            guard (1...3).contains(part.utf8.count),
                  part.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                  part == "0" || !part.hasPrefix("0"),
                  let octet = UInt8(part)
            else { return nil }
            octets.append(octet)
        }
        return octets
    }

    /// Touched only by the metrics thread (the one that calls `serveOne`).
    private var acceptFailures = AcceptFailures()

    /// Accepts one client, reads its request, answers, closes. `render` is called only for a request
    /// that gets the metrics.
    func serveOne(_ render: () -> String) {
        let connection: FileDescriptor
        do {
            connection = try listener.descriptor.accept(nonBlocking: true)
        } catch {
            acceptFailures.record(error, logger: logger, what: "metrics")
            return
        }
        let response: HTTPResponse
        var readAll = true
        switch readRequestHead(connection) {
        case .head(let head, let leftover):
            readAll = !leftover
            response = Self.respond(to: head, render: render)
        case .tooLong:
            readAll = false
            response = HTTPResponse(status: "400 Bad Request", "request head longer than \(MetricsLimits.maximumRequestBytes) bytes")
        case .timedOut:
            readAll = false
            response = HTTPResponse(status: "408 Request Timeout", "no complete request within \(MetricsLimits.requestTimeout)")
        case .closed:
            return
        case .failed(let error):
            logger.debug("metrics: reading a request: \(error)")
            return
        }
        if response.status != "200 OK" { logger.debug("metrics: answered \(response.status)") }
        do {
            try send(response.bytes, on: connection)
        } catch {
            logger.debug("metrics: sending the response: \(error)")
            return
        }
        try? connection.shutdown(.writing)
        if !readAll { discardInput(connection) }
    }

    // MARK: - Reading

    enum RequestRead {
        /// The head without its blank line; `leftover`: bytes came after it.
        case head([UInt8], leftover: Bool)
        case tooLong
        case timedOut
        /// The client closed before sending a whole head.
        case closed
        case failed(SystemCallError)
    }

    private func readRequestHead(_ connection: borrowing FileDescriptor) -> RequestRead {
        let deadline = MonotonicInstant.now().advanced(by: MetricsLimits.requestTimeout)
        var buffer: [UInt8] = []
        var searchedUpTo = 0
        while true {
            if let (end, next) = Self.endOfHead(in: buffer, from: searchedUpTo) {
                guard next <= MetricsLimits.maximumRequestBytes else { return .tooLong }
                return .head(Array(buffer[..<end]), leftover: next < buffer.count)
            }
            // A head ends in at most 4 bytes, so a match can start no earlier than 3 bytes before the end.
            searchedUpTo = max(buffer.count - 3, 0)
            if buffer.count > MetricsLimits.maximumRequestBytes { return .tooLong }
            let left = deadline - MonotonicInstant.now()
            guard left > .zero else { return .timedOut }
            do {
                guard try !connection.poll(for: .readable, timeout: left).isEmpty else { return .timedOut }
                // One byte past the bound is enough to know a head is too long.
                let bytes = try connection.receive(upTo: MetricsLimits.maximumRequestBytes + 1 - buffer.count)
                if bytes.isEmpty { return .closed }
                buffer += bytes
            } catch where error.errno == .EAGAIN {
                continue
            } catch {
                return .failed(error)
            }
        }
    }

    /// Where the head ends (CRLF CRLF, or LF LF: RFC 9112 lets a server take a bare LF for a line end):
    /// the index of the blank line and the index after it.
    static func endOfHead(in buffer: [UInt8], from start: Int) -> (end: Int, next: Int)? {
        let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")
        var index = start
        while index < buffer.count {
            if buffer[index] == lf {
                if index + 1 < buffer.count, buffer[index + 1] == lf { return (index + 1, index + 2) }
                if index + 2 < buffer.count, buffer[index + 1] == cr, buffer[index + 2] == lf { return (index + 1, index + 3) }
            }
            index += 1
        }
        return nil
    }

    // MARK: - Answering

    struct HTTPResponse {
        var status: String
        var contentType = "text/plain; charset=utf-8"
        var body: [UInt8]
        var includeBody = true
        var extraHeaders: [String] = []

        init(status: String, _ message: String) {
            self.status = status
            body = Array((message + "\n").utf8)
        }

        var bytes: [UInt8] {
            var head = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
            for header in extraHeaders { head += header + "\r\n" }
            head += "Connection: close\r\n\r\n"
            return Array(head.utf8) + (includeBody ? body : [])
        }
    }

    /// The answer to a request head (request line and header lines, without the blank line).
    static func respond(to head: [UInt8], render: () -> String) -> HTTPResponse {
        let lf = UInt8(ascii: "\n"), cr = UInt8(ascii: "\r")
        var lines = head.split(separator: lf, omittingEmptySubsequences: false).map { line in
            line.last == cr ? line.dropLast() : line
        }
        // The head ends with the line feed of its last line; RFC 9112 lets a server skip blank lines before
        // the request line.
        if lines.last?.isEmpty == true { lines.removeLast() }
        while lines.first?.isEmpty == true { lines.removeFirst() }
        guard let requestLine = lines.first,
              requestLine.allSatisfy({ $0 >= 0x20 && $0 < 0x7F })
        else { return HTTPResponse(status: "400 Bad Request", "malformed request line") }
        let parts = requestLine.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard parts.count == 3, !parts[0].isEmpty, parts[0].utf8.allSatisfy(isTokenCharacter), parts[2].hasPrefix("HTTP/1.")
        else { return HTTPResponse(status: "400 Bad Request", "malformed request line") }
        var target = Substring(parts[1])
        // The absolute form ("http://127.0.0.1:9848/metrics"), which RFC 9112 has servers accept too.
        if target.lowercased().hasPrefix("http://") {
            let afterScheme = target.dropFirst("http://".count)
            target = afterScheme.firstIndex(of: "/").map { afterScheme[$0...] } ?? "/"
        }
        guard target.hasPrefix("/") else { return HTTPResponse(status: "400 Bad Request", "malformed request target") }
        // Header fields are not used, but a head that is not made of them is not HTTP.
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > line.startIndex,
                  line[..<colon].allSatisfy(isTokenCharacter),
                  line.allSatisfy({ $0 >= 0x20 || $0 == 0x09 })
            else { return HTTPResponse(status: "400 Bad Request", "malformed header field") }
        }
        let method = parts[0]
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        guard path == "/metrics" || path == "/" else {
            return HTTPResponse(status: "404 Not Found", "ballonet-host serves its metrics at /metrics")
        }
        guard method == "GET" || method == "HEAD" else {
            var response = HTTPResponse(status: "405 Method Not Allowed", "the metrics are read with GET")
            response.extraHeaders = ["Allow: GET, HEAD"]
            return response
        }
        var response = HTTPResponse(status: "200 OK", "")
        response.contentType = PrometheusText.contentType
        response.body = Array(render().utf8)
        response.includeBody = method == "GET"
        return response
    }

    /// RFC 9110's tchar: what a method or a header field name is made of.
    private static func isTokenCharacter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }

    // MARK: - Writing

    /// Sends all of `bytes` on the non-blocking connection, waiting for room at most until the response
    /// deadline.
    private func send(_ bytes: [UInt8], on connection: borrowing FileDescriptor) throws {
        let deadline = MonotonicInstant.now().advanced(by: MetricsLimits.responseTimeout)
        var done = 0
        while done < bytes.count {
            do {
                done += try bytes.withUnsafeBytes { raw in
                    try connection.send(UnsafeRawBufferPointer(rebasing: raw[done...]))
                }
            } catch let error as SystemCallError where error.errno == .EAGAIN {
                let left = deadline - MonotonicInstant.now()
                guard left > .zero, try !connection.poll(for: .writable, timeout: left).isEmpty else {
                    throw MetricsError("the client took no more of the response within \(MetricsLimits.responseTimeout)")
                }
            }
        }
    }

    /// Reads and drops the client's input until it closes or the linger time is up (see `lingerTimeout`).
    private func discardInput(_ connection: borrowing FileDescriptor) {
        let deadline = MonotonicInstant.now().advanced(by: MetricsLimits.lingerTimeout)
        while true {
            let left = deadline - MonotonicInstant.now()
            guard left > .zero else { return }
            do {
                guard try !connection.poll(for: .readable, timeout: left).isEmpty else { return }
                if try connection.receive(upTo: 65536).isEmpty { return }
            } catch where error.errno == .EAGAIN {
                continue
            } catch {
                return
            }
        }
    }
}
