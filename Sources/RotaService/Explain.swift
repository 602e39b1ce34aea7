import Foundation
import Rota
import RotaPlans
import RotaRedis
import RotaStore

/// Why a job runs or does not run at one instant: `rota explain`'s answer, computed by
/// ``JobExplanation/compute(job:at:pool:plan:node:store:)`` from the pool's plan, the pool's
/// state and a node's history, so the CLI and an HTTP API give the same answer.
public struct JobExplanation: Codable, Sendable, Hashable {
    /// A producer whose definition lists the job.
    public struct Listing: Codable, Sendable, Hashable {
        public enum State: String, Codable, Sendable, Hashable {
            case active, paused, retired
        }

        /// Where the job's bounds put the instant.
        public enum Bounds: String, Codable, Sendable, Hashable {
            case open
            case beforeFrom = "before-from"
            case afterUntil = "after-until"
        }

        public var producer: String
        /// The pool's plan revision of the definition read.
        public var revision: Int
        public var state: State
        public var mode: String
        /// The producer's clock (IANA identifier).
        public var timeZone: String
        public var handler: String
        public var window: Window
        public var from: Date?
        public var until: Date?
        public var bounds: Bounds
        public var pause: Pause?
        public var retirement: Retirement?
        /// Whether this producer wants the job running at the instant (window, bounds, pause, retirement).
        public var desired: Bool
        /// The first instant at or after the one asked about at which this producer wants the job
        /// (the instant itself when ``desired``); nil when never within a year (or retired, paused
        /// without an end, past its `until`).
        public var nextDesired: Date?
    }

    /// The job's cron window at the instant, on the producer's clock.
    public struct Window: Codable, Sendable, Hashable {
        /// The cron expression; nil when the job has no window (always wanted within its bounds).
        public var cron: String?
        public var open: Bool
        /// The producer's wall clock at the instant, e.g. `2026-03-29 03:30:00 CEST (+02:00)`.
        public var localTime: String
        /// The cron fields that do not match the wall clock (`minute`, `hour`, `day-of-month`,
        /// `month`, `day-of-week`), each with the field as written and the clock's value.
        public var closedBy: [ClosedField]
        /// Set when the instant falls in a DST gap's shadow or in a fold of the producer's zone.
        public var dst: DSTNote?
    }

    public struct ClosedField: Codable, Sendable, Hashable {
        public var field: String
        /// The field as written in the expression (`*/5`, `9-17`), or the whole expression for a macro.
        public var expression: String
        /// The wall clock's value of that field (weekday 0 = Sunday).
        public var value: Int
    }

    /// A daylight-saving transition around the instant.
    public struct DSTNote: Codable, Sendable, Hashable {
        public enum Kind: String, Codable, Sendable, Hashable {
            /// Clocks jumped forward: a range of wall-clock times did not exist.
            case gap
            /// Clocks went back: a range of wall-clock times happened twice.
            case fold
        }

        public var kind: Kind
        /// The instant of the transition.
        public var transition: Date
        /// The wall-clock range skipped (gap) or repeated (fold), e.g. `02:00-03:00`.
        public var localRange: String
        public var message: String
    }

    public struct Pause: Codable, Sendable, Hashable {
        public var by: String
        public var reason: String
        public var at: Date
        public var until: Date?
        public var stopJobs: Bool
    }

    public struct Retirement: Codable, Sendable, Hashable {
        /// Empty when only the producer's retired mark is known (its plan event was pruned).
        public var by: String
        public var at: Date?
        public var revision: Int?
    }

    /// A round of the history that acted on the job, with those actions.
    public struct Round: Codable, Sendable, Hashable {
        public var id: String
        public var producer: String
        public var node: String
        public var tick: Date
        public var revision: Int
        public var error: String?
        public var actions: [Action]
    }

    public struct Action: Codable, Sendable, Hashable {
        public var action: String
        public var outcome: String
        public var reason: String?
        public var error: String?
        public var at: Date
    }

