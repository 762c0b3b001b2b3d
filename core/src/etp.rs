//! The etp protocol (txix-open/etp v3/v4 wire: `name||ackId||data`) on `/etp`.
//!
//! [`decode`] follows etp's `UnmarshalEvent` exactly: the frame is split at the first two `||`
//! (the data may itself contain `||`), the ack id is parsed like Go's `strconv.Atoi` (a sign is
//! accepted; etp keeps it as `uint64(n)`, so `-1` is an ack id like any other but is written
//! back as the signed number: `x||-1` is answered `__ack_x||-1`, as etp v3.0.0–v4.0.1 does), ack
//! id 0 means no answer is wanted. Text and
//! binary messages are the same. An event whose name starts with `__ack_` is an answer to a
//! server request, matched by its id only; it never reaches a handler.
//!
//! Events map onto the core: ack id 0 → [`Command::Notify`] (the handler's result is dropped),
//! ack id N → [`Command::Request`] answered with `__ack_<name>||N[||data]` (even when there is
//! no handler, as etp does), `__ack_*` → [`Command::Reply`]. The reserved names of
//! [`SUBSCRIBE`], [`UNSUBSCRIBE`], [`PUBLISH`], [`SEND`] and [`IDENTIFY`] give an etp client the
//! bus itself with no server code (`docs/COMPAT.md`); topic events then arrive as
//! `<topic>||0||<data>`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::{Codec, Frame, Wire};
use crate::command::{Claim, Command, Recipient, Subscribe};
use crate::config::Limits;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{AckId, ReqId};
use crate::payload::Payload;
use crate::topic::{Name, Pattern, Topic};

/// The prefix of answers (`__ack_<name>||id[||data]`).
pub const ACK_PREFIX: &str = "__ack_";
/// Subscribe: data is a pattern (plain text or a JSON string) or a JSON array of patterns.
pub const SUBSCRIBE: &str = "tidings.subscribe";
/// Unsubscribe: data as for [`SUBSCRIBE`].
pub const UNSUBSCRIBE: &str = "tidings.unsubscribe";
/// Publish: data is `{"topic":"T","data":<JSON>[,"event":"E"]}`; the answer carries
/// `{"cursor":"..."}`.
pub const PUBLISH: &str = "tidings.publish";
/// Direct message: data is `{"to":"<client id>","data":<JSON>}`.
pub const SEND: &str = "tidings.send";
/// Claim a client id (for [`SEND`] and `pub_id` from ksbus): data is the id as plain text.
pub const IDENTIFY: &str = "tidings.identify";
/// The event name of gap notices sent to etp clients.
pub const GAP: &str = "tidings.gap";

/// A reserved name as a [`Name`] (they are all valid).
pub(crate) fn reserved(name: &str) -> Name {
    Name::parse("event", name, usize::MAX).unwrap_or_else(|_| unreachable!("valid name"))
}

/// The error etp reports for a frame without `||`.
fn format_error(frame: &[u8]) -> ProtocolError {
    let shown = String::from_utf8_lossy(&frame[..frame.len().min(200)]);
    ProtocolError::new(
        ErrorCode::BadFrame,
        format!("expected format: <eventName>||<ackId>||<eventData>, got: {shown}"),
    )
}

