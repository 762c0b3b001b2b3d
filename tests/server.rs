//! End-to-end tests of the `tidings` binary over loopback: each test starts the real server
//! (`tidings serve --listen 127.0.0.1:0`), reads the bound address from its first stdout line,
//! talks to it with plain `TcpStream`s (HTTP, SSE read with the core's `sse::Decoder`) and the
//! synchronous `tungstenite` client, and stops it by pid.
//!
//! Every test runs once per runtime in [`RUNTIMES`]. Nothing sleeps to wait for something that
//! can be awaited; reads have timeouts so that a failure fails fast instead of hanging.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Instant;

use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

mod common;
use common::*;

// ---- tests -------------------------------------------------------------------------------------

/// The harness's chunked-body decoder (its SSE streams and answers behind hyper are chunked):
/// data split anywhere across reads, chunk extensions, and the last chunk ending the body.
#[test]
fn the_harness_decodes_chunked_bodies_split_anywhere() {
    let data_chunks = b"5;name=value\r\nhello\r\n1A\r\n, a chunk of 26 bytes.....\r\n";
    let last_chunk = b"0\r\n";
    let body = [&data_chunks[..], last_chunk, b"Trailer: x\r\n\r\n"].concat();
    for split in 1..body.len() {
        let mut chunked = ChunkedDecoder::default();
        let mut data = Vec::new();
        let mut fed = 0;
        for piece in body.chunks(split) {
            data.extend(chunked.feed(piece));
            fed += piece.len();
            assert_eq!(
                chunked.is_done(),
                fed >= data_chunks.len() + last_chunk.len(),
                "split {split}, {fed} bytes fed: the last chunk, and only it, ends the body"
            );
        }
        assert_eq!(data, b"hello, a chunk of 26 bytes.....", "split {split}");
    }
}

#[test]
fn pubsub_over_ws_and_sse_with_wildcards() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut sse = server.sse("/sse?topic=chat.*&topic=news.eu", &[]);
        assert_eq!(sse.head.status, 200);
        assert_eq!(sse.head.header("content-type"), Some("text/event-stream"));
        assert_eq!(sse.head.header("cache-control"), Some("no-cache"));
        assert_eq!(sse.head.header("x-accel-buffering"), Some("no"));
        let mut sub = server.ws();
        let ok = sub.ask(json!({"op":"subscribe","id":1,"topics":["chat.>"]}));
        assert_eq!(ok["type"], "ok", "{ok}");
        let mut publisher = server.ws();

        // Over WebSocket, JSON data, with an event name.
        let ok = publisher.ask(
            json!({"op":"publish","id":7,"topic":"chat.lobby","event":"msg","data":{"text":"hi"}}),
        );
        assert_eq!(ok["type"], "ok", "{ok}");
        let first = ok["cursor"].as_str().unwrap().to_owned();
        // Over HTTP: a deeper topic (chat.> but not chat.*), one SSE-only, one nobody's.
        let deep = server.publish("chat.room.1", "deep");
        let news = server.publish("news.eu", "line1\nline2");
        server.publish("sports.x", "nobody");
        let last = server.publish("chat.lobby", "bye");

        let ev = sse.next_event();
        assert_eq!(
            (
                ev.event_type.as_str(),
                ev.data.as_str(),
                ev.last_event_id.as_str()
            ),
            ("msg", r#"{"text":"hi"}"#, first.as_str())
        );
        let ev = sse.next_event();
        assert_eq!(
            (ev.data.as_str(), ev.last_event_id.as_str()),
            ("line1\nline2", news.as_str())
        );
        let ev = sse.next_event();
        assert_eq!(
            (ev.data.as_str(), ev.last_event_id.as_str()),
            ("bye", last.as_str())
        );

        let got: Vec<Value> = (0..3).map(|_| sub.recv()).collect();
        assert_eq!(got[0]["data"], json!({"text":"hi"}));
        assert_eq!(got[0]["cursor"], first.as_str());
        assert_eq!(got[0]["event"], "msg");
        assert_eq!(
            (got[1]["topic"].as_str(), got[1]["data"].as_str()),
            (Some("chat.room.1"), Some("deep"))
        );
        assert_eq!(got[1]["cursor"], deep.as_str());
        assert_eq!(got[2]["cursor"], last.as_str());
        for frame in &got {
            assert_eq!(frame["type"], "event");
        }
    });
}

/// The server frames WebSocket data itself (not through tungstenite): frames at the edges of
/// each length encoding (7-bit up to 125, 16-bit from 126 to 65,535, 64-bit above) arrive
/// intact and in order.
#[test]
fn events_of_every_websocket_frame_length_arrive_intact() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut sub = server.ws();
        let ok = sub.ask(json!({"op":"subscribe","id":1,"topics":["big"]}));
        assert_eq!(ok["type"], "ok", "{ok}");
        let read_text = |sub: &mut Ws| match sub.ws.read().expect("a frame arrives") {
            Message::Text(text) => text.to_string(),
            other => panic!("unexpected message {other:?}"),
        };
        // The frame around one byte of data: the envelope's size besides data and cursor.
        let cursor = server.publish("big", "x");
        let probe = read_text(&mut sub);
        let envelope = probe.len() - 1 - cursor.len();
        for (i, frame_len) in [125, 126, 127, 65_535, 65_536, 300_000]
            .into_iter()
            .enumerate()
        {
            let data_len = frame_len - envelope - cursor.len();
            let data: String = (0..data_len)
                .map(|j| char::from(b'a' + ((i + j) % 26) as u8))
                .collect();
            let sent = server.publish("big", &data);
            assert_eq!(sent.len(), cursor.len(), "cursors of one width");
            let text = read_text(&mut sub);
            assert_eq!(text.len(), frame_len);
            let event: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(event["cursor"], sent.as_str());
            assert!(
                event["data"] == data.as_str(),
                "the data of a {frame_len}-byte frame differs"
            );
        }
    });
}