    /// The job in the pool now.
    public struct Placement: Codable, Sendable, Hashable {
        public enum Status: String, Codable, Sendable, Hashable {
            /// A worker owns it.
            case running
            /// Held: no active worker has the capability it requires.
            case unplaced
            /// Its payload is in the pool without an owner: the pool requeues it to a worker.
            case awaitingRequeue = "awaiting-requeue"
            /// In the pool, but the pool has no active worker at all.
            case noWorker = "no-worker"
            /// Not in the pool.
            case absent
        }

        public var status: Status
        public var worker: String?
        public var node: String?
        /// The node's `--name`, when it recorded one.
        public var nodeName: String?
        public var handler: String?
        /// The capability an unplaced job waits for.
        public var requirement: String?
        /// Workers registered in the pool (retiring ones left out).
        public var activeWorkers: Int
    }

    /// When the job runs next.
    public struct NextRun: Codable, Sendable, Hashable {
        /// Some producer wants it at the instant asked about.
        public var now: Bool
        /// The earliest instant a producer wants it (the instant itself when ``now``).
        public var at: Date?
        public var producer: String?
    }

    public var job: String
    public var pool: String
    /// The instant explained.
    public var at: Date
    /// Whether some producer lists the job or the pool holds it.
    public var found: Bool
    public var producers: [Listing]
    /// Up to five rounds that acted on the job, newest first (empty without a history).
    public var rounds: [Round]
    /// Nil when the pool was not read (no Redis given).
    public var placement: Placement?
    /// Nil when no producer wants the job within a year.
    public var nextRun: NextRun?
    /// What could not be consulted or is worth knowing (a missing source, an unreadable definition).
    public var notes: [String]

    /// How far ahead the next window opening is searched.
    public static let horizon: TimeInterval = 366 * 86_400

    /// Explains `job` at `instant` from what is given: `plan` (the pool's plan in Redis), `node` (a
    /// client-only node of the pool, for owners, payloads and unplaced jobs) and `store` (a node's
    /// SQLite history: rounds, and the definitions of retired producers). With no `plan`, the
    /// store's current definitions and pause events stand in for it.
    public static func compute(job: String, at instant: Date, pool: String, plan: PoolPlan?, node: Node?, store: PlanStore?)
        async throws(ServiceError) -> JobExplanation
    {
        var notes: [String] = []
        let sources = try await producerSources(pool: pool, plan: plan, store: store, notes: &notes)
        var listings: [Listing] = []
        for source in sources.sorted(by: { $0.name < $1.name }) {
            let definition: ProducerDefinition
            do {
                definition = try ProducerDefinition(canonicalJSON: source.definition)
            } catch {
                notes.append("producer \(source.name) revision \(source.revision): definition unreadable: \(error)")
                continue
            }
            guard let jobDefinition = definition.jobs.first(where: { $0.key == job }) else { continue }
            listings.append(listing(jobDefinition, of: definition, source: source, at: instant))
        }

        var rounds: [Round] = []
        if let store {
            do {
                var filter = HistoryFilter()
                filter.pool = pool
                filter.job = job
                filter.limit = 5
                for record in try store.rounds(matching: filter) {
                    let actions = try store.round(id: record.roundID)?.1.filter { $0.job == job } ?? []
                    rounds.append(Round(id: record.roundID, producer: record.producer, node: record.node, tick: record.tick,
                        revision: record.revision, error: record.error,
                        actions: actions.map { Action(action: $0.action.rawValue, outcome: $0.outcome.rawValue, reason: $0.reason, error: $0.error, at: $0.at) }))
                }
            } catch {
                throw ServiceError(.history, "reading the history: \(error.message)", underlying: error)
            }
        } else {
            notes.append("no history given (--db): the rounds that acted on the job are not listed")
        }

        var placement: Placement?
        if let node {
            placement = try await self.placement(of: job, node: node, pool: pool)
        } else {
            notes.append("no pool given (--redis): the job's owner is not known")
        }

        let next = listings.compactMap { listing in listing.nextDesired.map { ($0, listing.producer) } }.min { $0.0 < $1.0 }
        let nextRun = next.map { NextRun(now: $0.0 <= instant, at: $0.0, producer: $0.1) }
        let inPool = placement.map { $0.status != .absent } ?? false
        return JobExplanation(job: job, pool: pool, at: instant, found: !listings.isEmpty || inPool, producers: listings,
            rounds: rounds, placement: placement, nextRun: nextRun, notes: notes)
    }

