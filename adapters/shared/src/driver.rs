//! The driver: the one task that owns the [`Broker`].
//!
//! Everything else talks to it over two channels:
//!
//! - **connections** (bounded): each connection task's `Open` (with the commands to run in the
//!   same step, e.g. the SSE subscription), its decoded client `Command`s and its `Closed`, in
//!   order. The bound is the backpressure on clients that send faster than the broker routes.
//! - **control** (unbounded, but every sender waits for an answer or is bounded by what the
//!   driver handed out): writers' `Flushed` credit, the application's operations from
//!   [`crate::Hub`], handler answers, in-process subscriptions.
//!
//! The loop (the contract of `core/README.md`): sleep until a message arrives or the broker's
//! `poll_timeout()` passes; read the clock once; handle a bounded batch of messages (fairness:
//! control first, then connections); call `handle_timeout` whenever the deadline has passed;
//! and after every `handle_*` drain `poll_output()` completely **without awaiting**:
//!
//! - `Transmit` is queued for the connection, and at the end of the step everything queued for
//!   it goes to its bounded outbox in one batch ([`crate::mailbox`]): one hand-over per
//!   connection and step instead of one per frame, which is what a fan-out costs. A full outbox
//!   means its writer cannot keep up (or is gone): the connection is dropped and `Closed` is fed.
//! - `Close` is queued the same way, after the frames before it (the connection writes what it
//!   has, closes with that reason, and reports `Closed`); if it has not done so within
//!   `close_grace`, the driver drops it.
//! - `Event`s go to the application: requests to the registered handlers (spawned tasks), ack
//!   results to the waiting [`crate::Hub::request`] callers, disconnects to the hook.
//!
//! `handle_input` errors for connections that are already gone (a late `Flushed` or `Closed`)
//! are expected and ignored.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::FutureExt as _;
use tidings_core::{
    AckId, ApiError, Broker, ConnId, ConnMap, Cursor, ErrorCode, Event, Input, Name, Output,
    Pattern, Payload, ProtocolError, Recipient, ReqId, SubscriptionChange, Topic, Visibility,
};

use crate::conn::{ConnMsg, Kind, Opening, Out};
use crate::mailbox::{Outbox, SendError};
use crate::metrics::ServerStats;
use crate::registry::{Disconnect, Registry};
use crate::runtime::Runtime;

/// Messages handled per channel per wakeup before timers are checked again.
const BATCH: usize = 256;

