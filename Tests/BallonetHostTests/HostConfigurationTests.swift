import Testing
import BallonetConfig
@testable import BallonetHost

@Suite struct HostConfigurationTests {
    static let fullFile = """
        # /etc/ballonet/host.toml
        [host]
        state_directory = "/run/ballonet-test"
        control_socket = "/run/ballonet-test/ctl.sock"
        budget_mib = 3_072
        stop_vms_on_exit = true
        log_level = "debug"

        [steering]
        inflate_step_mib = 128    # per second
        deadband_mib = 4
        pressure_backoff_seconds = 45

        [[vm]]
        name = "web-1"
        memory_mib = 2048
        cpus = 2
        kernel = "/var/lib/ballonet/vmlinuz"
        initrd = "/var/lib/ballonet/initrd.img"
        append = "console=ttyS0 quiet"
        ram_backing = "anonymous"
        extra_arguments = "-device virtio-rng-pci"
        qemu = "/usr/local/bin/qemu-system-x86_64"
        accelerator = "tcg"
        target_mib = 1024
        min_mib = 512

        [[vm]]
        name = "db.attached"
        qmp_socket = "/run/qemu/db/qmp.sock"
        port_socket = "/run/qemu/db/ballonet.sock"
        min_mib = 1024
        """

    static func parse(_ text: String) throws(ConfigurationError) -> HostConfiguration {
        try HostConfiguration.parse(text, path: "/etc/ballonet/host.toml")
    }

    /// The error `text` is refused with.
    static func error(_ text: String) -> ConfigurationError? {
        do {
            _ = try parse(text)
            return nil
        } catch {
            return error
        }
    }

