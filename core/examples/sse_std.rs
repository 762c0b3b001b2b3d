//! Server-Sent Events from [`tidings_core::Broker`] with nothing but `std`: no async runtime, just
//! `std::net`, threads and `std::sync::mpsc`. It proves the core is really sans-IO: all the I/O,
//! threads and clock reads below are this file's; the broker only turns inputs into outputs.
//!
//! ```text
//! cargo run -p tidings-core --example sse_std -- [ADDR]      # default 127.0.0.1:9313
//! curl -N 'http://127.0.0.1:9313/sse?topic=chat.*'             # wildcards: chat.* or chat.>
//! curl -d 'hi' 'http://127.0.0.1:9313/publish?topic=chat.a&event=msg'   # answers {"id":"<cursor>"}
//! ```
//! Typing `chat.a hello` on stdin publishes `hello` to `chat.a`. Resume a stream with the
//! `Last-Event-ID` header or `?last_event_id=<cursor>`: you get exactly the events you missed.
//!
//! # The loop contract (what any custom runtime must do)
//!
//! 1. **One owner.** One driver thread owns the `Broker` (no mutex). Everything else sends it
//!    messages over one channel (new streams, writers' flushed bytes and closings, publishes),
//!    which it turns into `handle_input` / `publish` calls.
//! 2. **Time is an argument.** Read the clock once per wakeup (`now = Instant::now()`) and pass it
//!    to `handle_input(now, ..)`, `publish(now, ..)` and `handle_timeout(now)`.
//! 3. **Sleep until the deadline.** Block on the channel until `poll_timeout()` (forever if
//!    `None`). After *every* wakeup, call `handle_timeout(now)` if the deadline has passed: a busy
//!    channel may never time out, and timers (keep-alives, ages, acks) must still fire. The example
//!    never schedules anything itself: keep-alives come out of the core as ordinary transmits.
//! 4. **Drain completely, never block while draining.** After each `handle_*`, call `poll_output()`
//!    until `None`. A `Transmit` goes into that connection's *bounded* queue with `try_send`; a full
//!    queue means its writer cannot keep up, so the connection is dropped (its client resumes from
//!    its cursor), never waited for: one slow socket must not stall everyone else. `Close` is
//!    step 6; `AppEvent`s are for the application (this example logs them to stderr).
//! 5. **Credit.** Writers report written bytes with `Input::Flushed`; the core counts what is queued
//!    per connection and applies its slow-consumer policy, so the queue bound is only a backstop.
//! 6. **Closing.** On `Output::Close`, stop handing out bytes, let the writer finish what was queued,
//!    end the stream, then feed `Input::Closed`. A transport that fails feeds `Input::Closed` too.
//!    The broker hears `Closed` exactly once per connection, and a `ConnId` is never reused.
//!
//! Threads: `accept` → one thread per HTTP connection (reads the request head, then for SSE
//! becomes that connection's writer) → driver ← stdin. Only the driver touches the broker.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tidings_core::{
    Broker, Command, Config, ConnId, Cursor, Grants, Input, Name, NameLimits, Output, Pattern,
    Payload, Subscribe, Topic,
};

/// Frames a connection's queue holds before it counts as too slow (a backstop for core credit).
const WRITER_QUEUE_FRAMES: usize = 4096;
/// Writes are coalesced up to this many bytes.
const COALESCE_BYTES: usize = 64 << 10;
/// Largest request head.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Largest publish body.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Longest event name (the default `Limits::max_name_len`).
const MAX_NAME_LEN: usize = 128;
/// A client that does not send its request, or stops reading its stream, for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// ConnIds come from one counter and are never reused.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// What the driver thread receives.
enum Msg {
    /// A writer wrote this many bytes (becomes `Input::Flushed`).
    Flushed(ConnId, usize),
    /// A writer ended: the client went away, or its queue was closed (becomes `Input::Closed`).
    Closed(ConnId),
    /// A new SSE stream: its queue, then `Open` and `Subscribe` in one driver step, so the
    /// subscription is in place by the time the client reads the opening `retry:` frame.
    Connect(ConnId, SyncSender<Bytes>, Subscribe),
    /// A publish from the application: topic, event name, payload, and where the cursor goes.
    Publish(Topic, Option<Name>, Payload, Sender<Cursor>),
}

/// A cloneable handle to publish through the driver from any thread.
#[derive(Clone)]
pub struct Publisher(Sender<Msg>);