#[test]
fn sse_resumes_with_last_event_id_and_query_exactly_after_the_cursor() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let cursors: Vec<String> = (0..5)
            .map(|i| server.publish(if i % 2 == 0 { "a.x" } else { "b.y" }, &format!("e{i}")))
            .collect();
        let check = |sse: &mut Sse| {
            // Exactly the events after cursor 1 on a.* or b.*, in order, then live ones.
            for (i, cursor) in cursors.iter().enumerate().skip(2) {
                let ev = sse.next_event();
                assert_eq!(
                    (ev.data.as_str(), ev.last_event_id.as_str()),
                    (format!("e{i}").as_str(), cursor.as_str())
                );
            }
        };
        let mut by_header = server.sse(
            "/sse?topic=a.*&topic=b.*",
            &[("Last-Event-ID", &cursors[1])],
        );
        check(&mut by_header);
        let mut by_query = server.sse(
            &format!("/sse?topic=a.*&topic=b.*&last_event_id={}", cursors[1]),
            &[],
        );
        check(&mut by_query);
        let live = server.publish("b.z", "live");
        for sse in [&mut by_header, &mut by_query] {
            let ev = sse.next_event();
            assert_eq!(
                (ev.data.as_str(), ev.last_event_id.as_str()),
                ("live", live.as_str())
            );
        }
        // Only one topic: the other topic's missed events are not replayed.
        let mut only_a = server.sse("/sse?topic=a.x", &[("Last-Event-ID", &cursors[0])]);
        let ev = only_a.next_event();
        assert_eq!(ev.data, "e2");
        let ev = only_a.next_event();
        assert_eq!(ev.data, "e4");
        // A bad cursor is refused before streaming.
        let resp = server.get("/sse?topic=a.x&last_event_id=nonsense");
        assert_eq!(resp.status, 400);
        assert_eq!(resp.error_code(), "invalid_cursor");
    });
}

#[test]
fn resuming_past_trimmed_history_gets_a_gap_notice_first() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &["--retention-events", "2"]);
        let cursors: Vec<String> = (0..5)
            .map(|i| server.publish("t.a", &format!("e{i}")))
            .collect();
        let mut sse = server.sse("/sse?topic=t.*", &[("Last-Event-ID", &cursors[0])]);
        let gap = sse.next_event();
        assert_eq!(gap.event_type, "tidings-gap");
        let notice: Value = serde_json::from_str(&gap.data).unwrap();
        assert_eq!(notice["reason"], "evicted");
        assert_eq!(notice["from"], cursors[0].as_str());
        assert_eq!(notice["to"], cursors[2].as_str());
        assert_eq!(gap.last_event_id, cursors[2]);
        for (i, cursor) in cursors.iter().enumerate().skip(3) {
            let ev = sse.next_event();
            assert_eq!(
                (ev.data.as_str(), ev.last_event_id.as_str()),
                (format!("e{i}").as_str(), cursor.as_str())
            );
        }
        // Over WebSocket the same resume gets the same gap frame.
        let mut ws = server.ws();
        ws.send(json!({"op":"subscribe","id":1,"topics":["t.>"],"from":cursors[0]}));
        let frames: Vec<Value> = (0..4).map(|_| ws.recv()).collect();
        assert_eq!(frames[0]["type"], "ok");
        assert_eq!(frames[1]["type"], "gap");
        assert_eq!(frames[1]["to"], cursors[2].as_str());
        assert_eq!(frames[2]["cursor"], cursors[3].as_str());
        assert_eq!(frames[3]["cursor"], cursors[4].as_str());
        let metrics = server.metrics();
        assert_eq!(metric(&metrics, "tidings_gaps_total"), 2);
        assert_eq!(metric(&metrics, "tidings_retained_events"), 2);
    });
}

#[test]
fn publish_answers_and_refusals() {
    for_each_runtime(|rt| {
        let server = Server::start(
            rt,
            &[
                "--max-frame-bytes",
                "1024",
                "--set",
                r#"auth.anonymous={subscribe=[">"],publish=["public.>"]}"#,
                // Any origin, explicitly (the default is the server's own only).
                "--cors-origin",
                "*",
            ],
        );
        let ok = server.request(
            "POST",
            "/publish?topic=public.a&event=note",
            &[("Content-Type", "application/json")],
            br#"{"n":1}"#,
        );
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(ok.header("content-type"), Some("application/json"));
        let id: Value = serde_json::from_str(&ok.body).unwrap();
        assert!(id["id"].as_str().unwrap().contains('-'), "{}", ok.body);

        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8], u16, &'a str);
        let cases: &[Case<'_>] = &[
            ("/publish?topic=public..a", &[], b"x", 400, "invalid_topic"),
            ("/publish", &[], b"x", 400, "bad_field"),
            (
                "/publish?topic=public.a&event=tidings-gap",
                &[],
                b"x",
                400,
                "bad_field",
            ),
            (
                "/publish?topic=public.a",
                &[("Content-Type", "application/json")],
                b"{nope",
                400,
                "bad_field",
            ),
            ("/publish?topic=public.a", &[], b"\xff\xfe", 400, "not_utf8"),
            ("/publish?topic=private.a", &[], b"x", 403, "forbidden"),
            (
                "/publish?topic=public.a",
                &[],
                &[b'x'; 1025],
                413,
                "frame_too_large",
            ),
        ];
        for (target, headers, body, status, code) in cases {
            let resp = server.request("POST", target, headers, body);
            assert_eq!(
                (resp.status, resp.error_code().as_str()),
                (*status, *code),
                "{target}: {}",
                resp.body
            );
            assert_eq!(resp.header("content-type"), Some("application/json"));
        }
        // A declared length over the limit is refused before the body is read.
        let mut stream = server.connect();
        stream
            .write_all(b"POST /publish?topic=public.a HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\nabc")
            .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        assert_eq!(Resp::parse(&raw).status, 413);

        // CORS: preflight and the header on answers.
        let pre = server.request(
            "OPTIONS",
            "/publish",
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
            b"",
        );
        assert_eq!(pre.status, 204);
        assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
        assert!(
            pre.header("access-control-allow-methods")
                .unwrap()
                .contains("POST")
        );
        let resp = server.request(
            "POST",
            "/publish?topic=public.b",
            &[("Origin", "https://app.example")],
            b"x",
        );
        assert_eq!(resp.header("access-control-allow-origin"), Some("*"));

        let metrics = server.metrics();
        assert_eq!(metric(&metrics, "tidings_publishes_total"), 2);
    });
}

#[test]
fn unknown_paths_wrong_methods_health_and_metrics() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let resp = server.get("/nothing");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (404, "not_found")
        );
        assert!(
            resp.body.contains("/sse") && resp.body.contains("/publish"),
            "{}",
            resp.body
        );
        let resp = server.get("/publish");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (405, "method_not_allowed")
        );
        assert_eq!(resp.header("allow"), Some("POST, OPTIONS"));
        let resp = server.request("POST", "/sse", &[], b"x");
        assert_eq!(resp.status, 405);
        assert_eq!(resp.header("allow"), Some("GET, OPTIONS"));
        let resp = server.get("/ws");
        assert_eq!(resp.status, 426, "a plain GET on /ws: {}", resp.body);
        let resp = server.get("/sse");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, "bad_field")
        );
        let resp = server.get("/sse?topic=a..b");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, "invalid_topic")
        );

        let resp = server.get("/healthz");
        assert_eq!((resp.status, resp.body.as_str()), (200, "ok\n"));

        let _sse = server.sse("/sse?topic=x", &[]);
        let _ws = server.ws();
        server.publish("x", "1");
        let metrics = server.wait_for_metrics("one of each connection", |m| {
            m.contains("tidings_connections{transport=\"ws\"} 1")
                && m.contains("tidings_connections{transport=\"sse\"} 1")
        });
        for sample in [
            "tidings_subscriptions 1",
            "tidings_publishes_total 1",
            "tidings_deliveries_total 1",
            "tidings_errors_total{code=\"forbidden\"} 0",
            "# TYPE tidings_bytes_out_total counter",
            "tidings_slow_consumer_closes_total 0",
            "tidings_retained_events 1",
        ] {
            assert!(metrics.contains(sample), "no {sample:?} in\n{metrics}");
        }
    });
}

