//! `wss://`: the client over TLS to a tidings server serving TLS itself (`[tls]`), and to one
//! behind a TLS-terminating proxy, on real loopback sockets. The proxy is tokio-rustls; the
//! certificate is made here (rcgen) for 127.0.0.1; the client trusts it through
//! `ClientBuilder::tls_config`, and refuses it with its default roots.
#![cfg(feature = "tls")]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tidings_adapter::ServerConfig;
use tidings_client::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tidings_client::{Client, Error, Item, Reason, rustls, text};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const DEADLINE: Duration = Duration::from_secs(15);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS-terminating proxy on a free loopback port in front of `backend`; returns its port.
async fn tls_proxy(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    backend: std::net::SocketAddr,
) -> u16 {
    let config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to forward.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_behind_a_proxy_with_the_certificate_trusted_and_refused_without() {
    let server = tidings_tokio::serve(ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let port = tls_proxy(cert.clone(), key, server.addr()).await;
    trusted_and_refused(&format!("wss://127.0.0.1:{port}/ws"), cert).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_directly_to_a_server_serving_tls() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tidings-client-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.signing_key.serialize_pem()).unwrap();
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    config.tls.cert = Some(cert_file);
    config.tls.key = Some(key_file);
    let server = tidings_tokio::serve(config).await.unwrap();
    let url = format!("wss://{}/ws", server.addr());
    trusted_and_refused(&url, certified.cert.der().clone()).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Trusting `cert`: a subscription and a publish round trip over TLS to `url`; with the default
/// roots: refused, saying why.
async fn trusted_and_refused(url: &str, cert: CertificateDer<'static>) {
    let url = url.to_owned();

    // Trusting the certificate: a subscription and a publish round trip over TLS.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let trusting = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = within(
        "the wss connection",
        Client::builder(&url)
            .tls_config(Arc::new(trusting))
            .connect(),
    )
    .await
    .expect("connects over TLS");
    let mut sub = client.subscribe(["secure.*"]).await.unwrap();
    let cursor = client.publish("secure.line", text("sealed")).await.unwrap();
    match within("the event", sub.next()).await {
        Some(Item::Event(e)) => {
            assert_eq!(e.payload.as_str(), "sealed");
            assert_eq!(e.cursor, cursor);
        }
        other => panic!("expected the event, got {other:?}"),
    }
    client.close().await;

    // The default roots (webpki-roots) do not include a self-signed certificate: refused, and
    // the error says why.
    let err = within("the refusal", Client::builder(&url).connect())
        .await
        .unwrap_err();
    let Error::Connect(Reason::Transport(message)) = &err else {
        panic!("expected a transport error, got {err:?}");
    };
    assert!(
        message.to_lowercase().contains("certificate"),
        "the error names the certificate: {message}"
    );
}
