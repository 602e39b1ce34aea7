import Foundation
import GRDB
import Rota
import RotaRedis
import RotaService

/// The independent checker. It trusts none of Rota's own bookkeeping APIs: it reads the workers'
/// own start/stop log lines (the `log` handler's, with the processes' timestamps), the raw Redis
/// hashes of the pool (key layout in ARCHITECTURE.md) and every planner's SQLite file with plain
/// SQL, and compares them with the plan it generated itself.
struct Checker {
    let cluster: ChaosCluster
    let client: RedisClient
    /// Jobs that must run exactly once.
    var desired: Set<String>
    /// Jobs that may run once or not at all (a dispatch that failed with a timeout may still start).
    var optional: Set<String> = []

    // MARK: What runs, by the workers' logs

    /// Running copies per job and the worker of the latest start, over the processes that have not
    /// ended (a paused process still runs its jobs as far as it knows).
    struct LogView {
        var copies: [String: Int] = [:]
        var worker: [String: String] = [:]
        /// The slots of the processes running each job.
        var slots: [String: Set<String>] = [:]

        /// Jobs running on a process whose workers do not offer the job's handler class.
        var misplaced: [String] {
            slots.filter { job, slots in slots.contains { !ChaosCluster.slot($0, offersHandlerOf: job) } }.keys.sorted()
        }
    }

    func logView() -> LogView {
        var view = LogView()
        for process in cluster.all where !process.hasEnded {
            // Per job, the workers of this process running it, oldest start first. A stop line
            // names its worker (without one, it ends the oldest copy).
            var open: [String: [String]] = [:]
            for record in process.records {
                switch record.kind {
                case .started(let worker):
                    open[record.job, default: []].append(worker)
                case .stopped(let worker):
                    guard var workers = open[record.job], !workers.isEmpty else { continue }
                    if let worker, let index = workers.firstIndex(of: worker) {
                        workers.remove(at: index)
                    } else {
                        workers.removeFirst()
                    }
                    open[record.job] = workers
                case .round:
                    break
                }
            }
            for (job, workers) in open where !workers.isEmpty {
                view.copies[job, default: 0] += workers.count
                view.worker[job] = workers.last
                view.slots[job, default: []].insert(process.slot)
            }
        }
        return view
    }

    /// Seconds during which some job ran in two or more copies at once, within `from`…`until`, by
    /// the logs of every incarnation (a killed process's jobs end at its kill).
    func overlapSeconds(from: Date, until: Date) -> Double { overlap(from: from, until: until).total }

    /// Per job, the changes in its number of running copies by the logs of every incarnation
    /// (+1 at a start, -1 at a stop, -n at the end of a process that ended with n copies still
    /// open: a killed process's jobs end at its kill), and the slots that logged its starts.
    func copyChanges() -> (changes: [String: [(Date, Int)]], startedBy: [String: [String]]) {
        var changes: [String: [(Date, Int)]] = [:]
        var startedBy: [String: [String]] = [:]
        for process in cluster.all {
            var open: [String: Int] = [:]
            for record in process.records {
                switch record.kind {
                case .started:
                    open[record.job, default: 0] += 1
                    changes[record.job, default: []].append((record.time, 1))
                    startedBy[record.job, default: []].append("\(process.slot)#\(process.incarnation)")
                case .stopped:
                    guard let count = open[record.job], count > 0 else { continue }
                    open[record.job] = count - 1
                    changes[record.job, default: []].append((record.time, -1))
                case .round:
                    break
                }
            }
            if let ended = process.endedAt {
                for (job, count) in open where count > 0 { changes[job, default: []].append((ended, -count)) }
            }
        }
        return (changes, startedBy)
    }

    /// The same, with the jobs that ran twice longest (job, seconds, slots that logged its starts).
    func overlap(from: Date, until: Date) -> (total: Double, worst: [String]) {
        let (changes, startedBy) = copyChanges()
        var total = 0.0
        var perJob: [(String, Double)] = []
        for (job, events) in changes {
            var jobTotal = 0.0
            // Stops before starts at the same instant: a hand-over within a millisecond is not an overlap.
            let sorted = events.sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            var count = 0
            for (index, (time, delta)) in sorted.enumerated() {
                count += delta
                guard count >= 2 else { continue }
                let end = index + 1 < sorted.count ? sorted[index + 1].0 : until
                let segment = min(end, until).timeIntervalSince(max(time, from))
                if segment > 0 { jobTotal += segment }
            }
            if jobTotal > 0 {
                total += jobTotal
                perJob.append((job, jobTotal))
            }
        }
        let worst = perJob.sorted { $0.1 > $1.1 }.prefix(3).map { job, seconds in
            "\(job) \((seconds * 1000).rounded() / 1000) s (started by \(startedBy[job, default: []].joined(separator: ",")))"
        }
        return (total, worst)
    }

