import RotaRedis

/// The map's Lua scripts. Every mutation bumps `=rev` by exactly one, records its kind in `=kind` and
/// publishes a change message carrying the new revision — all in one atomic step, so replicas can
/// apply changes in revision order and detect any gap.
///
/// Reserved fields: `=rev` (revision), `=cleared` (revision of the last reset or destroy, so a replica
/// that missed it while disconnected still reports a reset) and `=kind`, written by reset and destroy
/// only (the tombstone says `destroy`); set and delete skip it, every write is one command cheaper.
///
/// KEYS[1] = content hash, KEYS[2] = updates channel. Change messages:
/// `set:` pack(key) pack(value) pack(rev) · `del:` pack(key) pack(rev) · `reset:`rev · `destroy:`rev,
/// where pack(x) is a 4-byte little-endian length followed by the bytes of x.
enum MapScripts {
    // Each script carries only the helpers it uses: Lua creates every local function on every call.
    static let pack = """
        local function pack(x) return struct.pack('<I4', string.len(x)) .. x end

        """
    static let commitSet = pack + """
        local function commit_set(k, v)
          local rev = redis.call('HINCRBY', KEYS[1], '=rev', 1)
          redis.call('PUBLISH', KEYS[2], 'set:' .. pack(k) .. pack(v) .. pack(tostring(rev)))
          return rev
        end

        """
    static let commitDel = """
        local function commit_del(k)
          local rev = redis.call('HINCRBY', KEYS[1], '=rev', 1)
          redis.call('PUBLISH', KEYS[2], 'del:' .. pack(k) .. pack(tostring(rev)))
          return rev
        end

        """
    static let commitClear = """
        local function commit_clear(kind)
          local rev = redis.call('HINCRBY', KEYS[1], '=rev', 1)
          redis.call('DEL', KEYS[1])
          redis.call('HSET', KEYS[1], '=rev', rev, '=kind', kind, '=cleared', rev)
          redis.call('PUBLISH', KEYS[2], kind .. ':' .. tostring(rev))
          return rev
        end

        """
    static let lists = """
        local function decode_list(v)
          if v == false or v == nil or v == '' then return {} end
          local ok, decoded = pcall(cjson.decode, v)
          if ok and type(decoded) == 'table' then return decoded end
          local list = {}
          for item in string.gmatch(v, '([^,]+)') do table.insert(list, item) end
          return list
        end
        local function encode_list(list)
          if #list == 0 then return '[]' end
          return cjson.encode(list)
        end

        """

    /// ARGV: key, value → {existed 0/1, old value or "", rev}
    static let set = RedisScript(commitSet + """
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        local rev = commit_set(ARGV[1], ARGV[2])
        if old == false then return {0, '', rev} end
        return {1, old, rev}
        """)

    /// ARGV: key, value → 1 if written
    static let setIfAbsent = RedisScript(commitSet + """
        if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        commit_set(ARGV[1], ARGV[2])
        return 1
        """)

    /// ARGV: key, test, value → {existed 0/1, previous or "", updated 0/1}
    static let testAndSet = RedisScript(commitSet + """
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        if old == false then return {0, '', 0} end
        if old ~= ARGV[2] then return {1, old, 0} end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
        commit_set(ARGV[1], ARGV[3])
        return {1, old, 1}
        """)

    /// ARGV: key, delta → new value (string)
    static let increment = RedisScript(commitSet + """
        local value = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
        commit_set(ARGV[1], tostring(value))
        return tostring(value)
        """)

    /// ARGV: key, unique 0/1, items... → {changed 0/1, encoded list or ""}
    static let append = RedisScript(commitSet + lists + """
        local current = redis.call('HGET', KEYS[1], ARGV[1])
        local list = decode_list(current)
        local unique = ARGV[2] == '1'
        local present = {}
        if unique then for _, item in ipairs(list) do present[item] = true end end
        local added = 0
        for i = 3, #ARGV do
          if not unique or not present[ARGV[i]] then
            table.insert(list, ARGV[i])
            present[ARGV[i]] = true
            added = added + 1
          end
        end
        if added == 0 then
          if current == false then return {0, ''} end
          return {0, current}
        end
        local encoded = encode_list(list)
        redis.call('HSET', KEYS[1], ARGV[1], encoded)
        commit_set(ARGV[1], encoded)
        return {1, encoded}
        """)

    /// ARGV: key, items... → {removed 0/1, existed 0/1, encoded remainder or ""}
    static let removeValues = RedisScript(commitSet + commitDel + lists + """
        local current = redis.call('HGET', KEYS[1], ARGV[1])
        if current == false then return {0, 0, ''} end
        local drop = {}
        for i = 2, #ARGV do drop[ARGV[i]] = true end
        local kept = {}
        local removed = 0
        for _, item in ipairs(decode_list(current)) do
          if drop[item] then removed = removed + 1 else table.insert(kept, item) end
        end
        if removed == 0 then return {0, 1, current} end
        if #kept == 0 then
          redis.call('HDEL', KEYS[1], ARGV[1])
          commit_del(ARGV[1])
          return {1, 1, ''}
        end
        local encoded = encode_list(kept)
        redis.call('HSET', KEYS[1], ARGV[1], encoded)
        commit_set(ARGV[1], encoded)
        return {1, 1, encoded}
        """)

    /// ARGV: key → {existed 0/1, previous or ""}; deleting a missing key changes nothing.
    static let delete = RedisScript(pack + commitDel + """
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        if old == false then return {0, ''} end
        redis.call('HDEL', KEYS[1], ARGV[1])
        commit_del(ARGV[1])
        return {1, old}
        """)

    /// ARGV: key, test → {existed 0/1, previous or "", deleted 0/1}
    static let testAndDelete = RedisScript(pack + commitDel + """
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        if old == false then return {0, '', 0} end
        if old ~= ARGV[2] then return {1, old, 0} end
        redis.call('HDEL', KEYS[1], ARGV[1])
        commit_del(ARGV[1])
        return {1, old, 1}
        """)

    /// ARGV: kind ("reset" or "destroy") → rev
    static let clear = RedisScript(commitClear + """
        return commit_clear(ARGV[1])
        """)

    /// ARGV: n, k1..kn, t1..tn → 1 if cleared
    static let testAndReset = RedisScript(commitClear + """
        local n = tonumber(ARGV[1])
        for i = 1, n do
          local value = redis.call('HGET', KEYS[1], ARGV[1 + i])
          if value == false or value ~= ARGV[1 + n + i] then return 0 end
        end
        commit_clear('reset')
        return 1
        """)
}
