//! Codecs as values: what a wire format must do for the broker.
//!
//! Every wire format maps onto one model: client frames decode into [`Command`]s, and the
//! broker's frames are [`Frame`]s that each codec encodes. A connection is opened with its own
//! codec value ([`crate::Input::Open`]), which owns whatever per-connection state its format
//! needs (etp remembers the names of the events it will answer). The broker sees only commands
//! and frames: adding a wire format is one module implementing [`Codec`], with no change to the
//! broker.
//!
//! Decoding is a pure method (`&self`) that connection tasks call in parallel on their own copy
//! of the codec; encoding (`&mut self`) is the broker's, on the copy it was handed at `Open`.
//!
//! ```
//! use tidings_core::codec::{Codec, Frame, Wire};
//! use tidings_core::native::NativeCodec;
//!
//! let mut codec = NativeCodec;
//! assert_eq!(codec.format(), "native");
//! let Some(Wire::Frame(bytes)) = codec.encode(&Frame::Pong { req: 7 }) else { panic!() };
//! assert_eq!(&bytes[..], br#"{"type":"pong","id":7}"#);
//! ```

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::command::Command;
use crate::config::Limits;
use crate::error::ProtocolError;
pub use crate::frame::Frame;
use crate::output::Delivery;

/// A frame encoded for one connection's wire.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Wire {
    /// One complete frame (a WebSocket text message, or SSE text), shared between every
    /// recipient of the same message: never modify it.
    Frame(Bytes),
    /// The transport's own keep-alive (a WebSocket ping) for formats that have no keep-alive
    /// frame of their own (ksbus, etp).
    Ping,
    /// A typed delivery, for in-process subscribers that read values, not bytes.
    Item(Arc<Delivery>),
}

impl Wire {
    /// The bytes this counts against the connection's flow-control credit (the frame's length;
    /// the payload and topic of a typed item; nothing for a ping).
    pub fn len(&self) -> usize {
        match self {
            Self::Frame(bytes) => bytes.len(),
            Self::Ping => 0,
            Self::Item(item) => item.size(),
        }
    }

    /// Whether it counts nothing against the credit.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A wire format, as a value owned by one connection.
///
/// Contract:
/// - [`Codec::encode`] of a frame that several connections receive (`Event`, `Message`, `Gap`,
///   `Ping`) must not depend on per-connection state: the broker encodes such a frame once per
///   [`Codec::format`] and shares the result with every connection of that format.
/// - Nothing a peer sends may make [`Codec::decode`] panic (fuzzed).
pub trait Codec: Send {
    /// The name of the format (`native`, `sse`, `ksbus`, `etp`, ...): connections whose codecs
    /// have the same name share encodings, so two codecs that encode differently need two names.
    fn format(&self) -> &'static str;

    /// Whether the client can send commands. Streams that cannot (SSE, in-process
    /// subscriptions) get no idle timeout and no server requests.
    fn duplex(&self) -> bool {
        true
    }

    /// Decodes one client frame into the commands it asks for, appended to `out` (a frame that
    /// is not valid becomes a [`Command::Invalid`]).
    fn decode(&self, frame: &Bytes, limits: &Limits, out: &mut Vec<Command>);

    /// Encodes one broker frame, or `None` when the format has nothing for it.
    fn encode(&mut self, frame: &Frame<'_>) -> Option<Wire>;

    /// What a client is told when it sent a frame of `size` bytes, over the `limit` (in its
    /// protocol's words).
    fn frame_too_large(&self, size: usize, limit: usize) -> String {
        format!("frame is {size} bytes; at most {limit} are allowed")
    }

    /// Sees every command of the connection before the broker handles it (etp remembers the
    /// names of the events it will answer).
    fn observe(&mut self, cmd: &Command) {
        let _ = cmd;
    }

    /// Whether the protocol ignores this client error silently: the client gets no answer and
    /// the application no [`crate::AppEvent::ProtocolViolation`] (etp ignores answers to unknown
    /// requests).
    fn ignores(&self, error: &ProtocolError) -> bool {
        let _ = error;
        false
    }

    /// The WebSocket close code a server close for `reason` carries on this protocol (by
    /// default [`crate::ErrorCode::ws_close_code`]; ksbus closes with 1012 "service restart" at
    /// shutdown, so that its clients' auto-restart reconnects).
    fn ws_close_code(&self, reason: &ProtocolError) -> u16 {
        reason.code.ws_close_code()
    }

    /// A copy for another task: the codec with its configuration and none of its state (the
    /// connection task decodes with one copy, the broker encodes with the other).
    fn fresh(&self) -> Box<dyn Codec>;
}

impl fmt::Debug for dyn Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Codec({})", self.format())
    }
}
