import Synchronization

/// The events a ``StreamSink`` or ``StreamReader`` delivers, as an `AsyncSequence`.
///
/// Backed by a bounded buffer (``StreamSink/Options/bufferSize``): when it is full the read loop
/// waits for the consumer instead of dropping events, so a slow consumer slows reading down (and,
/// for a sink, lets other instances take the work). Iterate from one task; several iterators
/// would share the events between them. The sequence ends when the sink or reader stops: normally
/// (cancellation) after the buffered events, or by throwing the error that stopped it.
public struct StreamEvents: AsyncSequence, Sendable {
    public typealias Element = StreamEvent
    let buffer: EventBuffer

    public struct AsyncIterator: AsyncIteratorProtocol {
        let buffer: EventBuffer

        /// The next event; nil once the source stopped and the buffer is drained, or when the
        /// iterating task is cancelled.
        public mutating func next() async throws -> StreamEvent? {
            try await buffer.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(buffer: buffer) }

    /// The next event (waiting for one) followed by whatever else is already buffered, up to
    /// `max` in all; nil when the sequence ended. Consumers that can handle events together (one
    /// pipelined write for many) use it to pay per batch instead of per event under load.
    public func nextBatch(max: Int) async throws -> [StreamEvent]? {
        guard let first = try await buffer.next() else { return nil }
        return [first] + buffer.takeBuffered(max: max - 1)
    }
}

/// A bounded multi-producer queue whose producers wait for room and whose consumers wait for items.
final class EventBuffer: Sendable {
    private typealias Producer = (id: UInt64, continuation: CheckedContinuation<Void, any Error>)
    private typealias Consumer = (id: UInt64, continuation: CheckedContinuation<StreamEvent?, any Error>)

    private struct State {
        var items: [StreamEvent] = []
        var head = 0
        var producers: [Producer] = []
        var consumers: [Consumer] = []
        var finished = false
        var failure: (any Error)?
        var nextID: UInt64 = 0

        var count: Int { items.count - head }

        mutating func popFirst() -> StreamEvent? {
            guard head < items.count else { return nil }
            let item = items[head]
            head += 1
            if head >= 256, head * 2 >= items.count {
                items.removeFirst(head)
                head = 0
            }
            return item
        }

        mutating func takeID() -> UInt64 {
            nextID += 1
            return nextID
        }
    }

    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    /// Hands `event` to a waiting consumer or buffers it, waiting while the buffer is full.
    /// Returns false when the buffer was finished: nobody will read the event.
    func send(_ event: StreamEvent) async throws -> Bool {
        while true {
            enum Step { case finished, delivered(Consumer?), wait }
            let step = state.withLock { state -> Step in
                if state.finished { return .finished }
                if !state.consumers.isEmpty { return .delivered(state.consumers.removeFirst()) }
                if state.count < capacity {
                    state.items.append(event)
                    return .delivered(nil)
                }
                return .wait
            }
            switch step {
            case .finished:
                return false
            case .delivered(let consumer):
                consumer?.continuation.resume(returning: event)
                return true
            case .wait:
                try await waitForRoom()
            }
        }
    }

    private func waitForRoom() async throws {
        let id = state.withLock { $0.takeID() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let ready: Result<Void, any Error>? = state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if state.finished || state.count < capacity || !state.consumers.isEmpty { return .success(()) }
                    state.producers.append((id, continuation))
                    return nil
                }
                if let ready { continuation.resume(with: ready) }
            }
        } onCancel: {
            let waiting = state.withLock { state -> Producer? in
                guard let index = state.producers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.producers.remove(at: index)
            }
            waiting?.continuation.resume(throwing: CancellationError())
        }
    }

    /// The next event, waiting for one; nil when finished and drained or when the task is cancelled.
    func next() async throws -> StreamEvent? {
        enum Step { case item(StreamEvent, Producer?), end((any Error)?), wait }
        let step = state.withLock { state -> Step in
            if let item = state.popFirst() {
                return .item(item, state.producers.isEmpty ? nil : state.producers.removeFirst())
            }
            if state.finished {
                defer { state.failure = nil }
                return .end(state.failure)
            }
            return .wait
        }
        switch step {
        case .item(let item, let producer):
            producer?.continuation.resume()
            return item
        case .end(let failure):
            if let failure { throw failure }
            return nil
        case .wait:
            break
        }
        let id = state.withLock { $0.takeID() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<StreamEvent?, any Error>) in
                enum Now { case item(StreamEvent, Producer?), end((any Error)?), cancelled }
                let now: Now? = state.withLock { state in
                    if Task.isCancelled { return .cancelled }
                    if let item = state.popFirst() {
                        return .item(item, state.producers.isEmpty ? nil : state.producers.removeFirst())
                    }
                    if state.finished {
                        defer { state.failure = nil }
                        return .end(state.failure)
                    }
                    state.consumers.append((id, continuation))
                    return nil
                }
                switch now {
                case .item(let item, let producer)?:
                    producer?.continuation.resume()
                    continuation.resume(returning: item)
                case .end(let failure?)?: continuation.resume(throwing: failure)
                case .end(nil)?, .cancelled?: continuation.resume(returning: nil)
                case nil: break
                }
            }
        } onCancel: {
            let waiting = state.withLock { state -> Consumer? in
                guard let index = state.consumers.firstIndex(where: { $0.id == id }) else { return nil }
                return state.consumers.remove(at: index)
            }
            waiting?.continuation.resume(returning: nil)
        }
    }

    /// No more events will come: waiting producers give up, consumers drain what is buffered and
    /// then end (the first one to reach the end receives `failure`, if any).
    func finish(throwing failure: (any Error)? = nil) {
        let (producers, consumers, error) = state.withLock { state -> ([Producer], [Consumer], (any Error)?) in
            guard !state.finished else { return ([], [], nil) }
            state.finished = true
            state.failure = failure
            defer {
                state.producers = []
                state.consumers = []
            }
            // Waiting consumers mean the buffer is empty: they see the end now.
            if !state.consumers.isEmpty { state.failure = nil }
            return (state.producers, state.consumers, failure)
        }
        for producer in producers { producer.continuation.resume() }
        for (index, consumer) in consumers.enumerated() {
            if index == 0, let error {
                consumer.continuation.resume(throwing: error)
            } else {
                consumer.continuation.resume(returning: nil)
            }
        }
    }

    /// Events buffered and not yet taken.
    var count: Int { state.withLock { $0.count } }

    /// Takes up to `max` buffered events without waiting (and lets waiting producers refill).
    func takeBuffered(max: Int) -> [StreamEvent] {
        guard max > 0 else { return [] }
        let (items, producers) = state.withLock { state -> ([StreamEvent], [Producer]) in
            var items: [StreamEvent] = []
            while items.count < max, let item = state.popFirst() { items.append(item) }
            let woken = Swift.min(items.count, state.producers.count)
            defer { state.producers.removeFirst(woken) }
            return (items, Array(state.producers.prefix(woken)))
        }
        for producer in producers { producer.continuation.resume() }
        return items
    }
}
