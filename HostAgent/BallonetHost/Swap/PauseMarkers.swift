import BallonetLinux

/// The VMs this host agent paused in the low state, one empty file per VM in `<state directory>/paused/`.
/// A marker is written before QMP `stop` and removed after `cont`, so a VM is never left paused by an agent
/// that crashed or was killed: the next agent finds the marker when it attaches and resumes the VM. A VM
/// someone else paused (no marker) is never resumed by Ballonet.
struct PauseMarkers: Sendable {
    let directory: String

    init(stateDirectory: String) { directory = stateDirectory + "/paused" }

    func path(of vm: String) -> String { directory + "/" + vm }

    func contains(_ vm: String) -> Bool { FileSystem.exists(path(of: vm)) }

    func add(_ vm: String) throws(SystemCallError) {
        try FileSystem.makeDirectory(directory, permissions: 0o755, orExisting: true)
        try FileSystem.replaceFile(path(of: vm), [], permissions: 0o644)
    }

    func remove(_ vm: String) { try? FileSystem.removeFile(path(of: vm)) }
}
