#if canImport(Glibc)
import Glibc
#endif

/// poll(2) event bits.
public struct PollEvents: OptionSet, Hashable, Sendable {
    public let rawValue: Int16
    public init(rawValue: Int16) { self.rawValue = rawValue }

    public static let readable = PollEvents(rawValue: Int16(POLLIN))
    public static let priority = PollEvents(rawValue: Int16(POLLPRI))
    public static let writable = PollEvents(rawValue: Int16(POLLOUT))
    /// The peer shut down its writing side (POLLRDHUP); ask for it to learn this without reading.
    public static let peerClosedWriting = PollEvents(rawValue: LinuxConstant.pollPeerClosedWrite)
    /// Only reported, never asked for:
    public static let error = PollEvents(rawValue: Int16(POLLERR))
    public static let hangUp = PollEvents(rawValue: Int16(POLLHUP))
    /// The descriptor is not open.
    public static let invalid = PollEvents(rawValue: Int16(POLLNVAL))
}

/// One descriptor to wait on, and what happened to it.
public struct PollRequest: Hashable, Sendable {
    public var descriptor: Int32
    public var events: PollEvents
    /// Filled in by `Poll.wait`; error, hangUp and invalid can appear without being asked for.
    public var returnedEvents: PollEvents = []

    public init(descriptor: Int32, events: PollEvents) {
        self.descriptor = descriptor
        self.events = events
    }
}

public enum Poll {
    /// poll(2) on several descriptors: waits until one is ready or `timeout` passes (nil waits for ever),
    /// fills in each request's `returnedEvents` and returns how many have some. 0 means the time ran out.
    ///
    /// The timeout is rounded up to whole milliseconds (poll's unit), so it never returns early; after a
    /// signal it waits only for what is left of it.
    @discardableResult
    public static func wait(_ requests: inout [PollRequest], timeout: Duration?) throws(SystemCallError) -> Int {
        var descriptors = requests.map { pollfd(fd: $0.descriptor, events: $0.events.rawValue, revents: 0) }
        let deadline = timeout.map { MonotonicInstant.now().advanced(by: $0) }
        var ready: Int32
        while true {
            let milliseconds = deadline.map { remainingMilliseconds(until: $0) } ?? -1
            ready = Glibc.poll(&descriptors, nfds_t(descriptors.count), milliseconds)
            if ready >= 0 { break }
            let failure = Errno.current
            if failure != .EINTR {
                throw SystemCallError("poll", failure, context: "\(requests.count) descriptors")
            }
        }
        for index in requests.indices {
            requests[index].returnedEvents = PollEvents(rawValue: descriptors[index].revents)
        }
        return Int(ready)
    }

    static func remainingMilliseconds(until deadline: MonotonicInstant) -> Int32 {
        let now = MonotonicInstant.now()
        guard deadline > now else { return 0 }
        let nanoseconds = deadline.nanoseconds - now.nanoseconds
        let milliseconds = nanoseconds / 1_000_000 + (nanoseconds % 1_000_000 == 0 ? 0 : 1)
        return Int32(clamping: milliseconds)
    }
}

extension FileDescriptor {
    /// Waits until this descriptor has one of `events` (or an error or hang-up), or `timeout` passes.
    /// Returns what happened; empty means the time ran out.
    public func poll(for events: PollEvents, timeout: Duration?) throws(SystemCallError) -> PollEvents {
        var requests = [PollRequest(descriptor: rawValue, events: events)]
        try Poll.wait(&requests, timeout: timeout)
        return requests[0].returnedEvents
    }
}
