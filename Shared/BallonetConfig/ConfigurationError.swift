/// Why a configuration was refused: the file, the line (0 for the file as a whole or the command line),
/// and a message that names the key and what it accepts.
public struct ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// A file named on the command line does not exist.
        case missingFile
        /// The file exists but could not be read.
        case unreadable
        /// Larger than the reader allows (a configuration file is small).
        case tooLarge
        case notUTF8
        /// Not the TOML subset `TOMLSubset` reads.
        case syntax
        case duplicateTable
        case duplicateKey
        /// A `[table]` the agent does not have, or one written as `[[table]]` where only one is allowed.
        case unknownTable
        /// A key its table does not have (a typo must not be silently ignored).
        case unknownKey
        /// A key before any `[table]` header.
        case keyOutsideTable
        /// A value of the wrong type ("4" for 4).
        case wrongType
        /// A value outside what the key accepts.
        case outOfRange
    }

    public var path: String
    public var line: Int
    public var kind: Kind
    public var message: String

    public init(path: String, line: Int, kind: Kind, message: String) {
        self.path = path
        self.line = line
        self.kind = kind
        self.message = message
    }

    public var description: String {
        line > 0 ? "\(path) line \(line): \(message)" : "\(path): \(message)"
    }
}

