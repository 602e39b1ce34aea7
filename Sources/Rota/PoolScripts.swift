import RotaRedis

/// Lua scripts that change several of a pool's replicated maps in one atomic step.
///
/// They follow the replicated-map commit protocol exactly (bump `=rev` by one per change, publish
/// `set:`/`del:` with the new revision), so every replica of those maps stays consistent with them.
/// Every key is in the pool's hash-tagged key space: the scripts stay valid on Redis Cluster.
enum PoolScripts {
    static let helpers = """
        local function pack(x) return struct.pack('<I4', string.len(x)) .. x end
        local function mset(h, c, k, v)
          redis.call('HSET', h, k, v)
          local rev = redis.call('HINCRBY', h, '=rev', 1)
          redis.call('PUBLISH', c, 'set:' .. pack(k) .. pack(v) .. pack(tostring(rev)))
        end
        local function mdel(h, c, k)
          if redis.call('HDEL', h, k) == 0 then return false end
          local rev = redis.call('HINCRBY', h, '=rev', 1)
          redis.call('PUBLISH', c, 'del:' .. pack(k) .. pack(tostring(rev)))
          return true
        end
        -- A job-log entry: head .. fragments .. ']}' (see JobLogJSON), nothing when no fragment.
        local function job_log(key, head, frags)
          if #frags == 0 then return end
          redis.call('XADD', key, 'MAXLEN', '~', '\(JobLogEntry.maxLength)', '*', 'n', 'e', 'p', head .. table.concat(frags, ',') .. ']}')
        end
        -- Decimal timestamps compare as numbers: a longer digit string is larger.
        local function newer_or_equal(a, b)
          if string.len(a) ~= string.len(b) then return string.len(a) > string.len(b) end
          return a >= b
        end

        """

    /// The admission check shared by ``claimDispatch`` and ``claimAndAppend`` (same first keys and
    /// arguments; `max` is the job limit): nil once the pending guard is set, else the refusal to
    /// return. Jobs are counted as running ones (payloads) plus dispatches in progress (pending
    /// guards), so a burst of dispatches cannot overshoot the limit; the maps' own `=` fields are
    /// subtracted only near the limit, keeping the usual cost at two HLENs.
    private static let admission = """
        local function jobs_near(max)
          local n = redis.call('HLEN', KEYS[1]) + redis.call('HLEN', KEYS[2])
          if n < max then return n end
          for _, h in ipairs({KEYS[1], KEYS[2]}) do
            for _, f in ipairs({'=rev', '=kind', '=cleared'}) do n = n - redis.call('HEXISTS', h, f) end
          end
          return n
        end
        local function admit(max)
          if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {3, ''} end
          local guard = redis.call('HGET', KEYS[2], ARGV[1])
          if guard then
            if not string.match(guard, '^%d+$') then return {4, guard} end
            if newer_or_equal(guard, ARGV[2]) then return {2, guard} end
          end
          -- A stale guard of this key is replaced below: it is not one more job.
          local jobs = jobs_near(max)
          if guard then jobs = jobs - 1 end
          if jobs >= max then return {5, tostring(jobs)} end
          mset(KEYS[2], KEYS[3], ARGV[1], ARGV[3])
          return nil
        end

        """

    /// A worker's record of one job it started, used by ``commitBatch`` (KEYS 1–8 as there):
    /// owner and payload written only when different; for a fresh dispatch ("1") the pending guard
    /// removed; a requeued start ("0") is recorded only while the payload exists (a stop may have
    /// ended the job meanwhile: the start must not resurrect it); "2" (a worker registering its
    /// jobs again after Redis lost them) always writes. A recorded requeued start clears the job's
    /// start-failure count. The job's requirement (KEYS 10–11) is written with it (removed when it
    /// has none), and it is no longer unplaced (KEYS 12–13). → true when recorded.
    private static let startRecord = """
        -- (previous owner, key) pairs of starts that replaced another worker as the owner.
        local displaced = {}
        local function record_start(w, k, p, flag, need)
          if flag == '0' and redis.call('HEXISTS', KEYS[3], k) == 0 then return false end
          local prev = redis.call('HGET', KEYS[1], k)
          if prev ~= w then
            -- A worker under cleanup is logged `lost` by its cleaner.
            if prev and redis.call('HEXISTS', KEYS[9], prev) == 0 then
              table.insert(displaced, prev)
              table.insert(displaced, k)
            end
            mset(KEYS[1], KEYS[2], k, w)
          end
          if redis.call('HGET', KEYS[3], k) ~= p then mset(KEYS[3], KEYS[4], k, p) end
          if flag == '1' then mdel(KEYS[5], KEYS[6], k) end
          if need ~= '' then
            if redis.call('HGET', KEYS[10], k) ~= need then mset(KEYS[10], KEYS[11], k, need) end
          elseif flag ~= '1' then
            mdel(KEYS[10], KEYS[11], k)
          end
          -- A fresh dispatch was admitted without a payload, so it has no requirement or hold
          -- left over (every end clears both): the hot path skips the deletes.
          if flag ~= '1' then mdel(KEYS[12], KEYS[13], k) end
          -- Only requeued jobs are counted (ends and give-ups delete their counts): fresh
          -- dispatches, the hot path, skip the write.
          if flag == '0' then redis.call('HDEL', KEYS[7], k) end
          return true
        end

        """

