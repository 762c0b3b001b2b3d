//! Server configuration: every core limit, retention bound, timer and slow-consumer rule, plus the
//! HTTP surface (CORS, WebSocket origins, I/O timeouts), authentication, the listen address and the
//! runtime. Read from TOML (`tidings.example.toml` at the repository root lists every key with its
//! default); every key is optional and defaults to the core's defaults.
//!
//! Durations are strings with a unit (`"500ms"`, `"15s"`, `"5m"`, `"1h"`) or a number of
//! milliseconds; timers that can be disabled also accept `"off"`. Sizes are numbers of bytes.
//! Unknown keys are refused, so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer};
use tidings_core::{
    Config, Limits, NameLimits, Pattern, Retention, SlowConsumer, SlowConsumerPolicy, Timers,
};

use crate::auth::AuthConfig;

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9313";

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// Which async runtime runs the server: `tokio` or `async-std`.
    pub runtime: String,
    /// Limits on what peers can make the server hold.
    pub limits: LimitsConfig,
    /// How much history is kept for resuming.
    pub retention: RetentionConfig,
    /// Keep-alive, idle, request and ack timers.
    pub timers: TimersConfig,
    /// What happens to connections that do not read fast enough.
    pub slow_consumer: SlowConsumerConfig,
    /// Server-Sent Events settings.
    pub sse: SseConfig,
    /// The HTTP surface: CORS, WebSocket origins, I/O timeouts.
    pub http: HttpConfig,
    /// Authentication (see `docs/AUTH.md`).
    pub auth: AuthConfig,
    /// The ksbus-compatible endpoint `/ws/bus` (see `docs/COMPAT.md`).
    pub ksbus: KsbusConfig,
    /// The etp-compatible endpoint `/etp` (see `docs/COMPAT.md`).
    pub etp: EtpConfig,
}

/// The ksbus-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KsbusConfig {
    /// The server's own ksbus id: `from` of its wait-recv acks and string publishes, and the
    /// `pub_id` target that reaches the application's `ksbus.id` handler.
    pub server_id: String,
}

impl Default for KsbusConfig {
    fn default() -> Self {
        Self {
            server_id: tidings_core::DEFAULT_SERVER_ID.to_owned(),
        }
    }
}

/// The etp-compatible endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtpConfig {
    /// The largest message read, in bytes (etp's default: 1 MiB); a larger one closes the
    /// connection with 1009 and the reason `read limited at <limit + 1> bytes`.
    pub read_limit: usize,
    /// Origins allowed to open `/etp` from a browser. Empty: only the same origin (the `Origin`
    /// host equals the `Host` header), as etp's WebSocket library does; `"*"` allows any.
    /// Requests without `Origin` are always allowed.
    pub origins: Vec<String>,
    /// Write events with empty data as `name||0||` (what the etp JS client can parse) instead
    /// of etp v3/v4's `name||0`.
    pub empty_data_separator: bool,
}

impl Default for EtpConfig {
    fn default() -> Self {
        Self {
            read_limit: 1 << 20,
            origins: Vec::new(),
            empty_data_separator: false,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            runtime: "tokio".to_owned(),
            limits: LimitsConfig::default(),
            retention: RetentionConfig::default(),
            timers: TimersConfig::default(),
            slow_consumer: SlowConsumerConfig::default(),
            sse: SseConfig::default(),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            ksbus: KsbusConfig::default(),
            etp: EtpConfig::default(),
        }
    }
}

/// [`tidings_core::Limits`] as configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)] // each field is the core limit of the same name
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub max_subscriptions: usize,
    pub max_topic_len: usize,
    pub max_topic_segments: usize,
    pub max_pending_requests: usize,
    pub max_pending_acks: usize,
    pub max_queued_bytes: usize,
    pub max_name_len: usize,
    pub max_rooms_per_conn: usize,
    pub max_tracked_topics: usize,
    pub max_parked_sessions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_connections: l.max_connections,
            max_frame_bytes: l.max_frame_bytes,
            max_subscriptions: l.max_subscriptions,
            max_topic_len: l.names.max_len,
            max_topic_segments: l.names.max_segments,
            max_pending_requests: l.max_pending_requests,
            max_pending_acks: l.max_pending_acks,
            max_queued_bytes: l.max_queued_bytes,
            max_name_len: l.max_name_len,
            max_rooms_per_conn: l.max_rooms_per_conn,
            max_tracked_topics: l.max_tracked_topics,
            max_parked_sessions: l.max_parked_sessions,
        }
    }
}

