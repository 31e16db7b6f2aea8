import BallonetHost
import BallonetLinux
import BallonetPolicy
import BallonetTestSupport
import Foundation
import Testing

/// The policy driving a real guest with no command from anyone: on a calm host, proactive trimming takes an
/// idle 512 MiB TCG guest down toward its working set plus buffer, the host gets that memory back, and
/// `ballonetctl explain` says why with the policy's numbers.
@Suite(.serialized) struct PolicyInTCGGuestTests {
    @Test(.enabled(if: HostTestImage.canRun, "needs root and qemu-system-x86_64 (make check installs it)"))
    func anIdleGuestIsTrimmedTowardItsWorkingSetAndExplainSaysWhy() throws {
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "policy-trim")
        let guest = try TCGGuest.boot(name: "trim", memoryMiB: 512, kernel: image.kernel, initramfs: image.initramfs,
                                      appendArguments: "ballonet.agent=1 ballonet.agent_args=\"--sample-seconds 2\"", workDirectory: work)
        defer { guest.stop() }
        _ = try guest.waitUntilReady(timeout: 180)
        // The guest touched (nearly) all its memory once and freed it: the host backs it, the guest does
        // not need it.
        try guest.touchAndFree(megabytes: 400, timeout: 240)
        let before = try guest.residentGuestRAMBytes

        let host = try HostAgentProcess(directory: work, vms: [],
                                        configText: "[[vm]]\nname = \"trim\"\nqmp_socket = \"\(guest.qmpSocketPath)\"\nport_socket = \"\(guest.portSocketPath)\"\nmin_mib = 128\n")
        defer { host.stop() }
        do {
            // A working-set estimate, a target trimmed to its end (working set + buffer, within min and what
            // the guest cannot give back: well under half its RAM), and a balloon that holds the difference.
            let trimmed = try host.wait(for: "trim", timeout: 180, "a trimmed target met by the balloon") { account in
                guard let estimate = account.workingSetEstimateBytes, account.targetBytes <= 256 << 20,
                      account.targetReason.contains("trimmed to") else { return false }
                return account.targetBytes >= min(estimate, 512 << 20) && account.balloonBytes + account.targetBytes + (8 << 20) >= 512 << 20
            }
            let after = try guest.residentGuestRAMBytes
            print("trimmed: target \(trimmed.targetBytes >> 20) MiB (working set \((trimmed.workingSetEstimateBytes ?? 0) >> 20) MiB), "
                  + "balloon \(trimmed.balloonBytes >> 20) MiB; resident guest RAM \(before >> 20) → \(after >> 20) MiB")
            #expect(trimmed.targetBytes >= 128 << 20, "never below min")
            #expect(before > after + (200 << 20), "the host should get at least 200 MiB back: \(before >> 20) → \(after >> 20) MiB")
            let status = try host.status()
            #expect(status.state == "high")

            let explain = try BuiltCommand.run("ballonetctl", ["explain", "trim", "--socket", host.controlSocket])
            #expect(explain.status == 0, "\(explain.output)")
            for text in ["trim: target", "trimmed to", "shares S", "active f", "ρ", "idle tax τ    0.75", "host state    high"] {
                #expect(explain.output.contains(text), "explain should show \(text): \(explain.output)")
            }
            let json = try BuiltCommand.run("ballonetctl", ["explain", "trim", "--json", "--socket", host.controlSocket])
            let explanation = try JSONDecoder().decode(MemoryPolicy.Explanation.self, from: Data(json.output.utf8))
            #expect(explanation.bound == .trimmed || explanation.bound == .changeLimit)
            #expect(explanation.shares == 5120, "default shares: 10 per MiB of 512 MiB")
            #expect(explanation.activeFraction > 0 && explanation.activeFraction <= 1)
            let unknown = try BuiltCommand.run("ballonetctl", ["explain", "nosuchvm", "--socket", host.controlSocket])
            #expect(unknown.status != 0 && unknown.output.contains("no VM named nosuchvm"), "\(unknown.output)")
            // The log says why, one line per decision, with the numbers.
            #expect(host.log.contains("trimmed to") && host.log.contains("τ=0.75"), "\(String(host.log.suffix(2000)))")
        } catch {
            let agentLog = (try? guest.run("tail -n 30 /run/ballonet-guest.log; free -m", timeout: 30).output) ?? "?"
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(3000)))\nagent log:\n\(agentLog)")
        }
    }
}
