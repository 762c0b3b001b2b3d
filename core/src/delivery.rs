//! Delivery: fan-out of events and messages, catch-up from history, flow control, closing.

use bytes::Bytes;

use crate::broker::Broker;
use crate::codec::{self, Frame};
use crate::config::SlowConsumerPolicy;
use crate::conn::{CatchUp, should_deliver};
use crate::cursor::Cursor;
use crate::error::{ErrorCode, ProtocolError};
use crate::history::StoredEvent;
use crate::input::Recipient;
use crate::output::{Event, Gap, GapReason, Output};
use crate::payload::Payload;
use crate::subs::Slot;
use crate::topic::{Name, Topic};

impl Broker {
    /// Publishes an event: assigns its cursor, delivers it to live subscribers (encoded once per
    /// wire format, shared by all), and retains it.
    pub(crate) fn publish_event(
        &mut self,
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
        from: Option<Name>,
    ) -> Cursor {
        let seq = self.history.next_seq();
        if self.config.lifecycle_events {
            let (topic, from) = (topic.clone(), from.clone());
            let cursor = Cursor::new(self.config.epoch, seq);
            self.emit(Event::Lifecycle(crate::output::Lifecycle::Published {
                topic,
                cursor,
                from,
            }));
        }
        let mut ev = StoredEvent::new(seq, topic, event, payload, from, self.now);
        if !self.catalog.is_empty() {
            ev.scope = self
                .catalog
                .get(ev.topic.as_str())
                .map(|(_, v)| v)
                .filter(|v| **v != crate::output::Visibility::Public)
                .cloned();
        }
        self.stats.publishes += 1;
        self.stamp += 1;
        let mut slots = std::mem::take(&mut self.scratch);
        self.subs
            .for_each_match(ev.topic.as_str(), |s| slots.push(s));
        for &slot in &slots {
            self.deliver_live(slot, &mut ev);
        }
        slots.clear();
        self.scratch = slots;
        let expires = ev.at + self.config.retention.max_age;
        self.history.push(ev);
        if self.history.len() > 0 {
            self.arm_retention(expires);
        }
        Cursor::new(self.config.epoch, seq)
    }

