//! [`Hub::watch_presence`]: the application watches the presence of a topic, as a client does
//! with the native `presence` op and `watch: true`.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tidings_core::presence::{Presence, PresenceNotice};
use tidings_core::typed::TypedCodec;
use tidings_core::{Command, Delivery, ErrorCode, Grants, ProtocolError, Topic};

use super::{Hub, HubError};
use crate::conn::{Ended, Kind, Opening, ToConn};
use crate::control::Control;
use crate::mailbox::mailbox;
use crate::writer::ConnWriter;

impl Hub {
    /// Watches the presence of `topic` (exact, no wildcards): answers the presence now (in a
    /// cluster, every node's that answered in time) and a [`PresenceWatch`] that yields a
    /// [`PresenceNotice`] for every later join and leave, one per connection, as clients get
    /// them (`docs/PROTOCOL.md`, presence notices).
    ///
    /// Like [`Hub::subscribe`], it is an internal connection (typed values, nothing encoded):
    /// poll it, or past `max_queued_bytes` the slow-consumer policy applies as to any
    /// connection. It ends when the server shuts down; dropping it stops the watch.
    ///
    /// # Errors
    /// [`HubError::Stopped`]; [`HubError::Failed`] if the broker refused the watch.
    pub async fn watch_presence(
        &self,
        topic: Topic,
    ) -> Result<(Presence, PresenceWatch), HubError> {
        let conn = self.next_conn_id();
        let (outbox, frames) = mailbox(self.outbox_frames());
        let opening = Opening {
            conn,
            kind: Kind::Internal,
            codec: Box::new(TypedCodec),
            grants: Arc::new(Grants::all()),
            outbox,
            kill: None,
            rooms: Vec::new(),
            commands: vec![Command::WatchPresence {
                req: 1,
                topic,
                watch: true,
            }],
        };
        self.inner
            .ctl
            .send(Control::Open(Box::new(opening)))
            .map_err(|_| HubError::Stopped)?;
        let mut watch = PresenceWatch {
            writer: ConnWriter::new(conn, frames, self.inner.ctl.clone()),
            closed: None,
            ended: false,
        };
        // The first item is the answer: the presence the notices continue from.
        let first = std::future::poll_fn(|cx| watch.poll_item(cx)).await;
        match first {
            Some(Delivery::Answer(payload)) => {
                let presence =
                    serde_json::from_slice::<Presence>(payload.bytes()).map_err(|e| {
                        HubError::Failed(ProtocolError::new(
                            ErrorCode::Unavailable,
                            format!("the presence answer does not decode: {e}"),
                        ))
                    })?;
                Ok((presence, watch))
            }
            _ => Err(watch
                .closed
                .take()
                .map_or(HubError::Stopped, HubError::Failed)),
        }
    }
}

/// Joins and leaves on a watched topic; see [`Hub::watch_presence`]. Dropping it stops the
/// watch.
pub struct PresenceWatch {
    writer: ConnWriter,
    closed: Option<ProtocolError>,
    ended: bool,
}

impl fmt::Debug for PresenceWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceWatch")
            .field("conn", &self.writer.conn())
            .finish_non_exhaustive()
    }
}

impl PresenceWatch {
    /// Why the stream ended, once it has (e.g. `shutting_down`); `None` while it runs.
    pub fn closed_reason(&self) -> Option<&ProtocolError> {
        self.closed.as_ref()
    }

    /// The next typed item for the watch, or `None` once it ended.
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            match self.writer.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.ended = true;
                    self.closed = Some(ProtocolError::new(
                        ErrorCode::ShuttingDown,
                        "the presence watch was dropped by the server",
                    ));
                }
                Poll::Ready(Some(ToConn::Close(reason))) => {
                    self.ended = true;
                    self.closed = reason;
                }
                Poll::Ready(Some(ToConn::Item(item))) => {
                    // Consumed here: credited at once.
                    self.writer.flushed();
                    return Poll::Ready(Some((*item).clone()));
                }
                Poll::Ready(Some(ToConn::Frame(_) | ToConn::Ping(_) | ToConn::KeepAlive)) => {}
            }
        }
    }
}

impl Stream for PresenceWatch {
    type Item = PresenceNotice;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceNotice>> {
        loop {
            match self.poll_item(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Delivery::Presence(notice))) => {
                    return Poll::Ready(Some(notice));
                }
                Poll::Ready(Some(_)) => {}
            }
        }
    }
}

impl Drop for PresenceWatch {
    fn drop(&mut self) {
        let _ = self
            .writer
            .ctl()
            .send(Control::Closed(self.writer.conn(), Ended::Lost));
    }
}
