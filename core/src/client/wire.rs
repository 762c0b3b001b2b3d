//! The client side of the native codec: decoding server frames and encoding client commands.
//!
//! The server side lives in [`crate::native`] (it decodes client frames into [`Command`]s and
//! encodes broker frames); this is its mirror image, built on the same helpers, so that a frame
//! [`encode_command`] writes is one that [`crate::native::decode`] reads back as the same
//! [`Command`] (tested both ways).

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::command::{Command, Recipient};
use crate::cursor::Cursor;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{AckId, ReqId};
use crate::native::{parse_id, payload, string, write_json_str};
use crate::output::{Gap, GapReason};
use crate::payload::Payload;
use crate::topic::{Name, NameLimits, Pattern, Topic};

/// How long a topic or name from the server may be. The server validated them with its own
/// limits; the client only guards against absurd input.
const LENIENT_TOPICS: NameLimits = NameLimits {
    max_len: 64 * 1024,
    max_segments: 4096,
};
const LENIENT_NAME_LEN: usize = 64 * 1024;

/// A decoded server frame (`docs/PROTOCOL.md` §7).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerFrame {
    /// The first frame of a connection.
    Welcome(Welcome),
    /// A published event matching one of the connection's subscriptions.
    Event(EventFrame),
    /// A message that is not retained (direct, named or to a room).
    Message(Message),
    /// Events or messages may be missing.
    Gap(Gap),
    /// A successful answer to the client's op `id`.
    Ok {
        /// The client's request id.
        id: ReqId,
        /// `subscribe`: the hub position; `publish`: the event's cursor.
        cursor: Option<Cursor>,
        /// `request`: the application's answer.
        payload: Option<Payload>,
    },
    /// A failure answer (with `id`), a report about a frame without usable id, or a close reason.
    Error {
        /// The client's request id, when it answers one.
        id: Option<ReqId>,
        /// What went wrong.
        error: ServerError,
    },
    /// The application asks the client something; answer with a `reply`.
    Request {
        /// The server's id for this request (per connection).
        id: AckId,
        /// Which handler is asked.
        event: Name,
        /// The argument.
        payload: Payload,
    },
    /// The answer to a `ping` with an id.
    Pong {
        /// The ping's id.
        id: ReqId,
    },
    /// A keep-alive: answer with [`encode_pong`].
    Ping,
    /// A join or leave on a topic whose presence the client watches.
    Presence(crate::presence::PresenceNotice),
    /// A frame type this client does not know (newer servers may send them): ignored.
    Unknown,
}

/// The `welcome` frame: version, limits and timers of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Welcome {
    /// The protocol version (1).
    pub protocol: u64,
    /// The server's id for the connection (for logs and support).
    pub conn: u64,
    /// The hub's position when the connection opened.
    pub cursor: Cursor,
    /// Largest client frame, bytes.
    pub max_frame_bytes: Option<u64>,
    /// Patterns per connection.
    pub max_subscriptions: Option<u64>,
    /// Client requests awaiting an answer at once.
    pub max_pending_requests: Option<u64>,
    /// Longest name (client id, event, subscription name), bytes.
    pub max_name_len: Option<u64>,
    /// Longest topic or pattern, bytes.
    pub max_topic_len: Option<u64>,
    /// Most segments of a topic or pattern.
    pub max_topic_segments: Option<u64>,
    /// The server pings after this long without traffic (absent: disabled).
    pub keepalive: Option<Duration>,
    /// The server closes after this long without a client frame (absent: disabled).
    pub idle_timeout: Option<Duration>,
    /// How long the server waits for the application to answer a request.
    pub request_timeout: Option<Duration>,
    /// The suggested reconnection delay.
    pub retry: Option<Duration>,
}

/// A published event as the server delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFrame {
    /// The topic it was published to.
    pub topic: Topic,
    /// Its cursor.
    pub cursor: Cursor,
    /// The publisher's client id, if it identified.
    pub from: Option<Name>,
    /// The event name, if any.
    pub event: Option<Name>,
    /// The data.
    pub payload: Payload,
}

