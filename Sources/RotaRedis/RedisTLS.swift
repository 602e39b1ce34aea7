import NIOCore
import NIOSSL

/// Builds the TLS context of a configuration and turns TLS failures into ``RedisError``s.
enum RedisTLS {
    /// Reads the certificate files and builds the context. Throws `.invalidArgument` naming the
    /// file that cannot be read or parsed.
    static func makeContext(_ tls: RedisConfiguration.TLS) throws(RedisError) -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if tls.verifiesServerCertificate {
            configuration.certificateVerification = .fullVerification
            if let path = tls.caCertificatePath {
                let certificates = try loadCertificates(path, what: "CA certificate")
                configuration.trustRoots = .certificates(certificates)
            }
        } else {
            configuration.certificateVerification = .none
        }
        switch (tls.clientCertificatePath, tls.clientKeyPath) {
        case (nil, nil):
            break
        case (let certificatePath?, let keyPath?):
            let chain = try loadCertificates(certificatePath, what: "client certificate")
            configuration.certificateChain = chain.map { .certificate($0) }
            do {
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem))
            } catch {
                throw RedisError(
                    .invalidArgument, "cannot load the TLS client key file '\(keyPath)': \(describe(error))", underlying: error)
            }
        case (.some, nil):
            throw RedisError(.invalidArgument, "a TLS client certificate needs its key file (clientKeyPath / ?key=)")
        case (nil, .some):
            throw RedisError(.invalidArgument, "a TLS client key needs its certificate file (clientCertificatePath / ?cert=)")
        }
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw RedisError(.invalidArgument, "invalid TLS configuration: \(describe(error))", underlying: error)
        }
    }

    private static func loadCertificates(_ path: String, what: String) throws(RedisError) -> [NIOSSLCertificate] {
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw RedisError(.invalidArgument, "cannot load the TLS \(what) file '\(path)': \(describe(error))", underlying: error)
        }
        guard !certificates.isEmpty else {
            throw RedisError(.invalidArgument, "the TLS \(what) file '\(path)' holds no PEM certificate")
        }
        return certificates
    }

    /// The client handler for one connection. SNI and name verification use `serverName`, else the
    /// endpoint's host; an IP address is not sent in SNI, and is checked against the certificate's
    /// IP addresses.
    static func makeHandler(context: NIOSSLContext, tls: RedisConfiguration.TLS, host: String) throws(RedisError) -> NIOSSLClientHandler {
        let name = tls.serverName ?? host
        let hostname = isIPAddress(name) ? nil : name
        do {
            return try NIOSSLClientHandler(context: context, serverHostname: hostname)
        } catch {
            throw RedisError(.invalidArgument, "invalid TLS server name '\(name)': \(describe(error))", underlying: error)
        }
    }

    private static func isIPAddress(_ text: String) -> Bool {
        (try? SocketAddress(ipAddress: text, port: 0)) != nil
    }

    /// Whether `error` (a channel error) comes from TLS.
    static func isTLSError(_ error: any Error) -> Bool {
        error is NIOSSLError || error is NIOSSLExtraError || error is BoringSSLError
    }

    /// The error handed to commands and to ``RedisConnection/run()`` for a TLS failure on a channel.
    static func error(_ error: any Error, endpoint: RedisConfiguration.Endpoint) -> RedisError {
        let detail = describe(error)
        let message: String
        switch classify(error) {
        case .serverCertificateUnverified:
            message = "TLS handshake with \(endpoint) failed: the server's certificate could not be verified (\(detail)); "
                + "give the CA that signed it with ?ca= (caCertificatePath)"
        case .hostnameMismatch:
            message = "TLS handshake with \(endpoint) failed: the server's certificate does not match the host name (\(detail)); "
                + "connect by a name the certificate holds, or set serverName"
        case .clientCertificateRejected:
            message = "TLS session with \(endpoint) refused by the server: it did not accept the client certificate (\(detail)); "
                + "give one with ?cert=&key= (clientCertificatePath, clientKeyPath)"
        case .other:
            message = "TLS failure with \(endpoint): \(detail)"
        }
        return RedisError(.tlsFailed, message, underlying: error)
    }

    /// Certificate failures cannot be fixed by retrying; the other TLS failures are retried.
    static func isFinal(_ error: RedisError) -> Bool {
        guard error.code == .tlsFailed, let underlying = error.underlying else { return false }
        if case .other = classify(underlying) { return false }
        return true
    }

    private enum Failure { case serverCertificateUnverified, hostnameMismatch, clientCertificateRejected, other }

    private static func classify(_ error: any Error) -> Failure {
        if let extra = error as? NIOSSLExtraError {
            if extra == .failedToValidateHostname || extra == .serverHostnameImpossibleToMatch { return .hostnameMismatch }
            return .other
        }
        if let sslError = error as? NIOSSLError {
            switch sslError {
            case .noCertificateToValidate, .unableToValidateCertificate: return .serverCertificateUnverified
            default: break
            }
        }
        let reasons = boringSSLReasons(error)
        if reasons.contains(where: { $0.hasPrefix("CERTIFICATE_VERIFY") }) { return .serverCertificateUnverified }
        // Alerts the server sends about our certificate (missing, bad, unknown CA, expired…).
        let clientCertificateAlerts = [
            "ALERT_CERTIFICATE_REQUIRED", "ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE_UNKNOWN",
            "ALERT_CERTIFICATE_EXPIRED", "ALERT_CERTIFICATE_REVOKED", "ALERT_UNSUPPORTED_CERTIFICATE", "ALERT_ACCESS_DENIED",
        ]
        if reasons.contains(where: { reason in clientCertificateAlerts.contains { reason.hasSuffix($0) } }) {
            return .clientCertificateRejected
        }
        return .other
    }

    /// BoringSSL's reason codes in an error, e.g. `CERTIFICATE_VERIFY_FAILED`.
    private static func boringSSLReasons(_ error: any Error) -> [String] {
        let text = String(describing: error)
        var reasons: [String] = []
        let marker = "OPENSSL_internal:"
        var index = text.startIndex
        while index < text.endIndex {
            if text[index...].hasPrefix(marker) {
                let reason = text[text.index(index, offsetBy: marker.count)...].prefix { $0.isLetter || $0.isNumber || $0 == "_" }
                reasons.append(String(reason))
                index = reason.endIndex
            } else {
                index = text.index(after: index)
            }
        }
        return reasons
    }

    /// A short, readable form of a NIOSSL error: BoringSSL's reasons when there are any.
    static func describe(_ error: any Error) -> String {
        let reasons = boringSSLReasons(error)
        if !reasons.isEmpty { return reasons.joined(separator: ", ") }
        if let sslError = error as? NIOSSLError {
            switch sslError {
            case .failedToLoadCertificate: return "missing, unreadable or not a PEM certificate"
            case .failedToLoadPrivateKey: return "missing, unreadable or not a PEM private key"
            case .noSuchFilesystemObject: return "no such file"
            default: break
            }
        }
        return String(describing: error)
    }
}
