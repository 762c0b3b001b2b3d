//! The driver: the one task that owns the [`Broker`], a router between it and everything else.
//!
//! It holds no policy (the core decides: client ids, close grace, the shutdown deadline, the
//! limits of handlers), only the loop of `core/README.md` and the plumbing around it. Everything
//! talks to it over two channels, and the external log (if any) over a third:
//!
//! - **connections** (bounded): each connection task's `Open` (with the commands to run in the
//!   same step, e.g. the SSE subscription), its decoded client `Command`s and its `Closed`, in
//!   order. The bound is the backpressure on clients that send faster than the broker routes.
//! - **control** (unbounded, but every sender waits for an answer or is bounded by what the
//!   driver handed out): writers' `Flushed` credit, in-process subscriptions, and the
//!   application's operations ([`AppOp`], from [`crate::Hub`] and from handlers' answers).
//! - **log replies** ([`LogLink`]): positions of appends, pages of reads, retention moves; taken
//!   first in a step, since they release publishes waiting to be delivered.
//!
//! The loop: sleep until a message arrives or the broker's `poll_timeout()` passes; read the
//! clock once ([`Runtime::now`]); handle a bounded batch of messages (control first, then
//! connections); call `handle_timeout` when the deadline has passed; and after every `handle_*`
//! drain `poll_output()` completely **without awaiting**:
//!
//! - frames (`Transmit`, `KeepAlive`, `Deliver`) and `Close` are queued for the connection, and
//!   at the end of the step everything queued for it goes to its bounded outbox in one batch
//!   ([`crate::mailbox`]): one hand-over per connection and step instead of one per frame. A full
//!   outbox means its writer cannot keep up (or is gone): the connection is dropped.
//! - `Drop` (a connection that did not close in time) stops the connection's task at once.
//! - `AppEvent`s go to the application ([`crate::events`]).
//! - `Log` requests are collected and handed to the log together at the end of the step.
//!
//! `handle_input` errors for connections that are already gone (a late `Flushed` or `Closed`)
//! are expected and ignored.

use std::time::Instant;

use futures_lite::FutureExt as _;
use tidings_core::log::{LogReply, LogRequest};
use tidings_core::{AppOp, AppReply, Broker, ConnId, ErrorCode, Input, Output, ProtocolError};

use crate::conn::{Ended, FromConn, Kind, Opening, PingReply, ToConn};
use crate::conn_table::ConnTable;
use crate::control::{Answer, Control};
use crate::events::AppEvents;
use crate::registry::Disconnect;
use crate::runtime::Runtime;

/// Messages handled per channel per wakeup before timers are checked again.
const BATCH: usize = 256;

/// How the driver ends up woken.
enum Wake {
    Control(Result<Control, flume::RecvError>),
    Conn(Result<FromConn, flume::RecvError>),
    Log(Result<LogReply, flume::RecvError>),
    Relay(Result<tidings_core::relay::RelayReply, flume::RecvError>),
    Timer,
}

/// The task owning the broker.
pub(crate) struct Driver<R: Runtime> {
    rt: R,
    broker: Broker,
    conns: ConnTable,
    ctl_rx: flume::Receiver<Control>,
    conn_rx: flume::Receiver<FromConn>,
    app: AppEvents,
    /// Client requests answered by an application handler.
    handled: u64,
    /// The connection whose `Closed` is being fed to the broker, and why it ended.
    ending: Option<(ConnId, Disconnect)>,
    /// The external log, if the broker uses one.
    log: Option<LogLink>,
    /// Its requests of this step, handed over together at the step's end.
    log_out: Vec<LogRequest>,
    /// The relay's requests of this step (a cluster), handed over together at the step's end.
    relay_out: Vec<tidings_core::relay::RelayRequest>,
}

/// The driver's link to an external log (`LogMode::External`): where the broker's requests go
/// (never blocking) and where the log's replies come from.
pub struct LogLink {
    /// Takes a step's requests, in order; must not block (the log does its I/O on threads of
    /// its own).
    pub requests: Box<dyn FnMut(Vec<LogRequest>) + Send>,
    /// The log's replies, in the order it made them.
    pub replies: flume::Receiver<LogReply>,
    /// With a shared log: the relay of messages that are not retained to the other nodes.
    pub relay: Option<RelayLink>,
}

