//! Configuration: limits, retention, timers and the slow-consumer policy. Every default is bounded.

use std::time::Duration;

use crate::topic::{NameLimits, Pattern};

/// Everything the broker can be tuned with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The hub epoch written into every cursor. Adapters pick a new one on every start (e.g. the
    /// start time in milliseconds), so cursors from a previous run are recognised as such and
    /// answered with a gap notice instead of a silent mismatch.
    pub epoch: u64,
    /// Limits on everything a peer can grow.
    pub limits: Limits,
    /// How much history is kept for resume.
    pub retention: Retention,
    /// What happens to a connection that does not read fast enough.
    pub slow_consumer: SlowConsumer,
    /// Keep-alive, idle and ack timers.
    pub timers: Timers,
    /// The reconnection delay advertised to SSE clients with `retry:` when a stream opens.
    pub sse_retry: Option<Duration>,
    /// The reconnect window of identified clients (gochan's client TTL). When set, a connection
    /// that claimed a client id and held subscriptions or rooms leaves a *session* behind when it
    /// closes: its subscriptions (with their delivery position) and rooms, kept for this long. A
    /// connection claiming the same client id within the window gets them back and is caught up
    /// from where delivery stopped (a gap notice for anything no longer retained). `None` (the
    /// default): nothing outlives a connection.
    pub reconnect_window: Option<Duration>,
    /// Emit [`crate::Lifecycle`] events (clients, topics, groups, subscriptions, publishes) for
    /// the application's hooks. Off by default: they cost an allocation each.
    pub lifecycle_events: bool,
    /// The server's own id in the ksbus protocol: the `from` of server-originated ksbus frames
    /// (wait-recv acks, string publishes) and the `pub_id` target that reaches the application.
    pub server_id: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            epoch: 1,
            limits: Limits::default(),
            retention: Retention::default(),
            slow_consumer: SlowConsumer::default(),
            timers: Timers::default(),
            sse_retry: Some(Duration::from_millis(2000)),
            reconnect_window: None,
            lifecycle_events: false,
            server_id: DEFAULT_SERVER_ID.to_owned(),
        }
    }
}

/// The default [`Config::server_id`].
pub const DEFAULT_SERVER_ID: &str = "tidings";

/// Limits on what peers can make the broker hold. Exceeding one gets a clear error.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Connections open at once; further `Open`s are closed with `overloaded`.
    pub max_connections: usize,
    /// Largest client frame in bytes (adapters should also stop reading there).
    pub max_frame_bytes: usize,
    /// Subscriptions (patterns) per connection.
    pub max_subscriptions: usize,
    /// Length and depth of topic names and patterns.
    pub names: NameLimits,
    /// Client requests awaiting an answer from the application, per connection.
    pub max_pending_requests: usize,
    /// Server requests (emit-with-ack) awaiting an answer from the client, per connection.
    pub max_pending_acks: usize,
    /// Bytes handed to a connection's transport and not yet reported `Flushed`. Past this the
    /// slow-consumer policy applies.
    pub max_queued_bytes: usize,
    /// Length of client ids, event names, room names and subscription names.
    pub max_name_len: usize,
    /// Rooms one connection can be in.
    pub max_rooms_per_conn: usize,
    /// Distinct topics whose eviction point is remembered exactly for gap detection; past this,
    /// gap detection becomes conservative (may report a gap for a topic that lost nothing).
    pub max_tracked_topics: usize,
    /// Sessions kept for the reconnect window at once; past it the oldest is dropped. Each holds
    /// at most `max_subscriptions` subscriptions and `max_rooms_per_conn` rooms.
    pub max_parked_sessions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_frame_bytes: 1 << 20,
            max_subscriptions: 256,
            names: NameLimits::default(),
            max_pending_requests: 64,
            max_pending_acks: 64,
            max_queued_bytes: 4 << 20,
            max_name_len: 128,
            max_rooms_per_conn: 64,
            max_tracked_topics: 100_000,
            max_parked_sessions: 10_000,
        }
    }
}

/// Bounds of the replay history. An event is evicted as soon as any bound is exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Events kept (0 disables replay: every resume then gets a gap notice if it missed anything).
    pub max_events: usize,
    /// Payload bytes kept.
    pub max_bytes: usize,
    /// Age after which an event is evicted.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(300),
        }
    }
}

/// What to do with a connection whose queued bytes pass [`Limits::max_queued_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Close the connection with `slow_consumer`; the client resumes from its cursor.
    Disconnect,
    /// Stop sending live events to it. Once its transport drains, catch it up from the history;
    /// whatever is no longer retained (and any direct message dropped meanwhile) is announced
    /// with a gap notice.
    DropAndGap,
}

/// The slow-consumer policy, per topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowConsumer {
    /// Used when no rule matches the topic being delivered.
    pub default: SlowConsumerPolicy,
    /// First matching pattern wins.
    pub rules: Vec<(Pattern, SlowConsumerPolicy)>,
}

impl Default for SlowConsumer {
    fn default() -> Self {
        Self {
            default: SlowConsumerPolicy::DropAndGap,
            rules: Vec::new(),
        }
    }
}

impl SlowConsumer {
    /// The policy for a topic (`None` for messages that are not topic events).
    pub fn policy_for(&self, topic: Option<&str>) -> SlowConsumerPolicy {
        topic
            .and_then(|t| self.rules.iter().find(|(p, _)| p.matches(t)))
            .map_or(self.default, |(_, policy)| *policy)
    }
}

/// Timers. All are measured on the `now` the adapter passes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timers {
    /// After this long without writing to a connection, send it a keep-alive (SSE comment,
    /// native `ping`). `None` disables keep-alives.
    pub keepalive: Option<Duration>,
    /// Close a WebSocket connection that sent nothing for this long. Never applies to SSE
    /// streams, whose clients cannot send. `None` disables it.
    pub idle_timeout: Option<Duration>,
    /// How long a client request may wait for the application's answer before the broker
    /// answers `timeout` itself.
    pub request_timeout: Duration,
    /// Default deadline for a server request (emit-with-ack) to a client.
    pub ack_timeout: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            keepalive: Some(Duration::from_secs(15)),
            idle_timeout: Some(Duration::from_secs(60)),
            request_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
        }
    }
}