#[test]
fn oversize_websocket_message_closes_with_1009() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &["--max-frame-bytes", "1024"]);
        let mut ws = server.ws();
        assert_eq!(ws.welcome["limits"]["max_frame_bytes"], 1024);
        let big = format!(
            r#"{{"op":"publish","topic":"a","data":"{}"}}"#,
            "x".repeat(2000)
        );
        ws.send_raw(Message::text(big));
        let (frames, code) = ws.until_close();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["code"], "frame_too_large", "{frames:?}");
        assert_eq!(code, Some(CloseCode::Size));
        let metrics = server.wait_for_metrics("the connection is gone", |m| {
            m.contains("tidings_connections{transport=\"ws\"} 0")
        });
        assert_eq!(
            metric(&metrics, "tidings_errors_total{code=\"frame_too_large\"}"),
            1
        );
    });
}

#[test]
fn malformed_frames_get_errors_and_the_connection_lives() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut ws = server.ws();
        ws.send_raw(Message::text("not json"));
        let error = ws.recv();
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some("bad_frame")),
            "{error}"
        );
        ws.send_raw(Message::binary(&b"[1,2]"[..]));
        assert_eq!(ws.recv()["code"], "bad_frame");
        let answer = ws.ask(json!({"op":"subscribe","id":2,"topics":["a..b"]}));
        assert_eq!(answer["code"], "invalid_topic");
        let answer = ws.ask(json!({"op":"nope","id":3}));
        assert_eq!(answer["code"], "unknown_op");
        // Still alive: ping, and an event still arrives.
        let pong = ws.ask(json!({"op":"ping","id":4}));
        assert_eq!(pong["type"], "pong", "{pong}");
        ws.ask(json!({"op":"subscribe","id":5,"topics":["ok"]}));
        server.publish("ok", "still here");
        assert_eq!(ws.recv()["data"], "still here");
    });
}

#[test]
fn a_stalled_reader_meets_the_slow_consumer_policy_and_stalls_nobody() {
    for_each_runtime(|rt| {
        let server = Server::start(
            rt,
            &[
                "--max-queued-bytes",
                "262144",
                "--slow-consumer-rule",
                "slow.a=disconnect",
                "--set",
                "timers.close_grace=60s",
            ],
        );
        // Enough that each stalled reader's share exceeds what the kernel buffers on the
        // server's side (send buffers autotune up to tcp_wmem's maximum) plus the core's credit.
        let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
            .unwrap_or(4 << 20);
        const SIZE: usize = 32 << 10;
        let n = ((wmem_max + (2 << 20)) / SIZE).clamp(100, 2000);
        let data = "x".repeat(SIZE);

        // Stalled readers: a WebSocket on slow.a (disconnect) and an SSE stream on slow.b
        // (drop and gap, the default). Neither reads until the publisher is done.
        let mut stalled_ws = Ws::open(server.connect_small_buffer(), server.addr, &[]);
        stalled_ws.ask(json!({"op":"subscribe","id":1,"topics":["slow.a"]}));
        let mut stalled_sse = Sse::open(server.connect_small_buffer(), "/sse?topic=slow.b", &[]);

        // A healthy reader of slow.b, reading as fast as it can on its own thread.
        let mut healthy = server.sse("/sse?topic=slow.b", &[]);
        let reader = thread::spawn(move || {
            (0..n)
                .map(|_| healthy.next_event().last_event_id)
                .collect::<Vec<_>>()
        });

        // The publisher sends everything, then collects its acks: none may be held up.
        let mut publisher = server.ws();
        let started = Instant::now();
        for i in 0..2 * n {
            let topic = if i % 2 == 0 { "slow.a" } else { "slow.b" };
            publisher.send(json!({"op":"publish","id":i,"topic":topic,"data":data}));
        }
        let mut cursors_b = Vec::new();
        for i in 0..2 * n {
            let ok = publisher.recv();
            assert_eq!(
                (ok["type"].as_str(), ok["id"].as_u64()),
                (Some("ok"), Some(i as u64)),
                "{ok}"
            );
            if i % 2 == 1 {
                cursors_b.push(ok["cursor"].as_str().unwrap().to_owned());
            }
        }
        eprintln!("published {} events in {:?}", 2 * n, started.elapsed());

        let got = reader.join().expect("the healthy reader got everything");
        assert_eq!(
            got, cursors_b,
            "the healthy reader got every event, in order"
        );

        let metrics = server.metrics();
        assert!(
            metric(&metrics, "tidings_slow_consumer_closes_total") >= 1,
            "{metrics}"
        );

        // The disconnected reader: what was already on its way, then the reason, then close.
        let (frames, code) = stalled_ws.until_close();
        let last = frames.last().expect("frames");
        assert_eq!(last["code"], "slow_consumer", "{last}");
        assert!(frames.len() < n, "it was cut off ({} frames)", frames.len());
        assert_eq!(code, Some(CloseCode::Policy));

        // The drop-and-gap reader: once it reads again it is caught up from the history, in
        // order, nothing twice, nothing lost (all of it is still retained).
        let ids: Vec<String> = (0..n)
            .map(|_| stalled_sse.next_event())
            .map(|e| {
                assert_eq!(e.event_type, "message", "no gap: everything is retained");
                e.last_event_id
            })
            .collect();
        assert_eq!(ids, cursors_b);
    });
}

#[test]
fn two_thousand_connects_and_disconnects_leave_nothing_open() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        for i in 0..2000 {
            if i % 2 == 0 {
                let ws = server.ws();
                drop(ws); // no close handshake: the socket just goes away
            } else {
                let sse = server.sse("/sse?topic=churn.*", &[]);
                assert_eq!(sse.head.status, 200);
            }
        }
        let metrics = server.wait_for_metrics("every connection is closed", |m| {
            m.contains("tidings_connections{transport=\"ws\"} 0")
                && m.contains("tidings_connections{transport=\"sse\"} 0")
        });
        assert_eq!(metric(&metrics, "tidings_subscriptions"), 0);
        assert_eq!(metric(&metrics, "tidings_dead_connections_total"), 0);
        // And it still serves.
        let mut sse = server.sse("/sse?topic=churn.*", &[]);
        server.publish("churn.x", "after");
        assert_eq!(sse.next_event().data, "after");
    });
}

