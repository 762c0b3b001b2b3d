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
//!    messages over one channel: [`Input`]s from connections, publishes from the application.
//! 2. **Time is an argument.** Read the clock once per wakeup (`now = Instant::now()`) and pass it
//!    to `handle_input(now, ..)`, `publish(now, ..)` and `handle_timeout(now)`.
//! 3. **Sleep until the deadline.** Block on the channel until `poll_timeout()` (forever if
//!    `None`). After *every* wakeup, call `handle_timeout(now)` if the deadline has passed: a busy
//!    channel may never time out, and timers (keep-alives, ages, acks) must still fire. The example
//!    never schedules anything itself: keep-alives come out of the core as ordinary transmits.
//! 4. **Drain completely, never block while draining.** After each `handle_*`, call `poll_output()`
//!    until `None`. A `Transmit` goes into that connection's *bounded* queue with `try_send`; a full
//!    queue means its writer cannot keep up, so the connection is dropped (its client resumes from
//!    its cursor), never waited for: one slow socket must not stall everyone else.
//! 5. **Credit.** Writers report written bytes with `Input::Flushed`; the core counts what is queued
//!    per connection and applies its slow-consumer policy, so the queue bound is only a backstop.
//! 6. **Closing.** On `Output::Close`, stop handing out bytes, let the writer finish what was queued,
//!    end the stream, then feed `Input::Closed`. A transport that fails feeds `Input::Closed` too.
//!    The broker hears `Closed` exactly once per connection, and a `ConnId` is never reused.
//!
//! Threads: `accept` → one thread per HTTP connection (reads the request head, then for SSE
//! becomes that connection's writer) → driver ← stdin. Only the driver touches the broker.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tidings_core::{
    Broker, Command, Config, ConnId, Cursor, Grants, Input, Name, NameLimits, Output, Pattern,
    Payload, Subscribe, Topic, Transport,
};

/// Frames a connection's queue holds before it counts as too slow (a backstop for core credit).
const WRITER_QUEUE_FRAMES: usize = 4096;
/// Writes are coalesced up to this many bytes.
const COALESCE_BYTES: usize = 64 << 10;
/// Largest request head, and largest publish body.
const MAX_HEAD_BYTES: usize = 16 << 10;
const MAX_BODY_BYTES: usize = 1 << 20;
/// A client that does not send its request, or stops reading its stream, for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// ConnIds come from one counter and are never reused.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// What the driver thread receives.
enum Msg {
    /// An input from a connection thread (`Flushed`, `Closed`).
    Input(Input),
    /// A new SSE stream: its queue, then `Open` and `Subscribe` in one go, so the subscription
    /// is in place by the time the client reads the opening `retry:` frame.
    Connect {
        conn: ConnId,
        writer: SyncSender<Bytes>,
        subscribe: Subscribe,
    },
    /// Publish from the application; the cursor goes back through `reply`.
    Publish {
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
        reply: Sender<Cursor>,
    },
}

/// A cloneable handle to publish through the driver from any thread.
#[derive(Clone)]
pub struct Publisher(Sender<Msg>);

