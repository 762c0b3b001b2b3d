//! The `tidings` server binary: `tidings serve [--listen ADDR] [--runtime tokio|async-std]
//! [--config FILE] [flags]`.
//!
//! Settings come from the defaults, then the TOML file (`--config`), then the flags (which win).
//! Every setting has a TOML key (see `tidings.example.toml`); the common ones also have a flag,
//! and `--set KEY=VALUE` sets any other. The first line on stdout is
//! `listening on http://ADDR` (tests and scripts read the bound port from it); logs go to stderr
//! (`RUST_LOG` filters them; default `info`). SIGINT or SIGTERM shut down gracefully: new
//! connections are refused, WebSocket clients get close 1001, SSE streams end after a
//! `tidings-error` event, requests in flight are answered, and the process exits with 0. If the
//! broker fails (a panic in its driver task, i.e. a bug), the process exits with 70 at once, so
//! that a supervisor restarts it.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod cli;
use tidings_adapter::ServerConfig;
use tidings_adapter::config::{parse_duration, parse_opt_duration};

/// A real-time event bus: topics, replay and acks over WebSocket and Server-Sent Events.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (in memory; no external service needed).
    ///
    /// Endpoints: GET /ws (WebSocket, native protocol), GET /sse?topic=T (Server-Sent Events;
    /// resume with Last-Event-ID or last_event_id), POST /publish?topic=T[&event=NAME],
    /// GET /healthz, GET /metrics. See docs/HTTP.md.
    ///
    /// Settings: defaults, then --config FILE (TOML; every key is in tidings.example.toml), then
    /// these flags. Durations are like 500ms, 15s, 5m, 1h; "off" disables a timer.
    Serve(Box<ServeArgs>),
    /// Subscribe and print events as JSON lines (resumes by itself after a disconnect).
    ///
    /// Each event is one line {"type":"event","topic":..,"cursor":..,"event":..,"data":..};
    /// a gap notice is a line {"type":"gap","from":..,"to":..,"reason":..,..}. Connection
    /// changes go to stderr.
    Sub(cli::SubArgs),
    /// Publish one event and print its cursor.
    Pub(cli::PubArgs),
}

