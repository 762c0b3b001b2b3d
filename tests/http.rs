//! The HTTP layer as clients meet it, end to end against the `tidings` binary on both runtimes:
//! keep-alive and pipelining on one connection, request bodies that arrive slowly or never,
//! malformed and oversized `Content-Length`s, memory that an announced body does not take,
//! HTTP/2 by prior knowledge, the per-address connection limit and the idle timeout of a
//! keep-alive connection.
//!
//! Raw `TcpStream`s where the bytes on the wire matter; third-party clients where a user's
//! client is the point: curl (keep-alive across `--next`, `--http2-prior-knowledge`), and
//! Python's sseclient-py over requests and httpx with h2 (`tests/interop/*.py`, installed by
//! `scripts/setup-python.sh` into `tests/interop/.venv`). A test whose client is missing prints
//! why it skips; with `TIDINGS_REQUIRE_INTEROP=1` (set by CI) that is a failure.
//!
//! Nothing sleeps to wait for something that can be awaited; the sleeps that are here space out
//! what a client sends. Reads have timeouts so that a failure fails fast instead of hanging.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidings_core::Cursor;

mod common;
use common::*;

// ---- helpers -----------------------------------------------------------------------------------

/// One HTTP/1.1 connection used for several requests: each response is read exactly (its head,
/// then its body by `Content-Length` or to its last chunk), nothing of the next.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(server: &Server) -> Self {
        let stream = server.connect();
        stream.set_nodelay(true).unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream.write_all(bytes).expect("the request is sent");
        stream.flush().unwrap();
    }

    fn line(&mut self, raw: &mut Vec<u8>) {
        let n = self
            .reader
            .read_until(b'\n', raw)
            .expect("the response arrives");
        assert!(
            n > 0,
            "the connection ended in a response: {:?}",
            String::from_utf8_lossy(raw)
        );
    }

    /// The next response; a `1xx` is returned alone (it has no body, the final answer follows).
    fn response(&mut self) -> Resp {
        let mut raw = Vec::new();
        while !raw.ends_with(b"\r\n\r\n") {
            self.line(&mut raw);
        }
        let head = Resp::parse(&raw);
        if head.status / 100 == 1 {
            return head;
        }
        if head.is_chunked() {
            loop {
                let start = raw.len();
                self.line(&mut raw);
                let size_line = String::from_utf8_lossy(&raw[start..]).into_owned();
                let size = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("not a chunk size: {size_line:?}"));
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let start = raw.len();
                        self.line(&mut raw);
                        if raw[start..] == *b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let start = raw.len();
                raw.resize(start + size + 2, 0);
                self.reader
                    .read_exact(&mut raw[start..])
                    .expect("the chunk arrives");
            }
        } else if let Some(length) = head.header("content-length") {
            let start = raw.len();
            raw.resize(start + length.parse::<usize>().expect("a length"), 0);
            self.reader
                .read_exact(&mut raw[start..])
                .expect("the body arrives");
        }
        Resp::parse(&raw)
    }

    /// How long until the server closes the connection (end of stream, or a reset), or `None`
    /// if it is still open after `within`. Data instead of the end fails the test.
    fn closed_within(&mut self, within: Duration) -> Option<Duration> {
        assert!(
            self.reader.buffer().is_empty(),
            "unread data: {:?}",
            String::from_utf8_lossy(self.reader.buffer())
        );
        let start = Instant::now();
        let stream = self.reader.get_mut();
        stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 512];
        let closed = match stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => panic!(
                "data instead of the end: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("reading: {e}"),
        };
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        closed.then(|| start.elapsed())
    }
}

/// `POST /publish?topic=<topic>` with `body`, keeping the connection open.
fn publish_request(server: &Server, topic: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /publish?topic={topic} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    )
    .into_bytes()
}

fn get_request(server: &Server, target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).into_bytes()
}