/// Go's `strconv.Atoi` on the ack id, cast to `uint64` as etp does.
fn parse_ack(s: &[u8]) -> Result<AckId, ProtocolError> {
    let text = String::from_utf8_lossy(s);
    let fail = |why: &str| {
        ProtocolError::new(
            ErrorCode::BadField,
            format!("parse ackId: strconv.Atoi: parsing {text:?}: {why}"),
        )
    };
    let (negative, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(fail("invalid syntax"));
    }
    let mut n: i128 = 0;
    for d in digits {
        n = n * 10 + i128::from(d - b'0');
        if n > i128::from(i64::MAX) + 1 {
            return Err(fail("value out of range"));
        }
    }
    let n = if negative { -n } else { n };
    let n = i64::try_from(n).map_err(|_| fail("value out of range"))?;
    // etp: `uint64(ackId)` (two's complement, as Go converts).
    Ok(u64::from_ne_bytes(n.to_ne_bytes()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The data part as a payload: empty, JSON when it parses as JSON, text otherwise; bytes that
/// are not UTF-8 are refused (tidings does not mangle them).
fn payload(data: &[u8]) -> Result<Payload, ProtocolError> {
    if data.is_empty() {
        return Ok(Payload::empty());
    }
    let bytes = Bytes::copy_from_slice(data);
    match Payload::json(bytes.clone()) {
        Ok(p) => Ok(p),
        Err(e) if e.code == ErrorCode::NotUtf8 => Err(e),
        Err(_) => Payload::text(bytes),
    }
}

/// Event names remembered per connection for answers at most (oldest forgotten first): the
/// broker bounds pending requests far below this, and other answers go out in the same step.
const MAX_ANSWER_NAMES: usize = 1024;

/// The etp protocol as a [`Codec`] (`/etp`). Answers name the event they answer
/// (`__ack_<name>||id`), so the codec remembers the names of the events still to be answered.
#[derive(Debug, Clone, Default)]
pub struct EtpCodec {
    /// Writes empty data as `name||0||` (the etp JS client cannot parse `name||0`).
    js: bool,
    /// The event names of client requests still to be answered, by request id.
    names: Vec<(ReqId, Name)>,
}

impl EtpCodec {
    /// The codec of the Go etp server's wire (empty data written `name||0`).
    pub fn go() -> Self {
        Self::default()
    }

    /// The codec for the etp JS client (empty data written `name||0||`).
    pub fn js() -> Self {
        Self {
            js: true,
            names: Vec::new(),
        }
    }

    /// Forgets and returns the event name of request `req` (the latest one with that id).
    fn take_name(&mut self, req: ReqId) -> Option<Name> {
        let i = self.names.iter().rposition(|(r, _)| *r == req)?;
        Some(self.names.remove(i).1)
    }
}

impl Codec for EtpCodec {
    fn format(&self) -> &'static str {
        if self.js { "etp-js" } else { "etp" }
    }

    fn decode(&self, frame: &Bytes, limits: &Limits, out: &mut Vec<Command>) {
        out.push(decode(frame, limits));
    }

    fn encode(&mut self, frame: &Frame<'_>) -> Option<Wire> {
        let name = match frame {
            Frame::Ping => return Some(Wire::Ping), // etp relies on the WebSocket's pings
            Frame::Ok { req, .. } | Frame::Error { req: Some(req), .. } => self.take_name(*req),
            _ => None,
        };
        encode(frame, name.as_ref().map(Name::as_str), self.js).map(Wire::Frame)
    }

    /// Remembers the event name of every command that will be answered (at once, or a pending
    /// request).
    fn observe(&mut self, cmd: &Command) {
        let (req, name) = match cmd {
            Command::Request { req, event, .. } => (*req, event.clone()),
            Command::Subscribe(s) => match s.req {
                Some(req) => (req, reserved(SUBSCRIBE)),
                None => return,
            },
            Command::Unsubscribe { req: Some(req), .. } => (*req, reserved(UNSUBSCRIBE)),
            Command::Publish { req: Some(req), .. } => (*req, reserved(PUBLISH)),
            Command::Send { req: Some(req), .. } => (*req, reserved(SEND)),
            Command::Identify { req: Some(req), .. } => (*req, reserved(IDENTIFY)),
            // Only refused reserved events carry an id (acks are matched by id only).
            Command::Invalid { req: Some(req), .. } => (*req, reserved("tidings")),
            _ => return,
        };
        if self.names.len() >= MAX_ANSWER_NAMES {
            self.names.remove(0);
        }
        self.names.push((req, name));
    }

    /// etp's words (coder/websocket counts the limit plus one).
    fn frame_too_large(&self, _size: usize, limit: usize) -> String {
        format!("read limited at {} bytes", limit + 1)
    }

    /// etp ignores answers to requests it does not know.
    fn ignores(&self, error: &ProtocolError) -> bool {
        error.code == ErrorCode::UnknownRequest
    }

    fn fresh(&self) -> Box<dyn Codec> {
        Box::new(Self {
            js: self.js,
            names: Vec::new(),
        })
    }
}

/// Decodes one etp message (text or binary). Never fails: bad frames become non-fatal
/// [`Command::Invalid`] (etp reports them to `OnError` and keeps the connection; nothing is
/// sent back, except the answer a reserved event with an ack id waits for).
pub fn decode(frame: &[u8], limits: &Limits) -> Command {
    match decode_inner(frame, limits) {
        Ok(cmd) => cmd,
        Err((req, error)) => Command::Invalid {
            req,
            error,
            fatal: false,
        },
    }
}

type Failure = (Option<AckId>, ProtocolError);

fn decode_inner(frame: &[u8], limits: &Limits) -> Result<Command, Failure> {
    let Some(first) = find(frame, b"||") else {
        return Err((None, format_error(frame)));
    };
    let name = &frame[..first];
    let rest = &frame[first + 2..];
    let (ack, data) = match find(rest, b"||") {
        Some(second) => (&rest[..second], &rest[second + 2..]),
        None => (rest, &[][..]),
    };
    let ack = parse_ack(ack).map_err(|e| (None, e))?;
    let Ok(name) = std::str::from_utf8(name) else {
        let e = ProtocolError::new(ErrorCode::NotUtf8, "the event name is not valid UTF-8");
        return Err((None, e));
    };
    if let Some(_answered) = name.strip_prefix(ACK_PREFIX) {
        // Matched by id only; unknown ids are ignored by the adapter (etp ignores them).
        let result = payload(data).map_err(|e| (None, e))?;
        return Ok(Command::Reply {
            ack,
            result: Ok(result),
        });
    }
    let req = (ack != 0).then_some(ack);
    let fail = |e: ProtocolError| (req, e);
    match name {
        SUBSCRIBE | UNSUBSCRIBE => {
            let patterns = patterns(data, limits).map_err(fail)?;
            Ok(if name == SUBSCRIBE {
                Command::Subscribe(Subscribe {
                    req,
                    patterns,
                    from: None,
                    name: None,
                })
            } else {
                Command::Unsubscribe { req, patterns }
            })
        }
        PUBLISH => {
            #[derive(Deserialize)]
            struct Publish<'a> {
                topic: String,
                #[serde(borrow)]
                data: Option<&'a RawValue>,
                event: Option<String>,
            }
            let p: Publish<'_> = serde_json::from_slice(data).map_err(|e| {
                fail(ProtocolError::new(
                    ErrorCode::BadField,
                    format!("{PUBLISH} takes {{\"topic\":\"T\",\"data\":<JSON>}} ({e})"),
                ))
            })?;
            let topic = Topic::parse(&p.topic, limits.names).map_err(fail)?;
            let event = p
                .event
                .map(|e| crate::native::event_name(&e, limits.max_name_len))
                .transpose()
                .map_err(fail)?;
            let payload = json_value_payload(p.data).map_err(fail)?;
            Ok(Command::Publish {
                req,
                topic,
                event,
                payload,
            })
        }
        SEND => {
            #[derive(Deserialize)]
            struct Send<'a> {
                to: String,
                #[serde(borrow)]
                data: Option<&'a RawValue>,
            }
            let s: Send<'_> = serde_json::from_slice(data).map_err(|e| {
                fail(ProtocolError::new(
                    ErrorCode::BadField,
                    format!("{SEND} takes {{\"to\":\"<client id>\",\"data\":<JSON>}} ({e})"),
                ))
            })?;
            let to = Name::parse("to", &s.to, limits.max_name_len).map_err(fail)?;
            let payload = json_value_payload(s.data).map_err(fail)?;
            Ok(Command::Send {
                req,
                to: Recipient::Client(to),
                event: None,
                payload,
            })
        }
        IDENTIFY => {
            let id = std::str::from_utf8(data).unwrap_or_default();
            let client_id = Name::parse("client id", id, limits.max_name_len).map_err(fail)?;
            Ok(Command::Identify {
                req,
                client_id,
                claim: Claim::Explicit,
            })
        }
        _ => {
            let event = Name::parse("event", name, limits.max_name_len).map_err(|e| {
                let message = if name.is_empty() {
                    "empty event names are not supported".to_owned()
                } else {
                    e.message
                };
                fail(ProtocolError::new(ErrorCode::BadField, message))
            })?;
            let payload = payload(data).map_err(fail)?;
            Ok(match req {
                None => Command::Notify { event, payload },
                Some(req) => Command::Request {
                    req,
                    event,
                    payload,
                },
            })
        }
    }
}

