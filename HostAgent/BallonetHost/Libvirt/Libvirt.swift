import CLibvirt
import Foundation
import Synchronization

// The one file that calls libvirt's C API. Every call that can fail reads libvirt's error in the same
// synchronous function, before any other libvirt call on the thread: the error is thread-local and the
// next API entry resets it. Handles (virConnectPtr, virDomainPtr) are owned by one Swift object each and
// freed exactly once, in its deinit.

/// A libvirt call that failed, with libvirt's own error.
public struct LibvirtError: Error, CustomStringConvertible, Sendable {
    /// virErrorNumber: 42 no domain, 80 no such metadata, 3 not supported by the driver, …
    public let code: Int32
    /// virErrorDomain: where in libvirt it arose (7 RPC: the connection to libvirtd).
    public let domain: Int32
    public let message: String
    /// The C function that failed.
    public let operation: String

    public var description: String { "\(operation): \(message) (libvirt error \(code))" }

    static let noSupport: Int32 = 3        // VIR_ERR_NO_SUPPORT
    static let noDomain: Int32 = 42        // VIR_ERR_NO_DOMAIN
    static let noDomainMetadata: Int32 = 80  // VIR_ERR_NO_DOMAIN_METADATA

    /// libvirt's last error on this thread, copied, as thrown by `operation`.
    fileprivate static func last(_ operation: String) -> LibvirtError {
        guard let saved = virSaveLastError() else {
            return LibvirtError(code: -1, domain: -1, message: "failed without saying why", operation: operation)
        }
        defer { virFreeError(saved) }
        let message = saved.pointee.message.map { String(cString: $0) } ?? "failed without saying why"
        return LibvirtError(code: saved.pointee.code, domain: saved.pointee.domain, message: message, operation: operation)
    }
}

/// What libvirt tells the inventory, from its event-loop thread.
public enum LibvirtEvent: Sendable, Equatable {
    /// VIR_DOMAIN_EVENT_*: 2 started, 3 suspended, 4 resumed, 5 stopped (detail 3 migrated away), 6
    /// shut down, 7 crashed.
    case lifecycle(domain: String, event: Int32, detail: Int32)
    /// `virsh metadata` (virDomainSetMetadata) changed an element, in the namespace `uri`.
    case metadataChanged(domain: String, uri: String?)
    /// The connection to libvirtd is gone (1: libvirtd closed it or died, 2: keepalive timed out).
    case connectionClosed(reason: Int32)
}

/// libvirt's process-wide state: initialised once, with its default event loop on a thread of its own.
/// Events and keepalive replies need that loop; callbacks run on it and only pass events on.
enum LibvirtRuntime {
    static let started: Void = {
        virInitialize()
        // Without a handler libvirt prints every error to stderr; ours are read and logged where they occur.
        virSetErrorFunc(nil, { _, _ in })
        virEventRegisterDefaultImpl()
        let thread = Thread {
            while true { _ = virEventRunDefaultImpl() }
        }
        thread.name = "libvirt events"
        thread.start()
    }()
}

/// Where a connection's callbacks deliver events: handed to libvirt retained, released by its free callback.
private final class EventSink: Sendable {
    let deliver: @Sendable (LibvirtEvent) -> Void
    init(_ deliver: @escaping @Sendable (LibvirtEvent) -> Void) { self.deliver = deliver }
}

private func domainName(_ domain: OpaquePointer?) -> String {
    guard let domain, let name = virDomainGetName(domain) else { return "" }
    return String(cString: name)
}

private func sink(_ opaque: UnsafeMutableRawPointer?) -> EventSink? {
    opaque.map { Unmanaged<EventSink>.fromOpaque($0).takeUnretainedValue() }
}

private let releaseSink: virFreeCallback = { opaque in
    if let opaque { Unmanaged<EventSink>.fromOpaque(opaque).release() }
}

private let lifecycleCallback: virConnectDomainEventCallback = { _, domain, event, detail, opaque in
    sink(opaque)?.deliver(.lifecycle(domain: domainName(domain), event: event, detail: detail))
    return 0
}

private let metadataCallback: virConnectDomainEventMetadataChangeCallback = { _, domain, _, uri, opaque in
    sink(opaque)?.deliver(.metadataChanged(domain: domainName(domain), uri: uri.map { String(cString: $0) }))
}

