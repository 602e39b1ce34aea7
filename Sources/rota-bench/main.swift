import ArgumentParser
import NIOCore
import NIOPosix
import RotaStore

// Swift concurrency runs on NIO's event loops: a task resumed by a reply continues on the loop that
// read it, with no hop to another thread. Installed before any task exists, as NIO requires, unless
// --default-executor asks for what an embedding application gets by default.
let installed = CommandLine.arguments.contains("--default-executor")
    ? false : NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()

// As `rota` does: the history bench measures what `rota run` records with.
PlanStore.tuneAllocator()

do {
    var command = try RotaBench.parseAsRoot()
    if let async = command as? any AsyncBody {
        try await async.body(nioExecutor: installed)
    } else {
        try command.run()
    }
} catch {
    RotaBench.exit(withError: error)
}
