//! Fuzz target bodies (feature `fuzzing`), shared by the cargo-fuzz crate in `fuzz/` and by
//! `tests/fuzz_corpus.rs`, which replays the checked-in corpus under `cargo test`.
//!
//! Each function takes arbitrary bytes and panics when an invariant breaks (a panic is a
//! finding). They use only the public API. See `docs/FUZZING.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::Codec;
use crate::etp::EtpCodec;
use crate::ksbus::KsbusCodec;
use crate::native::NativeCodec;
use crate::sse::SseCodec;
use crate::{
    Broker, Command, Config, ConnId, Grants, Input, Limits, Name, NameLimits, Output, Payload,
    Retention, Topic, native, sse,
};

/// Largest request id a native client can use (JSON numbers are exact up to 2^53).
const MAX_REQ: u64 = 1 << 53;

/// The request id a command carries, if any.
fn req_of(cmd: &Command) -> Option<u64> {
    match cmd {
        Command::Subscribe(s) => s.req,
        Command::Unsubscribe { req, .. }
        | Command::Publish { req, .. }
        | Command::Send { req, .. }
        | Command::Identify { req, .. }
        | Command::Ping { req }
        | Command::Invalid { req, .. }
        | Command::RemoveTopic { req, .. } => *req,
        Command::Notify { .. } => None,
        Command::Request { req, .. }
        | Command::Presence { req, .. }
        | Command::WatchPresence { req, .. } => Some(*req),
        Command::Reply { ack, .. } => Some(*ack),
    }
}

/// `native::decode` never panics; a decoded request id is at most 2^53.
pub fn native_decode(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    let cmd = native::decode(&frame, &Limits::default());
    if let Some(req) = req_of(&cmd) {
        assert!(req <= MAX_REQ, "request id {req} above 2^53 in {cmd:?}");
    }
    // A small frame limit exercises the size check too.
    let small = Limits {
        max_frame_bytes: 16,
        ..Limits::default()
    };
    let cmd = native::decode(&frame, &small);
    if data.len() > 16 {
        assert!(
            matches!(cmd, Command::Invalid { fatal: true, .. }),
            "{cmd:?}"
        );
    }
}

/// Everything a decoder produced for a stream, for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    items: Vec<sse::Item>,
    error: Option<sse::DecodeError>,
    discarded: bool,
    reconnect_id: String,
    retry: Option<u64>,
}

fn decode_chunks(limit: usize, chunks: &[&[u8]]) -> Decoded {
    let mut decoder = sse::Decoder::with_limit(limit);
    let mut error = None;
    for chunk in chunks {
        if let Err(e) = decoder.feed(chunk) {
            error = Some(e);
            break;
        }
    }
    let mut items = Vec::new();
    while let Some(item) = decoder.next_item() {
        items.push(item);
    }
    // After an error, what `finish` discards depends on where the input stopped being read.
    let discarded = decoder.finish() && error.is_none();
    while let Some(item) = decoder.next_item() {
        items.push(item);
    }
    Decoded {
        items,
        error,
        discarded,
        reconnect_id: decoder.reconnect_id().to_owned(),
        retry: decoder.retry(),
    }
}

/// The SSE decoder never panics, and splitting the stream into two chunks anywhere gives the same
/// items (and the same error, if any) as one feed.
pub fn sse_decode(data: &[u8]) {
    let Some((&head, stream)) = data.split_first() else {
        return;
    };
    // The first byte picks the split point and the limit (small limits exercise the errors).
    let split = if stream.is_empty() {
        0
    } else {
        usize::from(head) * 7 % (stream.len() + 1)
    };
    let limit = if head & 1 == 0 { 16 << 20 } else { 24 };
    let whole = decode_chunks(limit, &[stream]);
    let (a, b) = stream.split_at(split);
    let split_result = decode_chunks(limit, &[a, b]);
    assert_eq!(whole, split_result, "split at {split} changed the result");
    // Byte by byte, too (the hardest chunking), on short inputs.
    if stream.len() <= 64 {
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            whole,
            decode_chunks(limit, &bytes),
            "byte-wise feed differs"
        );
    }
    if limit > stream.len() {
        assert!(
            matches!(whole.error, None | Some(sse::DecodeError::NotUtf8)),
            "{whole:?}"
        );
    }
}

