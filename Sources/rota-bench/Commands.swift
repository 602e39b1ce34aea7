import ArgumentParser

/// Subcommands that run async. ArgumentParser's own async entry point cannot be used from a
/// main.swift (which NIO's executor installation needs): calls resolve to the synchronous `run()`.
protocol AsyncBody {
    func body(nioExecutor: Bool) async throws
}

struct RotaBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rota-bench",
        abstract: "Rota's benchmarks, each beside a reference measured in the same run.",
        subcommands: [RedisBench.self, MapBench.self, StreamsBench.self, HistoryBench.self, PoolBench.self, ServiceBench.self, PlanBench.self, SoakBench.self, TickerBench.self]
    )
}
