#if canImport(Glibc)
import Glibc
#endif

/// A reading of CLOCK_MONOTONIC: nanoseconds since some fixed point after boot. It never jumps with
/// wall-clock changes, so intervals and deadlines measured with it are honest.
public struct MonotonicInstant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public let nanoseconds: UInt64

    public init(nanoseconds: UInt64) {
        self.nanoseconds = nanoseconds
    }

    /// clock_gettime(CLOCK_MONOTONIC). It cannot fail on Linux for this clock and a valid pointer.
    public static func now() -> MonotonicInstant {
        var time = timespec()
        _ = clock_gettime(CLOCK_MONOTONIC, &time)
        return MonotonicInstant(nanoseconds: UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec))
    }

    /// The time from `earlier` to this instant; negative if `earlier` is later.
    public func duration(since earlier: MonotonicInstant) -> Duration {
        if nanoseconds >= earlier.nanoseconds {
            return .nanoseconds(Int64(clamping: nanoseconds - earlier.nanoseconds))
        }
        return .nanoseconds(-Int64(clamping: earlier.nanoseconds - nanoseconds))
    }

    /// This instant moved by `duration`, clamped to the clock's range.
    public func advanced(by duration: Duration) -> MonotonicInstant {
        let delta = duration.nanosecondsClamped
        if delta >= 0 {
            let (sum, overflow) = nanoseconds.addingReportingOverflow(UInt64(delta))
            return MonotonicInstant(nanoseconds: overflow ? .max : sum)
        }
        let magnitude = delta.magnitude
        return MonotonicInstant(nanoseconds: nanoseconds > magnitude ? nanoseconds - magnitude : 0)
    }

    public static func < (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Bool {
        lhs.nanoseconds < rhs.nanoseconds
    }

    public static func - (lhs: MonotonicInstant, rhs: MonotonicInstant) -> Duration {
        lhs.duration(since: rhs)
    }

    public var description: String { "monotonic \(nanoseconds) ns" }
}

/// Sleeping on CLOCK_MONOTONIC, for code that is not async.
public enum MonotonicClock {
    /// clock_nanosleep until `deadline`; resumes after signals, so it returns at or after the deadline.
    public static func sleep(until deadline: MonotonicInstant) {
        var time = timespec(
            tv_sec: Int(clamping: deadline.nanoseconds / 1_000_000_000),
            tv_nsec: Int(deadline.nanoseconds % 1_000_000_000))
        // clock_nanosleep returns the error number itself; with an absolute deadline a retry after EINTR
        // sleeps only for what is left. The only other failure, EINVAL, cannot happen with this clock
        // and a normalised time.
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &time, nil) == Glibc.EINTR {}
    }

    /// Sleeps for `duration` (nothing if it is zero or negative).
    public static func sleep(for duration: Duration) {
        sleep(until: MonotonicInstant.now().advanced(by: duration))
    }
}

extension Duration {
    /// Whole nanoseconds, clamped to Int64 (about 292 years either way).
    public var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (sum, overflow2) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return sum
    }
}
