import Foundation
import Logging
import Metrics
import RotaMap
import Synchronization

/// One tick of a distributed ticker, delivered to exactly one node.
public struct Tick: Sendable, Hashable {
    /// When the tick was due. Unique per tick of a ticker (every scheduled time is claimed by one
    /// compare-and-set), so it can serve as a fencing token: see ``token``.
    public let scheduled: Date
    /// ``scheduled`` in Unix microseconds.
    public let token: Int64
    /// When this node delivered it.
    public let delivered: Date
    /// Scheduled ticks skipped just before this one because the ticker fell behind (for example
    /// every node was down): they were never delivered anywhere.
    public let missed: Int
    /// Ticks this node delivered while the consumer was busy, replaced by this one.
    public let dropped: Int
}

/// A ticker shared by every node of a pool that creates it with the same name: each tick goes to
/// exactly one of them. Created by ``Node/ticker(named:interval:)``.
///
/// The next tick's time lives in the pool's `tickers` map. Every participant arms a timer for it;
/// when it fires, they race to advance the entry with a compare-and-set, and only the winner
/// delivers the tick. Nothing is elected, so when a node dies the others deliver the next tick on
/// time. Ticks are an `AsyncSequence` (``ticks``); a consumer that falls behind gets the latest
/// tick with the count of those it missed, never a silent gap.
public final class Ticker: Sendable {
    public let name: String
    let node: Node
    let logger: Logger
    let wake = WakeSignal()
    let mailbox: TickMailbox
    let ended = Latch()

    private struct State {
        var interval: Duration
        /// The entry as last seen: the compare-and-set tests against it.
        var known: TickerEntry
        var closing = false
        var stopping = false
        /// The replica has shown the entry at least once: from then on, its absence means a stop.
        var seen = false
        /// The last triggered entry this node delivered a tick for.
        var deliveredTrigger: String?
    }

    private let state: Mutex<State>

    init(name: String, node: Node, entry: TickerEntry) {
        self.name = name
        self.node = node
        var logger = node.logger
        logger[metadataKey: "ticker"] = "\(name)"
        self.logger = logger
        self.state = Mutex(State(interval: entry.interval, known: entry))
        self.mailbox = TickMailbox(wake: wake)
    }

    /// The ticks this node delivers. Ends when the ticker is closed or stopped (here or, for a
    /// stop, on any node) or the node closes. Iterate from one task.
    public var ticks: TickSequence { TickSequence(mailbox: mailbox) }

    /// The interval in force (the last node that created the ticker with another interval set it).
    public var interval: Duration { state.withLock { $0.interval } }

    /// The entry this ticker last adopted (the watcher compares the map with it).
    var knownRaw: String { state.withLock { $0.known.raw } }

    /// The next tick time this node knows of.
    public var nextTick: Date { state.withLock { Date(timeIntervalSince1970: Double($0.known.next) / 1e6) } }

    /// Stops delivering ticks on this node; the others go on.
    public func close() async {
        state.withLock { $0.closing = true }
        wake.fire()
        await ended.settle()
    }

    /// Ends the ticker on every node: the shared entry is deleted, and every node's sequence ends.
    public func stop() async throws {
        state.withLock { $0.stopping = true }
        do {
            _ = try await node.maps.tickers.delete(name)
        } catch {
            throw PoolError(.redis, "stopping ticker \(name): \(error)", underlying: error)
        }
        wake.fire()
        await ended.settle()
    }

    // MARK: The ticker task (a child of the node's run())

    func run() async {
        defer {
            mailbox.finish()
            ended.open()
        }
        // The node's ticker watcher wakes this ticker when its entry changes (one watcher for
        // all tickers: a task per ticker woken by every ticker's change would be quadratic).
        node.register(self)
        defer { node.unregister(self) }
        await loop()
    }

