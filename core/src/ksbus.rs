//! The ksbus protocol (gen C, ksbus v1.2.0–v1.4.6) on `/ws/bus`, plus the named routing of gen A.
//!
//! Client frames are JSON objects with an `action`; [`decode`] turns one into the core's
//! [`Command`]s (some actions are two: `ping` claims the id and asks for the pong; a publish with
//! an `event_id` first publishes the server's wait-recv ack). Server frames are JSON objects with
//! sorted keys, written the way Go's `encoding/json` writes a map (no trailing newline, `<`, `>`,
//! `&`, U+2028 and U+2029 escaped), so byte comparisons with the Go server hold.
//!
//! Payload mapping (see `docs/COMPAT.md`): a published object is retained as the object ksbus
//! delivers (`from` and `topic` set, as the Go server does), so native and SSE subscribers get it
//! as JSON; published string data is a text payload. Deliveries to ksbus clients get `from` (the
//! publisher's, or the server id) and `topic` (events) added; named sends get `name` and no
//! `from`, as gen A writes them. Payloads are re-written the way Go writes them, except JSON that
//! `serde_json` cannot hold (nested deeper than 128, numbers beyond `f64`), which is spliced as
//! its text: never delivered as `null`.
//!
//! Deviations from the Go server, on purpose: wrong field types get an error frame instead of
//! a panic that kills the connection; `unsub` of a topic not subscribed, and `pub_id` to an
//! unknown id, stay silent as in Go; a second `sub` of the same topic is one subscription (Go
//! delivers twice); `remove` (what the PyPI client sends) is accepted as `remove_topic`;
//! `pub_server` and `server_message` go to the application's `ksbus.server` handler instead of
//! dialling another server per call; topics follow tidings' topic rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::codec::{Codec, Frame, Wire};
use crate::command::{Claim, Command, Recipient, Subscribe};
use crate::config::Limits;
use crate::error::{ErrorCode, ProtocolError};
use crate::payload::Payload;
use crate::topic::{Name, Pattern, Topic};

/// The handler name of `pub_id` messages to the server's own id (ksbus `OnId`).
pub const ON_ID: &str = "ksbus.id";
/// The handler name of `pub_server` and `server_message` frames (ksbus `OnServerData`).
pub const ON_SERVER_DATA: &str = "ksbus.server";

/// The ksbus protocol as a [`Codec`] (`/ws/bus`), with the server's own ksbus id (`from` of
/// server-originated frames, and the `pub_id` target that reaches the application).
#[derive(Debug, Clone)]
pub struct KsbusCodec {
    server_id: Arc<str>,
}

impl KsbusCodec {
    /// A codec for a server whose ksbus id is `server_id`.
    pub fn new(server_id: &str) -> Self {
        Self {
            server_id: server_id.into(),
        }
    }
}

impl Codec for KsbusCodec {
    fn format(&self) -> &'static str {
        "ksbus"
    }

    fn decode(&self, frame: &Bytes, limits: &Limits, out: &mut Vec<Command>) {
        out.extend(decode(frame, limits, &self.server_id));
    }

    fn encode(&mut self, frame: &Frame<'_>) -> Option<Wire> {
        // ksbus has no keep-alive frame: the WebSocket's ping does it.
        if matches!(frame, Frame::Ping) {
            return Some(Wire::Ping);
        }
        encode(frame, &self.server_id).map(Wire::Frame)
    }

    /// Shutdown closes with 1012 (service restart), not 1001: the PyPI client's `websockets`
    /// library treats 1001 as a normal end, and its `AutoRestart` would never reconnect.
    fn ws_close_code(&self, reason: &ProtocolError) -> u16 {
        match reason.code {
            ErrorCode::ShuttingDown => 1012,
            code => code.ws_close_code(),
        }
    }

    fn fresh(&self) -> Box<dyn Codec> {
        Box::new(self.clone())
    }
}

