//! The client side of the native protocol: a sans-IO client state machine ([`Client`]) and the
//! client half of the native codec ([`decode_server_frame`], [`encode_command`]).
//!
//! [`Client`] is what a tidings client does, without any I/O: it decides when to (re)connect and
//! how long to back off (exponential, with jitter from a seed it is given), keeps the resume
//! cursor (`docs/PROTOCOL.md` §9.1, §9.2), restores the client id and every subscription on each
//! new connection with one resuming `subscribe` per subscription name (§9.3), matches events to
//! subscriptions, answers keep-alives, notices a dead server, and gives every operation exactly
//! one outcome (the server's answer, a timeout, or the loss of the connection it was sent on).
//! A runtime driver (such as the `tidings-client` crate on tokio) owns the socket and the timer.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use tidings_core::client::{Client, ClientConfig, Event, Item};
//! use tidings_core::{NameLimits, Pattern};
//!
//! let now = Instant::now(); // the driver reads the clock, never the core (clock: test-only)
//! let mut client = Client::new(ClientConfig::default(), 42, now);
//! // The machine asks for a connection; the driver opens a WebSocket and reports it.
//! assert!(matches!(client.poll_event(), Some(Event::Connect { .. })));
//! client.handle_connected(now);
//! client.handle_frame(now, &Bytes::from_static(br#"{"type":"welcome","protocol":1,"conn":7,"cursor":"ab-41","keepalive_ms":15000}"#));
//! let (_sub, _op) = client.subscribe(now, vec![Pattern::parse("chat.*", NameLimits::default())?], None, None)?;
//! // Frames to write on the socket:
//! let frame = client.poll_transmit().unwrap();
//! assert_eq!(&frame[..], br#"{"op":"subscribe","id":1,"topic":"chat.*"}"#);
//! client.handle_frame(now, &Bytes::from_static(br#"{"type":"ok","id":1,"cursor":"ab-41"}"#));
//! client.handle_frame(now, &Bytes::from_static(br#"{"type":"event","topic":"chat.lobby","cursor":"ab-42","data":"hi"}"#));
//! let mut delivered = Vec::new();
//! while let Some(event) = client.poll_event() {
//!     if let Event::Deliver { item: Item::Event(e), .. } = event {
//!         delivered.push(e.payload.as_str().to_owned());
//!     }
//! }
//! assert_eq!(delivered, ["hi"]);
//! assert_eq!(client.cursor().unwrap().to_string(), "ab-42");
//! // Arm one timer for the next deadline (keep-alive checks, timeouts, reconnection).
//! assert!(client.poll_timeout().unwrap() > now);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The loop a driver runs: after every `handle_*` call and API call, write every
//! [`Client::poll_transmit`] frame to the socket and act on every [`Client::poll_event`]; then arm
//! a timer for [`Client::poll_timeout`] and call [`Client::handle_timeout`] when it fires. On
//! [`Event::Connect`] open a connection and report [`Client::handle_connected`] (or
//! [`Client::handle_disconnected`] if it failed); on [`Event::Close`] close it and report
//! [`Client::handle_disconnected`].

mod backoff;
mod wire;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use backoff::{Backoff, Rng};
pub use wire::{
    EventFrame, Message, ServerError, ServerFrame, Welcome, decode_server_frame, encode_command,
    encode_pong,
};

use crate::command::{Claim, Command, Recipient, Subscribe};
use crate::cursor::Cursor;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{AckId, ReqId};
use crate::native::PROTOCOL_VERSION;
use crate::output::Gap;
use crate::payload::Payload;
use crate::topic::{Name, Pattern, Topic};

/// How the client behaves. Every queue it keeps is bounded by a field here.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Reconnection delays.
    pub backoff: Backoff,
    /// The client id to claim (`identify`) on every connection, if any.
    pub client_id: Option<Name>,
    /// Resume from this cursor: the first subscriptions replay the retained events after it.
    pub resume_from: Option<Cursor>,
    /// How long an operation (subscribe, publish, send, identify, ping) may wait for its answer,
    /// including time spent waiting for a connection.
    pub op_timeout: Duration,
    /// The default deadline of a `request`. `None`: the server's `request_timeout` (from its
    /// `welcome`) plus 2 s, so that the server's own `timeout` answer normally arrives first;
    /// [`ClientConfig::op_timeout`] before any server was reached.
    pub request_timeout: Option<Duration>,
    /// How long to wait for the `welcome` frame after the transport opened.
    pub welcome_timeout: Duration,
    /// A connection that lasted this long was healthy: the back-off starts again from its first
    /// delay when it drops. Shorter ones count as failures, so a flapping server is backed off.
    pub healthy_after: Duration,
    /// Operations (of any kind) awaiting an answer or a connection at once.
    pub max_pending: usize,
    /// Subscriptions ([`SubId`]s) at once.
    pub max_subscriptions: usize,
    /// Server requests awaiting the application's reply at once (more are refused at once).
    pub max_server_requests: usize,
    /// The credentials are fetched anew for every connection (a token source that refreshes
    /// short-lived tokens): a `401` refusal (an expired or revoked token) is then retried with
    /// back-off, like a transport failure, instead of stopping the client.
    pub refreshable_token: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            client_id: None,
            resume_from: None,
            op_timeout: Duration::from_secs(30),
            request_timeout: None,
            welcome_timeout: Duration::from_secs(10),
            healthy_after: Duration::from_secs(10),
            max_pending: 1024,
            max_subscriptions: 4096,
            max_server_requests: 256,
            refreshable_token: false,
        }
    }
}

/// An operation's id: the request id of its frame, unique for the client's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

/// A subscription's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubId(pub u64);

/// A server request to answer with [`Client::reply`]. It belongs to one connection: after a
/// reconnection it can no longer be answered (the server has already told the application the
/// client is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerRequestId {
    generation: u64,
    /// The server's id for the request.
    pub id: AckId,
}

