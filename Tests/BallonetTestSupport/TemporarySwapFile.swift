import Foundation

/// A swap file a test makes and switches on, for the host mechanisms that page guest memory out; removed
/// (swapoff, then deleted) when the test is done with it.
public final class TemporarySwapFile {
    public let path: String
    private var active = false

    public static var canMake: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/sbin/mkswap")
    }

    /// `name` keeps tests that run at once apart (/var/tmp/NAME.swap).
    public init(megabytes: Int, name: String) throws {
        path = "/var/tmp/\(name).swap"
        _ = Self.run("/sbin/swapoff", [path])
        try? FileManager.default.removeItem(atPath: path)
        for (tool, arguments) in [("/usr/bin/fallocate", ["-l", "\(megabytes)M", path]), ("/bin/chmod", ["600", path]),
                                  ("/sbin/mkswap", [path]), ("/sbin/swapon", [path])] {
            let status = Self.run(tool, arguments)
            guard status == 0 else {
                try? FileManager.default.removeItem(atPath: path)
                throw TCGGuest.Failure("making the swap file \(path): \(tool) \(arguments.joined(separator: " ")) exited \(status)")
            }
        }
        active = true
    }

    public func remove() {
        guard active else { return }
        active = false
        _ = Self.run("/sbin/swapoff", [path])
        try? FileManager.default.removeItem(atPath: path)
    }

    deinit { remove() }

    static func run(_ command: String, _ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
