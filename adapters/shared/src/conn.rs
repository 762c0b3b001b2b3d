//! What connection tasks and the driver exchange: a connection's [`Opening`], its messages to
//! the driver ([`FromConn`], handed over with [`hand`]), and what its writer receives ([`ToConn`]).
//!
//! Its own module so that both sides import it from below: the driver does not know the
//! connection tasks, and they do not reach into the driver for these types.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use tidings_core::codec::Codec;
use tidings_core::{Command, ConnId, Delivery, Grants, Name, ProtocolError};

use crate::mailbox::Outbox;

/// The answer to an application's ping: the round-trip time, or why there was none.
pub(crate) type PingReply = oneshot::Sender<Result<Duration, ProtocolError>>;

/// What a connection's writer receives.
#[derive(Debug)]
pub(crate) enum ToConn {
    /// Write this frame.
    Frame(Bytes),
    /// Send the transport's own keep-alive (a WebSocket ping with an empty payload).
    KeepAlive,
    /// Hand this typed delivery to an in-process subscription.
    Item(Arc<Delivery>),
    /// Write what came before, then close with this reason (`None`: a normal close, WebSocket
    /// 1000) and report `Closed`.
    Close(Option<ProtocolError>),
    /// Send a WebSocket ping (with the connection's next counter payload) and answer with the
    /// round-trip time when its pong arrives ([`crate::Hub::ping`]).
    Ping(PingReply),
}

/// What kind of connection an entry is (for metrics and for in-process subscriptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A WebSocket, of any of the WebSocket endpoints (`/ws`, `/ws/bus`, `/etp`).
    WebSocket,
    /// `/sse`.
    Sse,
    /// An in-process subscription of the application ([`crate::Hub::subscribe`]).
    Internal,
}

impl Kind {
    /// The kind of a connection with this codec: an SSE stream, an in-process subscription
    /// (typed values), or a WebSocket (every other format).
    pub(crate) fn of(codec: &dyn Codec) -> Self {
        match codec.format() {
            "sse" => Self::Sse,
            "typed" => Self::Internal,
            _ => Self::WebSocket,
        }
    }

    /// Its slot in the driver's per-kind connection counts.
    pub(crate) fn index(self) -> usize {
        match self {
            Self::WebSocket => 0,
            Self::Sse => 1,
            Self::Internal => 2,
        }
    }
}

/// A new connection, opened in one driver step with its first commands.
pub(crate) struct Opening {
    pub conn: ConnId,
    pub kind: Kind,
    /// Its wire format, handed to the broker.
    pub codec: Box<dyn Codec>,
    pub grants: Arc<Grants>,
    pub outbox: Outbox<ToConn>,
    /// Dropped by the driver to stop the connection task at once.
    pub kill: Option<oneshot::Sender<()>>,
    /// Rooms to join (from the connect hook).
    pub rooms: Vec<Name>,
    /// Commands handled right after `Open` (the SSE subscription, identify).
    pub commands: Vec<Command>,
}

/// From connection tasks, in order.
pub(crate) enum FromConn {
    Open(Box<Opening>),
    Command(ConnId, Command),
    /// The connection ended, and how.
    Closed(ConnId, Ended),
}

/// How a connection task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The client closed the WebSocket, with this close code (1005: a close frame without one).
    Peer(u16),
    /// The socket ended or failed without a close, or the task was stopped.
    Lost,
    /// Writing what was handed to it took longer than `http.write_timeout` (a client that does
    /// not read): dropped.
    WriteTimeout,
}

/// A message on its way to the driver ([`hand`]).
pub(crate) enum Handing<'a> {
    /// Sent (`true`), or the driver is gone (`false`).
    Done(bool),
    /// The channel was full: the send waits in a box of its own.
    Later(Pin<Box<flume::r#async::SendFut<'a, FromConn>>>),
}

impl Handing<'_> {
    /// Waits until the message is sent: `false` if the driver is gone.
    pub(crate) async fn sent(self) -> bool {
        match self {
            Self::Done(sent) => sent,
            Self::Later(send) => send.await.is_ok(),
        }
    }
}

/// Sends a connection's message to the driver: at once if the channel has room (nearly always),
/// else boxed. Awaiting `send_async` in place would make every connection task carry the send's
/// state, message included, for its whole life.
pub(crate) fn hand(to_driver: &flume::Sender<FromConn>, msg: FromConn) -> Handing<'_> {
    match to_driver.try_send(msg) {
        Ok(()) => Handing::Done(true),
        Err(flume::TrySendError::Disconnected(_)) => Handing::Done(false),
        Err(flume::TrySendError::Full(msg)) => Handing::Later(Box::pin(to_driver.send_async(msg))),
    }
}
