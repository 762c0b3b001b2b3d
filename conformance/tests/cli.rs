//! The runner's exit status (docs/CONFORMANCE.md): 2 when the suite cannot run, including when
//! the base URL cannot be reached (not 1, which says a case failed), or when the TLS handshake
//! with an `https://` base fails (saying so, naming the base and the CA file).

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[test]
fn an_unreachable_base_exits_2_not_1() {
    // A loopback port that nothing listens on any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args([
            "--base",
            &format!("http://127.0.0.1:{port}"),
            "--timeout-ms",
            "2000",
        ])
        .output()
        .expect("the runner starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cannot reach"), "stderr: {stderr}");
    // Nothing was run: no case lines.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_bad_option_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args(["--base", "ftp://x"])
        .output()
        .expect("the runner starts");
    assert_eq!(out.status.code(), Some(2));
}

/// The runner's stderr and exit status against `base`, with these extra arguments.
fn runner(base: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args(["--base", base, "--timeout-ms", "2000"])
        .args(extra)
        .output()
        .expect("the runner starts");
    assert!(
        out.stdout.is_empty(),
        "no case ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh directory under the test target's temporary directory.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn an_https_base_that_does_not_speak_tls_exits_2_saying_so() {
    let certs = tidings_conformance::tls::make_test_cert(&temp_dir("not-tls")).unwrap();
    // A plain HTTP listener: the runner's reachability check, then its TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(2) {
            let mut conn = conn.unwrap();
            let _ = conn.read(&mut [0u8; 1024]);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let base = format!("https://{addr}");
    let ca = certs.ca.display().to_string();
    let (code, stderr) = runner(&base, &["--ca", &ca]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("TLS handshake failed"), "stderr: {stderr}");
    assert!(
        stderr.contains(&base) && stderr.contains(&ca),
        "names the base and the CA file: {stderr}"
    );
}

#[test]
fn a_certificate_the_runner_does_not_trust_exits_2_saying_so() {
    // The server's certificate is signed by one test CA; the runner trusts another.
    let served = tidings_conformance::tls::make_test_cert(&temp_dir("served")).unwrap();
    let other = tidings_conformance::tls::make_test_cert(&temp_dir("other")).unwrap();
    let cert = CertificateDer::pem_file_iter(&served.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&served.key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(2) {
            let mut tcp = tcp.unwrap();
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            while conn.is_handshaking() && conn.complete_io(&mut tcp).is_ok() {}
        }
    });
    let base = format!("https://{addr}");
    let ca = other.ca.display().to_string();
    let (code, stderr) = runner(&base, &["--ca", &ca]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    // (BadSignature: both test CAs have the same name, so the other one is taken for the
    // issuer and its key does not verify the signature; UnknownIssuer for a CA of another name.)
    assert!(
        stderr.contains("TLS handshake failed: invalid peer certificate"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains(&base) && stderr.contains(&ca),
        "stderr: {stderr}"
    );
}

#[test]
fn make_test_cert_writes_the_three_files() {
    let dir = temp_dir("make");
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args(["--make-test-cert", &dir.display().to_string()])
        .output()
        .expect("the runner starts");
    assert!(out.status.success());
    for file in ["ca.pem", "server.pem", "server.key"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{file}: {text}");
    }
}
