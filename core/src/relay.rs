//! Messages that are not retained, across the nodes of a cluster: the relay seam.
//!
//! Events go through the shared log ([`crate::log`]); direct messages to a client id, named
//! routing and room emits do not, since they are never retained. With a shared log
//! (`LogMode::External { shared: true }`) the broker hands the adapter what may concern other
//! nodes, and takes what other nodes relay to it:
//!
//! - [`RelayRequest::Interest`]: which client ids, subscription names and rooms this node holds,
//!   as changes (the first local holder appears, the last one goes), so that a node receives only
//!   what it can deliver, and a mass reconnect costs one change per id, not per connection.
//! - [`RelayRequest::Send`]: a message this node could not deliver (a client id held elsewhere)
//!   or that other nodes may deliver too (named routing, rooms), with an id when the sender waits
//!   for the outcome; answered with [`RelayReply::Sent`].
//! - [`RelayReply::Message`]: a message another node relayed here, delivered to local
//!   recipients; when the other node waits for the outcome, the broker answers with
//!   [`RelayRequest::Reached`].
//! - A change of a client id's subscriptions (`POST /subscriptions`) asked on a node that does
//!   not hold the id goes to the node holding it: [`RelayRequest::UpdateSubscriptions`], carried
//!   out there on [`RelayReply::UpdateAsked`] and answered with [`RelayRequest::UpdatedHere`],
//!   whose result comes back as [`RelayReply::Updated`].
//! - Client ids are settled across nodes as on one node, for the one conflict that matters: a
//!   claim ([`RelayRequest::Claimed`]) by a connection bound to the id (its principal) closes a
//!   connection of another node that holds it through a wildcard grant; a wildcard claim of an id
//!   a principal holds on another node is answered [`RelayReply::ClaimRefused`] and closed.
//! - Presence ([`crate::presence`]) is gathered from every node: [`RelayRequest::GatherPresence`]
//!   asks the others, [`RelayReply::PresenceAsked`] is another node asking this one (answered
//!   with [`RelayRequest::PresenceHere`]), [`RelayReply::PresenceGathered`] brings what the others
//!   answered.
//! - Presence notices ([`crate::presence::PresenceNotice`]): [`RelayRequest::Watch`] says which
//!   topics this node watches (first watcher, last one), [`RelayReply::WatchedElsewhere`] which
//!   ones other nodes watch; [`RelayRequest::Notice`] relays a join or leave here on a topic
//!   watched elsewhere, [`RelayReply::Notice`] brings one from another node.

use crate::ask::{AskTo, ClientAnswer};
use crate::broker::Broker;
use crate::command::Recipient;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::ConnId;
use crate::output::Output;
use crate::parked::SubscriptionChange;
use crate::payload::Payload;
use crate::presence::Presence;
use crate::topic::{Name, Pattern, Topic};

/// What a node holds that other nodes may relay messages to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Route {
    /// A connection identified with this client id.
    Client(Name),
    /// A subscription with this name (named routing).
    Named(Name),
    /// A room with members.
    Room(Name),
}

/// Identifies a relayed send whose sender waits for the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u64);

/// Where a relayed message goes on the receiving nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayTo {
    /// A client id or named subscriptions (never [`Recipient::Conn`]: connection ids are a
    /// node's own).
    Recipient(Recipient),
    /// The members of a room.
    Room(Name),
}

impl RelayTo {
    /// The route whose holders receive it.
    #[must_use]
    pub fn route(&self) -> Option<Route> {
        match self {
            Self::Recipient(Recipient::Client(id)) => Some(Route::Client(id.clone())),
            Self::Recipient(Recipient::Named { name, .. }) => Some(Route::Named(name.clone())),
            Self::Room(room) => Some(Route::Room(room.clone())),
            Self::Recipient(_) => None,
        }
    }
}

/// A message that is not retained, as it crosses nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// Who receives it.
    pub to: RelayTo,
    /// The sender's client id, if it has one.
    pub from: Option<Name>,
    /// Its event name, if any.
    pub event: Option<Name>,
    /// The data.
    pub payload: Payload,
}