/// Everything else.
pub(crate) enum Ctl {
    Flushed(ConnId, usize),
    /// In-process subscriptions use this channel for all their messages.
    Open(Box<Opening>),
    Closed(ConnId),
    Publish {
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
        reply: oneshot::Sender<Cursor>,
    },
    Send {
        to: Recipient,
        event: Option<Name>,
        payload: Payload,
        reply: oneshot::Sender<usize>,
    },
    Join {
        conn: ConnId,
        room: Name,
        reply: oneshot::Sender<Result<bool, ApiError>>,
    },
    Leave {
        conn: ConnId,
        room: Name,
        reply: oneshot::Sender<Result<bool, ApiError>>,
    },
    EmitRoom {
        room: Name,
        event: Option<Name>,
        payload: Payload,
        reply: oneshot::Sender<usize>,
    },
    Rooms(oneshot::Sender<Vec<Name>>),
    RoomMembers(Name, oneshot::Sender<Vec<ConnId>>),
    Request {
        conn: ConnId,
        event: Name,
        payload: Payload,
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<Payload, ProtocolError>>,
    },
    /// A handler's answer to a client request.
    Reply {
        conn: ConnId,
        req: ReqId,
        result: Result<Payload, ProtocolError>,
    },
    /// A handler of an event that wants no answer finished.
    NotifyDone(ConnId),
    CloseConn {
        conn: ConnId,
        reason: ProtocolError,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    CloseNormal {
        conn: ConnId,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Ping {
        conn: ConnId,
        reply: oneshot::Sender<Result<Duration, ProtocolError>>,
    },
    Stats(oneshot::Sender<ServerStats>),
    Shutdown(oneshot::Sender<()>),
    LifecycleEvents(bool),
    UpdateSubscriptions {
        client_id: Name,
        add: Vec<Pattern>,
        remove: Vec<Pattern>,
        reply: oneshot::Sender<Result<SubscriptionChange, ProtocolError>>,
    },
    DeclareTopic {
        topic: Topic,
        visibility: Visibility,
        reply: oneshot::Sender<bool>,
    },
    RemoveTopic {
        topic: Topic,
        reply: oneshot::Sender<bool>,
    },
    DeclaredTopics(oneshot::Sender<Vec<(Topic, Visibility)>>),
    ParkedSessions(oneshot::Sender<Vec<Name>>),
    /// Makes the driver panic, as a bug would (tests of [`crate::Hub::failed`]).
    #[cfg(test)]
    Panic,
}

struct Entry {
    kind: Kind,
    outbox: Outbox<Out>,
    /// What this step queued for it, handed over at the step's end ([`Driver::hand_over`]).
    pending: VecDeque<Out>,
    /// `false` once the broker asked to close it: nothing more is handed out.
    open: bool,
    /// Never sent: dropping it (with the entry) stops the connection task at once.
    _kill: Option<oneshot::Sender<()>>,
    /// Why it is ending, once known (the server closed it, or the client sent a close).
    ending: Option<Disconnect>,
}

impl Entry {
    /// Queues `out` until the end of the step, noting `conn` in `dirty` if it is its first.
    fn queue(&mut self, conn: ConnId, out: Out, dirty: &mut Vec<ConnId>) {
        if self.pending.is_empty() {
            dirty.push(conn);
        }
        self.pending.push_back(out);
    }
}

struct ShutdownState {
    deadline: Instant,
    waiters: Vec<oneshot::Sender<()>>,
    done: bool,
}

/// How the driver ends up woken.
enum Wake {
    Ctl(Result<Ctl, flume::RecvError>),
    Conn(Result<ConnMsg, flume::RecvError>),
    Timer,
}

/// Timings the driver needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DriverTimings {
    pub close_grace: Duration,
    pub shutdown_grace: Duration,
}

/// The task owning the broker.
pub(crate) struct Driver<R: Runtime> {
    rt: R,
    broker: Broker,
    conns: ConnMap<Entry>,
    /// Connections with something pending, in the order they got it.
    dirty: Vec<ConnId>,
    /// `dirty`'s second buffer (swapped in while handing over, so neither allocates per step).
    handing: Vec<ConnId>,
    ctl_rx: flume::Receiver<Ctl>,
    conn_rx: flume::Receiver<ConnMsg>,
    /// For handler tasks' answers; weak so that the channel closes when every hub is gone.
    ctl_tx: flume::WeakSender<Ctl>,
    registry: Arc<RwLock<Registry>>,
    acks: HashMap<(ConnId, AckId), oneshot::Sender<Result<Payload, ProtocolError>>>,
    /// Connections asked to close, with the instant they get dropped if still open.
    closing: VecDeque<(Instant, ConnId)>,
    timings: DriverTimings,
    shutdown: Option<ShutdownState>,
    counts: [usize; 3],
    dead: u64,
    handled: u64,
    /// The connection whose `Closed` is being fed to the broker, and why it ended.
    ending: Option<(ConnId, Disconnect)>,
    /// Handlers running for events that want no answer, per connection (bounded like pending
    /// requests).
    notifies: HashMap<ConnId, usize>,
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(
        rt: R,
        broker: Broker,
        ctl: (flume::WeakSender<Ctl>, flume::Receiver<Ctl>),
        conn_rx: flume::Receiver<ConnMsg>,
        registry: Arc<RwLock<Registry>>,
        timings: DriverTimings,
    ) -> Self {
        Self {
            rt,
            broker,
            conns: ConnMap::default(),
            dirty: Vec::new(),
            handing: Vec::new(),
            ctl_rx: ctl.1,
            conn_rx,
            ctl_tx: ctl.0,
            registry,
            acks: HashMap::new(),
            closing: VecDeque::new(),
            timings,
            shutdown: None,
            counts: [0; 3],
            dead: 0,
            handled: 0,
            ending: None,
            notifies: HashMap::new(),
        }
    }

