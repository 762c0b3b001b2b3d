//! The Rust client for [tidings](https://github.com/tidings-rs/tidings), on tokio.
//!
//! # The contract
//!
//! - **Nothing lost, nothing twice.** The client keeps the cursor of the last event (or gap
//!   notice) it received. When the connection drops, it reconnects (exponential back-off with
//!   jitter), claims its client id again, and restores every subscription with one resuming
//!   `subscribe` from that cursor. Every event published meanwhile to a matching topic and still
//!   retained by the server is delivered exactly once, in order, before the live ones.
//! - **Loss is a value, never silence.** If the server no longer retains something a
//!   subscription should have received (retention limits, a server restart: a new epoch), the
//!   subscription yields an [`Item::Gap`] before what follows it.
//! - **Every operation has exactly one outcome**: the server's answer, [`Error::Timeout`] after
//!   its deadline (time spent reconnecting counts), or [`Error::ConnectionLost`] when it was sent
//!   and the connection closed before the answer (it may or may not have taken effect; it is not
//!   resent). Operations asked for while disconnected wait for the next connection.
//! - **Observable**: [`Client::state`] is a `watch` channel of [`State`] (connecting, connected,
//!   reconnecting with the reason and delay, stopped with the reason); [`Client::cursor`] is the
//!   resume cursor.
//! - **Bounded**: each subscription buffers at most [`ClientBuilder::buffer`] items; when one is
//!   full the client stops reading from the server until there is room (the server then applies
//!   its slow-consumer policy, by default catching the client up later from its history). So
//!   poll every subscription you hold, or drop it (which unsubscribes). Waiting operations are
//!   bounded too ([`ClientConfig::max_pending`]).
//! - **Stops only for good reasons**: a refused handshake (HTTP 401/403 and other 4xx: a missing
//!   or invalid token), a `forbidden` close, another protocol version, or [`Client::close`].
//!   Then every subscription ends and [`Client::state`] says why. With a
//!   [`ClientBuilder::token_source`] (short-lived tokens, fetched for every connection) a `401`
//!   is retried with back-off instead: the next attempt gets a fresh token.
//!
//! The protocol logic is [`tidings_core::client::Client`], a sans-IO state machine using the
//! core's native codec; this crate is the tokio driver around it (socket, timer, channels).
//!
//! # Example
//!
//! ```
//! use futures_util::StreamExt as _;
//! use tidings_client::{Client, Item, json, text};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = tidings_tokio::serve(tidings_adapter::ServerConfig { listen: "127.0.0.1:0".into(), ..Default::default() }).await?;
//! # let url = format!("ws://{}/ws", server.addr());
//! // let url = "ws://127.0.0.1:9313/ws";
//! let client = Client::builder(&url).connect().await?;
//! let mut chat = client.subscribe(["chat.*"]).await?;
//! let cursor = client.publish("chat.lobby", json(&serde_json::json!({"text": "hi"}))?).await?;
//! client.publish_event("chat.lobby", "notice", text("welcome")).await?;
//! for _ in 0..2 {
//!     match chat.next().await {
//!         Some(Item::Event(e)) => println!("{} {} {}", e.topic, e.cursor, e.payload.as_str()),
//!         Some(Item::Gap(gap)) => println!("missed events up to {}", gap.to),
//!         Some(_) => {}
//!         None => break, // the client stopped; chat.end_reason() says why
//!     }
//! }
//! # assert!(client.cursor().unwrap() > cursor);
//! client.close().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod driver;
mod error;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::Stream;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

pub use error::Error;
pub use tidings_core::client::{
    Backoff, ClientConfig, EventFrame, Item, Message, Reason, ServerError, State,
};
pub use tidings_core::{Cursor, Gap, GapReason, Payload};

use driver::{Cmd, Driver, Handler, Handlers, Op, SubMsg};

/// The TLS library of `wss://` connections, for [`ClientBuilder::tls_config`].
#[cfg(feature = "tls")]
pub use rustls;
use tidings_core::client::{Answer, Client as Machine, SubId};
use tidings_core::{Name, NameLimits, Pattern, Recipient, Topic};

/// Items buffered per subscription (and per message stream) by default.
pub const DEFAULT_BUFFER: usize = 1024;

/// Commands waiting for the driver task.
const COMMANDS: usize = 1024;

