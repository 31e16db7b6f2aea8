import Foundation
import Testing
import BallonetLinux
import BallonetWire
import BallonetGuest
import BallonetTestSupport

/// The real `ballonet-guest` binary on this machine (a Linux guest as far as it knows), against a host
/// peer written in the test: real mlock, real pagemap, a real tmpfs balloon file.
@Suite(.serialized) struct GuestAgentProcessTests {
    /// A scratch directory for one test: the agent's socket, its balloon tmpfs (unmounted afterwards), its log.
    final class Scratch {
        let directory: String
        var balloonDirectory: String { directory + "/balloon" }
        var socketPath: String { directory + "/host.sock" }
        var balloonFile: String { balloonDirectory + "/balloon" }

        init() throws {
            directory = "/tmp/ballonet-agent-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try FileSystem.makeDirectory(directory)
        }

        deinit {
            try? FileSystem.unmount(balloonDirectory, detach: true)
            try? FileManager.default.removeItem(atPath: directory)
        }

        func startAgent(_ extra: [String] = [], log: String = "agent.log") throws -> GuestAgentProcess {
            try GuestAgentProcess(arguments: ["--socket", socketPath, "--balloon-dir", balloonDirectory, "--config", "/dev/null",
                                              "--log-level", "debug"] + extra,
                                  logPath: directory + "/" + log)
        }

        func allocatedBytes() throws -> Int64 {
            try FileDescriptor.open(balloonFile, .readOnly).status().allocatedBytes
        }
    }

    static let mib: UInt64 = 256  // pages

    /// The PFNs the agent's mappings of its balloon file hold now, read from its pagemap.
    static func balloonFrames(of pid: Int32, file: String) throws -> PFNRangeList {
        let mappings = try ProcFiles.maps(of: .id(pid)).mappings.filter { $0.pathname == file }
        let pagemap = try ProcFiles.openPagemap(of: .id(pid))
        var pfns: [UInt64] = []
        for mapping in mappings {
            let entries = try Pagemap.entries(in: pagemap, virtualAddress: mapping.start, pageCount: Int((mapping.end - mapping.start) / 4096))
            pfns += entries.compactMap(\.frameNumber)
        }
        return try PFNRangeList.coalescing(pfns: pfns)
    }

    /// Acks every inflate report until the balloon reports `pages`; returns the reports.
    static func inflate(_ connection: PeerConnection, host: TestHostPeer, to pages: UInt64, ack: Bool = true) throws -> [InflateReport] {
        try connection.send(.setTarget(SetTarget(balloonPages: pages)))
        var reports: [InflateReport] = []
        while reports.last?.balloonPagesAfter != pages {
            let envelope = try connection.next { if case .inflateReport = $0 { true } else { false } }
            guard case .inflateReport(let report) = envelope.message else { continue }
            #expect(report.hostSessionID == host.sessionID)
            reports.append(report)
            if ack {
                try connection.send(.reclaimAck(ReclaimAck(hostSessionID: host.sessionID, batchID: report.batchID, reclaimedPages: 0)))
            }
        }
        return reports
    }

    @Test func inflateReportsWhatPagemapSaysAndDeflateGivesItBack() throws {
        let scratch = try Scratch()
        let host = try TestHostPeer(path: scratch.socketPath)
        let agent = try scratch.startAgent()
        let hello = try host.handshake()
        #expect(hello.role == .guest && hello.balloonPages == 0)
        let connection = try #require(host.connection)
        let lockedBefore = try ProcFiles.status(of: .id(agent.pid)).vmLck

        let reports = try Self.inflate(connection, host: host, to: 256 * Self.mib)
        // VmLck and the balloon file grew by 256 MiB …
        #expect(try ProcFiles.status(of: .id(agent.pid)).vmLck - lockedBefore == 256 << 20, "log:\n\(agent.log)")
        #expect(try scratch.allocatedBytes() == 256 << 20)
        // … and the reported ranges are exactly the frames the agent's pagemap shows for its balloon.
        let reported = try PFNRangeList.coalescing(ranges: reports.flatMap(\.ranges.ranges))
        #expect(reported.pageCount == 256 * Self.mib)
        #expect(try Self.balloonFrames(of: agent.pid, file: scratch.balloonFile) == reported)

        // Deflate: back to zero, every page reported back, nothing locked, nothing left in the file.
        try connection.send(.setTarget(SetTarget(balloonPages: 0)))
        var returned: [PFNRange] = []
        while true {
            let envelope = try connection.next { if case .deflateReport = $0 { true } else { false } }
            guard case .deflateReport(let report) = envelope.message else { continue }
            #expect(report.reason == .hostAsked)
            returned += report.ranges.ranges
            if report.balloonPagesAfter == 0 { break }
        }
        #expect(try PFNRangeList.coalescing(ranges: returned) == reported)
        #expect(try ProcFiles.status(of: .id(agent.pid)).vmLck == lockedBefore)
        #expect(try scratch.allocatedBytes() == 0)
        agent.kill(.terminate)
        #expect(agent.waitForExit(timeout: .seconds(10)) == 0)
    }

