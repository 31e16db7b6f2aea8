import BallonetHost
import BallonetLinux
import BallonetTestSupport
import BallonetWire
import Foundation
import Testing

/// Safety invariant 6 against the real host agent: a guest that reports pages outside its RAM, pages already
/// in its balloon, malformed frames, or floods its port is refused and logged, never acted on, and the
/// agent and its other VMs keep working. The guests here are the test itself, speaking on the ports; each VM
/// is a real QEMU kept paused (it never runs a guest, so punching its memory harms nobody), which gives
/// the agent a real RAM map, a real QEMU process and real memory to reclaim.
@Suite(.serialized) struct HostileGuestTests {
    static let memoryMiB = 256
    static let ramPages = UInt64(memoryMiB) * 256

    /// Accepts the host agent's connection on a port and completes the handshake as a guest; returns the
    /// connection and the host's session id.
    func handshake(_ port: TestHostPeer) throws -> (PeerConnection, UInt64) {
        let connection = try port.accept(timeout: .seconds(60))
        try connection.send(.hello(Hello(role: .guest, sessionID: UInt64.random(in: 1...UInt64.max), capabilities: [])))
        let envelope = try connection.next(timeout: .seconds(30)) { if case .hello = $0 { true } else { false } }
        guard case .hello(let hello) = envelope.message else { throw TestTimeout(description: "no host hello") }
        // The host may have said hello twice (once on connecting, once answering): take the last.
        _ = try? connection.collect(for: .milliseconds(300))
        return (connection, hello.sessionID)
    }

    func report(_ connection: PeerConnection, session: UInt64, batch: UInt64, _ ranges: [PFNRange]) throws -> Message {
        try connection.send(.inflateReport(InflateReport(hostSessionID: session, batchID: batch, pageOrder: 0, balloonPagesAfter: 0,
                                                         ranges: try PFNRangeList(validating: ranges))), requestID: UInt32(batch))
        return try connection.next(timeout: .seconds(10)) {
            switch $0 {
            case .reclaimAck(let ack): ack.batchID == batch
            case .reclaimDeclined(let declined): declined.batchID == batch
            default: false
            }
        }.message
    }

    func isAck(_ message: Message) -> Bool { if case .reclaimAck = message { true } else { false } }
    func declineReason(_ message: Message) -> DeclineReason? {
        if case .reclaimDeclined(let declined) = message { declined.reason } else { nil }
    }

    @Test(.enabled(if: HostTestImage.canRun, "needs root and qemu-system-x86_64 (make check installs it)"))
    func aHostileGuestIsRefusedAndLoggedWhileAnotherVMKeepsWorking() throws {
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "hostile")
        let evilVM = try TCGGuest.boot(name: "evil", memoryMiB: Self.memoryMiB, kernel: image.kernel, initramfs: image.initramfs,
                                       startPaused: true, workDirectory: work.appendingPathComponent("evil"))
        defer { evilVM.stop() }
        let goodVM = try TCGGuest.boot(name: "good", memoryMiB: Self.memoryMiB, kernel: image.kernel, initramfs: image.initramfs,
                                       startPaused: true, workDirectory: work.appendingPathComponent("good"))
        defer { goodVM.stop() }
        // The test plays both guests: it listens where the host agent expects each VM's port.
        let evilPort = try TestHostPeer(path: work.appendingPathComponent("evil-port.sock").path)
        let goodPort = try TestHostPeer(path: work.appendingPathComponent("good-port.sock").path)
        let host = try HostAgentProcess(directory: work, vms: [("evil", evilVM.qmpSocketPath, evilPort.path),
                                                              ("good", goodVM.qmpSocketPath, goodPort.path)])
        defer { host.stop() }
        do {
            let (evil, evilSession) = try handshake(evilPort)
            let (good, goodSession) = try handshake(goodPort)
            #expect(isAck(try report(good, session: goodSession, batch: 1, [PFNRange(start: 0x1000, count: 256)])))

            // Pages past the end of its 256 MiB of RAM, and the firmware's ROM below 1 MiB: refused whole.
            #expect(declineReason(try report(evil, session: evilSession, batch: 1, [PFNRange(start: 0x100, count: 4),
                                                                                     PFNRange(start: Self.ramPages, count: 16)])) == .outsideGuestRAM)
            #expect(declineReason(try report(evil, session: evilSession, batch: 2, [PFNRange(start: 0xc0, count: 1)])) == .outsideGuestRAM)
            // A page the guest already gave: the second report overlaps the first and is refused.
            #expect(isAck(try report(evil, session: evilSession, batch: 3, [PFNRange(start: 0x2000, count: 16)])))
            #expect(declineReason(try report(evil, session: evilSession, batch: 4, [PFNRange(start: 0x2008, count: 16)])) == .outsideGuestRAM)
            // A stale host session id: never reclaimed.
            #expect(declineReason(try report(evil, session: evilSession &+ 1, batch: 5, [PFNRange(start: 0x3000, count: 16)])) == .notNeeded)
            let errors = try evil.collect(for: .milliseconds(500)).compactMap { envelope -> ErrorCode? in
                if case .error(let report) = envelope.message { report.code } else { nil }
            }
            #expect(errors.filter { $0 == .rangeOutsideGuestRAM }.count == 2, "errors: \(errors)")

            // Garbage on the port: the decoder resynchronises; the host says the frame was malformed.
            try evil.sendRaw(FrameHeader.magic + [UInt8](repeating: 0xEE, count: 100))
            try evil.sendRaw(try FrameEncoder.encode(.ping(Ping(nonce: 7))))
            let malformed = try evil.next(timeout: .seconds(10)) { if case .error(let report) = $0 { report.code == .malformedFrame } else { false } }
            #expect(malformed.requestID == 0)

            // A flood: thousands of frames at once. The host resets the session instead of drowning in it.
            let ping = try FrameEncoder.encode(.ping(Ping(nonce: 1)))
            var flood: [UInt8] = []
            for _ in 0..<(Int(GuestInputLimits.frameBurst) * 2) { flood += ping }
            try? evil.sendRaw(flood)
            // It says goodbye and closes; with our flood still unread on its side, the close may come as a
            // reset before the goodbye can be read. Either way the session is over.
            do {
                let goodbye = try evil.next(timeout: .seconds(20)) { if case .goodbye = $0 { true } else { false } }
                if case .goodbye(let farewell) = goodbye.message { #expect(farewell.reason == .protocolError) }
            } catch let error as SystemCallError where error.errno == .ECONNRESET {
            } catch where evil.closed {
            }

            // The other VM never noticed.
            #expect(isAck(try report(good, session: goodSession, batch: 2, [PFNRange(start: 0x4000, count: 512)])))
            let status = try host.status()
            let evilAccount = try #require(status.vms.first { $0.name == "evil" })
            let goodAccount = try #require(status.vms.first { $0.name == "good" })
            #expect(evilAccount.refusedMessages >= 5, "evil: \(evilAccount)")
            #expect(goodAccount.refusedMessages == 0, "good: \(goodAccount)")
            #expect(goodAccount.batchesReclaimed == 2)
            #expect(evilAccount.batchesReclaimed == 1, "only the one good batch of the hostile guest was acted on")
            #expect(host.isRunning)
            #expect(host.log.contains("refused guest message: batch 1: pages"))
            #expect(host.log.contains("session reset: the guest sent frames faster than"))
        } catch {
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(4000)))")
        }
    }
}