    // MARK: What Redis says

    struct RedisView {
        var owners: [String: String] = [:]
        var workers: Set<String> = []
    }

    private func hash(_ name: String) async throws -> [String: String] {
        let reply = try await client.send("HGETALL", "rota:{\(ChaosCluster.pool)}:map:\(name)")
        guard case .array(let items) = reply else { return [:] }
        var fields: [String: String] = [:]
        var index = 0
        while index + 1 < items.count {
            if let field = items[index].string, let value = items[index + 1].string, !field.hasPrefix("=") { fields[field] = value }
            index += 2
        }
        return fields
    }

    func redisView() async throws -> RedisView {
        let owners = try await hash("owners")
        let workers = try await hash("workers").filter { $0.value != "-" }
        return RedisView(owners: owners, workers: Set(workers.keys))
    }

    // MARK: Convergence

    /// Why the pool is not settled (empty when it is): every desired job running in exactly one
    /// copy by the logs, owned in Redis by the worker that logged its start, that worker registered;
    /// nothing else running.
    func divergence() async -> [String] {
        let view = logView()
        let redis: RedisView
        do {
            redis = try await redisView()
        } catch {
            return ["Redis unreadable: \(error)"]
        }
        var problems: [String] = []
        let missing = desired.filter { view.copies[$0] == nil }
        if !missing.isEmpty { problems.append("\(missing.count) desired jobs not running (e.g. \(missing.sorted().prefix(3)))") }
        let twice = view.copies.filter { $0.value > 1 }
        if !twice.isEmpty { problems.append("\(twice.count) jobs running twice (e.g. \(twice.keys.sorted().prefix(3)))") }
        let misplaced = view.misplaced
        if !misplaced.isEmpty { problems.append("\(misplaced.count) jobs running on workers without their handler (e.g. \(misplaced.prefix(3)))") }
        let extra = view.copies.keys.filter { !desired.contains($0) && !optional.contains($0) }
        if !extra.isEmpty { problems.append("\(extra.count) undesired jobs running (e.g. \(extra.sorted().prefix(3)))") }
        let misowned = desired.filter { job in view.copies[job] == 1 && redis.owners[job] != view.worker[job] }.sorted()
        if let job = misowned.first {
            problems.append("\(misowned.count) jobs owned in Redis by another worker than the one running them "
                + "(e.g. \(job): owner \(redis.owners[job] ?? "none"), running on \(view.worker[job] ?? "?"))")
        }
        let deadOwners = redis.owners.values.filter { !redis.workers.contains($0) }
        if !deadOwners.isEmpty { problems.append("\(deadOwners.count) jobs owned by unregistered workers") }
        let unknown = redis.owners.keys.filter { !desired.contains($0) && !optional.contains($0) }
        if !unknown.isEmpty { problems.append("\(unknown.count) undesired jobs owned in Redis") }
        return problems
    }

    struct Settling {
        /// When the pool entered the state it then held for the whole hold period; nil if never.
        var settledAt: Date?
        var end: Date
        var lastDivergence: [String]
    }

    /// Polls until the pool has been converged for `hold` seconds, at most until `limit` after `from`.
    func waitSettled(from: Date, hold: Double, limit: Double) async -> Settling {
        var stableSince: Date?
        var last: [String] = []
        while true {
            let now = Date()
            let problems = await divergence()
            if problems.isEmpty {
                if stableSince == nil { stableSince = now }
                if let since = stableSince, now.timeIntervalSince(since) >= hold {
                    return Settling(settledAt: since, end: now, lastDivergence: [])
                }
            } else {
                stableSince = nil
                last = problems
            }
            if now.timeIntervalSince(from) > limit + hold { return Settling(settledAt: nil, end: now, lastDivergence: last) }
            try? await Task.sleep(for: .milliseconds(200))
        }
    }

    // MARK: Liveness

