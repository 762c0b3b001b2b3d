//! Per-connection state: plain data, kept small (an idle connection costs a few hundred bytes).

use std::sync::Arc;
use std::time::Instant;

use crate::codec::Codec;
use crate::grants::Grants;
use crate::ids::{AckId, ConnId, ReqId};
use crate::output::{GapReason, Visibility};
use crate::topic::{Name, Pattern};

/// One subscription of a connection.
///
/// `start` and `done` make replay exact: the subscription wants events after `start`, and events
/// in `(start, done]` were already delivered through it. A live subscription has
/// `start == done == head at subscribe time` and gets every later event; a resuming one starts
/// with `start == done == cursor`.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    pub(crate) pattern: Pattern,
    pub(crate) name: Option<Name>,
    pub(crate) start: u64,
    pub(crate) done: u64,
}

impl Sub {
    /// Wants `seq` and has not delivered it.
    pub(crate) fn wants(&self, seq: u64) -> bool {
        seq > self.start && seq > self.done
    }

    /// Already delivered `seq` (if it matched).
    pub(crate) fn served(&self, seq: u64) -> bool {
        self.start < seq && seq <= self.done
    }
}

/// Whether an event at `seq` on `topic` must be delivered to a connection with these
/// subscriptions: some subscription wants it and none has delivered it yet (including
/// subscriptions removed while catching up, which still remember what they delivered).
pub(crate) fn should_deliver(subs: &[Sub], removed: &[Sub], topic: &str, seq: u64) -> bool {
    let mut wanted = false;
    for sub in subs.iter().filter(|s| s.pattern.matches(topic)) {
        if sub.served(seq) {
            return false;
        }
        wanted |= sub.wants(seq);
    }
    wanted
        && !removed
            .iter()
            .any(|s| s.served(seq) && s.pattern.matches(topic))
}

/// A connection that is not live: it is being served from the history (a resume, or catching up
/// after falling behind). Live events skip it; `pump` feeds it as its transport drains.
#[derive(Debug, Clone)]
pub(crate) struct CatchUp {
    /// Every event up to here has been considered.
    pub(crate) pos: u64,
    /// The reason to give in a gap notice if something turns out to be missing.
    pub(crate) reason: GapReason,
    /// Messages (not retained) dropped while behind.
    pub(crate) dropped_messages: u64,
    /// Subscriptions removed while catching up that had delivered events beyond `pos`: they
    /// keep those events from being delivered twice through another subscription.
    pub(crate) removed: Vec<Sub>,
    /// Events read from the external log and not yet served (older than the hot window).
    pub(crate) page: std::collections::VecDeque<crate::log::Logged>,
    /// The log read in flight for this connection, if any, and the position it starts at (a
    /// page that no longer starts right after `pos` is dropped and read again).
    pub(crate) reading: Option<(crate::log::ReadId, u64)>,
    /// Not live before the head reaches this position (0: no wait): the client resumed from a
    /// cursor another node of a shared log handed out, further along than this one.
    pub(crate) ahead: u64,
    /// The log said it holds `ahead`: the wait ends only when this node reads that far.
    pub(crate) ahead_held: bool,
}

impl CatchUp {
    /// Catching up from `pos`, for `reason`.
    pub(crate) fn new(pos: u64, reason: GapReason, dropped_messages: u64) -> Self {
        Self {
            pos,
            reason,
            dropped_messages,
            removed: Vec::new(),
            page: std::collections::VecDeque::new(),
            reading: None,
            ahead: 0,
            ahead_held: false,
        }
    }

    /// Moves back to `to` if that is earlier (new subscriptions replay from there); a page read
    /// for a later position no longer applies.
    pub(crate) fn rewind(&mut self, to: u64) {
        if to < self.pos {
            self.pos = to;
            self.page.clear();
        }
    }
}

/// What only some connections use, kept out of line so an idle connection stays small.
#[derive(Default)]
pub(crate) struct Extras {
    pub(crate) client_id: Option<Name>,
    pub(crate) rooms: Vec<Name>,
    /// Client requests waiting for the application.
    pub(crate) requests: Vec<ReqId>,
    /// Server requests waiting for the client.
    pub(crate) acks: Vec<AckId>,
    /// Events for the application that want no answer ([`crate::AppEvent::Notify`]) whose
    /// handlers have not finished ([`crate::Broker::notify_done`]).
    pub(crate) notifies: usize,
    /// Commands received while a publish of this connection was being stored, in order.
    pub(crate) held: std::collections::VecDeque<crate::command::Command>,
    /// The last server request id handed out (ids start at 1).
    pub(crate) next_ack: AckId,
    /// The earliest resume cursor (sequence) the connection subscribed from: a parked session
    /// it claims resumes from there if that is earlier than where delivery stopped.
    pub(crate) resumed_from: Option<u64>,
    /// The topics whose presence it watches (at most `max_subscriptions`).
    pub(crate) watching: Vec<crate::topic::Topic>,
}

