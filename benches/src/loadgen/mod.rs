//! The load generator's parts. Targets are an enum so that other systems (NATS over WebSocket,
//! socket.io, socketioxide) can be added as variants with a module each, next to `ws` and `sse`.

pub(crate) mod check;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod payload;
pub(crate) mod report;
pub(crate) mod server;
pub(crate) mod sse;
pub(crate) mod ws;
pub(crate) mod wsraw;

use std::net::SocketAddr;
use std::time::Duration;

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// tidings, native protocol on `GET /ws`
    Tidings,
    /// tidings, Server-Sent Events on `GET /sse?topic=` (published to over `/ws`)
    TidingsSse,
}

impl Target {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Tidings => "tidings",
            Self::TidingsSse => "tidings-sse",
        }
    }
}

/// A connection that receives a topic.
pub(crate) enum Subscriber {
    Ws(Box<ws::WsConn>),
    Sse(sse::SseConn),
}

impl Subscriber {
    /// Connects and subscribes to `topic`; returns once the server has confirmed the
    /// subscription (native `ok`, or the SSE stream's opening `retry:`). With `topic` `None`
    /// (native only) the connection subscribes to nothing.
    pub(crate) async fn open(
        target: Target,
        addr: SocketAddr,
        topic: Option<&str>,
    ) -> Result<Self, String> {
        match target {
            Target::Tidings => {
                let mut conn = ws::WsConn::connect(addr).await?;
                if let Some(topic) = topic {
                    conn.subscribe(topic).await?;
                }
                Ok(Self::Ws(Box::new(conn)))
            }
            Target::TidingsSse => {
                let topic = topic.ok_or("an SSE stream needs a topic")?;
                Ok(Self::Sse(sse::SseConn::open(addr, topic).await?))
            }
        }
    }

    /// Receives until `check` has seen the last message or the connection ends; abort the
    /// task to end it earlier.
    pub(crate) async fn receive(self, check: &std::sync::Mutex<check::SeqCheck>) {
        match self {
            Self::Ws(conn) => conn.receive(check).await,
            Self::Sse(conn) => conn.receive(check).await,
        }
    }

    /// Holds an idle connection open until it fails; returns why. Abort the task to close it.
    pub(crate) async fn hold(self) -> String {
        match self {
            Self::Ws(conn) => conn.hold().await,
            Self::Sse(conn) => conn.hold().await,
        }
    }
}

/// Opens a connection with retries (a listen backlog can overflow while thousands connect).
pub(crate) async fn open_with_retry(
    target: Target,
    addr: SocketAddr,
    topic: Option<&str>,
) -> Result<Subscriber, String> {
    let mut delay = Duration::from_millis(50);
    let mut last = String::new();
    for _ in 0..5 {
        match Subscriber::open(target, addr, topic).await {
            Ok(conn) => return Ok(conn),
            Err(e) => last = e,
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    Err(last)
}

/// The client runtime: one multi-threaded tokio runtime, connections as tasks.
pub(crate) fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
}

/// Fails early when `connections` would not fit under this process's open-file limit.
pub(crate) fn check_fd_limit(connections: usize) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<usize>().ok());
    match soft {
        Some(soft) if connections + 64 > soft => Err(format!(
            "{connections} connections need more open files than the limit of {soft}; \
             raise it first (ulimit -n)"
        )),
        _ => Ok(()),
    }
}
