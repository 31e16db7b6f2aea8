/// The outcome of a handshake: what both peers agreed on.
public struct NegotiatedSession: Hashable, Sendable {
    /// The protocol version both speak: the highest they share.
    public var version: UInt8
    public var localSessionID: UInt64
    public var remoteSessionID: UInt64
    /// The host's session id, whichever side this is: the fence every inflate report and ack carries.
    public var hostSessionID: UInt64
    public var remoteCapabilities: Capabilities
    public var remoteSoftwareVersion: String
}

/// Why a handshake failed. Each is fatal to the connection: send an error and a goodbye, then close.
public enum HandshakeError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The peers' version ranges do not meet.
    case incompatibleVersions(local: ClosedRange<UInt8>, remote: ClosedRange<UInt8>, remoteSoftware: String)
    /// Both ends claim the same role (a guest talking to a guest: miswired channel).
    case sameRole(PeerRole)

    public var description: String {
        switch self {
        case .incompatibleVersions(let local, let remote, let software):
            "incompatible protocol versions: we speak \(local.lowerBound)–\(local.upperBound), the peer "
                + "(ballonet \(software)) speaks \(remote.lowerBound)–\(remote.upperBound); upgrade the older side"
        case .sameRole(let role):
            "both ends of the port say they are the \(role); check the VM's channel wiring"
        }
    }

    /// The error code to send the peer before closing.
    public var code: ErrorCode {
        switch self {
        case .incompatibleVersions: .incompatibleVersion
        case .sameRole: .unexpectedMessage
        }
    }
}

/// The pure part of the handshake: both hellos in, the agreed session out. Both sides compute the same
/// answer from the same two hellos, so neither needs to send a third message.
public func negotiate(local: Hello, remote: Hello) -> Result<NegotiatedSession, HandshakeError> {
    guard local.role != remote.role else { return .failure(.sameRole(local.role)) }
    let version = min(local.maxVersion, remote.maxVersion)
    guard version >= max(local.minVersion, remote.minVersion) else {
        return .failure(.incompatibleVersions(local: local.minVersion...local.maxVersion,
                                              remote: remote.minVersion...remote.maxVersion,
                                              remoteSoftware: remote.softwareVersion))
    }
    let host = local.role == .host ? local : remote
    return .success(NegotiatedSession(version: version, localSessionID: local.sessionID,
                                      remoteSessionID: remote.sessionID, hostSessionID: host.sessionID,
                                      remoteCapabilities: remote.capabilities,
                                      remoteSoftwareVersion: remote.softwareVersion))
}