    @Test func pagesAreNeverReleasedBeforeTheHostAnswers() throws {
        let scratch = try Scratch()
        let host = try TestHostPeer(path: scratch.socketPath)
        let agent = try scratch.startAgent()
        _ = try host.handshake()
        let connection = try #require(host.connection)
        // No acks: the agent keeps at most its in-flight limit of batches reported and waits.
        let unanswered = try Self.inflate(connection, host: host, to: 4 * 4 * Self.mib, ack: false)
        let locked = try ProcFiles.status(of: .id(agent.pid)).vmLck
        // The host lowers the target; with nothing answered, nothing may go back.
        try connection.send(.setTarget(SetTarget(balloonPages: 0)))
        let meanwhile = try connection.collect(for: .seconds(2))
        #expect(!meanwhile.contains { if case .deflateReport = $0.message { true } else { false } }, "released before an answer")
        #expect(try ProcFiles.status(of: .id(agent.pid)).vmLck == locked)
        #expect(try scratch.allocatedBytes() == 16 << 20)
        // A stale ack (another host session) changes nothing either.
        try connection.send(.reclaimAck(ReclaimAck(hostSessionID: host.sessionID &+ 1, batchID: unanswered[0].batchID, reclaimedPages: 0)))
        #expect(try connection.collect(for: .seconds(1)).allSatisfy { if case .deflateReport = $0.message { false } else { true } })
        // The answers arrive: now the pages go back.
        for report in unanswered {
            try connection.send(.reclaimAck(ReclaimAck(hostSessionID: host.sessionID, batchID: report.batchID, reclaimedPages: 0)))
        }
        var after: UInt64 = .max
        while after != 0 {
            let envelope = try connection.next { if case .deflateReport = $0 { true } else { false } }
            if case .deflateReport(let report) = envelope.message { after = report.balloonPagesAfter }
        }
        #expect(try scratch.allocatedBytes() == 0)
        _ = agent
    }

    @Test func aKilledAgentsBalloonIsAdoptedAndReportedByTheNextOne() throws {
        let scratch = try Scratch()
        var host: TestHostPeer? = try TestHostPeer(path: scratch.socketPath)
        let first = try scratch.startAgent()
        _ = try host!.handshake()
        let connection = try #require(host!.connection)
        let firstSession = host!.sessionID
        try connection.send(.setTarget(SetTarget(balloonPages: 256 * Self.mib)))
        // Mid-inflate: after a few batches, kill -9.
        var reported: UInt64 = 0
        while reported < 64 * Self.mib {
            let envelope = try connection.next { if case .inflateReport = $0 { true } else { false } }
            guard case .inflateReport(let report) = envelope.message else { continue }
            reported = report.balloonPagesAfter
            try connection.send(.reclaimAck(ReclaimAck(hostSessionID: firstSession, batchID: report.batchID, reclaimedPages: 0)))
        }
        first.kill(.kill)
        host = nil  // the old host goes too: its socket path is the new one's
        #expect(first.waitForExit(timeout: .seconds(10)) != nil)
        let held = try scratch.allocatedBytes()
        #expect(held >= Int64(reported * 4096), "the pages outlive the agent")

        // The next agent adopts them before it talks to the host, says so in its hello, and reports them.
        let host2 = try TestHostPeer(path: scratch.socketPath)
        let second = try scratch.startAgent(log: "agent2.log")
        let hello = try host2.handshake()
        #expect(hello.balloonPages * 4096 == UInt64(held), "log:\n\(second.log)")
        let connection2 = try #require(host2.connection)
        var readopted: [PFNRange] = []
        while UInt64(readopted.reduce(0) { $0 + $1.count }) < hello.balloonPages {
            let envelope = try connection2.next { if case .inflateReport = $0 { true } else { false } }
            if case .inflateReport(let report) = envelope.message {
                #expect(report.hostSessionID == host2.sessionID)
                readopted += report.ranges.ranges
            }
        }
        #expect(try PFNRangeList.coalescing(ranges: readopted) == Self.balloonFrames(of: second.pid, file: scratch.balloonFile))
        #expect(try ProcFiles.status(of: .id(second.pid)).vmLck >= UInt64(held))
        #expect(second.log.contains("re-adopted"))
    }

