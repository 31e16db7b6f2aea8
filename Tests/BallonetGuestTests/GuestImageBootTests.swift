import Foundation
import Testing
import BallonetTestSupport
import BallonetWire
#if canImport(Glibc)
import Glibc
#endif

/// Boots the guest test image (packaging/guest-image) under QEMU TCG with the static-stdlib agent in it:
/// the rig every guest/host integration test stands on.
@Suite(.serialized) struct GuestImageBootTests {
    @Test(
        .enabled(if: TCGGuest.qemuExecutable != nil,
                 "no qemu-system-x86_64 on this machine: scripts/install-deps.sh (make check) installs it"),
        .timeLimit(.minutes(20))
    )
    func imageBootsAndRunsTheAgentAndTheWorkload() throws {
        let agent = try GuestImage.buildStaticAgent()
        let image = try GuestImage.ensureBuilt(agent: agent)
        let workDirectory = try TCGGuest.makeWorkDirectory(prefix: "boot-test")
        defer { try? FileManager.default.removeItem(at: workDirectory) }

        let guest = try TCGGuest.boot(name: "boot-test", memoryMiB: 512, kernel: image.kernel,
                                      initramfs: image.initramfs, workDirectory: workDirectory)
        let bootSeconds = try guest.waitUntilReady(timeout: 180)
        print("GuestImageBootTests: guest ready \(String(format: "%.1f", bootSeconds)) s after QEMU started")

        let version = try guest.run("ballonet-guest --version", timeout: 60)
        #expect(version.status == 0, "\(version.output)")
        #expect(version.output.trimmingCharacters(in: .whitespacesAndNewlines) == BallonetVersion.software)

        let port = try guest.run("test -c /dev/virtio-ports/org.ballonet.0 && readlink /dev/virtio-ports/org.ballonet.0", timeout: 30)
        #expect(port.status == 0, "no /dev/virtio-ports/org.ballonet.0 in the guest: \(port.output)")
        #expect(port.output.hasPrefix("/dev/vport"))

        let pattern = try guest.run("ballonet-workload pattern 32 2", timeout: 120)
        #expect(pattern.status == 0)
        #expect(pattern.output.contains("pattern ok"), "\(pattern.output)")

        let pid = guest.pid
        #expect(kill(pid, 0) == 0, "QEMU should be running before stop()")
        guest.stop()
        #expect(kill(pid, 0) == -1 && errno == ESRCH, "QEMU pid \(pid) still exists after stop()")
        #expect(!guest.isRunning)
    }
}
