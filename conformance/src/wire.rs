//! The client side of the wire: WebSocket connections (tungstenite), SSE streams and plain HTTP
//! exchanges over `std::net` sockets with deadlines, in the clear or over TLS (rustls, for an
//! `https://` base: a [`Stream`] is either). Response heads are parsed with httparse; chunked
//! bodies (as an embedding behind hyper sends them) are de-chunked here.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};

use crate::Target;

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// The most a response head may take, and the most one body may buffer.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What the server answered before any body.
#[derive(Debug, Clone)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Resolves `host:port`.
pub fn resolve(authority: &str) -> Result<SocketAddr, String> {
    authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))
}

/// A connection to the server: plain TCP for an `http://` base, TLS over it for `https://`.
pub enum Stream {
    /// In the clear.
    Plain(TcpStream),
    /// TLS (the handshake is done when [`connect`] returns).
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Tls(tls) => tls.get_ref(),
        }
    }

    /// How long a read may wait (`None`: forever); a read that waits longer fails with
    /// `WouldBlock` or `TimedOut`, and can be tried again (also over TLS: rustls keeps a
    /// partly received record).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(timeout)
    }

    /// How long a write may wait.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(timeout)
    }
}

/// Says that a TLS error is one: rustls reports it as an `io::Error` holding a `rustls::Error`.
fn tls_error(e: io::Error) -> io::Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => io::Error::new(e.kind(), format!("TLS: {tls}")),
        None => e,
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.read(buf),
            Self::Tls(tls) => read_tls(tls, buf).map_err(tls_error),
        }
    }
}

/// Reads plaintext like rustls' `StreamOwned::read`, except that pending TLS output (what
/// the last write left, an alert) is written best effort: a write side the server has already
/// closed must not hide what it sent before closing, as it would there (an early answer, like
/// `413` to a request whose body the server did not read, reads the same as over TCP).
fn read_tls(
    tls: &mut StreamOwned<ClientConnection, TcpStream>,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        while tls.conn.wants_write() {
            if tls.conn.write_tls(&mut tls.sock).is_err() {
                break;
            }
        }
        match tls.conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {} // needs more records
            Err(e) => return Err(e),
        }
        // Timeouts and resets come out here; a TCP end is recorded by rustls, whose reader
        // then says whether it was clean (close_notify) or not.
        tls.conn.read_tls(&mut tls.sock)?;
        tls.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.write(buf),
            Self::Tls(tls) => tls.write(buf).map_err(tls_error),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(tcp) => tcp.flush(),
            Self::Tls(tls) => tls.flush().map_err(tls_error),
        }
    }
}

/// Connects to the target, and over TLS completes the handshake (so that a certificate the
/// runner does not trust fails here, saying so, rather than as a failed read later).
pub fn connect(target: &Target, deadline: Instant) -> Result<Stream, String> {
    let addr = target.addr;
    let timeout = remaining(deadline).ok_or("timed out before connecting")?;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some(tls) = &target.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let mut conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
        .map_err(|e| format!("TLS with {}: {e}", tls.trust))?;
    while conn.is_handshaking() {
        let Some(timeout) = remaining(deadline) else {
            return Err(format!(
                "the TLS handshake with {} did not complete in time",
                tls.trust
            ));
        };
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        match conn.complete_io(&mut tcp) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(format!(
                    "TLS handshake failed: the server closed the connection ({})",
                    tls.trust
                ));
            }
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(e) => {
                return Err(format!("TLS handshake failed: {e} ({})", tls.trust));
            }
        }
    }
    Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// ---- HTTP -----------------------------------------------------------------------------------

/// An HTTP/1.1 response being read: the head, then the (de-chunked) body in pieces.
pub struct HttpStream {
    sock: Stream,
    raw: Vec<u8>,
    framing: Framing,
    /// Why the request could not be written whole: the server closed the connection while it
    /// was sent (it may have answered early, e.g. `413` before reading a body; that answer is
    /// still read, and this error is reported only if none comes).
    write_error: Option<String>,
}