    /// Atomic admission of a fresh dispatch.
    /// KEYS: payloads hash, pending hash, pending channel. ARGV: key, now nanos, pending-until
    /// nanos, job limit.
    /// → {1, token} claimed · {2, guard} another dispatch is pending · {3, ""} the job exists ·
    ///   {4, guard} the guard is malformed (left untouched) · {5, jobs} the pool is at its limit.
    static let claimDispatch = RedisScript(helpers + admission + """
        local refused = admit(tonumber(ARGV[4]))
        if refused then return refused end
        return {1, ARGV[3]}
        """)

    /// Admission and the start event in one round trip: like ``claimDispatch``, and when the
    /// claim succeeds the job record is appended to the pool stream in the same atomic step, so a
    /// claimed guard never exists without its event.
    /// Requeued starts (handoffs, recoveries) never come here: the limit refuses new jobs only.
    /// KEYS: payloads hash, pending hash, pending channel, pool stream.
    /// ARGV: key, now nanos, pending-until nanos, max stream length (0: no cap), job record, job
    /// limit.
    /// → as claimDispatch, and {1, token, event ID} when claimed.
    static let claimAndAppend = RedisScript(helpers + admission + """
        local refused = admit(tonumber(ARGV[6]))
        if refused then return refused end
        local id
        if ARGV[4] == '0' then
          id = redis.call('XADD', KEYS[4], '*', 'n', 'j', 'p', ARGV[5])
        else
          id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'n', 'j', 'p', ARGV[5])
        end
        return {1, ARGV[3], id}
        """)

    /// Compare-and-delete of a pending guard: never removes a guard a newer dispatch took over.
    /// KEYS: pending hash, pending channel. ARGV: key, token. → 1 removed, 0 not ours.
    static let releaseDispatch = RedisScript(helpers + """
        if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
        mdel(KEYS[1], KEYS[2], ARGV[1])
        return 1
        """)

    /// What a worker does after handling a batch of inbox events, in one atomic step: record the
    /// jobs it started (see ``startRecord``), count its failed requeued starts (giving a job up
    /// after the maximum: payload, owner and count removed), append the job log, and append its
    /// replies (acks to routing nodes, results to dispatchers and stop requesters) with NOMKSTREAM.
    /// Recording and replying together means a dispatcher never hears "started" for a job the
    /// pool does not know, and a routing node never acknowledges one.
    /// KEYS: owners h/c, payloads h/c, pending h/c, start-failures hash, job log, cleanup-lock
    /// hash, requirements h/c, unplaced h/c, then the inboxes replied to.
    /// ARGV: worker ID, number of starts, number of failed requeued starts, maximum failures,
    /// job-log heads for `started`, `start-failed` and `given-up`; then (key, payload, flag,
    /// job-log fragment or "" for none, requirement or "") per start; (key, fragment) per failed start; then (index of
    /// the inbox in KEYS, event name, payload) per reply.
    /// → {keys of requeued starts refused (the job ended), keys given up, (previous owner, key)
    /// pairs of starts that replaced another worker as the owner}.
    static let commitBatch = RedisScript(helpers + startRecord + """
        local w = ARGV[1]
        local n = tonumber(ARGV[2])
        local m = tonumber(ARGV[3])
        local max = tonumber(ARGV[4])
        local refused, started = {}, {}
        local i = 8
        for _ = 1, n do
          if record_start(w, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 4]) then
            if ARGV[i + 3] ~= '' then table.insert(started, ARGV[i + 3]) end
          else
            table.insert(refused, ARGV[i])
          end
          i = i + 5
        end
        local failed, gaveup, gaveup_frags = {}, {}, {}
        for _ = 1, m do
          local k, frag = ARGV[i], ARGV[i + 1]
          if redis.call('HEXISTS', KEYS[3], k) == 1 then
            local count = redis.call('HGET', KEYS[7], k)
            -- Anything but a small count (garbage, a huge number) starts over.
            if not count or not string.match(count, '^%d+$') or string.len(count) > 9 then count = '0' end
            count = tonumber(count) + 1
            redis.call('HSET', KEYS[7], k, tostring(count))
            frag = string.sub(frag, 1, -2) .. ',"failures":' .. count .. '}'
            local owner = redis.call('HGET', KEYS[1], k)
            -- A job another worker owns runs there: only an unowned one is given up.
            if count >= max and (not owner or owner == w) then
              mdel(KEYS[1], KEYS[2], k)
              mdel(KEYS[3], KEYS[4], k)
              mdel(KEYS[10], KEYS[11], k)
              mdel(KEYS[12], KEYS[13], k)
              redis.call('HDEL', KEYS[7], k)
              table.insert(gaveup, k)
              table.insert(gaveup_frags, frag)
            else
              table.insert(failed, frag)
            end
          else
            redis.call('HDEL', KEYS[7], k)
          end
          i = i + 2
        end
        job_log(KEYS[8], ARGV[5], started)
        job_log(KEYS[8], ARGV[6], failed)
        job_log(KEYS[8], ARGV[7], gaveup_frags)
        while i + 2 <= #ARGV do
          redis.call('XADD', KEYS[tonumber(ARGV[i])], 'NOMKSTREAM', '*', 'n', ARGV[i + 1], 'p', ARGV[i + 2])
          i = i + 3
        end
        return {refused, gaveup, displaced}
        """)

