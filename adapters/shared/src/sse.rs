//! A `/sse` stream on one task.
//!
//! The stream opens in one driver step with its subscription (resuming from the cursor if one
//! was given), so nothing published after the response head can be missed. The response head
//! carries `Content-Type: text/event-stream`, `Cache-Control: no-cache` and
//! `X-Accel-Buffering: no`; the body is everything the core encodes for the stream (`retry:`,
//! events with `id:`, `:` keep-alives, `tidings-gap` and, on close, `tidings-error` events),
//! written as it comes, several queued frames per write. The stream ends when the client goes
//! away (the task keeps reading to notice), or when the core closes it.

use std::future::Future;

use bytes::Bytes;
use futures_channel::oneshot;
use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::FutureExt as _;
use futures_util::{AsyncReadExt as _, AsyncWriteExt as _};
use tidings_core::sse::SseCodec;
use tidings_core::{Claim, Command, Cursor, Name, Pattern, Subscribe};

use crate::auth::Authenticated;
use crate::conn::{Ended, FromConn, ToConn, hand};
use crate::control::Control;
use crate::ctx::ConnCtx;
use crate::hub::Hub;
use crate::io::with_timeout;
use crate::request::RequestHead;
use crate::runtime::Runtime;
use crate::writer::{Bound, ConnWriter};

// Defined with the other HTTP basics, below the configuration (which adds `sse.headers` to
// them); their public place stays here.
pub use crate::http::SSE_HEADERS;

/// A checked `/sse` request, ready to run.
#[derive(Debug)]
pub struct SseRequest {
    /// The topic patterns.
    pub patterns: Vec<Pattern>,
    /// Resume after this cursor.
    pub from: Option<Cursor>,
    /// Who is asking.
    pub auth: Authenticated,
    /// The response headers besides the status line and `Connection`: the stream headers
    /// (`Content-Type`, `Cache-Control`, `X-Accel-Buffering` and `sse.headers`) and CORS.
    pub headers: Vec<(String, String)>,
    /// The client id the stream claims (`client_id` parameter): it takes the id over from any
    /// connection holding it, and gets back its parked session (the reconnect window).
    pub client_id: Option<Name>,
}

/// Bytes coalesced into one write at most (the entry that reaches it included).
const COALESCE: Bound = Bound {
    entries: usize::MAX,
    bytes: 64 << 10,
};

enum Step {
    Killed,
    ToConn(Option<ToConn>),
    /// The client closed its side, or the connection failed.
    Gone,
}

/// Runs the stream until it ends, then reports `Closed`.
///
/// The request is used up here, before the future is made (not an `async fn`, which would keep
/// its arguments twice): what stays in every stream's task is what the stream needs.
pub(crate) fn run<R, S>(
    ctx: ConnCtx<R>,
    mut io: S,
    head: RequestHead,
    request: SseRequest,
) -> impl Future<Output = ()> + Send + 'static
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let SseRequest {
        patterns,
        from,
        mut auth,
        headers,
        client_id,
    } = request;
    let (kill_tx, mut kill) = oneshot::channel::<()>();
    let subscribe = subscribe(patterns, from);
    let claim = claim_of(&mut auth, client_id);
    let (opening, mut writer) = ctx.hub.opening(
        Box::new(SseCodec),
        &head,
        auth,
        Some(subscribe),
        claim,
        Some(kill_tx),
    );
    let opening = Box::new(opening);
    drop(head);
    // The head goes out with the opening frame (`retry:`, or a `:` comment), which the broker
    // sends at once: the client sees the stream open (`onopen`) without waiting for an event.
    let mut response = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in &headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("Connection: close\r\n\r\n");
    let mut pending_head = Some(response.into_bytes());
    async move {
        let rt = &ctx.rt;
        let hub = &ctx.hub;
        let to_driver = hub.conn_sender();
        if !hand(to_driver, FromConn::Open(opening)).sent().await {
            return;
        }
        let write_timeout = ctx.write_timeout;
        let mut ended = Ended::Lost;

        loop {
            let step = {
                let killed = async {
                    let _ = (&mut kill).await;
                    Step::Killed
                };
                let out = async { Step::ToConn(writer.recv().await) };
                let gone = async {
                    let mut scratch = [0u8; 64];
                    loop {
                        match io.read(&mut scratch).await {
                            Ok(0) | Err(_) => return Step::Gone,
                            Ok(_) => {} // nothing is expected from an SSE client: discard
                        }
                    }
                };
                killed.or(out).or(gone).await
            };
            let first = match step {
                Step::Killed | Step::Gone | Step::ToConn(None) => break,
                Step::ToConn(Some(first)) => first,
            };
            // One write: the response head (first time), `first` and what else is queued.
            let mut frames: Vec<Bytes> = Vec::new();
            let mut close = None;
            let mut next = Some(first);
            while let Some(out) = next.take() {
                match out {
                    ToConn::Frame(frame) => frames.push(frame),
                    // Not handed to streams (the driver refuses): dropping the reply says so.
                    ToConn::Ping(_) | ToConn::KeepAlive | ToConn::Item(_) => {}
                    ToConn::Close(reason) => {
                        if let Some(reason) = &reason {
                            tracing::debug!(conn = %writer.conn(), "closing the stream: {reason}");
                        }
                        close = Some(reason);
                    }
                }
                next = writer.more(COALESCE);
            }
            let size = writer.unflushed();
            let head_bytes = pending_head.take();
            let write = async {
                match (&head_bytes, frames.as_slice()) {
                    (None, [one]) => io.write_all(one).await?,
                    _ => {
                        let head_len = head_bytes.as_ref().map_or(0, Vec::len);
                        let mut buf = Vec::with_capacity(head_len + size);
                        if let Some(h) = &head_bytes {
                            buf.extend_from_slice(h);
                        }
                        for frame in &frames {
                            buf.extend_from_slice(frame);
                        }
                        io.write_all(&buf).await?;
                    }
                }
                io.flush().await?;
                if close.is_some() {
                    io.close().await?;
                }
                Ok::<(), std::io::Error>(())
            };
            let killed = async {
                let _ = (&mut kill).await;
                Some(Err(std::io::ErrorKind::ConnectionAborted.into()))
            };
            // Boxed: in place, this short-lived future would enlarge every idle stream's task.
            let written = Box::pin(with_timeout(rt, write_timeout, write))
                .or(killed)
                .await;
            match written {
                Some(Ok(())) => {}
                None => {
                    ended = Ended::WriteTimeout;
                    break;
                }
                Some(Err(_)) => break, // killed, or the socket failed
            }
            writer.flushed();
            if close.is_some() {
                break;
            }
        }
        hand(to_driver, FromConn::Closed(writer.conn(), ended))
            .sent()
            .await;
    }
}