/// [`tidings_core::Retention`] as configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events kept (0 disables replay).
    pub max_events: usize,
    /// Payload and topic bytes kept.
    pub max_bytes: usize,
    /// Age after which an event is evicted.
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let r = Retention::default();
        Self {
            max_events: r.max_events,
            max_bytes: r.max_bytes,
            max_age: r.max_age,
        }
    }
}

/// [`tidings_core::Timers`] as configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimersConfig {
    /// Keep-alive interval (`"off"` disables keep-alives).
    #[serde(deserialize_with = "de_opt_duration")]
    pub keepalive: Option<Duration>,
    /// Close WebSocket connections silent for this long (`"off"` disables it).
    #[serde(deserialize_with = "de_opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// How long a client request waits for the application.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// Default deadline of a server request to a client.
    #[serde(deserialize_with = "de_duration")]
    pub ack_timeout: Duration,
    /// How long the session (subscriptions, delivery position, rooms) of a connection that
    /// claimed a client id outlives it, for a reconnecting client to take back (`"off"`: none).
    #[serde(deserialize_with = "de_opt_duration")]
    pub reconnect_window: Option<Duration>,
}

impl Default for TimersConfig {
    fn default() -> Self {
        let t = Timers::default();
        Self {
            keepalive: t.keepalive,
            idle_timeout: t.idle_timeout,
            request_timeout: t.request_timeout,
            ack_timeout: t.ack_timeout,
            reconnect_window: None,
        }
    }
}

/// A slow-consumer policy by name: `drop_and_gap` or `disconnect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// [`SlowConsumerPolicy::DropAndGap`].
    DropAndGap,
    /// [`SlowConsumerPolicy::Disconnect`].
    Disconnect,
}

impl PolicyName {
    fn policy(self) -> SlowConsumerPolicy {
        match self {
            Self::DropAndGap => SlowConsumerPolicy::DropAndGap,
            Self::Disconnect => SlowConsumerPolicy::Disconnect,
        }
    }
}

/// One per-pattern slow-consumer rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConsumerRule {
    /// Topics this rule applies to (wildcards allowed).
    pub pattern: String,
    /// The policy for them.
    pub policy: PolicyName,
}

/// [`tidings_core::SlowConsumer`] as configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlowConsumerConfig {
    /// The policy when no rule matches.
    pub default: PolicyName,
    /// Per-pattern rules; the first matching one wins.
    pub rules: Vec<SlowConsumerRule>,
}

impl Default for SlowConsumerConfig {
    fn default() -> Self {
        Self {
            default: match SlowConsumer::default().default {
                SlowConsumerPolicy::Disconnect => PolicyName::Disconnect,
                _ => PolicyName::DropAndGap,
            },
            rules: Vec::new(),
        }
    }
}

/// Server-Sent Events settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// The reconnection delay sent as `retry:` when a stream opens (`"off"`: none).
    #[serde(deserialize_with = "de_opt_duration")]
    pub retry: Option<Duration>,
    /// Extra response headers of every stream (gosse's additional headers), e.g.
    /// `{ "Server" = "gochan" }`. `Cache-Control` and `X-Accel-Buffering` replace the defaults;
    /// `Content-Type`, `Content-Length`, `Connection` and `Transfer-Encoding` cannot be set.
    pub headers: BTreeMap<String, String>,
    /// A topic every stream is subscribed to as well, when its grants allow it: publishing to it
    /// is gosse's `Broadcast` (every stream gets it). Off by default.
    pub broadcast_topic: Option<String>,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            retry: Config::default().sse_retry,
            headers: BTreeMap::new(),
            broadcast_topic: None,
        }
    }
}

/// Response headers an SSE stream always writes itself.
const SSE_FIXED_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "connection",
    "transfer-encoding",
];

impl SseConfig {
    /// The response headers of a stream: the defaults (`Content-Type: text/event-stream`,
    /// `Cache-Control: no-cache`, `X-Accel-Buffering: no`) with the configured ones.
    pub fn response_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = crate::http::SSE_HEADERS
            .iter()
            .filter(|(name, _)| {
                !self.headers.keys().any(|k| {
                    k.eq_ignore_ascii_case(name) && !name.eq_ignore_ascii_case("content-type")
                })
            })
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        headers.extend(self.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        headers
    }

    fn validate(&self, limits: NameLimits) -> Result<(), ConfigError> {
        for (name, value) in &self.headers {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token) {
                return Err(ConfigError(format!(
                    "sse.headers: {name:?} is not a valid header name"
                )));
            }
            if SSE_FIXED_HEADERS
                .iter()
                .any(|f| name.eq_ignore_ascii_case(f))
            {
                return Err(ConfigError(format!(
                    "sse.headers: {name} is written by the server itself and cannot be set"
                )));
            }
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return Err(ConfigError(format!(
                    "sse.headers: the value of {name} contains control characters"
                )));
            }
        }
        if let Some(topic) = &self.broadcast_topic {
            tidings_core::Topic::parse(topic, limits)
                .map_err(|e| ConfigError(format!("sse.broadcast_topic: {}", e.message)))?;
        }
        Ok(())
    }
}

