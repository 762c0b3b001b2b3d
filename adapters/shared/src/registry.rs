//! What the application registers on a [`Hub`](crate::Hub): request handlers and hooks, kept in
//! one [`Registry`] that the hub writes and the driver reads (hooks that run on the driver), and
//! why a connection ended ([`Disconnect`], which the driver tracks for the disconnect hook).
//!
//! Its own module, below both, so that the driver does not import the hub.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tidings_core::{ConnId, Lifecycle, Name, Payload, ProtocolError};

use crate::auth::{AuthError, Authenticated};
use crate::http::Refusal;
use crate::request::RequestHead;

/// A handler for client requests: the connection asking and the request's data.
pub type Handler = Arc<
    dyn Fn(ConnId, Payload) -> BoxFuture<'static, Result<Payload, ProtocolError>> + Send + Sync,
>;

/// The connect hook; returns the rooms to put the connection in.
pub type ConnectHook = Arc<dyn Fn(&Connecting<'_>) -> Vec<Name> + Send + Sync>;

/// The disconnect hook.
pub type DisconnectHook = Arc<dyn Fn(ConnId) + Send + Sync>;

/// The disconnect hook that also gets why the connection ended (see
/// [`Hub::on_disconnect_reason`](crate::Hub::on_disconnect_reason)).
pub type DisconnectReasonHook = Arc<dyn Fn(ConnId, &Disconnect) + Send + Sync>;

/// Why a connection ended (see [`Hub::on_disconnect_reason`](crate::Hub::on_disconnect_reason)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// The server closed it normally ([`Hub::close_normal`](crate::Hub::close_normal)):
    /// WebSocket close 1000.
    Normal,
    /// The server closed it with this reason ([`Hub::close`](crate::Hub::close), shutdown,
    /// idle, slow consumer, a fatal client error such as a frame over the limit); WebSocket
    /// clients got [`tidings_core::ErrorCode::ws_close_code`].
    Server(ProtocolError),
    /// The client closed it first, with this WebSocket close code (`None`: a close frame
    /// without a code).
    Client(Option<u16>),
    /// Writing to it took longer than `http.write_timeout` (a client that does not read): it
    /// was dropped without a close frame.
    WriteTimeout,
    /// The connection was lost: the socket ended without a close frame, a network error, an SSE
    /// stream or in-process subscription that ended, or it was dropped (a full outbox).
    Lost,
}

impl Disconnect {
    /// The WebSocket close code of the close, if there was one.
    pub fn ws_close_code(&self) -> Option<u16> {
        match self {
            Self::Normal => Some(1000),
            Self::Server(reason) => Some(reason.code.ws_close_code()),
            Self::Client(code) => *code,
            Self::Lost | Self::WriteTimeout => None,
        }
    }

    /// Whether it was a normal close (WebSocket close 1000, from either side; etp's
    /// `IsNormalClose`).
    pub fn is_normal(&self) -> bool {
        self.ws_close_code() == Some(1000)
    }
}

/// The lifecycle hook (see [`Hub::on_lifecycle`](crate::Hub::on_lifecycle)).
pub type LifecycleHook = Arc<dyn Fn(&Lifecycle) + Send + Sync>;

/// The error hook: a client sent something invalid (etp's `OnError`).
pub type ErrorHook = Arc<dyn Fn(ConnId, &ProtocolError) + Send + Sync>;

/// The refusal hook (see [`Hub::on_refused`](crate::Hub::on_refused)): a WebSocket upgrade
/// request that was answered with an HTTP error instead of `101`, so there is no connection
/// (etp's `OnError(nil, err)`).
pub type RefusedHook = Arc<dyn Fn(&RequestHead, &Refusal) + Send + Sync>;

/// The handler of events no [`Hub::on`](crate::Hub::on) handler is registered for (etp's
/// `OnUnknownEvent`): the connection, the event name and the data.
pub type UnknownHandler = Arc<
    dyn Fn(ConnId, Name, Payload) -> BoxFuture<'static, Result<Payload, ProtocolError>>
        + Send
        + Sync,
>;

/// The application's authorizer: sees every `/ws`, `/sse` and `/publish` request with what token
/// authentication (or anonymous access) granted, and returns the grants to use (narrowed,
/// widened, or a client id set) or a refusal (401/403).
pub type Authorizer =
    Arc<dyn Fn(&RequestHead, Authenticated) -> Result<Authenticated, AuthError> + Send + Sync>;

/// What the connect hook knows about a new connection.
#[derive(Debug)]
#[non_exhaustive]
pub struct Connecting<'a> {
    /// Its id (never reused).
    pub conn: ConnId,
    /// Its wire format ([`tidings_core::codec::Codec::format`]): `native` (`/ws`), `sse`,
    /// `ksbus` (`/ws/bus`), `etp` or `etp-js` (`/etp`).
    pub format: &'static str,
    /// The HTTP request that opened it.
    pub head: &'a RequestHead,
    /// The client id authentication gave it, if any.
    pub client_id: Option<&'a Name>,
}

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) handlers: HashMap<String, Handler>,
    pub(crate) on_connect: Option<ConnectHook>,
    pub(crate) on_disconnect: Option<DisconnectHook>,
    pub(crate) on_disconnect_reason: Option<DisconnectReasonHook>,
    pub(crate) on_lifecycle: Option<LifecycleHook>,
    pub(crate) authorizer: Option<Authorizer>,
    pub(crate) on_error: Option<ErrorHook>,
    pub(crate) on_refused: Option<RefusedHook>,
    pub(crate) on_unknown: Option<UnknownHandler>,
}

impl Registry {
    /// The handler for `event`: the registered one, else the unknown-event handler.
    pub(crate) fn handler(&self, event: &Name) -> Option<Handler> {
        if let Some(h) = self.handlers.get(event.as_str()) {
            return Some(h.clone());
        }
        let fallback = self.on_unknown.clone()?;
        let event = event.clone();
        Some(Arc::new(move |conn, payload| {
            fallback(conn, event.clone(), payload)
        }))
    }
}