/// Decodes one client frame into the commands to run, in order. Never fails: bad frames become
/// [`Command::Invalid`] (fatal only for frames that are not JSON objects, or are too large, as
/// the Go server closes the connection then). An empty list means "nothing to do" (a frame
/// without `action`, `pub` without `data`, `unsub` without `topic`, as in Go).
pub fn decode(frame: &[u8], limits: &Limits, server_id: &str) -> Vec<Command> {
    if frame.len() > limits.max_frame_bytes {
        let message = format!(
            "frame is {} bytes; at most {} are allowed",
            frame.len(),
            limits.max_frame_bytes
        );
        return vec![invalid(ErrorCode::FrameTooLarge, message, true)];
    }
    let value: Value = match serde_json::from_slice(frame) {
        Ok(v) => v,
        Err(e) => {
            let message = format!("frame is not valid JSON ({e}); ksbus frames are JSON objects");
            return vec![invalid(ErrorCode::BadFrame, message, true)];
        }
    };
    let m = match value {
        Value::Object(m) => m,
        // Go decodes `null` into a nil map and ignores it.
        Value::Null => return Vec::new(),
        _ => {
            let message = "frame must be a JSON object with an \"action\"";
            return vec![invalid(ErrorCode::BadFrame, message.into(), true)];
        }
    };
    match decode_action(m, limits, server_id) {
        Ok(cmds) => cmds,
        Err(error) => vec![Command::Invalid {
            req: None,
            error,
            fatal: false,
        }],
    }
}

fn invalid(code: ErrorCode, message: String, fatal: bool) -> Command {
    Command::Invalid {
        req: None,
        error: ProtocolError::new(code, message),
        fatal,
    }
}

fn bad(message: impl Into<String>) -> ProtocolError {
    ProtocolError::new(ErrorCode::BadField, message)
}

/// A string field: `Ok(None)` when absent or `null`, an error when of another type.
fn string_field<'a>(
    m: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, ProtocolError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("{key} must be a string"))),
    }
}