private let closeCallback: virConnectCloseFunc = { _, reason, opaque in
    sink(opaque)?.deliver(.connectionClosed(reason: reason))
}

/// One connection to libvirtd (or to a driver in-process, such as `test:///default`), with lifecycle,
/// metadata and close events delivered to `onEvent` on libvirt's event thread.
public final class LibvirtConnection: @unchecked Sendable {
    public let uri: String
    private let pointer: OpaquePointer
    private var callbackIDs: [Int32] = []
    private var closeRegistered = false

    /// Keepalive: a ping after 5 s of silence, the connection dead after 3 unanswered (15 s): a libvirtd
    /// that hangs is noticed about as fast as one that exits, which closes the socket at once.
    static let keepAliveIntervalSeconds: Int32 = 5
    static let keepAliveCount: UInt32 = 3

    public init(uri: String, onEvent: @escaping @Sendable (LibvirtEvent) -> Void) throws {
        _ = LibvirtRuntime.started
        self.uri = uri
        guard let pointer = virConnectOpen(uri) else { throw LibvirtError.last("virConnectOpen(\(uri))") }
        self.pointer = pointer
        // The test driver has no keepalive (no socket); anything else failing here is worth an error.
        if virConnectSetKeepAlive(pointer, Self.keepAliveIntervalSeconds, Self.keepAliveCount) < 0 {
            let error = LibvirtError.last("virConnectSetKeepAlive")
            guard error.code == LibvirtError.noSupport else { throw error }
        }
        let events: [(Int32, virConnectDomainEventGenericCallback)] = [
            (Int32(VIR_DOMAIN_EVENT_ID_LIFECYCLE.rawValue), unsafeBitCast(lifecycleCallback, to: virConnectDomainEventGenericCallback.self)),
            (Int32(VIR_DOMAIN_EVENT_ID_METADATA_CHANGE.rawValue), unsafeBitCast(metadataCallback, to: virConnectDomainEventGenericCallback.self)),
        ]
        for (eventID, callback) in events {
            let opaque = Unmanaged.passRetained(EventSink(onEvent)).toOpaque()
            let id = virConnectDomainEventRegisterAny(pointer, nil, eventID, callback, opaque, releaseSink)
            guard id >= 0 else {
                let error = LibvirtError.last("virConnectDomainEventRegisterAny(\(eventID))")
                Unmanaged<EventSink>.fromOpaque(opaque).release()
                throw error
            }
            callbackIDs.append(id)
        }
        let opaque = Unmanaged.passRetained(EventSink(onEvent)).toOpaque()
        if virConnectRegisterCloseCallback(pointer, closeCallback, opaque, releaseSink) < 0 {
            Unmanaged<EventSink>.fromOpaque(opaque).release()
            throw LibvirtError.last("virConnectRegisterCloseCallback")
        }
        closeRegistered = true
    }

    deinit {
        // On a dead connection these fail; the handles are released all the same.
        for id in callbackIDs { _ = virConnectDomainEventDeregisterAny(pointer, id) }
        if closeRegistered { _ = virConnectUnregisterCloseCallback(pointer, closeCallback) }
        virConnectClose(pointer)
        virResetLastError()
    }

    /// Whether libvirtd still answers on this connection (a local check; no round trip).
    public var isAlive: Bool { virConnectIsAlive(pointer) == 1 }

    /// The running domains (paused ones included).
    public func activeDomains() throws -> [LibvirtDomain] {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let count = virConnectListAllDomains(pointer, &list, VIR_CONNECT_LIST_DOMAINS_ACTIVE.rawValue)
        guard count >= 0 else { throw LibvirtError.last("virConnectListAllDomains") }
        defer { free(list) }
        return (0..<Int(count)).compactMap { index in list?[index].map { LibvirtDomain(owning: $0) } }
    }

    /// The domain named `name`; nil when libvirt has none.
    public func domain(named name: String) throws -> LibvirtDomain? {
        guard let domain = virDomainLookupByName(pointer, name) else {
            let error = LibvirtError.last("virDomainLookupByName(\(name))")
            if error.code == LibvirtError.noDomain { return nil }
            throw error
        }
        return LibvirtDomain(owning: domain)
    }

