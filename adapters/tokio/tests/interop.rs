//! A real third-party SSE client, the npm `eventsource` package (a WHATWG EventSource for Node,
//! `tests/interop/`), resumes by itself: the server ends its stream, the library reconnects with
//! `Last-Event-ID`, and receives exactly what it missed, once, in order.
//!
//! Skipped (with a message) when node or the package is missing, unless
//! `TIDINGS_REQUIRE_INTEROP` is set (as in CI), which makes that a failure.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tidings_adapter::ServerConfig;
use tidings_core::{ConnId, ErrorCode, Name, Payload, ProtocolError, Topic};

const INTEROP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop");

fn node_available() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let package = std::path::Path::new(INTEROP)
        .join("node_modules/eventsource")
        .exists();
    if node && package {
        return true;
    }
    let why = "node or the npm eventsource package is missing (run scripts/setup-interop.sh)";
    assert!(
        std::env::var_os("TIDINGS_REQUIRE_INTEROP").is_none(),
        "TIDINGS_REQUIRE_INTEROP is set but {why}"
    );
    eprintln!("skipped: {why}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_reconnects_with_last_event_id_and_misses_nothing() {
    if !node_available() {
        return;
    }
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    config.sse.retry = Some(Duration::from_millis(100));
    let server = tidings_tokio::serve(config).await.unwrap();
    let hub = server.hub().clone();
    let streams: Arc<Mutex<Vec<ConnId>>> = Arc::default();
    {
        let streams = streams.clone();
        hub.on_connect(move |c| {
            streams.lock().unwrap().push(c.conn);
            Vec::new()
        });
    }
    let url = format!("http://{}/sse?topic=r.*", server.addr());
    let script = format!("{INTEROP}/eventsource.mjs");
    let mut child = Command::new("node")
        .args([script.as_str(), url.as_str(), "4", "note"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(serde_json::from_str(&line).expect("a JSON line"));
        }
    });
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the client reports in time")
            .expect("the client is running")
    };
    let topic = |t: &str| Topic::parse(t, Default::default()).unwrap();
    let text = |s: &str| Payload::text(s.to_owned()).unwrap();

    assert_eq!(next().await["kind"], "open");
    let c1 = hub.publish(topic("r.a"), None, text("one")).await.unwrap();
    let c2 = hub
        .publish(
            topic("r.b"),
            Some(Name::parse("event", "note", 128).unwrap()),
            text("two"),
        )
        .await
        .unwrap();
    assert_eq!(
        next().await,
        json!({"kind":"event","type":"message","data":"one","lastEventId":c1.to_string()})
    );
    assert_eq!(
        next().await,
        json!({"kind":"event","type":"note","data":"two","lastEventId":c2.to_string()})
    );

    // The server ends the stream; an event is published before the client is back.
    let first = streams.lock().unwrap()[0];
    hub.close(
        first,
        ProtocolError::new(ErrorCode::ShuttingDown, "reconnect, please"),
    )
    .await
    .unwrap();
    let c3 = hub
        .publish(topic("r.c"), None, text("three"))
        .await
        .unwrap();
    assert_eq!(next().await["kind"], "error", "the library notices the end");
    assert_eq!(next().await["kind"], "open", "and reconnects");
    assert_eq!(
        next().await,
        json!({"kind":"event","type":"message","data":"three","lastEventId":c3.to_string()})
    );
    let c4 = hub.publish(topic("r.a"), None, text("four")).await.unwrap();
    assert_eq!(
        next().await,
        json!({"kind":"event","type":"message","data":"four","lastEventId":c4.to_string()})
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "node exited with {status}");
    assert_eq!(streams.lock().unwrap().len(), 2, "one reconnection");
    server.shutdown().await;
}
