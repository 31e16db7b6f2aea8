#if canImport(Glibc)
import Glibc
#endif

/// What a command-line tool asks of its terminal.
public enum Terminal {
    /// isatty(3) on standard output: refresh in place on a terminal, append lines into a pipe or file.
    public static var standardOutputIsTerminal: Bool { isatty(1) == 1 }

    /// fflush(3) of every stdio stream: `print` output reaches a pipe now, not when the buffer fills.
    public static func flushOutput() { _ = fflush(nil) }
}