/// The cursor a successful publish answered.
fn published(resp: &Resp) -> Cursor {
    assert_eq!(resp.status, 200, "{}", resp.body);
    let json: Value = serde_json::from_str(&resp.body).expect("a JSON answer");
    json["id"]
        .as_str()
        .expect("an id")
        .parse()
        .expect("a cursor")
}

fn interop_script(name: &str) -> String {
    format!("{}/tests/interop/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmData`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
        .trim()
        .parse()
        .unwrap()
}

// ---- keep-alive and pipelining -----------------------------------------------------------------

/// 50 publishes on one connection: each answered on it (no `Connection: close`), with
/// increasing cursors, and a subscriber gets all 50 in order.
#[test]
fn fifty_publishes_on_one_keep_alive_connection() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut sse = server.sse("/sse?topic=ka", &[]);
        assert_eq!(sse.head.status, 200);
        let mut conn = Conn::open(&server);
        let mut cursors = Vec::new();
        for n in 0..50 {
            conn.send(&publish_request(&server, "ka", &format!("event {n}")));
            let resp = conn.response();
            assert_eq!(resp.header("connection"), None, "[{rt}] publish {n}");
            let cursor = published(&resp);
            if let Some(last) = cursors.last() {
                assert!(cursor > *last, "[{rt}] {cursor} after {last}");
            }
            cursors.push(cursor);
        }
        for (n, cursor) in cursors.iter().enumerate() {
            let event = sse.next_event();
            assert_eq!(event.data, format!("event {n}"), "[{rt}]");
            assert_eq!(event.last_event_id, cursor.to_string(), "[{rt}]");
        }
    });
}

/// curl publishing three times in one invocation (`--next`) connects once.
#[test]
fn curl_reuses_its_connection_across_publishes() {
    if !curl_or_skip() {
        return;
    }
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut sse = server.sse("/sse?topic=curl", &[]);
        let url = format!("http://{}/publish?topic=curl", server.addr);
        let mut args = Vec::new();
        for (n, data) in ["x", "y", "z"].iter().enumerate() {
            if n > 0 {
                args.push("--next");
            }
            args.extend([
                "--silent",
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code} %{num_connects}\\n",
                "--data",
                data,
                &url,
            ]);
        }
        let out = curl(&args).unwrap_or_else(|e| panic!("curl {args:?}: {e}"));
        // num_connects: the connections this transfer had to open.
        assert_eq!(out, "200 1\n200 0\n200 0\n", "[{rt}]");
        for data in ["x", "y", "z"] {
            assert_eq!(sse.next_event().data, data, "[{rt}]");
        }
    });
}

/// Three requests in one write: three answers, in order, and the last one's `Connection:
/// close` is honoured.
#[test]
fn pipelined_requests_are_answered_in_order() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut sse = server.sse("/sse?topic=pipe", &[]);
        let mut conn = Conn::open(&server);
        let last = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        );
        let requests = [
            get_request(&server, "/healthz"),
            publish_request(&server, "pipe", "piped"),
            last.into_bytes(),
        ]
        .concat();
        conn.send(&requests);
        let first = conn.response();
        assert_eq!((first.status, first.body.as_str()), (200, "ok\n"), "[{rt}]");
        let cursor = published(&conn.response());
        let third = conn.response();
        assert_eq!((third.status, third.body.as_str()), (200, "ok\n"), "[{rt}]");
        assert_eq!(third.header("connection"), Some("close"), "[{rt}]");
        assert!(
            conn.closed_within(Duration::from_secs(5)).is_some(),
            "[{rt}] the connection stayed open after Connection: close"
        );
        let event = sse.next_event();
        assert_eq!(event.data, "piped", "[{rt}]");
        assert_eq!(event.last_event_id, cursor.to_string(), "[{rt}]");
    });
}

// ---- request bodies ----------------------------------------------------------------------------

