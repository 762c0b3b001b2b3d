//! The load generator's parts. Targets are an enum, with a module per wire protocol: `ws`
//! (tidings native), `sse` (tidings SSE), `nats` (NATS over WebSocket), `sio` (socket.io v4,
//! for both socket.io and socketioxide); `publisher` speaks all of them; `server` starts the
//! systems (`peers` for the other systems' servers).

pub(crate) mod check;
pub(crate) mod compare;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod loopback;
pub(crate) mod nats;
pub(crate) mod payload;
pub(crate) mod plot;
pub(crate) mod publisher;
pub(crate) mod report;
pub(crate) mod server;
pub(crate) mod sio;
pub(crate) mod sse;
pub(crate) mod ws;
pub(crate) mod wsraw;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bytes the subscribers have read from their sockets (HTTP heads included).
static WIRE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Counts bytes read by a subscriber.
pub(crate) fn count_wire_bytes(n: usize) {
    WIRE_BYTES.fetch_add(n as u64, Ordering::Relaxed);
}

/// Bytes read by all subscribers so far.
pub(crate) fn wire_bytes() -> u64 {
    WIRE_BYTES.load(Ordering::Relaxed)
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// tidings, native protocol on `GET /ws`
    Tidings,
    /// tidings, Server-Sent Events on `GET /sse?topic=` (published to over `/ws`)
    TidingsSse,
    /// nats-server, its WebSocket listener (NATS text protocol in WebSocket frames)
    Nats,
    /// socket.io 4.x on Node (`benches/peers/socketio`), WebSocket transport
    Socketio,
    /// socketioxide on axum (`benches/peers/socketioxide`), WebSocket transport
    Socketioxide,
}

impl Target {
    /// Every target, tidings first.
    pub(crate) const ALL: [Self; 5] = [
        Self::Tidings,
        Self::TidingsSse,
        Self::Nats,
        Self::Socketio,
        Self::Socketioxide,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Tidings => "tidings",
            Self::TidingsSse => "tidings-sse",
            Self::Nats => "nats",
            Self::Socketio => "socketio",
            Self::Socketioxide => "socketioxide",
        }
    }

    /// Whether this is tidings itself (either transport).
    pub(crate) const fn is_tidings(self) -> bool {
        matches!(self, Self::Tidings | Self::TidingsSse)
    }
}

/// A connection that receives a topic.
pub(crate) enum Subscriber {
    Ws(Box<ws::WsConn>),
    Sse(sse::SseConn),
    Nats(Box<nats::NatsConn>),
    Sio(Box<sio::SioConn>),
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
            Target::Nats => Ok(Self::Nats(Box::new(
                nats::NatsConn::connect(addr, topic).await?,
            ))),
            Target::Socketio | Target::Socketioxide => Ok(Self::Sio(Box::new(
                sio::SioConn::connect(addr, topic).await?,
            ))),
        }
    }

    /// Receives until `check` has seen the last message or the connection ends; abort the
    /// task to end it earlier.
    pub(crate) async fn receive(self, check: &std::sync::Mutex<check::SeqCheck>) {
        match self {
            Self::Ws(conn) => conn.receive(check).await,
            Self::Sse(conn) => conn.receive(check).await,
            Self::Nats(conn) => conn.receive(check).await,
            Self::Sio(conn) => conn.receive(check).await,
        }
    }

    /// Holds an idle connection open until it fails; returns why. Abort the task to close it.
    pub(crate) async fn hold(self) -> String {
        match self {
            Self::Ws(conn) => conn.hold().await,
            Self::Sse(conn) => conn.hold().await,
            Self::Nats(conn) => conn.hold().await,
            Self::Sio(conn) => conn.hold().await,
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
