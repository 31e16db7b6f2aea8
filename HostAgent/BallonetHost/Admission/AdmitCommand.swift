import ArgumentParser
import Foundation

/// `ballonet-host admit`: admission control for libvirt, run by libvirt's qemu hook
/// (`/etc/libvirt/hooks/qemu`, installed by the package but inactive until the operator enables it).
public struct AdmitCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "admit",
        abstract: "Decide whether a libvirt domain may start; for /etc/libvirt/hooks/qemu.",
        discussion: """
            libvirt runs its qemu hook as `qemu DOMAIN OPERATION SUB-OPERATION EXTRA` with the domain's XML on \
            standard input. For `prepare begin` (before QEMU starts), admit asks the running ballonet-host \
            whether the domain fits beside the VMs it manages: its min (Ballonet metadata min_mib, else \
            host.toml's, else 128 MiB) plus vm_overhead_mib must fit in the memory not yet promised, and \
            host swap must cover its max − min (require_swap). It answers from its own state and never calls \
            libvirt, which holds the domain's start job while the hook runs.

            A refused domain does not start: admit exits 1 with one line on standard error, which virsh shows \
            the operator ("Hook script execution failed: … ballonet: …"). Every other operation, and a domain \
            with neither the org.ballonet.0 channel nor a virtio balloon, is let through without a question.

            When ballonet-host cannot be asked (not running, or no answer within --timeout), the domain \
            starts (--when-unreachable admit, the default, so a stopped agent never blocks VMs), with a \
            warning on standard error; --when-unreachable refuse makes that a refusal.

            The hook: a script at /etc/libvirt/hooks/qemu containing `exec ballonet-host admit "$@"` \
            (packaging/libvirt/qemu-hook), executable, then restart libvirtd: it looks for hooks when it starts.
            Exit status: 0 admitted or not asked; 1 refused (or unreachable with --when-unreachable refuse).
            """)

    @Argument(help: "The domain's name (libvirt's first hook argument).") var domain: String
    @Argument(help: "The operation: prepare, start, started, stopped, release, migrate, restore, reconnect, attach.") var operation: String
    @Argument(help: "The sub-operation: begin or end.") var subOperation = "-"
    @Argument(help: "Extra argument (unused).") var extra = "-"

    @Option(name: .long, help: ArgumentHelp("The host agent's control socket.", valueName: "path"))
    var socket = "/run/ballonet/control.sock"

    @Option(name: .long, help: ArgumentHelp("What to do when ballonet-host cannot be asked: admit or refuse.", valueName: "admit|refuse"))
    var whenUnreachable = "admit"

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for ballonet-host's answer (1 to 60).", valueName: "seconds"))
    var timeout: Int = 10

    public init() {}

    public func validate() throws {
        guard ["admit", "refuse"].contains(whenUnreachable) else { throw ValidationError("--when-unreachable takes admit or refuse") }
        guard (1...60).contains(timeout) else { throw ValidationError("--timeout must be 1 to 60 seconds") }
    }

    public func run() throws {
        // Drain standard input whatever the operation: libvirt writes the XML for every call.
        let xml = Self.readStandardInput(limit: LibvirtDomainDescription.maximumXMLBytes + 1)
        guard operation == "prepare" && subOperation == "begin" else { return }
        let description: LibvirtDomainDescription
        do {
            description = try LibvirtDomainDescription(xml: xml)
        } catch {
            throw Self.refuse("cannot start domain \(domain): \(error)")
        }
        guard description.ballonetChannelPath != nil || description.hasVirtioBalloon else { return }
        let request = ControlRequest(command: "admit", vm: description.name, mib: max(description.memoryBytes >> 20, 1),
                                     shares: description.metadata.shares, minMiB: description.metadata.minMiB,
                                     maxMiB: description.metadata.maxMiB)
        let response: ControlResponse
        do {
            response = try ControlClient.request(request, socket: socket, timeout: .seconds(timeout))
        } catch {
            if whenUnreachable == "refuse" { throw Self.refuse("cannot ask ballonet-host whether \(domain) fits (\(error)); refusing (--when-unreachable refuse)") }
            Self.say("warning: cannot ask ballonet-host whether \(domain) fits (\(error)); starting it unchecked")
            return
        }
        guard response.ok else { throw Self.refuse(response.error ?? response.message ?? "ballonet-host refused domain \(domain)") }
    }

    private static func say(_ line: String) {
        FileHandle.standardError.write(Data(("ballonet: " + line + "\n").utf8))
    }

    /// One line for the operator (libvirt shows the hook's standard error verbatim); thrown, it exits 1.
    private static func refuse(_ line: String) -> ExitCode {
        say(line)
        return ExitCode(1)
    }

    private static func readStandardInput(limit: Int) -> String {
        var data = Data()
        while data.count < limit {
            let chunk = FileHandle.standardInput.readData(ofLength: 64 << 10)
            if chunk.isEmpty { break }
            data.append(chunk)
        }
        return String(decoding: data, as: UTF8.self)
    }
}
