//! Cluster mode: every node's log is one NATS JetStream stream, so one cursor means the same
//! event on every node (see `docs/CLUSTER.md`).
//!
//! The broker talks to it through the core's shared-log seam (`LogMode::External { shared:
//! true }`): a publish becomes an append to the stream, deduplicated by a `Nats-Msg-Id` made of a
//! per-process nonce and the append's id (a retry after a timeout gets the same position; a
//! restarted node never collides with its earlier self); its answer carries the stream sequence.
//! Delivery does not happen on that answer: every node reads the whole stream in order through
//! one ordered consumer (never one per client) and delivers what arrives, its own publishes
//! included, so every node delivers in the same order. Reads older than the hot window use a
//! short-lived ordered consumer from the position asked for.
//!
//! async-nats runs on tokio; so that both runtimes use it alike it runs on a current-thread tokio
//! runtime on a thread of its own (`tidings-nats`), reached through channels: the driver's
//! requests never block, and replies come back on a flume channel like the file log's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures_util::StreamExt as _;
use tidings_core::log::{Appended, LogReply, LogRequest, LogState, Logged, Page};
use tidings_core::{ErrorCode, Limits, ProtocolError, Retention};

mod codec;
mod config;
mod relay;
mod tail;
mod watch;

pub use config::ClusterConfig;

use crate::driver::{LogLink, RelayLink};

/// How long JetStream remembers a `Nats-Msg-Id` (its default): a publish retried within it is
/// stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How often the stream's bounds are read (its retention moves its first position).
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How often a lost consumer is created again, or a failed publish sent again.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// How long one request to JetStream at start-up waits before it is sent again.
const ATTEMPT_WAIT: Duration = Duration::from_secs(2);
/// Range reads running at once (a reconnect storm asks for many).
const MAX_READS: usize = 4;
/// How long a range read or the warm-up waits for the next message before giving up.
const READ_WAIT: Duration = Duration::from_secs(10);

/// Why cluster mode cannot start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

/// What [`NatsLog::open`] found, for the broker (`state`) and the start-up log line.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The log's state, for `Broker::restore_log`.
    pub state: LogState,
    /// The stream's name.
    pub stream: String,
    /// Events in the stream when this node joined.
    pub messages: u64,
    /// Whether this node created the stream.
    pub created: bool,
    /// How long connecting and warming the hot window took.
    pub took: Duration,
}

/// The link to the stream: requests go to the `tidings-nats` thread.
pub struct NatsLog {
    requests: tokio::sync::mpsc::UnboundedSender<Vec<LogRequest>>,
    relay: tokio::sync::mpsc::UnboundedSender<Vec<tidings_core::relay::RelayRequest>>,
}

impl std::fmt::Debug for NatsLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLog").finish_non_exhaustive()
    }
}

/// What the `tidings-nats` thread needs.
#[derive(Clone)]
struct Setup {
    cluster: ClusterConfig,
    retention: Retention,
    limits: Limits,
    hot_events: usize,
    hot_bytes: usize,
    node: String,
    /// Unique per process start: the first part of every `Nats-Msg-Id`.
    nonce: String,
}

