//! Server configuration: every core limit, retention bound, timer and slow-consumer rule, plus the
//! HTTP surface (CORS, WebSocket origins, I/O timeouts), authentication, the listen address and the
//! runtime. Read from TOML (`tidings.example.toml` at the repository root lists every key with its
//! default); every key is optional and defaults to the core's defaults.
//!
//! The core's sections ([`Limits`], [`Retention`], [`Timers`], [`SlowConsumer`]) are embedded as
//! they are: their keys, defaults and formats are defined once, in `tidings-core`. Durations are
//! strings with a unit (`"500ms"`, `"15s"`, `"5m"`, `"1h"`) or a number of milliseconds; timers
//! that can be disabled also accept `"off"` (see [`tidings_core::units`]). Sizes are numbers of
//! bytes. Unknown keys are refused, so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
pub use tidings_core::ConfigError;
pub use tidings_core::units::{parse_duration, parse_opt_duration};
use tidings_core::{Config, Limits, NameLimits, Retention, SlowConsumer, Timers, units};

use crate::auth::{AuthConfig, Secret};
use crate::cluster::ClusterConfig;
use crate::store::{StoreConfig, StoreKind};

/// Publishes waiting for the file log at most (`LogMode::External`): past it the disk is too
/// slow or failing, and publishes are refused with `unavailable` instead of piling up in memory.
const MAX_PENDING_APPENDS: usize = 65_536;

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
    pub limits: Limits,
    /// How much history is kept for resuming.
    pub retention: Retention,
    /// Where events are stored: in memory, or in segment files that survive restarts (see
    /// `docs/STORAGE.md`).
    pub store: StoreConfig,
    /// Keep-alive, idle, request, ack, reconnect, close and shutdown timers.
    pub timers: Timers,
    /// What happens to connections that do not read fast enough.
    pub slow_consumer: SlowConsumer,
    /// Server-Sent Events settings.
    pub sse: SseConfig,
    /// The HTTP surface: CORS, WebSocket origins, I/O timeouts.
    pub http: HttpConfig,
    /// HTTPS: the certificate and key (see `docs/TLS.md`).
    pub tls: TlsConfig,
    /// Authentication (see `docs/AUTH.md`).
    pub auth: AuthConfig,
    /// The ksbus-compatible endpoint `/ws/bus` (see `docs/COMPAT.md`).
    pub ksbus: KsbusConfig,
    /// The etp-compatible endpoint `/etp` (see `docs/COMPAT.md`).
    pub etp: EtpConfig,
    /// Cluster mode: several nodes sharing one NATS JetStream stream as their log (see
    /// `docs/CLUSTER.md`).
    pub cluster: ClusterConfig,
}

/// `[tls]`: serve HTTPS (and HTTP/2 by ALPN) instead of plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM (the server's certificate first, then intermediates). With
    /// `key`, the listener speaks TLS only.
    pub cert: Option<PathBuf>,
    /// The private key of the certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates, PEM: when set, every client must present a certificate signed by one of
    /// them (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Automatic certificates: the domain names to get a certificate for from an ACME
    /// certificate authority (Let's Encrypt by default), instead of `cert` and `key`. The
    /// server must be reachable on port 443 of these names (the TLS-ALPN-01 challenge is
    /// answered on its own TLS listener); the certificate is kept under the data directory
    /// (`acme/`) and renewed a third of its lifetime before it expires.
    pub acme_domains: Vec<String>,
    /// The ACME directory URL.
    pub acme_directory: String,
    /// A contact email for the ACME account (expiry notices).
    pub acme_email: Option<String>,
    /// An extra CA certificate (PEM) to trust for the ACME directory's HTTPS, besides the
    /// public roots: for a test or private ACME server.
    pub acme_ca: Option<PathBuf>,
    /// A plain HTTP listener on this address (e.g. `"0.0.0.0:80"`) answering every request
    /// with a permanent redirect (`308`) to the same URL over `https://`.
    pub redirect_http: Option<String>,
}

