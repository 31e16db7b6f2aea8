import BallonetLinux
import Foundation
import Logging
import Synchronization

/// The inventory's connection to libvirtd, shared with the domain handles it gave out: when libvirtd
/// restarts, the inventory reconnects and every handle looks its domain up again on the new connection.
/// Only the engine's thread uses it.
final class LibvirtLink: @unchecked Sendable {
    let uri: String
    private(set) var connection: LibvirtConnection?
    /// Bumped on every new connection, so cached domain handles of an old one are not used.
    private(set) var generation = 0

    init(uri: String) { self.uri = uri }

    func replace(with connection: LibvirtConnection?) {
        self.connection = connection
        generation += 1
    }
}

/// One libvirt domain as the engine uses it: looked up by name on the inventory's current connection
/// (and checked by UUID, so a domain of the same name defined anew is not taken for it).
public final class LibvirtDomainAccess: @unchecked Sendable {
    public let name: String
    public let uuid: String
    let link: LibvirtLink
    private var cached: (generation: Int, domain: LibvirtDomain)?

    init(name: String, uuid: String, link: LibvirtLink) {
        self.name = name
        self.uuid = uuid
        self.link = link
    }

    func domain() throws -> LibvirtDomain {
        if let cached, cached.generation == link.generation { return cached.domain }
        guard let connection = link.connection else {
            throw InventoryError("no connection to libvirtd at \(link.uri) (reconnecting)")
        }
        guard let domain = try connection.domain(named: name), domain.uuid == uuid else {
            throw InventoryError("libvirt has no domain \(name) with UUID \(uuid) any more")
        }
        cached = (link.generation, domain)
        return domain
    }

    /// libvirt's qemu driver keeps each running domain's QEMU pid here (no API gives it).
    static let qemuStateDirectory = "/run/libvirt/qemu"

    /// The domain's QEMU pid, from libvirt's pid file, checked against the process's command line (QEMU
    /// runs with `-uuid <uuid>`), so a stale file never points the reclaimer at another process.
    func qemuProcessID() throws -> Int32 {
        let file = Self.qemuStateDirectory + "/" + name + ".pid"
        let text: String
        do {
            text = String(decoding: try FileSystem.readFile(file, maxBytes: 64), as: UTF8.self)
        } catch {
            throw InventoryError("cannot read QEMU's pid for domain \(name) from \(file): \(error)")
        }
        guard let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else {
            throw InventoryError("\(file) does not hold a pid: '\(text.prefix(20))'")
        }
        // A QEMU command line is a few KiB; 1 MiB bounds a process that is not QEMU.
        let commandLine = (try? FileSystem.readFile("/proc/\(pid)/cmdline", maxBytes: 1 << 20)) ?? []
        let arguments = commandLine.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard let index = arguments.firstIndex(of: "-uuid"), index + 1 < arguments.count, arguments[index + 1] == uuid else {
            throw InventoryError("pid \(pid) from \(file) is not the QEMU of domain \(name) (no -uuid \(uuid) on its command line)")
        }
        return pid
    }
}

/// A domain's QEMU monitor through libvirtd, which owns the monitor socket: QMP as JSON text, HMP as
/// text, pause and resume as libvirt's own suspend and resume (so `virsh list` says "paused").
struct LibvirtMonitor: QEMUMonitor {
    let domain: LibvirtDomainAccess

    @discardableResult
    func execute(_ command: String, arguments: [String: Any]?) throws -> Any {
        var request: [String: Any] = ["execute": command]
        if let arguments { request["arguments"] = arguments }
        let text = try domain.domain().monitorCommand(String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self))
        guard text.utf8.count <= QMPLimits.maximumLineBytes,
              let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw QMPError("QMP \(command) through libvirt for \(domain.name) answered with something that is not a JSON object: \(text.prefix(200))")
        }
        if let value = object["return"] { return value }
        let error = object["error"] as? [String: Any]
        throw QMPError("QMP \(command) failed: \(error?["class"] ?? "?"): \(error?["desc"] ?? "?")")
    }

    func humanMonitor(_ commandLine: String) throws -> String {
        // HMP through libvirt ends lines with "\r\n".
        try domain.domain().monitorCommand(commandLine, human: true).replacingOccurrences(of: "\r", with: "")
    }

    func processID() throws -> Int32 { try domain.qemuProcessID() }
    func pause() throws { try domain.domain().suspend() }
    func resume() throws { try domain.domain().resume() }
}

