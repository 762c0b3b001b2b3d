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

/// What a presence notice says happened ([`PresenceNotice`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAction {
    /// A connection started matching the topic: its first subscription whose pattern matches
    /// it appeared (subscribe, a restored session, an identify after subscribing).
    Join,
    /// A connection stopped matching the topic: its last such subscription went (unsubscribe,
    /// the connection closed or was closed, an identify under another id).
    Leave,
}

impl PresenceAction {
    /// `"join"` or `"leave"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
        }
    }
}

/// A join or leave on a watched topic ([`crate::Command::WatchPresence`]): one per connection
/// (two connections of one client id give two joins), as watchers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceNotice {
    /// The watched topic.
    pub topic: Topic,
    /// Join or leave.
    pub action: PresenceAction,
    /// The connection's client id; `None` for an anonymous connection.
    pub client_id: Option<crate::topic::Name>,
    /// What the connection's token says about it (its `info` claim: the JSON text of a value of
    /// at most [`MAX_INFO_BYTES`]), if any ([`Grants::info`]).
    pub info: Option<std::sync::Arc<str>>,
}

/// The most bytes of the JSON text of a connection's `info` ([`Grants::info`]).
pub const MAX_INFO_BYTES: usize = 1024;

impl PresenceNotice {
    /// The JSON object watchers receive: `{"topic":..,"action":"join"|"leave","client_id":..,
    /// "info":..}` (the last two only when present).
    #[must_use]
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            topic: &'a str,
            action: PresenceAction,
            #[serde(skip_serializing_if = "Option::is_none")]
            client_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            info: Option<&'a serde_json::value::RawValue>,
        }
        let info = self
            .info
            .as_deref()
            .and_then(|text| serde_json::from_str::<&serde_json::value::RawValue>(text).ok());
        let wire = Wire {
            topic: self.topic.as_str(),
            action: self.action,
            client_id: self.client_id.as_ref().map(crate::topic::Name::as_str),
            info,
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The notice from its JSON (as another node relays it), checked like one made here: a
    /// valid topic and client id, an `info` that is JSON of at most [`MAX_INFO_BYTES`].
    #[must_use]
    pub fn from_json(
        bytes: &[u8],
        limits: crate::topic::NameLimits,
        max_name: usize,
    ) -> Option<Self> {
        #[derive(Deserialize)]
        struct Wire<'a> {
            topic: &'a str,
            action: PresenceAction,
            #[serde(default)]
            client_id: Option<&'a str>,
            #[serde(default, borrow)]
            info: Option<&'a serde_json::value::RawValue>,
        }
        let wire: Wire<'_> = serde_json::from_slice(bytes).ok()?;
        let client_id = match wire.client_id {
            Some(id) => Some(crate::topic::Name::parse("client_id", id, max_name).ok()?),
            None => None,
        };
        let info = match wire.info {
            Some(raw) if raw.get().len() <= MAX_INFO_BYTES => Some(std::sync::Arc::from(raw.get())),
            Some(_) => return None,
            None => None,
        };
        Some(Self {
            topic: Topic::parse(wire.topic, limits).ok()?,
            action: wire.action,
            client_id,
            info,
        })
    }
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