fn decode_action(
    mut m: Map<String, Value>,
    limits: &Limits,
    server_id: &str,
) -> Result<Vec<Command>, ProtocolError> {
    let action = match m.get("action") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(a)) => a.clone(),
        Some(_) => return Err(bad("action must be a string")),
    };
    // Gen C sends `from`; gen A sent `id` (and `pub_id` uses `id` for the target).
    let from = match string_field(&m, "from")? {
        Some(f) => Some(f.to_owned()),
        None if action != "pub_id" => string_field(&m, "id")?.map(str::to_owned),
        None => None,
    };
    let topic_missing = || bad("topic missing");
    let name_limit = limits.max_name_len;
    match action.as_str() {
        "ping" => {
            let mut cmds = Vec::with_capacity(2);
            if let Some(from) = from.filter(|f| !f.is_empty()) {
                match Name::parse("from", &from, name_limit) {
                    Ok(client_id) => cmds.push(Command::Identify {
                        req: None,
                        client_id,
                        claim: Claim::Explicit,
                    }),
                    Err(error) => cmds.push(Command::Invalid {
                        req: None,
                        error,
                        fatal: false,
                    }),
                }
            }
            cmds.push(Command::Ping { req: Some(0) });
            Ok(cmds)
        }
        "sub" | "subscribe" => {
            let topic = string_field(&m, "topic")?.ok_or_else(topic_missing)?;
            let pattern = Pattern::parse(topic, limits.names)?;
            let name = string_field(&m, "name")?
                .map(|n| Name::parse("name", n, name_limit))
                .transpose()?;
            Ok(vec![Command::Subscribe(Subscribe {
                req: None,
                patterns: vec![pattern],
                from: None,
                name,
            })])
        }
        "unsub" | "unsubscribe" => {
            let Some(topic) = string_field(&m, "topic")? else {
                return Ok(Vec::new());
            };
            let pattern = Pattern::parse(topic, limits.names)?;
            Ok(vec![Command::Unsubscribe {
                req: None,
                patterns: vec![pattern],
            }])
        }
        "pub" | "publish" => {
            let topic = string_field(&m, "topic")?.ok_or_else(topic_missing)?;
            let topic = Topic::parse(topic, limits.names)?;
            let Some(data) = m.remove("data") else {
                return Ok(Vec::new());
            };
            match data {
                Value::Object(mut data) => {
                    let mut cmds = Vec::with_capacity(2);
                    if let Some(ack) = wait_recv_ack(&data, limits, server_id)? {
                        cmds.push(ack);
                    }
                    if let Some(from) = from {
                        data.insert("from".into(), Value::String(from));
                    }
                    data.insert("topic".into(), Value::String(topic.as_str().to_owned()));
                    cmds.push(Command::Publish {
                        req: None,
                        topic,
                        event: None,
                        payload: object_payload(&data),
                    });
                    Ok(cmds)
                }
                Value::String(s) => Ok(vec![Command::Publish {
                    req: None,
                    topic,
                    event: None,
                    payload: Payload::text(s)?,
                }]),
                _ => Err(bad("type not handled, only json or object stringified")),
            }
        }
        "pub_id" => {
            let id = string_field(&m, "id")?.ok_or_else(|| bad("id missing"))?;
            let id = id.to_owned();
            let Some(data) = m.remove("data") else {
                return Ok(Vec::new());
            };
            let mut data = match data {
                Value::Object(data) => data,
                Value::String(s) => {
                    let mut o = Map::new();
                    o.insert("data".into(), Value::String(s));
                    o
                }
                _ => return Err(bad("type not handled, only json")),
            };
            if let Some(from) = from {
                data.insert("from".into(), Value::String(from));
            }
            if id == server_id {
                let mut cmds = Vec::with_capacity(2);
                if let Some(ack) = wait_recv_ack(&data, limits, server_id)? {
                    cmds.push(ack);
                }
                cmds.push(Command::Notify {
                    event: Name::parse("event", ON_ID, usize::MAX)?,
                    payload: object_payload(&data),
                });
                return Ok(cmds);
            }
            let to = Name::parse("id", &id, name_limit)?;
            data.insert("to_id".into(), Value::String(id));
            Ok(vec![Command::Send {
                req: None,
                to: Recipient::Client(to),
                event: None,
                payload: object_payload(&data),
            }])
        }
        "remove_topic" | "removeTopic" | "remove" => {
            let topic = string_field(&m, "topic")?.ok_or_else(topic_missing)?;
            let topic = Topic::parse(topic, limits.names)?;
            Ok(vec![Command::RemoveTopic { req: None, topic }])
        }
        "pub_server" | "server_message" | "serverMessage" => {
            let addr = string_field(&m, "addr")?.unwrap_or_default().to_owned();
            let data = m.remove("data").unwrap_or(Value::Null);
            if !matches!(data, Value::Object(_) | Value::String(_)) {
                return Err(bad("type not handled, only json"));
            }
            let mut o = Map::new();
            o.insert("addr".into(), Value::String(addr));
            o.insert("data".into(), data);
            if let Some(via) = string_field(&m, "via_server")? {
                o.insert("via_server".into(), Value::String(via.to_owned()));
            }
            if let Some(from) = from {
                o.insert("from".into(), Value::String(from));
            }
            Ok(vec![Command::Notify {
                event: Name::parse("event", ON_SERVER_DATA, usize::MAX)?,
                payload: object_payload(&o),
            }])
        }
        // Gen A named routing: `data` reaches the subscriptions made with `sub` + `name`.
        "send" | "sendTo" => {
            let name = string_field(&m, "name")?
                .filter(|n| !n.is_empty())
                .ok_or_else(|| bad("name missing"))?;
            let full = match string_field(&m, "topic")?.filter(|t| !t.is_empty()) {
                Some(topic) => format!("{topic}:{name}"),
                None => name.to_owned(),
            };
            let (topic, name) = full
                .split_once(':')
                .ok_or_else(|| bad("name must be \"topic:name\" (or give topic and name)"))?;
            let topic = Topic::parse(topic, limits.names)?;
            let name = Name::parse("name", name, name_limit)?;
            // Gen A delivers `data` as it is (plus `name`): no `from` is added.
            let payload = match m.remove("data") {
                Some(Value::Object(data)) => object_payload(&data),
                Some(Value::String(s)) => Payload::text(s)?,
                _ => return Err(bad("type not handled, only json or object stringified")),
            };
            Ok(vec![Command::Send {
                req: None,
                to: Recipient::Named { topic, name },
                event: None,
                payload,
            }])
        }
        other => Err(ProtocolError::new(
            ErrorCode::UnknownOp,
            format!("action {other} not handled"),
        )),
    }
}