impl NatsLog {
    /// Connects to NATS, creates the stream if missing (or checks and updates an existing one),
    /// and reads its newest events into the hot window, blocking until done (before the hub
    /// serves anything). The replies channel then brings every event of the stream from there
    /// on, in order, and the answers to requests.
    ///
    /// # Errors
    /// NATS unreachable within `connect_timeout`, JetStream not enabled, a stream of that name
    /// with other subjects, or a read failing: the message says which and what to do.
    pub fn open(
        cluster: &ClusterConfig,
        retention: &Retention,
        limits: &Limits,
        hot_events: usize,
        hot_bytes: usize,
    ) -> Result<(Self, Joined, LogLink), ClusterError> {
        let started = Instant::now();
        let node = cluster
            .node
            .clone()
            .unwrap_or_else(|| format!("tidings-{}", std::process::id()));
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let nonce = format!(
            "{node}-{:x}",
            clock ^ (u128::from(std::process::id()) << 64)
        );
        let setup = Setup {
            cluster: cluster.clone(),
            retention: retention.clone(),
            limits: limits.clone(),
            hot_events,
            hot_bytes,
            node,
            nonce,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (req_tx, req_rx) = tokio::sync::mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = flume::unbounded();
        let (relay_tx, relay_rx) = tokio::sync::mpsc::unbounded_channel();
        let (relayed_tx, relayed_rx) = flume::unbounded();
        std::thread::Builder::new()
            .name("tidings-nats".to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ClusterError(format!(
                            "cannot start the NATS client's runtime: {e}"
                        ))));
                        return;
                    }
                };
                let relay = (relay_rx, relayed_tx);
                rt.block_on(run(setup, ready_tx, req_rx, reply_tx, relay));
            })
            .map_err(|e| ClusterError(format!("cannot start the NATS client's thread: {e}")))?;
        let mut joined = ready_rx
            .recv()
            .map_err(|_| ClusterError("the NATS client's thread ended at start".to_owned()))??;
        joined.took = started.elapsed();
        let log = Self {
            requests: req_tx,
            relay: relay_tx,
        };
        let link = log.link(reply_rx, relayed_rx);
        Ok((log, joined, link))
    }

    fn link(
        &self,
        replies: flume::Receiver<LogReply>,
        relayed: flume::Receiver<tidings_core::relay::RelayReply>,
    ) -> LogLink {
        let (tx, relay_tx) = (self.requests.clone(), self.relay.clone());
        LogLink {
            requests: Box::new(move |reqs| {
                // Gone only when the thread ended, and then nothing can be stored anyway.
                let _ = tx.send(reqs);
            }),
            replies,
            relay: Some(RelayLink {
                requests: Box::new(move |reqs| {
                    let _ = relay_tx.send(reqs);
                }),
                replies: relayed,
            }),
        }
    }
}

/// The `tidings-nats` thread: joins the stream, then serves requests and feeds every event of
/// the stream to the broker until the hub drops its link.
async fn run(
    setup: Setup,
    ready: std::sync::mpsc::Sender<Result<Joined, ClusterError>>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<Vec<LogRequest>>,
    replies: flume::Sender<LogReply>,
    relay: (
        tokio::sync::mpsc::UnboundedReceiver<Vec<tidings_core::relay::RelayRequest>>,
        flume::Sender<tidings_core::relay::RelayReply>,
    ),
) {
    let Joining {
        client,
        js,
        stream,
        joined,
        ordered,
        back,
        tail,
    } = match join(&setup).await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let first = joined.state.first;
    let _ = ready.send(Ok(joined));
    let setup = Arc::new(setup);
    tokio::spawn(relay::run(client, setup.clone(), relay.0, relay.1));
    let signals = Signals {
        back,
        replaced: Arc::default(),
    };
    let replaced = signals.replaced.clone();
    let delivered = Arc::new(Delivered {
        head: AtomicU64::new(tail.head),
        epoch: AtomicU64::new(tail.epoch),
    });
    tokio::spawn(consume(
        setup.clone(),
        js.clone(),
        stream.clone(),
        ordered,
        signals,
        tail,
        delivered.clone(),
        replies.clone(),
    ));
    tokio::spawn(watch(
        js.clone(),
        tail::subject(&setup.cluster.stream),
        stream.clone(),
        first,
        tail.created,
        replaced.clone(),
        delivered.clone(),
        replies.clone(),
    ));
    let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(acknowledge(
        js.clone(),
        ack_rx,
        (replaced, delivered.clone()),
        replies.clone(),
    ));
    let reads = Arc::new(tokio::sync::Semaphore::new(MAX_READS));
    let prefix = setup.cluster.prefix();
    while let Some(batch) = requests.recv().await {
        for request in batch {
            match request {
                LogRequest::Append { id, event } => {
                    let (subject, headers, body) = codec::encode(&prefix, &event);
                    let message = PublishMessage::build()
                        .payload(body)
                        .headers(headers)
                        .message_id(format!("{}-{}", setup.nonce, id.0));
                    let before = (
                        delivered.head.load(Ordering::Acquire),
                        delivered.epoch.load(Ordering::Acquire),
                    );
                    let sent = js.send_publish(subject.clone(), message.clone()).await;
                    let deadline = Instant::now() + setup.cluster.publish_timeout;
                    let _ = ack_tx.send(Publishing {
                        id,
                        subject,
                        message,
                        sent,
                        deadline,
                        before,
                    });
                }
                LogRequest::Read {
                    read,
                    from,
                    max_events,
                } => {
                    let (setup, stream, replies, reads) = (
                        setup.clone(),
                        stream.clone(),
                        replies.clone(),
                        reads.clone(),
                    );
                    tokio::spawn(async move {
                        let _permit = reads.acquire().await;
                        let result = read_range(&setup, &stream, from, max_events).await;
                        let _ = replies.send(LogReply::Page { read, result });
                    });
                }
                _ => {}
            }
        }
    }
}

