// `make bench-sharing`: page sharing on the same three TCG guests (anonymous RAM, sharing on, booted from one
// image, each holding the same 96 MiB of data), steered in turn by Ballonet's controller (ballonet-host), by
// oVirt MoM's fixed KSM rules (as ksmtuned has them) and by the kernel's scan-time advisor left to itself:
// MiB saved after 1, 2 and 5 minutes and ksmd CPU-seconds per GiB saved. Each run starts from nothing merged
// (KSM run = 2 first). Then the trade-off of reclaim for a VM with sharing on: a 256 MiB balloon reclaimed by
// pageout into host swap and by KSM's zero page with no swap, each on a fresh guest: how fast, at what CPU.
// BENCH_SHARING_PARTS=controllers or =reclaim runs one half. Prints a Markdown report (the Makefile keeps a
// copy in docs/benchmarks/sharing.md). Needs root, QEMU, KSM.
import BallonetHost
import BallonetLinux
import BallonetTestSupport
import BallonetWire
import Foundation

let guestMiB = 512
let dataMiB = 96
let checkpoints: [Double] = [60, 120, 300]
/// BENCH_SHARING_PARTS=controllers or =reclaim runs one half (default: both).
let parts = ProcessInfo.processInfo.environment["BENCH_SHARING_PARTS"] ?? "controllers,reclaim"
let runControllers = parts.contains("controllers"), runReclaim = parts.contains("reclaim")

guard getuid() == 0 else { Benchmark.fail("run as root: QEMU guests and /sys/kernel/mm/ksm") }
guard KSMControl.isAvailable, let ksmd = KSMDaemon.processID() else { Benchmark.fail("this kernel has no KSM") }
let original = try KSMControl.read()
let hostRAM = try ProcFiles.meminfo().memTotal

func ksmdCPU() -> Double { Double((try? KSMDaemon.cpuNanoseconds(of: ksmd)) ?? 0) / 1e9 }
func saved() -> UInt64 { (try? KSMControl.read().savedBytes) ?? 0 }
func write(_ name: String, _ value: String) {
    do { try KSMControl.write(name, value) } catch { Benchmark.fail("cannot set KSM's \(name) to \(value): \(error)") }
}

/// Unmerges everything and puts the kernel's defaults back, so every run starts alike.
func resetKSM() {
    write("advisor_mode", "none")
    write("run", "2")
    let start = ContinuousClock.now
    while saved() > 0 && Benchmark.seconds(since: start) < 120 { Thread.sleep(forTimeInterval: 0.5) }
    write("run", "0")
    write("pages_to_scan", "100")
    write("sleep_millisecs", "20")
    write("use_zero_pages", "1")
}

let agent = try GuestImage.buildStaticAgent()
let image = try GuestImage.ensureBuilt(agent: agent)
let work = try TCGGuest.makeWorkDirectory(prefix: "bench-sharing")
var booted: [TCGGuest] = []
defer {
    for guest in booted { guest.stop() }
    // KSM as it was before the benchmark (merged pages unmerged first).
    try? KSMControl.write("advisor_mode", "none")
    try? KSMControl.write("run", "2")
    try? KSMControl.write("run", "\(original.run)")
    try? KSMControl.write("pages_to_scan", "\(original.pagesToScan)")
    try? KSMControl.write("sleep_millisecs", "\(original.sleepMillis)")
    try? KSMControl.write("use_zero_pages", original.useZeroPages ? "1" : "0")
    if let mode = original.advisorMode { try? KSMControl.write("advisor_mode", mode) }
}
for index in 1...3 {
    booted.append(try TCGGuest.boot(name: "share\(index)", memoryMiB: guestMiB, kernel: image.kernel, initramfs: image.initramfs,
                                    appendArguments: index == 3 ? "ballonet.agent=1" : "", ramBacking: .anonymous, sharing: true,
                                    workDirectory: work.appendingPathComponent("share\(index)")))
}
let guests = booted
for guest in guests {
    _ = try guest.waitUntilReady(timeout: 300)
    // The same application data in each guest.
    _ = try guest.startKeep(mib: dataMiB, seed: 5)
}
let mergeable = guests.reduce(UInt64(0)) { $0 + ((try? $1.residentGuestRAMBytes) ?? 0) }

guard mergeable > 0 else { Benchmark.fail("cannot read the guests' resident RAM") }

/// The guests' [[vm]] tables. Each has a fixed target of all its RAM, so the agent in share3 keeps an empty
/// balloon and the savings are KSM's alone, as in the runs without ballonet-host.
let vmTables = guests.map { guest in
    "[[vm]]\nname = \"\(guest.name)\"\nqmp_socket = \"\(guest.qmpSocketPath)\"\nport_socket = \"\(guest.portSocketPath)\"\nswap = \"off\"\nmin_mib = 64\n"
        + "target_mib = \(guestMiB)\n"
}.joined()

