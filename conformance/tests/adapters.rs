//! The whole conformance suite, in-process, against both runtime adapters, over plain HTTP and
//! over TLS: each test starts a server with the conformance profile (`conformance/server.toml`)
//! on a free loopback port and runs every built-in case against it. A failing case fails the
//! test with its step and diff. The TLS tests serve a certificate for 127.0.0.1 signed by a test
//! CA (`tidings_conformance::tls::make_test_cert`, files in a temporary directory), which the
//! runner trusts (`Options::ca`).

use std::path::PathBuf;
use std::time::Duration;

use tidings_adapter::{Hub, ServerConfig};
use tidings_conformance::{Options, Outcome, builtin_cases, run, text_line};
use tidings_core::{ErrorCode, Name, Payload, ProtocolError};

fn profile() -> ServerConfig {
    let text = include_str!("../server.toml");
    let mut config = ServerConfig::from_toml(text).expect("the conformance profile is valid");
    config.listen = "127.0.0.1:0".into();
    config
}

/// The profile serving TLS with a new test certificate, and the CA file that signed it.
fn profile_tls(name: &str) -> (ServerConfig, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("conformance-tls-{name}-{}", std::process::id()));
    let files = tidings_conformance::tls::make_test_cert(&dir).expect("a test certificate");
    let mut config = profile();
    config.tls.cert = Some(files.cert);
    config.tls.key = Some(files.key);
    (config, files.ca)
}

/// Runs every case against `addr`: over TLS (`https://`, `wss://`) when given the CA to trust.
fn run_suite(label: &str, addr: std::net::SocketAddr, ca: Option<PathBuf>) {
    // One server: the cluster group needs a second node (conformance/run.sh runs it).
    let cases: Vec<_> = builtin_cases()
        .expect("the built-in cases parse")
        .into_iter()
        .filter(|c| c.group != "cluster")
        .collect();
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut options = Options::new(format!("{scheme}://{addr}"));
    options.ca = ca;
    let report = run(&cases, &options, label, |_| {}).expect("the runner starts");
    let failures: Vec<String> = report
        .results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Pass))
        .map(text_line)
        .collect();
    assert!(
        failures.is_empty(),
        "[{label}] {}:\n{}",
        report.summary(),
        failures.join("\n")
    );
    assert_eq!(
        report.passed,
        cases.len(),
        "[{label}] every case ran and passed"
    );
}

/// The application handlers the `etp-handlers` cases need (`tidings serve` has none; run.sh
/// skips those cases there).
fn etp_handlers(hub: &Hub) {
    hub.on("hello", |_, _| async {
        Ok(Payload::text("pong").expect("text"))
    });
    hub.on("empty", |_, _| async { Ok(Payload::empty()) });
    hub.on("fast", |_, _| async { Ok(Payload::empty()) });
    hub.on("slow", |_, _| async {
        // A slow handler, on any runtime: a thread sleeps, the handler awaits it.
        let (tx, rx) = futures_channel::oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            let _ = tx.send(());
        });
        let _ = rx.await;
        Ok(Payload::empty())
    });
    let asker = hub.clone();
    hub.on("e", move |conn, payload| {
        let hub = asker.clone();
        async move {
            let echo = Name::parse("event", "echo", 32).expect("a valid name");
            let answer = hub.request(conn, echo, payload, None).await?;
            Ok(Payload::text(format!("got:{}", answer.as_str())).expect("text"))
        }
    });
    hub.on_unknown(|_, name, payload| async move {
        if name.as_str().starts_with("mystery") {
            let text = format!("unknown:{}:{}", name.as_str(), payload.as_str());
            return Ok(Payload::text(text).expect("text"));
        }
        Err(ProtocolError::new(ErrorCode::NoHandler, "no handler"))
    });
}

fn tokio_conforms(label: &str, config: ServerConfig, ca: Option<PathBuf>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let server = rt
        .block_on(tidings_tokio::serve(config))
        .expect("the tokio server starts");
    etp_handlers(server.hub());
    run_suite(label, server.addr(), ca);
    rt.block_on(server.shutdown());
}

fn async_std_conforms(label: &str, config: ServerConfig, ca: Option<PathBuf>) {
    let server =
        async_io::block_on(tidings_async_std::serve(config)).expect("the async-std server starts");
    etp_handlers(server.hub());
    run_suite(label, server.addr(), ca);
    async_io::block_on(server.shutdown());
}

#[test]
fn tokio_adapter_conforms() {
    tokio_conforms("tokio", profile(), None);
}

#[test]
fn async_std_adapter_conforms() {
    async_std_conforms("async-std", profile(), None);
}

#[test]
fn tokio_adapter_conforms_over_tls() {
    let (config, ca) = profile_tls("tokio");
    tokio_conforms("tokio TLS", config, Some(ca));
}

#[test]
fn async_std_adapter_conforms_over_tls() {
    let (config, ca) = profile_tls("async-std");
    async_std_conforms("async-std TLS", config, Some(ca));
}