    private func loop() async {
        var retryAt: Int64?
        while true {
            let (known, closing, stopping) = state.withLock { ($0.known, $0.closing, $0.stopping) }
            if closing || stopping || node.maps.tickers.isClosed { return }
            // Adopt what the map says now: another node advanced the ticker, changed its interval,
            // or deleted it (a stop, here or elsewhere).
            guard let raw = node.maps.tickers.string(name) else {
                if state.withLock({ $0.seen }) {
                    logger.debug("ticker stopped")
                    return
                }
                // Just created: the replica has not received the entry yet. Redis says whether
                // it exists at all (a stop may have come first).
                if (try? await node.client.send("HEXISTS", node.maps.tickers.contentKey, name).int) == 0 { return }
                await wake.wait(timeout: .milliseconds(50))
                continue
            }
            state.withLock { $0.seen = true }
            if raw != known.raw {
                guard let entry = TickerEntry(raw) else {
                    // Written by someone else (nothing of ours writes it): replaced by the next
                    // tick this node knows, by compare-and-set, so the ticker goes on for everyone.
                    Counter(label: "rota_malformed_entries", dimensions: [("kind", "ticker")]).increment()
                    logger.error("replacing a malformed ticker entry", metadata: ["value": "\(raw.prefix(200))"])
                    let repaired = TickerEntry(next: max(known.next, nowMicros()), interval: known.interval)
                    if (try? await node.maps.tickers.testAndSet(name, test: raw, repaired.raw))?.updated != true {
                        await wake.wait(timeout: .seconds(1))
                    }
                    continue
                }
                // The replica trails this node's own compare-and-set (it arrives on another
                // connection): an entry behind the known one, same interval, is old news. A
                // trigger moves `next` back on purpose: it names the tick it preempts in `after`
                // (one this node delivered already is old news too).
                let triggered = entry.after == known.next && raw != state.withLock({ $0.deliveredTrigger })
                if entry.interval != known.interval || entry.next > known.next || triggered {
                    state.withLock {
                        $0.known = entry
                        $0.interval = entry.interval
                    }
                    retryAt = nil
                    continue
                }
            }
            let now = nowMicros()
            let due = retryAt ?? known.next
            if due > now {
                await wake.wait(timeout: .microseconds(due - now))
                continue
            }
            // Only a node whose consumer is waiting competes for a tick: a busy one (a schedule
            // still applying the last plan) would win ticks it cannot use. Idle nodes take them;
            // if every node is busy, the next tick reports the ones skipped as missed.
            guard mailbox.consumerWaiting else {
                await wake.wait(timeout: known.interval)
                continue
            }
            retryAt = nil
            await advance(from: known, now: now, retryAt: &retryAt)
        }
    }

    /// The timer fired: try to move the entry to the next tick; the winner delivers this one.
    private func advance(from known: TickerEntry, now: Int64, retryAt: inout Int64?) async {
        let step = known.interval.microseconds
        var candidate = known.next + step
        var missed = 0
        if let after = known.after {
            // A triggered tick: delivered alone, then the regular tick it preempted is due.
            candidate = after
        } else if candidate < now {
            // The ticks the ticker fell behind on, counted rather than stepped through: an entry
            // years old must not make the node loop billions of times.
            let behind = (now - known.next + step - 1) / step
            candidate = known.next + behind * step
            missed = Int(behind - 1)
        }
        let next = TickerEntry(next: candidate, interval: known.interval)
        do {
            let (previous, updated) = try await node.maps.tickers.testAndSet(name, test: known.raw, next.raw)
            guard updated else {
                // Another node won (its change will arrive), or the entry is gone (stopped).
                if previous == nil { state.withLock { $0.stopping = true } }
                if let previous, let entry = TickerEntry(String(decoding: previous, as: UTF8.self)) {
                    state.withLock {
                        $0.known = entry
                        $0.interval = entry.interval
                    }
                }
                return
            }
            state.withLock {
                $0.known = next
                if known.after != nil { $0.deliveredTrigger = known.raw }
            }
            // The tick that was due is this node's. Ticks the ticker fell behind on are skipped;
            // the delivered one is the latest that was due.
            let scheduled = known.next + Int64(missed) * step
            Metrics.Timer(label: "rota_tick_lateness", dimensions: [("ticker", name)])
                .recordMicroseconds(max(0, nowMicros() - scheduled))
            mailbox.post(Tick(
                scheduled: Date(timeIntervalSince1970: Double(scheduled) / 1e6),
                token: scheduled,
                delivered: Date(),
                missed: missed,
                dropped: 0
            ))
        } catch {
            // Redis is unreachable: no tick; try again soon (the entry is unchanged, so whichever
            // node reaches Redis first delivers the tick, late).
            logger.warning("advancing the ticker failed; retrying", metadata: ["error": "\(error)"])
            let delay = min(known.interval, .seconds(1))
            retryAt = nowMicros() + delay.microseconds
        }
    }
}

