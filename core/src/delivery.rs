//! Delivery: fan-out of events and messages, catch-up from history, flow control, closing.

use crate::broker::Broker;
use crate::codec::{Frame, Wire};
use crate::command::Recipient;
use crate::config::SlowConsumerPolicy;
use crate::conn::{CatchUp, ConnState, should_deliver};
use crate::cursor::Cursor;
use crate::encodings::{self, Encoded};
use crate::error::{ErrorCode, ProtocolError};
use crate::history::StoredEvent;
use crate::output::{AppEvent, Gap, GapReason, Output};
use crate::payload::Payload;
use crate::subs::Slot;
use crate::timers::Timer;
use crate::topic::Name;

/// Events asked of the log per read: what one catching-up connection holds in memory at most
/// (the log also bounds a page by bytes).
const PAGE_EVENTS: usize = 256;

impl Broker {
    pub(crate) fn deliver_live(&mut self, slot: Slot, ev: &StoredEvent, encoded: &mut Encoded) {
        let (stamp, epoch, max) = (
            self.stamp,
            self.config.epoch,
            self.config.limits.max_queued_bytes,
        );
        let conn = self.conns[slot as usize]
            .as_mut()
            .expect("indexed slots hold a connection");
        if conn.stamp == stamp {
            return; // already got it through another pattern
        }
        conn.stamp = stamp;
        if let Some(scope) = &ev.scope
            && !crate::conn::sees(conn, scope)
        {
            return; // a private or group topic this connection cannot see
        }
        if let Some(cu) = &conn.catch_up {
            // Served from history instead; but a consumer already behind must go if this
            // topic's policy says so.
            let policy = self
                .config
                .slow_consumer
                .policy_for(Some(ev.topic.as_str()));
            if cu.reason == GapReason::SlowConsumer && policy == SlowConsumerPolicy::Disconnect {
                self.fall_behind(slot, policy, ev.seq - 1, 0);
            }
            return;
        }
        let Some(wire) = encode_event(conn, ev, epoch, encoded) else {
            return;
        };
        // With nothing in flight a frame always goes, however large: otherwise no `Flushed`
        // would ever come to resume the connection.
        if conn.queued > 0 && conn.queued + wire.len() > max {
            let policy = self
                .config
                .slow_consumer
                .policy_for(Some(ev.topic.as_str()));
            return self.fall_behind(slot, policy, ev.seq - 1, 0);
        }
        self.stats.deliveries += 1;
        self.transmit(slot, wire);
    }

    /// Sends a message that is not retained; returns how many connections it reached.
    pub(crate) fn send_message(
        &mut self,
        to: &Recipient,
        from: Option<&Name>,
        room: Option<&Name>,
        event: Option<&Name>,
        payload: &Payload,
    ) -> usize {
        let mut slots = std::mem::take(&mut self.scratch);
        let named =
            match to {
                Recipient::Conn(id) => {
                    slots.extend(self.ids.get(id));
                    None
                }
                Recipient::Client(name) => {
                    slots.extend(self.clients.get(name));
                    None
                }
                Recipient::Named { topic, name } => {
                    for &slot in self.names.get(name).into_iter().flatten() {
                        let conn = self.conn_ref(slot);
                        if conn.subs.iter().any(|s| {
                            s.name.as_ref() == Some(name) && s.pattern.matches(topic.as_str())
                        }) {
                            slots.push(slot);
                        }
                    }
                    Some((topic, name))
                }
            };
        let frame = Frame::Message {
            from,
            room,
            named,
            event,
            payload,
        };
        let reached = self.fan_out_message(&slots, &frame);
        slots.clear();
        self.scratch = slots;
        reached
    }

    /// Delivers one message frame to `slots`, encoding it once per wire format.
    pub(crate) fn fan_out_message(&mut self, slots: &[Slot], frame: &Frame<'_>) -> usize {
        let mut encoded = Encoded::new();
        self.stamp += 1;
        let stamp = self.stamp;
        let mut reached = 0;
        for &slot in slots {
            let conn = self.conn_mut(slot);
            if conn.closing || conn.stamp == stamp {
                continue;
            }
            conn.stamp = stamp;
            let codec = &mut conn.codec;
            let Some(bytes) = encodings::shared(&mut encoded, conn.format, || codec.encode(frame))
            else {
                continue;
            };
            reached += 1;
            let conn = self.conn_ref(slot);
            if conn.queued > 0 && conn.queued + bytes.len() > self.config.limits.max_queued_bytes {
                let policy = self.config.slow_consumer.policy_for(None);
                let pos = conn
                    .catch_up
                    .as_ref()
                    .map_or(self.history.head(), |c| c.pos);
                self.fall_behind(slot, policy, pos, 1);
                continue;
            }
            self.stats.deliveries += 1;
            self.transmit(slot, bytes);
        }
        reached
    }

