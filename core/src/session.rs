//! Client sessions and the topic catalog.
//!
//! - **Reconnect window** (gochan's client TTL): when a connection that claimed a client id
//!   closes, its subscriptions (with their delivery position) and rooms are *parked* under the
//!   client id for `Timers::reconnect_window`. The next connection to claim that id gets them
//!   back and is caught up from where delivery stopped, through the same history mechanism as a
//!   resume (so nothing retained is lost, and a gap notice announces what is not). Parked
//!   sessions are bounded by `max_parked_sessions` (the oldest goes first), each by the
//!   per-connection limits.
//! - **Who may have a client id** ([`Broker::claim_verdict`], the one place of the rule): an id
//!   whose holder's grants are bound to exactly it (its *principal*, [`crate::Claim`]) is taken
//!   over only by the same principal, never through a wildcard grant; while the principal's
//!   session is parked, its id is kept for it; the principal claims its id back from a connection
//!   that got it through a wildcard grant; a parked session goes back only to the same principal.
//! - **Subscription changes on behalf of a client** ([`Broker::update_subscriptions`]): for a
//!   live connection or a parked session, checked against that client's own grants.
//! - **Declared topics** (pubsub-sse's public, private and group topics): a topic may be declared
//!   with a [`Visibility`]; a private topic is seen only by the connection holding its client id,
//!   a group topic only by the members of its room. Exact subscriptions to a topic the connection
//!   cannot see are refused, and events of such topics are never delivered to it (so wildcard
//!   subscriptions cannot see them either).
//! - **Notices**: what changes for a client without it asking is pushed to it as a message with a
//!   reserved `tidings-` event name (`tidings-session`, `tidings-topics`, `tidings-subscribed`,
//!   `tidings-unsubscribed`; see `docs/PROTOCOL.md` §15.4).

use std::time::Instant;

use serde_json::{Value, json};

use crate::broker::Broker;
use crate::codec::Frame;
use crate::command::Claim;
use crate::conn::{CatchUp, ConnState, Sub, sees};
use crate::error::{ErrorCode, ProtocolError};
use crate::grants::Grants;
use crate::output::{AppEvent, GapReason, Lifecycle, Visibility};
use crate::parked::{Parked, SubscriptionChange};
use crate::payload::Payload;
use crate::subs::Slot;
use crate::timers::Timer;
use crate::topic::{Name, Pattern, Topic};

fn notice_name(kind: &str) -> Name {
    Name::parse("event", kind, 64).expect("notice names are valid names")
}

fn patterns_json(patterns: &[Pattern]) -> Value {
    Value::from(patterns.iter().map(Pattern::as_str).collect::<Vec<_>>())
}

impl Broker {
    // ---- notices and lifecycle events -----------------------------------------------------------

    /// Sends a `tidings-*` notice (a message with a reserved event name and JSON data).
    pub(crate) fn notify(&mut self, slot: Slot, kind: &str, data: &Value) {
        let name = notice_name(kind);
        let payload = Payload::json(serde_json::to_vec(data).unwrap_or_default())
            .unwrap_or_else(|_| Payload::text("{}").expect("valid text"));
        self.send_frame(
            slot,
            &Frame::Message {
                from: None,
                room: None,
                named: None,
                event: Some(&name),
                payload: &payload,
            },
        );
    }

    /// Emits a lifecycle event when they are enabled (`make` runs only then).
    pub(crate) fn lifecycle(&mut self, make: impl FnOnce() -> Lifecycle) {
        if self.config.lifecycle_events {
            self.emit(AppEvent::Lifecycle(make()));
        }
    }

    /// The declared topics a connection can see, as notice JSON.
    fn topics_json(&self, slot: Slot) -> Value {
        let conn = self.conn_ref(slot);
        let list: Vec<Value> = self
            .catalog
            .values()
            .filter(|(_, v)| sees(conn, v))
            .map(|(topic, v)| {
                let mut item = json!({"name": topic.as_str(), "type": v.kind()});
                if let Visibility::Group(room) = v {
                    item["group"] = Value::from(room.as_str());
                }
                item
            })
            .collect();
        Value::from(list)
    }

    /// Sends `tidings-topics` to a connection.
    fn notify_topics(&mut self, slot: Slot) {
        let topics = self.topics_json(slot);
        self.notify(slot, "tidings-topics", &json!({ "topics": topics }));
    }