enum Framing {
    /// Before the head.
    Head,
    /// Body delimited by the end of the connection.
    UntilEof,
    /// `Content-Length` bytes left.
    Length(usize),
    /// Chunked: bytes left of the current chunk (`None`: a size line is next).
    Chunked(Option<usize>),
    /// The body is complete.
    Done,
}

/// What a read of body bytes produced.
pub enum BodyRead {
    /// Some bytes of the body.
    Data(Vec<u8>),
    /// The body (or the connection) ended.
    End,
    /// Nothing arrived before the deadline.
    Timeout,
}

impl HttpStream {
    /// Connects to the target and writes `request` (a complete request head and body).
    pub fn send(target: &Target, request: &[u8], deadline: Instant) -> Result<Self, String> {
        let mut sock = connect(target, deadline)?;
        sock.set_write_timeout(remaining(deadline))
            .map_err(|e| e.to_string())?;
        let write_error = match sock.write_all(request).and_then(|()| sock.flush()) {
            Ok(()) => None,
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                Some(format!("writing the request: {e}"))
            }
            Err(e) => return Err(format!("writing the request: {e}")),
        };
        Ok(Self {
            sock,
            raw: Vec::new(),
            framing: Framing::Head,
            write_error,
        })
    }

    /// Reads the response head.
    pub fn head(&mut self, deadline: Instant) -> Result<Head, String> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.raw) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = Head {
                        status: response.code.unwrap_or(0),
                        headers: response
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_ascii_lowercase(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                    };
                    self.raw.drain(..len);
                    let chunked = head
                        .header("transfer-encoding")
                        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                    let length = head
                        .header("content-length")
                        .and_then(|v| v.trim().parse().ok());
                    self.framing = match (chunked, length) {
                        (true, _) => Framing::Chunked(None),
                        (false, Some(n)) => Framing::Length(n),
                        (false, None) if matches!(head.status, 101 | 204 | 304) => Framing::Done,
                        (false, None) => Framing::UntilEof,
                    };
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if self.raw.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err("the response head is larger than 64 KiB".into());
                }
                Err(e) => return Err(format!("the response is not HTTP/1.x: {e}")),
            }
            match self.fill(deadline)? {
                Some(0) => {
                    return Err(match &self.write_error {
                        Some(e) => format!("{e}; the server closed the connection, no answer"),
                        None => "the server closed the connection before answering".into(),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(match &self.write_error {
                        Some(e) => format!("{e}; no answer arrived in time"),
                        None => "no response head arrived in time".into(),
                    });
                }
            }
        }
    }

    /// Reads more of the body.
    pub fn body_part(&mut self, deadline: Instant) -> Result<BodyRead, String> {
        loop {
            if let Some(data) = self.take_decoded()? {
                return Ok(BodyRead::Data(data));
            }
            if matches!(self.framing, Framing::Done) {
                return Ok(BodyRead::End);
            }
            match self.fill(deadline)? {
                Some(0) => {
                    return match self.framing {
                        Framing::UntilEof => {
                            self.framing = Framing::Done;
                            Ok(BodyRead::End)
                        }
                        _ => Err("the connection ended in the middle of the body".into()),
                    };
                }
                Some(_) => {}
                None => return Ok(BodyRead::Timeout),
            }
        }
    }

    /// Reads the whole body.
    pub fn body(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            match self.body_part(deadline)? {
                BodyRead::Data(data) => body.extend(data),
                BodyRead::End => return Ok(body),
                BodyRead::Timeout => return Err("the body did not end in time".into()),
            }
            if body.len() > MAX_BODY {
                return Err("the body is larger than 16 MiB".into());
            }
        }
    }

    /// Body bytes decodable from what was read so far.
    fn take_decoded(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.framing {
            Framing::Head | Framing::Done => Ok(None),
            Framing::UntilEof => Ok((!self.raw.is_empty()).then(|| std::mem::take(&mut self.raw))),
            Framing::Length(left) => {
                if self.raw.is_empty() && left > 0 {
                    return Ok(None);
                }
                let n = left.min(self.raw.len());
                let data: Vec<u8> = self.raw.drain(..n).collect();
                self.framing = if left == n {
                    Framing::Done
                } else {
                    Framing::Length(left - n)
                };
                Ok(Some(data))
            }
            Framing::Chunked(None) => {
                let Some(end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                let line = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| format!("bad chunk size line {line:?}"))?;
                if size == 0 {
                    // The last chunk; trailers (if any) are not read.
                    self.raw.clear();
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                self.raw.drain(..end + 2);
                self.framing = Framing::Chunked(Some(size));
                self.take_decoded()
            }
            Framing::Chunked(Some(left)) => {
                let n = left.min(self.raw.len());
                if n == 0 {
                    return Ok(None);
                }
                if n == left {
                    if self.raw.len() < left + 2 {
                        return Ok(None); // wait for the CRLF after the chunk
                    }
                    let data: Vec<u8> = self.raw.drain(..n).collect();
                    self.raw.drain(..2);
                    self.framing = Framing::Chunked(None);
                    return Ok(Some(data));
                }
                let data: Vec<u8> = self.raw.drain(..n).collect();
                self.framing = Framing::Chunked(Some(left - n));
                Ok(Some(data))
            }
        }
    }

    /// Reads from the socket: `Some(0)` at the end, `None` when the deadline passed.
    fn fill(&mut self, deadline: Instant) -> Result<Option<usize>, String> {
        let Some(timeout) = remaining(deadline) else {
            return Ok(None);
        };
        self.sock
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16 * 1024];
        match self.sock.read(&mut buf) {
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                Ok(Some(n))
            }
            Err(e) if timed_out(&e) => Ok(None),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(Some(0)),
            Err(e) => Err(format!("reading from the server: {e}")),
        }
    }
}

