//! The publisher: one async-tungstenite connection (its cost is per publish, not per
//! delivery) speaking the target's protocol, with the same method for every target: at most
//! `window` publishes unanswered, where the answer is tidings' `ok` to a `publish` with an id,
//! socket.io's ack of the `pub` event, or NATS's `PONG` to the `PING` sent after each `PUB`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_tungstenite::tokio::{TokioAdapter, client_async_with_config};
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::{WebSocketReceiver, WebSocketSender, WebSocketStream};
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore, watch};

use super::check::{new_histogram, record_in};
use super::ws::has;
use super::wsraw::Flow;
use super::{Target, nats, payload, sio};

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// socket.io ack ids of the publisher's `join`s (publishes count from 1).
const JOIN_ACK_BASE: u64 = 1 << 40;

/// What to publish.
#[derive(Debug, Clone)]
pub(crate) struct PublishPlan {
    /// Topics (rooms, subjects), published to in turn: publish `i` goes to `topics[i % len]`
    /// with sequence number `i / len`.
    pub topics: Vec<String>,
    /// Messages per topic.
    pub messages: u64,
    pub size: usize,
    /// Publishes per second (all topics together), or as fast as the server answers.
    pub rate: Option<f64>,
    /// Publishes awaiting their answer at most.
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
    /// Answers received.
    pub acked: u64,
    /// `error` answers received (the first is kept).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Publish-to-answer latencies, ns from the send time (the scheduled one when paced) to the
    /// `ok` with the publish's id (tidings only).
    pub answers: Option<Histogram<u64>>,
}

/// The request id of an `ok` answer (`{"type":"ok","id":N,...}`).
pub(crate) fn ok_id(frame: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(frame, b"\"id\":")? + 5;
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn frame_bytes(msg: &Message) -> Option<&[u8]> {
    match msg {
        Message::Text(t) => Some(t.as_bytes()),
        Message::Binary(b) => Some(b),
        _ => None,
    }
}

/// The wire protocol of the publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tidings,
    Nats,
    Sio,
}

impl Proto {
    const fn of(target: Target) -> Self {
        match target {
            Target::Tidings | Target::TidingsSse => Self::Tidings,
            Target::Nats => Self::Nats,
            Target::Socketio | Target::Socketioxide => Self::Sio,
        }
    }

    const fn path(self) -> &'static str {
        match self {
            Self::Tidings => "/ws",
            Self::Nats => "/",
            Self::Sio => sio::PATH,
        }
    }
}

/// Reads until `f` says a frame is the one awaited.
async fn await_frame(
    ws: &mut Ws,
    what: &str,
    mut f: impl FnMut(&[u8]) -> bool,
) -> Result<(), String> {
    let wait = async {
        while let Some(msg) = ws.next().await {
            let msg = msg.map_err(|e| format!("publisher: waiting for {what}: {e}"))?;
            if frame_bytes(&msg).is_some_and(&mut f) {
                return Ok(());
            }
        }
        Err(format!("publisher: closed while waiting for {what}"))
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .map_err(|_| format!("publisher: no {what} in 30 s"))?
}

/// Connects and does the protocol's opening exchange.
async fn connect(proto: Proto, addr: SocketAddr) -> Result<Ws, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default().read_buffer_size(64 << 10);
    let url = format!("ws://{addr}{}", proto.path());
    let (mut ws, _) = client_async_with_config(url, tcp, Some(config))
        .await
        .map_err(|e| format!("WebSocket handshake with {addr}: {e}"))?;
    match proto {
        Proto::Tidings => {
            await_frame(&mut ws, "welcome", |f| has(f, b"\"type\":\"welcome\"")).await?;
        }
        Proto::Nats => {
            await_frame(&mut ws, "INFO", |f| f.starts_with(b"INFO")).await?;
            let mut hello = nats::CONNECT.to_vec();
            hello.extend_from_slice(b"PING\r\n");
            ws.send(Message::binary(hello))
                .await
                .map_err(|e| format!("publisher: CONNECT: {e}"))?;
            await_frame(&mut ws, "PONG", |f| has(f, b"PONG\r\n")).await?;
        }
        Proto::Sio => {
            await_frame(&mut ws, "engine.io open", |f| f.starts_with(b"0")).await?;
            ws.send(Message::text("40"))
                .await
                .map_err(|e| format!("publisher: socket.io connect: {e}"))?;
            await_frame(&mut ws, "socket.io connect", |f| f.starts_with(b"40")).await?;
            // A round trip before publishing, for socketioxide (see `sio::SioConn::join`): a
            // `join` of a room of the publisher's own, resent every second until acked. Its
            // ack ids are above any publish's.
            let mut acked = false;
            for attempt in 0..sio::JOIN_ATTEMPTS {
                let join = format!(
                    "42{}[\"join\",\"tidings-bench.publisher\"]",
                    JOIN_ACK_BASE + attempt
                );
                ws.send(Message::text(join))
                    .await
                    .map_err(|e| format!("publisher: socket.io join: {e}"))?;
                let wait = await_frame(
                    &mut ws,
                    "join ack",
                    |f| matches!(sio::parse(f), Ok(sio::Packet::Ack { id, .. }) if id >= JOIN_ACK_BASE),
                );
                if tokio::time::timeout(Duration::from_secs(1), wait)
                    .await
                    .is_ok()
                {
                    acked = true;
                    break;
                }
            }
            if !acked {
                return Err("publisher: socket.io join never acked".into());
            }
        }
    }
    Ok(ws)
}