/// libvirt's running domains as the engine's VMs: listed at startup, followed through lifecycle and
/// metadata events, and listed again after libvirtd comes back (events in the gap are lost).
///
/// A domain is managed when it has the `org.ballonet.0` channel (ballonet-guest's port) or, failing that, a
/// virtio balloon (the fallback). Per-VM min, max, shares and swap come from its Ballonet metadata
/// (`BallonetDomainMetadata`), read from the live XML at every resync, so `virsh metadata` takes effect
/// within a second and needs no restart.
public final class LibvirtInventory: VMInventory {
    public let uri: String
    let link: LibvirtLink
    /// Names host.toml already uses: a domain of the same name is not taken (one VM, one manager).
    let reservedNames: Set<String>
    public private(set) var refused: [(name: String, reason: String)] = []

    /// Events from libvirt's thread, drained by the engine's.
    private let events = LibvirtEventQueue()
    private var known: [String: Known] = [:]
    /// Why each domain last stopped, from its lifecycle event: the log says "destroyed", not "gone".
    private var lastStop: [String: String] = [:]
    /// Domains missing from the list whose stop event has not arrived yet, and since when.
    private var missingSince: [String: UInt64] = [:]
    /// Domains reported once as not manageable (neither channel nor balloon, or a host.toml name), and
    /// domains whose XML was refused: the log says each once, until it changes.
    private var ignored: Set<String> = []
    private var refusedXML: Set<String> = []
    private var nextConnectMillis: UInt64 = 0
    private var reconnectDelayMillis = LibvirtTiming.reconnectMinMillis
    private var nextResyncMillis: UInt64 = 0
    private var everConnected = false

    private struct Known {
        var uuid: String
        var id: UInt32?
        var description: LibvirtDomainDescription
    }

    public init(uri: String, reservedNames: Set<String> = []) {
        self.uri = uri
        self.link = LibvirtLink(uri: uri)
        self.reservedNames = reservedNames
    }

    public func setWake(_ wake: @escaping @Sendable () -> Void) { events.setWake(wake) }

    public func endpoints(logger: Logger) throws -> [VMEndpoint] {
        connect(nowMillis: 0, logger: logger)
        return changes(nowMillis: 0, logger: logger).compactMap { if case .appeared(let endpoint) = $0 { endpoint } else { nil } }
    }

    public func changes(nowMillis: UInt64, logger: Logger) -> [InventoryChange] {
        var resync = nowMillis >= nextResyncMillis
        for event in events.drain() {
            switch event {
            case .connectionClosed(let reason):
                guard link.connection != nil else { continue }
                let why = reason == 2 ? "keepalive timed out" : reason == 1 ? "libvirtd closed the connection" : "connection error"
                logger.warning("lost the connection to libvirtd at \(uri) (\(why)); the domains keep running, reconnecting",
                               metadata: ["libvirt": "\(uri)"])
                link.replace(with: nil)
                nextConnectMillis = nowMillis
                reconnectDelayMillis = LibvirtTiming.reconnectMinMillis
            case .lifecycle(let domain, let event, let detail):
                if event == LibvirtTiming.stoppedEvent || event == LibvirtTiming.crashedEvent {
                    lastStop[domain] = LibvirtTiming.stopReason(event: event, detail: detail)
                }
                resync = true
            case .metadataChanged:
                resync = true
            }
        }
        if link.connection == nil {
            guard nowMillis >= nextConnectMillis, connect(nowMillis: nowMillis, logger: logger) else { return [] }
            resync = true
        } else if link.connection?.isAlive == false {
            logger.warning("the connection to libvirtd at \(uri) is dead; reconnecting", metadata: ["libvirt": "\(uri)"])
            link.replace(with: nil)
            nextConnectMillis = nowMillis
            return []
        }
        guard resync else { return [] }
        nextResyncMillis = nowMillis + LibvirtTiming.resyncMillis
        return self.resync(nowMillis: nowMillis, logger: logger)
    }