    // MARK: Producers

    /// A producer's current definition with its state, from the pool's plan or a history.
    struct ProducerSource {
        var name: String
        var revision: Int
        var definition: String
        var pause: Pause?
        var retirement: Retirement?
    }

    /// The pool's plan when given (retired producers' last definitions from the store, since the
    /// plan drops them), else the store's current definitions with pauses replayed from its plan events.
    static func producerSources(pool: String, plan: PoolPlan?, store: PlanStore?, notes: inout [String])
        async throws(ServiceError) -> [ProducerSource]
    {
        var stored: [String: ProducerRevision] = [:]
        if let store {
            do {
                for revision in try store.producers(pool: pool) { stored[revision.name] = revision }
            } catch {
                throw ServiceError(.history, "reading the history: \(error.message)", underlying: error)
            }
        }
        if let plan {
            let snapshot: PlanSnapshot
            do {
                snapshot = try await plan.read()
            } catch let error as ServiceError {
                throw error
            } catch {
                throw ServiceError(.redis, "reading the pool's plan: \(error)", underlying: error)
            }
            for skipped in snapshot.skipped { notes.append("plan entry \(skipped.field) unreadable: \(skipped.cause)") }
            var sources = snapshot.producers.values.map { producer in
                ProducerSource(name: producer.name, revision: producer.revision, definition: producer.definition,
                    pause: snapshot.paused[producer.name].map(pause), retirement: nil)
            }
            for (name, retirement) in snapshot.retired where snapshot.producers[name] == nil {
                guard let last = stored[name] else {
                    if store == nil { notes.append("producer \(name) is retired; its last definition is only in a history (--db)") }
                    continue
                }
                sources.append(ProducerSource(name: name, revision: last.revision, definition: last.definition, pause: nil,
                    retirement: Retirement(by: retirement.actor, at: retirement.at, revision: retirement.revision)))
            }
            return sources
        }
        guard let store else { return [] }
        notes.append("no pool given (--redis): the plan is this history's copy")
        let events: [PlanEvent]
        do {
            events = try store.planEvents(pool: pool, limit: 100_000)
        } catch {
            throw ServiceError(.history, "reading the history: \(error.message)", underlying: error)
        }
        // The last pause or resume of each producer decides; a retirement is the producer's own mark.
        var pauses: [String: Pause] = [:]
        var retirements: [String: Retirement] = [:]
        for event in events {
            switch event.kind {
            case .paused:
                pauses[event.producer] = Pause(by: event.actor, reason: event.reason ?? "", at: event.at, until: event.until,
                    stopJobs: event.stopJobs ?? false)
            case .resumed:
                pauses[event.producer] = nil
            case .created, .updated:
                retirements[event.producer] = nil
            case .retired:
                retirements[event.producer] = Retirement(by: event.actor, at: event.at, revision: event.revision)
            case .triggered:
                break
            }
        }
        return stored.values.map { revision in
            // The producer row's own mark decides; the event (who) may have been pruned.
            let retirement = revision.retiredAt.map { at in
                retirements[revision.name] ?? Retirement(by: "", at: RFC3339.date(from: at), revision: nil)
            }
            return ProducerSource(name: revision.name, revision: revision.revision, definition: revision.definition,
                pause: retirement == nil ? pauses[revision.name] : nil, retirement: retirement)
        }
    }

    static func pause(_ pause: PlanPause) -> Pause {
        Pause(by: pause.actor, reason: pause.reason, at: pause.at, until: pause.until, stopJobs: pause.stopJobs)
    }

