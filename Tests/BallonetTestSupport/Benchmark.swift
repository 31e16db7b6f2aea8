import Foundation

/// What the benchmarks (`make bench-*`) share: timing with the continuous clock, and giving up with a
/// message that names the benchmark.
public enum Benchmark {
    /// Seconds from `start` to now.
    public static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    /// Prints "<program>: message" on standard error and exits with status 1.
    public static func fail(_ message: String) -> Never {
        let program = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? Substring($0)) } ?? "benchmark"
        FileHandle.standardError.write(Data("\(program.replacingOccurrences(of: "ballonet-", with: "")): \(message)\n".utf8))
        exit(1)
    }
}