/// Builds a request head (and body): `Host` and `Connection: close` are added unless given, and
/// `Content-Length` when there is a body.
pub fn request(
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("host") {
        out.push_str(&format!("Host: {authority}\r\n"));
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body
        && !has("content-length")
        && !has("transfer-encoding")
    {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if !has("connection") {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

// ---- WebSocket ------------------------------------------------------------------------------

/// An open WebSocket connection.
pub struct Ws {
    socket: WebSocket<Shared>,
    closed: bool,
}

/// The stream of a WebSocket handshake, kept by the runner too: when the upgrade is refused,
/// tungstenite gives back only the part of the body that came with the head, and the rest is
/// read from here.
#[derive(Clone)]
struct Shared(std::sync::Arc<std::sync::Mutex<Stream>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Stream) -> io::Result<T>) -> io::Result<T> {
        let mut stream = self
            .0
            .lock()
            .map_err(|_| io::Error::other("the stream's lock is poisoned"))?;
        f(&mut stream)
    }
}

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|s| s.read(buf))
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|s| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.with(Write::flush)
    }
}

/// The result of a WebSocket handshake.
pub enum Upgrade {
    /// Upgraded.
    Open(Box<Ws>),
    /// Refused with this head and body.
    Refused(Head, Vec<u8>),
}

/// Something received on a WebSocket.
#[derive(Debug)]
pub enum Incoming {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A close frame, with its code.
    Close(Option<u16>, String),
    /// The connection ended (after a close, or without one).
    End,
    /// Nothing arrived before the deadline.
    Timeout,
}

