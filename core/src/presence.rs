//! Presence: who would receive an event published to a topic now, that is the connections with a
//! subscription matching it: how many, which client ids (with their connection counts), how many
//! without one. Asked by clients (the native `presence` op), over HTTP (`GET /presence?topic=`)
//! and by the application ([`crate::AppOp::Presence`]). In a cluster the other nodes are asked
//! too, through the relay seam ([`crate::relay`]), and their answers merged.
//!
//! Bounded: at most [`MAX_PRESENCE_CLIENTS`] client ids are listed (`truncated` says when more
//! exist; the counts are always complete). Grant-checked: a client sees the presence of a topic
//! only if it may subscribe to it and sees it (declared private topics).

use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::grants::Grants;
use crate::subs::Slot;
use crate::topic::{Pattern, Topic};

/// The most client ids one answer lists.
pub const MAX_PRESENCE_CLIENTS: usize = 1000;

/// Who is subscribed to a topic (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Connections subscribed to a pattern matching the topic.
    pub connections: usize,
    /// Those of them without a client id.
    pub anonymous: usize,
    /// The client ids among them, sorted, with how many connections each has: at most
    /// [`MAX_PRESENCE_CLIENTS`].
    pub clients: Vec<ClientPresence>,
    /// More client ids are subscribed than listed.
    pub truncated: bool,
    /// How many nodes answered (1 on a single node).
    pub nodes: usize,
}

/// One client id in a [`Presence`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientPresence {
    /// The client id.
    pub client_id: String,
    /// Its connections subscribed to the topic.
    pub connections: usize,
}

impl Presence {
    /// Adds another node's presence to this one.
    pub fn merge(&mut self, other: Self) {
        // Saturating: another node's numbers are not trusted to be small.
        self.connections = self.connections.saturating_add(other.connections);
        self.anonymous = self.anonymous.saturating_add(other.anonymous);
        self.truncated |= other.truncated;
        self.nodes = self.nodes.saturating_add(other.nodes);
        let mut clients = std::mem::take(&mut self.clients);
        clients.extend(other.clients);
        clients.sort();
        for c in clients {
            match self.clients.last_mut() {
                Some(last) if last.client_id == c.client_id => {
                    last.connections = last.connections.saturating_add(c.connections);
                }
                _ => self.clients.push(c),
            }
        }
        self.bound();
    }

    /// Keeps at most [`MAX_PRESENCE_CLIENTS`] client ids (what a peer sends is bounded too).
    pub fn bound(&mut self) {
        if self.clients.len() > MAX_PRESENCE_CLIENTS {
            self.clients.truncate(MAX_PRESENCE_CLIENTS);
            self.truncated = true;
        }
    }

    /// The JSON object clients receive: the topic and this presence.
    #[must_use]
    pub fn to_json(&self, topic: &Topic) -> String {
        #[derive(Serialize)]
        struct Answer<'a> {
            topic: &'a str,
            #[serde(flatten)]
            presence: &'a Presence,
        }
        let answer = Answer {
            topic: topic.as_str(),
            presence: self,
        };
        serde_json::to_string(&answer).unwrap_or_default()
    }
}

impl Broker {
    /// The presence of `topic` on this node.
    #[must_use]
    pub fn presence(&self, topic: &Topic) -> Presence {
        let mut slots: Vec<Slot> = Vec::new();
        self.subs
            .for_each_match(topic.as_str(), |slot| slots.push(slot));
        slots.sort_unstable();
        slots.dedup();
        let mut presence = Presence {
            nodes: 1,
            ..Presence::default()
        };
        let mut ids = Vec::new();
        for slot in slots {
            let conn = self.conn_ref(slot);
            if conn.closing {
                continue;
            }
            presence.connections += 1;
            match conn.client_id() {
                Some(id) => ids.push(id.as_str()),
                None => presence.anonymous += 1,
            }
        }
        ids.sort_unstable();
        for id in ids {
            match presence.clients.last_mut() {
                Some(last) if last.client_id == id => last.connections += 1,
                _ => presence.clients.push(ClientPresence {
                    client_id: id.to_owned(),
                    connections: 1,
                }),
            }
        }
        presence.bound();
        presence
    }

    /// Whether a holder of `grants` may see the presence of `topic`: it may subscribe to it,
    /// and the topic, if declared private, is its own (by its token's client id).
    pub(crate) fn may_see_presence(&self, grants: &Grants, topic: &Topic) -> bool {
        let pattern = Pattern::exact(topic);
        grants.may_subscribe(&pattern)
            && self
                .catalog
                .get(topic.as_str())
                .is_none_or(|(_, visibility)| match visibility {
                    crate::output::Visibility::Public => true,
                    crate::output::Visibility::Private(owner) => {
                        grants.principal.as_ref() == Some(owner)
                    }
                    crate::output::Visibility::Group(_) => false,
                })
    }
}

/// The error for a presence a client may not see.
pub(crate) fn not_granted(topic: &Topic) -> crate::error::ProtocolError {
    crate::error::ProtocolError::new(
        crate::error::ErrorCode::Forbidden,
        format!(
            "the presence of {:?} is not granted: it needs the right to subscribe to that topic",
            topic.as_str()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str, connections: usize) -> ClientPresence {
        ClientPresence {
            client_id: id.to_owned(),
            connections,
        }
    }

    #[test]
    fn merging_adds_counts_and_keeps_ids_sorted_and_bounded() {
        let mut a = Presence {
            connections: 3,
            anonymous: 1,
            clients: vec![client("alice", 1), client("carol", 1)],
            truncated: false,
            nodes: 1,
        };
        let b = Presence {
            connections: 2,
            anonymous: 0,
            clients: vec![client("alice", 1), client("bob", 1)],
            truncated: false,
            nodes: 1,
        };
        a.merge(b);
        assert_eq!(
            a,
            Presence {
                connections: 5,
                anonymous: 1,
                clients: vec![client("alice", 2), client("bob", 1), client("carol", 1)],
                truncated: false,
                nodes: 2,
            }
        );
        let many = Presence {
            clients: (0..MAX_PRESENCE_CLIENTS + 5)
                .map(|i| client(&format!("c{i:05}"), 1))
                .collect(),
            ..Presence::default()
        };
        a.merge(many);
        assert_eq!(a.clients.len(), MAX_PRESENCE_CLIENTS);
        assert!(a.truncated);
        assert_eq!(a.clients[0], client("alice", 2));
    }

    #[test]
    fn the_json_names_the_topic() {
        let topic = Topic::parse("chat.a", Default::default()).unwrap();
        let p = Presence {
            connections: 1,
            anonymous: 0,
            clients: vec![client("alice", 1)],
            truncated: false,
            nodes: 1,
        };
        assert_eq!(
            p.to_json(&topic),
            r#"{"topic":"chat.a","connections":1,"anonymous":0,"clients":[{"client_id":"alice","connections":1}],"truncated":false,"nodes":1}"#
        );
    }
}