/// A JSON value from a reserved event's `data` field: a string is text, anything else JSON,
/// absent is empty.
fn json_value_payload(raw: Option<&RawValue>) -> Result<Payload, ProtocolError> {
    let Some(raw) = raw else {
        return Ok(Payload::empty());
    };
    let text = raw.get();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadField, e.to_string()))?;
        return Payload::text(s);
    }
    Payload::json(Bytes::copy_from_slice(text.as_bytes()))
}

fn patterns(data: &[u8], limits: &Limits) -> Result<Vec<Pattern>, ProtocolError> {
    let text = std::str::from_utf8(data)
        .map_err(|_| ProtocolError::new(ErrorCode::NotUtf8, "the data is not valid UTF-8"))?;
    let list: Vec<String> = match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str(text).map_err(|_| {
            ProtocolError::new(
                ErrorCode::BadField,
                "give a pattern or a JSON array of them",
            )
        })?,
        Some(b'"') => vec![serde_json::from_str(text).map_err(|_| {
            ProtocolError::new(
                ErrorCode::BadField,
                "give a pattern or a JSON array of them",
            )
        })?],
        _ => vec![text.to_owned()],
    };
    if list.len() > limits.max_subscriptions {
        return Err(ProtocolError::new(
            ErrorCode::LimitReached,
            format!(
                "at most {} subscriptions per connection",
                limits.max_subscriptions
            ),
        ));
    }
    if list.iter().any(|p| p.contains("||") || p.ends_with('|')) {
        return Err(ProtocolError::new(
            ErrorCode::InvalidTopic,
            "etp cannot carry topic names containing \"||\" or ending in \"|\"",
        ));
    }
    list.iter()
        .map(|p| Pattern::parse(p, limits.names))
        .collect()
}

