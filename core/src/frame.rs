//! The format-neutral frames the broker sends; each [`crate::codec::Codec`] encodes them for its
//! wire.

use crate::config::Config;
use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::ids::{AckId, ConnId, ReqId};
use crate::output::Gap;
use crate::payload::Payload;
use crate::topic::{Name, Topic};

/// A frame from the broker to a client, before encoding.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// The first frame of a connection.
    Welcome {
        /// The connection's id.
        conn: ConnId,
        /// The hub's current cursor: subscribing now means "everything after this".
        cursor: Cursor,
        /// The limits and timers the client must respect, and the suggested reconnection delay.
        config: &'a Config,
    },
    /// A topic event (retained, with a cursor).
    Event {
        /// The topic.
        topic: &'a Topic,
        /// The event's cursor.
        cursor: Cursor,
        /// The publisher's client id, if it identified itself.
        from: Option<&'a Name>,
        /// Optional event name.
        event: Option<&'a Name>,
        /// The data.
        payload: &'a Payload,
    },
    /// A message that is not retained: direct, named or to a room.
    Message {
        /// The sender's client id, if it identified itself.
        from: Option<&'a Name>,
        /// The room it was emitted to.
        room: Option<&'a Name>,
        /// For named routing: the topic and subscription name.
        named: Option<(&'a Topic, &'a Name)>,
        /// Optional event name.
        event: Option<&'a Name>,
        /// The data.
        payload: &'a Payload,
    },
    /// A gap notice.
    Gap(&'a Gap),
    /// A join or leave on a topic whose presence the connection watches (not retained: no
    /// cursor).
    Presence(&'a crate::presence::PresenceNotice),
    /// A successful answer to a client request.
    Ok {
        /// The request id.
        req: ReqId,
        /// For publish: the event's cursor; for subscribe: the position after which live
        /// delivery starts.
        cursor: Option<Cursor>,
        /// For requests to the application: its answer.
        payload: Option<&'a Payload>,
    },
    /// An error, answering a request (`req`) or not.
    Error {
        /// The request id, if the failing frame had one.
        req: Option<ReqId>,
        /// What was wrong.
        error: &'a ProtocolError,
    },
    /// A server request (emit-with-ack) the client must answer with a reply.
    Request {
        /// The id to answer.
        ack: AckId,
        /// The handler name on the client.
        event: &'a Name,
        /// The data.
        payload: &'a Payload,
    },
    /// Answer to a client ping.
    Pong {
        /// The ping's request id.
        req: ReqId,
    },
    /// Keep-alive.
    Ping,
}
