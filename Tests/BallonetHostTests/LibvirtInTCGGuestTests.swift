import BallonetHost
import BallonetTestSupport
import Foundation
import Testing

/// ballonet-host beside a real libvirtd the test starts: two TCG domains, one with ballonet-guest on the
/// org.ballonet.0 channel and one with only a virtio balloon, both brought to their targets by one policy;
/// libvirtd restarted underneath without losing them; shares changed with `virsh metadata` moving the
/// targets; a destroyed domain's share going to the other; and the qemu hook (`ballonet-host admit`)
/// refusing a domain that does not fit while a fitting one starts.
@Suite(.serialized) struct LibvirtInTCGGuestTests {
    @Test(.enabled(if: HostTestImage.canRun && TestLibvirtd.canRun, "needs root, qemu-system-x86_64 and libvirtd (make check installs them), and no libvirtd running already"))
    func twoDomainsUnderARealLibvirtd() throws {
        let image = try HostTestImage.get()
        // Kept afterwards (as other TCG tests keep theirs): libvirtd's, the hook's and the agent's logs.
        let work = try TCGGuest.makeWorkDirectory(prefix: "libvirt")
        let host = try BuiltCommand.path("ballonet-host")
        let controlSocket = work.appendingPathComponent("control.sock").path
        // The hook as packaging/libvirt/qemu-hook has it, with this test's agent and socket.
        let hook = "#!/bin/sh\necho \"$*\" >> '\(work.path)/hook.log'\nexec '\(host.path)' admit --socket '\(controlSocket)' --when-unreachable refuse \"$@\"\n"
        let libvirtd = try TestLibvirtd(directory: work, hook: hook)
        defer { libvirtd.stop() }
        // Memory for VMs: 1 GiB for two 512 MiB guests that each touch 360 MiB once at boot (and free it), so
        // the host holds about 920 MiB of guest RAM. The thresholds are raised so that leaves it short (soft
        // below 20 % free) and the policy splits memory by shares; no idle tax and no trimming, so the split
        // is the shares' alone and a change of shares shows in the targets directly.
        let config = """
            [host]
            budget_mib = 1024
            require_swap = false
            [policy]
            idle_tax = 0.0
            trimming = false
            high_percent = 30
            soft_percent = 20
            hard_percent = 5
            low_percent = 2
            # The guests hold their memory for a while after boot: ballooning, not hypervisor swapping, is tested.
            balloon_grace_seconds = 600
            """
        let agent = try HostAgentProcess(directory: work, vms: [], configText: config, libvirtURI: libvirtd.uri)
        defer { agent.stop() }
        var connection = try LibvirtConnection(uri: libvirtd.uri) { _ in }
        var started: [String] = []
        defer { for name in started { try? (try? connection.domain(named: name))??.destroy() } }
        try waitUntil(timeout: 30, "the agent's control socket") { (try? agent.status()) != nil }
        #expect(agent.log.contains("connected to libvirt at \(libvirtd.uri)"), "\(agent.log.suffix(2000))")

        let equalShares = BallonetDomainMetadata(minMiB: 128, shares: 1000)
        // The first start makes libvirtd probe QEMU's capabilities (up to a minute here).
        // Touch, and free once all is touched (however long a loaded host makes that take).
        let touch = "ballonet-workload hold 360 > /tmp/touch.log & p=$!; until grep -q held /tmp/touch.log; do sleep 1; done; kill $p"
        try connection.create(xml: libvirtd.domainXML(name: "lv-agent", memoryMiB: 512, image: image, withAgent: true, metadata: equalShares, run: touch))
        started.append("lv-agent")
        try connection.create(xml: libvirtd.domainXML(name: "lv-balloon", memoryMiB: 512, image: image, withAgent: false, metadata: equalShares, run: touch))
        started.append("lv-balloon")
        do {
            // Both at their targets: the balloon (ballonet-guest's pinned pages; the virtio balloon's RAM − actual)
            // holds RAM − target, and the host holds no more than the target of each.
            func atTarget(_ account: VMAccount) -> Bool {
                let held = account.balloonBytes + account.targetBytes
                return account.memoryBytes > 0 && account.targetBytes > 0
                    && (held > account.memoryBytes ? held - account.memoryBytes : account.memoryBytes - held) <= 16 << 20
                    && account.residentBytes <= account.targetBytes + (16 << 20)
            }
            let withAgent = try agent.wait(for: "lv-agent", timeout: 300, "ballonet-guest's balloon at a target below its RAM") {
                $0.agentVersion != nil && $0.targetBytes < 480 << 20 && $0.balloonBytes > 0 && atTarget($0)
            }
            let withBalloon = try agent.wait(for: "lv-balloon", timeout: 300, "the virtio balloon at a target below its RAM") {
                $0.state.contains("virtio-balloon") && $0.targetBytes < 480 << 20 && $0.balloonBytes > 0 && atTarget($0)
            }
            print("at targets: lv-agent \(withAgent.targetBytes >> 20) MiB (balloon \(withAgent.balloonBytes >> 20), resident \(withAgent.residentBytes >> 20)); "
                  + "lv-balloon \(withBalloon.targetBytes >> 20) MiB (balloon \(withBalloon.balloonBytes >> 20), resident \(withBalloon.residentBytes >> 20))")
            let difference = withAgent.targetBytes > withBalloon.targetBytes ? withAgent.targetBytes - withBalloon.targetBytes
                : withBalloon.targetBytes - withAgent.targetBytes
            #expect(difference <= 16 << 20, "equal shares, equal targets: \(withAgent.targetBytes >> 20) and \(withBalloon.targetBytes >> 20) MiB")
            // libvirt sees the same balloon: its "actual" is what the guest keeps.
            let actualKiB = try #require(try connection.domain(named: "lv-balloon")?.memoryStats()[6])
            let kept = actualKiB << 10
            #expect(kept <= withBalloon.targetBytes + (16 << 20) && kept + (16 << 20) >= withBalloon.targetBytes,
                    "virsh dommemstat's actual \(actualKiB) KiB against the target \(withBalloon.targetBytes >> 20) MiB")

            // libvirtd restarts; the domains run on, and the agent follows them without a new session.
            let sessions = try agent.account("lv-agent").sessions
            try libvirtd.restart()
            connection = try LibvirtConnection(uri: libvirtd.uri) { _ in }
            try waitUntil(timeout: 90, "the agent reconnecting to libvirtd") { agent.log.contains("reconnected to libvirt") }
            #expect(try agent.status().vms.map(\.name).sorted() == ["lv-agent", "lv-balloon"])
            #expect(try agent.account("lv-agent").sessions == sessions, "the guest session survives a libvirtd restart")

            // virsh metadata: lv-agent gets 9 times the shares, and the targets follow (events on the new connection).
            let domain = try #require(try connection.domain(named: "lv-agent"))
            try domain.setMetadata(BallonetDomainMetadata(minMiB: 128, shares: 9000).element, key: BallonetDomainMetadata.key,
                                   uri: BallonetDomainMetadata.namespace, persistent: false)
            let favoured = try agent.wait(for: "lv-agent", timeout: 60, "a larger target after the shares change") {
                $0.shares == 9000 && $0.targetBytes >= 480 << 20
            }
            // The other keeps what it has on a calm host (the policy takes memory back only when it is short).
            let other = try agent.account("lv-balloon")
            #expect(other.targetBytes <= withBalloon.targetBytes, "the other's target does not grow: \(other.targetBytes >> 20) MiB")
            print("shares 9000 : 1000 → lv-agent \(favoured.targetBytes >> 20) MiB (\(favoured.targetReason)), lv-balloon \(other.targetBytes >> 20) MiB")
            try agent.wait(for: "lv-agent", timeout: 120, "ballonet-guest's balloon following the larger target", until: atTarget)

            // Destroying lv-agent frees its share: lv-balloon goes back up to its max.
            try domain.destroy()
            started.removeAll { $0 == "lv-agent" }
            try waitUntil(timeout: 30, "lv-agent leaving the status") { (try? agent.status().vms.map(\.name)) == ["lv-balloon"] }
            let alone = try agent.wait(for: "lv-balloon", timeout: 60, "its max once alone") { $0.targetBytes >= 500 << 20 }
            #expect(agent.log.contains("libvirt domain lv-agent was destroyed"), "\(agent.log.suffix(2000))")
            print("lv-agent destroyed → lv-balloon \(alone.targetBytes >> 20) MiB")

            // Admission through the hook: min 900 MiB would fit the 1024 MiB budget alone, but not beside lv-balloon's
            // 128; min 128 does.
            do {
                try connection.create(xml: libvirtd.domainXML(name: "lv-huge", memoryMiB: 1024, image: image, withAgent: false,
                                                              metadata: BallonetDomainMetadata(minMiB: 900)))
                started.append("lv-huge")
                Issue.record("an oversized domain started")
            } catch let error as LibvirtError {
                print("refused as the operator sees it: \(error.message)")
                #expect(error.message.contains("ballonet: VM lv-huge cannot start"), "\(error.message)")
                #expect(error.message.contains("900"), "the refusal says what does not fit: \(error.message)")
            }
            try connection.create(xml: libvirtd.domainXML(name: "lv-fit", memoryMiB: 256, image: image, withAgent: false, metadata: equalShares))
            started.append("lv-fit")
            try agent.wait(for: "lv-fit", timeout: 60, "the fitting domain managed") { $0.memoryBytes == 256 << 20 }
            #expect(agent.log.contains("admission refused a start") && agent.log.contains("admission: "), "\(agent.log.suffix(2000))")
        } catch {
            Issue.record("\(error)\nagent log:\n\(agent.log.suffix(4000))\nlibvirtd log:\n\(libvirtd.log)")
        }
    }

    private func waitUntil(timeout: TimeInterval, _ what: String, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.25)
        }
        throw TestTimeout(description: "\(what) not within \(Int(timeout)) s")
    }
}
