import BallonetLinux
import Testing

extension LinuxLayerTests {
    @Suite struct Sockets {
        @Test func listenConnectAcceptSendReceiveAndPoll() throws {
            let scratch = try ScratchDirectory()
            let path = scratch.path + "/chardev.sock"
            let listener = try UnixSocket.listen(at: path, replacingStaleSocket: false)
            #expect(try FileSystem.status(ofPath: path).kind == .socket)
            #expect(try listener.poll(for: .readable, timeout: .zero).isEmpty, "nobody has connected yet")

            let client = try UnixSocket.connect(to: path)
            #expect(try listener.poll(for: .readable, timeout: .seconds(1)).contains(.readable))
            let server = try listener.accept()
            #expect(try server.peerCredentials().processID == ProcessControl.currentID)

            #expect(try server.poll(for: .readable, timeout: .zero).isEmpty)
            try client.send(all: Array(text: "inflate 4096"))
            #expect(try server.poll(for: .readable, timeout: .seconds(1)).contains(.readable))
            #expect(try server.receive(upTo: 100) == Array(text: "inflate 4096"))

            try server.write(all: Array(text: "ack"))
            #expect(try client.read(upTo: 100) == Array(text: "ack"))

            try client.shutdown(.writing)
            #expect(try server.receive(upTo: 100).isEmpty, "end of stream after the peer shut down writing")
        }

        @Test func pollReportsOnlyTheReadyDescriptorAndTimesOutHonestly() throws {
            let one = try UnixSocket.pair()
            let two = try UnixSocket.pair()
            try two.second.send(all: [1])
            var requests = [
                PollRequest(descriptor: one.first.rawValue, events: .readable),
                PollRequest(descriptor: two.first.rawValue, events: .readable),
            ]
            #expect(try Poll.wait(&requests, timeout: .seconds(1)) == 1)
            #expect(requests[0].returnedEvents.isEmpty)
            #expect(requests[1].returnedEvents == .readable)

            let start = MonotonicInstant.now()
            #expect(try one.first.poll(for: .readable, timeout: .milliseconds(30)).isEmpty)
            #expect(MonotonicInstant.now() - start >= .milliseconds(30))
        }

        @Test func closedPeerGivesHangUpAndEPIPEWithoutKillingUs() throws {
            let pair = try UnixSocket.pair()
            let survivor = pair.first
            try pair.second.close()
            #expect(try survivor.poll(for: .readable, timeout: .seconds(1)).contains(.hangUp))
            let error = expectSystemCallError { try survivor.send(all: [1, 2, 3]) }
            #expect(error?.errno == .EPIPE)
        }

        @Test func staleSocketIsReplacedOnlyWhenAsked() throws {
            let scratch = try ScratchDirectory()
            let path = scratch.path + "/control.sock"
            try UnixSocket.listen(at: path, replacingStaleSocket: false).close()
            #expect(FileSystem.exists(path), "closing a listener leaves its file behind")

            #expect(expectSystemCallError { _ = try UnixSocket.connect(to: path) }?.errno == .ECONNREFUSED)
            #expect(expectSystemCallError { _ = try UnixSocket.listen(at: path, replacingStaleSocket: false) }?.errno == .EADDRINUSE)

            let listener = try UnixSocket.listen(at: path, replacingStaleSocket: true)
            _ = try UnixSocket.connect(to: path)
            #expect(try listener.poll(for: .readable, timeout: .seconds(1)).contains(.readable))
        }

        @Test func liveListenerAndOtherFilesAreNotReplaced() throws {
            let scratch = try ScratchDirectory()
            let path = scratch.path + "/control.sock"
            let live = try UnixSocket.listen(at: path, replacingStaleSocket: false)
            #expect(expectSystemCallError { _ = try UnixSocket.listen(at: path, replacingStaleSocket: true) }?.errno == .EADDRINUSE)
            _ = try UnixSocket.connect(to: path)
            #expect(try live.poll(for: .readable, timeout: .seconds(1)).contains(.readable), "the live listener still has its socket")

            let regularFile = scratch.path + "/not-a-socket"
            try FileSystem.writeFile(regularFile, "keep me", creatingWithPermissions: 0o600)
            #expect(expectSystemCallError { _ = try UnixSocket.listen(at: regularFile, replacingStaleSocket: true) }?.errno == .EADDRINUSE)
            #expect(try FileSystem.readFile(regularFile, maxBytes: 100) == Array(text: "keep me"))
        }

        @Test func pathThatDoesNotFitIsATypedErrorAndTheLongestThatFitsWorks() throws {
            let scratch = try ScratchDirectory()
            let prefix = scratch.path + "/"
            let longest = prefix + String(repeating: "s", count: UnixSocket.maximumPathBytes - prefix.utf8.count)
            #expect(longest.utf8.count == 107)
            let listener = try UnixSocket.listen(at: longest, replacingStaleSocket: false)
            _ = try UnixSocket.connect(to: longest)
            #expect(try listener.poll(for: .readable, timeout: .seconds(1)).contains(.readable))

            let tooLong = longest + "s"
            let connectError = expectSystemCallError { _ = try UnixSocket.connect(to: tooLong) }
            #expect(connectError?.errno == .ENAMETOOLONG)
            #expect(connectError?.systemCall == "connect")
            #expect(connectError?.description.contains("108 bytes, at most 107 fit") == true)
            #expect(expectSystemCallError { _ = try UnixSocket.listen(at: tooLong, replacingStaleSocket: true) }?.errno == .ENAMETOOLONG)
            #expect(!FileSystem.exists(tooLong))
        }
    }
}