    @Test func readsAFullFile() throws {
        let configuration = try Self.parse(Self.fullFile)
        #expect(configuration.stateDirectory == "/run/ballonet-test")
        #expect(configuration.controlSocket == "/run/ballonet-test/ctl.sock")
        #expect(configuration.effectiveControlSocket == "/run/ballonet-test/ctl.sock")
        #expect(configuration.budgetMiB == 3072)
        #expect(configuration.stopVMsOnExit)
        #expect(configuration.logLevel == "debug")
        #expect(configuration.steering == BalloonSteering.Settings(inflateStepPages: 128 * 256, stepMillis: 1_000,
                                                                   deadbandPages: 4 * 256, pressureBackoffMillis: 45_000))
        #expect(configuration.vms.map(\.name) == ["web-1", "db.attached"])

        let web = configuration.vms[0]
        let launch = try #require(web.launch)
        #expect(launch.memoryMiB == 2048)
        #expect(launch.cpus == 2)
        #expect(launch.kernel == "/var/lib/ballonet/vmlinuz")
        #expect(launch.initrd == "/var/lib/ballonet/initrd.img")
        #expect(launch.append == "console=ttyS0 quiet")
        #expect(launch.disk == "")
        #expect(launch.ramBacking == .anonymous)
        #expect(launch.extraArguments == "-device virtio-rng-pci")
        #expect(launch.qemu == "/usr/local/bin/qemu-system-x86_64")
        #expect(launch.accelerators == ["tcg"])
        #expect(web.targetMiB == 1024)
        #expect(web.minMiB == 512)
        #expect(web.qmpSocket == "")
        #expect(web.portSocket == "")

        let db = configuration.vms[1]
        #expect(db.launch == nil)
        #expect(db.qmpSocket == "/run/qemu/db/qmp.sock")
        #expect(db.portSocket == "/run/qemu/db/ballonet.sock")
        #expect(db.targetMiB == nil)
        #expect(db.minMiB == 1024)
    }

    @Test func defaults() throws {
        let empty = try Self.parse("# nothing but a comment\n\n")
        #expect(empty == HostConfiguration())
        #expect(empty.vms.isEmpty)
        #expect(empty.budgetMiB == 0)
        #expect(empty.effectiveControlSocket == "/run/ballonet/control.sock")
        let one = try Self.parse("""
            [[vm]]
            name = "disk-vm"
            disk = "/var/lib/images/disk.qcow2"
            """)
        let launch = try #require(one.vms.first?.launch)
        #expect(launch.memoryMiB == 512)
        #expect(launch.cpus == 1)
        #expect(launch.ramBacking == .memfd)
        #expect(launch.accelerators == ["kvm", "tcg"])
        #expect(one.vms[0].minMiB == 128)
        #expect(one.vms[0].targetMiB == nil)
        #expect(one.steering == BalloonSteering.Settings())
    }

    @Test func libvirtURI() throws {
        #expect(try Self.parse("").libvirtURI == "qemu:///system")
        #expect(try Self.parse("[libvirt]\nuri = \"\"\n").libvirtURI == "")
        #expect(try Self.parse("[libvirt]\nuri = \"qemu+ssh://root@h/system\"\n").libvirtURI == "qemu+ssh://root@h/system")
        let error = try #require(Self.error("[libvirt]\nuri = \"qemu:///system extra\"\n"))
        #expect(error.description.contains("libvirt URI"), "\(error)")
        #expect(Self.error("[libvirt]\nsocket = \"/x\"\n") != nil, "unknown key in [libvirt]")
    }

    @Test func sharingSettingsAndThePerVMChoice() throws {
        let defaults = try Self.parse("")
        #expect(defaults.sharing.steerKSM && !defaults.sharing.defaultOn && defaults.sharing.policy.maxCPUPercent == 20)
        let configuration = try Self.parse("""
            [sharing]
            steer_ksm = false
            default = true
            max_cpu_percent = 35
            recheck_minutes = 10
            [[vm]]
            name = "a"
            kernel = "/k"
            ram_backing = "anonymous"
            sharing = false
            [[vm]]
            name = "b"
            kernel = "/k"
            ram_backing = "anonymous"
            """)
        #expect(!configuration.sharing.steerKSM && configuration.sharing.defaultOn)
        #expect(configuration.sharing.policy.maxCPUPercent == 35 && configuration.sharing.policy.recheckMillis == 600_000)
        #expect(configuration.vms[0].sharing == false && configuration.vms[1].sharing == nil)
        // QEMU gets mem-merge from the VM's choice, else the host's default; memfd RAM never merges.
        let inventory = QEMUInventory(configuration: configuration)
        let choiceA = inventory.sharingChoice(configuration.vms[0], launch: configuration.vms[0].launch!)
        let choiceB = inventory.sharingChoice(configuration.vms[1], launch: configuration.vms[1].launch!)
        #expect(choiceA == SharingChoice(on: false, decidedBy: "host.toml sharing = false"))
        let a = QEMUInventory.arguments(for: configuration.vms[0], launch: configuration.vms[0].launch!, directory: "/d", sharing: choiceA.on)
        let b = QEMUInventory.arguments(for: configuration.vms[1], launch: configuration.vms[1].launch!, directory: "/d", sharing: choiceB.on)
        #expect(a.contains("pc,memory-backend=ram0,mem-merge=off") && a.contains { $0.hasSuffix(",merge=off") })
        #expect(b.contains("pc,memory-backend=ram0,mem-merge=on") && b.contains { $0.hasSuffix(",merge=on") })
        #expect(choiceB == SharingChoice(on: true, decidedBy: "[sharing] default = true"))
        var memfd = configuration.vms[1].launch!
        memfd.ramBacking = .memfd
        let memfdChoice = inventory.sharingChoice(configuration.vms[1], launch: memfd)
        #expect(memfdChoice == SharingChoice(on: false, decidedBy: "memfd RAM, which KSM cannot merge"))
        #expect(QEMUInventory.arguments(for: configuration.vms[1], launch: memfd, directory: "/d", sharing: true).contains("pc,memory-backend=ram0,mem-merge=off"))

        let onMemfd = try #require(Self.error("[[vm]]\nname = \"m\"\nkernel = \"/k\"\nsharing = true\n"))
        #expect(onMemfd.message.contains("KSM merges only anonymous RAM"), "\(onMemfd)")
        let attached = try #require(Self.error("[[vm]]\nname = \"x\"\nqmp_socket = \"/q\"\nport_socket = \"/p\"\nsharing = true\n"))
        #expect(attached.message.contains("attaches"), "\(attached)")
        #expect(Self.error("[sharing]\nmax_cpu_percent = 0\n") != nil && Self.error("[sharing]\nmax_cpu_percent = 101\n") != nil)
        #expect(Self.error("[sharing]\nrate = 5\n") != nil, "unknown key in [sharing]")
    }

    @Test func windowsLineEnds() throws {
        let crlf = Self.fullFile.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\r\n")
        #expect(try Self.parse(crlf) == Self.parse(Self.fullFile))
    }

    @Test func anUnknownKeyIsNamedWithTheKnownOnesAndItsLine() throws {
        let text = """
            [host]
            budget_mib = 1024
            budget_mb = 1024
            """
        let error = try #require(Self.error(text))
        #expect(error.kind == .unknownKey)
        #expect(error.line == 3)
        #expect(error.message.contains("\"budget_mb\""))
        #expect(error.message.contains("[host]"))
        for key in ["state_directory", "control_socket", "budget_mib", "stop_vms_on_exit", "log_level"] {
            #expect(error.message.contains(key))
        }
        #expect(error.description.hasPrefix("/etc/ballonet/host.toml line 3: "))

        let inVM = try #require(Self.error("""
            [[vm]]
            name = "a"
            kernel = "/k"
            memory = 1024
            """))
        #expect(inVM.kind == .unknownKey)
        #expect(inVM.line == 4)
        #expect(inVM.message.contains("\"memory\""))
        #expect(inVM.message.contains("memory_mib"))
        #expect(inVM.message.contains("port_socket"))
    }

    @Test func vmMustBeAnArrayOfTables() throws {
        let error = try #require(Self.error("""
            [host]
            budget_mib = 0

            [vm]
            name = "a"
            kernel = "/k"
            """))
        #expect(error.kind == .unknownTable)
        #expect(error.line == 4)
        #expect(error.message.contains("[[vm]]"))
    }

    @Test func hostMustBeASingleTable() throws {
        let error = try #require(Self.error("""
            [[host]]
            budget_mib = 0
            """))
        #expect(error.kind == .unknownTable)
        #expect(error.line == 1)
        #expect(error.message.contains("[host]"))
    }

    @Test func unknownTablesAndKeysOutsideTables() throws {
        let table = try #require(Self.error("[hosts]\nbudget_mib = 1\n"))
        #expect(table.kind == .unknownTable)
        #expect(table.message.contains("[hosts]"))
        #expect(table.message.contains("[[vm]]"))
        let stray = try #require(Self.error("budget_mib = 1\n[host]\n"))
        #expect(stray.kind == .keyOutsideTable)
        #expect(stray.line == 1)
    }

    @Test func duplicateVMNames() throws {
        let error = try #require(Self.error("""
            [[vm]]
            name = "twin"
            kernel = "/k"

            [[vm]]
            name = "twin"
            qmp_socket = "/q"
            port_socket = "/p"
            """))
        #expect(error.kind == .duplicateTable)
        #expect(error.line == 5)
        #expect(error.message.contains("twin"))
    }

    @Test func aVMNeedsSomethingToBootOrAttachTo() throws {
        let nothing = try #require(Self.error("""
            [[vm]]
            name = "empty"
            memory_mib = 1024
            """))
        #expect(nothing.kind == .outOfRange)
        #expect(nothing.line == 1)
        #expect(nothing.message.contains("kernel"))
        #expect(nothing.message.contains("disk"))
        #expect(nothing.message.contains("qmp_socket"))
        // Both a kernel and a disk is as unclear as neither.
        let both = try #require(Self.error("[[vm]]\nname = \"b\"\nkernel = \"/k\"\ndisk = \"/d\"\n"))
        #expect(both.kind == .outOfRange)
        // Attaching needs both sockets.
        let half = try #require(Self.error("[[vm]]\nname = \"h\"\nqmp_socket = \"/q\"\n"))
        #expect(half.kind == .outOfRange)
        #expect(half.message.contains("port_socket"))
        let unnamed = try #require(Self.error("[[vm]]\nkernel = \"/k\"\n"))
        #expect(unnamed.message.contains("name"))
    }

    @Test(arguments: ["memory_mib = 1024", "kernel = \"/k\"", "disk = \"/d\"", "ram_backing = \"memfd\"", "cpus = 2",
                      "accelerator = \"kvm\"", "qemu = \"/q\""])
    func anAttachedVMTakesNoLaunchKeys(_ line: String) throws {
        let error = try #require(Self.error("""
            [[vm]]
            name = "attached"
            qmp_socket = "/run/q.sock"
            port_socket = "/run/p.sock"
            \(line)
            """))
        #expect(error.kind == .outOfRange)
        #expect(error.line == 5)
        let key = String(line.prefix { $0 != " " })
        #expect(error.message.contains("\"\(key)\""))
        #expect(error.message.contains("attaches"))
    }

    @Test func badRAMBacking() throws {
        let error = try #require(Self.error("[[vm]]\nname = \"a\"\nkernel = \"/k\"\nram_backing = \"hugetlbfs\"\n"))
        #expect(error.kind == .outOfRange)
        #expect(error.line == 4)
        #expect(error.message.contains("ram_backing"))
        #expect(error.message.contains("memfd"))
        #expect(error.message.contains("anonymous"))
    }

    @Test(arguments: ["\"xen\"", "\"kvm,hvf\"", "\"\"", "\"KVM\"", "\"kvm tcg\""])
    func badAccelerator(_ value: String) throws {
        let error = try #require(Self.error("[[vm]]\nname = \"a\"\nkernel = \"/k\"\naccelerator = \(value)\n"))
        #expect(error.kind == .outOfRange)
        #expect(error.line == 4)
        #expect(error.message.contains("accelerator"))
    }

    @Test func acceleratorLists() throws {
        let configuration = try Self.parse("[[vm]]\nname = \"a\"\nkernel = \"/k\"\naccelerator = \"tcg,kvm\"\n")
        #expect(configuration.vms[0].launch?.accelerators == ["tcg", "kvm"])
    }

    @Test func targetAboveMemory() throws {
        let error = try #require(Self.error("""
            [[vm]]
            name = "a"
            kernel = "/k"
            memory_mib = 1024
            target_mib = 1025
            """))
        #expect(error.kind == .outOfRange)
        #expect(error.line == 5)
        #expect(error.message.contains("target_mib"))
        #expect(error.message.contains("1024"))
        // Equal is fine.
        let equal = try Self.parse("[[vm]]\nname = \"a\"\nkernel = \"/k\"\nmemory_mib = 1024\ntarget_mib = 1024\n")
        #expect(equal.vms[0].targetMiB == 1024)
    }

    @Test func budgetBelowTheMinimumsIsAdmissionControlsToRefuse() throws {
        let text = """
            [host]
            budget_mib = 1000
            require_swap = false

            [[vm]]
            name = "a"
            kernel = "/k"
            memory_mib = 1024
            min_mib = 600

            [[vm]]
            name = "b"
            disk = "/d"
            memory_mib = 1024
            min_mib = 500
            """
        // The file is fine; the second VM does not fit next to the first (600 of the 1000 MiB budget taken;
        // a budget counts guest RAM only, so no overhead is charged against it).
        let configuration = try Self.parse(text)
        var ledger = AdmissionLedger(configuration: configuration, meminfo: nil)
        let first = ledger.decide(configuration.vms[0], memoryMiB: 1024)
        #expect(first.isAdmitted, "\(first.message)")
        ledger.add(configuration.vms[0], memoryMiB: 1024)
        let second = ledger.decide(configuration.vms[1], memoryMiB: 1024)
        #expect(!second.isAdmitted)
        #expect(second.message.contains("VM b cannot start"))
        #expect(second.message.contains("short by 100 MiB"), "\(second.message)")
        // With swap required and none on the host, even the first is refused, and the message says so.
        var strict = configuration
        strict.requireSwap = true
        let noSwap = AdmissionLedger(configuration: strict, meminfo: nil).decide(strict.vms[0], memoryMiB: 1024)
        #expect(!noSwap.isAdmitted)
        #expect(noSwap.message.contains("max − min = 424 MiB"), "\(noSwap.message)")
    }

    @Test func valuesOutOfRangeOrOfTheWrongType() throws {
        let cases: [(String, ConfigurationError.Kind, String)] = [
            ("[host]\nbudget_mib = -1\n", .outOfRange, "budget_mib"),
            ("[host]\nbudget_mib = \"1024\"\n", .wrongType, "budget_mib"),
            ("[host]\nstop_vms_on_exit = 1\n", .wrongType, "stop_vms_on_exit"),
            ("[host]\nlog_level = \"verbose\"\n", .outOfRange, "log_level"),
            ("[steering]\ninflate_step_mib = 0\n", .outOfRange, "inflate_step_mib"),
            ("[steering]\npressure_backoff_seconds = 3601\n", .outOfRange, "pressure_backoff_seconds"),
            ("[[vm]]\nname = \"a\"\nkernel = \"/k\"\nmemory_mib = 32\n", .outOfRange, "memory_mib"),
            ("[[vm]]\nname = \"a\"\nkernel = \"/k\"\ncpus = 0\n", .outOfRange, "cpus"),
            ("[[vm]]\nname = \"../etc\"\nkernel = \"/k\"\n", .outOfRange, "name"),
            ("[[vm]]\nname = \".hidden\"\nkernel = \"/k\"\n", .outOfRange, "name"),
        ]
        for (text, kind, key) in cases {
            let error = Self.error(text)
            #expect(error?.kind == kind, "\(text)")
            #expect(error?.message.contains(key) == true, "\(text)")
        }
    }

    @Test func aStateDirectoryTooLongForSockets() throws {
        let long = "/" + String(repeating: "d", count: 100)
        let error = try #require(Self.error("[host]\nstate_directory = \"\(long)\"\n[[vm]]\nname = \"a\"\nkernel = \"/k\"\n"))
        #expect(error.kind == .outOfRange)
        #expect(error.message.contains("state_directory"))
    }
}

@Suite struct TOMLSubsetTests {
    @Test func arrayOfTablesElementsKeepTheirOwnEntries() throws {
        let document = try TOMLSubset.parse("""
            [[vm]]
            name = "a"
            memory_mib = 512

            [other]
            x = 1

            [[vm]]
            name = "b"
            cpus = 4
            [[vm]]
            name = "c"
            """, path: "t.toml")
        #expect(document.rootEntries.isEmpty)
        #expect(document.tables.map(\.name) == ["vm", "other", "vm", "vm"])
        #expect(document.tables.map(\.isArrayElement) == [true, false, true, true])
        #expect(document.tables.map(\.line) == [1, 5, 8, 11])
        #expect(document.tables[0].entries == [TOMLEntry(key: "name", value: .string("a"), line: 2),
                                               TOMLEntry(key: "memory_mib", value: .integer(512), line: 3)])
        #expect(document.tables[1].entries == [TOMLEntry(key: "x", value: .integer(1), line: 6)])
        #expect(document.tables[2].entries == [TOMLEntry(key: "name", value: .string("b"), line: 9),
                                               TOMLEntry(key: "cpus", value: .integer(4), line: 10)])
        #expect(document.tables[3].entries == [TOMLEntry(key: "name", value: .string("c"), line: 12)])
    }

    @Test func theSameKeyInTwoElementsIsNoDuplicate() throws {
        let document = try TOMLSubset.parse("[[vm]]\nname = \"a\"\n[[vm]]\nname = \"a\"\n", path: "t.toml")
        #expect(document.tables.count == 2)
        // Within one element it is.
        #expect(throws: ConfigurationError.self) { try TOMLSubset.parse("[[vm]]\nname = \"a\"\nname = \"b\"\n", path: "t.toml") }
    }

    @Test(arguments: [("[vm]\nname = \"a\"\n[[vm]]\nname = \"b\"\n", 3),
                      ("[[vm]]\nname = \"a\"\n[vm]\nname = \"b\"\n", 3),
                      ("[host]\n[host]\n", 2)])
    func mixingOrRepeatingTablesIsADuplicate(_ text: String, line: Int) throws {
        do {
            _ = try TOMLSubset.parse(text, path: "t.toml")
            Issue.record("accepted \(text)")
        } catch {
            #expect(error.kind == .duplicateTable)
            #expect(error.line == line)
            #expect(error.message.contains("first on line 1"))
        }
    }

    @Test func valuesAndComments() throws {
        let document = try TOMLSubset.parse("""
            [t]
            s = "a \\"quoted\\" \\\\ path\\n" # comment
            i = -1_000
            f = 2.5
            yes = true
            no = false
            """, path: "t.toml")
        #expect(document.tables[0].entries.map(\.value) == [
            .string("a \"quoted\" \\ path\n"), .integer(-1000), .float(2.5), .boolean(true), .boolean(false),
        ])
    }

    @Test(arguments: ["[a.b]", "a.b = 1", "x = [1, 2]", "x = 'lit'", "x = 1__0", "x = 012", "x = \"open",
                      "x = 99999999999999999999", "[[vm]", "x = 1 y = 2"])
    func whatIsNotInTheSubsetIsASyntaxError(_ line: String) {
        do {
            _ = try TOMLSubset.parse("[t]\n" + line + "\n", path: "t.toml")
            Issue.record("accepted \(line)")
        } catch {
            #expect(error.kind == .syntax)
            #expect(error.line == 2)
        }
    }

    @Test func policyTableAndPerVMSharesAndMax() throws {
        let configuration = try HostConfigurationTests.parse("""
            [host]
            reserve_mib = 2048
            vm_overhead_mib = 96
            require_swap = false

            [policy]
            idle_tax = 0
            trimming = false
            trim_buffer_percent = 30
            max_decrease_percent_per_second = 0
            slow_half_life_seconds = 12.5
            soft_percent = 5

            [[vm]]
            name = "a"
            kernel = "/k"
            memory_mib = 2048
            max_mib = 1536
            shares = 500
            """)
        #expect(configuration.reserveMiB == 2048 && configuration.vmOverheadMiB == 96 && !configuration.requireSwap)
        #expect(configuration.policy.idleTaxRate == 0)
        #expect(!configuration.policy.trimming.enabled)
        #expect(configuration.policy.trimming.bufferPercent == 30)
        #expect(configuration.policy.changeLimit.maximumDecreasePercentPerSecond == nil)
        #expect(configuration.policy.estimator.slowHalfLifeMillis == 12_500)
        #expect(configuration.policy.thresholds.softPercent == 5)
        #expect(configuration.vms[0].maxMiB == 1536 && configuration.vms[0].shares == 500)
        #expect(configuration.vms[0].effectiveShares(maxBytes: 1536 << 20) == 500)
        // Default shares: 10 per MiB of max.
        #expect(VMConfiguration(name: "b").effectiveShares(maxBytes: 2048 << 20) == 20_480)
    }

    @Test func policyValuesAreChecked() throws {
        let cases: [(String, String)] = [
            ("[policy]\nidle_tax = 1.5\n", "idle_tax"),
            ("[policy]\nidle_tax = \"high\"\n", "must be a number"),
            ("[policy]\nsoft_percent = 7\n", "ordered"),
            ("[policy]\nfast_half_life_seconds = 30\n", "fast_half_life_seconds"),
            ("[policy]\nidle_taks = 0.5\n", "unknown key"),
            ("[[vm]]\nname = \"a\"\nkernel = \"/k\"\nmemory_mib = 512\nmax_mib = 1024\n", "max_mib"),
            ("[[vm]]\nname = \"a\"\nkernel = \"/k\"\nmax_mib = 256\nmin_mib = 300\n", "min_mib"),
            ("[[vm]]\nname = \"a\"\nkernel = \"/k\"\nshares = 0\n", "shares"),
        ]
        for (text, expected) in cases {
            let error = try #require(HostConfigurationTests.error(text), "\(text)")
            let note = text + ": " + error.message
            #expect(error.message.contains(expected), "\(note)")
            #expect(error.line > 0, "\(note)")
        }
    }
}
