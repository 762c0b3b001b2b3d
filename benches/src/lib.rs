//! Benchmarks of tidings. The criterion benches of the core live in `benches/`, the memory
//! measurement in `src/bin/conn_memory.rs`; see `docs/BENCHMARKS.md` for the commands and the
//! latest results.
//!
//! This library holds the small driver both use: a [`Broker`] with a fixed clock, helpers to
//! open and subscribe connections the way an adapter would, and a drain that consumes every
//! output like an adapter's write loop (without any I/O).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tidings_core::codec::Codec;
use tidings_core::{
    Broker, Command, Config, ConnId, Cursor, Grants, Input, NameLimits, Output, Pattern, Payload,
    Subscribe, Topic,
};

/// A broker driven with a fixed `now` (no timer is ever due, so none fires during a bench) and
/// one shared `Grants::all()`, as an adapter with configuration-based grants would hold.
pub struct Driver {
    /// The broker under test.
    pub broker: Broker,
    /// The time passed to every call.
    pub now: Instant,
    /// The grants every connection opened with [`Driver::open`] gets (one shared `Arc`).
    pub grants: Arc<Grants>,
}

/// What one [`Driver::drain`] consumed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// `Output::Transmit`s.
    pub frames: usize,
    /// Their payload bytes.
    pub bytes: usize,
    /// Every other output (`Close`, `AppEvent`).
    pub other: usize,
}

impl Driver {
    /// A broker with `config`, at a fixed instant.
    pub fn new(config: Config) -> Self {
        let now = Instant::now();
        Self {
            broker: Broker::new(config, now),
            now,
            grants: Arc::new(Grants::all()),
        }
    }

    /// Consumes every pending output, as an adapter's write loop would (minus the writing).
    #[inline]
    pub fn drain(&mut self) -> Drained {
        let mut d = Drained::default();
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { payload, .. } => {
                    d.frames += 1;
                    d.bytes += payload.len();
                }
                _ => d.other += 1,
            }
        }
        d
    }

    /// Like [`Driver::drain`], but also hands every transmitted byte back as flow-control
    /// credit right away (a reader that is never behind), one `Flushed` per frame.
    #[inline]
    pub fn drain_flushing(&mut self, pending: &mut Vec<(ConnId, usize)>) -> Drained {
        let mut total = Drained::default();
        loop {
            let mut d = Drained::default();
            while let Some(out) = self.broker.poll_output() {
                match out {
                    Output::Transmit { conn, payload } => {
                        d.frames += 1;
                        d.bytes += payload.len();
                        pending.push((conn, payload.len()));
                    }
                    _ => d.other += 1,
                }
            }
            total.frames += d.frames;
            total.bytes += d.bytes;
            total.other += d.other;
            if pending.is_empty() {
                return total;
            }
            for (conn, bytes) in pending.drain(..) {
                self.broker
                    .handle_input(self.now, Input::Flushed { conn, bytes })
                    .expect("open connection");
            }
        }
    }

    /// Opens connection `id` with the shared grants and drains its opening frame.
    pub fn open(&mut self, id: u64, codec: Box<dyn Codec>) -> ConnId {
        let grants = Arc::clone(&self.grants);
        self.open_with(id, codec, grants)
    }

    /// Opens connection `id` with `grants` and drains its opening frame.
    pub fn open_with(&mut self, id: u64, codec: Box<dyn Codec>, grants: Arc<Grants>) -> ConnId {
        let conn = ConnId(id);
        self.broker
            .handle_input(
                self.now,
                Input::Open {
                    conn,
                    codec,
                    grants,
                },
            )
            .expect("fresh connection id");
        self.drain();
        conn
    }

    /// Subscribes `conn` to `pattern` (resuming after `from` if given) and drains the answer and
    /// any replay. Native connections ask for an `ok` (request id 1); SSE ones cannot receive it.
    pub fn subscribe(&mut self, conn: ConnId, pattern: &str, from: Option<Cursor>) -> Drained {
        let cmd = subscribe_cmd(self.answered(conn), pattern, from);
        self.broker
            .handle_input(self.now, Input::Command { conn, cmd })
            .expect("open connection");
        self.drain()
    }

    /// Whether `conn` can receive answers (a native connection, not an SSE stream).
    fn answered(&self, conn: ConnId) -> bool {
        self.broker.conn(conn).is_none_or(|c| c.format == "native")
    }

    /// Closes `conn` (as the adapter reports a gone transport) and drains.
    pub fn close(&mut self, conn: ConnId) {
        self.broker
            .handle_input(self.now, Input::Closed { conn })
            .expect("open connection");
        self.drain();
    }

    /// Publishes `payload` to `topic` from server code and drains every delivery.
    #[inline]
    pub fn publish(&mut self, topic: &Topic, payload: &Payload) -> Drained {
        self.broker
            .publish(self.now, topic.clone(), None, payload.clone());
        self.drain()
    }
}

/// The `Subscribe` command a decoder would produce for one pattern (parsed here, so each command
/// owns its pattern like a decoded one does).
/// `answered`: the connection can receive the `ok` (native), so it asks for one.
pub fn subscribe_cmd(answered: bool, pattern: &str, from: Option<Cursor>) -> Command {
    Command::Subscribe(Subscribe {
        req: answered.then_some(1),
        patterns: vec![pattern_of(pattern)],
        from,
        name: None,
    })
}

/// Parses a topic with the default limits.
pub fn topic(s: &str) -> Topic {
    Topic::parse(s, NameLimits::default()).expect("valid topic")
}

/// Parses a pattern with the default limits.
pub fn pattern_of(s: &str) -> Pattern {
    Pattern::parse(s, NameLimits::default()).expect("valid pattern")
}

/// A JSON object of exactly `len` bytes (`len >= 32`), one line, no characters needing escapes:
/// the shape of a typical event payload.
pub fn json_of_len(len: usize) -> Bytes {
    let head = r#"{"type":"chat","user":42,"text":""#;
    let tail = r#""}"#;
    assert!(len >= head.len() + tail.len(), "payload too short");
    let mut s = String::with_capacity(len);
    s.push_str(head);
    let alphabet = b"abcdefghijklmnopqrstuvwxyz 0123456789";
    let fill = len - head.len() - tail.len();
    s.extend((0..fill).map(|i| char::from(alphabet[i % alphabet.len()])));
    s.push_str(tail);
    debug_assert_eq!(s.len(), len);
    Bytes::from(s)
}

/// A JSON payload of exactly `len` bytes (see [`json_of_len`]).
pub fn json_payload(len: usize) -> Payload {
    Payload::json(json_of_len(len)).expect("valid JSON")
}

/// A text (non-JSON) payload of exactly `len` bytes with no characters needing escapes.
pub fn text_payload(len: usize) -> Payload {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz 0123456789";
    let s: String = (0..len)
        .map(|i| char::from(alphabet[i % alphabet.len()]))
        .collect();
    Payload::text(s).expect("valid UTF-8")
}

/// A configuration for benches: the defaults, except that flow control never triggers (see
/// `docs/BENCHMARKS.md`: the credit check costs the same whatever the limit, and returning credit
/// is measured separately) and the history holds `retained` events.
pub fn bench_config(retained: usize) -> Config {
    let mut config = Config::default();
    config.limits.max_queued_bytes = usize::MAX / 4;
    config.retention.max_events = retained;
    config
}
