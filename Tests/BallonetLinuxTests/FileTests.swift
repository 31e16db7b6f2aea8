import BallonetLinux
import Testing

extension LinuxLayerTests {
    @Suite struct Errors {
        @Test func errnoReadsAsNameAndLibcText() {
            #expect(Errno.ENOENT.description == "ENOENT (No such file or directory)")
            #expect(Errno.EACCES.description == "EACCES (Permission denied)")
            #expect(Errno.ECONNREFUSED.name == "ECONNREFUSED")
            #expect(Errno(rawValue: 9999).description == "errno 9999 (Unknown error 9999)")
        }

        @Test func systemCallErrorReadsLikeACall() {
            let error = SystemCallError("open", .EACCES, path: "/proc/123/smaps")
            #expect(error.description == #"open("/proc/123/smaps"): EACCES (Permission denied)"#)
            #expect(SystemCallError("mlock", .ENOMEM).description == "mlock: ENOMEM (Cannot allocate memory)")
        }

        @Test func openingAMissingFileNamesTheCallThePathAndENOENT() throws {
            let path = "/proc/self/no-such-file"
            let error = try #require(expectSystemCallError { _ = try FileDescriptor.open(path, .readOnly) })
            #expect(error.errno == .ENOENT)
            #expect(error.systemCall == "open")
            #expect(error.description == #"open("/proc/self/no-such-file"): ENOENT (No such file or directory)"#)
        }
    }

    @Suite struct Descriptors {
        /// Whether descriptor `number` is open in this process, judged by the kernel's /proc/self/fd.
        func isOpen(_ number: Int32) -> Bool {
            FileSystem.exists("/proc/self/fd/\(number)")
        }

        @Test func descriptorIsClosedWhenTheValueGoesAway() throws {
            var number: Int32 = -1
            do {
                let file = try FileDescriptor.open("/proc/self/status", .readOnly)
                number = file.rawValue
                #expect(isOpen(number))
            }
            #expect(!isOpen(number))
        }

        @Test func closeClosesAndTakeHandsOwnershipOver() throws {
            let file = try FileDescriptor.open("/proc/self/status", .readOnly)
            let number = file.rawValue
            try file.close()
            #expect(!isOpen(number))

            let taken = try FileDescriptor.open("/proc/self/status", .readOnly).take()
            #expect(isOpen(taken), "take() must not close")
            try FileDescriptor(adopting: taken).close()
            #expect(!isOpen(taken))
        }

        @Test func descriptorsAreCloseOnExec() throws {
            let file = try FileDescriptor.open("/proc/self/status", .readOnly)
            // /proc/self/fdinfo/N shows the open flags in octal; O_CLOEXEC is 02000000.
            let info = String(decoding: try FileSystem.readFile("/proc/self/fdinfo/\(file.rawValue)", maxBytes: ProcFileLimits.statusBytes), as: UTF8.self)
            let flagsLine = try #require(info.split(separator: "\n").first { $0.hasPrefix("flags:") })
            let flags = try #require(UInt64(flagsLine.dropFirst("flags:".count).trimmingPrefix { $0 == " " || $0 == "\t" }, radix: 8))
            #expect(flags & 0o2000000 != 0)
        }

        @Test func memfdRoundTripsWritesReadsAndOffsets() throws {
            let file = try Memory.createMemoryFile(named: "round-trip")
            let message = Array(text: "ballonet pins pages")
            try file.write(all: message)
            #expect(try file.status().size == Int64(message.count))
            #expect(try file.read(upTo: 100).isEmpty, "the offset is at the end after writing")
            try file.seek(to: 0)
            #expect(try file.read(upTo: 100) == message)
            #expect(try file.read(upTo: 5, atOffset: 9) == Array(text: "pins "))
            try file.write(all: Array(text: "PINS"), atOffset: 9)
            #expect(try file.read(upTo: 100, atOffset: 0) == Array(text: "ballonet PINS pages"))
            #expect(try FileSystem.readLink("/proc/self/fd/\(file.rawValue)") == "/memfd:round-trip (deleted)")
        }

        @Test func duplicateSharesTheFileAndItsOffset() throws {
            let file = try Memory.createMemoryFile(named: "duplicate")
            let copy = try file.duplicate()
            #expect(copy.rawValue != file.rawValue)
            try file.write(all: Array(text: "abc"))
            #expect(try copy.seek(to: 0, from: .current) == 3, "one open file, one offset")
            try copy.seek(to: 0)
            #expect(try file.read(upTo: 3) == Array(text: "abc"))
        }

