//! Configuration: limits, retention, timers and the slow-consumer policy. Every default is bounded.
//!
//! The sections ([`Limits`], [`Retention`], [`Timers`], [`SlowConsumer`]) are also the server's
//! configuration file sections (`[limits]`, `[retention]`, `[timers]`, `[slow_consumer]`): they
//! (de)serialize with serde, every key optional (a missing key keeps its default) and unknown keys
//! refused. Durations use the formats of [`units`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topic::{NameLimits, Pattern};

pub mod units;

/// A configuration value is invalid; the message names the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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
    /// Keep-alive, idle, request, ack, reconnect-window, close and shutdown timers.
    pub timers: Timers,
    /// The reconnection delay advertised to SSE clients with `retry:` when a stream opens.
    pub sse_retry: Option<Duration>,
    /// Where events are stored: only in memory (a restart starts a new epoch), or in an
    /// external log reached through outputs and inputs (see [`crate::log`]).
    pub log: crate::log::LogMode,
    /// Emit [`crate::Lifecycle`] events (clients, topics, groups, subscriptions, publishes) for
    /// the application's hooks. Off by default: they cost an allocation each.
    pub lifecycle_events: bool,
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
            log: crate::log::LogMode::Memory,
            lifecycle_events: false,
        }
    }
}

impl Config {
    /// Checks what the types cannot: limits that must not be zero, and slow-consumer rule
    /// patterns within the name limits.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first invalid key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        self.slow_consumer.validate(self.limits.names)
    }
}

/// The default ksbus server id ([`crate::ksbus::KsbusCodec::new`]): the `from` of
/// server-originated ksbus frames and the `pub_id` target that reaches the application.
pub const DEFAULT_SERVER_ID: &str = "tidings";

/// Limits on what peers can make the broker hold. Exceeding one gets a clear error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections open at once; further `Open`s are closed with `overloaded`.
    pub max_connections: usize,
    /// Largest client frame in bytes (adapters should also stop reading there).
    pub max_frame_bytes: usize,
    /// Subscriptions (patterns) per connection.
    pub max_subscriptions: usize,
    /// Length and depth of topic names and patterns (the keys `max_topic_len` and
    /// `max_topic_segments`).
    #[serde(flatten, with = "topic_names")]
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

