import ArgumentParser
import BallonetHost

/// The entry point: ArgumentParser runs `HostCommand` (an async command) through `AsyncMainProtocol`.
@main
struct BallonetHostMain: AsyncMainProtocol {
    typealias Command = HostCommand
}