    /// The connections a topic of this visibility concerns: identified connections (public), the
    /// owner (private), the room's members (group).
    fn audience(&self, visibility: &Visibility) -> Vec<Slot> {
        let mut slots: Vec<Slot> = match visibility {
            Visibility::Public => self.clients.values().copied().collect(),
            Visibility::Private(owner) => self.clients.get(owner).copied().into_iter().collect(),
            Visibility::Group(room) => self.rooms.get(room).cloned().unwrap_or_default(),
        };
        slots.sort_unstable();
        slots.dedup();
        slots.retain(|s| !self.conn_ref(*s).closing);
        slots
    }

    /// After a room membership change: the member's topic list, if the room has group topics.
    pub(crate) fn room_changed(&mut self, slot: Slot, room: &Name) {
        let group = Visibility::Group(room.clone());
        if self.catalog.values().any(|(_, v)| *v == group) && !self.conn_ref(slot).closing {
            self.notify_topics(slot);
        }
    }

    // ---- the reconnect window ------------------------------------------------------------------

    /// Called by `release` for a connection that held a client id: parks its session when the
    /// reconnect window is on and there is something to keep.
    pub(crate) fn park_or_forget(&mut self, slot: Slot, client_id: Name, rooms: Vec<Name>) {
        let head = self.history.head();
        let window = self.config.timers.reconnect_window;
        let max = self.config.limits.max_parked_sessions;
        // Another principal's parked session is never replaced by this one (the id is kept for
        // its principal, `claim_verdict`, so this is a safeguard): this one is forgotten.
        let foreign_parked = self
            .parked
            .get(&client_id)
            .is_some_and(|p| !same_principal(&p.grants, &self.conn_ref(slot).grants, &client_id));
        let conn = self.conn_mut(slot);
        if foreign_parked && !conn.grants.is_bound_to(&client_id) {
            return;
        }
        if window.is_none() || max == 0 || (conn.subs.is_empty() && rooms.is_empty()) {
            self.lifecycle(|| Lifecycle::ClientRemoved { client_id });
            return;
        }
        let catch_up = conn.catch_up.take();
        let pos = catch_up.as_ref().map_or(head, |c| c.pos);
        let subs = conn
            .subs
            .iter()
            .map(|s| Sub {
                done: s.done.max(pos),
                ..s.clone()
            })
            .collect();
        let removed = catch_up.map(|c| c.removed).unwrap_or_default();
        let grants = conn.grants.clone();
        while self.parked.len() >= max {
            let Some((_, name, generation)) = self.parked_order.pop_front() else {
                break;
            };
            if self
                .parked
                .get(&name)
                .is_some_and(|p| p.generation == generation)
            {
                self.parked.remove(&name);
                self.expired(name);
            }
        }
        self.parked_gen += 1;
        let generation = self.parked_gen;
        let at = self.now + window.unwrap_or_default();
        self.parked.insert(
            client_id.clone(),
            Parked {
                generation,
                subs,
                removed,
                pos,
                rooms,
                grants,
            },
        );
        self.parked_order.push_back((at, client_id, generation));
        // Entries of sessions claimed early stay in the queue until they come due: compact when
        // they dominate, so the queue stays within a small multiple of the live sessions.
        if self.parked_order.len() > 2 * max + 16 {
            let parked = &self.parked;
            self.parked_order.retain(|(_, name, generation)| {
                parked
                    .get(name)
                    .is_some_and(|p| p.generation == *generation)
            });
        }
        self.arm_parked();
    }

    fn arm_parked(&mut self) {
        if self.parked_timer.is_none()
            && let Some((at, _, _)) = self.parked_order.front()
        {
            self.parked_timer = Some(*at);
            self.timers.schedule(*at, Timer::Parked);
        }
    }

    /// The parked-session timer: sessions whose window is over are dropped.
    pub(crate) fn expire_parked(&mut self, now: Instant) {
        self.parked_timer = None;
        while let Some((at, _, _)) = self.parked_order.front() {
            if *at > now {
                break;
            }
            let Some((_, name, generation)) = self.parked_order.pop_front() else {
                break;
            };
            if self
                .parked
                .get(&name)
                .is_some_and(|p| p.generation == generation)
            {
                self.parked.remove(&name);
                self.expired(name);
            }
        }
        self.arm_parked();
    }

