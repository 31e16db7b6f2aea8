import Foundation
import Testing
@testable import BallonetGuest
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

/// The guest agent's own command-line parser (it does without swift-argument-parser to stay small).
@Suite struct GuestCommandParsingTests {
    @Test func optionsFlagsAndTheirForms() throws {
        guard case .run(let command) = try GuestCommand.parse(["--socket", "/tmp/s", "--batch-mib=8", "--no-huge-pages", "--mount-tmpfs",
                                                               "--floor-mib", "200", "--log-level", "debug"]) else {
            Issue.record("not a run request")
            return
        }
        var expected = GuestCommand()
        expected.socket = "/tmp/s"
        expected.batchMiB = 8
        expected.hugePages = false
        expected.mountTmpfs = true
        expected.floorMiB = 200
        expected.logLevel = "debug"
        #expect(command == expected)
        #expect(try GuestCommand.parse([]) == .run(GuestCommand()))
        #expect(try GuestCommand.parse(["--floor-mib", "1", "--help"]) == .help)
        #expect(try GuestCommand.parse(["-h"]) == .help)
        #expect(try GuestCommand.parse(["--version"]) == .version)
    }

    @Test(arguments: [
        (["--bogus"], "unknown option '--bogus'"),
        (["--batch-mib"], "--batch-mib needs a value (<MiB>)"),
        (["--batch-mib", "-1"], "--batch-mib -1: expected a whole number"),
        (["--huge-pages=yes"], "--huge-pages takes no value"),
        (["stray"], "unexpected argument 'stray'"),
    ])
    func badCommandLinesSayWhatIsWrong(arguments: [String], message: String) {
        #expect(throws: GuestCommand.UsageError(message)) { try GuestCommand.parse(arguments) }
    }

    @Test func helpLinesFitAHundredColumnsExceptTheTable() {
        let prose = GuestCommand.helpText.components(separatedBy: "OPTIONS:")[0]
        #expect(prose.split(separator: "\n").allSatisfy { $0.count <= 100 })
        #expect(GuestCommand.helpText.contains("--[no-]huge-pages"))
    }
}