    /// The slow-consumer policy: close, or stop live delivery and catch up from `pos` later.
    fn fall_behind(
        &mut self,
        slot: Slot,
        policy: SlowConsumerPolicy,
        pos: u64,
        dropped_messages: u64,
    ) {
        self.stats.dropped += dropped_messages;
        let conn = self.conn_mut(slot);
        let id = conn.id;
        let newly = conn.catch_up.is_none();
        match policy {
            SlowConsumerPolicy::Disconnect => {
                // Its session (if it parks one) resumes after the last event handed out, not
                // at the head, which already counts the event it did not get.
                if conn.catch_up.is_none() {
                    conn.catch_up = Some(Box::new(CatchUp::new(pos, GapReason::SlowConsumer, 0)));
                }
                self.stats.slow_consumer_closes += 1;
                self.count_error(ErrorCode::SlowConsumer);
                let max = self.config.limits.max_queued_bytes;
                self.close(slot, ProtocolError::new(ErrorCode::SlowConsumer, format!("more than {max} bytes waited to be written; reconnect and resume from your cursor")));
            }
            SlowConsumerPolicy::DropAndGap => match &mut conn.catch_up {
                Some(cu) => cu.dropped_messages += dropped_messages,
                None => {
                    for sub in &mut conn.subs {
                        sub.done = sub.done.max(pos);
                    }
                    conn.catch_up = Some(Box::new(CatchUp::new(
                        pos,
                        GapReason::SlowConsumer,
                        dropped_messages,
                    )));
                }
            },
        }
        if newly {
            self.emit(AppEvent::SlowConsumer { conn: id, policy });
        }
    }