/// A ballonet-host attached to the guests with `config` (before the VMs), logging to `log`.
func startHost(_ config: String, log: String) throws -> Process {
    let path = work.appendingPathComponent("host.toml").path
    try (config + vmTables).write(toFile: path, atomically: true, encoding: .utf8)
    let host = Process()
    host.executableURL = try BuiltCommand.path("ballonet-host")
    host.arguments = ["run", "--config", path, "--state-directory", work.appendingPathComponent("state").path,
                      "--control-socket", work.appendingPathComponent("control.sock").path, "--metrics-address", "", "--libvirt-uri", "",
                      "--settings-file", work.appendingPathComponent("settings.json").path]
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    host.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    host.standardOutput = host.standardError
    try host.run()
    return host
}

struct Run {
    var name: String
    var savedAt: [UInt64] = []
    var cpuAt: [Double] = []
}

/// Runs one controller for the last checkpoint's time; `tick` is called every second with the seconds since the start.
func measure(_ name: String, tick: (Double) -> Void) -> Run {
    resetKSM()
    var run = Run(name: name)
    let cpu0 = ksmdCPU()
    let start = ContinuousClock.now
    var next = 0
    while next < checkpoints.count {
        let elapsed = Benchmark.seconds(since: start)
        tick(elapsed)
        if elapsed >= checkpoints[next] {
            run.savedAt.append(saved())
            run.cpuAt.append(ksmdCPU() - cpu0)
            next += 1
            continue
        }
        Thread.sleep(forTimeInterval: 1)
    }
    return run
}

// Memory short for all three: Ballonet gets a budget a third above what the VMs hold and thresholds at
// 50/40 % (its soft state); MoM's and ksmtuned's rules boost while free memory is under their 20 %.
let heldMiB = mergeable >> 20
let shortConfig = "[host]\nbudget_mib = \(heldMiB * 4 / 3)\n[policy]\nhigh_percent = 50\nsoft_percent = 40\nhard_percent = 2\nlow_percent = 1\n"

var runs: [Run] = []
if runControllers {
    let host = try startHost(shortConfig, log: work.appendingPathComponent("host-ballonet.log").path)
    runs.append(measure("Ballonet (ballonet-host, memory short)") { _ in })
    host.terminate()
    host.waitUntilExit()
}
// MoM's rules: every 10 s (MoM's policy interval), pages per scan +300 under pressure within 64–1250, sleep
// 10 ms per 16 GiB of host RAM, KSM on.
var momPages = 0
var momNext = 0.0
let momSleep = max(1, Int((10 * 16 * Double(1 << 30) / Double(hostRAM)).rounded()))
if runControllers {
    runs.append(measure("MoM / ksmtuned fixed rules (memory short)") { elapsed in
        guard elapsed >= momNext else { return }
        momNext += 10
        momPages = min(max(momPages + 300, 64), 1250)
        write("pages_to_scan", "\(momPages)")
        write("sleep_millisecs", "\(momSleep)")
        write("run", "1")
    })
    // The kernel's advisor left to itself: its defaults (a pass in 200 s, at most 70 % of a core).
    runs.append(measure("kernel scan-time advisor alone (its defaults)") { elapsed in
        guard elapsed < 1 else { return }
        write("advisor_mode", "scan-time")
        write("run", "1")
    })
    resetKSM()
}

