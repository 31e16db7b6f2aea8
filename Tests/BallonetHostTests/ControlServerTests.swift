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
}