/// A message that is not retained (no cursor): direct, named or to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The sender's client id, if the sender identified.
    pub from: Option<Name>,
    /// The room it was emitted to.
    pub room: Option<Name>,
    /// Named routing: the topic and the subscription name it was sent to.
    pub named: Option<(Topic, Name)>,
    /// The event name, if any.
    pub event: Option<Name>,
    /// The data.
    pub payload: Payload,
}

/// An error the server reported. Codes are open-ended (newer servers and applications add their
/// own), so the code is kept as a string; [`ServerError::known`] maps the known ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerError {
    /// The machine-readable code, e.g. `forbidden`.
    pub code: String,
    /// The server's explanation (not stable; do not parse it).
    pub message: String,
}

impl ServerError {
    /// Builds an error.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The code, if it is one of the protocol's (`docs/PROTOCOL.md` §17).
    pub fn known(&self) -> Option<ErrorCode> {
        ErrorCode::from_wire(&self.code)
    }

    /// Whether the code is `code`.
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code.as_str()
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

impl From<ProtocolError> for ServerError {
    fn from(e: ProtocolError) -> Self {
        Self::new(e.code.as_str(), e.message)
    }
}

/// Keeps an explicit `null` as a present value (`"data": null` is data).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    cursor: Option<&'a RawValue>,
    #[serde(borrow)]
    from: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    code: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    reason: Option<&'a RawValue>,
    #[serde(borrow)]
    dropped_messages: Option<&'a RawValue>,
    #[serde(borrow)]
    protocol: Option<&'a RawValue>,
    #[serde(borrow)]
    conn: Option<&'a RawValue>,
    #[serde(borrow)]
    limits: Option<&'a RawValue>,
    #[serde(borrow)]
    keepalive_ms: Option<&'a RawValue>,
    #[serde(borrow)]
    idle_timeout_ms: Option<&'a RawValue>,
    #[serde(borrow)]
    request_timeout_ms: Option<&'a RawValue>,
    #[serde(borrow)]
    retry_ms: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct WireLimits {
    max_frame_bytes: Option<u64>,
    max_subscriptions: Option<u64>,
    max_pending_requests: Option<u64>,
    max_name_len: Option<u64>,
    max_topic_len: Option<u64>,
    max_topic_segments: Option<u64>,
}

fn bad(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadFrame, message)
}

fn missing(field: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadField, format!("field \"{field}\" is missing"))
}

/// `null` counts as absent, as in client frames.
fn field(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

fn required<'a>(name: &str, raw: Option<&'a RawValue>) -> Result<&'a RawValue, ProtocolError> {
    field(raw).ok_or_else(|| missing(name))
}

fn text<'a>(name: &str, raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, ProtocolError> {
    field(raw).map(|r| string(name, r)).transpose()
}

fn number(name: &str, raw: Option<&RawValue>) -> Result<Option<u64>, ProtocolError> {
    field(raw)
        .map(|r| {
            serde_json::from_str::<u64>(r.get()).map_err(|_| {
                ProtocolError::new(
                    ErrorCode::BadField,
                    format!("field \"{name}\" must be a non-negative integer"),
                )
            })
        })
        .transpose()
}

fn millis(name: &str, raw: Option<&RawValue>) -> Result<Option<Duration>, ProtocolError> {
    Ok(number(name, raw)?.map(Duration::from_millis))
}

fn cursor(name: &str, raw: Option<&RawValue>) -> Result<Option<Cursor>, ProtocolError> {
    text(name, raw)?.map(|s| s.parse::<Cursor>()).transpose()
}

fn name(field_name: &str, raw: Option<&RawValue>) -> Result<Option<Name>, ProtocolError> {
    text(field_name, raw)?
        .map(|s| Name::parse(field_name, &s, LENIENT_NAME_LEN))
        .transpose()
}

