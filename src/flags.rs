//! The `tidings serve` flags that set configuration keys, each defined once in [`flags`]: its
//! name, help and configuration key next to the typed field it sets. The clap arguments, the
//! `[default: ..]` in the help (read from [`ServerConfig::default`]) and the setting of the field
//! all come from that one entry, so adding a flag is adding an entry. A test checks that each
//! flag does exactly what `--set KEY=VALUE` with its key does.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{TypedValueParser as _, ValueParser};
use clap::{Arg, ArgAction, ArgMatches};
use tidings_adapter::ServerConfig;
use tidings_adapter::auth::Anonymous;
use tidings_adapter::store::{Durability, StoreKind};
use tidings_core::units::{
    format_duration, format_opt_duration, parse_duration, parse_opt_duration,
};
use tidings_core::{NameLimits, Pattern, SlowConsumerPolicy};

/// Sets what a flag parsed into the configuration (when the flag was given).
type Apply = Box<dyn Fn(&ArgMatches, &mut ServerConfig)>;

/// One flag: its clap definition and how it sets the configuration.
pub(crate) struct Flag {
    arg: Arg,
    /// The configuration key it sets (for the test against `--set`).
    #[cfg(test)]
    key: &'static str,
    apply: Apply,
    /// A valid value on the command line, and the same as TOML (for the test).
    #[cfg(test)]
    sample: (&'static str, String),
}

/// The type of a flag's value: how it is parsed and shown.
pub(crate) trait FlagValue: Clone + Send + Sync + 'static {
    /// Parses the command-line text.
    fn parse(s: &str) -> Result<Self, String>;
    /// Shows a value the way the flag takes it (for `[default: ..]`).
    fn show(&self) -> String;
    /// A valid value on the command line, and the same value as TOML (for the test).
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str);
}

impl FlagValue for usize {
    fn parse(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = ("7", "7");
}

impl FlagValue for bool {
    fn parse(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("{s:?} is not a boolean: use true or false"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = ("false", "false");
}

impl FlagValue for String {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(s.to_owned())
    }
    fn show(&self) -> String {
        self.clone()
    }
    // Also a valid --runtime.
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = ("async-std", "\"async-std\"");
}

/// A comma-separated list (`a.example,b.example`).
impl FlagValue for Vec<String> {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(s.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect())
    }
    fn show(&self) -> String {
        self.join(",")
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) =
        ("a.example,b.example", "[\"a.example\", \"b.example\"]");
}

impl FlagValue for PathBuf {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(Self::from(s))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = ("/etc/x", "\"/etc/x\"");
}

impl FlagValue for Duration {
    fn parse(s: &str) -> Result<Self, String> {
        parse_duration(s)
    }
    fn show(&self) -> String {
        format_duration(*self)
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = ("7s", "\"7s\"");
}

impl FlagValue for Option<Duration> {
    fn parse(s: &str) -> Result<Self, String> {
        parse_opt_duration(s)
    }
    fn show(&self) -> String {
        format_opt_duration(*self)
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = ("7s", "\"7s\"");
}

impl FlagValue for Durability {
    fn parse(s: &str) -> Result<Self, String> {
        toml::Value::String(s.to_owned())
            .try_into()
            .map_err(|_| format!("{s:?} is not a durability level: use os, strict or none"))
    }
    fn show(&self) -> String {
        match self {
            Self::Os => "os",
            Self::Strict => "strict",
            Self::None => "none",
        }
        .to_owned()
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = ("strict", "\"strict\"");
}

/// The policy's configuration name, as the core's serde definition spells it.
fn policy_name(policy: SlowConsumerPolicy) -> String {
    toml::Value::try_from(policy)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn parse_policy(s: &str) -> Result<SlowConsumerPolicy, String> {
    toml::Value::String(s.to_owned())
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())
}

impl FlagValue for SlowConsumerPolicy {
    fn parse(s: &str) -> Result<Self, String> {
        parse_policy(s)
    }
    fn show(&self) -> String {
        policy_name(*self)
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = ("disconnect", "\"disconnect\"");
}

/// A slow-consumer rule, `PATTERN=POLICY`.
type Rule = (Pattern, SlowConsumerPolicy);

impl FlagValue for Rule {
    fn parse(s: &str) -> Result<Self, String> {
        let (pattern, policy) = s.rsplit_once('=').ok_or_else(|| {
            format!("expected PATTERN=POLICY, e.g. 'prices.>=disconnect', not {s:?}")
        })?;
        // Length and depth are checked against the configured limits with the rest.
        let unbounded = NameLimits {
            max_len: usize::MAX,
            max_segments: usize::MAX,
        };
        let pattern = Pattern::parse(pattern, unbounded).map_err(|e| e.message)?;
        Ok((pattern, parse_policy(policy)?))
    }
    fn show(&self) -> String {
        format!("{}={}", self.0, policy_name(self.1))
    }
    #[cfg(test)]
    const SAMPLE: (&'static str, &'static str) = (
        "a.>=disconnect",
        "{ pattern = \"a.>\", policy = \"disconnect\" }",
    );
}

impl Flag {
    /// The clap argument; its help ends with the key it sets, so `--help` also documents the
    /// configuration file.
    fn arg<T: FlagValue>(
        name: &'static str,
        value_name: &'static str,
        help: &str,
        key: &str,
    ) -> Arg {
        Arg::new(name)
            .long(name)
            .value_name(value_name)
            .value_parser(ValueParser::new(T::parse))
            .help(format!("{help} [key: {key}]"))
    }

