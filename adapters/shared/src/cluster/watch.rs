//! Presence watches across nodes: the relay's side of `tidings_core::relay`'s
//! `RelayRequest::Watch`, `RelayRequest::Notice`, `RelayReply::WatchedElsewhere` and
//! `RelayReply::Notice`.
//!
//! - A node announces the topics it watches on `<stream>.watch` (header `Tid-Kind`: `add` or
//!   `remove` for changes, `all` for its whole list, which replaces what the others knew of it;
//!   the body is a JSON array of topics). It sends `all` when it hears a node it had not heard
//!   from within `ALIVE` (a node starting, or back after a NATS outage), and every
//!   [`REFRESH`] while it watches anything, so a lost announcement is repaired within that.
//! - A node forgets the watches of a node not heard from within `ALIVE`.
//! - A presence gathering asked for a watched topic says so (header `Tid-Watch`): a node
//!   answering it registers the watch before it answers, so every change after its answer is
//!   relayed (the watcher's snapshot, then every later change).
//! - While some other node watches a topic, this node relays the joins and leaves of its
//!   connections on it to `<stream>.relay.p.<hex of the topic>`, which a node subscribes to
//!   while it has local watchers of the topic.
//!
//! Bounded: at most [`MAX_REMOTE_TOPICS`] topics watched by other nodes are tracked (more are
//! ignored, with a warning: their notices from this node are not relayed).

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt as _;
use tidings_core::presence::PresenceNotice;
use tidings_core::relay::{RelayReply, RelayRequest};
use tidings_core::{Limits, Topic};

use super::codec;

/// How often a node watching topics announces its whole list again.
pub(crate) const REFRESH: std::time::Duration = std::time::Duration::from_secs(10);
/// The most topics watched by other nodes a node keeps track of.
pub(crate) const MAX_REMOTE_TOPICS: usize = 100_000;
/// The header of a presence gathering for a watch.
pub(crate) const WATCH: &str = "Tid-Watch";
/// Bytes of topics per announcement at most (a longer list goes in several).
const ANNOUNCE_BYTES: usize = 256 << 10;

/// The subject of the notices of `topic`.
pub(crate) fn notice_subject(stream: &str, topic: &Topic) -> String {
    let hex: String = topic.as_str().bytes().map(|b| format!("{b:02x}")).collect();
    format!("{stream}.relay.p.{hex}")
}

/// A node's watch state in the relay.
pub(crate) struct Watches {
    stream: String,
    node: String,
    limits: Limits,
    /// Topics watched here, each with the task forwarding its notices subject.
    here: HashMap<Topic, tokio::task::JoinHandle<()>>,
    /// Topics watched by other nodes, and which.
    elsewhere: HashMap<Topic, HashSet<String>>,
    /// Notices relayed by other nodes, from the forwarding tasks.
    notices: (
        tokio::sync::mpsc::UnboundedSender<async_nats::Message>,
        tokio::sync::mpsc::UnboundedReceiver<async_nats::Message>,
    ),
    /// When this node last announced its whole list.
    refreshed: tokio::time::Instant,
    /// The other nodes, and when each was last heard from (heartbeats, announcements).
    heard: HashMap<String, tokio::time::Instant>,
}

impl Watches {
    pub(crate) fn new(stream: &str, node: &str, limits: Limits) -> Self {
        Self {
            stream: stream.to_owned(),
            node: node.to_owned(),
            limits,
            here: HashMap::new(),
            elsewhere: HashMap::new(),
            notices: tokio::sync::mpsc::unbounded_channel(),
            refreshed: tokio::time::Instant::now(),
            heard: HashMap::new(),
        }
    }

    /// `node` was heard from; `true` if it was not within `ALIVE` (new, or back): it gets this
    /// node's whole list then.
    pub(crate) fn heard(&mut self, node: &str) -> bool {
        let now = tokio::time::Instant::now();
        let fresh = self
            .heard
            .insert(node.to_owned(), now)
            .is_none_or(|at| now.duration_since(at) >= super::codec::ALIVE);
        fresh && !self.here.is_empty()
    }

    /// The announcements subject.
    pub(crate) fn subject(&self) -> String {
        format!("{}.watch", self.stream)
    }

    /// Whether `topic` is watched here.
    pub(crate) fn watched_here(&self, topic: &Topic) -> bool {
        self.here.contains_key(topic)
    }