    /// Starts a transient domain from XML, which vanishes when it stops (tests and tools).
    @discardableResult
    public func create(xml: String) throws -> LibvirtDomain {
        guard let domain = virDomainCreateXML(pointer, xml, 0) else { throw LibvirtError.last("virDomainCreateXML") }
        return LibvirtDomain(owning: domain)
    }

    /// Defines a persistent domain from XML (tests and tools; ballonet-host itself never defines domains).
    @discardableResult
    public func define(xml: String) throws -> LibvirtDomain {
        guard let domain = virDomainDefineXML(pointer, xml) else { throw LibvirtError.last("virDomainDefineXML") }
        return LibvirtDomain(owning: domain)
    }
}

/// One domain handle, freed once.
public final class LibvirtDomain: @unchecked Sendable {
    private let pointer: OpaquePointer

    init(owning pointer: OpaquePointer) { self.pointer = pointer }
    deinit { virDomainFree(pointer) }

    public var name: String { domainName(pointer) }

    public var uuid: String {
        // VIR_UUID_STRING_BUFLEN: 36 characters and the NUL (an expression macro Swift does not import).
        var buffer = [CChar](repeating: 0, count: 37)
        guard virDomainGetUUIDString(pointer, &buffer) == 0 else { return "" }
        return String(cString: buffer)
    }

    /// The runtime id libvirt gives a running domain (it appears in its cgroup and channel paths); nil
    /// when not running.
    public var id: UInt32? {
        let id = virDomainGetID(pointer)
        return id == UInt32.max ? nil : id
    }

    /// The live XML (or the persistent definition, `inactive`).
    public func xml(inactive: Bool = false) throws -> String {
        guard let text = virDomainGetXMLDesc(pointer, inactive ? VIR_DOMAIN_XML_INACTIVE.rawValue : 0) else {
            throw LibvirtError.last("virDomainGetXMLDesc(\(name))")
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// The live metadata element in namespace `uri`, as libvirt returns it (no prefix, no xmlns); nil
    /// when the domain has none.
    public func metadata(uri: String) throws -> String? {
        guard let text = virDomainGetMetadata(pointer, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), uri,
                                              VIR_DOMAIN_AFFECT_LIVE.rawValue) else {
            let error = LibvirtError.last("virDomainGetMetadata(\(name))")
            // The qemu driver says VIR_ERR_NO_DOMAIN_METADATA; the test driver returns NULL and no error.
            if error.code == LibvirtError.noDomainMetadata || error.code == 0 { return nil }
            throw error
        }
        defer { free(text) }
        return String(cString: text)
    }

    /// Replaces (or with nil removes) the metadata element in namespace `uri`, live and in the definition.
    public func setMetadata(_ element: String?, key: String, uri: String, live: Bool = true, persistent: Bool = true) throws {
        var flags: UInt32 = 0
        if live { flags |= VIR_DOMAIN_AFFECT_LIVE.rawValue }
        if persistent { flags |= VIR_DOMAIN_AFFECT_CONFIG.rawValue }
        guard virDomainSetMetadata(pointer, Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue), element, key, uri, flags) == 0 else {
            throw LibvirtError.last("virDomainSetMetadata(\(name))")
        }
    }

    /// Sets the virtio balloon's target: the memory the guest keeps, in KiB (live only).
    public func setBalloonTarget(kibibytes: UInt64) throws {
        guard virDomainSetMemoryFlags(pointer, UInt(kibibytes), VIR_DOMAIN_AFFECT_LIVE.rawValue) == 0 else {
            throw LibvirtError.last("virDomainSetMemoryFlags(\(name), \(kibibytes) KiB)")
        }
    }

    /// The balloon's statistics by tag (VIR_DOMAIN_MEMORY_STAT_*: 6 actual balloon, 4 unused, 5 available,
    /// 8 usable, 7 rss; memory in KiB).
    public func memoryStats() throws -> [Int32: UInt64] {
        let capacity = Int(VIR_DOMAIN_MEMORY_STAT_NR.rawValue)
        var stats = [virDomainMemoryStatStruct](repeating: virDomainMemoryStatStruct(), count: capacity)
        let count = virDomainMemoryStats(pointer, &stats, UInt32(capacity), 0)
        guard count >= 0 else { throw LibvirtError.last("virDomainMemoryStats(\(name))") }
        var result: [Int32: UInt64] = [:]
        for stat in stats.prefix(Int(count)) { result[stat.tag] = stat.val }
        return result
    }

