import BallonetLinux
import Foundation
import Logging
import Testing

@testable import BallonetHost

/// A domain as an operator sets it up for Ballonet (docs/LIBVIRT.md): memfd RAM, the channel, metadata.
private func domainXML(name: String, memoryMiB: Int = 512, channel: Bool = true, balloon: Bool = true,
                       metadata: String? = "<ballonet:min_mib>192</ballonet:min_mib><ballonet:max_mib>448</ballonet:max_mib><ballonet:shares>3000</ballonet:shares>",
                       type: String = "test", memoryBacking: String = "<source type='memfd'/><access mode='shared'/>") -> String {
    """
    <domain type='\(type)'>
      <name>\(name)</name>
      \(metadata.map { "<metadata><ballonet:vm xmlns:ballonet='\(BallonetDomainMetadata.namespace)'>\($0)</ballonet:vm></metadata>" } ?? "")
      <memory unit='MiB'>\(memoryMiB)</memory>
      <currentMemory unit='MiB'>\(memoryMiB)</currentMemory>
      <memoryBacking>\(memoryBacking)</memoryBacking>
      <vcpu>1</vcpu>
      <os><type arch='x86_64'>hvm</type></os>
      <devices>
        \(channel ? "<channel type='unix'><source mode='bind' path='/run/ballonet/\(name).sock'/><target type='virtio' name='org.ballonet.0'/></channel>" : "")
        <memballoon model='\(balloon ? "virtio" : "none")'/>
      </devices>
    </domain>
    """
}

@Suite("Domain XML and Ballonet metadata")
struct LibvirtDomainDescriptionTests {
    @Test("The live XML gives RAM, backing, the channel, the balloon and the metadata")
    func parsesADomain() throws {
        let description = try LibvirtDomainDescription(xml: domainXML(name: "web1"))
        #expect(description.name == "web1")
        #expect(description.memoryBytes == 512 << 20)
        #expect(description.backing == .memfd)
        #expect(description.ballonetChannelPath == "/run/ballonet/web1.sock")
        #expect(description.hasVirtioBalloon)
        #expect(description.metadata == BallonetDomainMetadata(minMiB: 192, maxMiB: 448, shares: 3000))
        let configuration = description.metadata.applied(to: VMConfiguration(name: "web1"))
        #expect(configuration.minMiB == 192 && configuration.maxMiB == 448 && configuration.shares == 3000)
    }

    @Test("A domain without channel, balloon or metadata; units other than MiB")
    func parsesABareDomain() throws {
        let xml = domainXML(name: "bare", channel: false, balloon: false, metadata: nil)
            .replacingOccurrences(of: "<memory unit='MiB'>512</memory>", with: "<memory>1048576</memory>")
        let description = try LibvirtDomainDescription(xml: xml)
        #expect(description.memoryBytes == 1 << 30)   // KiB when no unit is given
        #expect(description.ballonetChannelPath == nil)
        #expect(!description.hasVirtioBalloon)
        #expect(description.metadata == BallonetDomainMetadata())
        let gib = try LibvirtDomainDescription(xml: xml.replacingOccurrences(of: "<memory>1048576</memory>", with: "<memory unit='GiB'>2</memory>"))
        #expect(gib.memoryBytes == 2 << 30)
    }