    /// Whether `client_id`'s session is parked here for its owner (a token bound to the id).
    pub(crate) fn parked_for_owner(&self, client_id: &Name) -> bool {
        self.parked
            .get(client_id)
            .is_some_and(|p| p.grants.is_bound_to(client_id))
    }

    pub(crate) fn expired(&mut self, client_id: Name) {
        self.route_changed(crate::relay::Route::Client(client_id.clone()));
        self.lifecycle(|| Lifecycle::ClientRemoved {
            client_id: client_id.clone(),
        });
        self.emit(AppEvent::SessionExpired { client_id });
    }

    /// A connection claimed `client_id` (after `identify` succeeded): restores a parked session,
    /// reports the new client and sends the `tidings-session` notice where it is due.
    pub(crate) fn identified(&mut self, slot: Slot, client_id: &Name) {
        if self.conn_ref(slot).closing {
            // Closed while claiming (its answer overflowed its queue): its session was just
            // parked, for the next connection of this client.
            return;
        }
        // A session goes back to the same principal only (see `Claim`): a principal's to the
        // principal, a wildcard claimer's to a wildcard claimer (gochan's reconnecting clients),
        // never one to the other.
        let grants = &self.conn_ref(slot).grants;
        let restorable = self
            .parked
            .get(client_id)
            .is_some_and(|p| same_principal(&p.grants, grants, client_id));
        let restored = restorable
            .then(|| self.parked.remove(client_id))
            .flatten()
            .map(|parked| self.restore(slot, parked));
        let conn = self.conn_ref(slot);
        let id = conn.id;
        let resumed = restored.is_some();
        self.lifecycle(|| Lifecycle::ClientNew {
            conn: id,
            client_id: client_id.clone(),
            resumed,
        });
        let conn = self.conn_ref(slot);
        let stream = !conn.duplex;
        let wanted = if stream {
            self.config.timers.reconnect_window.is_some() || !self.catalog.is_empty()
        } else {
            restored.as_ref().is_some_and(|r| !r.is_empty())
        };
        if wanted && !conn.closing {
            let subscriptions: Vec<Pattern> = conn.subs.iter().map(|s| s.pattern.clone()).collect();
            let window = self
                .config
                .timers
                .reconnect_window
                .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
            let data = json!({
                "client_id": client_id.as_str(),
                "reconnect_window_ms": window,
                "resumed": resumed,
                "subscriptions": patterns_json(&subscriptions),
                "topics": self.topics_json(slot),
            });
            self.notify(slot, "tidings-session", &data);
        }
        self.pump(slot);
    }

    /// Gives a parked session to the connection `slot`; returns the patterns restored. Patterns
    /// it already holds keep their own position; the others resume after the session's
    /// position, or after the connection's own resume cursor when that is earlier (an SSE stream
    /// reconnecting with `Last-Event-ID` missed what was in flight).
    fn restore(&mut self, slot: Slot, parked: Parked) -> Vec<Pattern> {
        let head = self.history.head();
        let max_subs = self.config.limits.max_subscriptions;
        let max_rooms = self.config.limits.max_rooms_per_conn;
        let conn = self.conn_ref(slot);
        let resumed_from = conn.extras.as_ref().and_then(|x| x.resumed_from);
        let p = resumed_from.map_or(parked.pos, |r| parked.pos.min(r));
        if p < head {
            let conn = self.conn_mut(slot);
            let pos = conn.catch_up.as_ref().map_or(head, |c| c.pos);
            for sub in &mut conn.subs {
                sub.done = sub.done.max(pos);
            }
            match &mut conn.catch_up {
                Some(cu) => cu.rewind(p),
                None => {
                    conn.catch_up = Some(Box::new(CatchUp::new(p, GapReason::Evicted, 0)));
                }
            }
        }
        let mut restored = Vec::new();
        for sub in parked.subs {
            let conn = self.conn_ref(slot);
            if conn.sub(&sub.pattern).is_some()
                || conn.subs.len() >= max_subs
                || !conn.grants.may_subscribe(&sub.pattern)
            {
                continue;
            }
            self.subs.insert(&sub.pattern, slot);
            if let Some(name) = &sub.name {
                self.names.entry(name.clone()).or_default().push(slot);
                self.route_changed(crate::relay::Route::Named(name.clone()));
            }
            restored.push(sub.pattern.clone());
            // What the subscription delivered stays delivered, unless the new connection says
            // it missed it (its own resume cursor is earlier).
            let done = resumed_from.map_or(sub.done, |r| sub.done.min(r).max(sub.start));
            let pattern = sub.pattern.clone();
            self.conn_mut(slot).subs.push(Sub { done, ..sub });
            self.presence_sub_added(slot, &pattern);
        }
        let conn = self.conn_mut(slot);
        if let Some(cu) = conn.catch_up.as_deref_mut() {
            for sub in parked.removed {
                if cu.removed.len() < max_subs && sub.done > cu.pos {
                    cu.removed.push(sub);
                }
            }
        }
        for room in parked.rooms {
            let conn = self.conn_mut(slot);
            if conn.rooms().contains(&room) || conn.rooms().len() >= max_rooms {
                continue;
            }
            conn.extras_mut().rooms.push(room.clone());
            self.add_to_room(room, slot);
        }
        if !restored.is_empty() {
            let id = self.conn_ref(slot).id;
            let patterns = restored.clone();
            self.lifecycle(|| Lifecycle::Subscribed { conn: id, patterns });
        }
        restored
    }

