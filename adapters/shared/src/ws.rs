//! A `/ws` connection: the native protocol over WebSocket (async-tungstenite), on one task.
//!
//! The task waits for whichever comes first: the driver stopping it (`kill`), frames in its
//! outbox, or a client message. Client messages are decoded here with
//! [`tidings_core::native::decode`] (text and binary alike), so parsing runs on every core, and
//! sent to the driver in order. Outgoing frames are written in batches (what is queued, several
//! frames per socket write, not through tungstenite's `Sink`) and reported with `Flushed`. WebSocket pings are answered by tungstenite and count
//! as activity (`Command::Ping` without id). The application's pings ([`crate::Hub::ping`]) carry
//! the connection's counter (`1`, `2`, …) and are answered by the pong with the same payload. A
//! message over `max_frame_bytes` ends reading and becomes the core's fatal `frame_too_large`:
//! the client gets the error frame and close 1009. A break of RFC 6455's framing rules (an
//! unmasked frame, reserved bits or opcodes, a control frame over 125 bytes or fragmented, a
//! stray continuation frame, anything that is not a frame) ends reading the same way as the
//! core's fatal `protocol_error`: the error frame and close 1002 (§7.1.7). A normal close ([`crate::Hub::close_normal`])
//! is a close frame 1000 without reason.
//! A server close sends the error frame the core queued, then a close frame whose code comes from
//! the connection's codec ([`tidings_core::codec::Codec::ws_close_code`], by default
//! [`tidings_core::ErrorCode::ws_close_code`]; ksbus shuts down with 1012) and whose reason is
//! the error message (at most 123 bytes), then waits briefly for the client's close.

use std::future::{Future, pending};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::error::{CapacityError, ProtocolError as WsProtocolError};
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
use async_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use bytes::Bytes;
use futures_channel::oneshot;
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::FutureExt as _;
use futures_util::{AsyncWriteExt as _, SinkExt as _, StreamExt as _};
use tidings_core::codec::Codec;
use tidings_core::{Claim, Command, ErrorCode, ProtocolError};

use crate::auth::Authenticated;
use crate::conn::{Ended, FromConn, Opening, PingReply, ToConn, hand};
use crate::ctx::ConnCtx;
use crate::http::linger;
use crate::io::{with_deadline, with_timeout};
use crate::request::RequestHead;
use crate::runtime::Runtime;
use crate::writer::{Bound, ConnWriter};

/// Frames (and bytes) written per flush at most; more may follow in the next batch at once.
const BATCH: Bound = Bound {
    entries: 256,
    bytes: 256 << 10,
};
/// Data frames are coalesced up to this many bytes per socket write: several frames per system
/// call, while what a connection holds during a blocked write stays small.
const COALESCE_BYTES: usize = 16 << 10;
/// The longest close reason RFC 6455 allows (a control frame carries at most 125 bytes).
const MAX_CLOSE_REASON: usize = 123;

/// Pings of the application ([`crate::Hub::ping`]) waiting for their pong, per connection, at
/// most.
const MAX_WAITING_PINGS: usize = 64;

/// The application's pings of one connection: counter payloads `1`, `2`, … (etp's `Ping`), each
/// answered with the round-trip time when the pong with its payload arrives.
#[derive(Default)]
struct Pings {
    last: u64,
    waiting: Vec<(u64, Instant, PingReply)>,
}

impl Pings {
    /// The payload of the next ping, or `None` (the reply answered) if too many are waiting.
    fn start(&mut self, now: Instant, reply: PingReply) -> Option<Bytes> {
        // Pings whose caller gave up (timed out) wait no longer.
        self.waiting.retain(|(_, _, r)| !r.is_canceled());
        if self.waiting.len() >= MAX_WAITING_PINGS {
            let _ = reply.send(Err(ProtocolError::new(
                ErrorCode::LimitReached,
                format!("at most {MAX_WAITING_PINGS} pings may wait for their pong"),
            )));
            return None;
        }
        self.last += 1;
        self.waiting.push((self.last, now, reply));
        Some(Bytes::from(self.last.to_string()))
    }

    /// A pong arrived: answers the ping with the same payload, if one is waiting.
    fn pong(&mut self, now: Instant, payload: &[u8]) {
        if self.waiting.is_empty() {
            return;
        }
        let Some(n) = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.parse::<u64>().ok())
        else {
            return;
        };
        if let Some(i) = self.waiting.iter().position(|(id, _, _)| *id == n) {
            let (_, sent, reply) = self.waiting.swap_remove(i);
            let _ = reply.send(Ok(now.saturating_duration_since(sent)));
        }
    }
}

