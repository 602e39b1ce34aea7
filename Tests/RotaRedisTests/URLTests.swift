import RotaRedis
import Testing

@Suite struct URLTests {
    @Test func plainHost() throws {
        let c = try RedisConfiguration(url: "redis://localhost")
        #expect(c.endpoint == .tcp(host: "localhost", port: 6379))
        #expect(c.database == 0 && c.username == nil && c.password == nil)
    }

    @Test func hostPortDatabase() throws {
        let c = try RedisConfiguration(url: "redis://10.0.0.5:6380/3")
        #expect(c.endpoint == .tcp(host: "10.0.0.5", port: 6380))
        #expect(c.database == 3)
    }

    @Test func passwordOnly() throws {
        let c = try RedisConfiguration(url: "redis://:s3cret@host:7000")
        #expect(c.username == nil)
        #expect(c.password == "s3cret")
        #expect(c.endpoint == .tcp(host: "host", port: 7000))
    }

    @Test func aclUserAndPercentEncodedPassword() throws {
        let c = try RedisConfiguration(url: "redis://alice:p%40ss%3Aword@db.example.com/2")
        #expect(c.username == "alice")
        #expect(c.password == "p@ss:word")
        #expect(c.database == 2)
        #expect(!c.description.contains("p@ss"))
    }

    @Test func ipv6() throws {
        let c = try RedisConfiguration(url: "redis://[::1]:6390")
        #expect(c.endpoint == .tcp(host: "::1", port: 6390))
        #expect(c.endpoint.description == "[::1]:6390")
    }

    @Test func unixSocket() throws {
        let c = try RedisConfiguration(url: "unix:///var/run/redis/redis.sock?db=5")
        #expect(c.endpoint == .unixSocket(path: "/var/run/redis/redis.sock"))
        #expect(c.database == 5)
        let auth = try RedisConfiguration(url: "unix://bob:pw@/tmp/r.sock")
        #expect(auth.username == "bob" && auth.password == "pw")
        #expect(auth.endpoint == .unixSocket(path: "/tmp/r.sock"))
    }

    @Test(arguments: [
        ("localhost:6379", "missing scheme"),
        ("http://localhost", "unknown scheme 'http'"),
        ("redis://", "missing host"),
        ("redis://host:abc", "port 'abc'"),
        ("redis://host:0", "port '0'"),
        ("redis://host:70000", "port '70000'"),
        ("redis://host/x", "database 'x'"),
        ("redis://host/-1", "database '-1'"),
        ("redis://[::1", "unterminated IPv6"),
        ("redis://ho st", "invalid host 'ho st'"),
        ("redis://host?foo=1", "unknown query parameter 'foo'"),
        ("unix://relative.sock", "must be absolute"),
        ("unix:///tmp/r.sock?db=abc", "database 'abc'"),
        ("unix:///tmp/r.sock?size=2", "unknown query parameter 'size'"),
        ("redis://:%zz@host", "percent-encoding in the password"),
        ("redis://bob@host", "without a password"),
        ("rediss://host?foo=1", "unknown query parameter 'foo'"),
        ("redis://host?cert=/c.pem&key=/k.pem", "use rediss://"),
    ])
    func malformed(url: String, expected: String) {
        do {
            _ = try RedisConfiguration(url: url)
            Issue.record("\(url) was accepted")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(expected), "\(error.message)")
        }
    }

    @Test func errorsNeverShowThePassword() {
        do {
            _ = try RedisConfiguration(url: "redis://alice:topsecret@host:notaport")
            Issue.record("accepted")
        } catch {
            #expect(!error.message.contains("topsecret"))
            #expect(error.message.contains("alice:***@"))
        }
    }

    @Test func backoffGrowsAndIsCapped() {
        let backoff = RedisConfiguration.Backoff(initial: .milliseconds(10), maximum: .milliseconds(100), multiplier: 2, jitter: 0)
        #expect(backoff.delay(attempt: 1) == .milliseconds(10))
        #expect(backoff.delay(attempt: 3) == .milliseconds(40))
        #expect(backoff.delay(attempt: 50) == .milliseconds(100))
        let jittered = RedisConfiguration.Backoff(initial: .milliseconds(100), maximum: .seconds(1), multiplier: 2, jitter: 0.5)
        let delays = Set((0..<20).map { _ in jittered.delay(attempt: 1) })
        #expect(delays.count > 1)
        #expect(delays.allSatisfy { $0 >= .milliseconds(50) && $0 <= .milliseconds(150) })
    }

    @Test func scriptSHA1MatchesRedis() {
        // Reference digests: `redis-cli SCRIPT LOAD "return 1"` and the SHA-1 of the empty string.
        #expect(RedisScript("return 1").sha1 == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db")
        #expect(RedisScript("").sha1 == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
    }
}