#[test]
fn sigterm_closes_websockets_with_1001_ends_sse_streams_and_exits_0() {
    for_each_runtime(|rt| {
        let mut server = Server::start(rt, &[]);
        let mut ws = server.ws();
        ws.ask(json!({"op":"subscribe","id":1,"topics":["a"]}));
        let mut sse = server.sse("/sse?topic=a", &[]);
        let cursor = server.publish("a", "before");
        assert_eq!(sse.next_event().last_event_id, cursor);
        assert_eq!(ws.recv()["cursor"], cursor.as_str());

        let status = server.terminate();
        assert!(status.success(), "exit status {status:?}");
        let (frames, code) = ws.until_close();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["code"], "shutting_down");
        assert_eq!(code, Some(CloseCode::Away));
        let rest = sse.until_end();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(rest[0].event_type, "tidings-error");
        let error: Value = serde_json::from_str(&rest[0].data).unwrap();
        assert_eq!(error["code"], "shutting_down");
        assert!(
            TcpStream::connect(server.addr).is_err(),
            "no longer listening"
        );
    });
}

#[test]
fn help_documents_the_flags_and_bad_settings_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--runtime",
        "--config",
        "--retention-events",
        "--slow-consumer",
        "--max-frame-bytes",
        "--anonymous",
        "--set",
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--set", "limits.max_frame_byte=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_frame_byte"));
}

/// An HS256 token for the test secret.
fn token(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[test]
fn authentication_accepts_tokens_and_refuses_before_upgrading() {
    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
    for_each_runtime(|rt| {
        let server = Server::start(
            rt,
            &[
                "--anonymous",
                "false",
                "--set",
                &format!("auth.jwt.secret=\"{SECRET}\""),
            ],
        );
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let alice = token(
            SECRET,
            &json!({"sub":"alice","exp":exp,"tidings":{"subscribe":["a.>"],"publish":["a.>"]}}),
        );
        let bearer = format!("Bearer {alice}");

        // Refused before streaming or upgrading.
        let resp = server.get("/sse?topic=a.x");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (401, "unauthorized")
        );
        assert!(resp.header("www-authenticate").is_some());
        let refused = tungstenite::client(format!("ws://{}/ws", server.addr), server.connect());
        match refused {
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                assert_eq!(r.status(), 401);
            }
            other => panic!("expected a 401, got {:?}", other.map(|_| ())),
        }
        let resp = server.request(
            "GET",
            "/sse?topic=a.x",
            &[("Authorization", "Bearer nonsense")],
            b"",
        );
        assert_eq!(resp.status, 401);
        let resp = server.request("GET", "/sse?topic=b.x", &[("Authorization", &bearer)], b"");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (403, "forbidden")
        );
        let resp = server.request(
            "POST",
            "/publish?topic=b.x",
            &[("Authorization", &bearer)],
            b"x",
        );
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (403, "forbidden")
        );

        // Accepted: the header, the query parameter. The token's sub becomes the client id of
        // the first connection that uses it (a client id is held by one connection at a time;
        // the others open without it, silently).
        let mut ws = Ws::open(server.connect(), server.addr, &[("Authorization", &bearer)]);
        let mut by_header = server.sse("/sse?topic=a.*", &[("Authorization", &bearer)]);
        assert_eq!(by_header.head.status, 200);
        let mut by_query = server.sse(&format!("/sse?topic=a.*&token={alice}"), &[]);
        assert_eq!(by_query.head.status, 200);
        let mut sub = Ws::open(server.connect(), server.addr, &[("Authorization", &bearer)]);
        sub.ask(json!({"op":"subscribe","id":1,"topics":["a.>"]}));
        let ok = ws.ask(json!({"op":"publish","id":1,"topic":"a.b","data":1}));
        assert_eq!(ok["type"], "ok", "{ok}");
        let denied = ws.ask(json!({"op":"publish","id":2,"topic":"b.b","data":1}));
        assert_eq!(denied["code"], "forbidden");
        let event = sub.recv();
        assert_eq!(
            (event["from"].as_str(), event["data"].as_u64()),
            (Some("alice"), Some(1))
        );
        let resp = server.request(
            "POST",
            "/publish?topic=a.c",
            &[("Authorization", &bearer)],
            b"two",
        );
        assert_eq!(resp.status, 200);
        for sse in [&mut by_header, &mut by_query] {
            // alice is held by `ws`: the streams go without it, and are not told off for it.
            assert_eq!(sse.next_event().data, "1");
            assert_eq!(sse.next_event().data, "two");
        }
    });
}