/// What a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Item {
    /// A published event matching one of the subscription's patterns.
    Event(EventFrame),
    /// Events may be missing between `from` and `to` (any of the connection's topics); delivery
    /// is exact again after `to`. See `docs/PROTOCOL.md` §10.3.
    Gap(Gap),
    /// A message sent to the subscription's name (named routing).
    Message(Message),
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The transport failed or could not be opened (the I/O error).
    Transport(String),
    /// The server refused the WebSocket handshake with this HTTP status (e.g. 401 without a
    /// valid token) and message.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The response body, or the status's reason phrase when no body came with the head
        /// (the WebSocket library keeps only the bytes read with it).
        message: String,
    },
    /// The server closed the connection and said why (its last error frame).
    Server(ServerError),
    /// The connection closed without a reason.
    Closed,
    /// Nothing was heard from the server for twice its keep-alive interval, or it did not answer
    /// an operation of the client's own in time.
    Unresponsive,
    /// The server sent no `welcome` within [`ClientConfig::welcome_timeout`].
    NoWelcome,
    /// The server speaks another protocol version.
    Protocol(String),
}

impl Reason {
    /// Whether reconnecting cannot help: the server refused the credentials or the permissions
    /// (HTTP 4xx other than 408 and 429, or a `forbidden` close), or speaks another protocol.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Refused { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            Self::Server(e) => e.is(ErrorCode::Forbidden),
            Self::Protocol(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "connection failed: {e}"),
            Self::Refused { status, message } => {
                write!(f, "the server refused the connection ({status}): {message}")
            }
            Self::Server(e) => write!(f, "the server closed the connection: {e}"),
            Self::Closed => f.write_str("the connection closed"),
            Self::Unresponsive => f.write_str("the server stopped answering"),
            Self::NoWelcome => f.write_str("the server sent no welcome"),
            Self::Protocol(e) => write!(f, "protocol mismatch: {e}"),
        }
    }
}

/// The connection state, as [`Event::State`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Opening a connection (attempt 0 is the first since the last healthy connection).
    Connecting {
        /// Consecutive failed attempts before this one.
        attempt: u32,
    },
    /// Connected: the `welcome` arrived; the client id and subscriptions are being restored.
    Connected {
        /// The server's id for the connection (for logs).
        conn: u64,
    },
    /// Disconnected; the next attempt comes after `delay`.
    Reconnecting {
        /// Consecutive failed attempts.
        attempt: u32,
        /// How long until the next attempt.
        delay: Duration,
        /// Why the last connection ended.
        reason: Reason,
    },
    /// Stopped for good: closed by the application (`reason` is `None`) or by a fatal reason.
    Stopped {
        /// The fatal reason, if any.
        reason: Option<Reason>,
    },
}

/// The successful answer to an operation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Answer {
    /// `publish`: the event's cursor; `subscribe`: the hub position.
    pub cursor: Option<Cursor>,
    /// `request`: the application's answer.
    pub payload: Option<Payload>,
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpError {
    /// The server refused it (e.g. `forbidden`, `no_recipient`, or the application's answer to
    /// a request, including the server's own `timeout`).
    Server(ServerError),
    /// No answer came within the operation's deadline.
    Timeout,
    /// It was sent, but the connection closed before the answer came: it may or may not have
    /// taken effect.
    ConnectionLost,
    /// The client stopped (closed, or a fatal reason) before it could be sent or answered.
    Stopped,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server(e) => e.fmt(f),
            Self::Timeout => f.write_str("no answer in time"),
            Self::ConnectionLost => f.write_str(
                "the connection closed before the answer came (it may have taken effect)",
            ),
            Self::Stopped => f.write_str("the client has stopped"),
        }
    }
}

impl std::error::Error for OpError {}

/// An API call the client refused at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Too many operations are waiting.
    #[error("{limit} operations are already waiting for an answer")]
    TooManyPending {
        /// [`ClientConfig::max_pending`].
        limit: usize,
    },
    /// Too many subscriptions or patterns.
    #[error("at most {limit} {what}")]
    TooManySubscriptions {
        /// What is limited.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A pattern is already subscribed with another name (the server keeps one name per
    /// pattern and connection).
    #[error("{pattern:?} is already subscribed with another name")]
    NameConflict {
        /// The pattern.
        pattern: String,
    },
    /// The request is invalid (an empty list of patterns, a `send` to a connection id).
    #[error("{0}")]
    Invalid(String),
    /// The client has stopped.
    #[error("the client has stopped")]
    Stopped,
}

/// Something the driver or the application must act on, from [`Client::poll_event`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Open a connection now; then call [`Client::handle_connected`] or
    /// [`Client::handle_disconnected`].
    Connect {
        /// Consecutive failed attempts before this one.
        attempt: u32,
    },
    /// Close the connection (the machine gave up on it); then call
    /// [`Client::handle_disconnected`].
    Close,
    /// The connection state changed.
    State(State),
    /// An item for these subscriptions.
    Deliver {
        /// The subscriptions it is for.
        subs: Vec<SubId>,
        /// The item.
        item: Item,
    },
    /// A direct or room message (named messages go to their subscriptions).
    Message(Message),
    /// An operation's one outcome.
    Done {
        /// The operation.
        op: OpId,
        /// Its outcome.
        result: Result<Answer, OpError>,
    },
    /// The application asks something; answer with [`Client::reply`] exactly once.
    Request {
        /// What to pass to [`Client::reply`].
        id: ServerRequestId,
        /// Which handler is asked.
        event: Name,
        /// The argument.
        payload: Payload,
    },
    /// A subscription ended: the server refused to restore it on a new connection, or the
    /// client stopped.
    SubscriptionEnded {
        /// The subscription.
        sub: SubId,
        /// Why.
        error: OpError,
    },
    /// The server reported something not tied to an operation (an error frame without id that
    /// did not close the connection), or sent a frame the client could not decode.
    Notice(ServerError),
    /// A join or leave on a topic whose presence the client watches
    /// ([`Client::watch_presence`]).
    Presence(crate::presence::PresenceNotice),
    /// A presence watch was asked again on a new connection (notices of the time without a
    /// connection are lost): its answer, the presence the notices continue from (JSON, as
    /// `presence` answers), or why the watch ended.
    PresenceRewatched {
        /// The watched topic.
        topic: Topic,
        /// The presence now, or why the watch ended.
        result: Result<Payload, OpError>,
    },
}

// ---- internals ---------------------------------------------------------------------------------

