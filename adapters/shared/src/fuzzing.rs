//! Fuzz target body for the HTTP request surface (feature `fuzzing`): request-head parsing and
//! everything the server reads from a head before it upgrades a WebSocket or starts a stream
//! (path, query, `Last-Event-ID`, CORS, the token from the `Authorization` header, cookie or
//! query, and the resulting grants). `fuzz/fuzz_targets/http_head.rs` runs it under libFuzzer;
//! `tests/fuzz_corpus.rs` replays the checked-in corpus under `cargo test`.

use std::future::{Future, pending};
use std::sync::OnceLock;
use std::time::Instant;

use crate::request::{MAX_HEAD_BYTES, parse_head};
use crate::{Runtime, ServerConfig, Service};

/// A runtime that runs nothing: the checks below are synchronous and never reach the driver.
#[derive(Clone)]
struct Inert;

impl Runtime for Inert {
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, _: F) {}

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, _: Instant) -> impl Future<Output = ()> + Send + 'static {
        pending()
    }
}

/// The HS256 secret of the service under fuzzing; corpus tokens are signed with it.
pub const SECRET: &str = "tidings-fuzzing-secret-0123456789abcdef";

fn service() -> &'static Service<Inert> {
    static SERVICE: OnceLock<Service<Inert>> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let config = ServerConfig::from_toml(&format!(
            r#"
            [http]
            cors_origins = ["https://allowed.example"]
            ws_origins = ["https://allowed.example"]
            [auth]
            anonymous = {{ subscribe = ["public.>"], publish = ["public.>"] }}
            [auth.jwt]
            secret = "{SECRET}"
            "#
        ))
        .expect("the fuzzing configuration is valid");
        Service::start(Inert, config).expect("the fuzzing service starts")
    })
}

/// Parses `data` as a request head and runs the server's `/sse` and `/ws` checks on it.
///
/// Invariants: no panic; a head is never longer than the input or [`MAX_HEAD_BYTES`]; every
/// proper prefix of a complete head is "need more bytes" (so reading in pieces finds the same
/// head); a refusal has a 4xx status, a JSON body and header values without line breaks; a
/// request carrying no token at all gets the anonymous grants, never a 401 for a token.
pub fn http_head(data: &[u8]) {
    let head = match parse_head(data) {
        Ok(Some((head, len))) => {
            assert!(
                len <= data.len() && len <= MAX_HEAD_BYTES,
                "head length {len}"
            );
            for cut in [len - 1, len / 2] {
                if let Ok(Some(_)) = parse_head(&data[..cut]) {
                    panic!("a prefix of {cut} bytes of a {len}-byte head parsed as complete");
                }
            }
            head
        }
        Ok(None) => {
            assert!(
                data.len() < MAX_HEAD_BYTES,
                "an incomplete head over the limit"
            );
            return;
        }
        Err(_) => return,
    };
    let service = service();
    let has_token = head.header("authorization").is_some()
        || head.cookie("tidings_token").is_some_and(|t| !t.is_empty())
        || head.query_param("token").is_some_and(|t| !t.is_empty());
    let refusals = [
        service.check_sse(&head).err(),
        service.check_websocket(&head).err(),
    ];
    for refusal in refusals.into_iter().flatten() {
        assert!(
            (400..500).contains(&refusal.status),
            "status {}",
            refusal.status
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&refusal.body()).is_ok(),
            "the refusal body is JSON"
        );
        for (name, value) in &refusal.headers {
            assert!(
                !value.contains(['\r', '\n']) && !name.contains(['\r', '\n', ':']),
                "header {name:?}: {value:?}"
            );
        }
        if !has_token {
            assert_ne!(
                refusal.code, "unauthorized",
                "a request without a token is refused as unauthorized: {refusal:?}"
            );
        }
    }
}