impl Ws {
    /// Opens `ws://authority/path` (`wss://` over TLS) with these extra headers.
    pub fn open(
        target: &Target,
        path: &str,
        headers: &[(String, String)],
        deadline: Instant,
    ) -> Result<Upgrade, String> {
        let sock = connect(target, deadline)?;
        sock.set_read_timeout(remaining(deadline))
            .map_err(|e| e.to_string())?;
        let scheme = if target.tls.is_some() { "wss" } else { "ws" };
        let authority = &target.authority;
        let mut req = format!("{scheme}://{authority}{path}")
            .into_client_request()
            .map_err(|e| format!("bad WebSocket URL {path:?}: {e}"))?;
        for (k, v) in headers {
            let name: tungstenite::http::HeaderName =
                k.parse().map_err(|_| format!("bad header name {k:?}"))?;
            let value = v.parse().map_err(|_| format!("bad header value {v:?}"))?;
            req.headers_mut().insert(name, value);
        }
        // Incoming frames are not bounded by the server's max_frame_bytes (PROTOCOL.md §2).
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_BODY))
            .max_frame_size(Some(MAX_BODY));
        let shared = Shared(std::sync::Arc::new(std::sync::Mutex::new(sock)));
        match tungstenite::client::client_with_config(req, shared.clone(), Some(config)) {
            Ok((socket, _)) => Ok(Upgrade::Open(Box::new(Self {
                socket,
                closed: false,
            }))),
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let head = Head {
                    status: response.status().as_u16(),
                    headers: response
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                };
                let mut body = response.into_body().unwrap_or_default();
                let length = head
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if body.len() < length.min(MAX_BODY) {
                    let mut rest = vec![0u8; length.min(MAX_BODY) - body.len()];
                    shared
                        .with(|s| {
                            s.set_read_timeout(remaining(deadline))?;
                            s.read_exact(&mut rest)
                        })
                        .map_err(|e| format!("reading the body of the refusal: {e}"))?;
                    body.extend_from_slice(&rest);
                }
                Ok(Upgrade::Refused(head, body))
            }
            Err(HandshakeError::Failure(e)) => Err(format!("WebSocket handshake failed: {e}")),
            Err(HandshakeError::Interrupted(_)) => {
                Err("the WebSocket handshake did not complete in time".into())
            }
        }
    }

    /// Sends a message.
    pub fn send(&mut self, message: Message) -> Result<(), String> {
        self.socket
            .send(message)
            .map_err(|e| format!("sending: {e}"))
    }

    /// Writes `bytes` to the connection as they are (a frame the case built).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        let stream = self.socket.get_mut();
        stream
            .write_all(bytes)
            .and_then(|()| stream.flush())
            .map_err(|e| format!("writing a raw frame: {e}"))
    }

    /// The next message, close or end, or `Timeout`.
    pub fn next(&mut self, deadline: Instant) -> Result<Incoming, String> {
        if self.closed {
            return Ok(Incoming::End);
        }
        loop {
            let Some(timeout) = remaining(deadline) else {
                return Ok(Incoming::Timeout);
            };
            self.socket
                .get_mut()
                .with(|s| s.set_read_timeout(Some(timeout)))
                .map_err(|e| e.to_string())?;
            match self.socket.read() {
                Ok(Message::Text(t)) => return Ok(Incoming::Text(t.as_str().to_owned())),
                Ok(Message::Binary(b)) => return Ok(Incoming::Binary(b.to_vec())),
                Ok(Message::Close(frame)) => {
                    return Ok(match frame {
                        Some(f) => {
                            Incoming::Close(Some(f.code.into()), f.reason.as_str().to_owned())
                        }
                        None => Incoming::Close(None, String::new()),
                    });
                }
                Ok(_) => {} // WebSocket pings are answered by tungstenite
                Err(tungstenite::Error::Io(e)) if timed_out(&e) => return Ok(Incoming::Timeout),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.closed = true;
                    return Ok(Incoming::End);
                }
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::UnexpectedEof
                            | ErrorKind::BrokenPipe
                    ) =>
                {
                    self.closed = true;
                    return Ok(Incoming::End);
                }
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {
                    self.closed = true;
                    return Ok(Incoming::End);
                }
                Err(e) => return Err(format!("reading: {e}")),
            }
        }
    }

    /// Closes the connection from the client side (best effort).
    pub fn close(&mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}