impl Publisher {
    /// Publishes `payload` to `topic`; returns the event's cursor (its SSE `id:`).
    ///
    /// # Errors
    /// When the driver thread is gone.
    pub fn publish(
        &self,
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
    ) -> Result<Cursor, String> {
        let (reply, answer) = mpsc::channel();
        let msg = Msg::Publish {
            topic,
            event,
            payload,
            reply,
        };
        self.0
            .send(msg)
            .map_err(|_| "the broker is gone".to_string())?;
        answer.recv().map_err(|_| "the broker is gone".to_string())
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
    thread::spawn(move || drive(broker, &rx));
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

/// The driver: the only code that touches the broker (contract steps 1 to 4).
fn drive(mut broker: Broker, rx: &Receiver<Msg>) {
    // Some(queue) while the stream is open; None after `Output::Close` until the writer reports
    // `Closed`. Whoever removes an entry feeds `Input::Closed`, so the broker hears it once.
    let mut writers: HashMap<ConnId, Option<SyncSender<Bytes>>> = HashMap::new();
    loop {
        let msg = match broker.poll_timeout() {
            Some(deadline) => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            None => match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => return,
            },
        };
        let now = Instant::now();
        match msg {
            Some(Msg::Input(input @ Input::Closed { conn })) => {
                if writers.remove(&conn).is_some() {
                    feed(&mut broker, now, input);
                }
            }
            Some(Msg::Input(input)) => feed(&mut broker, now, input),
            Some(Msg::Connect {
                conn,
                writer,
                subscribe,
            }) => {
                writers.insert(conn, Some(writer));
                let grants = Arc::new(Grants::all());
                feed(
                    &mut broker,
                    now,
                    Input::Open {
                        conn,
                        transport: Transport::Sse,
                        grants,
                    },
                );
                feed(
                    &mut broker,
                    now,
                    Input::Command {
                        conn,
                        cmd: Command::Subscribe(subscribe),
                    },
                );
            }
            Some(Msg::Publish {
                topic,
                event,
                payload,
                reply,
            }) => {
                let _ = reply.send(broker.publish(now, topic, event, payload));
            }
            None => {}
        }
        if broker
            .poll_timeout()
            .is_some_and(|deadline| deadline <= now)
        {
            broker.handle_timeout(now);
        }
        while let Some(out) = broker.poll_output() {
            match out {
                Output::Transmit { conn, payload } => {
                    let Some(Some(writer)) = writers.get(&conn) else {
                        continue;
                    };
                    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                        writer.try_send(payload)
                    {
                        eprintln!("conn {conn}: writer cannot keep up or is gone; dropping it");
                        writers.remove(&conn);
                        feed(&mut broker, now, Input::Closed { conn });
                    }
                }
                Output::Close { conn, reason } => {
                    eprintln!("conn {conn}: closing: {reason}");
                    if let Some(writer) = writers.get_mut(&conn) {
                        *writer = None; // the writer drains its queue, ends the stream, reports Closed
                    }
                }
                Output::Event(event) => eprintln!("event: {event:?}"),
                other => eprintln!("unhandled output: {other:?}"),
            }
        }
    }
}

/// `handle_input`; an `Err` is an adapter bug (unknown or duplicate id), so it is only logged.
fn feed(broker: &mut Broker, now: Instant, input: Input) {
    if let Err(e) = broker.handle_input(now, input) {
        eprintln!("adapter bug: {e}");
    }
}

/// One HTTP connection: one request, then either an SSE stream or a short response.
fn handle_http(mut stream: TcpStream, publisher: &Publisher) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let result = match read_head(&mut stream) {
        Ok(Some(head)) => route(&mut stream, head, publisher),
        Ok(None) => respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "malformed request head\n",
        ),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("http: {e}");
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// A parsed request head, plus the body bytes that arrived with it.
struct Head {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn params<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads until `httparse` has a complete head; `None` if it is malformed or too large.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let target = req.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let Some(query) = parse_query(query) else {
                    return Ok(None);
                };
                let headers = req.headers.iter().map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).trim().to_string(),
                    )
                });
                return Ok(Some(Head {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query,
                    headers: headers.collect(),
                    rest: buf[len..].to_vec(),
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => {}
            _ => return Ok(None),
        }
    }
}

/// `a=1&b=x%20y` into pairs; `None` if an escape or the UTF-8 is invalid.
fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    let pairs = query.split('&').filter(|p| !p.is_empty());
    pairs
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (a space in query strings).
fn percent_decode(s: &str) -> Option<String> {
    let (bytes, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn route(stream: &mut TcpStream, head: Head, publisher: &Publisher) -> io::Result<()> {
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/sse") => sse(stream, &head, publisher),
        ("POST", "/publish") => publish(stream, head, publisher),
        _ => respond(stream, "404 Not Found", "text/plain", "not found\n"),
    }
}

/// `GET /sse?topic=A&topic=B[&last_event_id=C]`: validate, answer 200, then become the writer.
fn sse(stream: &mut TcpStream, head: &Head, publisher: &Publisher) -> io::Result<()> {
    let bad = |stream: &mut TcpStream, msg: String| {
        respond(stream, "400 Bad Request", "text/plain", &msg)
    };
    let patterns: Result<Vec<_>, _> = head
        .params("topic")
        .map(|t| Pattern::parse(t, NameLimits::default()))
        .collect();
    let patterns = match patterns {
        Ok(p) if p.is_empty() => {
            return bad(stream, "at least one topic= parameter is required\n".into());
        }
        Ok(p) => p,
        Err(e) => return bad(stream, format!("{e}\n")),
    };
    // The header (sent by a reconnecting EventSource) wins over the query parameter.
    let cursor = head
        .header("last-event-id")
        .or_else(|| head.params("last_event_id").next());
    let from = match cursor
        .filter(|c| !c.is_empty())
        .map(str::parse::<Cursor>)
        .transpose()
    {
        Ok(from) => from,
        Err(e) => return bad(stream, format!("{e}\n")),
    };
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          X-Accel-Buffering: no\r\nConnection: keep-alive\r\n\r\n",
    )?;
    let conn = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
    let (writer, queue) = mpsc::sync_channel(WRITER_QUEUE_FRAMES);
    let subscribe = Subscribe {
        req: None,
        patterns,
        from,
        name: None,
    };
    let driver = &publisher.0;
    if driver
        .send(Msg::Connect {
            conn,
            writer,
            subscribe,
        })
        .is_err()
    {
        return Ok(());
    }
    write_stream(stream, conn, &queue, driver);
    Ok(())
}

