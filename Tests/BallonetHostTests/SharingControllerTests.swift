import BallonetLinux
import Foundation
import Logging
import Testing
@testable import BallonetHost

/// The KSM settings the agent changes come back even when it is killed: a copy of /sys/kernel/mm/ksm, the
/// controller steering it as with a VM whose RAM is mergeable and memory short, an agent that never gets to
/// put KSM back, and the next one.
@Suite struct SharingControllerTests {
    /// A copy of this kernel's KSM directory as an operator left it: ksmd off, the kernel's defaults.
    static func operatorsKSM() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ksm-\(getpid())-\(UInt32.random(in: 0 ... .max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let files = ["run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "use_zero_pages": "0", "full_scans": "0",
                     "pages_scanned": "0", "pages_shared": "0", "pages_sharing": "0", "pages_unshared": "0", "pages_volatile": "0",
                     "ksm_zero_pages": "0", "general_profit": "0", "advisor_mode": "[none] scan-time",
                     "advisor_max_cpu": "70", "advisor_target_scan_time": "200"]
        for (name, value) in files { try (value + "\n").write(toFile: directory + "/" + name, atomically: true, encoding: .utf8) }
        return directory
    }

    static func value(_ directory: String, _ name: String) -> String? { KSMControl.savedValue(name, directory: directory) }

    /// A controller on the copy `ksm`, keeping what it will put back in `kept`.
    static func controller(_ ksm: String, keeping kept: String, steering: Bool = true) throws -> SharingController {
        var settings = SharingSettings()
        settings.steerKSM = steering
        return try #require(SharingController(settings: settings, logger: Logger(label: "test"), originalsFile: kept, ksmDirectory: ksm))
    }

    /// One round as with 512 MiB of mergeable guest RAM and memory short: ksmd is set to run at the bound.
    static func steer(_ controller: SharingController) {
        controller.round(elapsedMillis: 1000, state: .low, mergeableBytes: 512 << 20, pendingZeroMergeBytes: 0)
    }

    @Test func settingsAKilledAgentChangedArePutBackByTheNext() throws {
        let ksm = try Self.operatorsKSM()
        defer { try? FileManager.default.removeItem(atPath: ksm) }
        let kept = ksm + "-state/ksm-settings-to-restore"
        defer { try? FileManager.default.removeItem(atPath: ksm + "-state") }

        let first = try Self.controller(ksm, keeping: kept)
        Self.steer(first)
        #expect(Self.value(ksm, "run") == "1" && Self.value(ksm, "use_zero_pages") == "1", "the agent took KSM over")
        #expect(Self.value(ksm, "pages_to_scan") != "100")
        let text = try String(contentsOfFile: kept, encoding: .utf8)
        #expect(text.split(separator: "\n").sorted() == ["advisor_max_cpu=70", "advisor_mode=none", "advisor_target_scan_time=200",
                                                         "pages_to_scan=100", "run=0", "sleep_millisecs=20", "use_zero_pages=0"])
        // Killed here: `first` never calls restore().

        let second = try Self.controller(ksm, keeping: kept)
        #expect(Self.value(ksm, "run") == "0" && Self.value(ksm, "pages_to_scan") == "100" && Self.value(ksm, "sleep_millisecs") == "20"
                && Self.value(ksm, "use_zero_pages") == "0", "put back as the operator had it, before anything else")
        #expect(!FileManager.default.fileExists(atPath: kept))

        // The second agent takes the operator's settings as its own originals, and a clean stop leaves no file.
        Self.steer(second)
        #expect(Self.value(ksm, "run") == "1" && FileManager.default.fileExists(atPath: kept))
        second.restore()
        #expect(Self.value(ksm, "run") == "0" && Self.value(ksm, "pages_to_scan") == "100" && Self.value(ksm, "use_zero_pages") == "0")
        #expect(!FileManager.default.fileExists(atPath: kept))
    }

    @Test func aKeptFileThatIsNotOneIsIgnoredAndRemoved() throws {
        let ksm = try Self.operatorsKSM()
        defer { try? FileManager.default.removeItem(atPath: ksm) }
        let kept = ksm + "-kept"
        defer { try? FileManager.default.removeItem(atPath: kept) }
        for text in ["run=1\nsomething_else=1\n", "run=\n", "run=1; reboot\n", "run=1\nrun=0\n", String(repeating: "x", count: 5000)] {
            try text.write(toFile: kept, atomically: true, encoding: .utf8)
            try KSMControl.write("run", "1", directory: ksm)
            _ = try Self.controller(ksm, keeping: kept)
            #expect(Self.value(ksm, "run") == "1", "KSM left as it is for \(text.prefix(20).debugDescription)")
            #expect(!FileManager.default.fileExists(atPath: kept))
        }
    }

    @Test func aKeptFileIsPutBackEvenByAnAgentThatDoesNotSteer() throws {
        let ksm = try Self.operatorsKSM()
        defer { try? FileManager.default.removeItem(atPath: ksm) }
        let kept = ksm + "-kept"
        defer { try? FileManager.default.removeItem(atPath: kept) }
        let first = try Self.controller(ksm, keeping: kept)
        Self.steer(first)
        #expect(Self.value(ksm, "run") == "1" && FileManager.default.fileExists(atPath: kept))
        // Killed; the operator then turns steering off before the next start.
        _ = try Self.controller(ksm, keeping: kept, steering: false)
        #expect(Self.value(ksm, "run") == "0" && Self.value(ksm, "pages_to_scan") == "100" && !FileManager.default.fileExists(atPath: kept))
    }

    @Test func notSteeringLeavesKSMAndKeepsNothing() throws {
        let ksm = try Self.operatorsKSM()
        defer { try? FileManager.default.removeItem(atPath: ksm) }
        let kept = ksm + "-kept"
        let controller = try Self.controller(ksm, keeping: kept, steering: false)
        Self.steer(controller)
        controller.restore()
        #expect(Self.value(ksm, "run") == "0" && !FileManager.default.fileExists(atPath: kept))
    }
}
