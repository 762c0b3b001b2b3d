//! The broker: the one state machine. This file holds the dispatch of every [`Input`] and
//! [`Command`]; subscribing and resume are in `subscribe.rs`, delivery and flow control in
//! `delivery.rs`, timers firing in `timeouts.rs`, the application API in `app.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::codec::{Codec, Frame};
use crate::command::{Command, Recipient};
use crate::config::Config;
use crate::conn::ConnState;
use crate::cursor::Cursor;
use crate::encodings::Encodings;
use crate::error::{ApiError, ErrorCode, ProtocolError};
use crate::grants::Grants;
use crate::history::History;
use crate::ids::{ConnId, ConnMap};
use crate::input::Input;
use crate::output::Visibility;
use crate::output::{AppEvent, Output};
use crate::parked::Parked;
pub use crate::parked::SubscriptionChange;
use crate::payload::Payload;
use crate::session::ClaimVerdict;
use crate::subs::{Slot, SubIndex};
use crate::timers::{Timer, TimerHeap};
use crate::topic::{Name, Topic};

/// Counters for metrics, read with [`Broker::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections currently open (including those being closed).
    pub connections: usize,
    /// Subscriptions currently held, over all connections.
    pub subscriptions: usize,
    /// Events published since start.
    pub publishes: u64,
    /// Frames carrying an event or message handed to connections.
    pub deliveries: u64,
    /// Bytes handed to connections (all frames).
    pub bytes_out: u64,
    /// Messages dropped for slow consumers (events are caught up from history instead).
    pub dropped: u64,
    /// Connections closed by the slow-consumer policy.
    pub slow_consumer_closes: u64,
    /// Gap notices sent.
    pub gaps: u64,
    /// Events retained for replay.
    pub retained_events: usize,
    /// Payload bytes retained for replay.
    pub retained_bytes: usize,
    /// Errors sent to clients, by code.
    pub errors: Vec<(ErrorCode, u64)>,
    /// Client sessions parked for the reconnect window.
    pub parked_sessions: usize,
}

/// Information about one connection, from [`Broker::conn`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnInfo {
    /// Its wire format ([`Codec::format`]).
    pub format: &'static str,
    /// Its subscription patterns, in subscription order.
    pub subscriptions: Vec<String>,
    /// The client id it identified with.
    pub client_id: Option<String>,
    /// The rooms it is in.
    pub rooms: Vec<String>,
    /// Bytes handed out and not yet flushed.
    pub queued_bytes: usize,
    /// Whether it is being served from history (resuming or behind) rather than live.
    pub catching_up: bool,
    /// Whether the broker asked for it to be closed.
    pub closing: bool,
}

