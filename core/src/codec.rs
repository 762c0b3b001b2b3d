//! The format-neutral frames the broker sends, and their encoding per [`Transport`].
//!
//! Every wire format maps onto the same model: client frames decode into [`crate::Command`]s, and
//! the broker's frames are [`Frame`]s that each codec encodes. A new wire format (ksbus, etp) adds a
//! [`Transport`] variant, a decoder producing `Command`s and an arm in [`encode`]; the broker does
//! not change.

use bytes::Bytes;

use crate::config::Config;
use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::input::{AckId, ConnId, ReqId, Transport};
use crate::output::Gap;
use crate::payload::Payload;
use crate::topic::{Name, Topic};
use crate::{etp, ksbus, native, sse};

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

/// Encodes `frame` for `transport`, or `None` when the transport cannot carry it (an SSE stream
/// has no way to receive replies to requests it cannot send).
///
/// The ksbus encoding uses the default server id ([`crate::config::DEFAULT_SERVER_ID`]); the
/// broker uses [`encode_with`] with its configured one.
pub fn encode(transport: Transport, frame: &Frame<'_>) -> Option<Bytes> {
    encode_with(transport, frame, &Context::default())
}

/// What some encodings need besides the frame.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The server's own id (`from` of server-originated ksbus frames).
    pub server_id: &'a str,
    /// For etp replies (`__ack_<name>||id`): the name of the event being answered.
    pub ack_name: Option<&'a str>,
}

impl Default for Context<'_> {
    fn default() -> Self {
        Self {
            server_id: crate::config::DEFAULT_SERVER_ID,
            ack_name: None,
        }
    }
}

/// [`encode`] with an explicit [`Context`].
pub fn encode_with(transport: Transport, frame: &Frame<'_>, cx: &Context<'_>) -> Option<Bytes> {
    match transport {
        Transport::Native => Some(native::encode(frame)),
        Transport::Sse => encode_sse(frame),
        Transport::Ksbus => ksbus::encode(frame, cx.server_id),
        Transport::Etp => etp::encode(frame, cx.ack_name, false),
        Transport::EtpJs => etp::encode(frame, cx.ack_name, true),
    }
}

/// The SSE mapping: events carry their cursor as `id:` and their event name as `event:`; gap
/// notices are `tidings-gap` events whose `id:` is the cursor to continue from; a closing error is
/// a `tidings-error` event; keep-alives are comments.
fn encode_sse(frame: &Frame<'_>) -> Option<Bytes> {
    let event = |id: Option<&str>, name: Option<&str>, data: &[u8]| {
        // Names are validated (no control characters) and cursors are hex-digits, so encoding
        // cannot fail; an empty frame is the harmless fallback.
        sse::event(id, name, data).unwrap_or_default()
    };
    Some(match frame {
        Frame::Welcome { config, .. } => match config.sse_retry {
            Some(retry) => {
                let mut buf = bytes::BytesMut::with_capacity(24);
                sse::encode_retry(
                    &mut buf,
                    u64::try_from(retry.as_millis()).unwrap_or(u64::MAX),
                );
                buf.freeze()
            }
            None => sse::keepalive(),
        },
        Frame::Event {
            cursor,
            event: name,
            payload,
            ..
        } => event(
            Some(cursor.text().as_str()),
            name.map(Name::as_str),
            payload.bytes(),
        ),
        Frame::Message {
            event: name,
            payload,
            ..
        } => event(None, name.map(Name::as_str), payload.bytes()),
        Frame::Gap(gap) => event(
            Some(gap.to.text().as_str()),
            Some("tidings-gap"),
            &native::gap_json(gap),
        ),
        Frame::Error { error, .. } => {
            event(None, Some("tidings-error"), &native::error_json(error))
        }
        Frame::Ping => sse::keepalive(),
        Frame::Ok { .. } | Frame::Request { .. } | Frame::Pong { .. } => {
            return None;
        }
    })
}