    /// A flag whose value replaces the field `field` points at (the key `key`).
    fn field<T: FlagValue>(
        name: &'static str,
        value_name: &'static str,
        help: &str,
        key: &'static str,
        field: fn(&mut ServerConfig) -> &mut T,
    ) -> Self {
        let default = field(&mut ServerConfig::default()).show();
        Self {
            arg: Self::arg::<T>(
                name,
                value_name,
                &format!("{help} [default: {default}]"),
                key,
            ),
            #[cfg(test)]
            key,
            apply: Box::new(move |m, config| {
                if let Some(value) = m.get_one::<T>(name) {
                    *field(config) = value.clone();
                }
            }),
            #[cfg(test)]
            sample: (T::SAMPLE.0, T::SAMPLE.1.to_owned()),
        }
    }

    /// A repeatable flag whose values, when given, replace the list `field` points at.
    fn list<T: FlagValue>(
        name: &'static str,
        value_name: &'static str,
        help: &str,
        key: &'static str,
        field: fn(&mut ServerConfig) -> &mut Vec<T>,
    ) -> Self {
        let defaults: Vec<String> = field(&mut ServerConfig::default())
            .iter()
            .map(T::show)
            .collect();
        let help = if defaults.is_empty() {
            format!("{help}; repeatable")
        } else {
            format!("{help}; repeatable [default: {}]", defaults.join(" "))
        };
        Self {
            arg: Self::arg::<T>(name, value_name, &help, key).action(ArgAction::Append),
            #[cfg(test)]
            key,
            apply: Box::new(move |m, config| {
                if let Some(values) = m.get_many::<T>(name) {
                    *field(config) = values.cloned().collect();
                }
            }),
            #[cfg(test)]
            sample: (T::SAMPLE.0, format!("[{}]", T::SAMPLE.1)),
        }
    }

    /// A flag without a value that sets its key to `toml` (the value the test compares with).
    fn switch(
        name: &'static str,
        help: &str,
        key: &'static str,
        toml: &'static str,
        set: fn(&mut ServerConfig),
    ) -> Self {
        #[cfg(not(test))]
        let _ = toml;
        Self {
            arg: Arg::new(name)
                .long(name)
                .action(ArgAction::SetTrue)
                .help(format!("{help} [key: {key}]")),
            #[cfg(test)]
            key,
            apply: Box::new(move |m, config| {
                if m.get_flag(name) {
                    set(config);
                }
            }),
            #[cfg(test)]
            sample: ("", toml.to_owned()),
        }
    }

