// `make bench-sampling`: what the host's idle page sampling costs, and how fast hypervisor swapping takes memory
// out of a guest, on one 1 GiB TCG guest (memfd RAM, no guest agent) with most of its RAM resident:
// - one sampling round: clear_refs of QEMU, and the smaps read that yields Referenced, timed over 20 rounds
//   (median and worst), per GiB of guest RAM;
// - swap-out: 512 MiB taken by the pageout swapper (random 2 MiB ranges, one call per round as the engine
//   does) and by the memory cgroup limit (128 MiB steps), MiB/s of each into a swap file made here.
// Prints a Markdown report (the Makefile keeps a copy in docs/benchmarks/sampling.md). Needs root and QEMU.
import BallonetHost
import BallonetLinux
import BallonetTestSupport
import Foundation

let guestMiB: UInt64 = 1024
let swapOutMiB: UInt64 = 512

func milliseconds(_ value: Double) -> String { String(format: "%.2f", value * 1000) }

guard getuid() == 0 else { Benchmark.fail("run as root: QEMU guests, cgroups and swap") }
let image = try GuestImage.ensureBuilt(agent: try GuestImage.buildStaticAgent())
let hierarchy = MemoryCgroup.hierarchy()
let group = try hierarchy.map { try MemoryCgroup.create("ballonet-bench/sampling-\(getpid())", hierarchy: $0) }
let work = try TCGGuest.makeWorkDirectory(prefix: "bench-sampling")
let guest = try TCGGuest.boot(name: "bench-sampling", memoryMiB: Int(guestMiB), kernel: image.kernel, initramfs: image.initramfs,
                              memoryCgroup: group?.path, workDirectory: work)
defer {
    guest.stop()
    try? group?.remove()
    if let hierarchy { try? FileSystem.removeDirectory(hierarchy.root + "/ballonet-bench") }
}
_ = try guest.waitUntilReady(timeout: 300)
try guest.touchAndFree(megabytes: 800)

// Attach as the host agent does: the RAM map over QMP, QEMU's mapping of each block.
let qmp = try QMPClient(path: guest.qmpSocketPath, timeout: .seconds(5))
let processID = try qmp.peerProcessID()
let map = try GuestRAMMap.parse(memoryTree: try qmp.humanMonitor("info mtree -f"), guestRAMBlocks: ["pc.ram", "ram0"])
let reclaimer = try GuestRAMReclaimer(processID: processID, map: map) { address in
    let answer = try qmp.humanMonitor("gpa2hva 0x\(String(address, radix: 16))")
    guard let text = answer.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines), text.hasPrefix("0x"),
          let value = UInt64(text.dropFirst(2), radix: 16) else { throw QMPError("gpa2hva answered \(answer)") }
    return value
}

// Sampling: clear, wait a moment (the guest runs), read.
var clears: [Double] = [], reads: [Double] = [], counters: [Double] = []
var figures = try reclaimer.guestRAMFigures()
for _ in 0..<20 {
    var start = ContinuousClock.now
    try ProcFiles.clearReferencedBits(of: .id(processID))
    clears.append(Benchmark.seconds(since: start))
    Thread.sleep(forTimeInterval: 0.2)
    start = ContinuousClock.now
    figures = try reclaimer.guestRAMFigures()
    reads.append(Benchmark.seconds(since: start))
    start = ContinuousClock.now
    _ = try ProcFiles.status(of: .id(processID))
    counters.append(Benchmark.seconds(since: start))
}
clears.sort()
reads.sort()
counters.sort()
let residentMiB = figures.residentBytes >> 20
let roundMedian = clears[clears.count / 2] + reads[reads.count / 2]

