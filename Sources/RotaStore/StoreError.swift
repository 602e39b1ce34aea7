/// The error of the SQLite store.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        init(_ name: String) { self.name = name }
        public var description: String { name }

        /// The file cannot be opened or created (missing directory, permissions, read-only).
        public static let cannotOpen = Code("cannotOpen")
        /// The file is not a SQLite database, or is damaged.
        public static let corrupt = Code("corrupt")
        /// The database was migrated by a newer Rota than this one.
        public static let newerSchema = Code("newerSchema")
        /// Another process held the database locked for longer than the busy timeout.
        public static let busy = Code("busy")
        /// Any other SQLite failure.
        public static let failed = Code("failed")
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(_ code: Code, _ message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String { message }
}