#[derive(Debug, Args)]
#[allow(clippy::struct_field_names)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:9313]
    #[arg(long, value_name = "ADDR", help_heading = "Server")]
    listen: Option<String>,
    /// The async runtime [default: tokio]
    #[arg(long, value_name = "RUNTIME", value_parser = ["tokio", "async-std"], help_heading = "Server")]
    runtime: Option<String>,
    /// A TOML configuration file (flags override it)
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    config: Option<PathBuf>,
    /// Set any configuration key, e.g. --set http.read_timeout=5s or
    /// --set 'auth.anonymous={subscribe=["public.>"]}' (the value is TOML, or else a string);
    /// repeatable
    #[arg(long = "set", value_name = "KEY=VALUE", help_heading = "Server")]
    set: Vec<String>,

    /// Connections open at once; more are closed with `overloaded` [default: 100000]
    #[arg(long, value_name = "N", help_heading = "Limits")]
    max_connections: Option<u64>,
    /// Largest client frame, WebSocket message and publish body, in bytes [default: 1048576]
    #[arg(long, value_name = "BYTES", help_heading = "Limits")]
    max_frame_bytes: Option<u64>,
    /// Subscriptions (patterns) per connection [default: 256]
    #[arg(long, value_name = "N", help_heading = "Limits")]
    max_subscriptions: Option<u64>,
    /// Bytes queued for a connection before the slow-consumer policy applies [default: 4194304]
    #[arg(long, value_name = "BYTES", help_heading = "Limits")]
    max_queued_bytes: Option<u64>,
    /// Longest topic or pattern, in bytes [default: 256]
    #[arg(long, value_name = "BYTES", help_heading = "Limits")]
    max_topic_len: Option<u64>,
    /// Client requests awaiting the application, per connection [default: 64]
    #[arg(long, value_name = "N", help_heading = "Limits")]
    max_pending_requests: Option<u64>,

    /// Events kept for resuming; 0 disables replay [default: 10000]
    #[arg(long, value_name = "N", help_heading = "Retention")]
    retention_events: Option<u64>,
    /// Payload and topic bytes kept for resuming [default: 67108864]
    #[arg(long, value_name = "BYTES", help_heading = "Retention")]
    retention_bytes: Option<u64>,
    /// Age after which events are no longer kept [default: 300s]
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Retention")]
    retention_age: Option<String>,

    /// Ping connections idle this long, or "off" [default: 15s]
    #[arg(long, value_name = "DURATION", value_parser = opt_duration, help_heading = "Timers")]
    keepalive: Option<String>,
    /// Close WebSocket connections silent this long, or "off" [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = opt_duration, help_heading = "Timers")]
    idle_timeout: Option<String>,
    /// How long a client request waits for the application [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Timers")]
    request_timeout: Option<String>,
    /// Default deadline of a server request to a client [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Timers")]
    ack_timeout: Option<String>,
    /// The reconnection delay sent to SSE clients (`retry:`), or "off" [default: 2s]
    #[arg(long, value_name = "DURATION", value_parser = opt_duration, help_heading = "Timers")]
    sse_retry: Option<String>,
    /// How long a graceful shutdown waits for connections to close [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Timers")]
    shutdown_grace: Option<String>,

    /// What happens to a connection that reads too slowly: drop_and_gap (stop sending, catch it
    /// up from history later) or disconnect (close it; the client resumes) [default: drop_and_gap]
    #[arg(long, value_name = "POLICY", value_parser = ["drop_and_gap", "disconnect"], help_heading = "Slow consumers")]
    slow_consumer: Option<String>,
    /// A per-topic policy, e.g. --slow-consumer-rule 'prices.>=disconnect'; the first matching
    /// rule wins; repeatable
    #[arg(long, value_name = "PATTERN=POLICY", help_heading = "Slow consumers")]
    slow_consumer_rule: Vec<String>,

    /// An origin allowed to use /sse and /publish from a browser (CORS); "*" allows any;
    /// repeatable [default: *]
    #[arg(long, value_name = "ORIGIN", help_heading = "Browsers")]
    cors_origin: Vec<String>,
    /// An origin allowed to open /ws; repeatable [default: any]
    #[arg(long, value_name = "ORIGIN", help_heading = "Browsers")]
    ws_origin: Vec<String>,

    /// Whether requests without a token are allowed (with every permission) [default: true]
    #[arg(
        long,
        value_name = "BOOL",
        help_heading = "Authentication (docs/AUTH.md)"
    )]
    anonymous: Option<bool>,
    /// Verify HS256 tokens with the secret in this file
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Authentication (docs/AUTH.md)"
    )]
    jwt_secret_file: Option<PathBuf>,
    /// Verify RS256/ES256 tokens with the PEM public key in this file
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Authentication (docs/AUTH.md)"
    )]
    jwt_public_key_file: Option<PathBuf>,
    /// Tokens must have this issuer (`iss`)
    #[arg(
        long,
        value_name = "ISS",
        help_heading = "Authentication (docs/AUTH.md)"
    )]
    jwt_issuer: Option<String>,
    /// Tokens must have this audience (`aud`)
    #[arg(
        long,
        value_name = "AUD",
        help_heading = "Authentication (docs/AUTH.md)"
    )]
    jwt_audience: Option<String>,
}

fn duration(s: &str) -> Result<String, String> {
    parse_duration(s).map(|_| s.to_owned())
}

fn opt_duration(s: &str) -> Result<String, String> {
    parse_opt_duration(s).map(|_| s.to_owned())
}