/// The HTTP surface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins allowed to use `/sse` and `/publish` from a browser (CORS). `"*"` allows any.
    pub cors_origins: Vec<String>,
    /// Origins allowed to open `/ws`. Empty allows any; requests without `Origin` (non-browser
    /// clients) are always allowed.
    pub ws_origins: Vec<String>,
    /// A client must send its whole request head (and a publish body) within this time.
    #[serde(deserialize_with = "de_duration")]
    pub read_timeout: Duration,
    /// A connection whose socket accepts nothing for this long is dropped.
    #[serde(deserialize_with = "de_duration")]
    pub write_timeout: Duration,
    /// How long a connection the server decided to close may take to write what it has.
    #[serde(deserialize_with = "de_duration")]
    pub close_grace: Duration,
    /// Linux `TCP_USER_TIMEOUT`: a connection whose peer acknowledges nothing of what was sent
    /// (keep-alives included) for this long is dropped by the kernel, so half-open connections
    /// (a vanished peer) are found within it (`"off"`: the system default, many minutes).
    #[serde(deserialize_with = "de_opt_duration")]
    pub tcp_user_timeout: Option<Duration>,
    /// How long a graceful shutdown waits for connections to flush and close.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// Frames a connection's outgoing queue holds before the connection counts as dead (a
    /// backstop: the core's `max_queued_bytes` credit normally applies first). 0: derived from
    /// `max_queued_bytes`.
    pub outbox_frames: usize,
    /// The WebSocket read buffer per connection, in bytes: allocated for each connection, and
    /// the most read from its socket at once (larger messages take several reads). 2 KiB keeps
    /// an idle WebSocket connection under 6 KiB of server memory.
    pub ws_read_buffer: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: vec!["*".to_owned()],
            ws_origins: Vec::new(),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            close_grace: Duration::from_secs(5),
            tcp_user_timeout: Some(Duration::from_secs(60)),
            shutdown_grace: Duration::from_secs(5),
            outbox_frames: 0,
            ws_read_buffer: 2048,
        }
    }
}

impl HttpConfig {
    /// The bound of a connection's outgoing queue, in frames.
    pub fn outbox_frames(&self, max_queued_bytes: usize) -> usize {
        if self.outbox_frames > 0 {
            self.outbox_frames
        } else {
            // Frames are rarely smaller than 32 bytes; the core allows twice max_queued_bytes.
            (max_queued_bytes / 16).clamp(1024, 1 << 20)
        }
    }
}

/// A configuration value is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ServerConfig {
    /// Parses TOML text.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and what is wrong.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Builds from a TOML table (e.g. a file merged with command-line overrides).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and what is wrong.
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: patterns, non-zero limits.
    ///
    /// # Errors
    /// A [`ConfigError`] saying what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.slow_consumer_rules()?;
        self.sse.validate(self.name_limits())?;
        let l = &self.limits;
        for (name, value) in [
            ("limits.max_frame_bytes", l.max_frame_bytes),
            ("limits.max_topic_len", l.max_topic_len),
            ("limits.max_topic_segments", l.max_topic_segments),
            ("limits.max_name_len", l.max_name_len),
            ("limits.max_queued_bytes", l.max_queued_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }

    fn name_limits(&self) -> NameLimits {
        NameLimits {
            max_len: self.limits.max_topic_len,
            max_segments: self.limits.max_topic_segments,
        }
    }

    fn slow_consumer_rules(&self) -> Result<Vec<(Pattern, SlowConsumerPolicy)>, ConfigError> {
        self.slow_consumer
            .rules
            .iter()
            .map(|rule| {
                Pattern::parse(&rule.pattern, self.name_limits())
                    .map(|p| (p, rule.policy.policy()))
                    .map_err(|e| ConfigError(format!("slow_consumer.rules: {}", e.message)))
            })
            .collect()
    }

    /// The core configuration, with a new epoch: the current time in milliseconds, so cursors
    /// from an earlier run are recognised (and answered with a gap notice).
    ///
    /// # Errors
    /// A [`ConfigError`] if a slow-consumer rule's pattern is invalid.
    pub fn into_core(&self) -> Result<Config, ConfigError> {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .max(1);
        let l = &self.limits;
        Ok(Config {
            epoch,
            limits: Limits {
                max_connections: l.max_connections,
                max_frame_bytes: l.max_frame_bytes,
                max_subscriptions: l.max_subscriptions,
                names: self.name_limits(),
                max_pending_requests: l.max_pending_requests,
                max_pending_acks: l.max_pending_acks,
                max_queued_bytes: l.max_queued_bytes,
                max_name_len: l.max_name_len,
                max_rooms_per_conn: l.max_rooms_per_conn,
                max_tracked_topics: l.max_tracked_topics,
                max_parked_sessions: l.max_parked_sessions,
            },
            retention: Retention {
                max_events: self.retention.max_events,
                max_bytes: self.retention.max_bytes,
                max_age: self.retention.max_age,
            },
            slow_consumer: SlowConsumer {
                default: self.slow_consumer.default.policy(),
                rules: self.slow_consumer_rules()?,
            },
            timers: Timers {
                keepalive: self.timers.keepalive,
                idle_timeout: self.timers.idle_timeout,
                request_timeout: self.timers.request_timeout,
                ack_timeout: self.timers.ack_timeout,
            },
            sse_retry: self.sse.retry,
            reconnect_window: self.timers.reconnect_window,
            lifecycle_events: false,
            server_id: self.ksbus.server_id.clone(),
        })
    }
}

