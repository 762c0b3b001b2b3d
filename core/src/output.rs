//! What comes out of the broker: [`Output`]s for the adapter, [`Event`]s for the application.

use bytes::Bytes;

use crate::config::SlowConsumerPolicy;
use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::input::{AckId, ConnId, ReqId};
use crate::payload::Payload;
use crate::topic::Name;

/// Something the adapter must do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Output {
    /// Write `payload` to `conn`, in order. The bytes are shared between every recipient of the
    /// same message; never modify them. Report written bytes back with `Input::Flushed`.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// One complete frame of the connection's wire format (a WebSocket message, or SSE text).
        payload: Bytes,
    },
    /// Write what was already handed out for `conn`, then close it (WebSocket: close frame with a
    /// code for `reason`; SSE: end the response). Then report `Input::Closed`.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: ProtocolError,
    },
    /// Something the application may want to act on (boxed: events are rare, and a small
    /// `Output` keeps the per-delivery queue traffic low).
    Event(Box<Event>),
}

/// Notifications for the application (server code embedding the broker).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A connection's `Closed` was handled: it left its rooms, subscriptions and client id.
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
    /// A client sent something invalid (it got an error frame; `fatal` ones were also closed).
    ProtocolViolation {
        /// The connection.
        conn: ConnId,
        /// What was wrong.
        error: ProtocolError,
    },
    /// A connection fell behind by more than `max_queued_bytes`.
    SlowConsumer {
        /// The connection.
        conn: ConnId,
        /// What the broker did about it.
        policy: SlowConsumerPolicy,
    },
    /// A client request for the application. Answer it with [`crate::Broker::reply`]; if no
    /// answer comes within `request_timeout` the broker answers `timeout` itself.
    Request {
        /// The asking connection.
        conn: ConnId,
        /// Its request id.
        req: ReqId,
        /// The handler name.
        event: Name,
        /// The data.
        payload: Payload,
    },
    /// A client event that wants no answer ([`crate::Command::Notify`]).
    Notify {
        /// The sending connection.
        conn: ConnId,
        /// The handler name.
        event: Name,
        /// The data.
        payload: Payload,
    },
    /// The outcome of a server request (emit-with-ack): exactly one per request.
    AckResult {
        /// The connection asked.
        conn: ConnId,
        /// The id returned by [`crate::Broker::request`].
        ack: AckId,
        /// The client's answer; or `timeout`, `rejected` (the client answered with an error,
        /// in the message) or `no_recipient` (the connection closed first).
        result: Result<Payload, ProtocolError>,
    },
}

/// Why a gap notice was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GapReason {
    /// Events after the cursor were evicted from the history (count, bytes or age limits).
    Evicted,
    /// The cursor belongs to another epoch (the hub restarted) or is ahead of the hub.
    Epoch,
    /// The connection fell behind and messages that are not retained were dropped.
    SlowConsumer,
}

impl GapReason {
    /// Every reason.
    pub const ALL: [Self; 3] = [Self::Evicted, Self::Epoch, Self::SlowConsumer];

    /// Parses a wire name.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Evicted => "evicted",
            Self::Epoch => "epoch",
            Self::SlowConsumer => "slow_consumer",
        }
    }
}

/// A gap notice: events the client should have received may be missing between `from` and `to`.
/// The client continues from `to` (the notice's cursor), which is exact from there on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The cursor the client had (as it sent it).
    pub from: Option<Cursor>,
    /// Where delivery continues: everything after it is delivered.
    pub to: Cursor,
    /// Why.
    pub reason: GapReason,
    /// Direct or room messages dropped (they are never retained), if any.
    pub dropped_messages: u64,
}
