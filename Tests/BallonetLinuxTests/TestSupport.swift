import BallonetLinux
import Testing

/// All tests of this target run one at a time: several of them measure the whole process (VmLck, VmRSS,
/// which descriptor numbers are open), and a test running beside them would change what they measure.
@Suite(.serialized)
enum LinuxLayerTests {}

/// The /proc files captured on the development machine, in Captures/ beside this file.
enum Capture {
    /// Large enough for every capture (the largest is under 30 KB).
    static let maximumCaptureBytes = 1024 * 1024

    static let directory: String = {
        let thisFile = #filePath
        let folder = thisFile.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        return folder + "/Captures"
    }()

    static func bytes(_ name: String) throws -> [UInt8] {
        try FileSystem.readFile(directory + "/" + name, maxBytes: maximumCaptureBytes)
    }

    /// Every real capture, by file name (the hand-edited ones under malformed/ are not listed).
    static let realCaptures = [
        "meminfo", "vmstat", "pressure-memory", "pressure-cpu", "pressure-io", "status", "status-cat",
        "smaps", "smaps-cat", "smaps_rollup", "maps", "ksm_stat",
    ]
}

/// A scratch directory for one test, removed with what is in it when the test ends.
final class ScratchDirectory {
    let path: String

    init() throws {
        // The clock never repeats a reading within a process, so concurrent test runs cannot collide.
        path = "/tmp/ballonet-linux-tests-\(ProcessControl.currentID)-\(MonotonicInstant.now().nanoseconds)"
        try FileSystem.makeDirectory(path)
    }

    deinit {
        if let names = try? FileSystem.listDirectory(path) {
            for name in names {
                try? FileSystem.removeFile(path + "/" + name)
            }
        }
        try? FileSystem.removeDirectory(path)
    }
}

/// A small deterministic generator (SplitMix64), so a failing robustness run can be repeated exactly.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
}

extension Array where Element == UInt8 {
    init(text: String) {
        self = Array(text.utf8)
    }
}

/// Runs `body`, expecting a `SystemCallError`; returns it (nil, with a recorded issue, if none came).
/// (Closures do not infer typed throws yet, so the type is checked here.)
func expectSystemCallError(
    _ body: () throws -> Void,
    sourceLocation: SourceLocation = #_sourceLocation
) -> SystemCallError? {
    expectError(of: SystemCallError.self, body, sourceLocation: sourceLocation)
}

/// Runs `body`, expecting a `ProcParseError`; returns it (nil, with a recorded issue, if none came).
func expectParseError(
    _ body: () throws -> Void,
    sourceLocation: SourceLocation = #_sourceLocation
) -> ProcParseError? {
    expectError(of: ProcParseError.self, body, sourceLocation: sourceLocation)
}

private func expectError<Failure: Error>(
    of expected: Failure.Type,
    _ body: () throws -> Void,
    sourceLocation: SourceLocation
) -> Failure? {
    do {
        try body()
        Issue.record("expected a \(Failure.self), the call succeeded", sourceLocation: sourceLocation)
        return nil
    } catch let error as Failure {
        return error
    } catch {
        Issue.record("expected a \(Failure.self), got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
        return nil
    }
}
