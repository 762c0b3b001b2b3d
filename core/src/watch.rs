//! Presence notices: connections that watch a topic's presence get a join when a connection
//! starts matching it and a leave when one stops ([`PresenceNotice`]).
//!
//! - A watch is on one exact topic, asked with [`Command::WatchPresence`] (the same grant as
//!   the presence itself: the subscribe right, and a declared private topic only to its owner),
//!   answered with the current presence; at most `max_subscriptions` watches per connection.
//! - A connection *matches* a topic while it holds a subscription whose pattern matches it and
//!   is not closing: exactly what [`Broker::presence`] counts. A join is sent when its first
//!   such subscription appears (subscribe, a parked session restored, an identify, an
//!   application's change), a leave when its last one goes (unsubscribe, close). A parked
//!   session is not present (the presence does not count it): a client whose connection drops
//!   leaves, and joins again when it reconnects and gets its session back. An identify changes
//!   who a matching connection is: a leave of the old identity, then a join of the new one.
//! - Notices go through the watcher's queue like messages (`fan_out_message`, one encoding per
//!   wire format): past `max_queued_bytes` the slow-consumer policy applies, as for messages.
//! - In a cluster ([`crate::relay`]) a node announces the topics it watches
//!   ([`RelayRequest::Watch`]); the relay says which topics other nodes watch
//!   ([`RelayReply::WatchedElsewhere`]); joins and leaves of this node's connections on those
//!   topics are relayed ([`RelayRequest::Notice`]) and notices of other nodes come in
//!   ([`RelayReply::Notice`]) for the local watchers.
//!
//! The state is plain data: which local connections watch which topic, and which topics other
//! nodes watch. When nothing is watched anywhere, a subscription change costs one emptiness
//! check; otherwise an exact subscription costs a lookup, and a wildcard one a match against
//! every watched topic (here and elsewhere).

use std::collections::{HashMap, HashSet};

use crate::broker::Broker;
use crate::codec::Frame;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::ReqId;
use crate::output::Output;
use crate::presence::{PresenceAction, PresenceNotice};
use crate::relay::{RelayReply, RelayRequest};
use crate::subs::Slot;
use crate::topic::{Name, Pattern, Topic};

/// Who watches which topic.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    /// Topics watched on this node, and the connections watching each.
    local: HashMap<Topic, Vec<Slot>>,
    /// Topics watched on other nodes (a cluster only).
    remote: HashSet<Topic>,
    /// Watches whose answer waits for the other nodes' presence (a cluster only), by watcher
    /// and topic: the request to answer and the notices held until the answer is sent (so a
    /// watcher gets its starting presence first, then what changed since), at most
    /// [`MAX_HELD`]; `None` once more came.
    starting: HashMap<(Slot, Topic), (ReqId, Held)>,
}

/// The notices held for a starting watch; `None` past [`MAX_HELD`].
type Held = Option<Vec<PresenceNotice>>;

/// The most notices held for a watch whose answer is being gathered; past it the watch is
/// refused (`unavailable`: the presence changed too fast to be gathered; watch again).
const MAX_HELD: usize = 1024;

impl Watches {
    fn is_empty(&self) -> bool {
        self.local.is_empty() && self.remote.is_empty()
    }

    /// The watched topics (here or elsewhere) that `pattern` matches.
    fn matching(&self, pattern: &Pattern) -> Vec<Topic> {
        if !pattern.is_wildcard() {
            return self
                .local
                .get_key_value(pattern.as_str())
                .map(|(t, _)| t)
                .or_else(|| self.remote.get(pattern.as_str()))
                .into_iter()
                .cloned()
                .collect();
        }
        let mut topics: Vec<Topic> = self
            .local
            .keys()
            .chain(self.remote.iter().filter(|t| !self.local.contains_key(*t)))
            .filter(|t| pattern.matches(t.as_str()))
            .cloned()
            .collect();
        topics.sort_unstable();
        topics
    }
}

