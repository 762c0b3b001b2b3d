//! A `/sse` stream, as the body of its response.
//!
//! The stream opens in one driver step with its subscription (resuming from the cursor if one
//! was given), so nothing published after the response head can be missed. The response head
//! carries `Content-Type: text/event-stream`, `Cache-Control: no-cache` and
//! `X-Accel-Buffering: no`; the body is everything the core encodes for the stream (`retry:`,
//! events with `id:`, `:` keep-alives, `tidings-gap` and, on close, `tidings-error` events),
//! one chunk per batch of queued frames (an HTTP/1.1 chunk, or an HTTP/2 DATA frame), sent as it
//! comes. The stream ends when the client goes away (the HTTP server drops the body), or when
//! the core closes it.

use bytes::Bytes;
use tidings_core::sse::SseCodec;
use tidings_core::{Claim, Command, Cursor, Name, Pattern, Subscribe};

use crate::auth::Authenticated;
use crate::conn::{Ended, ToConn};
use crate::control::Control;
use crate::ctx::WriteStall;
use crate::hub::Hub;
use crate::request::RequestHead;
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
    /// The topics whose presence the stream watches (`presence` parameters): a `presence` event
    /// with the presence of each first, then one per join and leave.
    pub presence: Vec<tidings_core::Topic>,
}

/// Bytes coalesced into one write at most (the entry that reaches it included).
const COALESCE: Bound = Bound {
    entries: usize::MAX,
    bytes: 64 << 10,
};

/// An SSE stream as a [`Stream`](futures_util::Stream) of body chunks: the server's own
/// listener and embeddings (an axum handler returning a streaming body) send it after the
/// request's headers. Made by [`crate::Service::sse_body`].
///
/// Each chunk holds what was queued when it was asked for (up to 64 KiB), so a burst costs few
/// chunks and writes. A chunk is reported to the broker as written when the next one is asked
/// for (the HTTP server asks once it has written the previous one), which is the flow-control
/// credit. The stream ends when the broker closes it (after the `tidings-error` event);
/// dropping it (the client went away) closes the connection.
pub struct SseBody {
    writer: ConnWriter,
    /// Set by the listener's socket if the client read nothing for the write timeout.
    stall: Option<WriteStall>,
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
    pub(crate) fn open(
        hub: &Hub,
        head: &RequestHead,
        request: SseRequest,
        stall: Option<WriteStall>,
    ) -> Self {
        let SseRequest {
            patterns,
            from,
            mut auth,
            headers: _,
            client_id,
            presence,
        } = request;
        let claim = claim_of(&mut auth, client_id);
        let (mut opening, writer) = hub.opening(
            Box::new(SseCodec),
            head,
            auth,
            Some(subscribe(patterns, from)),
            claim,
            None,
        );
        // The watches come after the client id is claimed: a restored session is in their
        // starting presence.
        opening
            .commands
            .extend(
                presence
                    .into_iter()
                    .zip(1..)
                    .map(|(topic, req)| Command::WatchPresence {
                        req,
                        topic,
                        watch: true,
                    }),
            );
        // Everything of this stream goes through the control channel, so `Closed` (sent on
        // drop, without waiting) can never overtake `Open`.
        let ended = writer.ctl().send(Control::Open(Box::new(opening))).is_err();
        Self {
            writer,
            stall,
            ended,
        }
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
        let first = loop {
            match this.writer.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(ToConn::Frame(frame))) => break frame,
                // Not handed to streams (the driver refuses): dropping the reply says so.
                Poll::Ready(Some(ToConn::Ping(_) | ToConn::KeepAlive | ToConn::Item(_))) => {}
                Poll::Ready(Some(ToConn::Close(_)) | None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            }
        };
        // What else is queued goes in the same chunk; a close ends the stream after it.
        let mut chunk: Option<Vec<u8>> = None;
        while let Some(out) = this.writer.more(COALESCE) {
            match out {
                ToConn::Frame(frame) => chunk
                    .get_or_insert_with(|| first.to_vec())
                    .extend_from_slice(&frame),
                ToConn::Ping(_) | ToConn::KeepAlive | ToConn::Item(_) => {}
                ToConn::Close(_) => {
                    this.ended = true;
                    break;
                }
            }
        }
        Poll::Ready(Some(chunk.map_or(first, Bytes::from)))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        let ended = match &self.stall {
            Some(stall) if stall.is_set() => Ended::WriteTimeout,
            _ => Ended::Lost,
        };
        let _ = self
            .writer
            .ctl()
            .send(Control::Closed(self.writer.conn(), ended));
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
