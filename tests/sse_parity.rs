//! End-to-end tests of the parity features with gosse, gochan and pubsub-sse over loopback, on
//! both runtimes: `?channel=`, the broadcast topic, extra stream headers and the immediate
//! stream open (gosse); client ids with the reconnect window, takeover and `POST /subscriptions`
//! (gochan); the `tidings-*` notices. The harness is the one of `tests/server.rs`.
//!
//! Every test runs once per runtime in [`RUNTIMES`]. Nothing sleeps to wait for something that
//! can be awaited; reads have timeouts so that a failure fails fast instead of hanging.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::*;

// ---- tests -------------------------------------------------------------------------------------
/// A server with a configuration file.
fn start_with(runtime: &'static str, toml: &str) -> (Server, tempfile_path::Path) {
    let path = tempfile_path::Path::new(toml);
    let server = Server::start(runtime, &["--config", path.as_str()]);
    (server, path)
}

mod tempfile_path {
    /// A configuration file removed on drop.
    pub struct Path(String);

    impl Path {
        pub fn new(content: &str) -> Self {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("tidings-parity-{}-{n}.toml", std::process::id()));
            std::fs::write(&path, content).unwrap();
            Self(path.to_string_lossy().into_owned())
        }

        pub fn as_str(&self) -> &str {
            &self.0
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn post_json(server: &Server, path: &str, body: &Value) -> Resp {
    server.request(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

#[test]
fn gosse_channels_broadcast_headers_and_an_immediate_open() {
    for_each_runtime(|runtime| {
        let (server, _config) = start_with(
            runtime,
            "[sse]\nbroadcast_topic = \"everyone\"\nheaders = { \"Server\" = \"gosse-compatible\", \"Cache-Control\" = \"no-store\" }\n",
        );
        let mut a = server.sse("/sse?channel=room1", &[]);
        let mut b = server.sse("/sse?channel=room2", &[]);
        // The head and the first bytes come at once, before any event: `onopen` fires.
        assert_eq!(a.head.status, 200);
        assert_eq!(a.head.header("server"), Some("gosse-compatible"));
        assert_eq!(a.head.header("cache-control"), Some("no-store"));
        assert_eq!(a.head.header("content-type"), Some("text/event-stream"));
        assert!(
            a.fill(),
            "the stream's first bytes arrive without any publish"
        );
        // Publish to one channel (the channel parameter works on /publish too).
        let resp = server.request("POST", "/publish?channel=room1&event=greet", &[], b"hi 1");
        assert_eq!(resp.status, 200, "{}", resp.body);
        let e = a.next_event();
        assert_eq!((e.event_type.as_str(), e.data.as_str()), ("greet", "hi 1"));
        // Broadcast: one publish to the broadcast topic reaches every stream.
        server.publish("everyone", "to all");
        assert_eq!(a.next_event().data, "to all");
        let e = b.next_event();
        assert_eq!(
            e.data, "to all",
            "room2 got the broadcast, not room1's event"
        );
    });
}

#[test]
fn gochan_client_ids_reconnect_window_and_http_subscription_changes() {
    for_each_runtime(|runtime| {
        let (server, _config) = start_with(runtime, "[timers]\nreconnect_window = \"1m\"\n");
        let mut s = server.sse("/sse?client_id=u1&topic=a", &[]);
        let e = s.next_event();
        assert_eq!(e.event_type, "tidings-session");
        let session: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(session["client_id"], "u1");
        assert_eq!(session["reconnect_window_ms"], 60000);
        assert_eq!(session["resumed"], false);
        assert_eq!(session["subscriptions"], json!(["a"]));

        // Add a topic to the open stream over HTTP (gochan's update_subscriptions).
        let resp = post_json(
            &server,
            "/subscriptions",
            &json!({"client_id": "u1", "add": ["b"]}),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
        let body: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(body["subscriptions"], json!(["a", "b"]));
        assert_eq!(body["connected"], true);
        let e = s.next_event();
        assert_eq!(e.event_type, "tidings-subscribed");
        assert_eq!(e.data, r#"{"topics":["b"]}"#);
        server.publish("b", "b1");
        assert_eq!(s.next_event().data, "b1");

        // The client goes away; what is published meanwhile waits in the history.
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Polled: the server notices the close asynchronously.
            let resp = post_json(&server, "/subscriptions", &json!({"client_id": "u1"}));
            let body: Value = serde_json::from_str(&resp.body).unwrap();
            if body["connected"] == false {
                assert_eq!(body["subscriptions"], json!(["a", "b"]));
                break;
            }
            assert!(Instant::now() < deadline, "the session was never parked");
            thread::sleep(Duration::from_millis(20));
        }
        server.publish("b", "b2");
        server.publish("c", "not subscribed");
        // Changed while away: drop a, add c.
        let resp = post_json(
            &server,
            "/update_subscriptions",
            &json!({"client_id": "u1", "add": ["c"], "remove": ["a"]}),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
        server.publish("a", "no longer");
        server.publish("c", "c1");

        // Back within the window, with no topic in the URL: everything comes back, in order.
        let mut s = server.sse("/sse?client_id=u1", &[]);
        let e = s.next_event();
        assert_eq!(e.event_type, "tidings-session");
        let session: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(session["resumed"], true);
        assert_eq!(session["subscriptions"], json!(["b", "c"]));
        assert_eq!(s.next_event().data, "b2");
        assert_eq!(s.next_event().data, "c1");

        // A second stream with the same id takes it over: the first one ends, and the second
        // continues the session.
        let mut s2 = server.sse("/sse?client_id=u1", &[]);
        let ended = s.until_end();
        assert_eq!(ended.last().unwrap().event_type, "tidings-error");
        assert!(ended.last().unwrap().data.contains("client_id_taken"));
        let e = s2.next_event();
        let session: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(session["resumed"], true);
        server.publish("c", "c2");
        assert_eq!(s2.next_event().data, "c2");

        // Errors say what is wrong and change nothing.
        let resp = post_json(
            &server,
            "/subscriptions",
            &json!({"client_id": "nobody", "add": ["x"]}),
        );
        assert_eq!(resp.status, 404, "{}", resp.body);
        assert_eq!(resp.error_code(), "no_recipient");
        let resp = server.request("POST", "/subscriptions", &[], b"{not json");
        assert_eq!(resp.status, 400);
        let resp = post_json(&server, "/subscriptions", &json!({"add": ["x"]}));
        assert_eq!(resp.status, 400);
        let resp = post_json(
            &server,
            "/subscriptions",
            &json!({"client_id": "u1", "add": ["bad..topic"]}),
        );
        assert_eq!(resp.status, 400);
        assert_eq!(resp.error_code(), "invalid_topic");
    });
}

#[test]
fn client_ids_need_a_grant() {
    for_each_runtime(|runtime| {
        let (server, _config) = start_with(
            runtime,
            "[timers]\nreconnect_window = \"1m\"\n[auth]\nanonymous = { subscribe = [\">\"], publish = [\">\"], any_client_id = false }\n",
        );
        let s = server.sse("/sse?client_id=u1&topic=a", &[]);
        assert_eq!(s.head.status, 403);
        let resp = post_json(
            &server,
            "/subscriptions",
            &json!({"client_id": "u1", "add": ["a"]}),
        );
        assert_eq!(resp.status, 403);
        let s = server.sse("/sse?channel=", &[]);
        assert_eq!(s.head.status, 400);
    });
}
