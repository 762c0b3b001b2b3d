//! The `tidings` server binary: `tidings serve [--listen ADDR] [--runtime tokio|async-std]
//! [--config FILE] [flags]`.
//!
//! Settings come from the defaults, then the TOML file (`--config`), then `--set KEY=VALUE`
//! (any key), then the flags of single settings (which win). Every setting has a TOML key (see
//! `tidings.example.toml`); the common ones also have a flag, each defined once in `flags.rs`. The first line on stdout is
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
mod flags;
use tidings_adapter::ServerConfig;

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
    /// --set KEY=VALUE, then the other flags. Durations are like 500ms, 15s, 5m, 1h; "off"
    /// disables a timer.
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
struct ServeArgs {
    /// A TOML configuration file (flags override it)
    #[arg(long, value_name = "FILE", help_heading = "Server")]
    config: Option<PathBuf>,
    /// Set any configuration key, e.g. --set http.read_timeout=5s or
    /// --set 'auth.anonymous={subscribe=["public.>"]}' (the value is TOML, or else a string);
    /// repeatable. The other flags override it
    #[arg(long = "set", value_name = "KEY=VALUE", help_heading = "Server")]
    set: Vec<String>,
    /// The flags of single settings (`--listen`, `--max-frame-bytes`, ...), defined in flags.rs.
    #[command(flatten)]
    flags: flags::ConfigFlags,
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

/// Defaults, then the file, then `--set`, then the other flags. The one default of `serve` that
/// is not the library's: events are stored in files (`store.kind = "file"`), where an embedding
/// application's `ServerConfig` writes nothing it did not ask for.
fn load(args: &ServeArgs) -> Result<ServerConfig, String> {
    let mut table = match &args.config {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            toml::from_str::<toml::Table>(&text).map_err(|e| format!("{}: {e}", file.display()))?
        }
        None => toml::Table::new(),
    };
    if !table
        .get("store")
        .and_then(toml::Value::as_table)
        .is_some_and(|t| t.contains_key("kind"))
    {
        set(&mut table, "store.kind", toml::Value::String("file".into()))?;
    }
    for item in &args.set {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("--set {item:?}: expected KEY=VALUE"))?;
        set(&mut table, key.trim(), toml_value(value.trim()))?;
    }
    let mut config = ServerConfig::from_table_unchecked(table).map_err(|e| e.to_string())?;
    args.flags.apply(&mut config);
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
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
    let Some(hup) = sighup() else {
        return ExitCode::FAILURE;
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
    let signal =
        futures_lite::FutureExt::or(signals.recv(), reload_on_sighup(hup, server.service()));
    if let Some(code) = until_signal_or_failure(signal, server.hub()).await {
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
    let Some(hup) = sighup() else {
        return ExitCode::FAILURE;
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
    let signal = futures_lite::FutureExt::or(signal, reload_on_sighup(hup, server.service()));
    if let Some(code) = until_signal_or_failure(signal, server.hub()).await {
        return code;
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP, registered before the server is announced (its default action would end the
/// process).
fn sighup() -> Option<async_signal::Signals> {
    match async_signal::Signals::new([async_signal::Signal::Hup]) {
        Ok(hup) => Some(hup),
        Err(e) => {
            eprintln!("tidings: cannot watch SIGHUP: {e}");
            None
        }
    }
}

/// On every SIGHUP, reads the TLS certificate and key again (never completes).
async fn reload_on_sighup<R: tidings_adapter::Runtime>(
    mut hup: async_signal::Signals,
    service: &tidings_adapter::Service<R>,
) {
    while futures_lite::StreamExt::next(&mut hup).await.is_some() {
        if !service.is_tls() {
            tracing::info!("SIGHUP: nothing to reload (no [tls] certificate)");
            continue;
        }
        match service.reload_tls() {
            Ok(()) => tracing::info!("SIGHUP: the TLS certificate and key were reloaded"),
            Err(e) => tracing::error!("SIGHUP: {e}; the certificate in use stays"),
        }
    }
    std::future::pending().await
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
    let scheme = if service.is_tls() { "https" } else { "http" };
    let _ = writeln!(stdout, "listening on {scheme}://{addr}");
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
    tracing::info!("{}", service.describe_limits());
    if let Some(warning) = service.cookie_origin_warning() {
        tracing::warn!("{warning}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load_from(args: &[&str]) -> Result<ServerConfig, String> {
        let cli = Cli::try_parse_from(["tidings", "serve"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Serve(args) => load(&args),
            _ => unreachable!(),
        }
    }

    /// Each flag sets exactly what `--set` of its key sets, so the flag table and the
    /// configuration keys cannot drift apart.
    #[test]
    fn every_flag_sets_its_key() {
        let samples = flags::samples();
        assert!(samples.len() >= 25, "{}", samples.len());
        let defaults = load_from(&[]).unwrap();
        for (flag, key, cli, toml) in samples {
            let flag = format!("--{flag}");
            // A switch has no value.
            let args: Vec<&str> = [flag.as_str(), cli]
                .into_iter()
                .filter(|a| !a.is_empty())
                .collect();
            let by_flag = load_from(&args).unwrap();
            let by_key = load_from(&["--set", &format!("{key}={toml}")]).unwrap();
            assert_eq!(by_flag, by_key, "{flag} {cli} vs --set {key}={toml}");
            assert_ne!(by_flag, defaults, "{flag} {cli} changed nothing");
        }
    }

    #[test]
    fn serve_stores_in_files_unless_told_otherwise() {
        use tidings_adapter::store::StoreKind;
        assert_eq!(load_from(&[]).unwrap().store.kind, StoreKind::File);
        assert_eq!(
            load_from(&["--memory"]).unwrap().store.kind,
            StoreKind::Memory
        );
        let memory = load_from(&["--set", "store.kind=\"memory\""]).unwrap();
        assert_eq!(memory.store.kind, StoreKind::Memory);
        // The library's default is memory: nothing written where an application did not ask.
        assert_eq!(ServerConfig::default().store.kind, StoreKind::Memory);
    }

    #[test]
    fn flags_override_the_file_and_set() {
        let dir = std::env::temp_dir().join(format!("tidings-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.toml");
        std::fs::write(
            &file,
            "[limits]\nmax_frame_bytes = 5\nmax_subscriptions = 6\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let config = load_from(&[
            "--config",
            file,
            "--set",
            "limits.max_subscriptions=7",
            "--set",
            "limits.max_connections=8",
            "--max-connections",
            "9",
        ])
        .unwrap();
        assert_eq!(config.limits.max_frame_bytes, 5);
        assert_eq!(config.limits.max_subscriptions, 7);
        assert_eq!(config.limits.max_connections, 9);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag_or_key() {
        let e = load_from(&["--keepalive", "soon"]).unwrap_err();
        assert!(
            e.contains("--keepalive") && e.contains("not a duration"),
            "{e}"
        );
        let e = load_from(&["--slow-consumer", "maybe"]).unwrap_err();
        assert!(e.contains("--slow-consumer"), "{e}");
        let e = load_from(&["--slow-consumer-rule", "a..b=disconnect"]).unwrap_err();
        assert!(e.contains("--slow-consumer-rule"), "{e}");
        let e = load_from(&[
            "--max-topic-len",
            "3",
            "--slow-consumer-rule",
            "abcd=disconnect",
        ])
        .unwrap_err();
        assert!(e.contains("slow_consumer.rules"), "{e}");
        let e = load_from(&["--max-frame-bytes", "0"]).unwrap_err();
        assert_eq!(e, "limits.max_frame_bytes must be at least 1");
        let e = load_from(&["--set", "timers.keepalives=1s"]).unwrap_err();
        assert!(e.contains("keepalives"), "{e}");
        let e = load_from(&["--set", "http.shutdown_grace=1s"]).unwrap_err();
        assert!(e.contains("timers.shutdown_grace"), "{e}");
    }
}