    // ---- who may have a client id --------------------------------------------------------------

    /// Whether `client_id` has an owner to protect: the connection holding it, or the session
    /// parked under it, is bound to exactly that id (its principal, see [`Claim`]).
    fn owned(&self, client_id: &Name) -> bool {
        let live = self
            .clients
            .get(client_id)
            .is_some_and(|&s| self.conn_ref(s).grants.is_bound_to(client_id));
        live || self
            .parked
            .get(client_id)
            .is_some_and(|p| p.grants.is_bound_to(client_id))
    }

    /// What claiming `client_id` comes to for the connection `slot` (its grants allow the id):
    /// the one place of the rule for every transport (SSE `client_id`, `identify` of the native,
    /// ksbus and etp protocols, the id from authentication). An id held by another connection is
    /// taken over only by the same principal, never through a wildcard grant; the id of a
    /// principal whose session is parked is kept for it; a principal claims its id back from a
    /// connection that got it through a wildcard grant, whatever the claim's mode (else
    /// whoever held the id while she was away would keep her direct messages).
    pub(crate) fn claim_verdict(&self, slot: Slot, client_id: &Name, claim: Claim) -> ClaimVerdict {
        let principal = self.conn_ref(slot).grants.is_bound_to(client_id);
        let holder = self.clients.get(client_id).copied().filter(|&h| h != slot);
        let Some(holder) = holder else {
            if !principal
                && self
                    .parked
                    .get(client_id)
                    .is_some_and(|p| p.grants.is_bound_to(client_id))
            {
                return match claim {
                    Claim::IfFree => ClaimVerdict::Skip,
                    _ => ClaimVerdict::Refused(owned_error(
                        client_id,
                        "is kept for its owner's session within the reconnect window",
                    )),
                };
            }
            return ClaimVerdict::Claim;
        };
        let holder_principal = self.conn_ref(holder).grants.is_bound_to(client_id);
        match (principal, holder_principal, claim) {
            (true, false, _) => ClaimVerdict::TakeOver {
                holder,
                reason: ProtocolError::new(
                    ErrorCode::ClientIdTaken,
                    format!(
                        "client id {:?} was claimed back by its owner (a token bound to exactly this id)",
                        client_id.as_str()
                    ),
                ),
            },
            // The same user's other connection has it (or, from authentication, its owner):
            // go on without it.
            (_, _, Claim::IfFree) => ClaimVerdict::Skip,
            (false, true, _) => ClaimVerdict::Refused(owned_error(
                client_id,
                "is held by a connection of its owner",
            )),
            (_, _, Claim::TakeOver) => ClaimVerdict::TakeOver {
                holder,
                reason: ProtocolError::new(
                    ErrorCode::ClientIdTaken,
                    "another connection of this client took its client id over",
                ),
            },
            (_, _, _) => ClaimVerdict::Refused(ProtocolError::new(
                ErrorCode::ClientIdTaken,
                format!(
                    "client id {:?} is held by another connection",
                    client_id.as_str()
                ),
            )),
        }
    }

