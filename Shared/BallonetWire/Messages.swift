/// Every message that crosses the wire, as value types. docs/PROTOCOL.md gives each one's layout;
/// the encoding of each lives beside its type in MessageCoding.swift.

/// The type byte of a frame.
public enum MessageType: UInt8, CaseIterable, Hashable, Sendable {
    case hello = 1
    case setTarget = 2
    case inflateReport = 3
    case reclaimAck = 4
    case reclaimDeclined = 5
    case deflateReport = 6
    case statsSample = 7
    case error = 8
    case ping = 9
    case pong = 10
    case goodbye = 11
}

/// One decoded message.
public enum Message: Hashable, Sendable {
    case hello(Hello)
    case setTarget(SetTarget)
    case inflateReport(InflateReport)
    case reclaimAck(ReclaimAck)
    case reclaimDeclined(ReclaimDeclined)
    case deflateReport(DeflateReport)
    case statsSample(StatsSample)
    case error(ErrorReport)
    case ping(Ping)
    case pong(Pong)
    case goodbye(Goodbye)

    public var type: MessageType {
        switch self {
        case .hello: .hello
        case .setTarget: .setTarget
        case .inflateReport: .inflateReport
        case .reclaimAck: .reclaimAck
        case .reclaimDeclined: .reclaimDeclined
        case .deflateReport: .deflateReport
        case .statsSample: .statsSample
        case .error: .error
        case .ping: .ping
        case .pong: .pong
        case .goodbye: .goodbye
        }
    }
}

/// Which side of the port a peer is.
public enum PeerRole: UInt8, Hashable, Sendable {
    case guest = 1
    case host = 2
}

/// What a peer can do beyond the base protocol. Unknown bits are kept and ignored, so a newer peer's
/// capabilities never break an older one.
public struct Capabilities: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Guest: can pin 2 MiB pages (and says which order each batch got).
    public static let hugePages = Capabilities(rawValue: 1 << 0)
    /// Guest: sends stats samples.
    public static let statsSamples = Capabilities(rawValue: 1 << 1)
    /// Guest: its working-set figure comes from MGLRU page ages.
    public static let mglruWorkingSet = Capabilities(rawValue: 1 << 2)
    /// Guest: releases acknowledged pages by itself under memory pressure (and says so).
    public static let pressureRelease = Capabilities(rawValue: 1 << 3)
    /// Guest: balloon survives an agent crash and is re-adopted on restart.
    public static let crashAdoption = Capabilities(rawValue: 1 << 4)
    /// Host: reclaims behind balloon pages (punch or pageout) before it acknowledges them.
    public static let reclaim = Capabilities(rawValue: 1 << 32)
}

/// First message each side sends on a (re)connected port; see the handshake in docs/PROTOCOL.md.
public struct Hello: Hashable, Sendable {
    public var role: PeerRole
    /// The protocol versions this peer speaks.
    public var minVersion: UInt8
    public var maxVersion: UInt8
    /// Random, nonzero, new for every connection. The host's fences every reclaim of an older session.
    public var sessionID: UInt64
    public var capabilities: Capabilities
    /// The agent's software version, for logs and `ballonetctl status`.
    public var softwareVersion: String
    /// Guest: pages pinned in its balloon right now (re-adopted after a restart). Host: zero.
    public var balloonPages: UInt64

    public init(role: PeerRole, minVersion: UInt8 = WireLimits.supportedProtocolVersions.lowerBound,
                maxVersion: UInt8 = WireLimits.supportedProtocolVersions.upperBound, sessionID: UInt64,
                capabilities: Capabilities, softwareVersion: String = BallonetVersion.software,
                balloonPages: UInt64 = 0) {
        self.role = role
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.sessionID = sessionID
        self.capabilities = capabilities
        self.softwareVersion = softwareVersion
        self.balloonPages = balloonPages
    }
}

/// Host → guest: make the balloon this many 4 KiB pages. The guest moves toward it in batches.
public struct SetTarget: Hashable, Sendable {
    public var balloonPages: UInt64
    public init(balloonPages: UInt64) { self.balloonPages = balloonPages }
}

/// Guest → host: a batch of pages now pinned in the balloon. The host may discard the memory behind
/// them until it acknowledges or declines this batch, and only if `hostSessionID` is its current session.
public struct InflateReport: Hashable, Sendable {
    /// The host session this batch was pinned for (fencing: a stale one is never reclaimed).
    public var hostSessionID: UInt64
    /// Guest-chosen, unique within the guest session; echoed by the ack or decline.
    public var batchID: UInt64
    /// Order of the pages the guest pinned: 0 for 4 KiB, 9 for 2 MiB. Ranges still count 4 KiB pages.
    public var pageOrder: UInt8
    /// Balloon size once this batch is counted.
    public var balloonPagesAfter: UInt64
    public var ranges: PFNRangeList

    public init(hostSessionID: UInt64, batchID: UInt64, pageOrder: UInt8, balloonPagesAfter: UInt64,
                ranges: PFNRangeList) {
        self.hostSessionID = hostSessionID
        self.batchID = batchID
        self.pageOrder = pageOrder
        self.balloonPagesAfter = balloonPagesAfter
        self.ranges = ranges
    }
}

