//! The native protocol: JSON text frames over WebSocket (specified in `docs/PROTOCOL.md`).
//!
//! [`decode`] turns one client frame into a [`Command`] (never failing: bad frames become
//! [`Command::Invalid`] with a precise error); [`encode`] writes one broker [`Frame`]. Client data
//! that is a JSON string becomes a text payload; any other JSON value stays JSON. Both are cut out
//! of the frame without copying.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::{Codec, Frame, Wire};
use crate::command::{Claim, Command, Recipient, Subscribe};
use crate::config::Limits;
use crate::cursor::Cursor;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::ReqId;
use crate::output::Gap;
use crate::payload::Payload;
use crate::topic::{Name, Pattern, Topic};

/// The native protocol as a [`Codec`] (`/ws`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NativeCodec;

impl Codec for NativeCodec {
    fn format(&self) -> &'static str {
        "native"
    }

    fn decode(&self, frame: &Bytes, limits: &Limits, out: &mut Vec<Command>) {
        out.push(decode(frame, limits));
    }

    fn encode(&mut self, frame: &Frame<'_>) -> Option<Wire> {
        Some(Wire::Frame(encode(frame)))
    }

    fn fresh(&self) -> Box<dyn Codec> {
        Box::new(Self)
    }
}

/// The protocol version announced in the welcome frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// The fields any client frame may carry; each is checked by the op that uses it. Unknown fields
/// are ignored so newer clients can talk to older servers.
/// A `null` in any field but `data` means the field is absent.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    topics: Option<&'a RawValue>,
    #[serde(borrow)]
    from: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    client_id: Option<&'a RawValue>,
    #[serde(borrow)]
    watch: Option<&'a RawValue>,
}

/// Keeps an explicit `null` as a present value, so `"data": null` is data and not a missing field.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Decodes one client frame. Never fails: a bad frame becomes [`Command::Invalid`] carrying the
/// request id when it could still be read.
pub fn decode(frame: &Bytes, limits: &Limits) -> Command {
    if frame.len() > limits.max_frame_bytes {
        return invalid(
            None,
            ErrorCode::FrameTooLarge,
            format!(
                "frame is {} bytes; at most {} are allowed",
                frame.len(),
                limits.max_frame_bytes
            ),
            true,
        );
    }
    // Checked up front: serde does not look inside the fields it skips.
    let Ok(text) = std::str::from_utf8(frame) else {
        let message = "frame is not valid UTF-8; frames are JSON text";
        return invalid(None, ErrorCode::NotUtf8, message.into(), false);
    };
    // Only an object is a frame (serde would also map a JSON array onto the fields by position).
    if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let message = "frame must be a JSON object with an \"op\" field";
        return invalid(None, ErrorCode::BadFrame, message.into(), false);
    }
    // From the checked text: serde does not validate the UTF-8 again.
    let fields: Fields<'_> = match serde_json::from_str(text) {
        Ok(fields) => fields,
        Err(e) => {
            let message = if e.is_data() {
                format!(
                    "frame must be a JSON object with an \"op\" field and no duplicate keys ({e})"
                )
            } else {
                format!("frame is not valid JSON: {e}")
            };
            return invalid(None, ErrorCode::BadFrame, message, false);
        }
    };
    let req = match fields.id.map(|raw| parse_id("id", raw)).transpose() {
        Ok(req) => req,
        Err(e) => {
            return Command::Invalid {
                req: None,
                error: e,
                fatal: false,
            };
        }
    };
    match decode_op(frame, &fields, req, limits) {
        Ok(cmd) => cmd,
        Err(error) => Command::Invalid {
            // A reply's id is the server's request id, not one the client waits on.
            req: req.filter(|_| {
                fields
                    .op
                    .and_then(|op| string("op", op).ok())
                    .is_none_or(|op| op != "reply")
            }),
            error,
            fatal: false,
        },
    }
}

