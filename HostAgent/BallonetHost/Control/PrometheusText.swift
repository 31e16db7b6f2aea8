import BallonetPolicy

/// The host's status in the Prometheus text exposition format, version 0.0.4
/// (https://prometheus.io/docs/instrumenting/exposition_formats/): what the metrics endpoint serves.
///
/// Each family is written whole, `# HELP` and `# TYPE` first, then its samples, one per VM for the per-VM
/// families: the format wants a family's lines together. A family with no sample is left out. Counters end
/// in `_total`, and in this version of the format the `# TYPE` line names them with the suffix.
public enum PrometheusText {
    /// The Content-Type of a response holding `render`'s text.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func render(_ status: HostStatus) -> String {
        var exposition = Exposition()
        renderHost(status, into: &exposition)

        // Series must be unique. VM names are unique in the inventory, so this only guards against a
        // refused VM that shares a name with one that runs: the first one listed (the running one) wins.
        var seen = Set<String>()
        let unique = status.vms.filter { seen.insert($0.name).inserted }
        let running = unique.filter { !$0.state.hasPrefix("refused") }

        for family in vmFamilies {
            exposition.family(family.name, family.kind, family.help, running.compactMap { vm in
                family.value(vm).map { Sample(labels: [("vm", vm.name)], value: $0) }
            })
        }
        exposition.family("ballonet_vm_refused", .gauge,
                          "1 for a VM admission control refused to start (it has no other ballonet_vm series), 0 for the others.",
                          unique.map { Sample(labels: [("vm", $0.name)], value: .integer($0.state.hasPrefix("refused") ? 1 : 0)) })
        return exposition.text
    }

    private static func renderHost(_ status: HostStatus, into exposition: inout Exposition) {
        exposition.family("ballonet_info", .gauge, "Always 1; the label says which ballonet-host is running.",
                          [Sample(labels: [("version", status.version)], value: .integer(1))])
        if let state = status.state {
            var states = FreeMemoryState.allCases.map(\.rawValue)
            // A state this build does not know would otherwise vanish from the metrics.
            if !states.contains(state) { states.append(state) }
            exposition.family("ballonet_host_state", .gauge,
                              "The host's free-memory state (high, soft, hard, low): 1 for the current one, 0 for the others.",
                              states.map { Sample(labels: [("state", $0)], value: .integer($0 == state ? 1 : 0)) })
        }
        exposition.family("ballonet_host_free_ratio", .gauge,
                          "Free memory as a fraction of the host's memory (or of the budget; negative when VMs hold more than it).",
                          status.freePercent.map { [Sample(value: .real($0 / 100))] } ?? [])
        exposition.family("ballonet_host_memory_for_vms_bytes", .gauge, "M: the memory the policy shares out among VMs.",
                          status.memoryForVMsBytes.map { [Sample(value: .integer($0))] } ?? [])
        exposition.family("ballonet_host_target_capacity_bytes", .gauge,
                          "What VM targets may add up to: M less the free memory kept and the fixed targets.",
                          status.capacityBytes.map { [Sample(value: .integer($0))] } ?? [])
        exposition.family("ballonet_host_budget_bytes", .gauge, "The configured memory budget for VMs.",
                          status.budgetBytes.map { [Sample(value: .integer($0))] } ?? [])
        exposition.family("ballonet_idle_tax_rate", .gauge, "The idle memory tax rate, 0 to 1.",
                          status.idleTaxRate.map { [Sample(value: .real($0))] } ?? [])
        let sharing = status.sharing
        exposition.family("ballonet_ksm_running", .gauge, "1 while ksmd scans (KSM run = 1), else 0; absent without KSM.",
                          sharing.map { [Sample(value: .integer($0.running ? 1 : 0))] } ?? [])
        exposition.family("ballonet_ksm_saved_bytes", .gauge, "Memory KSM saves: pages_sharing and zero pages.",
                          sharing.map { [Sample(value: .integer($0.savedBytes))] } ?? [])
        exposition.family("ballonet_ksm_zero_page_bytes", .gauge, "Pages KSM pointed at the kernel's zero page.",
                          sharing?.zeroPages.map { [Sample(value: .integer($0 << 12))] } ?? [])
        exposition.family("ballonet_ksm_cpu_budget_ratio", .gauge, "The CPU budget ksmd is steered to, as a fraction of one core.",
                          sharing.map { [Sample(value: .real($0.cpuBudgetPercent / 100))] } ?? [])
        exposition.family("ballonet_ksmd_cpu_seconds_total", .counter, "CPU time ksmd used since ballonet-host started.",
                          sharing.map { [Sample(value: .real($0.ksmdCPUSeconds))] } ?? [])
        exposition.family("ballonet_host_sharing_credit_bytes", .gauge,
                          "Sharing savings the policy counted as memory for VMs in its last round.",
                          status.sharingCreditBytes.map { [Sample(value: .integer($0))] } ?? [])
    }

    /// One per-VM family: its sample for a VM, nil when the VM has no such figure (yet).
    private struct VMFamily: Sendable {
        let name: String
        let kind: Kind
        let help: String
        let value: @Sendable (VMAccount) -> Number?
    }

    private static let vmFamilies: [VMFamily] = [
        VMFamily(name: "ballonet_vm_memory_bytes", kind: .gauge, help: "The VM's RAM.") { .integer($0.memoryBytes) },
        VMFamily(name: "ballonet_vm_target_bytes", kind: .gauge, help: "Resident memory the host wants the VM at.") { .integer($0.targetBytes) },
        VMFamily(name: "ballonet_vm_balloon_bytes", kind: .gauge, help: "The balloon the guest reports holding.") { .integer($0.balloonBytes) },
        VMFamily(name: "ballonet_vm_balloon_requested_bytes", kind: .gauge, help: "The balloon size last asked of the guest.") {
            .integer($0.requestedBalloonBytes)
        },
        VMFamily(name: "ballonet_vm_resident_bytes", kind: .gauge, help: "Guest RAM resident in QEMU, from /proc/<pid>/smaps.") {
            .integer($0.residentBytes)
        },
        VMFamily(name: "ballonet_vm_swapped_bytes", kind: .gauge, help: "Guest RAM in host swap, from /proc/<pid>/smaps.") {
            .integer($0.swappedBytes)
        },
        VMFamily(name: "ballonet_vm_working_set_estimate_bytes", kind: .gauge, help: "The policy's estimate of the VM's working set.") {
            $0.workingSetEstimateBytes.map { .integer($0) }
        },
        VMFamily(name: "ballonet_vm_host_working_set_estimate_bytes", kind: .gauge,
                 help: "The host sampler's working-set estimate (accessed bits of QEMU's guest RAM).") {
            $0.hostWorkingSetEstimateBytes.map { .integer($0) }
        },
        VMFamily(name: "ballonet_vm_sampling_cost_seconds", kind: .gauge, help: "What the host sampler's last sample of the VM cost.") {
            $0.samplingCostMicros.map { .real(Double($0) / 1_000_000) }
        },
        VMFamily(name: "ballonet_vm_swap_limit_bytes", kind: .gauge,
                 help: "The hypervisor-swap limit on the VM's resident guest RAM; absent when there is none.") {
            $0.swapLimitBytes.map { .integer($0) }
        },
        VMFamily(name: "ballonet_vm_paused", kind: .gauge, help: "1 while the host keeps the VM paused in the low state, else 0.") {
            .integer($0.paused ? 1 : 0)
        },
        VMFamily(name: "ballonet_vm_paged_out_bytes_total", kind: .counter,
                 help: "Guest RAM paged out to host swap by hypervisor swapping (pageout mechanism).") { .integer($0.pagedOutBytes) },
        VMFamily(name: "ballonet_vm_min_bytes", kind: .gauge, help: "The least memory the policy leaves the VM.") { $0.minBytes.map { .integer($0) } },
        VMFamily(name: "ballonet_vm_max_bytes", kind: .gauge, help: "The most memory the policy gives the VM.") { $0.maxBytes.map { .integer($0) } },
        VMFamily(name: "ballonet_vm_shares", kind: .gauge, help: "The VM's memory shares.") { $0.shares.map { .integer($0) } },
        VMFamily(name: "ballonet_vm_guest_agent_up", kind: .gauge, help: "1 while a session with the guest agent is established, else 0.") {
            .integer($0.state == "established" ? 1 : 0)
        },
        VMFamily(name: "ballonet_vm_reclaimed_bytes_total", kind: .counter,
                 help: "Host memory freed behind balloon pages since ballonet-host started.") { .integer($0.reclaimedBytes) },
        VMFamily(name: "ballonet_vm_inflated_bytes_total", kind: .counter, help: "Bytes the balloon grew by, in all.") { .integer($0.inflatedBytes) },
        VMFamily(name: "ballonet_vm_deflated_bytes_total", kind: .counter, help: "Bytes the balloon shrank by, in all.") { .integer($0.deflatedBytes) },
        VMFamily(name: "ballonet_vm_sessions_total", kind: .counter, help: "Sessions with the guest agent.") { .integer($0.sessions) },
        VMFamily(name: "ballonet_vm_batches_reclaimed_total", kind: .counter, help: "Batches of balloon pages whose memory the host freed.") {
            .integer($0.batchesReclaimed)
        },
        VMFamily(name: "ballonet_vm_batches_declined_total", kind: .counter, help: "Batches of balloon pages the host declined.") {
            .integer($0.batchesDeclined)
        },
        VMFamily(name: "ballonet_vm_refused_messages_total", kind: .counter,
                 help: "Guest messages refused (bad ranges, floods, malformed frames), never acted on.") { .integer($0.refusedMessages) },
        VMFamily(name: "ballonet_vm_mergeable", kind: .gauge, help: "1 when the VM's guest RAM is marked for KSM (sharing on), else 0.") {
            $0.mergeable.map { .integer($0 ? 1 : 0) }
        },
        VMFamily(name: "ballonet_vm_sharing_saved_bytes", kind: .gauge,
                 help: "What page sharing saves the host for the VM: 1/n of each page shared by n, and zero pages beyond its balloon.") {
            $0.sharingSavedBytes.map { .integer($0) }
        },
        VMFamily(name: "ballonet_vm_ksm_merging_bytes", kind: .gauge, help: "The VM's pages merged by KSM (ksm_merging_pages).") {
            $0.ksmMergingBytes.map { .integer($0) }
        },
        VMFamily(name: "ballonet_vm_ksm_zero_page_bytes", kind: .gauge, help: "The VM's pages KSM pointed at the zero page (ksm_zero_pages).") {
            $0.ksmZeroPageBytes.map { .integer($0) }
        },
        VMFamily(name: "ballonet_vm_pressure_released_bytes_total", kind: .counter,
                 help: "Balloon memory the guest gave back under its own memory pressure.") { .integer($0.pressureReleasedBytes) },
    ]

    // MARK: - The format

    enum Kind: String, Sendable {
        case gauge, counter
    }

    enum Number: Sendable {
        /// Printed as an integer: byte counts are exact, whatever a float would round them to.
        case integer(UInt64)
        case real(Double)

        var text: String {
            switch self {
            case .integer(let value):
                return String(value)
            case .real(let value):
                if value.isNaN { return "NaN" }
                if value.isInfinite { return value < 0 ? "-Inf" : "+Inf" }
                // Swift prints the shortest text that reads back as the same Double.
                return value.description
            }
        }
    }

    struct Sample {
        var labels: [(name: String, value: String)] = []
        var value: Number
    }

    struct Exposition {
        var text = ""

        mutating func family(_ name: String, _ kind: Kind, _ help: String, _ samples: [Sample]) {
            guard !samples.isEmpty else { return }
            text += "# HELP \(name) \(PrometheusText.escapeHelp(help))\n# TYPE \(name) \(kind.rawValue)\n"
            for sample in samples {
                text += name
                if !sample.labels.isEmpty {
                    text += "{"
                    text += sample.labels.map { "\($0.name)=\"\(PrometheusText.escapeLabelValue($0.value))\"" }.joined(separator: ",")
                    text += "}"
                }
                text += " \(sample.value.text)\n"
            }
        }
    }

    /// A label value as the format quotes it: backslash, double quote and line feed escaped.
    static func escapeLabelValue(_ value: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(value.utf8.count)
        for character in value.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }

    /// HELP text: backslash and line feed escaped (a quote needs none there).
    static func escapeHelp(_ help: String) -> String {
        var escaped = ""
        for character in help.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return escaped
    }
}
