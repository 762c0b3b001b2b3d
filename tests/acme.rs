//! Automatic certificates against a real ACME server: Debian's `pebble` (the ACME test server
//! of Let's Encrypt), started here on loopback ports and stopped by its pid. `tidings serve
//! --acme-domain localhost` answers pebble's TLS-ALPN-01 validation on its own TLS listener,
//! obtains a certificate, serves it (curl, trusting pebble's root, reaches `/healthz` and an
//! SSE stream over it), caches it in the data directory, and renews it: pebble issues
//! certificates valid for 15 s, so the renewal (a third of the lifetime before expiry) comes
//! within seconds.
//!
//! Without pebble or curl the tests print why and skip, except under
//! `TIDINGS_REQUIRE_INTEROP=1` (as in CI, whose `scripts/setup-interop.sh` installs them).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, TempDir, curl, skip};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// How long pebble's certificates are valid.
const VALIDITY_SECS: u64 = 15;

fn tools_or_skip() -> bool {
    let here = |tool: &str, arg: &str| {
        Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    let missing: Vec<&str> = [("pebble", "-h"), ("curl", "--version")]
        .into_iter()
        .filter(|(tool, arg)| !here(tool, arg))
        .map(|(tool, _)| tool)
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not installed (scripts/setup-interop.sh installs them)",
        missing.join(" and ")
    );
    skip(&why);
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pebble on loopback, with an HTTPS certificate of a CA made here; killed on drop.
struct Pebble {
    child: Child,
    dir: TempDir,
    directory: String,
    management: u16,
}

impl Pebble {
    /// Validates domains by connecting to their port `tls_port` (TLS-ALPN-01).
    fn start(tls_port: u16) -> Self {
        let dir = TempDir::new("pebble");
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Not the leaf's (rcgen's default) name: a certificate whose issuer is its own name
        // looks self-signed.
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "tidings test CA for pebble");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let path = |file: &str| dir.0.join(file).display().to_string();
        std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(path("pebble.pem"), cert.pem()).unwrap();
        std::fs::write(path("pebble.key"), key.serialize_pem()).unwrap();
        let (listen, management) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": path("pebble.pem"),
            "privateKey": path("pebble.key"),
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_SECS,
        }});
        std::fs::write(path("pebble.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(path("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .args(["-config", &path("pebble.json")])
            // No random validation delays, no rejected nonces: fast and deterministic.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble starts");
        let pebble = Self {
            child,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
            dir,
        };
        // Ready when its directory answers.
        let deadline = Instant::now() + Duration::from_secs(15);
        while let Err(e) = curl(&["--cacert", &pebble.ca(), &pebble.directory]) {
            assert!(
                Instant::now() < deadline,
                "pebble did not start ({e}); its log:\n{}",
                std::fs::read_to_string(pebble.dir.0.join("pebble.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        pebble
    }

    /// The CA of pebble's own HTTPS.
    fn ca(&self) -> String {
        self.dir.0.join("ca.pem").display().to_string()
    }

    /// Pebble's root, which the certificates it issues chain to (written to a file).
    fn root(&self) -> String {
        let root = curl(&[
            "--cacert",
            &self.ca(),
            &format!("https://127.0.0.1:{}/roots/0", self.management),
        ])
        .expect("pebble's root");
        let path = self.dir.0.join("root.pem");
        std::fs::write(&path, root).unwrap();
        path.display().to_string()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The expiry of the certificate `https://localhost:port` serves (curl's verbose output), if
/// a handshake trusting `root` succeeds.
fn served_expiry(port: u16, root: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "5", "--cacert", root])
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .expect("curl runs");
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| {
            l.trim_start_matches(['*', ' '])
                .strip_prefix("expire date: ")
        })
        .map(str::to_owned)
}

fn obtains_serves_and_renews(rt: &'static str) {
    if !tools_or_skip() {
        return;
    }
    let port = free_port();
    let pebble = Pebble::start(port);
    let data = TempDir::new("acme-data");
    let acme_ca = format!("tls.acme_ca={:?}", pebble.ca());
    let server = Server::start_on(
        rt,
        &format!("127.0.0.1:{port}"),
        &[
            "--data-dir",
            data.path(),
            "--acme-domain",
            "localhost",
            "--acme-directory",
            &pebble.directory,
            "--acme-email",
            "ops@example.com",
            "--set",
            &acme_ca,
        ],
    );
    let root = pebble.root();

    // Obtained: a handshake trusting pebble's root succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(expiry) = served_expiry(port, &root) {
            break expiry;
        }
        assert!(
            Instant::now() < deadline,
            "[{rt}] no certificate from pebble"
        );
        thread::sleep(Duration::from_millis(200));
    };
    // Served for everything: a publish reaches an SSE stream over it.
    let base = format!("https://localhost:{port}");
    let answer = curl(&[
        "--cacert",
        &root,
        "-XPOST",
        "-d",
        "certified",
        &format!("{base}/publish?topic=acme.a"),
    ])
    .unwrap();
    assert!(answer.starts_with("{\"id\":"), "[{rt}] {answer}");
    // Cached in the data directory, with the account key.
    let cached: Vec<String> = std::fs::read_dir(data.0.join("acme"))
        .expect("an acme cache directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cached.iter().any(|f| f.starts_with("cached_cert_")),
        "{cached:?}"
    );
    assert!(
        cached.iter().any(|f| f.starts_with("cached_account_")),
        "{cached:?}"
    );

    // Renewed before it expires: a certificate with a later expiry is served.
    let deadline = Instant::now() + Duration::from_secs(VALIDITY_SECS + 20);
    loop {
        match served_expiry(port, &root) {
            Some(expiry) if expiry != first => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "[{rt}] the certificate (expiring {first}) was not renewed"
        );
        thread::sleep(Duration::from_millis(250));
    }
    drop(server);
}

#[test]
fn tokio_obtains_serves_and_renews_a_certificate_from_pebble() {
    obtains_serves_and_renews("tokio");
}

#[test]
fn async_std_obtains_serves_and_renews_a_certificate_from_pebble() {
    obtains_serves_and_renews("async-std");
}
