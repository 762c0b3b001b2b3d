//! TLS for `https://` bases: the runner's rustls client configuration (ring, TLS 1.3 and 1.2,
//! ALPN `http/1.1` only, since the runner speaks HTTP/1.1), trusting either the certificates of
//! a PEM file (`--ca`: a CA, or the server's self-signed certificate) or the public roots of
//! webpki-roots; and a test CA with a server certificate for the loopback addresses
//! (`--make-test-cert DIR`, what `conformance/run.sh` serves TLS with).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// How the runner connects to an `https://` base: the client configuration, the name the
/// server's certificate must hold, and what is trusted (for error messages).
#[derive(Clone)]
pub struct TlsClient {
    /// The rustls configuration (ring provider, ALPN `http/1.1`).
    pub config: Arc<ClientConfig>,
    /// The name checked against the server's certificate (the base URL's host).
    pub server_name: ServerName<'static>,
    /// What the certificate is checked against, and the base URL, as error messages say them.
    pub trust: String,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The client for `host` (of `base`), trusting the certificates in `ca` (PEM), or the public
    /// roots of webpki-roots without it.
    pub fn new(base: &str, host: &str, ca: Option<&Path>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        let trust = match ca {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "--ca {}: no PEM certificate (BEGIN CERTIFICATE) in the file",
                        path.display()
                    ));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        format!("--ca {}: not a usable certificate: {e}", path.display())
                    })?;
                }
                format!("the certificates in {}", path.display())
            }
            None => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                "the public roots of webpki-roots (give --ca FILE for a private CA or a \
                 self-signed certificate)"
                    .to_owned()
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{base}: {host:?} is not a TLS server name: {e}"))?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
            trust: format!("{base}, trusting {trust}"),
        })
    }
}

/// The files [`make_test_cert`] writes.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The test CA's certificate (what `--ca` trusts).
    pub ca: PathBuf,
    /// The server's certificate chain: its certificate for `127.0.0.1`, `::1` and `localhost`,
    /// signed by the CA (`--tls-cert`).
    pub cert: PathBuf,
    /// The server certificate's private key (`--tls-key`).
    pub key: PathBuf,
}

/// Makes a test CA and a server certificate it signs for the loopback addresses, and writes
/// them to `dir` (created if missing) as `ca.pem`, `server.pem` and `server.key`. For tests
/// only: a new key pair every time, nothing kept.
pub fn make_test_cert(dir: &Path) -> Result<TestCert, String> {
    let err = |e: rcgen::Error| format!("making a test certificate: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tidings conformance test CA");
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let names = ["127.0.0.1", "::1", "localhost"].map(str::to_owned);
    let mut params = CertificateParams::new(names.to_vec()).map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "tidings conformance server");
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;

    let files = TestCert {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    for (path, text) in [
        (&files.ca, ca_cert.pem()),
        (&files.cert, cert.pem()),
        (&files.key, key.serialize_pem()),
    ] {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cert_files_are_trusted_by_the_client() {
        let dir =
            std::env::temp_dir().join(format!("tidings-conformance-tls-{}", std::process::id()));
        let files = make_test_cert(&dir).unwrap();
        let client = TlsClient::new("https://127.0.0.1:1", "127.0.0.1", Some(&files.ca)).unwrap();
        assert!(client.trust.contains("ca.pem"), "{}", client.trust);
        assert_eq!(client.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // A file without certificates is refused, naming it.
        let e = TlsClient::new("https://127.0.0.1:1", "127.0.0.1", Some(&files.key)).unwrap_err();
        assert!(
            e.contains("server.key") && e.contains("no PEM certificate"),
            "{e}"
        );
        // Without --ca: the public roots.
        let public = TlsClient::new("https://[::1]:1", "[::1]", None).unwrap();
        assert!(public.trust.contains("webpki-roots"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