/// The npm `eventsource` package (a WHATWG EventSource for Node) reads our streams: named and
/// unnamed events, multi-line data, `id:` as its lastEventId, resuming with `last_event_id`.
#[test]
fn a_third_party_eventsource_client_reads_the_stream() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/eventsource.mjs");
    let modules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/node_modules/eventsource"
    );
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok || !std::path::Path::new(modules).exists() {
        let why = "node or the npm eventsource package is missing (run scripts/setup-interop.sh)";
        assert!(
            std::env::var_os("TIDINGS_REQUIRE_INTEROP").is_none(),
            "TIDINGS_REQUIRE_INTEROP is set but {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let skipped = server.publish("i.a", "before");
        let url = format!(
            "http://{}/sse?topic=i.*&last_event_id={skipped}",
            server.addr
        );
        let mut child = Command::new("node")
            .args([script, &url, "3", "note"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = || -> Value {
            serde_json::from_str(&lines.next().expect("a line").expect("readable")).unwrap()
        };
        assert_eq!(next()["kind"], "open");
        let first = server.publish("i.a", "one\ntwo");
        let resp = server.request(
            "POST",
            "/publish?topic=i.b&event=note",
            &[("Content-Type", "application/json")],
            br#"{"n":2}"#,
        );
        assert_eq!(resp.status, 200);
        let third = server.publish("i.c", "three");
        let events: Vec<Value> = (0..3).map(|_| next()).collect();
        assert_eq!(
            events[0],
            json!({"kind":"event","type":"message","data":"one\ntwo","lastEventId":first})
        );
        assert_eq!(events[1]["type"], "note");
        assert_eq!(events[1]["data"], r#"{"n":2}"#);
        assert_eq!(events[2]["lastEventId"], third.as_str());
        let status = child.wait().unwrap();
        assert!(status.success(), "node exited with {status}");
    });
}

#[test]
fn origin_allow_lists_for_websocket_and_cors() {
    for_each_runtime(|rt| {
        let server = Server::start(
            rt,
            &[
                "--ws-origin",
                "https://good.example",
                "--cors-origin",
                "https://good.example",
            ],
        );
        // WebSocket: a listed origin and no origin (not a browser) are let in, others get 403.
        Ws::open(
            server.connect(),
            server.addr,
            &[("Origin", "https://good.example")],
        );
        Ws::open(server.connect(), server.addr, &[]);
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/ws",
            server.addr
        ))
        .unwrap();
        request
            .headers_mut()
            .insert("Origin", "https://evil.example".parse().unwrap());
        match tungstenite::client(request, server.connect()) {
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                assert_eq!(r.status(), 403);
            }
            other => panic!("expected a 403, got {:?}", other.map(|_| ())),
        }
        // CORS: the listed origin is echoed with credentials; another is refused.
        let sse = server.sse("/sse?topic=x", &[("Origin", "https://good.example")]);
        assert_eq!(sse.head.status, 200);
        assert_eq!(
            sse.head.header("access-control-allow-origin"),
            Some("https://good.example")
        );
        assert_eq!(
            sse.head.header("access-control-allow-credentials"),
            Some("true")
        );
        let resp = server.request(
            "GET",
            "/sse?topic=x",
            &[("Origin", "https://evil.example")],
            b"",
        );
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (403, "origin_not_allowed")
        );
        let resp = server.request(
            "POST",
            "/publish?topic=x",
            &[("Origin", "https://evil.example")],
            b"x",
        );
        assert_eq!(resp.status, 403);
        // The server's own origin is allowed besides the listed ones.
        let own = server.own_origin();
        Ws::open(server.connect(), server.addr, &[("Origin", &own)]);
        let sse = server.sse("/sse?topic=x", &[("Origin", &own)]);
        assert_eq!(sse.head.header("access-control-allow-origin"), Some(&*own));
        let pre = server.request(
            "OPTIONS",
            "/sse",
            &[
                ("Origin", "https://good.example"),
                ("Access-Control-Request-Headers", "last-event-id"),
            ],
            b"",
        );
        assert_eq!(pre.status, 204);
        assert_eq!(
            pre.header("access-control-allow-headers"),
            Some("last-event-id")
        );
        assert_eq!(
            pre.header("access-control-allow-methods"),
            Some("GET, OPTIONS")
        );
    });
}

/// Opens a WebSocket on `path` from a page of `origin` (any of the server's protocols; nothing
/// is read after the upgrade).
fn upgrades(server: &Server, path: &str, origin: &str) -> bool {
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}{path}",
        server.addr
    ))
    .unwrap();
    request
        .headers_mut()
        .insert("Origin", origin.parse().unwrap());
    match tungstenite::client(request, server.connect()) {
        Ok(_) => true,
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            assert_eq!(r.status(), 403, "{path} from {origin}");
            false
        }
        Err(e) => panic!("{path} from {origin}: {e:?}"),
    }
}

/// Issue 16: by default a page of another site cannot use a server on the developer's machine
/// (read topics through CORS, publish, open a WebSocket); the server's own pages (the demo
/// page) and clients that are not browser pages (no `Origin`) can.
#[test]
fn browser_origins_default_to_the_servers_own() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let own = server.own_origin();
        let evil = "https://evil.example";
        // Another port of the same host is another origin.
        let other_port = "http://127.0.0.1:1";

        // WebSocket: refused before the upgrade, with the usual JSON refusal, on every endpoint.
        for path in ["/ws", "/ws/bus", "/etp"] {
            for origin in [evil, other_port] {
                let resp = server.refused_upgrade(path, &[("Origin", origin)]);
                assert_eq!(
                    (resp.status, resp.error_code().as_str()),
                    (403, "origin_not_allowed"),
                    "{path} from {origin}: {}",
                    resp.body
                );
            }
            assert!(upgrades(&server, path, &own), "{path} from {own}");
        }
        let same = Ws::open(server.connect(), server.addr, &[("Origin", &own)]);
        assert_eq!(same.welcome["type"], "welcome");
        Ws::open(server.connect(), server.addr, &[]);

        // CORS: a page of another site gets 403 and no Access-Control-Allow-Origin; the same
        // origin gets its origin back; a client without Origin gets no CORS headers.
        let resp = server.request("GET", "/sse?topic=x", &[("Origin", evil)], b"");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (403, "origin_not_allowed")
        );
        assert_eq!(resp.header("access-control-allow-origin"), None);
        let sse = server.sse("/sse?topic=x", &[("Origin", &own)]);
        assert_eq!(sse.head.status, 200);
        assert_eq!(sse.head.header("access-control-allow-origin"), Some(&*own));
        let sse = server.sse("/sse?topic=x", &[]);
        assert_eq!(sse.head.status, 200);
        assert_eq!(sse.head.header("access-control-allow-origin"), None);

        // A cross-site form post needs no preflight: the server itself must refuse it.
        for path in ["/publish?topic=x", "/subscriptions?client_id=c"] {
            let resp = server.request("POST", path, &[("Origin", evil)], b"x");
            assert_eq!(
                (resp.status, resp.header("access-control-allow-origin")),
                (403, None),
                "{path}"
            );
        }
        let pre = server.request(
            "OPTIONS",
            "/publish",
            &[("Origin", evil), ("Access-Control-Request-Method", "POST")],
            b"",
        );
        assert_eq!(pre.status, 403);
        assert_eq!(pre.header("access-control-allow-origin"), None);
        let pre = server.request(
            "OPTIONS",
            "/publish",
            &[("Origin", &own), ("Access-Control-Request-Method", "POST")],
            b"",
        );
        assert_eq!(pre.status, 204);
        assert_eq!(pre.header("access-control-allow-origin"), Some(&*own));
        let resp = server.request("POST", "/publish?topic=x", &[("Origin", &own)], b"x");
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(resp.header("access-control-allow-origin"), Some(&*own));
        server.publish("x", "no origin");

        // Only the two publishes that were allowed happened; /metrics needs no token by default.
        let metrics = server.get("/metrics");
        assert_eq!(metrics.status, 200);
        assert_eq!(metric(&metrics.body, "tidings_publishes_total"), 2);
    });
}

