// `make bench-guest`: the guest agent's balloon against the kernel's virtio-balloon and against the guest
// kernel's own rate for what the balloon asks of it, side by side in one boot of a TCG guest per agent run,
// plus what the agent costs: PFN reports per GiB, its own memory, its idle CPU.
// Prints a Markdown report (the Makefile keeps a copy in docs/benchmarks/guest.md). Needs root and QEMU.
import BallonetGuest
import BallonetLinux
import BallonetTestSupport
import BallonetWire
import Foundation

let mib: UInt64 = 256  // pages
let guestMiB = 1024
let balloonMiB: UInt64 = 768

// MARK: PFN reports, on this machine's kernel

/// Pins 1 GiB in default batches on a tmpfs of its own, then times reading every batch's frames from
/// pagemap and encoding its report: what one report costs the agent, per GiB of balloon.
func reportCostPerGiB(hugePages: Bool) throws -> (milliseconds: Double, bytes: Int, ranges: Int) {
    let directory = "/tmp/ballonet-bench-\(getpid())/balloon-\(hugePages)"
    defer {
        try? FileSystem.unmount(directory, detach: true)
        try? FileManager.default.removeItem(atPath: "/tmp/ballonet-bench-\(getpid())")
    }
    let balloon = try BalloonFile(directory: directory, mountTmpfs: true, hugePages: hugePages, maxBatchPages: 4 * mib)
    var batches: [PinnedBatch] = []
    for _ in 0..<256 { batches.append(try balloon.pin(pages: 4 * mib)) }
    defer { for batch in batches { try? balloon.release(batchAt: batch.fileOffset) } }
    var bytes = 0, ranges = 0
    let start = ContinuousClock.now
    for (index, batch) in batches.enumerated() {
        let (list, order) = try balloon.frames(ofBatchAt: batch.fileOffset)
        ranges += list.count
        bytes += try FrameEncoder.encode(.inflateReport(InflateReport(hostSessionID: 1, batchID: UInt64(index), pageOrder: order,
                                                                      balloonPagesAfter: 0, ranges: list))).count
    }
    return (Benchmark.seconds(since: start) * 1000, bytes, ranges)
}

// MARK: The TCG guest