/// What goes into an SSE event comes out: the id, the event type (or `message`) and the data with
/// CRLF and CR normalized to LF.
pub fn sse_roundtrip(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let (Some(a), Some(b), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(id), Ok(event)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else {
        return;
    };
    // An empty part means "no such field".
    let id = (!id.is_empty()).then_some(id);
    let event = (!event.is_empty()).then_some(event);
    if id.is_some_and(|id| sse::check_id(id).is_err())
        || event.is_some_and(|e| sse::check_event(e).is_err())
    {
        assert!(sse::event(id, event, payload).is_err());
        return;
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        assert!(sse::event(id, event, payload).is_err());
        return;
    };
    let encoded = sse::event(id, event, payload).expect("the encoder refused checked fields");
    let items = sse::decode_all(&encoded).expect("the decoder refused an encoded event");
    let [sse::Item::Event(ev)] = items.as_slice() else {
        panic!("expected exactly one event, got {items:?} from {encoded:?}");
    };
    assert_eq!(ev.last_event_id, id.unwrap_or(""));
    assert_eq!(ev.event_type, event.unwrap_or("message"));
    let expected = text.replace("\r\n", "\n").replace('\r', "\n");
    assert_eq!(ev.data, expected, "data changed in {encoded:?}");
}

/// Native frames the broker-ops harness can pick by index, so short inputs reach deep states.
const FRAMES: &[&str] = &[
    r#"{"op":"subscribe","id":1,"topics":["chat.*","news.>"]}"#,
    r#"{"op":"subscribe","id":2,"topics":["chat.*"],"from":"1-0"}"#,
    r#"{"op":"subscribe","id":3,"topic":"jobs.eu","name":"worker"}"#,
    r#"{"op":"unsubscribe","id":4,"topic":"news.>"}"#,
    r#"{"op":"publish","id":5,"topic":"chat.lobby","event":"msg","data":{"text":"hi"}}"#,
    r#"{"op":"publish","topic":"news.eu.x","data":"0123456789012345678901234567890123456789012345678901234567890123456789"}"#,
    r#"{"op":"send","id":6,"to":"bob","event":"dm","data":"psst"}"#,
    r#"{"op":"send","id":7,"topic":"jobs.eu","name":"worker","data":{"job":1}}"#,
    r#"{"op":"request","id":8,"event":"whoami"}"#,
    r#"{"op":"reply","id":1,"data":true}"#,
    r#"{"op":"reply","id":2,"error":"no"}"#,
    r#"{"op":"identify","id":9,"client_id":"bob"}"#,
    r#"{"op":"ping","id":10}"#,
    r#"{"op":"pong"}"#,
    r#"{"op":"subscribe","id":11,"topics":[">"],"from":"1-3"}"#,
    r#"{"op":"subscribe","id":12,"topics":["chat.lobby"],"from":"7-1"}"#,
];

const TOPICS: &[&str] = &["chat.lobby", "chat.dev", "news.eu.x", "jobs.eu"];

/// Reads bytes off the front of the fuzz input; zeros when it runs out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }

    fn slice(&mut self, len: usize) -> &[u8] {
        let (a, b) = self.0.split_at(len.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// The harness around one broker.
struct Harness {
    broker: Broker,
    now: Instant,
    /// Every id ever opened, with its format (ids are never reused).
    ever: Vec<(ConnId, &'static str)>,
    /// Ids opened and not yet reported closed.
    open: BTreeMap<ConnId, &'static str>,
    next_id: u64,
    max_queued: usize,
}

impl Harness {
    fn pick(&self, b: u8) -> Option<ConnId> {
        if self.ever.is_empty() {
            return None;
        }
        Some(self.ever[usize::from(b) % self.ever.len()].0)
    }

    /// `handle_input` must fail exactly when the harness used an unknown id.
    fn input(&mut self, conn: ConnId, input: Input) {
        let known = self.open.contains_key(&conn);
        let result = self.broker.handle_input(self.now, input);
        assert_eq!(result.is_ok(), known, "{conn}: {result:?}");
    }

    fn drain(&mut self) {
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, payload } => {
                    let format = self.ever.iter().find(|(c, _)| *c == conn).map(|(_, t)| *t);
                    assert!(self.open.contains_key(&conn), "transmit to closed {conn}");
                    match format {
                        Some("native") => {
                            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&payload) {
                                panic!("bad JSON to {conn}: {e}: {payload:?}");
                            }
                        }
                        Some("sse") => {
                            if let Err(e) = sse::decode_all(&payload) {
                                panic!("bad SSE to {conn}: {e}: {payload:?}");
                            }
                        }
                        _ => panic!("transmit to unknown {conn}"),
                    }
                }
                Output::Close { conn, .. } | Output::Drop { conn } => {
                    assert!(self.open.contains_key(&conn), "close of closed {conn}");
                }
                Output::KeepAlive { conn } | Output::Deliver { conn, .. } => {
                    panic!("native and SSE have keep-alive frames and no typed items: {conn}");
                }
                Output::App(_) => {}
                Output::Log(req) => panic!("the in-memory log asks nothing of a log: {req:?}"),
                Output::Relay(req) => panic!("a single node relays nothing: {req:?}"),
            }
        }
        if let Some(t) = self.broker.poll_timeout() {
            assert!(t >= self.now, "poll_timeout in the past");
        }
        for &conn in self.open.keys() {
            let info = self
                .broker
                .conn(conn)
                .expect("open conn unknown to the broker");
            // Past twice the limit the broker closes the connection; the frame that crossed
            // the line still goes (replies are never dropped), and nothing after it.
            let bound = if info.closing { 3 } else { 2 } * self.max_queued;
            assert!(
                info.queued_bytes <= bound,
                "{conn} queued {} bytes (closing: {})",
                info.queued_bytes,
                info.closing
            );
        }
    }

    fn open(&mut self, codec: Box<dyn Codec>) {
        let conn = ConnId(self.next_id);
        self.next_id += 1;
        self.ever.push((conn, codec.format()));
        self.open.insert(conn, codec.format());
        let grants = Arc::new(Grants::all());
        let r = self.broker.handle_input(
            self.now,
            Input::Open {
                conn,
                codec,
                grants,
            },
        );
        assert!(r.is_ok(), "{r:?}");
    }
}

