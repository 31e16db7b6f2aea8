import Foundation
import BallonetLinux
import BallonetTestSupport

/// The agent binary, run as a child process with its log kept for the test's failure messages.
final class GuestAgentProcess {
    let process = Process()
    let logPath: String

    init(arguments: [String], logPath: String) throws {
        self.logPath = logPath
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = try BuiltCommand.path("ballonet-guest")
        process.arguments = arguments
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func kill(_ signal: BallonetLinux.Signal) { try? ProcessControl.send(signal, to: pid) }

    /// Waits for the process to exit; its exit status, or nil on timeout.
    func waitForExit(timeout: Duration) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.05) }
        return process.isRunning ? nil : process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(.kill)
            process.waitUntilExit()
        }
    }
}