/// Let's Encrypt's production ACME directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            acme_domains: Vec::new(),
            acme_directory: LETS_ENCRYPT.to_owned(),
            acme_email: None,
            acme_ca: None,
            redirect_http: None,
        }
    }
}

/// Why TLS could not be set up (at start, or when reloading: the old certificate stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Only one of `tls.cert` and `tls.key` is set.
    #[error("tls: set both cert and key (PEM files), or neither for plain HTTP")]
    Incomplete,
    /// Both certificate files and ACME domains are set.
    #[error(
        "tls: set either cert and key (certificate files) or acme_domains (automatic certificates), not both"
    )]
    FilesAndAcme,
    /// A file could not be read or holds no usable PEM item.
    #[error("tls: {path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// The key is not the certificate's.
    #[error(
        "tls: the key in {key} does not belong to the certificate in {cert} (their public keys differ)"
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the settings.
    #[error("tls: {0}")]
    Config(String),
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
    /// Origins allowed to open `/etp` from a browser, as `http.ws_origins` for `/ws` (which
    /// does not apply to `/etp`). Empty: only the same origin (the `Origin` host equals the
    /// `Host` header), as etp's WebSocket library does; listed origins are allowed besides it;
    /// `"*"` allows any. Requests without `Origin` are always allowed.
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
            limits: Limits::default(),
            retention: Retention::default(),
            store: StoreConfig::default(),
            timers: Timers::default(),
            slow_consumer: SlowConsumer::default(),
            sse: SseConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            ksbus: KsbusConfig::default(),
            etp: EtpConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Server-Sent Events settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// The reconnection delay sent as `retry:` when a stream opens (`"off"`: none).
    #[serde(with = "units::opt_duration")]
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
    /// Origins allowed to use `/sse`, `/publish` and `/subscriptions` from a browser page
    /// (CORS). Empty (the default): only the server's own origin (the `Origin` host equals the
    /// `Host` header, as for `/etp`); listed origins are allowed besides it; `"*"` allows any.
    /// Requests without `Origin` (non-browser clients) are always allowed.
    pub cors_origins: Vec<String>,
    /// Origins allowed to open `/ws` and `/ws/bus` from a browser page, with the same meaning:
    /// empty (the default) is the server's own origin only, `"*"` any.
    pub ws_origins: Vec<String>,
    /// Connections open at once from one peer address (0: no limit besides
    /// `limits.max_connections`), counted from `accept`: requests in progress, idle keep-alive
    /// connections, streams and WebSockets alike; more get `503 limit_reached`. On by default
    /// ([`DEFAULT_MAX_CONNECTIONS_PER_IP`]). Behind a reverse proxy on another host every client
    /// has the proxy's address: raise it there, or set 0 (a proxy on the same host connects
    /// from loopback, exempt by `per_ip_exempt_loopback`).
    pub max_connections_per_ip: usize,
    /// Whether loopback peers (`127.0.0.0/8`, `::1`, and IPv4-mapped loopback) are exempt from
    /// `max_connections_per_ip`: a reverse proxy on the same host, local tools, tests and load
    /// generators. They still count toward `limits.max_connections`.
    pub per_ip_exempt_loopback: bool,
    /// A client must send its whole request head (and a publish body) within this time; an
    /// idle keep-alive connection is closed after it.
    #[serde(with = "units::duration")]
    pub read_timeout: Duration,
    /// A connection whose socket accepts nothing for this long is dropped.
    #[serde(with = "units::duration")]
    pub write_timeout: Duration,
    /// Linux `TCP_USER_TIMEOUT`: a connection whose peer acknowledges nothing of what was sent
    /// (keep-alives included) for this long is dropped by the kernel, so half-open connections
    /// (a vanished peer) are found within it (`"off"`: the system default, many minutes).
    #[serde(with = "units::opt_duration")]
    pub tcp_user_timeout: Option<Duration>,
    /// Frames a connection's outgoing queue holds before the connection counts as dead (a
    /// backstop: the core's `max_queued_bytes` credit normally applies first). 0: derived from
    /// `max_queued_bytes`.
    pub outbox_frames: usize,
    /// The WebSocket read buffer per connection, in bytes: allocated for each connection, and
    /// the most read from its socket at once (larger messages take several reads). 2 KiB keeps
    /// an idle WebSocket connection under 6 KiB of server memory.
    pub ws_read_buffer: usize,
    /// When set, `GET /metrics` requires `Authorization: Bearer <metrics_token>` (else `401`).
    pub metrics_token: Option<Secret>,
    /// A file holding the metrics token (its content, less one trailing newline), instead of
    /// `metrics_token`.
    pub metrics_token_file: Option<PathBuf>,
}