/// A change of a client id's subscriptions, as it crosses nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionUpdate {
    /// Patterns to add (checked against the client's own grants where it is).
    pub add: Vec<Pattern>,
    /// Patterns to remove.
    pub remove: Vec<Pattern>,
    /// Who asks: `None` for the application, else whether the requester is the client id's
    /// principal (only the principal changes a principal's subscriptions).
    pub by_principal: Option<bool>,
}

/// What the broker asks of the relay ([`Output::Relay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayRequest {
    /// This node now holds `route` (`held`), or no longer does.
    Interest {
        /// The client id, name or room.
        route: Route,
        /// Whether this node holds it now.
        held: bool,
    },
    /// Relay a message to the nodes holding its route. With an `id`, answer with
    /// [`RelayReply::Sent`]: `Ok` once a node delivered it, `no_recipient` when none did (or
    /// none holds the route), `unavailable` when the relay is down.
    Send {
        /// Set when the sender waits for the outcome.
        id: Option<RelayId>,
        /// The message.
        message: Relayed,
    },
    /// The outcome of a [`RelayReply::Message`] that asked for one: whether it reached a local
    /// recipient.
    Reached {
        /// The relay's token for that message.
        token: u64,
        /// Whether it reached anyone here.
        reached: bool,
    },
    /// Ask the other nodes for their presence of `topic`; answer with
    /// [`RelayReply::PresenceGathered`].
    GatherPresence {
        /// The gathering.
        id: RelayId,
        /// The topic.
        topic: Topic,
    },
    /// This node's presence, answering a [`RelayReply::PresenceAsked`].
    PresenceHere {
        /// The relay's token for that question.
        token: u64,
        /// The presence here.
        presence: Presence,
    },
    /// This node's first connection watching the presence of `topic` appeared (`watched`), or
    /// its last one went: the other nodes relay their joins and leaves on it while some node
    /// watches it. Comes before the [`RelayRequest::GatherPresence`] of the watch's answer: a
    /// node answering that gathering must already relay its later changes.
    Watch {
        /// The topic.
        topic: Topic,
        /// Whether this node watches it now.
        watched: bool,
    },
    /// A join or leave of a connection here on a topic another node watches
    /// ([`RelayReply::WatchedElsewhere`]): relay it to the nodes watching it.
    Notice(crate::presence::PresenceNotice),
    /// A connection here claimed `client_id`: tell the nodes holding it. When it is not the
    /// id's principal, a node whose holder is answers, and [`RelayReply::ClaimRefused`] follows.
    Claimed {
        /// The client id.
        client_id: Name,
        /// Whether the claimer is the id's principal (a token bound to exactly it).
        principal: bool,
    },
    /// The answer to a [`RelayReply::ClaimedElsewhere`] that asked for one: whether this node's
    /// holder of the id is its principal.
    ClaimAnswer {
        /// The relay's token for the question.
        token: u64,
        /// Whether the id is held here by its principal.
        owned: bool,
    },
    /// Change the subscriptions of a client id this node does not hold, on the node that
    /// holds it; answer with [`RelayReply::Updated`].
    UpdateSubscriptions {
        /// The change.
        id: RelayId,
        /// The client id.
        client_id: Name,
        /// What to change.
        update: SubscriptionUpdate,
    },
    /// The outcome of a [`RelayReply::UpdateAsked`].
    UpdatedHere {
        /// The relay's token for that question.
        token: u64,
        /// The change, or why not.
        result: Result<SubscriptionChange, ProtocolError>,
    },
    /// Ask the clients of the other nodes ([`crate::ask`]): a client id's holders (the first
    /// answer), or a room's members on every node (all their answers); answer with
    /// [`RelayReply::Answered`] within `timeout` and a moment.
    Ask {
        /// The ask.
        id: RelayId,
        /// Who is asked.
        to: AskTo,
        /// The handler name on the clients.
        event: Name,
        /// The data.
        payload: Payload,
        /// How long the clients have to answer.
        timeout: std::time::Duration,
    },
    /// The answers of this node's clients to a [`RelayReply::Asked`] (none when no connection
    /// here could answer).
    AskedHere {
        /// The relay's token for the question.
        token: u64,
        /// The answers.
        answers: Vec<ClientAnswer>,
    },
}