enum Step {
    Killed,
    ToConn(Option<ToConn>),
    Read(Option<Result<Message, WsError>>),
}

/// Runs the connection until it ends, then reports `Closed`.
///
/// The request head and the authentication are used up here, before the future is made: held
/// in it, they would enlarge every idle connection's task for the connection's whole life.
pub(crate) fn run<R, S>(
    ctx: ConnCtx<R>,
    ws: WebSocketStream<S>,
    head: RequestHead,
    auth: Authenticated,
    codec: Box<dyn Codec>,
) -> impl Future<Output = ()> + Send + 'static
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (kill_tx, kill) = oneshot::channel::<()>();
    let decoder = codec.fresh();
    let (opening, writer) = ctx
        .hub
        .opening(codec, &head, auth, None, Claim::IfFree, Some(kill_tx));
    drop(head);
    serve(ctx, ws, Box::new(opening), writer, kill, decoder)
}

/// The connection's task. Not an `async fn`: that would keep its arguments twice (as arguments
/// and as the locals they are moved into), about 400 bytes more in every connection's task.
#[allow(clippy::manual_async_fn)]
fn serve<R, S>(
    ctx: ConnCtx<R>,
    mut ws: WebSocketStream<S>,
    opening: Box<Opening>,
    mut writer: ConnWriter,
    mut kill: oneshot::Receiver<()>,
    decoder: Box<dyn Codec>,
) -> impl Future<Output = ()> + Send
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        let rt = &ctx.rt;
        let hub = &ctx.hub;
        let to_driver = hub.conn_sender();
        if !hand(to_driver, FromConn::Open(opening)).sent().await {
            return;
        }
        let limits = hub.limits();
        let write_timeout = ctx.write_timeout;
        let close_wait = ctx.close_grace.min(Duration::from_secs(2));
        let mut reading = true;
        // The client's close code, if it closed first.
        let mut peer_close: Option<u16> = None;
        // How it ended, unless the client closed.
        let mut ended = Ended::Lost;
        let mut pings = Pings::default();
        loop {
            let step = {
                let killed = async {
                    let _ = (&mut kill).await;
                    Step::Killed
                };
                let out = async { Step::ToConn(writer.recv().await) };
                let read = async {
                    if reading {
                        Step::Read(ws.next().await)
                    } else {
                        pending().await
                    }
                };
                killed.or(out).or(read).await
            };
            match step {
                Step::Killed | Step::ToConn(None) => break,
                // The client closed (tungstenite answers that by itself): nothing more may follow
                // its close frame, and the read side ends the loop next.
                Step::ToConn(Some(_)) if peer_close.is_some() => {}
                Step::ToConn(Some(first)) => {
                    // Boxed, like the close below: these futures are large and short-lived; in
                    // place they would enlarge every idle connection's task.
                    let write = Box::pin(with_timeout(
                        rt,
                        write_timeout,
                        write_batch(rt, &mut ws, &mut writer, first, &mut pings),
                    ));
                    let killed = async {
                        let _ = (&mut kill).await;
                        Some(Err(WsError::ConnectionClosed))
                    };
                    let close = match write.or(killed).await {
                        Some(Ok(close)) => close,
                        None => {
                            ended = Ended::WriteTimeout;
                            break;
                        }
                        Some(Err(_)) => break, // killed, or the socket failed
                    };
                    writer.flushed();
                    if let Some(reason) = close {
                        // The close code is the protocol's (ksbus shuts down with 1012).
                        let reason = reason.as_ref().map(|r| (decoder.ws_close_code(r), r));
                        let closing = Box::pin(close_ws(rt, &mut ws, reason, reading, close_wait));
                        let killed = async {
                            let _ = (&mut kill).await;
                        };
                        closing.or(killed).await;
                        break;
                    }
                }
                Step::Read(None) => break,
                Step::Read(Some(Ok(message))) => {
                    // Copied out of tungstenite's read buffer: the core keeps slices of the frame
                    // (payloads, in the history), which would otherwise pin whole read blocks.
                    if let Message::Pong(payload) = &message {
                        pings.pong(rt.now(), payload);
                    }
                    let data = match &message {
                        Message::Text(text) => text.as_bytes(),
                        Message::Binary(data) => &data[..],
                        Message::Ping(_) | Message::Pong(_) => &[][..],
                        Message::Close(frame) => {
                            peer_close = Some(frame.as_ref().map_or(1005, |f| u16::from(f.code)));
                            continue;
                        }
                        Message::Frame(_) => continue,
                    };
                    let mut cmds = Vec::with_capacity(1);
                    if matches!(message, Message::Ping(_) | Message::Pong(_)) {
                        cmds.push(Command::Ping { req: None });
                    } else {
                        decoder.decode(&Bytes::copy_from_slice(data), limits, &mut cmds);
                    }
                    let mut gone = false;
                    for cmd in cmds {
                        if !hand(to_driver, FromConn::Command(writer.conn(), cmd))
                            .sent()
                            .await
                        {
                            gone = true;
                            break;
                        }
                    }
                    if gone {
                        break;
                    }
                }
                Step::Read(Some(Err(error))) => {
                    reading = false;
                    let error = match error {
                        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                            let message = decoder.frame_too_large(size, max_size);
                            ProtocolError::new(ErrorCode::FrameTooLarge, message)
                        }
                        WsError::Utf8(_) => ProtocolError::new(
                            ErrorCode::NotUtf8,
                            "a text message is not valid UTF-8",
                        ),
                        // RFC 6455 §7.1.7: a broken framing rule fails the connection with
                        // 1002, after the error frame (the core closes with `protocol_error`).
                        WsError::Protocol(violation) if is_violation(&violation) => {
                            ProtocolError::new(
                                ErrorCode::ProtocolError,
                                format!("WebSocket protocol violation: {violation}"),
                            )
                        }
                        other => {
                            tracing::debug!(conn = %writer.conn(), "websocket ended: {other}");
                            break;
                        }
                    };
                    let cmd = Command::Invalid {
                        req: None,
                        error,
                        fatal: true,
                    };
                    if !hand(to_driver, FromConn::Command(writer.conn(), cmd))
                        .sent()
                        .await
                    {
                        break;
                    }
                }
            }
        }
        let ended = peer_close.map_or(ended, Ended::Peer);
        hand(to_driver, FromConn::Closed(writer.conn(), ended))
            .sent()
            .await;
    }
}

