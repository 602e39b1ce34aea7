// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Rota",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "RotaRedis", targets: ["RotaRedis"]),
        .library(name: "RotaRedisServer", targets: ["RotaRedisServer"]),
        .library(name: "RotaMap", targets: ["RotaMap"]),
        .library(name: "RotaStreams", targets: ["RotaStreams"]),
        .library(name: "Rota", targets: ["Rota"]),
        .library(name: "RotaService", targets: ["RotaService"]),
        .executable(name: "rota", targets: ["rota"]),
        .executable(name: "rota-bench", targets: ["rota-bench"]),
        .executable(name: "rota-chaos", targets: ["rota-chaos"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        // 4.x, not 3.x: `from: "3.12.3"` stops below 4.0, and packages we may add later ask for
        // 4.1 or more (vapor/jwt-kit); swift-certificates (behind swift-nio-ssl) takes 3.12.3..<6.
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        // The HTTP server of `rota run`/`rota worker` (RotaHTTP). No traits: the default ones pull in
        // swift-configuration and full Foundation, which the server does not use and a cold build pays for.
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
    ],
    targets: [
        // hiredis 0.14 from apt (libhiredis-dev): RESP encoding and the reply parser. Found in
        // /usr/include without pkg-config: its cflags carry -D_FILE_OFFSET_BITS=64, which SwiftPM
        // refuses with a warning on every build (and which changes nothing on 64-bit Linux).
        .systemLibrary(name: "CHiredis"),
        .target(
            name: "RotaRedis",
            dependencies: [
                "CHiredis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // SHA-1 names Lua scripts for EVALSHA (SHA1.swift).
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // Replicated maps: a Redis hash mirrored in every process, kept in sync by Lua + pub/sub.
        .target(
            name: "RotaMap",
            dependencies: [
                "RotaRedis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        // Streams, sinks (consumer groups with claim/keep-alive), readers.
        .target(
            name: "RotaStreams",
            dependencies: ["RotaRedis", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // The dedicated worker pool: nodes, workers, dispatch, routing, rebalancing, requeue.
        .target(
            name: "Rota",
            dependencies: [
                "RotaRedis",
                "RotaMap",
                "RotaStreams",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // The exec handler's guard process (C: it runs before `main`, forks and execs; see
        // ARCHITECTURE.md "The exec guard").
        .target(name: "CRotaExecGuard"),
        // The scheduler service: plan files → store → schedules; worker handlers; history.
        .target(
            name: "RotaService",
            dependencies: [
                "CRotaExecGuard",
                "Rota",
                "RotaPlans",
                "RotaStore",
                "RotaRedis",
                "RotaStreams",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),  // exec policy files
            ],
            swiftSettings: strict
        ),
        // The HTTP server (Hummingbird): /healthz, /readyz, /metrics, and the routes later parts add.
        // Between RotaService and the CLI: it knows nothing of nodes or plans, only the checks it is given.
        .target(
            name: "RotaHTTP",
            dependencies: [
                "Rota",
                "RotaRedis",
                "RotaService",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // Starts private redis-server processes: for tests, benchmarks and `rota run` without --redis.
        .target(
            name: "RotaRedisServer",
            dependencies: ["RotaRedis"],
            swiftSettings: strict
        ),
        // Plan files: YAML parsing and strict validation, cron windows.
        .target(
            name: "RotaPlans",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: strict
        ),
        // The SQL migrations (top-level Migrations/*.sql), shipped as resources.
        .target(
            name: "RotaMigrations",
            path: "Migrations",
            resources: [.copy("0001_producers.sql"), .copy("0002_history.sql"), .copy("0003_history_chain.sql"), .copy("0004_round_publication.sql"), .copy("0005_pool_plan.sql"), .copy("0006_audit_history.sql"), .copy("0007_lost_last_seen.sql"), .copy("0008_authenticated_prunes.sql"), .copy("0009_runner_job_events.sql")],
            swiftSettings: strict
        ),
        // The SQLite store: producer definitions with revisions (GRDB on the system libsqlite3).
        .target(
            name: "RotaStore",
            dependencies: [
                "RotaPlans",
                "RotaMigrations",
                .product(name: "GRDB", package: "GRDB.swift"),
                // SQLite's C API, for binding the action rows (History.swift).
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                // SHA-256 of the chains, HMAC-SHA256 of the pool's history key (HistoryKey.swift).
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // The command-line interface.
        .executableTarget(
            name: "rota",
            dependencies: [
                "Rota",
                "RotaService",
                "RotaHTTP",
                "RotaRedis",
                "RotaRedisServer",
                "RotaPlans",
                "RotaStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        // An application embedding a worker with its own named handler (README: embedding).
        .executableTarget(
            name: "rota-example-worker",
            dependencies: [
                "Rota", "RotaService", "RotaRedis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // A pool node in its own process: crash tests kill it, `rota-bench pool` runs its nodes in it.
        .executableTarget(
            name: "rota-pool-node",
            dependencies: [
                "Rota", "RotaRedis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "rota-bench",
            dependencies: [
                "Rota",
                "RotaService",
                "RotaPlans",
                "RotaStore",
                "RotaRedis",
                "RotaMap",
                "RotaStreams",
                "RotaRedisServer",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
swiftSettings: strict
        ),
        // The chaos suite: faults against real `rota run`/`rota worker` processes, an independent checker.
        .executableTarget(
            name: "rota-chaos",
            dependencies: [
                "Rota",
                "RotaMap",
                "RotaService",
                "RotaRedis",
                "RotaRedisServer",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        // Helpers shared by the test targets (polling with a deadline, error capture).
        .target(
            name: "RotaTestSupport",
            path: "Tests/RotaTestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "RotaRedisTests",
            dependencies: [
                "RotaTestSupport",
                "RotaRedis",
                "RotaRedisServer",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "RotaMapTests",
            dependencies: ["RotaMap", "RotaRedis", "RotaRedisServer", "RotaTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "RotaStreamsTests",
            dependencies: [
                "RotaStreams", "RotaRedis", "RotaRedisServer", "RotaTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "RotaTests",
            dependencies: [
                "Rota", "RotaMap", "RotaStreams", "RotaRedis", "RotaRedisServer", "RotaTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "RotaServiceTests",
            dependencies: [
                "RotaService", "Rota", "RotaRedis", "RotaRedisServer", "RotaTestSupport",
                "RotaHTTP",  // the HTTP server's address parsing
                // The end-to-end tests run the built `rota` and read the nodes' SQLite histories.
                "RotaStore", "rota",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "RotaStoreTests",
            dependencies: ["RotaStore", "RotaPlans", "RotaMigrations", "RotaTestSupport"],
            exclude: ["Fixtures"],  // databases written by older releases, read from the source tree (#filePath)
            swiftSettings: strict
        ),
        // Runs the built `rota` binary (it must be built first: `swift build --build-tests` builds it).
        .testTarget(
            name: "RotaCLITests",
            // RotaStore: the history tests record rounds directly, as a node would.
            dependencies: ["RotaTestSupport", "rota", "RotaRedisServer", "RotaRedis", "RotaStore"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "RotaPlansTests",
            dependencies: ["RotaPlans", "RotaTestSupport"],
            exclude: ["Corpus"],  // fuzzing corpus, read from the source tree (#filePath)
            swiftSettings: strict
        ),
    ]
)
