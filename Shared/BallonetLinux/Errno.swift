#if canImport(Glibc)
import Glibc
#endif

/// An `errno` value: why a system call failed.
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible, RawRepresentable {
    public let rawValue: Int32

    public init(rawValue: Int32) {
        self.rawValue = rawValue
    }

    /// The calling thread's errno, as the last failing libc call left it.
    static var current: Errno { Errno(rawValue: Glibc.errno) }

    /// The C macro's name, such as "ENOENT", for the values this type names; nil for others.
    public var name: String? { Errno.names[rawValue] }

    /// libc's text for the value, such as "No such file or directory".
    public var message: String {
        // glibc's strerror is thread-safe since 2.32: known values come from a constant table,
        // unknown ones are formatted into a thread-local buffer that is copied at once.
        String(cString: strerror(rawValue))
    }

    /// Reads like "ENOENT (No such file or directory)".
    public var description: String {
        "\(name ?? "errno \(rawValue)") (\(message))"
    }
}

extension Errno {
    public static let EPERM = Errno(rawValue: Glibc.EPERM)
    public static let ENOENT = Errno(rawValue: Glibc.ENOENT)
    public static let ESRCH = Errno(rawValue: Glibc.ESRCH)
    public static let EINTR = Errno(rawValue: Glibc.EINTR)
    public static let EIO = Errno(rawValue: Glibc.EIO)
    public static let ENXIO = Errno(rawValue: Glibc.ENXIO)
    public static let E2BIG = Errno(rawValue: Glibc.E2BIG)
    public static let EBADF = Errno(rawValue: Glibc.EBADF)
    public static let ECHILD = Errno(rawValue: Glibc.ECHILD)
    /// Also EWOULDBLOCK, which Linux gives the same value.
    public static let EAGAIN = Errno(rawValue: Glibc.EAGAIN)
    public static let ENOMEM = Errno(rawValue: Glibc.ENOMEM)
    public static let EACCES = Errno(rawValue: Glibc.EACCES)
    public static let EFAULT = Errno(rawValue: Glibc.EFAULT)
    public static let EBUSY = Errno(rawValue: Glibc.EBUSY)
    public static let EEXIST = Errno(rawValue: Glibc.EEXIST)
    public static let EXDEV = Errno(rawValue: Glibc.EXDEV)
    public static let ENODEV = Errno(rawValue: Glibc.ENODEV)
    public static let ENOTDIR = Errno(rawValue: Glibc.ENOTDIR)
    public static let EISDIR = Errno(rawValue: Glibc.EISDIR)
    public static let EINVAL = Errno(rawValue: Glibc.EINVAL)
    public static let ENFILE = Errno(rawValue: Glibc.ENFILE)
    public static let EMFILE = Errno(rawValue: Glibc.EMFILE)
    public static let ENOTTY = Errno(rawValue: Glibc.ENOTTY)
    public static let EFBIG = Errno(rawValue: Glibc.EFBIG)
    public static let ENOSPC = Errno(rawValue: Glibc.ENOSPC)
    public static let ESPIPE = Errno(rawValue: Glibc.ESPIPE)
    public static let EROFS = Errno(rawValue: Glibc.EROFS)
    public static let EPIPE = Errno(rawValue: Glibc.EPIPE)
    public static let ERANGE = Errno(rawValue: Glibc.ERANGE)
    public static let EDEADLK = Errno(rawValue: Glibc.EDEADLK)
    public static let ENAMETOOLONG = Errno(rawValue: Glibc.ENAMETOOLONG)
    public static let ENOSYS = Errno(rawValue: Glibc.ENOSYS)
    public static let ENOTEMPTY = Errno(rawValue: Glibc.ENOTEMPTY)
    public static let ELOOP = Errno(rawValue: Glibc.ELOOP)
    public static let ENODATA = Errno(rawValue: Glibc.ENODATA)
    public static let EOVERFLOW = Errno(rawValue: Glibc.EOVERFLOW)
    public static let ENOTSOCK = Errno(rawValue: Glibc.ENOTSOCK)
    /// Also ENOTSUP, which Linux gives the same value.
    public static let EOPNOTSUPP = Errno(rawValue: Glibc.EOPNOTSUPP)
    public static let EADDRINUSE = Errno(rawValue: Glibc.EADDRINUSE)
    public static let EADDRNOTAVAIL = Errno(rawValue: Glibc.EADDRNOTAVAIL)
    public static let ENETDOWN = Errno(rawValue: Glibc.ENETDOWN)
    public static let ECONNABORTED = Errno(rawValue: Glibc.ECONNABORTED)
    public static let ECONNRESET = Errno(rawValue: Glibc.ECONNRESET)
    public static let ENOBUFS = Errno(rawValue: Glibc.ENOBUFS)
    public static let EISCONN = Errno(rawValue: Glibc.EISCONN)
    public static let ENOTCONN = Errno(rawValue: Glibc.ENOTCONN)
    public static let ETIMEDOUT = Errno(rawValue: Glibc.ETIMEDOUT)
    public static let ECONNREFUSED = Errno(rawValue: Glibc.ECONNREFUSED)
    public static let EALREADY = Errno(rawValue: Glibc.EALREADY)
    public static let EINPROGRESS = Errno(rawValue: Glibc.EINPROGRESS)
    public static let ESTALE = Errno(rawValue: Glibc.ESTALE)
    public static let ECANCELED = Errno(rawValue: Glibc.ECANCELED)