    /// Dispatches `key` from a client-only node, waits for a worker's log to show it running, stops
    /// it and waits for the log to show it stopped. Returns the seconds it all took.
    func probe(key: String, timeout: Double) async throws -> Double {
        var options = Node.Options()
        options.clientOnly = true
        options.name = "chaos-probe"
        let began = Date()
        let payload = try JobEnvelope(handler: "log", payload: Array("{\"probe\":true}".utf8)).encoded()
        try await Node.withNode(pool: ChaosCluster.pool, client: client, options: options) { node in
            try await node.dispatch(key: key, payload: payload, requirement: "log")
            try await self.waitForLog(timeout: timeout, "\(key) to run") { $0.copies[key] == 1 }
            try await node.stop(key: key)
            try await self.waitForLog(timeout: timeout, "\(key) to stop") { $0.copies[key] == nil }
        }
        return Date().timeIntervalSince(began)
    }

    /// After a restart: polls until `process` is back — it logged a job start and the pool is
    /// converged, or the pool has been converged for `hold` seconds — at most `limit` seconds after
    /// `since`. Returns the seconds since `since`; nil if the process ended or the limit passed.
    func waitBack(_ process: ChaosProcess, since: Date, hold: Double, limit: Double) async -> Double? {
        var convergedSince: Date?
        while Date().timeIntervalSince(since) <= limit, !process.hasEnded {
            let now = Date()
            if await divergence().isEmpty {
                let converged = convergedSince ?? now
                convergedSince = converged
                let tookJob = process.records.contains { if case .started = $0.kind { true } else { false } }
                if tookJob || now.timeIntervalSince(converged) >= hold { return now.timeIntervalSince(since) }
            } else {
                convergedSince = nil
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
        return nil
    }

    private func waitForLog(timeout: Double, _ what: String, _ condition: (LogView) -> Bool) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition(logView()) {
            guard Date() < deadline else { throw ChaosFailure(.process, "timed out after \(timeout) s waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    // MARK: History

    struct RoundRow: Hashable {
        let roundID: String
        let producer: String
        let tick: Int64
        let node: String
        let finished: Bool
    }

    struct HistoryReport {
        var duplicateRounds = 0
        var missingRounds = 0
        var unfinishedRounds = 0
        var skippedTicks = 0
        var rounds = 0
        var examples: [String] = []
        /// Ticks (ms) of every round any database holds, one per round.
        var ticks: [Int64] = []

        func roundsTicked(after date: Date) -> Int {
            let ms = Int64(date.timeIntervalSince1970 * 1000)
            return ticks.filter { $0 > ms }.count
        }
    }

    /// Every round of the pool in one planner's SQLite file (plain SQL, read-only).
    func rounds(inDatabase path: String) throws -> [RoundRow] {
        try Self.openReadOnly(path).read { db in
            try Row.fetchAll(db, sql: "SELECT round_id, producer, tick_ms, node, finished_ms FROM round WHERE pool = ?", arguments: [ChaosCluster.pool])
                .map { row in
                    RoundRow(roundID: row["round_id"], producer: row["producer"], tick: row["tick_ms"], node: row["node"],
                        finished: (row["finished_ms"] as Int64?) != nil)
                }
        }
    }

    private static func openReadOnly(_ path: String) throws -> DatabaseQueue {
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(5)
        return try DatabaseQueue(path: path, configuration: configuration)
    }

    /// Compares every planner's history: a tick planned by two nodes (by the databases or by the
    /// planners' own "round" log lines) is a duplicate; a round some database holds and another
    /// lacks (ticks older than `horizon`, after waiting up to `wait` for replication) is missing.
    func history(horizon: Date, wait: Double) async -> HistoryReport {
        let horizonMs = Int64(horizon.timeIntervalSince1970 * 1000)
        var perDatabase: [String: [RoundRow]] = [:]
        let deadline = Date().addingTimeInterval(wait)
        var report = HistoryReport()
        while true {
            perDatabase = [:]
            var unreadable: [String] = []
            for slot in cluster.plannerSlots {
                do {
                    perDatabase[slot] = try rounds(inDatabase: cluster.database(of: slot))
                } catch {
                    unreadable.append("\(slot): \(error)")
                }
            }
            let union = Set(perDatabase.values.flatMap { $0.filter { $0.tick <= horizonMs }.map(\.roundID) })
            let missing = perDatabase.values.map { rows in union.subtracting(rows.map(\.roundID)) }
            let allMissing = missing.reduce(into: Set<String>()) { $0.formUnion($1) }
            report.missingRounds = allMissing.count + unreadable.count
            report.examples = allMissing.sorted().prefix(5).map { "round \($0) missing from some database" } + unreadable
            if report.missingRounds == 0 || Date() >= deadline { break }
            try? await Task.sleep(for: .milliseconds(500))
        }
        let rows = perDatabase.values.flatMap { $0 }
        var planners: [String: Set<String>] = [:]
        var finished: [String: Bool] = [:]
        for row in rows {
            planners["\(row.producer)@\(row.tick)", default: []].insert(row.node)
            finished[row.roundID] = (finished[row.roundID] ?? false) || row.finished
        }
        var duplicates = Set(planners.filter { $0.value.count > 1 }.keys)
        // The planners' log lines: a round logged by two incarnations was applied twice.
        var loggedBy: [String: Set<String>] = [:]
        for process in cluster.all {
            for record in process.records {
                if case .round(let producer, let round) = record.kind { loggedBy["\(producer)|\(round)", default: []].insert("\(process.slot)#\(process.incarnation)") }
            }
        }
        duplicates.formUnion(loggedBy.filter { $0.value.count > 1 }.keys)
        report.duplicateRounds = duplicates.count
        report.examples += duplicates.sorted().prefix(5).map { "tick planned twice: \($0)" }
        report.ticks = Dictionary(rows.map { ($0.roundID, $0.tick) }, uniquingKeysWith: { first, _ in first }).map(\.value)
        report.unfinishedRounds = finished.values.filter { !$0 }.count
        report.rounds = finished.count
        let ticks = Dictionary(grouping: rows, by: \.producer).mapValues { Set($0.map(\.tick)).sorted() }
        for (_, list) in ticks {
            for (previous, next) in zip(list, list.dropFirst()) where next - previous > 1000 {
                report.skippedTicks += Int((next - previous) / 1000) - 1
            }
        }
        return report
    }
}

// MARK: - The history against the logs

extension Checker {
    struct HistoryAgreement {
        struct Database {
            let slot: String
            /// Milliseconds of disagreement over all jobs.
            let total: Int64
            /// The jobs that disagree longest, longest first (at most 3), with their milliseconds.
            let worst: [(job: String, ms: Int64)]
        }

        var databases: [Database] = []
        var unreadable: [String] = []

        /// The database whose history disagrees most with the logs.
        var worst: Database? { databases.max { $0.total < $1.total } }
    }

    /// Per job, the rows of the `job_state_changes` view (job, at_ms, state; plain SQL) of one
    /// planner's database: what its history says about when the job ran.
    func stateChanges(inDatabase path: String) throws -> [String: [(at: Int64, running: Bool)]] {
        try Self.openReadOnly(path).read { db in
            var rows: [String: [(at: Int64, running: Bool)]] = [:]
            let cursor = try Row.fetchCursor(db, sql: "SELECT job, at_ms, state FROM job_state_changes")
            while let row = try cursor.next() {
                guard let job = row["job"] as String?, let at = row["at_ms"] as Int64?, let state = row["state"] as String? else { continue }
                rows[job, default: []].append((at, state == "running"))
            }
            return rows
        }
    }

    /// For every planner's database: over `from`..<`until`, per job, how long the history's "J is
    /// running" (its last `job_state_changes` row at or before T says 'running') differs from the
    /// logs' (some process logged a start without a matching stop, a process's open jobs ending
    /// at its end), leaving out `tolerance` seconds either side of each change in the logs.
    func historyAgreement(from: Date, until: Date, tolerance: Double) -> HistoryAgreement {
        let ms = unixMilliseconds
        let logs = copyChanges().changes.mapValues { Steps(copies: $0.map { (ms($0.0), $0.1) }) }
        var result = HistoryAgreement()
        for slot in cluster.plannerSlots {
            let history: [String: Steps]
            do {
                history = try stateChanges(inDatabase: cluster.database(of: slot)).mapValues { Steps(states: $0) }
            } catch {
                result.unreadable.append("\(slot): \(error)")
                continue
            }
            var perJob: [(job: String, ms: Int64)] = []
            for job in Set(logs.keys).union(history.keys) {
                let disagreement = (logs[job] ?? Steps()).disagreement(
                    with: history[job] ?? Steps(), tolerance: Int64((tolerance * 1000).rounded()), from: ms(from), until: ms(until))
                if disagreement > 0 { perJob.append((job, disagreement)) }
            }
            let worst = perJob.sorted { $0.ms != $1.ms ? $0.ms > $1.ms : $0.job < $1.job }.prefix(3)
            result.databases.append(.init(slot: slot, total: perJob.reduce(0) { $0 + $1.ms }, worst: Array(worst)))
        }
        return result
    }
}
