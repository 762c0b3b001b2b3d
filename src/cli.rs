//! The command-line client: `tidings sub` and `tidings pub`, on the Rust client
//! (`tidings-client`).
//!
//! `tidings sub TOPIC...` prints one JSON object per line on stdout: every event
//! (`{"type":"event","topic":..,"cursor":..,"event":..,"from":..,"data":..}`, `event` and `from`
//! only when present, `data` the JSON value or the text as a JSON string) and every gap notice
//! (`{"type":"gap","from":..,"to":..,"reason":..,"dropped_messages":..}`). It reconnects and
//! resumes by itself; connection changes go to stderr. `tidings pub TOPIC [DATA|-]` publishes
//! and prints the event's cursor.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use futures_lite::StreamExt as _;
use tidings_client::{Client, Cursor, Item, Payload, State, SubscribeOptions};

/// The default server URL of the client commands.
const DEFAULT_URL: &str = "ws://127.0.0.1:9313/ws";

/// Where and how to connect.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// The server's WebSocket URL
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL, env = "TIDINGS_URL")]
    url: String,
    /// A JWT to authenticate with (sent as `Authorization: Bearer`)
    #[arg(
        long,
        value_name = "JWT",
        env = "TIDINGS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

impl ConnectArgs {
    fn builder(&self) -> tidings_client::ClientBuilder {
        let builder = Client::builder(&self.url);
        match &self.token {
            Some(token) => builder.token(token),
            None => builder,
        }
    }
}

/// `tidings sub`.
#[derive(Debug, Args)]
pub(crate) struct SubArgs {
    /// Topics or patterns (`*` matches one segment, `>` the rest), e.g. 'chat.*'
    #[arg(value_name = "TOPIC", required = true)]
    topics: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Start after this cursor: replay the retained events after it first (a gap line says if
    /// some are gone)
    #[arg(long, value_name = "CURSOR")]
    from: Option<String>,
    /// Exit after this many events
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// `tidings pub`.
#[derive(Debug, Args)]
pub(crate) struct PubArgs {
    /// The topic (no wildcards)
    #[arg(value_name = "TOPIC")]
    topic: String,
    /// The data; `-` or nothing reads it from stdin
    #[arg(value_name = "DATA")]
    data: Option<String>,
    #[command(flatten)]
    connect: ConnectArgs,
    /// An event name (SSE `event:`)
    #[arg(long, value_name = "NAME")]
    event: Option<String>,
    /// Send the data as JSON (it must be one JSON value) instead of text
    #[arg(long)]
    json: bool,
    /// How long to wait for the server's answer
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    timeout: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    tidings_adapter::config::parse_duration(s)
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(1, &format!("cannot start the tokio runtime: {e}")))
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("tidings: {message}");
    ExitCode::from(code)
}

/// Runs `tidings sub`.
pub(crate) fn sub(args: &SubArgs) -> ExitCode {
    let from = match args.from.as_deref().map(str::parse::<Cursor>).transpose() {
        Ok(from) => from,
        Err(e) => return fail(2, &format!("--from: {}", e.message)),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let client = match args.connect.builder().connect().await {
            Ok(client) => client,
            Err(e) => return fail(1, &e.to_string()),
        };
        let mut options = SubscribeOptions::new(args.topics.iter().cloned());
        if let Some(from) = from {
            options = options.from(from);
        }
        let mut sub = match client.subscribe_with(options).await {
            Ok(sub) => sub,
            Err(tidings_client::Error::Invalid(e)) => return fail(2, &e),
            Err(e) => return fail(1, &format!("cannot subscribe: {e}")),
        };
        let mut states = client.state();
        let mut printed = 0u64;
        let mut stdout = std::io::stdout().lock();
        loop {
            tokio::select! {
                item = sub.next() => {
                    let Some(item) = item else {
                        let why = sub
                            .end_reason()
                            .map_or_else(|| "the subscription ended".to_owned(), ToString::to_string);
                        return fail(1, &why);
                    };
                    let Some(line) = line(&item) else { continue };
                    if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                        // stdout closed (e.g. piped into `head`): done.
                        return ExitCode::SUCCESS;
                    }
                    if matches!(item, Item::Event(_)) {
                        printed += 1;
                        if args.count.is_some_and(|n| printed >= n) {
                            client.close().await;
                            return ExitCode::SUCCESS;
                        }
                    }
                }
                changed = states.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let state = states.borrow_and_update().clone();
                    match state {
                        State::Reconnecting { delay, reason, .. } => eprintln!(
                            "tidings: {reason}; reconnecting in {} ms",
                            delay.as_millis()
                        ),
                        State::Connected { .. } => eprintln!("tidings: connected"),
                        _ => {}
                    }
                }
                _ = tokio::signal::ctrl_c() => {
                    client.close().await;
                    return ExitCode::SUCCESS;
                }
            }
        }
    })
}

/// One JSON line for an item (named messages are not printed: `sub` names no subscription).
fn line(item: &Item) -> Option<String> {
    let string = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let data = |p: &Payload| {
        if p.is_json() {
            p.as_str().to_owned()
        } else {
            string(p.as_str())
        }
    };
    match item {
        Item::Event(e) => {
            let mut out = format!(
                "{{\"type\":\"event\",\"topic\":{},\"cursor\":\"{}\"",
                string(e.topic.as_str()),
                e.cursor
            );
            if let Some(event) = &e.event {
                out.push_str(&format!(",\"event\":{}", string(event.as_str())));
            }
            if let Some(from) = &e.from {
                out.push_str(&format!(",\"from\":{}", string(from.as_str())));
            }
            out.push_str(&format!(",\"data\":{}}}", data(&e.payload)));
            Some(out)
        }
        Item::Gap(gap) => Some(format!(
            "{{\"type\":\"gap\",\"from\":{},\"to\":\"{}\",\"reason\":\"{}\",\"dropped_messages\":{}}}",
            gap.from
                .map_or_else(|| "null".to_owned(), |c| format!("\"{c}\"")),
            gap.to,
            gap.reason.as_str(),
            gap.dropped_messages
        )),
        _ => None,
    }
}

/// Runs `tidings pub`.
pub(crate) fn publish(args: &PubArgs) -> ExitCode {
    let data = match args.data.as_deref() {
        Some("-") | None => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                return fail(1, &format!("cannot read stdin: {e}"));
            }
            buf
        }
        Some(data) => data.as_bytes().to_vec(),
    };
    let payload = if args.json {
        Payload::json(data)
    } else {
        Payload::text(data)
    };
    let payload = match payload {
        Ok(payload) => payload,
        Err(e) => return fail(2, &format!("the data is not valid: {}", e.message)),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let client = match args
            .connect
            .builder()
            .op_timeout(args.timeout)
            .connect()
            .await
        {
            Ok(client) => client,
            Err(e) => return fail(1, &e.to_string()),
        };
        let result = match &args.event {
            Some(event) => client.publish_event(&args.topic, event, payload).await,
            None => client.publish(&args.topic, payload).await,
        };
        client.close().await;
        match result {
            Ok(cursor) => {
                println!("{cursor}");
                ExitCode::SUCCESS
            }
            Err(tidings_client::Error::Invalid(e)) => fail(2, &e),
            Err(e) => fail(1, &format!("publish failed: {e}")),
        }
    })
}