/// Answers and errors in frames from the server; replies to pings through `tx`.
async fn read_answers(
    proto: Proto,
    mut rx: WebSocketReceiver<TokioAdapter<TcpStream>>,
    tx: Arc<Mutex<WebSocketSender<TokioAdapter<TcpStream>>>>,
    credit: Arc<Semaphore>,
    total: u64,
    sent_at: Arc<Vec<AtomicU64>>,
    start: Instant,
) -> Result<PublishStats, (PublishStats, String)> {
    let mut stats = PublishStats::default();
    let mut answers = (proto == Proto::Tidings).then(new_histogram);
    let mut stream = nats::Stream::default();
    while stats.acked + stats.errors < total {
        let msg = match rx.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return Err((stats, format!("publisher WebSocket: {e}"))),
            None => return Err((stats, "publisher connection closed".into())),
        };
        let Some(frame) = frame_bytes(&msg) else {
            continue;
        };
        let (mut acks, mut errors, mut reply) = (0u64, Vec::new(), None);
        match proto {
            Proto::Tidings => {
                if has(frame, b"\"type\":\"ok\"") {
                    acks += 1;
                    let sent = ok_id(frame)
                        .and_then(|id| sent_at.get(usize::try_from(id).ok()?.checked_sub(1)?));
                    if let (Some(h), Some(sent)) = (answers.as_mut(), sent) {
                        record_in(h, since(start).saturating_sub(sent.load(Ordering::Relaxed)));
                    }
                } else if has(frame, b"\"type\":\"error\"") {
                    errors.push(String::from_utf8_lossy(frame).into_owned());
                } else if has(frame, b"\"type\":\"ping\"") {
                    reply = Some(Message::text(r#"{"op":"pong"}"#));
                }
            }
            Proto::Nats => {
                stream.push(frame);
                let drained = stream.drain(|op| {
                    match op {
                        nats::Op::Pong => acks += 1,
                        nats::Op::Ping => reply = Some(Message::binary(&b"PONG\r\n"[..])),
                        nats::Op::Err(e) => {
                            errors.push(String::from_utf8_lossy(e).into_owned());
                        }
                        _ => {}
                    }
                    Flow::Continue
                });
                if let Err(e) = drained {
                    return Err((stats, e));
                }
            }
            Proto::Sio => match sio::parse(frame) {
                Ok(sio::Packet::Ack { id, .. }) if id < JOIN_ACK_BASE => acks += 1,
                Ok(sio::Packet::Ping) => reply = Some(Message::text("3")),
                Ok(sio::Packet::Close | sio::Packet::Disconnect) => {
                    return Err((stats, "socket.io: publisher disconnected".into()));
                }
                _ => {}
            },
        }
        stats.acked += acks;
        credit.add_permits(usize::try_from(acks).unwrap_or(0) + errors.len());
        for e in errors {
            stats.errors += 1;
            stats.first_error.get_or_insert(e);
        }
        if let Some(reply) = reply {
            if let Err(e) = tx.lock().await.send(reply).await {
                return Err((stats, format!("publisher: answering a ping: {e}")));
            }
        }
    }
    stats.answers = answers;
    Ok(stats)
}

/// Publishes `plan.messages` payloads per topic over one connection speaking `target`'s
/// protocol, keeping at most `plan.window` unanswered. Paced at `plan.rate` if given: then `t`
/// is the scheduled send time, so a late publisher shows up as latency (no coordinated
/// omission).
pub(crate) async fn publish(
    target: Target,
    addr: SocketAddr,
    plan: PublishPlan,
    mut stop: watch::Receiver<bool>,
) -> Result<PublishStats, String> {
    let proto = Proto::of(target);
    let ws = connect(proto, addr).await?;
    let (tx, rx) = ws.split();
    let tx = Arc::new(Mutex::new(tx));
    let window = Arc::new(Semaphore::new(plan.window.max(1)));
    let topics = plan.topics.len().max(1) as u64;
    let total = plan.messages * topics;
    // Send times by request id - 1, for the answers' latency (tidings only).
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new(if proto == Proto::Tidings {
        (0..total).map(|_| AtomicU64::new(0)).collect()
    } else {
        Vec::new()
    });
    let reader = tokio::spawn(read_answers(
        proto,
        rx,
        Arc::clone(&tx),
        Arc::clone(&window),
        total,
        Arc::clone(&sent_at),
        plan.start,
    ));

    let mut data = Vec::with_capacity(plan.size + 64);
    let mut frame = Vec::with_capacity(plan.size + 128);
    let heads: Vec<String> = plan
        .topics
        .iter()
        .map(|t| {
            format!(
                ",\"topic\":{},\"data\":",
                serde_json::Value::from(t.as_str())
            )
        })
        .collect();
    let paced_from = Instant::now();
    let mut first_send_ns = None;
    let mut last_send_ns = 0;
    let mut send_error = None;
    for i in 0..total {
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
            let due = paced_from + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            u64::try_from((due - plan.start).as_nanos()).unwrap_or(u64::MAX)
        } else {
            since(plan.start)
        };
        let k = usize::try_from(i % topics).unwrap_or(0);
        let topic = &plan.topics[k];
        if let Some(at) = usize::try_from(i).ok().and_then(|i| sent_at.get(i)) {
            at.store(t, Ordering::Relaxed);
        }
        payload::build(&mut data, i / topics, t, plan.size);
        let msg = match proto {
            Proto::Tidings => {
                frame.clear();
                frame.extend_from_slice(b"{\"op\":\"publish\",\"id\":");
                frame.extend_from_slice((i + 1).to_string().as_bytes());
                frame.extend_from_slice(heads[k].as_bytes());
                frame.extend_from_slice(&data);
                frame.push(b'}');
                Message::text(String::from_utf8_lossy(&frame).into_owned())
            }
            Proto::Nats => {
                nats::encode_pub(&mut frame, topic, &data);
                Message::binary(frame.clone())
            }
            Proto::Sio => {
                sio::encode_pub(&mut frame, i + 1, topic, &data);
                Message::text(String::from_utf8_lossy(&frame).into_owned())
            }
        };
        if let Err(e) = tx.lock().await.send(msg).await {
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

#[cfg(test)]
mod tests {
    use super::ok_id;

    #[test]
    fn finds_the_id_of_an_ok() {
        assert_eq!(
            ok_id(br#"{"type":"ok","id":1234,"cursor":"18f-7"}"#),
            Some(1234)
        );
        assert_eq!(ok_id(br#"{"type":"ok","id":7}"#), Some(7));
        assert_eq!(ok_id(br#"{"type":"ok"}"#), None);
        assert_eq!(ok_id(br#"{"type":"ok","id":"x"}"#), None);
    }
}