fn decode_op(
    frame: &Bytes,
    f: &Fields<'_>,
    req: Option<ReqId>,
    limits: &Limits,
) -> Result<Command, ProtocolError> {
    let op = string("op", f.op.ok_or_else(|| missing("op"))?)?;
    let name_len = limits.max_name_len;
    Ok(match &*op {
        "subscribe" => Command::Subscribe(Subscribe {
            req,
            patterns: patterns(f, limits)?,
            from: f
                .from
                .map(|raw| string("from", raw)?.parse::<Cursor>())
                .transpose()?,
            name: optional_name("name", f.name, name_len)?,
        }),
        "unsubscribe" => Command::Unsubscribe {
            req,
            patterns: patterns(f, limits)?,
        },
        "publish" => Command::Publish {
            req,
            topic: topic(f.topic, limits)?,
            event: optional_event(f.event, name_len)?,
            payload: payload(frame, f.data.ok_or_else(|| missing("data"))?)?,
        },
        "send" => {
            let to = match (f.to, f.name) {
                (Some(to), None) => {
                    Recipient::Client(Name::parse("to", &string("to", to)?, name_len)?)
                }
                (None, Some(name)) => Recipient::Named {
                    topic: topic(f.topic, limits)?,
                    name: Name::parse("name", &string("name", name)?, name_len)?,
                },
                _ => {
                    return Err(ProtocolError::new(
                        ErrorCode::BadField,
                        "send needs either \"to\" (a client id) or \"topic\" and \"name\" (a named subscription)",
                    ));
                }
            };
            Command::Send {
                req,
                to,
                event: optional_event(f.event, name_len)?,
                payload: payload(frame, f.data.ok_or_else(|| missing("data"))?)?,
            }
        }
        "request" => Command::Request {
            req: req.ok_or_else(|| missing("id"))?,
            event: Name::parse(
                "event",
                &string("event", f.event.ok_or_else(|| missing("event"))?)?,
                name_len,
            )?,
            payload: match f.data {
                Some(raw) => payload(frame, raw)?,
                None => Payload::json_unchecked(Bytes::from_static(b"null")),
            },
        },
        "reply" => Command::Reply {
            ack: req.ok_or_else(|| missing("id"))?,
            result: match (f.data, f.error) {
                (_, Some(error)) => Err(string("error", error)?.into_owned()),
                (Some(raw), None) => Ok(payload(frame, raw)?),
                (None, None) => Ok(Payload::json_unchecked(Bytes::from_static(b"null"))),
            },
        },
        "identify" => Command::Identify {
            req,
            client_id: Name::parse(
                "client_id",
                &string(
                    "client_id",
                    f.client_id.ok_or_else(|| missing("client_id"))?,
                )?,
                name_len,
            )?,
            claim: Claim::Explicit,
        },
        "presence" => match f.watch.map(|raw| raw.get()) {
            None => Command::Presence {
                req: req.ok_or_else(|| missing("id"))?,
                topic: topic(f.topic, limits)?,
            },
            Some(flag @ ("true" | "false")) => Command::WatchPresence {
                req: req.ok_or_else(|| missing("id"))?,
                topic: topic(f.topic, limits)?,
                watch: flag == "true",
            },
            Some(_) => return Err(wrong_type("watch", "true or false")),
        },
        "ping" => Command::Ping { req },
        // The answer to a server `ping`: activity, nothing to reply.
        "pong" => Command::Ping { req: None },
        other => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op {:?}; known ops: subscribe, unsubscribe, publish, send, request, reply, identify, presence, ping, pong",
                    truncate(other, 64)
                ),
            ));
        }
    })
}

fn invalid(req: Option<ReqId>, code: ErrorCode, message: String, fatal: bool) -> Command {
    Command::Invalid {
        req,
        error: ProtocolError::new(code, message),
        fatal,
    }
}

fn missing(field: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadField, format!("field \"{field}\" is missing"))
}

fn wrong_type(field: &str, expected: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::BadField,
        format!("field \"{field}\" must be {expected}"),
    )
}