/// A body sent in three pieces 100 ms apart (with `Content-Length`, then chunked) is published
/// whole; a body that never arrives gets `408 timeout` after `http.read_timeout`, and nothing
/// is published.
#[test]
fn slow_bodies_are_read_as_they_arrive_within_the_read_timeout() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &["--set", "http.read_timeout=\"1s\""]);
        let mut sse = server.sse("/sse?topic=slow", &[]);
        let head = |framing: &str| {
            format!(
                "POST /publish?topic=slow HTTP/1.1\r\nHost: {}\r\n{framing}\r\n\r\n",
                server.addr
            )
        };
        let pause = Duration::from_millis(100);

        let mut conn = Conn::open(&server);
        conn.send(head("Content-Length: 9").as_bytes());
        for piece in ["abc", "def", "ghi"] {
            thread::sleep(pause);
            conn.send(piece.as_bytes());
        }
        let cursor = published(&conn.response());
        let event = sse.next_event();
        assert_eq!(event.data, "abcdefghi", "[{rt}]");
        assert_eq!(event.last_event_id, cursor.to_string(), "[{rt}]");

        // Chunked, on the same (kept-alive) connection.
        conn.send(head("Transfer-Encoding: chunked").as_bytes());
        for chunk in ["3\r\njkl\r\n", "3\r\nmno\r\n", "3\r\npqr\r\n0\r\n\r\n"] {
            thread::sleep(pause);
            conn.send(chunk.as_bytes());
        }
        let cursor = published(&conn.response());
        let event = sse.next_event();
        assert_eq!(event.data, "jklmnopqr", "[{rt}]");
        assert_eq!(event.last_event_id, cursor.to_string(), "[{rt}]");

        // Two bytes of five, then nothing.
        let mut conn = Conn::open(&server);
        let start = Instant::now();
        conn.send(head("Content-Length: 5").as_bytes());
        conn.send(b"ab");
        let resp = conn.response();
        let waited = start.elapsed();
        assert_eq!(resp.status, 408, "[{rt}] {}", resp.body);
        assert_eq!(resp.error_code(), "timeout", "[{rt}]");
        assert!(
            (Duration::from_millis(900)..Duration::from_millis(2500)).contains(&waited),
            "[{rt}] the 408 came after {waited:?}, with http.read_timeout 1s"
        );
        // The partial body was not published: the next event is the next publish.
        server.publish("slow", "after");
        assert_eq!(sse.next_event().data, "after", "[{rt}]");
    });
}

/// Two different `Content-Length`s, or `+5`: `400`, the connection closes, nothing is
/// published.
#[test]
fn malformed_content_lengths_get_400_and_the_connection_closes() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut sse = server.sse("/sse?topic=cl", &[]);
        for lengths in [
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: +5",
        ] {
            let mut conn = Conn::open(&server);
            let request = format!(
                "POST /publish?topic=cl HTTP/1.1\r\nHost: {}\r\n{lengths}\r\n\r\nhello!",
                server.addr
            );
            conn.send(request.as_bytes());
            let resp = conn.response();
            assert_eq!(resp.status, 400, "[{rt}] {lengths:?}: {}", resp.body);
            assert!(
                conn.closed_within(Duration::from_secs(5)).is_some(),
                "[{rt}] {lengths:?}: the connection stayed open after the 400"
            );
        }
        server.publish("cl", "after");
        assert_eq!(sse.next_event().data, "after", "[{rt}]");
    });
}

/// A declared `Content-Length` over `limits.max_frame_bytes` is refused at once, before any of
/// the body is sent, and without `100 Continue` to a client that waits for one (as curl does
/// for large uploads).
#[test]
fn a_declared_length_over_the_frame_limit_gets_413_before_the_body() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        for expect in ["", "Expect: 100-continue\r\n"] {
            let mut conn = Conn::open(&server);
            let request = format!(
                "POST /publish?topic=big HTTP/1.1\r\nHost: {}\r\nContent-Length: 1048577\r\n\
                 {expect}\r\n",
                server.addr
            );
            conn.send(request.as_bytes());
            let resp = conn.response();
            assert_eq!(resp.status, 413, "[{rt}] {expect:?}: {}", resp.body);
            assert_eq!(resp.error_code(), "frame_too_large", "[{rt}] {expect:?}");
        }
    });
}