/// The default of `http.max_connections_per_ip`: 1% of the default `limits.max_connections`
/// (100,000), so that no one address can take more than a hundredth of the server, while a
/// busy NAT (an office, a campus, a mobile carrier's shared address: hundreds of users, each
/// with a few tabs holding a WebSocket or up to six HTTP/1.1 connections) stays well within it.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            ws_origins: Vec::new(),
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            per_ip_exempt_loopback: true,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            tcp_user_timeout: Some(Duration::from_secs(60)),
            outbox_frames: 0,
            ws_read_buffer: 2048,
            metrics_token: None,
            metrics_token_file: None,
        }
    }
}

const BOTH_METRICS_TOKENS: &str = "http has both metrics_token and metrics_token_file: set one";

impl HttpConfig {
    /// The token `GET /metrics` requires, if any: `metrics_token`, or the content of
    /// `metrics_token_file` (less one trailing newline), read now.
    ///
    /// # Errors
    /// A [`ConfigError`] when both are set, the token is empty, or the file cannot be read.
    pub fn metrics_token(&self) -> Result<Option<Secret>, ConfigError> {
        let token = match (&self.metrics_token, &self.metrics_token_file) {
            (Some(_), Some(_)) => return Err(ConfigError(BOTH_METRICS_TOKENS.to_owned())),
            (Some(token), None) => token.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("http.metrics_token_file {}: {e}", path.display()))
                })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Secret::new(text.strip_suffix('\r').unwrap_or(text))
            }
            (None, None) => return Ok(None),
        };
        ServerConfig::check_metrics_token(&token)?;
        Ok(Some(token))
    }

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

/// Keys that moved, with where they are now: refused with a message saying so, rather than as
/// merely unknown.
const MOVED_KEYS: [(&str, &str, &str); 2] = [
    ("http", "close_grace", "timers.close_grace"),
    ("http", "shutdown_grace", "timers.shutdown_grace"),
];

impl ServerConfig {
    fn check_metrics_token(token: &Secret) -> Result<(), ConfigError> {
        if token.expose().is_empty() {
            return Err(ConfigError(
                "http.metrics_token is empty: set a token, or leave the key out to serve \
                 /metrics without one"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and what is wrong.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        Self::from_table(table)
    }

    /// Builds from a TOML table (e.g. a file merged with command-line overrides).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and what is wrong.
    pub fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let config = Self::from_table_unchecked(table)?;
        config.validate()?;
        Ok(config)
    }

    /// Builds from a TOML table without [`ServerConfig::validate`], for callers that change the
    /// result further (command-line flags) and validate it then.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and what is wrong.
    pub fn from_table_unchecked(table: toml::Table) -> Result<Self, ConfigError> {
        for (section, key, now) in MOVED_KEYS {
            if table
                .get(section)
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key(key))
            {
                return Err(ConfigError(format!(
                    "{section}.{key} has moved: set {now} instead"
                )));
            }
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(e.to_string()))
    }

    /// Checks what serde cannot: non-zero limits, slow-consumer patterns within the name
    /// limits, SSE headers.
    ///
    /// # Errors
    /// A [`ConfigError`] saying what is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        self.slow_consumer.validate(self.limits.names)?;
        self.store.validate().map_err(ConfigError)?;
        self.cluster.validate().map_err(ConfigError)?;
        if self.http.metrics_token.is_some() && self.http.metrics_token_file.is_some() {
            return Err(ConfigError(BOTH_METRICS_TOKENS.to_owned()));
        }
        if let Some(token) = &self.http.metrics_token {
            Self::check_metrics_token(token)?;
        }
        self.sse.validate(self.limits.names)
    }