/// A text payload (sent as a JSON string; subscribers over SSE see the text as is).
pub fn text(s: impl Into<String>) -> Payload {
    // A `String` is UTF-8, so this cannot fail; the fallback is never used.
    Payload::text(s.into()).unwrap_or_else(|_| Payload::empty())
}

/// A JSON payload (sent as the JSON value itself).
///
/// # Errors
/// [`Error::Invalid`] if `value` cannot be serialized.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Payload, Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Payload::json(bytes)?)
}

/// A JSON payload from JSON text, validated.
///
/// # Errors
/// [`Error::Invalid`] if `text` is not one JSON value.
pub fn raw_json(text: impl Into<String>) -> Result<Payload, Error> {
    Ok(Payload::json(text.into())?)
}

/// Produces the token for a connection attempt ([`ClientBuilder::token_source`]).
pub(crate) type TokenSource =
    Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Configures and starts a [`Client`].
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    token_source: Option<TokenSource>,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: Option<String>,
    config: ClientConfig,
    buffer: usize,
    connect_timeout: Duration,
}

impl ClientBuilder {
    fn tls_config_set(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }
}

/// rustls with the `ring` provider and the Mozilla roots of `webpki-roots`.
#[cfg(feature = "tls")]
fn default_tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("token_source", &self.token_source.is_some())
            .field("tls_config", &self.tls_config_set())
            .field("client_id", &self.client_id)
            .field("config", &self.config)
            .field("buffer", &self.buffer)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ClientBuilder {
    /// A client of the server at `url` (`ws://HOST:PORT/ws`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            token_source: None,
            #[cfg(feature = "tls")]
            tls: None,
            client_id: None,
            config: ClientConfig::default(),
            buffer: DEFAULT_BUFFER,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Authenticates with this JWT (sent as `Authorization: Bearer <token>` on every connection;
    /// see the server's `docs/AUTH.md`).
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Asks `source` for the token before every connection attempt, for tokens that expire: it
    /// returns a fresh one (from a cache, a refresh call to the identity provider, …), sent as
    /// `Authorization: Bearer <token>` like [`ClientBuilder::token`], which it replaces. A `401`
    /// refusal (the token expired or was revoked) is then retried with back-off rather than
    /// stopping the client, and `source` is asked again; an `Err` from it counts as a failed
    /// attempt (its message is the reason) and is retried too.
    ///
    /// ```
    /// # use tidings_client::Client;
    /// # async fn fetch_token() -> Result<String, String> { Ok("a.jwt.token".into()) }
    /// let builder = Client::builder("ws://127.0.0.1:9313/ws")
    ///     .token_source(|| async { fetch_token().await });
    /// ```
    #[must_use]
    pub fn token_source<F, Fut>(mut self, source: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_source = Some(Arc::new(move || Box::pin(source())));
        self
    }

    /// The TLS settings of `wss://` connections (feature `tls`, on by default): your own root
    /// certificates (a private CA), client certificates, protocol versions. Without it the
    /// client trusts the Mozilla roots of `webpki-roots`, with rustls' defaults (TLS 1.2 and
    /// 1.3, the `ring` provider).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Claims this client id on every connection (`identify`), so others can send to it.
    #[must_use]
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Resumes from this cursor: the first subscriptions replay the retained events after it
    /// (or start with a gap notice if they are gone).
    #[must_use]
    pub fn resume_from(mut self, cursor: Cursor) -> Self {
        self.config.resume_from = Some(cursor);
        self
    }

    /// Reconnection delays (default: the server's suggested delay, doubling up to 30 s, with
    /// up to half taken off at random).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// How long operations wait for their answer, reconnections included (default 30 s).
    #[must_use]
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.config.op_timeout = timeout;
        self
    }

    /// The default deadline of [`Client::request`] (default: the server's request timeout plus
    /// 2 s, so its own `timeout` answer normally comes first).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = Some(timeout);
        self
    }

    /// How long opening a connection (TCP and WebSocket handshake) may take (default 10 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Items buffered per subscription before the client stops reading (default
    /// [`DEFAULT_BUFFER`]; at least 1).
    #[must_use]
    pub fn buffer(mut self, items: usize) -> Self {
        self.buffer = items.max(1);
        self
    }

    /// Every other setting of the protocol machine. Set it before the other builder methods,
    /// which change fields of it.
    #[must_use]
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the client and waits for its first connection.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] or [`Error::Invalid`] for bad settings; [`Error::Connect`] with the
    /// reason if the first connection fails (the client then stops: use
    /// [`ClientBuilder::start`] to keep retrying).
    ///
    /// # Panics
    /// Outside of a tokio runtime.
    pub async fn connect(self) -> Result<Client, Error> {
        let client = self.start()?;
        let mut state = client.state();
        let outcome = state
            .wait_for(|s| !matches!(s, State::Connecting { .. }))
            .await
            .map(|s| s.clone());
        match outcome {
            Ok(State::Connected { .. }) => Ok(client),
            Ok(
                State::Reconnecting { reason, .. }
                | State::Stopped {
                    reason: Some(reason),
                },
            ) => {
                client.close().await;
                Err(Error::Connect(reason))
            }
            _ => Err(Error::Stopped(None)),
        }
    }

    /// Starts the client without waiting: it connects, and reconnects, in the background.
    /// Operations wait for a connection (within their deadline).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] or [`Error::Invalid`] for bad settings.
    ///
    /// # Panics
    /// Outside of a tokio runtime.
    pub fn start(self) -> Result<Client, Error> {
        let request = driver::handshake(&self.url, self.token.as_deref())?;
        let mut config = self.config;
        config.refreshable_token = self.token_source.is_some();
        if let Some(id) = &self.client_id {
            config.client_id = Some(Name::parse("client_id", id, 128)?);
        }
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        let machine = Machine::new(config, seed, Instant::now());
        let (commands_tx, commands) = mpsc::channel(COMMANDS);
        let (state_tx, state) = watch::channel(machine.state().clone());
        let (cursor_tx, cursor) = watch::channel(machine.cursor());
        let handlers: Handlers = Arc::new(Mutex::new(HashMap::new()));
        let driver = Driver {
            machine,
            request,
            token_source: self.token_source,
            #[cfg(feature = "tls")]
            tls: tokio_rustls::TlsConnector::from(match self.tls {
                Some(config) => config,
                None => default_tls_config()?,
            }),
            connect_timeout: self.connect_timeout,
            commands,
            myself: commands_tx.downgrade(),
            state: state_tx,
            cursor: cursor_tx,
            handlers: handlers.clone(),
        };
        tokio::spawn(driver.run());
        Ok(Client {
            inner: Arc::new(Inner {
                commands: commands_tx,
                state,
                cursor,
                handlers,
                buffer: self.buffer,
            }),
        })
    }
}