/// 300 connections each announcing a body of `limits.max_frame_bytes` (1 MiB) and sending
/// none: the server reads each head and waits for the bodies without taking their size in
/// memory (a server that allocated the announced length would grow by ~300 MiB).
///
/// `Expect: 100-continue` makes the moment observable: hyper sends `100 Continue` when the
/// server starts reading the body, which is when such a server would allocate.
#[test]
fn announced_bodies_take_no_memory_until_they_arrive() {
    const CONNECTIONS: usize = 300;
    const RSS_LIMIT_MIB: u64 = 64;
    const DATA_LIMIT_MIB: u64 = 128;
    for_each_runtime(|rt| {
        let server = Server::start(rt, &["--set", "limits.max_frame_bytes=1048576"]);
        let pid = server.child.id();
        // Warm up: what a first request allocates once is not the bodies' memory.
        let mut conn = Conn::open(&server);
        for n in 0..10 {
            conn.send(&publish_request(&server, "mem", &n.to_string()));
            published(&conn.response());
        }
        drop(conn);
        let rss_before = proc_status_kib(pid, "VmRSS");
        let data_before = proc_status_kib(pid, "VmData");

        let head = format!(
            "POST /publish?topic=mem HTTP/1.1\r\nHost: {}\r\nContent-Length: 1048576\r\n\
             Expect: 100-continue\r\n\r\n",
            server.addr
        );
        let mut conns: Vec<Conn> = (0..CONNECTIONS).map(|_| Conn::open(&server)).collect();
        for conn in &mut conns {
            conn.send(head.as_bytes());
        }
        for (n, conn) in conns.iter_mut().enumerate() {
            let resp = conn.response();
            assert_eq!(resp.status, 100, "[{rt}] connection {n}: {}", resp.body);
        }
        assert_eq!(server.get("/healthz").status, 200, "[{rt}]");
        let rss_after = proc_status_kib(pid, "VmRSS");
        let data_after = proc_status_kib(pid, "VmData");
        eprintln!(
            "[{rt}] {CONNECTIONS} announced 1 MiB bodies: VmRSS {rss_before} -> {rss_after} KiB, \
             VmData {data_before} -> {data_after} KiB"
        );
        // VmRSS: the memory touched. VmData: the memory allocated, touched or not (a buffer
        // reserved for the announced length and not yet written shows only there).
        for (what, before, after, limit) in [
            ("VmRSS", rss_before, rss_after, RSS_LIMIT_MIB),
            ("VmData", data_before, data_after, DATA_LIMIT_MIB),
        ] {
            let grown_mib = after.saturating_sub(before) / 1024;
            assert!(
                grown_mib < limit,
                "[{rt}] {what} grew by {grown_mib} MiB ({before} -> {after} KiB) for \
                 {CONNECTIONS} bodies that were only announced"
            );
        }
        // The bodies still arrive: one is sent now and published.
        let mut conns = conns.into_iter();
        let mut conn = conns.next().unwrap();
        drop(conns);
        conn.send(&vec![b'x'; 1 << 20]);
        published(&conn.response());
    });
}

// ---- HTTP/2 ------------------------------------------------------------------------------------

