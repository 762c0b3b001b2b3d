//! Publishing: an event gets its position from the log that stores it, then goes to live
//! subscribers and into the hot window, and its publisher gets the cursor.
//!
//! With the in-memory log the position is the next one and all of this happens in the step of the
//! publish. With an external log the publish waits in `appends` for `LogReply::Appended`; so
//! nothing is delivered or acknowledged before the log holds it, and an append that fails is
//! answered with its error and delivered to nobody. Also here: the broker's side of range reads
//! (`LogReply::Page`), the log's retention (`LogReply::Trimmed`) and the start from a recovered
//! log (`Broker::restore_log`).

use std::time::Duration;

use crate::appends::{Pending, Published, Publisher};
use crate::broker::Broker;
use crate::cursor::Cursor;
use crate::encodings::Encoded;
use crate::error::{ErrorCode, ProtocolError};
use crate::history::StoredEvent;
use crate::log::{AppendId, LogEvent, LogMode, LogReply, LogRequest, LogState, Logged, Page};
use crate::output::{AppEvent, Gap, GapReason, Output, Visibility};
use crate::payload::Payload;
use crate::topic::{Name, Topic};

/// Commands a connection may send while its publish is being stored before it is closed (the
/// disk is slow: answers keep their order, so later commands wait).
const MAX_HELD: usize = 1024;

impl Broker {
    /// A client's `publish`: grants checked, then stored and answered (at once, or when the log
    /// has it).
    pub(crate) fn publish_command(
        &mut self,
        slot: crate::subs::Slot,
        req: Option<u64>,
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
    ) {
        if !self.conn_ref(slot).grants.may_publish(&topic) {
            let e = ProtocolError::new(
                ErrorCode::Forbidden,
                format!(
                    "publishing to {:?} is not granted to this connection",
                    topic.as_str()
                ),
            );
            return self.fail(slot, req, e);
        }
        let state = self.conn_ref(slot);
        let (from, conn) = (state.client_id().cloned(), state.id);
        let publisher = Publisher::Conn { conn, req };
        match self.publish_event(topic, event, payload, from, publisher) {
            Published::Stored(cursor) => self.ok(slot, req, Some(cursor), None),
            Published::Storing(_) => {}
            Published::Refused(e) => self.fail(slot, req, e),
        }
    }