    /// Sets one memory tunable (`hard_limit`, `soft_limit`, `swap_hard_limit`) of the running domain, in KiB;
    /// nil: unlimited. libvirt writes it to the domain's memory cgroup and keeps its live XML in step.
    public func setMemoryParameter(_ name: String, kibibytes: UInt64?) throws {
        var parameters: virTypedParameterPtr?
        var count: Int32 = 0
        var capacity: Int32 = 0
        // VIR_DOMAIN_MEMORY_PARAM_UNLIMITED: 2^53 − 1, what libvirt takes for "no limit".
        let value = kibibytes ?? 9_007_199_254_740_991
        guard virTypedParamsAddULLong(&parameters, &count, &capacity, name, value) == 0 else {
            throw LibvirtError.last("virTypedParamsAddULLong(\(name))")
        }
        defer { virTypedParamsFree(parameters, count) }
        guard virDomainSetMemoryParameters(pointer, parameters, count, VIR_DOMAIN_AFFECT_LIVE.rawValue) == 0 else {
            throw LibvirtError.last("virDomainSetMemoryParameters(\(self.name), \(name))")
        }
    }

    /// The running domain's memory tunables in KiB (nil: unlimited).
    public func memoryParameters() throws -> [String: UInt64?] {
        var count: Int32 = 0
        guard virDomainGetMemoryParameters(pointer, nil, &count, 0) == 0 else {
            throw LibvirtError.last("virDomainGetMemoryParameters(\(name))")
        }
        var parameters = [virTypedParameter](repeating: virTypedParameter(), count: Int(count))
        guard virDomainGetMemoryParameters(pointer, &parameters, &count, VIR_DOMAIN_AFFECT_LIVE.rawValue) == 0 else {
            throw LibvirtError.last("virDomainGetMemoryParameters(\(name))")
        }
        var result: [String: UInt64?] = [:]
        for var parameter in parameters.prefix(Int(count)) where parameter.type == Int32(VIR_TYPED_PARAM_ULLONG.rawValue) {
            let field = withUnsafeBytes(of: &parameter.field) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            let value = parameter.value.ul
            result[field] = value >= 9_007_199_254_740_991 ? nil : value
        }
        return result
    }

    /// A command on the domain's QEMU monitor, through libvirtd (which owns the monitor socket): QMP JSON,
    /// or with `human` an HMP command line. The first use marks the domain "custom-monitor" in libvirt's log.
    public func monitorCommand(_ command: String, human: Bool = false) throws -> String {
        var result: UnsafeMutablePointer<CChar>?
        let flags = human ? VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP.rawValue : 0
        guard virDomainQemuMonitorCommand(pointer, command, &result, flags) == 0, let result else {
            throw LibvirtError.last("virDomainQemuMonitorCommand(\(name), \(command.prefix(60)))")
        }
        defer { free(result) }
        return String(cString: result)
    }

    /// Pauses the domain's vCPUs (libvirt's suspend: its state shows "paused").
    public func suspend() throws {
        guard virDomainSuspend(pointer) == 0 else { throw LibvirtError.last("virDomainSuspend(\(name))") }
    }

    public func resume() throws {
        guard virDomainResume(pointer) == 0 else { throw LibvirtError.last("virDomainResume(\(name))") }
    }

    /// Starts a defined domain (tests and tools).
    public func start() throws {
        guard virDomainCreate(pointer) == 0 else { throw LibvirtError.last("virDomainCreate(\(name))") }
    }

    /// Stops the domain at once (tests and tools).
    public func destroy() throws {
        guard virDomainDestroy(pointer) == 0 else { throw LibvirtError.last("virDomainDestroy(\(name))") }
    }

    /// Removes the domain's definition (tests and tools).
    public func undefine() throws {
        guard virDomainUndefine(pointer) == 0 else { throw LibvirtError.last("virDomainUndefine(\(name))") }
    }
}