    fn deliver_live(&mut self, slot: Slot, ev: &mut StoredEvent) {
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
            && !crate::session::sees(conn, scope)
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
        let Some(bytes) = ev.encoded(conn.transport, epoch, &self.config.server_id) else {
            return;
        };
        // With nothing in flight a frame always goes, however large: otherwise no `Flushed`
        // would ever come to resume the connection.
        if conn.queued > 0 && conn.queued + bytes.len() > max {
            let policy = self
                .config
                .slow_consumer
                .policy_for(Some(ev.topic.as_str()));
            return self.fall_behind(slot, policy, ev.seq - 1, 0);
        }
        self.stats.deliveries += 1;
        self.transmit(slot, bytes);
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
        let mut encoded: [Option<Bytes>; crate::input::Transport::ALL.len()] = Default::default();
        self.stamp += 1;
        let stamp = self.stamp;
        let mut reached = 0;
        for &slot in slots {
            let conn = self.conn_mut(slot);
            if conn.closing || conn.stamp == stamp {
                continue;
            }
            conn.stamp = stamp;
            let transport = conn.transport;
            let i = crate::input::Transport::ALL
                .iter()
                .position(|t| *t == transport)
                .unwrap_or(0);
            let bytes = match &encoded[i] {
                Some(b) => b.clone(),
                None => match codec::encode_with(transport, frame, &self.ctx()) {
                    Some(b) => encoded[i].insert(b).clone(),
                    None => continue,
                },
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
                    conn.catch_up = Some(Box::new(CatchUp {
                        pos,
                        reason: GapReason::SlowConsumer,
                        dropped_messages,
                        removed: Vec::new(),
                    }));
                }
            },
        }
        if newly {
            self.emit(Event::SlowConsumer { conn: id, policy });
        }
    }

    /// Serves a connection that is not live from the history, as far as its transport has room;
    /// makes it live again once it reaches the head.
    pub(crate) fn pump(&mut self, slot: Slot) {
        let (epoch, low_water) = (self.config.epoch, self.config.limits.max_queued_bytes / 2);
        loop {
            let head = self.history.head();
            let first = self.history.first_seq();
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
            if cu.pos + 1 < first {
                // Events in (pos, first) were evicted: a gap if any of them was wanted.
                let pos = cu.pos;
                cu.pos = first - 1;
                let subs = &conn.subs;
                let lost = self.history.lost_after(pos, |topic, seq| {
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
                        to: Cursor::new(epoch, first - 1),
                        reason,
                        dropped_messages: std::mem::take(&mut cu.dropped_messages),
                    };
                    self.send_gap(slot, &gap);
                }
                continue;
            }
            cu.pos += 1;
            let seq = cu.pos;
            let transport = conn.transport;
            let ev = self
                .history
                .get_mut(seq)
                .expect("first <= seq <= head is retained");
            let visible = ev
                .scope
                .as_ref()
                .is_none_or(|scope| crate::session::sees_extras(conn.extras.as_deref(), scope));
            if visible && should_deliver(&conn.subs, &cu.removed, ev.topic.as_str(), seq) {
                if let Some(bytes) = ev.encoded(transport, epoch, &self.config.server_id) {
                    self.stats.deliveries += 1;
                    self.transmit(slot, bytes);
                }
            }
        }
    }

    pub(crate) fn send_gap(&mut self, slot: Slot, gap: &Gap) {
        self.stats.gaps += 1;
        self.send_frame(slot, &Frame::Gap(gap));
    }

    /// Encodes a frame for one connection and hands it out.
    pub(crate) fn send_frame(&mut self, slot: Slot, frame: &Frame<'_>) {
        let transport = self.conn_ref(slot).transport;
        // etp answers name the event they answer: look it up (and forget it) by request id.
        let ack_name = match (transport, frame) {
            (
                crate::input::Transport::Etp | crate::input::Transport::EtpJs,
                Frame::Ok { req, .. } | Frame::Error { req: Some(req), .. },
            ) => self.conn_mut(slot).take_etp_name(*req),
            _ => None,
        };
        let cx = codec::Context {
            server_id: &self.config.server_id,
            ack_name: ack_name.as_ref().map(Name::as_str),
        };
        if let Some(bytes) = codec::encode_with(transport, frame, &cx) {
            self.transmit(slot, bytes);
        }
    }

    /// The encoding context for frames shared by several connections.
    pub(crate) fn ctx(&self) -> codec::Context<'_> {
        codec::Context {
            server_id: &self.config.server_id,
            ack_name: None,
        }
    }

    /// Hands bytes to the adapter and counts them against the connection's credit. Replies and
    /// errors are never dropped, but a client that makes the server queue twice its limit
    /// without reading is closed.
    pub(crate) fn transmit(&mut self, slot: Slot, bytes: Bytes) {
        let now = self.now;
        let max = self.config.limits.max_queued_bytes;
        let conn = self.conn_mut(slot);
        if conn.closing {
            return;
        }
        // A frame always goes when nothing is in flight, however large.
        let over = conn.queued > 0 && conn.queued + bytes.len() > max.saturating_mul(2);
        conn.queued += bytes.len();
        conn.last_write = now;
        let id = conn.id;
        self.stats.bytes_out += bytes.len() as u64;
        self.out.push_back(Output::Transmit {
            conn: id,
            payload: bytes,
        });
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
        let conn = self.conn_mut(slot);
        if conn.closing {
            return;
        }
        conn.closing = true;
        let (id, transport) = (conn.id, conn.transport);
        // The last frame says why; it bypasses the queue limit (the connection is going anyway).
        let last = Frame::Error {
            req: None,
            error: &reason,
        };
        if let Some(bytes) = codec::encode_with(transport, &last, &self.ctx()) {
            self.conn_mut(slot).queued += bytes.len();
            self.stats.bytes_out += bytes.len() as u64;
            self.out.push_back(Output::Transmit {
                conn: id,
                payload: bytes,
            });
        }
        self.release(slot);
        self.out.push_back(Output::Close { conn: id, reason });
    }

    /// Removes a connection from every index and settles what it had pending.
    pub(crate) fn release(&mut self, slot: Slot) {
        let conn = self.conn_mut(slot);
        let patterns: Vec<_> = conn.subs.iter().map(|s| s.pattern.clone()).collect();
        let extras = conn.extras.take().map(|x| *x).unwrap_or_default();
        let (rooms, acks, client_id) = (extras.rooms, extras.acks, extras.client_id);
        let id = conn.id;
        if let Some(client_id) = client_id {
            // Parks the session (subscriptions, position, rooms) for the reconnect window.
            self.clients.remove(&client_id);
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
            self.emit(Event::AckResult {
                conn: id,
                ack,
                result: Err(e),
            });
        }
    }

    pub(crate) fn remove_from_room(&mut self, room: &Name, slot: Slot) {
        if let Some(members) = self.rooms.get_mut(room) {
            if let Some(i) = members.iter().position(|s| *s == slot) {
                members.swap_remove(i);
            }
            if members.is_empty() {
                self.rooms.remove(room);
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
            self.lifecycle(|| crate::output::Lifecycle::GroupNew { room });
        }
    }
}
