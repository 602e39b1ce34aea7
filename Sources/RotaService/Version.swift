/// The version of Rota: `rota --version` prints it and the HTTP server's `/healthz` reports it.
public enum RotaVersion {
    /// This release's version (semantic versioning).
    public static let current = "0.7.0"
}