/// curl with `--http2-prior-knowledge` gets HTTP/2 on the plain port, and publishes over it.
#[test]
fn curl_speaks_http2_by_prior_knowledge() {
    if !curl_or_skip() {
        return;
    }
    for_each_runtime(|rt| {
        let server = Server::start(rt, &[]);
        let mut sse = server.sse("/sse?topic=h2", &[]);
        let base = format!("http://{}", server.addr);
        let out = curl(&[
            "--http2-prior-knowledge",
            "--write-out",
            "\\n%{http_version}",
            &format!("{base}/healthz"),
        ])
        .unwrap_or_else(|e| panic!("curl: {e}"));
        assert_eq!(out, "ok\n\n2", "[{rt}]");
        let out = curl(&[
            "--http2-prior-knowledge",
            "--write-out",
            "\\n%{http_version} %{http_code}",
            "--data",
            "over h2",
            &format!("{base}/publish?topic=h2"),
        ])
        .unwrap_or_else(|e| panic!("curl: {e}"));
        let (body, version) = out.split_once('\n').expect("two lines");
        assert_eq!(version, "2 200", "[{rt}] {out}");
        let json: Value = serde_json::from_str(body).expect("a JSON answer");
        let event = sse.next_event();
        assert_eq!(event.data, "over h2", "[{rt}]");
        assert_eq!(event.last_event_id, json["id"].as_str().unwrap(), "[{rt}]");
    });
}