/// Runs the input as a sequence of operations on a broker with small limits, draining after each
/// and checking: no panic, `handle_input` errs only for ids the harness made unknown,
/// `poll_timeout` never in the past, every native frame is JSON, every SSE frame decodes, and no
/// open connection holds more than twice `max_queued_bytes` (unless the broker is closing it, which
/// happens when one frame crosses that line).
pub fn broker_ops(data: &[u8]) {
    let max_queued = 2000;
    let config = Config {
        limits: Limits {
            max_queued_bytes: max_queued,
            max_connections: 6,
            max_subscriptions: 4,
            max_pending_requests: 3,
            max_pending_acks: 3,
            max_rooms_per_conn: 2,
            max_frame_bytes: 512,
            max_tracked_topics: 4,
            ..Limits::default()
        },
        retention: Retention {
            max_events: 8,
            max_bytes: 600,
            max_age: Duration::from_secs(20),
        },
        ..Config::default()
    };
    let start = Instant::now(); // clock: test-only (the fuzz harness's own base time)
    let mut h = Harness {
        broker: Broker::new(config, start),
        now: start,
        ever: Vec::new(),
        open: BTreeMap::new(),
        next_id: 1,
        max_queued,
    };
    let mut r = Reader(data);
    let mut steps = 0;
    while let Some(op) = r.byte() {
        steps += 1;
        if steps > 400 {
            break;
        }
        match op % 12 {
            0 => h.open(Box::new(NativeCodec)),
            1 => h.open(Box::new(SseCodec)),
            2 | 3 => {
                // A raw frame from the input.
                let (Some(who), len) = (r.byte(), usize::from(r.byte().unwrap_or(0))) else {
                    break;
                };
                let frame = Bytes::copy_from_slice(r.slice(len));
                if let Some(conn) = h.pick(who) {
                    let cmd = native::decode(&frame, &h.broker.config().limits);
                    h.input(conn, Input::Command { conn, cmd });
                }
            }
            4 | 5 => {
                // A known frame.
                let (Some(who), Some(which)) = (r.byte(), r.byte()) else {
                    break;
                };
                let frame =
                    Bytes::from_static(FRAMES[usize::from(which) % FRAMES.len()].as_bytes());
                if let Some(conn) = h.pick(who) {
                    let cmd = native::decode(&frame, &h.broker.config().limits);
                    h.input(conn, Input::Command { conn, cmd });
                }
            }
            6 => {
                let Some(who) = r.byte() else { break };
                let bytes = usize::from(r.u16());
                if let Some(conn) = h.pick(who) {
                    h.input(conn, Input::Flushed { conn, bytes });
                }
            }
            7 => {
                let Some(who) = r.byte() else { break };
                if let Some(conn) = h.pick(who) {
                    h.input(conn, Input::Closed { conn });
                    h.open.remove(&conn);
                }
            }
            8 => {
                let ms = u64::from(r.u16()) % 5001;
                h.now += Duration::from_millis(ms);
                h.broker.handle_timeout(h.now);
            }
            9 => {
                let (Some(t), len) = (r.byte(), usize::from(r.byte().unwrap_or(0))) else {
                    break;
                };
                let topic =
                    Topic::parse(TOPICS[usize::from(t) % TOPICS.len()], NameLimits::default())
                        .expect("valid topic");
                let text = String::from_utf8_lossy(r.slice(len)).into_owned();
                let payload = Payload::text(text).expect("UTF-8");
                let event = (t & 0x80 != 0).then(|| Name::parse("event", "up", 16).expect("name"));
                h.broker.publish(h.now, topic, event, payload);
            }
            10 => {
                // Deliberate misuse: an id never opened, or a duplicate open.
                let Some(b) = r.byte() else { break };
                if b & 1 == 0 {
                    let conn = ConnId(1_000_000 + u64::from(b));
                    h.input(conn, Input::Flushed { conn, bytes: 1 });
                } else if let Some(&conn) = h.open.keys().next() {
                    let grants = Arc::new(Grants::all());
                    let r = h.broker.handle_input(
                        h.now,
                        Input::Open {
                            conn,
                            codec: Box::new(NativeCodec),
                            grants,
                        },
                    );
                    assert!(r.is_err(), "duplicate open accepted");
                }
            }
            _ => {
                // Flush everything queued on every open connection (a fast reader).
                let conns: Vec<ConnId> = h.open.keys().copied().collect();
                for conn in conns {
                    let bytes = h.broker.conn(conn).map_or(0, |i| i.queued_bytes);
                    h.input(conn, Input::Flushed { conn, bytes });
                }
            }
        }
        h.drain();
    }
}

