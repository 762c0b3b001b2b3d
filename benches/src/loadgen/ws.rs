//! The tidings native protocol over `GET /ws` (docs/PROTOCOL.md): subscribers and the
//! publisher. Subscribers read frames in place with `wsraw` (per delivery: no allocation, no
//! copy, no UTF-8 pass) and look for `"seq":` in each text frame, and only then for the frame
//! types they must act on (`ping`, `gap`, `error`). The publisher is an async-tungstenite
//! client: its cost is per publish, not per delivery.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::{TokioAdapter, client_async_with_config};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_util::StreamExt as _;
use memchr::memmem;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

use super::check::SeqCheck;
use super::payload;
use super::wsraw::{Flow, RawWs};

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// How long the handshake, `welcome` and a `subscribe` answer may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A native subscriber connection (raw frames, `wsraw`) that has received its `welcome`.
pub(crate) struct WsConn {
    raw: RawWs,
}

fn has(frame: &[u8], needle: &[u8]) -> bool {
    memmem::find(frame, needle).is_some()
}

impl WsConn {
    /// TCP connect, WebSocket handshake, and the `welcome` frame.
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self, String> {
        tokio::time::timeout(OPEN_TIMEOUT, async {
            let mut conn = Self {
                raw: RawWs::connect(addr, "/ws").await?,
            };
            let first = conn.next_text().await?;
            if has(&first, b"\"type\":\"welcome\"") {
                Ok(conn)
            } else {
                Err(format!(
                    "expected welcome, got {}",
                    String::from_utf8_lossy(&first)
                ))
            }
        })
        .await
        .map_err(|_| format!("no welcome from {addr} in {OPEN_TIMEOUT:?}"))?
    }

    /// The next text frame (answering pings on the way); for the opening exchange only.
    async fn next_text(&mut self) -> Result<Vec<u8>, String> {
        loop {
            let mut text = None;
            let mut ping = false;
            self.raw
                .read_frames(|t| {
                    if has(t, b"\"type\":\"ping\"") {
                        ping = true;
                        Flow::Continue
                    } else {
                        text = Some(t.to_vec());
                        Flow::Stop
                    }
                })
                .await?;
            if ping {
                self.raw.send_text(br#"{"op":"pong"}"#).await?;
            }
            if let Some(text) = text {
                return Ok(text);
            }
        }
    }

    /// Subscribes to `topic` and waits for the `ok`.
    pub(crate) async fn subscribe(&mut self, topic: &str) -> Result<(), String> {
        let frame = serde_json::json!({"op": "subscribe", "id": 1, "topic": topic}).to_string();
        self.raw.send_text(frame.as_bytes()).await?;
        tokio::time::timeout(OPEN_TIMEOUT, async {
            loop {
                let frame = self.next_text().await?;
                if has(&frame, b"\"type\":\"ok\"") {
                    return Ok(());
                }
                if has(&frame, b"\"type\":\"error\"") {
                    return Err(format!(
                        "subscribe refused: {}",
                        String::from_utf8_lossy(&frame)
                    ));
                }
            }
        })
        .await
        .map_err(|_| format!("no answer to subscribe in {OPEN_TIMEOUT:?}"))?
    }

    /// Receives events until the last message or the end of the connection. The caller ends
    /// it early by aborting its task; `check` (locked per frame, by this task only) keeps what
    /// was counted. (A shared stop signal polled in every wait would make all subscribers
    /// contend for one lock.)
    pub(crate) async fn receive(mut self, check: &Mutex<SeqCheck>) {
        let lock = || check.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let mut ping = false;
            let mut last = false;
            let read = self
                .raw
                .read_frames(|frame| {
                    if let Some((seq, t)) = payload::parse(frame) {
                        if lock().on_payload(seq, t) {
                            last = true;
                            return Flow::Stop;
                        }
                    } else if has(frame, b"\"type\":\"ping\"") {
                        ping = true;
                    } else if has(frame, b"\"type\":\"gap\"") {
                        lock().gaps += 1;
                    } else if has(frame, b"\"type\":\"error\"") {
                        lock().error = Some(String::from_utf8_lossy(frame).into_owned());
                    }
                    Flow::Continue
                })
                .await;
            if let Err(e) = read {
                lock().error.get_or_insert(e);
                return;
            }
            if last {
                return;
            }
            if ping {
                if let Err(e) = self.raw.send_text(br#"{"op":"pong"}"#).await {
                    lock().error = Some(e);
                    return;
                }
            }
        }
    }

    /// Holds the connection open, answering pings, until it fails (idle connections; the
    /// caller aborts the task to close it).
    pub(crate) async fn hold(mut self) -> String {
        loop {
            let mut ping = false;
            let mut error = None;
            let read = self
                .raw
                .read_frames(|t| {
                    if has(t, b"\"type\":\"ping\"") {
                        ping = true;
                    } else if has(t, b"\"type\":\"error\"") {
                        error = Some(String::from_utf8_lossy(t).into_owned());
                    }
                    Flow::Continue
                })
                .await;
            if let Err(e) = read {
                return error.unwrap_or(e);
            }
            if ping {
                if let Err(e) = self.raw.send_text(br#"{"op":"pong"}"#).await {
                    return e;
                }
            }
        }
    }
}