/// What the relay tells the broker ([`crate::Input::Relay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayReply {
    /// The outcome of a [`RelayRequest::Send`] with an id.
    Sent {
        /// The send.
        id: RelayId,
        /// Delivered by some node, or why not.
        result: Result<(), ProtocolError>,
    },
    /// A message another node relayed: deliver it to the local recipients; with a token,
    /// answer [`RelayRequest::Reached`].
    Message {
        /// Set when the sending node waits for the outcome.
        token: Option<u64>,
        /// The message.
        message: Relayed,
    },
    /// Another node asks for this node's presence of `topic`: answer with
    /// [`RelayRequest::PresenceHere`].
    PresenceAsked {
        /// The relay's token for the question.
        token: u64,
        /// The topic.
        topic: Topic,
        /// For a watch there: from this answer on, this node relays its joins and leaves on
        /// the topic (as after [`RelayReply::WatchedElsewhere`], in the same step as the
        /// answer, so that every change after the answer is relayed and none before it).
        watch: bool,
    },
    /// What the other nodes answered to a [`RelayRequest::GatherPresence`], merged (`nodes`
    /// counts them; nodes that did not answer in time are not in it).
    PresenceGathered {
        /// The gathering.
        id: RelayId,
        /// Their presence.
        presence: Presence,
    },
    /// Some other node watches the presence of `topic` now (`watched`), or none does any
    /// more: this node relays its joins and leaves on it while some does.
    WatchedElsewhere {
        /// The topic.
        topic: Topic,
        /// Whether another node watches it.
        watched: bool,
    },
    /// A join or leave another node relayed: for the watchers of its topic here.
    Notice(crate::presence::PresenceNotice),
    /// A connection of another node claimed a client id this node holds (with a token when that
    /// node waits for a [`RelayRequest::ClaimAnswer`]).
    ClaimedElsewhere {
        /// Set when the claiming node waits for the answer.
        token: Option<u64>,
        /// The client id.
        client_id: Name,
        /// Whether the claimer is the id's principal.
        principal: bool,
    },
    /// A connection here claimed a client id through a wildcard grant that its principal holds
    /// on another node: it loses the id.
    ClaimRefused {
        /// The client id.
        client_id: Name,
    },
    /// Another node asks to change the subscriptions of a client id this node holds: answer
    /// with [`RelayRequest::UpdatedHere`].
    UpdateAsked {
        /// The relay's token for the question.
        token: u64,
        /// The client id.
        client_id: Name,
        /// What to change.
        update: SubscriptionUpdate,
    },
    /// The outcome of a [`RelayRequest::UpdateSubscriptions`]: the holding node's answer, or
    /// `None` when no node holds the client id.
    Updated {
        /// The change.
        id: RelayId,
        /// The holding node's answer.
        result: Option<Result<SubscriptionChange, ProtocolError>>,
    },
    /// Another node asks this node's clients: answer with [`RelayRequest::AskedHere`].
    Asked {
        /// The relay's token for the question.
        token: u64,
        /// Who is asked.
        to: AskTo,
        /// The handler name on the clients.
        event: Name,
        /// The data.
        payload: Payload,
        /// How long the clients have to answer.
        timeout: std::time::Duration,
    },
    /// What the other nodes' clients answered to a [`RelayRequest::Ask`]: `no_recipient` when
    /// no node holds its client id or room, `unavailable` when the relay is down.
    Answered {
        /// The ask.
        id: RelayId,
        /// Their answers.
        result: Result<Vec<ClientAnswer>, ProtocolError>,
    },
}

/// Who waits for a presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asker {
    /// A client's `presence` request.
    Conn(ConnId, crate::ids::ReqId),
    /// The application ([`crate::AppOp::Presence`]), answered with
    /// [`crate::AppEvent::Presence`] under this id.
    App(RelayId),
}