    /// Publishes an event for `publisher`: at once with the in-memory log, through an append
    /// otherwise.
    pub(crate) fn publish_event(
        &mut self,
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
        from: Option<Name>,
        publisher: Publisher,
    ) -> Published {
        let event = LogEvent {
            topic,
            event,
            from,
            payload,
        };
        let LogMode::External {
            max_pending_appends,
            ..
        } = self.config.log
        else {
            let seq = self.history.head() + 1;
            return Published::Stored(self.stored(seq, event));
        };
        if self.appends.len() >= max_pending_appends {
            self.count_error(ErrorCode::Unavailable);
            return Published::Refused(ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "the log has {max_pending_appends} appends waiting to be stored (its disk is slow or failing); nothing was stored, retry later"
                ),
            ));
        }
        // A shared log: answers wait for this node to deliver their events; bounded too, in
        // case its consumer stalls while the stream keeps accepting.
        if self.answering.len() >= max_pending_appends {
            self.count_error(ErrorCode::Unavailable);
            return Published::Refused(ProtocolError::new(
                ErrorCode::Unavailable,
                format!(
                    "{max_pending_appends} stored events wait to be delivered by this node (its stream consumer is behind); nothing was stored, retry later"
                ),
            ));
        }
        let id = AppendId(self.next_append);
        self.next_append += 1;
        if let Publisher::Conn { conn, .. } = publisher
            && let Some(&slot) = self.ids.get(&conn)
        {
            self.conn_mut(slot).appending += 1;
        }
        self.appends.push_back(Pending {
            id,
            publisher,
            event: event.clone(),
        });
        self.out
            .push_back(Output::Log(LogRequest::Append { id, event }));
        Published::Storing(id)
    }

    /// The event is stored at `seq`: deliver it to live subscribers (encoded once per wire
    /// format, shared by all) and keep it in the hot window.
    fn stored(&mut self, seq: u64, event: LogEvent) -> Cursor {
        let cursor = Cursor::new(self.config.epoch, seq);
        let LogEvent {
            topic,
            event,
            from,
            payload,
        } = event;
        if self.config.lifecycle_events {
            let (topic, from) = (topic.clone(), from.clone());
            self.emit(AppEvent::Lifecycle(crate::output::Lifecycle::Published {
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
                .filter(|v| **v != Visibility::Public)
                .cloned();
        }
        self.stats.publishes += 1;
        self.stamp += 1;
        let mut encoded = Encoded::new();
        let mut slots = std::mem::take(&mut self.scratch);
        self.subs
            .for_each_match(ev.topic.as_str(), |s| slots.push(s));
        for &slot in &slots {
            self.deliver_live(slot, &ev, &mut encoded);
        }
        slots.clear();
        self.scratch = slots;
        let expires = ev.at + self.config.retention.max_age;
        self.history.push(ev);
        let first = self.history.first_seq();
        while self.holes.front().is_some_and(|&(_, last)| last < first) {
            self.holes.pop_front();
        }
        self.encodings.push(seq, encoded, first);
        if self.history.len() > 0 {
            self.arm_retention(expires);
        }
        cursor
    }

    /// The external log answered.
    pub(crate) fn handle_log(&mut self, reply: LogReply) {
        match reply {
            LogReply::Appended { id, result } => {
                // Answers come in the order asked; one for an append not waited for (a log
                // bug, or a duplicate) changes nothing.
                let Some(i) = self.appends.iter().position(|p| p.id == id) else {
                    return;
                };
                let Some(pending) = self.appends.remove(i) else {
                    return;
                };
                if self.shared_log() {
                    // Delivered when it comes back in log order (`Committed`); answered once
                    // this node has delivered it, so that the answer means here what it means on
                    // one node: subscribers of this node got it (a publisher subscribed to its
                    // own topic sees the event before the answer), and a resume from its cursor
                    // is served at once.
                    let seq = result.as_ref().map_or(0, |a| a.seq);
                    let result = result.map(|a| Cursor::new(self.config.epoch, a.seq));
                    self.answering
                        .push_back((seq, pending.publisher, pending.id, result));
                    self.release_answers();
                    return;
                }
                let result = match result {
                    Ok(appended) if appended.seq > self.history.head() => {
                        self.trimmed(appended.first);
                        Ok(self.stored(appended.seq, pending.event))
                    }
                    Ok(appended) => Err(ProtocolError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "the log gave position {} again (the last was {}); nothing was delivered",
                            appended.seq,
                            self.history.head()
                        ),
                    )),
                    Err(e) => Err(e),
                };
                if result.is_err() {
                    self.count_error(ErrorCode::Unavailable);
                }
                self.answer_publisher(pending.publisher, pending.id, result);
            }
            LogReply::Page { read, result } => self.page(read, result),
            LogReply::Trimmed { first } => {
                self.trimmed(first);
                self.release_answers();
            }
            LogReply::Replaced(state) => self.replaced(state),
            LogReply::Committed(logged) => {
                self.committed(logged);
                self.release_answers();
            }
            LogReply::Passed { seq } => {
                if self.shared_log() && seq > self.history.head() {
                    if seq > self.history.head() + 1 {
                        self.skipped(self.history.head(), seq);
                    }
                    self.history.advance(seq);
                    self.wake_waiting();
                    self.release_answers();
                }
            }
        }
    }

    /// Answers the publishers whose events this node has delivered (shared log), or that the
    /// log evicted before this node read them, in the order their appends were answered; a
    /// failed append is answered in its turn.
    fn release_answers(&mut self) {
        let (head, first) = (self.history.head(), self.log_first);
        while self
            .answering
            .front()
            .is_some_and(|(seq, ..)| *seq <= head || *seq < first)
        {
            let Some((_, publisher, id, result)) = self.answering.pop_front() else {
                break;
            };
            if result.is_err() {
                self.count_error(ErrorCode::Unavailable);
            }
            self.answer_publisher(publisher, id, result);
        }
    }

    /// Whether other nodes append to the log too (deliveries come from `Committed`).
    pub(crate) fn shared_log(&self) -> bool {
        matches!(self.config.log, LogMode::External { shared: true, .. })
    }

    /// The next event of a shared log: delivered here in log order, whoever published it.
    fn committed(&mut self, logged: Logged) {
        if !self.shared_log() {
            return;
        }
        let head = self.history.head();
        if logged.seq <= head {
            return; // a recreated consumer repeating what this node already has
        }
        if logged.seq > head + 1 {
            // Evicted from the log before this node read them.
            self.skipped(head, logged.seq);
        }
        self.stored(logged.seq, logged.event);
        self.wake_waiting();
    }

    fn answer_publisher(
        &mut self,
        publisher: Publisher,
        id: AppendId,
        result: Result<Cursor, ProtocolError>,
    ) {
        match publisher {
            Publisher::App => self.emit(AppEvent::Stored { id, result }),
            Publisher::Conn { conn, req } => {
                let Some(&slot) = self.ids.get(&conn) else {
                    return;
                };
                let state = self.conn_mut(slot);
                state.appending = state.appending.saturating_sub(1);
                if state.closing {
                    return;
                }
                match result {
                    Ok(cursor) => self.ok(slot, req, Some(cursor), None),
                    Err(e) => self.fail(slot, req, e),
                }
                self.release_held(slot);
            }
        }
    }

    /// Keeps a command that came while a publish of the same connection is being stored: it is
    /// handled after that publish is answered, so answers keep the order of the commands.
    pub(crate) fn hold(&mut self, slot: crate::subs::Slot, cmd: crate::command::Command) {
        let state = self.conn_mut(slot);
        let held = &mut state.extras_mut().held;
        if held.len() < MAX_HELD {
            held.push_back(cmd);
            return;
        }
        self.count_error(ErrorCode::Unavailable);
        let e = ProtocolError::new(
            ErrorCode::Unavailable,
            format!(
                "more than {MAX_HELD} frames waited behind a publish being stored (the server's disk is slow); reconnect and resume"
            ),
        );
        self.close(slot, e);
    }

    /// Handles the commands held behind the connection's publishes, in order, as far as no
    /// publish is being stored (publishes themselves may follow each other).
    fn release_held(&mut self, slot: crate::subs::Slot) {
        loop {
            let state = self.conn_mut(slot);
            if state.closing {
                return;
            }
            let appending = state.appending > 0;
            let Some(held) = state.extras.as_mut().map(|x| &mut x.held) else {
                return;
            };
            match held.front() {
                Some(crate::command::Command::Publish { .. }) => {}
                Some(_) if !appending => {}
                _ => return,
            }
            let Some(cmd) = held.pop_front() else {
                return;
            };
            self.command(slot, cmd);
        }
    }

    /// A shared log skipped from `head` to `next`: the events in between were evicted before this
    /// node read them. Live subscribers get a gap notice now (the log does not say which topics
    /// lost events, so every subscriber does); connections catching up get one when they cross
    /// the hole.
    fn skipped(&mut self, head: u64, next: u64) {
        let epoch = self.config.epoch;
        self.holes.push_back((head + 1, next - 1));
        // `holes` only covers the hot window (dropped once it is older): a connection catching
        // up across the hole later, from a log page or past the log's first position (e.g. one
        // that waited for a cursor ahead), must still get its gap notice.
        self.history.lost_until(next - 1);
        let gap = Gap {
            from: Some(Cursor::new(epoch, head)),
            to: Cursor::new(epoch, next - 1),
            reason: GapReason::Evicted,
            dropped_messages: 0,
        };
        let mut live: Vec<_> = self.ids.values().copied().collect();
        live.retain(|&slot| {
            let conn = self.conn_ref(slot);
            !conn.closing && conn.catch_up.is_none() && !conn.subs.is_empty()
        });
        for slot in live {
            self.send_gap(slot, &gap);
        }
    }

    /// The log's retention moved its first position to `first`.
    fn trimmed(&mut self, first: u64) {
        if first > self.log_first {
            self.log_first = first;
            self.history.evict_before(first);
            self.encodings.trim(self.history.first_seq());
        }
    }

    /// A page for a connection catching up from the log.
    fn page(&mut self, read: crate::log::ReadId, result: Result<Page, ProtocolError>) {
        if let Some((conn, seq)) = self.probes.remove(&read) {
            return self.probed(conn, seq, result.as_ref().ok());
        }
        let Some((from, conns)) = self.reads.remove(&read) else {
            return;
        };
        if self.reading_from.get(&from) == Some(&read) {
            self.reading_from.remove(&from);
        }
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                // Nothing to serve them from: they reconnect and resume later.
                for conn in conns {
                    if let Some(&slot) = self.ids.get(&conn) {
                        self.close(slot, e.clone());
                    }
                }
                return;
            }
        };
        self.trimmed(page.first);
        for conn in conns {
            if let Some(&slot) = self.ids.get(&conn) {
                self.page_for(slot, read, &page);
            }
        }
    }

    /// A page read for connection `slot` (and maybe others).
    fn page_for(&mut self, slot: crate::subs::Slot, read: crate::log::ReadId, page: &Page) {
        let (hot_first, head) = (self.history.first_seq(), self.history.head());
        let state = self.conn_mut(slot);
        let Some(cu) = state.catch_up.as_deref_mut() else {
            return;
        };
        match cu.reading {
            Some((r, from)) if r == read && from == cu.pos + 1 => {
                // A shared log may hold events this node has not received yet (appended through
                // other nodes): those come with `Committed` and go to live subscribers then, so
                // serving them from the page too would deliver them twice.
                cu.page = page
                    .events
                    .iter()
                    .filter(|e| e.seq >= from && e.seq <= head)
                    .cloned()
                    .collect();
                if cu.page.is_empty() && page.first <= from {
                    // The log holds nothing from there to the hot window: positions that name
                    // no event (skipped by a restart).
                    cu.pos = cu.pos.max(hot_first - 1);
                }
            }
            // A rewind since it was asked: read again from the new position.
            _ => cu.page.clear(),
        }
        cu.reading = None;
        self.pump(slot);
    }

    /// The log's first retained position: the hot window's with the in-memory log.
    pub(crate) fn log_first(&self) -> u64 {
        match self.config.log {
            LogMode::Memory => self.history.first_seq(),
            LogMode::External { .. } => self.log_first.min(self.history.first_seq()),
        }
    }

    /// Starts from a recovered log: its epoch, its positions and its newest events. Call it
    /// before any connection opens (it is ignored afterwards, and with the in-memory log).
    pub fn restore_log(&mut self, state: LogState) {
        if !matches!(self.config.log, LogMode::External { .. }) || !self.ids.is_empty() {
            return;
        }
        self.install_log(state);
    }

    /// The shared log was replaced (`LogReply::Replaced`): every connection's subscriptions go
    /// on in the new log after an `epoch` gap notice, from what it retains.
    fn replaced(&mut self, state: LogState) {
        if !self.shared_log() {
            return;
        }
        let old = Cursor::new(self.config.epoch, self.history.head());
        // Answers held until delivery: their events were stored, in the old log.
        while let Some((_, publisher, id, result)) = self.answering.pop_front() {
            self.answer_publisher(publisher, id, result);
        }
        // Reads and waits refer to the old positions.
        self.reads.clear();
        self.reading_from.clear();
        self.probes.clear();
        self.waiting.clear();
        self.holes.clear();
        // Parked sessions hold old positions: their clients resume with their cursors instead
        // (and get the same gap notice).
        let parked: Vec<Name> = self.parked.keys().cloned().collect();
        self.parked.clear();
        self.parked_order.clear();
        for client_id in parked {
            self.route_changed(crate::relay::Route::Client(client_id.clone()));
            self.emit(AppEvent::SessionExpired { client_id });
        }
        self.encodings.clear();
        self.install_log(state);
        let to = self.log_first - 1;
        let gap = Gap {
            from: Some(old),
            to: Cursor::new(self.config.epoch, to),
            reason: GapReason::Epoch,
            dropped_messages: 0,
        };
        let slots: Vec<crate::subs::Slot> = self.ids.values().copied().collect();
        for slot in slots {
            let conn = self.conn_mut(slot);
            if conn.closing || conn.subs.is_empty() {
                continue;
            }
            for sub in &mut conn.subs {
                sub.start = to;
                sub.done = to;
            }
            conn.catch_up = Some(Box::new(crate::conn::CatchUp::new(
                to,
                GapReason::Evicted,
                0,
            )));
            self.send_gap(slot, &gap);
            self.pump(slot);
        }
    }

    /// Takes `state` as the log: its epoch, positions and newest events.
    fn install_log(&mut self, state: LogState) {
        let LogState {
            epoch,
            first,
            head,
            recovered,
            recent,
            now_ms,
        } = state;
        self.config.epoch = epoch;
        self.log_first = first;
        self.lost = (recovered < head).then_some((recovered, head));
        let now = self.now;
        let events = recent
            .into_iter()
            .map(|l| {
                let age = Duration::from_millis(now_ms.saturating_sub(l.time_ms));
                let at = now.checked_sub(age).unwrap_or(now);
                StoredEvent::new(
                    l.seq,
                    l.event.topic,
                    l.event.event,
                    l.event.payload,
                    l.event.from,
                    at,
                )
            })
            .collect();
        self.history.restore(head, events);
        self.encodings.trim(self.history.first_seq());
        if let Some(next) = self.history.evict_expired(now) {
            self.arm_retention(next);
        }
    }
}
