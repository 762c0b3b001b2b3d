//! The TLS listener: rustls over the accepted streams, with ALPN `h2` and `http/1.1`, TLS 1.2
//! and 1.3, optional client certificates, and a certificate either from files, reloaded without
//! a restart (when they change, or on [`Service::reload_tls`](crate::Service::reload_tls)), or
//! obtained and renewed automatically from an ACME certificate authority (rustls-acme, with
//! TLS-ALPN-01 challenges answered by this listener).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::TlsAcceptor;
use futures_rustls::server::TlsStream;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_acme::acme::ACME_TLS_ALPN_NAME;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{TlsConfig, TlsError};

/// How often the certificate and key files are checked for changes.
pub(crate) const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// The TLS side of the listener.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    /// The certificate from files, reloaded when they change; `None` with ACME.
    files: Option<CertFiles>,
}

/// A certificate and key from files.
struct CertFiles {
    current: Arc<Current>,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    /// The files' modification times when last loaded.
    loaded: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

/// The task that obtains and renews an ACME certificate: spawned by the service, it runs until
/// the shutdown.
pub(crate) type Renewals = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Tls");
        if let Some(files) = &self.files {
            d.field("cert", &files.cert).field("key", &files.key);
        }
        d.finish_non_exhaustive()
    }
}

/// The certificate every handshake gets: replaced as a whole on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|key| key.clone())
    }
}

impl Tls {
    /// The TLS settings of `config`: `None` without a certificate (plain HTTP). With ACME
    /// domains, also the task that gets and renews the certificate (kept under `data_dir`).
    pub(crate) fn load(
        config: &TlsConfig,
        data_dir: &Path,
    ) -> Result<Option<(Self, Option<Renewals>)>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let acme = !config.acme_domains.is_empty();
        let (resolver, files, renewals): (Arc<dyn ResolvesServerCert>, _, _) =
            match (&config.cert, &config.key, acme) {
                (None, None, false) if config.redirect_http.is_some() => {
                    return Err(TlsError::Config(
                        "redirect_http redirects to HTTPS, which needs cert and key or acme_domains"
                            .to_owned(),
                    ));
                }
                (None, None, false) => return Ok(None),
                (Some(_), Some(_), true) => return Err(TlsError::FilesAndAcme),
                (Some(cert), Some(key), false) => {
                    let loaded = (modified(cert), modified(key));
                    let current = Arc::new(Current(RwLock::new(Arc::new(certified_key(
                        &provider, cert, key,
                    )?))));
                    let files = CertFiles {
                        current: current.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                        provider: provider.clone(),
                        loaded: Mutex::new(loaded),
                    };
                    (current, Some(files), None)
                }
                (None, None, true) => {
                    let (resolver, renewals) = acme_certificates(config, data_dir, &provider)?;
                    (resolver, None, Some(renewals))
                }
                _ => return Err(TlsError::Incomplete),
            };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certs(path)? {
                    roots.add(ca).map_err(|e| TlsError::File {
                        path: path.clone(),
                        why: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(resolver);
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if acme {
            // The certificate authority's validation connects with this protocol.
            server.alpn_protocols.push(ACME_TLS_ALPN_NAME.to_vec());
        }
        let tls = Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            files,
        };
        Ok(Some((tls, renewals)))
    }

    /// Reads the files again and serves what they hold from the next handshake on
    /// (connections open keep theirs). With `only_if_changed`, only when a file's modification
    /// time changed. `Ok(true)` if a new certificate is served.
    pub(crate) fn reload(&self, only_if_changed: bool) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false); // ACME renews by itself
        };
        files.reload(only_if_changed)
    }

    /// Whether the certificate comes from files (which are watched for changes).
    pub(crate) fn has_cert_files(&self) -> bool {
        self.files.is_some()
    }

    /// The handshake, as the server: `None` for a connection of the ACME certificate
    /// authority validating the domain (it is done once the handshake is).
    pub(crate) async fn accept<S>(&self, io: S) -> io::Result<Option<TlsStream<S>>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = self.acceptor.accept(io).await?;
        let challenge = stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN_NAME);
        Ok((!challenge).then_some(stream))
    }
}

impl CertFiles {
    fn reload(&self, only_if_changed: bool) -> Result<bool, TlsError> {
        let stamps = (modified(&self.cert), modified(&self.key));
        let Ok(mut loaded) = self.loaded.lock() else {
            return Ok(false);
        };
        if only_if_changed && *loaded == stamps {
            return Ok(false);
        }
        // Marked as seen even if it fails: a broken file is reported once, not every check.
        *loaded = stamps;
        let key = certified_key(&self.provider, &self.cert, &self.key)?;
        if let Ok(mut current) = self.current.0.write() {
            *current = Arc::new(key);
        }
        Ok(true)
    }
}

/// The ACME side: the resolver serving the certificate (and the challenge certificates), and
/// the task that obtains and renews it, caching it (and the account key) under
/// `<data_dir>/acme`.
fn acme_certificates(
    config: &TlsConfig,
    data_dir: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<dyn ResolvesServerCert>, Renewals), TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.acme_ca {
        for ca in read_certs(path)? {
            roots.add(ca).map_err(|e| TlsError::File {
                path: path.clone(),
                why: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let cache = data_dir.join("acme");
    let state =
        rustls_acme::AcmeConfig::new_with_client_config(&config.acme_domains, Arc::new(client))
            .directory(&config.acme_directory)
            .contact(config.acme_email.iter().map(|e| format!("mailto:{e}")))
            .cache(rustls_acme::caches::DirCache::new(cache))
            .state();
    let resolver = state.resolver();
    let domains = config.acme_domains.join(", ");
    let directory = config.acme_directory.clone();
    let renewals = Box::pin(async move {
        let mut state = state;
        while let Some(event) = futures_util::StreamExt::next(&mut state).await {
            match event {
                Ok(rustls_acme::EventOk::DeployedNewCert) => tracing::info!(
                    "tls: a new certificate for {domains} was obtained from {directory}"
                ),
                Ok(rustls_acme::EventOk::DeployedCachedCert) => {
                    tracing::info!("tls: serving the cached certificate for {domains}")
                }
                Ok(ok) => tracing::debug!("acme: {ok:?}"),
                // Retried by rustls-acme with a growing delay; the certificate in use stays.
                Err(e) => tracing::error!("tls: getting a certificate for {domains}: {e}"),
            }
        }
    });
    Ok((resolver, renewals))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |why: String| TlsError::File {
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            "holds no certificate (a PEM `BEGIN CERTIFICATE` block)".to_owned(),
        ));
    }
    Ok(certs)
}

/// The certificate chain and its key, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert)?;
    let file_error = |why: String| TlsError::File {
        path: key.to_owned(),
        why,
    };
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        file_error(format!(
            "no private key could be read (PEM PKCS#8, PKCS#1 or SEC1): {e}"
        ))
    })?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| file_error(format!("not a usable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
        // `Unknown`: the provider cannot tell; the handshake will.
        _ => Ok(certified),
    }
}

/// An accepted connection, with or without TLS.
pub(crate) enum MaybeTls<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_close(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_close(cx),
        }
    }
}
