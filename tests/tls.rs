//! HTTPS served by `tidings serve --tls-cert --tls-key` itself, on both runtimes: curl over
//! TLS with HTTP/2 (ALPN) and HTTP/1.1, an SSE stream over HTTP/2, a certificate replaced while
//! a stream stays open (on SIGHUP, and when the files change), client certificates
//! (`tls.client_ca`), and files that cannot be used refused at start with a message naming
//! them. Certificates are made here (rcgen): a test CA and server certificates for 127.0.0.1.
//!
//! curl (Debian's, with HTTP/2) is the client; without it the tests print why and skip, except
//! under `TIDINGS_REQUIRE_INTEROP=1` (as in CI), where that is a failure.

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, TempDir, curl, curl_or_skip, for_each_runtime};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA and the files of a server certificate it signed.
struct Pki {
    dir: TempDir,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA, its certificate written to `<name>.pem`.
    fn new(name: &str) -> Self {
        let dir = TempDir::new("tls");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tidings test CA {name}"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.0.join(format!("{name}.pem")), cert.pem()).unwrap();
        Self {
            dir,
            ca: Issuer::new(params, key),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.0.join(file).display().to_string()
    }

    /// A certificate for 127.0.0.1 signed by the CA, and its key, written to `<name>.pem` and
    /// `<name>.key`.
    fn issue(&self, name: &str) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.0.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.0.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn start(rt: &'static str, pki: &Pki, extra: &[&str]) -> Server {
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut args = vec!["--memory", "--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    Server::start(rt, &args)
}

/// An SSE stream read by curl on a thread: its lines arrive on the channel.
struct CurlStream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl CurlStream {
    fn open(args: &[&str]) -> Self {
        let mut child = Command::new("curl")
            .args(["-sSN"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("curl runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line starting with `prefix`.
    fn line_starting(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line starting with {prefix:?} on the stream"),
            }
        }
    }
}

impl Drop for CurlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_with_http2_by_alpn_and_http1_and_sse_over_http2() {
    if !curl_or_skip() {
        return;
    }
    let pki = Pki::new("ca");
    pki.issue("server");
    for_each_runtime(|rt| {
        let server = start(rt, &pki, &[]);
        let base = format!("https://{}", server.addr);
        let ca = pki.path("ca.pem");
        let version = |flag: &str| {
            curl(&[
                flag,
                "--cacert",
                &ca,
                "-w",
                " %{http_version}",
                &format!("{base}/healthz"),
            ])
            .unwrap()
        };
        assert_eq!(version("--http2"), "ok\n 2", "[{rt}] ALPN h2");
        assert_eq!(version("--http1.1"), "ok\n 1.1", "[{rt}] ALPN http/1.1");
        // Plain HTTP to the TLS port is not served.
        assert!(curl(&[&format!("http://{}/healthz", server.addr)]).is_err());

        let stream = CurlStream::open(&[
            "--http2",
            "--cacert",
            &ca,
            &format!("{base}/sse?topic=secure.a"),
        ]);
        stream.line_starting("retry:");
        let answer = curl(&[
            "--http2",
            "--cacert",
            &ca,
            "-XPOST",
            "-d",
            "over tls",
            &format!("{base}/publish?topic=secure.a"),
        ])
        .unwrap();
        assert!(answer.starts_with("{\"id\":"), "[{rt}] {answer}");
        assert_eq!(stream.line_starting("data:"), "data: over tls");
    });
}

#[test]
fn a_replaced_certificate_is_served_to_new_connections_while_streams_stay_open() {
    if !curl_or_skip() {
        return;
    }
    for_each_runtime(|rt| {
        let pki = Pki::new("ca");
        pki.issue("server");
        let server = start(rt, &pki, &[]);
        let base = format!("https://{}", server.addr);
        let stream = CurlStream::open(&[
            "--cacert",
            &pki.path("ca.pem"),
            &format!("{base}/sse?topic=rotate.a"),
        ]);
        stream.line_starting("retry:");

        // A certificate of another CA, written over the files, served after SIGHUP.
        let other = Pki::new("other");
        other.issue("next");
        let healthz = |ca: &str| curl(&["--cacert", ca, &format!("{base}/healthz")]);
        assert!(healthz(&other.path("other.pem")).is_err());
        std::fs::copy(other.path("next.pem"), pki.path("server.pem")).unwrap();
        std::fs::copy(other.path("next.key"), pki.path("server.key")).unwrap();
        let status = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // The signal is handled asynchronously: retry the handshake for a bounded time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while healthz(&other.path("other.pem")).is_err() {
            assert!(
                Instant::now() < deadline,
                "[{rt}] the new certificate is not served after SIGHUP"
            );
            thread::sleep(Duration::from_millis(50));
        }
        assert!(healthz(&pki.path("ca.pem")).is_err(), "[{rt}] the old one");

        // The stream opened with the old certificate goes on.
        curl(&[
            "--cacert",
            &other.path("other.pem"),
            "-XPOST",
            "-d",
            "after the rotation",
            &format!("{base}/publish?topic=rotate.a"),
        ])
        .unwrap();
        assert_eq!(stream.line_starting("data:"), "data: after the rotation");

        // Without a signal: the files change, and the server notices within seconds.
        pki.issue("back");
        std::fs::copy(pki.path("back.pem"), pki.path("server.pem")).unwrap();
        std::fs::copy(pki.path("back.key"), pki.path("server.key")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while healthz(&pki.path("ca.pem")).is_err() {
            assert!(
                Instant::now() < deadline,
                "[{rt}] the changed files are not served"
            );
            thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn client_certificates_are_required_with_a_client_ca() {
    if !curl_or_skip() {
        return;
    }
    let pki = Pki::new("ca");
    pki.issue("server");
    pki.issue("client");
    let ca = pki.path("ca.pem");
    let client_ca = format!("tls.client_ca=\"{ca}\"");
    for_each_runtime(|rt| {
        let server = start(rt, &pki, &["--set", &client_ca]);
        let url = format!("https://{}/healthz", server.addr);
        let refused = curl(&["--cacert", &ca, &url]);
        assert!(
            refused.is_err(),
            "[{rt}] no client certificate: {refused:?}"
        );
        let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
        let answer = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &url]);
        assert_eq!(answer.as_deref(), Ok("ok\n"), "[{rt}]");
    });
}

/// `tidings serve` with these arguments, expected to refuse to start: its stderr.
fn refused_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0", "--memory"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "it started: {args:?}");
    stderr
}

#[test]
fn unusable_files_are_refused_at_start_naming_them() {
    let pki = Pki::new("ca");
    pki.issue("server");
    pki.issue("other");
    let (cert, key, other_key) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("other.key"),
    );
    let e = refused_start(&["--tls-cert", &cert, "--tls-key", &other_key]);
    assert!(e.contains("does not belong to the certificate"), "{e}");
    assert!(e.contains(&other_key) && e.contains(&cert), "{e}");
    let missing = pki.path("missing.pem");
    let e = refused_start(&["--tls-cert", &missing, "--tls-key", &key]);
    assert!(e.contains(&missing) && e.contains("cannot read"), "{e}");
    let e = refused_start(&["--tls-cert", &key, "--tls-key", &key]);
    assert!(e.contains(&key) && e.contains("no certificate"), "{e}");
    let e = refused_start(&["--tls-cert", &cert]);
    assert!(e.contains("set both cert and key"), "{e}");
}

#[test]
fn a_plain_listener_redirects_to_https() {
    if !curl_or_skip() {
        return;
    }
    let pki = Pki::new("ca");
    pki.issue("server");
    for_each_runtime(|rt| {
        let plain = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let server = start(rt, &pki, &["--redirect-http", &plain.to_string()]);
        let head = curl(&["-sI", &format!("http://{plain}/healthz?x=1")]).unwrap();
        assert!(head.starts_with("HTTP/1.1 308"), "[{rt}] {head}");
        let location = format!("https://{}/healthz?x=1", server.addr);
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("location: {location}")),
            "[{rt}] {head}"
        );
        // Followed, over TLS.
        let ca = pki.path("ca.pem");
        let followed = curl(&["-L", "--cacert", &ca, &format!("http://{plain}/healthz")]);
        assert_eq!(followed.as_deref(), Ok("ok\n"), "[{rt}]");
    });
}
