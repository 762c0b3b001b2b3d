//! Real-browser tests: Debian's headless Chromium, driven by playwright-core
//! (`tests/browser/run.mjs`), against tidings servers started in this process
//! (`tidings_tokio::serve`, the same service as `tidings serve`, which also serves the demo page
//! and `/tidings.js`).
//!
//! The server runs in-process so that the test owns its application side, the `Hub`: it closes
//! connections server-side (`Hub::close`, learning their ids from the connect hook, which also
//! records each connection's `Last-Event-ID` and `Origin` headers), publishes while a client is
//! away, and asks clients questions. The node script asks for these with JSON lines on its
//! stdout and reads the answers on its stdin; its last line is what the browser saw, checked
//! here.
//!
//! Needs `/usr/bin/chromium` (or `TIDINGS_CHROMIUM`), node, and `tests/browser/node_modules`:
//! `scripts/setup-browser.sh` installs them. Without them each test says why it skipped; with
//! `TIDINGS_REQUIRE_INTEROP=1` (as in CI) a missing tool is a failure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tidings_adapter::ServerConfig;
use tidings_core::{ConnId, ErrorCode, Name, Payload, ProtocolError, Topic};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The longest wait for one line from the browser driver (its own waits are 15 s each).
const LINE_TIMEOUT: Duration = Duration::from_secs(100);