/// The writer: frames from the queue to the socket, coalesced, reporting `Flushed` after each
/// write. A write error (the client went away) or a closed queue (`Output::Close`, or dropped as
/// too slow) ends it, with exactly one `Closed`.
fn write_stream(
    stream: &mut TcpStream,
    conn: ConnId,
    queue: &Receiver<Bytes>,
    driver: &Sender<Msg>,
) {
    let mut buf = Vec::with_capacity(COALESCE_BYTES);
    while let Ok(frame) = queue.recv() {
        buf.clear();
        buf.extend_from_slice(&frame);
        while buf.len() < COALESCE_BYTES {
            match queue.try_recv() {
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if stream
            .write_all(&buf)
            .and_then(|()| stream.flush())
            .is_err()
        {
            break;
        }
        let _ = driver.send(Msg::Input(Input::Flushed {
            conn,
            bytes: buf.len(),
        }));
    }
    let _ = driver.send(Msg::Input(Input::Closed { conn }));
}

/// `POST /publish?topic=T[&event=NAME]` with a body: answers `{"id":"<cursor>"}`.
fn publish(stream: &mut TcpStream, head: Head, publisher: &Publisher) -> io::Result<()> {
    let bad = |stream: &mut TcpStream, msg: String| {
        respond(stream, "400 Bad Request", "text/plain", &msg)
    };
    let Some(len) = head
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return respond(
            stream,
            "411 Length Required",
            "text/plain",
            "Content-Length is required\n",
        );
    };
    if len > MAX_BODY_BYTES {
        return respond(
            stream,
            "413 Payload Too Large",
            "text/plain",
            "the body is limited to 1 MiB\n",
        );
    }
    let mut body = head.rest.clone();
    body.truncate(len);
    let already = body.len();
    body.resize(len, 0);
    stream.read_exact(&mut body[already..])?;
    let topic = match head
        .params("topic")
        .next()
        .map(|t| Topic::parse(t, NameLimits::default()))
    {
        Some(Ok(topic)) => topic,
        Some(Err(e)) => return bad(stream, format!("{e}\n")),
        None => return bad(stream, "a topic= parameter is required\n".into()),
    };
    let event = match head
        .params("event")
        .next()
        .map(|e| Name::parse("event", e, 128))
        .transpose()
    {
        Ok(event) => event,
        Err(e) => return bad(stream, format!("{e}\n")),
    };
    let json = head
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"));
    let payload = if json {
        Payload::json(body)
    } else {
        Payload::text(body)
    };
    let payload = match payload {
        Ok(payload) => payload,
        Err(e) => return bad(stream, format!("{e}\n")),
    };
    match publisher.publish(topic, event, payload) {
        Ok(cursor) => respond(
            stream,
            "200 OK",
            "application/json",
            &format!("{{\"id\":\"{cursor}\"}}"),
        ),
        Err(e) => respond(stream, "503 Service Unavailable", "text/plain", &e),
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> io::Result<()> {
    let len = body.len();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    )?;
    stream.flush()
}

/// `sse_std [ADDR]`: serve, and publish each stdin line `TOPIC DATA`.
fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9313".into());
    let listener = TcpListener::bind(&addr)?;
    println!("listening on http://{}", listener.local_addr()?);
    // A new epoch per run, so cursors from an earlier run get a gap notice, not a mismatch.
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    let server = serve(
        listener,
        Config {
            epoch,
            ..Config::default()
        },
    )?;
    let publisher = server.publisher.clone();
    thread::spawn(move || {
        for line in io::stdin().lock().lines().map_while(Result::ok) {
            let (topic, data) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
            if topic.is_empty() {
                continue;
            }
            let result = Topic::parse(topic, NameLimits::default())
                .and_then(|t| Ok((t, Payload::text(data.to_string())?)))
                .map_err(|e| e.to_string())
                .and_then(|(t, p)| publisher.publish(t, None, p));
            match result {
                Ok(cursor) => eprintln!("published {cursor}"),
                Err(e) => eprintln!("not published: {e}"),
            }
        }
    });
    server.wait();
    Ok(())
}
