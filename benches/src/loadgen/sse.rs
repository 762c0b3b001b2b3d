//! Server-Sent Events (`GET /sse?topic=`) subscribers on raw TCP, and `POST /publish`.
//!
//! The stream is read into one buffer per connection; complete events (up to a blank line) are
//! scanned for `"seq":` in place, with no allocation per event. A body delimited by the end of
//! the connection is the event stream as is; a chunked one (hyper) is de-chunked in that buffer
//! as it is read, its data moved down over the chunk framing.

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
    /// Event-stream bytes of `buf` not yet consumed, from 0.
    len: usize,
    /// `buf[len..read_end]`: bytes read but not yet de-chunked (a partial chunk size line or
    /// chunk end); `read_end == len` unless the body is chunked.
    read_end: usize,
    /// Where a chunked body is; `None` when the body is not chunked.
    chunk: Option<Chunk>,
}

/// Where the de-chunking of a chunked body is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A size line is next.
    Size,
    /// This many data bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The last (0-size) chunk was read: the stream ended.
    Done,
}

/// Where the next complete event (ending in a blank line) of `buf` ends, after its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    memmem::find(buf, b"\n\n").map(|i| i + 2)
}

/// De-chunks in place: the chunks' data in `buf[*len..*read_end]` is moved down to `*len` over
/// the chunk framing (`*len` grows), and what cannot be decoded yet (a few bytes of framing) is
/// kept right after it (`*read_end`).
fn dechunk_in_place(
    buf: &mut [u8],
    len: &mut usize,
    read_end: &mut usize,
    chunk: &mut Chunk,
) -> Result<(), String> {
    let mut at = *len;
    loop {
        let rest = &buf[at..*read_end];
        match *chunk {
            Chunk::Size => match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete((n, size))) => {
                    at += n;
                    *chunk = if size == 0 {
                        Chunk::Done
                    } else {
                        Chunk::Data(size)
                    };
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => return Err("the chunked SSE body has a bad chunk size line".into()),
            },
            Chunk::Data(left) => {
                let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if n == 0 {
                    break;
                }
                if at != *len {
                    buf.copy_within(at..at + n, *len);
                }
                *len += n;
                at += n;
                *chunk = match left - n as u64 {
                    0 => Chunk::DataEnd,
                    left => Chunk::Data(left),
                };
            }
            Chunk::DataEnd => match rest {
                [b'\r', b'\n', ..] => {
                    at += 2;
                    *chunk = Chunk::Size;
                }
                [] | [b'\r'] => break,
                _ => return Err("a chunk of the SSE body does not end with CRLF".into()),
            },
            Chunk::Done => {
                // Trailers, if any, are not read.
                at = *read_end;
                break;
            }
        }
    }
    buf.copy_within(at..*read_end, *len);
    *read_end = *len + (*read_end - at);
    Ok(())
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
            read_end: 0,
            chunk: None,
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
        let chunked = head
            .to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked\r\n");
        conn.consume(head_end);
        if chunked {
            // What followed the head is chunked body, not yet event-stream bytes.
            conn.chunk = Some(Chunk::Size);
            conn.len = 0;
            conn.dechunk()?;
        }
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

    /// Reads more bytes after `read_end` (de-chunked into `len`), growing the buffer when it is
    /// full. Fails at the end of the stream: the connection's, or the last chunk's.
    async fn fill(&mut self) -> Result<(), String> {
        if self.chunk == Some(Chunk::Done) {
            return Err("the stream ended (last chunk)".into());
        }
        if self.read_end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.tcp.read(&mut self.buf[self.read_end..]).await {
            Ok(0) => Err("connection closed".into()),
            Ok(n) => {
                self.read_end += n;
                super::count_wire_bytes(n);
                self.dechunk()
            }
            Err(e) => Err(format!("reading the SSE stream: {e}")),
        }
    }

    /// Turns the bytes read after `len` into event-stream bytes (see `dechunk_in_place`).
    fn dechunk(&mut self) -> Result<(), String> {
        match &mut self.chunk {
            None => {
                self.len = self.read_end;
                Ok(())
            }
            Some(chunk) => {
                dechunk_in_place(&mut self.buf, &mut self.len, &mut self.read_end, chunk)
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.read_end, 0);
        self.len -= n;
        self.read_end -= n;
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
            self.consume(self.len);
            if let Err(e) = self.fill().await {
                return e;
            }
        }
    }
}

/// `POST /publish?topic=` of one body (one connection per request, read to its end: the request
/// says `Connection: close`). Returns the status line if it is not `200`.
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
            Ok(()) => {
                stats.acked += 1;
                let now = u64::try_from(plan.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let answers = stats
                    .answers
                    .get_or_insert_with(super::check::new_histogram);
                super::check::record_in(answers, now.saturating_sub(t));
            }
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(e);
            }
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked body read in pieces of every size, the data taken out after each read as
    /// `receive` does with complete events: the data comes out whole, and the last chunk (only
    /// it) ends the stream.
    #[test]
    fn dechunks_in_place_across_reads() {
        let data_chunks = b"5;ext=1\r\nhello\r\n1A\r\n, a chunk of 26 bytes.....\r\n";
        let last_chunk = b"0\r\n";
        let body = [&data_chunks[..], last_chunk, b"\r\n"].concat();
        for split in 1..body.len() {
            let mut buf = vec![0; body.len()];
            let (mut len, mut read_end, mut chunk) = (0, 0, Chunk::Size);
            let mut data = Vec::new();
            let mut fed = 0;
            for piece in body.chunks(split) {
                buf[read_end..read_end + piece.len()].copy_from_slice(piece);
                read_end += piece.len();
                fed += piece.len();
                dechunk_in_place(&mut buf, &mut len, &mut read_end, &mut chunk).unwrap();
                // Take the data out every other read, leaving it in place otherwise.
                if fed % 2 == 0 || fed == body.len() {
                    data.extend_from_slice(&buf[..len]);
                    buf.copy_within(len..read_end, 0);
                    read_end -= len;
                    len = 0;
                }
                assert_eq!(
                    chunk == Chunk::Done,
                    fed >= data_chunks.len() + last_chunk.len(),
                    "split {split}, {fed} bytes read"
                );
            }
            assert_eq!(data, b"hello, a chunk of 26 bytes.....", "split {split}");
        }
    }
}
