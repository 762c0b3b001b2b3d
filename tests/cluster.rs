//! Cluster mode end to end: `tidings serve --nats URL` nodes (on both runtimes) sharing a real
//! nats-server's JetStream stream, started and stopped by pid. What a user of several nodes
//! behind a load balancer notices: every node delivers the same events in the same order, a
//! cursor from one node resumes exactly on another (native, SSE, ksbus and etp subscribers), a
//! restarted node serves old cursors, a NATS outage answers publishes `unavailable` and loses
//! nothing that was acknowledged, direct messages, named routing and presence span the nodes,
//! server requests reach a client id or a room's members on any node, in-process subscribers
//! of a node embedded in an application are subscribers like the others, and a stream created
//! again, or one that lost its tail (a `replicas = 1` server back with an older store), becomes
//! a new epoch everywhere.
//!
//! Without nats-server the tests skip (and fail under `TIDINGS_REQUIRE_INTEROP`, as in CI).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ChunkedDecoder, JWT_SECRET, Nats, Server, token_for};
use serde_json::{Value, json};
use tidings_core::sse::{DecodedEvent, Decoder};

fn node(runtime: &'static str, nats: &Nats, name: &str, extra: &[&str]) -> Server {
    let url = nats.url();
    let mut args = vec!["--nats", url.as_str(), "--node", name];
    args.extend_from_slice(extra);
    Server::start(runtime, &args)
}

/// The epoch part and sequence of a cursor (`<epoch hex>-<seq>`).
fn seq_of(cursor: &str) -> (String, u64) {
    let (epoch, seq) = cursor.rsplit_once('-').expect("a cursor");
    (epoch.to_owned(), seq.parse().expect("a sequence"))
}

#[test]
fn three_nodes_deliver_one_order_and_a_cursor_resumes_on_any_node() {
    let Some(nats) = Nats::start() else { return };
    let a = node("tokio", &nats, "a", &[]);
    let b = node("async-std", &nats, "b", &[]);
    let c = node("tokio", &nats, "c", &[]);
    let mut sse_b = b.sse("/sse?topic=orders.%3E", &[]);
    let mut sse_a = a.sse("/sse?topic=orders.eu", &[]);
    let mut ws_c = c.ws();
    let ok = ws_c.ask(json!({"op":"subscribe","id":1,"topics":["orders.>"]}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut ws_pub = b.ws();

    // Publishes on every node, over HTTP and over WebSocket, answered one after the other.
    let nodes = [&a, &b, &c];
    let mut published = Vec::new(); // (cursor, topic, data)
    for i in 0..30 {
        let topic = if i % 2 == 0 { "orders.eu" } else { "orders.us" };
        let data = format!("e{i}");
        let cursor = if i % 5 == 4 {
            let ok = ws_pub
                .ask(json!({"op":"publish","id":i,"topic":topic,"event":"created","data":data}));
            assert_eq!(ok["type"], "ok", "{ok}");
            ok["cursor"].as_str().expect("a cursor").to_owned()
        } else {
            nodes[i % 3].publish(topic, &data)
        };
        published.push((cursor, topic, data));
    }
    // One stream, one epoch, positions in publish order.
    let (epoch, _) = seq_of(&published[0].0);
    for pair in published.windows(2) {
        let ((e0, s0), (e1, s1)) = (seq_of(&pair[0].0), seq_of(&pair[1].0));
        assert_eq!((&e0, &e1), (&epoch, &epoch));
        assert!(s1 > s0, "positions grow: {} then {}", pair[0].0, pair[1].0);
    }

    // Node b (async-std), over SSE: every event, in order, with the publishers' cursors and
    // event names.
    for (i, (cursor, _, data)) in published.iter().enumerate() {
        let ev = sse_b.next_event();
        assert_eq!(
            (ev.data.as_str(), ev.last_event_id.as_str()),
            (data.as_str(), cursor.as_str())
        );
        let name = if i % 5 == 4 { "created" } else { "message" };
        assert_eq!(ev.event_type, name, "event {i}");
    }
    // Node c, over WebSocket: the same.
    for (cursor, topic, data) in &published {
        let ev = ws_c.recv();
        assert_eq!(
            (
                ev["topic"].as_str(),
                ev["data"].as_str(),
                ev["cursor"].as_str()
            ),
            (Some(*topic), Some(data.as_str()), Some(cursor.as_str())),
            "{ev}"
        );
    }
    // Node a, one topic of the two: its events only.
    for (cursor, _, data) in published.iter().filter(|p| p.1 == "orders.eu") {
        let ev = sse_a.next_event();
        assert_eq!(
            (ev.data.as_str(), ev.last_event_id.as_str()),
            (data.as_str(), cursor.as_str())
        );
    }

    // A cursor node a handed out resumes exactly on node c (SSE) and on node b (WebSocket).
    let from = &published[9].0;
    let mut resumed = c.sse("/sse?topic=orders.%3E", &[("Last-Event-ID", from)]);
    let mut ws_b = b.ws();
    let ok = ws_b.ask(json!({"op":"subscribe","id":1,"topics":["orders.>"],"from":from}));
    assert_eq!(ok["type"], "ok", "{ok}");
    for (cursor, _, data) in &published[10..] {
        let ev = resumed.next_event();
        assert_eq!(
            (ev.data.as_str(), ev.last_event_id.as_str()),
            (data.as_str(), cursor.as_str())
        );
        let ev = ws_b.recv();
        assert_eq!(ev["cursor"].as_str(), Some(cursor.as_str()), "{ev}");
    }
    // Then live, nothing repeated in between.
    let last = a.publish("orders.us", "live");
    let ev = resumed.next_event();
    assert_eq!(
        (ev.data.as_str(), ev.last_event_id.as_str()),
        ("live", last.as_str())
    );
    assert_eq!(ws_b.recv()["cursor"].as_str(), Some(last.as_str()));
}

#[test]
fn resumes_older_than_the_hot_window_and_after_a_node_restart_come_from_the_stream() {
    let Some(nats) = Nats::start() else { return };
    // A hot window of 4 events: older resumes read the stream.
    let small = ["--set", "store.hot_events=4"];
    let mut a = node("tokio", &nats, "a", &small);
    let b = node("async-std", &nats, "b", &small);
    let cursors: Vec<String> = (0..20).map(|i| a.publish("t", &format!("e{i}"))).collect();
    let exactly_after = |server: &Server, from: usize, cursors: &[String]| {
        let mut sse = server.sse("/sse?topic=t", &[("Last-Event-ID", &cursors[from])]);
        for (i, cursor) in cursors.iter().enumerate().skip(from + 1) {
            let ev = sse.next_event();
            assert_eq!(
                (ev.data.as_str(), ev.last_event_id.as_str()),
                (format!("e{i}").as_str(), cursor.as_str()),
                "[{}] resuming after {from}",
                server.runtime
            );
        }
        sse
    };
    drop(exactly_after(&b, 2, &cursors));
    drop(exactly_after(&a, 0, &cursors));

    // Node a crashes; the others go on; a new node a starts from the stream.
    a.kill9();
    let mut cursors = cursors;
    cursors.extend((20..25).map(|i| b.publish("t", &format!("e{i}"))));
    let a = node("tokio", &nats, "a", &small);
    let mut sse = exactly_after(&a, 12, &cursors);
    // Live after the replay, on the restarted node.
    let live = b.publish("t", "e25");
    let ev = sse.next_event();
    assert_eq!(
        (ev.data.as_str(), ev.last_event_id.as_str()),
        ("e25", live.as_str())
    );
}

#[test]
fn a_nats_outage_answers_publishes_unavailable_and_loses_nothing_acknowledged() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let quick = ["--set", "cluster.publish_timeout=\"1s\""];
    let a = node("tokio", &nats, "a", &quick);
    let b = node("async-std", &nats, "b", &quick);
    let mut sse = b.sse("/sse?topic=t", &[]);
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    for i in 0..3 {
        let data = format!("before{i}");
        acknowledged.push((a.publish("t", &data), data));
    }

    nats.kill9();
    let refused = a.request("POST", "/publish?topic=t", &[], b"during");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.error_code(), "unavailable");

    // NATS back (same port and store): publishing works again once the node reconnected.
    nats.restart();
    let t0 = Instant::now();
    let mut refused_data = vec!["during".to_owned()];
    let mut attempt = 0;
    loop {
        let data = format!("after{attempt}");
        let resp = a.request("POST", "/publish?topic=t", &[], data.as_bytes());
        if resp.status == 200 {
            let id: Value = serde_json::from_str(&resp.body).unwrap();
            acknowledged.push((id["id"].as_str().unwrap().to_owned(), data));
            break;
        }
        assert_eq!(resp.error_code(), "unavailable", "{}", resp.body);
        refused_data.push(data);
        attempt += 1;
        assert!(
            attempt < 30,
            "node a did not get back to NATS within 30 attempts"
        );
    }
    for i in 0..3 {
        let data = format!("later{i}");
        acknowledged.push((b.publish("t", &data), data));
    }

    // Every acknowledged event arrives once, in order, with its cursor; an event answered
    // `unavailable` may still have been stored (NATS had it but its answer was lost), but
    // nothing else arrives, and there is no gap notice.
    let mut next = 0;
    while next < acknowledged.len() {
        let ev = sse.next_event();
        assert_ne!(ev.event_type, "tidings-gap", "{}", ev.data);
        if ev.data == acknowledged[next].1 {
            assert_eq!(ev.last_event_id, acknowledged[next].0);
            next += 1;
        } else {
            assert!(
                refused_data.contains(&ev.data),
                "{:?} was neither acknowledged nor refused",
                ev.data
            );
        }
    }
    // Deliveries resume as soon as the node is back, not after the consumer's heartbeats
    // time out (which took 80 s).
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "deliveries resumed after {took:?}"
    );
}