struct Inner {
    commands: mpsc::Sender<Cmd>,
    state: watch::Receiver<State>,
    cursor: watch::Receiver<Option<Cursor>>,
    handlers: Handlers,
    buffer: usize,
}

/// A handle to a running client. Cheap to clone; the client stops when every handle and every
/// [`Subscription`] is dropped, or at [`Client::close`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.inner.state.borrow())
            .field("cursor", &*self.inner.cursor.borrow())
            .finish_non_exhaustive()
    }
}

/// What to subscribe to: patterns, an optional name (named routing) and cursor.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    patterns: Vec<String>,
    name: Option<String>,
    from: Option<Cursor>,
}

impl SubscribeOptions {
    /// These patterns (`*` one segment, `>` the rest).
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            patterns: patterns.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A subscription name: `send_named(topic, name, ..)` reaches it.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Replay the retained events after this cursor first.
    #[must_use]
    pub fn from(mut self, cursor: Cursor) -> Self {
        self.from = Some(cursor);
        self
    }
}

fn parse_topic(topic: &str) -> Result<Topic, Error> {
    Ok(Topic::parse(topic, NameLimits::default())?)
}

fn parse_name(what: &str, name: &str) -> Result<Name, Error> {
    Ok(Name::parse(what, name, 128)?)
}

