import BallonetHost
import BallonetLinux
import BallonetTestSupport
import Foundation
import Testing

/// Reclaim for anonymous guest RAM (`memory-backend-ram`, which KSM can merge but nobody can punch): the host
/// pages the balloon's memory out with process_madvise(MADV_PAGEOUT). That frees host memory only into swap,
/// so the test makes a swap file of its own and removes it afterwards.
@Suite(.serialized) struct PageoutReclaimTests {
    @Test(.enabled(if: HostTestImage.canRun && TemporarySwapFile.canMake, "needs root, qemu-system-x86_64 and mkswap (make check installs them)"))
    func aBalloonInAnonymousRAMIsPagedOutToHostSwap() throws {
        // 1 GiB of swap, made here and removed at the end.
        let swap = try TemporarySwapFile(megabytes: 1024, name: "ballonet-test-pageout")
        defer { swap.remove() }

        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "pageout")
        let guest = try TCGGuest.boot(name: "pageout", memoryMiB: 512, kernel: image.kernel, initramfs: image.initramfs,
                                      appendArguments: "ballonet.agent=1", ramBacking: .anonymous, workDirectory: work)
        defer { guest.stop() }
        _ = try guest.waitUntilReady(timeout: 180)
        try guest.touchAndFree(megabytes: 350, timeout: 240)

        let host = try HostAgentProcess(directory: work, vms: [("pageout", guest.qmpSocketPath, guest.portSocketPath)])
        defer { host.stop() }
        do {
            let before = try host.wait(for: "pageout", timeout: 90, "session") { $0.state == "established" && $0.residentBytes > 0 }
            #expect(before.reclaimMethod == "pageout")
            #expect(before.backingFileBytes == nil, "anonymous RAM has no file to punch")
            try host.setTarget("pageout", mib: 256)
            try host.wait(for: "pageout", timeout: 240, "a balloon of 256 MiB") { $0.balloonBytes >= 255 << 20 }
            let after = try host.wait(for: "pageout", timeout: 20, "resident memory down") { before.residentBytes > $0.residentBytes + (200 << 20) }
            print("anonymous RAM: resident \(before.residentBytes >> 20) MiB before, \(after.residentBytes >> 20) MiB with a 256 MiB balloon, "
                  + "\(after.swappedBytes >> 20) MiB in host swap; \(after.reclaimedBytes >> 20) MiB paged out")
            #expect(after.refusedMessages == 0)
            // The guest keeps running and gets its memory back (paged in from host swap) when it needs it.
            try host.setTarget("pageout", mib: 512)
            try host.wait(for: "pageout", timeout: 120, "an empty balloon") { $0.balloonBytes == 0 }
            let use = try guest.run("ballonet-workload pattern 200 2 9 | tail -n 2", timeout: 300)
            #expect(use.status == 0 && !use.output.contains("MISMATCH"), "\(use.output)")
        } catch {
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(3000)))")
        }
    }
}