/// Host → guest: the host is done with this batch (reclaimed what it wanted); the guest may release it later.
public struct ReclaimAck: Hashable, Sendable {
    public var hostSessionID: UInt64
    public var batchID: UInt64
    /// Pages whose host memory the host actually freed (informational).
    public var reclaimedPages: UInt64

    public init(hostSessionID: UInt64, batchID: UInt64, reclaimedPages: UInt64) {
        self.hostSessionID = hostSessionID
        self.batchID = batchID
        self.reclaimedPages = reclaimedPages
    }
}

/// Why a host declined a batch. Unknown values are kept: a newer host may have newer reasons.
public struct DeclineReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// A range lies outside the guest's RAM map (the batch is refused whole; nothing is reclaimed).
    public static let outsideGuestRAM = DeclineReason(rawValue: 1)
    /// The balloon is already at or past the target; the host does not want these pages.
    public static let notNeeded = DeclineReason(rawValue: 2)
    /// The host could not reclaim (the syscall failed); the pages hold their contents.
    public static let reclaimFailed = DeclineReason(rawValue: 3)
    /// The guest sends faster than the host allows.
    public static let rateLimited = DeclineReason(rawValue: 4)

    public var description: String {
        switch self {
        case .outsideGuestRAM: "outside guest RAM"
        case .notNeeded: "not needed"
        case .reclaimFailed: "reclaim failed"
        case .rateLimited: "rate limited"
        default: "reason \(rawValue)"
        }
    }
}

/// Host → guest: the host did not and will not reclaim behind this batch; the guest may release it.
public struct ReclaimDeclined: Hashable, Sendable {
    public var hostSessionID: UInt64
    public var batchID: UInt64
    public var reason: DeclineReason

    public init(hostSessionID: UInt64, batchID: UInt64, reason: DeclineReason) {
        self.hostSessionID = hostSessionID
        self.batchID = batchID
        self.reason = reason
    }
}

/// Why a guest released pages. Unknown values are kept.
public struct DeflateReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The host lowered the target.
    public static let hostAsked = DeflateReason(rawValue: 1)
    /// The guest's pressure guard fired (PSI stall or free memory under the floor): a fact, not an error.
    public static let guestPressure = DeflateReason(rawValue: 2)
    /// The agent is stopping cleanly.
    public static let shutdown = DeflateReason(rawValue: 3)
    /// The host declined the batch, so its pages went back at once.
    public static let declined = DeflateReason(rawValue: 4)

    public var description: String {
        switch self {
        case .hostAsked: "host asked"
        case .guestPressure: "guest pressure"
        case .shutdown: "shutdown"
        case .declined: "declined by host"
        default: "reason \(rawValue)"
        }
    }
}

/// Guest → host: these pages left the balloon; the guest uses them again.
public struct DeflateReport: Hashable, Sendable {
    public var reason: DeflateReason
    public var balloonPagesAfter: UInt64
    public var ranges: PFNRangeList

    public init(reason: DeflateReason, balloonPagesAfter: UInt64, ranges: PFNRangeList) {
        self.reason = reason
        self.balloonPagesAfter = balloonPagesAfter
        self.ranges = ranges
    }
}

/// The key of one figure in a stats sample. Unknown keys are kept and ignored, so a guest can report
/// figures its host does not know yet. Sizes are in 4 KiB pages; PSI averages in hundredths of a percent.
public struct StatKey: RawRepresentable, Hashable, Sendable, Comparable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static func < (a: StatKey, b: StatKey) -> Bool { a.rawValue < b.rawValue }

    // /proc/meminfo, in pages
    public static let memTotal = StatKey(rawValue: 1)
    public static let memFree = StatKey(rawValue: 2)
    public static let memAvailable = StatKey(rawValue: 3)
    public static let buffers = StatKey(rawValue: 4)
    public static let cached = StatKey(rawValue: 5)
    public static let swapTotal = StatKey(rawValue: 6)
    public static let swapFree = StatKey(rawValue: 7)
    public static let anonPages = StatKey(rawValue: 8)
    public static let shmem = StatKey(rawValue: 9)
    public static let mlocked = StatKey(rawValue: 10)
    public static let activeAnon = StatKey(rawValue: 11)
    public static let inactiveAnon = StatKey(rawValue: 12)
    public static let activeFile = StatKey(rawValue: 13)
    public static let inactiveFile = StatKey(rawValue: 14)
    // The balloon, in pages
    public static let balloonPages = StatKey(rawValue: 32)
    /// The free memory the guest agent keeps (its floor and one batch): the balloon stops growing when
    /// MemAvailable reaches it, so the host knows how far the balloon can still go.
    public static let keptFreePages = StatKey(rawValue: 33)
    // /proc/vmstat counters, cumulative since guest boot
    public static let pgfault = StatKey(rawValue: 64)
    public static let pgmajfault = StatKey(rawValue: 65)
    public static let pswpin = StatKey(rawValue: 66)
    public static let pswpout = StatKey(rawValue: 67)
    public static let workingsetRefaultAnon = StatKey(rawValue: 68)
    public static let workingsetRefaultFile = StatKey(rawValue: 69)
    public static let pgscanKswapd = StatKey(rawValue: 70)
    public static let pgscanDirect = StatKey(rawValue: 71)
    // /proc/pressure/memory
    public static let psiSomeAvg10 = StatKey(rawValue: 96)
    public static let psiFullAvg10 = StatKey(rawValue: 97)
    public static let psiSomeTotalMicros = StatKey(rawValue: 98)
    public static let psiFullTotalMicros = StatKey(rawValue: 99)
    // Working set, in pages, and where the figure came from (a `WorkingSetSource`)
    public static let workingSetPages = StatKey(rawValue: 128)
    public static let workingSetSource = StatKey(rawValue: 129)
}