pub(crate) struct ConnState {
    pub(crate) id: ConnId,
    /// Its wire format, with whatever per-connection state the format keeps.
    pub(crate) codec: Box<dyn Codec>,
    /// The index of its format in the broker's list (`Broker::formats`): connections of one
    /// format share encodings.
    pub(crate) format: u8,
    /// `codec.duplex()`, read on every timer.
    pub(crate) duplex: bool,
    pub(crate) grants: Arc<Grants>,
    pub(crate) subs: Vec<Sub>,
    /// Bytes handed out and not yet reported flushed.
    pub(crate) queued: usize,
    pub(crate) catch_up: Option<Box<CatchUp>>,
    pub(crate) extras: Option<Box<Extras>>,
    pub(crate) last_read: Instant,
    pub(crate) last_write: Instant,
    /// The fan-out this connection last received (deduplicates overlapping subscriptions).
    pub(crate) stamp: u64,
    /// The broker asked the adapter to close it; waiting for `Closed`.
    pub(crate) closing: bool,
    /// Its presence ended (it is closing or closed): its leaves were sent.
    pub(crate) gone: bool,
    /// Its publishes handed to the external log and not answered yet: its later commands (but
    /// publishes) wait in `Extras::held`, so that answers keep the order of the commands.
    pub(crate) appending: u32,
}

impl ConnState {
    pub(crate) fn new(
        id: ConnId,
        codec: Box<dyn Codec>,
        format: u8,
        grants: Arc<Grants>,
        now: Instant,
    ) -> Self {
        Self {
            id,
            duplex: codec.duplex(),
            codec,
            format,
            grants,
            subs: Vec::new(),
            queued: 0,
            catch_up: None,
            extras: None,
            last_read: now,
            last_write: now,
            stamp: 0,
            closing: false,
            gone: false,
            appending: 0,
        }
    }

    /// The rarely used state, allocated on first use.
    pub(crate) fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    pub(crate) fn client_id(&self) -> Option<&Name> {
        self.extras.as_ref()?.client_id.as_ref()
    }

    pub(crate) fn rooms(&self) -> &[Name] {
        self.extras.as_ref().map_or(&[], |x| &x.rooms)
    }

    pub(crate) fn requests(&self) -> &[ReqId] {
        self.extras.as_ref().map_or(&[], |x| &x.requests)
    }

    pub(crate) fn acks(&self) -> &[AckId] {
        self.extras.as_ref().map_or(&[], |x| &x.acks)
    }

    pub(crate) fn sub(&self, pattern: &Pattern) -> Option<&Sub> {
        self.subs.iter().find(|s| s.pattern == *pattern)
    }
}

/// Whether a connection may see events of a topic with this visibility.
pub(crate) fn sees(conn: &ConnState, visibility: &Visibility) -> bool {
    sees_extras(conn.extras.as_deref(), visibility)
}

/// [`sees`] on the part of the connection state it needs.
pub(crate) fn sees_extras(extras: Option<&Extras>, visibility: &Visibility) -> bool {
    match visibility {
        Visibility::Public => true,
        Visibility::Private(owner) => extras.and_then(|x| x.client_id.as_ref()) == Some(owner),
        Visibility::Group(room) => extras.is_some_and(|x| x.rooms.contains(room)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(p: &str, start: u64, done: u64) -> Sub {
        Sub {
            pattern: Pattern::parse(p, Default::default()).unwrap(),
            name: None,
            start,
            done,
        }
    }

    #[test]
    fn delivery_rule() {
        // `a.*` delivered up to 10; `a.b` resumes from 5.
        let subs = [sub("a.*", 0, 10), sub("a.b", 5, 5)];
        assert!(
            !should_deliver(&subs, &[], "a.b", 7),
            "already delivered through a.*"
        );
        assert!(should_deliver(&subs, &[], "a.b", 11));
        assert!(!should_deliver(&subs, &[], "c", 11));
        // `a.*` was removed while catching up: its deliveries still count.
        assert!(!should_deliver(&subs[1..], &subs[..1], "a.b", 7));
        assert!(should_deliver(&subs[1..], &subs[..1], "a.b", 11));
        // A live subscription made at head 10 does not want older events.
        let subs = [sub("a.b", 10, 10)];
        assert!(!should_deliver(&subs, &[], "a.b", 9));
        assert!(should_deliver(&subs, &[], "a.b", 11));
    }
}
