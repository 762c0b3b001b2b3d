//! The harness of the end-to-end tests of the `tidings` binary (`tests/server.rs`,
//! `tests/sse_parity.rs`, ...): each test starts the real server (`tidings serve --listen
//! 127.0.0.1:0`), reads the bound address from its first stdout line, talks to it with plain
//! `TcpStream`s (HTTP, SSE read with the core's `sse::Decoder`) and the synchronous `tungstenite`
//! client, and stops it by pid. Reads have timeouts so that a failure fails fast instead of
//! hanging.
//!
//! The raw clients work with a server that closes after each answer and with one that keeps
//! connections alive and sends chunked bodies (hyper): requests read to the end send
//! `Connection: close`, and chunked bodies are de-chunked.
#![allow(dead_code)] // each test file uses a part of the harness

mod chunked;
mod nats;
pub use chunked::ChunkedDecoder;
#[allow(unused_imports)] // only the cluster tests use it
pub use nats::Nats;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidings_core::sse::{DecodedEvent, Decoder};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// The runtimes the server can run on; every test runs on each.
pub const RUNTIMES: &[&str] = &["tokio", "async-std"];

/// The HS256 secret of the tests that use tokens (`--set auth.jwt.secret=...`).
pub const JWT_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// A token for client id `sub`, valid for an hour, granting every topic and direct messages.
pub fn token_for(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "sub": sub,
        "exp": exp,
        "tidings": {"subscribe": [">"], "publish": [">"], "direct": true},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// How long any single read may take before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

// ---- harness -----------------------------------------------------------------------------------

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub runtime: &'static str,
    /// The data directory the harness made for it (removed when it stops), unless the test
    /// chose one (`--data-dir`) or `--memory`.
    pub own_data_dir: Option<TempDir>,
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tidings-test-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    pub fn start(runtime: &'static str, args: &[&str]) -> Self {
        Self::start_on(runtime, "127.0.0.1:0", args)
    }

    /// A server listening on `listen` (a restart on the address of a server that has exited).
    pub fn start_on(runtime: &'static str, listen: &str, args: &[&str]) -> Self {
        // Each server its own data directory: servers run in parallel, and one directory is
        // one server's (a lock file).
        let own_data_dir = (!args.iter().any(|a| *a == "--data-dir" || *a == "--memory"))
            .then(|| TempDir::new("data"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidings"));
        command
            .args(["serve", "--listen", listen, "--runtime", runtime])
            .args(args);
        if let Some(dir) = &own_data_dir {
            command.args(["--data-dir", dir.path()]);
        }
        let mut child = command
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
            .or_else(|| line.strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("a socket address");
        Self {
            child,
            addr,
            runtime,
            own_data_dir,
        }
    }

    /// SIGKILL: the process ends at once, as in a crash.
    pub fn kill9(&mut self) {
        self.child.kill().expect("the server can be killed");
        self.child.wait().expect("wait works");
    }

    /// SIGTERM, then the exit status (within 15 s).
    pub fn terminate(&mut self) -> ExitStatus {
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

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connects");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        stream
    }

    /// A connection whose receive buffer is tiny, so that a client that stops reading stalls
    /// the server's writes quickly instead of after megabytes of kernel buffering.
    pub fn connect_small_buffer(&self) -> TcpStream {
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

    /// One HTTP request, with `Connection: close` unless `headers` has a Connection header: the
    /// server answers and closes.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut stream = self.connect();
        // The Host a client of this address sends (a browser page of the server's own origin
        // sends `Origin: http://<the same>`).
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        push_headers(&mut head, headers);
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

    pub fn get(&self, target: &str) -> Resp {
        self.request("GET", target, &[], b"")
    }

    /// Publishes text over HTTP; returns the cursor.
    pub fn publish(&self, topic: &str, body: &str) -> String {
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

    pub fn metrics(&self) -> String {
        let resp = self.get("/metrics");
        assert_eq!(resp.status, 200);
        resp.body
    }

    /// Polls `/metrics` until `done` holds (the server reports connections going away
    /// asynchronously; there is no event to wait for from outside).
    pub fn wait_for_metrics(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
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

    pub fn sse(&self, target: &str, headers: &[(&str, &str)]) -> Sse {
        Sse::open(self.connect(), target, headers)
    }

    pub fn ws(&self) -> Ws {
        Ws::open(self.connect(), self.addr, &[])
    }

    /// `http://<its address>`: the `Origin` of a page the server itself serves.
    pub fn own_origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A WebSocket upgrade request to `path` with these extra headers, answered without
    /// upgrading (a refusal: its status, headers and JSON body).
    pub fn refused_upgrade(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut stream = self.connect();
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            self.addr
        );
        // A second Connection field (`Upgrade, close`), so that the server closes after refusing.
        push_headers(&mut head, headers);
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // The head first: an upgraded connection would not end.
        let mut raw = read_response_head(&mut stream);
        assert_ne!(
            Resp::parse(&raw).status,
            101,
            "{path} {headers:?} was upgraded"
        );
        stream
            .read_to_end(&mut raw)
            .expect("the server answers and closes");
        Resp::parse(&raw)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds `headers` to a request head, and `Connection: close` unless one of them is a Connection
/// header (a keep-alive server would not end a connection read to its end otherwise).
fn push_headers(head: &mut String, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
    {
        head.push_str("Connection: close\r\n");
    }
}

/// Reads an HTTP response head byte by byte (nothing of the body: an upgraded connection or a
/// stream would not end).
pub fn read_response_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("the response head arrives");
        assert_eq!(n, 1, "the connection ended in the response head: {raw:?}");
        raw.push(byte[0]);
    }
    raw
}

/// The value of a metric sample line `name value`.
pub fn metric(metrics: &str, sample: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {sample} in\n{metrics}"))
        .parse()
        .unwrap()
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// A response head and what followed it, de-chunked if the head says
    /// `Transfer-Encoding: chunked`.
    pub fn parse(raw: &[u8]) -> Self {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(raw) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(raw)
            ),
        };
        let mut parsed = Self {
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
            body: String::new(),
        };
        let body = if parsed.is_chunked() {
            ChunkedDecoder::default().feed(&raw[len..])
        } else {
            raw[len..].to_vec()
        };
        parsed.body = String::from_utf8_lossy(&body).into_owned();
        parsed
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn error_code(&self) -> String {
        let json: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", self.body));
        json["error"]["code"].as_str().expect("a code").to_owned()
    }
}

/// An SSE stream read with the core's decoder.
pub struct Sse {
    pub stream: TcpStream,
    pub decoder: Decoder,
    pub head: Resp,
    /// For a chunked body: the stream's bytes go through it to the decoder.
    pub chunked: Option<ChunkedDecoder>,
}

impl Sse {
    pub fn open(mut stream: TcpStream, target: &str, headers: &[(&str, &str)]) -> Self {
        let host = stream.peer_addr().expect("a connected stream");
        let mut head =
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let head = Resp::parse(&read_response_head(&mut stream));
        Self {
            stream,
            decoder: Decoder::new(),
            chunked: head.is_chunked().then(ChunkedDecoder::default),
            head,
        }
    }

    /// Reads more of the stream; `false` at its end (the connection's, or the last chunk's).
    pub fn fill(&mut self) -> bool {
        // The last chunk ends the stream only on the next call: the data read with it was fed.
        if self.chunked.as_ref().is_some_and(ChunkedDecoder::is_done) {
            return false;
        }
        let mut buf = [0u8; 16 << 10];
        match self.stream.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                let fed = match &mut self.chunked {
                    Some(chunked) => self.decoder.feed(&chunked.feed(&buf[..n])),
                    None => self.decoder.feed(&buf[..n]),
                };
                fed.expect("a valid event stream");
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("reading the SSE stream: {e}"),
        }
    }

    pub fn next_event(&mut self) -> DecodedEvent {
        loop {
            if let Some(event) = self.decoder.next_event() {
                return event;
            }
            assert!(self.fill(), "the SSE stream ended");
        }
    }

    /// Every event until the server ends the stream.
    pub fn until_end(&mut self) -> Vec<DecodedEvent> {
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
pub struct Ws {
    pub ws: WebSocket<TcpStream>,
    pub welcome: Value,
}

impl Ws {
    pub fn open(stream: TcpStream, addr: SocketAddr, headers: &[(&'static str, &str)]) -> Self {
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

    pub fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).unwrap();
    }

    pub fn send_raw(&mut self, message: Message) {
        self.ws.send(message).unwrap();
    }

    /// The next JSON frame (WebSocket control frames are skipped).
    pub fn recv(&mut self) -> Value {
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
    pub fn ask(&mut self, frame: Value) -> Value {
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
    pub fn until_close(&mut self) -> (Vec<Value>, Option<CloseCode>) {
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

pub fn for_each_runtime(test: impl Fn(&'static str)) {
    for runtime in RUNTIMES {
        eprintln!("runtime: {runtime}");
        test(runtime);
    }
}

// ---- third-party tools of the interop tests --------------------------------------------------

/// Skips the test with `why`, unless `TIDINGS_REQUIRE_INTEROP` is set (as in CI): then it fails.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("TIDINGS_REQUIRE_INTEROP").is_none(),
        "TIDINGS_REQUIRE_INTEROP is set but {why}"
    );
    eprintln!("skipped: {why}");
}

/// Whether curl with HTTP/2 is installed; without it the test skips ([`skip`]).
pub fn curl_or_skip() -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    if !found {
        skip("curl with HTTP/2 is missing (scripts/setup-interop.sh installs it)");
    }
    found
}

/// curl with `args` (at most 10 s): its stdout, or its exit status and stderr.
pub fn curl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The python that imports `modules` (comma-separated): the project's virtual environment
/// (`scripts/setup-python.sh`), else `python3`; `None` after saying why the test skips.
pub fn python_or_skip(modules: &str) -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/.venv/bin/python");
    let python = [venv, PathBuf::from("python3")].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", &format!("import {modules}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if python.is_none() {
        skip(&format!(
            "python3 with {modules} is missing (run scripts/setup-python.sh)"
        ));
    }
    python
}