impl Client {
    /// Configures a client of the server at `url` (`ws://HOST:PORT/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// Connects to `url` with the default settings; see [`ClientBuilder::connect`].
    ///
    /// # Errors
    /// As [`ClientBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        ClientBuilder::new(url).connect().await
    }

    /// The connection state, as a `watch` channel: `borrow()` it, or `changed().await`.
    pub fn state(&self) -> watch::Receiver<State> {
        self.inner.state.clone()
    }

    /// The resume cursor: where the client's stream is, what a reconnection resumes from
    /// (`None` before any subscription). It is never behind an item a subscription has
    /// yielded, but may be ahead of items still buffered in a subscription; to persist a
    /// position for a later run, keep the cursor of the last item you processed instead.
    pub fn cursor(&self) -> Option<Cursor> {
        *self.inner.cursor.borrow()
    }

    async fn command(&self, cmd: Cmd) -> Result<(), Error> {
        self.inner
            .commands
            .send(cmd)
            .await
            .map_err(|_| Error::Stopped(None))
    }

    async fn op(&self, op: Op) -> Result<Answer, Error> {
        let (tx, rx) = oneshot::channel();
        self.command(Cmd::Op(op, tx)).await?;
        rx.await.map_err(|_| Error::Stopped(None))?
    }

    /// Subscribes to `patterns` (wildcards allowed) and waits for the server to confirm.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an invalid pattern; [`Error::Server`] if the server refuses
    /// (`forbidden`, `limit_reached`); [`Error::Timeout`]; [`Error::Stopped`].
    pub async fn subscribe<I, S>(&self, patterns: I) -> Result<Subscription, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subscribe_with(SubscribeOptions::new(patterns)).await
    }

    /// Subscribes with a name and/or a cursor to replay from.
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_with(&self, options: SubscribeOptions) -> Result<Subscription, Error> {
        let patterns = options
            .patterns
            .iter()
            .map(|p| Ok(Pattern::parse(p, NameLimits::default())?))
            .collect::<Result<Vec<_>, Error>>()?;
        let name = options
            .name
            .as_deref()
            .map(|n| parse_name("name", n))
            .transpose()?;
        let (items, rx) = mpsc::channel(self.inner.buffer);
        let (done, answer) = oneshot::channel();
        self.command(Cmd::Subscribe {
            patterns,
            name,
            from: options.from,
            items,
            done,
        })
        .await?;
        let id = answer.await.map_err(|_| Error::Stopped(None))??;
        Ok(Subscription {
            id,
            items: rx,
            commands: self.inner.commands.clone(),
            ended: None,
        })
    }

    /// Subscribes and hands every item to `handler`, on a task of its own, until the
    /// subscription ends (the task then ends too; abort it to unsubscribe).
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub async fn subscribe_handler<I, S, F>(
        &self,
        patterns: I,
        mut handler: F,
    ) -> Result<tokio::task::JoinHandle<Option<Error>>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        F: FnMut(Item) + Send + 'static,
    {
        let mut sub = self.subscribe(patterns).await?;
        Ok(tokio::spawn(async move {
            while let Some(item) = futures_util::StreamExt::next(&mut sub).await {
                handler(item);
            }
            sub.end_reason().cloned()
        }))
    }

    /// Publishes `payload` to `topic`; returns the event's cursor.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an invalid topic; [`Error::Server`] (e.g. `forbidden`);
    /// [`Error::Timeout`]; [`Error::ConnectionLost`]; [`Error::Stopped`].
    pub async fn publish(&self, topic: &str, payload: Payload) -> Result<Cursor, Error> {
        self.publish_op(topic, None, payload).await
    }

    /// Publishes `payload` to `topic` with an event name.
    ///
    /// # Errors
    /// As [`Client::publish`]; an event name starting with `tidings-` is refused (reserved).
    pub async fn publish_event(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<Cursor, Error> {
        self.publish_op(topic, Some(event), payload).await
    }

    async fn publish_op(
        &self,
        topic: &str,
        event: Option<&str>,
        payload: Payload,
    ) -> Result<Cursor, Error> {
        let op = Op::Publish {
            topic: parse_topic(topic)?,
            event: event.map(event_name).transpose()?,
            payload,
        };
        self.op(op)
            .await?
            .cursor
            .ok_or_else(|| Error::Invalid("the server's answer has no cursor".into()))
    }

    /// Sends a message that is not retained to the connection holding `client_id`.
    ///
    /// # Errors
    /// [`Error::Server`] with `no_recipient` if nobody holds it, `forbidden` without the
    /// `direct` permission; as [`Client::publish`] otherwise.
    pub async fn send_to(
        &self,
        client_id: &str,
        event: Option<&str>,
        payload: Payload,
    ) -> Result<(), Error> {
        let to = Recipient::Client(parse_name("client id", client_id)?);
        self.send_op(to, event, payload).await
    }

    /// Sends a message that is not retained to every subscription named `name` whose pattern
    /// matches `topic` (named routing).
    ///
    /// # Errors
    /// As [`Client::send_to`].
    pub async fn send_named(
        &self,
        topic: &str,
        name: &str,
        event: Option<&str>,
        payload: Payload,
    ) -> Result<(), Error> {
        let to = Recipient::Named {
            topic: parse_topic(topic)?,
            name: parse_name("name", name)?,
        };
        self.send_op(to, event, payload).await
    }

    async fn send_op(
        &self,
        to: Recipient,
        event: Option<&str>,
        payload: Payload,
    ) -> Result<(), Error> {
        let op = Op::Send {
            to,
            event: event.map(event_name).transpose()?,
            payload,
        };
        self.op(op).await.map(|_| ())
    }

    /// Asks the application's handler `event` and waits for its answer (default deadline:
    /// [`ClientBuilder::request_timeout`]).
    ///
    /// # Errors
    /// [`Error::Server`] with the application's error (`no_handler`, `rejected`, the server's
    /// `timeout`, …); [`Error::Timeout`]; [`Error::ConnectionLost`]; [`Error::Stopped`].
    pub async fn request(&self, event: &str, payload: Payload) -> Result<Payload, Error> {
        self.request_op(event, payload, None).await
    }

    /// [`Client::request`] with its own deadline.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn request_timeout(
        &self,
        event: &str,
        payload: Payload,
        timeout: Duration,
    ) -> Result<Payload, Error> {
        self.request_op(event, payload, Some(timeout)).await
    }

    async fn request_op(
        &self,
        event: &str,
        payload: Payload,
        timeout: Option<Duration>,
    ) -> Result<Payload, Error> {
        let op = Op::Request {
            event: parse_name("event", event)?,
            payload,
            timeout,
        };
        Ok(self
            .op(op)
            .await?
            .payload
            .unwrap_or_else(|| Payload::json(&b"null"[..]).unwrap_or_else(|_| Payload::empty())))
    }

    /// Claims `client_id`, now and after every reconnection.
    ///
    /// # Errors
    /// [`Error::Server`] with `forbidden` or `client_id_taken`; as [`Client::publish`].
    pub async fn identify(&self, client_id: &str) -> Result<(), Error> {
        let id = parse_name("client id", client_id)?;
        self.op(Op::Identify(id)).await.map(|_| ())
    }

    /// Who is subscribed to `topic` now: connections, client ids with their connections,
    /// anonymous connections (every node's, in a cluster).
    ///
    /// # Errors
    /// [`Error::Server`] with `forbidden` (no right to subscribe to it) or `invalid_topic`; as
    /// [`Client::publish`].
    pub async fn presence(&self, topic: &str) -> Result<tidings_core::presence::Presence, Error> {
        let topic = parse_topic(topic)?;
        let answer = self.op(Op::Presence(topic)).await?;
        let json = answer
            .payload
            .map(|p| p.bytes().clone())
            .unwrap_or_default();
        // The server's answer is not what PROTOCOL.md says: reported as its fault.
        serde_json::from_slice(&json).map_err(|e| {
            Error::Server(ServerError::new(
                "bad_frame",
                format!("the server's presence answer does not decode: {e}"),
            ))
        })
    }

    /// Watches the presence of `topic`: answers the presence now (every node's, in a cluster)
    /// in a [`PresenceWatch`] that then yields a [`PresenceUpdate::Notice`] for every join and
    /// leave, one per connection (`docs/PROTOCOL.md` §6.7b). The watch lasts across
    /// reconnections: asked again on each new connection, it yields
    /// [`PresenceUpdate::Resync`] with the presence the later notices continue from (changes
    /// while disconnected are not replayed). Dropping the watch stops it.
    ///
    /// # Errors
    /// [`Error::Server`] with `forbidden` (no right to subscribe to it), `limit_reached` or
    /// `invalid_topic`; as [`Client::publish`].
    pub async fn watch_presence(&self, topic: &str) -> Result<PresenceWatch, Error> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let topic = parse_topic(topic)?;
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Registered before the watch is asked: no notice after the answer is missed.
        let (items, rx) = mpsc::channel(256);
        let watch = Cmd::Watch {
            topic: topic.clone(),
            id,
            items,
        };
        self.command(watch).await?;
        let mut handle = PresenceWatch {
            topic: topic.clone(),
            id,
            items: rx,
            commands: self.inner.commands.clone(),
            presence: tidings_core::presence::Presence::default(),
        };
        let answer = self.op(Op::WatchPresence(topic, true)).await?;
        let json = answer
            .payload
            .map(|p| p.bytes().clone())
            .unwrap_or_default();
        handle.presence = serde_json::from_slice(&json).map_err(|e| {
            Error::Server(ServerError::new(
                "bad_frame",
                format!("the server's presence answer does not decode: {e}"),
            ))
        })?;
        Ok(handle)
    }

    /// Checks that the server answers.
    ///
    /// # Errors
    /// [`Error::Timeout`]; [`Error::ConnectionLost`]; [`Error::Stopped`].
    pub async fn ping(&self) -> Result<(), Error> {
        self.op(Op::Ping).await.map(|_| ())
    }

    /// Answers the application's requests named `event` (emit-with-ack) with `handler`, which
    /// runs on a task of its own per request: `Ok` with the answer, `Err` with a message (the
    /// application gets `rejected`). Requests without a handler are answered with an error at
    /// once.
    pub fn on_request<F, Fut>(&self, event: &str, handler: F)
    where
        F: Fn(Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload, String>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |payload| Box::pin(handler(payload)));
        if let Ok(mut handlers) = self.inner.handlers.lock() {
            handlers.insert(event.to_owned(), handler);
        }
    }

    /// A stream of the direct and room messages this client receives from now on (messages to
    /// a subscription name go to that subscription).
    ///
    /// # Errors
    /// [`Error::Stopped`].
    pub async fn messages(&self) -> Result<Messages, Error> {
        let (tx, rx) = mpsc::channel(self.inner.buffer);
        self.command(Cmd::Messages(tx)).await?;
        Ok(Messages { rx })
    }

    /// Stops the client: closes the connection, ends every subscription, fails every waiting
    /// operation. Returns when the connection is closed.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.command(Cmd::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn event_name(event: &str) -> Result<Name, Error> {
    Ok(tidings_core::native::event_name(event, 128)?)
}