enum Link {
    /// No connection; the next attempt at `retry_at` (none when stopped).
    Down { retry_at: Option<Instant> },
    /// `Event::Connect` was emitted; waiting for `handle_connected`.
    Connecting,
    /// The transport is open; waiting for `welcome`.
    Handshake {
        deadline: Instant,
        closing: Option<Reason>,
    },
    /// Welcomed.
    Open(Box<OpenLink>),
}

struct OpenLink {
    welcome: Welcome,
    generation: u64,
    opened_at: Instant,
    last_rx: Instant,
    last_tx: Instant,
    /// The last error frame without id: the close reason if the connection then closes.
    close_error: Option<ServerError>,
    /// The machine asked the driver to close, for this reason.
    closing: Option<Reason>,
    /// Patterns sent in subscribe frames on this connection.
    on_server: BTreeSet<Pattern>,
    /// Patterns the server confirmed on this connection (their `ok` arrived).
    confirmed: BTreeSet<Pattern>,
    /// Server requests awaiting a reply.
    server_requests: BTreeSet<AckId>,
}

enum Kind {
    /// A user subscribe: `sub` becomes active on `ok`.
    Subscribe {
        sub: SubId,
        from: Option<Cursor>,
        added: Vec<Pattern>,
    },
    /// Restoring active subscriptions on a new connection.
    Resubscribe {
        subs: Vec<SubId>,
        added: Vec<Pattern>,
        from: Option<Cursor>,
    },
    /// Internal operations whose answers matter to nobody (unsubscribe, automatic identify).
    Internal,
    /// Starting or stopping a presence watch: asked by the user (`user`), or a watch asked again
    /// on a new connection.
    Watch {
        topic: Topic,
        watch: bool,
        user: bool,
    },
    /// Any other user operation (publish, send, request, identify, ping).
    User,
}

struct Op {
    kind: Kind,
    deadline: Instant,
    /// The connection generation it was sent on; `None` while waiting for a connection.
    sent: Option<u64>,
    /// The command, kept until it is sent (subscribes are built when sent).
    cmd: Option<Command>,
}

struct Sub {
    patterns: Vec<Pattern>,
    name: Option<Name>,
    /// Confirmed by the server once: restored on every new connection.
    active: bool,
}