/// Parses a duration: `"250ms"`, `"15s"`, `"5m"`, `"2h"`, or a bare number of milliseconds.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{s:?} is not a duration (e.g. \"500ms\", \"15s\", \"5m\", \"1h\")")
    })?;
    let ms = match unit.trim() {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m or h"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Parses a duration that may be disabled with `"off"` (or `"none"`, `"0"`).
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_opt_duration(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "off" | "none" | "0" => Ok(None),
        other => parse_duration(other).map(Some),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Millis(u64),
    Text(String),
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match DurationRepr::deserialize(d)? {
        DurationRepr::Millis(ms) => Ok(Duration::from_millis(ms)),
        DurationRepr::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match DurationRepr::deserialize(d)? {
        DurationRepr::Millis(0) => Ok(None),
        DurationRepr::Millis(ms) => Ok(Some(Duration::from_millis(ms))),
        DurationRepr::Text(s) => parse_opt_duration(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_cores() {
        let mut core = ServerConfig::default().into_core().unwrap();
        assert!(core.epoch > 1);
        core.epoch = 1;
        assert_eq!(core, Config::default());
        assert_eq!(
            ServerConfig::from_toml("").unwrap(),
            ServerConfig::default()
        );
    }

    #[test]
    fn every_section_parses() {
        let config = ServerConfig::from_toml(
            r#"
            listen = "0.0.0.0:80"
            [limits]
            max_frame_bytes = 1000
            [retention]
            max_events = 3
            max_age = "5m"
            [timers]
            keepalive = "off"
            idle_timeout = 30000
            [slow_consumer]
            default = "disconnect"
            rules = [{ pattern = "prices.>", policy = "drop_and_gap" }]
            [sse]
            retry = "500ms"
            [http]
            cors_origins = ["https://a.example"]
            "#,
        )
        .unwrap();
        let core = config.into_core().unwrap();
        assert_eq!(core.limits.max_frame_bytes, 1000);
        assert_eq!(core.retention.max_events, 3);
        assert_eq!(core.retention.max_age, Duration::from_secs(300));
        assert_eq!(core.timers.keepalive, None);
        assert_eq!(core.timers.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(core.slow_consumer.default, SlowConsumerPolicy::Disconnect);
        assert_eq!(
            core.slow_consumer.policy_for(Some("prices.eur")),
            SlowConsumerPolicy::DropAndGap
        );
        assert_eq!(core.sse_retry, Some(Duration::from_millis(500)));
    }

    #[test]
    fn the_example_file_lists_the_defaults() {
        let text = include_str!("../../../tidings.example.toml");
        assert_eq!(
            ServerConfig::from_toml(text).unwrap(),
            ServerConfig::default()
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = ServerConfig::from_toml("[limits]\nmax_frame_byte = 1").unwrap_err();
        assert!(e.0.contains("max_frame_byte"), "{e}");
        let e = ServerConfig::from_toml("[retention]\nmax_age = \"5 fortnights\"").unwrap_err();
        assert!(e.0.contains("unknown unit"), "{e}");
        let e = ServerConfig::from_toml(
            "[slow_consumer]\nrules = [{ pattern = \"a..b\", policy = \"disconnect\" }]",
        )
        .unwrap_err();
        assert!(e.0.contains("slow_consumer.rules"), "{e}");
    }
}