    /// The broker's `Watch` and `Notice` requests.
    pub(crate) async fn request(&mut self, client: &async_nats::Client, request: RelayRequest) {
        match request {
            RelayRequest::Watch {
                topic,
                watched: true,
            } => {
                // Subscribed before the watch is announced and its presence gathered (NATS
                // handles one connection's commands in order): no notice relayed after an
                // answer to the gathering is missed.
                let subject = notice_subject(&self.stream, &topic);
                let sub = match client.subscribe(subject.clone()).await {
                    Ok(sub) => Some(sub),
                    Err(e) => {
                        tracing::warn!(
                            "cannot subscribe to {subject}: presence notices of other nodes are \
                             lost: {e}"
                        );
                        None
                    }
                };
                let task = tokio::spawn(forward(sub, self.notices.0.clone()));
                if let Some(old) = self.here.insert(topic.clone(), task) {
                    old.abort();
                }
                self.announce(client, "add", &[topic]).await;
            }
            RelayRequest::Watch {
                topic,
                watched: false,
            } => {
                if let Some(task) = self.here.remove(&topic) {
                    task.abort();
                }
                self.announce(client, "remove", &[topic]).await;
            }
            RelayRequest::Notice(notice) => {
                let subject = notice_subject(&self.stream, &notice.topic);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(codec::NODE, self.node.as_str());
                let body = bytes::Bytes::from(notice.to_json());
                if let Err(e) = client.publish_with_headers(subject, headers, body).await {
                    tracing::debug!("relaying a presence notice failed: {e}");
                }
            }
            _ => {}
        }
    }

    /// Announces `kind` (`add`, `remove`, `all`) of `topics`, in pieces of at most
    /// [`ANNOUNCE_BYTES`] (an `all` list goes on as `add`s).
    async fn announce(&self, client: &async_nats::Client, kind: &str, topics: &[Topic]) {
        let mut kind = kind;
        let mut rest = topics;
        loop {
            let mut size = 0;
            let n = rest
                .iter()
                .take_while(|t| {
                    size += t.as_str().len() + 3;
                    size <= ANNOUNCE_BYTES
                })
                .count()
                .max(1)
                .min(rest.len());
            let (piece, tail) = rest.split_at(n);
            let list: Vec<&str> = piece.iter().map(Topic::as_str).collect();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(codec::NODE, self.node.as_str());
            headers.insert(codec::KIND, kind);
            let body = bytes::Bytes::from(serde_json::to_vec(&list).unwrap_or_default());
            if let Err(e) = client
                .publish_with_headers(self.subject(), headers, body)
                .await
            {
                tracing::debug!("announcing presence watches failed: {e}");
            }
            if tail.is_empty() {
                return;
            }
            rest = tail;
            kind = "add";
        }
    }

    /// Announces every topic watched here (to a node heard anew, or as the periodic refresh).
    pub(crate) async fn announce_all(&mut self, client: &async_nats::Client) {
        self.refreshed = tokio::time::Instant::now();
        let topics: Vec<Topic> = self.here.keys().cloned().collect();
        self.announce(client, "all", &topics).await;
    }