/// The sans-IO client state machine; see the [module documentation](self).
///
/// Guarantees, given a server that keeps its protocol promises: every event published within
/// the retention window to a topic matching an active subscription is delivered exactly once,
/// in cursor order within a connection, across any number of reconnections; anything lost is
/// announced by an [`Item::Gap`] before what follows it; every operation gets exactly one
/// [`Event::Done`].
///
/// Resuming: each new connection identifies again (if a client id is set) and sends one
/// `subscribe` with `from` = the cursor per subscription name (unnamed patterns together).
/// When a connection replays more than one such frame (named subscriptions), or a subscription
/// with an explicit `from` is added to a live connection, the replays interleave and the
/// cursor can move backwards (PROTOCOL.md §9.3), so a later resume may send events again. The
/// client therefore keeps, per pattern, the sequence up to which everything matching it was
/// delivered (as the server does per subscription), and gives a subscription an event only if
/// one of its patterns has not had it yet: exactly once, whatever the interleaving.
pub struct Client {
    config: ClientConfig,
    rng: Rng,
    link: Link,
    state: State,
    /// Consecutive failures, for the back-off.
    failures: u32,
    generation: u64,
    next_id: u64,
    cursor: Option<Cursor>,
    /// Per pattern: every event of epoch `done_epoch` up to this sequence that matches it was
    /// delivered (or announced lost by a gap). The duplicate guard.
    done: BTreeMap<Pattern, u64>,
    done_epoch: Option<u64>,
    /// The server's suggested reconnection delay, from the last welcome.
    retry_hint: Option<Duration>,
    /// The last welcome's limits and timers.
    welcome: Option<Welcome>,
    ops: BTreeMap<u64, Op>,
    deadlines: BTreeSet<(Instant, u64)>,
    subs: BTreeMap<SubId, Sub>,
    /// Patterns of all subscriptions, with how many subscriptions hold each and its name.
    held: BTreeMap<Pattern, (usize, Option<Name>)>,
    /// Topics whose presence is watched (confirmed by the server): watched again on every new
    /// connection.
    watches: BTreeSet<Topic>,
    next_sub: u64,
    transmits: VecDeque<Bytes>,
    events: VecDeque<Event>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state)
            .field("cursor", &self.cursor)
            .field("ops", &self.ops.len())
            .field("subs", &self.subs.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client that wants to connect: the first [`Client::poll_event`] is [`Event::Connect`].
    /// `seed` seeds the back-off jitter (use something that differs between clients).
    pub fn new(config: ClientConfig, seed: u64, now: Instant) -> Self {
        let _ = now;
        let cursor = config.resume_from;
        let mut client = Self {
            config,
            rng: Rng::new(seed),
            link: Link::Connecting,
            state: State::Connecting { attempt: 0 },
            failures: 0,
            generation: 0,
            next_id: 1,
            cursor,
            done: BTreeMap::new(),
            done_epoch: None,
            retry_hint: None,
            welcome: None,
            ops: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            subs: BTreeMap::new(),
            held: BTreeMap::new(),
            watches: BTreeSet::new(),
            next_sub: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        client.events.push_back(Event::Connect { attempt: 0 });
        client.events.push_back(Event::State(client.state.clone()));
        client
    }

    // ---- getters ---------------------------------------------------------------------------

    /// The connection state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The resume cursor: where the client's stream of events is (`docs/PROTOCOL.md` §9.1).
    pub fn cursor(&self) -> Option<Cursor> {
        self.cursor
    }

    /// The last `welcome` (limits and timers of the server), if a server was reached.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// Whether the client is connected (welcomed).
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Open(_))
    }

    /// Operations waiting for an answer or a connection.
    pub fn pending_ops(&self) -> usize {
        self.ops.len()
    }

    /// The patterns of all subscriptions, with their names: what a new connection restores.
    pub fn patterns(&self) -> impl Iterator<Item = (&Pattern, Option<&Name>)> {
        self.held.iter().map(|(p, (_, n))| (p, n.as_ref()))
    }

    /// The subscriptions.
    pub fn subscriptions(&self) -> impl Iterator<Item = SubId> + '_ {
        self.subs.keys().copied()
    }

    // ---- outputs ---------------------------------------------------------------------------

    /// The next frame to write on the current connection.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// The next event to act on.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Client::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ops = self.deadlines.first().map(|(at, _)| *at);
        let link = match &self.link {
            Link::Down { retry_at } => *retry_at,
            Link::Connecting => None,
            Link::Handshake { deadline, closing } => closing.is_none().then_some(*deadline),
            Link::Open(open) if open.closing.is_some() => None,
            Link::Open(open) => {
                let dead = open.welcome.keepalive.map(|k| open.last_rx + dead_after(k));
                let ping = self_ping_interval(&open.welcome).map(|i| open.last_tx + i);
                min_opt(dead, ping)
            }
        };
        min_opt(ops, link)
    }

    // ---- inputs from the driver ------------------------------------------------------------

    /// The transport asked for by [`Event::Connect`] is open (WebSocket handshake done).
    pub fn handle_connected(&mut self, now: Instant) {
        if matches!(self.link, Link::Connecting) {
            self.link = Link::Handshake {
                deadline: now + self.config.welcome_timeout,
                closing: None,
            };
        }
    }

    /// The transport is gone, or could not be opened. `reason` is what the driver saw; an error
    /// frame the server sent just before closing, or the machine's own reason for an
    /// [`Event::Close`], takes precedence.
    pub fn handle_disconnected(&mut self, now: Instant, reason: Reason) {
        let (reason, healthy) =
            match std::mem::replace(&mut self.link, Link::Down { retry_at: None }) {
                Link::Down { retry_at } => {
                    self.link = Link::Down { retry_at };
                    return;
                }
                Link::Connecting => (reason, false),
                Link::Handshake { closing, .. } => (closing.unwrap_or(reason), false),
                Link::Open(open) => {
                    let reason = match (open.closing, open.close_error, reason) {
                        (Some(mine), _, _) => mine,
                        (None, Some(e), Reason::Closed | Reason::Transport(_)) => Reason::Server(e),
                        (None, _, reason) => reason,
                    };
                    (
                        reason,
                        now.saturating_duration_since(open.opened_at) >= self.config.healthy_after,
                    )
                }
            };
        self.transmits.clear();
        self.lose_in_flight();
        if matches!(self.state, State::Stopped { .. }) {
            return;
        }
        let refreshable =
            self.config.refreshable_token && matches!(reason, Reason::Refused { status: 401, .. });
        if reason.is_fatal() && !refreshable {
            self.stop(Some(reason));
            return;
        }
        if healthy {
            self.failures = 0;
        }
        let mut attempt = self.failures;
        if matches!(&reason, Reason::Server(e) if e.is(ErrorCode::Overloaded)) {
            attempt += 2;
        }
        self.failures = self.failures.saturating_add(1);
        let delay = self
            .config
            .backoff
            .delay(attempt, self.retry_hint, &mut self.rng);
        self.link = Link::Down {
            retry_at: Some(now + delay),
        };
        self.set_state(State::Reconnecting {
            attempt: self.failures,
            delay,
            reason,
        });
    }

    /// One text message from the server.
    pub fn handle_frame(&mut self, now: Instant, frame: &Bytes) {
        let frame = match decode_server_frame(frame) {
            Ok(frame) => frame,
            Err(e) => {
                self.events.push_back(Event::Notice(e.into()));
                return;
            }
        };
        match &mut self.link {
            Link::Handshake { closing: None, .. } => match frame {
                ServerFrame::Welcome(welcome) => self.on_welcome(now, welcome),
                // The reason the server gives instead of a welcome (e.g. `overloaded`).
                ServerFrame::Error { id: None, error } => {
                    self.link = Link::Handshake {
                        deadline: now,
                        closing: Some(Reason::Server(error)),
                    };
                }
                _ => {}
            },
            Link::Open(open) if open.closing.is_none() => {
                open.last_rx = now;
                self.on_frame(now, frame);
            }
            _ => {}
        }
    }

    /// Timers: reconnection, the welcome deadline, keep-alives, dead servers, operation
    /// deadlines. Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(op) = self.ops.remove(&id) else {
                continue;
            };
            match op.kind {
                Kind::Subscribe { sub, .. } => {
                    self.drop_sub(now, sub);
                    self.done(id, Err(OpError::Timeout));
                }
                Kind::User | Kind::Watch { user: true, .. } => {
                    self.done(id, Err(OpError::Timeout));
                }
                // The server answers every op in order; one of ours unanswered means it is gone.
                Kind::Resubscribe { .. } | Kind::Internal | Kind::Watch { user: false, .. } => {
                    if op.sent == Some(self.generation) {
                        self.close_link(Reason::Unresponsive);
                    }
                }
            }
        }
        match &mut self.link {
            Link::Down { retry_at: Some(at) } if *at <= now => {
                self.link = Link::Connecting;
                self.events.push_back(Event::Connect {
                    attempt: self.failures,
                });
                self.set_state(State::Connecting {
                    attempt: self.failures,
                });
            }
            Link::Handshake {
                deadline,
                closing: closing @ None,
            } if *deadline <= now => {
                *closing = Some(Reason::NoWelcome);
                self.events.push_back(Event::Close);
            }
            Link::Open(open) if open.closing.is_none() => {
                if let Some(k) = open.welcome.keepalive {
                    if now >= open.last_rx + dead_after(k) {
                        self.close_link(Reason::Unresponsive);
                        return;
                    }
                }
                if let Some(interval) = self_ping_interval(&open.welcome) {
                    if now >= open.last_tx + interval {
                        self.transmit(now, encode_command(&Command::Ping { req: None }));
                    }
                }
            }
            _ => {}
        }
    }

    // ---- the API ---------------------------------------------------------------------------

    /// Subscribes to `patterns` (wildcards allowed), optionally with a `name` for named routing
    /// and a cursor to replay from. Returns the subscription's id and the operation whose
    /// [`Event::Done`] confirms it (or refuses it, ending the subscription). Until it is
    /// confirmed the subscription is not restored on reconnection, but it is sent again.
    ///
    /// # Errors
    /// [`ClientError`] for an empty list, a name conflict, a limit, or a stopped client.
    pub fn subscribe(
        &mut self,
        now: Instant,
        patterns: Vec<Pattern>,
        name: Option<Name>,
        from: Option<Cursor>,
    ) -> Result<(SubId, OpId), ClientError> {
        self.check_room()?;
        let mut patterns = patterns;
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Err(ClientError::Invalid(
                "a subscription needs at least one pattern".into(),
            ));
        }
        if self.subs.len() >= self.config.max_subscriptions {
            return Err(ClientError::TooManySubscriptions {
                what: "subscriptions",
                limit: self.config.max_subscriptions,
            });
        }
        let server_max = self.server_max_patterns();
        let new = patterns
            .iter()
            .filter(|p| !self.held.contains_key(*p))
            .count();
        if self.held.len() + new > server_max {
            return Err(ClientError::TooManySubscriptions {
                what: "distinct patterns (the server's max_subscriptions)",
                limit: server_max,
            });
        }
        if let Some(p) = patterns
            .iter()
            .find(|p| self.held.get(*p).is_some_and(|(_, n)| *n != name))
        {
            return Err(ClientError::NameConflict {
                pattern: p.as_str().to_owned(),
            });
        }
        let sub = SubId(self.next_sub);
        self.next_sub += 1;
        for p in &patterns {
            self.held
                .entry(p.clone())
                .or_insert_with(|| (0, name.clone()))
                .0 += 1;
        }
        self.subs.insert(
            sub,
            Sub {
                patterns,
                name,
                active: false,
            },
        );
        if from.is_some() && self.cursor.is_none() {
            self.cursor = from;
        }
        let id = self.add_op(
            now,
            Kind::Subscribe {
                sub,
                from,
                added: Vec::new(),
            },
            None,
            self.config.op_timeout,
        );
        if self.is_connected() {
            self.send_op(now, id);
        }
        Ok((sub, OpId(id)))
    }

    /// Ends a subscription: it receives nothing more, and the server is told to drop the
    /// patterns no other subscription holds. Unknown ids are ignored.
    pub fn unsubscribe(&mut self, now: Instant, sub: SubId) {
        if let Some(id) = self.ops.iter().find_map(|(id, op)| match op.kind {
            Kind::Subscribe { sub: s, .. } if s == sub => Some(*id),
            _ => None,
        }) {
            self.remove_op(id);
            self.done(id, Err(OpError::Stopped));
        }
        self.drop_sub(now, sub);
    }

    /// Publishes an event; [`Event::Done`] carries its cursor.
    ///
    /// # Errors
    /// [`ClientError`] for a limit or a stopped client.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
    ) -> Result<OpId, ClientError> {
        self.user_op(now, self.config.op_timeout, |req| Command::Publish {
            req: Some(req),
            topic,
            event,
            payload,
        })
    }

    /// Sends a message that is not retained: to a client id ([`Recipient::Client`]) or to the
    /// named subscriptions on a topic ([`Recipient::Named`]).
    ///
    /// # Errors
    /// [`ClientError`] for another recipient, a limit or a stopped client.
    pub fn send(
        &mut self,
        now: Instant,
        to: Recipient,
        event: Option<Name>,
        payload: Payload,
    ) -> Result<OpId, ClientError> {
        if !matches!(to, Recipient::Client(_) | Recipient::Named { .. }) {
            return Err(ClientError::Invalid(
                "clients send to a client id or to named subscriptions".into(),
            ));
        }
        self.user_op(now, self.config.op_timeout, |req| Command::Send {
            req: Some(req),
            to,
            event,
            payload,
        })
    }

    /// Asks the application (its handler `event`); [`Event::Done`] carries its answer. The
    /// deadline is `timeout`, or [`ClientConfig::request_timeout`].
    ///
    /// # Errors
    /// [`ClientError`] for a limit or a stopped client.
    pub fn request(
        &mut self,
        now: Instant,
        event: Name,
        payload: Payload,
        timeout: Option<Duration>,
    ) -> Result<OpId, ClientError> {
        let timeout = timeout.or(self.config.request_timeout).unwrap_or_else(|| {
            self.welcome
                .as_ref()
                .and_then(|w| w.request_timeout)
                .map_or(self.config.op_timeout, |t| t + Duration::from_secs(2))
        });
        self.user_op(now, timeout, |req| Command::Request {
            req,
            event,
            payload,
        })
    }

    /// Who is subscribed to `topic` ([`crate::presence`]); [`Event::Done`] carries the presence as
    /// JSON.
    ///
    /// # Errors
    /// [`ClientError`] for a limit or a stopped client.
    pub fn presence(&mut self, now: Instant, topic: Topic) -> Result<OpId, ClientError> {
        self.user_op(now, self.config.op_timeout, |req| Command::Presence {
            req,
            topic,
        })
    }

    /// Starts (`watch`) or stops watching the presence of `topic`: while watching, joins and
    /// leaves on it come as [`Event::Presence`]. [`Event::Done`] carries the presence the
    /// notices continue from (JSON, as [`Client::presence`]). A watch lasts across
    /// reconnections: it is asked again on every new connection, and its new starting
    /// presence comes as [`Event::PresenceRewatched`].
    ///
    /// # Errors
    /// [`ClientError`] for a limit or a stopped client.
    pub fn watch_presence(
        &mut self,
        now: Instant,
        topic: Topic,
        watch: bool,
    ) -> Result<OpId, ClientError> {
        self.check_room()?;
        let req = self.next_id;
        let cmd = Command::WatchPresence {
            req,
            topic: topic.clone(),
            watch,
        };
        let kind = Kind::Watch {
            topic,
            watch,
            user: true,
        };
        let id = self.add_op(now, kind, Some(cmd), self.config.op_timeout);
        if self.is_connected() {
            self.send_op(now, id);
        }
        Ok(OpId(id))
    }

    /// Claims a client id, now and on every later connection.
    ///
    /// # Errors
    /// [`ClientError`] for a limit or a stopped client.
    pub fn identify(&mut self, now: Instant, client_id: Name) -> Result<OpId, ClientError> {
        self.config.client_id = Some(client_id.clone());
        self.user_op(now, self.config.op_timeout, |req| Command::Identify {
            req: Some(req),
            client_id,
            claim: Claim::Explicit,
        })
    }

    /// Checks that the server answers; [`Event::Done`] comes with its `pong`.
    ///
    /// # Errors
    /// [`ClientError`] for a limit or a stopped client.
    pub fn ping(&mut self, now: Instant) -> Result<OpId, ClientError> {
        self.user_op(now, self.config.op_timeout, |req| Command::Ping {
            req: Some(req),
        })
    }

    /// Answers a server request: `Ok` with data, or `Err` with a message (the application gets
    /// `rejected`). Returns whether it was sent: `false` when it was already answered or its
    /// connection is gone.
    pub fn reply(
        &mut self,
        now: Instant,
        id: ServerRequestId,
        result: Result<Payload, String>,
    ) -> bool {
        let Link::Open(open) = &mut self.link else {
            return false;
        };
        if open.generation != id.generation || !open.server_requests.remove(&id.id) {
            return false;
        }
        self.transmit(now, encode_command(&Command::Reply { ack: id.id, result }));
        true
    }

    /// Stops the client: every waiting operation fails with [`OpError::Stopped`], every
    /// subscription ends, and an open connection is closed ([`Event::Close`]).
    pub fn close(&mut self) {
        if matches!(self.state, State::Stopped { .. }) {
            return;
        }
        match &mut self.link {
            Link::Open(open) => {
                open.closing.get_or_insert(Reason::Closed);
                self.events.push_back(Event::Close);
            }
            Link::Handshake { closing, .. } => {
                closing.get_or_insert(Reason::Closed);
                self.events.push_back(Event::Close);
            }
            Link::Connecting => self.events.push_back(Event::Close),
            Link::Down { .. } => {}
        }
        self.stop(None);
    }

    // ---- internals -------------------------------------------------------------------------

    fn set_state(&mut self, state: State) {
        if self.state != state {
            self.state = state.clone();
            self.events.push_back(Event::State(state));
        }
    }

    fn stop(&mut self, reason: Option<Reason>) {
        if let Link::Down { retry_at } = &mut self.link {
            *retry_at = None;
        }
        for (id, op) in std::mem::take(&mut self.ops) {
            if !matches!(
                op.kind,
                Kind::Resubscribe { .. } | Kind::Internal | Kind::Watch { user: false, .. }
            ) {
                self.done(id, Err(OpError::Stopped));
            }
        }
        self.deadlines.clear();
        for sub in std::mem::take(&mut self.subs).into_keys() {
            self.events.push_back(Event::SubscriptionEnded {
                sub,
                error: OpError::Stopped,
            });
        }
        self.held.clear();
        self.set_state(State::Stopped { reason });
    }

    /// Asks the driver to close the current connection for `reason`.
    fn close_link(&mut self, reason: Reason) {
        if let Link::Open(open) = &mut self.link {
            if open.closing.is_none() {
                open.closing = Some(reason);
                self.events.push_back(Event::Close);
            }
        }
    }

    fn check_room(&self) -> Result<(), ClientError> {
        if matches!(self.state, State::Stopped { .. }) {
            return Err(ClientError::Stopped);
        }
        if self.ops.len() >= self.config.max_pending {
            return Err(ClientError::TooManyPending {
                limit: self.config.max_pending,
            });
        }
        Ok(())
    }

    fn server_max_patterns(&self) -> usize {
        self.welcome
            .as_ref()
            .and_then(|w| w.max_subscriptions)
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(256)
    }

    fn next_req(&mut self) -> u64 {
        let id = self.next_id;
        // Request ids stay within 2^53; a client never issues that many operations.
        self.next_id = if id >= 1 << 53 { 1 } else { id + 1 };
        id
    }

    fn add_op(&mut self, now: Instant, kind: Kind, cmd: Option<Command>, timeout: Duration) -> u64 {
        let id = self.next_req();
        let deadline = now + timeout;
        self.deadlines.insert((deadline, id));
        self.ops.insert(
            id,
            Op {
                kind,
                deadline,
                sent: None,
                cmd,
            },
        );
        id
    }

    fn remove_op(&mut self, id: u64) -> Option<Op> {
        let op = self.ops.remove(&id)?;
        self.deadlines.remove(&(op.deadline, id));
        Some(op)
    }

    fn user_op(
        &mut self,
        now: Instant,
        timeout: Duration,
        make: impl FnOnce(ReqId) -> Command,
    ) -> Result<OpId, ClientError> {
        self.check_room()?;
        let req = self.next_id;
        let cmd = make(req);
        let id = self.add_op(now, Kind::User, Some(cmd), timeout);
        debug_assert_eq!(id, req);
        if self.is_connected() {
            self.send_op(now, id);
        }
        Ok(OpId(id))
    }

    fn done(&mut self, id: u64, result: Result<Answer, OpError>) {
        self.events.push_back(Event::Done {
            op: OpId(id),
            result,
        });
    }

    fn transmit(&mut self, now: Instant, frame: Option<Bytes>) {
        if let (Some(frame), Link::Open(open)) = (frame, &mut self.link) {
            open.last_tx = now;
            self.transmits.push_back(frame);
        }
    }

    /// Sends a waiting operation on the open connection.
    fn send_op(&mut self, now: Instant, id: u64) {
        let generation = self.generation;
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Link::Open(open) = &mut self.link else {
            return;
        };
        let frame = match &mut op.kind {
            Kind::Subscribe { sub, from, added } => {
                let Some(s) = self.subs.get(sub) else {
                    return;
                };
                *added = s
                    .patterns
                    .iter()
                    .filter(|p| !open.on_server.contains(*p))
                    .cloned()
                    .collect();
                open.on_server.extend(added.iter().cloned());
                encode_command(&Command::Subscribe(Subscribe {
                    req: Some(id),
                    patterns: s.patterns.clone(),
                    from: *from,
                    name: s.name.clone(),
                }))
            }
            _ => op.cmd.take().and_then(|cmd| encode_command(&cmd)),
        };
        op.sent = Some(generation);
        self.transmit(now, frame);
    }

    /// Ops sent on the connection that just closed.
    fn lose_in_flight(&mut self) {
        let generation = self.generation;
        let lost: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| op.sent == Some(generation))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            match op.kind {
                // A subscription is state: it is sent again on the next connection.
                Kind::Subscribe { .. } => op.sent = None,
                Kind::Resubscribe { .. } | Kind::Internal | Kind::Watch { user: false, .. } => {
                    self.remove_op(id);
                }
                Kind::User | Kind::Watch { user: true, .. } => {
                    self.remove_op(id);
                    self.done(id, Err(OpError::ConnectionLost));
                }
            }
        }
    }

    fn drop_sub(&mut self, now: Instant, sub: SubId) {
        let Some(s) = self.subs.remove(&sub) else {
            return;
        };
        let mut gone = Vec::new();
        for p in s.patterns {
            if let Some((refs, _)) = self.held.get_mut(&p) {
                *refs -= 1;
                if *refs == 0 {
                    self.held.remove(&p);
                    self.done.remove(&p);
                    gone.push(p);
                }
            }
        }
        let Link::Open(open) = &mut self.link else {
            return;
        };
        gone.retain(|p| {
            open.confirmed.remove(p);
            open.on_server.remove(p)
        });
        if !gone.is_empty() {
            let id = self.add_op(now, Kind::Internal, None, self.config.op_timeout);
            if let Some(op) = self.ops.get_mut(&id) {
                op.sent = Some(self.generation);
            }
            self.transmit(
                now,
                encode_command(&Command::Unsubscribe {
                    req: Some(id),
                    patterns: gone,
                }),
            );
        }
    }

    fn on_welcome(&mut self, now: Instant, welcome: Welcome) {
        if welcome.protocol != u64::from(PROTOCOL_VERSION) {
            self.link = Link::Handshake {
                deadline: now,
                closing: Some(Reason::Protocol(format!(
                    "the server speaks protocol {}; this client speaks {PROTOCOL_VERSION}",
                    welcome.protocol
                ))),
            };
            self.events.push_back(Event::Close);
            return;
        }
        self.generation += 1;
        self.retry_hint = welcome.retry;
        self.enter_epoch(welcome.cursor.epoch);
        let conn = welcome.conn;
        self.welcome = Some(welcome.clone());
        self.link = Link::Open(Box::new(OpenLink {
            welcome,
            generation: self.generation,
            opened_at: now,
            last_rx: now,
            last_tx: now,
            close_error: None,
            closing: None,
            on_server: BTreeSet::new(),
            confirmed: BTreeSet::new(),
            server_requests: BTreeSet::new(),
        }));
        self.set_state(State::Connected { conn });
        // 1. The client id.
        if let Some(client_id) = self.config.client_id.clone() {
            let timeout = self.config.op_timeout;
            let id = self.add_op(now, Kind::Internal, None, timeout);
            if let Some(op) = self.ops.get_mut(&id) {
                op.sent = Some(self.generation);
            }
            self.transmit(
                now,
                encode_command(&Command::Identify {
                    req: Some(id),
                    client_id,
                    claim: Claim::Explicit,
                }),
            );
        }
        // 2. The confirmed subscriptions, one resuming frame per name.
        let mut groups: BTreeMap<Option<Name>, (Vec<SubId>, BTreeSet<Pattern>)> = BTreeMap::new();
        for (id, sub) in &self.subs {
            if sub.active {
                let group = groups.entry(sub.name.clone()).or_default();
                group.0.push(*id);
                group.1.extend(sub.patterns.iter().cloned());
            }
        }
        let cursor = self.cursor;
        for (name, (subs, patterns)) in groups {
            let patterns: Vec<Pattern> = patterns.into_iter().collect();
            if let Link::Open(open) = &mut self.link {
                open.on_server.extend(patterns.iter().cloned());
            }
            let id = self.add_op(
                now,
                Kind::Resubscribe {
                    subs,
                    added: patterns.clone(),
                    from: cursor,
                },
                None,
                self.config.op_timeout,
            );
            if let Some(op) = self.ops.get_mut(&id) {
                op.sent = Some(self.generation);
            }
            self.transmit(
                now,
                encode_command(&Command::Subscribe(Subscribe {
                    req: Some(id),
                    patterns,
                    from: cursor,
                    name,
                })),
            );
        }
        // 3. The presence watches.
        for topic in self.watches.clone() {
            let kind = Kind::Watch {
                topic: topic.clone(),
                watch: true,
                user: false,
            };
            let id = self.add_op(now, kind, None, self.config.op_timeout);
            if let Some(op) = self.ops.get_mut(&id) {
                op.sent = Some(self.generation);
            }
            self.transmit(
                now,
                encode_command(&Command::WatchPresence {
                    req: id,
                    topic,
                    watch: true,
                }),
            );
        }
        // 4. Everything that waited for a connection, in the order it was asked for.
        let waiting: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, op)| op.sent.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.send_op(now, id);
        }
    }

    fn on_frame(&mut self, now: Instant, frame: ServerFrame) {
        match frame {
            ServerFrame::Event(event) => self.on_event(event),
            ServerFrame::Gap(gap) => {
                self.cursor = Some(gap.to);
                self.advance(gap.to);
                let subs: Vec<SubId> = self.subs.keys().copied().collect();
                if !subs.is_empty() {
                    self.events.push_back(Event::Deliver {
                        subs,
                        item: Item::Gap(gap),
                    });
                }
            }
            ServerFrame::Message(message) => {
                let subs: Vec<SubId> = match &message.named {
                    Some((topic, name)) => self
                        .subs
                        .iter()
                        .filter(|(_, s)| {
                            s.name.as_ref() == Some(name)
                                && s.patterns.iter().any(|p| p.matches(topic.as_str()))
                        })
                        .map(|(id, _)| *id)
                        .collect(),
                    None => Vec::new(),
                };
                if subs.is_empty() {
                    self.events.push_back(Event::Message(message));
                } else {
                    self.events.push_back(Event::Deliver {
                        subs,
                        item: Item::Message(message),
                    });
                }
            }
            ServerFrame::Ok {
                id,
                cursor,
                payload,
            } => self.on_answer(now, id, Ok(Answer { cursor, payload })),
            ServerFrame::Pong { id } => self.on_answer(now, id, Ok(Answer::default())),
            ServerFrame::Error {
                id: Some(id),
                error,
            } => {
                self.on_answer(now, id, Err(OpError::Server(error)));
            }
            ServerFrame::Error { id: None, error } => {
                if let Link::Open(open) = &mut self.link {
                    open.close_error = Some(error.clone());
                }
                self.events.push_back(Event::Notice(error));
            }
            ServerFrame::Request { id, event, payload } => {
                let generation = self.generation;
                let max = self.config.max_server_requests;
                let Link::Open(open) = &mut self.link else {
                    return;
                };
                if open.server_requests.len() >= max || !open.server_requests.insert(id) {
                    let result = Err(format!(
                        "the client has {max} requests waiting for an answer already"
                    ));
                    self.transmit(now, encode_command(&Command::Reply { ack: id, result }));
                    return;
                }
                self.events.push_back(Event::Request {
                    id: ServerRequestId { generation, id },
                    event,
                    payload,
                });
            }
            ServerFrame::Ping => self.transmit(now, Some(encode_pong())),
            ServerFrame::Presence(notice) => self.events.push_back(Event::Presence(notice)),
            ServerFrame::Welcome(_) | ServerFrame::Unknown => {}
        }
    }

    fn on_event(&mut self, event: EventFrame) {
        let c = event.cursor;
        self.cursor = Some(c);
        let same_epoch = self.done_epoch == Some(c.epoch);
        let done = &self.done;
        let owed = |p: &Pattern| {
            p.matches(event.topic.as_str())
                && !(same_epoch && done.get(p).is_some_and(|up_to| *up_to >= c.seq))
        };
        let subs: Vec<SubId> = self
            .subs
            .iter()
            .filter(|(_, s)| s.patterns.iter().any(owed))
            .map(|(id, _)| *id)
            .collect();
        self.advance(c);
        if !subs.is_empty() {
            self.events.push_back(Event::Deliver {
                subs,
                item: Item::Event(event),
            });
        }
    }

    /// A new hub epoch: nothing delivered in another one can come again.
    fn enter_epoch(&mut self, epoch: u64) {
        if self.done_epoch != Some(epoch) {
            self.done.clear();
            self.done_epoch = Some(epoch);
        }
    }

    /// The stream reached `c`: the server has delivered (or announced lost) everything up to it
    /// for every pattern it confirmed on this connection (it replays in cursor order).
    fn advance(&mut self, c: Cursor) {
        self.enter_epoch(c.epoch);
        let Link::Open(open) = &self.link else {
            return;
        };
        for p in &open.confirmed {
            if let Some(up_to) = self.done.get_mut(p) {
                *up_to = (*up_to).max(c.seq);
            } else if self.held.contains_key(p) {
                self.done.insert(p.clone(), c.seq);
            }
        }
    }

    /// The server confirmed `patterns` on this connection, starting after `start`.
    fn confirm(&mut self, patterns: &[Pattern], start: Option<Cursor>) {
        let Link::Open(open) = &mut self.link else {
            return;
        };
        let same_epoch = start.is_some_and(|c| Some(c.epoch) == self.done_epoch);
        for p in patterns {
            if !self.held.contains_key(p) || !open.confirmed.insert(p.clone()) {
                continue;
            }
            if let (true, Some(start)) = (same_epoch, start) {
                let up_to = self.done.entry(p.clone()).or_insert(start.seq);
                *up_to = (*up_to).max(start.seq);
            }
        }
    }

    fn on_answer(&mut self, now: Instant, id: ReqId, result: Result<Answer, OpError>) {
        let Some(op) = self.remove_op(id) else {
            // Already timed out, or not ours: late answers are dropped.
            return;
        };
        match op.kind {
            Kind::User => self.done(id, result),
            Kind::Internal => {}
            Kind::Watch { topic, watch, user } => {
                if result.is_ok() && watch {
                    self.watches.insert(topic.clone());
                } else if result.is_ok() || !user {
                    // Stopped, or refused when asked again on a new connection.
                    self.watches.remove(&topic);
                }
                if user {
                    self.done(id, result);
                } else {
                    let result = result.map(|answer| {
                        answer
                            .payload
                            .unwrap_or_else(|| Payload::json_unchecked(Bytes::from_static(b"null")))
                    });
                    self.events
                        .push_back(Event::PresenceRewatched { topic, result });
                }
            }
            Kind::Subscribe { sub, from, added } => match result {
                Ok(answer) => {
                    let patterns = match self.subs.get_mut(&sub) {
                        Some(s) => {
                            s.active = true;
                            s.patterns.clone()
                        }
                        None => Vec::new(),
                    };
                    if from.is_none() && self.cursor.is_none() {
                        self.cursor = answer.cursor;
                    }
                    self.confirm(&patterns, from.or(answer.cursor));
                    self.done(id, Ok(answer));
                }
                Err(e) => {
                    // All or nothing: none of its new patterns is subscribed.
                    if let Link::Open(open) = &mut self.link {
                        for p in &added {
                            open.on_server.remove(p);
                        }
                    }
                    self.drop_sub(now, sub);
                    self.done(id, Err(e));
                }
            },
            Kind::Resubscribe { subs, added, from } => match result {
                Ok(answer) => {
                    if self.cursor.is_none() {
                        self.cursor = answer.cursor;
                    }
                    self.confirm(&added, from.or(answer.cursor));
                }
                Err(error) => {
                    if let Link::Open(open) = &mut self.link {
                        for p in &added {
                            open.on_server.remove(p);
                        }
                    }
                    for sub in subs {
                        if self.subs.contains_key(&sub) {
                            self.drop_sub(now, sub);
                            self.events.push_back(Event::SubscriptionEnded {
                                sub,
                                error: error.clone(),
                            });
                        }
                    }
                }
            },
        }
    }
}

/// A server that promised keep-alives every `k` and sent nothing for this long is gone.
fn dead_after(keepalive: Duration) -> Duration {
    keepalive * 2 + Duration::from_secs(1)
}

/// How often the client must send something on its own (PROTOCOL.md §12 rule 2): when the
/// server has an idle timeout but no keep-alive shorter than it.
fn self_ping_interval(w: &Welcome) -> Option<Duration> {
    let idle = w.idle_timeout?;
    match w.keepalive {
        Some(k) if k < idle => None,
        _ => Some((idle / 2).max(Duration::from_millis(10))),
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        Self::Invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests;