    /// Opens the connection; false (with the retry scheduled) when libvirtd cannot be reached.
    @discardableResult
    private func connect(nowMillis: UInt64, logger: Logger) -> Bool {
        do {
            let connection = try LibvirtConnection(uri: uri) { [events] event in events.push(event) }
            link.replace(with: connection)
            logger.notice("\(everConnected ? "reconnected" : "connected") to libvirt at \(uri); following its domains",
                          metadata: ["libvirt": "\(uri)"])
            everConnected = true
            reconnectDelayMillis = LibvirtTiming.reconnectMinMillis
            return true
        } catch {
            // Said once at notice (a host without libvirtd is normal), then quietly retried.
            if reconnectDelayMillis == LibvirtTiming.reconnectMinMillis {
                logger.notice("libvirt at \(uri) is not reachable (\(error)); trying again every \(LibvirtTiming.reconnectMaxMillis / 1000) s at most",
                              metadata: ["libvirt": "\(uri)"])
            } else {
                logger.debug("libvirt at \(uri) still not reachable: \(error)")
            }
            nextConnectMillis = nowMillis + reconnectDelayMillis
            reconnectDelayMillis = min(reconnectDelayMillis * 2, LibvirtTiming.reconnectMaxMillis)
            return false
        }
    }

    /// Lists the running domains and compares them with what the engine has.
    private func resync(nowMillis: UInt64, logger: Logger) -> [InventoryChange] {
        guard let connection = link.connection else { return [] }
        let domains: [LibvirtDomain]
        do {
            domains = try connection.activeDomains()
        } catch {
            logger.warning("cannot list libvirt's domains: \(error)", metadata: ["libvirt": "\(uri)"])
            return []
        }
        var changes: [InventoryChange] = []
        var seen: Set<String> = []
        for domain in domains {
            let name = domain.name
            guard !reservedNames.contains(name) else {
                if ignored.insert(name).inserted {
                    logger.error("libvirt domain \(name) has the name of a VM in host.toml; it is not managed (rename one of them)",
                                 metadata: ["vm": "\(name)"])
                }
                continue
            }
            let description: LibvirtDomainDescription
            do {
                description = try LibvirtDomainDescription(xml: domain.xml())
            } catch {
                // Bad metadata is the operator's to fix; the VM keeps its previous settings meanwhile.
                if refusedXML.insert(name).inserted {
                    logger.error("libvirt domain \(name): \(error)", metadata: ["vm": "\(name)"])
                }
                if known[name] != nil { seen.insert(name) }
                continue
            }
            refusedXML.remove(name)
            guard description.ballonetChannelPath != nil || description.hasVirtioBalloon else {
                if ignored.insert(name).inserted {
                    logger.notice("libvirt domain \(name) has neither the \(LibvirtDomainDescription.channelName) channel nor a virtio balloon; Ballonet leaves it alone",
                                  metadata: ["vm": "\(name)"])
                }
                continue
            }
            ignored.remove(name)
            seen.insert(name)
            let id = domain.id
            if let previous = known[name] {
                if previous.uuid == description.uuid && previous.id == id {
                    if previous.description.metadata != description.metadata {
                        changes.append(.settingsChanged(name: name, metadata: description.metadata))
                    }
                    known[name]?.description = description
                    continue
                }
                // Same name, another run (restarted while we were not looking) or another domain.
                changes.append(.disappeared(name: name, reason: "libvirt domain \(name) was restarted or redefined"))
            }
            known[name] = Known(uuid: description.uuid, id: id, description: description)
            changes.append(.appeared(endpoint(for: description)))
        }
        for name in Set(known.keys).subtracting(seen) {
            // libvirt removes a domain from its list just before it sends the event that says why; a domain
            // missing without its event is given one more look a second later, so the log can say what happened.
            if lastStop[name] == nil, missingSince[name] == nil {
                missingSince[name] = nowMillis
                nextResyncMillis = min(nextResyncMillis, nowMillis + LibvirtTiming.stopEventWaitMillis)
                continue
            }
            known[name] = nil
            missingSince[name] = nil
            changes.append(.disappeared(name: name, reason: "libvirt domain \(name) \(lastStop.removeValue(forKey: name) ?? "is no longer running")"))
        }
        for name in seen { missingSince[name] = nil }
        return changes
    }

