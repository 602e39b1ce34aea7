import Foundation

/// The SQL migrations of Rota's SQLite store, in the order they apply.
///
/// Each `NNNN_name.sql` file in this folder is one migration, identified by its file name without
/// the extension. They ship as resources of this target; the store applies the ones a database
/// has not seen yet, in name order.
public enum RotaMigrations {
    public struct Migration: Sendable {
        public let identifier: String
        public let sql: String
    }

    /// Every migration, sorted by identifier.
    public static func all() throws -> [Migration] {
        guard let directory = Bundle.module.resourceURL else { return [] }
        let urls = try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "sql" }
        return try urls.map { url in
            Migration(identifier: url.deletingPathExtension().lastPathComponent, sql: try String(contentsOf: url, encoding: .utf8))
        }.sorted { $0.identifier < $1.identifier }
    }
}
