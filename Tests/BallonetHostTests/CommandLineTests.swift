import Foundation
import Testing
import BallonetHost
import BallonetTestSupport
import BallonetWire

@Suite struct HostCommandLineTests {
    @Test(arguments: [("ballonet-host", "/etc/ballonet/host.toml"), ("ballonetctl", "control socket")])
    func helpAndVersion(command: String, mentions: String) throws {
        let (status, help) = try BuiltCommand.run(command, ["--help"])
        #expect(status == 0)
        #expect(help.contains("USAGE: \(command)"))
        #expect(help.contains(mentions))
        let (versionStatus, version) = try BuiltCommand.run(command, ["--version"])
        #expect(versionStatus == 0)
        #expect(version.trimmingCharacters(in: .whitespacesAndNewlines) == BallonetVersion.software)
    }

    @Test func runHelpExplainsTheDaemon() throws {
        let (status, help) = try BuiltCommand.run("ballonet-host", ["run", "--help"])
        #expect(status == 0)
        for text in ["--attach", "--budget-mib", "SIGTERM", "Type=notify", "stop_vms_on_exit", "Exit status"] {
            #expect(help.contains(text), "run --help lacks \(text)")
        }
    }

    @Test func aBadConfigurationIsRefusedWithItsLine() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bad-host-\(UInt32.random(in: 0 ... .max)).toml").path
        try "[host]\nbudget_mib = 1024\n\n[[vm]]\nname = \"a\"\nmemory_mb = 512\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (status, output) = try BuiltCommand.run("ballonet-host", ["run", "--config", path])
        #expect(status != 0)
        #expect(output.contains("\(path) line 6: unknown key \"memory_mb\" in [vm]"), "\(output)")
    }

    @Test func ballonetctlSaysWhenNoHostAgentRuns() throws {
        let (status, output) = try BuiltCommand.run("ballonetctl", ["status", "--socket", "/tmp/ballonet-no-such-\(UInt32.random(in: 0 ... .max)).sock"])
        #expect(status != 0)
        #expect(output.contains("ballonet-host is not running"), "\(output)")
        #expect(!output.contains("USAGE"), "a missing daemon is not a usage mistake")
    }
}
