import BallonetHost
import BallonetLinux
import BallonetTestSupport
import Foundation

/// A real libvirtd a test starts and stops by pid, kept apart from the machine's: its sockets in the test's
/// directory (so `qemu:///system` agents elsewhere never see it), and, in a mount namespace of its own, its
/// own qemu hook directory and a qemu.conf that runs QEMU as root without relabelling files or virtlogd
/// (the test's kernel and sockets stay as they are).
final class TestLibvirtd {
    let directory: URL
    let uri: String
    private let hooks: URL
    private let pidFile: String
    private let logFile: String
    private var processID: Int32?

    static var canRun: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/libvirtd")
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") && runningLibvirtd == nil
    }

    /// A libvirtd already running on the machine (not a zombie): its qemu driver would share
    /// /run/libvirt/qemu with ours, so the test does not run beside it.
    static var runningLibvirtd: Int32? {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let pid = Int32(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  stat.contains("(libvirtd)"), !stat.contains(") Z ") else { continue }
            return pid
        }
        return nil
    }

    /// Starts libvirtd with `hook` (a shell script) as its qemu hook.
    init(directory: URL, hook: String?) throws {
        self.directory = directory
        uri = "qemu:///system?socket=\(directory.path)/libvirt-sock"
        hooks = directory.appendingPathComponent("hooks")
        pidFile = directory.appendingPathComponent("libvirtd.pid").path
        logFile = directory.appendingPathComponent("libvirtd.log").path
        try FileManager.default.createDirectory(at: hooks, withIntermediateDirectories: true)
        if let hook {
            let path = hooks.appendingPathComponent("qemu").path
            try hook.write(toFile: path, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
        }
        try """
            unix_sock_dir = "\(directory.path)"
            log_outputs = "3:file:\(logFile)"
            """.write(toFile: directory.appendingPathComponent("libvirtd.conf").path, atomically: true, encoding: .utf8)
        try """
            user = "root"
            group = "root"
            dynamic_ownership = 0
            remember_owner = 0
            stdio_handler = "file"
            """.write(toFile: directory.appendingPathComponent("qemu.conf").path, atomically: true, encoding: .utf8)
        if !FileManager.default.fileExists(atPath: "/etc/libvirt/hooks") {
            try FileManager.default.createDirectory(atPath: "/etc/libvirt/hooks", withIntermediateDirectories: true)
        }
        try start()
    }

    deinit { stop() }

    /// libvirtd in a private mount namespace with our hooks and qemu.conf over the machine's. `-d` returns
    /// once the daemon is up (its parent waits for the child's word).
    private func start() throws {
        let script = """
            mount --bind "$0/hooks" /etc/libvirt/hooks && mount --bind "$0/qemu.conf" /etc/libvirt/qemu.conf \
            && exec /usr/sbin/libvirtd -d -f "$0/libvirtd.conf" -p "$0/libvirtd.pid"
            """
        try? FileManager.default.removeItem(atPath: pidFile)
        // Not Foundation's Process: it learns of its child's exit from a descriptor the child inherits, which
        // the daemonized libvirtd would hold for ever. posix_spawn passes nothing but the output file.
        let startLog = directory.appendingPathComponent("libvirtd-start.log").path
        let status = try ProcessControl.waitForExit(try ProcessControl.spawn(
            "/usr/bin/unshare", arguments: ["--mount", "--propagation", "private", "/bin/sh", "-c", script, directory.path], outputPath: startLog))
        guard status == 0 else {
            throw TestTimeout(description: "libvirtd did not start (exit \(status)): \((try? String(contentsOfFile: startLog, encoding: .utf8)) ?? "")\n\(log)")
        }
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)),
               FileManager.default.fileExists(atPath: directory.appendingPathComponent("libvirt-sock").path) {
                processID = pid
                return
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw TestTimeout(description: "libvirtd wrote no pid file or socket within 30 s\n\(log)")
    }

    /// Stops libvirtd (SIGTERM, then SIGKILL after 10 s); its domains keep running, as with a real restart.
    func stop() {
        guard let pid = processID else { return }
        processID = nil
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while kill(pid, 0) == 0 && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
    }

    func restart() throws {
        stop()
        try start()
    }

    var log: String { String((try? String(contentsOfFile: logFile, encoding: .utf8))?.suffix(3000) ?? "") }

    /// A TCG domain booted from the guest test image: memfd RAM, the `org.ballonet.0` channel (with
    /// ballonet-guest started) or only a virtio balloon, Ballonet's metadata.
    /// `run`: a shell command the guest starts once booted (no double quotes).
    func domainXML(name: String, memoryMiB: Int, image: (kernel: URL, initramfs: URL), withAgent: Bool,
                   metadata: BallonetDomainMetadata, run: String? = nil) -> String {
        let channelSocket = withAgent ? directory.appendingPathComponent("\(name).sock").path : nil
        let agent = (channelSocket == nil ? "" : " ballonet.agent=1 ballonet.agent_args=\"--sample-seconds 2\"")
            + (run.map { " ballonet.run=\"\($0)\"" } ?? "")
        let cmdline = "console=ttyS0 panic=-1 ballonet.hostname=\(name)\(agent)"
            .replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        let channel = channelSocket.map {
            "<controller type='virtio-serial' index='0'/><channel type='unix'><source mode='bind' path='\($0)'/><target type='virtio' name='org.ballonet.0'/></channel>"
        } ?? ""
        return """
            <domain type='qemu'>
              <name>\(name)</name>
              <metadata>\(metadata.element.replacingOccurrences(of: "<vm>", with: "<ballonet:vm xmlns:ballonet='\(BallonetDomainMetadata.namespace)'>").replacingOccurrences(of: "</vm>", with: "</ballonet:vm>"))</metadata>
              <memory unit='MiB'>\(memoryMiB)</memory>
              <currentMemory unit='MiB'>\(memoryMiB)</currentMemory>
              <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
              <vcpu>1</vcpu>
              <os>
                <type arch='x86_64' machine='pc'>hvm</type>
                <kernel>\(image.kernel.path)</kernel>
                <initrd>\(image.initramfs.path)</initrd>
                <cmdline>\(cmdline)</cmdline>
              </os>
              <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
              <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
              <devices>
                <emulator>/usr/bin/qemu-system-x86_64</emulator>
                <serial type='file'><source path='\(directory.path)/\(name)-console.log'/><target port='0'/></serial>
                \(channel)
                <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
                <memballoon model='virtio'><stats period='2'/></memballoon>
                <video><model type='none'/></video>
              </devices>
            </domain>
            """
    }
}