    /// The core configuration, with a new epoch: the current time in milliseconds, so cursors
    /// from an earlier run are recognised (and answered with a gap notice).
    ///
    /// # Errors
    /// A [`ConfigError`] if the configuration does not pass [`ServerConfig::validate`].
    pub fn into_core(&self) -> Result<Config, ConfigError> {
        self.validate()?;
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .max(1);
        Ok(Config {
            epoch,
            limits: self.limits.clone(),
            retention: self.retention.clone(),
            slow_consumer: self.slow_consumer.clone(),
            timers: self.timers.clone(),
            sse_retry: self.sse.retry,
            log: match self.store.kind {
                _ if self.cluster.nats.is_some() => tidings_core::log::LogMode::External {
                    hot_events: self.store.hot_events,
                    hot_bytes: self.store.hot_bytes,
                    max_pending_appends: MAX_PENDING_APPENDS,
                    shared: true,
                },
                StoreKind::Memory => tidings_core::log::LogMode::Memory,
                StoreKind::File => tidings_core::log::LogMode::External {
                    hot_events: self.store.hot_events,
                    hot_bytes: self.store.hot_bytes,
                    max_pending_appends: MAX_PENDING_APPENDS,
                    shared: false,
                },
            },
            lifecycle_events: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tidings_core::SlowConsumerPolicy;

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

    /// Every leaf key of a TOML table, as a dotted path with its value.
    fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            match value {
                // `headers` and `anonymous` are values that happen to be tables.
                toml::Value::Table(t) if !matches!(key.as_str(), "headers" | "anonymous") => {
                    leaves(t, &format!("{path}."), out);
                }
                _ => out.push((path, value.clone())),
            }
        }
    }

    fn one_key(path: &str, value: toml::Value) -> toml::Table {
        let mut keys: Vec<&str> = path.split('.').collect();
        let last = keys.pop().unwrap();
        let mut table = toml::Table::new();
        table.insert(last.to_owned(), value);
        for key in keys.into_iter().rev() {
            let mut outer = toml::Table::new();
            outer.insert(key.to_owned(), toml::Value::Table(table));
            table = outer;
        }
        table
    }

    const EXAMPLE: &str = include_str!("../../../tidings.example.toml");

    #[test]
    fn the_per_address_limit_is_on_by_default_at_a_hundredth_of_max_connections() {
        let config = ServerConfig::default();
        assert_eq!(
            config.http.max_connections_per_ip,
            config.limits.max_connections / 100
        );
        assert!(config.http.per_ip_exempt_loopback);
    }

    #[test]
    fn the_example_file_lists_the_defaults() {
        assert_eq!(
            ServerConfig::from_toml(EXAMPLE).unwrap(),
            ServerConfig::default()
        );
        // Key by key, so a failure names the key whose documented value is not the default.
        let example: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut keys = Vec::new();
        leaves(&example, "", &mut keys);
        assert!(keys.len() >= 40, "{}", keys.len());
        for (path, value) in keys {
            let parsed = ServerConfig::from_table(one_key(&path, value.clone()))
                .unwrap_or_else(|e| panic!("{path} = {value}: {e}"));
            assert_eq!(
                parsed,
                ServerConfig::default(),
                "{path} = {value} in tidings.example.toml is not the default"
            );
        }
    }

    #[test]
    fn the_example_file_lists_every_core_key() {
        let example: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let core = Config::default();
        for (section, defaults) in [
            ("limits", toml::Value::try_from(&core.limits).unwrap()),
            ("retention", toml::Value::try_from(&core.retention).unwrap()),
            ("timers", toml::Value::try_from(&core.timers).unwrap()),
            (
                "slow_consumer",
                toml::Value::try_from(&core.slow_consumer).unwrap(),
            ),
        ] {
            let listed = example[section].as_table().unwrap();
            // The values are checked by the test above; here, that none is missing.
            for (key, value) in defaults.as_table().unwrap() {
                assert!(
                    listed.contains_key(key),
                    "tidings.example.toml should list {section}.{key} = {value}"
                );
            }
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let e = ServerConfig::from_toml("[limits]\nmax_frame_byte = 1").unwrap_err();
        assert!(e.0.contains("max_frame_byte"), "{e}");
        let e = ServerConfig::from_toml("[timers]\nkeep_alive = \"1s\"").unwrap_err();
        assert!(e.0.contains("keep_alive"), "{e}");
        let e = ServerConfig::from_toml("lisen = \"x\"").unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        let e = ServerConfig::from_toml("[http]\nread_timeot = \"1s\"").unwrap_err();
        assert!(e.0.contains("read_timeot"), "{e}");
        let e = ServerConfig::from_toml("[retention]\nmax_age = \"5 fortnights\"").unwrap_err();
        assert!(e.0.contains("unknown unit"), "{e}");
        let e = ServerConfig::from_toml(
            "[slow_consumer]\nrules = [{ pattern = \"a..b\", policy = \"disconnect\" }]",
        )
        .unwrap_err();
        assert!(e.0.contains("slow_consumer.rules"), "{e}");
        let e = ServerConfig::from_toml(
            "[limits]\nmax_topic_len = 3\n[slow_consumer]\nrules = [{ pattern = \"long.>\", policy = \"disconnect\" }]",
        )
        .unwrap_err();
        assert!(e.0.contains("slow_consumer.rules"), "{e}");
        let e = ServerConfig::from_toml("[limits]\nmax_topic_segments = 0").unwrap_err();
        assert_eq!(e.0, "limits.max_topic_segments must be at least 1");
    }

    #[test]
    fn the_metrics_token_inline_or_from_a_file() {
        assert_eq!(ServerConfig::default().http.metrics_token().unwrap(), None);
        let inline = ServerConfig::from_toml("[http]\nmetrics_token = \"abc\"").unwrap();
        assert_eq!(
            inline.http.metrics_token().unwrap(),
            Some(Secret::new("abc"))
        );
        assert!(
            !format!("{inline:?}").contains("abc"),
            "not in Debug output"
        );
        let file = std::env::temp_dir().join(format!("tidings-metrics-{}", std::process::id()));
        std::fs::write(&file, "from-file\r\n").unwrap();
        let path = file.display().to_string();
        let from_file =
            ServerConfig::from_toml(&format!("[http]\nmetrics_token_file = {path:?}")).unwrap();
        assert_eq!(
            from_file.http.metrics_token().unwrap(),
            Some(Secret::new("from-file"))
        );
        std::fs::remove_file(&file).unwrap();
        let e = from_file.http.metrics_token().unwrap_err();
        assert!(e.0.contains("metrics_token_file"), "{e}");
        let e = ServerConfig::from_toml(&format!(
            "[http]\nmetrics_token = \"abc\"\nmetrics_token_file = {path:?}"
        ))
        .unwrap_err();
        assert!(e.0.contains("both"), "{e}");
        let e = ServerConfig::from_toml("[http]\nmetrics_token = \"\"").unwrap_err();
        assert!(e.0.contains("empty"), "{e}");
    }

    #[test]
    fn the_grace_timers_moved_to_timers() {
        let config =
            ServerConfig::from_toml("[timers]\nclose_grace = \"1m\"\nshutdown_grace = 250")
                .unwrap();
        assert_eq!(config.timers.close_grace, Duration::from_secs(60));
        assert_eq!(config.timers.shutdown_grace, Duration::from_millis(250));
        for key in ["close_grace", "shutdown_grace"] {
            let e = ServerConfig::from_toml(&format!("[http]\n{key} = \"5s\"")).unwrap_err();
            assert_eq!(
                e.0,
                format!("http.{key} has moved: set timers.{key} instead")
            );
        }
    }
}