impl Publisher {
    /// Publishes `data` to `topic`; returns the event's cursor (its SSE `id:`), or `None` if the
    /// driver thread is gone.
    pub fn publish(&self, topic: Topic, event: Option<Name>, data: Payload) -> Option<Cursor> {
        let (reply, cursor) = mpsc::channel();
        let sent = self.0.send(Msg::Publish(topic, event, data, reply));
        sent.ok().and_then(|()| cursor.recv().ok())
    }
}

/// A running server: its address, a publisher, and the accept thread to wait for.
pub struct Server {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Publishes from code.
    pub publisher: Publisher,
    accept: JoinHandle<()>,
}

impl Server {
    /// Blocks for as long as the server accepts connections (until the process ends).
    pub fn wait(self) {
        let _ = self.accept.join();
    }
}

/// Starts the driver thread and the accept loop on `listener`, then returns.
///
/// # Errors
/// When the listener's address cannot be read.
pub fn serve(listener: TcpListener, config: Config) -> io::Result<Server> {
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel();
    let broker = Broker::new(config, Instant::now());
    let writers = HashMap::new();
    let driver = Driver { broker, writers };
    thread::spawn(move || driver.run(&rx));
    let publisher = Publisher(tx);
    let accepting = publisher.clone();
    let accept = thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let publisher = accepting.clone();
            thread::spawn(move || handle_http(stream, &publisher));
        }
    });
    Ok(Server {
        addr,
        publisher,
        accept,
    })
}

/// The driver thread's state: the broker, and each stream's queue.
struct Driver {
    broker: Broker,
    /// `Some(queue)` while the stream is open; `None` after `Output::Close` until its writer reports
    /// `Closed`. Whoever removes an entry feeds `Input::Closed`, so the broker hears it once.
    writers: HashMap<ConnId, Option<SyncSender<Bytes>>>,
}

impl Driver {
    /// The loop of the contract; returns when every sender is gone.
    fn run(mut self, rx: &Receiver<Msg>) {
        loop {
            let msg = match self.broker.poll_timeout() {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Disconnected) => return,
                    received => received.ok(),
                },
                None => match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => return,
                },
            };
            let now = Instant::now();
            if let Some(msg) = msg {
                self.handle(now, msg);
            }
            if self.broker.poll_timeout().is_some_and(|at| at <= now) {
                self.broker.handle_timeout(now);
            }
            self.drain(now);
        }
    }

    fn handle(&mut self, now: Instant, msg: Msg) {
        match msg {
            Msg::Flushed(conn, bytes) if self.writers.contains_key(&conn) => {
                self.feed(now, Input::Flushed { conn, bytes });
            }
            Msg::Flushed(..) => {} // credit for a stream already dropped as too slow
            Msg::Closed(conn) => self.closed(now, conn),
            Msg::Connect(conn, queue, subscribe) => {
                self.writers.insert(conn, Some(queue));
                let open = Input::Open {
                    conn,
                    codec: Box::new(tidings_core::sse::SseCodec),
                    grants: Arc::new(Grants::all()),
                };
                self.feed(now, open);
                let cmd = Command::Subscribe(subscribe);
                self.feed(now, Input::Command { conn, cmd });
            }
            Msg::Publish(topic, event, payload, reply) => {
                // The in-memory log (this example's) stores at once.
                if let Some(cursor) = self.broker.publish(now, topic, event, payload).cursor() {
                    let _ = reply.send(cursor);
                }
            }
        }
    }

    /// Every output, in order, without ever blocking.
    fn drain(&mut self, now: Instant) {
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, payload } => {
                    let Some(Some(queue)) = self.writers.get(&conn) else {
                        continue;
                    };
                    if queue.try_send(payload).is_err() {
                        eprintln!("conn {conn}: its writer cannot keep up (or is gone): dropped");
                        self.closed(now, conn);
                    }
                }
                Output::Close { conn, reason } => {
                    if let Some(reason) = reason {
                        eprintln!("conn {conn}: closing: {reason}");
                    }
                    if let Some(queue) = self.writers.get_mut(&conn) {
                        *queue = None; // the writer writes what is queued, ends, reports Closed
                    }
                }
                // It did not close in time: forget it (its writer ends with the queue).
                Output::Drop { conn } => self.closed(now, conn),
                Output::App(event) => eprintln!("event: {event:?}"),
                other => eprintln!("unhandled output: {other:?}"),
            }
        }
    }

    /// Forgets the stream's queue (its writer then ends) and feeds `Input::Closed`, once.
    fn closed(&mut self, now: Instant, conn: ConnId) {
        if self.writers.remove(&conn).is_some() {
            self.feed(now, Input::Closed { conn });
        }
    }

    /// `handle_input`: an `Err` is an adapter bug (unknown or duplicate id), so it is only logged.
    fn feed(&mut self, now: Instant, input: Input) {
        if let Err(e) = self.broker.handle_input(now, input) {
            eprintln!("adapter bug: {e}");
        }
    }
}

