//! Grants: what one connection may subscribe to, publish to and send.

use crate::topic::{Name, Pattern, Topic};

/// Per-connection permissions, set by the adapter from authentication or configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grants {
    /// A subscription pattern is allowed if one of these covers it entirely.
    pub subscribe: Vec<Pattern>,
    /// A publish (or a named send) to a topic is allowed if one of these matches it.
    pub publish: Vec<Pattern>,
    /// Whether the connection may send direct messages to other connections or client ids,
    /// and send requests to the application.
    pub direct: bool,
    /// Which client ids the connection may claim with `identify` (others can then send to it
    /// directly, and its publishes carry it as `from`).
    pub client_ids: ClientIds,
    /// The client id the connection's credentials are bound to (a token's subject), whatever
    /// else it may claim: it is that id's principal ([`crate::Claim`]).
    pub principal: Option<Name>,
    /// What the connection's credentials say about it, for others to see in presence notices
    /// ([`crate::presence::PresenceNotice::info`]): the JSON text of one value (a token's `info`
    /// claim), at most [`crate::presence::MAX_INFO_BYTES`] long.
    pub info: Option<std::sync::Arc<str>>,
}

/// The client ids a connection may claim.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientIds {
    /// None.
    #[default]
    None,
    /// Exactly this one (e.g. the subject of the connection's token).
    Only(Name),
    /// Any id not held by another connection.
    Any,
}

impl Grants {
    /// Everything allowed.
    pub fn all() -> Self {
        let any = Pattern::parse(">", Default::default()).expect("'>' is a valid pattern");
        Self {
            subscribe: vec![any.clone()],
            publish: vec![any],
            direct: true,
            client_ids: ClientIds::Any,
            principal: None,
            info: None,
        }
    }

    /// Nothing allowed.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether subscribing to `pattern` is allowed.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscribe.iter().any(|g| g.covers(pattern))
    }

    /// Whether claiming `client_id` is allowed.
    pub fn may_identify(&self, client_id: &Name) -> bool {
        match &self.client_ids {
            ClientIds::Any => true,
            ClientIds::Only(only) => only == client_id,
            ClientIds::None => false,
        }
    }

    /// Whether the connection is bound to exactly this client id ([`Grants::principal`], or
    /// [`ClientIds::Only`]): it is that id's principal, which alone may take the id over or get
    /// its parked session back.
    pub fn is_bound_to(&self, client_id: &Name) -> bool {
        self.principal.as_ref() == Some(client_id)
            || matches!(&self.client_ids, ClientIds::Only(only) if only == client_id)
    }

    /// Whether publishing to `topic` is allowed.
    pub fn may_publish(&self, topic: &Topic) -> bool {
        self.publish.iter().any(|g| g.matches(topic.as_str()))
    }
}