/// Whether a read error is the client breaking RFC 6455's framing rules (answered with the
/// error frame and close 1002), rather than the connection ending (a reset without a close, data
/// after the client's own close) or an error of our own side.
fn is_violation(error: &WsProtocolError) -> bool {
    !matches!(
        error,
        WsProtocolError::ResetWithoutClosingHandshake
            | WsProtocolError::ReceivedAfterClosing
            | WsProtocolError::SendAfterClosing
    )
}

/// Writes `first` and whatever else is queued (up to a [`BATCH`]), with one flush; the writer
/// counts the payload bytes for the credit. Returns the close reason if a `Close` came in the
/// batch (`Some(None)`: a normal close).
///
/// Data frames do not go through tungstenite's `Sink`: their headers (tungstenite's
/// `FrameHeader`) and the frames are coalesced into one buffer, which goes to the socket in one
/// write per [`COALESCE_BYTES`]; the `Sink` would copy every frame into tungstenite's own buffer,
/// on every connection, with a call per frame. tungstenite is flushed first, so that anything
/// it queued (a pong it answers by itself) goes out before, and it writes the control frames
/// (pings, the close) as before.
async fn write_batch<R, S>(
    rt: &R,
    ws: &mut WebSocketStream<S>,
    writer: &mut ConnWriter,
    first: ToConn,
    pings: &mut Pings,
) -> Result<Option<Option<ProtocolError>>, WsError>
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Sized for what is queued (frames of one publish burst are alike), so that it rarely grows.
    let guess = match &first {
        ToConn::Frame(f) => (f.len() + 10) * (1 + writer.queued()).min(BATCH.entries),
        _ => 0,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(guess.min(COALESCE_BYTES + 1024));
    let mut next = Some(first);
    ws.flush().await?;
    while let Some(out) = next.take() {
        match out {
            ToConn::Frame(frame) => {
                // A text frame of the shared bytes as they are: the core encoded valid UTF-8
                // JSON once; checking it again per connection would cost a pass over every
                // frame for every subscriber.
                push_text_frame(&mut buf, &frame)?;
                if buf.len() >= COALESCE_BYTES {
                    write_raw(ws, &mut buf).await?;
                }
            }
            control => {
                write_raw(ws, &mut buf).await?;
                match control {
                    ToConn::Close(reason) => {
                        ws.flush().await?;
                        return Ok(Some(reason));
                    }
                    ToConn::Ping(reply) => {
                        if let Some(payload) = pings.start(rt.now(), reply) {
                            ws.feed(Message::Ping(payload)).await?;
                        }
                    }
                    // Protocols without keep-alive frames of their own (ksbus, etp) get a
                    // WebSocket ping, whose pong counts as activity.
                    ToConn::KeepAlive => ws.feed(Message::Ping(Bytes::new())).await?,
                    // Typed items are for in-process subscriptions only.
                    ToConn::Frame(_) | ToConn::Item(_) => {}
                }
            }
        }
        next = writer.more(BATCH);
    }
    write_raw(ws, &mut buf).await?;
    ws.flush().await?;
    Ok(None)
}

