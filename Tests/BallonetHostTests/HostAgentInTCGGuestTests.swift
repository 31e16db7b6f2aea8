import BallonetHost
import BallonetLinux
import BallonetTestSupport
import Foundation
import Testing

/// ballonet-host (the built binary) attached to a real 512 MiB TCG guest running ballonet-guest: the host
/// memory behind the balloon really comes back, measured from /proc, and the guest gets it back on demand.
@Suite(.serialized) struct HostAgentInTCGGuestTests {
    @Test(.enabled(if: HostTestImage.canRun, "needs root and qemu-system-x86_64 (make check installs it)"))
    func aBalloonOf256MiBGivesTheHostBackAtLeast230MiBAndDeflatingLetsTheGuestUse300MiB() throws {
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "host-reclaim")
        let guest = try TCGGuest.boot(name: "reclaim", memoryMiB: 512, kernel: image.kernel, initramfs: image.initramfs,
                                      appendArguments: "ballonet.agent=1", workDirectory: work)
        defer { guest.stop() }
        _ = try guest.waitUntilReady(timeout: 180)

        // The guest's workload touches (nearly) all its memory and frees it again, so the host backs it all.
        try guest.touchAndFree(megabytes: 400, timeout: 240)
        let before = try guest.residentGuestRAMBytes
        #expect(before >= 400 << 20, "the host should back the touched memory: \(before >> 20) MiB resident")

        let host = try HostAgentProcess(directory: work, vms: [("reclaim", guest.qmpSocketPath, guest.portSocketPath)])
        defer { host.stop() }
        do {
            try host.wait(for: "reclaim", timeout: 90, "session with the guest agent") { $0.state == "established" }
            try host.setTarget("reclaim", mib: 256)
            let inflated = try host.wait(for: "reclaim", timeout: 240, "a balloon of 256 MiB") { $0.balloonBytes >= 255 << 20 }
            let after = try guest.residentGuestRAMBytes
            let freed = before > after ? before - after : 0
            print("resident guest RAM: \(before >> 20) MiB before, \(after >> 20) MiB with a 256 MiB balloon: \(freed >> 20) MiB back to the host; "
                  + "the agent counted \(inflated.reclaimedBytes >> 20) MiB reclaimed, memfd holds \((inflated.backingFileBytes ?? 0) >> 20) MiB")
            #expect(freed >= 230 << 20, "only \(freed >> 20) MiB of host memory came back")
            #expect(inflated.reclaimMethod == "punch")
            #expect(inflated.reclaimedBytes >= 230 << 20)
            #expect(inflated.refusedMessages == 0)
            // The agent's own figure agrees with ours (it reads the same smaps, a second later at most).
            let reported = try host.wait(for: "reclaim", timeout: 10, "resident figure updated") { $0.residentBytes > 0 && $0.residentBytes <= after + (8 << 20) }
            #expect(reported.residentBytes + (16 << 20) >= after)

            try host.setTarget("reclaim", mib: 512)
            try host.wait(for: "reclaim", timeout: 120, "an empty balloon") { $0.balloonBytes == 0 }
            // 300 MiB allocated, filled with a pattern and read back twice: the guest uses the memory again.
            let use = try guest.run("ballonet-workload pattern 300 2 77 | tail -n 3", timeout: 300)
            #expect(use.status == 0, "the guest could not allocate and use 300 MiB after deflating: \(use.output)")
            #expect(!use.output.contains("MISMATCH"))
        } catch {
            let agentLog = (try? guest.run("tail -n 30 /run/ballonet-guest.log; free -m", timeout: 30).output) ?? "?"
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(3000)))\nagent log:\n\(agentLog)")
        }
        host.stop()
        #expect(host.log.contains("ballonet-host stopped"), "SIGTERM should stop the agent gracefully")
    }
}
