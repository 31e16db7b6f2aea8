import BallonetHost
import BallonetLinux
import Testing

/// Resident guest RAM between smaps reads, from QEMU's status counters.
@Suite struct GuestRAMCounterCalibrationTests {
    func status(anon: UInt64, shmem: UInt64) throws -> ProcessStatus {
        let text = "Name:\tqemu-system-x86\nState:\tS (sleeping)\nPid:\t42\nPPid:\t1\nThreads:\t5\nVmPeak:\t 1 kB\nVmSize:\t 1 kB\n"
            + "VmLck:\t 0 kB\nVmPin:\t 0 kB\nVmHWM:\t 1 kB\nVmRSS:\t \((anon + shmem) >> 10) kB\nRssAnon:\t \(anon >> 10) kB\nRssFile:\t 0 kB\n"
            + "RssShmem:\t \(shmem >> 10) kB\nVmSwap:\t 0 kB\n"
        return try ProcessStatus(parsing: Array(text.utf8), file: "status")
    }

    @Test func residentFollowsTheCountersLessWhatQEMUHeldBeside() throws {
        var figures = GuestRAMFigures()
        figures.residentBytes = 400 << 20
        figures.swappedBytes = 30 << 20
        figures.referencedBytes = 64 << 20
        // QEMU's own 90 MiB of anonymous memory beside a memfd guest's 400 MiB.
        let calibration = GuestRAMCounterCalibration(figures: figures, status: try status(anon: 90 << 20, shmem: 400 << 20))
        // A balloon batch punched 100 MiB: the shmem counter falls by as much.
        let after = calibration.estimate(status: try status(anon: 90 << 20, shmem: 300 << 20), last: figures)
        #expect(after.residentBytes == 300 << 20)
        #expect(after.swappedBytes == 30 << 20 && after.referencedBytes == 64 << 20, "kept from the last smaps read")
        // Counters below the calibration (QEMU freed its own memory): never below zero.
        let low = calibration.estimate(status: try status(anon: 0, shmem: 0), last: figures)
        #expect(low.residentBytes == 0)
    }
}