/// The relay's state in the broker: routes to announce, and sends waiting for an outcome.
#[derive(Debug, Default)]
pub(crate) struct Relay {
    /// Routes announced as held.
    announced: std::collections::HashSet<Route>,
    /// Routes whose local holders changed since the last announcement.
    changed: Vec<Route>,
    /// Sends waiting for their outcome: the sender and its request id, if it gave one.
    waiting: std::collections::HashMap<RelayId, (ConnId, Option<u64>)>,
    /// Presence being gathered from the other nodes: who asked, for which topic, and this
    /// node's part.
    gathering: std::collections::HashMap<RelayId, (Asker, Topic, Presence)>,
    /// Subscription changes asked of the node holding the client id, with this node's own
    /// answer (`no_recipient`) for when no node holds it.
    updating: std::collections::HashMap<RelayId, ProtocolError>,
    next_id: u64,
}

impl Broker {
    /// Whether other nodes exist to relay to (a shared log means a cluster).
    pub(crate) fn relays(&self) -> bool {
        self.shared_log()
    }

    /// The local holders of `route` may have changed (announced at the end of the step).
    pub(crate) fn route_changed(&mut self, route: Route) {
        if self.relays() {
            self.relay.changed.push(route);
        }
    }

    /// Announces the routes whose holding changed, once each; called when the broker's
    /// outputs are drained, so a step's changes go out together and a route that came and
    /// went within a step is not announced at all.
    pub(crate) fn announce_routes(&mut self) {
        let mut changed = std::mem::take(&mut self.relay.changed);
        changed.sort_unstable();
        changed.dedup();
        for route in changed {
            let held = match &route {
                // An owner's parked session keeps her id (`claim_verdict`), on every node.
                Route::Client(id) => self.clients.contains_key(id) || self.parked_for_owner(id),
                Route::Named(name) => self.names.contains_key(name),
                Route::Room(room) => self.rooms.contains_key(room),
            };
            let announced = if held {
                self.relay.announced.insert(route.clone())
            } else {
                self.relay.announced.remove(&route)
            };
            if announced {
                self.out
                    .push_back(Output::Relay(RelayRequest::Interest { route, held }));
            }
        }
    }

    /// A new relay id.
    pub(crate) fn relay_id(&mut self) -> RelayId {
        let id = RelayId(self.relay.next_id);
        self.relay.next_id += 1;
        id
    }

    /// The presence of `topic` for `asker`: this node's at once on a single node; in a cluster,
    /// merged with the other nodes' when they have answered.
    pub(crate) fn ask_presence(&mut self, asker: Asker, topic: Topic) {
        let here = self.presence(&topic);
        if !self.relays() {
            return self.answer_presence(asker, &topic, here);
        }
        let id = match asker {
            Asker::App(id) => id,
            Asker::Conn(..) => self.relay_id(),
        };
        self.relay
            .gathering
            .insert(id, (asker, topic.clone(), here));
        self.out
            .push_back(Output::Relay(RelayRequest::GatherPresence { id, topic }));
    }

    fn answer_presence(&mut self, asker: Asker, topic: &Topic, presence: Presence) {
        match asker {
            Asker::Conn(conn, req) => {
                let Some(&slot) = self.ids.get(&conn) else {
                    return;
                };
                let json = Payload::json_unchecked(bytes::Bytes::from(presence.to_json(topic)));
                self.ok(slot, Some(req), None, Some(&json));
                self.watch_answered(slot, topic, req);
            }
            Asker::App(id) => self.emit(crate::output::AppEvent::Relayed {
                id,
                reply: crate::AppReply::Presence(presence),
            }),
        }
    }

    /// A connection here claimed `client_id`: the other nodes settle conflicts with theirs.
    pub(crate) fn claimed(&mut self, slot: crate::subs::Slot, client_id: &Name) {
        if self.relays() {
            let principal = self.conn_ref(slot).grants.is_bound_to(client_id);
            self.out.push_back(Output::Relay(RelayRequest::Claimed {
                client_id: client_id.clone(),
                principal,
            }));
        }
    }

    /// Asks the node holding `client_id` to change its subscriptions; `here` is this node's
    /// answer for when no node holds it. The answer comes as [`crate::AppEvent::Relayed`].
    pub(crate) fn relay_update(
        &mut self,
        client_id: Name,
        update: SubscriptionUpdate,
        here: ProtocolError,
    ) -> RelayId {
        let id = self.relay_id();
        self.relay.updating.insert(id, here);
        self.out
            .push_back(Output::Relay(RelayRequest::UpdateSubscriptions {
                id,
                client_id,
                update,
            }));
        id
    }