/// An HTTP error answer: status line and message.
type Refusal = (&'static str, String);

/// What a route did: `Ok(None)` served a stream; `Ok(Some(json))` is a 200 with that JSON body.
type Answer = Result<Option<String>, Refusal>;

fn refuse(status: &'static str, message: impl Display) -> Answer {
    Err((status, format!("{message}\n")))
}

fn bad(e: impl Display) -> Refusal {
    ("400 Bad Request", format!("{e}\n"))
}

/// One HTTP connection: one request, then either an SSE stream or a short answer.
fn handle_http(mut stream: TcpStream, publisher: &Publisher) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let answer = match read_head(&mut stream) {
        Err(refusal) => Err(refusal),
        Ok(head) => match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/sse") => sse(&mut stream, &head, publisher),
            ("POST", "/publish") => publish(&mut stream, &head, publisher),
            _ => refuse("404 Not Found", "not found"),
        },
    };
    let reply = match answer {
        Ok(None) => None,
        Ok(Some(json)) => Some(("200 OK", "application/json", json)),
        Err((status, message)) => Some((status, "text/plain", message)),
    };
    if let Some((status, content_type, body)) = reply {
        let len = body.len();
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
             Connection: close\r\n\r\n{body}"
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// A parsed request head, plus the body bytes that arrived with it.
struct Head {
    method: String,
    path: String,
    /// Decoded query parameters, in order.
    query: Vec<(String, String)>,
    /// Header names in lowercase.
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

impl Head {
    /// Every value of query parameter `key`, in order.
    fn params<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let found = self.query.iter().filter(move |(k, _)| k == key);
        found.map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }
}

/// Reads until `httparse` has a complete request head.
fn read_head(stream: &mut TcpStream) -> Result<Head, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).map_err(bad)?;
        if n == 0 {
            return Err(bad("the request ended early"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&buf).map_err(bad)? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() < MAX_HEAD_BYTES => continue,
            httparse::Status::Partial => return Err(bad("the request head is too large")),
        };
        let target = req.path.unwrap_or("/");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = parse_query(query).ok_or_else(|| bad("invalid query encoding"))?;
        let header = |h: &httparse::Header| {
            let value = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_ascii_lowercase(), value)
        };
        return Ok(Head {
            method: req.method.unwrap_or_default().to_string(),
            path: path.to_string(),
            query,
            headers: req.headers.iter().map(header).collect(),
            rest: buf[len..].to_vec(),
        });
    }
}

/// `a=1&b=x%20y` into pairs; `None` if an escape or the UTF-8 is invalid.
fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    let pairs = query.split('&').filter(|p| !p.is_empty());
    let pair = |p: &str| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        Some((percent_decode(k)?, percent_decode(v)?))
    };
    pairs.map(pair).collect()
}

/// Decodes `%XX` escapes and `+` (a space in query strings).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let mut hex = || char::from(bytes.next()?).to_digit(16);
                (hex()? * 16 + hex()?) as u8
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// `GET /sse?topic=A&topic=B[&last_event_id=C]`: validate, answer 200, then become the writer.
fn sse(stream: &mut TcpStream, head: &Head, publisher: &Publisher) -> Answer {
    let limits = NameLimits::default();
    let topics = head.params("topic").map(|t| Pattern::parse(t, limits));
    let patterns = topics.collect::<Result<Vec<_>, _>>().map_err(bad)?;
    if patterns.is_empty() {
        return Err(bad("at least one topic= parameter is required"));
    }
    // A reconnecting EventSource sends the header; it wins over the query parameter.
    let query = head.params("last_event_id").next();
    let last = head.header("last-event-id").or(query);
    let from = last.filter(|c| !c.is_empty()).map(str::parse::<Cursor>);
    let from = from.transpose().map_err(bad)?;
    let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              X-Accel-Buffering: no\r\nConnection: keep-alive\r\n\r\n";
    if stream.write_all(ok.as_bytes()).is_err() {
        return Ok(None);
    }
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let (queue, frames) = mpsc::sync_channel(WRITER_QUEUE_FRAMES);
    let subscribe = Subscribe {
        req: None,
        patterns,
        from,
        name: None,
    };
    let driver = &publisher.0;
    if driver.send(Msg::Connect(conn, queue, subscribe)).is_ok() {
        write_stream(stream, conn, &frames, driver);
    }
    Ok(None)
}