        @Test func punchingAHoleInAMemfdFreesItsMemoryAndKeepsTheRest() throws {
            let mebibyte = 1024 * 1024
            let file = try Memory.createMemoryFile(named: "guest-ram")
            try file.write(all: [UInt8](repeating: 0xA5, count: mebibyte))
            let before = try file.status()
            #expect(before.allocatedBytes >= Int64(mebibyte))

            try file.punchHole(offset: 256 * 1024, length: 512 * 1024)

            let after = try file.status()
            #expect(after.size == Int64(mebibyte), "keepSize leaves the size alone")
            #expect(before.allocatedBytes - after.allocatedBytes == 512 * 1024)
            #expect(try file.read(upTo: 4096, atOffset: 256 * 1024) == [UInt8](repeating: 0, count: 4096))
            #expect(try file.read(upTo: 4096, atOffset: 768 * 1024) == [UInt8](repeating: 0xA5, count: 4096))
            #expect(try file.seek(to: 0, from: .nextHole) == 256 * 1024)
            #expect(try file.seek(to: 256 * 1024, from: .nextData) == 768 * 1024)
        }

        @Test func punchingWithoutKeepSizeIsRefusedByTheKernel() throws {
            let file = try Memory.createMemoryFile(named: "refused")
            try file.truncate(toSize: 8192)
            let error = expectSystemCallError { try file.fallocate(mode: .punchHole, offset: 0, length: 4096) }
            #expect(error?.errno == .EOPNOTSUPP)
            #expect(error?.systemCall == "fallocate")
        }

        @Test func nonBlockingReadOfAnEmptySocketFailsWithEAGAIN() throws {
            let pair = try UnixSocket.pair()
            let reader = pair.first
            try reader.setNonBlocking(true)
            #expect(expectSystemCallError { _ = try reader.read(upTo: 10) }?.errno == .EAGAIN)
        }
    }

    @Suite struct WholeFiles {
        @Test func procFileIsReadWholeThoughItsSizeIsZero() throws {
            #expect(try FileSystem.status(ofPath: "/proc/self/status").size == 0)
            let bytes = try FileSystem.readFile("/proc/self/status", maxBytes: ProcFileLimits.statusBytes)
            #expect(bytes.starts(with: Array(text: "Name:")))
            #expect(bytes.last == 0x0A)
        }

        @Test func fileOverTheBoundFailsWithEFBIGAndTheBoundInTheMessage() throws {
            let error = expectSystemCallError { _ = try FileSystem.readFile("/proc/self/status", maxBytes: 100) }
            #expect(error?.errno == .EFBIG)
            #expect(error?.description.contains("limit 100 bytes") == true)
            #expect(error?.description.contains("/proc/self/status") == true)
        }

        @Test func fileOfExactlyTheBoundIsAccepted() throws {
            let scratch = try ScratchDirectory()
            let path = scratch.path + "/exact"
            let content = [UInt8](repeating: 7, count: 70_000)
            try FileSystem.writeFile(path, content, creatingWithPermissions: 0o600)
            #expect(try FileSystem.readFile(path, maxBytes: 70_000) == content)
            #expect(expectSystemCallError { _ = try FileSystem.readFile(path, maxBytes: 69_999) }?.errno == .EFBIG)
        }

        @Test func directoriesListAndFilesGoAway() throws {
            let scratch = try ScratchDirectory()
            try FileSystem.writeFile(scratch.path + "/a", "1", creatingWithPermissions: 0o644)
            try FileSystem.writeFile(scratch.path + "/b c", "2", creatingWithPermissions: 0o600)
            #expect(Set(try FileSystem.listDirectory(scratch.path)) == ["a", "b c"])
            let status = try FileSystem.status(ofPath: scratch.path + "/a")
            #expect(status.kind == .regular)
            #expect(status.permissions == 0o644)
            try FileSystem.setPermissions(scratch.path + "/a", 0o640)
            #expect(try FileSystem.status(ofPath: scratch.path + "/a").permissions == 0o640)
            try FileSystem.removeFile(scratch.path + "/a")
            #expect(try FileSystem.listDirectory(scratch.path) == ["b c"])
            #expect(expectSystemCallError { try FileSystem.removeFile(scratch.path + "/a") }?.errno == .ENOENT)
        }

        @Test func procFdLinksNameTheOpenFiles() throws {
            let file = try Memory.createMemoryFile(named: "pc.ram")
            let names = try FileSystem.listDirectory("/proc/self/fd")
            #expect(names.contains(String(file.rawValue)))
            #expect(try FileSystem.readLink("/proc/self/fd/\(file.rawValue)") == "/memfd:pc.ram (deleted)")
        }

        @Test func tmpfsMountsAndUnmounts() throws {
            let scratch = try ScratchDirectory()
            let parentDevice = try FileSystem.status(ofPath: scratch.path).device
            try FileSystem.mount(source: "ballonet-test", target: scratch.path, type: "tmpfs", data: "size=4m,huge=always,mode=0700")
            let mounted = try FileSystem.status(ofPath: scratch.path)
            #expect(mounted.device != parentDevice)
            #expect(mounted.permissions == 0o700)
            try FileSystem.unmount(scratch.path)
            #expect(try FileSystem.status(ofPath: scratch.path).device == parentDevice)
        }
    }
}
