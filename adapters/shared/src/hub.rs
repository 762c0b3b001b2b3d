//! The application API: a cloneable [`Hub`] handle to the driver that owns the broker.
//!
//! From server code (any task, any thread) you can publish, send direct messages, manage rooms,
//! ask a client something and wait for its answer (emit-with-ack), subscribe in-process, and
//! register what answers clients' requests:
//!
//! - [`Hub::on`] registers a named handler for client `request`s (etp's `on`). Handlers run as
//!   tasks of their own, so a slow one never holds up the others or the driver. A request for a
//!   name without a handler is answered `no_handler` at once.
//! - [`Hub::on_connect`] runs on every new `/ws`, `/ws/bus`, `/etp` and `/sse` connection (on the connection's own
//!   task, before it opens) and returns the rooms to put it in; they are joined in the same
//!   driver step as the connection opens, so no room message can slip in between.
//! - [`Hub::on_disconnect`] runs on the driver when a connection is gone: keep it short (spawn
//!   anything slow).
//!
//! Every call is a message to the driver and, where it returns something, an answer back; the
//! calls fail with [`HubError::Stopped`] once the driver is gone. [`Hub::failed`] completes if
//! the driver failed (a panic, i.e. a bug), so that a server can exit and be restarted.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::FutureExt as _;
use futures_util::Stream;
use futures_util::future::{BoxFuture, Shared};
use tidings_core::ask::ClientAnswer;
use tidings_core::codec::Codec;
use tidings_core::presence::Presence;
use tidings_core::typed::TypedCodec;
use tidings_core::{
    ApiError, AppOp, AppReply, Broker, Claim, Command, ConnId, Cursor, Delivery, ErrorCode, Gap,
    Grants, Lifecycle, Limits, Name, Pattern, Payload, ProtocolError, Recipient, Subscribe,
    SubscriptionChange, Topic, Visibility,
};

use crate::auth::AuthConfigError;
use crate::auth::{AuthError, Authenticated};
use crate::cluster::{ClusterError, Joined, NatsLog};
use crate::config::{ConfigError, ServerConfig, TlsError};
use crate::conn::{Ended, FromConn, Kind, Opening, ToConn};
use crate::control::{Answer, Control};
use crate::driver::{Driver, LogLink};
use crate::events::AppEvents;
use crate::http::Refusal;
use crate::mailbox::mailbox;
use crate::metrics::ServerStats;
use crate::registry::{Connecting, Disconnect, Handler, Registry, UnknownHandler};
use crate::request::RequestHead;
use crate::runtime::Runtime;
use crate::store::{FileLog, Recovery, StoreError, StoreKind};
use crate::writer::ConnWriter;

mod watch;
pub use watch::PresenceWatch;

/// Capacity of the channel from connection tasks to the driver: a connection whose commands
/// cannot be queued waits (backpressure on clients that send faster than the broker routes).
const CONN_CHANNEL: usize = 4096;

/// A hub call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubError {
    /// The driver is gone (the server stopped).
    Stopped,
    /// The broker refused (unknown connection, a limit).
    Api(ApiError),
    /// The operation failed as a client's would: a publish the log could not store
    /// (`unavailable`: the disk is full or failing; nothing was delivered, retry later).
    Failed(ProtocolError),
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stopped => f.write_str("the tidings server has stopped"),
            Self::Api(e) => e.fmt(f),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for HubError {}

impl From<ApiError> for HubError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

struct HubInner {
    ctl: flume::Sender<Control>,
    conns: flume::Sender<FromConn>,
    next_conn: AtomicU64,
    registry: Arc<RwLock<Registry>>,
    limits: Limits,
    outbox_frames: usize,
    /// The runtime's timer ([`Runtime::sleep_until`]).
    sleep: Sleep,
    /// Resolves when the driver task ends: `true` if it panicked.
    now: Now,
    driver_end: Shared<oneshot::Receiver<bool>>,
    /// The file log, if events are stored in files (for `/metrics` and the shutdown).
    file_log: Option<Arc<FileLog>>,
    /// The cluster's stream, in cluster mode (kept for as long as the hub: dropping it ends the
    /// NATS client's thread).
    #[allow(dead_code)]
    nats_log: Option<NatsLog>,
}