/// The ticks of a ``Ticker``.
public struct TickSequence: AsyncSequence, Sendable {
    public typealias Element = Tick
    let mailbox: TickMailbox

    public struct AsyncIterator: AsyncIteratorProtocol {
        let mailbox: TickMailbox
        public mutating func next() async -> Tick? { await mailbox.next() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(mailbox: mailbox) }
}

/// Holds the latest undelivered tick and counts the ones it replaced; tells the ticker when the
/// consumer starts waiting (the ticker competes for ticks only then).
final class TickMailbox: Sendable {
    private struct State {
        var pending: Tick?
        var dropped = 0
        var finished = false
        var waiter: CheckedContinuation<Tick?, Never>?
    }

    private let state = Mutex(State())
    private let wake: WakeSignal

    init(wake: WakeSignal) {
        self.wake = wake
    }

    var consumerWaiting: Bool { state.withLock { $0.waiter != nil } }

    func post(_ tick: Tick) {
        let waiter = state.withLock { state -> (CheckedContinuation<Tick?, Never>, Tick)? in
            guard !state.finished else { return nil }
            if let waiter = state.waiter {
                state.waiter = nil
                return (waiter, tick)
            }
            if state.pending != nil { state.dropped += 1 }
            state.pending = tick
            return nil
        }
        waiter.map { $0.0.resume(returning: $0.1) }
    }

    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<Tick?, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.pending == nil ? state.waiter : nil
        }
        waiter?.resume(returning: nil)
    }

    func next() async -> Tick? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Tick?, Never>) in
                let now = state.withLock { state -> Tick?? in
                    if let pending = state.pending {
                        state.pending = nil
                        let dropped = state.dropped
                        state.dropped = 0
                        return .some(Tick(scheduled: pending.scheduled, token: pending.token, delivered: pending.delivered,
                                          missed: pending.missed, dropped: dropped))
                    }
                    if state.finished || Task.isCancelled { return .some(nil) }
                    state.waiter = continuation
                    return nil
                }
                if let now {
                    continuation.resume(returning: now)
                } else {
                    wake.fire()
                }
            }
        } onCancel: {
            state.withLock { state -> CheckedContinuation<Tick?, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume(returning: nil)
        }
    }
}

/// A wake-up that can be fired before anyone waits (it is remembered once).
final class WakeSignal: Sendable {
    private struct State {
        var fired = false
        var waiter: (id: UInt64, continuation: CheckedContinuation<Void, Never>)?
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    func fire() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter.continuation
            }
            state.fired = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns when fired (now, if it was fired since the last wait) or after `timeout`.
    func wait(timeout: Duration) async {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await Task.sleep(for: timeout)
                self.resume(id)
            }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.fired {
                        state.fired = false
                        return true
                    }
                    state.waiter = (id, continuation)
                    return false
                }
                if now { continuation.resume() }
            }
            group.cancelAll()
        }
    }

    private func resume(_ id: UInt64) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter, waiter.id == id else { return nil }
            state.waiter = nil
            return waiter.continuation
        }
        waiter?.resume()
    }
}

/// The shared state of a ticker: `<next tick, Unix µs>|<interval as a Go duration>` (e.g.
/// `1747600000123456|10ms`), the reference's format.
struct TickerEntry: Sendable, Hashable {
    let next: Int64
    let interval: Duration
    /// Set by a trigger (``Node/triggerTicker(named:)``): `next` is the triggered tick, and the
    /// regular tick it preempted, `after`, comes next (the phase is kept). Written as a third
    /// field, `next|interval|after`; entries without it are what pulse writes.
    let after: Int64?