    /// A worker gives jobs up: ownership is removed where it still names this worker; the payload
    /// (and the start-failure count) is deleted only for jobs that end (stop, shutdown), kept for
    /// handoffs. The job log gets the jobs whose ownership or payload this removed.
    /// KEYS: owners h/c, payloads h/c, start-failures hash, job log, requirements h/c, unplaced h/c
    /// (both cleared with the payload).
    /// ARGV: worker ID, "1" to delete payloads / "0" to keep them / "2" to delete those of jobs
    /// this worker still owned, job-log head, then (key, job-log fragment) pairs.
    /// → the number of ownership entries removed.
    static let release = RedisScript(helpers + """
        local n = 0
        local frags = {}
        for i = 4, #ARGV, 2 do
          local k = ARGV[i]
          local changed = false
          if redis.call('HGET', KEYS[1], k) == ARGV[1] then
            mdel(KEYS[1], KEYS[2], k)
            n = n + 1
            changed = true
          end
          if ARGV[2] == '1' or (ARGV[2] == '2' and changed) then
            if mdel(KEYS[3], KEYS[4], k) then changed = true end
            redis.call('HDEL', KEYS[5], k)
            mdel(KEYS[7], KEYS[8], k)
            mdel(KEYS[9], KEYS[10], k)
          end
          if changed then table.insert(frags, ARGV[i + 1]) end
        end
        job_log(KEYS[6], ARGV[3], frags)
        return n
        """)

    /// A stop for a job no active worker runs ends it: if the payload exists and the owner entry is
    /// absent, or still names the worker the router saw and that worker's keep-alive in Redis is
    /// older than the TTL, the payload, owner, pending guard and start-failure count go and the job
    /// log gets `ended-unowned`.
    /// When it ends the job of a dead owner, a tombstone (the owner's ID, expiring) tells that
    /// worker, should it come back, that its copy must stop.
    /// KEYS: owners h/c, payloads h/c, pending h/c, start-failures hash, job log, worker keep-alive
    /// hash, tombstone, requirements h/c, unplaced h/c. ARGV: key, owner seen ("" for none), now nanos, TTL nanos, job-log head,
    /// fragment, tombstone lifetime (ms).
    /// → 0 no such job · 1 ended · 2 the job has a live or another owner now (route it again).
    static let endUnowned = RedisScript(helpers + """
        local k = ARGV[1]
        if redis.call('HEXISTS', KEYS[3], k) == 0 then return 0 end
        local owner = redis.call('HGET', KEYS[1], k)
        if owner then
          if owner ~= ARGV[2] then return 2 end
          local seen = redis.call('HGET', KEYS[9], owner)
          if seen and string.match(seen, '^%d+$') and string.len(seen) <= 19
             and tonumber(ARGV[3]) - tonumber(seen) <= tonumber(ARGV[4]) then
            return 2
          end
          mdel(KEYS[1], KEYS[2], k)
          redis.call('SET', KEYS[10], owner, 'PX', ARGV[7])
        end
        mdel(KEYS[3], KEYS[4], k)
        mdel(KEYS[5], KEYS[6], k)
        mdel(KEYS[11], KEYS[12], k)
        mdel(KEYS[13], KEYS[14], k)
        redis.call('HDEL', KEYS[7], k)
        job_log(KEYS[8], ARGV[5], {ARGV[6]})
        return 1
        """)