/// Sets `path` (dotted) in `table`, creating tables on the way.
fn set(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), String> {
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys
        .pop()
        .filter(|k| !k.is_empty())
        .ok_or(format!("empty key in {path:?}"))?;
    let mut table = table;
    for key in keys {
        let entry = table
            .entry(key.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{path:?}: {key} is not a table"))?;
    }
    table.insert(last.to_owned(), value);
    Ok(())
}

/// A `--set` value: TOML if it parses as a value, else a string.
fn toml_value(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    toml::from_str::<toml::Table>(&wrapped)
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn int(n: u64) -> toml::Value {
    toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn string(s: impl Into<String>) -> toml::Value {
    toml::Value::String(s.into())
}

fn strings(list: &[String]) -> toml::Value {
    toml::Value::Array(list.iter().map(|s| string(s.as_str())).collect())
}

fn path(p: &std::path::Path) -> toml::Value {
    string(p.to_string_lossy().into_owned())
}

/// Defaults, then the file, then the flags.
fn load(args: &ServeArgs) -> Result<ServerConfig, String> {
    let mut table = match &args.config {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            toml::from_str::<toml::Table>(&text).map_err(|e| format!("{}: {e}", file.display()))?
        }
        None => toml::Table::new(),
    };
    let mut overrides: Vec<(&str, toml::Value)> = Vec::new();
    let mut put = |key: &'static str, value: Option<toml::Value>| {
        if let Some(value) = value {
            overrides.push((key, value));
        }
    };
    put("listen", args.listen.as_deref().map(string));
    put("runtime", args.runtime.as_deref().map(string));
    put("limits.max_connections", args.max_connections.map(int));
    put("limits.max_frame_bytes", args.max_frame_bytes.map(int));
    put("limits.max_subscriptions", args.max_subscriptions.map(int));
    put("limits.max_queued_bytes", args.max_queued_bytes.map(int));
    put("limits.max_topic_len", args.max_topic_len.map(int));
    put(
        "limits.max_pending_requests",
        args.max_pending_requests.map(int),
    );
    put("retention.max_events", args.retention_events.map(int));
    put("retention.max_bytes", args.retention_bytes.map(int));
    put(
        "retention.max_age",
        args.retention_age.as_deref().map(string),
    );
    put("timers.keepalive", args.keepalive.as_deref().map(string));
    put(
        "timers.idle_timeout",
        args.idle_timeout.as_deref().map(string),
    );
    put(
        "timers.request_timeout",
        args.request_timeout.as_deref().map(string),
    );
    put(
        "timers.ack_timeout",
        args.ack_timeout.as_deref().map(string),
    );
    put("sse.retry", args.sse_retry.as_deref().map(string));
    put(
        "timers.shutdown_grace",
        args.shutdown_grace.as_deref().map(string),
    );
    put(
        "slow_consumer.default",
        args.slow_consumer.as_deref().map(string),
    );
    if !args.slow_consumer_rule.is_empty() {
        let mut rules = Vec::new();
        for rule in &args.slow_consumer_rule {
            let (pattern, policy) = rule.rsplit_once('=').ok_or_else(|| {
                format!("--slow-consumer-rule {rule:?}: expected PATTERN=POLICY, e.g. 'prices.>=disconnect'")
            })?;
            let mut t = toml::Table::new();
            t.insert("pattern".into(), string(pattern));
            t.insert("policy".into(), string(policy));
            rules.push(toml::Value::Table(t));
        }
        put("slow_consumer.rules", Some(toml::Value::Array(rules)));
    }
    put(
        "http.cors_origins",
        Some(&args.cors_origin)
            .filter(|l| !l.is_empty())
            .map(|l| strings(l)),
    );
    put(
        "http.ws_origins",
        Some(&args.ws_origin)
            .filter(|l| !l.is_empty())
            .map(|l| strings(l)),
    );
    put("auth.anonymous", args.anonymous.map(toml::Value::Boolean));
    put(
        "auth.jwt.secret_file",
        args.jwt_secret_file.as_deref().map(path),
    );
    put(
        "auth.jwt.public_key_file",
        args.jwt_public_key_file.as_deref().map(path),
    );
    put("auth.jwt.issuer", args.jwt_issuer.as_deref().map(string));
    put(
        "auth.jwt.audience",
        args.jwt_audience.as_deref().map(string),
    );
    for (key, value) in overrides {
        set(&mut table, key, value)?;
    }
    for item in &args.set {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("--set {item:?}: expected KEY=VALUE"))?;
        set(&mut table, key.trim(), toml_value(value.trim()))?;
    }
    ServerConfig::from_table(table).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Sub(args) => return cli::sub(&args),
        Command::Pub(args) => return cli::publish(&args),
    };
    let config = match load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tidings: {e}");
            return ExitCode::from(2);
        }
    };
    match config.runtime.as_str() {
        "tokio" => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("tidings: cannot start the tokio runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve_tokio(config))
        }
        // async-io timers and sockets, tasks on async-global-executor (see tidings-async-std).
        "async-std" => async_io::block_on(serve_async_std(config)),
        other => {
            eprintln!("tidings: unknown runtime {other:?}; use tokio or async-std");
            ExitCode::from(2)
        }
    }
}