    static func listing(_ job: JobDefinition, of definition: ProducerDefinition, source: ProducerSource, at instant: Date) -> Listing {
        let zone = TimeZone(identifier: definition.timeZone) ?? TimeZone(secondsFromGMT: 0) ?? .current
        let bounds: Listing.Bounds = job.from.map { instant < $0 } == true ? .beforeFrom
            : job.until.map { instant >= $0 } == true ? .afterUntil : .open
        // A pause that ended by its `until` no longer holds, even before a planner cleared it.
        let pause = source.pause.flatMap { pause in pause.until.map { instant < $0 } ?? true ? pause : nil }
        let state: Listing.State = source.retirement != nil ? .retired : pause != nil ? .paused : .active
        let window = self.window(job.active, at: instant, in: zone)
        let desired = state == .active && job.isDesired(at: instant, in: zone)
        var next: Date?
        if desired {
            next = instant
        } else if state != .retired {
            // Paused with an end: the first opening from then on; paused without one: never.
            if let pause {
                if let until = pause.until { next = nextDesired(job, from: until, in: zone) }
            } else {
                next = nextDesired(job, from: instant, in: zone)
            }
        }
        return Listing(producer: source.name, revision: source.revision, state: state, mode: definition.mode.rawValue,
            timeZone: definition.timeZone, handler: job.handler, window: window, from: job.from, until: job.until, bounds: bounds,
            pause: pause, retirement: source.retirement, desired: desired, nextDesired: next)
    }

    /// The first instant at or after `start` at which the job's window and bounds are open, within
    /// ``horizon``. A week is searched first: the cost of the search grows with the days covered.
    static func nextDesired(_ job: JobDefinition, from start: Date, in zone: TimeZone) -> Date? {
        let lower = max(start, job.from ?? start)
        let limit = min(start.addingTimeInterval(horizon), job.until ?? .distantFuture)
        guard lower < limit else { return nil }
        guard let active = job.active else { return lower }
        var searched = lower
        for span in [7 * 86_400.0, horizon] {
            let upper = min(lower.addingTimeInterval(span), limit)
            if let first = active.activeIntervals(from: searched, until: upper, in: zone).first { return first.from }
            searched = upper
            if upper >= limit { break }
        }
        return nil
    }

    // MARK: Window

    static func window(_ cron: CronExpression?, at instant: Date, in zone: TimeZone) -> Window {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        let parts = calendar.dateComponents([.minute, .hour, .day, .month, .weekday], from: instant)
        let local = localTime(instant, in: zone)
        let dst = dstNote(at: instant, in: zone)
        guard let cron else { return Window(cron: nil, open: true, localTime: local, closedBy: [], dst: dst) }
        let minute = parts.minute ?? 0, hour = parts.hour ?? 0, day = parts.day ?? 1, month = parts.month ?? 1
        // Calendar counts weekdays from 1 = Sunday; cron from 0 = Sunday.
        let weekday = (parts.weekday ?? 1) - 1
        let written = cron.source.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        func expression(_ index: Int) -> String { written.count == 5 ? written[index] : cron.source }
        var closed: [ClosedField] = []
        if cron.minutes & (1 << UInt64(minute)) == 0 { closed.append(ClosedField(field: "minute", expression: expression(0), value: minute)) }
        if cron.hours & (1 << UInt32(hour)) == 0 { closed.append(ClosedField(field: "hour", expression: expression(1), value: hour)) }
        let dayOfMonth = cron.daysOfMonth & (1 << UInt32(day)) != 0
        let dayOfWeek = cron.daysOfWeek & (1 << UInt8(weekday)) != 0
        // Cron's day rule: with both day fields restricted, either one matching is enough.
        let bothRestricted = !cron.dayOfMonthIsStar && !cron.dayOfWeekIsStar
        if bothRestricted ? !(dayOfMonth || dayOfWeek) : !dayOfMonth {
            closed.append(ClosedField(field: "day-of-month", expression: expression(2), value: day))
        }
        if cron.months & (1 << UInt16(month)) == 0 { closed.append(ClosedField(field: "month", expression: expression(3), value: month)) }
        if bothRestricted ? !(dayOfMonth || dayOfWeek) : !dayOfWeek {
            closed.append(ClosedField(field: "day-of-week", expression: expression(4), value: weekday))
        }
        return Window(cron: cron.source, open: cron.isActive(at: instant, in: zone), localTime: local, closedBy: closed, dst: dst)
    }

