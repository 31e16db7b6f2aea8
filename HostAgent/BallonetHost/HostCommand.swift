import ArgumentParser
import BallonetWire

/// `ballonet-host`: the daemon beside QEMU. Its subcommands (run, simulate, admit) arrive with the
/// host-agent, policy and libvirt work; until then it answers --help and --version only.
public struct HostCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ballonet-host",
        abstract: "Ballonet host agent: overcommits VM memory safely by ballooning, swapping and page sharing.",
        discussion: """
            ballonet-host runs beside QEMU (under libvirt or on its own). It decides each VM's memory target \
            from its shares, an idle memory tax and its sampled working set, drives the ballonet-guest \
            balloon in each VM over the virtio-serial port org.ballonet.0, and gives the host the memory \
            behind balloon pages back (hole punching for memfd-backed RAM, pageout otherwise). When \
            ballooning cannot do enough it swaps guest memory at hypervisor level, and it steers KSM page \
            sharing. It discards guest memory only behind pages a guest reported pinned in the current \
            session and not yet acknowledged.

            Config:  /etc/ballonet/host.toml

            This version carries the wire format only; the daemon is not in it yet, so the command does \
            nothing but answer --help and --version.
            """,
        version: BallonetVersion.software
    )

    public init() {}

    /// Without a subcommand there is nothing this version can do: say so and fail, so that nothing
    /// (a unit file, a script) mistakes it for a running ballonet-host.
    public func run() throws {
        throw ValidationError("ballonet-host \(BallonetVersion.software) has no daemon or subcommand to run yet; it answers --help and --version only")
    }
}

/// `ballonetctl`: the operator's command line to a running ballonet-host.
public struct ControlCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ballonetctl",
        abstract: "Ask a running ballonet-host what it is doing, and why.",
        discussion: """
            ballonetctl talks to ballonet-host over its control socket (root or the ballonet group only). \
            It will show each VM's shares, target, balloon, swapped and resident memory and working set \
            (status, top), change a VM's shares and limits (set), and explain the policy's numbers behind \
            a target (explain).

            This version carries the wire format only; the host daemon and its control socket are not in \
            it yet, so the command does nothing but answer --help and --version.
            """,
        version: BallonetVersion.software
    )

    public init() {}

    /// Without a subcommand there is nothing this version can do: say so and fail, so that nothing
    /// (a unit file, a script) mistakes it for a running ballonetctl.
    public func run() throws {
        throw ValidationError("ballonetctl \(BallonetVersion.software) has no daemon or subcommand to run yet; it answers --help and --version only")
    }
}
