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
//! - Presence ([`crate::presence`]) is gathered from every node: [`RelayRequest::GatherPresence`]
//!   asks the others, [`RelayReply::PresenceAsked`] is another node asking this one (answered
//!   with [`RelayRequest::PresenceHere`]), [`RelayReply::PresenceGathered`] brings what the others
//!   answered.

use crate::broker::Broker;
use crate::command::Recipient;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::ConnId;
use crate::output::Output;
use crate::payload::Payload;
use crate::presence::Presence;
use crate::topic::{Name, Topic};

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
    },
    /// What the other nodes answered to a [`RelayRequest::GatherPresence`], merged (`nodes`
    /// counts them; nodes that did not answer in time are not in it).
    PresenceGathered {
        /// The gathering.
        id: RelayId,
        /// Their presence.
        presence: Presence,
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
                Route::Client(id) => self.clients.contains_key(id),
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
            }
            Asker::App(id) => self.emit(crate::output::AppEvent::Presence { id, presence }),
        }
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
            RelayReply::PresenceAsked { token, topic } => {
                let presence = self.presence(&topic);
                self.out
                    .push_back(Output::Relay(RelayRequest::PresenceHere {
                        token,
                        presence,
                    }));
            }
            RelayReply::PresenceGathered { id, presence } => {
                let Some((asker, topic, mut here)) = self.relay.gathering.remove(&id) else {
                    return;
                };
                here.merge(presence);
                self.answer_presence(asker, &topic, here);
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