pub(crate) fn string<'a>(field: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, ProtocolError> {
    serde_json::from_str::<Cow<'a, str>>(raw.get()).map_err(|_| wrong_type(field, "a string"))
}

pub(crate) fn parse_id(field: &str, raw: &RawValue) -> Result<ReqId, ProtocolError> {
    serde_json::from_str::<u64>(raw.get())
        .ok()
        .filter(|id| *id <= (1 << 53))
        .ok_or_else(|| wrong_type(field, "an integer from 0 to 2^53"))
}

fn optional_name(
    field: &str,
    raw: Option<&RawValue>,
    max_len: usize,
) -> Result<Option<Name>, ProtocolError> {
    raw.map(|raw| Name::parse(field, &string(field, raw)?, max_len))
        .transpose()
}

/// Event names of published and sent data (see [`event_name`]).
fn optional_event(raw: Option<&RawValue>, max_len: usize) -> Result<Option<Name>, ProtocolError> {
    raw.map(|raw| event_name(&string("event", raw)?, max_len))
        .transpose()
}

/// Validates the event name of data a peer publishes or sends (here, or through an HTTP
/// publish): a [`Name`] that does not start with [`RESERVED_EVENT_PREFIX`], because `tidings-`
/// names are the server's own SSE notices (`tidings-gap`, `tidings-error`) and must not be forged.
///
/// # Errors
/// [`ErrorCode::BadField`] saying what is wrong.
pub fn event_name(s: &str, max_len: usize) -> Result<Name, ProtocolError> {
    if s.starts_with(RESERVED_EVENT_PREFIX) {
        return Err(ProtocolError::new(
            ErrorCode::BadField,
            format!(
                "event names starting with {RESERVED_EVENT_PREFIX:?} are reserved for the server's notices"
            ),
        ));
    }
    Name::parse("event", s, max_len)
}

/// The prefix of event names the server reserves for its own SSE notices.
pub const RESERVED_EVENT_PREFIX: &str = "tidings-";

fn topic(raw: Option<&RawValue>, limits: &Limits) -> Result<Topic, ProtocolError> {
    Topic::parse(
        &string("topic", raw.ok_or_else(|| missing("topic"))?)?,
        limits.names,
    )
}

fn patterns(f: &Fields<'_>, limits: &Limits) -> Result<Vec<Pattern>, ProtocolError> {
    let list: Vec<Cow<'_, str>> = match (f.topic, f.topics) {
        (Some(one), None) => vec![string("topic", one)?],
        (None, Some(many)) => serde_json::from_str(many.get())
            .map_err(|_| wrong_type("topics", "an array of strings"))?,
        _ => {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                "give either \"topic\" (a string) or \"topics\" (an array of strings)",
            ));
        }
    };
    if list.is_empty() {
        return Err(ProtocolError::new(
            ErrorCode::BadField,
            "\"topics\" must hold at least one pattern",
        ));
    }
    if list.len() > limits.max_subscriptions {
        return Err(ProtocolError::new(
            ErrorCode::LimitReached,
            format!(
                "at most {} subscriptions per connection; this frame names {}",
                limits.max_subscriptions,
                list.len()
            ),
        ));
    }
    list.iter()
        .map(|p| Pattern::parse(p, limits.names))
        .collect()
}

pub(crate) fn payload(frame: &Bytes, raw: &RawValue) -> Result<Payload, ProtocolError> {
    let text = raw.get();
    if text.starts_with('"') {
        // A string without escapes borrows from the frame; one with escapes is unescaped.
        if let Ok(plain) = serde_json::from_str::<&str>(text) {
            return Payload::text(share(frame, plain.as_bytes()));
        }
        let owned: String = serde_json::from_str(text).map_err(|_| wrong_type("data", "JSON"))?;
        return Payload::text(owned);
    }
    Ok(Payload::json_unchecked(share(frame, text.as_bytes())))
}