#[test]
fn nats_unreachable_at_start_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    for runtime in common::RUNTIMES {
        let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--listen", "127.0.0.1:0", "--runtime", runtime])
            .args(["--nats", &format!("nats://127.0.0.1:{port}")])
            .args(["--set", "cluster.connect_timeout=\"1s\""])
            .stdin(Stdio::null())
            .output()
            .expect("the tidings binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "[{runtime}] started without NATS");
        assert!(
            stderr.contains("cannot join the cluster") && stderr.contains(&port.to_string()),
            "[{runtime}] {stderr}"
        );
    }
}

// ---- faults during a publish loop ----------------------------------------------------------

/// What became of one publish of the loop.
enum Outcome {
    /// Answered with its cursor.
    Stored(String),
    /// Answered `unavailable`, or cut off with the node: it may or may not have been stored.
    Unknown,
}

/// A publish over a fresh connection that tolerates the node dying under it.
fn try_publish(addr: SocketAddr, topic: &str, data: &str) -> Outcome {
    let attempt = || -> std::io::Result<Outcome> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let head = format!(
            "POST /publish?topic={topic} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{data}",
            data.len()
        );
        stream.write_all(head.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let resp = common::Resp::parse(&raw);
        Ok(match resp.status {
            200 => {
                let json: Value = serde_json::from_str(&resp.body).expect("a JSON answer");
                Outcome::Stored(json["id"].as_str().expect("an id").to_owned())
            }
            503 => Outcome::Unknown,
            other => panic!("publish answered {other}: {}", resp.body),
        })
    };
    attempt().unwrap_or(Outcome::Unknown)
}

/// One SSE subscriber that reconnects to any live node and resumes with its last event id
/// until it has seen `ends` end markers; returns every event it got (gap notices included).
fn resuming_subscriber(
    id: usize,
    pattern: &str,
    ends: usize,
    nodes: Arc<Mutex<Vec<SocketAddr>>>,
    deadline: Instant,
    subscribed: std::sync::mpsc::Sender<()>,
) -> Vec<DecodedEvent> {
    let mut got: Vec<DecodedEvent> = Vec::new();
    let mut last_id = String::new();
    let mut seen_ends = 0;
    let mut turn = id;
    while seen_ends < ends {
        assert!(
            Instant::now() < deadline,
            "subscriber {id} ({pattern}) saw {seen_ends} of {ends} end markers; last id {last_id:?}"
        );
        let addr = {
            let nodes = nodes.lock().unwrap();
            nodes[turn % nodes.len()]
        };
        turn += 1;
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut head = format!(
            "GET /sse?topic={pattern} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n"
        );
        if !last_id.is_empty() {
            head.push_str(&format!("Last-Event-ID: {last_id}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).is_err() {
            continue;
        }
        // The head, then the chunked body, as far as the node lives.
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 << 10];
        let body_at = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break Some(i + 4);
            }
            match stream.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break None,
            }
        };
        let Some(body_at) = body_at else { continue };
        assert!(
            raw.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        // The head comes once the subscription is in place.
        let _ = subscribed.send(());
        let mut chunked = ChunkedDecoder::default();
        let mut decoder = Decoder::new();
        let mut pending = raw.split_off(body_at);
        loop {
            decoder
                .feed(&chunked.feed(&pending))
                .expect("a valid event stream");
            while let Some(ev) = decoder.next_event() {
                if !ev.last_event_id.is_empty() {
                    last_id.clone_from(&ev.last_event_id);
                }
                if ev.data.starts_with("end-") {
                    seen_ends += 1;
                }
                got.push(ev);
            }
            if seen_ends >= ends || Instant::now() >= deadline {
                break;
            }
            pending.clear();
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
    }
    got
}

