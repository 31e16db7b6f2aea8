#if canImport(Glibc)
import Glibc
#endif

/// What a command-line tool asks of its terminal.
public enum Terminal {
    /// isatty(3) on standard output: refresh in place on a terminal, append lines into a pipe or file.
    public static var standardOutputIsTerminal: Bool { isatty(1) == 1 }

    /// fflush(3) of every stdio stream: `print` output reaches a pipe now, not when the buffer fills.
    public static func flushOutput() { _ = fflush(nil) }

    /// Writes `text` to standard output (fd 1) whole, retrying short writes and EINTR; a closed pipe ends
    /// the write quietly (SIGPIPE is the caller's to ignore).
    public static func writeStandardOutput(_ text: String) { write(text, to: 1) }

    /// Writes `text` to standard error (fd 2) whole.
    public static func writeStandardError(_ text: String) { write(text, to: 2) }

    private static func write(_ text: String, to descriptor: Int32) {
        flushOutput()
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            bytes = bytes.dropFirst(written)
        }
    }
}