fn topic(raw: Option<&RawValue>) -> Result<Option<Topic>, ProtocolError> {
    text("topic", raw)?
        .map(|s| Topic::parse(&s, LENIENT_TOPICS))
        .transpose()
}

fn data(frame: &Bytes, raw: Option<&RawValue>) -> Result<Payload, ProtocolError> {
    payload(frame, raw.ok_or_else(|| missing("data"))?)
}

/// Decodes one server frame (a WebSocket text message).
///
/// Never panics. Frames of an unknown `type` decode to [`ServerFrame::Unknown`]; unknown fields
/// are ignored (`docs/PROTOCOL.md` §3.2).
///
/// # Errors
/// A [`ProtocolError`] (`bad_frame` or `bad_field`) saying what is wrong with a frame that is not
/// valid JSON, not an object, or misses a field its type requires.
pub fn decode_server_frame(frame: &Bytes) -> Result<ServerFrame, ProtocolError> {
    let text_frame =
        std::str::from_utf8(frame).map_err(|_| bad("server frame is not valid UTF-8"))?;
    if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(bad("server frame is not a JSON object"));
    }
    let f: Fields<'_> = serde_json::from_str(text_frame)
        .map_err(|e| bad(format!("server frame is not valid JSON: {e}")))?;
    let kind = string("type", required("type", f.kind)?)?;
    let id = |required_id: bool| -> Result<Option<u64>, ProtocolError> {
        match field(f.id) {
            Some(raw) => parse_id("id", raw).map(Some),
            None if required_id => Err(missing("id")),
            None => Ok(None),
        }
    };
    Ok(match &*kind {
        "welcome" => {
            let limits: WireLimits = match field(f.limits) {
                Some(raw) => serde_json::from_str(raw.get())
                    .map_err(|_| bad("field \"limits\" must be an object of integers"))?,
                None => WireLimits::default(),
            };
            ServerFrame::Welcome(Welcome {
                protocol: number("protocol", f.protocol)?.ok_or_else(|| missing("protocol"))?,
                conn: number("conn", f.conn)?.unwrap_or(0),
                cursor: cursor("cursor", f.cursor)?.ok_or_else(|| missing("cursor"))?,
                max_frame_bytes: limits.max_frame_bytes,
                max_subscriptions: limits.max_subscriptions,
                max_pending_requests: limits.max_pending_requests,
                max_name_len: limits.max_name_len,
                max_topic_len: limits.max_topic_len,
                max_topic_segments: limits.max_topic_segments,
                keepalive: millis("keepalive_ms", f.keepalive_ms)?,
                idle_timeout: millis("idle_timeout_ms", f.idle_timeout_ms)?,
                request_timeout: millis("request_timeout_ms", f.request_timeout_ms)?,
                retry: millis("retry_ms", f.retry_ms)?,
            })
        }
        "event" => ServerFrame::Event(EventFrame {
            topic: topic(f.topic)?.ok_or_else(|| missing("topic"))?,
            cursor: cursor("cursor", f.cursor)?.ok_or_else(|| missing("cursor"))?,
            from: name("from", f.from)?,
            event: name("event", f.event)?,
            payload: data(frame, f.data)?,
        }),
        "message" => ServerFrame::Message(Message {
            from: name("from", f.from)?,
            room: name("room", f.room)?,
            named: match (topic(f.topic)?, name("name", f.name)?) {
                (Some(t), Some(n)) => Some((t, n)),
                _ => None,
            },
            event: name("event", f.event)?,
            payload: data(frame, f.data)?,
        }),
        "gap" => {
            let reason = text("reason", f.reason)?.ok_or_else(|| missing("reason"))?;
            ServerFrame::Gap(Gap {
                from: cursor("from", f.from)?,
                to: cursor("to", f.to)?.ok_or_else(|| missing("to"))?,
                // An unknown reason is handled like `evicted` (PROTOCOL.md §3.2).
                reason: GapReason::from_wire(&reason).unwrap_or(GapReason::Evicted),
                dropped_messages: number("dropped_messages", f.dropped_messages)?.unwrap_or(0),
            })
        }
        "ok" => ServerFrame::Ok {
            id: id(true)?.unwrap_or_default(),
            cursor: cursor("cursor", f.cursor)?,
            payload: f.data.map(|raw| payload(frame, raw)).transpose()?,
        },
        "error" => ServerFrame::Error {
            id: id(false)?,
            error: ServerError {
                code: text("code", f.code)?
                    .ok_or_else(|| missing("code"))?
                    .into_owned(),
                message: text("message", f.message)?
                    .map(Cow::into_owned)
                    .unwrap_or_default(),
            },
        },
        "request" => ServerFrame::Request {
            id: id(true)?.unwrap_or_default(),
            event: name("event", f.event)?.ok_or_else(|| missing("event"))?,
            payload: match f.data {
                Some(raw) => payload(frame, raw)?,
                None => Payload::json_unchecked(Bytes::from_static(b"null")),
            },
        },
        "pong" => ServerFrame::Pong {
            id: id(true)?.unwrap_or_default(),
        },
        "ping" => ServerFrame::Ping,
        "presence" => ServerFrame::Presence(
            crate::presence::PresenceNotice::from_json(frame, LENIENT_TOPICS, LENIENT_NAME_LEN)
                .ok_or_else(|| bad("a presence frame needs a topic, an action and valid fields"))?,
        ),
        _ => ServerFrame::Unknown,
    })
}

