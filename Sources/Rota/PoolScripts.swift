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
        -- Decimal timestamps compare as numbers: a longer digit string is larger.
        local function newer_or_equal(a, b)
          if string.len(a) ~= string.len(b) then return string.len(a) > string.len(b) end
          return a >= b
        end

        """

    /// The admission check shared by ``claimDispatch`` and ``claimAndAppend`` (same first keys and
    /// arguments): nil once the pending guard is set, else the refusal to return.
    private static let admission = """
        local function admit()
          if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {3, ''} end
          local guard = redis.call('HGET', KEYS[2], ARGV[1])
          if guard then
            if not string.match(guard, '^%d+$') then return {4, guard} end
            if newer_or_equal(guard, ARGV[2]) then return {2, guard} end
          end
          mset(KEYS[2], KEYS[3], ARGV[1], ARGV[3])
          return nil
        end

        """

    /// A worker's record of one job it started, shared by ``recordStart`` and ``commitBatch``
    /// (same first six keys): owner and payload written only when different, and for a fresh
    /// dispatch ("1") the pending guard removed.
    private static let startRecord = """
        local function record_start(w, k, p, fresh)
          if redis.call('HGET', KEYS[1], k) ~= w then mset(KEYS[1], KEYS[2], k, w) end
          if redis.call('HGET', KEYS[3], k) ~= p then mset(KEYS[3], KEYS[4], k, p) end
          if fresh == '1' then mdel(KEYS[5], KEYS[6], k) end
        end

        """

    /// Atomic admission of a fresh dispatch.
    /// KEYS: payloads hash, pending hash, pending channel. ARGV: key, now nanos, pending-until nanos.
    /// → {1, token} claimed · {2, guard} another dispatch is pending · {3, ""} the job exists ·
    ///   {4, guard} the guard is malformed (left untouched).
    static let claimDispatch = RedisScript(helpers + admission + """
        local refused = admit()
        if refused then return refused end
        return {1, ARGV[3]}
        """)

    /// Admission and the start event in one round trip: like ``claimDispatch``, and when the
    /// claim succeeds the job record is appended to the pool stream in the same atomic step, so a
    /// claimed guard never exists without its event.
    /// KEYS: payloads hash, pending hash, pending channel, pool stream.
    /// ARGV: key, now nanos, pending-until nanos, max stream length (0: no cap), job record.
    /// → as claimDispatch, and {1, token, event ID} when claimed.
    static let claimAndAppend = RedisScript(helpers + admission + """
        local refused = admit()
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

    /// A worker records that it runs jobs: owner and durable payload, written only when different.
    /// For a fresh dispatch the pending guard goes too: from now on the payload alone keeps the
    /// key admitted, and the dispatcher need not spend a round trip releasing it.
    /// KEYS: owners hash/channel, payloads hash/channel, pending hash/channel.
    /// ARGV: worker ID, then (key, payload, "1" if fresh) triples. → the number of jobs.
    static let recordStart = RedisScript(helpers + startRecord + """
        local n = 0
        for i = 2, #ARGV, 3 do
          record_start(ARGV[1], ARGV[i], ARGV[i + 1], ARGV[i + 2])
          n = n + 1
        end
        return n
        """)

    /// What a worker does after handling a batch of inbox events, in one atomic step: record the
    /// jobs it started (owner, payload, and the fresh dispatch's guard removed, as ``recordStart``)
    /// and append its replies (acks to routing nodes, results to dispatchers) with NOMKSTREAM.
    /// Recording and replying together means a dispatcher never hears "started" for a job the
    /// pool does not know, and a routing node never acknowledges one.
    /// KEYS: owners h/c, payloads h/c, pending h/c, then the inboxes replied to.
    /// ARGV: worker ID, number of jobs, (key, payload, "1" if fresh) per job, then
    /// (index of the inbox in KEYS, event name, payload) per reply. → the number of jobs.
    static let commitBatch = RedisScript(helpers + startRecord + """
        local n = tonumber(ARGV[2])
        local i = 3
        for _ = 1, n do
          record_start(ARGV[1], ARGV[i], ARGV[i + 1], ARGV[i + 2])
          i = i + 3
        end
        while i + 2 <= #ARGV do
          redis.call('XADD', KEYS[tonumber(ARGV[i])], 'NOMKSTREAM', '*', 'n', ARGV[i + 1], 'p', ARGV[i + 2])
          i = i + 3
        end
        return n
        """)

    /// A worker gives jobs up: ownership is removed where it still names this worker; the payload
    /// is deleted only for jobs that end (stop, failed fresh start), kept for handoffs.
    /// KEYS: owners hash, owners channel, payloads hash, payloads channel.
    /// ARGV: worker ID, "1" to delete payloads / "0" to keep them, keys…
    /// → the number of ownership entries removed.
    static let release = RedisScript(helpers + """
        local n = 0
        for i = 3, #ARGV do
          local k = ARGV[i]
          if redis.call('HGET', KEYS[1], k) == ARGV[1] then
            mdel(KEYS[1], KEYS[2], k)
            n = n + 1
          end
          if ARGV[2] == '1' then mdel(KEYS[3], KEYS[4], k) end
        end
        return n
        """)

    /// Removes a worker from the registry, keep-alives, cleanup locks and every ownership entry that
    /// still names it. Payloads stay (deleting them raced with requeues and lost jobs).
    /// KEYS: workers h/c, worker keep-alive h/c, cleanup h/c, owners h/c. ARGV: worker ID.
    /// → the number of ownership entries removed.
    static let removeWorker = RedisScript(helpers + """
        local w = ARGV[1]
        mdel(KEYS[1], KEYS[2], w)
        mdel(KEYS[3], KEYS[4], w)
        mdel(KEYS[5], KEYS[6], w)
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
}
