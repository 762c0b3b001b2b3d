//! End-to-end tests of the parity features with gosse, gochan and pubsub-sse over loopback, on
//! both runtimes: `?channel=`, the broadcast topic, extra stream headers and the immediate
//! stream open (gosse); client ids with the reconnect window, takeover and `POST /subscriptions`
//! (gochan); the `tidings-*` notices. The harness is the one of `tests/server.rs`.
//!
//! Every test runs once per runtime in [`RUNTIMES`]. Nothing sleeps to wait for something that
//! can be awaited; reads have timeouts so that a failure fails fast instead of hanging.

#![allow(dead_code, unused_imports)] // the harness is shared with tests/server.rs
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_core::sse::{DecodedEvent, Decoder};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// The runtimes the server can run on; every test runs on each.
const RUNTIMES: &[&str] = &["tokio", "async-std"];

/// How long any single read may take before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

// ---- harness -----------------------------------------------------------------------------------

struct Server {
    child: Child,
    addr: SocketAddr,
    runtime: &'static str,
}

impl Server {
    fn start(runtime: &'static str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--listen", "127.0.0.1:0", "--runtime", runtime])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the tidings binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep the pipe drained
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("[{runtime}] the server did not print its address");
            }
        };
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("a socket address");
        Self {
            child,
            addr,
            runtime,
        }
    }

    /// SIGTERM, then the exit status (within 15 s).
    fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connects");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        stream
    }

    /// A connection whose receive buffer is tiny, so that a client that stops reading stalls
    /// the server's writes quickly instead of after megabytes of kernel buffering.
    fn connect_small_buffer(&self) -> TcpStream {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&self.addr.into()).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream
    }

    /// One HTTP request; the server answers and closes.
    fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut stream = self.connect();
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .expect("the server answers and closes");
        Resp::parse(&raw)
    }

    fn get(&self, target: &str) -> Resp {
        self.request("GET", target, &[], b"")
    }

    /// Publishes text over HTTP; returns the cursor.
    fn publish(&self, topic: &str, body: &str) -> String {
        let resp = self.request(
            "POST",
            &format!("/publish?topic={topic}"),
            &[],
            body.as_bytes(),
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
        let json: Value = serde_json::from_str(&resp.body).unwrap();
        json["id"].as_str().expect("an id").to_owned()
    }

    fn metrics(&self) -> String {
        let resp = self.get("/metrics");
        assert_eq!(resp.status, 200);
        resp.body
    }

    /// Polls `/metrics` until `done` holds (the server reports connections going away
    /// asynchronously; there is no event to wait for from outside).
    fn wait_for_metrics(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = self.metrics();
            if done(&metrics) {
                return metrics;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] {what}:\n{metrics}",
                self.runtime
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn sse(&self, target: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::open(self.connect(), target, headers)
    }

    fn ws(&self) -> Ws {
        Ws::open(self.connect(), self.addr, &[])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric sample line `name value`.
fn metric(metrics: &str, sample: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {sample} in\n{metrics}"))
        .parse()
        .unwrap()
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn parse(raw: &[u8]) -> Self {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(raw) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(raw)
            ),
        };
        Self {
            status: resp.code.unwrap(),
            headers: resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&raw[len..]).into_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let json: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", self.body));
        json["error"]["code"].as_str().expect("a code").to_owned()
    }
}

/// An SSE stream read with the core's decoder.
struct Sse {
    stream: TcpStream,
    decoder: Decoder,
    head: Resp,
}

impl Sse {
    fn open(mut stream: TcpStream, target: &str, headers: &[(&str, &str)]) -> Self {
        let mut head =
            format!("GET {target} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).expect("the response head arrives");
            assert_eq!(n, 1, "the connection ended in the response head: {raw:?}");
            raw.push(byte[0]);
        }
        Self {
            stream,
            decoder: Decoder::new(),
            head: Resp::parse(&raw),
        }
    }

    /// Reads more of the stream; `false` at its end.
    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16 << 10];
        match self.stream.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.decoder.feed(&buf[..n]).expect("a valid event stream");
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("reading the SSE stream: {e}"),
        }
    }

    fn next_event(&mut self) -> DecodedEvent {
        loop {
            if let Some(event) = self.decoder.next_event() {
                return event;
            }
            assert!(self.fill(), "the SSE stream ended");
        }
    }

    /// Every event until the server ends the stream.
    fn until_end(&mut self) -> Vec<DecodedEvent> {
        let mut events = Vec::new();
        loop {
            while let Some(event) = self.decoder.next_event() {
                events.push(event);
            }
            if !self.fill() {
                return events;
            }
        }
    }
}

/// A native-protocol WebSocket client.
struct Ws {
    ws: WebSocket<TcpStream>,
    welcome: Value,
}

impl Ws {
    fn open(stream: TcpStream, addr: SocketAddr, headers: &[(&'static str, &str)]) -> Self {
        let mut request =
            tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/ws"))
                .unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        let (ws, _) = tungstenite::client(request, stream).expect("the handshake succeeds");
        let mut ws = Self {
            ws,
            welcome: Value::Null,
        };
        ws.welcome = ws.recv();
        assert_eq!(ws.welcome["type"], "welcome", "{}", ws.welcome);
        ws
    }

    fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).unwrap();
    }

    fn send_raw(&mut self, message: Message) {
        self.ws.send(message).unwrap();
    }

    /// The next JSON frame (WebSocket control frames are skipped).
    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a frame arrives") {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Sends a frame with id `id` and returns the answer carrying that id (frames in between,
    /// e.g. events, are returned too, before it).
    fn ask(&mut self, frame: Value) -> Value {
        let id = frame["id"].clone();
        self.send(frame);
        loop {
            let answer = self.recv();
            if answer["id"] == id
                && ["ok", "error", "pong"].contains(&answer["type"].as_str().unwrap_or_default())
            {
                return answer;
            }
        }
    }

    /// Reads until the server closes: the JSON frames it sent before, and the close code.
    fn until_close(&mut self) -> (Vec<Value>, Option<CloseCode>) {
        let mut frames = Vec::new();
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => frames.push(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(frame)) => return (frames, frame.map(|f| f.code)),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("timed out waiting for the close; got {frames:?}")
                }
                Err(_) => return (frames, None),
            }
        }
    }
}

fn for_each_runtime(test: impl Fn(&'static str)) {
    for runtime in RUNTIMES {
        eprintln!("runtime: {runtime}");
        test(runtime);
    }
}

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