    /// Relays a message that other nodes may deliver; with `answer`, the connection's request
    /// waits for the outcome ([`RelayReply::Sent`]).
    pub(crate) fn relay(&mut self, message: Relayed, answer: Option<(ConnId, Option<u64>)>) {
        let id = answer.map(|waiting| {
            let id = self.relay_id();
            self.relay.waiting.insert(id, waiting);
            id
        });
        self.out
            .push_back(Output::Relay(RelayRequest::Send { id, message }));
    }

    /// What the relay answered or brought.
    pub(crate) fn handle_relay(&mut self, reply: RelayReply) {
        match reply {
            RelayReply::Sent { id, result } => {
                let Some((conn, req)) = self.relay.waiting.remove(&id) else {
                    return;
                };
                let Some(&slot) = self.ids.get(&conn) else {
                    return;
                };
                match result {
                    Ok(()) => self.ok(slot, req, None, None),
                    Err(e) => self.fail(slot, req, e),
                }
            }
            RelayReply::Message { token, message } => {
                let Relayed {
                    to,
                    from,
                    event,
                    payload,
                } = message;
                let reached = match &to {
                    RelayTo::Recipient(to @ (Recipient::Client(_) | Recipient::Named { .. })) => {
                        self.send_message(to, from.as_ref(), None, event.as_ref(), &payload)
                    }
                    RelayTo::Recipient(_) => 0,
                    RelayTo::Room(room) => self.room_message(room, event.as_ref(), &payload),
                };
                if let Some(token) = token {
                    self.out.push_back(Output::Relay(RelayRequest::Reached {
                        token,
                        reached: reached > 0,
                    }));
                }
            }
            reply @ (RelayReply::Asked { .. } | RelayReply::Answered { .. }) => {
                self.handle_ask_relay(reply);
            }
            RelayReply::PresenceAsked {
                token,
                topic,
                watch,
            } => {
                if watch {
                    self.handle_watch_relay(RelayReply::WatchedElsewhere {
                        topic: topic.clone(),
                        watched: true,
                    });
                }
                let presence = self.presence(&topic);
                self.out
                    .push_back(Output::Relay(RelayRequest::PresenceHere {
                        token,
                        presence,
                    }));
            }
            RelayReply::ClaimedElsewhere {
                token,
                client_id,
                principal,
            } => {
                let holder = self.clients.get(&client_id).copied();
                let owned = match holder {
                    Some(h) => self.conn_ref(h).grants.is_bound_to(&client_id),
                    // Kept for its owner while her session is parked here.
                    None => self.parked_for_owner(&client_id),
                };
                if holder.is_none() && principal && owned {
                    // The owner came back on another node: her session parked here would only
                    // keep the id routed here (its subscriptions are not carried over).
                    self.parked.remove(&client_id);
                    self.expired(client_id.clone());
                }
                if let (Some(holder), true, false) = (holder, principal, owned) {
                    let reason = ProtocolError::new(
                        ErrorCode::ClientIdTaken,
                        format!(
                            "client id {:?} was claimed back by its owner (a token bound to exactly this id) on another node",
                            client_id.as_str()
                        ),
                    );
                    self.close(holder, reason);
                }
                if let Some(token) = token {
                    self.out
                        .push_back(Output::Relay(RelayRequest::ClaimAnswer { token, owned }));
                }
            }
            RelayReply::ClaimRefused { client_id } => {
                let holder = self.clients.get(&client_id).copied();
                if let Some(holder) = holder
                    && !self.conn_ref(holder).grants.is_bound_to(&client_id)
                {
                    let reason = crate::session::owned_error(
                        &client_id,
                        "is held by a connection of its owner on another node",
                    );
                    self.close(holder, reason);
                }
            }
            RelayReply::UpdateAsked {
                token,
                client_id,
                update,
            } => {
                let SubscriptionUpdate {
                    add,
                    remove,
                    by_principal,
                } = update;
                let now = self.now;
                let result =
                    self.update_subscriptions_by(now, by_principal, &client_id, add, remove);
                self.out
                    .push_back(Output::Relay(RelayRequest::UpdatedHere { token, result }));
            }
            RelayReply::Updated { id, result } => {
                let Some(here) = self.relay.updating.remove(&id) else {
                    return;
                };
                let reply = match result.unwrap_or(Err(here)) {
                    Ok(change) => crate::AppReply::Subscriptions(change),
                    Err(e) => crate::AppReply::Failed(e),
                };
                self.emit(crate::output::AppEvent::Relayed { id, reply });
            }
            RelayReply::PresenceGathered { id, presence } => {
                let Some((asker, topic, mut here)) = self.relay.gathering.remove(&id) else {
                    return;
                };
                here.merge(presence);
                self.answer_presence(asker, &topic, here);
            }
            reply @ (RelayReply::WatchedElsewhere { .. } | RelayReply::Notice(_)) => {
                self.handle_watch_relay(reply);
            }
        }
    }
}