    static func localTime(_ instant: Date, in zone: TimeZone) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = zone
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss zzz (xxx)"
        return formatter.string(from: instant)
    }

    /// The DST transition whose gap or fold the instant falls in, if any. An instant is never
    /// inside a gap (it always has one wall-clock reading), so "in the gap" means: read with the
    /// offset before the transition, its wall-clock time is one the clocks skipped — what someone
    /// who wrote "02:30" on a spring-forward night meant. A fold holds both readings of a time.
    static func dstNote(at instant: Date, in zone: TimeZone) -> DSTNote? {
        // Transitions are hours apart at most in every zone: one within 3 h either side decides.
        guard let transition = zone.nextDaylightSavingTimeTransition(after: instant.addingTimeInterval(-3 * 3_600)),
              transition <= instant.addingTimeInterval(3 * 3_600) else { return nil }
        let before = zone.secondsFromGMT(for: transition.addingTimeInterval(-1))
        let after = zone.secondsFromGMT(for: transition)
        let delta = TimeInterval(after - before)
        guard delta != 0 else { return nil }
        var utc = Calendar(identifier: .gregorian)
        utc.timeZone = TimeZone(secondsFromGMT: 0) ?? zone
        func clock(_ offset: Int) -> String {
            let parts = utc.dateComponents([.hour, .minute], from: transition.addingTimeInterval(TimeInterval(offset)))
            return String(format: "%02d:%02d", parts.hour ?? 0, parts.minute ?? 0)
        }
        if delta > 0 {
            guard instant >= transition, instant < transition.addingTimeInterval(delta) else { return nil }
            let range = "\(clock(before))-\(clock(after))"
            return DSTNote(kind: .gap, transition: transition, localRange: range, message:
                "DST gap: the clocks jumped from \(clock(before)) to \(clock(after)); wall-clock times \(range) did not exist that day, so a window in them did not open")
        }
        guard instant >= transition.addingTimeInterval(delta), instant < transition.addingTimeInterval(-delta) else { return nil }
        let range = "\(clock(after))-\(clock(before))"
        let which = instant < transition ? "first" : "second"
        return DSTNote(kind: .fold, transition: transition, localRange: range, message:
            "DST fold: the clocks went back from \(clock(before)) to \(clock(after)); wall-clock times \(range) happened twice, this is the \(which) time (a window in them is open both times)")
    }

    // MARK: Pool

    static func placement(of job: String, node: Node, pool: String) async throws(ServiceError) -> Placement {
        do {
            let workers = try await node.poolWorkers().count
            let payload = try await node.jobPayload(job)
            let handler = payload.flatMap { try? JobEnvelope(decoding: $0).handler }
            if let owner = try await node.jobOwner(job) {
                var name: String?
                if let id = owner.node {
                    name = try await node.client.send("HGET", RedisKeySpace(pool).key("node-names"), id).bytes
                        .map { String(decoding: $0, as: UTF8.self) }
                }
                return Placement(status: .running, worker: owner.worker, node: owner.node, nodeName: name, handler: handler,
                    activeWorkers: workers)
            }
            if let requirement = try await node.unplacedJobs()[job] {
                return Placement(status: .unplaced, handler: handler, requirement: requirement, activeWorkers: workers)
            }
            guard payload != nil else { return Placement(status: .absent, activeWorkers: workers) }
            return Placement(status: workers == 0 ? .noWorker : .awaitingRequeue, handler: handler, activeWorkers: workers)
        } catch {
            throw ServiceError(.redis, "reading pool \(pool): \(error)", underlying: error)
        }
    }
}
