import ArgumentParser
import RotaStore

// A hand-written entry point so errors print as one clear line with a non-zero status.
// Async subcommands are dispatched through `AsyncCommand`: from a main.swift, ArgumentParser's
// own async entry resolves to the synchronous `run()`.
PlanStore.tuneAllocator()
do {
    // `rota dispatch --wait` may come without a value (ArgumentParser options always take one).
    var command = try Rota.parseAsRoot(DispatchCommand.expandBareWait(Array(CommandLine.arguments.dropFirst())))
    if let async = command as? any AsyncCommand {
        try await async.execute()
    } else {
        try command.run()
    }
} catch {
    Rota.exit(withError: error)
}