/// The server's own wait-recv ack (§1.6): a publish of `{"from":<server>,"ok":"done"}` to the
/// topic named by `data.event_id`, made before the delivery itself.
fn wait_recv_ack(
    data: &Map<String, Value>,
    limits: &Limits,
    server_id: &str,
) -> Result<Option<Command>, ProtocolError> {
    let Some(Value::String(event_id)) = data.get("event_id") else {
        return Ok(None);
    };
    let topic = Topic::parse(event_id, limits.names)?;
    let mut ack = Map::new();
    ack.insert("from".into(), Value::String(server_id.to_owned()));
    ack.insert("ok".into(), Value::String("done".into()));
    Ok(Some(Command::Publish {
        req: None,
        topic,
        event: None,
        payload: object_payload(&ack),
    }))
}

fn object_payload(o: &Map<String, Value>) -> Payload {
    let mut out = Vec::with_capacity(64);
    write_object(&mut out, o.iter());
    Payload::json(out).unwrap_or_else(|_| Payload::empty())
}

// ---- encoding ------------------------------------------------------------------------------

/// Encodes a broker frame for a ksbus client, or `None` when ksbus has nothing for it (welcome,
/// `ok` answers, the errors the Go server does not send, and keep-alives, which are the
/// WebSocket's pings).
pub fn encode(frame: &Frame<'_>, server_id: &str) -> Option<Bytes> {
    let bytes = match frame {
        Frame::Event {
            topic,
            from,
            payload,
            ..
        } => delivery(
            payload,
            Some(from.map_or(server_id, Name::as_str)),
            server_id,
            ("topic", topic.as_str()),
        ),
        Frame::Message {
            from,
            named,
            room,
            event,
            payload,
        } => {
            let mut extra = Vec::new();
            if let Some((topic, name)) = named {
                extra.push(("name", format!("{}:{}", topic.as_str(), name.as_str())));
            }
            if let Some(room) = room {
                extra.push(("room", room.as_str().to_owned()));
            }
            if let Some(event) = event {
                extra.push(("event", event.as_str().to_owned()));
            }
            // Named sends are gen A's, which delivers them without `from` (only gen A clients
            // make named subscriptions).
            let from = if named.is_some() {
                None
            } else {
                Some(from.map_or(server_id, Name::as_str))
            };
            let mut map = base(payload, from, server_id);
            for (k, v) in extra {
                map.insert(k.to_owned(), Part::Value(Value::String(v)));
            }
            let mut out = Vec::with_capacity(payload.len() + 48);
            write_parts(&mut out, &map);
            out
        }
        Frame::Pong { .. } => br#"{"data":"pong"}"#.to_vec(),
        Frame::Error { error, .. } => {
            let message = match error.code {
                ErrorCode::ClientIdTaken => "ID already exist, should be unique",
                // Silent in Go: unsub of a topic not subscribed, pub_id to an unknown id.
                ErrorCode::NotSubscribed | ErrorCode::NoRecipient => return None,
                _ => error.message.as_str(),
            };
            error_frame(message)
        }
        Frame::Gap(gap) => error_frame(&format!(
            "events were lost ({}; {} messages dropped); continue after {}",
            gap.reason.as_str(),
            gap.dropped_messages,
            gap.to
        )),
        Frame::Request {
            ack,
            event,
            payload,
        } => {
            let mut map = BTreeMap::new();
            map.insert("data".to_owned(), value_of(payload));
            let event = Value::String(event.as_str().to_owned());
            map.insert("event".to_owned(), Part::Value(event));
            map.insert("request".to_owned(), Part::Value(Value::from(*ack)));
            let mut out = Vec::with_capacity(payload.len() + 48);
            write_parts(&mut out, &map);
            out
        }
        Frame::Ping | Frame::Welcome { .. } | Frame::Ok { .. } | Frame::Presence(_) => {
            return None;
        }
    };
    Some(Bytes::from(bytes))
}

fn error_frame(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 12);
    out.extend_from_slice(b"{\"error\":");
    write_str(&mut out, message);
    out.push(b'}');
    out
}

/// One value of a delivered object: parsed, and written the way Go writes it; or, when
/// `serde_json` cannot hold it although the payload is valid JSON (nested deeper than its limit
/// of 128, or a number beyond `f64` such as `1e400`), the payload's own text, spliced as it is.
/// So a payload the server accepted never arrives as `null`.
#[derive(Debug)]
enum Part<'a> {
    Value(Value),
    Raw(&'a str),
}

