import Foundation
import FoundationXML

/// Ballonet's settings in a domain's `<metadata>`, under Ballonet's own namespace, as an operator sets them:
///
///     virsh metadata DOMAIN --uri https://ballonet.dev/xmlns/libvirt/1 --key ballonet --live --config \
///       --set '<vm><min_mib>256</min_mib><max_mib>2048</max_mib><shares>4000</shares></vm>'
///
/// Every element is optional; what is missing keeps host.toml's value (or the default).
public struct BallonetDomainMetadata: Equatable, Sendable {
    /// The namespace of Ballonet's metadata element. A URI libvirt only compares; nothing is fetched from it.
    public static let namespace = "https://ballonet.dev/xmlns/libvirt/1"
    /// The prefix libvirt writes the element with.
    public static let key = "ballonet"

    public var minMiB: UInt64?
    public var maxMiB: UInt64?
    public var shares: UInt64?
    public var swap: SwapMode?

    public init(minMiB: UInt64? = nil, maxMiB: UInt64? = nil, shares: UInt64? = nil, swap: SwapMode? = nil) {
        self.minMiB = minMiB
        self.maxMiB = maxMiB
        self.shares = shares
        self.swap = swap
    }

    /// The element as `virsh metadata --set` takes it.
    public var element: String {
        var children = ""
        if let minMiB { children += "<min_mib>\(minMiB)</min_mib>" }
        if let maxMiB { children += "<max_mib>\(maxMiB)</max_mib>" }
        if let shares { children += "<shares>\(shares)</shares>" }
        if let swap { children += "<swap>\(swap.rawValue)</swap>" }
        return "<vm>\(children)</vm>"
    }

    /// Reads the `<vm>` element's children by local name: libvirt's GetMetadata returns the element without
    /// prefix or xmlns, the hook's domain XML with both. Unknown children are ignored (a newer Ballonet's
    /// settings on a domain an older agent reads); a known one with a bad value is an error.
    init(element: XMLElement, domain: String) throws {
        for child in element.children ?? [] {
            guard let child = child as? XMLElement, let name = child.localName else { continue }
            let text = (child.stringValue ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            func number(_ range: ClosedRange<UInt64>) throws -> UInt64 {
                guard let value = UInt64(text), range.contains(value) else {
                    throw LibvirtDescriptionError("domain \(domain): Ballonet metadata <\(name)> must be a whole number in \(range.lowerBound)...\(range.upperBound), not '\(text.prefix(40))'")
                }
                return value
            }
            switch name {
            case "min_mib": minMiB = try number(0...HostConfigurationLimits.memoryMiB.upperBound)
            case "max_mib": maxMiB = try number(HostConfigurationLimits.memoryMiB)
            case "shares": shares = try number(HostConfigurationLimits.shares)
            case "swap":
                guard let mode = SwapMode(rawValue: text) else {
                    throw LibvirtDescriptionError("domain \(domain): Ballonet metadata <swap> must be one of \(SwapMode.allCases.map(\.rawValue).joined(separator: ", ")), not '\(text.prefix(40))'")
                }
                swap = mode
            default: continue
            }
        }
        if let minMiB, let maxMiB, minMiB > maxMiB {
            throw LibvirtDescriptionError("domain \(domain): Ballonet metadata min_mib \(minMiB) is above max_mib \(maxMiB)")
        }
    }

    /// Parses what `virDomainGetMetadata` returned.
    public static func parse(_ xml: String, domain: String) throws -> BallonetDomainMetadata {
        let document = try LibvirtDomainDescription.document(xml, what: "Ballonet metadata of domain \(domain)")
        guard let root = document.rootElement() else { return BallonetDomainMetadata() }
        return try BallonetDomainMetadata(element: root, domain: domain)
    }

    /// Applies the metadata to a VM's configuration.
    public func applied(to configuration: VMConfiguration) -> VMConfiguration {
        var result = configuration
        if let minMiB { result.minMiB = minMiB }
        if let maxMiB { result.maxMiB = maxMiB }
        if let shares { result.shares = shares }
        if let swap { result.swap = swap }
        return result
    }
}

/// Why a domain's XML could not be used.
public struct LibvirtDescriptionError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What Ballonet needs from a domain's XML (live XML from libvirt, or the XML libvirt hands a hook): its
/// RAM, how the RAM is backed, the `org.ballonet.0` channel, the virtio balloon and Ballonet's metadata.
public struct LibvirtDomainDescription: Equatable, Sendable {
    public enum Backing: String, Equatable, Sendable {
        /// memfd with shared access: reclaim punches holes (what Ballonet wants).
        case memfd
        /// Anonymous or file memory: reclaim pages out.
        case other
    }

    /// The bounds on domain XML. libvirt formats the XML itself, but a hook's stdin is whatever started the
    /// domain wrote: a domain's XML is a few KiB (tens with many devices); 4 MiB is far beyond any and
    /// still harmless to parse.
    public static let maximumXMLBytes = 4 << 20

