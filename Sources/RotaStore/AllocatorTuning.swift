#if canImport(Glibc)
import Glibc
#endif

extension PlanStore {
    /// Keeps glibc from handing freed heap back to the kernel after every few history inserts.
    ///
    /// glibc trims an arena as soon as 128 KiB sit free at its top (and adapts that only after a
    /// large block was freed). SQLite's page cache, recycling 16 KiB pages at the store's soft heap
    /// limit, then costs an `madvise` and the page faults after it every few inserts: on a
    /// 1M-row history, recording ran at half speed (663,600 `madvise` calls against 40,928, 39k
    /// rows/s against 79k, `rota-bench history`). Fixed thresholds (blocks under 4 MiB from the
    /// heap, trim past 8 MiB) keep it at full speed. Process-wide, so executables call it once at
    /// start (`rota`, `rota-bench`); a library embedding the store decides for its own process.
    public static func tuneAllocator() {
        #if canImport(Glibc)
        // `mallopt` is in <malloc.h>, which the Glibc module does not export: looked up by name.
        // M_TRIM_THRESHOLD (-1) and M_MMAP_THRESHOLD (-3) are glibc's stable ABI values.
        typealias MallOpt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: MallOpt.self)
        _ = mallopt(-3, 4 << 20)
        _ = mallopt(-1, 8 << 20)
        #endif
    }
}