/// The error of a send that reached nobody, on this node or (relayed) on another.
#[must_use]
pub fn no_recipient() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NoRecipient,
        "no connection is there to receive this message",
    )
}

/// The JSON forms of what crosses nodes besides messages (a relay carries them as bytes).
pub mod json {
    use serde::{Deserialize, Serialize};

    use super::SubscriptionUpdate;
    use crate::error::{ErrorCode, ProtocolError};
    use crate::parked::SubscriptionChange;
    use crate::topic::{NameLimits, Pattern};

    #[derive(Serialize, Deserialize)]
    struct Update {
        add: Vec<String>,
        remove: Vec<String>,
        principal: Option<bool>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Change {
        Ok {
            added: Vec<String>,
            removed: Vec<String>,
            subscriptions: Vec<String>,
            connected: bool,
        },
        Error {
            code: String,
            message: String,
        },
    }

    fn strings(patterns: &[Pattern]) -> Vec<String> {
        patterns.iter().map(|p| p.as_str().to_owned()).collect()
    }

    fn patterns(strings: Vec<String>, limits: NameLimits) -> Option<Vec<Pattern>> {
        strings
            .iter()
            .map(|s| Pattern::parse(s, limits).ok())
            .collect()
    }

    /// A subscription change asked of another node.
    #[must_use]
    pub fn encode_update(update: &SubscriptionUpdate) -> Vec<u8> {
        let wire = Update {
            add: strings(&update.add),
            remove: strings(&update.remove),
            principal: update.by_principal,
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// A subscription change another node asks; `None` if it does not decode.
    #[must_use]
    pub fn decode_update(body: &[u8], limits: NameLimits) -> Option<SubscriptionUpdate> {
        let wire: Update = serde_json::from_slice(body).ok()?;
        Some(SubscriptionUpdate {
            add: patterns(wire.add, limits)?,
            remove: patterns(wire.remove, limits)?,
            by_principal: wire.principal,
        })
    }

    /// The outcome of a subscription change, for the node that asked.
    #[must_use]
    pub fn encode_change(result: &Result<SubscriptionChange, ProtocolError>) -> Vec<u8> {
        let wire = match result {
            Ok(change) => Change::Ok {
                added: strings(&change.added),
                removed: strings(&change.removed),
                subscriptions: strings(&change.subscriptions),
                connected: change.connected,
            },
            Err(e) => Change::Error {
                code: e.code.as_str().to_owned(),
                message: e.message.clone(),
            },
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The outcome another node sent; `None` if it does not decode.
    #[must_use]
    pub fn decode_change(
        body: &[u8],
        limits: NameLimits,
    ) -> Option<Result<SubscriptionChange, ProtocolError>> {
        Some(match serde_json::from_slice(body).ok()? {
            Change::Ok {
                added,
                removed,
                subscriptions,
                connected,
            } => Ok(SubscriptionChange {
                added: patterns(added, limits)?,
                removed: patterns(removed, limits)?,
                subscriptions: patterns(subscriptions, limits)?,
                connected,
            }),
            Change::Error { code, message } => Err(ProtocolError::new(
                ErrorCode::from_wire(&code).unwrap_or(ErrorCode::Unavailable),
                message,
            )),
        })
    }

    /// An ask as it crosses nodes: who, the handler, the timeout, the data (JSON or text).
    #[derive(Serialize, Deserialize)]
    struct Ask {
        client: Option<String>,
        room: Option<String>,
        event: String,
        timeout_ms: u64,
        json: bool,
        data: String,
    }

    /// One client's answer as it crosses nodes.
    #[derive(Serialize, Deserialize)]
    struct Answer {
        client_id: Option<String>,
        json: Option<bool>,
        data: Option<String>,
        code: Option<String>,
        message: Option<String>,
    }

    /// An ask for the other nodes' clients.
    #[must_use]
    pub fn encode_ask(
        to: &crate::ask::AskTo,
        event: &crate::topic::Name,
        payload: &crate::payload::Payload,
        timeout: std::time::Duration,
    ) -> Vec<u8> {
        let (client, room) = match to {
            crate::ask::AskTo::Client(id) => (Some(id.as_str().to_owned()), None),
            crate::ask::AskTo::Room(room) => (None, Some(room.as_str().to_owned())),
        };
        let wire = Ask {
            client,
            room,
            event: event.as_str().to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            json: payload.is_json(),
            data: payload.as_str().to_owned(),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// An ask another node sent: who, the handler, the data and the timeout (at most
    /// `max_timeout`: another node's number is not trusted to be small); `None` if it does not
    /// decode or breaks a limit.
    #[must_use]
    pub fn decode_ask(
        body: &[u8],
        max_name_len: usize,
        max_timeout: std::time::Duration,
    ) -> Option<(
        crate::ask::AskTo,
        crate::topic::Name,
        crate::payload::Payload,
        std::time::Duration,
    )> {
        let wire: Ask = serde_json::from_slice(body).ok()?;
        let name = |s: &str| crate::topic::Name::parse("name", s, max_name_len).ok();
        let to = match (wire.client, wire.room) {
            (Some(id), None) => crate::ask::AskTo::Client(name(&id)?),
            (None, Some(room)) => crate::ask::AskTo::Room(name(&room)?),
            _ => return None,
        };
        let payload = payload(wire.json, wire.data)?;
        let timeout = std::time::Duration::from_millis(wire.timeout_ms).min(max_timeout);
        Some((to, name(&wire.event)?, payload, timeout))
    }

    fn payload(json: bool, data: String) -> Option<crate::payload::Payload> {
        if json {
            crate::payload::Payload::json(data).ok()
        } else {
            crate::payload::Payload::text(data).ok()
        }
    }

    /// Clients' answers, for the node that asked: as many as fit in `max_bytes` (a NATS
    /// message's limit); those that do not fit are sent as `unavailable` errors without data.
    #[must_use]
    pub fn encode_answers(answers: &[crate::ask::ClientAnswer], max_bytes: usize) -> Vec<u8> {
        let mut used: usize = 2;
        let wire: Vec<Answer> = answers
            .iter()
            .map(|a| {
                let client_id = a.client_id.as_ref().map(|n| n.as_str().to_owned());
                let too_large = |client_id| Answer {
                    client_id,
                    json: None,
                    data: None,
                    code: Some(ErrorCode::Unavailable.as_str().to_owned()),
                    message: Some("the answer is too large to cross nodes".to_owned()),
                };
                let answer = match &a.result {
                    Ok(p) => Answer {
                        client_id: client_id.clone(),
                        json: Some(p.is_json()),
                        data: Some(p.as_str().to_owned()),
                        code: None,
                        message: None,
                    },
                    Err(e) => Answer {
                        client_id: client_id.clone(),
                        json: None,
                        data: None,
                        code: Some(e.code.as_str().to_owned()),
                        message: Some(e.message.clone()),
                    },
                };
                let size = serde_json::to_vec(&answer).map_or(usize::MAX, |v| v.len() + 1);
                // Room for the short error of every answer after this one.
                if used.saturating_add(size) > max_bytes.saturating_sub(256) {
                    let small = too_large(client_id);
                    used += serde_json::to_vec(&small).map_or(0, |v| v.len() + 1);
                    small
                } else {
                    used += size;
                    answer
                }
            })
            .collect();
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Answers another node sent: at most `max` of them; `None` if they do not decode.
    #[must_use]
    pub fn decode_answers(
        body: &[u8],
        max_name_len: usize,
        max: usize,
    ) -> Option<Vec<crate::ask::ClientAnswer>> {
        let wire: Vec<Answer> = serde_json::from_slice(body).ok()?;
        wire.into_iter()
            .take(max)
            .map(|a| {
                let client_id = match a.client_id {
                    Some(id) => {
                        Some(crate::topic::Name::parse("client id", &id, max_name_len).ok()?)
                    }
                    None => None,
                };
                let result = match (a.data, a.code) {
                    (Some(data), None) => Ok(payload(a.json.unwrap_or(false), data)?),
                    (None, Some(code)) => Err(ProtocolError::new(
                        ErrorCode::from_wire(&code).unwrap_or(ErrorCode::Unavailable),
                        a.message.unwrap_or_default(),
                    )),
                    _ => return None,
                };
                Some(crate::ask::ClientAnswer { client_id, result })
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn asks_and_answers_come_back_as_they_went() {
            use crate::ask::{AskTo, ClientAnswer};
            use crate::payload::Payload;
            use crate::topic::Name;
            use std::time::Duration;
            let n = |s: &str| Name::parse("name", s, 64).unwrap();
            let json = Payload::json(r#"{"a":[1,"x"]}"#).unwrap();
            let body = encode_ask(
                &AskTo::Room(n("lobby")),
                &n("vote"),
                &json,
                Duration::from_secs(3),
            );
            assert_eq!(
                decode_ask(&body, 64, Duration::from_secs(60)),
                Some((
                    AskTo::Room(n("lobby")),
                    n("vote"),
                    json.clone(),
                    Duration::from_secs(3)
                ))
            );
            let body = encode_ask(
                &AskTo::Client(n("al")),
                &n("e"),
                &json,
                Duration::from_secs(3600),
            );
            let (_, _, _, timeout) = decode_ask(&body, 64, Duration::from_secs(60)).unwrap();
            assert_eq!(
                timeout,
                Duration::from_secs(60),
                "another node's timeout is bounded"
            );
            let answers = vec![
                ClientAnswer {
                    client_id: Some(n("al")),
                    result: Ok(json.clone()),
                },
                ClientAnswer {
                    client_id: None,
                    result: Ok(Payload::text("plain").unwrap()),
                },
                ClientAnswer {
                    client_id: Some(n("bo")),
                    result: Err(ProtocolError::new(ErrorCode::Timeout, "late")),
                },
            ];
            let body = encode_answers(&answers, 1 << 20);
            assert_eq!(decode_answers(&body, 64, 100), Some(answers.clone()));
            assert_eq!(decode_answers(&body, 64, 2).map(|a| a.len()), Some(2));
            // Too large for the message: the data is replaced by an error, never dropped.
            let big = Payload::text("x".repeat(2000)).unwrap();
            let answers = vec![ClientAnswer {
                client_id: Some(n("al")),
                result: Ok(big),
            }];
            let got = decode_answers(&encode_answers(&answers, 1024), 64, 10).unwrap();
            assert_eq!(
                got[0].result.as_ref().unwrap_err().code,
                ErrorCode::Unavailable
            );
            assert_eq!(got[0].client_id, Some(n("al")));
        }

        #[test]
        fn updates_and_changes_come_back_as_they_went() {
            let limits = NameLimits::default();
            let p = |s: &str| Pattern::parse(s, limits).unwrap();
            let update = SubscriptionUpdate {
                add: vec![p("a.>"), p("b")],
                remove: vec![p("c.*")],
                by_principal: Some(false),
            };
            assert_eq!(decode_update(&encode_update(&update), limits), Some(update));
            let change = Ok(SubscriptionChange {
                added: vec![p("a.>")],
                removed: vec![],
                subscriptions: vec![p("a.>"), p("x")],
                connected: true,
            });
            assert_eq!(decode_change(&encode_change(&change), limits), Some(change));
            let refused = Err(ProtocolError::new(ErrorCode::Forbidden, "no"));
            assert_eq!(
                decode_change(&encode_change(&refused), limits),
                Some(refused)
            );
            assert_eq!(decode_update(b"{\"add\":[\"a..b\"]}", limits), None);
        }
    }
}
