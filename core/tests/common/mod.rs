//! A small simulator for broker tests: virtual clock, native JSON frames in, parsed frames out.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tidings_core::{
    AppEvent, Broker, Command, Config, ConnId, Grants, Input, Output, ProtocolError, native,
};

#[allow(unused_imports)]
pub use tidings_core::codec::Codec;
#[allow(unused_imports)]
pub use tidings_core::etp::EtpCodec;
#[allow(unused_imports)]
pub use tidings_core::ksbus::KsbusCodec;
pub use tidings_core::native::NativeCodec;
pub use tidings_core::sse::SseCodec;

pub struct Sim {
    pub broker: Broker,
    pub now: Instant,
    /// Frames handed to each connection, not yet taken by the test.
    pub frames: HashMap<ConnId, Vec<Bytes>>,
    /// Close requests per connection (`None`: a normal close).
    pub closed: HashMap<ConnId, Option<ProtocolError>>,
    /// Connections the broker dropped (they did not close in time).
    pub dropped: Vec<ConnId>,
    pub events: Vec<AppEvent>,
    /// Report every transmit as flushed right away (a fast reader).
    pub auto_flush: bool,
}

impl Sim {
    pub fn new(config: Config) -> Self {
        let now = Instant::now();
        Self {
            broker: Broker::new(config, now),
            now,
            frames: HashMap::new(),
            closed: HashMap::new(),
            dropped: Vec::new(),
            events: Vec::new(),
            auto_flush: true,
        }
    }

    pub fn drain(&mut self) {
        let mut flush = Vec::new();
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, payload } => {
                    if self.auto_flush {
                        flush.push((conn, payload.len()));
                    }
                    self.frames.entry(conn).or_default().push(payload);
                }
                Output::Close { conn, reason } => {
                    self.closed.insert(conn, reason);
                }
                Output::Drop { conn } => self.dropped.push(conn),
                Output::App(e) => self.events.push(*e),
                other => panic!("unexpected output {other:?}"),
            }
        }
        if let Some(deadline) = self.broker.poll_timeout() {
            assert!(
                deadline >= self.now - Duration::from_secs(0),
                "poll_timeout is never in the past"
            );
        }
        for (conn, bytes) in flush {
            if self.closed.contains_key(&conn) || self.broker.conn(conn).is_none() {
                continue;
            }
            self.broker
                .handle_input(self.now, Input::Flushed { conn, bytes })
                .unwrap();
            self.drain();
        }
    }

    pub fn open(&mut self, id: u64, codec: impl Codec + 'static) -> ConnId {
        self.open_with(id, codec, Grants::all())
    }

    pub fn open_with(&mut self, id: u64, codec: impl Codec + 'static, grants: Grants) -> ConnId {
        let conn = ConnId(id);
        let native = codec.format() == "native";
        self.broker
            .handle_input(
                self.now,
                Input::Open {
                    conn,
                    codec: Box::new(codec),
                    grants: Arc::new(grants),
                },
            )
            .unwrap();
        self.drain();
        if native {
            let welcome = self.take(conn);
            assert_eq!(welcome.len(), 1);
            assert_eq!(welcome[0]["type"], "welcome");
        } else {
            self.take_raw(conn);
        }
        conn
    }

    /// Sends a native JSON frame from `conn`.
    pub fn send(&mut self, conn: ConnId, frame: &str) {
        let cmd = native::decode(
            &Bytes::copy_from_slice(frame.as_bytes()),
            &self.broker.config().limits,
        );
        self.command(conn, cmd);
    }

    pub fn command(&mut self, conn: ConnId, cmd: Command) {
        self.broker
            .handle_input(self.now, Input::Command { conn, cmd })
            .unwrap();
        self.drain();
    }

    pub fn close(&mut self, conn: ConnId) {
        self.broker
            .handle_input(self.now, Input::Closed { conn })
            .unwrap();
        self.drain();
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.broker.handle_timeout(self.now);
        self.drain();
    }

    /// Takes the frames sent to `conn`, parsed as JSON.
    pub fn take(&mut self, conn: ConnId) -> Vec<Value> {
        self.take_raw(conn)
            .iter()
            .map(|b| {
                serde_json::from_slice(b).unwrap_or_else(|e| panic!("frame {b:?} is not JSON: {e}"))
            })
            .collect()
    }

    pub fn take_raw(&mut self, conn: ConnId) -> Vec<Bytes> {
        self.frames.remove(&conn).unwrap_or_default()
    }

    /// The `data` of every event frame sent to `conn`, as strings (JSON strings unwrapped).
    pub fn event_data(&mut self, conn: ConnId) -> Vec<String> {
        self.take(conn)
            .into_iter()
            .map(|f| {
                assert_eq!(f["type"], "event", "expected an event frame, got {f}");
                match &f["data"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            })
            .collect()
    }

    pub fn take_events(&mut self) -> Vec<AppEvent> {
        std::mem::take(&mut self.events)
    }
}

pub fn publish(sim: &mut Sim, conn: ConnId, topic: &str, data: &str) {
    sim.send(
        conn,
        &format!(r#"{{"op":"publish","topic":"{topic}","data":"{data}"}}"#),
    );
}
