import BallonetHost
import BallonetLinux
import BallonetTestSupport
import Foundation
import Testing

/// A `ballonet-host run` process started by a test from the built binary, attached to VMs the test
/// booted; its log is kept in the work directory and printed when a test fails.
final class HostAgentProcess {
    let process = Process()
    let logPath: String
    let controlSocket: String
    let arguments: [String]

    /// Starts `ballonet-host run` attached to `vms` (name, QMP socket, port socket), with its state and
    /// control socket in `directory`.
    /// Metrics are off unless `metricsAddress` says where (tests run several agents at once: use port 0).
    /// libvirt is off (`libvirtURI` ""), so a test agent never takes the domains of a libvirtd on the machine.
    init(directory: URL, vms: [(name: String, qmp: String, port: String)], extraArguments: [String] = [],
         configText: String? = nil, metricsAddress: String = "", libvirtURI: String = "", executable: URL? = nil) throws {
        logPath = directory.appendingPathComponent("host.log").path
        controlSocket = directory.appendingPathComponent("control.sock").path
        var arguments = ["run", "--state-directory", directory.appendingPathComponent("state").path,
                         "--control-socket", controlSocket, "--log-level", "debug",
                         "--settings-file", directory.appendingPathComponent("vm-settings.json").path,
                         "--metrics-address", metricsAddress, "--libvirt-uri", libvirtURI]
        if let configText {
            let configPath = directory.appendingPathComponent("host.toml").path
            try configText.write(toFile: configPath, atomically: true, encoding: .utf8)
            arguments += ["--config", configPath]
        } else {
            // Not /etc/ballonet/host.toml of the machine the tests run on.
            let empty = directory.appendingPathComponent("empty.toml").path
            try "".write(toFile: empty, atomically: true, encoding: .utf8)
            arguments += ["--config", empty]
        }
        for vm in vms { arguments += ["--attach", "\(vm.name),\(vm.qmp),\(vm.port)"] }
        arguments += extraArguments
        self.arguments = arguments
        process.executableURL = try executable ?? BuiltCommand.path("ballonet-host")
        process.arguments = arguments
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try log.close()
    }

    deinit { stop() }

    var isRunning: Bool { process.isRunning }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func status() throws -> HostStatus {
        let response = try ControlClient.request(ControlRequest(command: "status"), socket: controlSocket)
        guard let status = response.status else { throw TestTimeout(description: "status refused: \(response.error ?? "?")") }
        return status
    }

    func account(_ vm: String) throws -> VMAccount {
        guard let account = try status().vms.first(where: { $0.name == vm }) else { throw TestTimeout(description: "no VM \(vm) in status") }
        return account
    }

    func setTarget(_ vm: String, mib: UInt64?) throws {
        let response = try ControlClient.request(ControlRequest(command: "set-target", vm: vm, mib: mib), socket: controlSocket)
        guard response.ok else { throw TestTimeout(description: "set-target refused: \(response.error ?? "?")") }
    }

    /// Polls the VM's account until `condition` holds; throws with the log's tail after `timeout`.
    @discardableResult
    func wait(for vm: String, timeout: TimeInterval, _ what: String, until condition: (VMAccount) -> Bool) throws -> VMAccount {
        let deadline = Date().addingTimeInterval(timeout)
        var last: VMAccount?
        while Date() < deadline {
            if let account = try? account(vm) {
                last = account
                if condition(account) { return account }
            }
            guard process.isRunning else { break }
            Thread.sleep(forTimeInterval: 0.25)
        }
        throw TestTimeout(description: "\(what) not reached within \(Int(timeout)) s; last account: \(String(describing: last)); "
                          + "host running: \(process.isRunning)\nhost log tail:\n\(String(log.suffix(4000)))")
    }

    /// SIGTERM and wait (the graceful path); SIGKILL after 10 s.
    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    func kill9() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

enum HostTestImage {
    /// The guest image with the current static agent (built once per test run).
    static func get() throws -> (kernel: URL, initramfs: URL) {
        try GuestImage.ensureBuilt(agent: try GuestImage.buildStaticAgent())
    }

    static var canRun: Bool { getuid() == 0 && TCGGuest.qemuExecutable != nil }
}