/// `"*"` allows any origin, explicitly; each WebSocket endpoint follows its own list (`/etp`:
/// `etp.origins`, not `http.ws_origins`).
#[test]
fn a_star_allows_any_origin() {
    for_each_runtime(|rt| {
        let evil = "https://evil.example";
        let server = Server::start(rt, &["--ws-origin", "*", "--cors-origin", "*"]);
        assert!(upgrades(&server, "/ws", evil));
        assert!(upgrades(&server, "/ws/bus", evil));
        assert!(!upgrades(&server, "/etp", evil), "etp.origins is still []");
        let sse = server.sse("/sse?topic=x", &[("Origin", evil)]);
        assert_eq!(sse.head.status, 200);
        assert_eq!(sse.head.header("access-control-allow-origin"), Some("*"));
        assert_eq!(sse.head.header("access-control-allow-credentials"), None);
        let resp = server.request("POST", "/publish?topic=x", &[("Origin", evil)], b"x");
        assert_eq!(resp.status, 200, "{}", resp.body);

        let server = Server::start(rt, &["--set", r#"etp.origins=["*"]"#]);
        assert!(upgrades(&server, "/etp", evil));
        assert!(
            !upgrades(&server, "/ws", evil),
            "http.ws_origins is still []"
        );
    });
}

#[test]
fn metrics_can_require_a_token() {
    for_each_runtime(|rt| {
        let dir = TempDir::new("metrics-token");
        let file = dir.0.join("token");
        std::fs::write(&file, "s3cret-metrics-token\n").unwrap();
        let server = Server::start(rt, &["--metrics-token-file", file.to_str().unwrap()]);
        let none = server.get("/metrics");
        assert_eq!(
            (none.status, none.error_code().as_str()),
            (401, "unauthorized"),
            "{}",
            none.body
        );
        assert!(
            none.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer")),
            "{:?}",
            none.headers
        );
        for wrong in [
            "Bearer s3cret-metrics-toke",
            "Bearer s3cret-metrics-token2",
            "Bearer ",
            "Basic czNjcmV0LW1ldHJpY3MtdG9rZW4=",
            "s3cret-metrics-token",
        ] {
            let resp = server.request("GET", "/metrics", &[("Authorization", wrong)], b"");
            assert_eq!(
                (resp.status, resp.error_code().as_str()),
                (401, "unauthorized"),
                "{wrong}"
            );
            assert!(resp.header("www-authenticate").is_some(), "{wrong}");
        }
        let right = server.request(
            "GET",
            "/metrics",
            &[("Authorization", "Bearer s3cret-metrics-token")],
            b"",
        );
        assert_eq!(right.status, 200, "{}", right.body);
        assert!(
            right.body.contains("tidings_publishes_total"),
            "{}",
            right.body
        );
        // Only /metrics.
        assert_eq!(server.get("/healthz").status, 200);
        server.publish("x", "y");

        // Inline, in the configuration.
        let server = Server::start(rt, &["--set", r#"http.metrics_token="abc""#]);
        assert_eq!(server.get("/metrics").status, 401);
        let right = server.request("GET", "/metrics", &[("Authorization", "bearer abc")], b"");
        assert_eq!(right.status, 200, "{}", right.body);
    });
}

#[test]
fn sigterm_right_after_start_is_a_clean_exit() {
    for_each_runtime(|rt| {
        for _ in 0..3 {
            let mut server = Server::start(rt, &[]);
            let status = server.terminate();
            assert!(status.success(), "exit status {status:?}");
        }
    });
}

/// Query values are percent-decoded strictly: one that is not UTF-8 (`%FF`, `%FE`) is refused
/// with `400 not_utf8` naming the parameter, wherever it is read, instead of becoming U+FFFD (which
/// would make `%FE` and `%FF` one topic). Percent-encoded UTF-8 works as before.
#[test]
fn query_values_that_are_not_utf8_are_refused() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let cases: &[(&str, &str, &str)] = &[
            ("GET", "/sse?topic=%FF", "topic"),
            ("GET", "/sse?channel=a%FE", "channel"),
            ("GET", "/sse?topic=a&client_id=u%C3", "client_id"),
            ("GET", "/sse?topic=a&last_event_id=%FF-1", "last_event_id"),
            ("GET", "/sse?topic=a&token=%FF", "token"),
            ("POST", "/publish?topic=%FE", "topic"),
            ("POST", "/publish?topic=a&event=%FF", "event"),
            ("POST", "/subscriptions?client_id=%FF&add=a", "client_id"),
            ("POST", "/subscriptions?client_id=u&add=%FF", "add"),
            ("GET", "/ws?x=%FF", "x"),
            ("GET", "/ws/bus?x=%FE", "x"),
            ("GET", "/etp?x=%FF", "x"),
            ("GET", "/presence?topic=%FF", "topic"),
        ];
        for (method, target, param) in cases {
            if target.starts_with("/sse") {
                // The head first: a stream would not end, and the test would wait for it.
                let sse = server.sse(target, &[]);
                assert_eq!(sse.head.status, 400, "{target}: a stream started");
            }
            let resp = server.request(method, target, &[], b"x");
            assert_eq!(
                (resp.status, resp.error_code().as_str()),
                (400, "not_utf8"),
                "{method} {target}: {}",
                resp.body
            );
            assert!(
                resp.body.contains(&format!("\\\"{param}\\\"")),
                "{target}: the message names {param}: {}",
                resp.body
            );
        }
        // Nothing was published or subscribed by the refused requests.
        let metrics = server.metrics();
        assert_eq!(metric(&metrics, "tidings_publishes_total"), 0);
        // Percent-encoded UTF-8 names still work, both ways.
        let mut sse = server.sse("/sse?topic=caf%C3%A9.%E2%9C%93", &[]);
        assert_eq!(sse.head.status, 200);
        let id = server.publish("caf%C3%A9.%E2%9C%93", "ok");
        let ev = sse.next_event();
        assert_eq!(
            (ev.data.as_str(), ev.last_event_id.as_str()),
            ("ok", id.as_str())
        );
    });
}

/// A client frame with a masking key of 1, 2, 3, 4 (RFC 6455 §5.3).
fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1u8, 2, 3, 4];
    let mut frame = vec![first];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Opens a WebSocket on `path` with the tungstenite client, whose own frames are then bypassed.
fn raw_websocket(server: &Server, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let url = format!("ws://{}{path}", server.addr);
    let (ws, _) = tungstenite::client(url, server.connect()).expect("the handshake succeeds");
    ws
}

/// Writes `bytes` to the socket under `ws`, then reads until the server closes: the text frames
/// before the close, and the close code.
fn violate(ws: &mut tungstenite::WebSocket<TcpStream>, bytes: &[u8]) -> (Vec<String>, Option<u16>) {
    ws.get_mut().write_all(bytes).unwrap();
    let mut texts = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => texts.push(text.to_string()),
            Ok(Message::Close(frame)) => return (texts, frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(e) => panic!("no close frame (a bare TCP close?): {e}; got {texts:?}"),
        }
    }
}