/// An SSE stream as a [`Stream`](futures_util::Stream) of body chunks, for embeddings whose own
/// HTTP server writes the response (an axum handler returning a streaming body with
/// [`SSE_HEADERS`]). Made by [`crate::Service::sse_body`].
///
/// Each chunk is reported to the broker as written when the next one is asked for (the HTTP
/// server asks once it has written the previous one), which is the flow-control credit. The
/// stream ends when the broker closes it (after the `tidings-error` event); dropping it (the
/// client went away) closes the connection.
pub struct SseBody {
    writer: ConnWriter,
    /// The stream ended (a close, or the driver dropped it): no more chunks.
    ended: bool,
}

/// The stream's subscription, run in the same driver step as its `Open`.
fn subscribe(patterns: Vec<Pattern>, from: Option<Cursor>) -> Command {
    Command::Subscribe(Subscribe {
        req: None,
        patterns,
        from,
        name: None,
    })
}

impl std::fmt::Debug for SseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBody")
            .field("conn", &self.writer.conn())
            .finish_non_exhaustive()
    }
}

impl SseBody {
    /// Opens the stream (after [`crate::Service::check_sse`]).
    pub(crate) fn open(hub: &Hub, head: &RequestHead, request: SseRequest) -> Self {
        let SseRequest {
            patterns,
            from,
            mut auth,
            headers: _,
            client_id,
        } = request;
        let claim = claim_of(&mut auth, client_id);
        let (opening, writer) = hub.opening(
            Box::new(SseCodec),
            head,
            auth,
            Some(subscribe(patterns, from)),
            claim,
            None,
        );
        // Everything of this stream goes through the control channel, so `Closed` (sent on
        // drop, without waiting) can never overtake `Open`.
        let ended = writer.ctl().send(Control::Open(Box::new(opening))).is_err();
        Self { writer, ended }
    }
}

impl futures_util::Stream for SseBody {
    type Item = Bytes;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Bytes>> {
        use std::task::Poll;
        let this = &mut *self;
        // The HTTP server asks for the next chunk once it has written the previous one.
        this.writer.flushed();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.writer.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(ToConn::Frame(frame))) => return Poll::Ready(Some(frame)),
                // Not handed to streams (the driver refuses): dropping the reply says so.
                Poll::Ready(Some(ToConn::Ping(_) | ToConn::KeepAlive | ToConn::Item(_))) => {}
                Poll::Ready(Some(ToConn::Close(_)) | None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        let _ = self.writer.ctl().send(Control::Closed(self.writer.conn()));
    }
}

/// How a stream claims its client id: one asked for in the request (`client_id`) takes it over
/// from the stream it replaces (for its principal only, see [`Claim`]); one from authentication
/// is claimed if free.
fn claim_of(auth: &mut Authenticated, asked: Option<Name>) -> Claim {
    match asked {
        Some(id) => {
            auth.client_id = Some(id);
            Claim::TakeOver
        }
        None => Claim::IfFree,
    }
}
