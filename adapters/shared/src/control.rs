//! What the control channel to the driver carries: writers' credit, in-process subscriptions and
//! embedded SSE bodies, and the application's operations with who waits for their answer.
//! Its own module, below the driver and everything that sends to it.

use futures_channel::oneshot;
use tidings_core::{AppOp, AppReply, ConnId, Payload, ProtocolError};

use crate::conn::{Ended, Opening, PingReply};
use crate::metrics::ServerStats;

/// What the control channel carries.
pub(crate) enum Control {
    /// A writer wrote this many bytes of the connection's frames (flow-control credit).
    Flushed(ConnId, usize),
    /// An in-process subscription or an embedded SSE body opens (all their messages use this
    /// channel, so that `Closed` never overtakes `Open`).
    Open(Box<Opening>),
    /// An in-process subscription or SSE body ended, and how.
    Closed(ConnId, Ended),
    /// An operation of the application, answered as `Answer` says.
    App(AppOp, Answer),
    /// A WebSocket ping of the application ([`crate::Hub::ping`]), answered with the round trip.
    Ping(ConnId, PingReply),
    /// The counters for `/metrics`.
    Stats(oneshot::Sender<ServerStats>),
    /// Makes the driver panic, as a bug would (tests of [`crate::Hub::failed`]).
    #[cfg(test)]
    Panic,
}

/// Who waits for what an [`AppOp`] brings.
pub(crate) enum Answer {
    /// Its reply.
    Reply(oneshot::Sender<AppReply>),
    /// The client's answer to the server request it makes ([`AppOp::Request`]), when it comes.
    Ack(oneshot::Sender<Result<Payload, ProtocolError>>),
    /// The end of the shutdown it starts ([`AppOp::Shutdown`]).
    Stopped(oneshot::Sender<()>),
    /// Nobody: a setting, or a handler's result (counted for `/metrics`).
    Nobody,
}