type Sleep = Arc<dyn Fn(Instant) -> BoxFuture<'static, ()> + Send + Sync>;
type Now = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A handle to a running broker. Cheap to clone; use it from any task or thread.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// The server could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The authentication settings are invalid.
    Auth(AuthConfigError),
    /// The data directory cannot be used (locked by another server, unreadable, a corrupt
    /// segment): the message names the file and what to do.
    Store(StoreError),
    /// The TLS certificate or key cannot be used: the message names the file.
    Tls(TlsError),
    /// Cluster mode cannot start (NATS unreachable, JetStream off, a conflicting stream).
    Cluster(ClusterError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Auth(e) => write!(f, "invalid authentication settings: {e}"),
            Self::Store(e) => write!(f, "cannot use the data directory: {e}"),
            Self::Tls(e) => write!(f, "cannot serve TLS: {e}"),
            Self::Cluster(e) => write!(f, "cannot join the cluster: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts a broker configured by `config` on its own driver task (spawned on `rt`) and
    /// returns a handle to it. [`crate::Service::start`] does this for a server.
    ///
    /// With `[store] kind = "file"` it opens the data directory and recovers the log first
    /// (blocking: before the hub serves anything), and logs what it found.
    ///
    /// # Errors
    /// [`StartError::Config`] if the configuration is invalid, [`StartError::Store`] if the data
    /// directory cannot be used.
    pub fn start<R: Runtime>(rt: &R, config: &ServerConfig) -> Result<Self, StartError> {
        let core = config.into_core().map_err(StartError::Config)?;
        let limits = core.limits.clone();
        let outbox_frames = config.http.outbox_frames(limits.max_queued_bytes);
        let mut broker = Broker::new(core, rt.now());
        let mut nats_log = None;
        let (file_log, link) = match config.store.kind {
            _ if config.cluster.nats.is_some() => {
                let (log, joined, link) = NatsLog::open(
                    &config.cluster,
                    &config.retention,
                    &limits,
                    config.store.hot_events,
                    config.store.hot_bytes,
                )
                .map_err(StartError::Cluster)?;
                announce_join(&joined);
                broker.restore_log(joined.state);
                nats_log = Some(log);
                (None, Some(link))
            }
            StoreKind::Memory => (None, None),
            StoreKind::File => {
                let (log, recovery, replies) =
                    FileLog::open(&config.store, &config.retention).map_err(StartError::Store)?;
                announce_recovery(&recovery);
                broker.restore_log(recovery.state);
                let log = Arc::new(log);
                let requests = {
                    let log = log.clone();
                    Box::new(move |reqs| log.requests(reqs))
                };
                let link = LogLink {
                    requests,
                    replies,
                    relay: None,
                };
                (Some(log), Some(link))
            }
        };
        let (ctl_tx, ctl_rx) = flume::unbounded();
        let (conn_tx, conn_rx) = flume::bounded(CONN_CHANNEL);
        let registry = Arc::new(RwLock::new(Registry::default()));
        let app = AppEvents::new(registry.clone(), ctl_tx.downgrade());
        let driver = Driver::new(rt.clone(), broker, ctl_rx, conn_rx, app, link);
        let (end_tx, driver_end) = oneshot::channel();
        rt.spawn(async move {
            let panicked = AssertUnwindSafe(driver.run()).catch_unwind().await.is_err();
            if panicked {
                tracing::error!(
                    "the broker's driver task panicked (a bug in tidings): every connection is \
                     lost and the hub is stopped; Hub::failed reports it"
                );
            }
            let _ = end_tx.send(panicked);
        });
        let timer = rt.clone();
        let sleep: Sleep = Arc::new(move |at| Box::pin(timer.sleep_until(at)));
        let clock = rt.clone();
        let now: Now = Arc::new(move || clock.now());
        Ok(Self {
            inner: Arc::new(HubInner {
                ctl: ctl_tx,
                conns: conn_tx,
                next_conn: AtomicU64::new(1),
                registry,
                limits,
                outbox_frames,
                sleep,
                now,
                driver_end: futures_util::FutureExt::shared(driver_end),
                file_log,
                nats_log,
            }),
        })
    }

    /// Completes if the broker's driver task failed (it panicked, which is a bug): every
    /// connection was lost and every call answers [`HubError::Stopped`] from then on. Never
    /// completes otherwise, also not after a shutdown. A server process should exit when it does
    /// (with a non-zero status), so that its supervisor restarts it: `tidings serve` exits with
    /// status 70.
    pub async fn failed(&self) {
        match self.inner.driver_end.clone().await {
            Ok(true) => {}
            _ => std::future::pending().await,
        }
    }

    // ---- for connection tasks ------------------------------------------------------------------

    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn conn_sender(&self) -> &flume::Sender<FromConn> {
        &self.inner.conns
    }

    /// The core limits in force (frame size, name limits, ...).
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn outbox_frames(&self) -> usize {
        self.inner.outbox_frames
    }

    /// Runs the authorizer (if any) over what authentication granted.
    pub(crate) fn run_authorizer(
        &self,
        head: &RequestHead,
        authenticated: Authenticated,
    ) -> Result<Authenticated, AuthError> {
        let authorizer = self
            .inner
            .registry
            .read()
            .ok()
            .and_then(|r| r.authorizer.clone());
        match authorizer {
            None => Ok(authenticated),
            Some(authorizer) => std::panic::catch_unwind(AssertUnwindSafe(|| {
                authorizer(head, authenticated)
            }))
            .unwrap_or_else(|_| {
                tracing::error!(path = %head.path, "the authorizer panicked; refusing the request");
                Err(AuthError::forbidden(
                    "the server could not decide on this request",
                ))
            }),
        }
    }

    /// Prepares a `/ws` or `/sse` connection's `Open`: a fresh id, its bounded outbox, the rooms
    /// of the connect hook, and its first commands (`then`, then claiming the client id of
    /// `auth` as `claim` says). Returns the opening and the writer of its outbox.
    pub(crate) fn opening(
        &self,
        codec: Box<dyn Codec>,
        head: &RequestHead,
        auth: Authenticated,
        then: Option<Command>,
        claim: Claim,
        kill: Option<oneshot::Sender<()>>,
    ) -> (Opening, ConnWriter) {
        let conn = self.next_conn_id();
        let (outbox, inbox) = mailbox(self.outbox_frames());
        let rooms = self.connect_rooms(&Connecting {
            conn,
            format: codec.format(),
            head,
            client_id: auth.client_id.as_ref(),
        });
        let identify = auth.client_id.map(|client_id| Command::Identify {
            req: None,
            client_id,
            claim,
        });
        // The client id is claimed after `then` (the SSE subscription): a parked session it
        // takes back then sees the stream's own resume cursor.
        let opening = Opening {
            conn,
            kind: Kind::of(codec.as_ref()),
            codec,
            grants: auth.grants.into(),
            outbox,
            kill,
            rooms,
            commands: then.into_iter().chain(identify).collect(),
        };
        (
            opening,
            ConnWriter::new(conn, inbox, self.inner.ctl.clone()),
        )
    }

    /// Runs the refusal hook (if any) over a refused WebSocket upgrade.
    pub(crate) fn refused(&self, head: &RequestHead, refusal: &Refusal) {
        let hook = self
            .inner
            .registry
            .read()
            .ok()
            .and_then(|r| r.on_refused.clone());
        if let Some(hook) = hook
            && std::panic::catch_unwind(AssertUnwindSafe(|| hook(head, refusal))).is_err()
        {
            tracing::error!(path = %head.path, "the refusal hook panicked");
        }
    }

    /// Runs the connect hook (if any) and returns the rooms to join.
    pub(crate) fn connect_rooms(&self, connecting: &Connecting<'_>) -> Vec<Name> {
        let hook = self
            .inner
            .registry
            .read()
            .ok()
            .and_then(|r| r.on_connect.clone());
        let Some(hook) = hook else {
            return Vec::new();
        };
        std::panic::catch_unwind(AssertUnwindSafe(|| hook(connecting))).unwrap_or_else(|_| {
            tracing::error!(conn = %connecting.conn, "the connect hook panicked");
            Vec::new()
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, HubError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .ctl
            .send(make(tx))
            .map_err(|_| HubError::Stopped)?;
        rx.await.map_err(|_| HubError::Stopped)
    }

    /// Applies an application operation on the broker ([`Broker::handle_app`]) and returns its
    /// reply: what every typed method below is a wrapper of. A refusal of the broker is
    /// [`HubError::Api`].
    ///
    /// # Errors
    /// [`HubError::Stopped`], [`HubError::Api`].
    pub async fn app(&self, op: AppOp) -> Result<AppReply, HubError> {
        match self
            .call(|reply| Control::App(op, Answer::Reply(reply)))
            .await?
        {
            AppReply::Refused(e) => Err(HubError::Api(e)),
            reply => Ok(reply),
        }
    }

    // ---- the application API -------------------------------------------------------------------

    /// Publishes an event (retained for replay, delivered with a cursor); returns its cursor once
    /// the event is stored (with the file log: written as `[store] durability` says).
    ///
    /// # Errors
    /// [`HubError::Stopped`]; [`HubError::Failed`] with `unavailable` when the log could not
    /// store it (nothing was delivered).
    pub async fn publish(
        &self,
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
    ) -> Result<Cursor, HubError> {
        match self
            .app(AppOp::Publish {
                topic,
                event,
                payload,
            })
            .await?
        {
            AppReply::Cursor(cursor) => Ok(cursor),
            AppReply::Failed(e) => Err(HubError::Failed(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// Who is subscribed to `topic` now: connections, client ids, anonymous connections
    /// (`tidings_core::presence`); in a cluster, every node's that answered within the
    /// gathering window, merged.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn presence(&self, topic: Topic) -> Result<Presence, HubError> {
        self.presence_as(topic, None).await
    }

    /// [`Hub::presence`] for a client with `viewer`'s grants (`GET /presence`): refused with
    /// [`HubError::Failed`] (`forbidden`) unless it may subscribe to the topic and sees it.
    ///
    /// # Errors
    /// [`HubError::Stopped`], [`HubError::Failed`].
    pub async fn presence_as(
        &self,
        topic: Topic,
        viewer: Option<Arc<Grants>>,
    ) -> Result<Presence, HubError> {
        match self.app(AppOp::Presence { topic, viewer }).await? {
            AppReply::Presence(presence) => Ok(presence),
            AppReply::Failed(e) => Err(HubError::Failed(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a message that is not retained to a connection, a client id or a named
    /// subscription; returns how many connections it reached.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn send(
        &self,
        to: Recipient,
        event: Option<Name>,
        payload: Payload,
    ) -> Result<usize, HubError> {
        count(self.app(AppOp::Send { to, event, payload }).await?)
    }

    /// Puts a connection in a room; returns whether it was not in it yet.
    ///
    /// # Errors
    /// [`HubError::Api`] for an unknown connection or past `max_rooms_per_conn`.
    pub async fn join(&self, conn: ConnId, room: Name) -> Result<bool, HubError> {
        boolean(self.app(AppOp::Join { conn, room }).await?)
    }

    /// Takes a connection out of a room; returns whether it was in it.
    ///
    /// # Errors
    /// [`HubError::Api`] for an unknown connection.
    pub async fn leave(&self, conn: ConnId, room: Name) -> Result<bool, HubError> {
        boolean(self.app(AppOp::Leave { conn, room }).await?)
    }

    /// Sends a message to every member of a room; returns how many it reached.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn emit_room(
        &self,
        room: Name,
        event: Option<Name>,
        payload: Payload,
    ) -> Result<usize, HubError> {
        count(
            self.app(AppOp::EmitRoom {
                room,
                event,
                payload,
            })
            .await?,
        )
    }

    /// The rooms that have members, sorted.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn rooms(&self) -> Result<Vec<Name>, HubError> {
        names(self.app(AppOp::Rooms).await?)
    }

    /// The members of a room, sorted.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn room_members(&self, room: Name) -> Result<Vec<ConnId>, HubError> {
        match self.app(AppOp::RoomMembers { room }).await? {
            AppReply::Conns(conns) => Ok(conns),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks a client something (emit-with-ack) and waits for its answer: the client's `reply`,
    /// or an error: `timeout` after `timeout` (default `ack_timeout`), `rejected` (the client
    /// answered with an error), `no_recipient` (no such connection, or it closed first),
    /// `limit_reached`, or `shutting_down` when the server stopped.
    ///
    /// # Errors
    /// The [`ProtocolError`] above.
    pub async fn request(
        &self,
        conn: ConnId,
        event: Name,
        payload: Payload,
        timeout: Option<Duration>,
    ) -> Result<Payload, ProtocolError> {
        let op = AppOp::Request {
            conn,
            event,
            payload,
            timeout,
        };
        let answer = self
            .call(|reply| Control::App(op, Answer::Ack(reply)))
            .await;
        answer.unwrap_or_else(|_| {
            Err(ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server has stopped",
            ))
        })
    }

    /// Asks the connection holding `client_id` something (emit-with-ack), on whichever node of
    /// a cluster it is connected to, and waits for its answer: the client's `reply`, or an
    /// error: `timeout` after `timeout` (default `ack_timeout`), `rejected`, `no_recipient`
    /// (no connection that can answer holds the id: none, or only SSE), `limit_reached`,
    /// `unavailable` (the other nodes cannot be reached), or `shutting_down`. See
    /// `tidings_core::ask`.
    ///
    /// # Errors
    /// The [`ProtocolError`] above.
    pub async fn request_client(
        &self,
        client_id: Name,
        event: Name,
        payload: Payload,
        timeout: Option<Duration>,
    ) -> Result<Payload, ProtocolError> {
        let op = AppOp::RequestClient {
            client_id,
            event,
            payload,
            timeout,
        };
        let answers = self.answers(op).await?;
        answers.into_iter().next().map_or_else(
            || {
                Err(ProtocolError::new(
                    ErrorCode::NoRecipient,
                    "nobody answered",
                ))
            },
            |answer| answer.result,
        )
    }

    /// Asks every member of a room something (emit-with-ack), on every node of a cluster, and
    /// waits for all of them: one [`ClientAnswer`] per member that can answer (SSE members
    /// cannot), each the client's `reply` or why there is none (`timeout` after `timeout`,
    /// default `ack_timeout`; `rejected`; `no_recipient` when it closed first). Members of a
    /// node that does not answer within `timeout` and two seconds are left out. See
    /// `tidings_core::ask`.
    ///
    /// # Errors
    /// `shutting_down` when the server stopped.
    pub async fn request_room(
        &self,
        room: Name,
        event: Name,
        payload: Payload,
        timeout: Option<Duration>,
    ) -> Result<Vec<ClientAnswer>, ProtocolError> {
        let op = AppOp::RequestRoom {
            room,
            event,
            payload,
            timeout,
        };
        self.answers(op).await
    }

    async fn answers(&self, op: AppOp) -> Result<Vec<ClientAnswer>, ProtocolError> {
        match self.app(op).await {
            Ok(AppReply::Answers(answers)) => Ok(answers),
            Ok(other) => Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!("unexpected answer {other:?}"),
            )),
            Err(_) => Err(ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server has stopped",
            )),
        }
    }

    /// Closes a connection with a reason sent to the client.
    ///
    /// # Errors
    /// [`HubError::Api`] for an unknown connection.
    pub async fn close(&self, conn: ConnId, reason: ProtocolError) -> Result<(), HubError> {
        let reason = Some(reason);
        self.app(AppOp::Close { conn, reason }).await.map(drop)
    }

    /// Closes a connection normally (etp's `Conn.Close`): what is queued for it is written,
    /// then a WebSocket close 1000 (an SSE stream just ends; an in-process subscription ends
    /// without a [`Subscription::closed_reason`]). Nothing is sent before the close, not even
    /// to native `/ws` clients (no error frame). The disconnect hooks run once the connection is
    /// gone ([`Disconnect::Normal`]). Closing a connection that is already closing does nothing.
    ///
    /// # Errors
    /// [`HubError::Api`] for an unknown connection.
    pub async fn close_normal(&self, conn: ConnId) -> Result<(), HubError> {
        let reason = None;
        self.app(AppOp::Close { conn, reason }).await.map(drop)
    }

    /// Pings a WebSocket connection (`/ws`, `/ws/bus`, `/etp`; etp's `Conn.Ping`) and waits for
    /// its pong: a WebSocket ping whose payload is the connection's counter (`1`, `2`, … as
    /// ASCII digits), written after what is already queued for it, answered when the pong with
    /// the same payload arrives (other pongs are not answers). Returns the round-trip time.
    ///
    /// # Errors
    /// `timeout` when no pong came within `timeout`, `no_recipient` for an unknown connection,
    /// one that is not a WebSocket (SSE, in-process) or that closed before its pong,
    /// `limit_reached` when its outgoing queue is full or too many of its pings are waiting,
    /// `shutting_down` when the server stopped.
    pub async fn ping(&self, conn: ConnId, timeout: Duration) -> Result<Duration, ProtocolError> {
        let (reply, answer) = oneshot::channel();
        if self.inner.ctl.send(Control::Ping(conn, reply)).is_err() {
            return Err(ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server has stopped",
            ));
        }
        let sleep = (self.inner.sleep)((self.inner.now)() + timeout);
        let answer = async { Some(answer.await) }.or(async {
            sleep.await;
            None
        });
        match answer.await {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ProtocolError::new(
                ErrorCode::NoRecipient,
                format!("connection {conn} closed before its pong"),
            )),
            None => Err(ProtocolError::new(
                ErrorCode::Timeout,
                format!("no pong from connection {conn} within {timeout:?}"),
            )),
        }
    }

    /// Counters (the broker's, and connections by kind).
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn stats(&self) -> Result<ServerStats, HubError> {
        let mut stats: ServerStats = self.call(Control::Stats).await?;
        stats.log = self.inner.file_log.as_ref().map(|l| l.stats());
        Ok(stats)
    }

    /// Writes and syncs what the file log holds and stops it, at the end of a server's shutdown
    /// (publishes asked afterwards are never answered). Nothing to do with the in-memory log.
    pub(crate) async fn close_log(&self) {
        if let Some(log) = &self.inner.file_log {
            log.flush_and_stop().await;
        }
    }

    /// Closes every connection with `shutting_down` (WebSocket close 1001, SSE streams end with
    /// a `tidings-error` event) and returns when they are closed or the shutdown grace period is
    /// over. The hub keeps working afterwards (publishes are still answered).
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn shutdown(&self) -> Result<(), HubError> {
        self.call(|reply| Control::App(AppOp::Shutdown, Answer::Stopped(reply)))
            .await
    }

    /// Registers the handler answering client requests named `name` (replacing any earlier one).
    /// It runs as a task of its own for each request; its result is the answer (`ok` with the
    /// payload, or the error). The broker answers `timeout` itself if the handler takes longer
    /// than `request_timeout`.
    pub fn on<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(ConnId, Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload, ProtocolError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |conn, payload| Box::pin(handler(conn, payload)));
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.handlers.insert(name.to_owned(), handler);
        }
    }

    /// Sets the connect hook: it sees every new `/ws`, `/ws/bus`, `/etp` and `/sse` connection
    /// before it opens and returns the rooms to put it in (joined in the same step as the
    /// connection opens).
    pub fn on_connect<F>(&self, hook: F)
    where
        F: Fn(&Connecting<'_>) -> Vec<Name> + Send + Sync + 'static,
    {
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.on_connect = Some(Arc::new(hook));
        }
    }

    /// Plugs in an authorizer: the application's own decision on every `/ws`, `/sse` and
    /// `/publish` request, made after token authentication (see `docs/AUTH.md`). It gets the
    /// request head and what the token (or anonymous access) granted, and returns the grants to
    /// use or a refusal (`AuthError::unauthorized` → 401, `AuthError::forbidden` → 403). It runs
    /// on the connection's task before the upgrade: keep it quick (no I/O).
    pub fn set_authorizer<F>(&self, authorizer: F)
    where
        F: Fn(&RequestHead, Authenticated) -> Result<Authenticated, AuthError>
            + Send
            + Sync
            + 'static,
    {
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.authorizer = Some(Arc::new(authorizer));
        }
    }

    /// Sets the lifecycle hook (pubsub-sse's hooks, and more): it sees every new and removed
    /// client id (a removal comes when a connection without a parked session closes, or when
    /// its reconnect window ends), declared topic and room (group), every subscribe and
    /// unsubscribe, and every publish. It runs on the driver task, for every event: keep it
    /// short (spawn slow work). Setting it turns the core's lifecycle events on.
    pub fn on_lifecycle<F>(&self, hook: F)
    where
        F: Fn(&Lifecycle) + Send + Sync + 'static,
    {
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.on_lifecycle = Some(Arc::new(hook));
        }
        let op = AppOp::LifecycleEvents(true);
        let _ = self.inner.ctl.send(Control::App(op, Answer::Nobody));
    }

    /// Changes the subscriptions of a client, connected (it gets `tidings-unsubscribed` and
    /// `tidings-subscribed` notices) or parked within its reconnect window; see
    /// [`Broker::update_subscriptions`]. The outer error is the driver being gone, the inner one
    /// the client's (`no_recipient`, `forbidden`, `limit_reached`).
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn update_subscriptions(
        &self,
        client_id: Name,
        add: Vec<Pattern>,
        remove: Vec<Pattern>,
    ) -> Result<Result<SubscriptionChange, ProtocolError>, HubError> {
        self.update_subscriptions_as(None, client_id, add, remove)
            .await
    }

    /// [`Hub::update_subscriptions`] at the request of someone with grants `by` (a client, not
    /// the application): a client id's principal's subscriptions change only at its own request
    /// ([`Broker::update_subscriptions_as`]).
    pub(crate) async fn update_subscriptions_as(
        &self,
        by: Option<Arc<Grants>>,
        client_id: Name,
        add: Vec<Pattern>,
        remove: Vec<Pattern>,
    ) -> Result<Result<SubscriptionChange, ProtocolError>, HubError> {
        let op = AppOp::UpdateSubscriptions {
            by,
            client_id,
            add,
            remove,
        };
        match self.app(op).await? {
            AppReply::Subscriptions(change) => Ok(Ok(change)),
            AppReply::Failed(e) => Ok(Err(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// Declares a topic as public, private to a client id, or a group topic of a room
    /// (pubsub-sse); see [`Broker::declare_topic`]. Returns whether anything changed.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn declare_topic(
        &self,
        topic: Topic,
        visibility: Visibility,
    ) -> Result<bool, HubError> {
        boolean(self.app(AppOp::DeclareTopic { topic, visibility }).await?)
    }

    /// Removes a declared topic (its exact subscriptions end, with notices); see
    /// [`Broker::remove_topic`]. Returns whether it was declared.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn remove_topic(&self, topic: Topic) -> Result<bool, HubError> {
        boolean(self.app(AppOp::RemoveTopic { topic }).await?)
    }

    /// Every declared topic with its visibility, sorted by name.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn declared_topics(&self) -> Result<Vec<(Topic, Visibility)>, HubError> {
        match self.app(AppOp::DeclaredTopics).await? {
            AppReply::Topics(topics) => Ok(topics),
            other => Err(unexpected(&other)),
        }
    }

    /// The client ids whose sessions are parked within their reconnect window, sorted.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn parked_sessions(&self) -> Result<Vec<Name>, HubError> {
        names(self.app(AppOp::ParkedSessions).await?)
    }

    /// Sets the error hook (etp's `OnError`): it sees every invalid frame a client sends (the
    /// client got an error frame where its protocol has one; etp clients get nothing). It runs
    /// on the driver task: keep it short.
    pub fn on_error<F>(&self, hook: F)
    where
        F: Fn(ConnId, &ProtocolError) + Send + Sync + 'static,
    {
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.on_error = Some(Arc::new(hook));
        }
    }

    /// Sets the refusal hook (etp's `OnError(nil, err)`): it sees every WebSocket upgrade
    /// request (`/ws`, `/ws/bus`, `/etp`) that is answered with an HTTP error instead of `101`,
    /// e.g. an `Origin` that is not allowed (403 `origin_not_allowed`), a failed authentication
    /// or bad upgrade headers. There is no connection, hence no [`ConnId`]: it gets the request
    /// head and the refusal. It runs on the request's task before the answer is written: keep
    /// it quick (no I/O).
    pub fn on_refused<F>(&self, hook: F)
    where
        F: Fn(&RequestHead, &Refusal) + Send + Sync + 'static,
    {
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.on_refused = Some(Arc::new(hook));
        }
    }

    /// Sets the handler of events and requests that no [`Hub::on`] handler is registered for
    /// (etp's `OnUnknownEvent`); it also gets the event name. Without it such requests are
    /// answered `no_handler` (an empty ack on etp, as etp does).
    pub fn on_unknown<F, Fut>(&self, handler: F)
    where
        F: Fn(ConnId, Name, Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Payload, ProtocolError>> + Send + 'static,
    {
        let handler: UnknownHandler =
            Arc::new(move |conn, name, payload| Box::pin(handler(conn, name, payload)));
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.on_unknown = Some(handler);
        }
    }

    /// How many connections are in a room (etp's `Len`).
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn room_len(&self, room: Name) -> Result<usize, HubError> {
        Ok(self.room_members(room).await?.len())
    }

    /// Sends an event to one connection (etp's `Emit`): on etp it arrives as `event||0||data`.
    /// Returns whether the connection was there.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub async fn emit(
        &self,
        conn: ConnId,
        event: Name,
        payload: Payload,
    ) -> Result<bool, HubError> {
        Ok(self
            .send(Recipient::Conn(conn), Some(event), payload)
            .await?
            > 0)
    }

    /// Sets the disconnect hook. It runs on the driver task: keep it short, spawn slow work.
    pub fn on_disconnect<F>(&self, hook: F)
    where
        F: Fn(ConnId) + Send + Sync + 'static,
    {
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.on_disconnect = Some(Arc::new(hook));
        }
    }

    /// Sets the disconnect hook that also gets why the connection ended ([`Disconnect`]:
    /// [`Disconnect::is_normal`] is etp's `IsNormalClose`). It runs on the driver task, after
    /// the [`Hub::on_disconnect`] hook if both are set: keep it short, spawn slow work.
    pub fn on_disconnect_reason<F>(&self, hook: F)
    where
        F: Fn(ConnId, &Disconnect) + Send + Sync + 'static,
    {
        if let Ok(mut registry) = self.inner.registry.write() {
            registry.on_disconnect_reason = Some(Arc::new(hook));
        }
    }

    /// Subscribes in-process to `patterns` (wildcards allowed), optionally resuming after
    /// `from`. The events arrive as a [`Stream`] of [`Received`] items.
    ///
    /// It is an internal connection whose codec hands over typed values
    /// ([`tidings_core::typed::TypedCodec`]): nothing is encoded or parsed on the way. It is
    /// subject to the same flow control as any
    /// connection: poll it, or past `max_queued_bytes` the slow-consumer policy applies (by
    /// default: it is caught up from the history later, with a gap notice for what was lost).
    /// It ends when the server shuts down or closes it; dropping it unsubscribes.
    ///
    /// # Errors
    /// [`HubError::Stopped`].
    pub fn subscribe(
        &self,
        patterns: Vec<Pattern>,
        from: Option<Cursor>,
    ) -> Result<Subscription, HubError> {
        let conn = self.next_conn_id();
        let (outbox, frames) = mailbox(self.outbox_frames());
        let opening = Opening {
            conn,
            kind: Kind::Internal,
            codec: Box::new(TypedCodec),
            grants: Arc::new(Grants::all()),
            outbox,
            kill: None,
            rooms: Vec::new(),
            commands: vec![Command::Subscribe(Subscribe {
                req: None,
                patterns,
                from,
                name: None,
            })],
        };
        self.inner
            .ctl
            .send(Control::Open(Box::new(opening)))
            .map_err(|_| HubError::Stopped)?;
        Ok(Subscription {
            writer: ConnWriter::new(conn, frames, self.inner.ctl.clone()),
            closed: None,
            ended: false,
        })
    }
}