    @Test("Metadata as virDomainGetMetadata returns it: no prefix, no namespace")
    func parsesBareMetadata() throws {
        let metadata = try BallonetDomainMetadata.parse("<vm><shares>500</shares><swap>off</swap><future_key>x</future_key></vm>", domain: "d")
        #expect(metadata == BallonetDomainMetadata(shares: 500, swap: .off))
        // The element we write is what we read back.
        #expect(try BallonetDomainMetadata.parse(BallonetDomainMetadata(minMiB: 1, maxMiB: 512, shares: 3, swap: .cgroup).element, domain: "d")
            == BallonetDomainMetadata(minMiB: 1, maxMiB: 512, shares: 3, swap: .cgroup))
    }

    @Test("Bad metadata and bad XML are errors that name the domain and the value", arguments: [
        ("<vm><shares>0</shares></vm>", "shares"),
        ("<vm><shares>lots</shares></vm>", "lots"),
        ("<vm><min_mib>900</min_mib><max_mib>100</max_mib></vm>", "above max_mib"),
        ("<vm><swap>sometimes</swap></vm>", "sometimes"),
        ("<vm><shares>1", "not well-formed"),
        ("<!DOCTYPE vm [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><vm><shares>&e;</shares></vm>", "DOCTYPE"),
    ])
    func refusesBadMetadata(xml: String, mentions: String) {
        do {
            _ = try BallonetDomainMetadata.parse(xml, domain: "db7")
            Issue.record("accepted \(xml)")
        } catch {
            #expect("\(error)".contains(mentions))
        }
    }

    @Test("An overflowing size, an unknown unit and oversized XML are refused")
    func refusesBadSizes() {
        let base = domainXML(name: "big", metadata: nil)
        #expect(throws: LibvirtDescriptionError.self) {
            try LibvirtDomainDescription(xml: base.replacingOccurrences(of: "unit='MiB'>512<", with: "unit='TiB'>99999999999<"))
        }
        #expect(throws: LibvirtDescriptionError.self) {
            try LibvirtDomainDescription(xml: base.replacingOccurrences(of: "unit='MiB'>512<", with: "unit='furlongs'>512<"))
        }
        let padding = String(repeating: " ", count: LibvirtDomainDescription.maximumXMLBytes)
        #expect(throws: LibvirtDescriptionError.self) { try LibvirtDomainDescription(xml: base + padding) }
    }

    @Test("A v2 threaded cgroup of libvirt's leads to the domain's group; others are left as they are")
    func domainGroup() {
        let scope = "/sys/fs/cgroup/machine.slice/machine-qemu\\x2d1\\x2dweb.scope/libvirt"
        #expect(MemoryCgroup(path: scope + "/emulator", version: .v2).domainGroup.path == scope)
        #expect(MemoryCgroup(path: scope + "/vcpu12", version: .v2).domainGroup.path == scope)
        #expect(MemoryCgroup(path: scope, version: .v2).domainGroup.path == scope)
        #expect(MemoryCgroup(path: "/sys/fs/cgroup/memory/machine/emulator", version: .v1).domainGroup.path == "/sys/fs/cgroup/memory/machine/emulator")
        #expect(MemoryCgroup(path: "/x/vcpus", version: .v2).domainGroup.path == "/x/vcpus")
    }
}

/// Against libvirt's `test:///default` driver (in libvirt0, no daemon): its state is shared by the
/// process's connections, so these run one at a time, each with its own domain names.
@Suite("libvirt through the test driver", .serialized)
struct LibvirtTestDriverTests {
    let logger = Logger(label: "libvirt-test")