/// The publisher's connection: async-tungstenite, after the `welcome`.
async fn publisher_connect(addr: SocketAddr) -> Result<Ws, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(64 << 10);
    let (mut ws, _) = client_async_with_config(format!("ws://{addr}/ws"), tcp, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake with {addr}: {e}"))?;
    match ws.next().await {
        Some(Ok(msg)) if text_of(&msg).is_some_and(|t| has(t, b"\"type\":\"welcome\"")) => Ok(ws),
        other => Err(format!("expected welcome, got {other:?}")),
    }
}

fn text_of(msg: &Message) -> Option<&[u8]> {
    match msg {
        Message::Text(t) => Some(t.as_bytes()),
        _ => None,
    }
}

/// What to publish.
#[derive(Debug, Clone)]
pub(crate) struct PublishPlan {
    pub topic: String,
    pub messages: u64,
    pub size: usize,
    /// Messages per second, or as fast as the server answers.
    pub rate: Option<f64>,
    /// Publishes awaiting their `ok` at most.
    pub window: usize,
    /// The clock of the payloads' `t`.
    pub start: Instant,
}

/// What the publisher saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublishStats {
    /// When the first message was sent, ns since `start`.
    pub first_send_ns: u64,
    /// When the last message was sent, ns since `start`.
    pub last_send_ns: u64,
    /// `ok` answers received.
    pub acked: u64,
    /// `error` answers received (the first is kept).
    pub errors: u64,
    pub first_error: Option<String>,
}

fn since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Publishes `plan.messages` payloads over one native connection, each `publish` with a
/// request id, keeping at most `plan.window` unanswered. Paced at `plan.rate` if given: then
/// `t` is the scheduled send time, so a late publisher shows up as latency (no coordinated
/// omission).
pub(crate) async fn publish(
    addr: SocketAddr,
    plan: PublishPlan,
    mut stop: watch::Receiver<bool>,
) -> Result<PublishStats, String> {
    let ws = publisher_connect(addr).await?;
    let (mut tx, mut rx) = ws.split();
    let window = Arc::new(Semaphore::new(plan.window.max(1)));
    let total = plan.messages;
    let credit = Arc::clone(&window);
    let reader = tokio::spawn(async move {
        let mut stats = PublishStats::default();
        while stats.acked + stats.errors < total {
            let msg = match rx.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => return Err((stats, format!("publisher WebSocket: {e}"))),
                None => return Err((stats, "publisher connection closed".into())),
            };
            let Some(frame) = text_of(&msg) else {
                continue;
            };
            if has(frame, b"\"type\":\"ok\"") {
                stats.acked += 1;
                credit.add_permits(1);
            } else if has(frame, b"\"type\":\"error\"") {
                stats.errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(String::from_utf8_lossy(frame).into_owned());
                }
                credit.add_permits(1);
            }
        }
        Ok(stats)
    });

    let mut data = Vec::with_capacity(plan.size + 64);
    let head = format!(
        ",\"topic\":{},\"data\":",
        serde_json::Value::from(plan.topic.as_str())
    );
    let paced_from = Instant::now();
    let mut first_send_ns = None;
    let mut last_send_ns = 0;
    let mut send_error = None;
    for seq in 0..total {
        let permit = tokio::select! {
            p = window.acquire() => p,
            _ = stop.changed() => break,
        };
        match permit {
            Ok(p) => p.forget(),
            Err(_) => break,
        }
        let t = if let Some(rate) = plan.rate {
            #[allow(clippy::cast_precision_loss)]
            let due = paced_from + Duration::from_secs_f64(seq as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            u64::try_from((due - plan.start).as_nanos()).unwrap_or(u64::MAX)
        } else {
            since(plan.start)
        };
        payload::build(&mut data, seq, t, plan.size);
        let mut frame = String::with_capacity(data.len() + head.len() + 32);
        frame.push_str("{\"op\":\"publish\",\"id\":");
        frame.push_str(&(seq + 1).to_string());
        frame.push_str(&head);
        frame.push_str(std::str::from_utf8(&data).unwrap_or("null"));
        frame.push('}');
        if let Err(e) = tx.send(Message::text(frame)).await {
            send_error = Some(format!("publishing: {e}"));
            break;
        }
        first_send_ns.get_or_insert(t);
        last_send_ns = t;
    }
    let stats = if send_error.is_some() || *stop.borrow() {
        reader.abort();
        PublishStats::default()
    } else {
        tokio::select! {
            r = reader => match r {
                Ok(Ok(stats)) => stats,
                Ok(Err((stats, e))) => { send_error = Some(e); stats }
                Err(e) => { send_error = Some(format!("publisher reader: {e}")); PublishStats::default() }
            },
            _ = stop.changed() => PublishStats::default(),
        }
    };
    let stats = PublishStats {
        first_send_ns: first_send_ns.unwrap_or(0),
        last_send_ns,
        ..stats
    };
    match send_error {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}