impl Broker {
    /// A client's `presence` op with `watch`.
    pub(crate) fn watch_command(&mut self, slot: Slot, req: ReqId, topic: Topic, watch: bool) {
        if !watch {
            self.unwatch(slot, &topic);
            return self.ok(slot, Some(req), None, None);
        }
        let conn = self.conn_ref(slot);
        if !self.may_see_presence(&conn.grants, &topic)
            || !self.may_see(conn, &Pattern::exact(&topic))
        {
            return self.fail(slot, Some(req), crate::presence::not_granted(&topic));
        }
        let watching = conn.extras.as_ref().map_or(&[][..], |x| &x.watching[..]);
        if !watching.contains(&topic) {
            let max = self.config.limits.max_subscriptions;
            if watching.len() >= max {
                let e = ProtocolError::new(
                    ErrorCode::LimitReached,
                    format!("at most {max} presence watches per connection"),
                );
                return self.fail(slot, Some(req), e);
            }
            self.conn_mut(slot)
                .extras_mut()
                .watching
                .push(topic.clone());
            let watchers = self.watches.local.entry(topic.clone()).or_default();
            watchers.push(slot);
            if watchers.len() == 1 && self.relays() {
                // Announced before the presence is gathered: a node answering the gathering
                // has heard of the watch, and relays every later change.
                self.out.push_back(Output::Relay(RelayRequest::Watch {
                    topic: topic.clone(),
                    watched: true,
                }));
            }
        }
        // Answered with the presence now; notices follow it. A cluster's answer waits for the
        // other nodes: the notices meanwhile are held until it is sent (`watch_answered`).
        if self.relays() {
            self.watches
                .starting
                .insert((slot, topic.clone()), (req, Some(Vec::new())));
        }
        let asker = crate::relay::Asker::Conn(self.conn_ref(slot).id, req);
        self.ask_presence(asker, topic);
    }

