import BallonetHost
import BallonetLinux
import BallonetTestSupport
import Foundation
import Testing

/// The guest never loses data (DESIGN.md's safety invariants), checked the way a user would: a guest
/// keeps a checksummed 100 MiB pattern and re-verifies it every second while the balloon inflates and
/// deflates, the guest compacts its memory, and both agents are killed with SIGKILL in the middle of an
/// inflate and restarted. Zero mismatches, and the host's account of the balloon ends where the guest's
/// balloon file really is.
@Suite(.serialized) struct DataIntegrityTests {
    @Test(.enabled(if: HostTestImage.canRun, "needs root and qemu-system-x86_64 (make check installs it)"))
    func aChecksummedPatternSurvivesCyclesCompactionAndBothAgentsKilledMidInflate() throws {
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "integrity")
        let guest = try TCGGuest.boot(name: "integrity", memoryMiB: 512, kernel: image.kernel, initramfs: image.initramfs,
                                      appendArguments: "ballonet.agent=1", workDirectory: work)
        defer { guest.stop() }
        _ = try guest.waitUntilReady(timeout: 180)
        _ = try guest.run("ballonet-workload pattern 100 1800 4242 > /tmp/pattern.log 2>&1 & echo $! > /tmp/pattern.pid; "
                          + "until grep -q filled /tmp/pattern.log; do sleep 0.2; done", timeout: 120)

        var host = try HostAgentProcess(directory: work, vms: [("integrity", guest.qmpSocketPath, guest.portSocketPath)])
        defer { host.stop() }
        func balloonMiB() -> UInt64 { ((try? host.account("integrity").balloonBytes) ?? 0) >> 20 }
        do {
            try host.wait(for: "integrity", timeout: 90, "session") { $0.state == "established" }
            for cycle in 1...2 {
                // 192 MiB: what the guest can give with 100 MiB of pattern and its floor kept.
                try host.setTarget("integrity", mib: 320)
                try host.wait(for: "integrity", timeout: 120, "inflate, cycle \(cycle)") { $0.balloonBytes >= 185 << 20 }
                try host.setTarget("integrity", mib: 512)
                try host.wait(for: "integrity", timeout: 120, "deflate, cycle \(cycle)") { $0.balloonBytes == 0 }
            }
            try host.setTarget("integrity", mib: 320)
            try host.wait(for: "integrity", timeout: 120, "inflate before compaction") { $0.balloonBytes >= 185 << 20 }
            #expect(try guest.run("echo 1 > /proc/sys/vm/compact_memory", timeout: 120).status == 0)

            // kill -9 of the guest agent in the middle of an inflate, then a new agent re-adopts the balloon.
            try host.setTarget("integrity", mib: 260)
            try host.wait(for: "integrity", timeout: 60, "inflate under way") { $0.balloonBytes >= 200 << 20 }
            _ = try guest.run("kill -9 $(pidof ballonet-guest)", timeout: 30)
            _ = try guest.run("setsid ballonet-guest </dev/null >>/run/ballonet-guest.log 2>&1 &", timeout: 30)
            try host.wait(for: "integrity", timeout: 120, "a new guest session") { $0.sessions >= 2 && $0.state == "established" }
            try host.wait(for: "integrity", timeout: 120, "balloon back at target after the guest agent restart") { $0.balloonBytes >= 200 << 20 }

            // kill -9 of the host agent in the middle of an inflate, then a new host agent takes over.
            try host.setTarget("integrity", mib: 512)
            try host.wait(for: "integrity", timeout: 120, "deflate") { $0.balloonBytes == 0 }
            try host.setTarget("integrity", mib: 300)
            try host.wait(for: "integrity", timeout: 60, "inflate under way") { $0.balloonBytes >= 100 << 20 }
            host.kill9()
            host = try HostAgentProcess(directory: work, vms: [("integrity", guest.qmpSocketPath, guest.portSocketPath)])
            try host.wait(for: "integrity", timeout: 120, "session with the new host agent") { $0.state == "established" }
            try host.setTarget("integrity", mib: 320)
            // The guest reported what it still holds; the new host drives it to the new target.
            let settled = try host.wait(for: "integrity", timeout: 120, "balloon at 192 MiB") { $0.balloonBytes >= 185 << 20 }
            Thread.sleep(forTimeInterval: 3)

            // The host's account against the guest's true balloon: what its balloon file holds.
            let file = try guest.run("du -k -s /run/ballonet/balloon | cut -f1", timeout: 30).output
            let fileMiB = (UInt64(file.split(whereSeparator: \.isNewline).last.map(String.init)?.trimmingCharacters(in: .whitespaces) ?? "") ?? 0) >> 10
            let accounted = balloonMiB()
            print("balloon: host account \(accounted) MiB, guest balloon file \(fileMiB) MiB; settled at \(settled.balloonBytes >> 20) MiB")
            #expect(accounted + 4 >= fileMiB && fileMiB + 4 >= accounted, "host says \(accounted) MiB, the guest's balloon file holds \(fileMiB) MiB")
        } catch {
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(3000)))")
        }
        let pattern = try guest.run("kill $(cat /tmp/pattern.pid) && grep -c intact /tmp/pattern.log; grep -m3 MISMATCH /tmp/pattern.log; true", timeout: 60)
        print("pattern: \(pattern.output.split(whereSeparator: \.isNewline).first ?? "?") verifications of 100 MiB")
        #expect(!pattern.output.contains("MISMATCH"), "guest data lost: \(pattern.output)")
        // `kill` succeeded, so the workload was alive at the end; it verified its 100 MiB every second.
        #expect(pattern.status == 0 && (Int(pattern.output.split(whereSeparator: \.isNewline).first ?? "") ?? 0) >= 5,
                "the pattern workload should have run (and verified) throughout: \(pattern.output)")
    }
}
