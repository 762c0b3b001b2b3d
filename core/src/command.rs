//! What clients ask for: [`Command`]s, decoded from any wire format by a codec.

use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::ids::{AckId, ConnId, ReqId};
use crate::payload::Payload;
use crate::topic::{Name, Pattern, Topic};

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

/// How a client id is claimed ([`Command::Identify`]) when another connection holds it.
///
/// A client id may belong to a *principal*: a connection whose grants are bound to exactly that
/// id ([`crate::Grants::principal`] or [`crate::ClientIds::Only`], e.g. the subject of its
/// token). Whatever the mode, a principal's id is taken over only by the principal, is kept for
/// it while its session is parked, and its parked session is restored only to the principal: a
/// connection claiming ids through a wildcard grant ([`crate::ClientIds::Any`]) gets such an id
/// only while it is free and no session of the principal is parked under it, and never a
/// session. The principal claims its id back from a wildcard holder (closed with
/// `client_id_taken`), in every mode, without that holder's session. An id held through a
/// wildcard grant has no owner to protect otherwise: any connection allowed to claim it may take
/// it over with [`Claim::TakeOver`] (anonymous clients reconnecting, as gochan's do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Claim {
    /// Asked for by the client: refused with `client_id_taken` while another connection holds it
    /// (unless this is the principal and the holder is not).
    #[default]
    Explicit,
    /// Given by authentication: claimed if free; if another connection holds it (the same
    /// user's first tab), this one goes on without it, with no error (unless this is the
    /// principal and the holder is not).
    IfFree,
    /// Asked for by the client, taking it over from the connection holding it (typically its
    /// own previous stream, not yet noticed gone), which is closed with `client_id_taken` and
    /// parks its session for this one. A principal's id is taken over only by the principal;
    /// others get `client_id_taken` as with [`Claim::Explicit`].
    TakeOver,
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
        /// What happens when another connection holds it.
        claim: Claim,
    },
    /// An event for the application that wants no answer (etp events with ack id 0, ksbus
    /// messages to the server's own id): the application gets [`crate::AppEvent::Notify`].
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
    /// Who is subscribed to a topic ([`crate::presence`]): answered `ok` with the presence as
    /// its data.
    Presence {
        /// Request id to answer.
        req: ReqId,
        /// The topic.
        topic: Topic,
    },
    /// Starts (`watch`) or stops watching the presence of a topic: while watching, the
    /// connection gets a [`crate::presence::PresenceNotice`] for every join and leave on it.
    /// Starting is answered `ok` with the current presence (as [`Command::Presence`]), so that
    /// the notices continue from that snapshot; it needs what the presence needs.
    WatchPresence {
        /// Request id to answer.
        req: ReqId,
        /// The topic (exact, no wildcards).
        topic: Topic,
        /// Start (`true`) or stop (`false`).
        watch: bool,
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