/// The pub/sub broker. Performs no I/O and never reads the clock; see the crate docs for the loop
/// contract.
pub struct Broker {
    pub(crate) config: Config,
    pub(crate) now: Instant,
    pub(crate) conns: Vec<Option<ConnState>>,
    free: Vec<Slot>,
    pub(crate) ids: ConnMap<Slot>,
    pub(crate) subs: SubIndex,
    /// Subscription name -> slots holding a subscription with that name.
    pub(crate) names: HashMap<Name, Vec<Slot>>,
    pub(crate) clients: HashMap<Name, Slot>,
    pub(crate) rooms: HashMap<Name, Vec<Slot>>,
    pub(crate) history: History,
    /// Encodings of the retained events, per format.
    pub(crate) encodings: Encodings,
    /// The formats of the connections seen so far ([`Codec::format`]); a connection's `format`
    /// is an index into this list.
    pub(crate) formats: Vec<&'static str>,
    pub(crate) timers: TimerHeap,
    pub(crate) retention_timer: Option<Instant>,
    pub(crate) out: VecDeque<Output>,
    /// Incremented per fan-out; see `ConnState::stamp`.
    pub(crate) stamp: u64,
    pub(crate) scratch: Vec<Slot>,
    pub(crate) stats: Stats,
    pub(crate) errors: [u64; ErrorCode::ALL.len()],
    /// Sessions of closed identified connections, by client id (the reconnect window).
    pub(crate) parked: HashMap<Name, Parked>,
    /// Parked sessions in expiry order (one window for all, so parking order), with the
    /// generation that tells a session apart from an earlier one of the same id.
    pub(crate) parked_order: VecDeque<(Instant, Name, u64)>,
    pub(crate) parked_gen: u64,
    pub(crate) parked_timer: Option<Instant>,
    /// Declared topics (by name) and who may see them.
    pub(crate) catalog: BTreeMap<String, (Topic, Visibility)>,
    /// Publishes waiting for the external log, in the order asked.
    pub(crate) appends: VecDeque<crate::appends::Pending>,
    pub(crate) next_append: u64,
    /// Log reads in flight: the position each starts at and the connections waiting for it
    /// (connections catching up from one position share one read: a mass reconnect after a
    /// restart reads each range once, not once per client).
    pub(crate) reads: HashMap<crate::log::ReadId, (u64, Vec<ConnId>)>,
    /// The read in flight from each position.
    pub(crate) reading_from: HashMap<u64, crate::log::ReadId>,
    /// Reads asking a shared log whether it holds the cursor a connection waits for (see
    /// `Broker::wait_for`): the connection and that position.
    pub(crate) probes: HashMap<crate::log::ReadId, (ConnId, u64)>,
    pub(crate) next_read: u64,
    /// The external log's first retained position (see `Broker::log_first`).
    pub(crate) log_first: u64,
    /// Positions given out before a restart whose events were not recovered (after the last
    /// recovered one, up to the reservation): cursors in there get a gap notice.
    pub(crate) lost: Option<(u64, u64)>,
    /// Messages that are not retained, across nodes (a shared log only).
    pub(crate) relay: crate::relay::Relay,
    /// Server requests to a client id or a room, on every node.
    pub(crate) asks: crate::ask::Asks,
    /// Publishes stored in a shared log whose events this node has not delivered yet: their
    /// position (0 for a failed append), publisher and answer, in the order the log answered.
    pub(crate) answering: VecDeque<(
        u64,
        crate::appends::Publisher,
        crate::log::AppendId,
        Result<Cursor, ProtocolError>,
    )>,
    /// Connections waiting for the head to reach the cursor they resumed from (shared log).
    pub(crate) waiting: Vec<ConnId>,
    /// Positions `(first, last)` a shared log evicted before this node read them, while they
    /// are within the hot window: catching up across one gives a gap notice.
    pub(crate) holes: std::collections::VecDeque<(u64, u64)>,
    /// Shutting down: new connections are closed at once, and `AppEvent::Stopped` is emitted
    /// once the last connection is gone (`Some(true)`: emitted).
    pub(crate) shutdown: Option<bool>,
    /// Presence watches: who watches which topic, here and on other nodes.
    pub(crate) watches: crate::watch::Watches,
}