#[test]
fn nodes_and_a_nats_server_killed_during_a_publish_loop_lose_nothing_acknowledged() {
    let Some(mut nats) = Nats::cluster(3) else {
        return;
    };
    // Nodes a and c know every NATS server; node b only the one that crashes, so that it
    // certainly loses its connection (and its consumer) and gets them back.
    let (urls, only_1) = (Nats::urls(&nats), nats[1].url());
    let args = |urls: &str| -> Vec<String> {
        ["--nats", urls, "--set", "cluster.replicas=3"]
            .into_iter()
            .chain(["--set", "cluster.publish_timeout=\"2s\""])
            .map(str::to_owned)
            .collect()
    };
    let start = |runtime: &'static str, urls: &str| {
        let args = args(urls);
        Server::start(
            runtime,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let mut servers = [
        start("tokio", &urls),
        start("async-std", &only_1),
        start("tokio", &urls),
    ];
    let nodes = Arc::new(Mutex::new(
        servers.iter().map(|s| s.addr).collect::<Vec<_>>(),
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (subscribed, ready) = std::sync::mpsc::channel();
    // As many clients as the issue asks for, spread over the nodes (SSE, each on its thread).
    const CLIENTS: usize = 200;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (pattern, ends) = if i % 2 == 0 { ("f.%3E", 2) } else { ("f.a", 1) };
            let (nodes, subscribed) = (nodes.clone(), subscribed.clone());
            let handle = std::thread::spawn(move || {
                resuming_subscriber(i, pattern, ends, nodes, deadline, subscribed)
            });
            (pattern, handle)
        })
        .collect();
    for _ in 0..CLIENTS {
        ready
            .recv_timeout(Duration::from_secs(30))
            .expect("every subscriber subscribed");
    }

    // The numbered publish loop, on every live node in turn; faults at fixed points.
    let mut stored: Vec<(u64, String, &str)> = Vec::new(); // (seq, data, topic)
    let mut unknown: Vec<String> = Vec::new();
    let mut record = |outcome: Outcome, data: String, topic: &'static str| match outcome {
        Outcome::Stored(cursor) => stored.push((seq_of(&cursor).1, data, topic)),
        Outcome::Unknown => unknown.push(data),
    };
    let t0 = Instant::now();
    for i in 0..400 {
        match i {
            100 => {
                // A tidings node crashes: its subscribers move to the others.
                servers[0].kill9();
                nodes.lock().unwrap().retain(|a| *a != servers[0].addr);
            }
            160 => nats[1].kill9(), // a NATS server crashes: the stream keeps a quorum
            220 => {
                servers[0] = start("tokio", &urls);
                nodes.lock().unwrap().push(servers[0].addr);
            }
            280 => nats[1].restart(),
            _ => {}
        }
        let topic = if i % 2 == 0 { "f.a" } else { "f.b" };
        let data = format!("n{i}");
        let addr = {
            let nodes = nodes.lock().unwrap();
            nodes[i % nodes.len()]
        };
        record(try_publish(addr, topic, &data), data, topic);
    }
    // The end markers, acknowledged, after everything was healed.
    for (topic, data) in [("f.a", "end-a"), ("f.b", "end-b")] {
        loop {
            let addr = nodes.lock().unwrap()[0];
            match try_publish(addr, topic, data) {
                Outcome::Stored(cursor) => {
                    record(Outcome::Stored(cursor), data.to_owned(), topic);
                    break;
                }
                Outcome::Unknown => {
                    assert!(Instant::now() < deadline, "the end marker was never stored");
                    record(Outcome::Unknown, data.to_owned(), topic);
                }
            }
        }
    }
    eprintln!(
        "at {:?}: {} publishes acknowledged, {} with an unknown outcome",
        t0.elapsed(),
        stored.len(),
        unknown.len()
    );
    assert!(
        stored.len() >= 300,
        "only {} of 402 publishes were acknowledged",
        stored.len()
    );

    // Every subscriber: exactly the acknowledged events of its topics, in stream order, once;
    // besides them only publishes whose outcome was unknown; no gap notice (nothing was evicted).
    for (i, (pattern, handle)) in clients.into_iter().enumerate() {
        let got = handle.join().expect("the subscriber thread");
        let mut last = 0;
        let mut received = Vec::new();
        for ev in &got {
            assert_ne!(ev.event_type, "tidings-gap", "subscriber {i}: {}", ev.data);
            let seq = seq_of(&ev.last_event_id).1;
            assert!(
                seq > last,
                "subscriber {i}: {seq} after {last} (duplicate or out of order)"
            );
            last = seq;
            if !stored.iter().any(|(s, d, _)| *s == seq && *d == ev.data) {
                assert!(
                    unknown.contains(&ev.data),
                    "subscriber {i}: {:?} at {seq} was never published",
                    ev.data
                );
            } else {
                received.push(seq);
            }
        }
        let wanted: Vec<u64> = stored
            .iter()
            .filter(|(_, _, topic)| pattern == "f.%3E" || *topic == "f.a")
            .map(|(s, _, _)| *s)
            .collect();
        let mut wanted_sorted = wanted.clone();
        wanted_sorted.sort_unstable();
        assert_eq!(received, wanted_sorted, "subscriber {i} ({pattern})");
    }
}