    /// Runs until every sender of both channels is gone.
    pub(crate) async fn run(mut self) {
        let (mut ctl_open, mut conn_open) = (true, true);
        while ctl_open || conn_open {
            let deadline = self.deadline();
            let wake = {
                let ctl = async {
                    if ctl_open {
                        Wake::Ctl(self.ctl_rx.recv_async().await)
                    } else {
                        std::future::pending().await
                    }
                };
                let conn = async {
                    if conn_open {
                        Wake::Conn(self.conn_rx.recv_async().await)
                    } else {
                        std::future::pending().await
                    }
                };
                let sleep = deadline.map(|at| self.rt.sleep_until(at));
                let timer = async {
                    match sleep {
                        Some(sleep) => sleep.await,
                        None => std::future::pending().await,
                    }
                    Wake::Timer
                };
                ctl.or(conn).or(timer).await
            };
            let now = Instant::now();
            match wake {
                Wake::Ctl(Ok(msg)) => self.ctl(now, msg),
                Wake::Conn(Ok(msg)) => self.conn_msg(now, msg),
                Wake::Ctl(Err(_)) => ctl_open = false,
                Wake::Conn(Err(_)) => conn_open = false,
                Wake::Timer => {}
            }
            let mut handled = 0;
            while handled < BATCH {
                let Ok(msg) = self.ctl_rx.try_recv() else {
                    break;
                };
                self.ctl(now, msg);
                handled += 1;
            }
            while handled < 2 * BATCH {
                let Ok(msg) = self.conn_rx.try_recv() else {
                    break;
                };
                self.conn_msg(now, msg);
                handled += 1;
            }
            self.tick(now);
            self.hand_over(now);
            if handled >= BATCH {
                // Busy: let the connection tasks run (on a single-threaded executor nothing
                // else would, as the channels never make this task wait).
                futures_lite::future::yield_now().await;
            }
        }
        tracing::debug!("driver: every sender is gone; stopping");
    }