impl<'a> Part<'a> {
    /// The JSON `text` parsed, or as it is when it cannot be parsed.
    fn of(text: &'a str) -> Self {
        serde_json::from_str(text).map_or_else(|_| Self::Raw(trim_ws(text)), Self::Value)
    }
}

fn trim_ws(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\n', '\r'])
}

/// A payload as a JSON value: JSON as it is, text as a string.
fn value_of(payload: &Payload) -> Part<'_> {
    if payload.is_json() {
        Part::of(payload.as_str())
    } else {
        Part::Value(Value::String(payload.as_str().to_owned()))
    }
}

/// The delivered object before the routing key: an object payload as it is (with `from` set if
/// missing and `from` is given), anything else wrapped as `data` (string data is from the
/// server, as in Go). An
/// object `serde_json` cannot parse is split into its members without parsing it (each member
/// then parsed if it can be, else spliced as it is), so that `from` and the routing key can
/// still be added; should even that fail, the whole payload is wrapped as `data`.
fn base<'a>(
    payload: &'a Payload,
    from: Option<&str>,
    server_id: &str,
) -> BTreeMap<String, Part<'a>> {
    let wrap = |part| BTreeMap::from([("data".to_owned(), part)]);
    let (mut map, from) = match value_of(payload) {
        Part::Value(Value::Object(o)) => (
            o.into_iter().map(|(k, v)| (k, Part::Value(v))).collect(),
            from,
        ),
        Part::Value(Value::String(s)) if !payload.is_json() => {
            (wrap(Part::Value(Value::String(s))), from.map(|_| server_id))
        }
        Part::Raw(text) => match raw_members(text) {
            Some(members) => (
                members.into_iter().map(|(k, v)| (k, Part::of(v))).collect(),
                from,
            ),
            None => (wrap(Part::Raw(text)), from),
        },
        other => (wrap(other), from),
    };
    if let Some(from) = from {
        map.entry("from".to_owned())
            .or_insert_with(|| Part::Value(Value::String(from.to_owned())));
    }
    map
}

/// The members of the JSON object `text` (valid JSON, as payloads are), keys unescaped, values
/// as their text: one pass over the bytes counting open brackets, so no depth limit and no
/// number parsing. `None` when `text` is not an object (or not valid JSON after all). A key
/// given twice keeps its last value, as `serde_json` does.
fn raw_members(text: &str) -> Option<Vec<(String, &str)>> {
    fn skip_ws(b: &[u8], i: &mut usize) {
        while b
            .get(*i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            *i += 1;
        }
    }
    /// The index after the string that starts at `i`.
    fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
        i += 1;
        loop {
            match b.get(i)? {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
    }
    let b = text.as_bytes();
    let mut i = 0;
    skip_ws(b, &mut i);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    skip_ws(b, &mut i);
    let mut members = Vec::new();
    if b.get(i) == Some(&b'}') {
        return Some(members);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = i;
        i = string_end(b, i)?;
        let key: String = serde_json::from_str(text.get(start..i)?).ok()?;
        skip_ws(b, &mut i);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        skip_ws(b, &mut i);
        let value = i;
        let mut depth = 0usize;
        loop {
            match *b.get(i)? {
                b'"' => {
                    i = string_end(b, i)?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' | b'}' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        members.push((key, trim_ws(text.get(value..i)?)));
        if b[i] == b'}' {
            return Some(members);
        }
        i += 1;
        skip_ws(b, &mut i);
    }
}

fn delivery(payload: &Payload, from: Option<&str>, server_id: &str, key: (&str, &str)) -> Vec<u8> {
    let mut map = base(payload, from, server_id);
    map.insert(
        key.0.to_owned(),
        Part::Value(Value::String(key.1.to_owned())),
    );
    let mut out = Vec::with_capacity(payload.len() + 32);
    write_parts(&mut out, &map);
    out
}

/// Writes an object of parts (sorted by key, as a `BTreeMap` of strings is).
fn write_parts(out: &mut Vec<u8>, map: &BTreeMap<String, Part<'_>>) {
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        match v {
            Part::Value(v) => write_value(out, v),
            Part::Raw(text) => out.extend_from_slice(text.as_bytes()),
        }
    }
    out.push(b'}');
}

/// Writes an object with sorted keys, the way Go's `json.Marshal` writes a `map[string]any`.
fn write_object<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a String, &'a Value)>) {
    let mut entries: Vec<_> = entries.collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_value(out, v);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v);
            }
            out.push(b']');
        }
        Value::Object(o) => write_object(out, o.iter()),
    }
}