/// Runs `cmds` from one connection of `codec`'s format through a broker (with a second
/// connection of the same format subscribed to everything) and returns every frame handed out
/// (a keep-alive as an empty frame).
fn through_broker(codec: &dyn Codec, cmds: Vec<Command>) -> Vec<Bytes> {
    let now = Instant::now(); // clock: test-only (the fuzz harness's own base time)
    let mut broker = Broker::new(Config::default(), now);
    let grants = Arc::new(Grants::all());
    for conn in [ConnId(1), ConnId(2)] {
        broker
            .handle_input(
                now,
                Input::Open {
                    conn,
                    codec: codec.fresh(),
                    grants: grants.clone(),
                },
            )
            .expect("fresh connection");
    }
    let all = crate::Pattern::parse(">", NameLimits::default()).expect("valid pattern");
    let sub = Command::Subscribe(crate::Subscribe {
        req: None,
        patterns: vec![all],
        from: None,
        name: None,
    });
    broker
        .handle_input(
            now,
            Input::Command {
                conn: ConnId(2),
                cmd: sub,
            },
        )
        .expect("open connection");
    for cmd in cmds {
        broker
            .handle_input(
                now,
                Input::Command {
                    conn: ConnId(1),
                    cmd,
                },
            )
            .expect("open connection");
    }
    broker.handle_timeout(now + Duration::from_secs(3600));
    let mut frames = Vec::new();
    while let Some(out) = broker.poll_output() {
        match out {
            Output::Transmit { payload, .. } => frames.push(payload),
            Output::KeepAlive { .. } => frames.push(Bytes::new()),
            _ => {}
        }
    }
    frames
}

/// `ksbus::decode` never panics; what the broker then sends a ksbus client is a JSON object
/// (or an empty keep-alive), and `pong`/`error` frames carry neither `topic` nor `to_id`.
pub fn ksbus_decode(data: &[u8]) {
    let cmds = crate::ksbus::decode(data, &Limits::default(), "master");
    let small = Limits {
        max_frame_bytes: 16,
        ..Limits::default()
    };
    let small_cmds = crate::ksbus::decode(data, &small, "master");
    if data.len() > 16 {
        assert!(
            matches!(small_cmds[..], [Command::Invalid { fatal: true, .. }]),
            "{small_cmds:?}"
        );
    }
    for frame in through_broker(&KsbusCodec::new("master"), cmds) {
        if frame.is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_slice(&frame).unwrap_or_else(|e| panic!("not JSON ({e}): {frame:?}"));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {v}"));
        // A pong is exactly {"data":"pong"}, an error exactly {"error":..}; everything else is
        // a delivery, which clients route by topic, to_id or name.
        let pong = o.len() == 1 && o.get("data").is_some_and(|d| d == "pong");
        let error = o.len() == 1 && o.contains_key("error");
        assert!(
            pong || error
                || ["topic", "to_id", "name"]
                    .iter()
                    .any(|k| o.contains_key(*k)),
            "{v}"
        );
    }
}