    /// Serves a connection that is not live from the history, as far as its transport has room;
    /// makes it live again once it reaches the head.
    pub(crate) fn pump(&mut self, slot: Slot) {
        let (epoch, low_water) = (self.config.epoch, self.config.limits.max_queued_bytes / 2);
        loop {
            let head = self.history.head();
            let (first, log_first) = (self.history.first_seq(), self.log_first());
            let conn = self.conns[slot as usize]
                .as_mut()
                .expect("pumped slots hold a connection");
            let Some(cu) = conn.catch_up.as_deref_mut() else {
                return;
            };
            if conn.closing || conn.queued >= low_water {
                return;
            }
            if cu.pos >= head {
                if cu.ahead > head {
                    return; // resumed from further along a shared log: not live before that
                }
                let cu = *conn.catch_up.take().expect("checked above");
                if cu.dropped_messages > 0 {
                    let gap = Gap {
                        from: Some(Cursor::new(epoch, cu.pos)),
                        to: Cursor::new(epoch, head),
                        reason: GapReason::SlowConsumer,
                        dropped_messages: cu.dropped_messages,
                    };
                    self.send_gap(slot, &gap);
                }
                return;
            }
            if cu.pos + 1 < log_first {
                // Events in (pos, log_first) were evicted: a gap if any of them was wanted.
                let pos = cu.pos;
                cu.pos = log_first - 1;
                let subs = &conn.subs;
                let lost = self.history.lost_between(pos, log_first, |topic, seq| {
                    subs.iter()
                        .any(|s| s.wants(seq) && s.pattern.matches(topic))
                });
                if lost {
                    let reason = if cu.reason == GapReason::SlowConsumer {
                        cu.reason
                    } else {
                        GapReason::Evicted
                    };
                    let gap = Gap {
                        from: Some(Cursor::new(epoch, pos)),
                        to: Cursor::new(epoch, log_first - 1),
                        reason,
                        dropped_messages: std::mem::take(&mut cu.dropped_messages),
                    };
                    self.send_gap(slot, &gap);
                }
                continue;
            }
            if cu.pos + 1 < first {
                // Retained by the log, no longer in memory: served from a page of the log.
                let Some(ev) = cu.page.pop_front() else {
                    if cu.reading.is_none() {
                        let from = cu.pos + 1;
                        if let Some(&read) = self.reading_from.get(&from)
                            && let Some((_, waiting)) = self.reads.get_mut(&read)
                        {
                            // Another connection reads from here already: share its page.
                            waiting.push(conn.id);
                            cu.reading = Some((read, from));
                            return;
                        }
                        let read = crate::log::ReadId(self.next_read);
                        self.next_read += 1;
                        self.reads.insert(read, (from, vec![conn.id]));
                        self.reading_from.insert(from, read);
                        cu.reading = Some((read, from));
                        let max_events = usize::try_from(first - from)
                            .unwrap_or(usize::MAX)
                            .min(PAGE_EVENTS);
                        let req = crate::log::LogRequest::Read {
                            read,
                            from,
                            max_events,
                        };
                        self.out.push_back(Output::Log(req));
                    }
                    return;
                };
                if ev.seq > cu.pos {
                    cu.pos = ev.seq;
                    let topic = ev.event.topic.as_str();
                    let visible = self.catalog.get(topic).is_none_or(|(_, scope)| {
                        *scope == crate::output::Visibility::Public
                            || crate::conn::sees_extras(conn.extras.as_deref(), scope)
                    });
                    if visible && should_deliver(&conn.subs, &cu.removed, topic, ev.seq) {
                        let frame = Frame::Event {
                            topic: &ev.event.topic,
                            cursor: Cursor::new(epoch, ev.seq),
                            from: ev.event.from.as_ref(),
                            event: ev.event.event.as_ref(),
                            payload: &ev.event.payload,
                        };
                        if let Some(wire) = conn.codec.encode(&frame) {
                            self.stats.deliveries += 1;
                            self.transmit(slot, wire);
                        }
                    }
                }
                continue;
            }
            // A hole counts whether or not an event follows it in memory (a `Passed` position,
            // or nothing received since), and also when the position is inside it (a cursor
            // from a node that read some of it): otherwise its events go missing silently.
            let next = self
                .history
                .next_after(cu.pos)
                .map_or(head + 1, |ev| ev.seq);
            if let Some(&(_, last)) = self
                .holes
                .iter()
                .find(|&&(first, last)| last > cu.pos && first < next)
            {
                // A shared log evicted these before this node read them.
                let gap = Gap {
                    from: Some(Cursor::new(epoch, cu.pos)),
                    to: Cursor::new(epoch, last),
                    reason: GapReason::Evicted,
                    dropped_messages: 0,
                };
                cu.pos = last;
                self.send_gap(slot, &gap);
                continue;
            }
            let Some(ev) = self.history.next_after(cu.pos) else {
                cu.pos = head;
                continue;
            };
            cu.pos = ev.seq;
            let seq = ev.seq;
            let visible = ev
                .scope
                .as_ref()
                .is_none_or(|scope| crate::conn::sees_extras(conn.extras.as_deref(), scope));
            if visible && should_deliver(&conn.subs, &cu.removed, ev.topic.as_str(), seq) {
                // Every retained event has its slot; without one it is encoded uncached.
                let mut uncached = Encoded::new();
                let encoded = self.encodings.get_mut(seq).unwrap_or(&mut uncached);
                if let Some(wire) = encode_event(conn, ev, epoch, encoded) {
                    self.stats.deliveries += 1;
                    self.transmit(slot, wire);
                }
            }
        }
    }

    pub(crate) fn send_gap(&mut self, slot: Slot, gap: &Gap) {
        self.stats.gaps += 1;
        self.send_frame(slot, &Frame::Gap(gap));
    }

    /// Encodes a frame for one connection (with its codec's state) and hands it out.
    pub(crate) fn send_frame(&mut self, slot: Slot, frame: &Frame<'_>) {
        if let Some(wire) = self.conn_mut(slot).codec.encode(frame) {
            self.transmit(slot, wire);
        }
    }

    /// Hands an encoded frame to the adapter and counts it against the connection's credit.
    /// Replies and errors are never dropped, but a client that makes the server queue twice its
    /// limit without reading is closed.
    pub(crate) fn transmit(&mut self, slot: Slot, wire: Wire) {
        let now = self.now;
        let max = self.config.limits.max_queued_bytes;
        let conn = self.conn_mut(slot);
        if conn.closing {
            return;
        }
        // A frame always goes when nothing is in flight, however large.
        let len = wire.len();
        let over = conn.queued > 0 && conn.queued + len > max.saturating_mul(2);
        conn.queued += len;
        conn.last_write = now;
        let id = conn.id;
        self.stats.bytes_out += len as u64;
        self.out.push_back(output(id, wire));
        if over {
            self.stats.slow_consumer_closes += 1;
            self.count_error(ErrorCode::SlowConsumer);
            self.close(
                slot,
                ProtocolError::new(
                    ErrorCode::SlowConsumer,
                    format!(
                        "more than {} bytes waited to be written",
                        max.saturating_mul(2)
                    ),
                ),
            );
        }
    }