/// Connects, gets or creates the stream, and warms the hot window with its newest events; the
/// ordered consumer that read them goes on with the live ones.
async fn join(setup: &Setup) -> Result<Joining, ClusterError> {
    let cluster = &setup.cluster;
    let url = cluster.nats.clone().unwrap_or_default();
    let servers: Vec<String> = url.split(',').map(|s| s.trim().to_owned()).collect();
    let node = setup.node.clone();
    // After a lost connection the server may have lost the consumer too (its state is in
    // memory): the consumer starts again at once instead of after missed heartbeats.
    let back = Arc::new(tokio::sync::Notify::new());
    let (lost, notify) = (Arc::new(AtomicBool::new(false)), back.clone());
    let options = async_nats::ConnectOptions::new()
        .name(format!("tidings {node}"))
        .connection_timeout(cluster.connect_timeout)
        .event_callback(move |event| {
            let (node, lost, notify) = (node.clone(), lost.clone(), notify.clone());
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        lost.store(true, Ordering::Relaxed);
                        tracing::warn!(
                            node,
                            "lost the connection to NATS: publishes wait (and fail after \
                             cluster.publish_timeout), deliveries pause until it is back"
                        );
                    }
                    async_nats::Event::Connected => {
                        tracing::info!(node, "connected to NATS");
                        if lost.swap(false, Ordering::Relaxed) {
                            notify.notify_one();
                        }
                    }
                    other => tracing::info!(node, "NATS: {other}"),
                }
            }
        });
    let client = tokio::time::timeout(cluster.connect_timeout, options.connect(servers.as_slice()))
        .await
        .map_err(|_| {
            ClusterError(format!(
                "no answer from NATS at {url} within {:?} (cluster.connect_timeout): is \
                 nats-server running there?",
                cluster.connect_timeout
            ))
        })?
        .map_err(|e| ClusterError(format!("cannot connect to NATS at {url}: {e}")))?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout((cluster.publish_timeout / 3).max(Duration::from_millis(500)));
    let want = stream_config(setup);
    // A NATS cluster that is still electing its JetStream leader answers with errors for a
    // while: keep asking until the deadline.
    // A NATS cluster still electing its JetStream leaders (of the cluster, then of a new
    // stream) leaves requests unanswered or refused for a while: ask again until the deadline.
    let deadline = Instant::now() + cluster.connect_timeout;
    let failed = |what: &str, e: String| {
        ClusterError(format!(
            "cannot {what} the JetStream stream {:?} at {url} within {:?} \
             (cluster.connect_timeout): {e} (is JetStream enabled: nats-server -js? is a NATS \
             cluster large enough for cluster.replicas = {}?)",
            cluster.stream, cluster.connect_timeout, cluster.replicas
        ))
    };
    let (stream, created) = until(deadline, || get_or_create(&js, &want))
        .await
        .map_err(|e| failed("get or create", e))?;
    let info = until(deadline, || async {
        stream.get_info().await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| failed("read the state of", e))?;
    // The epoch markers' subject is added by the first node that needs it (`tail::mark`).
    let marked: Vec<String> = want
        .subjects
        .iter()
        .cloned()
        .chain([tail::subject(&cluster.stream)])
        .collect();
    if info.config.subjects != want.subjects && info.config.subjects != marked {
        return Err(ClusterError(format!(
            "the JetStream stream {:?} exists with subjects {:?}; tidings needs exactly {:?} \
             (or {:?}): name another stream (cluster.stream) or delete that one",
            cluster.stream, info.config.subjects, want.subjects, marked
        )));
    }
    let limits_differ = (
        info.config.max_messages,
        info.config.max_bytes,
        info.config.max_age,
    ) != (want.max_messages, want.max_bytes, want.max_age);
    if !created && limits_differ {
        // `[retention]` is the one definition of the stream's bounds.
        let update = stream::Config {
            num_replicas: info.config.num_replicas,
            subjects: info.config.subjects.clone(),
            ..want
        };
        js.update_stream(update)
            .await
            .map_err(|e| ClusterError(format!("cannot apply [retention] to the stream: {e}")))?;
        tracing::info!(
            stream = cluster.stream,
            "the stream's retention follows [retention] now"
        );
    }
    let born = epoch_of(&info);
    let (state, ordered, messages, head_ms) = until(deadline, || async {
        let epoch = tail::epoch(&stream, &info, &tail::subject(&cluster.stream), born).await?;
        warm(setup, &stream, &info, epoch).await
    })
    .await
    .map_err(|e| failed("read", e))?;
    let tail = Tail {
        created: born,
        epoch: state.epoch,
        head: state.head,
        head_ms,
    };
    let joined = Joined {
        state,
        stream: cluster.stream.clone(),
        messages,
        created,
        took: Duration::ZERO,
    };
    Ok(Joining {
        client,
        js,
        stream,
        joined,
        ordered,
        back,
        tail,
    })
}

