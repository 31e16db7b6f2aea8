import BallonetLinux
import Foundation

extension TCGGuest {
    /// Guest RAM resident in this QEMU, measured from /proc/<pid>/smaps: the Rss of the mapping that holds
    /// guest RAM: the largest shared mapping of a memfd, or for anonymous RAM the private anonymous mapping
    /// of exactly the guest's RAM size.
    public var residentGuestRAMBytes: UInt64 {
        get throws {
            var best: (size: UInt64, rss: UInt64) = (0, 0)
            var anonymous: UInt64?
            try ProcFiles.forEachSmapsMapping(of: .id(pid)) { mapping in
                if mapping.pathname?.hasPrefix("/memfd:") == true, mapping.permissions.shared, mapping.size > best.size {
                    best = (mapping.size, mapping.rss)
                } else if mapping.pathname == nil, !mapping.permissions.shared, mapping.size == UInt64(memoryMiB) << 20 {
                    anonymous = mapping.rss
                }
                return true
            }
            return best.size > 0 ? best.rss : anonymous ?? 0
        }
    }

    /// Has the guest's workload touch `megabytes` of memory and free it again, so the host backs it (as
    /// in a guest that has run a while) before a balloon takes it.
    public func touchAndFree(megabytes: Int, timeout: TimeInterval = 300) throws {
        // A workload that dies before it holds the memory (the guest's OOM killer) fails the call with what
        // the guest said, instead of leaving the loop waiting for a line that never comes.
        let run = try run("ballonet-workload hold \(megabytes) > /tmp/touch.log 2>&1 & p=$!; held=1; "
                          + "until grep -q held /tmp/touch.log; do if ! kill -0 $p 2>/dev/null; then held=0; break; fi; sleep 0.2; done; "
                          + "if [ $held = 1 ]; then kill $p; wait $p; true; else cat /tmp/touch.log; free -m; dmesg | tail -n 5; false; fi",
                          timeout: timeout)
        guard run.status == 0 else { throw Failure("touching \(megabytes) MiB of guest memory failed: \(run.output)") }
    }

    /// A number field of a QMP answer (`"actual": 1073741824`), for query-balloon and the like.
    public static func qmpNumber(_ answer: String, _ key: String) -> UInt64? {
        guard let range = answer.range(of: "\"\(key)\":") else { return nil }
        return UInt64(answer[range.upperBound...].drop { $0 == " " }.prefix { $0.isNumber })
    }

    /// Starts `ballonet-workload keep MIB SEED` in the background (its output in /tmp/keep.log) and returns its
    /// pid once the data is written.
    public func startKeep(mib: Int, seed: Int) throws -> Int {
        let started = try run("ballonet-workload keep \(mib) \(seed) > /tmp/keep.log 2>&1 & "
                              + "until grep -q 'keep filled' /tmp/keep.log; do sleep 0.5; done; cat /tmp/keep.log", timeout: 300)
        guard let field = started.output.split(separator: " ").first(where: { $0.hasPrefix("pid=") }),
              let pid = Int(field.dropFirst(4).prefix { $0.isNumber }) else {
            throw Failure("keep did not start: \(started.output)")
        }
        return pid
    }

    /// Has `keep` (pid from `startKeep`) verify its data, every page touched again, and returns what it printed.
    public func verifyKeep(pid: Int) throws -> String {
        try run("kill -USR1 \(pid); while kill -0 \(pid) 2>/dev/null; do sleep 0.5; done; cat /tmp/keep.log", timeout: 600).output
    }
}
