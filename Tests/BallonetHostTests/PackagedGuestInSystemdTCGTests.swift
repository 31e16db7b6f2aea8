import BallonetHost
import BallonetTestSupport
import BallonetWire
import Foundation
import Testing

/// The packages as users install them: a minimal Debian 12 guest (debootstrap) with systemd as init and the
/// ballonet-guest package installed by dpkg boots under TCG. Its unit starts when the org.ballonet.0 port
/// appears. The ballonet-host of the installed package (and the ballonetctl link) inflates and deflates its
/// balloon, an upgrade of ballonet-guest inside the guest hands the balloon over to the new agent, and the
/// unit stops when the port is unplugged.
///
/// Run by `make check-packaging` (scripts/check-packaging.sh) with the packages installed on this machine
/// and BALLONET_PACKAGE_DIR naming the directory with the .debs; skipped by `make check`.
@Suite(.serialized) struct PackagedGuestInSystemdTCGTests {
    static let packageDirectory = ProcessInfo.processInfo.environment["BALLONET_PACKAGE_DIR"]
    static var canRun: Bool {
        packageDirectory != nil && HostTestImage.canRun && FileManager.default.isExecutableFile(atPath: "/usr/sbin/ballonet-host")
    }

    @Test(.enabled(if: canRun, "run by make check-packaging: needs BALLONET_PACKAGE_DIR and the packages installed"))
    func thePackagedAgentsBalloonAGuestWithSystemd() throws {
        let packages = URL(fileURLWithPath: try #require(Self.packageDirectory))
        let version = BallonetVersion.software
        let image = try HostTestImage.get()
        let imageDirectory = image.kernel.deletingLastPathComponent()
        let out = packages.appendingPathComponent("systemd-guest")
        let build = try BuiltCommand.run(executable: URL(fileURLWithPath: "/bin/bash"), [
            GuestImage.packageRoot.appendingPathComponent("packaging/debian-guest-test/build-systemd-guest.sh").path,
            imageDirectory.path, packages.appendingPathComponent("ballonet-guest_\(version)_amd64.deb").path,
            packages.appendingPathComponent("ballonet-guest_\(version)+upgradetest_amd64.deb").path, out.path])
        try #require(build.status == 0, "building the guest failed: \(build.output)")

        let work = try TCGGuest.makeWorkDirectory(prefix: "pkg")
        let started = Date()
        let guest = try TCGGuest.boot(name: "pkg", memoryMiB: 1024, kernel: image.kernel,
                                      initramfs: out.appendingPathComponent("systemd-guest.cpio.gz"), workDirectory: work)
        defer { guest.stop() }
        // systemd started the unit because the port appeared (no command of ours).
        var active = ""
        for _ in 0..<60 where active != "active" {
            Thread.sleep(forTimeInterval: 3)
            active = (try? guest.run("systemctl is-active ballonet-guest.service", timeout: 20).output)?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        }
        try #require(active == "active", "ballonet-guest.service is \(active)\n\(guest.tail())")
        print("systemd guest up, ballonet-guest.service active after \(Int(Date().timeIntervalSince(started))) s")

        let host = try HostAgentProcess(directory: work, vms: [("pkg", guest.qmpSocketPath, guest.portSocketPath)],
                                        executable: URL(fileURLWithPath: "/usr/sbin/ballonet-host"))
        defer { host.stop() }
        do {
            try host.wait(for: "pkg", timeout: 120, "a session with the packaged agent") { $0.agentVersion == version }
            // ballonetctl as installed: a link to ballonet-host.
            let set = try BuiltCommand.run(executable: URL(fileURLWithPath: "/usr/bin/ballonetctl"),
                                           ["set-target", "pkg", "600", "--socket", host.controlSocket])
            #expect(set.status == 0, "\(set.output)")
            let inflated = try host.wait(for: "pkg", timeout: 180, "the balloon at RAM − 600 MiB") { $0.balloonBytes >= 400 << 20 }
            print("inflated: balloon \(inflated.balloonBytes >> 20) MiB, \(inflated.reclaimedBytes >> 20) MiB reclaimed on the host")

            // Upgrade in the guest: the running agent hands its balloon over; the new one re-adopts it.
            let sessions = inflated.sessions
            let upgrade = try guest.run("dpkg -i /root/ballonet-guest_\(version)+upgradetest_amd64.deb 2>&1 | tail -n 3", timeout: 300)
            #expect(upgrade.status == 0, "\(upgrade.output)")
            let after = try host.wait(for: "pkg", timeout: 120, "a new session after the upgrade") { $0.sessions > sessions && $0.agentVersion != nil }
            let kept = after.balloonBytes >> 20
            #expect(after.balloonBytes + (8 << 20) >= inflated.balloonBytes, "the balloon survives the upgrade: \(kept) MiB")
            let journal = try guest.run("journalctl -u ballonet-guest.service --no-pager | grep -E 'handover|re-adopted' | tail -n 4", timeout: 60)
            if !journal.output.contains("re-adopted") {
                let all = try guest.run("journalctl --no-pager | grep -iE 'mount|balloon.*(adopt|file)|unmount' | tail -n 25 | cut -c1-250; findmnt /run/ballonet/balloon", timeout: 60)
                print("guest journal after the upgrade:\n\(all.output)")
            }
            #expect(journal.output.contains("handover") && journal.output.contains("re-adopted"), "\(journal.output)")
            let version = try guest.run("dpkg-query -W -f='${Version}' ballonet-guest; test ! -e /run/ballonet/balloon.handover", timeout: 30)
            #expect(version.status == 0 && version.output.contains("upgradetest"), "\(version.output)")

            // Deflate: a target of all its RAM.
            let clear = try BuiltCommand.run(executable: URL(fileURLWithPath: "/usr/bin/ballonetctl"),
                                             ["set-target", "pkg", "1024", "--socket", host.controlSocket])
            #expect(clear.status == 0, "\(clear.output)")
            try host.wait(for: "pkg", timeout: 180, "the balloon deflated") { $0.balloonBytes == 0 }
            // The port goes (hot-unplugged): systemd stops the agent with it (BindsTo= the port's device).
            _ = try guest.qmp(#"{"execute":"device_del","arguments":{"id":"ballonetport0"}}"#)
            var state = ""
            for _ in 0..<40 where state != "inactive" {
                Thread.sleep(forTimeInterval: 1.5)
                state = (try? guest.run("systemctl is-active ballonet-guest.service", timeout: 20).output)?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            }
            #expect(state == "inactive", "ballonet-guest.service is \(state) after its port went")
            print("deflated; the whole test took \(Int(Date().timeIntervalSince(started))) s after the image was built")
        } catch {
            let journal = (try? guest.run("journalctl -u ballonet-guest.service --no-pager | tail -n 30", timeout: 30).output) ?? "?"
            Issue.record("\(error)\nhost log:\n\(host.log.suffix(3000))\nguest journal:\n\(journal)")
        }
    }
}