async fn serve_tokio(config: ServerConfig) -> ExitCode {
    // Signals first: the handlers must be in place before the server is announced (whoever
    // reads the address may signal at once).
    let signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("tidings: cannot watch SIGTERM/SIGINT: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = config.listen.clone();
    let server = match tidings_tokio::serve(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("tidings: cannot serve on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    announce(server.addr(), "tokio", server.service()).await;
    if let Some(code) = until_signal_or_failure(signals.recv(), server.hub()).await {
        return code;
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn serve_async_std(config: ServerConfig) -> ExitCode {
    // Signals first: the handlers must be in place before the server is announced.
    let signals =
        match async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int]) {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("tidings: cannot watch SIGTERM/SIGINT: {e}");
                return ExitCode::FAILURE;
            }
        };
    let listen = config.listen.clone();
    let server = match tidings_async_std::serve(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("tidings: cannot serve on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    announce(server.addr(), "async-std", server.service()).await;
    let mut signals = signals;
    let signal = async {
        let _ = futures_lite::StreamExt::next(&mut signals).await;
    };
    if let Some(code) = until_signal_or_failure(signal, server.hub()).await {
        return code;
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Waits for a shutdown signal (`None`: shut down gracefully), or for the broker to fail, which
/// is a bug: then there is nothing left to shut down gracefully, and the process exits with
/// status 70 (`EX_SOFTWARE`) so that a supervisor restarts it (clients reconnect and resume).
async fn until_signal_or_failure(
    signal: impl std::future::Future<Output = ()>,
    hub: &tidings_adapter::Hub,
) -> Option<ExitCode> {
    let signalled = async {
        signal.await;
        None
    };
    let failed = async {
        hub.failed().await;
        tracing::error!("the broker failed; exiting with status 70 so that tidings is restarted");
        Some(ExitCode::from(70))
    };
    futures_lite::FutureExt::or(signalled, failed).await
}

/// The first stdout line, and the start-up log.
async fn announce<R: tidings_adapter::Runtime>(
    addr: std::net::SocketAddr,
    runtime: &str,
    service: &tidings_adapter::Service<R>,
) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on http://{addr}");
    let _ = stdout.flush();
    drop(stdout);
    let epoch = service
        .hub()
        .stats()
        .await
        .map(|s| format!("{:x}", s.epoch))
        .unwrap_or_default();
    tracing::info!(%addr, runtime, epoch, "tidings is serving");
    tracing::info!("auth: {}", service.describe_auth());
    if service.auth_is_open() && !addr.ip().is_loopback() {
        tracing::warn!(
            "anonymous clients may do everything and the server listens beyond loopback; \
             configure [auth] (docs/AUTH.md)"
        );
    }
}

/// SIGINT and SIGTERM on tokio, registered when created.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Returns at the first signal.
    async fn recv(mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
