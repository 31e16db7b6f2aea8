// `make bench-inflate`: the same 1 GiB TCG guest, in one boot, inflated by 768 MiB once through the kernel's
// virtio-balloon (QMP `balloon`) and once through Ballonet (ballonet-guest driven by a real ballonet-host
// that punches the memory behind each batch): MiB/s of each, host memory actually freed by each (QEMU's
// resident guest RAM from /proc/<pid>/smaps), and the ratio. Prints a Markdown report (the Makefile keeps
// a copy in docs/benchmarks/inflate.md). Needs root and QEMU.
import BallonetHost
import BallonetLinux
import BallonetTestSupport
import BallonetWire
import Foundation

let guestMiB: UInt64 = 1024
let balloonMiB: UInt64 = 768

guard getuid() == 0 else { Benchmark.fail("run as root: QEMU guests and reclaim") }
let agent = try GuestImage.buildStaticAgent()
let image = try GuestImage.ensureBuilt(agent: agent)
let work = try TCGGuest.makeWorkDirectory(prefix: "bench-inflate")
let guest = try TCGGuest.boot(name: "bench-inflate", memoryMiB: Int(guestMiB), kernel: image.kernel, initramfs: image.initramfs,
                              appendArguments: "ballonet.agent=1", virtioBalloon: true, workDirectory: work)
defer { guest.stop() }
_ = try guest.waitUntilReady(timeout: 300)
_ = try guest.run("modprobe virtio_balloon 2>/dev/null; true", timeout: 30)

// The kernel's virtio-balloon.
try guest.touchAndFree(megabytes: Int(balloonMiB))
let kernelBefore = try guest.residentGuestRAMBytes
var start = ContinuousClock.now
_ = try guest.qmp(#"{"execute":"balloon","arguments":{"value":\#((guestMiB - balloonMiB) << 20)}}"#)
while true {
    let actual = (TCGGuest.qmpNumber(try guest.qmp(#"{"execute":"query-balloon"}"#), "actual") ?? 0) >> 20
    if actual <= guestMiB - balloonMiB + 4 { break }
    if Benchmark.seconds(since: start) > 600 { Benchmark.fail("virtio-balloon stuck at \(actual) MiB") }
    Thread.sleep(forTimeInterval: 0.02)
}
let kernelSeconds = Benchmark.seconds(since: start)
let kernelAfter = try guest.residentGuestRAMBytes
_ = try guest.qmp(#"{"execute":"balloon","arguments":{"value":\#(guestMiB << 20)}}"#)
Thread.sleep(forTimeInterval: 3)

// Ballonet: ballonet-guest (started at boot) and the built ballonet-host, attached to this QEMU.
try guest.touchAndFree(megabytes: Int(balloonMiB))
let config = work.appendingPathComponent("host.toml").path
// One inflate step for the whole balloon: the benchmark measures how fast the balloon goes, as QMP
// `balloon` asks the kernel's for all of it at once (the default paces inflation at 256 MiB a second).
try "[steering]\ninflate_step_mib = 1024\n".write(toFile: config, atomically: true, encoding: .utf8)
let socket = work.appendingPathComponent("control.sock").path
let host = Process()
host.executableURL = try BuiltCommand.path("ballonet-host")
host.arguments = ["run", "--config", config, "--state-directory", work.appendingPathComponent("state").path,
                  "--control-socket", socket, "--attach", "bench,\(guest.qmpSocketPath),\(guest.portSocketPath)"]
let hostLog = work.appendingPathComponent("host.log")
_ = FileManager.default.createFile(atPath: hostLog.path, contents: nil)
host.standardError = try FileHandle(forWritingTo: hostLog)
try host.run()
defer { host.terminate(); host.waitUntilExit() }

func account() -> VMAccount? {
    (try? ControlClient.request(ControlRequest(command: "status"), socket: socket))?.status?.vms.first
}
let connected = Date()
while account()?.state != "established" {
    if Date().timeIntervalSince(connected) > 120 { Benchmark.fail("no session with the guest agent; host log: \(hostLog.path)") }
    Thread.sleep(forTimeInterval: 0.1)
}
let ballonetBefore = try guest.residentGuestRAMBytes
start = ContinuousClock.now
_ = try ControlClient.request(ControlRequest(command: "set-target", vm: "bench", mib: guestMiB - balloonMiB), socket: socket)
while (account()?.balloonBytes ?? 0) < (balloonMiB - 1) << 20 {
    if Benchmark.seconds(since: start) > 600 { Benchmark.fail("Ballonet's balloon stuck at \((account()?.balloonBytes ?? 0) >> 20) MiB") }
    Thread.sleep(forTimeInterval: 0.02)
}
let ballonetSeconds = Benchmark.seconds(since: start)
Thread.sleep(forTimeInterval: 0.5)
let ballonetAfter = try guest.residentGuestRAMBytes
let final = account()

func row(_ name: String, _ seconds: Double, _ before: UInt64, _ after: UInt64) -> String {
    let freed = before > after ? (before - after) >> 20 : 0
    return "| \(name) | \(String(format: "%.2f", seconds)) s | \(String(format: "%.0f", Double(balloonMiB) / seconds)) MiB/s | \(freed) MiB |"
}
print("# Inflate benchmark: Ballonet against the kernel's virtio-balloon")
print()
print("Ballonet \(BallonetVersion.software). One boot of a \(guestMiB) MiB TCG guest (memfd-backed RAM, 1 vCPU) whose memory was "
      + "touched first each time; \(balloonMiB) MiB inflated once through virtio-balloon (QMP `balloon`), once through "
      + "ballonet-guest driven by ballonet-host, which punches the memory behind every batch before acknowledging it. "
      + "Host memory freed is the drop in QEMU's resident guest RAM (/proc/<pid>/smaps).")
print()
print("| balloon | time | rate | host memory freed |")
print("| --- | ---: | ---: | ---: |")
print(row("kernel virtio-balloon", kernelSeconds, kernelBefore, kernelAfter))
print(row("Ballonet (ballonet-guest + ballonet-host)", ballonetSeconds, ballonetBefore, ballonetAfter))
print()
print("Ratio (Ballonet ÷ virtio-balloon, MiB/s): \(String(format: "%.2f", kernelSeconds / ballonetSeconds))× (goal ≥ 1.0). "
      + "The host agent counted \((final?.reclaimedBytes ?? 0) >> 20) MiB reclaimed in \(final?.batchesReclaimed ?? 0) batches, "
      + "\(final?.refusedMessages ?? 0) refused.")