    /// The earliest instant something is due.
    fn deadline(&self) -> Option<Instant> {
        let shutdown = self
            .shutdown
            .as_ref()
            .filter(|s| !s.done)
            .map(|s| s.deadline);
        [
            self.broker.poll_timeout(),
            self.closing.front().map(|(at, _)| *at),
            shutdown,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers: the broker's, close deadlines, the shutdown deadline.
    fn tick(&mut self, now: Instant) {
        if self.broker.poll_timeout().is_some_and(|at| at <= now) {
            self.broker.handle_timeout(now);
            self.drain(now);
        }
        while let Some(&(at, conn)) = self.closing.front() {
            if at > now {
                break;
            }
            self.closing.pop_front();
            if self.conns.get(&conn).is_some_and(|e| !e.open) {
                tracing::debug!(%conn, "did not close within the grace period: dropped");
                self.dead(now, conn);
            }
        }
        let Some(shutdown) = &mut self.shutdown else {
            return;
        };
        if shutdown.done {
            return;
        }
        let remaining = self.conns.values().filter(|e| e.kind != Kind::Internal);
        let remaining = remaining.count();
        if remaining > 0 && now < shutdown.deadline {
            return;
        }
        if remaining > 0 {
            tracing::warn!(
                remaining,
                "shutdown: dropping connections that did not close in time"
            );
        }
        shutdown.done = true;
        for waiter in shutdown.waiters.drain(..) {
            let _ = waiter.send(());
        }
        let left: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in left {
            self.dead(now, conn);
        }
    }

    fn conn_msg(&mut self, now: Instant, msg: ConnMsg) {
        match msg {
            ConnMsg::Open(opening) => self.open(now, *opening),
            ConnMsg::Command(conn, cmd) => self.feed(now, Input::Command { conn, cmd }),
            ConnMsg::Closed(conn, code) => {
                if let Some(entry) = self.conns.get_mut(&conn)
                    && entry.ending.is_none()
                {
                    entry.ending =
                        Some(code.map_or(Disconnect::Lost, |c| Disconnect::Client(Some(c))));
                }
                self.closed(now, conn);
            }
        }
    }

    fn ctl(&mut self, now: Instant, msg: Ctl) {
        match msg {
            Ctl::Flushed(conn, bytes) => {
                if self.conns.contains_key(&conn) {
                    self.feed(now, Input::Flushed { conn, bytes });
                }
            }
            Ctl::Open(opening) => self.open(now, *opening),
            Ctl::Closed(conn) => self.closed(now, conn),
            Ctl::Publish {
                topic,
                event,
                payload,
                reply,
            } => {
                let cursor = self.broker.publish(now, topic, event, payload);
                let _ = reply.send(cursor);
                self.drain(now);
            }
            Ctl::Send {
                to,
                event,
                payload,
                reply,
            } => {
                let n = self.broker.send(now, &to, event.as_ref(), &payload);
                let _ = reply.send(n);
                self.drain(now);
            }
            Ctl::Join { conn, room, reply } => {
                let _ = reply.send(self.broker.join(conn, room));
                self.drain(now);
            }
            Ctl::Leave { conn, room, reply } => {
                let _ = reply.send(self.broker.leave(conn, &room));
                self.drain(now);
            }
            Ctl::EmitRoom {
                room,
                event,
                payload,
                reply,
            } => {
                let n = self.broker.emit_room(now, &room, event.as_ref(), &payload);
                let _ = reply.send(n);
                self.drain(now);
            }
            Ctl::Rooms(reply) => {
                let _ = reply.send(self.broker.rooms().into_iter().cloned().collect());
            }
            Ctl::RoomMembers(room, reply) => {
                let _ = reply.send(self.broker.room_members(&room));
            }
            Ctl::Request {
                conn,
                event,
                payload,
                timeout,
                reply,
            } => {
                match self.broker.request(now, conn, &event, &payload, timeout) {
                    Ok(ack) => {
                        self.acks.insert((conn, ack), reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(api_to_protocol(&e)));
                    }
                }
                self.drain(now);
            }
            Ctl::Reply { conn, req, result } => {
                self.handled += 1;
                self.broker.reply(now, conn, req, result);
                self.drain(now);
            }
            Ctl::NotifyDone(conn) => {
                if let Some(n) = self.notifies.get_mut(&conn) {
                    *n -= 1;
                    if *n == 0 {
                        self.notifies.remove(&conn);
                    }
                }
            }
            Ctl::CloseConn {
                conn,
                reason,
                reply,
            } => {
                let _ = reply.send(self.broker.close_conn(now, conn, reason));
                self.drain(now);
            }
            Ctl::CloseNormal { conn, reply } => {
                let _ = reply.send(self.close_normal(now, conn));
            }
            Ctl::Ping { conn, reply } => self.ping(conn, reply),
            Ctl::Stats(reply) => {
                let _ = reply.send(ServerStats {
                    broker: self.broker.stats(),
                    ws_connections: self.counts[Kind::Ws.index()],
                    sse_connections: self.counts[Kind::Sse.index()],
                    internal_connections: self.counts[Kind::Internal.index()],
                    dead_connections: self.dead,
                    handled_requests: self.handled,
                    epoch: self.broker.config().epoch,
                });
            }
            Ctl::LifecycleEvents(on) => self.broker.set_lifecycle_events(on),
            Ctl::UpdateSubscriptions {
                client_id,
                add,
                remove,
                reply,
            } => {
                let result = self
                    .broker
                    .update_subscriptions(now, &client_id, add, remove);
                let _ = reply.send(result);
                self.drain(now);
            }
            Ctl::DeclareTopic {
                topic,
                visibility,
                reply,
            } => {
                let _ = reply.send(self.broker.declare_topic(now, topic, visibility));
                self.drain(now);
            }
            Ctl::RemoveTopic { topic, reply } => {
                let _ = reply.send(self.broker.remove_topic(now, &topic));
                self.drain(now);
            }
            Ctl::DeclaredTopics(reply) => {
                let _ = reply.send(self.broker.declared_topics());
            }
            Ctl::ParkedSessions(reply) => {
                let _ = reply.send(self.broker.parked_sessions().into_iter().cloned().collect());
            }
            #[cfg(test)]
            Ctl::Panic => panic!("the driver panics on purpose (a test)"),
            Ctl::Shutdown(reply) => match &mut self.shutdown {
                Some(state) if state.done => {
                    let _ = reply.send(());
                }
                Some(state) => state.waiters.push(reply),
                None => {
                    tracing::info!(
                        connections = self.conns.len(),
                        "shutting down: closing every connection"
                    );
                    self.shutdown = Some(ShutdownState {
                        deadline: now + self.timings.shutdown_grace,
                        waiters: vec![reply],
                        done: false,
                    });
                    self.broker.shutdown(now);
                    self.drain(now);
                }
            },
        }
    }

    fn open(&mut self, now: Instant, opening: Opening) {
        let Opening {
            conn,
            kind,
            codec,
            grants,
            outbox,
            kill,
            rooms,
            commands,
        } = opening;
        if self.conns.contains_key(&conn) {
            tracing::error!(%conn, "adapter bug: connection id opened twice");
            return;
        }
        self.conns.insert(
            conn,
            Entry {
                kind,
                outbox,
                pending: VecDeque::new(),
                open: true,
                _kill: kill,
                ending: None,
            },
        );
        self.counts[kind.index()] += 1;
        self.feed(
            now,
            Input::Open {
                conn,
                codec,
                grants,
            },
        );
        for room in rooms {
            if let Err(e) = self.broker.join(conn, room) {
                tracing::debug!(%conn, "connect hook: {e}");
            }
        }
        for cmd in commands {
            self.feed(now, Input::Command { conn, cmd });
        }
        if self.shutdown.is_some() && self.conns.contains_key(&conn) {
            let reason = ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; reconnect and resume from your cursor",
            );
            let _ = self.broker.close_conn(now, conn, reason);
            self.drain(now);
        }
    }

    /// The connection task ended (after a close, or the peer went away).
    fn closed(&mut self, now: Instant, conn: ConnId) {
        if let Some(entry) = self.conns.remove(&conn) {
            self.forget(&entry);
            self.ended(now, conn, entry.ending.clone());
        }
    }

    /// Feeds `Closed` to the broker; its `Disconnected` event (handled in the same drain) gets
    /// `ending` as the reason.
    fn ended(&mut self, now: Instant, conn: ConnId, ending: Option<Disconnect>) {
        self.ending = Some((conn, ending.unwrap_or(Disconnect::Lost)));
        self.feed(now, Input::Closed { conn });
        self.ending = None;
    }

    /// Hands a ping to a WebSocket connection's task, which answers `reply` when the pong comes.
    fn ping(&mut self, conn: ConnId, reply: oneshot::Sender<Result<Duration, ProtocolError>>) {
        let refuse = |code, message: String| Err(ProtocolError::new(code, message));
        let entry = match self.conns.get_mut(&conn) {
            None => {
                let _ = reply.send(refuse(
                    ErrorCode::NoRecipient,
                    format!("there is no connection {conn}"),
                ));
                return;
            }
            Some(entry) if !matches!(entry.kind, Kind::Ws | Kind::Compat) => {
                let _ = reply.send(refuse(
                    ErrorCode::NoRecipient,
                    format!("connection {conn} is not a WebSocket: it cannot be pinged"),
                ));
                return;
            }
            Some(entry) => entry,
        };
        if !entry.open {
            let _ = reply.send(refuse(
                ErrorCode::NoRecipient,
                format!("connection {conn} is closing"),
            ));
            return;
        }
        // If the connection is dropped instead (its outbox full, or gone), the reply is dropped,
        // which the hub reports as gone.
        self.queue(conn, Out::Ping(reply));
    }

    /// Queues `out` for `conn` (if it has an entry) until the end of the step.
    fn queue(&mut self, conn: ConnId, out: Out) {
        if let Some(entry) = self.conns.get_mut(&conn) {
            entry.queue(conn, out, &mut self.dirty);
        }
    }

    /// The end of a step: every connection gets what the step queued for it, in one batch.
    /// Connections whose outbox is full (or whose task is gone) are dropped, which may queue
    /// more for others (their `Closed` is fed to the broker), so this runs until nothing is left.
    fn hand_over(&mut self, now: Instant) {
        let mut refused = Vec::new();
        while !self.dirty.is_empty() {
            std::mem::swap(&mut self.dirty, &mut self.handing);
            for conn in self.handing.drain(..) {
                let Some(entry) = self.conns.get_mut(&conn) else {
                    continue; // dropped meanwhile
                };
                if let Err(e) = entry.outbox.send_batch(&mut entry.pending) {
                    if e == SendError::Full {
                        tracing::info!(%conn, "its outgoing queue is full: dropped");
                    }
                    refused.push(conn);
                }
            }
            for conn in refused.drain(..) {
                self.dead(now, conn);
            }
        }
    }

    /// Closes a connection normally (WebSocket 1000): nothing more is handed out, what is queued
    /// is written, then the close. The broker learns of it when the connection reports `Closed`.
    fn close_normal(&mut self, now: Instant, conn: ConnId) -> Result<(), ApiError> {
        let entry = self
            .conns
            .get_mut(&conn)
            .ok_or(ApiError::UnknownConn(conn))?;
        if !entry.open {
            return Ok(()); // already closing
        }
        tracing::debug!(%conn, "closing normally");
        entry.open = false;
        entry.ending.get_or_insert(Disconnect::Normal);
        self.closing_with(now, conn, Out::Close(None));
        Ok(())
    }

    /// Drops a connection without waiting for it: its task stops at once. (An in-process
    /// subscription's stream ends once it has read what it was handed.)
    fn dead(&mut self, now: Instant, conn: ConnId) {
        if let Some(mut entry) = self.conns.remove(&conn) {
            // An in-process subscription still reads what it was handed (its last frames, the
            // close); a connection task is stopped by `_kill`, so this is lost on it.
            let _ = entry.outbox.send_batch(&mut entry.pending);
            self.forget(&entry);
            if entry.kind != Kind::Internal {
                self.dead += 1;
            }
            let ending = entry.ending.clone();
            drop(entry);
            self.ended(now, conn, ending);
        }
    }

    /// Bookkeeping of a connection that is gone.
    fn forget(&mut self, entry: &Entry) {
        self.counts[entry.kind.index()] -= 1;
    }

    /// `handle_input`, then the drain. An `Err` means the connection is already gone (late
    /// `Flushed` or `Closed`), which is expected.
    fn feed(&mut self, now: Instant, input: Input) {
        if let Err(e) = self.broker.handle_input(now, input) {
            tracing::trace!("ignored input: {e}");
        }
        self.drain(now);
    }

    /// Every output, in order, without awaiting anything.
    fn drain(&mut self, now: Instant) {
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, payload } => self.queue_open(conn, Out::Frame(payload)),
                Output::KeepAlive { conn } => self.queue_open(conn, Out::KeepAlive),
                Output::Deliver { conn, item } => self.queue_open(conn, Out::Item(item)),
                Output::Close { conn, reason } => self.close(now, conn, reason),
                Output::Event(event) => self.event(now, *event),
                other => tracing::debug!("unhandled output: {other:?}"),
            }
        }
    }

    /// Queues a frame for a connection that is not closing (once the broker asked to close it,
    /// nothing more is handed out).
    fn queue_open(&mut self, conn: ConnId, out: Out) {
        if let Some(entry) = self.conns.get_mut(&conn)
            && entry.open
        {
            entry.queue(conn, out, &mut self.dirty);
        }
    }

    fn close(&mut self, now: Instant, conn: ConnId, reason: ProtocolError) {
        let Some(entry) = self.conns.get_mut(&conn) else {
            return;
        };
        if !entry.open {
            return;
        }
        tracing::debug!(%conn, "closing: {reason}");
        entry.open = false;
        entry
            .ending
            .get_or_insert_with(|| Disconnect::Server(reason.clone()));
        self.closing_with(now, conn, Out::Close(Some(reason)));
    }

    /// Queues the close of a connection that stopped taking frames; in-process subscriptions
    /// are dropped at once (they end after reading it), others get `close_grace` to close.
    fn closing_with(&mut self, now: Instant, conn: ConnId, close: Out) {
        self.queue(conn, close);
        if self
            .conns
            .get(&conn)
            .is_some_and(|e| e.kind == Kind::Internal)
        {
            self.dead(now, conn);
        } else {
            self.closing
                .push_back((now + self.timings.close_grace, conn));
        }
    }

    fn event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Disconnected { conn } => {
                let (hook, reason_hook) = self
                    .registry
                    .read()
                    .map(|r| (r.on_disconnect.clone(), r.on_disconnect_reason.clone()))
                    .unwrap_or_default();
                if let Some(hook) = hook
                    && std::panic::catch_unwind(AssertUnwindSafe(|| hook(conn))).is_err()
                {
                    tracing::error!(%conn, "the disconnect hook panicked");
                }
                if let Some(hook) = reason_hook {
                    let reason = match &self.ending {
                        Some((c, reason)) if *c == conn => reason.clone(),
                        _ => Disconnect::Lost,
                    };
                    if std::panic::catch_unwind(AssertUnwindSafe(|| hook(conn, &reason))).is_err() {
                        tracing::error!(%conn, "the disconnect hook panicked");
                    }
                }
            }
            Event::Request {
                conn,
                req,
                event,
                payload,
            } => {
                let handler = self.registry.read().ok().and_then(|r| r.handler(&event));
                let Some(handler) = handler else {
                    let error = ProtocolError::new(
                        ErrorCode::NoHandler,
                        format!("the server has no handler for {:?}", event.as_str()),
                    );
                    self.broker.reply(now, conn, req, Err(error));
                    return; // the drain in progress picks up the answer
                };
                let Some(ctl) = self.ctl_tx.upgrade() else {
                    return;
                };
                let call = std::panic::catch_unwind(AssertUnwindSafe(|| handler(conn, payload)));
                self.rt.spawn(async move {
                    let result = match call {
                        Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                        Err(panic) => Err(panic),
                    };
                    let result = result.unwrap_or_else(|_| {
                        tracing::error!(%conn, event = event.as_str(), "a request handler panicked");
                        Err(ProtocolError::new(
                            ErrorCode::Rejected,
                            "the handler failed",
                        ))
                    });
                    let _ = ctl.send_async(Ctl::Reply { conn, req, result }).await;
                });
            }
            Event::Notify {
                conn,
                event,
                payload,
            } => self.notify(conn, event, payload),
            Event::AckResult { conn, ack, result } => {
                if let Some(waiter) = self.acks.remove(&(conn, ack)) {
                    let _ = waiter.send(result);
                }
            }
            Event::Lifecycle(event) => {
                let hook = self
                    .registry
                    .read()
                    .ok()
                    .and_then(|r| r.on_lifecycle.clone());
                if let Some(hook) = hook
                    && std::panic::catch_unwind(AssertUnwindSafe(|| hook(&event))).is_err()
                {
                    tracing::error!("the lifecycle hook panicked");
                }
            }
            Event::SessionExpired { client_id } => {
                tracing::debug!(client_id = client_id.as_str(), "session expired");
            }
            Event::SlowConsumer { conn, policy } => {
                tracing::debug!(%conn, ?policy, "slow consumer");
            }
            Event::ProtocolViolation { conn, error } => {
                tracing::debug!(%conn, "protocol violation: {error}");
                self.on_error(conn, &error);
            }
            other => tracing::debug!("unhandled event: {other:?}"),
        }
    }
}