fn chromium() -> String {
    std::env::var("TIDINGS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Whether Chromium, node and playwright-core are there; if not, says why the test skips (or,
/// under `TIDINGS_REQUIRE_INTEROP`, fails).
fn tools_ready() -> bool {
    let mut missing = Vec::new();
    let chromium = chromium();
    if !Path::new(&chromium).exists() {
        missing.push(format!("chromium ({chromium})"));
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        missing.push("node".to_owned());
    }
    if !Path::new(ROOT)
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        missing.push("tests/browser/node_modules (npm ci)".to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} missing (run scripts/setup-browser.sh)",
        missing.join(", ")
    );
    assert!(
        std::env::var_os("TIDINGS_REQUIRE_INTEROP").is_none(),
        "TIDINGS_REQUIRE_INTEROP is set but {why}"
    );
    eprintln!("skipped: {why}");
    false
}

// ---- the server side -------------------------------------------------------------------------

/// What the connect and disconnect hooks saw.
#[derive(Default)]
struct Seen {
    /// Every `/ws` and `/sse` connection, in order: conn, transport, Last-Event-ID, Origin.
    conns: Vec<Value>,
    /// The ones open now, with their transport (`ws` or `sse`).
    open: HashMap<u64, &'static str>,
}

struct App {
    server: tidings_tokio::Server,
    seen: Arc<Mutex<Seen>>,
}

impl App {
    /// A server on a free loopback port with `tweak` applied to its configuration: clients are
    /// told to reconnect after 500 ms (`retry_ms`, SSE `retry:`) so the tests are quick.
    async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".into(),
            ..ServerConfig::default()
        };
        config.sse.retry = Some(Duration::from_millis(500));
        tweak(&mut config);
        let server = tidings_tokio::serve(config).await.expect("serves");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let hub = server.hub();
        let on_connect = seen.clone();
        hub.on_connect(move |c| {
            let transport = match c.format {
                "native" => "ws",
                "sse" => "sse",
                _ => "other",
            };
            let mut seen = on_connect.lock().unwrap();
            seen.conns.push(json!({
                "conn": c.conn.0,
                "transport": transport,
                "last_event_id": c.head.header("last-event-id"),
                "origin": c.head.header("origin"),
            }));
            seen.open.insert(c.conn.0, transport);
            Vec::new()
        });
        let on_disconnect = seen.clone();
        hub.on_disconnect(move |conn| {
            on_disconnect.lock().unwrap().open.remove(&conn.0);
        });
        hub.on("echo", |_conn, payload| async move { Ok(payload) });
        hub.on("never", |_conn, payload| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(payload)
        });
        Self { server, seen }
    }

    fn url(&self) -> String {
        let scheme = if self.server.service().is_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.server.addr())
    }

    async fn publish(&self, items: &Value) -> Vec<String> {
        let mut cursors = Vec::new();
        for item in items.as_array().expect("items") {
            let topic = Topic::parse(item["topic"].as_str().unwrap(), Default::default()).unwrap();
            let data = item["data"].as_str().unwrap().to_owned();
            let payload = if item["json"] == true {
                Payload::json(data)
            } else {
                Payload::text(data)
            }
            .unwrap();
            let event = item["event"]
                .as_str()
                .map(|e| Name::parse("event", e, 128).unwrap());
            let cursor = self.server.hub().publish(topic, event, payload).await;
            cursors.push(cursor.expect("published").to_string());
        }
        cursors
    }

    /// Answers one question of the browser driver.
    async fn answer(&self, ask: &Value) -> Value {
        match ask["ask"].as_str() {
            Some("publish") => json!({ "cursors": self.publish(&ask["items"]).await }),
            Some("close") => {
                let transport = match ask["transport"].as_str() {
                    Some("ws") => "ws",
                    Some("sse") => "sse",
                    other => panic!("no transport {other:?}"),
                };
                let (targets, known) = {
                    let seen = self.seen.lock().unwrap();
                    let targets: Vec<u64> = seen
                        .open
                        .iter()
                        .filter(|(_, t)| **t == transport)
                        .map(|(conn, _)| *conn)
                        .collect();
                    (targets, seen.conns.len())
                };
                assert!(!targets.is_empty(), "no {transport:?} connection to close");
                for conn in &targets {
                    let reason = ProtocolError::new(
                        ErrorCode::ShuttingDown,
                        "closed by the test; reconnect and resume from your cursor",
                    );
                    self.server
                        .hub()
                        .close(ConnId(*conn), reason)
                        .await
                        .expect("the connection is open");
                }
                let cursors = self.publish(&ask["then"]).await;
                // These events were published while the client was away: it has not come back
                // yet (its reconnection delay is hundreds of milliseconds), so it can only get
                // them by resuming.
                assert_eq!(
                    self.seen.lock().unwrap().conns.len(),
                    known,
                    "the client reconnected before the events were published"
                );
                json!({ "closed": targets, "cursors": cursors })
            }
            Some("connections") => {
                json!({ "connections": self.seen.lock().unwrap().conns.clone() })
            }
            Some("request") => {
                let conn = ConnId(ask["conn"].as_u64().unwrap());
                let event = Name::parse("event", ask["event"].as_str().unwrap(), 128).unwrap();
                let payload = Payload::json(ask["data"].to_string()).unwrap();
                let timeout = Some(Duration::from_secs(10));
                match self
                    .server
                    .hub()
                    .request(conn, event, payload, timeout)
                    .await
                {
                    Ok(answer) => json!({ "answer": answer.as_str() }),
                    Err(e) => json!({ "error": e.code.as_str(), "message": e.message }),
                }
            }
            other => panic!("unknown question {other:?}"),
        }
    }
}

/// Runs `node tests/browser/run.mjs scenario urls...`, answering its questions with `app`;
/// returns its result after checking that it exited with 0.
async fn run(scenario: &str, app: &App, urls: &[String]) -> Value {
    run_trusting(scenario, app, urls, None).await
}