/// Appends a final, unmasked text frame with `payload` (RFC 6455 §5.2: a server does not mask),
/// its header formatted by tungstenite.
fn push_text_frame(buf: &mut Vec<u8>, payload: &[u8]) -> Result<(), WsError> {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    buf.reserve(header.len(len) + payload.len());
    header.format(len, buf)?;
    buf.extend_from_slice(payload);
    Ok(())
}

/// Writes `buf` to the socket under the WebSocket (whose own buffer was flushed) and empties it.
async fn write_raw<S>(ws: &mut WebSocketStream<S>, buf: &mut Vec<u8>) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if buf.is_empty() {
        return Ok(());
    }
    ws.get_mut().write_all(buf).await?;
    buf.clear();
    Ok(())
}

/// Sends the close frame for `reason` (its close code, from the connection's codec, and the
/// error; `None`: a normal close, 1000 without a reason), then waits (briefly) for the client's close, or, if the
/// connection can no longer be read as WebSocket, drains what the client still sends so that
/// How long a connection that broke the framing rules is drained after its close frame.
const VIOLATION_LINGER: Duration = Duration::from_millis(250);

/// closing does not reset the connection before it has read the close.
async fn close_ws<R, S>(
    rt: &R,
    ws: &mut WebSocketStream<S>,
    reason: Option<(u16, &ProtocolError)>,
    reading: bool,
    wait: Duration,
) where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = rt.now() + wait;
    let frame = match reason {
        Some((code, reason)) => CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(truncate(&reason.message, MAX_CLOSE_REASON)),
        },
        None => CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::default(),
        },
    };
    if with_deadline(rt, deadline, ws.close(Some(frame)))
        .await
        .is_none()
    {
        return;
    }
    if reading {
        let _ = with_deadline(rt, deadline, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    } else {
        // The frames can no longer be read (a protocol violation): its close reply cannot be
        // seen, so drain briefly, for the close frame not to be lost to a reset, then close the
        // TCP connection as the server does first (RFC 6455 §7.1.1) instead of waiting out
        // `close_grace` for a reply it could not read anyway.
        linger(rt, ws.get_mut(), 4 << 20, VIOLATION_LINGER).await;
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use async_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::{push_text_frame, truncate};

    /// Every length encoding, parsed back by tungstenite: final, unmasked text frames whose
    /// payload follows the header exactly.
    #[test]
    fn text_frames_parse_back_with_every_length_encoding() {
        let sizes = [0, 1, 125, 126, 127, 65_535, 65_536, 100_000];
        let mut buf = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            push_text_frame(&mut buf, &vec![b'a' + i as u8; n]).unwrap();
        }
        let mut cursor = Cursor::new(&buf[..]);
        for (i, &n) in sizes.iter().enumerate() {
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().expect("a header");
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert!(header.mask.is_none(), "a server does not mask");
            assert_eq!(len, n as u64);
            let start = cursor.position() as usize;
            assert!(buf[start..start + n].iter().all(|&b| b == b'a' + i as u8));
            cursor.set_position((start + n) as u64);
        }
        assert_eq!(cursor.position() as usize, buf.len());
    }

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("abc", 123), "abc");
        let long = "é".repeat(100);
        let cut = truncate(&long, 123);
        assert_eq!(cut.len(), 122);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