    public var name: String
    public var uuid: String
    /// `<memory>`: the RAM the domain boots with, in bytes.
    public var memoryBytes: UInt64
    public var backing: Backing
    /// `<memoryBacking><nosharepages/>`: KSM must not merge this domain's memory.
    public var noSharePages: Bool
    /// The host end of the `org.ballonet.0` channel (a UNIX socket libvirt binds); nil: no such channel
    /// (or one without a path yet, before libvirt has started the domain).
    public var ballonetChannelPath: String?
    /// Whether the guest side of the channel is open, as libvirt last saw it (live XML only).
    public var ballonetChannelConnected: Bool?
    /// A `<memballoon model='virtio…'>` device: the fallback when the guest has no ballonet-guest.
    public var hasVirtioBalloon: Bool
    public var metadata: BallonetDomainMetadata

    public static let channelName = "org.ballonet.0"

    public init(xml: String) throws {
        let document = try Self.document(xml, what: "domain XML")
        func string(_ path: String) throws -> String? {
            try document.nodes(forXPath: path).first?.stringValue?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let name = try string("/domain/name"), !name.isEmpty else {
            throw LibvirtDescriptionError("domain XML has no <name>")
        }
        self.name = name
        uuid = try string("/domain/uuid") ?? ""
        guard let memoryText = try string("/domain/memory"), let memory = UInt64(memoryText) else {
            throw LibvirtDescriptionError("domain \(name): no <memory> with a size")
        }
        let unit = try string("/domain/memory/@unit") ?? "KiB"
        guard let scale = Self.unitBytes[unit] else { throw LibvirtDescriptionError("domain \(name): unknown <memory> unit '\(unit.prefix(20))'") }
        let (bytes, overflow) = memory.multipliedReportingOverflow(by: scale)
        guard !overflow else { throw LibvirtDescriptionError("domain \(name): <memory> \(memory) \(unit) is too large") }
        memoryBytes = bytes
        let sourceType = try string("/domain/memoryBacking/source/@type")
        let access = try string("/domain/memoryBacking/access/@mode")
        backing = sourceType == "memfd" && access == "shared" ? .memfd : .other
        noSharePages = try !document.nodes(forXPath: "/domain/memoryBacking/nosharepages").isEmpty
        let channel = "/domain/devices/channel[target/@type='virtio' and target/@name='\(Self.channelName)']"
        ballonetChannelPath = try string(channel + "/source/@path").flatMap { $0.isEmpty ? nil : $0 }
        ballonetChannelConnected = try string(channel + "/target/@state").map { $0 == "connected" }
        let balloonModel = try string("/domain/devices/memballoon/@model") ?? ""
        hasVirtioBalloon = balloonModel.hasPrefix("virtio")
        let elements = try document.nodes(forXPath: "/domain/metadata/*[local-name()='vm' and namespace-uri()='\(BallonetDomainMetadata.namespace)']")
        if let element = elements.first as? XMLElement {
            metadata = try BallonetDomainMetadata(element: element, domain: name)
        } else {
            metadata = BallonetDomainMetadata()
        }
    }

    /// libvirt's memory units (docs: formatdomain.html#memory-allocation); KiB when none is given.
    static let unitBytes: [String: UInt64] = [
        "b": 1, "bytes": 1,
        "KB": 1_000, "k": 1 << 10, "KiB": 1 << 10,
        "MB": 1_000_000, "M": 1 << 20, "MiB": 1 << 20,
        "GB": 1_000_000_000, "G": 1 << 30, "GiB": 1 << 30,
        "TB": 1_000_000_000_000, "T": 1 << 40, "TiB": 1 << 40,
    ]

    static func document(_ xml: String, what: String) throws -> XMLDocument {
        guard xml.utf8.count <= maximumXMLBytes else {
            throw LibvirtDescriptionError("\(what) is \(xml.utf8.count) bytes; at most \(maximumXMLBytes) are read")
        }
        // libvirt's XML never has a document type; one with entities is not libvirt's, and is not read.
        guard !xml.contains("<!DOCTYPE"), !xml.contains("<!ENTITY") else {
            throw LibvirtDescriptionError("\(what) has a DOCTYPE or entity declaration, which libvirt's XML never has")
        }
        // XMLDocument recovers from broken XML (and says so on standard error, which a hook's caller shows
        // the operator): the SAX parser checks it first and reports the error to us instead.
        let check = XMLParser(data: Data(xml.utf8))
        _ = check.parse()
        if let error = check.parserError {
            throw LibvirtDescriptionError("\(what) is not well-formed XML (libxml2 error \((error as NSError).code) near line \(check.lineNumber), column \(check.columnNumber))")
        }
        do {
            return try XMLDocument(xmlString: xml, options: [])
        } catch {
            throw LibvirtDescriptionError("\(what) is not well-formed XML: \(error)")
        }
    }
}
