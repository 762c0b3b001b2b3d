//! Subscribing: grants and limits, where new subscriptions start (now, or a resume cursor), and
//! the rewind that replays history to them without duplicating what the connection already got.

use crate::broker::Broker;
use crate::command::Subscribe;
use crate::conn::{CatchUp, Sub};
use crate::cursor::Cursor;
use crate::error::{ErrorCode, ProtocolError};
use crate::output::{Gap, GapReason};
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
            }
            let conn = self.conn_mut(slot);
            conn.subs.push(Sub {
                pattern,
                name: name.clone(),
                start,
                done: start,
            });
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

    /// Keeps the connection off live delivery until the head reaches `seq`, at most
    /// [`AHEAD_WAIT`]; then its cursor is not of this log after all (`Timer::Ahead`).
    fn wait_for(&mut self, slot: Slot, seq: u64) {
        let head = self.history.head();
        let now = self.now;
        let conn = self.conn_mut(slot);
        let id = conn.id;
        if conn.catch_up.is_none() {
            for sub in &mut conn.subs {
                sub.done = sub.done.max(head);
            }
            conn.catch_up = Some(Box::new(CatchUp::new(head, GapReason::Evicted, 0)));
        }
        let cu = conn.catch_up.as_deref_mut().expect("set above");
        cu.ahead = cu.ahead.max(seq);
        if !self.waiting.contains(&id) {
            self.waiting.push(id);
        }
        self.timers
            .schedule(now + AHEAD_WAIT, crate::timers::Timer::Ahead(id));
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

    /// The head did not reach the cursor a connection resumed from within [`AHEAD_WAIT`]: that
    /// cursor is ahead of the log; say so and go on from the head.
    pub(crate) fn ahead_expired(&mut self, slot: Slot) {
        let (head, epoch) = (self.history.head(), self.config.epoch);
        let conn = self.conn_mut(slot);
        let Some(cu) = conn.catch_up.as_deref_mut() else {
            return;
        };
        if cu.ahead <= head {
            return;
        }
        let from = std::mem::take(&mut cu.ahead);
        for sub in &mut conn.subs {
            if sub.start > head {
                sub.start = head;
                sub.done = head;
            }
        }
        let gap = Gap {
            from: Some(Cursor::new(epoch, from)),
            to: Cursor::new(epoch, head),
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
        if let Some(name) = sub.name {
            if let Some(list) = self.names.get_mut(&name) {
                if let Some(j) = list.iter().position(|s| *s == slot) {
                    list.swap_remove(j);
                }
                if list.is_empty() {
                    self.names.remove(&name);
                }
            }
        }
    }
}
