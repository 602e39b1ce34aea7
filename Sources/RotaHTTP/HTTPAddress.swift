/// Where the HTTP server listens: a host (an IPv4 or IPv6 address, or a name) and a TCP port.
public struct HTTPAddress: Sendable, Hashable, CustomStringConvertible {
    /// The address the server binds; 127.0.0.1 unless one is given, so that nothing outside the
    /// machine reaches the server by accident.
    public var host: String
    public var port: Int

    /// The default host: the loopback interface only.
    public static let defaultHost = "127.0.0.1"

    public init(host: String = HTTPAddress.defaultHost, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `ADDRESS:PORT`, `:PORT` or `PORT` (both meaning 127.0.0.1), and `[IPv6]:PORT`.
    public init(parsing text: String) throws(HTTPServerError) {
        var host = HTTPAddress.defaultHost
        var portText = Substring(text)
        if text.hasPrefix("[") {
            // [::1]:8080: the brackets keep the address's colons apart from the port's.
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw HTTPServerError(.invalidAddress, "'\(text)': an IPv6 address is written [ADDRESS]:PORT")
            }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = text[text.index(close, offsetBy: 2)...]
        } else if let colon = text.lastIndex(of: ":") {
            guard text.firstIndex(of: ":") == colon else {
                throw HTTPServerError(.invalidAddress, "'\(text)': an IPv6 address is written [ADDRESS]:PORT")
            }
            if colon != text.startIndex { host = String(text[..<colon]) }
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty else { throw HTTPServerError(.invalidAddress, "'\(text)': the address is empty") }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw HTTPServerError(.invalidAddress, "'\(text)': the port must be 1-65535 (ADDRESS:PORT, :PORT or PORT)")
        }
        self.init(host: host, port: port)
    }

    /// The base URL: `http://127.0.0.1:8080`, `http://[::1]:8080`.
    public var url: String { "http://\(host.contains(":") ? "[\(host)]" : host):\(port)" }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