// ---- encoding ------------------------------------------------------------------------------

struct Out(BytesMut);

impl Out {
    fn op(op: &str, capacity: usize) -> Self {
        let mut out = Self(BytesMut::with_capacity(capacity));
        out.raw("{\"op\":\"");
        out.raw(op);
        out.raw("\"");
        out
    }

    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn key(&mut self, key: &str) {
        self.raw(",\"");
        self.raw(key);
        self.raw("\":");
    }

    fn id(&mut self, key: &str, id: Option<u64>) {
        if let Some(id) = id {
            self.key(key);
            self.raw(&id.to_string());
        }
    }

    fn str(&mut self, key: &str, s: Option<&str>) {
        if let Some(s) = s {
            self.key(key);
            write_json_str(&mut self.0, s);
        }
    }

    fn patterns(&mut self, patterns: &[Pattern]) {
        if let [one] = patterns {
            self.str("topic", Some(one.as_str()));
            return;
        }
        self.key("topics");
        self.0.put_u8(b'[');
        for (i, p) in patterns.iter().enumerate() {
            if i > 0 {
                self.0.put_u8(b',');
            }
            write_json_str(&mut self.0, p.as_str());
        }
        self.0.put_u8(b']');
    }

    fn data(&mut self, payload: &Payload) {
        self.key("data");
        if payload.is_json() {
            self.0.extend_from_slice(payload.bytes());
        } else {
            write_json_str(&mut self.0, payload.as_str());
        }
    }

    fn finish(mut self) -> Bytes {
        self.0.put_u8(b'}');
        self.0.freeze()
    }
}

