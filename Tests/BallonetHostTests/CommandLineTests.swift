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

    /// libvirt's hook: only `prepare begin` asks; broken XML is refused with one line; an unreachable agent
    /// admits with a warning unless told to refuse. (A running agent's answers: LibvirtInTCGGuestTests.)
    @Test func admitAsLibvirtsHook() throws {
        let socket = "/tmp/ballonet-no-such-\(UInt32.random(in: 0 ... .max)).sock"
        let xml = "<domain type='kvm'><name>web1</name><memory unit='MiB'>512</memory><devices><memballoon model='virtio'/></devices></domain>"
        func admit(_ arguments: [String], stdin: String) throws -> (status: Int32, output: String) {
            let input = FileManager.default.temporaryDirectory.appendingPathComponent("admit-\(UInt32.random(in: 0 ... .max)).xml").path
            try stdin.write(toFile: input, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: input) }
            let quoted = arguments.map { "'\($0)'" }.joined(separator: " ")
            return try BuiltCommand.run(executable: URL(fileURLWithPath: "/bin/sh"),
                                        ["-c", "'\(try BuiltCommand.path("ballonet-host").path)' admit --socket '\(socket)' \(quoted) < '\(input)'"])
        }
        let started = try admit(["web1", "started", "begin", "-"], stdin: xml)
        #expect(started.status == 0 && started.output.isEmpty, "only prepare begin asks: \(started.output)")
        let unreachable = try admit(["web1", "prepare", "begin", "-"], stdin: xml)
        #expect(unreachable.status == 0 && unreachable.output.contains("ballonet: warning: cannot ask ballonet-host whether web1 fits"), "\(unreachable.output)")
        let refused = try admit(["--when-unreachable", "refuse", "web1", "prepare", "begin", "-"], stdin: xml)
        #expect(refused.status == 1 && refused.output.hasPrefix("ballonet: cannot ask ballonet-host") && refused.output.split(separator: "\n").count == 1,
                "\(refused.output)")
        let broken = try admit(["web1", "prepare", "begin", "-"], stdin: "<domain><name>web1</name>")
        #expect(broken.status == 1 && broken.output.contains("ballonet: cannot start domain web1: domain XML is not well-formed"), "\(broken.output)")
        let badMetadata = xml.replacingOccurrences(of: "<devices>", with: "<metadata><b:vm xmlns:b='\(BallonetDomainMetadata.namespace)'><b:shares>0</b:shares></b:vm></metadata><devices>")
        let refusedMetadata = try admit(["web1", "prepare", "begin", "-"], stdin: badMetadata)
        #expect(refusedMetadata.status == 1 && refusedMetadata.output.contains("<shares> must be a whole number"), "\(refusedMetadata.output)")
        let notOurs = try admit(["web1", "prepare", "begin", "-"], stdin: xml.replacingOccurrences(of: "model='virtio'", with: "model='none'"))
        #expect(notOurs.status == 0 && notOurs.output.isEmpty, "a domain Ballonet does not manage is not asked about: \(notOurs.output)")
    }

    @Test func ballonetctlSaysWhenNoHostAgentRuns() throws {
        let (status, output) = try BuiltCommand.run("ballonetctl", ["status", "--socket", "/tmp/ballonet-no-such-\(UInt32.random(in: 0 ... .max)).sock"])
        #expect(status != 0)
        #expect(output.contains("ballonet-host is not running"), "\(output)")
        #expect(!output.contains("USAGE"), "a missing daemon is not a usage mistake")
    }
}
