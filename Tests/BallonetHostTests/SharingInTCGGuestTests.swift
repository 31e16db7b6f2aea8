import BallonetHost
import BallonetLinux
import BallonetPolicy
import BallonetTestSupport
import Foundation
import Testing

/// Page sharing on real TCG guests and the host's real ksmd: three guests with anonymous RAM and sharing
/// on, a fourth with sharing off, one ballonet-host steering ksmd.
@Suite(.serialized) struct SharingInTCGGuestTests {
    static var canRun: Bool { HostTestImage.canRun && KSMControl.isAvailable }

    /// /proc/<pid>/ksm_stat as the kernel prints it now.
    static func ksmStat(_ guest: TCGGuest) throws -> KSMProcessStat { try ProcFiles.ksmStat(of: .id(guest.pid)) }

    /// KSM pages mapped by the guest's QEMU now: smaps_rollup's KSM line.
    static func ksmMappedBytes(_ guest: TCGGuest) throws -> UInt64 { try ProcFiles.smapsRollup(of: .id(guest.pid)).ksm }

    static func ksmdCPUSeconds() throws -> Double {
        let pid = try #require(KSMDaemon.processID(), "ksmd is not running")
        return Double(try KSMDaemon.cpuNanoseconds(of: pid)) / 1e9
    }

