/// The prefix every Redis key of one pool (or other namespace) carries: `rota:{NAME}:`.
///
/// The braces make `NAME` a Redis Cluster hash tag, so all of a namespace's keys live in one slot
/// and multi-key Lua scripts stay valid on a cluster; different namespaces spread across shards.
public struct RedisKeySpace: Sendable, Hashable, CustomStringConvertible {
    public let name: String

    /// Validates `name`: 1–128 characters, none of `{ } * ? [ ]`, space, `:` or control characters.
    public init(_ name: String) throws(RedisError) {
        guard !name.isEmpty, name.count <= 128 else {
            throw RedisError(.invalidArgument, "namespace name must be 1-128 characters, got \(name.count)")
        }
        if let bad = name.unicodeScalars.first(where: { Self.forbidden.contains($0) || $0.properties.generalCategory == .control }) {
            throw RedisError(.invalidArgument, "namespace name '\(name)' contains the reserved character \(bad.escaped(asASCII: true))")
        }
        self.name = name
    }

    private static let forbidden: Set<Unicode.Scalar> = ["{", "}", "*", "?", "[", "]", " ", ":", "\0"]

    /// `rota:{name}:` followed by `parts` joined with `:`.
    public func key(_ parts: String...) -> String {
        "rota:{\(name)}:" + parts.joined(separator: ":")
    }

    public var description: String { name }
}