/// Where a guest's working-set figure came from (the value of `StatKey.workingSetSource`).
public enum WorkingSetSource: UInt64, Sendable {
    /// MGLRU page ages: pages younger than the sampling period.
    case mglruAges = 1
    /// An estimate from the active LRU lists and refault rates: coarser, marked as such.
    case lruListEstimate = 2
}

/// One figure of a stats sample.
public struct StatEntry: Hashable, Sendable {
    public var key: StatKey
    public var value: UInt64
    public init(_ key: StatKey, _ value: UInt64) {
        self.key = key
        self.value = value
    }
}

/// Guest → host: what the guest saw over the last sampling period.
public struct StatsSample: Hashable, Sendable {
    /// Increases by one per sample in a guest session; a gap says samples were lost.
    public var sequence: UInt64
    /// Guest monotonic clock at the sample, in milliseconds.
    public var guestMillis: UInt64
    /// The period the sample covers, in milliseconds.
    public var periodMillis: UInt32
    /// Figures, each key at most once.
    public var entries: [StatEntry]

    public init(sequence: UInt64, guestMillis: UInt64, periodMillis: UInt32, entries: [StatEntry]) {
        self.sequence = sequence
        self.guestMillis = guestMillis
        self.periodMillis = periodMillis
        self.entries = entries
    }

    /// The value of `key`, if the sample has it.
    public subscript(key: StatKey) -> UInt64? { entries.first { $0.key == key }?.value }
}

/// What went wrong, as an error message to the peer. Unknown codes are kept.
public struct ErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// No protocol version in common; a goodbye and a close follow.
    public static let incompatibleVersion = ErrorCode(rawValue: 1)
    /// A frame failed to decode (its request id is echoed when known).
    public static let malformedFrame = ErrorCode(rawValue: 2)
    /// A report named pages outside the guest's RAM.
    public static let rangeOutsideGuestRAM = ErrorCode(rawValue: 3)
    /// The peer sends faster than allowed.
    public static let rateLimited = ErrorCode(rawValue: 4)
    /// A message arrived before the handshake completed, or is not valid in this state.
    public static let unexpectedMessage = ErrorCode(rawValue: 5)
    /// The sender lacks what it needs (a privilege, a device) to do what was asked.
    public static let notPermitted = ErrorCode(rawValue: 6)
    /// Something failed inside the sender.
    public static let internalError = ErrorCode(rawValue: 7)

    public var description: String {
        switch self {
        case .incompatibleVersion: "incompatible version"
        case .malformedFrame: "malformed frame"
        case .rangeOutsideGuestRAM: "range outside guest RAM"
        case .rateLimited: "rate limited"
        case .unexpectedMessage: "unexpected message"
        case .notPermitted: "not permitted"
        case .internalError: "internal error"
        default: "error \(rawValue)"
        }
    }
}

/// Either direction: something the peer did was refused. The frame's request id names the request
/// it answers (0 when none).
public struct ErrorReport: Hashable, Sendable {
    public var code: ErrorCode
    public var message: String
    public init(code: ErrorCode, message: String) {
        self.code = code
        self.message = message
    }
}

/// Either direction: are you there? Answered by a pong with the same nonce.
public struct Ping: Hashable, Sendable {
    public var nonce: UInt64
    public init(nonce: UInt64) { self.nonce = nonce }
}

/// The answer to a ping.
public struct Pong: Hashable, Sendable {
    public var nonce: UInt64
    public init(nonce: UInt64) { self.nonce = nonce }
}

/// Why a peer closes the session. Unknown values are kept.
public struct GoodbyeReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let shutdown = GoodbyeReason(rawValue: 1)
    public static let incompatibleVersion = GoodbyeReason(rawValue: 2)
    public static let protocolError = GoodbyeReason(rawValue: 3)
    public static let restarting = GoodbyeReason(rawValue: 4)

    public var description: String {
        switch self {
        case .shutdown: "shutdown"
        case .incompatibleVersion: "incompatible version"
        case .protocolError: "protocol error"
        case .restarting: "restarting"
        default: "reason \(rawValue)"
        }
    }
}

/// Either direction: the last message of a session.
public struct Goodbye: Hashable, Sendable {
    public var reason: GoodbyeReason
    public var message: String
    public init(reason: GoodbyeReason, message: String) {
        self.reason = reason
        self.message = message
    }
}