/// `etp::decode` never panics and follows etp's split rules; what the broker then sends an etp
/// client is `name||id[||data]` with a decimal id (signed, as etp writes ids of 2^63 and more).
pub fn etp_decode(data: &[u8]) {
    let cmd = crate::etp::decode(data, &Limits::default());
    let first = data.windows(2).position(|w| w == b"||");
    match (&cmd, first) {
        (Command::Invalid { fatal, .. }, _) => assert!(!fatal),
        (_, None) => panic!("decoded a frame without '||': {cmd:?}"),
        (Command::Notify { event, .. } | Command::Request { event, .. }, Some(i)) => {
            assert_eq!(event.as_str().as_bytes(), &data[..i]);
        }
        _ => {}
    }
    for codec in [EtpCodec::go(), EtpCodec::js()] {
        for frame in through_broker(&codec, vec![cmd.clone()]) {
            if frame.is_empty() {
                continue;
            }
            let i = frame
                .windows(2)
                .position(|w| w == b"||")
                .unwrap_or_else(|| panic!("no '||' in {frame:?}"));
            let rest = &frame[i + 2..];
            let id_end = rest
                .windows(2)
                .position(|w| w == b"||")
                .unwrap_or(rest.len());
            // A decimal id, signed as etp writes ids of 2^63 and more (`-1`).
            let id = rest[..id_end].strip_prefix(b"-").unwrap_or(&rest[..id_end]);
            assert!(
                !id.is_empty() && id.iter().all(u8::is_ascii_digit),
                "{frame:?}"
            );
        }
    }
}

/// The log's record decoder, recovery scan and `meta` reader never panic on any bytes; a record
/// that decodes encodes back to the same bytes (so `decode(encode(x)) == x` for every record the
/// decoder accepts), and the scan's entries are records that decode at their offsets.
pub fn log_decode(data: &[u8]) {
    use crate::log::{record, scan};

    let _ = record::decode_meta(data);
    let _ = record::decode_segment_header(data);
    if let Ok((logged, used)) = record::decode(data) {
        let mut again = Vec::new();
        let len = record::encode(&logged, &mut again).expect("a decoded record encodes");
        assert_eq!(len, used);
        assert_eq!(again, data[..used], "re-encoding changed the bytes");
        assert_eq!(record::decode(&again), Ok((logged, used)));
    }
    let shared = Bytes::copy_from_slice(data);
    assert_eq!(
        record::decode_shared(&shared),
        record::decode(data),
        "decode_shared differs from decode"
    );
    // The bytes as a whole segment, and as the records of a segment after a valid header (the
    // first eight bytes pick the base).
    check_scan(data);
    let base = data
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let mut segment = record::encode_segment_header(base).to_vec();
    segment.extend_from_slice(data.get(8..).unwrap_or_default());
    check_scan(&segment);

    fn check_scan(buf: &[u8]) {
        let scanned = scan::scan(buf);
        let mut end = if scanned.base.is_some() {
            record::SEGMENT_HEADER
        } else {
            0
        };
        let mut previous = None;
        for entry in &scanned.entries {
            let at = entry.offset as usize;
            assert_eq!(at, end, "entries are contiguous");
            assert!(previous < Some(entry.seq), "positions increase");
            previous = Some(entry.seq);
            end = at + entry.len as usize;
            // What the scan accepts is a record by its checksum and layout; the full decode may
            // still refuse its names or text, never panic.
            let _ = record::decode(&buf[at..end]);
        }
        assert_eq!(scanned.valid_len, end);
        match &scanned.tail {
            Some(torn) => assert_eq!((torn.offset, torn.offset + torn.bytes), (end, buf.len())),
            None => assert_eq!(end, buf.len()),
        }
    }
}