/// httpx (with h2) opens 20 SSE streams on one HTTP/2 connection and publishes over it; every
/// stream gets the event. The server allows one connection per address, so a second
/// connection would be refused.
#[test]
fn twenty_sse_streams_share_one_http2_connection() {
    const STREAMS: usize = 20;
    let Some(python) = python_or_skip("sseclient, requests, httpx, h2") else {
        return;
    };
    for_each_runtime(|rt| {
        let server = Server::start(
            rt,
            &[
                "--set",
                "http.max_connections_per_ip=1",
                "--set",
                "http.per_ip_exempt_loopback=false",
                // httpx needs data on its streams to make progress (see the script).
                "--set",
                "timers.keepalive=\"200ms\"",
            ],
        );
        let out = Command::new(&python)
            .args([
                &interop_script("h2_streams.py"),
                &server.addr.to_string(),
                &STREAMS.to_string(),
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("python runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "[{rt}] the httpx client failed ({}):\n{text}",
            out.status
        );
        let result: Value = serde_json::from_str(text.trim()).expect("a JSON line");
        let publish = &result["publish"];
        assert_eq!(publish["status"], 200, "[{rt}] {publish}");
        assert_eq!(publish["http_version"], "HTTP/2", "[{rt}]");
        let answer: Value = serde_json::from_str(publish["body"].as_str().unwrap()).unwrap();
        let streams = result["streams"].as_array().expect("the streams");
        assert_eq!(streams.len(), STREAMS, "[{rt}]");
        for (n, stream) in streams.iter().enumerate() {
            assert_eq!(stream["status"], 200, "[{rt}] stream {n}: {stream}");
            assert_eq!(stream["http_version"], "HTTP/2", "[{rt}] stream {n}");
            assert_eq!(stream["event"]["data"], result["data"], "[{rt}] stream {n}");
            assert_eq!(stream["event"]["id"], answer["id"], "[{rt}] stream {n}");
        }
    });
}

// ---- latency -----------------------------------------------------------------------------------

/// sseclient-py over requests (as its README shows) gets each event within 100 ms of its
/// publish: three events 300 ms apart, each timed on its own.
#[test]
fn sseclient_py_gets_each_event_within_100_ms() {
    const EVENTS: usize = 3;
    let Some(python) = python_or_skip("sseclient, requests, httpx, h2") else {
        return;
    };
    for_each_runtime(|rt| {
        // In memory: the time measured is the delivery's, not a first write's to disk.
        let server = Server::start(rt, &["--memory"]);
        let url = format!("http://{}/sse?topic=latency", server.addr);
        let mut client = Command::new(&python)
            .args(["-u", &interop_script("sseclient_events.py"), &url])
            .arg(EVENTS.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs");
        let (tx, lines) = mpsc::channel();
        let stdout = client.stdout.take().expect("stdout is piped");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let next = |what: &str| -> Value {
            let line = lines
                .recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("[{rt}] no {what} from the sseclient-py client"));
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("[{rt}] {e}: {line:?}"))
        };
        let connected = next("connected line");
        assert_eq!(connected["connected"], 200, "[{rt}] {connected}");
        assert_eq!(connected["transfer_encoding"], "chunked", "[{rt}]");
        let mut late = Vec::new();
        for n in 0..EVENTS {
            if n > 0 {
                thread::sleep(Duration::from_millis(300));
            }
            let data = format!("tick {n}");
            let start = Instant::now();
            let cursor = server.publish("latency", &data);
            let event = next("event");
            let took = start.elapsed();
            assert_eq!(event["data"], data.as_str(), "[{rt}] {event}");
            assert_eq!(event["id"], cursor.as_str(), "[{rt}] {event}");
            eprintln!("[{rt}] event {n}: {took:?} from publish to sseclient-py");
            if took >= Duration::from_millis(100) {
                late.push((n, took));
            }
        }
        let status = client.wait().expect("python ends");
        assert!(status.success(), "[{rt}] the client exited with {status}");
        assert!(
            late.is_empty(),
            "[{rt}] events that took 100 ms or more from publish to sseclient-py: {late:?}"
        );
    });
}

// ---- connection limits and timeouts ------------------------------------------------------------

/// With `http.max_connections_per_ip=3` (and loopback not exempt), three open streams fill
/// the address's share: a fourth connection gets `503 limit_reached` and `Connection: close`;
/// once a stream closes, a request goes through again.
#[test]
fn the_per_address_limit_refuses_with_503_until_a_connection_closes() {
    for_each_runtime(|rt| {
        let server = Server::start(
            rt,
            &[
                "--set",
                "http.max_connections_per_ip=3",
                "--set",
                "http.per_ip_exempt_loopback=false",
            ],
        );
        let mut streams: Vec<Sse> = (0..3).map(|_| server.sse("/sse?topic=lim", &[])).collect();
        for stream in &streams {
            assert_eq!(stream.head.status, 200, "[{rt}] {}", stream.head.body);
        }
        let refused = server.get("/healthz");
        assert_eq!(refused.status, 503, "[{rt}] {}", refused.body);
        assert_eq!(refused.error_code(), "limit_reached", "[{rt}]");
        assert_eq!(refused.header("connection"), Some("close"), "[{rt}]");

        drop(streams.pop());
        // The server notices the close asynchronously: a few tries, of a publish that the
        // remaining streams then get.
        let mut tries = Vec::new();
        let cursor = loop {
            let resp = server.request("POST", "/publish?topic=lim", &[], b"let in");
            tries.push(resp.status);
            if resp.status == 200 {
                break published(&resp);
            }
            assert_eq!(resp.status, 503, "[{rt}] {}", resp.body);
            assert!(
                tries.len() < 100,
                "[{rt}] still refused 5 s after a stream closed: {tries:?}"
            );
            thread::sleep(Duration::from_millis(50));
        };
        eprintln!("[{rt}] answers after the close: {tries:?}");
        for stream in &mut streams {
            let event = stream.next_event();
            assert_eq!(event.data, "let in", "[{rt}]");
            assert_eq!(event.last_event_id, cursor.to_string(), "[{rt}]");
        }
    });
}

/// The server with its log (stderr, at `warn`) in `log`.
fn start_logging_to(rt: &'static str, args: &[&str], log: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            rt,
            "--memory",
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("the tidings binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server prints its address");
    let addr = line.strip_prefix("listening on http://").unwrap().parse();
    Server {
        child,
        addr: addr.unwrap(),
        runtime: rt,
        own_data_dir: None,
    }
}

/// The default `http.max_connections_per_ip` (1,000), applied to loopback by
/// `http.per_ip_exempt_loopback=false` (a test has no other address): 1,000 connections from
/// one address are served (each answers a request, so each holds its place), the 1,001st and
/// 1,002nd get `503 limit_reached` naming the setting; both are counted in
/// `tidings_refused_connections_total{limit="per_ip"}`, and the first is logged at `warn` with
/// what to do behind a proxy, the second not (at most one line per 10 s).
#[test]
fn the_default_per_address_limit_refuses_connection_1001() {
    const DEFAULT: usize = 1000;
    assert_eq!(
        tidings_adapter::config::HttpConfig::default().max_connections_per_ip,
        DEFAULT
    );
    for_each_runtime(|rt| {
        let dir = TempDir::new("log");
        let log = std::path::Path::new(dir.path()).join("stderr");
        let server = start_logging_to(
            rt,
            &[
                "--set",
                "http.per_ip_exempt_loopback=false",
                // Room to open the 1,000 before the first is closed as idle.
                "--set",
                "http.read_timeout=\"120s\"",
            ],
            &log,
        );
        let started = Instant::now();
        let mut held: Vec<Conn> = (0..DEFAULT)
            .map(|n| {
                let mut conn = Conn::open(&server);
                conn.send(&get_request(&server, "/healthz"));
                let resp = conn.response();
                assert_eq!(
                    resp.status,
                    200,
                    "[{rt}] connection {}: {}",
                    n + 1,
                    resp.body
                );
                conn
            })
            .collect();
        eprintln!(
            "[{rt}] {DEFAULT} connections open in {:?}",
            started.elapsed()
        );
        for n in [DEFAULT + 1, DEFAULT + 2] {
            let refused = server.get("/healthz");
            assert_eq!(
                refused.status, 503,
                "[{rt}] connection {n}: {}",
                refused.body
            );
            assert_eq!(refused.error_code(), "limit_reached", "[{rt}]");
            assert_eq!(refused.header("connection"), Some("close"), "[{rt}]");
            assert!(
                refused.body.contains(
                    "1000 connections from 127.0.0.1 are open, the limit per address \
                     (http.max_connections_per_ip)"
                ),
                "[{rt}] {}",
                refused.body
            );
        }
        // Asked on a connection that holds a place.
        let conn = held.last_mut().unwrap();
        conn.send(&get_request(&server, "/metrics"));
        let metrics = conn.response().body;
        let sample = |limit: &str| {
            metric(
                &metrics,
                &format!("tidings_refused_connections_total{{limit=\"{limit}\"}}"),
            )
        };
        assert_eq!(sample("per_ip"), 2, "[{rt}]");
        assert_eq!(sample("max_connections"), 0, "[{rt}]");
        drop(held);
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("refused")).collect();
        assert_eq!(lines.len(), 1, "[{rt}] {text}");
        for expected in [
            "WARN",
            "connection from 127.0.0.1 refused: 1000 connections from that address are open",
            "http.max_connections_per_ip",
            "raise the limit, or set it to 0",
        ] {
            assert!(
                lines[0].contains(expected),
                "[{rt}] {expected:?} in {}",
                lines[0]
            );
        }
    });
}