/// RFC 6455 §7.1.7: a client that breaks the framing rules gets the `protocol_error` error frame
/// and close code 1002, not a bare TCP close; on every WebSocket endpoint.
#[test]
fn websocket_protocol_violations_close_with_1002() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let violations: &[(&str, Vec<u8>)] = &[
            ("an unmasked frame", vec![0x81, 2, b'{', b'}']),
            ("RSV1 set", masked_frame(0x80 | 0x40 | 0x1, b"{}")),
            ("reserved opcode 3", masked_frame(0x80 | 0x3, b"{}")),
            ("reserved control opcode 0xB", masked_frame(0x80 | 0xB, b"")),
            ("a 126-byte ping", masked_frame(0x80 | 0x9, &[b'p'; 126])),
            ("a fragmented ping", masked_frame(0x9, b"p")),
            ("a stray continuation", masked_frame(0x80, b"x")),
            (
                "a text frame inside a fragmented message",
                [masked_frame(0x1, b"{"), masked_frame(0x81, b"}")].concat(),
            ),
            ("a close frame of one byte", masked_frame(0x80 | 0x8, b"x")),
            (
                "HTTP after the upgrade",
                b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
        ];
        for (what, bytes) in violations {
            let mut ws = Ws::open(server.connect(), server.addr, &[]);
            let (texts, code) = violate(&mut ws.ws, bytes);
            assert_eq!(code, Some(1002), "{what}: {texts:?}");
            assert_eq!(texts.len(), 1, "{what}: one error frame: {texts:?}");
            let error: Value = serde_json::from_str(&texts[0]).unwrap();
            assert_eq!(
                (error["type"].as_str(), error["code"].as_str()),
                (Some("error"), Some("protocol_error")),
                "{what}: {error}"
            );
            assert!(error.get("id").is_none(), "{what}: {error}");
        }
        let metrics = server.wait_for_metrics("the connections are gone", |m| {
            m.contains("tidings_connections{transport=\"ws\"} 0")
        });
        assert_eq!(
            metric(&metrics, "tidings_errors_total{code=\"protocol_error\"}"),
            violations.len() as u64
        );
        // The other WebSocket endpoints close the same way.
        for path in ["/ws/bus", "/etp"] {
            let mut ws = raw_websocket(&server, path);
            let (_, code) = violate(&mut ws, &masked_frame(0x80 | 0x3, b"x"));
            assert_eq!(code, Some(1002), "{path}");
        }
        // The edges that are allowed: a 125-byte ping is answered, and the connection lives.
        let mut ws = Ws::open(server.connect(), server.addr, &[]);
        ws.ws
            .get_mut()
            .write_all(&masked_frame(0x80 | 0x9, &[b'p'; 125]))
            .unwrap();
        loop {
            match ws.ws.read().expect("a frame arrives") {
                Message::Pong(payload) => {
                    assert_eq!(&payload[..], &[b'p'; 125][..]);
                    break;
                }
                Message::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let pong = ws.ask(json!({"op":"ping","id":1}));
        assert_eq!(pong["type"], "pong", "{pong}");
    });
}

/// A client that never reads (a WebSocket, then an SSE stream): once the kernel's buffers are
/// full, the server's write to it blocks; after `http.write_timeout` it is dropped, logged and
/// counted in `/metrics` (`tidings_write_timeouts_total`), on both runtimes. The broker's credit is raised so that it
/// keeps handing frames out (the slow-consumer policy would otherwise stop them first).
#[test]
fn a_client_that_does_not_read_is_dropped_at_the_write_timeout_and_counted() {
    for_each_runtime(|rt| {
        let server = Server::start(
            rt,
            &[
                "--set",
                "http.write_timeout=\"1s\"",
                "--set",
                "limits.max_queued_bytes=67108864",
            ],
        );
        let before = metric(&server.metrics(), "tidings_write_timeouts_total");
        let mut stuck = Ws::open(server.connect_small_buffer(), server.addr, &[]);
        let ok = stuck.ask(json!({"op":"subscribe","id":1,"topic":"big"}));
        assert_eq!(ok["type"], "ok", "{ok}");
        // ~12 MB: more than the kernel's socket buffers on both sides take.
        let body = "x".repeat(60_000);
        for _ in 0..200 {
            server.publish("big", &body);
        }
        let metrics = server.wait_for_metrics("the stuck client is dropped and counted", |m| {
            metric(m, "tidings_write_timeouts_total") > before
        });
        assert_eq!(metric(&metrics, "tidings_write_timeouts_total"), before + 1);
        drop(stuck);

        // The same for an SSE stream that is never read.
        let stream = Sse::open(server.connect_small_buffer(), "/sse?topic=big2", &[]);
        for _ in 0..200 {
            server.publish("big2", &body);
        }
        let metrics = server.wait_for_metrics("the stuck stream is dropped and counted", |m| {
            metric(m, "tidings_write_timeouts_total") > before + 1
        });
        assert_eq!(metric(&metrics, "tidings_write_timeouts_total"), before + 2);
        drop(stream);
    });
}

/// What one HTTP publish got from a server that is shutting down.
#[derive(Debug, PartialEq, Eq)]
enum ShutdownOutcome {
    /// `200`: published.
    Published,
    /// `503 shutting_down` with `Retry-After`.
    Refused,
    /// The connection was refused: nothing was sent.
    NotConnected,
    /// The request was written and nothing came back (a reset, or the end of the stream).
    Unanswered(String),
}

/// One publish on a new connection, read to its end.
fn publish_during_shutdown(addr: std::net::SocketAddr, n: usize) -> ShutdownOutcome {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return ShutdownOutcome::NotConnected;
    };
    let body = format!("event {n}");
    let request = format!(
        "POST /publish?topic=drain.a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return ShutdownOutcome::Unanswered(format!("writing: {e}"));
    }
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        if raw.is_empty() {
            return ShutdownOutcome::Unanswered(format!("reading: {e}"));
        }
    }
    if raw.is_empty() {
        return ShutdownOutcome::Unanswered("no answer".to_owned());
    }
    let resp = Resp::parse(&raw);
    match resp.status {
        200 => ShutdownOutcome::Published,
        503 if resp.header("retry-after").is_some() => ShutdownOutcome::Refused,
        _ => ShutdownOutcome::Unanswered(format!("{} {}", resp.status, resp.body)),
    }
}

