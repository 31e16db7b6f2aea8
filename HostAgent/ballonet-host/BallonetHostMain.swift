import ArgumentParser
import BallonetHost

/// The entry point. Invoked as `ballonetctl` (the Debian package installs ballonetctl as a link to this
/// binary: one copy of the statically linked Swift runtime instead of two), it is the operator's command
/// line; otherwise the daemon's commands.
@main
enum BallonetHostMain {
    static func main() async {
        if CommandLine.arguments.first?.split(separator: "/").last == "ballonetctl" {
            ControlCommand.main()
            return
        }
        await HostCommand.main()
    }
}
