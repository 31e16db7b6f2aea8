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

    @Test func badSettingsAreRefusedWithAClearMessage() throws {
        let (missingStatus, missing) = try BuiltCommand.run("ballonet-guest", ["--config", "/nonexistent/guest.toml"])
        #expect(missingStatus != 0)
        #expect(missing.contains("/nonexistent/guest.toml"))
        let (levelStatus, level) = try BuiltCommand.run("ballonet-guest", ["--log-level", "loud"])
        #expect(levelStatus != 0)
        #expect(level.contains("loud") && level.contains("debug"))
        let (flagStatus, flag) = try BuiltCommand.run("ballonet-guest", ["--no-such-flag"])
        #expect(flagStatus != 0)
        #expect(flag.contains("--no-such-flag"))
    }
}