    private func endpoint(for description: LibvirtDomainDescription) -> VMEndpoint {
        let access = LibvirtDomainAccess(name: description.name, uuid: description.uuid, link: link)
        let port = description.ballonetChannelPath
        var endpoint = VMEndpoint(name: description.name, monitor: .libvirt(access), portSocket: port, managed: false,
                                  virtioBalloon: port == nil ? access : nil, memoryTunables: access, metadata: description.metadata,
                                  source: "libvirt \(uri)")
        // The domain decides: libvirt starts QEMU with mem-merge off exactly when <nosharepages/> is there.
        endpoint.sharing = description.backing == .memfd ? SharingChoice(on: false, decidedBy: "memfd RAM, which KSM cannot merge")
            : description.noSharePages ? SharingChoice(on: false, decidedBy: "the domain's <nosharepages/>")
            : SharingChoice(on: true, decidedBy: "the domain has no <nosharepages/> (QEMU merges by default)")
        return endpoint
    }

    public func shutdown(logger: Logger) {
        link.replace(with: nil)
    }
}

/// Events from libvirt's event thread, waiting for the engine's thread, which the push wakes.
final class LibvirtEventQueue: Sendable {
    private let pending = Mutex<[LibvirtEvent]>([])
    private let wake = Mutex<(@Sendable () -> Void)?>(nil)

    func setWake(_ wake: @escaping @Sendable () -> Void) { self.wake.withLock { $0 = wake } }

    func push(_ event: LibvirtEvent) {
        pending.withLock { $0.append(event) }
        wake.withLock { $0 }?()
    }

    func drain() -> [LibvirtEvent] {
        pending.withLock { events in
            defer { events.removeAll() }
            return events
        }
    }
}

/// The libvirt inventory's timing and libvirt's event numbers.
enum LibvirtTiming {
    /// Reconnect at once after libvirtd went away (a restart takes a second or two), backing off to 30 s
    /// while it stays away, so a host without libvirtd costs one failed connect per half minute.
    static let reconnectMinMillis: UInt64 = 1_000
    static let reconnectMaxMillis: UInt64 = 30_000
    /// A full list of the domains this often even without events: events can be lost (libvirt drops them
    /// for a client that falls behind), and a list of a few hundred domains takes milliseconds.
    static let resyncMillis: UInt64 = 30_000
    /// How long a domain gone from the list waits for the event that says why (it follows within
    /// milliseconds): a second delays its share's return to the others by no more than that.
    static let stopEventWaitMillis: UInt64 = 1_000

    /// VIR_DOMAIN_EVENT_STOPPED and VIR_DOMAIN_EVENT_CRASHED.
    static let stoppedEvent: Int32 = 5
    static let crashedEvent: Int32 = 7

    /// What happened, from VIR_DOMAIN_EVENT_STOPPED_* details.
    static func stopReason(event: Int32, detail: Int32) -> String {
        if event == crashedEvent { return "crashed" }
        switch detail {
        case 0: return "was shut down"
        case 1: return "was destroyed"
        case 2: return "crashed"
        case 3: return "migrated away"
        case 4: return "was saved to a file"
        case 5: return "failed"
        case 6: return "was stopped for a snapshot"
        default: return "stopped"
        }
    }
}