    /// Asks the adapter to close a connection: it stops receiving anything at once, gets a last
    /// error frame, and its state is released (it stays known until `Closed`).
    pub(crate) fn close(&mut self, slot: Slot, reason: ProtocolError) {
        self.close_with(slot, Some(reason));
    }

    /// [`Broker::close`], or a normal close (`None`: no error frame, WebSocket 1000). The
    /// adapter has `close_grace` to report `Closed`; then the connection is dropped.
    pub(crate) fn close_with(&mut self, slot: Slot, reason: Option<ProtocolError>) {
        let grace = self.config.timers.close_grace;
        let conn = self.conn_mut(slot);
        if conn.closing {
            return;
        }
        conn.closing = true;
        let id = conn.id;
        if let Some(reason) = &reason {
            // The last frame says why; it bypasses the queue limit (the connection is going
            // anyway).
            let last = Frame::Error {
                req: None,
                error: reason,
            };
            if let Some(wire) = conn.codec.encode(&last) {
                conn.queued += wire.len();
                self.stats.bytes_out += wire.len() as u64;
                self.out.push_back(output(id, wire));
            }
        }
        self.release(slot);
        self.out.push_back(Output::Close { conn: id, reason });
        self.timers
            .schedule(self.now + grace, Timer::CloseGrace(id));
    }

    /// Removes a connection from every index and settles what it had pending.
    pub(crate) fn release(&mut self, slot: Slot) {
        // Leaves first, while it still has its client id and subscriptions.
        self.presence_conn_gone(slot);
        let conn = self.conn_mut(slot);
        let patterns: Vec<_> = conn.subs.iter().map(|s| s.pattern.clone()).collect();
        let extras = conn.extras.take().map(|x| *x).unwrap_or_default();
        let (rooms, acks, client_id) = (extras.rooms, extras.acks, extras.client_id);
        let id = conn.id;
        if let Some(client_id) = client_id {
            // Parks the session (subscriptions, position, rooms) for the reconnect window.
            self.clients.remove(&client_id);
            self.route_changed(crate::relay::Route::Client(client_id.clone()));
            self.park_or_forget(slot, client_id, rooms.clone());
        }
        self.conn_mut(slot).catch_up = None;
        for p in &patterns {
            self.remove_sub(slot, p);
        }
        for room in rooms {
            self.remove_from_room(&room, slot);
        }
        for ack in acks {
            let e = ProtocolError::new(
                ErrorCode::NoRecipient,
                "the connection closed before answering",
            );
            self.ack_result(id, ack, Err(e));
        }
    }

    pub(crate) fn remove_from_room(&mut self, room: &Name, slot: Slot) {
        if let Some(members) = self.rooms.get_mut(room) {
            if let Some(i) = members.iter().position(|s| *s == slot) {
                members.swap_remove(i);
            }
            if members.is_empty() {
                self.rooms.remove(room);
                self.route_changed(crate::relay::Route::Room(room.clone()));
                let room = room.clone();
                self.lifecycle(|| crate::output::Lifecycle::GroupRemoved { room });
            }
        }
    }

    /// Adds a member to a room's index (the connection's own list is the caller's).
    pub(crate) fn add_to_room(&mut self, room: Name, slot: Slot) {
        let members = self.rooms.entry(room.clone()).or_default();
        members.push(slot);
        if members.len() == 1 {
            self.route_changed(crate::relay::Route::Room(room.clone()));
            self.lifecycle(|| crate::output::Lifecycle::GroupNew { room });
        }
    }
}

/// The event's encoding for `conn`'s format: shared by every subscriber of that format, made on
/// first use with the connection's codec.
fn encode_event(
    conn: &mut ConnState,
    ev: &StoredEvent,
    epoch: u64,
    encoded: &mut Encoded,
) -> Option<Wire> {
    let codec = &mut conn.codec;
    encodings::shared(encoded, conn.format, || {
        codec.encode(&Frame::Event {
            topic: &ev.topic,
            cursor: Cursor::new(epoch, ev.seq),
            from: ev.from.as_ref(),
            event: ev.event.as_ref(),
            payload: &ev.payload,
        })
    })
}

/// The output that hands `wire` to connection `conn`.
fn output(conn: crate::ids::ConnId, wire: Wire) -> Output {
    match wire {
        Wire::Frame(payload) => Output::Transmit { conn, payload },
        Wire::Ping => Output::KeepAlive { conn },
        Wire::Item(item) => Output::Deliver { conn, item },
    }
}
