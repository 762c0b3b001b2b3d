//! Server-Sent Events (`GET /sse?topic=`) subscribers on raw TCP, and `POST /publish`.
//!
//! The stream is read into one buffer per connection; complete events (up to a blank line) are
//! scanned for `"seq":` in place, with no allocation per event. The server answers with
//! `Connection: close` and no chunked encoding, so the body is the event stream as is.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use memchr::memmem;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::check::SeqCheck;
use super::payload;

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
const BUF: usize = 16 << 10;

/// An open event stream whose first block (`retry:` or a comment) has arrived, so the
/// subscription is in place.
pub(crate) struct SseConn {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` not yet consumed, from 0.
    len: usize,
}

/// Where the next complete event (ending in a blank line) of `buf` ends, after its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    memmem::find(buf, b"\n\n").map(|i| i + 2)
}

impl SseConn {
    /// Connects, sends the request, checks the `200` head and waits for the opening block.
    pub(crate) async fn open(addr: SocketAddr, topic: &str) -> Result<Self, String> {
        tokio::time::timeout(OPEN_TIMEOUT, Self::open_inner(addr, topic))
            .await
            .map_err(|_| format!("no SSE opening from {addr} in {OPEN_TIMEOUT:?}"))?
    }

    async fn open_inner(addr: SocketAddr, topic: &str) -> Result<Self, String> {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let request = format!(
            "GET /sse?topic={topic} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the SSE request: {e}"))?;
        let mut conn = Self {
            tcp,
            buf: vec![0; BUF],
            len: 0,
        };
        let head_end = loop {
            if let Some(i) = memmem::find(&conn.buf[..conn.len], b"\r\n\r\n") {
                break i + 4;
            }
            conn.fill().await?;
        };
        let head = String::from_utf8_lossy(&conn.buf[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("SSE request refused: {}", head.trim()));
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Err("chunked SSE responses are not supported by this client".into());
        }
        conn.consume(head_end);
        // The opening block: `retry: N` or a `:` comment, before any event.
        let end = loop {
            if let Some(end) = event_end(&conn.buf[..conn.len]) {
                break end;
            }
            conn.fill().await?;
        };
        conn.consume(end);
        Ok(conn)
    }

    /// Reads more bytes after `len`, growing the buffer when it is full.
    async fn fill(&mut self) -> Result<(), String> {
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.tcp.read(&mut self.buf[self.len..]).await {
            Ok(0) => Err("connection closed".into()),
            Ok(n) => {
                self.len += n;
                super::count_wire_bytes(n);
                Ok(())
            }
            Err(e) => Err(format!("reading the SSE stream: {e}")),
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Receives events until the last message or the end of the stream (the caller aborts
    /// the task to end it early; `check` keeps what was counted, see `ws::WsConn::receive`).
    pub(crate) async fn receive(mut self, check: &Mutex<SeqCheck>) {
        let lock = || check.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            // Every complete event in the buffer.
            let mut at = 0;
            while let Some(end) = event_end(&self.buf[at..self.len]) {
                let event = &self.buf[at..at + end];
                at += end;
                if let Some((seq, t)) = payload::parse(event) {
                    if lock().on_payload(seq, t) {
                        return;
                    }
                } else if memmem::find(event, b"event: tidings-gap").is_some() {
                    lock().gaps += 1;
                } else if memmem::find(event, b"event: tidings-error").is_some() {
                    lock().error = Some(String::from_utf8_lossy(event).into_owned());
                }
            }
            if at > 0 {
                self.consume(at);
            }
            if let Err(e) = self.fill().await {
                lock().error.get_or_insert(e);
                return;
            }
        }
    }

    /// Holds the stream open, discarding what arrives, until it fails (idle connections; the
    /// caller aborts the task to close it).
    pub(crate) async fn hold(mut self) -> String {
        loop {
            self.len = 0;
            if let Err(e) = self.fill().await {
                return e;
            }
        }
    }
}

/// `POST /publish?topic=` of one body (one connection per request: the server answers with
/// `Connection: close`). Returns the status line if it is not `200`.
pub(crate) async fn publish_http(addr: SocketAddr, topic: &str, body: &[u8]) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut request = format!(
        "POST /publish?topic={topic} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    tcp.write_all(&request)
        .await
        .map_err(|e| format!("POST /publish: {e}"))?;
    let mut answer = Vec::with_capacity(256);
    tcp.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("POST /publish answer: {e}"))?;
    if answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else {
        let line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
        Err(format!(
            "POST /publish: {}",
            String::from_utf8_lossy(line).trim()
        ))
    }
}

/// Publishes over HTTP, one request at a time (in order). Returns the first and last send
/// times, ns since `start`.
pub(crate) async fn publish_all_http(
    addr: SocketAddr,
    plan: &super::publisher::PublishPlan,
    stop: &watch::Receiver<bool>,
) -> Result<super::publisher::PublishStats, String> {
    let mut stats = super::publisher::PublishStats::default();
    let mut body = Vec::with_capacity(plan.size + 32);
    let paced_from = Instant::now();
    let topic = plan.topics.first().ok_or("no topic")?;
    for seq in 0..plan.messages {
        if *stop.borrow() {
            break;
        }
        let t = if let Some(rate) = plan.rate {
            #[allow(clippy::cast_precision_loss)]
            let due = paced_from + Duration::from_secs_f64(seq as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            u64::try_from((due - plan.start).as_nanos()).unwrap_or(u64::MAX)
        } else {
            u64::try_from(plan.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
        };
        payload::build(&mut body, seq, t, plan.size);
        if seq == 0 {
            stats.first_send_ns = t;
        }
        stats.last_send_ns = t;
        match publish_http(addr, topic, &body).await {
            Ok(()) => stats.acked += 1,
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(e);
            }
        }
    }
    Ok(stats)
}