    /// On each heartbeat: the periodic refresh, and forgetting the nodes not heard from.
    pub(crate) async fn tick(
        &mut self,
        client: &async_nats::Client,
        replies: &flume::Sender<RelayReply>,
    ) {
        if !self.here.is_empty() && self.refreshed.elapsed() >= REFRESH {
            self.announce_all(client).await;
        }
        let now = tokio::time::Instant::now();
        let gone: Vec<String> = self
            .heard
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= super::codec::ALIVE)
            .map(|(node, _)| node.clone())
            .collect();
        for node in gone {
            self.heard.remove(&node);
            self.replace(&node, Vec::new(), replies);
        }
    }

    /// `node` watches `topic` (its announcement).
    pub(crate) fn watched_by(
        &mut self,
        node: &str,
        topic: Topic,
        replies: &flume::Sender<RelayReply>,
    ) {
        if self.add(node, topic.clone()) == Some(true) {
            let _ = replies.send(RelayReply::WatchedElsewhere {
                topic,
                watched: true,
            });
        }
    }

    /// `node` gathers the presence of `topic` for a watch: recorded here; the broker registers
    /// the watch itself with its answer (`RelayReply::PresenceAsked` with `watch`), unless this
    /// returns `false` (past [`MAX_REMOTE_TOPICS`]).
    pub(crate) fn watched_by_gathering(&mut self, node: &str, topic: Topic) -> bool {
        self.add(node, topic).is_some()
    }

    /// Records that `node` watches `topic`: `Some(true)` if no other node did, `None` past
    /// [`MAX_REMOTE_TOPICS`] (nothing recorded).
    fn add(&mut self, node: &str, topic: Topic) -> Option<bool> {
        self.heard
            .insert(node.to_owned(), tokio::time::Instant::now());
        if !self.elsewhere.contains_key(&topic) && self.elsewhere.len() >= MAX_REMOTE_TOPICS {
            tracing::warn!(
                "more than {MAX_REMOTE_TOPICS} topics are watched on other nodes; the watch of \
                 {topic} is ignored here"
            );
            return None;
        }
        let nodes = self.elsewhere.entry(topic).or_default();
        Some(nodes.insert(node.to_owned()) && nodes.len() == 1)
    }

    fn unwatched_by(&mut self, node: &str, topic: &Topic, replies: &flume::Sender<RelayReply>) {
        let Some(nodes) = self.elsewhere.get_mut(topic) else {
            return;
        };
        if nodes.remove(node) && nodes.is_empty() {
            self.elsewhere.remove(topic);
            let _ = replies.send(RelayReply::WatchedElsewhere {
                topic: topic.clone(),
                watched: false,
            });
        }
    }

    /// What `node` watches is exactly `topics` now.
    fn replace(&mut self, node: &str, topics: Vec<Topic>, replies: &flume::Sender<RelayReply>) {
        let keep: HashSet<&Topic> = topics.iter().collect();
        let dropped: Vec<Topic> = self
            .elsewhere
            .iter()
            .filter(|(t, nodes)| nodes.contains(node) && !keep.contains(t))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in dropped {
            self.unwatched_by(node, &topic, replies);
        }
        for topic in topics {
            self.watched_by(node, topic, replies);
        }
    }

    /// An announcement of another node.
    pub(crate) fn announced(
        &mut self,
        message: &async_nats::Message,
        replies: &flume::Sender<RelayReply>,
    ) {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let Some(node) = header(codec::NODE) else {
            return;
        };
        if node == self.node {
            return;
        }
        let Ok(list) = serde_json::from_slice::<Vec<String>>(&message.payload) else {
            return;
        };
        let topics: Vec<Topic> = list
            .iter()
            .filter_map(|t| Topic::parse(t, self.limits.names).ok())
            .collect();
        match header(codec::KIND).as_deref() {
            Some("add") => {
                for topic in topics {
                    self.watched_by(&node, topic, replies);
                }
            }
            Some("remove") => {
                for topic in &topics {
                    self.unwatched_by(&node, topic, replies);
                }
            }
            Some("all") => self.replace(&node, topics, replies),
            _ => {}
        }
    }

    /// The next notice another node relayed to a topic watched here.
    pub(crate) async fn next_notice(&mut self) -> Option<async_nats::Message> {
        self.notices.1.recv().await
    }

    /// A relayed notice, for the broker (`None`: this node's own, or one that does not decode).
    pub(crate) fn notice(&self, message: &async_nats::Message) -> Option<RelayReply> {
        let node = message.headers.as_ref()?.get(codec::NODE)?;
        if node.as_str() == self.node {
            return None;
        }
        let notice = PresenceNotice::from_json(
            &message.payload,
            self.limits.names,
            self.limits.max_name_len,
        )?;
        Some(RelayReply::Notice(notice))
    }

    /// Stops the forwarding tasks.
    pub(crate) fn stop(&mut self) {
        for (_, task) in self.here.drain() {
            task.abort();
        }
    }
}

/// Hands what arrives on a topic's notices subject to the relay task; dropping it (the task
/// aborted) unsubscribes.
async fn forward(
    sub: Option<async_nats::Subscriber>,
    to: tokio::sync::mpsc::UnboundedSender<async_nats::Message>,
) {
    let Some(mut sub) = sub else { return };
    while let Some(message) = sub.next().await {
        if to.send(message).is_err() {
            return;
        }
    }
}
