/// The error of the HTTP server: a bad listening address, a configuration out of range.
///
/// Match on ``code``: `catch let error as HTTPServerError where error.code == .invalidAddress`.
public struct HTTPServerError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// An `ADDRESS:PORT` that does not parse: no port, a port out of 1-65535, an IPv6 address
        /// without its brackets.
        public static let invalidAddress = Code("invalidAddress")
        /// A limit out of its range: the connection cap, the idle timeout.
        public static let invalidConfiguration = Code("invalidConfiguration")
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