impl Limits {
    /// Checks that the limits which would make the broker unusable at 0 are at least 1.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key (`limits.max_frame_bytes must be at least 1`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_topic_len", self.names.max_len),
            ("max_topic_segments", self.names.max_segments),
            ("max_name_len", self.max_name_len),
            ("max_queued_bytes", self.max_queued_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("limits.{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// [`NameLimits`] as the flat `[limits]` keys `max_topic_len` and `max_topic_segments`.
mod topic_names {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::topic::NameLimits;

    #[derive(Serialize, Deserialize)]
    #[serde(default)]
    struct Keys {
        max_topic_len: usize,
        max_topic_segments: usize,
    }

    impl Default for Keys {
        fn default() -> Self {
            let n = NameLimits::default();
            Self {
                max_topic_len: n.max_len,
                max_topic_segments: n.max_segments,
            }
        }
    }

    pub(super) fn serialize<S: Serializer>(n: &NameLimits, s: S) -> Result<S::Ok, S::Error> {
        Keys {
            max_topic_len: n.max_len,
            max_topic_segments: n.max_segments,
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NameLimits, D::Error> {
        let k = Keys::deserialize(d)?;
        Ok(NameLimits {
            max_len: k.max_topic_len,
            max_segments: k.max_topic_segments,
        })
    }
}

/// Bounds of the replay history. An event is evicted as soon as any bound is exceeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Events kept (0 disables replay: every resume then gets a gap notice if it missed anything).
    pub max_events: usize,
    /// Payload bytes kept.
    pub max_bytes: usize,
    /// Age after which an event is evicted.
    #[serde(with = "units::duration")]
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

/// What to do with a connection whose queued bytes pass [`Limits::max_queued_bytes`]. Written
/// `disconnect` or `drop_and_gap` in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowConsumer {
    /// Used when no rule matches the topic being delivered.
    pub default: SlowConsumerPolicy,
    /// First matching pattern wins. Written `rules = [{ pattern = "prices.>", policy =
    /// "disconnect" }]`; the patterns are checked against the configured name limits by
    /// [`SlowConsumer::validate`].
    #[serde(with = "rules")]
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

    /// Checks every rule's pattern against the name limits in force (deserializing can only
    /// check its syntax, as the limits are another section).
    ///
    /// # Errors
    /// A [`ConfigError`] naming `slow_consumer.rules` and the pattern.
    pub fn validate(&self, names: NameLimits) -> Result<(), ConfigError> {
        for (pattern, _) in &self.rules {
            Pattern::parse(pattern.as_str(), names)
                .map_err(|e| ConfigError(format!("slow_consumer.rules: {}", e.message)))?;
        }
        Ok(())
    }
}

/// [`SlowConsumer::rules`] as a list of `{ pattern, policy }` tables.
mod rules {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::SlowConsumerPolicy;
    use crate::topic::{NameLimits, Pattern};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule<P> {
        pattern: P,
        policy: SlowConsumerPolicy,
    }

    pub(super) fn serialize<S: Serializer>(
        rules: &[(Pattern, SlowConsumerPolicy)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(rules.iter().map(|(p, policy)| Rule {
            pattern: p.as_str(),
            policy: *policy,
        }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(Pattern, SlowConsumerPolicy)>, D::Error> {
        // Only the syntax here: length and depth are checked against the configured limits
        // by `SlowConsumer::validate`.
        let unbounded = NameLimits {
            max_len: usize::MAX,
            max_segments: usize::MAX,
        };
        Vec::<Rule<String>>::deserialize(d)?
            .into_iter()
            .map(|r| {
                Pattern::parse(&r.pattern, unbounded)
                    .map(|p| (p, r.policy))
                    .map_err(|e| serde::de::Error::custom(e.message))
            })
            .collect()
    }
}

/// Timers. All are measured on the `now` the adapter passes in. In configuration, `None` is
/// written `"off"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timers {
    /// After this long without writing to a connection, send it a keep-alive (SSE comment,
    /// native `ping`). `None` disables keep-alives.
    #[serde(with = "units::opt_duration")]
    pub keepalive: Option<Duration>,
    /// Close a WebSocket connection that sent nothing for this long. Never applies to SSE
    /// streams, whose clients cannot send. `None` disables it.
    #[serde(with = "units::opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// How long a client request may wait for the application's answer before the broker
    /// answers `timeout` itself.
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
    /// Default deadline for a server request (emit-with-ack) to a client.
    #[serde(with = "units::duration")]
    pub ack_timeout: Duration,
    /// The reconnect window of identified clients (gochan's client TTL). When set, a connection
    /// that claimed a client id and held subscriptions or rooms leaves a *session* behind when it
    /// closes: its subscriptions (with their delivery position) and rooms, kept for this long. A
    /// connection claiming the same client id within the window gets them back and is caught up
    /// from where delivery stopped (a gap notice for anything no longer retained). `None` (the
    /// default): nothing outlives a connection.
    #[serde(with = "units::opt_duration")]
    pub reconnect_window: Option<Duration>,
    /// How long a connection the server decided to close may take to write what it has left
    /// before it is dropped.
    #[serde(with = "units::duration")]
    pub close_grace: Duration,
    /// How long a graceful shutdown waits for connections to flush and close.
    #[serde(with = "units::duration")]
    pub shutdown_grace: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            keepalive: Some(Duration::from_secs(15)),
            idle_timeout: Some(Duration::from_secs(60)),
            request_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            reconnect_window: None,
            close_grace: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sections_read_their_keys_and_keep_defaults_for_the_rest() {
        let limits: Limits =
            serde_json::from_value(json!({"max_topic_len": 10, "max_frame_bytes": 99})).unwrap();
        assert_eq!(limits.names.max_len, 10);
        assert_eq!(
            limits.names.max_segments,
            NameLimits::default().max_segments
        );
        assert_eq!(limits.max_frame_bytes, 99);
        assert_eq!(limits.max_connections, Limits::default().max_connections);

        let timers: Timers = serde_json::from_value(
            json!({"keepalive": "off", "idle_timeout": 30000, "close_grace": "1m"}),
        )
        .unwrap();
        assert_eq!(timers.keepalive, None);
        assert_eq!(timers.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(timers.close_grace, Duration::from_secs(60));
        assert_eq!(timers.shutdown_grace, Timers::default().shutdown_grace);

        let slow: SlowConsumer = serde_json::from_value(json!({
            "default": "disconnect",
            "rules": [{"pattern": "prices.>", "policy": "drop_and_gap"}],
        }))
        .unwrap();
        assert_eq!(slow.default, SlowConsumerPolicy::Disconnect);
        assert_eq!(
            slow.policy_for(Some("prices.eur")),
            SlowConsumerPolicy::DropAndGap
        );
    }

    #[test]
    fn defaults_serialize_to_what_reads_back_as_the_defaults() {
        let config = Config::default();
        let limits = serde_json::to_value(&config.limits).unwrap();
        assert_eq!(limits["max_topic_len"], 256);
        assert_eq!(
            serde_json::from_value::<Limits>(limits).unwrap(),
            config.limits
        );
        let timers = serde_json::to_value(&config.timers).unwrap();
        assert_eq!(timers["keepalive"], "15s");
        assert_eq!(timers["reconnect_window"], "off");
        assert_eq!(
            serde_json::from_value::<Timers>(timers).unwrap(),
            config.timers
        );
        let retention = serde_json::to_value(&config.retention).unwrap();
        assert_eq!(retention["max_age"], "5m");
        assert_eq!(
            serde_json::from_value::<Retention>(retention).unwrap(),
            config.retention
        );
        let slow = SlowConsumer {
            rules: vec![(
                Pattern::parse("a.*", NameLimits::default()).unwrap(),
                SlowConsumerPolicy::Disconnect,
            )],
            ..SlowConsumer::default()
        };
        let value = serde_json::to_value(&slow).unwrap();
        assert_eq!(value["rules"][0]["pattern"], "a.*");
        assert_eq!(serde_json::from_value::<SlowConsumer>(value).unwrap(), slow);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = serde_json::from_value::<Limits>(json!({"max_frame_byte": 1})).unwrap_err();
        assert!(e.to_string().contains("max_frame_byte"), "{e}");
        let e = serde_json::from_value::<Timers>(json!({"keepalives": "1s"})).unwrap_err();
        assert!(e.to_string().contains("keepalives"), "{e}");
        let e =
            serde_json::from_value::<Retention>(json!({"max_age": "5 fortnights"})).unwrap_err();
        assert!(e.to_string().contains("unknown unit"), "{e}");
        let e = serde_json::from_value::<SlowConsumer>(
            json!({"rules": [{"pattern": "a..b", "policy": "disconnect"}]}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"a..b\" is invalid"), "{e}");

        let mut config = Config::default();
        config.limits.max_frame_bytes = 0;
        assert_eq!(
            config.validate().unwrap_err().0,
            "limits.max_frame_bytes must be at least 1"
        );
        config.limits.max_frame_bytes = 1;
        config.limits.names.max_len = 3;
        config.slow_consumer.rules = vec![(
            Pattern::parse("long.>", NameLimits::default()).unwrap(),
            SlowConsumerPolicy::Disconnect,
        )];
        assert!(
            config
                .validate()
                .unwrap_err()
                .0
                .contains("slow_consumer.rules")
        );
    }
}
