//! What comes out of the broker: [`Output`]s for the adapter, [`AppEvent`]s for the application.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::SlowConsumerPolicy;
use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::ids::{AckId, ConnId, ReqId};
use crate::payload::Payload;
use crate::topic::{Name, Pattern, Topic};

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
    /// Send the transport's own keep-alive to `conn` (a WebSocket ping), in order with its
    /// frames: its format has no keep-alive frame of its own ([`crate::codec::Wire::Ping`]).
    KeepAlive {
        /// The connection.
        conn: ConnId,
    },
    /// Hand a typed delivery to `conn`, an in-process subscriber ([`crate::codec::Wire::Item`]).
    /// Report [`Delivery::size`] back with `Input::Flushed` once it is taken.
    Deliver {
        /// The connection.
        conn: ConnId,
        /// What it receives, shared between every in-process recipient.
        item: Arc<Delivery>,
    },
    /// Write what was already handed out for `conn`, then close it (WebSocket: close frame with a
    /// code for `reason`, or 1000 for a normal close; SSE: end the response). Then report
    /// `Input::Closed`. If that does not come within `Timers::close_grace`, [`Output::Drop`]
    /// follows.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why (`None`: a normal close, asked for by the application).
        reason: Option<ProtocolError>,
    },
    /// Stop `conn` at once, without writing what is left: it did not close within
    /// `Timers::close_grace` (a peer that does not read), or the shutdown deadline passed. Then
    /// report `Input::Closed`.
    Drop {
        /// The connection.
        conn: ConnId,
    },
    /// Something the application may want to act on (boxed: events are rare, and a small
    /// `Output` keeps the per-delivery queue traffic low).
    App(Box<AppEvent>),
    /// Ask the external log to store an event or read a range
    /// ([`crate::log::LogMode::External`]); its answer comes back as `Input::Log`.
    Log(crate::log::LogRequest),
    /// Relay a message that is not retained to other nodes, or announce what this node holds
    /// (a shared log only, see [`crate::relay`]); answers come back as `Input::Relay`.
    Relay(crate::relay::RelayRequest),
}

/// What an in-process subscriber receives: the broker's frames as values, with nothing to
/// parse ([`crate::typed::TypedCodec`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Delivery {
    /// A topic event.
    Event {
        /// Its topic.
        topic: Topic,
        /// Its cursor.
        cursor: Cursor,
        /// The publisher's client id, if it identified itself.
        from: Option<Name>,
        /// Its event name.
        event: Option<Name>,
        /// The data.
        payload: Payload,
    },
    /// A message that is not retained (direct, named or to a room).
    Message {
        /// The sender's client id, if it identified itself.
        from: Option<Name>,
        /// The room it was emitted to.
        room: Option<Name>,
        /// For named routing: the topic and subscription name.
        named: Option<(Topic, Name)>,
        /// Its event name.
        event: Option<Name>,
        /// The data.
        payload: Payload,
    },
    /// A gap notice.
    Gap(Gap),
    /// A join or leave on a topic whose presence the subscriber watches.
    Presence(crate::presence::PresenceNotice),
    /// The data of an `ok` answering a command of the subscriber (a presence watch's
    /// starting presence, as JSON).
    Answer(Payload),
}

impl Delivery {
    /// What it counts against the subscriber's flow-control credit: its payload and topic.
    pub fn size(&self) -> usize {
        match self {
            Self::Event { topic, payload, .. } => topic.as_str().len() + payload.len(),
            Self::Message { payload, .. } => payload.len(),
            Self::Gap(_) => 0,
            Self::Presence(notice) => {
                notice.topic.as_str().len() + notice.info.as_deref().map_or(0, str::len) + 16
            }
            Self::Answer(payload) => payload.len(),
        }
    }
}

/// Notifications for the application (server code embedding the broker).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AppEvent {
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
    /// A client's parked session ended unclaimed at the end of the reconnect window (or was
    /// dropped past `max_parked_sessions`); its subscriptions and rooms are gone.
    SessionExpired {
        /// The client id.
        client_id: Name,
    },
    /// After [`crate::Broker::shutdown`]: every connection is gone (closed, or dropped at the
    /// shutdown deadline).
    Stopped,
    /// An application publish ([`crate::AppOp::Publish`] answered
    /// [`crate::AppReply::Storing`]) was stored by the external log, or could not be.
    Stored {
        /// The publish, as its reply named it.
        id: crate::log::AppendId,
        /// Its cursor, or why nothing was stored (`unavailable`).
        result: Result<crate::Cursor, ProtocolError>,
    },
    /// The answer to an application operation answered [`crate::AppReply::Relaying`]: what the
    /// other nodes of the cluster said (a presence, a subscription change on the node holding
    /// the client id).
    Relayed {
        /// The operation, as its reply named it.
        id: crate::relay::RelayId,
        /// Its answer.
        reply: crate::AppReply,
    },
    /// A lifecycle notification (only with `Config::lifecycle_events`).
    Lifecycle(Lifecycle),
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

/// Who may see a declared topic (pubsub-sse's public, private and group topics).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Visibility {
    /// Every connection (that its grants allow).
    Public,
    /// Only the connection holding this client id.
    Private(Name),
    /// Only the members of this room.
    Group(Name),
}

impl Visibility {
    /// The wire name of the kind: `public`, `private` or `group`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private(_) => "private",
            Self::Group(_) => "group",
        }
    }
}

/// What happened, for the application's lifecycle hooks (`Config::lifecycle_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lifecycle {
    /// A connection claimed a client id (`resumed`: it got a parked session back).
    ClientNew {
        /// The connection.
        conn: ConnId,
        /// The client id.
        client_id: Name,
        /// Whether a parked session was restored.
        resumed: bool,
    },
    /// A client id is gone: its connection closed with nothing to park (or no reconnect
    /// window), or its parked session expired.
    ClientRemoved {
        /// The client id.
        client_id: Name,
    },
    /// A topic was declared (or its visibility changed).
    TopicNew {
        /// The topic.
        topic: Topic,
        /// Who may see it.
        visibility: Visibility,
    },
    /// A declared topic was removed.
    TopicRemoved {
        /// The topic.
        topic: Topic,
    },
    /// A room got its first member.
    GroupNew {
        /// The room.
        room: Name,
    },
    /// A room lost its last member.
    GroupRemoved {
        /// The room.
        room: Name,
    },
    /// A connection subscribed.
    Subscribed {
        /// The connection.
        conn: ConnId,
        /// The patterns added.
        patterns: Vec<Pattern>,
    },
    /// A connection unsubscribed (also when a declared topic is removed).
    Unsubscribed {
        /// The connection.
        conn: ConnId,
        /// The patterns removed.
        patterns: Vec<Pattern>,
    },
    /// An event was published.
    Published {
        /// Its topic.
        topic: Topic,
        /// Its cursor.
        cursor: Cursor,
        /// The publisher's client id, if any.
        from: Option<Name>,
    },
}
