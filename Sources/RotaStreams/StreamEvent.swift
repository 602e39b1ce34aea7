import Foundation
import RotaRedis

/// One stream entry as delivered by a ``StreamSink`` or a ``StreamReader``.
///
/// Entries are stored with the fields `n` (name), `p` (payload bytes), `t` (topic, only when
/// non-empty) and `s` (signature, only when given), so events written by other implementations of
/// the same layout read back unchanged.
public struct StreamEvent: Sendable, Hashable {
    /// The Redis entry ID, `<ms>-<seq>`; unique within its stream and increasing.
    public let id: String
    /// The stream's name (not its key).
    public let stream: String
    /// The sink that delivered the event; nil for readers. ``StreamSink/ack(_:)`` needs it to match.
    public let sink: String?
    public let name: String
    /// The topic given to ``RedisStream/add(name:payload:topic:signature:onlyIfExists:)``; nil when none.
    public let topic: String?
    public let payload: [UInt8]
    /// The signature given to ``RedisStream/add(name:payload:topic:signature:onlyIfExists:)``; nil when
    /// none. Carried as is: checking it is the reader's business (the pool's history stream does).
    public let signature: String?
    /// When Redis appended the entry: the millisecond part of ``id``, in UTC. Comparable across
    /// processes only as far as their clocks agree with the Redis server's.
    public let createdAt: Date

    public init(id: String, stream: String, sink: String?, name: String, topic: String?, payload: [UInt8], signature: String? = nil) {
        self.id = id
        self.stream = stream
        self.sink = sink
        self.name = name
        self.topic = topic
        self.payload = payload
        self.signature = signature
        self.createdAt = (EntryID(id) ?? .zero).date
    }
}

/// Where a reader, or a sink's consumer group, starts reading a stream.
public enum StreamStart: Sendable, Hashable {
    /// Only events appended after the reader starts (or, for a sink, after its group is created).
    case newest
    /// Every event still in the stream.
    case oldest
    /// Events with an ID greater than this one (`<ms>-<seq>` or `<ms>`).
    case after(String)
    /// Events created at or after this time (millisecond precision).
    case at(Date)

    /// The ID Redis is given: `$` for ``newest``, otherwise an exclusive cursor.
    var redisID: String {
        switch self {
        case .newest: return "$"
        case .oldest: return "0-0"
        case .after(let id): return id
        case .at(let date): return EntryID.before(date).description
        }
    }

    func validate() throws(RedisError) {
        if case .after(let id) = self { try Validation.entryID(id) }
    }
}

/// Which events are delivered, by topic. Filtering happens in the client: a sink still consumes
/// (and acknowledges) the events it filters out, so they are never re-delivered.
struct TopicFilter: Sendable {
    let topic: String?
    let pattern: String?

    init(topic: String?, pattern: String?) throws(RedisError) {
        if topic != nil, pattern != nil {
            throw RedisError(.invalidArgument, "set either a topic or a topic pattern, not both")
        }
        if let pattern { try Validation.topicPattern(pattern) }
        self.topic = topic
        self.pattern = pattern
    }

    /// A matcher for one task: compiled regexes stay inside the task that uses them.
    func matcher() -> TopicMatcher {
        TopicMatcher(topic: topic, regex: pattern.flatMap { try? Regex($0) })
    }
}

struct TopicMatcher {
    let topic: String?
    let regex: Regex<AnyRegexOutput>?

    /// Exact topic: equality (an event without a topic matches only ""). Pattern: a match anywhere
    /// in the topic, as an unanchored search.
    func matches(_ eventTopic: String?) -> Bool {
        if let topic { return (eventTopic ?? "") == topic }
        if let regex { return (eventTopic ?? "").contains(regex) }
        return true
    }
}