impl<R: Runtime> Driver<R> {
    /// Runs the handler of an event that wants no answer (etp ack id 0, ksbus `pub_id` to the
    /// server): its result is dropped. At most `max_pending_requests` run per connection; more
    /// are dropped and reported to the error hook.
    fn notify(&mut self, conn: ConnId, event: Name, payload: Payload) {
        let handler = self.registry.read().ok().and_then(|r| r.handler(&event));
        let Some(handler) = handler else {
            tracing::debug!(%conn, event = event.as_str(), "no handler for the event");
            return;
        };
        let max = self.broker.config().limits.max_pending_requests;
        let running = self.notifies.entry(conn).or_default();
        if *running >= max {
            let error = ProtocolError::new(
                ErrorCode::LimitReached,
                format!(
                    "at most {max} events may be handled at once per connection; dropped {:?}",
                    event.as_str()
                ),
            );
            self.on_error(conn, &error);
            return;
        }
        *running += 1;
        let Some(ctl) = self.ctl_tx.upgrade() else {
            return;
        };
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| handler(conn, payload)));
        self.rt.spawn(async move {
            let result = match call {
                Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await.is_ok(),
                Err(_) => false,
            };
            if !result {
                tracing::error!(%conn, event = event.as_str(), "an event handler panicked");
            }
            let _ = ctl.send_async(Ctl::NotifyDone(conn)).await;
        });
    }

    /// Reports a client's protocol violation to the application's error hook.
    fn on_error(&self, conn: ConnId, error: &ProtocolError) {
        let hook = self.registry.read().ok().and_then(|r| r.on_error.clone());
        if let Some(hook) = hook
            && std::panic::catch_unwind(AssertUnwindSafe(|| hook(conn, error))).is_err()
        {
            tracing::error!(%conn, "the error hook panicked");
        }
    }
}

/// The application-facing error for an [`ApiError`] of a server request.
pub(crate) fn api_to_protocol(e: &ApiError) -> ProtocolError {
    let code = match e {
        ApiError::UnknownConn(_) => ErrorCode::NoRecipient,
        ApiError::LimitReached { .. } => ErrorCode::LimitReached,
        _ => ErrorCode::Rejected,
    };
    ProtocolError::new(code, e.to_string())
}