    init(next: Int64, interval: Duration, after: Int64? = nil) {
        self.next = next
        self.interval = interval
        self.after = after
    }

    init?(_ raw: String) {
        let parts = raw.split(separator: "|", maxSplits: 2, omittingEmptySubsequences: false)
        // Times 2000-2200 (µs) and intervals of at least 1 ms: a `1|1ns` entry would make every
        // node spin, a far-away time overflow the arithmetic.
        guard parts.count == 2 || parts.count == 3, let next = Int64(parts[0]), Self.saneTime(next),
              let interval = parseGoDuration(String(parts[1])), interval >= .milliseconds(1), interval <= .seconds(366 * 86_400) else { return nil }
        if parts.count == 3 {
            guard let after = Int64(parts[2]), Self.saneTime(after), after > next else { return nil }
            self.after = after
        } else {
            self.after = nil
        }
        self.next = next
        self.interval = interval
    }

    static func saneTime(_ micros: Int64) -> Bool { micros >= 946_684_800_000_000 && micros <= 7_258_118_400_000_000 }

    var raw: String {
        let base = "\(next)|\(formatGoDuration(interval))"
        return after.map { "\(base)|\($0)" } ?? base
    }
}

func nowMicros() -> Int64 { nowNanos() / 1000 }

extension Duration {
    var microseconds: Int64 { nanoseconds / 1000 }
}

/// Go's `time.Duration.String()`: `1.5s`, `10ms`, `1m30s`, `2h0m0s`, `0s`.
func formatGoDuration(_ duration: Duration) -> String {
    var nanos = duration.nanoseconds
    guard nanos != 0 else { return "0s" }
    let negative = nanos < 0
    if negative { nanos = -nanos }
    func fraction(_ value: Int64, _ unit: Int64) -> String {
        let whole = value / unit
        var rest = String(value % unit)
        let width = String(unit).count - 1
        rest = String(repeating: "0", count: width - rest.count) + rest
        while rest.hasSuffix("0") { rest.removeLast() }
        return rest.isEmpty ? "\(whole)" : "\(whole).\(rest)"
    }
    var text: String
    if nanos < 1_000 {
        text = "\(nanos)ns"
    } else if nanos < 1_000_000 {
        text = fraction(nanos, 1_000) + "µs"
    } else if nanos < 1_000_000_000 {
        text = fraction(nanos, 1_000_000) + "ms"
    } else {
        let hours = nanos / 3_600_000_000_000
        let minutes = (nanos / 60_000_000_000) % 60
        let seconds = fraction(nanos % 60_000_000_000, 1_000_000_000) + "s"
        text = hours > 0 ? "\(hours)h\(minutes)m\(seconds)" : minutes > 0 ? "\(minutes)m\(seconds)" : seconds
    }
    return negative ? "-" + text : text
}

/// Parses sequences of `<decimal>[.<decimal>]<unit>` with units ns, us, µs, μs, ms, s, m, h.
func parseGoDuration(_ text: String) -> Duration? {
    if text == "0" { return .zero }
    let units: [(String, Double)] = [("ns", 1), ("us", 1e3), ("µs", 1e3), ("μs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
    var rest = Substring(text)
    var negative = false
    if rest.hasPrefix("-") {
        negative = true
        rest = rest.dropFirst()
    }
    guard !rest.isEmpty else { return nil }
    var total = 0.0
    while !rest.isEmpty {
        let number = rest.prefix { $0.isNumber || $0 == "." }
        guard !number.isEmpty, let value = Double(number) else { return nil }
        rest = rest.dropFirst(number.count)
        // Longest unit first: "ms" before "m".
        guard let unit = units.sorted(by: { $0.0.count > $1.0.count }).first(where: { rest.hasPrefix($0.0) }) else { return nil }
        rest = rest.dropFirst(unit.0.count)
        total += value * unit.1
    }
    // Beyond ±292 years the nanoseconds do not fit: not a duration anyone wrote.
    guard total.isFinite, abs(total) < 9.2e18 else { return nil }
    let nanos = Int64(total.rounded())
    return .nanoseconds(negative ? -nanos : nanos)
}