#[test]
fn at_sigterm_every_publish_written_gets_an_answer() {
    for_each_runtime(|rt| {
        let mut server = Server::start(rt, &[]);
        let addr = server.addr;
        // 64 publishers, each a new connection per publish, until the server is gone.
        let publishers: Vec<_> = (0..64)
            .map(|p| {
                thread::spawn(move || {
                    let mut outcomes = Vec::new();
                    for n in 0.. {
                        let outcome = publish_during_shutdown(addr, p * 1_000_000 + n);
                        let done = outcome == ShutdownOutcome::NotConnected;
                        outcomes.push(outcome);
                        if done {
                            break;
                        }
                    }
                    outcomes
                })
            })
            .collect();
        // Publishes flow, then the shutdown starts in the middle of them.
        server.wait_for_metrics("publishes flow", |m| {
            metric(m, "tidings_publishes_total") >= 500
        });
        let status = server.terminate();
        assert!(status.success(), "[{rt}] exit status {status:?}");
        let outcomes: Vec<ShutdownOutcome> = publishers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect();
        let unanswered: Vec<&ShutdownOutcome> = outcomes
            .iter()
            .filter(|o| matches!(o, ShutdownOutcome::Unanswered(_)))
            .collect();
        let count = |o: &ShutdownOutcome| outcomes.iter().filter(|x| *x == o).count();
        eprintln!(
            "[{rt}] published {}, refused with 503 {}, not connected {}, unanswered {}",
            count(&ShutdownOutcome::Published),
            count(&ShutdownOutcome::Refused),
            count(&ShutdownOutcome::NotConnected),
            unanswered.len()
        );
        assert!(
            unanswered.is_empty(),
            "[{rt}] publishes written and never answered: {unanswered:?}"
        );
    });
}

#[test]
fn presence_over_http_and_the_native_protocol() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut alice = server.ws();
        let ok = alice.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
        assert_eq!(ok["type"], "ok", "{ok}");
        let ok = alice.ask(json!({"op":"subscribe","id":2,"topics":["chat.*"]}));
        assert_eq!(ok["type"], "ok", "{ok}");
        let mut sse = server.sse("/sse?topic=chat.%3E", &[]);
        // Its first bytes (the `retry:` field) come once the broker opened it, subscribed.
        assert!(sse.fill());
        let resp = server.get("/presence?topic=chat.room1");
        assert_eq!(resp.status, 200, "{}", resp.body);
        let got: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(
            got,
            json!({"topic":"chat.room1","connections":2,"anonymous":1,
                   "clients":[{"client_id":"alice","connections":1}],"truncated":false,"nodes":1})
        );
        // The same from a client, over WebSocket.
        let answer = alice.ask(json!({"op":"presence","id":3,"topic":"chat.room1"}));
        assert_eq!(answer["data"], got, "{answer}");
        // Another topic: nobody.
        let resp = server.get("/presence?topic=news.x");
        let got: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(got["connections"], 0);
        // A pattern is not a topic; no topic at all is a clear 400.
        let resp = server.get("/presence?topic=chat.*");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, "invalid_topic")
        );
        let resp = server.get("/presence");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, "bad_field")
        );
    });
}

#[test]
fn presence_notices_over_websocket_and_sse() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        // A WebSocket watcher: answered with the presence it starts from.
        let mut watcher = server.ws();
        let ok = watcher.ask(json!({"op":"presence","id":1,"topic":"chat.room1","watch":true}));
        assert_eq!(ok["data"]["connections"], 0, "[{rt}] {ok}");
        // An SSE watcher: its first `presence` event is the presence, without an id.
        let mut sse = server.sse("/sse?presence=chat.room1", &[]);
        assert_eq!(sse.head.status, 200, "[{rt}]");
        let ev = sse.next_event();
        assert_eq!(ev.event_type, "presence", "[{rt}] {ev:?}");
        let start: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(
            (start["topic"].as_str(), start["connections"].as_u64()),
            (Some("chat.room1"), Some(0)),
            "[{rt}] {start}"
        );

        let mut alice = server.ws();
        let ok = alice.ask(json!({"op":"identify","id":1,"client_id":"alice"}));
        assert_eq!(ok["type"], "ok", "[{rt}] {ok}");
        let ok = alice.ask(json!({"op":"subscribe","id":2,"topics":["chat.*"]}));
        assert_eq!(ok["type"], "ok", "[{rt}] {ok}");
        let join =
            json!({"type":"presence","topic":"chat.room1","action":"join","client_id":"alice"});
        assert_eq!(watcher.recv(), join, "[{rt}]");
        let ev = sse.next_event();
        assert_eq!(
            (ev.event_type.as_str(), ev.last_event_id.as_str()),
            ("presence", ""),
            "[{rt}] not retained: no id"
        );
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(
            data,
            json!({"topic":"chat.room1","action":"join","client_id":"alice"}),
            "[{rt}]"
        );

        // alice's connection goes: a leave for both watchers.
        drop(alice);
        let leave =
            json!({"type":"presence","topic":"chat.room1","action":"leave","client_id":"alice"});
        assert_eq!(watcher.recv(), leave, "[{rt}]");
        let data: Value = serde_json::from_str(&sse.next_event().data).unwrap();
        assert_eq!(data["action"], "leave", "[{rt}] {data}");

        // Stopped: answered, then nothing for later changes (a ping's pong comes next).
        let ok = watcher.ask(json!({"op":"presence","id":2,"topic":"chat.room1","watch":false}));
        assert_eq!(ok, json!({"type":"ok","id":2}), "[{rt}]");
        let mut anon = server.ws();
        let ok = anon.ask(json!({"op":"subscribe","id":1,"topic":"chat.room1"}));
        assert_eq!(ok["type"], "ok", "[{rt}] {ok}");
        watcher.send(json!({"op":"ping","id":3}));
        let pong = watcher.recv();
        assert_eq!(pong["type"], "pong", "[{rt}] no notice before it: {pong}");
        // The SSE watcher still watches: the anonymous join.
        let data: Value = serde_json::from_str(&sse.next_event().data).unwrap();
        assert_eq!(
            data,
            json!({"topic":"chat.room1","action":"join"}),
            "[{rt}]"
        );

        // A pattern is refused at connect, as a topic parameter would be.
        let resp = server.get("/sse?presence=chat.*");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (400, "invalid_topic"),
            "[{rt}]"
        );

        // Watching needs the right to subscribe to the topic: 403 at connect, forbidden on
        // WebSocket.
        let limited = Server::start(rt, &["--set", r#"auth.anonymous={subscribe=["public.>"]}"#]);
        let resp = limited.get("/sse?topic=public.a&presence=secret.room");
        assert_eq!(
            (resp.status, resp.error_code().as_str()),
            (403, "forbidden"),
            "[{rt}] {}",
            resp.body
        );
        let mut ws = limited.ws();
        let refused = ws.ask(json!({"op":"presence","id":1,"topic":"secret.room","watch":true}));
        assert_eq!(refused["code"], "forbidden", "[{rt}] {refused}");
        let ok = ws.ask(json!({"op":"presence","id":2,"topic":"public.room","watch":true}));
        assert_eq!(ok["type"], "ok", "[{rt}] {ok}");
    });
}
