#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which call, why, and on what.
///
/// Its description reads like `open("/proc/123/smaps"): EACCES (Permission denied)`, so it can go into a
/// log line or an error reply as it is.
public struct SystemCallError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The libc function or system call, such as "open" or "process_madvise".
    public let systemCall: String
    public let errno: Errno
    /// What the call was made on, already formatted: a quoted path, "fd 7", "fd 7, offset 4096".
    public let context: String?

    public init(_ systemCall: String, _ errno: Errno, context: String? = nil) {
        self.systemCall = systemCall
        self.errno = errno
        self.context = context
    }

    /// For calls on a path: the path is quoted (with Swift's escapes) so spaces and control characters
    /// in it stay visible.
    public init(_ systemCall: String, _ errno: Errno, path: String) {
        self.init(systemCall, errno, context: quoted(path))
    }

    public var description: String {
        if let context {
            return "\(systemCall)(\(context)): \(errno)"
        }
        return "\(systemCall): \(errno)"
    }
}

/// A path as it appears in error messages.
func quoted(_ path: String) -> String {
    path.debugDescription
}

/// The one place a libc call's result becomes a thrown error.
///
/// Runs `call` until it returns something other than -1 or fails with something other than EINTR, so no
/// wrapper leaks an interrupted call to its caller. Calls that must not be repeated after EINTR (`close`)
/// or that need a shorter timeout on retry (`poll`) do not come through here.
@inline(__always)
func systemCall<Result: FixedWidthInteger & SignedInteger>(
    _ name: String,
    _ context: @autoclosure () -> String? = nil,
    _ call: () -> Result
) throws(SystemCallError) -> Result {
    while true {
        let result = call()
        if result != -1 {
            return result
        }
        let failure = Errno.current
        if failure != .EINTR {
            throw SystemCallError(name, failure, context: context())
        }
    }
}

/// Runs `body` on an array's bytes, passing a `SystemCallError` through (Array's own `withUnsafeBytes`
/// rethrows untyped).
@inline(__always)
func withBytes<Result>(
    of bytes: [UInt8],
    _ body: (UnsafeRawBufferPointer) throws(SystemCallError) -> Result
) throws(SystemCallError) -> Result {
    try bytes.withUnsafeBufferPointer { (buffer) throws(SystemCallError) -> Result in
        try body(UnsafeRawBufferPointer(buffer))
    }
}