/// A subscription: a [`Stream`] of [`Item`]s (events, gap notices, named messages). It ends
/// when the client stops or the server refuses to restore it; [`Subscription::end_reason`]
/// then says why. Dropping it unsubscribes.
pub struct Subscription {
    id: SubId,
    items: mpsc::Receiver<SubMsg>,
    commands: mpsc::Sender<Cmd>,
    ended: Option<Error>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id.0)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Why the stream ended, once it has.
    pub fn end_reason(&self) -> Option<&Error> {
        self.ended.as_ref()
    }

    /// Waits for the next item (the same as `StreamExt::next`).
    pub async fn recv(&mut self) -> Option<Item> {
        futures_util::StreamExt::next(self).await
    }
}

impl Stream for Subscription {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.ended.is_some() {
            return Poll::Ready(None);
        }
        match self.items.poll_recv(cx) {
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(item)),
            Poll::Ready(Some(Err(e))) => {
                self.ended = Some(e);
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = Some(Error::Stopped(None));
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // If the queue is full, the driver notices the closed channel at the next delivery.
        let _ = self.commands.try_send(Cmd::Unsubscribe(self.id));
    }
}

/// What a [`PresenceWatch`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceUpdate {
    /// A connection joined or left the topic.
    Notice(tidings_core::presence::PresenceNotice),
    /// The watch was asked again on a new connection: the presence now, which later notices
    /// continue from.
    Resync(tidings_core::presence::Presence),
}

/// A watch of a topic's presence; see [`Client::watch_presence`]. Dropping it stops the watch.
pub struct PresenceWatch {
    topic: Topic,
    id: u64,
    items: mpsc::Receiver<PresenceUpdate>,
    commands: mpsc::Sender<Cmd>,
    presence: tidings_core::presence::Presence,
}

impl fmt::Debug for PresenceWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceWatch")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl PresenceWatch {
    /// The presence the watch started from (the server's answer).
    pub fn presence(&self) -> &tidings_core::presence::Presence {
        &self.presence
    }

    /// Waits for the next update; `None` once the client stopped or the watch ended.
    pub async fn recv(&mut self) -> Option<PresenceUpdate> {
        self.items.recv().await
    }
}

impl Stream for PresenceWatch {
    type Item = PresenceUpdate;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceUpdate>> {
        self.items.poll_recv(cx)
    }
}

impl Drop for PresenceWatch {
    fn drop(&mut self) {
        let _ = self.commands.try_send(Cmd::Unwatch {
            topic: self.topic.clone(),
            id: self.id,
        });
    }
}

/// A stream of direct and room messages; see [`Client::messages`].
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Message>,
}

impl Stream for Messages {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}
