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

    @Test(arguments: ["ballonet-host", "ballonetctl"])
    func nothingPretendsToWork(command: String) throws {
        let (status, output) = try BuiltCommand.run(command, [])
        #expect(status != 0)
        #expect(output.contains("has no daemon or subcommand"))
    }
}