    // ---- subscription changes on behalf of a client --------------------------------------------

    /// Changes the subscriptions of the client holding `client_id`, connected or parked within
    /// its reconnect window (gochan's `update_subscriptions`): removes `remove` (patterns not
    /// held are ignored), then adds `add` (patterns already held are kept as they are; new ones
    /// start with the next event). A connected client is told with `tidings-unsubscribed` and
    /// `tidings-subscribed` notices. The checks are the client's own: its grants, the visibility
    /// of declared topics, `max_subscriptions`.
    ///
    /// # Errors
    /// `no_recipient` (no such client), `forbidden`, `limit_reached`; nothing changes then.
    pub fn update_subscriptions(
        &mut self,
        now: Instant,
        client_id: &Name,
        add: Vec<Pattern>,
        remove: Vec<Pattern>,
    ) -> Result<SubscriptionChange, ProtocolError> {
        self.update_subscriptions_as(now, None, client_id, add, remove)
    }

    /// [`Broker::update_subscriptions`] asked by a requester with grants `by` (an HTTP request,
    /// not the application itself): the subscriptions of a client id's principal (see
    /// [`crate::Claim`]) are changed only at the request of the same principal.
    ///
    /// # Errors
    /// As [`Broker::update_subscriptions`]; `forbidden` for a principal's id asked by another.
    pub fn update_subscriptions_as(
        &mut self,
        now: Instant,
        by: Option<&Grants>,
        client_id: &Name,
        add: Vec<Pattern>,
        remove: Vec<Pattern>,
    ) -> Result<SubscriptionChange, ProtocolError> {
        let by_principal = by.map(|g| g.is_bound_to(client_id));
        self.update_subscriptions_by(now, by_principal, client_id, add, remove)
    }

