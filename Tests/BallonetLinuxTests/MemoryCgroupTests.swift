import BallonetLinux
import Testing

extension LinuxLayerTests {
    /// Finding the memory controller and a process's group, and a real group's limit on this host.
    @Suite struct MemoryCgroups {
        @Test func aHybridHostBindsTheMemoryControllerToV1() {
            let found = MemoryCgroup.hierarchy(mountinfo: Capture.directory + "/mountinfo-cgroup-hybrid")
            #expect(found?.root == "/sys/fs/cgroup/memory" && found?.version == .v1, "\(String(describing: found))")
        }

        @Test func aV2HostIsUsedOnlyWhenItsRootOffersMemory() throws {
            let scratch = try ScratchDirectory()
            let mountinfo = scratch.path + "/mountinfo"
            try FileSystem.writeFile(mountinfo, "25 1 0:22 / / rw,relatime - ext4 /dev/vda1 rw\n"
                                     + "29 25 0:26 / \(scratch.path) rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
                                     creatingWithPermissions: 0o600)
            try FileSystem.writeFile(scratch.path + "/cgroup.controllers", "cpuset cpu io pids\n", creatingWithPermissions: 0o600)
            #expect(MemoryCgroup.hierarchy(mountinfo: mountinfo) == nil, "no memory controller offered")
            try FileSystem.writeFile(scratch.path + "/cgroup.controllers", "cpuset cpu io memory pids\n", creatingWithPermissions: 0o600)
            let found = MemoryCgroup.hierarchy(mountinfo: mountinfo)
            #expect(found?.root == scratch.path && found?.version == .v2)
        }

        @Test(.enabled(if: ProcessControl.currentUserID == 0 && MemoryCgroup.hierarchy() != nil, "needs root and a memory cgroup controller"))
        func aGroupHoldsAProcessAndTakesALimit() throws {
            let hierarchy = try #require(MemoryCgroup.hierarchy())
            let group = try MemoryCgroup.create("ballonet-linux-tests/\(ProcessControl.currentID)", hierarchy: hierarchy)
            defer {
                try? group.remove()
                try? FileSystem.removeDirectory(hierarchy.root + "/ballonet-linux-tests")
            }
            let scratch = try ScratchDirectory()
            // The child enters the group before it execs, as the host agent starts QEMU.
            let pid = try ProcessControl.spawn("/bin/sh", arguments: ["-c", "echo $$ > \"$0/cgroup.procs\" && exec /bin/sleep 30", group.path],
                                               outputPath: scratch.path + "/out")
            defer {
                try? ProcessControl.send(.kill, to: pid)
                _ = try? ProcessControl.waitForExit(pid)
            }
            var members: [Int32] = []
            for _ in 0..<50 {
                members = try group.processes()
                if members == [pid] { break }
                MonotonicClock.sleep(for: .milliseconds(20))
            }
            #expect(members == [pid])
            #expect(MemoryCgroup.of(process: pid, hierarchy: hierarchy) == group)
            #expect(MemoryCgroup.of(process: ProcessControl.currentID, hierarchy: hierarchy) != group)
            #expect(try group.limitBytes() == nil)
            try group.setLimit(256 << 20)
            #expect(try group.limitBytes() == 256 << 20)
            try group.setLimit(nil)
            #expect(try group.limitBytes() == nil)
            #expect(try group.usageBytes() > 0, "sleep's own pages are charged to the group")
        }
    }
}
