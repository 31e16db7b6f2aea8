import ArgumentParser
import BallonetWire

/// `ballonet-guest`: the agent installed in guest images. Its daemon arrives with the guest-agent work;
/// until then the command tells what it is and which version it is, and does nothing it cannot do.
public struct GuestCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ballonet-guest",
        abstract: "Ballonet guest agent: gives guest memory back to the host through an mlock'd balloon.",
        discussion: """
            ballonet-guest runs inside a virtual machine. When the host asks, it pins guest pages in a balloon \
            (memory locked in a tmpfs file, so it survives an agent crash), tells the host which guest page \
            frames it holds over the virtio-serial port org.ballonet.0, and releases them when the host \
            acknowledges or declines them, or at once when the guest comes under memory pressure. It never \
            pushes the guest below its free-memory floor.

            Port:    /dev/virtio-ports/org.ballonet.0
            Config:  /etc/ballonet/guest.toml

            This version carries the wire format only; the daemon is not in it yet, so the command does \
            nothing but answer --help and --version.
            """,
        version: BallonetVersion.software
    )

    public init() {}

    /// Without a subcommand there is nothing this version can do: say so and fail, so that nothing
    /// (a unit file, a script) mistakes it for a running ballonet-guest.
    public func run() throws {
        throw ValidationError("ballonet-guest \(BallonetVersion.software) has no daemon or subcommand to run yet; it answers --help and --version only")
    }
}