impl Broker {
    /// Creates a broker at time `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        // The hot window: the whole log in memory, or its newest part as a cache.
        let hot = match config.log {
            crate::log::LogMode::Memory => config.retention.clone(),
            crate::log::LogMode::External {
                hot_events,
                hot_bytes,
                ..
            } => crate::config::Retention {
                max_events: hot_events.min(config.retention.max_events),
                max_bytes: hot_bytes.min(config.retention.max_bytes),
                max_age: config.retention.max_age,
            },
        };
        let history = History::new(hot, config.limits.max_tracked_topics);
        Self {
            config,
            now,
            conns: Vec::new(),
            free: Vec::new(),
            ids: ConnMap::default(),
            subs: SubIndex::default(),
            names: HashMap::new(),
            clients: HashMap::new(),
            rooms: HashMap::new(),
            history,
            encodings: Encodings::default(),
            formats: Vec::new(),
            timers: TimerHeap::default(),
            retention_timer: None,
            out: VecDeque::new(),
            stamp: 0,
            scratch: Vec::new(),
            stats: Stats::default(),
            errors: [0; ErrorCode::ALL.len()],
            parked: HashMap::new(),
            parked_order: VecDeque::new(),
            parked_gen: 0,
            parked_timer: None,
            catalog: BTreeMap::new(),
            appends: VecDeque::new(),
            next_append: 0,
            reads: HashMap::new(),
            reading_from: HashMap::new(),
            probes: HashMap::new(),
            next_read: 0,
            log_first: 1,
            lost: None,
            answering: VecDeque::new(),
            relay: crate::relay::Relay::default(),
            asks: crate::ask::Asks::default(),
            waiting: Vec::new(),
            holes: std::collections::VecDeque::new(),
            shutdown: None,
            watches: crate::watch::Watches::default(),
        }
    }

    /// Handles one input.
    ///
    /// Call `poll_output` until it returns `None` afterwards.
    ///
    /// # Errors
    /// Only for adapter misuse: [`ApiError::UnknownConn`] for an id that is not open,
    /// [`ApiError::DuplicateConn`] for an `Open` of an id that is. Nothing a client sends is an
    /// error here: it is answered on the wire and reported as an [`AppEvent`].
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), ApiError> {
        // Timers due by `now` fire first, so `poll_timeout` is never in the past afterwards.
        self.handle_timeout(now);
        match input {
            Input::Open {
                conn,
                codec,
                grants,
            } => self.open(conn, codec, grants),
            Input::Command { conn, cmd } => {
                let slot = self.slot(conn)?;
                let now = self.now;
                let state = self.conn_mut(slot);
                if state.closing {
                    return Ok(());
                }
                state.last_read = now;
                let held = state.extras.as_ref().is_some_and(|x| !x.held.is_empty());
                if held || (state.appending > 0 && !matches!(cmd, Command::Publish { .. })) {
                    self.hold(slot, cmd);
                } else {
                    self.command(slot, cmd);
                }
                Ok(())
            }
            Input::Flushed { conn, bytes } => {
                let slot = self.slot(conn)?;
                let state = self.conn_mut(slot);
                state.queued = state.queued.saturating_sub(bytes);
                self.pump(slot);
                Ok(())
            }
            Input::Closed { conn } => {
                let slot = self.slot(conn)?;
                self.release(slot);
                self.conns[slot as usize] = None;
                self.ids.remove(&conn);
                self.free.push(slot);
                self.emit(AppEvent::Disconnected { conn });
                self.stop_if_done();
                Ok(())
            }
            Input::Log(reply) => {
                self.handle_log(reply);
                Ok(())
            }
            Input::Relay(reply) => {
                self.handle_relay(reply);
                Ok(())
            }
        }
    }

    /// Fires every timer due at or before `now`. Extra calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        while let Some(timer) = self.timers.pop_due(self.now) {
            self.fire(timer);
        }
    }

    /// The next output, in order. Drain it completely after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.out.is_empty() {
            // The step's changes of what this node holds, together (a shared log only).
            self.announce_routes();
        }
        self.out.pop_front()
    }

    /// When `handle_timeout` should next be called (may be early; never needed sooner).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cursor of the last published event: subscribing now means "everything after it".
    pub fn head(&self) -> Cursor {
        Cursor::new(self.config.epoch, self.history.head())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.connections = self.ids.len();
        stats.subscriptions = self.conns.iter().flatten().map(|c| c.subs.len()).sum();
        stats.retained_events = self.history.len();
        stats.retained_bytes = self.history.bytes();
        stats.parked_sessions = self.parked.len();
        stats.errors = ErrorCode::ALL
            .iter()
            .zip(self.errors)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (*c, n))
            .collect();
        stats
    }

    /// What the broker knows about one connection.
    pub fn conn(&self, conn: ConnId) -> Option<ConnInfo> {
        let c = self.conns[*self.ids.get(&conn)? as usize].as_ref()?;
        Some(ConnInfo {
            format: self.formats[usize::from(c.format)],
            subscriptions: c.subs.iter().map(|s| s.pattern.to_string()).collect(),
            client_id: c.client_id().map(Name::to_string),
            rooms: c.rooms().iter().map(Name::to_string).collect(),
            queued_bytes: c.queued,
            catching_up: c.catch_up.is_some(),
            closing: c.closing,
        })
    }

    /// The number of entries in the timer heap (for tests and memory accounting).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    // ---- internals -------------------------------------------------------------------------

    pub(crate) fn advance(&mut self, now: Instant) {
        // Clamp: adapters on several threads may see slightly out-of-order clocks.
        if now > self.now {
            self.now = now;
        }
    }

    pub(crate) fn slot(&self, conn: ConnId) -> Result<Slot, ApiError> {
        self.ids
            .get(&conn)
            .copied()
            .ok_or(ApiError::UnknownConn(conn))
    }

    pub(crate) fn conn_mut(&mut self, slot: Slot) -> &mut ConnState {
        self.conns[slot as usize]
            .as_mut()
            .expect("slots in the id map and indexes always hold a connection")
    }

    pub(crate) fn conn_ref(&self, slot: Slot) -> &ConnState {
        self.conns[slot as usize]
            .as_ref()
            .expect("slots in the id map and indexes always hold a connection")
    }

    fn open(
        &mut self,
        conn: ConnId,
        codec: Box<dyn Codec>,
        grants: Arc<Grants>,
    ) -> Result<(), ApiError> {
        if self.ids.contains_key(&conn) {
            return Err(ApiError::DuplicateConn(conn));
        }
        let full = self.ids.len() >= self.config.limits.max_connections;
        let format = self.format_index(codec.format());
        let state = ConnState::new(conn, codec, format, grants, self.now);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.conns[slot as usize] = Some(state);
                slot
            }
            None => {
                self.conns.push(Some(state));
                Slot::try_from(self.conns.len() - 1).expect("fewer than 2^32 connections")
            }
        };
        self.ids.insert(conn, slot);
        if self.shutdown.is_some() {
            self.close(slot, shutting_down());
            return Ok(());
        }
        if full {
            let limit = self.config.limits.max_connections;
            self.close(
                slot,
                ProtocolError::new(
                    ErrorCode::Overloaded,
                    format!("the server holds its maximum of {limit} connections; retry later"),
                ),
            );
            return Ok(());
        }
        let welcome = Frame::Welcome {
            conn,
            cursor: self.head(),
            config: &self.config,
        };
        if let Some(wire) = self.conns[slot as usize]
            .as_mut()
            .and_then(|c| c.codec.encode(&welcome))
        {
            self.transmit(slot, wire);
        }
        self.conn_timer(slot);
        Ok(())
    }

    /// After a shutdown, emits `AppEvent::Stopped` once no connection is left.
    pub(crate) fn stop_if_done(&mut self) {
        if self.shutdown == Some(false) && self.ids.is_empty() {
            self.shutdown = Some(true);
            self.emit(AppEvent::Stopped);
        }
    }

    /// The index of `format` in `formats`, added if new. Formats are few (one per codec kind),
    /// so a scan is cheapest.
    fn format_index(&mut self, format: &'static str) -> u8 {
        let i = match self.formats.iter().position(|f| *f == format) {
            Some(i) => i,
            None => {
                self.formats.push(format);
                self.formats.len() - 1
            }
        };
        u8::try_from(i).expect("fewer than 256 wire formats")
    }

    /// The one dispatch of client commands.
    pub(crate) fn command(&mut self, slot: Slot, cmd: Command) {
        self.conn_mut(slot).codec.observe(&cmd);
        match cmd {
            Command::Subscribe(sub) => self.subscribe(slot, sub),
            Command::Unsubscribe { req, patterns } => {
                let conn = self.conn_ref(slot);
                if let Some(p) = patterns.iter().find(|p| conn.sub(p).is_none()) {
                    let e = ProtocolError::new(
                        ErrorCode::NotSubscribed,
                        format!(
                            "not subscribed to {:?}; unsubscribe takes the patterns exactly as subscribed",
                            p.as_str()
                        ),
                    );
                    return self.fail(slot, req, e);
                }
                for p in &patterns {
                    self.remove_sub(slot, p);
                }
                self.ok(slot, req, None, None);
                if !patterns.is_empty() {
                    let id = self.conn_ref(slot).id;
                    self.lifecycle(|| crate::output::Lifecycle::Unsubscribed {
                        conn: id,
                        patterns,
                    });
                }
            }
            Command::Publish {
                req,
                topic,
                event,
                payload,
            } => self.publish_command(slot, req, topic, event, payload),
            Command::Send {
                req,
                to,
                event,
                payload,
            } => {
                let conn = self.conn_ref(slot);
                let allowed = match &to {
                    Recipient::Named { topic, .. } => conn.grants.may_publish(topic),
                    _ => conn.grants.direct,
                };
                if !allowed {
                    let e = ProtocolError::new(
                        ErrorCode::Forbidden,
                        "sending to this recipient is not granted to this connection",
                    );
                    return self.fail(slot, req, e);
                }
                let (from, id) = (conn.client_id().cloned(), conn.id);
                let reached = self.send_message(&to, from.as_ref(), None, event.as_ref(), &payload);
                // In a cluster, a client id held by no connection here may be held on another
                // node, and named subscriptions may be anywhere.
                let elsewhere = match &to {
                    Recipient::Client(_) => reached == 0,
                    Recipient::Named { .. } => true,
                    Recipient::Conn(_) => false,
                };
                if elsewhere && self.relays() {
                    let message = crate::relay::Relayed {
                        to: crate::relay::RelayTo::Recipient(to),
                        from,
                        event,
                        payload,
                    };
                    if reached == 0 {
                        // Answered (`ok` or `no_recipient`) when the other nodes have said.
                        return self.relay(message, Some((id, req)));
                    }
                    self.relay(message, None);
                } else if reached == 0 {
                    return self.fail(slot, req, crate::relay::no_recipient());
                }
                self.ok(slot, req, None, None);
            }
            Command::Request {
                req,
                event,
                payload,
            } => {
                let limits = &self.config.limits;
                let conn = self.conn_ref(slot);
                let error = if !conn.grants.direct {
                    Some(ProtocolError::new(
                        ErrorCode::Forbidden,
                        "requests to the application are not granted to this connection",
                    ))
                } else if conn.requests().contains(&req) {
                    Some(ProtocolError::new(
                        ErrorCode::DuplicateRequest,
                        format!("request id {req} is already pending on this connection"),
                    ))
                } else if conn.requests().len() >= limits.max_pending_requests {
                    Some(ProtocolError::new(
                        ErrorCode::LimitReached,
                        format!(
                            "at most {} requests may be pending at once",
                            limits.max_pending_requests
                        ),
                    ))
                } else {
                    None
                };
                if let Some(e) = error {
                    return self.fail(slot, Some(req), e);
                }
                let conn = self.conn_mut(slot);
                conn.extras_mut().requests.push(req);
                let id = conn.id;
                self.timers.schedule(
                    self.now + self.config.timers.request_timeout,
                    Timer::Request(id, req),
                );
                self.emit(AppEvent::Request {
                    conn: id,
                    req,
                    event,
                    payload,
                });
            }
            Command::Reply { ack, result } => {
                let conn = self.conn_mut(slot);
                let Some(i) = conn.acks().iter().position(|a| *a == ack) else {
                    let e = ProtocolError::new(
                        ErrorCode::UnknownRequest,
                        format!(
                            "no server request {ack} is pending (already answered, timed out, or never sent)"
                        ),
                    );
                    return self.fail(slot, None, e);
                };
                conn.extras_mut().acks.swap_remove(i);
                let id = conn.id;
                let result = result.map_err(|msg| ProtocolError::new(ErrorCode::Rejected, msg));
                self.ack_result(id, ack, result);
                self.mark_stale();
            }
            Command::Identify {
                req,
                client_id,
                claim,
            } => {
                if !self.conn_ref(slot).grants.may_identify(&client_id) {
                    let e = ProtocolError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "client id {:?} is not granted to this connection",
                            client_id.as_str()
                        ),
                    );
                    return self.fail(slot, req, e);
                }
                match self.claim_verdict(slot, &client_id, claim) {
                    ClaimVerdict::Claim => {}
                    // Parks the holder's session (back to this connection below if it is the
                    // same principal's).
                    ClaimVerdict::TakeOver { holder, reason } => self.close(holder, reason),
                    ClaimVerdict::Skip => return,
                    ClaimVerdict::Refused(e) => return self.fail(slot, req, e),
                }
                self.presence_identity_changes(slot, &client_id);
                if let Some(old) = self
                    .conn_mut(slot)
                    .extras_mut()
                    .client_id
                    .replace(client_id.clone())
                {
                    self.clients.remove(&old);
                    self.route_changed(crate::relay::Route::Client(old));
                }
                self.clients.insert(client_id.clone(), slot);
                self.route_changed(crate::relay::Route::Client(client_id.clone()));
                self.claimed(slot, &client_id);
                self.ok(slot, req, None, None);
                self.identified(slot, &client_id);
            }
            Command::Notify { event, payload } => {
                if !self.conn_ref(slot).grants.direct {
                    let e = ProtocolError::new(
                        ErrorCode::Forbidden,
                        "events for the application are not granted to this connection",
                    );
                    return self.fail(slot, None, e);
                }
                // Handlers run concurrently: bounded like pending requests. What is over the
                // bound is dropped and reported, without an answer (nothing is waited for).
                let max = self.config.limits.max_pending_requests;
                let conn = self.conn_mut(slot);
                let id = conn.id;
                if conn.extras.as_ref().map_or(0, |x| x.notifies) >= max {
                    self.count_error(ErrorCode::LimitReached);
                    let error = ProtocolError::new(
                        ErrorCode::LimitReached,
                        format!(
                            "at most {max} events may be handled at once per connection; dropped {:?}",
                            event.as_str()
                        ),
                    );
                    self.emit(AppEvent::ProtocolViolation { conn: id, error });
                    return;
                }
                conn.extras_mut().notifies += 1;
                self.emit(AppEvent::Notify {
                    conn: id,
                    event,
                    payload,
                });
            }
            Command::RemoveTopic { req, topic } => {
                if !self.conn_ref(slot).grants.may_publish(&topic) {
                    let e = ProtocolError::new(
                        ErrorCode::Forbidden,
                        format!(
                            "removing topic {:?} needs the grant to publish to it",
                            topic.as_str()
                        ),
                    );
                    return self.fail(slot, req, e);
                }
                let pattern = crate::topic::Pattern::exact(&topic);
                let holders: Vec<Slot> = self
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.as_ref().is_some_and(|c| c.sub(&pattern).is_some()))
                    .filter_map(|(i, _)| Slot::try_from(i).ok())
                    .collect();
                for holder in holders {
                    self.remove_sub(holder, &pattern);
                }
                self.ok(slot, req, None, None);
            }
            Command::Presence { req, topic } => {
                let conn = self.conn_ref(slot);
                if !self.may_see_presence(&conn.grants, &topic)
                    || !self.may_see(conn, &crate::topic::Pattern::exact(&topic))
                {
                    return self.fail(slot, Some(req), crate::presence::not_granted(&topic));
                }
                let asker = crate::relay::Asker::Conn(conn.id, req);
                self.ask_presence(asker, topic);
            }
            Command::WatchPresence { req, topic, watch } => {
                self.watch_command(slot, req, topic, watch);
            }
            Command::Ping { req } => {
                if let Some(req) = req {
                    self.send_frame(slot, &Frame::Pong { req });
                }
            }
            Command::Invalid { req, error, fatal } => {
                if fatal {
                    // One error frame: the closing one.
                    self.count_error(error.code);
                    let conn = self.conn_ref(slot).id;
                    let event = AppEvent::ProtocolViolation {
                        conn,
                        error: error.clone(),
                    };
                    self.emit(event);
                    self.close(slot, error);
                } else {
                    self.fail(slot, req, error);
                }
            }
        }
    }

    /// Answers a request with `ok` (only when the client gave a request id).
    pub(crate) fn ok(
        &mut self,
        slot: Slot,
        req: Option<u64>,
        cursor: Option<Cursor>,
        payload: Option<&Payload>,
    ) {
        if let Some(req) = req {
            self.send_frame(
                slot,
                &Frame::Ok {
                    req,
                    cursor,
                    payload,
                },
            );
        }
    }

    /// Sends an error frame and reports the violation to the application.
    pub(crate) fn fail(&mut self, slot: Slot, req: Option<u64>, error: ProtocolError) {
        self.count_error(error.code);
        if self.conn_ref(slot).codec.ignores(&error) {
            return;
        }
        self.send_frame(slot, &Frame::Error { req, error: &error });
        let conn = self.conn_ref(slot).id;
        self.emit(AppEvent::ProtocolViolation { conn, error });
    }

    /// Queues an event for the application.
    pub(crate) fn emit(&mut self, event: AppEvent) {
        self.out.push_back(Output::App(Box::new(event)));
    }

    pub(crate) fn count_error(&mut self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i] += 1;
        }
    }
}

/// Why connections are closed by a shutdown.
pub(crate) fn shutting_down() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::ShuttingDown,
        "the server is shutting down; reconnect and resume from your cursor",
    )
}