/// What an in-process [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Received {
    /// A published event.
    Event {
        /// Its topic.
        topic: Topic,
        /// Its cursor (resume after it with `from`).
        cursor: Cursor,
        /// Its event name, if any.
        event: Option<Name>,
        /// Its data.
        payload: Payload,
    },
    /// Events may be missing between `from` and `to` (see `docs/PROTOCOL.md` §10).
    Gap(Gap),
}

/// An in-process subscription; see [`Hub::subscribe`]. Dropping it unsubscribes.
pub struct Subscription {
    writer: ConnWriter,
    closed: Option<ProtocolError>,
    /// The stream has ended (with `closed`, or normally without).
    ended: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("conn", &self.writer.conn())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The internal connection's id.
    pub fn conn(&self) -> ConnId {
        self.writer.conn()
    }

    /// Why the stream ended, once it has (e.g. `shutting_down`); `None` while it runs, and after
    /// a normal close ([`Hub::close_normal`]).
    pub fn closed_reason(&self) -> Option<&ProtocolError> {
        self.closed.as_ref()
    }
}

impl Stream for Subscription {
    type Item = Received;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.writer.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.ended = true;
                    this.closed = Some(ProtocolError::new(
                        ErrorCode::ShuttingDown,
                        "the subscription was dropped by the server",
                    ));
                }
                Poll::Ready(Some(ToConn::Close(reason))) => {
                    this.ended = true;
                    this.closed = reason;
                }
                Poll::Ready(Some(ToConn::Item(item))) => {
                    // Taken is consumed here (no socket to write to): credited at once.
                    this.writer.flushed();
                    if let Some(item) = received(&item) {
                        return Poll::Ready(Some(item));
                    }
                }
                // Never handed to in-process subscriptions (their codec makes typed items only).
                Poll::Ready(Some(ToConn::Frame(_) | ToConn::Ping(_) | ToConn::KeepAlive)) => {}
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self
            .writer
            .ctl()
            .send(Control::Closed(self.writer.conn(), Ended::Lost));
    }
}