    /// A flag that sets its key with `set` (for keys that are not a plain field).
    fn set<T: FlagValue>(
        name: &'static str,
        value_name: &'static str,
        help: &str,
        key: &'static str,
        set: fn(&mut ServerConfig, T),
    ) -> Self {
        Self {
            arg: Self::arg::<T>(name, value_name, help, key),
            #[cfg(test)]
            key,
            apply: Box::new(move |m, config| {
                if let Some(value) = m.get_one::<T>(name) {
                    set(config, value.clone());
                }
            }),
            #[cfg(test)]
            sample: (T::SAMPLE.0, T::SAMPLE.1.to_owned()),
        }
    }

    fn heading(mut self, heading: &'static str) -> Self {
        self.arg = self.arg.help_heading(heading);
        self
    }

    /// Restricts the values of a flag of type `T` (listed in the help and completions).
    fn values<T: FlagValue>(mut self, values: &'static [&'static str]) -> Self {
        let parser = clap::builder::PossibleValuesParser::new(values.iter().copied())
            .try_map(|s: String| T::parse(&s));
        self.arg = self.arg.value_parser(parser);
        self
    }
}

/// Puts `heading` on every flag of `flags`.
fn group(heading: &'static str, flags: Vec<Flag>) -> impl Iterator<Item = Flag> {
    flags.into_iter().map(move |f| f.heading(heading))
}

/// Every flag that sets a configuration key: the one definition of each.
pub(crate) fn flags() -> Vec<Flag> {
    const AUTH: &str = "Authentication (docs/AUTH.md)";
    let mut all = Vec::new();
    all.extend(group(
        "Server",
        vec![
            Flag::field(
                "listen",
                "ADDR",
                "Address to listen on; port 0 picks a free port",
                "listen",
                |c| &mut c.listen,
            ),
            Flag::field("runtime", "RUNTIME", "The async runtime", "runtime", |c| {
                &mut c.runtime
            })
            .values::<String>(&["tokio", "async-std"]),
            Flag::set(
                "tls-cert",
                "FILE",
                "Serve HTTPS with this certificate chain (PEM; with --tls-key); reloaded when \
                 the file changes or on SIGHUP (docs/TLS.md)",
                "tls.cert",
                |c, file: PathBuf| c.tls.cert = Some(file),
            ),
            Flag::set(
                "tls-key",
                "FILE",
                "The private key of --tls-cert (PEM)",
                "tls.key",
                |c, file: PathBuf| c.tls.key = Some(file),
            ),
            Flag::set(
                "redirect-http",
                "ADDR",
                "Also listen for plain HTTP on ADDR (e.g. 0.0.0.0:80) and redirect every \
                 request to https:// (with --tls-cert or --acme-domain)",
                "tls.redirect_http",
                |c, addr: String| c.tls.redirect_http = Some(addr),
            ),
            Flag::field(
                "acme-domain",
                "DOMAINS",
                "Serve HTTPS with a certificate for these domains (comma-separated) obtained \
                 and renewed automatically from an ACME certificate authority (Let's Encrypt \
                 by default; the server must be reachable on port 443 of each; docs/TLS.md)",
                "tls.acme_domains",
                |c| &mut c.tls.acme_domains,
            ),
            Flag::field(
                "acme-directory",
                "URL",
                "The ACME directory of the certificate authority",
                "tls.acme_directory",
                |c| &mut c.tls.acme_directory,
            ),
            Flag::set(
                "acme-email",
                "EMAIL",
                "A contact email for the ACME account (expiry notices)",
                "tls.acme_email",
                |c, email: String| c.tls.acme_email = Some(email),
            ),
            Flag::set(
                "metrics-token-file",
                "FILE",
                "Require `Authorization: Bearer <token>` on GET /metrics, with the token in \
                 this file",
                "http.metrics_token_file",
                |c, file: PathBuf| c.http.metrics_token_file = Some(file),
            ),
        ],
    ));
    all.extend(group(
        "Cluster (docs/CLUSTER.md)",
        vec![
            Flag::set(
                "nats",
                "URL",
                "Run as a node of a cluster: events are stored in a NATS JetStream stream \
                 (created if missing) shared by every node, so a client may resume on any node \
                 with the cursor another one gave (comma-separated servers; --data-dir and \
                 --memory do not apply)",
                "cluster.nats",
                |c, url: String| c.cluster.nats = Some(url),
            ),
            Flag::set(
                "node",
                "NAME",
                "This node's name in NATS and in logs [default: tidings-<pid>]",
                "cluster.node",
                |c, name: String| c.cluster.node = Some(name),
            ),
        ],
    ));
    all.extend(group(
        "Storage (docs/STORAGE.md)",
        vec![
            Flag::field(
                "data-dir",
                "DIR",
                "Where events are stored (created if missing; one server per directory)",
                "store.dir",
                |c| &mut c.store.dir,
            ),
            Flag::field(
                "durability",
                "LEVEL",
                "When events are forced to the disk: os (written to the OS before delivery; \
                 synced every store.fsync_interval), strict (synced before delivery and \
                 acknowledgement), none",
                "store.durability",
                |c| &mut c.store.durability,
            )
            .values::<Durability>(&["os", "strict", "none"]),
            Flag::switch(
                "memory",
                "Keep events only in memory: nothing is written, and a restart starts a new \
                 epoch (clients resuming get a gap notice) [default: in files under --data-dir]",
                "store.kind",
                "\"memory\"",
                |c| c.store.kind = StoreKind::Memory,
            ),
            Flag::switch(
                "skip-corrupt",
                "Start even if a sealed segment is corrupt: skip it (renamed *.log.corrupt; \
                 clients resuming into it get a gap notice) instead of refusing to start",
                "store.skip_corrupt",
                "true",
                |c| c.store.skip_corrupt = true,
            ),
        ],
    ));
    all.extend(group(
        "Limits",
        vec![
            Flag::field(
                "max-connections",
                "N",
                "Connections open at once, of any kind (requests, streams, WebSockets); more \
                 get 503 limit_reached",
                "limits.max_connections",
                |c| &mut c.limits.max_connections,
            ),
            Flag::field(
                "max-frame-bytes",
                "BYTES",
                "Largest client frame, WebSocket message and publish body, in bytes",
                "limits.max_frame_bytes",
                |c| &mut c.limits.max_frame_bytes,
            ),
            Flag::field(
                "max-subscriptions",
                "N",
                "Subscriptions (patterns) per connection",
                "limits.max_subscriptions",
                |c| &mut c.limits.max_subscriptions,
            ),
            Flag::field(
                "max-queued-bytes",
                "BYTES",
                "Bytes queued for a connection before the slow-consumer policy applies",
                "limits.max_queued_bytes",
                |c| &mut c.limits.max_queued_bytes,
            ),
            Flag::field(
                "max-topic-len",
                "BYTES",
                "Longest topic or pattern, in bytes",
                "limits.max_topic_len",
                |c| &mut c.limits.names.max_len,
            ),
            Flag::field(
                "max-pending-requests",
                "N",
                "Client requests awaiting the application, per connection",
                "limits.max_pending_requests",
                |c| &mut c.limits.max_pending_requests,
            ),
        ],
    ));
    all.extend(group(
        "Retention",
        vec![
            Flag::field(
                "retention-events",
                "N",
                "Events kept for resuming; 0 disables replay",
                "retention.max_events",
                |c| &mut c.retention.max_events,
            ),
            Flag::field(
                "retention-bytes",
                "BYTES",
                "Payload and topic bytes kept for resuming",
                "retention.max_bytes",
                |c| &mut c.retention.max_bytes,
            ),
            Flag::field(
                "retention-age",
                "DURATION",
                "Age after which events are no longer kept",
                "retention.max_age",
                |c| &mut c.retention.max_age,
            ),
        ],
    ));
    all.extend(group(
        "Timers",
        vec![
            Flag::field(
                "keepalive",
                "DURATION",
                "Ping connections idle this long, or \"off\"",
                "timers.keepalive",
                |c| &mut c.timers.keepalive,
            ),
            Flag::field(
                "idle-timeout",
                "DURATION",
                "Close WebSocket connections silent this long, or \"off\"",
                "timers.idle_timeout",
                |c| &mut c.timers.idle_timeout,
            ),
            Flag::field(
                "request-timeout",
                "DURATION",
                "How long a client request waits for the application",
                "timers.request_timeout",
                |c| &mut c.timers.request_timeout,
            ),
            Flag::field(
                "ack-timeout",
                "DURATION",
                "Default deadline of a server request to a client",
                "timers.ack_timeout",
                |c| &mut c.timers.ack_timeout,
            ),
            Flag::field(
                "sse-retry",
                "DURATION",
                "The reconnection delay sent to SSE clients (`retry:`), or \"off\"",
                "sse.retry",
                |c| &mut c.sse.retry,
            ),
            Flag::field(
                "shutdown-grace",
                "DURATION",
                "How long a graceful shutdown waits for connections to close",
                "timers.shutdown_grace",
                |c| &mut c.timers.shutdown_grace,
            ),
        ],
    ));
    all.extend(group("Slow consumers", vec![
        Flag::field("slow-consumer", "POLICY", "What happens to a connection that reads too slowly: drop_and_gap (stop sending, catch it up from history later) or disconnect (close it; the client resumes)", "slow_consumer.default", |c| &mut c.slow_consumer.default)
            .values::<SlowConsumerPolicy>(&["drop_and_gap", "disconnect"]),
        Flag::list("slow-consumer-rule", "PATTERN=POLICY", "A per-topic policy, e.g. --slow-consumer-rule 'prices.>=disconnect'; the first matching rule wins", "slow_consumer.rules", |c| &mut c.slow_consumer.rules),
    ]));
    all.extend(group("Browsers", vec![
        Flag::list("cors-origin", "ORIGIN", "An origin allowed to use /sse and /publish from a browser page (CORS) besides the server's own; \"*\" allows any (none listed: the server's own origin only)", "http.cors_origins", |c| &mut c.http.cors_origins),
        Flag::list("ws-origin", "ORIGIN", "An origin allowed to open /ws and /ws/bus from a browser page besides the server's own; \"*\" allows any (none listed: the server's own origin only)", "http.ws_origins", |c| &mut c.http.ws_origins),
    ]));
    all.extend(group(AUTH, vec![
        Flag::set("anonymous", "BOOL", "Whether requests without a token are allowed (with every permission) [default: true]", "auth.anonymous", |c, allowed: bool| {
            c.auth.anonymous = if allowed { Anonymous::default() } else { Anonymous::Refused };
        }),
        Flag::set("jwt-secret-file", "FILE", "Verify HS256 tokens with the secret in this file", "auth.jwt.secret_file", |c, file: PathBuf| {
            c.auth.jwt.get_or_insert_with(Default::default).secret_file = Some(file);
        }),
        Flag::set("jwt-public-key-file", "FILE", "Verify RS256/ES256 tokens with the PEM public key in this file", "auth.jwt.public_key_file", |c, file: PathBuf| {
            c.auth.jwt.get_or_insert_with(Default::default).public_key_file = Some(file);
        }),
        Flag::set("jwt-issuer", "ISS", "Tokens must have this issuer (`iss`)", "auth.jwt.issuer", |c, iss: String| {
            c.auth.jwt.get_or_insert_with(Default::default).issuer = Some(iss);
        }),
        Flag::set("jwt-audience", "AUD", "Tokens must have this audience (`aud`)", "auth.jwt.audience", |c, aud: String| {
            c.auth.jwt.get_or_insert_with(Default::default).audience = Some(aud);
        }),
    ]));
    all
}

/// The configuration flags as parsed: `#[command(flatten)]` them into the `serve` arguments.
#[derive(Debug, Clone)]
pub(crate) struct ConfigFlags(ArgMatches);

impl ConfigFlags {
    /// Sets the keys of the flags given.
    pub(crate) fn apply(&self, config: &mut ServerConfig) {
        for flag in flags() {
            (flag.apply)(&self.0, config);
        }
    }
}

impl clap::FromArgMatches for ConfigFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(matches.clone()))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0 = matches.clone();
        Ok(())
    }
}

impl clap::Args for ConfigFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(flags().into_iter().map(|f| f.arg))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Each flag with its key and a sample value, on the command line and as TOML (for the test).
#[cfg(test)]
pub(crate) fn samples() -> Vec<(String, &'static str, &'static str, String)> {
    flags()
        .into_iter()
        .map(|f| (f.arg.get_id().to_string(), f.key, f.sample.0, f.sample.1))
        .collect()
}
