import Foundation
import Testing
import BallonetGuest
import BallonetTestSupport
import BallonetWire

@Suite struct GuestCommandLineTests {
    @Test func helpSaysWhatTheAgentIsAndWhereItListens() throws {
        let (status, output) = try BuiltCommand.run("ballonet-guest", ["--help"])
        #expect(status == 0)
        #expect(output.contains("USAGE: ballonet-guest"))
        #expect(output.contains("/dev/virtio-ports/org.ballonet.0"))
        #expect(output.contains("/etc/ballonet/guest.toml"))
        #expect(output.contains("--version"))
    }

    @Test func versionIsTheSoftwareVersion() throws {
        let (status, output) = try BuiltCommand.run("ballonet-guest", ["--version"])
        #expect(status == 0)
        #expect(output.trimmingCharacters(in: .whitespacesAndNewlines) == BallonetVersion.software)
    }

    @Test func runningWithoutADaemonFailsAndSaysWhy() throws {
        let (status, output) = try BuiltCommand.run("ballonet-guest", [])
        #expect(status != 0)
        #expect(output.contains("has no daemon"))
        let (badStatus, badOutput) = try BuiltCommand.run("ballonet-guest", ["--no-such-flag"])
        #expect(badStatus != 0)
        #expect(badOutput.contains("--no-such-flag"))
    }
}