/// Over `limits.max_connections` (2 here), which applies to loopback too, a connection gets
/// `503 limit_reached` naming that limit, counted apart from the per-address refusals.
#[test]
fn the_server_wide_limit_refuses_and_is_counted_apart() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &["--memory", "--set", "limits.max_connections=2"]);
        let mut held: Vec<Conn> = (0..2)
            .map(|_| {
                let mut conn = Conn::open(&server);
                conn.send(&get_request(&server, "/healthz"));
                assert_eq!(conn.response().status, 200, "[{rt}]");
                conn
            })
            .collect();
        let refused = server.get("/healthz");
        assert_eq!(refused.status, 503, "[{rt}] {}", refused.body);
        assert_eq!(refused.error_code(), "limit_reached", "[{rt}]");
        assert!(
            refused.body.contains("limits.max_connections"),
            "[{rt}] {}",
            refused.body
        );
        let conn = &mut held[0];
        conn.send(&get_request(&server, "/metrics"));
        let metrics = conn.response().body;
        let sample = |limit: &str| {
            metric(
                &metrics,
                &format!("tidings_refused_connections_total{{limit=\"{limit}\"}}"),
            )
        };
        assert_eq!(sample("max_connections"), 1, "[{rt}]");
        assert_eq!(sample("per_ip"), 0, "[{rt}]");
    });
}