// Reclaim of a 256 MiB balloon, each way on a fresh guest of its own (ballonet-guest, anonymous RAM, sharing on,
// 300 MiB touched first): pageout into a swap file, and the zero page without swap.
struct ReclaimRun { var name: String; var seconds: Double; var freedMiB: UInt64; var ksmdSeconds: Double; var swappedMiB: UInt64; var mode: String }
func reclaim(_ name: String, swap: Bool) throws -> ReclaimRun {
    let label = swap ? "pageout" : "zero"
    let guest = try TCGGuest.boot(name: "reclaim-\(label)", memoryMiB: guestMiB, kernel: image.kernel, initramfs: image.initramfs,
                                  appendArguments: "ballonet.agent=1", ramBacking: .anonymous, sharing: true,
                                  workDirectory: work.appendingPathComponent("reclaim-\(label)"))
    defer { guest.stop() }
    _ = try guest.waitUntilReady(timeout: 300)
    try guest.touchAndFree(megabytes: 300)
    let swapFile = swap ? try TemporarySwapFile(megabytes: 1024, name: "ballonet-bench-sharing") : nil
    defer { swapFile?.remove() }
    resetKSM()
    let config = "[steering]\ninflate_step_mib = 1024\n[[vm]]\nname = \"\(guest.name)\"\nqmp_socket = \"\(guest.qmpSocketPath)\"\n"
        + "port_socket = \"\(guest.portSocketPath)\"\nswap = \"off\"\nmin_mib = 64\n"
    let path = work.appendingPathComponent("host-reclaim.toml").path
    try config.write(toFile: path, atomically: true, encoding: .utf8)
    let socket = work.appendingPathComponent("reclaim.sock").path
    let host = Process()
    host.executableURL = try BuiltCommand.path("ballonet-host")
    host.arguments = ["run", "--config", path, "--state-directory", work.appendingPathComponent("state-\(label)").path,
                      "--control-socket", socket, "--metrics-address", "", "--libvirt-uri", "",
                      "--settings-file", work.appendingPathComponent("settings-\(label).json").path]
    let log = work.appendingPathComponent("host-reclaim-\(label).log").path
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    host.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    host.standardOutput = host.standardError
    try host.run()
    defer { host.terminate(); host.waitUntilExit() }
    func account() -> VMAccount? { (try? ControlClient.request(ControlRequest(command: "status"), socket: socket))?.status?.vms.first }
    var waited = ContinuousClock.now
    while account()?.state != "established" {
        if Benchmark.seconds(since: waited) > 120 { Benchmark.fail("no ballonet-guest session in \(guest.name); log \(log)") }
        Thread.sleep(forTimeInterval: 0.2)
    }
    let before = try guest.residentGuestRAMBytes
    let cpu0 = ksmdCPU()
    let start = ContinuousClock.now
    _ = try ControlClient.request(ControlRequest(command: "set-target", vm: guest.name, mib: UInt64(guestMiB - 256)), socket: socket)
    waited = ContinuousClock.now
    var seconds = 0.0
    var last = account()
    while true {
        last = account()
        let resident = try guest.residentGuestRAMBytes
        // The guest's floor may keep the balloon a few MiB short of 256; 200 MiB off the host is the mark.
        if (last?.balloonBytes ?? 0) >= 200 << 20 && before > resident && before - resident >= 200 << 20 {
            seconds = Benchmark.seconds(since: start)
            break
        }
        if Benchmark.seconds(since: waited) > 300 { seconds = .infinity; break }
        Thread.sleep(forTimeInterval: 0.1)
    }
    let after = try guest.residentGuestRAMBytes
    return ReclaimRun(name: name, seconds: seconds, freedMiB: before > after ? (before - after) >> 20 : 0, ksmdSeconds: ksmdCPU() - cpu0,
                      swappedMiB: (last?.swappedBytes ?? 0) >> 20, mode: last?.memoryMode ?? "-")
}
let pageout = runReclaim ? try reclaim("pageout into host swap", swap: true) : nil
let zeroPage = runReclaim ? try reclaim("KSM's zero page, no host swap", swap: false) : nil

func mib(_ bytes: UInt64) -> String { "\(bytes >> 20)" }
func fixed(_ value: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", value) }
print("# Page-sharing benchmark: Ballonet's KSM controller, MoM's rules and the kernel's advisor")
print()
if runControllers {
    let setup = "Ballonet \(BallonetVersion.software). Three \(guestMiB) MiB TCG guests (anonymous RAM, mem-merge on, 1 vCPU) booted from one "
        + "image, each holding the same \(dataMiB) MiB of data, \(mib(mergeable)) MiB resident in all; host RAM \(hostRAM >> 30) GiB. "
    print(setup + "Each controller starts from nothing merged (KSM run = 2 first); saved = (pages_sharing + ksm_zero_pages) × 4 KiB; "
          + "CPU is ksmd's (/proc/<ksmd>/schedstat). Memory is short for all three: Ballonet has a budget a third above what the VMs "
          + "hold (its soft state), MoM's rules boost as under their 20 % free threshold, the advisor runs as it likes.")
    print()
    print("| controller | saved after 1 min | after 2 min | after 5 min | ksmd CPU-s in 5 min | CPU-s per GiB saved |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for run in runs {
        let perGiB = run.savedAt.last.map { $0 > 0 ? run.cpuAt.last! / (Double($0) / Double(1 << 30)) : .infinity } ?? .infinity
        print("| \(run.name) | \(run.savedAt.map { mib($0) + " MiB" }.joined(separator: " | ")) | \(fixed(run.cpuAt.last ?? 0, 1)) | \(fixed(perGiB, 1)) |")
    }
    print()
    print("MoM's rules here: pages_to_scan +300 every 10 s (64–1250), sleep_millisecs \(momSleep) (10 ms per 16 GiB of host RAM). "
          + "Ballonet: ksmd at most 20 % of a core while memory is short, raw rate paced by ksmd's measured CPU.")
    print()
}
if let pageout, let zeroPage {
    print("## Reclaiming a 256 MiB balloon of an anonymous-RAM guest with sharing on")
    print()
    print("| reclaim | time until 200 MiB left the host | host memory freed | ksmd CPU-s | host swap used |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for run in [pageout, zeroPage] {
        print("| \(run.name) | \(run.seconds.isFinite ? fixed(run.seconds, 1) + " s" : "not within 300 s") | \(run.freedMiB) MiB | \(fixed(run.ksmdSeconds, 2)) | \(run.swappedMiB) MiB |")
    }
    print()
    print("Mode as ballonet-host reported it: pageout run: \(pageout.mode); zero-page run: \(zeroPage.mode).")
}
