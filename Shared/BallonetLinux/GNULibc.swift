#if canImport(Glibc)
import Glibc
#else
#error("BallonetLinux wraps Linux with glibc; the agents run nowhere else")
#endif
import CBallonetLinux

/// Flag values from the kernel's UAPI that glibc declares only under `_GNU_SOURCE`; the C shim
/// (Shared/CBallonetLinux) exports them, so the numbers come from the system headers, not from here.
enum LinuxConstant {
    static let memfdCloseOnExec: UInt32 = cballonet_MFD_CLOEXEC
    static let signalfdCloseOnExec: Int32 = cballonet_SFD_CLOEXEC
    static let signalfdNonBlocking: Int32 = cballonet_SFD_NONBLOCK
    static let pollPeerClosedWrite: Int16 = cballonet_POLLRDHUP
}
