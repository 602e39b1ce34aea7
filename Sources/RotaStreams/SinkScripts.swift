import RotaRedis

/// The sink's Lua scripts. Every key a script touches is passed in KEYS and lives in the same
/// key space (one hash tag), so they stay valid on Redis Cluster.
enum SinkScripts {
    /// Shared helpers: the registry hash maps a sink name to a JSON array of consumer IDs.
    private static let registryHelpers = """
        local function registry_get(key, field)
          local current = redis.call('HGET', key, field)
          if not current then return {} end
          local ok, decoded = pcall(cjson.decode, current)
          if ok and type(decoded) == 'table' then return decoded end
          return {}
        end
        local function registry_put(key, field, list)
          if #list == 0 then redis.call('HDEL', key, field) else redis.call('HSET', key, field, cjson.encode(list)) end
        end
        local function registry_without(list, consumer)
          local rest = {}
          for _, c in ipairs(list) do if c ~= consumer then table.insert(rest, c) end end
          return rest
        end
        """

    /// Joins a stream: creates the group (MKSTREAM; an existing group keeps its cursor), writes the
    /// consumer's keep-alive *before* creating the consumer (so a concurrent sweep never sees a
    /// consumer without one), creates the consumer, registers it, and applies the stream's TTL to
    /// the stream and its registry.
    ///
    /// KEYS: stream, registry, keep-alive hash. ARGV: group, start ID, consumer, now (nanos),
    /// TTL ms (0 = none), TTL flag (`NX` for absolute, empty for sliding).
    static let join = RedisScript(registryHelpers + "\n" + """
        local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2], 'MKSTREAM')
        if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP', 1, true) then
          return created
        end
        redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
        redis.call('XGROUP', 'CREATECONSUMER', KEYS[1], ARGV[1], ARGV[3])
        local list = registry_get(KEYS[2], ARGV[1])
        local present = false
        for _, c in ipairs(list) do if c == ARGV[3] then present = true end end
        if not present then
          table.insert(list, ARGV[3])
          registry_put(KEYS[2], ARGV[1], list)
        end
        local ttl = tonumber(ARGV[5])
        if ttl and ttl > 0 then
          for _, key in ipairs({KEYS[1], KEYS[2]}) do
            if ARGV[6] == 'NX' then redis.call('PEXPIRE', key, ttl, 'NX') else redis.call('PEXPIRE', key, ttl) end
          end
        end
        return 1
        """)

    /// Leaves a stream: unregisters the consumer; destroys the group when no consumer of the sink
    /// remains, otherwise deletes the consumer if it holds no pending entries (entries it does hold
    /// stay pending, for the other instances to claim).
    ///
    /// KEYS: stream, registry. ARGV: group, consumer. Returns the number of consumers left.
    static let leave = RedisScript(registryHelpers + "\n" + """
        local rest = registry_without(registry_get(KEYS[2], ARGV[1]), ARGV[2])
        registry_put(KEYS[2], ARGV[1], rest)
        if #rest == 0 then
          redis.pcall('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
          return 0
        end
        local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
        if type(pending) == 'table' and not pending.err and #pending == 0 then
          redis.pcall('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
        end
        return #rest
        """)

    /// Finds the group's stale consumers — no keep-alive, or one older than the threshold — and for
    /// each, atomically claims its pending entries to the calling consumer, *then* deletes it and
    /// its keep-alive and registry entries (deleting first would drop those entries for good).
    /// Unparsable keep-alives are left alone.
    ///
    /// With a target (ARGV[4] non-empty) only that consumer is retired, unconditionally: a sink
    /// instance that renewed its consumer hands the old one's events to the new one this way.
    ///
    /// KEYS: stream, registry, keep-alive hash. ARGV: group, own consumer, threshold (nanos), target
    /// (or empty). Returns `{claimed entries, deleted consumer names}`.
    static let sweep = RedisScript(registryHelpers + "\n" + """
        local target = ARGV[4] or ''
        local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
        if type(consumers) ~= 'table' or consumers.err then consumers = {} end
        local function older(a, b)
          if #a ~= #b then return #a < #b end
          return a < b
        end
        local claimed, deleted = {}, {}
        local registry = registry_get(KEYS[2], ARGV[1])
        local registry_changed = false
        for _, info in ipairs(consumers) do
          local name, pending
          for i = 1, #info, 2 do
            if info[i] == 'name' then name = info[i + 1] elseif info[i] == 'pending' then pending = info[i + 1] end
          end
          if name and name ~= ARGV[2] and (target == '' or name == target) then
            local alive = redis.call('HGET', KEYS[3], name)
            local stale = false
            if target ~= '' or not alive then stale = true
            elseif string.match(alive, '^%d+$') then stale = older(alive, ARGV[3]) end
            if stale then
              while pending and pending > 0 do
                local entries = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 500, name)
                if #entries == 0 then break end
                local ids = {}
                for _, e in ipairs(entries) do table.insert(ids, e[1]) end
                local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
                for _, entry in ipairs(got) do if entry then table.insert(claimed, entry) end end
                if #entries < 500 then break end
              end
              redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
              if alive then redis.call('HDEL', KEYS[3], name) end
              registry = registry_without(registry, name)
              registry_changed = true
              table.insert(deleted, name)
            end
          end
        end
        if target ~= '' and target ~= ARGV[2] then
          redis.call('HDEL', KEYS[3], target)
          registry = registry_without(registry, target)
          registry_changed = true
        end
        if registry_changed then registry_put(KEYS[2], ARGV[1], registry) end
        return {claimed, deleted}
        """)

    /// The idle-claim lease: one sink instance per sink name (per key space) claims at a time.
    ///
    /// KEYS: lease key. ARGV: new expiry (ms), now (ms), lease (ms). Returns 1 when acquired.
    static let acquireLease = RedisScript("""
        local current = redis.call('GET', KEYS[1])
        if not current or (tonumber(current) or 0) < tonumber(ARGV[2]) then
          redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
          return 1
        end
        return 0
        """)
}
