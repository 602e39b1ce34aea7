/// The error of the replicated-map layer.
public struct ReplicatedMapError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The map name is empty, too long or holds a reserved character.
        public static let invalidName = Code("invalidName")
        /// A key is empty or contains `=` (reserved for the map's own fields).
        public static let invalidKey = Code("invalidKey")
        /// The map was closed: writes are refused (except reset and destroy), reads return the last state.
        public static let closed = Code("closed")
        /// Redis refused or failed the operation; ``underlying`` holds the ``RedisError``.
        public static let redis = Code("redis")
        /// Arguments that cannot work together (e.g. keys and tests of different lengths).
        public static let invalidArgument = Code("invalidArgument")
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        var text = "map \(code): \(message)"
        if let underlying { text += " (\(underlying))" }
        return text
    }
}
