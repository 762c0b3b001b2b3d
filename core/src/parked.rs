//! Sessions parked for the reconnect window, and what a change of a client's subscriptions
//! reports: plain data, used by the session logic (`session.rs`).

use std::sync::Arc;

use crate::conn::Sub;
use crate::grants::Grants;
use crate::topic::{Name, Pattern};

/// A closed connection's state, kept for its client id during the reconnect window.
pub(crate) struct Parked {
    /// Tells this parking apart from earlier ones of the same client id (expiry entries).
    pub(crate) generation: u64,
    /// Subscriptions; `done` is at least `pos`.
    pub(crate) subs: Vec<Sub>,
    /// Subscriptions removed while catching up that delivered beyond `pos` (no duplicates).
    pub(crate) removed: Vec<Sub>,
    /// Every event up to here was handed to the connection (or considered for it).
    pub(crate) pos: u64,
    pub(crate) rooms: Vec<Name>,
    /// The closed connection's grants (subscription changes while parked are checked on them).
    pub(crate) grants: Arc<Grants>,
}

/// The outcome of [`crate::Broker::update_subscriptions`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionChange {
    /// Patterns newly subscribed (those already held are left as they are).
    pub added: Vec<Pattern>,
    /// Patterns removed (those not held are ignored).
    pub removed: Vec<Pattern>,
    /// Every subscription the client holds now, in subscription order.
    pub subscriptions: Vec<Pattern>,
    /// Whether the client is connected (`false`: its session is parked).
    pub connected: bool,
}