/// [`run`], with Chromium trusting the server certificate in the PEM file `trust`.
async fn run_trusting(scenario: &str, app: &App, urls: &[String], trust: Option<&Path>) -> Value {
    let script = Path::new(ROOT).join("tests/browser/run.mjs");
    let mut command = Command::new("node");
    if let Some(cert) = trust {
        command.env("TIDINGS_TRUST_CERT", cert);
    }
    let mut child = command
        .arg(&script)
        .arg(scenario)
        .args(urls)
        .env("TIDINGS_CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut result = None;
    loop {
        let line = match tokio::time::timeout(LINE_TIMEOUT, rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(_) => {
                let _ = child.kill();
                panic!("[{scenario}] the browser driver said nothing for {LINE_TIMEOUT:?}");
            }
        };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            eprintln!("[{scenario}] {line}");
            continue;
        };
        if message.get("ask").is_some() {
            let answer = app.answer(&message).await;
            writeln!(stdin, "{answer}").expect("node reads its stdin");
            stdin.flush().expect("node reads its stdin");
        } else if let Some(r) = message.get("result") {
            result = Some(r.clone());
        }
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "[{scenario}] node exited with {status}");
    result.unwrap_or_else(|| panic!("[{scenario}] no result"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

// ---- tests -----------------------------------------------------------------------------------

/// (a) The demo page: subscribing to two wildcard patterns, events from the server and from
/// the page's own publish form appear with their cursors (and nothing else does), the drop
/// button makes it reconnect by itself, and unsubscribing stops a pattern's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_subscribes_receives_and_publishes() {
    if !tools_ready() {
        return;
    }
    let app = App::start(|_| {}).await;
    let r = run("demo", &app, &[app.url()]).await;
    let published = strings(&r["published"]);
    let ui = r["ui_cursor"].as_str().expect("the form shows the cursor");
    assert_eq!(r["ui_result"], format!("published at cursor {ui}"));
    // The event rows, oldest first: cursor, topic, event, data.
    let events: Vec<Value> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["kind"] == "event")
        .map(|row| row["cells"].clone())
        .collect();
    assert_eq!(
        events,
        vec![
            json!([published[0], "demo.server", "", "from the server"]),
            json!([published[2], "news.eu.fr", "headline", r#"{"n":1}"#]),
            json!([ui, "demo.ui", "note", r#"{"text":"hi from the UI"}"#]),
            json!([published[3], "demo.after", "", "after the reconnect"]),
            json!([published[5], "demo.last", "", "still subscribed"]),
        ],
        "{r:#}"
    );
    assert_eq!(r["state"], "open");
    assert_eq!(r["reconnects"], "1");
    assert_eq!(r["cursor"], published[5].as_str());
    // The reconnect shows up in the log, resuming from the last cursor before the drop.
    let resumed = format!("resumed from {ui}");
    assert!(
        r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["kind"] == "state"
                && row["cells"][3].as_str().unwrap().contains(&resumed)),
        "no row says {resumed:?}: {r:#}"
    );
}

/// (b) tidings.js after the server closes its WebSocket: it reconnects by itself, resumes
/// from its cursor and gets exactly the events published while it was away, once each, in
/// order, then live ones; no gap, since nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidings_js_reconnects_and_resumes_after_the_server_drops_it() {
    if !tools_ready() {
        return;
    }
    let app = App::start(|_| {}).await;
    let r = run("resume", &app, &[app.url()]).await;
    let c = strings(&r["published"]);
    // c: r.a, q.x.y, s.no | (dropped) r.b, q.z, s.no, r.c | r.d
    assert_eq!(
        r["closed"],
        json!([r["conn"]]),
        "the test closed the page's socket"
    );
    assert_eq!(r["cursor_before"], c[1].as_str());
    assert_eq!(
        r["got"],
        json!([
            {"topic": "r.a", "cursor": c[0], "data": "one"},
            {"topic": "q.x.y", "cursor": c[1], "data": "two"},
            {"topic": "r.b", "cursor": c[3], "data": "three"},
            {"topic": "q.z", "cursor": c[4], "data": {"four": 4}},
            {"topic": "r.c", "cursor": c[6], "data": "five"},
            {"topic": "r.d", "cursor": c[7], "data": "six, live"},
        ]),
        "{r:#}"
    );
    assert_eq!(r["cursor"], c[7].as_str());
    // connecting, open, reconnecting (the server's reason), connecting, open resuming.
    let states = r["states"].as_array().unwrap();
    let names: Vec<&str> = states
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["connecting", "open", "reconnecting", "connecting", "open"],
        "{r:#}"
    );
    assert_eq!(states[2]["error"], "shutting_down");
    assert_eq!(states[4]["resumedFrom"], c[1].as_str());
    assert_ne!(states[4]["conn"], r["conn"], "a new connection");
    let ws: Vec<&Value> = r["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["transport"] == "ws")
        .collect();
    assert_eq!(ws.len(), 2, "one reconnection: {r:#}");
}

/// (c) A plain `EventSource`, nothing of ours: after the server ends its stream it reconnects
/// by itself, sends the last cursor as `Last-Event-ID`, and gets exactly the missed events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_eventsource_resumes_through_last_event_id() {
    if !tools_ready() {
        return;
    }
    let app = App::start(|_| {}).await;
    let r = run("eventsource", &app, &[app.url()]).await;
    let c = strings(&r["published"]);
    // c: e.a, e.b (note), x.y | (ended) e.c, e.d (note) | e.e
    assert_eq!(
        r["got"],
        json!([
            {"type": "message", "data": "one", "id": c[0]},
            {"type": "note", "data": "two", "id": c[1]},
            {"type": "message", "data": "three\nlines", "id": c[3]},
            {"type": "note", "data": "four", "id": c[4]},
            {"type": "message", "data": "five, live", "id": c[5]},
        ]),
        "{r:#}"
    );
    assert_eq!(r["opens"], 2);
    assert!(
        r["errors"].as_u64() >= Some(1),
        "the end of the stream: {r:#}"
    );
    assert_eq!(r["notices"][0]["code"], "shutting_down", "{r:#}");
    let sse: Vec<&Value> = r["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["transport"] == "sse")
        .collect();
    assert_eq!(sse.len(), 2, "{r:#}");
    assert_eq!(sse[0]["last_event_id"], Value::Null);
    assert_eq!(
        sse[1]["last_event_id"],
        c[1].as_str(),
        "the browser's own Last-Event-ID"
    );
    assert_eq!(r["closed"], json!([sse[0]["conn"]]));
}

/// (d) CORS: a page of an allowed origin (another server) reads `/sse` with a plain
/// `EventSource` and with the helper imported from the server, and publishes with `fetch`
/// (a preflighted JSON POST); a page of an origin that is not allowed gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_reaches_sse_through_cors() {
    if !tools_ready() {
        return;
    }
    // Two other servers, only for their origins: pages are loaded from them.
    let allowed = App::start(|_| {}).await;
    let refused = App::start(|_| {}).await;
    let origin = allowed.url();
    let app = App::start(|c| c.http.cors_origins = vec![origin.clone()]).await;
    let r = run("cors", &app, &[app.url(), allowed.url(), refused.url()]).await;
    assert_eq!(r["publish"]["status"], 200, "{r:#}");
    let web = r["publish"]["body"]["id"]
        .as_str()
        .expect("a cursor")
        .to_owned();
    let server = strings(&r["published"]);
    assert_eq!(
        r["plain"],
        json!([{"data": "hello", "id": server[0]}]),
        "{r:#}"
    );
    assert_eq!(
        r["helper"],
        json!([
            {"type": "note", "data": r#"{"from":"a page of another origin"}"#, "cursor": web},
            {"type": "message", "data": "hello", "cursor": server[0]},
        ]),
        "{r:#}"
    );
    assert_eq!(r["helper_cursor"], server[0].as_str());
    assert_eq!(
        r["denied"],
        json!({"state": "closed", "fetched": "TypeError"}),
        "{r:#}"
    );
    let origins: Vec<&Value> = r["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["origin"])
        .collect();
    assert_eq!(origins, [&json!(origin), &json!(origin)], "{r:#}");
}

/// (e) Gaps are surfaced, never silent: with 3 events retained, tidings.js resuming after 5
/// were published gets a gap notice and then the 3 retained ones; the EventSource helper
/// starting from an evicted cursor does the same and tracks the cursor through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_reach_tidings_js_and_the_eventsource_helper() {
    if !tools_ready() {
        return;
    }
    let app = App::start(|c| c.retention.max_events = 3).await;
    let r = run("gaps", &app, &[app.url()]).await;
    let c = strings(&r["published"]);
    let gap = json!({"from": c[0], "to": c[2], "reason": "evicted", "droppedMessages": 0});
    assert_eq!(
        r["got"],
        json!([
            {"cursor": c[0], "data": "1"},
            {"gap": gap},
            {"cursor": c[3], "data": "4"},
            {"cursor": c[4], "data": "5"},
            {"cursor": c[5], "data": "6"},
        ]),
        "{r:#}"
    );
    assert_eq!(r["cursor"], c[5].as_str());
    assert_eq!(
        r["sse"]["seen"],
        json!([
            {"gap": gap, "cursor": c[2]},
            {"cursor": c[3], "data": "4"},
            {"cursor": c[4], "data": "5"},
            {"cursor": c[5], "data": "6"},
        ]),
        "{r:#}"
    );
    assert_eq!(r["sse"]["cursor"], c[5].as_str());
}

/// (f) The rest of tidings.js: requests answered, refused and timed out on the client's own
/// clock; answering the application's requests; direct and named sends; errors as codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidings_js_requests_replies_and_sends() {
    if !tools_ready() {
        return;
    }
    let app = App::start(|_| {}).await;
    let r = run("api", &app, &[app.url()]).await;
    assert_eq!(r["echo"], json!({"x": [1, 2]}));
    assert_eq!(r["failure"], json!([true, "no_handler"]));
    assert_eq!(r["timeout"], json!(["timeout", true]), "{r:#}");
    assert_eq!(r["nobody"], "no_recipient");
    assert_eq!(
        r["presence"],
        json!({"topic":"jobs.eu","connections":1,"anonymous":0,
               "clients":[{"client_id":"alice","connections":1}],"truncated":false,"nodes":1}),
        "alice's named subscription, seen from bob's tidings.js"
    );
    assert_eq!(
        r["watched"],
        json!({
            "start": {"topic":"room.w","connections":0,"anonymous":0,"clients":[],
                      "truncated":false,"nodes":1},
            "notices": [
                {"topic":"room.w","action":"join","client_id":"carol"},
                {"topic":"room.w","action":"leave","client_id":"carol"},
                {"topic":"room.w","action":"resync","presence":{"topic":"room.w","connections":0,
                    "anonymous":0,"clients":[],"truncated":false,"nodes":1}},
            ],
        }),
        "bob's watchPresence: its starting presence, carol's join and leave, a resync after a reconnect"
    );
    assert_eq!(r["bad"], "invalid_topic");
    assert_eq!(r["rtt"], true);
    assert_eq!(
        r["inbox"][0],
        json!({"via": "message", "type": "message", "event": "dm", "data": "psst"}),
        "{r:#}"
    );
    assert_eq!(
        r["jobs"],
        json!([{"type": "message", "topic": "jobs.eu", "name": "worker", "data": {"job": 1}}]),
        "{r:#}"
    );
    assert_eq!(r["answered"], json!({"answer": r#"{"confirmed":5}"#}));
    assert_eq!(r["unhandled"]["error"], "rejected", "{r:#}");
    assert_eq!(
        r["lifecycle"],
        json!({"before": "closed", "states": ["connecting", "open", "closed"], "afterClose": "closed"}),
        "{r:#}"
    );
}

/// (g) Over https:// (the server's own TLS, a certificate made here that Chromium is told to
/// trust): HTTP/2, ten `EventSource`s of one page open at once on one origin, and each resumes
/// with its `Last-Event-ID` after the server ends the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_eventsources_share_one_https_origin_over_http2_and_resume() {
    if !tools_ready() {
        return;
    }
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tidings-browser-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (tls_cert, tls_key) = (cert.clone(), key.clone());
    let app = App::start(move |c| {
        c.tls.cert = Some(tls_cert);
        c.tls.key = Some(tls_key);
    })
    .await;
    assert!(app.url().starts_with("https://"));
    let r = run_trusting("https", &app, &[app.url()], Some(&cert)).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r["protocol"], "h2", "{r:#}");
    assert_eq!(r["title"], "tidings demo", "{r:#}");
    let c = strings(&r["published"]);
    let streams = r["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 10);
    assert_eq!(r["closed"].as_array().unwrap().len(), 10, "{r:#}");
    for s in streams {
        assert_eq!(s["opens"], 2, "{r:#}");
        assert_eq!(
            s["got"],
            json!([
                {"data": "to all ten", "id": c[0]},
                {"data": "missed one", "id": c[1]},
                {"data": "missed two", "id": c[2]},
            ]),
            "{r:#}"
        );
    }
    // Each resumed with the last cursor it had.
    let resumed = app
        .seen
        .lock()
        .unwrap()
        .conns
        .iter()
        .filter(|conn| conn["transport"] == "sse" && conn["last_event_id"] == c[0].as_str())
        .count();
    assert_eq!(resumed, 10, "{r:#}");
}