    /// Removes a worker from the registry, keep-alives, cleanup locks and every ownership entry that
    /// still names it. Payloads stay (deleting them raced with requeues and lost jobs).
    /// KEYS: workers h/c, worker keep-alive h/c, cleanup h/c, owners h/c, capabilities h/c.
    /// ARGV: worker ID.
    /// → the number of ownership entries removed.
    static let removeWorker = RedisScript(helpers + """
        local w = ARGV[1]
        mdel(KEYS[1], KEYS[2], w)
        mdel(KEYS[3], KEYS[4], w)
        mdel(KEYS[5], KEYS[6], w)
        mdel(KEYS[9], KEYS[10], w)
        local all = redis.call('HGETALL', KEYS[7])
        local n = 0
        for i = 1, #all, 2 do
          if all[i + 1] == w and string.sub(all[i], 1, 1) ~= '=' then
            mdel(KEYS[7], KEYS[8], all[i])
            n = n + 1
          end
        end
        return n
        """)

    /// A start no active worker can take (none has the job's requirement) is held: the payload
    /// and requirement are stored (a fresh dispatch: the pending guard goes, so the job exists and
    /// a second dispatch is refused), the job is listed as unplaced and, when it was not yet, the
    /// job log gets `unplaced`. A fresh dispatch's dispatcher is told (inbox event `u`, NOMKSTREAM).
    /// An owner entry naming the worker the router saw as inactive (a dead worker whose cleanup
    /// requeued the job before removing its entries) is removed: the job is held, not owned.
    /// KEYS: owners h/c, payloads h/c, pending h/c, requirements h/c, unplaced h/c, job log,
    /// dispatcher inbox (any key of the pool when there is none).
    /// ARGV: key, payload, requirement, "1" fresh / "0" requeued, job-log head, fragment,
    /// dispatcher reply ("" for none), owner the router saw ("" for none).
    /// → 1 held · 0 another owner has it now (route it again) · 2 the job ended meanwhile (drop it).
    static let park = RedisScript(helpers + """
        local k, need = ARGV[1], ARGV[3]
        local owner = redis.call('HGET', KEYS[1], k)
        if owner then
          if owner ~= ARGV[8] then return 0 end
          mdel(KEYS[1], KEYS[2], k)
        end
        if ARGV[4] == '1' then
          if redis.call('HEXISTS', KEYS[3], k) == 0 then mset(KEYS[3], KEYS[4], k, ARGV[2]) end
          mdel(KEYS[5], KEYS[6], k)
        elseif redis.call('HEXISTS', KEYS[3], k) == 0 then
          return 2
        end
        if redis.call('HGET', KEYS[7], k) ~= need then mset(KEYS[7], KEYS[8], k, need) end
        if redis.call('HGET', KEYS[9], k) ~= need then
          mset(KEYS[9], KEYS[10], k, need)
          job_log(KEYS[11], ARGV[5], {ARGV[6]})
        end
        if ARGV[7] ~= '' then redis.call('XADD', KEYS[12], 'NOMKSTREAM', '*', 'n', 'u', 'p', ARGV[7]) end
        return 1
        """)

    /// Places a held job once a worker with its requirement is active: it leaves the unplaced list
    /// and its requeued start is appended to the pool stream, atomically, so of all the nodes that
    /// noticed the new worker exactly one places it.
    /// KEYS: unplaced h/c, owners hash, payloads hash, pool stream. ARGV: key, requirement seen,
    /// job record. → 1 placed · 0 not unplaced (any more), owned, or ended.
    static let place = RedisScript(helpers + """
        local k = ARGV[1]
        if redis.call('HGET', KEYS[1], k) ~= ARGV[2] then return 0 end
        mdel(KEYS[1], KEYS[2], k)
        if redis.call('HEXISTS', KEYS[3], k) == 1 or redis.call('HEXISTS', KEYS[4], k) == 0 then return 0 end
        redis.call('XADD', KEYS[5], '*', 'n', 'j', 'p', ARGV[3])
        return 1
        """)
}