/// Encodes a client command as one native frame (`docs/PROTOCOL.md` §6), exactly as
/// [`crate::native::decode`] reads it back.
///
/// Returns `None` for what the native protocol cannot express: [`Command::Invalid`], and a
/// [`Recipient::Conn`] (clients address client ids and named subscriptions, not connections).
/// [`Command::Ping`] without an id is the activity-only `{"op":"ping"}`; the answer to a server
/// ping is [`encode_pong`].
pub fn encode_command(cmd: &Command) -> Option<Bytes> {
    Some(match cmd {
        Command::Subscribe(s) => {
            let mut out = Out::op("subscribe", 64 + s.patterns.len() * 32);
            out.id("id", s.req);
            out.patterns(&s.patterns);
            out.str("from", s.from.map(|c| c.to_string()).as_deref());
            out.str("name", s.name.as_ref().map(Name::as_str));
            out.finish()
        }
        Command::Unsubscribe { req, patterns } => {
            let mut out = Out::op("unsubscribe", 64 + patterns.len() * 32);
            out.id("id", *req);
            out.patterns(patterns);
            out.finish()
        }
        Command::Publish {
            req,
            topic,
            event,
            payload,
        } => {
            let mut out = Out::op("publish", 96 + topic.as_str().len() + payload.len());
            out.id("id", *req);
            out.str("topic", Some(topic.as_str()));
            out.str("event", event.as_ref().map(Name::as_str));
            out.data(payload);
            out.finish()
        }
        Command::Send {
            req,
            to,
            event,
            payload,
        } => {
            let mut out = Out::op("send", 128 + payload.len());
            out.id("id", *req);
            match to {
                Recipient::Client(id) => out.str("to", Some(id.as_str())),
                Recipient::Named { topic, name } => {
                    out.str("topic", Some(topic.as_str()));
                    out.str("name", Some(name.as_str()));
                }
                _ => return None,
            }
            out.str("event", event.as_ref().map(Name::as_str));
            out.data(payload);
            out.finish()
        }
        Command::Request {
            req,
            event,
            payload,
        } => {
            let mut out = Out::op("request", 64 + payload.len());
            out.id("id", Some(*req));
            out.str("event", Some(event.as_str()));
            out.data(payload);
            out.finish()
        }
        Command::Reply { ack, result } => {
            let mut out = Out::op("reply", 64);
            out.id("id", Some(*ack));
            match result {
                Ok(payload) => out.data(payload),
                Err(message) => out.str("error", Some(message)),
            }
            out.finish()
        }
        Command::Identify { req, client_id, .. } => {
            let mut out = Out::op("identify", 64);
            out.id("id", *req);
            out.str("client_id", Some(client_id.as_str()));
            out.finish()
        }
        Command::Ping { req } => {
            let mut out = Out::op("ping", 32);
            out.id("id", *req);
            out.finish()
        }
        Command::Presence { req, topic } => {
            let mut out = Out::op("presence", 48 + topic.as_str().len());
            out.id("id", Some(*req));
            out.str("topic", Some(topic.as_str()));
            out.finish()
        }
        Command::WatchPresence { req, topic, watch } => {
            let mut out = Out::op("presence", 64 + topic.as_str().len());
            out.id("id", Some(*req));
            out.str("topic", Some(topic.as_str()));
            out.key("watch");
            out.raw(if *watch { "true" } else { "false" });
            out.finish()
        }
        _ => return None,
    })
}