/// Takes `swapOutMiB` out of the guest with `swapper`, one `apply` per round as the engine does (`step` MiB
/// lower each time for the cgroup; the pageout swapper takes what is above the limit in one call).
@MainActor func swapOut(_ swapper: HypervisorSwapper, stepMiB: UInt64) throws -> (seconds: Double, rounds: Int, fromMiB: UInt64, toMiB: UInt64) {
    let before = try reclaimer.guestRAMFigures()
    let goal = before.residentBytes - (swapOutMiB << 20)
    var limit = before.residentBytes
    var rounds = 0
    let start = ContinuousClock.now
    var now = before
    while now.residentBytes > goal + (8 << 20) {
        limit = max(goal, limit > stepMiB << 20 ? limit - (stepMiB << 20) : 0)
        _ = try swapper.apply(limit: limit, figures: now, reclaimer: reclaimer)
        rounds += 1
        now = try reclaimer.guestRAMFigures()
        if rounds > 200 { Benchmark.fail("\(swapper.mechanism.name): resident stuck at \(now.residentBytes >> 20) MiB, goal \(goal >> 20) MiB") }
    }
    let elapsed = Benchmark.seconds(since: start)
    _ = try swapper.apply(limit: nil, figures: now, reclaimer: reclaimer)
    return (elapsed, rounds, before.residentBytes >> 20, now.residentBytes >> 20)
}

let swap = try TemporarySwapFile(megabytes: 2048, name: "ballonet-bench-sampling")
defer { swap.remove() }
let pageout = try swapOut(HypervisorSwapper(mechanism: .pageout), stepMiB: swapOutMiB)
// Back in: the guest touches its memory again.
try guest.touchAndFree(megabytes: 800)
let cgroup = try group.map { try swapOut(HypervisorSwapper(mechanism: .cgroup($0)), stepMiB: 128) }

var report = """
# Host idle page sampling and hypervisor swapping (`make bench-sampling`)

One \(guestMiB) MiB TCG guest (memfd RAM, no guest agent), \(residentMiB) MiB of it resident; QEMU pid \(processID).

## One sampling round (20 rounds)

| step | median ms | worst ms | median ms per GiB of guest RAM |
| --- | ---: | ---: | ---: |
| clear_refs (clear QEMU's accessed bits) | \(milliseconds(clears[clears.count / 2])) | \(milliseconds(clears.last!)) | \(milliseconds(clears[clears.count / 2] * 1024 / Double(guestMiB))) |
| smaps read (Rss, Swap, Referenced of guest RAM) | \(milliseconds(reads[reads.count / 2])) | \(milliseconds(reads.last!)) | \(milliseconds(reads[reads.count / 2] * 1024 / Double(guestMiB))) |
| one sample (both) | \(milliseconds(roundMedian)) | | \(milliseconds(roundMedian * 1024 / Double(guestMiB))) |
| QEMU's status counters (the resident figure between smaps reads) | \(milliseconds(counters[counters.count / 2])) | \(milliseconds(counters.last!)) | (does not grow with RAM) |

At the default 5 s period a sample is \(String(format: "%.3f", roundMedian / 5 * 100)) % of one core for this VM (the sampler's bound is 1 %).
On a calm host the engine reads smaps only for samples (and at least every 5 s); the other rounds read the
status counters. While memory is short, or the VM is swapped or paused, it reads smaps every round.

## Swap-out of \(swapOutMiB) MiB into a swap file

| mechanism | resident MiB before → after | rounds | seconds | MiB/s |
| --- | --- | ---: | ---: | ---: |
| pageout, random 2 MiB ranges | \(pageout.fromMiB) → \(pageout.toMiB) | \(pageout.rounds) | \(String(format: "%.2f", pageout.seconds)) | \(String(format: "%.0f", Double(pageout.fromMiB - pageout.toMiB) / pageout.seconds)) |

"""
if let cgroup {
    report += "| memory cgroup \(group!.version.rawValue) limit, 128 MiB steps | \(cgroup.fromMiB) → \(cgroup.toMiB) | \(cgroup.rounds) | \(String(format: "%.2f", cgroup.seconds)) | \(String(format: "%.0f", Double(cgroup.fromMiB - cgroup.toMiB) / cgroup.seconds)) |\n"
} else {
    report += "| memory cgroup | (this host has no memory cgroup controller) | | | |\n"
}
report += """

The pageout swapper takes what is above its limit in one call, as many random 2 MiB ranges as the
guest's resident fraction says hold that much; ranges that were not resident leave a remainder the next
round measures and takes. The cgroup is lowered 128 MiB at a time, and the kernel reclaims inside each write.
In the agent both are paced by the policy: a limit falls by at most `swap_step_mib` (128) a second per VM.

"""
print(report, terminator: "")
