import BallonetHost
import BallonetLinux
import BallonetTestSupport
import Foundation
import Testing

/// Hypervisor swapping and pausing on real TCG guests with a real swap file: a guest without
/// ballonet-guest swapped through its memory cgroup, a guest whose balloon stops at its floor swapped by
/// pageout after the balloon, and the low state's pause with its resume on recovery and on exit.
@Suite(.serialized) struct HypervisorSwapInTCGGuestTests {
    static var canRun: Bool { HostTestImage.canRun && TemporarySwapFile.canMake }

    func qmpStatus(_ guest: TCGGuest) throws -> String {
        let answer = try guest.qmp(#"{"execute":"query-status"}"#)
        guard let range = answer.range(of: #""status": ""#) ?? answer.range(of: #""status":""#) else { return answer }
        return String(answer[range.upperBound...].prefix { $0 != "\"" })
    }

    @Test(.enabled(if: canRun && MemoryCgroup.hierarchy() != nil, "needs root, QEMU, mkswap and a memory cgroup controller"))
    func aGuestWithoutTheAgentIsSwappedToItsTargetThroughItsCgroupAndPagesBackIn() throws {
        let swap = try TemporarySwapFile(megabytes: 1024, name: "ballonet-test-swap-cgroup")
        defer { swap.remove() }
        let hierarchy = try #require(MemoryCgroup.hierarchy())
        let group = try MemoryCgroup.create("ballonet-tests/swap-\(getpid())", hierarchy: hierarchy)
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "hvswap")
        let guest = try TCGGuest.boot(name: "noagent", memoryMiB: 512, kernel: image.kernel, initramfs: image.initramfs,
                                      memoryCgroup: group.path, workDirectory: work)
        defer {
            guest.stop()
            try? group.remove()
            try? FileSystem.removeDirectory(hierarchy.root + "/ballonet-tests")
        }
        _ = try guest.waitUntilReady(timeout: 180)
        let pid = try guest.startKeep(mib: 300, seed: 11)

        // A budget well under what the guest holds: the host is in its low state at once.
        let vm = "[[vm]]\nname = \"noagent\"\nqmp_socket = \"\(guest.qmpSocketPath)\"\nport_socket = \"\(guest.portSocketPath)\"\nmin_mib = 128\n"
        var host = try HostAgentProcess(directory: work, vms: [], configText: "[host]\nbudget_mib = 260\n" + vm)
        defer { host.stop() }
        do {
            let attached = try host.wait(for: "noagent", timeout: 60, "attached") { $0.residentBytes > 300 << 20 }
            #expect(attached.swapMechanism?.contains("cgroup v") == true, "\(attached.swapMechanism ?? "none")")
            let paused = try host.wait(for: "noagent", timeout: 30, "paused in the low state") { $0.paused }
            print("low state: paused at \(paused.residentBytes >> 20) MiB resident, target \(paused.targetBytes >> 20) MiB")
            // Swapped down to its target, and resumed once memory recovered.
            let settled = try host.wait(for: "noagent", timeout: 120, "resident at target ±10 %, resumed") { account in
                let target = Double(account.targetBytes), resident = Double(account.residentBytes)
                return !account.paused && account.swapLimitBytes != nil && abs(resident - target) <= 0.1 * target
            }
            print("swapped: resident \(attached.residentBytes >> 20) → \(settled.residentBytes >> 20) MiB (target \(settled.targetBytes >> 20) MiB), "
                  + "\(settled.swappedBytes >> 20) MiB in host swap, limit \((settled.swapLimitBytes ?? 0) >> 20) MiB; \(settled.swapReason ?? "")")
            #expect(settled.swappedBytes >= 100 << 20)
            #expect(try qmpStatus(guest) == "running")
            #expect(try guest.run("echo alive", timeout: 60).output.contains("alive"), "the guest keeps running")
            #expect(host.log.contains("paused: host memory is low") && host.log.contains("resumed: host memory recovered"))

            // The budget grows (host.toml edited, the agent restarted): no limit, and the guest's data comes
            // back from host swap as it touches it, intact. (The cgroup swapped the coldest pages first: mostly
            // memory the idle guest had freed, and the part of the data the kernel found coldest.)
            host.stop()
            host = try HostAgentProcess(directory: work, vms: [], configText: "[host]\nbudget_mib = 2048\n" + vm)
            let free = try host.wait(for: "noagent", timeout: 60, "attached without a limit") { $0.residentBytes > 0 && $0.swapLimitBytes == nil }
            #expect(try group.limitBytes() == nil)
            let verified = try guest.verifyKeep(pid: pid)
            #expect(verified.contains("keep ok 300 MiB") && !verified.contains("MISMATCH"), "\(verified)")
            let back = try host.wait(for: "noagent", timeout: 30, "paged back in") {
                $0.residentBytes > free.residentBytes + (16 << 20) && $0.swappedBytes + (16 << 20) < free.swappedBytes
            }
            print("budget 2048 MiB: resident \(free.residentBytes >> 20) → \(back.residentBytes >> 20) MiB, in host swap \(free.swappedBytes >> 20) → "
                  + "\(back.swappedBytes >> 20) MiB after the guest read its data back")
        } catch {
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(4000)))")
        }
    }

    @Test(.enabled(if: canRun, "needs root, QEMU and mkswap"))
    func aGuestAtItsFloorIsBalloonedFirstThenSwappedByPageout() throws {
        let swap = try TemporarySwapFile(megabytes: 1024, name: "ballonet-test-swap-floor")
        defer { swap.remove() }
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "hvfloor")
        // The agent keeps 200 MiB available: with 150 MiB of data its balloon stops well above a 200 MiB target.
        let guest = try TCGGuest.boot(name: "floor", memoryMiB: 512, kernel: image.kernel, initramfs: image.initramfs,
                                      appendArguments: "ballonet.agent=1 ballonet.agent_args=\"--floor-mib 200\"", workDirectory: work)
        defer { guest.stop() }
        _ = try guest.waitUntilReady(timeout: 180)
        try guest.touchAndFree(megabytes: 300, timeout: 240)
        let pid = try guest.startKeep(mib: 150, seed: 12)

        let host = try HostAgentProcess(directory: work, vms: [],
                                        configText: "[[vm]]\nname = \"floor\"\nqmp_socket = \"\(guest.qmpSocketPath)\"\nport_socket = \"\(guest.portSocketPath)\"\nswap = \"pageout\"\nmin_mib = 128\n")
        defer { host.stop() }
        do {
            let attached = try host.wait(for: "floor", timeout: 90, "session") { $0.state == "established" && $0.residentBytes > 0 }
            #expect(attached.swapMechanism?.contains("pageout") == true)
            try host.setTarget("floor", mib: 200)
            // The balloon goes first, as far as the guest's floor lets it.
            let ballooned = try host.wait(for: "floor", timeout: 120, "a balloon") { $0.balloonBytes >= 32 << 20 }
            let swapped = try host.wait(for: "floor", timeout: 180, "resident at target ±10 % by pageout") { account in
                account.swapLimitBytes != nil && account.pagedOutBytes > 0
                    && abs(Double(account.residentBytes) - Double(200 << 20)) <= 0.1 * Double(200 << 20)
            }
            print("floor: balloon \(ballooned.balloonBytes >> 20) MiB first; then pageout: resident \(attached.residentBytes >> 20) → "
                  + "\(swapped.residentBytes >> 20) MiB (target 200), \(swapped.pagedOutBytes >> 20) MiB paged out, balloon \(swapped.balloonBytes >> 20) MiB; "
                  + "\(swapped.swapReason ?? "")")
            #expect(swapped.balloonBytes > 0, "the balloon keeps what it took")
            let log = host.log
            let balloonLine = log.range(of: "balloon target")?.lowerBound, swapLine = log.range(of: "hypervisor swapping starts")?.lowerBound
            #expect(balloonLine != nil && swapLine != nil && balloonLine! < swapLine!, "balloon first, then swap")
            #expect(log.contains("the balloon cannot deliver"), "why it swapped")
            let verified = try guest.verifyKeep(pid: pid)
            #expect(verified.contains("keep ok 150 MiB") && !verified.contains("MISMATCH"), "\(verified)")
        } catch {
            let agentLog = (try? guest.run("tail -n 20 /run/ballonet-guest.log; free -m", timeout: 30).output) ?? "?"
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(4000)))\nagent log:\n\(agentLog)")
        }
    }

    @Test(.enabled(if: HostTestImage.canRun, "needs root and QEMU"))
    func aPausedGuestIsResumedWhenTheAgentStopsOrItsSuccessorStarts() throws {
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "hvpause")
        let guest = try TCGGuest.boot(name: "pause", memoryMiB: 512, kernel: image.kernel, initramfs: image.initramfs, workDirectory: work)
        defer { guest.stop() }
        _ = try guest.waitUntilReady(timeout: 180)
        try guest.touchAndFree(megabytes: 300, timeout: 240)
        // Swap off for the VM: nothing can bring it down, so the host stays low and the VM stays paused.
        let config = "[host]\nbudget_mib = 200\n[[vm]]\nname = \"pause\"\nqmp_socket = \"\(guest.qmpSocketPath)\"\nport_socket = \"\(guest.portSocketPath)\"\nswap = \"off\"\n"
        var host = try HostAgentProcess(directory: work, vms: [], configText: config)
        defer { host.stop() }
        let marker = work.appendingPathComponent("state/paused/pause").path
        do {
            try host.wait(for: "pause", timeout: 60, "paused") { $0.paused }
            #expect(try qmpStatus(guest) == "paused")
            #expect(FileManager.default.fileExists(atPath: marker))
            host.stop()
            #expect(try qmpStatus(guest) == "running", "stopping the agent resumes the VM")
            #expect(!FileManager.default.fileExists(atPath: marker))

            // Killed while the VM is paused, the agent cannot resume it; the next one does as it attaches.
            host = try HostAgentProcess(directory: work, vms: [], configText: config)
            try host.wait(for: "pause", timeout: 60, "paused again") { $0.paused }
            host.kill9()
            #expect(try qmpStatus(guest) == "paused")
            host = try HostAgentProcess(directory: work, vms: [], configText: config.replacingOccurrences(of: "budget_mib = 200", with: "budget_mib = 2048"))
            try host.wait(for: "pause", timeout: 60, "attached") { $0.residentBytes > 0 }
            #expect(try qmpStatus(guest) == "running", "the successor resumed it")
            #expect(host.log.contains("resumed the VM an earlier ballonet-host paused"))
            #expect(try guest.run("echo alive", timeout: 60).output.contains("alive"))
        } catch {
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(4000)))")
        }
    }
}