/// The answer to a server `ping`: `{"op":"pong"}`.
pub fn encode_pong() -> Bytes {
    Bytes::from_static(b"{\"op\":\"pong\"}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Frame;
    use crate::command::Claim;
    use crate::command::Subscribe;
    use crate::config::Limits;
    use crate::ids::ConnId;
    use crate::native;

    fn topic(s: &str) -> Topic {
        Topic::parse(s, NameLimits::default()).unwrap()
    }

    fn name(s: &str) -> Name {
        Name::parse("name", s, 128).unwrap()
    }

    fn pattern(s: &str) -> Pattern {
        Pattern::parse(s, NameLimits::default()).unwrap()
    }

    #[test]
    fn every_command_round_trips_through_the_server_decoder() {
        let json = Payload::json(r#"{ "a" : [1, 2.50] }"#).unwrap();
        let text = Payload::text("line1\nline2 \"q\" é \u{1}").unwrap();
        let commands = [
            Command::Subscribe(Subscribe {
                req: Some(1),
                patterns: vec![pattern("chat.*"), pattern("news.>")],
                from: Some(Cursor::new(0x18c5e2f04a1, 43)),
                name: Some(name("worker one")),
            }),
            Command::Subscribe(Subscribe {
                req: None,
                patterns: vec![pattern("a")],
                from: None,
                name: None,
            }),
            Command::Unsubscribe {
                req: Some(2),
                patterns: vec![pattern("a.b"), pattern("c")],
            },
            Command::Publish {
                req: Some(1 << 53),
                topic: topic("chat.lobby"),
                event: Some(name("msg")),
                payload: json.clone(),
            },
            Command::Publish {
                req: Some(3),
                topic: topic("événements.été"),
                event: None,
                payload: text.clone(),
            },
            Command::Send {
                req: Some(4),
                to: Recipient::Client(name("bob")),
                event: None,
                payload: text.clone(),
            },
            Command::Send {
                req: Some(5),
                to: Recipient::Named {
                    topic: topic("jobs.eu"),
                    name: name("worker"),
                },
                event: Some(name("job")),
                payload: Payload::json("null").unwrap(),
            },
            Command::Request {
                req: 6,
                event: name("whoami"),
                payload: json.clone(),
            },
            Command::Reply {
                ack: 7,
                result: Ok(text.clone()),
            },
            Command::Reply {
                ack: 8,
                result: Err("user declined \"x\"".into()),
            },
            Command::Identify {
                req: Some(9),
                client_id: name("alice"),
                claim: Claim::Explicit,
            },
            Command::Ping { req: Some(10) },
            Command::Ping { req: None },
            Command::Presence {
                req: 11,
                topic: Topic::parse("chat.room", Default::default()).unwrap(),
            },
            Command::WatchPresence {
                req: 12,
                topic: Topic::parse("chat.room", Default::default()).unwrap(),
                watch: true,
            },
            Command::WatchPresence {
                req: 13,
                topic: Topic::parse("chat.room", Default::default()).unwrap(),
                watch: false,
            },
        ];
        for cmd in commands {
            let frame = encode_command(&cmd).expect("expressible");
            let back = native::decode(&frame, &Limits::default());
            assert_eq!(back, cmd, "{}", String::from_utf8_lossy(&frame));
        }
        assert_eq!(
            native::decode(&encode_pong(), &Limits::default()),
            Command::Ping { req: None }
        );
        assert_eq!(
            encode_command(&Command::Send {
                req: None,
                to: Recipient::Conn(ConnId(1)),
                event: None,
                payload: text,
            }),
            None
        );
    }

    #[test]
    fn every_server_frame_decodes_what_the_server_encodes() {
        let t = topic("chat.lobby");
        let p = Payload::json(r#"{"text":"hi"}"#).unwrap();
        let alice = name("alice");
        let frame = native::encode(&Frame::Event {
            topic: &t,
            cursor: Cursor::new(0xff, 42),
            from: Some(&alice),
            event: Some(&alice),
            payload: &p,
        });
        assert_eq!(
            decode_server_frame(&frame).unwrap(),
            ServerFrame::Event(EventFrame {
                topic: t.clone(),
                cursor: Cursor::new(0xff, 42),
                from: Some(alice.clone()),
                event: Some(alice.clone()),
                payload: p.clone(),
            })
        );
        let text = Payload::text("a \"b\"\n").unwrap();
        let frame = native::encode(&Frame::Message {
            from: None,
            room: Some(&alice),
            named: Some((&t, &alice)),
            event: None,
            payload: &text,
        });
        let ServerFrame::Message(m) = decode_server_frame(&frame).unwrap() else {
            panic!()
        };
        assert_eq!(m.payload, text);
        assert_eq!(m.named, Some((t.clone(), alice.clone())));
        let gap = Gap {
            from: None,
            to: Cursor::new(1, 2),
            reason: GapReason::Epoch,
            dropped_messages: 3,
        };
        assert_eq!(
            decode_server_frame(&native::encode(&Frame::Gap(&gap))).unwrap(),
            ServerFrame::Gap(gap)
        );
        let ok = native::encode(&Frame::Ok {
            req: 5,
            cursor: Some(Cursor::new(1, 9)),
            payload: Some(&p),
        });
        assert_eq!(
            decode_server_frame(&ok).unwrap(),
            ServerFrame::Ok {
                id: 5,
                cursor: Some(Cursor::new(1, 9)),
                payload: Some(p.clone())
            }
        );
        let e = ProtocolError::new(ErrorCode::Forbidden, "no");
        let frame = native::encode(&Frame::Error {
            req: None,
            error: &e,
        });
        assert_eq!(
            decode_server_frame(&frame).unwrap(),
            ServerFrame::Error {
                id: None,
                error: ServerError::new("forbidden", "no")
            }
        );
        let config = crate::Config::default();
        let frame = native::encode(&Frame::Welcome {
            conn: ConnId(7),
            cursor: Cursor::new(1, 0),
            config: &config,
        });
        let ServerFrame::Welcome(w) = decode_server_frame(&frame).unwrap() else {
            panic!()
        };
        assert_eq!((w.protocol, w.conn, w.cursor), (1, 7, Cursor::new(1, 0)));
        assert_eq!(w.keepalive, Some(Duration::from_secs(15)));
        assert_eq!(w.max_subscriptions, Some(256));
        let frame = native::encode(&Frame::Request {
            ack: 3,
            event: &alice,
            payload: &p,
        });
        assert!(matches!(
            decode_server_frame(&frame).unwrap(),
            ServerFrame::Request { id: 3, .. }
        ));
        assert_eq!(
            decode_server_frame(&native::encode(&Frame::Pong { req: 8 })).unwrap(),
            ServerFrame::Pong { id: 8 }
        );
        assert_eq!(
            decode_server_frame(&native::encode(&Frame::Ping)).unwrap(),
            ServerFrame::Ping
        );
    }

    #[test]
    fn odd_frames_are_errors_or_ignored_never_panics() {
        let dec = |s: &str| decode_server_frame(&Bytes::copy_from_slice(s.as_bytes()));
        assert_eq!(
            dec(r#"{"type":"shiny","x":1}"#).unwrap(),
            ServerFrame::Unknown
        );
        assert!(dec(r#"{"type":"ok","id":1,"future":[1,{"a":2}]}"#).is_ok());
        for bad in [
            "",
            "[]",
            "nul",
            "{",
            r#"{"type":1}"#,
            r#"{"id":1}"#,
            r#"{"type":"event","topic":"a","cursor":"1-1"}"#,
            r#"{"type":"event","topic":"a.*","cursor":"1-1","data":1}"#,
            r#"{"type":"event","topic":"a","cursor":"X-1","data":1}"#,
            r#"{"type":"ok"}"#,
            r#"{"type":"ok","id":-1}"#,
            r#"{"type":"gap","to":"1-1"}"#,
            r#"{"type":"welcome","cursor":"1-1"}"#,
            r#"{"type":"welcome","protocol":1,"cursor":"1-1","limits":[1]}"#,
            r#"{"type":"error","id":1}"#,
            r#"{"type":"ok","id":1,"id":2}"#,
        ] {
            assert!(dec(bad).is_err(), "{bad}");
        }
        assert!(decode_server_frame(&Bytes::from_static(b"\xff")).is_err());
        // null means absent, except for data.
        assert_eq!(
            dec(r#"{"type":"error","id":null,"code":"x","message":null}"#).unwrap(),
            ServerFrame::Error {
                id: None,
                error: ServerError::new("x", "")
            }
        );
        let ServerFrame::Ok { payload, .. } = dec(r#"{"type":"ok","id":1,"data":null}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(payload.unwrap().as_str(), "null");
        assert!(
            dec(r#"{"type":"gap","from":null,"to":"1-1","reason":"new","dropped_messages":0}"#)
                .is_ok()
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_server_frame(&Bytes::from(bytes));
        }

        #[test]
        fn decoding_json_shaped_frames_never_panics(
            kind in "(welcome|event|message|gap|ok|error|request|pong|ping|x)",
            key in "(id|topic|cursor|from|to|data|limits|protocol|code|reason)",
            value in "(null|1|-1|\"a\"|\"1-1\"|\\[\\]|\\{\\}|1e99|\"a\\.\\*\")",
        ) {
            let frame = format!(r#"{{"type":"{kind}","{key}":{value}}}"#);
            let _ = decode_server_frame(&Bytes::from(frame));
        }
    }
}