    /// [`Broker::update_subscriptions_as`] with what the rule needs of the requester: `None`
    /// for the application, else whether it is the client id's principal (so that another node
    /// can ask for a requester of its own).
    pub(crate) fn update_subscriptions_by(
        &mut self,
        now: Instant,
        by_principal: Option<bool>,
        client_id: &Name,
        add: Vec<Pattern>,
        remove: Vec<Pattern>,
    ) -> Result<SubscriptionChange, ProtocolError> {
        self.advance(now);
        if by_principal == Some(false) && self.owned(client_id) {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!(
                    "client id {:?} is held by its owner (a token bound to exactly this id): only that owner may change its subscriptions",
                    client_id.as_str()
                ),
            ));
        }
        let max = self.config.limits.max_subscriptions;
        let head = self.history.head();
        let mut add = add;
        add.sort();
        add.dedup();
        if let Some(&slot) = self.clients.get(client_id) {
            let conn = self.conn_ref(slot);
            if conn.closing {
                return Err(no_client(client_id));
            }
            self.check_adds(conn, &conn.grants, &add)?;
            let held = |p: &Pattern| conn.sub(p).is_some();
            let removing: Vec<Pattern> = remove.iter().filter(|p| held(p)).cloned().collect();
            let new: Vec<Pattern> = add
                .iter()
                .filter(|p| !held(p) || removing.contains(p))
                .cloned()
                .collect();
            check_limit(conn.subs.len() - removing.len() + new.len(), max)?;
            for p in &removing {
                self.remove_sub(slot, p);
            }
            if !new.is_empty() {
                self.subscribe_inner(slot, new.clone(), None, None);
            }
            let id = self.conn_ref(slot).id;
            if !removing.is_empty() {
                let data = json!({ "topics": patterns_json(&removing) });
                self.notify(slot, "tidings-unsubscribed", &data);
                let patterns = removing.clone();
                self.lifecycle(|| Lifecycle::Unsubscribed { conn: id, patterns });
            }
            if !new.is_empty() {
                let data = json!({ "topics": patterns_json(&new) });
                self.notify(slot, "tidings-subscribed", &data);
                let patterns = new.clone();
                self.lifecycle(|| Lifecycle::Subscribed { conn: id, patterns });
            }
            let subscriptions = self
                .conn_ref(slot)
                .subs
                .iter()
                .map(|s| s.pattern.clone())
                .collect();
            return Ok(SubscriptionChange {
                added: new,
                removed: removing,
                subscriptions,
                connected: true,
            });
        }
        let Some(parked) = self.parked.get(client_id) else {
            return Err(no_client(client_id));
        };
        // A parked client's grants, and its rooms and id for visibility.
        for p in &add {
            if !parked.grants.may_subscribe(p) {
                return Err(not_granted(p));
            }
            if !p.is_wildcard()
                && let Some((_, v)) = self.catalog.get(p.as_str())
                && !match v {
                    Visibility::Public => true,
                    Visibility::Private(owner) => owner == client_id,
                    Visibility::Group(room) => parked.rooms.contains(room),
                }
            {
                return Err(not_visible(p));
            }
        }
        let held = |p: &Pattern| parked.subs.iter().any(|s| s.pattern == *p);
        let removing: Vec<Pattern> = remove.iter().filter(|p| held(p)).cloned().collect();
        let new: Vec<Pattern> = add
            .iter()
            .filter(|p| !held(p) || removing.contains(p))
            .cloned()
            .collect();
        check_limit(parked.subs.len() - removing.len() + new.len(), max)?;
        let parked = self.parked.get_mut(client_id).expect("checked above");
        parked.subs.retain(|s| !removing.contains(&s.pattern));
        for pattern in &new {
            parked.subs.push(Sub {
                pattern: pattern.clone(),
                name: None,
                start: head,
                done: head,
            });
        }
        Ok(SubscriptionChange {
            added: new,
            removed: removing,
            subscriptions: parked.subs.iter().map(|s| s.pattern.clone()).collect(),
            connected: false,
        })
    }

    fn check_adds(
        &self,
        conn: &ConnState,
        grants: &Grants,
        add: &[Pattern],
    ) -> Result<(), ProtocolError> {
        for p in add {
            if !grants.may_subscribe(p) {
                return Err(not_granted(p));
            }
            if !self.may_see(conn, p) {
                return Err(not_visible(p));
            }
        }
        Ok(())
    }

    /// Whether an exact subscription to `pattern` is visible to the connection (wildcards always
    /// are: their deliveries are filtered instead).
    pub(crate) fn may_see(&self, conn: &ConnState, pattern: &Pattern) -> bool {
        pattern.is_wildcard()
            || self
                .catalog
                .get(pattern.as_str())
                .is_none_or(|(_, v)| sees(conn, v))
    }

    /// The client id's connection, if one holds it.
    pub fn client_conn(&self, client_id: &Name) -> Option<crate::ConnId> {
        self.clients.get(client_id).map(|s| self.conn_ref(*s).id)
    }

    /// The client ids whose sessions are parked (within their reconnect window), sorted.
    pub fn parked_sessions(&self) -> Vec<&Name> {
        let mut names: Vec<_> = self.parked.keys().collect();
        names.sort();
        names
    }

    /// The subscriptions of a parked session, in subscription order.
    pub fn parked_subscriptions(&self, client_id: &Name) -> Option<Vec<Pattern>> {
        self.parked
            .get(client_id)
            .map(|p| p.subs.iter().map(|s| s.pattern.clone()).collect())
    }

    // ---- declared topics -----------------------------------------------------------------------

    /// Declares a topic with a visibility (pubsub-sse's public, private and group topics), or
    /// changes its visibility. The connections concerned (identified connections for public
    /// topics, the owner, the room's members) get a `tidings-topics` notice with their list.
    /// Returns whether anything changed.
    pub fn declare_topic(&mut self, now: Instant, topic: Topic, visibility: Visibility) -> bool {
        self.advance(now);
        let old = self.catalog.insert(
            topic.as_str().to_owned(),
            (topic.clone(), visibility.clone()),
        );
        let old = old.map(|(_, v)| v);
        if old.as_ref() == Some(&visibility) {
            return false;
        }
        let mut slots = self.audience(&visibility);
        if let Some(old) = &old {
            slots.extend(self.audience(old));
            slots.sort_unstable();
            slots.dedup();
        }
        for slot in slots {
            self.notify_topics(slot);
        }
        self.lifecycle(|| Lifecycle::TopicNew { topic, visibility });
        true
    }

    /// Removes a declared topic: every exact subscription to it (connected or parked) ends, with
    /// a `tidings-unsubscribed` notice, and the connections that could see it get their new
    /// `tidings-topics` list. Returns whether it was declared.
    pub fn remove_topic(&mut self, now: Instant, topic: &Topic) -> bool {
        self.advance(now);
        let Some((_, visibility)) = self.catalog.remove(topic.as_str()) else {
            return false;
        };
        let pattern = Pattern::exact(topic);
        let mut holders = Vec::new();
        self.subs
            .for_each_match(topic.as_str(), |slot| holders.push(slot));
        holders.sort_unstable();
        holders.dedup();
        holders.retain(|s| self.conn_ref(*s).sub(&pattern).is_some());
        for &slot in &holders {
            self.remove_sub(slot, &pattern);
            let data = json!({ "topics": [topic.as_str()] });
            self.notify(slot, "tidings-unsubscribed", &data);
            let id = self.conn_ref(slot).id;
            let patterns = vec![pattern.clone()];
            self.lifecycle(|| Lifecycle::Unsubscribed { conn: id, patterns });
        }
        for parked in self.parked.values_mut() {
            // What the removed subscription delivered beyond the session's position still
            // counts, as for a live connection's removed subscription (no duplicates).
            if let Some(i) = parked.subs.iter().position(|s| s.pattern == pattern) {
                let sub = parked.subs.remove(i);
                if sub.done > parked.pos {
                    parked.removed.push(sub);
                }
            }
        }
        for slot in self.audience(&visibility) {
            self.notify_topics(slot);
        }
        let topic = topic.clone();
        self.lifecycle(|| Lifecycle::TopicRemoved { topic });
        true
    }

    /// Every declared topic with its visibility, sorted by name.
    pub fn declared_topics(&self) -> Vec<(Topic, Visibility)> {
        self.catalog.values().cloned().collect()
    }

    /// The declared topics a connection can see, sorted by name.
    pub fn visible_topics(&self, conn: crate::ConnId) -> Option<Vec<(Topic, Visibility)>> {
        let slot = *self.ids.get(&conn)?;
        let state = self.conn_ref(slot);
        Some(
            self.catalog
                .values()
                .filter(|(_, v)| sees(state, v))
                .cloned()
                .collect(),
        )
    }
}