/// What a subscription yields for a delivery (`None` for what it does not yield: messages,
/// which need a client id or a room, never reach it).
fn received(item: &Delivery) -> Option<Received> {
    match item {
        Delivery::Event {
            topic,
            cursor,
            event,
            payload,
            ..
        } => Some(Received::Event {
            topic: topic.clone(),
            cursor: *cursor,
            event: event.clone(),
            payload: payload.clone(),
        }),
        Delivery::Gap(gap) => Some(Received::Gap(gap.clone())),
        _ => None,
    }
}

/// The reply of an operation that counts connections.
fn count(reply: AppReply) -> Result<usize, HubError> {
    match reply {
        AppReply::Count(n) => Ok(n),
        other => Err(unexpected(&other)),
    }
}

/// The reply of an operation that answers yes or no.
fn boolean(reply: AppReply) -> Result<bool, HubError> {
    match reply {
        AppReply::Bool(b) => Ok(b),
        other => Err(unexpected(&other)),
    }
}

/// The reply of an operation that lists names.
fn names(reply: AppReply) -> Result<Vec<Name>, HubError> {
    match reply {
        AppReply::Names(names) => Ok(names),
        other => Err(unexpected(&other)),
    }
}

/// A reply of another kind than the operation's: a bug between the hub and the core, reported
/// as a stopped hub rather than a panic.
fn unexpected(reply: &AppReply) -> HubError {
    tracing::error!("bug: unexpected reply {reply:?}");
    HubError::Stopped
}