/// The writer: frames from the queue to the socket, coalesced, reporting `Flushed` after each
/// write. A write error (the client went away) or a closed queue (`Output::Close`, or dropped as
/// too slow) ends it, with exactly one `Closed`.
fn write_stream(stream: &mut TcpStream, conn: ConnId, rx: &Receiver<Bytes>, tx: &Sender<Msg>) {
    let mut buf = Vec::with_capacity(COALESCE_BYTES);
    while let Ok(frame) = rx.recv() {
        buf.clear();
        buf.extend_from_slice(&frame);
        while let (true, Ok(frame)) = (buf.len() < COALESCE_BYTES, rx.try_recv()) {
            buf.extend_from_slice(&frame);
        }
        if stream.write_all(&buf).is_err() {
            break;
        }
        let _ = tx.send(Msg::Flushed(conn, buf.len()));
    }
    let _ = tx.send(Msg::Closed(conn));
}

/// `POST /publish?topic=T[&event=NAME]` with a body: answers `{"id":"<cursor>"}`.
fn publish(stream: &mut TcpStream, head: &Head, publisher: &Publisher) -> Answer {
    let Some(Ok(len)) = head.header("content-length").map(str::parse::<usize>) else {
        return refuse("411 Length Required", "Content-Length is required");
    };
    if len > MAX_BODY_BYTES {
        return refuse("413 Payload Too Large", "the body is limited to 1 MiB");
    }
    let mut body = head.rest.clone();
    body.truncate(len);
    let start = body.len();
    body.resize(len, 0);
    stream.read_exact(&mut body[start..]).map_err(bad)?;
    let topic = head.params("topic").next().unwrap_or_default();
    let topic = Topic::parse(topic, NameLimits::default()).map_err(bad)?;
    let event = head.params("event").next();
    let event = event.map(|e| tidings_core::native::event_name(e, MAX_NAME_LEN));
    let event = event.transpose().map_err(bad)?;
    let content_type = head.header("content-type").unwrap_or_default();
    let payload = if content_type.starts_with("application/json") {
        Payload::json(body)
    } else {
        Payload::text(body)
    };
    let Some(cursor) = publisher.publish(topic, event, payload.map_err(bad)?) else {
        return refuse("503 Service Unavailable", "the broker is gone");
    };
    Ok(Some(format!("{{\"id\":\"{cursor}\"}}")))
}

/// Publishes each line `TOPIC DATA` as text (so a person can type events).
pub fn publish_lines(lines: impl BufRead, publisher: &Publisher) {
    for line in lines.lines().map_while(Result::ok) {
        let (topic, data) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        if topic.is_empty() {
            continue;
        }
        let payload = Payload::text(data.to_string()).expect("a String is UTF-8");
        match Topic::parse(topic, NameLimits::default()) {
            Ok(topic) => match publisher.publish(topic, None, payload) {
                Some(cursor) => eprintln!("published {cursor}"),
                None => eprintln!("not published: the broker is gone"),
            },
            Err(e) => eprintln!("not published: {e}"),
        }
    }
}

/// `sse_std [ADDR]`: serve on ADDR, and publish what is typed on stdin.
fn main() -> io::Result<()> {
    let addr = std::env::args().nth(1);
    let listener = TcpListener::bind(addr.as_deref().unwrap_or("127.0.0.1:9313"))?;
    println!("listening on http://{}", listener.local_addr()?);
    // A new epoch per run: cursors from an earlier run then get a gap notice, not a mismatch.
    let started = SystemTime::now().duration_since(UNIX_EPOCH);
    let epoch = started.map_or(1, |d| d.as_millis() as u64);
    let config = Config {
        epoch,
        ..Config::default()
    };
    let server = serve(listener, config)?;
    let publisher = server.publisher.clone();
    thread::spawn(move || publish_lines(io::stdin().lock(), &publisher));
    server.wait();
    Ok(())
}