/// The payload as a slice of the frame (no copy) when it is most of the frame; otherwise a copy,
/// so a small payload retained in the history does not keep a large frame alive (retention
/// counts payload bytes).
fn share(frame: &Bytes, part: &[u8]) -> Bytes {
    if part.len() * 2 >= frame.len() {
        frame.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---- encoding ------------------------------------------------------------------------------

/// Encodes a broker frame as one JSON text frame.
pub fn encode(frame: &Frame<'_>) -> Bytes {
    let mut b = Buf::with_capacity(match frame {
        Frame::Event { payload, topic, .. } => {
            64 + topic.as_str().len() + payload.len() + payload.len() / 8
        }
        Frame::Message { payload, .. } | Frame::Request { payload, .. } => {
            96 + payload.len() + payload.len() / 8
        }
        _ => 96,
    });
    match *frame {
        Frame::Welcome {
            conn,
            cursor,
            config,
        } => {
            let limits = &config.limits;
            let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            b.raw("{\"type\":\"welcome\",\"protocol\":");
            b.num(u64::from(PROTOCOL_VERSION));
            b.raw(",\"conn\":");
            b.num(conn.0);
            b.raw(",\"cursor\":");
            b.cursor(cursor);
            b.raw(",\"limits\":{\"max_frame_bytes\":");
            b.num(limits.max_frame_bytes as u64);
            b.raw(",\"max_subscriptions\":");
            b.num(limits.max_subscriptions as u64);
            b.raw(",\"max_pending_requests\":");
            b.num(limits.max_pending_requests as u64);
            b.raw(",\"max_name_len\":");
            b.num(limits.max_name_len as u64);
            b.raw(",\"max_topic_len\":");
            b.num(limits.names.max_len as u64);
            b.raw(",\"max_topic_segments\":");
            b.num(limits.names.max_segments as u64);
            b.raw("}");
            for (field, value) in [
                ("keepalive_ms", config.timers.keepalive),
                ("idle_timeout_ms", config.timers.idle_timeout),
                ("request_timeout_ms", Some(config.timers.request_timeout)),
                ("retry_ms", config.sse_retry),
            ] {
                if let Some(value) = value {
                    b.raw(",\"");
                    b.raw(field);
                    b.raw("\":");
                    b.num(ms(value));
                }
            }
            b.raw("}");
        }
        Frame::Event {
            topic,
            cursor,
            from,
            event,
            payload,
        } => {
            b.raw("{\"type\":\"event\",\"topic\":");
            b.str(topic.as_str());
            b.raw(",\"cursor\":");
            b.cursor(cursor);
            if let Some(from) = from {
                b.raw(",\"from\":");
                b.str(from.as_str());
            }
            if let Some(event) = event {
                b.raw(",\"event\":");
                b.str(event.as_str());
            }
            b.raw(",\"data\":");
            b.payload(payload);
            b.raw("}");
        }
        Frame::Message {
            from,
            room,
            named,
            event,
            payload,
        } => {
            b.raw("{\"type\":\"message\"");
            if let Some(from) = from {
                b.raw(",\"from\":");
                b.str(from.as_str());
            }
            if let Some(room) = room {
                b.raw(",\"room\":");
                b.str(room.as_str());
            }
            if let Some((topic, name)) = named {
                b.raw(",\"topic\":");
                b.str(topic.as_str());
                b.raw(",\"name\":");
                b.str(name.as_str());
            }
            if let Some(event) = event {
                b.raw(",\"event\":");
                b.str(event.as_str());
            }
            b.raw(",\"data\":");
            b.payload(payload);
            b.raw("}");
        }
        Frame::Presence(notice) => {
            // `{"topic":..}` as `{"type":"presence","topic":..}`.
            let json = notice.to_json();
            b.raw("{\"type\":\"presence\",");
            b.raw(json.get(1..).unwrap_or("}"));
        }
        Frame::Gap(gap) => {
            b.raw("{\"type\":\"gap\",");
            b.gap_fields(gap);
            b.raw("}");
        }
        Frame::Ok {
            req,
            cursor,
            payload,
        } => {
            b.raw("{\"type\":\"ok\",\"id\":");
            b.num(req);
            if let Some(cursor) = cursor {
                b.raw(",\"cursor\":");
                b.cursor(cursor);
            }
            if let Some(payload) = payload {
                b.raw(",\"data\":");
                b.payload(payload);
            }
            b.raw("}");
        }
        Frame::Error { req, error } => {
            b.raw("{\"type\":\"error\",");
            if let Some(req) = req {
                b.raw("\"id\":");
                b.num(req);
                b.raw(",");
            }
            b.error_fields(error);
            b.raw("}");
        }
        Frame::Request {
            ack,
            event,
            payload,
        } => {
            b.raw("{\"type\":\"request\",\"id\":");
            b.num(ack);
            b.raw(",\"event\":");
            b.str(event.as_str());
            b.raw(",\"data\":");
            b.payload(payload);
            b.raw("}");
        }
        Frame::Pong { req } => {
            b.raw("{\"type\":\"pong\",\"id\":");
            b.num(req);
            b.raw("}");
        }
        Frame::Ping => b.raw("{\"type\":\"ping\"}"),
    }
    b.0.freeze()
}

/// The gap notice as a JSON object (the `data` of an SSE `tidings-gap` event).
pub(crate) fn gap_json(gap: &Gap) -> Vec<u8> {
    let mut b = Buf::with_capacity(96);
    b.raw("{");
    b.gap_fields(gap);
    b.raw("}");
    b.0.to_vec()
}

/// An error as a JSON object `{"code":..,"message":..}` (the `data` of an SSE `tidings-error`).
pub(crate) fn error_json(error: &ProtocolError) -> Vec<u8> {
    let mut b = Buf::with_capacity(64 + error.message.len());
    b.raw("{");
    b.error_fields(error);
    b.raw("}");
    b.0.to_vec()
}

/// An error as `{"error":{"code":..,"message":..}}` (the data of an etp error answer).
pub(crate) fn error_json_wrapped(error: &ProtocolError) -> Vec<u8> {
    let mut b = Buf::with_capacity(80 + error.message.len());
    b.raw("{\"error\":{");
    b.error_fields(error);
    b.raw("}}");
    b.0.to_vec()
}

struct Buf(BytesMut);

impl Buf {
    fn with_capacity(n: usize) -> Self {
        Self(BytesMut::with_capacity(n))
    }

    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn num(&mut self, n: u64) {
        self.0.extend_from_slice(itoa(n, &mut [0; 20]));
    }

    fn str(&mut self, s: &str) {
        write_json_str(&mut self.0, s);
    }

    fn cursor(&mut self, c: Cursor) {
        self.0.put_u8(b'"');
        self.0.extend_from_slice(c.text().as_str().as_bytes());
        self.0.put_u8(b'"');
    }

    fn payload(&mut self, p: &Payload) {
        if p.is_json() {
            self.0.extend_from_slice(p.bytes());
        } else {
            self.str(p.as_str());
        }
    }

    fn gap_fields(&mut self, gap: &Gap) {
        self.raw("\"from\":");
        match gap.from {
            Some(from) => self.cursor(from),
            None => self.raw("null"),
        }
        self.raw(",\"to\":");
        self.cursor(gap.to);
        self.raw(",\"reason\":");
        self.str(gap.reason.as_str());
        self.raw(",\"dropped_messages\":");
        self.num(gap.dropped_messages);
    }

    fn error_fields(&mut self, error: &ProtocolError) {
        self.raw("\"code\":");
        self.str(error.code.as_str());
        self.raw(",\"message\":");
        self.str(&error.message);
    }
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Whether any of the 8 bytes of `w` needs escaping in a JSON string (`"`, `\\`, or below 0x20).
/// Bytes of multi-byte UTF-8 sequences (0x80 and up) never do.
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space
        | zero_byte(w ^ (ONES * u64::from(b'"')))
        | zero_byte(w ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// Writes `s` as a JSON string: skips plain text 8 bytes at a time, copies runs at once, escapes
/// `"`, `\\` and control characters.
pub(crate) fn write_json_str(out: &mut BytesMut, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.put_u8(b'"');
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(word) = bytes
            .get(i..i + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
        {
            if !word_needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let c = bytes[i];
        let escape: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let hex = [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 15)],
            ];
            out.extend_from_slice(&hex);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConnId;
    use crate::output::GapReason;

    fn dec(s: &str) -> Command {
        decode(&Bytes::copy_from_slice(s.as_bytes()), &Limits::default())
    }

    fn err_code(cmd: Command) -> (Option<ReqId>, ErrorCode, String) {
        match cmd {
            Command::Invalid { req, error, .. } => (req, error.code, error.message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn decodes_subscribe() {
        let Command::Subscribe(s) =
            dec(r#"{"op":"subscribe","id":1,"topics":["a.*","b"],"from":"ff-7","name":"n"}"#)
        else {
            panic!()
        };
        assert_eq!(s.req, Some(1));
        assert_eq!(s.patterns.len(), 2);
        assert_eq!(s.from, Some(Cursor::new(255, 7)));
        assert_eq!(s.name.unwrap().as_str(), "n");
        let Command::Subscribe(s) = dec(r#"{"op":"subscribe","topic":"x.>"}"#) else {
            panic!()
        };
        assert_eq!(s.patterns[0].as_str(), "x.>");
        assert_eq!(s.req, None);
    }

    #[test]
    fn decodes_publish_payloads_without_copying_semantics() {
        let Command::Publish { payload, topic, .. } =
            dec(r#"{"op":"publish","topic":"a","data":{"k":[1,2]}}"#)
        else {
            panic!()
        };
        assert_eq!(topic.as_str(), "a");
        assert!(payload.is_json());
        assert_eq!(payload.as_str(), r#"{"k":[1,2]}"#);
        let Command::Publish { payload, .. } =
            dec(r#"{"op":"publish","topic":"a","data":"line1\nline2 \u00e9"}"#)
        else {
            panic!()
        };
        assert!(!payload.is_json());
        assert_eq!(payload.as_str(), "line1\nline2 é");
    }

    #[test]
    fn small_payloads_do_not_pin_large_frames() {
        let pad = "x".repeat(1000);
        let frame = Bytes::from(format!(
            r#"{{"op":"publish","topic":"a","pad":"{pad}","data":7}}"#
        ));
        let Command::Publish { payload, .. } = decode(&frame, &Limits::default()) else {
            panic!()
        };
        let inside = frame.as_ptr_range().contains(&payload.bytes().as_ptr());
        assert!(!inside, "a 1-byte payload is copied out of a 1 KiB frame");
        let frame = Bytes::from(format!(r#"{{"op":"publish","topic":"a","data":"{pad}"}}"#));
        let Command::Publish { payload, .. } = decode(&frame, &Limits::default()) else {
            panic!()
        };
        assert!(
            frame.as_ptr_range().contains(&payload.bytes().as_ptr()),
            "a large one is shared"
        );
    }

    #[test]
    fn bad_frames_get_precise_errors() {
        assert_eq!(err_code(dec("not json")).1, ErrorCode::BadFrame);
        assert_eq!(err_code(dec("[1,2]")).1, ErrorCode::BadFrame);
        assert_eq!(
            err_code(dec(r#"{"id":3}"#)),
            (
                Some(3),
                ErrorCode::BadField,
                "field \"op\" is missing".into()
            )
        );
        assert_eq!(
            err_code(dec(r#"{"op":"fly","id":4}"#)).1,
            ErrorCode::UnknownOp
        );
        assert_eq!(err_code(dec(r#"{"op":5}"#)).1, ErrorCode::BadField);
        assert_eq!(err_code(dec(r#"{"op":"ping","id":"x"}"#)).0, None);
        assert_eq!(
            err_code(dec(r#"{"op":"ping","id":-1}"#)).1,
            ErrorCode::BadField
        );
        assert_eq!(
            err_code(dec(r#"{"op":"publish","id":2,"topic":"a.*","data":1}"#)),
            (
                Some(2),
                ErrorCode::InvalidTopic,
                err_code(dec(r#"{"op":"publish","topic":"a.*","data":1}"#)).2
            )
        );
        assert_eq!(
            err_code(dec(r#"{"op":"publish","topic":"a"}"#)).2,
            "field \"data\" is missing"
        );
        assert_eq!(
            err_code(dec(r#"{"op":"subscribe","topics":[]}"#)).1,
            ErrorCode::BadField
        );
        assert_eq!(
            err_code(dec(r#"{"op":"subscribe","topics":"a"}"#)).1,
            ErrorCode::BadField
        );
        assert_eq!(
            err_code(dec(r#"{"op":"subscribe","topic":"a","from":"nope"}"#)).1,
            ErrorCode::InvalidCursor
        );
        assert_eq!(
            err_code(dec(r#"{"op":"request","event":"x"}"#)).1,
            ErrorCode::BadField
        );
        assert_eq!(
            err_code(dec(r#"{"op":"send","data":1}"#)).1,
            ErrorCode::BadField
        );
        assert_eq!(
            err_code(decode(&Bytes::from_static(b"\xff"), &Limits::default())).1,
            ErrorCode::NotUtf8
        );
        let big = Bytes::from(vec![b' '; Limits::default().max_frame_bytes + 1]);
        let Command::Invalid { error, fatal, .. } = decode(&big, &Limits::default()) else {
            panic!()
        };
        assert!(fatal);
        assert_eq!(error.code, ErrorCode::FrameTooLarge);
    }

    proptest::proptest! {
        #[test]
        fn json_strings_round_trip(text in "(?s).{0,64}", ascii in "[ -~\\t\\n\"\\\\]{0,40}") {
            for s in [text, ascii] {
                let mut out = BytesMut::new();
                write_json_str(&mut out, &s);
                let back: String = serde_json::from_slice(&out).unwrap();
                proptest::prop_assert_eq!(back, s);
            }
        }
    }

    #[test]
    fn encodes_frames_exactly() {
        let topic = Topic::parse("a.b", Default::default()).unwrap();
        let p = Payload::text("hi \"there\"\n\u{1}").unwrap();
        let out = encode(&Frame::Event {
            topic: &topic,
            cursor: Cursor::new(16, 3),
            from: None,
            event: None,
            payload: &p,
        });
        assert_eq!(
            &out[..],
            br#"{"type":"event","topic":"a.b","cursor":"10-3","data":"hi \"there\"\n\u0001"}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"], "hi \"there\"\n\u{1}");
        let gap = Gap {
            from: None,
            to: Cursor::new(1, 9),
            reason: GapReason::Evicted,
            dropped_messages: 0,
        };
        assert_eq!(
            &encode(&Frame::Gap(&gap))[..],
            br#"{"type":"gap","from":null,"to":"1-9","reason":"evicted","dropped_messages":0}"#
        );
        let e = ProtocolError::new(ErrorCode::Forbidden, "no");
        assert_eq!(
            &encode(&Frame::Error {
                req: Some(5),
                error: &e
            })[..],
            br#"{"type":"error","id":5,"code":"forbidden","message":"no"}"#
        );
        let config = crate::Config::default();
        let w = encode(&Frame::Welcome {
            conn: ConnId(7),
            cursor: Cursor::new(1, 0),
            config: &config,
        });
        let v: serde_json::Value = serde_json::from_slice(&w).unwrap();
        assert_eq!(v["type"], "welcome");
        assert_eq!(v["cursor"], "1-0");
        assert_eq!(v["limits"]["max_frame_bytes"], 1 << 20);
        assert_eq!(v["keepalive_ms"], 15_000);
        assert_eq!(v["retry_ms"], 2_000);
    }
}