/// By default loopback clients are exempt from the per-address limit (a reverse proxy on the
/// same host, local tools): with `http.max_connections_per_ip=2`, five streams from 127.0.0.1
/// are all served, and none is counted as refused.
#[test]
fn loopback_clients_are_exempt_from_the_per_address_limit_by_default() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &["--memory", "--set", "http.max_connections_per_ip=2"]);
        let streams: Vec<Sse> = (0..5).map(|_| server.sse("/sse?topic=lo", &[])).collect();
        for stream in &streams {
            assert_eq!(stream.head.status, 200, "[{rt}] {}", stream.head.body);
        }
        let metrics = server.metrics();
        assert_eq!(
            metric(
                &metrics,
                "tidings_refused_connections_total{limit=\"per_ip\"}"
            ),
            0,
            "[{rt}]"
        );
    });
}

/// With `http.read_timeout=1s`, a keep-alive connection idle after an answer is closed after
/// about a second; an SSE stream idle as long is not.
#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_read_timeout() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &["--set", "http.read_timeout=\"1s\""]);
        let mut sse = server.sse("/sse?topic=idle", &[]);
        let mut idle = Conn::open(&server);
        idle.send(&get_request(&server, "/healthz"));
        let resp = idle.response();
        assert_eq!(resp.status, 200, "[{rt}]");
        assert_eq!(resp.header("connection"), None, "[{rt}]");
        let closed = idle.closed_within(Duration::from_secs(3));
        let closed = closed.unwrap_or_else(|| panic!("[{rt}] still open after 3 s"));
        assert!(
            closed >= Duration::from_millis(700),
            "[{rt}] closed after {closed:?}, with http.read_timeout 1s"
        );
        let cursor = server.publish("idle", "still streaming");
        assert_eq!(sse.next_event().last_event_id, cursor, "[{rt}]");
    });
}

/// With `http.read_timeout=1s`, a connection that sends nothing, or only the start of the
/// HTTP/2 preface, is closed like an idle keep-alive connection (within one to two read
/// timeouts), and so is an HTTP/2 connection with no stream open. (hyper-util's `auto::Builder`
/// reads until it can tell HTTP/1.1 from the HTTP/2 preface with no timer of its own, and
/// hyper's HTTP/2 has no idle timeout: the server's own idle check closes them.)
#[test]
fn a_connection_that_sends_nothing_is_closed_after_the_read_timeout() {
    for_each_runtime(|rt| {
        let server = Server::start(rt, &["--set", "http.read_timeout=\"1s\""]);
        let mut silent = Conn::open(&server);
        let mut partial_preface = Conn::open(&server);
        partial_preface.send(b"PRI * HTTP/2.0\r\n");
        // The whole preface and an empty SETTINGS frame: an HTTP/2 connection, no stream. The
        // server's own SETTINGS (and, at the end, its GOAWAY and PING) are read and dropped; as
        // the PING is not answered, the server closes one more read timeout later: within 3 s
        // at most, 5 s allowed.
        let mut idle_h2 = TcpStream::connect(server.addr).unwrap();
        idle_h2
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .unwrap();
        let start = Instant::now();
        idle_h2
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match idle_h2.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("[{rt}] an idle HTTP/2 connection is still open: {e}"),
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "[{rt}] an idle HTTP/2 connection is still open after 5 s"
            );
        }
        for (what, conn) in [
            ("nothing", &mut silent),
            ("a partial preface", &mut partial_preface),
        ] {
            assert!(
                conn.closed_within(Duration::from_secs(3)).is_some(),
                "[{rt}] a connection that sent {what} is still open after 3 s"
            );
        }
    });
}
