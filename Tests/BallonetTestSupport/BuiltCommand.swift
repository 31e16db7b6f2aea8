import Foundation

/// What tests share: running this package's own built executables, as a user would.
public enum BuiltCommand {
    public struct NotBuilt: Error, CustomStringConvertible {
        public let name: String
        public var description: String { "\(name) is not built beside the tests: run `swift build --build-tests` first" }
    }

    /// The path of a built executable of this package: it sits beside the test bundle.
    public static func path(_ name: String) throws -> URL {
        let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let candidates = [directory, directory.deletingLastPathComponent()].map { $0.appendingPathComponent(name) }
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            throw NotBuilt(name: name)
        }
        return found
    }

    /// Runs a built executable to its end; returns its exit status and everything it printed.
    public static func run(_ name: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        try run(executable: try path(name), arguments)
    }

    /// Runs any executable to its end (a system tool such as setpriv); its exit status and output.
    public static func run(executable: URL, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