    /// A connection's `presence` request (`req`) on `topic` was answered: if it started a
    /// watch, the notices held meanwhile go now.
    pub(crate) fn watch_answered(&mut self, slot: Slot, topic: &Topic, req: ReqId) {
        let key = (slot, topic.clone());
        if self
            .watches
            .starting
            .get(&key)
            .is_none_or(|(r, _)| *r != req)
        {
            return;
        }
        let Some((_, held)) = self.watches.starting.remove(&key) else {
            return;
        };
        match held {
            Some(held) => {
                for notice in &held {
                    self.fan_out_message(&[slot], &Frame::Presence(notice));
                }
            }
            None => {
                self.unwatch(slot, topic);
                let e = ProtocolError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the presence of {:?} changed more than {MAX_HELD} times while it was \
                         gathered from the other nodes; the watch was stopped: watch again",
                        topic.as_str()
                    ),
                );
                self.fail(slot, None, e);
            }
        }
    }

    /// Stops a connection's watch of `topic` (nothing if it does not watch it).
    fn unwatch(&mut self, slot: Slot, topic: &Topic) {
        let Some(x) = self.conn_mut(slot).extras.as_deref_mut() else {
            return;
        };
        let Some(i) = x.watching.iter().position(|t| t == topic) else {
            return;
        };
        x.watching.swap_remove(i);
        self.drop_watcher(slot, topic);
    }

    fn drop_watcher(&mut self, slot: Slot, topic: &Topic) {
        if !self.watches.starting.is_empty() {
            self.watches.starting.remove(&(slot, topic.clone()));
        }
        let Some(watchers) = self.watches.local.get_mut(topic) else {
            return;
        };
        if let Some(i) = watchers.iter().position(|s| *s == slot) {
            watchers.swap_remove(i);
        }
        if watchers.is_empty() {
            self.watches.local.remove(topic);
            if self.relays() {
                self.out.push_back(Output::Relay(RelayRequest::Watch {
                    topic: topic.clone(),
                    watched: false,
                }));
            }
        }
    }

    /// A subscription to `pattern` was added to the connection (already in its list): a join
    /// on every watched topic it is the connection's first match of.
    pub(crate) fn presence_sub_added(&mut self, slot: Slot, pattern: &Pattern) {
        if self.watches.is_empty() {
            return;
        }
        for topic in self.watches.matching(pattern) {
            let conn = self.conn_ref(slot);
            let matches = conn
                .subs
                .iter()
                .filter(|s| s.pattern.matches(topic.as_str()))
                .count();
            if matches == 1 && !conn.closing && !conn.gone {
                self.notice(slot, topic, PresenceAction::Join);
            }
        }
    }

    /// A subscription to `pattern` was removed from the connection: a leave on every watched
    /// topic it was the connection's last match of.
    pub(crate) fn presence_sub_removed(&mut self, slot: Slot, pattern: &Pattern) {
        if self.watches.is_empty() {
            return;
        }
        let conn = self.conn_ref(slot);
        if conn.gone {
            return; // its leaves went when it closed
        }
        for topic in self.watches.matching(pattern) {
            let conn = self.conn_ref(slot);
            if !conn.subs.iter().any(|s| s.pattern.matches(topic.as_str())) {
                self.notice(slot, topic, PresenceAction::Leave);
            }
        }
    }

    /// The watched topics the connection matches now.
    fn matched_topics(&self, slot: Slot) -> Vec<Topic> {
        let conn = self.conn_ref(slot);
        let mut topics: Vec<Topic> = conn
            .subs
            .iter()
            .flat_map(|s| self.watches.matching(&s.pattern))
            .collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    /// The connection is going (closing, or closed): a leave on every watched topic it
    /// matches, and its own watches end. Called before its client id and subscriptions are
    /// released; later removals of its subscriptions send nothing.
    pub(crate) fn presence_conn_gone(&mut self, slot: Slot) {
        if self.conn_ref(slot).gone {
            return;
        }
        let watching = self
            .conn_mut(slot)
            .extras
            .as_deref_mut()
            .map(|x| std::mem::take(&mut x.watching))
            .unwrap_or_default();
        for topic in &watching {
            self.drop_watcher(slot, topic);
        }
        if !self.watches.is_empty() {
            for topic in self.matched_topics(slot) {
                self.notice(slot, topic, PresenceAction::Leave);
            }
        }
        self.conn_mut(slot).gone = true;
    }

    /// The connection's client id is about to change from what it is to `new`: for every
    /// watched topic it matches, a leave of the old identity now and a join of the new one.
    pub(crate) fn presence_identity_changes(&mut self, slot: Slot, new: &Name) {
        if self.watches.is_empty() || self.conn_ref(slot).client_id() == Some(new) {
            return;
        }
        let topics = self.matched_topics(slot);
        if topics.is_empty() {
            return;
        }
        for topic in &topics {
            self.notice(slot, topic.clone(), PresenceAction::Leave);
        }
        let old = self
            .conn_mut(slot)
            .extras_mut()
            .client_id
            .replace(new.clone());
        for topic in topics {
            self.notice(slot, topic, PresenceAction::Join);
        }
        self.conn_mut(slot).extras_mut().client_id = old;
    }

    /// A join or leave of connection `slot` on `topic`: to the local watchers, and to the other
    /// nodes when some watch it.
    fn notice(&mut self, slot: Slot, topic: Topic, action: PresenceAction) {
        let conn = self.conn_ref(slot);
        let notice = PresenceNotice {
            topic,
            action,
            client_id: conn.client_id().cloned(),
            info: conn.grants.info.clone(),
        };
        self.deliver_notice(&notice);
        if self.relays() && self.watches.remote.contains(&notice.topic) {
            self.out
                .push_back(Output::Relay(RelayRequest::Notice(notice)));
        }
    }

    /// Hands a notice to the connections watching its topic here.
    fn deliver_notice(&mut self, notice: &PresenceNotice) {
        let Some(watchers) = self.watches.local.get(&notice.topic) else {
            return;
        };
        let mut slots = std::mem::take(&mut self.scratch);
        slots.extend_from_slice(watchers);
        if !self.watches.starting.is_empty() {
            // Held for the watchers whose starting presence is not sent yet.
            let starting = &mut self.watches.starting;
            slots.retain(|slot| {
                let Some((_, held)) = starting.get_mut(&(*slot, notice.topic.clone())) else {
                    return true;
                };
                if let Some(list) = held {
                    if list.len() < MAX_HELD {
                        list.push(notice.clone());
                    } else {
                        *held = None;
                    }
                }
                false
            });
        }
        self.fan_out_message(&slots, &Frame::Presence(notice));
        slots.clear();
        self.scratch = slots;
    }

    /// What the relay says of presence watches ([`RelayReply::WatchedElsewhere`],
    /// [`RelayReply::Notice`]); other replies are not this module's.
    pub(crate) fn handle_watch_relay(&mut self, reply: RelayReply) {
        match reply {
            RelayReply::WatchedElsewhere { topic, watched } => {
                if watched {
                    self.watches.remote.insert(topic);
                } else {
                    self.watches.remote.remove(&topic);
                }
            }
            RelayReply::Notice(notice) if self.watches.local.contains_key(&notice.topic) => {
                self.deliver_notice(&notice);
            }
            _ => {}
        }
    }
}