/// What [`Broker::claim_verdict`] decided.
pub(crate) enum ClaimVerdict {
    /// The id is free (or already this connection's): claim it.
    Claim,
    /// Close `holder` with `reason` (its session is parked), then claim the id.
    TakeOver {
        /// The connection holding the id.
        holder: Slot,
        /// What it is told.
        reason: ProtocolError,
    },
    /// A claim from authentication whose id is not free: go on without it, with no error.
    Skip,
    /// Refused with this error (`client_id_taken`).
    Refused(ProtocolError),
}

/// Whether two sets of grants are the same principal for `client_id`: both bound to exactly it,
/// or neither (wildcard claimers, who have no owner to protect).
fn same_principal(a: &Grants, b: &Grants, client_id: &Name) -> bool {
    a.is_bound_to(client_id) == b.is_bound_to(client_id)
}

/// `client_id_taken` for an id that belongs to a principal.
pub(crate) fn owned_error(client_id: &Name, why: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::ClientIdTaken,
        format!(
            "client id {:?} {why}: only a connection whose token is bound to exactly this id may take it over",
            client_id.as_str()
        ),
    )
}

fn no_client(client_id: &Name) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NoRecipient,
        format!(
            "no client {:?} is connected or within its reconnect window",
            client_id.as_str()
        ),
    )
}

fn not_granted(p: &Pattern) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Forbidden,
        format!(
            "subscribing to {:?} is not granted to this client",
            p.as_str()
        ),
    )
}

pub(crate) fn not_visible(p: &Pattern) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Forbidden,
        format!(
            "topic {:?} is private to another client or to a group this client is not in",
            p.as_str()
        ),
    )
}

fn check_limit(total: usize, max: usize) -> Result<(), ProtocolError> {
    if total > max {
        return Err(ProtocolError::new(
            ErrorCode::LimitReached,
            format!("at most {max} subscriptions per client; this change would make {total}"),
        ));
    }
    Ok(())
}