    @Test(.enabled(if: canRun, "needs root, QEMU and a kernel with KSM"))
    func threeGuestsShareTheFourthNeverAndCopyOnWriteHolds() throws {
        let image = try HostTestImage.get()
        let work = try TCGGuest.makeWorkDirectory(prefix: "ksm")
        let before = try KSMControl.read()
        let names = ["share1", "share2", "share3", "private"]
        var guests: [TCGGuest] = []
        defer { for guest in guests { guest.stop() } }
        for name in names {
            // share3 runs ballonet-guest: its balloon pages are zero-filled, for the zero-page reclaim below.
            guests.append(try TCGGuest.boot(name: name, memoryMiB: 384, kernel: image.kernel, initramfs: image.initramfs,
                                            appendArguments: name == "share3" ? "ballonet.agent=1" : "",
                                            ramBacking: .anonymous, sharing: name != "private",
                                            workDirectory: work.appendingPathComponent(name)))
        }
        for guest in guests { try guest.waitUntilReady(timeout: 240) }
        let (share1, share2, privateGuest) = (guests[0], guests[1], guests[3])
        // The same 64 MiB in share1 and share2 (and in the guest that must never share).
        let keep1 = try share1.startKeep(mib: 64, seed: 77)
        let keep2 = try share2.startKeep(mib: 64, seed: 77)
        _ = try privateGuest.startKeep(mib: 64, seed: 77)

        var vms = ""
        for guest in guests {
            vms += "[[vm]]\nname = \"\(guest.name)\"\nqmp_socket = \"\(guest.qmpSocketPath)\"\nport_socket = \"\(guest.portSocketPath)\"\nswap = \"off\"\nmin_mib = 64\n"
        }
        // No trimming while the host is calm: share3's agent keeps an empty balloon, so nothing waits for the
        // zero page and a calm ksmd has only merging to do.
        var host = try HostAgentProcess(directory: work, vms: [], configText: "[policy]\ntrimming = false\n" + vms)
        defer { host.stop() }
        /// The private guest must show no merged page at any time: checked at every step.
        func privateNeverMerges() throws {
            let stat = try Self.ksmStat(privateGuest)
            #expect(stat.mergingPages == 0 && (stat.zeroPages ?? 0) == 0, "the guest with sharing off has merged pages: \(stat.fields)")
        }
        do {
            for guest in guests { try host.wait(for: guest.name, timeout: 60, "attached") { $0.residentBytes > 0 } }
            let started = Date()
            // Savings appear: share1 and share2 each merge at least as much as their common 64 MiB. (That the
            // pattern's own pages are among the merged ones shows below, when share1 rewrites a quarter of them.)
            var status = try host.status()
            while Date().timeIntervalSince(started) < 420 {
                try privateNeverMerges()
                status = try host.status()
                let merged = Dictionary(uniqueKeysWithValues: status.vms.map { ($0.name, $0.ksmMergingBytes ?? 0) })
                if (status.sharing?.savedBytes ?? 0) >= 64 << 20, merged["share1"]! >= 64 << 20, merged["share2"]! >= 64 << 20 { break }
                Thread.sleep(forTimeInterval: 2)
            }
            let sharing = try #require(status.sharing)
            let seconds = Int(Date().timeIntervalSince(started))
            print("sharing: \(sharing.savedBytes >> 20) MiB saved after \(seconds) s (\(sharing.sharingPages) pages into \(sharing.sharedPages), \(sharing.zeroPages ?? 0) zero pages); "
                  + status.vms.map { "\($0.name) merging \(($0.ksmMergingBytes ?? 0) >> 20) MiB, saves \(($0.sharingSavedBytes ?? 0) >> 20) MiB" }.joined(separator: ", "))
            #expect(sharing.savedBytes >= 64 << 20, "\(sharing)")
            for name in ["share1", "share2"] {
                let account = try #require(status.vms.first { $0.name == name })
                #expect((account.ksmMergingBytes ?? 0) >= 64 << 20, "\(name) merges at least its 64 MiB in common with the other")
                #expect(account.mergeable == true && account.sharing?.hasPrefix("on") == true)
            }
            let privateAccount = try #require(status.vms.first { $0.name == "private" })
            #expect(privateAccount.mergeable == false && privateAccount.ksmMergingBytes == nil, "\(privateAccount)")
            #expect(privateAccount.memoryMode?.contains("sharing off") == true, "\(privateAccount.memoryMode ?? "-")")

            // With nothing left to merge on a calm host, ksmd stops; over a minute it uses (next to) no CPU.
            let stopped = try waitForSharing(host, timeout: 420, "ksmd stopped") { !$0.running }
            print("ksmd stopped: \(stopped.reason)")
            // The per-VM figures agree with the kernel's (ksmd stopped: they hold still).
            Thread.sleep(forTimeInterval: 2)
            status = try host.status()
            for guest in guests where guest.name != "private" {
                let account = try #require(status.vms.first { $0.name == guest.name })
                let stat = try Self.ksmStat(guest)
                let kernelMerging = (stat.mergingPages ?? 0) * 4096, kernelZero = (stat.zeroPages ?? 0) * 4096
                #expect(absDifference(account.ksmMergingBytes ?? 0, kernelMerging) <= 1 << 20, "\(guest.name): \(account.ksmMergingBytes ?? 0) vs ksm_stat \(kernelMerging)")
                #expect(absDifference(account.ksmZeroPageBytes ?? 0, kernelZero) <= 1 << 20, "\(guest.name): \(account.ksmZeroPageBytes ?? 0) vs ksm_stat \(kernelZero)")
            }
            let cpuBefore = try Self.ksmdCPUSeconds()
            Thread.sleep(forTimeInterval: 60)
            let idleCPU = try Self.ksmdCPUSeconds() - cpuBefore
            print("ksmd idle: \(MemoryPolicy.format(idleCPU, 3)) CPU-seconds over 60 s")
            #expect(idleCPU < 0.3, "ksmd used \(idleCPU) s of CPU in a minute with nothing to merge")
            #expect(try KSMControl.read().run == 0)
            try privateNeverMerges()

            // Copy-on-write: share1 rewrites a quarter of its copy; both copies verify. (ksm_merging_pages is
            // ksmd's bookkeeping, updated on its next pass; smaps' KSM line counts what is mapped now.)
            let beforeWrite = try Self.ksmMappedBytes(share1)
            let rewritten = try share1.run("kill -USR2 \(keep1); until grep -q 'keep rewrote' /tmp/keep.log; do sleep 0.5; done; tail -n 1 /tmp/keep.log", timeout: 120)
            #expect(rewritten.output.contains("keep rewrote 16384 KiB"), "\(rewritten.output)")
            let afterWrite = try Self.ksmMappedBytes(share1)
            print("copy-on-write: share1 maps \(beforeWrite >> 20) MiB of KSM pages, \(afterWrite >> 20) MiB after rewriting 16 MiB of its copy")
            #expect(afterWrite + (15 << 20) <= beforeWrite, "the pattern's pages were merged: writing 16 MiB of them gives share1 copies of its own")
            let verified1 = try share1.verifyKeep(pid: keep1), verified2 = try share2.verifyKeep(pid: keep2)
            #expect(verified1.contains("keep ok 64 MiB") && verified1.contains("first quarter rewritten") && !verified1.contains("MISMATCH"), "\(verified1)")
            #expect(verified2.contains("keep ok 64 MiB") && !verified2.contains("MISMATCH"), "\(verified2)")

            // Memory gets short (a budget near what the VMs hold, thresholds at 50/40 %): ksmd scans at the
            // full bound again, and the savings are memory for VMs in the policy's capacity.
            let held = status.vms.reduce(UInt64(0)) { $0 + $1.residentBytes - min($1.residentBytes, $1.sharingSavedBytes ?? 0) }
            let budgetMiB = (held * 13 / 10) >> 20
            host.stop()
            let afterStop = try KSMControl.read()
            #expect(afterStop.run == before.run && afterStop.advisorMode == before.advisorMode && afterStop.useZeroPages == before.useZeroPages,
                    "the agent put KSM back as it was: \(afterStop) vs \(before)")
            let policy = "[host]\nbudget_mib = \(budgetMiB)\n[policy]\nhigh_percent = 50\nsoft_percent = 40\nhard_percent = 2\nlow_percent = 1\n"
            host = try HostAgentProcess(directory: work, vms: [], configText: policy + vms)
            let short = try waitForSharing(host, timeout: 60, "ksmd at the full bound") { $0.running && $0.cpuBudgetPercent == 20 }
            print("memory short: \(short.reason)")
            let shortCPUStart = try Self.ksmdCPUSeconds()
            Thread.sleep(forTimeInterval: 20)
            let shortCPU = try Self.ksmdCPUSeconds() - shortCPUStart
            print("ksmd under pressure: \(MemoryPolicy.format(shortCPU, 2)) CPU-seconds over 20 s (idle: \(MemoryPolicy.format(idleCPU, 3)) over 60 s)")
            #expect(shortCPU > idleCPU + 0.5, "ksmd scans harder when memory is short")
            status = try host.status()
            let credit = try #require(status.sharingCreditBytes)
            let capacity = try #require(status.capacityBytes)
            var thresholds = FreeMemoryThresholds()
            thresholds.highPercent = 50
            thresholds.hysteresisPercent = 0.5
            let withoutSharing = MemoryPolicy.capacityBytes(memoryForVMsBytes: budgetMiB << 20, totalBytes: budgetMiB << 20, thresholds: thresholds)
            let targets = status.vms.reduce(UInt64(0)) { $0 + $1.targetBytes }
            print("budget \(budgetMiB) MiB, state \(status.state ?? "-"): capacity \(capacity >> 20) MiB = \(withoutSharing >> 20) MiB + sharing's \(credit >> 20) MiB; targets add up to \(targets >> 20) MiB")
            #expect(credit >= 32 << 20)
            #expect(absDifference(capacity, withoutSharing + credit) <= 8192, "capacity counts the savings")
            #expect(targets > withoutSharing, "the savings raise the targets above what the budget alone gives")
            try privateNeverMerges()

            // Zero-page reclaim: share3's balloon (ballonet-guest zero-fills its pages) on anonymous RAM with
            // no host swap: KSM maps the pages to the zero page (directly, or by splitting the host's huge page
            // that holds them), so the balloon's memory leaves the host without swap or pageout.
            if (try ProcFiles.meminfo().swapFree) < 512 << 20 {
                try host.wait(for: "share3", timeout: 120, "ballonet-guest session") { $0.state == "established" }
                try host.setTarget("share3", mib: 192)
                let reclaimed = try host.wait(for: "share3", timeout: 240, "the balloon's memory off the host") { account in
                    account.balloonBytes >= 128 << 20 && account.residentBytes + account.balloonBytes <= account.memoryBytes + (32 << 20)
                }
                print("zero-page reclaim: share3 balloon \(reclaimed.balloonBytes >> 20) MiB, resident \(reclaimed.residentBytes >> 20) MiB of "
                      + "\(reclaimed.memoryBytes >> 20) MiB, KSM zero pages \((reclaimed.ksmZeroPageBytes ?? 0) >> 20) MiB; \(reclaimed.memoryMode ?? "-")")
                #expect(reclaimed.memoryMode?.contains("zero page") == true)
                #expect(reclaimed.swappedBytes == 0 && reclaimed.pagedOutBytes == 0 && reclaimed.reclaimedBytes == 0, "no swap, no pageout")
                #expect(host.log.contains("balloon pages now go to the zero page through KSM"))
            } else {
                print("zero-page reclaim not checked: the host has swap free now (another test's swap file), so balloon pages are paged out")
            }
            try privateNeverMerges()
        } catch {
            Issue.record("\(error)\nhost log:\n\(String(host.log.suffix(6000)))")
        }
    }

    /// Polls the host's sharing status until `condition` holds.
    @discardableResult
    func waitForSharing(_ host: HostAgentProcess, timeout: TimeInterval, _ what: String, until condition: (SharingStatus) -> Bool) throws -> SharingStatus {
        let deadline = Date().addingTimeInterval(timeout)
        var last: SharingStatus?
        while Date() < deadline {
            if let sharing = try? host.status().sharing {
                last = sharing
                if condition(sharing) { return sharing }
            }
            Thread.sleep(forTimeInterval: 1)
        }
        throw TestTimeout(description: "\(what) not reached within \(Int(timeout)) s; last: \(String(describing: last))")
    }
}

func absDifference(_ a: UInt64, _ b: UInt64) -> UInt64 { a > b ? a - b : b - a }