/// The start-up log line of a recovered file log: where, which epoch, what range, how long, and
/// anything that was cut or skipped.
fn announce_join(joined: &Joined) {
    let state = &joined.state;
    tracing::info!(
        stream = joined.stream,
        created = joined.created,
        epoch = format_args!("{:x}", state.epoch),
        first = state.first,
        last = state.head,
        messages = joined.messages,
        warmed = state.recent.len(),
        took_ms = joined.took.as_secs_f64() * 1000.0,
        "joined the cluster's stream"
    );
}

fn announce_recovery(recovery: &Recovery) {
    let state = &recovery.state;
    let last = state.recovered;
    tracing::info!(
        dir = %recovery.dir.display(),
        epoch = format_args!("{:x}", state.epoch),
        first = state.first,
        last,
        segments = recovery.segments,
        took_ms = recovery.took.as_secs_f64() * 1000.0,
        "history recovered"
    );
    if let Some(truncated) = &recovery.truncated {
        tracing::warn!("a torn write at the end of the log was cut: {truncated}");
    }
    for skipped in &recovery.skipped {
        tracing::error!("a corrupt segment was skipped (skip_corrupt): {skipped}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime of plain threads: a thread per task and per timer.
    #[derive(Clone)]
    struct Threads;

    impl Runtime for Threads {
        fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
            std::thread::spawn(move || futures_lite::future::block_on(task));
        }

        fn now(&self) -> Instant {
            Instant::now()
        }

        fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
            let (done, wait) = oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                let _ = done.send(());
            });
            async move {
                let _ = wait.await;
            }
        }
    }

    #[test]
    fn a_failing_driver_is_reported_and_stops_the_hub() {
        let hub = Hub::start(&Threads, &ServerConfig::default()).unwrap();
        futures_lite::future::block_on(async {
            let topic = Topic::parse("a", tidings_core::NameLimits::default()).unwrap();
            let publish = hub
                .publish(topic.clone(), None, Payload::text("x").unwrap())
                .await;
            assert!(publish.is_ok(), "{publish:?}");
            assert!(
                futures_lite::future::poll_once(hub.failed())
                    .await
                    .is_none(),
                "a running driver has not failed"
            );
            hub.inner.ctl.send(Control::Panic).unwrap();
            let too_late = async {
                Threads
                    .sleep_until(Instant::now() + Duration::from_secs(10))
                    .await;
                panic!("Hub::failed did not complete within 10 s of the driver's panic");
            };
            hub.failed().or(too_late).await;
            let publish = hub.publish(topic, None, Payload::text("y").unwrap()).await;
            assert!(matches!(publish, Err(HubError::Stopped)), "{publish:?}");
            // Every clone sees it.
            hub.clone().failed().await;
        });
    }
}