    @Test func sigtermTellsTheHostReleasesTheBalloonAndExits() throws {
        let scratch = try Scratch()
        let host = try TestHostPeer(path: scratch.socketPath)
        let agent = try scratch.startAgent()
        _ = try host.handshake()
        let connection = try #require(host.connection)
        _ = try Self.inflate(connection, host: host, to: 32 * Self.mib)
        agent.kill(.terminate)
        let deflate = try connection.next { if case .deflateReport = $0 { true } else { false } }
        guard case .deflateReport(let report) = deflate.message else { return }
        #expect(report.reason == .shutdown)
        #expect(report.balloonPagesAfter == 0 && report.ranges.pageCount == 32 * Self.mib)
        _ = try connection.next { if case .goodbye(let goodbye) = $0 { goodbye.reason == .shutdown } else { false } }
        #expect(agent.waitForExit(timeout: .seconds(10)) == 0)
        #expect(try scratch.allocatedBytes() == 0)
    }

    /// A package upgrade restarts the agent: with the handover marker naming its pid, SIGTERM leaves the
    /// balloon pinned in its file, and the next agent re-adopts it. A marker naming another pid is ignored.
    @Test func aHandoverKeepsTheBalloonForTheNextAgent() throws {
        let scratch = try Scratch()
        var host: TestHostPeer? = try TestHostPeer(path: scratch.socketPath)
        let first = try scratch.startAgent()
        _ = try host!.handshake()
        _ = try Self.inflate(try #require(host!.connection), host: host!, to: 32 * Self.mib)
        let marker = GuestDaemon.handoverMarker(balloonDirectory: scratch.balloonDirectory)
        try FileSystem.writeFile(marker, "\(first.pid)\n", creatingWithPermissions: 0o644)
        first.kill(.terminate)
        let goodbye = try host!.connection!.next { if case .goodbye = $0 { true } else { false } }
        if case .goodbye(let message) = goodbye.message { #expect(message.message.contains("handover")) }
        #expect(first.waitForExit(timeout: .seconds(10)) == 0)
        host = nil
        #expect(try scratch.allocatedBytes() >= Int64(32 * Self.mib * 4096), "the balloon stays in its file")
        #expect(!FileSystem.exists(marker), "the marker is used once")

        let host2 = try TestHostPeer(path: scratch.socketPath)
        let second = try scratch.startAgent(log: "agent2.log")
        #expect(try host2.handshake().balloonPages == 32 * Self.mib, "re-adopted: \(second.log)")
        // The host answers the re-adopted pages' reports, so a real stop may give them back.
        let connection2 = try #require(host2.connection)
        var answered: UInt64 = 0
        while answered < 32 * Self.mib {
            let envelope = try connection2.next { if case .inflateReport = $0 { true } else { false } }
            guard case .inflateReport(let report) = envelope.message else { continue }
            answered += report.ranges.pageCount
            try connection2.send(.reclaimAck(ReclaimAck(hostSessionID: host2.sessionID, batchID: report.batchID, reclaimedPages: 0)))
        }
        // A stale marker (another pid) does not stop a real SIGTERM from giving the balloon back.
        try FileSystem.writeFile(marker, "\(first.pid)\n", creatingWithPermissions: 0o644)
        second.kill(.terminate)
        #expect(second.waitForExit(timeout: .seconds(20)) == 0)
        #expect(try scratch.allocatedBytes() == 0, "\(second.log)")
        try? FileSystem.removeFile(marker)
    }

    @Test func malformedFramesResetTheSessionAndTheAgentKeepsRunning() throws {
        let scratch = try Scratch()
        let host = try TestHostPeer(path: scratch.socketPath)
        let agent = try scratch.startAgent()
        let firstHello = try host.handshake()
        let connection = try #require(host.connection)
        var corrupt = try FrameEncoder.encode(.setTarget(SetTarget(balloonPages: 100)))
        corrupt[WireLimits.headerLength] ^= 0xFF
        try connection.sendRaw(Array("junk".utf8) + corrupt)
        let error = try connection.next { if case .error = $0 { true } else { false } }
        guard case .error(let report) = error.message else { return }
        #expect(report.code == .malformedFrame)
        _ = try connection.next { if case .goodbye(let goodbye) = $0 { goodbye.reason == .protocolError } else { false } }
        // A new session: the agent connects again with a new hello, and it is still running.
        let again = try host.handshake()
        #expect(again.sessionID != firstHello.sessionID)
        #expect(agent.process.isRunning)
        #expect(agent.log.contains("bad bytes from the host"))
    }
}
