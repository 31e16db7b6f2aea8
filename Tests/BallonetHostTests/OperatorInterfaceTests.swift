import BallonetHost
import BallonetLinux
import BallonetPolicy
import BallonetTestSupport
import Foundation
import Testing

/// `ballonetctl` against a running ballonet-host with a real TCG guest, checked by what it prints.
@Suite(.serialized) struct OperatorInterfaceTests {
    static func ctl(_ arguments: [String], socket: String) throws -> (status: Int32, output: String) {
        try BuiltCommand.run("ballonetctl", arguments + ["--socket", socket])
    }

    @Test(.enabled(if: HostTestImage.canRun, "needs root and qemu-system-x86_64 (make check installs it)"))
    func statusTopSetExplainAndRefusal() throws {
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "operator")
        let guest = try TCGGuest.boot(name: "ops", memoryMiB: 512, kernel: image.kernel, initramfs: image.initramfs,
                                      appendArguments: "ballonet.agent=1 ballonet.agent_args=\"--sample-seconds 2\"", workDirectory: work)
        defer { guest.stop() }
        _ = try guest.waitUntilReady(timeout: 180)
        var host = try HostAgentProcess(directory: work, vms: [("ops", guest.qmpSocketPath, guest.portSocketPath)],
                                        metricsAddress: "127.0.0.1:0")
        defer { host.stop() }
        let socket = host.controlSocket
        do {
            try host.wait(for: "ops", timeout: 90, "a session and a policy target") { $0.state == "established" && $0.shares != nil }

            // status: the table with the host's state and the VM's row.
            let table = try Self.ctl(["status"], socket: socket)
            #expect(table.status == 0)
            for text in ["host high", "VM ", "TARGET", "WSET", "SHARES", "ops ", "5120", "established"] {
                #expect(table.output.contains(text), "status should show \(text): \(table.output)")
            }
            // status --json parses into the same figures the daemon holds.
            let json = try Self.ctl(["status", "--json"], socket: socket)
            let status = try JSONDecoder().decode(HostStatus.self, from: Data(json.output.utf8))
            #expect(status.state == "high")
            #expect(status.vms.first?.name == "ops" && status.vms.first?.memoryBytes == 512 << 20)

            // Metrics: Prometheus text whose numbers agree with status --json (taken right after it; the
            // figures that move every second are compared with a margin).
            // The page is rendered once a round (a second): scrape until it shows the session.
            let address = try #require(status.metricsAddress)
            var samples = try PrometheusParser.parsePrometheus(try Self.scrape(address))
            for _ in 0..<20 where samples["ballonet_vm_guest_agent_up{vm=\"ops\"}"] != 1 {
                Thread.sleep(forTimeInterval: 0.25)
                samples = try PrometheusParser.parsePrometheus(try Self.scrape(address))
            }
            let after = try JSONDecoder().decode(HostStatus.self, from: Data(try Self.ctl(["status", "--json"], socket: socket).output.utf8))
            let vm = after.vms[0]
            #expect(samples["ballonet_host_state{state=\"high\"}"] == 1)
            #expect(samples["ballonet_vm_memory_bytes{vm=\"ops\"}"] == Double(vm.memoryBytes))
            #expect(samples["ballonet_vm_shares{vm=\"ops\"}"] == Double(vm.shares ?? 0))
            #expect(samples["ballonet_vm_sessions_total{vm=\"ops\"}"] == Double(vm.sessions))
            #expect(samples["ballonet_vm_refused_messages_total{vm=\"ops\"}"] == Double(vm.refusedMessages))
            #expect(samples["ballonet_vm_guest_agent_up{vm=\"ops\"}"] == 1)
            for (name, value) in [("ballonet_vm_target_bytes", vm.targetBytes), ("ballonet_vm_balloon_bytes", vm.balloonBytes),
                                  ("ballonet_vm_resident_bytes", vm.residentBytes), ("ballonet_vm_reclaimed_bytes_total", vm.reclaimedBytes)] {
                let metric = try #require(samples[name + "{vm=\"ops\"}"], "\(name) missing")
                #expect(abs(metric - Double(value)) <= Double(64 << 20), "\(name): \(metric) vs \(value)")
            }

            // top: refreshes, one table per refresh; --json one status per line.
            let top = try Self.ctl(["top", "--count", "2", "--interval", "0.5"], socket: socket)
            #expect(top.status == 0)
            #expect(top.output.components(separatedBy: "ballonetctl top:").count - 1 == 2, "\(top.output)")
            let topJSON = try Self.ctl(["top", "--count", "2", "--interval", "0.5", "--json"], socket: socket)
            let lines = topJSON.output.split(separator: "\n")
            #expect(lines.count == 2)
            for line in lines { _ = try JSONDecoder().decode(HostStatus.self, from: Data(line.utf8)) }

            // set: shares, min and max change, the policy uses them, and explain shows them.
            let set = try Self.ctl(["set", "ops", "--shares", "777", "--min", "200", "--max", "480"], socket: socket)
            #expect(set.status == 0, "\(set.output)")
            #expect(set.output.contains("shares 777, min 200 MiB, max 480 MiB"), "\(set.output)")
            let explained = try Self.ctl(["explain", "ops", "--json"], socket: socket)
            let explanation = try JSONDecoder().decode(MemoryPolicy.Explanation.self, from: Data(explained.output.utf8))
            #expect(explanation.shares == 777 && explanation.minBytes == 200 << 20 && explanation.maxBytes == 480 << 20)
            #expect(explanation.targetBytes >= 200 << 20 && explanation.targetBytes <= 480 << 20)
            let text = try Self.ctl(["explain", "ops"], socket: socket)
            #expect(text.output.contains("shares S      777") && text.output.contains("min / max     200 MiB / 480 MiB"), "\(text.output)")
            // A max above the VM's RAM is refused, with why, and changes nothing.
            let tooBig = try Self.ctl(["set", "ops", "--max", "4096"], socket: socket)
            #expect(tooBig.status != 0 && tooBig.output.contains("512 MiB of RAM"), "\(tooBig.output)")
            #expect(try host.account("ops").maxBytes == 480 << 20)

            // Kept across a restart of the agent.
            let saved = try String(contentsOf: work.appendingPathComponent("vm-settings.json"), encoding: .utf8)
            #expect(saved.contains("\"shares\" : 777"), "\(saved)")
            host.stop()
            host = try HostAgentProcess(directory: work, vms: [("ops", guest.qmpSocketPath, guest.portSocketPath)])
            let again = try host.wait(for: "ops", timeout: 90, "the saved settings in use") { $0.shares == 777 }
            #expect(again.minBytes == 200 << 20 && again.maxBytes == 480 << 20)

            // Anyone but root (or group ballonet) is refused with a clear message.
            let nobody = try BuiltCommand.run(executable: URL(fileURLWithPath: "/usr/bin/setpriv"), ["--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                                          try BuiltCommand.path("ballonetctl").path, "status", "--socket", host.controlSocket])
            #expect(nobody.status != 0)
            #expect(nobody.output.contains("permission denied") && nobody.output.contains("group ballonet"), "\(nobody.output)")
        } catch {
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(3000)))")
        }
    }

    /// GET /metrics from `address` ("127.0.0.1:PORT"): the body, after checking the status line.
    static func scrape(_ address: String) throws -> String {
        let colon = address.lastIndex(of: ":")!
        let connection = try TCPSocket.connect(address: String(address[..<colon]), port: UInt16(address[address.index(after: colon)...])!)
        try connection.send(all: Array("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8))
        var bytes: [UInt8] = []
        while true {
            guard try !connection.poll(for: .readable, timeout: .seconds(10)).isEmpty else { break }
            let chunk = try connection.receive(upTo: 1 << 16)
            if chunk.isEmpty { break }
            bytes += chunk
        }
        let response = String(decoding: bytes, as: UTF8.self)
        #expect(response.hasPrefix("HTTP/1.1 200"), "\(response.prefix(200))")
        #expect(response.contains("text/plain; version=0.0.4"))
        guard let split = response.range(of: "\r\n\r\n") else { return "" }
        return String(response[split.upperBound...])
    }
}