/// Numbers as Go writes the `float64` they decode into: integral values without a fraction.
fn write_number(out: &mut Vec<u8>, n: &serde_json::Number) {
    if let Some(f) = n.as_f64().filter(|_| n.is_f64())
        && f.fract() == 0.0
        && f.abs() < 1e21
    {
        #[allow(clippy::cast_possible_truncation)]
        let i = f as i128;
        out.extend_from_slice(i.to_string().as_bytes());
        return;
    }
    out.extend_from_slice(n.to_string().as_bytes());
}

/// A JSON string as Go writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped too.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                let n = c as u32;
                out.extend_from_slice(b"\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(HEX[((n >> shift) & 0xf) as usize]);
                }
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Cursor;

    fn one(frame: &str) -> Command {
        let mut cmds = decode(frame.as_bytes(), &Limits::default(), "master");
        assert_eq!(cmds.len(), 1, "{cmds:?}");
        cmds.remove(0)
    }

    fn err(frame: &str) -> String {
        match one(frame) {
            Command::Invalid { error, .. } => error.message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_match_go() {
        assert_eq!(err(r#"{"action":"sub","from":"a"}"#), "topic missing");
        assert_eq!(err(r#"{"action":"pub","data":{"x":1}}"#), "topic missing");
        assert_eq!(
            err(r#"{"action":"pub","topic":"n","data":42}"#),
            "type not handled, only json or object stringified"
        );
        assert_eq!(err(r#"{"action":"pub_id","data":{}}"#), "id missing");
        assert_eq!(err(r#"{"action":"foo"}"#), "action foo not handled");
        assert_eq!(err(r#"{"action":7}"#), "action must be a string");
        assert_eq!(
            err(r#"{"action":"sub","topic":1}"#),
            "topic must be a string"
        );
        assert!(decode(br#"{"topic":"x"}"#, &Limits::default(), "m").is_empty());
        assert!(decode(b"null", &Limits::default(), "m").is_empty());
        assert!(matches!(
            one("not json"),
            Command::Invalid { fatal: true, .. }
        ));
    }

    #[test]
    fn publish_object_sets_from_and_topic_and_acks_first() {
        let cmds = decode(
            br#"{"action":"pub","topic":"news","data":{"msg":"<hi>","from":"x","topic":"y","event_id":"E1"},"from":"b"}"#,
            &Limits::default(),
            "master",
        );
        let [ack, publish] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        let Command::Publish { topic, payload, .. } = ack else {
            panic!()
        };
        assert_eq!(topic.as_str(), "E1");
        assert_eq!(payload.as_str(), r#"{"from":"master","ok":"done"}"#);
        let Command::Publish { payload, .. } = publish else {
            panic!()
        };
        assert_eq!(
            payload.as_str(),
            r#"{"event_id":"E1","from":"b","msg":"\u003chi\u003e","topic":"news"}"#
        );
    }

    #[test]
    fn shutdown_closes_with_service_restart() {
        let codec = KsbusCodec::new("m");
        let close = |code| codec.ws_close_code(&ProtocolError::new(code, "x"));
        // 1012, not 1001: the PyPI client's AutoRestart reconnects only after an abnormal close.
        assert_eq!(close(ErrorCode::ShuttingDown), 1012);
        assert_eq!(close(ErrorCode::FrameTooLarge), 1009);
        assert_eq!(close(ErrorCode::BadFrame), 1008);
    }

    #[test]
    fn encodes_deliveries() {
        let topic = Topic::parse("news", Default::default()).unwrap();
        let p = Payload::text("hello").unwrap();
        let from = Name::parse("from", "browser", 64).unwrap();
        let frame = Frame::Event {
            topic: &topic,
            cursor: Cursor::new(1, 1),
            from: Some(&from),
            event: None,
            payload: &p,
        };
        assert_eq!(
            encode(&frame, "master").unwrap(),
            r#"{"data":"hello","from":"master","topic":"news"}"#
        );
        let p = Payload::json(r#"{"b":1.0,"a":[1,{"z":1,"y":2}]}"#).unwrap();
        let frame = Frame::Event {
            topic: &topic,
            cursor: Cursor::new(1, 1),
            from: Some(&from),
            event: None,
            payload: &p,
        };
        assert_eq!(
            encode(&frame, "master").unwrap(),
            r#"{"a":[1,{"y":2,"z":1}],"b":1,"from":"browser","topic":"news"}"#
        );
        assert_eq!(
            encode(&Frame::Pong { req: 0 }, "m").unwrap(),
            r#"{"data":"pong"}"#
        );
    }

    #[test]
    fn named_sends_are_written_as_gen_a_writes_them() {
        let cmds = decode(
            br#"{"action":"send","name":"jobs:worker","data":{"job":1},"id":"s"}"#,
            &Limits::default(),
            "master",
        );
        let [Command::Send { payload, .. }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!(payload.as_str(), r#"{"job":1}"#);
        let topic = Topic::parse("jobs", Default::default()).unwrap();
        let (name, from) = (
            Name::parse("n", "worker", 64).unwrap(),
            Name::parse("f", "s", 64).unwrap(),
        );
        let named = |payload| Frame::Message {
            from: Some(&from),
            named: Some((&topic, &name)),
            room: None,
            event: None,
            payload,
        };
        let p = payload.clone();
        assert_eq!(
            encode(&named(&p), "m").unwrap(),
            r#"{"job":1,"name":"jobs:worker"}"#
        );
        let p = Payload::text("two").unwrap();
        assert_eq!(
            encode(&named(&p), "m").unwrap(),
            r#"{"data":"two","name":"jobs:worker"}"#
        );
        // A `from` in the data stays.
        let p = Payload::json(r#"{"from":"me"}"#).unwrap();
        assert_eq!(
            encode(&named(&p), "m").unwrap(),
            r#"{"from":"me","name":"jobs:worker"}"#
        );
    }

    /// Payloads the server accepts but `serde_json::Value` cannot hold (nested deeper than 128,
    /// numbers beyond `f64`) are spliced as their text: never `"data":null`.
    #[test]
    fn encodes_payloads_serde_cannot_parse_from_their_text() {
        let topic = Topic::parse("news", Default::default()).unwrap();
        let from = Name::parse("from", "b", 64).unwrap();
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let event = |json: &str| {
            let p = Payload::json(json.to_owned()).unwrap();
            let frame = Frame::Event {
                topic: &topic,
                cursor: Cursor::new(1, 1),
                from: Some(&from),
                event: None,
                payload: &p,
            };
            String::from_utf8(encode(&frame, "master").unwrap().to_vec()).unwrap()
        };
        assert_eq!(
            event(&deep),
            format!(r#"{{"data":{deep},"from":"b","topic":"news"}}"#)
        );
        assert_eq!(
            event(" 1e400 "),
            r#"{"data":1e400,"from":"b","topic":"news"}"#
        );
        // An object: its members sorted, those that parse written as Go does, the others as
        // they are; `from` kept when given, `topic` replaced.
        let object = format!(
            r#" {{ "z" : {deep} , "big":-1E400,"topic":"x","a":{{"y":1.0,"x":"<"}},"s":"}}\"{{,"}} "#
        );
        assert_eq!(
            event(&object),
            format!(
                r#"{{"a":{{"x":"\u003c","y":1}},"big":-1E400,"from":"b","s":"}}\"{{,","topic":"news","z":{deep}}}"#
            )
        );
        let object = format!(r#"{{"from":"me","n":[{deep}]}}"#);
        assert_eq!(
            event(&object),
            format!(r#"{{"from":"me","n":[{deep}],"topic":"news"}}"#)
        );
        assert_eq!(raw_members("{}"), Some(Vec::new()));
        assert_eq!(raw_members("[1]"), None);
        assert_eq!(raw_members(r#"{"a":1,"#), None);
        // A server request carries such payloads too.
        let p = Payload::json(deep.clone()).unwrap();
        let request = Frame::Request {
            ack: 3,
            event: &from,
            payload: &p,
        };
        let want = format!(r#"{{"data":{deep},"event":"b","request":3}}"#);
        assert_eq!(encode(&request, "m").unwrap(), want.as_str());
    }
}