    /// Polls the inventory (as the engine's loop does) until `accept` takes a change, for at most 10 s.
    func waitForChange(_ inventory: LibvirtInventory, from millis: inout UInt64, _ accept: (InventoryChange) -> Bool) -> Bool {
        for _ in 0..<200 {
            millis += 50
            // Below the 30 s resync: only an event makes the inventory look again.
            if inventory.changes(nowMillis: millis, logger: logger).contains(where: accept) { return true }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return false
    }

    @Test("Listing, lifecycle and metadata events, and the domain's memory calls")
    func inventoryFollowsTheDriver() throws {
        let connection = try LibvirtConnection(uri: "test:///default") { _ in }
        let name = "lv-inv-\(UInt32.random(in: 0 ... .max))"
        let domain = try connection.define(xml: domainXML(name: name))
        try domain.start()
        defer {
            try? domain.destroy()
            try? domain.undefine()
        }
        let inventory = LibvirtInventory(uri: "test:///default")
        let endpoints = try inventory.endpoints(logger: logger)
        let endpoint = try #require(endpoints.first { $0.name == name })
        #expect(endpoint.portSocket == "/run/ballonet/\(name).sock")
        #expect(endpoint.virtioBalloon == nil)   // it has the channel: ballonet-guest, not the fallback
        #expect(endpoint.metadata == BallonetDomainMetadata(minMiB: 192, maxMiB: 448, shares: 3000))
        #expect(endpoint.source == "libvirt test:///default")
        // The driver's own domain has only a virtio balloon: it is managed through it.
        let builtIn = try #require(endpoints.first { $0.name == "test" })
        #expect(builtIn.portSocket == nil && builtIn.virtioBalloon != nil)
        // Sharing: the domain's XML decides, and the endpoint says what decided.
        #expect(endpoint.sharing == SharingChoice(on: false, decidedBy: "memfd RAM, which KSM cannot merge"))
        #expect(builtIn.sharing == SharingChoice(on: true, decidedBy: "the domain has no <nosharepages/> (QEMU merges by default)"))
        let privateName = "lv-noshare-\(UInt32.random(in: 0 ... .max))"
        let privateDomain = try connection.define(xml: domainXML(name: privateName, memoryBacking: "<nosharepages/>"))
        try privateDomain.start()
        defer {
            try? privateDomain.destroy()
            try? privateDomain.undefine()
        }
        let noShare = try #require(try LibvirtInventory(uri: "test:///default").endpoints(logger: logger).first { $0.name == privateName })
        #expect(noShare.sharing == SharingChoice(on: false, decidedBy: "the domain's <nosharepages/>"))

        // virsh metadata → the new settings, through the METADATA_CHANGE event.
        try domain.setMetadata(BallonetDomainMetadata(minMiB: 256, shares: 9000).element, key: BallonetDomainMetadata.key,
                               uri: BallonetDomainMetadata.namespace, persistent: false)
        var millis: UInt64 = 1
        #expect(waitForChange(inventory, from: &millis) {
            if case .settingsChanged(name, let metadata) = $0 { metadata == BallonetDomainMetadata(minMiB: 256, shares: 9000) } else { false }
        })
        #expect(try BallonetDomainMetadata.parse(try #require(try domain.metadata(uri: BallonetDomainMetadata.namespace)), domain: name)
            == BallonetDomainMetadata(minMiB: 256, shares: 9000))

        // The balloon and the memory tunables, as the engine uses them.
        let access = try #require(endpoint.memoryTunables)
        try access.domain().setBalloonTarget(kibibytes: 300 << 10)
        #expect(try access.domain().memoryStats()[6] == 300 << 10)
        try access.domain().setMemoryParameter("soft_limit", kibibytes: 200 << 10)
        #expect(try access.domain().memoryParameters()["soft_limit"] == .some(200 << 10))
        try access.domain().setMemoryParameter("soft_limit", kibibytes: nil)
        #expect(try access.domain().memoryParameters()["soft_limit"] == .some(nil))

        // Destroyed → gone, with what happened.
        try domain.destroy()
        #expect(waitForChange(inventory, from: &millis) {
            if case .disappeared(name, let reason) = $0 { reason.contains("was destroyed") } else { false }
        })
        #expect(throws: (any Error).self) { try access.domain().setBalloonTarget(kibibytes: 1 << 10) }

        // Started again → managed again, as a new run.
        try domain.start()
        #expect(waitForChange(inventory, from: &millis) { if case .appeared(let found) = $0 { found.name == name } else { false } })
        inventory.shutdown(logger: logger)
    }

    @Test("libvirt's errors are typed, and a missing domain or metadata is nil, not an error")
    func errors() throws {
        let connection = try LibvirtConnection(uri: "test:///default") { _ in }
        #expect(try connection.domain(named: "no-such-domain-\(UInt32.random(in: 0 ... .max))") == nil)
        let name = "lv-err-\(UInt32.random(in: 0 ... .max))"
        let domain = try connection.define(xml: domainXML(name: name, metadata: nil))
        defer { try? domain.undefine() }
        #expect(try domain.metadata(uri: BallonetDomainMetadata.namespace) == nil)
        do {
            try domain.setBalloonTarget(kibibytes: 64 << 10)   // not running
            Issue.record("set the balloon of a domain that is not running")
        } catch let error as LibvirtError {
            #expect(error.operation.hasPrefix("virDomainSetMemoryFlags") && !error.message.isEmpty)
        }
        #expect(throws: LibvirtError.self) { try LibvirtConnection(uri: "qemu:///system?socket=/nonexistent/sock") { _ in } }
    }

    @Test("An unreachable libvirtd leaves the inventory empty and retrying, not failing")
    func unreachable() throws {
        let inventory = LibvirtInventory(uri: "qemu:///system?socket=/nonexistent/libvirt-sock")
        #expect(try inventory.endpoints(logger: logger).isEmpty)
        #expect(inventory.changes(nowMillis: 500, logger: logger).isEmpty)
    }
}