    private static let names: [Int32: String] = {
        let named: [(Errno, String)] = [
            (.EPERM, "EPERM"), (.ENOENT, "ENOENT"), (.ESRCH, "ESRCH"), (.EINTR, "EINTR"), (.EIO, "EIO"),
            (.ENXIO, "ENXIO"), (.E2BIG, "E2BIG"), (.EBADF, "EBADF"), (.ECHILD, "ECHILD"), (.EAGAIN, "EAGAIN"),
            (.ENOMEM, "ENOMEM"), (.EACCES, "EACCES"), (.EFAULT, "EFAULT"), (.EBUSY, "EBUSY"),
            (.EEXIST, "EEXIST"), (.EXDEV, "EXDEV"), (.ENODEV, "ENODEV"), (.ENOTDIR, "ENOTDIR"),
            (.EISDIR, "EISDIR"), (.EINVAL, "EINVAL"), (.ENFILE, "ENFILE"), (.EMFILE, "EMFILE"),
            (.ENOTTY, "ENOTTY"), (.EFBIG, "EFBIG"), (.ENOSPC, "ENOSPC"), (.ESPIPE, "ESPIPE"),
            (.EROFS, "EROFS"), (.EPIPE, "EPIPE"), (.ERANGE, "ERANGE"), (.EDEADLK, "EDEADLK"),
            (.ENAMETOOLONG, "ENAMETOOLONG"), (.ENOSYS, "ENOSYS"), (.ENOTEMPTY, "ENOTEMPTY"),
            (.ELOOP, "ELOOP"), (.ENODATA, "ENODATA"), (.EOVERFLOW, "EOVERFLOW"), (.ENOTSOCK, "ENOTSOCK"),
            (.EOPNOTSUPP, "EOPNOTSUPP"), (.EADDRINUSE, "EADDRINUSE"), (.EADDRNOTAVAIL, "EADDRNOTAVAIL"),
            (.ENETDOWN, "ENETDOWN"), (.ECONNABORTED, "ECONNABORTED"), (.ECONNRESET, "ECONNRESET"),
            (.ENOBUFS, "ENOBUFS"), (.EISCONN, "EISCONN"), (.ENOTCONN, "ENOTCONN"),
            (.ETIMEDOUT, "ETIMEDOUT"), (.ECONNREFUSED, "ECONNREFUSED"), (.EALREADY, "EALREADY"),
            (.EINPROGRESS, "EINPROGRESS"), (.ESTALE, "ESTALE"), (.ECANCELED, "ECANCELED"),
        ]
        var names: [Int32: String] = [:]
        for (value, name) in named { names[value.rawValue] = name }
        return names
    }()
}