/// A stream's creation time in milliseconds: its epoch until an epoch marker (`tail`) gives it
/// another (a recreated stream has another creation time).
fn epoch_of(info: &stream::Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(1)
        .max(1)
}

/// Reads the stream's newest events (the hot window) into the log's state, with `epoch`, and
/// the consumer that read them, to go on with the live ones; how many messages the stream
/// holds, and the time of the last one read.
async fn warm(
    setup: &Setup,
    stream: &stream::Stream,
    info: &stream::Info,
    epoch: u64,
) -> Result<(LogState, consumer::pull::Ordered, u64, Option<u64>), String> {
    let (first, last, messages) = (
        info.state.first_sequence,
        info.state.last_sequence,
        info.state.messages,
    );
    let start = if messages == 0 {
        last + 1
    } else {
        let hot = u64::try_from(setup.hot_events.max(1)).unwrap_or(u64::MAX);
        first.max(last.saturating_sub(hot - 1))
    };
    let mut ordered = ordered_from(stream, start)
        .await
        .map_err(|e| e.to_string())?;
    let mut recent: VecDeque<Logged> = VecDeque::new();
    let (mut bytes, mut head, mut head_ms) = (0usize, last, None);
    while messages > 0 && head_of(&recent).is_none_or(|h| h < last) {
        let Some((seq, time_ms, logged)) = next_message(&mut ordered, setup)
            .await
            .map_err(|e| format!("cannot warm the hot window from the stream: {e}"))?
        else {
            break;
        };
        head = head.max(seq);
        if seq == head {
            head_ms = Some(time_ms);
        }
        if let Some(logged) = logged {
            bytes += logged.event.payload.len() + logged.event.topic.as_str().len();
            recent.push_back(logged);
            while recent.len() > setup.hot_events || bytes > setup.hot_bytes {
                let Some(old) = recent.pop_front() else { break };
                bytes -= old.event.payload.len() + old.event.topic.as_str().len();
            }
        }
        // The last message may be no event (an epoch marker): nothing more comes.
        if seq >= last {
            break;
        }
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let state = LogState {
        epoch,
        first: if messages == 0 { head + 1 } else { first },
        head,
        recovered: head,
        recent: recent.into(),
        now_ms,
    };
    Ok((state, ordered, messages, head_ms))
}

/// What [`join`] leaves running.
struct Joining {
    /// The connection, for the relay (core NATS).
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    joined: Joined,
    /// The consumer that warmed the hot window, to go on with the live events.
    ordered: consumer::pull::Ordered,
    /// Notified when the connection to NATS is back after a loss.
    back: Arc<tokio::sync::Notify>,
    /// Where the consumer starts.
    tail: Tail,
}

/// What the consumer has delivered: the stream it reads (its creation time), the epoch, the
/// last position and the time it was stored (to notice a stream that lost its tail).
#[derive(Debug, Clone, Copy)]
struct Tail {
    created: u64,
    epoch: u64,
    head: u64,
    head_ms: Option<u64>,
}

/// The consumer's head and epoch, for [`watch`] and [`acknowledge`].
#[derive(Debug)]
struct Delivered {
    head: AtomicU64,
    epoch: AtomicU64,
}

fn head_of(recent: &VecDeque<Logged>) -> Option<u64> {
    recent.back().map(|l| l.seq)
}

/// `attempt` until it succeeds (each try bounded by [`ATTEMPT_WAIT`]), or its last error once
/// `deadline` has passed.
async fn until<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    loop {
        let tried = tokio::time::timeout(ATTEMPT_WAIT, attempt()).await;
        match tried.unwrap_or_else(|_| Err(format!("no answer within {ATTEMPT_WAIT:?}"))) {
            Ok(done) => return Ok(done),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("JetStream is not ready yet: {e}");
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The stream, and whether this call created it.
async fn get_or_create(
    js: &jetstream::Context,
    want: &stream::Config,
) -> Result<(stream::Stream, bool), String> {
    match js.get_stream(&want.name).await {
        Ok(stream) => Ok((stream, false)),
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            match js.create_stream(want.clone()).await {
                Ok(stream) => Ok((stream, true)),
                // Another node may have created it at the same moment.
                Err(e) => match js.get_stream(&want.name).await {
                    Ok(stream) => Ok((stream, false)),
                    Err(_) => Err(e.to_string()),
                },
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The stream as `[retention]` and `[cluster]` describe it.
fn stream_config(setup: &Setup) -> stream::Config {
    let r = &setup.retention;
    stream::Config {
        name: setup.cluster.stream.clone(),
        subjects: vec![format!("{}.>", setup.cluster.prefix())],
        max_messages: i64::try_from(r.max_events).unwrap_or(-1),
        max_bytes: i64::try_from(r.max_bytes).unwrap_or(-1),
        max_age: r.max_age,
        storage: stream::StorageType::File,
        num_replicas: setup.cluster.replicas,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW,
        // Topic, headers and payload: the payload alone is bounded by max_frame_bytes.
        max_message_size: i32::try_from(setup.limits.max_frame_bytes.saturating_add(64 << 10))
            .unwrap_or(i32::MAX),
        ..stream::Config::default()
    }
}

/// An ordered consumer of the whole stream from `start` (ephemeral: the server forgets it when
/// nobody reads it).
async fn ordered_from(
    stream: &stream::Stream,
    start: u64,
) -> Result<consumer::pull::Ordered, async_nats::Error> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// The next message of an ordered consumer: its position, the time it was stored, and its
/// event unless it holds none (then it is logged, unless it is an epoch marker). `None` when the
/// consumer ended.
async fn next_message(
    ordered: &mut consumer::pull::Ordered,
    setup: &Setup,
) -> Result<Option<(u64, u64, Option<Logged>)>, String> {
    let message = match tokio::time::timeout(READ_WAIT, ordered.next()).await {
        Err(_) => return Err(format!("no message within {READ_WAIT:?}")),
        Ok(None) => return Ok(None),
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(Some(Ok(m))) => m,
    };
    let info = message.info().map_err(|e| e.to_string())?;
    let seq = info.stream_sequence;
    let time_ms = tail::time_ms(info.published.unix_timestamp_nanos());
    if message.subject.as_str() == tail::subject(&setup.cluster.stream) {
        return Ok(Some((seq, time_ms, None)));
    }
    let logged = codec::decode(
        &setup.cluster.prefix(),
        &setup.limits,
        seq,
        time_ms,
        message.subject.as_str(),
        message.headers.as_ref(),
        message.payload.clone(),
    );
    match logged {
        Ok(logged) => Ok(Some((seq, time_ms, Some(logged)))),
        Err(why) => {
            tracing::warn!(seq, subject = %message.subject, "a message of the stream is not an event, skipped: {why}");
            Ok(Some((seq, time_ms, None)))
        }
    }
}

/// Feeds every event of the stream to the broker, in order, from `head + 1`; after a lost
/// connection (`back`) or a failed read, a new consumer starts right after the last event
/// delivered. When the stream is another log now (`replaced`, from [`watch`] or
/// [`acknowledge`], or seen when a consumer starts): deleted and created again, cut back
/// before what this node delivered, or given a new epoch by a marker read here, the node takes
/// it as a new log: it reads its hot window and tells the broker (`LogReply::Replaced`), then
/// goes on with its events.
#[allow(clippy::too_many_arguments)]
async fn consume(
    setup: Arc<Setup>,
    js: jetstream::Context,
    mut stream: stream::Stream,
    mut ordered: consumer::pull::Ordered,
    signals: Signals,
    mut tail: Tail,
    delivered: Arc<Delivered>,
    replies: flume::Sender<LogReply>,
) {
    let prefix = setup.cluster.prefix();
    let marker = tail::subject(&setup.cluster.stream);
    // An epoch marker was read: switch before anything after it is delivered.
    let mut switch = false;
    loop {
        let next = if std::mem::take(&mut switch) {
            None
        } else {
            tokio::select! {
                next = ordered.next() => Some(next),
                () = signals.back.notified() => None,
                () = signals.replaced.notified() => None,
            }
        };
        let message = match next {
            Some(Some(Ok(m))) => m,
            failed => {
                if let Some(Some(Err(e))) = failed {
                    tracing::warn!("reading the stream: {e}");
                }
                for attempt in 1u64.. {
                    match restart(&setup, &js, &mut stream, tail).await {
                        Ok(Restarted::Same(o)) => {
                            ordered = o;
                            break;
                        }
                        Ok(Restarted::Replaced {
                            tail: t,
                            state,
                            ordered: o,
                            why,
                        }) => {
                            tracing::error!(
                                stream = setup.cluster.stream,
                                epoch = format!("{:x}", t.epoch),
                                "{why}; this node takes it as a new log (clients get a gap \
                                 notice with reason epoch)"
                            );
                            (tail, ordered) = (t, o);
                            if replies.send(LogReply::Replaced(state)).is_err() {
                                return;
                            }
                            break;
                        }
                        // Every 5 s: NATS coming back is quiet, a lasting failure is not.
                        Err(e) if attempt % 25 == 0 => {
                            tracing::warn!("cannot read the stream, deliveries wait: {e}");
                            tokio::time::sleep(RETRY_EVERY).await;
                        }
                        Err(e) => {
                            tracing::debug!("cannot read the stream yet: {e}");
                            tokio::time::sleep(RETRY_EVERY).await;
                        }
                    }
                }
                // After `Replaced` went out: an append waiting for it is answered after it.
                delivered.head.store(tail.head, Ordering::Release);
                delivered.epoch.store(tail.epoch, Ordering::Release);
                continue;
            }
        };
        let Ok(info) = message.info() else { continue };
        let seq = info.stream_sequence;
        if seq <= tail.head {
            continue;
        }
        let time_ms = tail::time_ms(info.published.unix_timestamp_nanos());
        (tail.head, tail.head_ms) = (seq, Some(time_ms));
        delivered.head.store(seq, Ordering::Release);
        let reply = if message.subject.as_str() == marker {
            switch =
                tail::parse(seq, time_ms, &message.payload).is_some_and(|m| m.epoch != tail.epoch);
            LogReply::Passed { seq }
        } else {
            match codec::decode(
                &prefix,
                &setup.limits,
                seq,
                time_ms,
                message.subject.as_str(),
                message.headers.as_ref(),
                message.payload.clone(),
            ) {
                Ok(logged) => LogReply::Committed(logged),
                Err(why) => {
                    tracing::warn!(seq, subject = %message.subject, "a message of the stream is not an event, skipped: {why}");
                    LogReply::Passed { seq }
                }
            }
        };
        if replies.send(reply).is_err() {
            return; // the hub is gone
        }
    }
}

/// What wakes the consumer besides its messages.
#[derive(Clone, Default)]
struct Signals {
    /// The connection to NATS is back after a loss.
    back: Arc<tokio::sync::Notify>,
    /// The stream may be another log now ([`watch`], [`acknowledge`]).
    replaced: Arc<tokio::sync::Notify>,
}

/// A new consumer, after `head`.
enum Restarted {
    /// Of the same log.
    Same(consumer::pull::Ordered),
    /// Of another log (why, for the log line): its state and the consumer that read its hot
    /// window.
    Replaced {
        tail: Tail,
        state: LogState,
        ordered: consumer::pull::Ordered,
        why: &'static str,
    },
}

/// A new consumer after what `tail` delivered, or the stream taken as a new log when it is not
/// the log `tail` read any more.
async fn restart(
    setup: &Setup,
    js: &jetstream::Context,
    stream: &mut stream::Stream,
    tail: Tail,
) -> Result<Restarted, String> {
    let subject = tail::subject(&setup.cluster.stream);
    let mut info = stream.get_info().await.map_err(|e| e.to_string())?;
    let created = epoch_of(&info);
    let latest = tail::latest(stream, &info, &subject).await?;
    let (epoch, why) = if created != tail.created {
        (
            latest.map_or(created, |m| m.epoch),
            "the JetStream stream was deleted and created again: its positions name other \
             events now",
        )
    } else if info.state.last_sequence < tail.head
        || tail::head_replaced(stream, &info, tail.head, tail.head_ms).await?
    {
        let epoch = match latest {
            // Another node noticed this loss first.
            Some(m) if m.replaces == tail.epoch && m.epoch != tail.epoch => m.epoch,
            _ => {
                tail::mark(js, stream, &subject, created, tail.epoch)
                    .await?
                    .epoch
            }
        };
        info = stream.get_info().await.map_err(|e| e.to_string())?;
        (
            epoch,
            "the JetStream stream lost the end of what this node delivered (a NATS server \
             with replicas = 1 came back with an older store): its next positions would \
             name other events",
        )
    } else if let Some(m) = latest.filter(|m| m.epoch != tail.epoch) {
        // Read by the consumer, or still ahead of it: nothing after it is delivered in the
        // old epoch.
        (
            m.epoch,
            "the JetStream stream has a new epoch (another node found it shorter than what \
             it delivered)",
        )
    } else {
        let ordered = ordered_from(stream, tail.head + 1)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Restarted::Same(ordered));
    };
    let (state, ordered, _, head_ms) = warm(setup, stream, &info, epoch).await?;
    let tail = Tail {
        created,
        epoch,
        head: state.head,
        head_ms,
    };
    Ok(Restarted::Replaced {
        tail,
        state,
        ordered,
        why,
    })
}

/// Reports the stream's retention moving its first position, and tells the consumer when the
/// stream may be another log: created again (another creation time), or ending before what
/// the consumer delivered (it lost its tail). Keeps the latest epoch marker from retention.
#[allow(clippy::too_many_arguments)]
async fn watch(
    js: jetstream::Context,
    subject: String,
    mut stream: stream::Stream,
    mut first: u64,
    mut created: u64,
    replaced: Arc<tokio::sync::Notify>,
    delivered: Arc<Delivered>,
    replies: flume::Sender<LogReply>,
) {
    let mut marker: Option<tail::Marker> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        // Read before the stream's state, which then holds at least that much.
        let head = delivered.head.load(Ordering::Acquire);
        let info = match stream.info().await {
            Ok(info) => info.clone(),
            Err(e) => {
                tracing::debug!("cannot read the stream's state: {e}");
                continue;
            }
        };
        if epoch_of(&info) != created {
            created = epoch_of(&info);
            first = info.state.first_sequence;
            replaced.notify_one();
            continue;
        }
        if info.state.last_sequence < head {
            replaced.notify_one();
        }
        let epoch = delivered.epoch.load(Ordering::Acquire);
        if epoch != created {
            if marker.is_none_or(|m| m.epoch != epoch) {
                marker = tail::latest(&stream, &info, &subject)
                    .await
                    .unwrap_or_default()
                    .filter(|m| m.epoch == epoch);
            }
            if let Some(m) = marker {
                match tail::keep(&js, &info, &subject, m).await {
                    Ok(kept) => marker = Some(kept),
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        if info.state.first_sequence > first {
            first = info.state.first_sequence;
            if replies.send(LogReply::Trimmed { first }).is_err() {
                return;
            }
        }
    }
}

/// An append sent to the stream and not yet answered.
struct Publishing {
    id: tidings_core::log::AppendId,
    subject: String,
    message: PublishMessage,
    sent: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
    deadline: Instant,
    /// The consumer's head and epoch when it was first sent.
    before: (u64, u64),
}

/// Answers appends in the order they were asked. A failed attempt is sent again with the same
/// `Nats-Msg-Id` until the deadline (so an append stored once but not acknowledged is not stored
/// twice), then answered `unavailable`. An append stored at a position this node had already
/// delivered (the stream lost its tail) is answered once the consumer took the new epoch, so
/// that its cursor names it.
async fn acknowledge(
    js: jetstream::Context,
    mut pending: tokio::sync::mpsc::UnboundedReceiver<Publishing>,
    (replaced, delivered): (Arc<tokio::sync::Notify>, Arc<Delivered>),
    replies: flume::Sender<LogReply>,
) {
    while let Some(p) = pending.recv().await {
        let Publishing {
            id,
            subject,
            message,
            mut sent,
            deadline,
            before: (head, epoch),
        } = p;
        let result = loop {
            let error = match sent {
                Ok(ack) => match ack.await {
                    Ok(ack) if ack.sequence > head => {
                        break Ok(Appended {
                            seq: ack.sequence,
                            first: 0,
                        });
                    }
                    Ok(ack) => {
                        replaced.notify_one();
                        while delivered.epoch.load(Ordering::Acquire) == epoch
                            && Instant::now() < deadline
                        {
                            tokio::time::sleep(RETRY_EVERY).await;
                        }
                        if delivered.epoch.load(Ordering::Acquire) != epoch {
                            break Ok(Appended {
                                seq: ack.sequence,
                                first: 0,
                            });
                        }
                        break Err(ProtocolError::new(
                            ErrorCode::Unavailable,
                            "the cluster's stream lost events and stored this one at a position \
                             given before; it may be delivered under a new epoch: resume to see it"
                                .to_owned(),
                        ));
                    }
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                break Err(ProtocolError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the cluster's stream did not store the event in time ({error}); nothing \
                         was delivered, retry later"
                    ),
                ));
            }
            tokio::time::sleep(RETRY_EVERY).await;
            sent = js.send_publish(subject.clone(), message.clone()).await;
        };
        if replies.send(LogReply::Appended { id, result }).is_err() {
            return;
        }
    }
}

/// Events from `from`, at most `max_events`, read by a short-lived ordered consumer.
async fn read_range(
    setup: &Setup,
    stream: &stream::Stream,
    from: u64,
    max_events: usize,
) -> Result<Page, ProtocolError> {
    let unavailable = |e: String| {
        ProtocolError::new(
            ErrorCode::Unavailable,
            format!("cannot read the cluster's stream: {e}; reconnect and resume later"),
        )
    };
    let info = stream
        .get_info()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    if info.state.messages == 0 || from > last {
        return Ok(Page {
            first,
            events: Vec::new(),
            done: true,
        });
    }
    let mut ordered = ordered_from(stream, from.max(first))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut events = Vec::new();
    let mut reached = from.saturating_sub(1);
    while events.len() < max_events && reached < last {
        match next_message(&mut ordered, setup).await {
            Ok(Some((seq, _, logged))) => {
                reached = seq;
                events.extend(logged);
            }
            Ok(None) => break,
            Err(e) => return Err(unavailable(e)),
        }
    }
    Ok(Page {
        first,
        events,
        done: reached >= last,
    })
}