#[test]
fn direct_messages_and_named_routing_reach_clients_on_other_nodes() {
    let Some(nats) = Nats::start() else { return };
    let a = node("tokio", &nats, "a", &[]);
    let b = node("async-std", &nats, "b", &[]);
    let mut alice = b.ws();
    let ok = alice.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut workers = [a.ws(), b.ws()];
    for w in &mut workers {
        let ok = w.ask(json!({"op":"subscribe","id":1,"topics":["jobs.>"],"name":"worker"}));
        assert_eq!(ok["type"], "ok", "{ok}");
    }
    let mut bob = a.ws();
    let ok = bob.ask(json!({"op":"identify","id":1,"client_id":"bob"}));
    assert_eq!(ok["type"], "ok", "{ok}");

    // Node b's subscription for alice reaches NATS a moment after her `ok`: until then a send
    // is answered `no_recipient`, so the first one is asked again until it lands.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut id = 10;
    loop {
        id += 1;
        let answer = bob.ask(json!({"op":"send","id":id,"to":"alice","event":"hi","data":{"n":1}}));
        if answer["type"] == "ok" {
            break;
        }
        assert_eq!(answer["code"], "no_recipient", "{answer}");
        assert!(Instant::now() < deadline, "alice on node b never reachable");
    }
    let got = alice.recv();
    assert_eq!(
        (
            got["type"].as_str(),
            got["from"].as_str(),
            got["event"].as_str()
        ),
        (Some("message"), Some("bob"), Some("hi")),
        "{got}"
    );
    assert_eq!(got["data"], json!({"n": 1}));
    // And back, from b to a.
    let ok = alice.ask(json!({"op":"send","id":2,"to":"bob","data":"pong"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(bob.recv()["data"], "pong");

    // Nobody holds the id anywhere: `no_recipient`, at once (NATS has no responder for it).
    let started = Instant::now();
    let answer = bob.ask(json!({"op":"send","id":3,"to":"nobody","data":1}));
    assert_eq!(answer["code"], "no_recipient", "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Named routing: the named subscriptions of both nodes receive it.
    let ok = bob.ask(json!({"op":"send","id":4,"topic":"jobs.eu","name":"worker","data":"job"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    for w in &mut workers {
        let got = w.recv();
        assert_eq!(
            (got["type"].as_str(), got["data"].as_str()),
            (Some("message"), Some("job")),
            "{got}"
        );
    }

    // Alice leaves: her id is held nowhere again.
    drop(alice);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        id += 1;
        let answer = bob.ask(json!({"op":"send","id":id,"to":"alice","data":1}));
        if answer["type"] == "error" {
            assert_eq!(answer["code"], "no_recipient", "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's id still routed to node b"
        );
    }
}

#[test]
fn presence_counts_the_subscribers_of_every_node() {
    let Some(nats) = Nats::start() else { return };
    let a = node("tokio", &nats, "a", &[]);
    let b = node("async-std", &nats, "b", &[]);
    let mut c = node("tokio", &nats, "c", &[]);
    let mut alice = a.ws();
    let ok = alice.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = alice.ask(json!({"op":"subscribe","id":2,"topics":["chat.>"]}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut anonymous = b.sse("/sse?topic=chat.room1", &[]);
    assert!(anonymous.fill(), "opened, so subscribed");
    let mut bob = c.ws();
    let ok = bob.ask(json!({"op":"identify","id":1,"client_id":"bob"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = bob.ask(json!({"op":"subscribe","id":2,"topics":["chat.room1"]}));
    assert_eq!(ok["type"], "ok", "{ok}");

    let expected = json!({"topic":"chat.room1","connections":3,"anonymous":1,
        "clients":[{"client_id":"alice","connections":1},{"client_id":"bob","connections":1}],
        "truncated":false,"nodes":3});
    let resp = b.get("/presence?topic=chat.room1");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(serde_json::from_str::<Value>(&resp.body).unwrap(), expected);
    let answer = alice.ask(json!({"op":"presence","id":3,"topic":"chat.room1"}));
    assert_eq!(answer["data"], expected, "{answer}");

    // A node gone: its subscribers are gone from the presence (it no longer answers).
    c.terminate();
    let resp = a.get("/presence?topic=chat.room1");
    let got: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(
        (got["connections"].as_u64(), got["nodes"].as_u64()),
        (Some(2), Some(2)),
        "{got}"
    );
    drop(bob);
}

#[test]
fn a_stream_deleted_and_created_again_gives_every_subscriber_an_epoch_gap() {
    let Some(nats) = Nats::start() else { return };
    let a = node("tokio", &nats, "a", &[]);
    let b = node("async-std", &nats, "b", &[]);
    let mut ws = a.ws();
    let ok = ws.ask(json!({"op":"subscribe","id":1,"topics":["t.>"]}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut sse = b.sse("/sse?topic=t.%3E", &[]);
    let old: Vec<String> = (0..3)
        .map(|i| a.publish("t.a", &format!("old {i}")))
        .collect();
    for cursor in &old {
        assert_eq!(ws.recv()["cursor"].as_str(), Some(cursor.as_str()));
        assert_eq!(&sse.next_event().last_event_id, cursor);
    }

    // An operator deletes the stream; a node started then creates it again.
    nats.delete_stream("tidings");
    let c = node("tokio", &nats, "c", &[]);
    let first_new = c.publish("t.a", "new 0");
    let (old_epoch, _) = seq_of(&old[0]);
    let (new_epoch, seq) = seq_of(&first_new);
    assert_ne!(old_epoch, new_epoch, "a new stream, a new epoch");
    assert_eq!(seq, 1);

    // Both nodes notice: an epoch gap from where their subscribers were, then the new stream.
    let gap = ws.recv();
    assert_eq!(
        (
            gap["type"].as_str(),
            gap["reason"].as_str(),
            gap["from"].as_str()
        ),
        (Some("gap"), Some("epoch"), Some(old[2].as_str())),
        "{gap}"
    );
    assert_eq!(ws.recv()["cursor"].as_str(), Some(first_new.as_str()));
    let ev = sse.next_event();
    assert_eq!(ev.event_type, "tidings-gap", "{ev:?}");
    assert!(ev.data.contains("\"reason\":\"epoch\""), "{}", ev.data);
    let ev = sse.next_event();
    assert_eq!(
        (ev.last_event_id.as_str(), ev.data.as_str()),
        (first_new.as_str(), "new 0")
    );
    // Then live, in the new epoch, from every node.
    let next = b.publish("t.b", "new 1");
    assert_eq!(seq_of(&next), (new_epoch.clone(), 2));
    assert_eq!(ws.recv()["cursor"].as_str(), Some(next.as_str()));
    assert_eq!(sse.next_event().last_event_id, next);
    // A client resuming with an old cursor: the same notice, then the new stream.
    let mut resumed = c.sse("/sse?topic=t.%3E", &[("Last-Event-ID", &old[1])]);
    let ev = resumed.next_event();
    assert_eq!(ev.event_type, "tidings-gap", "{ev:?}");
    assert_eq!(resumed.next_event().last_event_id, first_new);
}

/// A WebSocket of another protocol (`/ws/bus`, `/etp`) to `server`.
fn websocket(server: &Server, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let url = format!("ws://{}{path}", server.addr);
    let (ws, _) = tungstenite::client(url, server.connect()).expect("the handshake succeeds");
    ws
}

/// The next text frame (pings skipped).
fn text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
    loop {
        match ws.read().expect("a frame arrives") {
            tungstenite::Message::Text(t) => return t.to_string(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn ksbus_and_etp_subscribers_on_other_nodes_receive_every_event_in_order() {
    let Some(nats) = Nats::start() else { return };
    let a = node("tokio", &nats, "a", &[]);
    let b = node("async-std", &nats, "b", &[]);
    let c = node("tokio", &nats, "c", &[]);
    // ksbus on b: subscribed once its ping is answered (frames are handled in order).
    let mut ksbus = websocket(&b, "/ws/bus");
    let send = |ws: &mut tungstenite::WebSocket<TcpStream>, text: String| {
        ws.send(tungstenite::Message::text(text)).unwrap();
    };
    send(
        &mut ksbus,
        json!({"action":"sub","topic":"orders.>","from":"k"}).to_string(),
    );
    send(&mut ksbus, json!({"action":"ping"}).to_string());
    assert_eq!(text(&mut ksbus), r#"{"data":"pong"}"#);
    // etp on c: the same with an acknowledged event.
    let mut etp = websocket(&c, "/etp");
    send(&mut etp, r#"tidings.subscribe||0||orders.>"#.to_owned());
    send(&mut etp, "sync||1".to_owned());
    assert_eq!(text(&mut etp), "__ack_sync||1");

    let topics = ["orders.eu", "orders.us"];
    for i in 0..10 {
        a.publish(topics[i % 2], &format!("e{i}"));
    }
    for i in 0..10 {
        let got: Value = serde_json::from_str(&text(&mut ksbus)).unwrap();
        assert_eq!(
            (got["topic"].as_str(), got["data"].as_str()),
            (Some(topics[i % 2]), Some(format!("e{i}").as_str())),
            "{got}"
        );
        assert_eq!(text(&mut etp), format!("{}||0||e{i}", topics[i % 2]));
    }
}

#[test]
fn post_subscriptions_on_any_node_changes_a_client_held_on_another() {
    let Some(nats) = Nats::start() else { return };
    let a = node("tokio", &nats, "a", &[]);
    let b = node("async-std", &nats, "b", &[]);
    let mut alice = b.sse("/sse?topic=news.a&client_id=alice", &[]);
    assert!(alice.fill(), "opened");
    let post = |body: &Value| {
        a.request(
            "POST",
            "/subscriptions",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    let change = json!({"client_id":"alice","add":["news.b"],"remove":["news.a"]});
    // Node b's subscription for alice's id reaches NATS a moment after her stream opened: until
    // then the change is answered 404, as for a client not connected yet.
    let deadline = Instant::now() + Duration::from_secs(5);
    let resp = loop {
        let resp = post(&change);
        if resp.status != 404 {
            break resp;
        }
        assert!(
            Instant::now() < deadline,
            "alice on node b never reachable: {}",
            resp.body
        );
    };
    assert_eq!(resp.status, 200, "{}", resp.body);
    let got: Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(
        (
            &got["subscriptions"],
            &got["added"],
            &got["removed"],
            &got["connected"]
        ),
        (
            &json!(["news.b"]),
            &json!(["news.b"]),
            &json!(["news.a"]),
            &json!(true)
        ),
        "{got}"
    );
    // Her stream on b was told, and from now on gets news.b, not news.a.
    let notices: Vec<String> = (0..2).map(|_| alice.next_event().event_type).collect();
    assert_eq!(notices, ["tidings-unsubscribed", "tidings-subscribed"]);
    a.publish("news.a", "not for her");
    let cursor = a.publish("news.b", "for her");
    let ev = alice.next_event();
    assert_eq!(
        (ev.data.as_str(), ev.last_event_id.as_str()),
        ("for her", cursor.as_str())
    );

    // A client id no node holds: 404, as on one node.
    let resp = post(&json!({"client_id":"nobody","add":["x"]}));
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (404, "no_recipient"),
        "{}",
        resp.body
    );
}

/// Sends direct messages to `to` from `from` until one is answered `ok` (the route reached NATS).
fn send_until_delivered(from: &mut common::Ws, to: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for id in 100.. {
        let answer = from.ask(json!({"op":"send","id":id,"to":to,"data":"ping"}));
        if answer["type"] == "ok" {
            return;
        }
        assert!(Instant::now() < deadline, "{to} never reachable: {answer}");
    }
}

#[test]
fn a_users_client_id_is_hers_on_every_node() {
    let Some(nats) = Nats::start() else { return };
    let args = [
        "--set",
        "auth.anonymous={ subscribe = [\">\"], publish = [\">\"], direct = true, any_client_id = true }",
        "--set",
        &format!("auth.jwt.secret=\"{JWT_SECRET}\""),
    ];
    let args = [&args[..], &["--set", "timers.reconnect_window=\"60s\""]].concat();
    let a = node("tokio", &nats, "a", &args);
    let b = node("async-std", &nats, "b", &args);
    // An anonymous client on b takes "alice" while she is away: allowed, the id is free.
    let mut mallory = b.ws();
    let ok = mallory.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut other = a.ws();
    send_until_delivered(&mut other, "alice");
    assert_eq!(mallory.recv()["data"], "ping");

    // Alice connects to a with her token: her id is claimed back on b too.
    let bearer = format!("Bearer {}", token_for("alice"));
    let mut alice = common::Ws::open(a.connect(), a.addr, &[("Authorization", bearer.as_str())]);
    let (frames, _) = mallory.until_close();
    assert!(
        frames.iter().any(|f| f["code"] == "client_id_taken"),
        "mallory is told: {frames:?}"
    );
    // From b, messages to alice reach her on a, and only her.
    let mut sender = b.ws();
    send_until_delivered(&mut sender, "alice");
    assert_eq!(alice.recv()["data"], "ping");

    // Another anonymous client on b claims "alice" while she holds it on a: it loses it.
    let mut carol = b.ws();
    let ok = carol.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
    assert_eq!(ok["type"], "ok", "b did not know yet: {ok}");
    let (frames, _) = carol.until_close();
    assert!(
        frames.iter().any(|f| f["code"] == "client_id_taken"),
        "carol is told: {frames:?}"
    );
    let ok = sender.ask(json!({"op":"send","id":1,"to":"alice","data":"only hers"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(alice.recv()["data"], "only hers");

    // She leaves a with a subscription: her session is parked there for the reconnect window,
    // and her id stays hers on b too: a wildcard claim there loses it.
    let ok = alice.ask(json!({"op":"subscribe","id":2,"topics":["news"]}));
    assert_eq!(ok["type"], "ok", "{ok}");
    // (Node a routes her id all along: connected, then parked.)
    drop(alice);
    let mut dave = b.ws();
    let ok = dave.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let (frames, _) = dave.until_close();
    assert!(
        frames.iter().any(|f| f["code"] == "client_id_taken"),
        "dave is told: {frames:?}"
    );
}

/// A node embedded in an application (tokio, in this process), on `nats`.
fn embedded(rt: &tokio::runtime::Runtime, nats: &Nats, name: &str) -> tidings_tokio::Server {
    let mut config = tidings_adapter::ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..tidings_adapter::ServerConfig::default()
    };
    config.cluster.nats = Some(nats.url());
    config.cluster.node = Some(name.to_owned());
    rt.block_on(tidings_tokio::serve(config))
        .expect("the embedded node serves")
}

/// A native client on an embedded node that identifies as `client_id`.
fn client_on(server: &tidings_tokio::Server, client_id: &str) -> common::Ws {
    let stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut ws = common::Ws::open(stream, server.addr(), &[]);
    let ok = ws.ask(json!({"op":"identify","id":1,"client_id":client_id}));
    assert_eq!(ok["type"], "ok", "{ok}");
    ws
}

/// Answers every server request `ws` gets with `"<client id>:<data>"`, until it closes.
fn answering(mut ws: common::Ws, client_id: &'static str) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Ok(tungstenite::Message::Text(text)) = ws.ws.read() {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "request" {
                let data = format!("{client_id}:{}", frame["data"].as_str().unwrap_or("?"));
                ws.send(json!({"op":"reply","id":frame["id"],"data":data}));
            }
        }
    })
}

fn name(s: &str) -> tidings_core::Name {
    tidings_core::Name::parse("name", s, 128).unwrap()
}

#[test]
fn server_requests_reach_a_client_id_and_a_rooms_members_on_every_node() {
    let Some(nats) = Nats::start() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let a = embedded(&rt, &nats, "a");
    let b = embedded(&rt, &nats, "b");
    let c = node("async-std", &nats, "c", &[]);
    let text = |s: &str| tidings_core::Payload::text(s.to_owned()).unwrap();
    let ask_alice = |hub: &tidings_adapter::Hub, data: &str| {
        rt.block_on(hub.request_client(
            name("alice"),
            name("confirm"),
            text(data),
            Some(Duration::from_secs(10)),
        ))
    };

    // Alice is connected to node c (async-std); node b's application asks her. Node c
    // subscribes to her id's subject a moment after her `ok`: until then, `no_recipient`.
    let mut alice = c.ws();
    let ok = alice.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let alice = answering(alice, "alice");
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        match ask_alice(b.hub(), "pay 5?") {
            Err(e) if e.code == tidings_core::ErrorCode::NoRecipient => {
                assert!(Instant::now() < deadline, "alice on node c never reachable");
            }
            other => break other,
        }
    };
    assert_eq!(
        answer.map(|p| p.as_str().to_owned()),
        Ok("alice:pay 5?".into())
    );

    // A client on node a asks node a's handler, which asks alice on node c: the answer comes
    // back to the client that asked.
    let hub = a.hub().clone();
    a.hub().on("ask-alice", move |_conn, payload| {
        let hub = hub.clone();
        async move {
            hub.request_client(name("alice"), name("confirm"), payload, None)
                .await
        }
    });
    let mut bob = client_on(&a, "bob");
    let answer = bob.ask(json!({"op":"request","id":5,"event":"ask-alice","data":"ship it?"}));
    assert_eq!(
        (answer["type"].as_str(), answer["data"].as_str()),
        (Some("ok"), Some("alice:ship it?")),
        "{answer}"
    );

    // Nobody holds the id on any node: `no_recipient`, at once.
    let started = Instant::now();
    let refused = rt.block_on(
        a.hub()
            .request_client(name("nobody"), name("e"), text("?"), None),
    );
    assert_eq!(
        refused.map_err(|e| e.code),
        Err(tidings_core::ErrorCode::NoRecipient)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A room with members on nodes a and b: every member's answer, and `timeout` for the one
    // that does not answer.
    let carol = client_on(&b, "carol");
    let dave = client_on(&a, "dave");
    let eve = client_on(&a, "eve");
    for (server, ws) in [(&b, &carol), (&a, &dave), (&a, &eve)] {
        let conn = tidings_core::ConnId(ws.welcome["conn"].as_u64().unwrap());
        assert_eq!(rt.block_on(server.hub().join(conn, name("jury"))), Ok(true));
    }
    let (carol, dave) = (answering(carol, "carol"), answering(dave, "dave"));
    let answers = rt
        .block_on(a.hub().request_room(
            name("jury"),
            name("vote"),
            text("guilty?"),
            Some(Duration::from_secs(2)),
        ))
        .expect("the room's answers");
    let mut shown: Vec<(String, String)> = answers
        .iter()
        .map(|answer| {
            let who = answer.client_id.as_ref().map_or("-", |n| n.as_str());
            let what = match &answer.result {
                Ok(p) => p.as_str().to_owned(),
                Err(e) => e.code.as_str().to_owned(),
            };
            (who.to_owned(), what)
        })
        .collect();
    shown.sort();
    let expected = [
        ("carol", "carol:guilty?"),
        ("dave", "dave:guilty?"),
        ("eve", "timeout"),
    ]
    .map(|(w, a)| (w.to_owned(), a.to_owned()));
    assert_eq!(shown, expected);
    // Stopping the nodes closes the answering clients' connections.
    drop((eve, bob, a, b, c));
    rt.shutdown_background();
    for client in [alice, carol, dave] {
        client.join().unwrap();
    }
}

#[test]
fn in_process_subscribers_of_an_embedded_node_receive_and_resume_cursors_of_another_node() {
    use futures_util::StreamExt as _;
    let Some(nats) = Nats::start() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let a = embedded(&rt, &nats, "a");
    let b = node("async-std", &nats, "b", &[]);
    let publish = |data: &str| {
        let resp = b.request("POST", "/publish?topic=orders.eu", &[], data.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.body);
        let answer: Value = serde_json::from_str(&resp.body).unwrap();
        answer["id"]
            .as_str()
            .unwrap()
            .parse::<tidings_core::Cursor>()
            .unwrap()
    };
    let next = |sub: &mut tidings_adapter::Subscription| match rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(15), sub.next()).await })
    {
        Ok(Some(tidings_adapter::Received::Event {
            cursor, payload, ..
        })) => (cursor, payload.as_str().to_owned()),
        other => panic!("an event, not {other:?}"),
    };
    // A cursor node b handed out; an in-process subscription of node a from it.
    let start = publish("zero");
    let pattern = tidings_core::Pattern::parse("orders.>", Default::default()).unwrap();
    let mut live = a
        .hub()
        .subscribe(vec![pattern.clone()], Some(start))
        .unwrap();
    let published: Vec<_> = (1..=20)
        .map(|i| {
            let data = format!("order {i}");
            (publish(&data), data)
        })
        .collect();
    let received: Vec<_> = (0..20).map(|_| next(&mut live)).collect();
    assert_eq!(
        received, published,
        "node b's events, in its order, on node a"
    );
    // Resumed from the tenth event's cursor: exactly the ten after it.
    let mut resumed = a
        .hub()
        .subscribe(vec![pattern], Some(published[9].0))
        .unwrap();
    let received: Vec<_> = (0..10).map(|_| next(&mut resumed)).collect();
    assert_eq!(received, published[10..]);
    drop((live, resumed, a, b));
    rt.shutdown_background();
}

/// The next presence notice a WebSocket watcher gets (other frames are skipped).
fn next_notice(watcher: &mut common::Ws) -> Value {
    loop {
        let frame = watcher.recv();
        if frame["type"] == "presence" {
            return frame;
        }
    }
}

fn notice(action: &str, client_id: Option<&str>) -> Value {
    let mut v = json!({"type":"presence","topic":"chat.room1","action":action});
    if let Some(id) = client_id {
        v["client_id"] = json!(id);
    }
    v
}

#[test]
fn a_presence_watcher_sees_joins_and_leaves_on_every_node() {
    let Some(nats) = Nats::start() else { return };
    let a = node("tokio", &nats, "a", &[]);
    let b = node("async-std", &nats, "b", &[]);
    let mut c = node("tokio", &nats, "c", &[]);
    // dave on b is there before the watch: in its starting presence, not in a notice.
    let mut dave = b.ws();
    let ok = dave.ask(json!({"op":"identify","id":1,"client_id":"dave"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = dave.ask(json!({"op":"subscribe","id":2,"topics":["chat.>"]}));
    assert_eq!(ok["type"], "ok", "{ok}");

    let mut watcher = a.ws();
    let ok = watcher.ask(json!({"op":"presence","id":1,"topic":"chat.room1","watch":true}));
    assert_eq!(
        ok["data"],
        json!({"topic":"chat.room1","connections":1,"anonymous":0,
               "clients":[{"client_id":"dave","connections":1}],"truncated":false,"nodes":3}),
        "{ok}"
    );
    let mut sse = a.sse("/sse?presence=chat.room1", &[]);
    let start: Value = serde_json::from_str(&sse.next_event().data).unwrap();
    assert_eq!(start["connections"], 1, "{start}");

    // Joins on b and c reach the watchers on a, in each node's order.
    let mut alice = b.ws();
    let ok = alice.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = alice.ask(json!({"op":"subscribe","id":2,"topics":["chat.*"]}));
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(next_notice(&mut watcher), notice("join", Some("alice")));
    let mut bob = c.ws();
    let ok = bob.ask(json!({"op":"identify","id":1,"client_id":"bob"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let ok = bob.ask(json!({"op":"subscribe","id":2,"topics":["chat.room1"]}));
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(next_notice(&mut watcher), notice("join", Some("bob")));
    let mut anonymous = c.sse("/sse?topic=chat.%3E", &[]);
    assert!(anonymous.fill(), "opened, so subscribed");
    assert_eq!(next_notice(&mut watcher), notice("join", None));

    // Leaves: an unsubscribe on b, a connection gone on c.
    let ok = alice.ask(json!({"op":"unsubscribe","id":3,"topics":["chat.*"]}));
    assert_eq!(ok["type"], "ok", "{ok}");
    assert_eq!(next_notice(&mut watcher), notice("leave", Some("alice")));
    drop(bob);
    assert_eq!(next_notice(&mut watcher), notice("leave", Some("bob")));
    // The SSE watcher got the same, in the same order.
    let seen: Vec<Value> = (0..5)
        .map(|_| serde_json::from_str(&sse.next_event().data).unwrap())
        .collect();
    let actions: Vec<(&str, Option<&str>)> = seen
        .iter()
        .map(|n| (n["action"].as_str().unwrap(), n["client_id"].as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("join", Some("alice")),
            ("join", Some("bob")),
            ("join", None),
            ("leave", Some("alice")),
            ("leave", Some("bob")),
        ]
    );

    // A node started after the watch learns of it (a hears it anew and tells it its watched
    // topics): a join on d reaches the watcher once d knows. Until then d relays nothing (a
    // connection that subscribed before may later leave without a join: docs/CLUSTER.md).
    let d = node("async-std", &nats, "d", &[]);
    watcher
        .ws
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let joined = 'attempts: loop {
        assert!(Instant::now() < deadline, "d never relayed a join");
        let mut eve = d.ws();
        let ok = eve.ask(json!({"op":"identify","id":1,"client_id":"eve"}));
        assert_eq!(ok["type"], "ok", "{ok}");
        let ok = eve.ask(json!({"op":"subscribe","id":2,"topics":["chat.room1"]}));
        assert_eq!(ok["type"], "ok", "{ok}");
        while let Ok(message) = watcher.ws.read() {
            let tungstenite::Message::Text(text) = message else {
                continue;
            };
            let got: Value = serde_json::from_str(&text).unwrap();
            if got["action"] == "join" {
                break 'attempts (got, eve);
            }
        }
        // Not yet (d did not know of the watch when eve subscribed): another connection.
    };
    assert_eq!(joined.0, notice("join", Some("eve")));
    watcher.ws.get_ref().set_read_timeout(None).unwrap();
    drop(joined.1);
    assert_eq!(next_notice(&mut watcher), notice("leave", Some("eve")));

    // Stopping the last watch on a: the other nodes stop relaying (nothing more arrives; the
    // pong comes first).
    let ok = watcher.ask(json!({"op":"presence","id":2,"topic":"chat.room1","watch":false}));
    assert_eq!(ok["type"], "ok", "{ok}");
    drop(sse);
    c.terminate();
    drop(dave);
    watcher.send(json!({"op":"ping","id":3}));
    assert_eq!(watcher.recv()["type"], "pong");
}

/// A publish through `server`, sent again until it is answered with a cursor (NATS may still
/// be coming back); each attempt has its own data, so one answered `unavailable` but stored
/// anyway is a distinct event.
fn publish_when_up(server: &Server, topic: &str, data: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let data = format!("{data}#{attempt}");
        if let Outcome::Stored(cursor) = try_publish(server.addr, topic, &data) {
            return (cursor, data);
        }
        assert!(Instant::now() < deadline, "no publish answered: {data}");
    }
    unreachable!()
}

/// The next frame that is not the server's ping (answered, as a client does).
fn next_frame(ws: &mut common::Ws) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "only pings for 30 s");
        let frame = ws.recv();
        if frame["type"] != "ping" {
            return frame;
        }
        ws.send(json!({"op":"pong"}));
    }
}

/// Every `(cursor, data)` seen by any client: a cursor must never name two events.
#[derive(Default)]
struct Named(std::collections::HashMap<String, String>);

impl Named {
    fn saw(&mut self, cursor: &str, data: &str) {
        let before = self
            .0
            .entry(cursor.to_owned())
            .or_insert_with(|| data.to_owned());
        assert_eq!(before, data, "the cursor {cursor} named two events");
    }
}

#[test]
fn a_replicas_1_stream_that_lost_its_tail_gives_an_epoch_gap_and_never_reuses_a_cursor() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let a = node("tokio", &nats, "a", &[]);
    let mut named = Named::default();
    let mut ws = a.ws();
    let ok = ws.ask(json!({"op":"subscribe","id":1,"topics":["t.>"]}));
    assert_eq!(ok["type"], "ok", "{ok}");
    // What the store keeps: three events.
    let mut kept = Vec::new();
    for i in 0..3 {
        let data = format!("kept {i}");
        let cursor = a.publish("t.a", &data);
        let ev = next_frame(&mut ws);
        assert_eq!(ev["cursor"].as_str(), Some(cursor.as_str()), "{ev}");
        named.saw(&cursor, &data);
        kept.push(data);
    }
    let (old_epoch, _) = seq_of(&named.0.keys().next().unwrap().clone());

    // A copy of the store now (what an unclean stop of a replicas = 1 server leaves behind).
    nats.stop();
    let copy = nats.copy_store();
    nats.restart();
    // Three more, delivered; the client holds a cursor past the copy.
    let mut lost = Vec::new();
    for i in 0..3 {
        lost.push(publish_when_up(&a, "t.a", &format!("lost {i}")));
    }
    let mut held = String::new();
    while !lost.iter().all(|(c, _)| named.0.contains_key(c)) {
        let ev = next_frame(&mut ws);
        assert_eq!(ev["type"], "event", "{ev}");
        let (cursor, data) = (ev["cursor"].as_str().unwrap(), ev["data"].as_str().unwrap());
        assert!(data.starts_with("lost "), "{ev}");
        named.saw(cursor, data);
        held = cursor.to_owned();
    }
    let (_, held_seq) = seq_of(&held);
    assert!(held_seq > 3, "{held}");

    // The server comes back with the copy: the same stream, without its tail.
    nats.stop();
    nats.restore_store(&copy);
    nats.restart();

    // The live subscriber: an epoch gap from where it was, then exactly the stream's events.
    let gap = next_frame(&mut ws);
    assert_eq!(
        (
            gap["type"].as_str(),
            gap["reason"].as_str(),
            gap["from"].as_str()
        ),
        (Some("gap"), Some("epoch"), Some(held.as_str())),
        "{gap}"
    );
    let mut new_epoch = String::new();
    for (i, data) in kept.iter().enumerate() {
        let ev = next_frame(&mut ws);
        let cursor = ev["cursor"].as_str().unwrap_or_default();
        let (epoch, seq) = seq_of(cursor);
        assert_ne!(epoch, old_epoch, "a new epoch: {ev}");
        assert_eq!(
            (seq, ev["data"].as_str()),
            (i as u64 + 1, Some(data.as_str())),
            "{ev}"
        );
        named.saw(cursor, data);
        new_epoch = epoch;
    }
    // New publishes: cursors of the new epoch, after the stream's end.
    let (cursor, data) = publish_when_up(&a, "t.b", "new a");
    let (epoch, seq) = seq_of(&cursor);
    assert_eq!(epoch, new_epoch, "{cursor}");
    assert!(seq > 3, "{cursor}");
    let ev = next_frame(&mut ws);
    assert_eq!(
        (ev["cursor"].as_str(), ev["data"].as_str()),
        (Some(cursor.as_str()), Some(data.as_str())),
        "{ev}"
    );
    named.saw(&cursor, &data);
    let mut stream: Vec<(String, String)> = kept
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("{new_epoch}-{}", i + 1), d.clone()))
        .collect();
    stream.push((cursor, data));

    // A node started now takes the same epoch; old cursors resume with the notice on both.
    let b = node("async-std", &nats, "b", &[]);
    let mut live = b.sse("/sse?topic=t.%3E", &[]);
    for (server, from) in [(&a, &lost[0].0), (&b, &held), (&b, &lost[1].0)] {
        let mut resumed = server.sse("/sse?topic=t.%3E", &[("Last-Event-ID", from)]);
        let ev = resumed.next_event();
        assert_eq!(ev.event_type, "tidings-gap", "{ev:?}");
        assert!(ev.data.contains("\"reason\":\"epoch\""), "{}", ev.data);
        for (cursor, data) in &stream {
            let ev = resumed.next_event();
            assert_eq!(
                (&ev.last_event_id, &ev.data),
                (cursor, data),
                "resuming from {from} on {}",
                server.runtime
            );
            named.saw(&ev.last_event_id, &ev.data);
        }
    }
    let (cursor, data) = publish_when_up(&b, "t.c", "new b");
    assert_eq!(seq_of(&cursor).0, new_epoch, "{cursor}");
    let ev = live.next_event();
    assert_eq!((&ev.last_event_id, &ev.data), (&cursor, &data));
    let ev = next_frame(&mut ws);
    assert_eq!(ev["cursor"].as_str(), Some(cursor.as_str()), "{ev}");
    named.saw(&cursor, &data);
}

#[test]
fn an_epoch_marker_outlives_the_retention_so_a_node_started_later_takes_the_same_epoch() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let small = ["--set", "retention.max_events=20"];
    let a = node("tokio", &nats, "a", &small);
    let (old_epoch, _) = seq_of(&a.publish("t.a", "kept"));
    nats.stop();
    let copy = nats.copy_store();
    nats.restart();
    // Answered once this node delivered it: its head is past the copy.
    let (lost, _) = publish_when_up(&a, "t.a", "lost");
    nats.stop();
    nats.restore_store(&copy);
    nats.restart();
    // Whether it comes before or after the node noticed the loss, the answer is the new epoch.
    let (first_new, _) = publish_when_up(&a, "t.a", "new");
    let (new_epoch, _) = seq_of(&first_new);
    assert_ne!(new_epoch, old_epoch, "{first_new}");
    // Enough to evict the marker, slowly enough for the 2 s watch to copy it in time.
    for round in 0..5 {
        for i in 0..5 {
            let cursor = a.publish("t.a", &format!("more {round}.{i}"));
            assert_eq!(seq_of(&cursor).0, new_epoch, "{cursor}");
        }
        std::thread::sleep(Duration::from_millis(2500));
    }
    let c = node("async-std", &nats, "c", &small);
    let cursor = c.publish("t.a", "from c");
    assert_eq!(seq_of(&cursor).0, new_epoch, "{cursor}");
    let mut resumed = c.sse("/sse?topic=t.%3E", &[("Last-Event-ID", &lost)]);
    let ev = resumed.next_event();
    assert_eq!(ev.event_type, "tidings-gap", "{ev:?}");
    assert!(ev.data.contains("\"reason\":\"epoch\""), "{}", ev.data);
}