/// Asks the kernel's virtio-balloon for `targetMiB` of guest RAM and returns the seconds until QEMU
/// reports it there (within 4 MiB).
func kernelBalloon(_ guest: TCGGuest, toMiB targetMiB: UInt64) throws -> Double {
    let start = ContinuousClock.now
    _ = try guest.qmp(#"{"execute":"balloon","arguments":{"value":\#(targetMiB << 20)}}"#)
    while true {
        let actual = TCGGuest.qmpNumber(try guest.qmp(#"{"execute":"query-balloon"}"#), "actual") ?? 0
        if actual >> 20 >= targetMiB - 4 && actual >> 20 <= targetMiB + 4 { return Benchmark.seconds(since: start) }
        if Benchmark.seconds(since: start) > 600 { Benchmark.fail("virtio-balloon stuck at \(actual >> 20) MiB on the way to \(targetMiB) MiB") }
        Thread.sleep(forTimeInterval: 0.05)
    }
}

/// Sets the agent's target and acknowledges every batch at once (as a host that reclaims instantly);
/// returns the seconds until the balloon reports the target, and the page order of the batches.
func agentBalloon(_ guest: TCGGuest, _ host: PeerConnection, session: UInt64, toPages target: UInt64) throws -> (seconds: Double, hugeBatches: Int, batches: Int) {
    let start = ContinuousClock.now
    try host.send(.setTarget(SetTarget(balloonPages: target)))
    var size: UInt64 = .max, huge = 0, batches = 0
    while size != target {
        let envelope: Envelope
        do {
            envelope = try host.next(timeout: .seconds(120)) {
                switch $0 { case .inflateReport, .deflateReport: true; default: false }
            }
        } catch {
            let said = try? guest.run("tail -n 20 /run/ballonet-guest.log; grep -E 'MemAvailable|Mlocked' /proc/meminfo; cat /proc/pressure/memory", timeout: 30).output
            Benchmark.fail("the balloon stopped at \(size == .max ? "?" : "\(size / mib)") MiB on the way to \(target / mib) MiB (\(error)); the guest says:\n\(said ?? "nothing")")
        }
        switch envelope.message {
        case .inflateReport(let report):
            size = report.balloonPagesAfter
            batches += 1
            if report.pageOrder == 9 { huge += 1 }
            try host.send(.reclaimAck(ReclaimAck(hostSessionID: session, batchID: report.batchID, reclaimedPages: report.ranges.pageCount)))
        case .deflateReport(let report):
            size = report.balloonPagesAfter
        default: break
        }
    }
    return (Benchmark.seconds(since: start), huge, batches)
}

/// Starts the agent and answers its hello; the host side is connected first, as ballonet-host is when an
/// agent starts. Fails with the agent's log instead of waiting on.
func startAgent(_ guest: TCGGuest, _ host: PeerConnection, _ flags: String) throws -> UInt64 {
    _ = try guest.run("ballonet-guest --log-level info \(flags) > /run/ballonet-guest.log 2>&1 &", timeout: 30)
    let session = UInt64.random(in: 1...UInt64.max)
    do {
        _ = try host.handshake(sessionID: session, timeout: .seconds(60))
    } catch {
        let said = try? guest.run("cat /run/ballonet-guest.log; pidof ballonet-guest", timeout: 30).output
        Benchmark.fail("ballonet-guest \(flags) did not say hello within 60 s (\(error)); the guest says:\n\(said ?? "nothing")")
    }
    return session
}

func stopAgent(_ guest: TCGGuest, _ host: PeerConnection) throws {
    _ = try guest.run("kill $(pidof ballonet-guest); while pidof ballonet-guest >/dev/null; do sleep 0.1; done", timeout: 60)
    _ = try? host.collect(for: .milliseconds(200))
}

func fieldKiB(_ status: String, _ name: String) -> UInt64 {
    for line in status.split(separator: "\n") where line.hasPrefix(name + ":") {
        return UInt64(line.split(whereSeparator: { $0 == " " || $0 == "\t" })[1]) ?? 0
    }
    return 0
}

/// utime and stime from /proc/<pid>/stat, in clock ticks (10 ms): the 14th and 15th fields, counted
/// after the command's closing parenthesis.
func ticks(_ stat: String) -> (user: UInt64, system: UInt64) {
    guard let close = stat.lastIndex(of: ")") else { return (0, 0) }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    return (UInt64(fields[11]) ?? 0, UInt64(fields[12]) ?? 0)
}

/// The agent's CPU over `seconds` while the host side only answers pings: percent of one vCPU, and the
/// user and system ticks behind it.
func idleCPU(_ guest: TCGGuest, _ host: PeerConnection, seconds: Int) throws -> (percent: Double, user: UInt64, system: UInt64) {
    let before = ticks(try guest.run("cat /proc/$(pidof ballonet-guest)/stat", timeout: 30).output)
    let start = ContinuousClock.now
    _ = try host.collect(for: .seconds(seconds))
    let after = ticks(try guest.run("cat /proc/$(pidof ballonet-guest)/stat", timeout: 30).output)
    let user = after.user - before.user, system = after.system - before.system
    return (Double(user + system) / 100 / Benchmark.seconds(since: start) * 100, user, system)
}

func describeIdle(_ idle: (percent: Double, user: UInt64, system: UInt64), seconds: Int) -> String {
    String(format: "%.2f", idle.percent) + " % of one vCPU (\(idle.user + idle.system) ticks of 10 ms in \(seconds) s: \(idle.user) user, \(idle.system) system)"
}

/// The guest kernel alone doing what the agent's balloon asks of it: `ballonet-workload zero-fill` mlocks a
/// file on a huge=advise tmpfs (faulting in and zeroing 2 MiB pages), timed in the guest. It also leaves the
/// memory backed by the host, as in a guest that has run a while.
func zeroFill(_ guest: TCGGuest, mib: UInt64) throws -> (rate: Double, hugeMiB: UInt64) {
    let said = try guest.run("mkdir -p /run/zero-fill && (mountpoint -q /run/zero-fill || mount -t tmpfs -o size=100%,huge=advise zero-fill /run/zero-fill) "
                             + "&& ballonet-workload zero-fill \(mib) /run/zero-fill", timeout: 300)
    let fields = said.output.split(whereSeparator: { $0 == " " || $0 == "\n" })
    func field(_ name: String) -> Substring? { fields.first { $0.hasPrefix(name + "=") }?.dropFirst(name.count + 1) }
    guard said.status == 0, let seconds = field("seconds").flatMap({ Double($0) }), seconds > 0,
          let huge = field("huge_mib").flatMap({ UInt64($0) }) else {
        Benchmark.fail("zero-fill \(mib) failed: \(said.output)")
    }
    return (Double(mib) / seconds, huge)
}

guard getuid() == 0 else { Benchmark.fail("run as root: the agent mounts a tmpfs and pins pages") }
print("# Guest agent benchmark")
print()
print("Ballonet \(BallonetVersion.software). Inflate \(balloonMiB) MiB of a \(guestMiB) MiB TCG guest (memfd-backed RAM, 1 vCPU); "
      + "one boot per agent run, and in each boot, one after the other: the guest kernel alone mlocking \(balloonMiB) MiB of a file "
      + "on a tmpfs in 2 MiB pages (`ballonet-workload zero-fill`: what the agent's balloon asks of the kernel, without the agent; "
      + "it also leaves the guest's memory backed by the host), the kernel's virtio-balloon, the same zero-fill twice more, then "
      + "ballonet-guest. The host side of ballonet-guest acknowledges each batch at once (it reclaims nothing here), so the rates "
      + "are the guest's own. The zero-fill is the most a balloon that pins pages the guest kernel must zero can reach here.")
print()

let agentBinary = try GuestImage.buildStaticAgent()
let image = try GuestImage.ensureBuilt(agent: agentBinary)
let idleSeconds = 60
let heldMiB: UInt64 = 256
var rows: [(boot: Int, name: String, inflate: Double, deflate: Double?, note: String)] = []
var ratios: [String] = []
var costLines: [String] = []
// BENCH_GUEST_AGENTS=4k runs only the 4 KiB agent (=2m only the default one); both by default.
let agentRuns = [("2m", "ballonet-guest, 2 MiB pages (default)", ""), ("4k", "ballonet-guest, 4 KiB pages (--no-huge-pages)", "--no-huge-pages")]
    .filter { (ProcessInfo.processInfo.environment["BENCH_GUEST_AGENTS"] ?? "2m,4k").split(separator: ",").contains(Substring($0.0)) }
for (boot, (_, name, flags)) in agentRuns.enumerated().map({ ($0.offset + 1, $0.element) }) {
    // A boot of its own for each agent: a second agent run in a guest where the first had run stalled three
    // times in this bench, with the guest idle (vCPU halted) until its console was typed into, at the
    // handshake, the inflate or the workload before it; the cause was not found (see the guest issue's note).
    let work = try TCGGuest.makeWorkDirectory(prefix: "bench-guest")
    let guest = try TCGGuest.boot(name: "bench-guest", memoryMiB: guestMiB, kernel: image.kernel, initramfs: image.initramfs,
                                  virtioBalloon: true, workDirectory: work)
    defer { guest.stop() }
    _ = try guest.waitUntilReady(timeout: 300)
    _ = try guest.run("modprobe virtio_balloon 2>/dev/null; true", timeout: 30)

    // Every balloon below starts from guest memory the host backs: a fill before the kernel balloon, and
    // two after it (the kernel balloon's deflate leaves 768 MiB the host punched out and must back again,
    // which the first of the two pays for). The second is the kernel's own rate.
    _ = try zeroFill(guest, mib: balloonMiB)
    let kernelInflate = try kernelBalloon(guest, toMiB: UInt64(guestMiB) - balloonMiB)
    let kernelDeflate = try kernelBalloon(guest, toMiB: UInt64(guestMiB))
    let kernelRate = Double(balloonMiB) / kernelInflate
    let backingFill = try zeroFill(guest, mib: balloonMiB)
    let fill = try zeroFill(guest, mib: balloonMiB)
    rows.append((boot, "the guest kernel alone: mlock of a tmpfs file (zero-fill; \(String(format: "%.0f", backingFill.rate)) while the host backed it again)",
                 fill.rate, nil, "\(fill.hugeMiB) of \(balloonMiB) MiB in 2 MiB pages"))
    rows.append((boot, "kernel virtio-balloon (QMP balloon)", kernelRate, Double(balloonMiB) / kernelDeflate, "4 KiB pages"))
    let fillRate = fill.rate

    let host = try TestHostPeer.connect(toQEMUPort: guest.portSocketPath)
    let session = try startAgent(guest, host, flags)
    let inflate = try agentBalloon(guest, host, session: session, toPages: balloonMiB * mib)
    let deflate = try agentBalloon(guest, host, session: session, toPages: 0)
    let agentRate = Double(balloonMiB) / inflate.seconds
    rows.append((boot, name, agentRate, Double(balloonMiB) / deflate.seconds, "\(inflate.hugeBatches) of \(inflate.batches) batches in 2 MiB pages"))
    ratios.append("boot \(boot): \(name) \(String(format: "%.1f", agentRate / kernelRate))× the kernel balloon's inflate rate; "
                  + "the zero-fill \(String(format: "%.1f", fillRate / kernelRate))×, the agent \(String(format: "%.0f", agentRate / fillRate * 100)) % of the zero-fill")
    if flags.isEmpty {
        // The agent's own cost, measured on the default agent after a balloon cycle, connected.
        let binaryBytes = UInt64(try guest.run("wc -c < $(command -v ballonet-guest)", timeout: 30).output
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        let status = try guest.run("cat /proc/$(pidof ballonet-guest)/status", timeout: 30).output
        // Everything resident but the balloon (the only memory the agent locks); the binary's own pages
        // count too, as they live in the initramfs's RAM.
        let own = fieldKiB(status, "VmRSS") - fieldKiB(status, "VmLck")
        costLines.append("Agent memory outside the balloon, connected, after the balloon cycle above: \(own) kB "
            + "(VmRSS \(fieldKiB(status, "VmRSS")) kB − VmLck \(fieldKiB(status, "VmLck")) kB; RssAnon \(fieldKiB(status, "RssAnon")) kB, "
            + "RssFile \(fieldKiB(status, "RssFile")) kB, RssShmem \(fieldKiB(status, "RssShmem")) kB; goal ≤ 8 MiB). "
            + "The binary: \(binaryBytes / 1000) kB, one static executable.")
        _ = try host.collect(for: .seconds(5))  // let the deflate's work settle
        let empty = try idleCPU(guest, host, seconds: idleSeconds)
        costLines.append("Agent CPU while idle, connected, balloon empty (sampling every 10 s, a memory check every 10 s): "
            + describeIdle(empty, seconds: idleSeconds) + "; goal ≤ 0.2 %.")
        _ = try agentBalloon(guest, host, session: session, toPages: heldMiB * mib)
        _ = try host.collect(for: .seconds(5))
        let holding = try idleCPU(guest, host, seconds: idleSeconds)
        costLines.append("Agent CPU while idle, connected, holding a \(heldMiB) MiB balloon (sampling every 10 s, a memory check every second): "
            + describeIdle(holding, seconds: idleSeconds) + "; goal ≤ 0.2 %.")
        _ = try agentBalloon(guest, host, session: session, toPages: 0)
    }
    let log = try guest.run("grep -v ' info ' /run/ballonet-guest.log | tail -n 12", timeout: 30).output
    FileHandle.standardError.write(Data("--- \(name): agent log (notices and worse)\n\(log)\n".utf8))
    try stopAgent(guest, host)
}

print("| boot | balloon | inflate MiB/s | deflate MiB/s | pages |")
print("| ---: | --- | ---: | ---: | --- |")
for row in rows {
    print("| \(row.boot) | \(row.name) | \(String(format: "%.0f", row.inflate)) | \(row.deflate.map { String(format: "%.0f", $0) } ?? "") | \(row.note) |")
}
print()
for line in ratios {
    print("- " + line + ".")
}
print()
for line in costLines {
    print(line)
    print()
}
print("## PFN reports (on this host's kernel, 1 GiB pinned in 4 MiB batches)")
print()
print("| pages | read pagemap and encode 256 reports | ranges | bytes |")
print("| --- | ---: | ---: | ---: |")
for huge in [true, false] {
    let cost = try reportCostPerGiB(hugePages: huge)
    print("| \(huge ? "2 MiB" : "4 KiB") | \(String(format: "%.1f", cost.milliseconds)) ms per GiB | \(cost.ranges) | \(cost.bytes) |")
}
