//! Subscribing: grants and limits, where new subscriptions start (now, or a resume cursor), and
//! the rewind that replays history to them without duplicating what the connection already got.

use crate::broker::Broker;
use crate::command::Subscribe;
use crate::conn::{CatchUp, Sub};
use crate::cursor::Cursor;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::ConnId;
use crate::output::{Gap, GapReason, Output};
use crate::subs::Slot;

/// How long a resume from a cursor ahead of this node's head (handed out by another node of a
/// shared log) waits for the head to reach it.
pub(crate) const AHEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Broker {
    pub(crate) fn subscribe(&mut self, slot: Slot, sub: Subscribe) {
        let Subscribe {
            req,
            patterns,
            from,
            name,
        } = sub;
        let conn = self.conn_ref(slot);
        if let Some(p) = patterns.iter().find(|p| !conn.grants.may_subscribe(p)) {
            let e = ProtocolError::new(
                ErrorCode::Forbidden,
                format!(
                    "subscribing to {:?} is not granted to this connection",
                    p.as_str()
                ),
            );
            return self.fail(slot, req, e);
        }
        if let Some(p) = patterns.iter().find(|p| !self.may_see(conn, p)) {
            let e = crate::session::not_visible(p);
            return self.fail(slot, req, e);
        }
        let mut new: Vec<_> = patterns
            .into_iter()
            .filter(|p| conn.sub(p).is_none())
            .collect();
        new.sort();
        new.dedup();
        let max = self.config.limits.max_subscriptions;
        if conn.subs.len() + new.len() > max {
            let e = ProtocolError::new(
                ErrorCode::LimitReached,
                format!(
                    "at most {max} subscriptions per connection; this one holds {}",
                    conn.subs.len()
                ),
            );
            return self.fail(slot, req, e);
        }
        let id = conn.id;
        self.ok(slot, req, Some(self.head()), None);
        if !new.is_empty() {
            let patterns = new.clone();
            self.lifecycle(|| crate::output::Lifecycle::Subscribed { conn: id, patterns });
        }
        self.subscribe_inner(slot, new, from, name);
    }

    /// Adds checked subscriptions that the connection does not hold yet, starting now or after
    /// `from`, and serves what they should replay.
    pub(crate) fn subscribe_inner(
        &mut self,
        slot: Slot,
        new: Vec<crate::topic::Pattern>,
        from: Option<Cursor>,
        name: Option<crate::topic::Name>,
    ) {
        let head = self.history.head();
        // Where the new subscriptions start: now, or the client's cursor.
        let start = match from {
            None => head,
            Some(c) if c.epoch == self.config.epoch && c.seq <= head => {
                if let Some((recovered, reserved)) = self.lost
                    && c.seq > recovered
                    && c.seq <= reserved
                    && !new.is_empty()
                {
                    // It saw events that were not recovered after a crash (a power loss under
                    // `durability = "os"`): say so; nothing else ever gets those positions.
                    let gap = Gap {
                        from: Some(c),
                        to: Cursor::new(self.config.epoch, reserved),
                        reason: GapReason::Evicted,
                        dropped_messages: 0,
                    };
                    self.send_gap(slot, &gap);
                }
                c.seq
            }
            Some(_) if new.is_empty() => head,
            Some(c) if c.epoch == self.config.epoch && self.shared_log() => {
                // Handed out by a node further along the shared log: wait until this one has
                // received up to it, so nothing the client saw comes again.
                self.wait_for(slot, c.seq);
                c.seq
            }
            Some(c) => {
                // Another epoch (or a cursor from the future): nothing it saw can be matched up,
                // so say so and replay whatever this epoch still holds.
                let to = self.log_first() - 1;
                let gap = Gap {
                    from: Some(c),
                    to: Cursor::new(self.config.epoch, to),
                    reason: GapReason::Epoch,
                    dropped_messages: 0,
                };
                self.send_gap(slot, &gap);
                to
            }
        };
        if from.is_some() && start < head {
            let x = self.conn_mut(slot).extras_mut();
            x.resumed_from = Some(x.resumed_from.map_or(start, |r| r.min(start)));
        }
        if start < head && !new.is_empty() {
            self.rewind(slot, start);
        }
        // Most connections hold a handful of patterns: no spare capacity for them.
        self.conn_mut(slot).subs.reserve_exact(new.len());
        for pattern in new {
            self.subs.insert(&pattern, slot);
            if let Some(name) = &name {
                self.names.entry(name.clone()).or_default().push(slot);
                self.route_changed(crate::relay::Route::Named(name.clone()));
            }
            let conn = self.conn_mut(slot);
            conn.subs.push(Sub {
                pattern: pattern.clone(),
                name: name.clone(),
                start,
                done: start,
            });
            self.presence_sub_added(slot, &pattern);
        }
        self.pump(slot);
    }

    /// Moves the connection's history position back to `to` so new subscriptions get their
    /// replay; existing subscriptions first record what they already delivered.
    fn rewind(&mut self, slot: Slot, to: u64) {
        let head = self.history.head();
        let conn = self.conn_mut(slot);
        let pos = conn.catch_up.as_ref().map_or(head, |c| c.pos);
        for sub in &mut conn.subs {
            sub.done = sub.done.max(pos);
        }
        match &mut conn.catch_up {
            Some(cu) => cu.rewind(to),
            None => {
                conn.catch_up = Some(Box::new(CatchUp::new(to, GapReason::Evicted, 0)));
            }
        }
    }

    /// Keeps the connection off live delivery until the head reaches `seq`, and asks the log
    /// whether it holds `seq` at all: a cursor past the log's end (a crafted one, or one of a
    /// replica-1 stream that lost its tail) gets its gap at once, one the log holds is waited
    /// for however long this node's consumer takes (a pause, not a gap). Unanswered within
    /// [`AHEAD_WAIT`], the log is asked again (`Timer::Ahead`).
    fn wait_for(&mut self, slot: Slot, seq: u64) {
        let head = self.history.head();
        let conn = self.conn_mut(slot);
        let id = conn.id;
        if conn.catch_up.is_none() {
            for sub in &mut conn.subs {
                sub.done = sub.done.max(head);
            }
            conn.catch_up = Some(Box::new(CatchUp::new(head, GapReason::Evicted, 0)));
        }
        let cu = conn.catch_up.as_deref_mut().expect("set above");
        if seq <= cu.ahead {
            return;
        }
        cu.ahead = seq;
        cu.ahead_held = false;
        if !self.waiting.contains(&id) {
            self.waiting.push(id);
        }
        self.probe(id, seq);
    }

    /// Asks the shared log whether it holds position `seq`, for connection `conn`.
    fn probe(&mut self, conn: ConnId, seq: u64) {
        let read = crate::log::ReadId(self.next_read);
        self.next_read += 1;
        self.probes.insert(read, (conn, seq));
        self.out
            .push_back(Output::Log(crate::log::LogRequest::Read {
                read,
                from: seq,
                max_events: 1,
            }));
        self.timers
            .schedule(self.now + AHEAD_WAIT, crate::timers::Timer::Ahead(conn));
    }

    /// The shared log's answer to whether it holds position `seq` that a connection waits for
    /// (`None`: the read failed). Nothing at or after it, and not evicted, means the cursor is
    /// ahead of the log, not of this node. (A cursor at a trailing position that holds no event
    /// looks the same: that one gets the gap too, a rare case.)
    pub(crate) fn probed(&mut self, conn: ConnId, seq: u64, page: Option<&crate::log::Page>) {
        let Some(&slot) = self.ids.get(&conn) else {
            return;
        };
        let Some(cu) = self.conn_mut(slot).catch_up.as_deref_mut() else {
            return;
        };
        if cu.ahead != seq {
            return;
        }
        let Some(page) = page else {
            return; // asked again when its timer fires
        };
        if page.events.is_empty() && page.done && page.first <= seq {
            self.ahead_of_log(slot);
        } else {
            cu.ahead_held = true;
        }
    }

    /// A connection's wait for the head to reach its cursor is [`AHEAD_WAIT`] old: unless the
    /// log said it holds that position, ask it again (the last probe failed or went
    /// unanswered).
    pub(crate) fn ahead_unanswered(&mut self, slot: Slot) {
        let head = self.history.head();
        let conn = self.conn_ref(slot);
        let id = conn.id;
        let Some(cu) = conn.catch_up.as_deref() else {
            return;
        };
        if cu.ahead > head && !cu.ahead_held {
            let seq = cu.ahead;
            self.probes.retain(|_, (c, _)| *c != id);
            self.probe(id, seq);
        }
    }

    /// Pumps the connections waiting for the head to reach their cursor (it moved).
    pub(crate) fn wake_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.retain(|conn| {
            let Some(&slot) = self.ids.get(conn) else {
                return false;
            };
            self.pump(slot);
            self.conn_ref(slot)
                .catch_up
                .as_ref()
                .is_some_and(|cu| cu.ahead > self.history.head())
        });
        self.waiting.append(&mut waiting);
    }

    /// The log holds nothing from the cursor a connection resumed from: that cursor is ahead of
    /// the log; say so and replay what the log retains, as for a cursor of another epoch.
    fn ahead_of_log(&mut self, slot: Slot) {
        let (head, epoch) = (self.history.head(), self.config.epoch);
        // As for a cursor of another epoch: nothing it saw can be matched up, so it gets what
        // this epoch still holds.
        let to = self.log_first() - 1;
        let conn = self.conn_mut(slot);
        let Some(cu) = conn.catch_up.as_deref_mut() else {
            return;
        };
        if cu.ahead <= head {
            return;
        }
        let from = std::mem::take(&mut cu.ahead);
        let pos = cu.pos;
        cu.rewind(to);
        for sub in &mut conn.subs {
            if sub.start > head {
                // Waiting for that cursor: replays from `to`.
                sub.start = to;
                sub.done = to;
            } else {
                // Subscribed before: had everything up to `pos` already.
                sub.done = sub.done.max(pos);
            }
        }
        let gap = Gap {
            from: Some(Cursor::new(epoch, from)),
            to: Cursor::new(epoch, to),
            reason: GapReason::Epoch,
            dropped_messages: 0,
        };
        self.send_gap(slot, &gap);
        self.pump(slot);
    }

    pub(crate) fn remove_sub(&mut self, slot: Slot, pattern: &crate::topic::Pattern) {
        let max = self.config.limits.max_subscriptions;
        let conn = self.conn_mut(slot);
        let Some(i) = conn.subs.iter().position(|s| s.pattern == *pattern) else {
            return;
        };
        let sub = conn.subs.remove(i);
        if let Some(cu) = conn.catch_up.as_deref_mut() {
            // Remember what it delivered beyond the catch-up position, if anything; bounded like
            // subscriptions (past that, the oldest memory goes: a duplicate beats unbounded growth).
            cu.removed.retain(|s| s.done > cu.pos);
            if sub.done > sub.start.max(cu.pos) {
                if cu.removed.len() >= max {
                    cu.removed.remove(0);
                }
                cu.removed.push(Sub {
                    name: None,
                    ..sub.clone()
                });
            }
        }
        self.subs.remove(pattern, slot);
        self.presence_sub_removed(slot, pattern);
        if let Some(name) = sub.name {
            if let Some(list) = self.names.get_mut(&name) {
                if let Some(j) = list.iter().position(|s| *s == slot) {
                    list.swap_remove(j);
                }
                if list.is_empty() {
                    self.names.remove(&name);
                    self.route_changed(crate::relay::Route::Named(name.clone()));
                }
            }
        }
    }
}
