import BallonetLinux
import Foundation
import Logging
import Testing
@testable import BallonetHost

/// The control socket's own limits, without a daemon: the engine's loop serves it, so no client may hold
/// that loop for long.
@Suite struct ControlServerTests {
    @Test func aClientDribblingItsRequestIsCutOffAfterOneTimeout() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ballonet-control-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("control.sock").path
        let server = try ControlServer(path: path, logger: Logger(label: "test"))
        // A client that sends one byte every 100 ms and never the newline.
        let client = Thread {
            guard let connection = try? UnixSocket.connect(to: path) else { return }
            for byte in Array("{\"command\":\"status\"".utf8) {
                guard (try? connection.send(all: [byte])) != nil else { return }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        client.start()
        let start = MonotonicInstant.now()
        var handled = false
        server.serveOne { _ in
            handled = true
            return ControlResponse(ok: true)
        }
        let held = MonotonicInstant.now() - start
        #expect(!handled)
        #expect(held < ControlLimits.requestTimeout + .milliseconds(300), "the loop was held for \(held)")
    }

    /// Out of descriptors, the client stays queued and poll says "readable" at once: the listener pauses
    /// each time and warns once per interval, instead of spinning and logging without end.
    @Test func acceptFailuresPauseWhenOutOfDescriptorsAndWarnOncePerInterval() {
        var failures = AcceptFailures()
        let logger = Logger(label: "test")
        let emfile = SystemCallError("accept4", .EMFILE)
        #expect(failures.record(emfile, logger: logger, what: "control socket", nowMillis: 1_000, pause: false) == .init(warned: true, paused: true))
        #expect(failures.record(emfile, logger: logger, what: "control socket", nowMillis: 5_000, pause: false) == .init(warned: false, paused: true))
        #expect(failures.record(emfile, logger: logger, what: "control socket", nowMillis: 11_000, pause: false) == .init(warned: true, paused: true))
        // A client that went away: nothing to say or wait for.
        #expect(failures.record(SystemCallError("accept4", .ECONNABORTED), logger: logger, what: "metrics", nowMillis: 30_000, pause: false)
                    == .init(warned: false, paused: false))
        // Another failure is logged (rate-limited) but does not pause.
        #expect(failures.record(SystemCallError("accept4", .EPERM), logger: logger, what: "metrics", nowMillis: 30_000, pause: false)
                    == .init(warned: true, paused: false))
    }
}
