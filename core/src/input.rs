//! What goes into the broker: [`Input`]s from the adapter, [`Command`]s decoded from clients.

use std::fmt;
use std::sync::Arc;

use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::grants::Grants;
use crate::payload::Payload;
use crate::topic::{Name, Pattern, Topic};

/// A connection id, assigned by the adapter. Never reuse one: the broker refuses an `Open` for an
/// id that is still open, and a reused id could receive another connection's late outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Hashes adapter-assigned connection ids with one multiplication: they are not chosen by peers,
/// so the DoS-resistant default hasher is not needed on this hot path (every `Flushed`, and in
/// an adapter every delivery). Only for [`ConnId`] keys.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnIdHasher(u64);

impl std::hash::Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by connection id, with [`ConnIdHasher`].
pub type ConnMap<V> =
    std::collections::HashMap<ConnId, V, std::hash::BuildHasherDefault<ConnIdHasher>>;

/// A request id chosen by a client (native `"id"` field). Unique among the client's pending
/// requests.
pub type ReqId = u64;

/// An id the broker assigns to a server request (emit-with-ack) on one connection: 1, 2, 3, ...
pub type AckId = u64;

/// The wire format of a connection: decides how every frame sent to it is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// The native JSON protocol over WebSocket (`docs/PROTOCOL.md`).
    Native,
    /// A Server-Sent Events stream (receive only).
    Sse,
    /// The ksbus (gen C) JSON protocol on `/ws/bus` (`crate::ksbus`, `docs/COMPAT.md`).
    Ksbus,
    /// The etp v3/v4 protocol (`name||ackId||data`) on `/etp` (`crate::etp`); empty data is
    /// written `name||0` as the Go etp server does.
    Etp,
    /// The etp protocol with empty data written `name||0||`, for the etp JS client (which
    /// cannot parse `name||0`).
    EtpJs,
}

impl Transport {
    /// Every transport, for metrics and encoding caches.
    pub const ALL: [Self; 5] = [Self::Native, Self::Sse, Self::Ksbus, Self::Etp, Self::EtpJs];

    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Sse => "sse",
            Self::Ksbus => "ksbus",
            Self::Etp => "etp",
            Self::EtpJs => "etp-js",
        }
    }

    /// Whether the client can send commands (SSE clients cannot, so no idle timeout applies).
    pub fn is_duplex(self) -> bool {
        !matches!(self, Self::Sse)
    }
}

/// Something the adapter tells the broker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// A client connected. The broker answers with the transport's opening frame.
    Open {
        /// Adapter-assigned id, never reused.
        conn: ConnId,
        /// The connection's wire format.
        transport: Transport,
        /// What the connection may do.
        grants: Arc<Grants>,
    },
    /// A client frame, decoded by the transport's codec (e.g. [`crate::native::decode`]).
    Command {
        /// The sender.
        conn: ConnId,
        /// What it asked for.
        cmd: Command,
    },
    /// The transport finished writing `bytes` of payload previously handed out for `conn`
    /// (flow-control credit; reports may be coalesced).
    Flushed {
        /// The connection.
        conn: ConnId,
        /// Bytes written since the last report.
        bytes: usize,
    },
    /// The transport is gone (EOF, error, or after the broker asked to close it).
    Closed {
        /// The connection.
        conn: ConnId,
    },
}

/// Which subscriptions a client wants; the same for every wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Request id to answer, if the client wants an answer.
    pub req: Option<ReqId>,
    /// Patterns to subscribe to (wildcards allowed).
    pub patterns: Vec<Pattern>,
    /// Resume: deliver the retained events after this cursor first (exactly the missing suffix,
    /// or a gap notice and then what is retained).
    pub from: Option<Cursor>,
    /// A name for named routing: a `send` to (topic, name) reaches only subscriptions with that name.
    pub name: Option<Name>,
}

/// Who a direct message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recipient {
    /// One connection.
    Conn(ConnId),
    /// The connection that identified itself with this client id.
    Client(Name),
    /// Every subscription named `name` whose pattern matches `topic` (named routing).
    Named {
        /// The topic the named subscription is on.
        topic: Topic,
        /// The subscription name.
        name: Name,
    },
}

/// A client's request, decoded from any wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Subscribe to patterns, optionally resuming from a cursor.
    Subscribe(Subscribe),
    /// Remove subscriptions.
    Unsubscribe {
        /// Request id to answer.
        req: Option<ReqId>,
        /// Patterns exactly as subscribed.
        patterns: Vec<Pattern>,
    },
    /// Publish to a topic (retained for replay, delivered with a cursor).
    Publish {
        /// Request id to answer (the answer carries the event's cursor).
        req: Option<ReqId>,
        /// The topic.
        topic: Topic,
        /// Optional event name (SSE `event:`).
        event: Option<Name>,
        /// The data.
        payload: Payload,
    },
    /// Send a message to one recipient, not retained.
    Send {
        /// Request id to answer.
        req: Option<ReqId>,
        /// Who gets it.
        to: Recipient,
        /// Optional event name.
        event: Option<Name>,
        /// The data.
        payload: Payload,
    },
    /// Ask the application something; exactly one answer comes back (the application's, or an
    /// error such as `timeout`).
    Request {
        /// Request id the answer carries.
        req: ReqId,
        /// The handler name.
        event: Name,
        /// The data.
        payload: Payload,
    },
    /// Answer a server request (emit-with-ack).
    Reply {
        /// The server request's id.
        ack: AckId,
        /// The answer, or the client's error message.
        result: Result<Payload, String>,
    },
    /// Claim a client id so others can send to it directly.
    Identify {
        /// Request id to answer.
        req: Option<ReqId>,
        /// The id to claim.
        client_id: Name,
    },
    /// An event for the application that wants no answer (etp events with ack id 0, ksbus
    /// messages to the server's own id): the application gets [`crate::Event::Notify`].
    Notify {
        /// The handler name.
        event: Name,
        /// The data.
        payload: Payload,
    },
    /// Removes every subscription to exactly this topic, of every connection (ksbus
    /// `remove_topic`). Needs the publish grant for the topic.
    RemoveTopic {
        /// Request id to answer.
        req: Option<ReqId>,
        /// The topic.
        topic: Topic,
    },
    /// Liveness check; answered with a pong when it has a request id.
    Ping {
        /// Request id to answer.
        req: Option<ReqId>,
    },
    /// A frame the codec could not turn into a command. The broker answers with an error frame
    /// (closing the connection when `fatal`) and reports a protocol violation.
    Invalid {
        /// The request id, when the codec could still read it.
        req: Option<ReqId>,
        /// What was wrong.
        error: ProtocolError,
        /// Whether the connection must be closed (e.g. a frame over the size limit).
        fatal: bool,
    },
}