/// The driver's link to the other nodes of a cluster for messages that are not retained
/// (`tidings_core::relay`).
pub struct RelayLink {
    /// Takes a step's requests, in order; must not block.
    pub requests: Box<dyn FnMut(Vec<tidings_core::relay::RelayRequest>) + Send>,
    /// What the relay answers or brings from other nodes.
    pub replies: flume::Receiver<tidings_core::relay::RelayReply>,
}

impl<R: Runtime> Driver<R> {
    pub(crate) fn new(
        rt: R,
        broker: Broker,
        ctl_rx: flume::Receiver<Control>,
        conn_rx: flume::Receiver<FromConn>,
        app: AppEvents,
        log: Option<LogLink>,
    ) -> Self {
        Self {
            log,
            log_out: Vec::new(),
            relay_out: Vec::new(),
            rt,
            broker,
            conns: ConnTable::default(),
            ctl_rx,
            conn_rx,
            app,
            handled: 0,
            ending: None,
        }
    }

    /// Runs until every sender of both channels is gone.
    pub(crate) async fn run(mut self) {
        let (mut ctl_open, mut conn_open) = (true, true);
        let mut log_replies = self.log.as_ref().map(|l| l.replies.clone());
        let mut relayed = self
            .log
            .as_ref()
            .and_then(|l| l.relay.as_ref())
            .map(|r| r.replies.clone());
        while ctl_open || conn_open {
            let sleep = self.broker.poll_timeout().map(|at| self.rt.sleep_until(at));
            let wake = {
                let ctl = async {
                    if ctl_open {
                        Wake::Control(self.ctl_rx.recv_async().await)
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
                let timer = async {
                    match sleep {
                        Some(sleep) => sleep.await,
                        None => std::future::pending().await,
                    }
                    Wake::Timer
                };
                let log = async {
                    match &log_replies {
                        Some(rx) => Wake::Log(rx.recv_async().await),
                        None => std::future::pending().await,
                    }
                };
                let relay = async {
                    match &relayed {
                        Some(rx) => Wake::Relay(rx.recv_async().await),
                        None => std::future::pending().await,
                    }
                };
                // The log first: its answers release publishes waiting to be delivered.
                log.or(relay).or(ctl).or(conn).or(timer).await
            };
            let now = self.rt.now();
            match wake {
                Wake::Control(Ok(msg)) => self.ctl(now, msg),
                Wake::Conn(Ok(msg)) => self.conn_msg(now, msg),
                Wake::Log(Ok(reply)) => self.feed(now, Input::Log(reply)),
                Wake::Log(Err(_)) => {
                    tracing::error!("the log stopped answering: publishes wait until a restart");
                    self.log = None;
                    log_replies = None;
                }
                Wake::Relay(Ok(reply)) => self.feed(now, Input::Relay(reply)),
                Wake::Relay(Err(_)) => {
                    tracing::error!("the relay to other nodes stopped: messages stay on this node");
                    relayed = None;
                }
                Wake::Control(Err(_)) => ctl_open = false,
                Wake::Conn(Err(_)) => conn_open = false,
                Wake::Timer => {}
            }
            let handled = self.step(now);
            if handled >= BATCH {
                // Busy: let the connection tasks run (on a single-threaded executor nothing
                // else would, as the channels never make this task wait).
                futures_lite::future::yield_now().await;
            }
        }
        tracing::debug!("driver: every sender is gone; stopping");
    }

    /// The rest of a step: a bounded batch of what is waiting, the timers, the hand-over.
    /// Returns how many messages it handled.
    fn step(&mut self, now: Instant) -> usize {
        let mut handled = 0;
        while handled < BATCH
            && let Some(Ok(reply)) = self.log.as_ref().map(|l| l.replies.try_recv())
        {
            self.feed(now, Input::Log(reply));
            handled += 1;
        }
        while handled < BATCH
            && let Some(Ok(reply)) = self
                .log
                .as_ref()
                .and_then(|l| l.relay.as_ref())
                .map(|r| r.replies.try_recv())
        {
            self.feed(now, Input::Relay(reply));
            handled += 1;
        }
        while handled < BATCH
            && let Ok(msg) = self.ctl_rx.try_recv()
        {
            self.ctl(now, msg);
            handled += 1;
        }
        while handled < 2 * BATCH
            && let Ok(msg) = self.conn_rx.try_recv()
        {
            self.conn_msg(now, msg);
            handled += 1;
        }
        if self.broker.poll_timeout().is_some_and(|at| at <= now) {
            self.broker.handle_timeout(now);
            self.drain(now);
        }
        // The step's publishes go to the log together: written at once, answered at once, and
        // delivered in one later step, with one hand-over per connection as without a log.
        if !self.log_out.is_empty() {
            let reqs = std::mem::take(&mut self.log_out);
            match &mut self.log {
                Some(log) => (log.requests)(reqs),
                None => tracing::error!("adapter bug: {} log requests without a log", reqs.len()),
            }
        }
        if !self.relay_out.is_empty() {
            let reqs = std::mem::take(&mut self.relay_out);
            match self.log.as_mut().and_then(|l| l.relay.as_mut()) {
                Some(relay) => (relay.requests)(reqs),
                None => {
                    tracing::error!("adapter bug: {} relay requests without a relay", reqs.len())
                }
            }
        }
        self.hand_over(now);
        handled
    }

    fn conn_msg(&mut self, now: Instant, msg: FromConn) {
        match msg {
            FromConn::Open(opening) => self.open(now, *opening),
            FromConn::Command(conn, cmd) => self.feed(now, Input::Command { conn, cmd }),
            FromConn::Closed(conn, ended) => self.conn_ended(now, conn, ended),
        }
    }

    /// A connection's task (or SSE body) ended, and how.
    fn conn_ended(&mut self, now: Instant, conn: ConnId, ended: Ended) {
        if ended == Ended::WriteTimeout {
            // Not a protocol event the core sees: counted and told here.
            tracing::info!(%conn, "dropped: it did not take what was written to it in time");
            self.conns.write_timeouts += 1;
        }
        if let Some(entry) = self.conns.get_mut(conn) {
            entry.ending.get_or_insert(match ended {
                Ended::Peer(code) => Disconnect::Client(Some(code)),
                Ended::Lost => Disconnect::Lost,
                Ended::WriteTimeout => Disconnect::WriteTimeout,
            });
        }
        self.closed(now, conn);
    }

    fn ctl(&mut self, now: Instant, msg: Control) {
        match msg {
            Control::Flushed(conn, bytes) => {
                if self.conns.get(conn).is_some() {
                    self.feed(now, Input::Flushed { conn, bytes });
                }
            }
            Control::Open(opening) => self.open(now, *opening),
            Control::Closed(conn, ended) => self.conn_ended(now, conn, ended),
            Control::App(op, answer) => self.app_op(now, op, answer),
            Control::Ping(conn, reply) => self.ping(conn, reply),
            Control::Stats(reply) => {
                let (broker, epoch) = (self.broker.stats(), self.broker.config().epoch);
                let _ = reply.send(self.conns.stats(broker, self.handled, epoch));
            }
            #[cfg(test)]
            Control::Panic => panic!("the driver panics on purpose (a test)"),
        }
    }

    /// Applies an operation of the application and answers who waits for it.
    fn app_op(&mut self, now: Instant, op: AppOp, answer: Answer) {
        let asked = match (&op, &answer) {
            (AppOp::Reply { .. }, Answer::Nobody) => {
                self.handled += 1;
                None
            }
            (AppOp::Request { conn, .. }, _) => Some(*conn),
            _ => None,
        };
        let reply = self.broker.handle_app(now, op);
        match (answer, reply, asked) {
            (Answer::Reply(waiter), AppReply::Storing(id), _) => {
                // Answered when the log has it (its `Stored` comes in a later step).
                self.app.await_stored(id, waiter);
            }
            (Answer::Reply(waiter), AppReply::Relaying(id), _) => {
                // Answered when the other nodes have (its `Relayed` comes in a later step).
                self.app.await_relayed(id, waiter);
            }
            (Answer::Reply(waiter), reply, _) => {
                let _ = waiter.send(reply);
            }
            (Answer::Ack(waiter), AppReply::Ack(ack), Some(conn)) => {
                // Before the drain: the answer may come in it (the connection closing at once).
                self.app.await_ack(conn, ack, waiter);
            }
            (Answer::Ack(waiter), AppReply::Refused(e), _) => {
                let _ = waiter.send(Err(crate::events::refusal(&e)));
            }
            (Answer::Stopped(waiter), _, _) => self.app.await_stopped(waiter),
            _ => {}
        }
        self.drain(now);
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
        if !self.conns.insert(conn, kind, outbox, kill) {
            tracing::error!(%conn, "adapter bug: connection id opened twice");
            return;
        }
        self.feed(
            now,
            Input::Open {
                conn,
                codec,
                grants,
            },
        );
        for room in rooms {
            if let AppReply::Refused(e) = self.broker.handle_app(now, AppOp::Join { conn, room }) {
                tracing::debug!(%conn, "connect hook: {e}");
            }
        }
        self.drain(now);
        for cmd in commands {
            self.feed(now, Input::Command { conn, cmd });
        }
    }

    /// The connection task ended (after a close, or the peer went away).
    fn closed(&mut self, now: Instant, conn: ConnId) {
        if let Some(ending) = self.conns.remove(conn) {
            self.ended(now, conn, ending);
        }
    }

    /// Drops a connection without waiting for it: its task stops at once.
    fn dead(&mut self, now: Instant, conn: ConnId) {
        if let Some(ending) = self.conns.drop_conn(conn) {
            self.ended(now, conn, ending);
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
    fn ping(&mut self, conn: ConnId, reply: PingReply) {
        let why = match self.conns.get(conn) {
            None => format!("there is no connection {conn}"),
            Some(e) if !matches!(e.kind, Kind::WebSocket) => {
                format!("connection {conn} is not a WebSocket: it cannot be pinged")
            }
            Some(e) if !e.open => format!("connection {conn} is closing"),
            // If the connection is dropped instead (its outbox full, or gone), the reply is
            // dropped, which the hub reports as gone.
            Some(_) => return self.conns.queue(conn, ToConn::Ping(reply)),
        };
        let _ = reply.send(Err(ProtocolError::new(ErrorCode::NoRecipient, why)));
    }

    /// The end of a step: every connection gets what the step queued for it, in one batch.
    /// Connections whose outbox is full (or whose task is gone) are dropped, which may queue
    /// more for others (their `Closed` is fed to the broker), so this runs until nothing is left.
    fn hand_over(&mut self, now: Instant) {
        let mut refused = Vec::new();
        while self.conns.has_pending() {
            self.conns.hand_over(&mut refused);
            for conn in refused.drain(..) {
                self.dead(now, conn);
            }
        }
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
                Output::Transmit { conn, payload } => {
                    self.conns.queue(conn, ToConn::Frame(payload))
                }
                Output::KeepAlive { conn } => self.conns.queue(conn, ToConn::KeepAlive),
                Output::Deliver { conn, item } => self.conns.queue(conn, ToConn::Item(item)),
                Output::Close { conn, reason } => self.close(now, conn, reason),
                Output::Drop { conn } => {
                    tracing::debug!(%conn, "did not close in time: dropped");
                    self.dead(now, conn);
                }
                Output::App(event) => {
                    let ending = &self.ending;
                    let op = self.app.handle(&self.rt, *event, |conn| match ending {
                        Some((c, reason)) if *c == conn => reason.clone(),
                        _ => Disconnect::Lost,
                    });
                    if let Some(op) = op {
                        // Answered at once; its outputs join this drain.
                        let _ = self.broker.handle_app(now, op);
                    }
                }
                Output::Log(req) => self.log_out.push(req),
                Output::Relay(req) => self.relay_out.push(req),
                other => tracing::debug!("unhandled output: {other:?}"),
            }
        }
    }

    /// The broker closes a connection: it writes what it has, then closes. An in-process
    /// subscription has nothing to wait for: it is done at once (it ends after reading it).
    fn close(&mut self, now: Instant, conn: ConnId, reason: Option<ProtocolError>) {
        let Some(entry) = self.conns.get_mut(conn) else {
            return;
        };
        let internal = entry.kind == Kind::Internal;
        entry.ending.get_or_insert_with(|| {
            reason
                .clone()
                .map_or(Disconnect::Normal, Disconnect::Server)
        });
        self.conns.queue(conn, ToConn::Close(reason));
        if let Some(entry) = self.conns.get_mut(conn) {
            entry.open = false;
        }
        if internal {
            self.dead(now, conn);
        }
    }
}

#[cfg(test)]
mod tests;