// ---- encoding ------------------------------------------------------------------------------

fn event(name: &str, ack: AckId, data: &[u8], js: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(name.len() + data.len() + 24);
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(b"||");
    // etp keeps ack ids as `uint64` but writes them as the signed number they were parsed
    // from (`-1` comes back as `-1`): ids at or above 2^63 are written as `i64`.
    b.extend_from_slice(i64::from_ne_bytes(ack.to_ne_bytes()).to_string().as_bytes());
    if !data.is_empty() || js {
        b.extend_from_slice(b"||");
        b.put_slice(data);
    }
    b.freeze()
}

/// Encodes a broker frame as one etp message, or `None` when etp has nothing for it. `ack_name`
/// is the name of the event an `ok`/error answers; `js` writes empty data as `name||0||` (for
/// the etp JS client) instead of `name||0`. Keep-alives are the WebSocket's pings (`None` here).
pub fn encode(frame: &Frame<'_>, ack_name: Option<&str>, js: bool) -> Option<Bytes> {
    let answer = |req: AckId, data: &[u8]| {
        let name = format!("{ACK_PREFIX}{}", ack_name.unwrap_or_default());
        // Answers always omit empty data, as etp does (the JS client never asks for them).
        event(&name, req, data, false)
    };
    // etp cannot carry names containing `||` or ending in `|` (it has no escaping): such topics
    // and events are not delivered to etp clients (found by fuzzing).
    // A name ending in `|` would run into the separator.
    let carried = |name: &str| !name.contains("||") && !name.ends_with('|');
    Some(match frame {
        Frame::Event { topic, .. } if !carried(topic.as_str()) => return None,
        Frame::Message { event: Some(e), .. } | Frame::Request { event: e, .. }
            if !carried(e.as_str()) =>
        {
            return None;
        }
        Frame::Message {
            named: Some((t, _)),
            event: None,
            ..
        } if !carried(t.as_str()) => {
            return None;
        }
        Frame::Message {
            room: Some(r),
            event: None,
            named: None,
            ..
        } if !carried(r.as_str()) => {
            return None;
        }
        Frame::Event { topic, payload, .. } => event(topic.as_str(), 0, payload.bytes(), js),
        Frame::Message {
            event: name,
            room,
            named,
            payload,
            ..
        } => {
            let name = name
                .map(Name::as_str)
                .or(named.map(|(t, _)| t.as_str()))
                .or(room.map(Name::as_str))
                .unwrap_or("message");
            event(name, 0, payload.bytes(), js)
        }
        Frame::Request {
            ack,
            event: name,
            payload,
        } => event(name.as_str(), *ack, payload.bytes(), js),
        Frame::Ok {
            req,
            cursor,
            payload,
        } => match (payload, cursor) {
            (Some(p), _) => answer(*req, p.bytes()),
            (None, Some(c)) => answer(*req, format!("{{\"cursor\":\"{c}\"}}").as_bytes()),
            (None, None) => answer(*req, b""),
        },
        Frame::Error {
            req: Some(req),
            error,
        } => {
            if error.code == ErrorCode::NoHandler {
                // etp answers events without a handler with an empty ack.
                answer(*req, b"")
            } else {
                answer(*req, &crate::native::error_json_wrapped(error))
            }
        }
        Frame::Gap(gap) => event(GAP, 0, &crate::native::gap_json(gap), js),
        Frame::Ping
        | Frame::Presence(_)
        | Frame::Error { req: None, .. }
        | Frame::Welcome { .. }
        | Frame::Pong { .. } => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Command {
        decode(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn parsing_rules() {
        let Command::Notify { event, payload } = dec(r#"hello||0||{"a":1}"#) else {
            panic!()
        };
        assert_eq!((event.as_str(), payload.as_str()), ("hello", r#"{"a":1}"#));
        let Command::Request { req, payload, .. } = dec("hello||7||ping") else {
            panic!()
        };
        assert_eq!(
            (req, payload.as_str(), payload.is_json()),
            (7, "ping", false)
        );
        let Command::Notify { payload, .. } = dec("chat||0||a||b") else {
            panic!()
        };
        assert_eq!(payload.as_str(), "a||b");
        for empty in ["evt||0", "evt||0||"] {
            let Command::Notify { payload, .. } = dec(empty) else {
                panic!()
            };
            assert!(payload.is_empty());
        }
        assert!(matches!(dec("hello||007"), Command::Request { req: 7, .. }));
        assert!(matches!(dec("x||+3||d"), Command::Request { req: 3, .. }));
        assert!(matches!(
            dec("x||-1"),
            Command::Request { req: u64::MAX, .. }
        ));
        let Command::Invalid { error, fatal, .. } = dec("garbage") else {
            panic!()
        };
        assert!(!fatal);
        assert_eq!(
            error.message,
            "expected format: <eventName>||<ackId>||<eventData>, got: garbage"
        );
        for bad in ["x||abc||d", "x||", "x||9223372036854775808"] {
            let Command::Invalid { error, .. } = dec(bad) else {
                panic!("{bad}")
            };
            assert!(error.message.starts_with("parse ackId: "), "{error}");
        }
        assert!(matches!(
            dec("x||9223372036854775807"),
            Command::Request { .. }
        ));
        assert!(matches!(
            dec("__ack_q||1||answer"),
            Command::Reply { ack: 1, .. }
        ));
        assert!(matches!(dec("a||5||0||x"), Command::Request { req: 5, .. }));
    }

    #[test]
    fn framing() {
        let p = Payload::text("d").unwrap();
        let name = Name::parse("e", "news", 64).unwrap();
        let msg = |p| Frame::Message {
            from: None,
            room: None,
            named: None,
            event: Some(&name),
            payload: p,
        };
        assert_eq!(encode(&msg(&p), None, false).unwrap(), "news||0||d");
        let empty = Payload::empty();
        assert_eq!(encode(&msg(&empty), None, false).unwrap(), "news||0");
        assert_eq!(encode(&msg(&empty), None, true).unwrap(), "news||0||");
        let ok = Frame::Ok {
            req: 7,
            cursor: None,
            payload: Some(&Payload::text("pong").unwrap()),
        };
        assert_eq!(
            encode(&ok, Some("hello"), false).unwrap(),
            "__ack_hello||7||pong"
        );
        let ok = Frame::Ok {
            req: 8,
            cursor: None,
            payload: Some(&empty),
        };
        assert_eq!(encode(&ok, Some("hello"), true).unwrap(), "__ack_hello||8");
        // etp writes ack ids back as signed numbers (`x||-1` is answered `__ack_x||-1`).
        for (req, want) in [
            (u64::MAX, "__ack_x||-1"),
            (1 << 63, "__ack_x||-9223372036854775808"),
            ((1 << 63) - 1, "__ack_x||9223372036854775807"),
        ] {
            let ok = Frame::Ok {
                req,
                cursor: None,
                payload: None,
            };
            assert_eq!(encode(&ok, Some("x"), false).unwrap(), want);
        }
    }
}
