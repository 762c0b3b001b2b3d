//! `fanout`: one publisher, N subscribers of one topic.
//!
//! 1. Start the server (or attach to `--url`); tidings with retention raised to hold every
//!    message, so a subscriber that falls behind is caught up from history instead of losing
//!    messages (the peers have no such history: what they drop is counted as lost).
//! 2. Open N subscribers (at most 64 connecting at once) and wait until every one has its
//!    subscription confirmed.
//! 3. One publisher connection sends M payloads (`payload.rs`): paced at `--rate`, or as fast as
//!    the server answers with at most `--window` publishes unanswered. With `--spread` ("many
//!    topics") every subscriber has a topic of its own and M payloads are sent to each, the
//!    topics taken in turn.
//! 4. Each subscriber checks order and loss and records the latency of every payload; it stops
//!    at the last sequence number. Once the publisher has its answers, subscribers get `--drain`
//!    seconds more, then the rest are aborted; everything is bounded by `--timeout`.
//!
//! deliveries/s = payloads received by all subscribers ÷ (last delivery − first send).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::check::{SeqCheck, merged_latencies};
use super::publisher::{self, PublishPlan, PublishStats};
use super::report::Report;
use super::server::{ProcStats, Server, ServerArgs, cpu_hz, proc_stats};
use super::{Target, check_fd_limit, open_with_retry, runtime, sse, wire_bytes};

/// Connections being opened at once.
const CONNECT_PARALLEL: usize = 64;

/// How the publisher reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PublishVia {
    /// Native `publish` frames on one `/ws` connection, with request ids
    Ws,
    /// `POST /publish`, one request at a time (for servers without `/ws`)
    Http,
}

/// `fanout` options.
#[derive(Debug, clap::Args)]
pub(crate) struct FanoutArgs {
    /// The system and protocol measured
    #[arg(long, value_enum, default_value = "tidings")]
    pub target: Target,
    /// Subscribers of the topic
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Payload bytes per message
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Messages published (per topic with `--spread`)
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Many topics: every subscriber subscribes to a topic of its own (`TOPIC.<i>`), and the
    /// publisher sends `--messages` to each, in turn
    #[arg(long)]
    pub spread: bool,
    /// Publish this many messages per second, all topics together (default: as fast as the
    /// server answers)
    #[arg(long, value_name = "MSGS_PER_S")]
    pub rate: Option<f64>,
    /// Publishes awaiting the server's answer at most
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// The topic
    #[arg(long, default_value = "bench.fanout")]
    pub topic: String,
    /// How the publisher reaches the server
    #[arg(long, value_enum, default_value = "ws")]
    pub publish: PublishVia,
    /// Seconds the whole run may take; then it reports what it has and fails
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Seconds subscribers may take to receive the rest after the publisher is done
    #[arg(long, default_value_t = 10)]
    pub drain: u64,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs `fanout`; false if the run failed.
pub(crate) fn main(args: &FanoutArgs) -> Result<bool, String> {
    if args.messages == 0 || args.subscribers == 0 {
        return Err("--messages and --subscribers must be at least 1".into());
    }
    check_fd_limit(args.subscribers + 1)?;
    if args.publish == PublishVia::Http && (!args.target.is_tidings() || args.spread) {
        return Err("--publish http is for tidings, one topic".into());
    }
    let topics = if args.spread {
        args.subscribers as u64
    } else {
        1
    };
    let retained_bytes =
        topics * args.messages * (args.size as u64 + args.topic.len() as u64 + 8) * 2;
    let limits = vec![
        format!(
            "--retention-events={}",
            (topics * args.messages).max(10_000)
        ),
        format!("--retention-bytes={}", retained_bytes.max(64 << 20)),
        "--retention-age=1h".to_owned(),
        format!(
            "--max-connections={}",
            (args.subscribers + 100).max(100_000)
        ),
    ];
    let limits = if args.target.is_tidings() {
        limits
    } else {
        Vec::new()
    };
    let mut server = Server::start(args.target, &args.server, &limits)?;
    eprintln!(
        "server {} (pid {}), {} {} subscribers, {} messages of {} bytes",
        server.addr,
        server.pid.map_or("?".into(), |p| p.to_string()),
        args.subscribers,
        args.target.name(),
        args.messages,
        args.size,
    );
    let rt = runtime(args.server.threads)?;
    let (report, ok) = rt.block_on(run(args, &mut server));
    let title = format!(
        "fanout: {} ({}), {} subscribers{}, {} x {} B{}",
        args.target.name(),
        args.server.runtime,
        args.subscribers,
        if args.spread { " (a topic each)" } else { "" },
        args.messages,
        args.size,
        args.rate
            .map(|r| format!(", {r} msgs/s"))
            .unwrap_or_default()
    );
    report.print(&title, args.server.json);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(ok)
}

#[allow(clippy::too_many_lines)]
async fn run(args: &FanoutArgs, server: &mut Server) -> (Report, bool) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout);
    let n = args.subscribers;
    let addr = server.addr;
    let addrs = server.addrs.clone();
    let (stop_tx, stop) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(CONNECT_PARALLEL));
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut subscribers = JoinSet::new();
    let checks: Vec<Arc<Mutex<SeqCheck>>> = (0..n)
        .map(|_| Arc::new(Mutex::new(SeqCheck::new(args.messages, start))))
        .collect();
    let topic_of = |i: usize| {
        if args.spread {
            format!("{}.{i}", args.topic)
        } else {
            args.topic.clone()
        }
    };
    for (i, check) in checks.iter().enumerate() {
        let (connecting, ready, failed, first_error) = (
            Arc::clone(&connecting),
            Arc::clone(&ready),
            Arc::clone(&failed),
            Arc::clone(&first_error),
        );
        let (target, topic, check) = (args.target, topic_of(i), Arc::clone(check));
        // Several nodes (`--url` repeated): subscribers are spread over them in turn.
        let addr = addrs[i % addrs.len()];
        subscribers.spawn(async move {
            let permit = connecting.acquire().await;
            let conn = open_with_retry(target, addr, Some(&topic)).await;
            drop(permit);
            match conn {
                Ok(conn) => {
                    ready.fetch_add(1, Ordering::Relaxed);
                    conn.receive(&check).await;
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert(e.clone());
                    check.lock().unwrap_or_else(PoisonError::into_inner).error = Some(e);
                }
            }
        });
    }

    // Wait until every subscription is confirmed.
    let mut timed_out = false;
    let mut last_progress = Instant::now();
    loop {
        let (r, f) = (
            ready.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        if r + f == n {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!("  {r}/{n} subscribed");
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_s = start.elapsed().as_secs_f64();
    let subscribed = ready.load(Ordering::Relaxed);
    eprintln!("  {subscribed}/{n} subscribed in {connect_s:.1} s");
    let server_before = server.stats();
    let nats_before = server.nats_stats();
    let client_before = proc_stats("self");
    server.start_sampling();

    // Publish, and wait for the subscribers.
    let wire_before = wire_bytes();
    let plan = PublishPlan {
        topics: if args.spread {
            (0..n).map(topic_of).collect()
        } else {
            vec![args.topic.clone()]
        },
        messages: args.messages,
        size: args.size,
        rate: args.rate,
        window: args.window,
        start,
    };
    let can_publish = subscribed == n && !timed_out;
    let mut publisher = can_publish.then(|| {
        let stop = stop.clone();
        match args.publish {
            PublishVia::Ws => tokio::spawn(publisher::publish(args.target, addr, plan, stop)),
            PublishVia::Http => {
                tokio::spawn(async move { sse::publish_all_http(addr, &plan, &stop).await })
            }
        }
    });
    let mut published: Option<Result<PublishStats, String>> = None;
    let mut finished = 0;
    let mut limit = deadline;
    let mut last_report = Instant::now();
    while can_publish && (finished < n || publisher.is_some()) {
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!("  {finished}/{n} subscribers done");
            last_report = Instant::now();
        }
        tokio::select! {
            r = async { publisher.as_mut().expect("guarded").await }, if publisher.is_some() => {
                publisher = None;
                published = Some(r.unwrap_or_else(|e| Err(format!("publisher task: {e}"))));
                limit = limit.min(Instant::now() + Duration::from_secs(args.drain));
            }
            j = subscribers.join_next(), if !subscribers.is_empty() => {
                if j.is_some() {
                    finished += 1;
                }
            }
            () = tokio::time::sleep_until(limit.into()) => {
                timed_out = Instant::now() >= deadline;
                break;
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    let server_after = server.stats();
    let nats_after = server.nats_stats();
    let client_after = proc_stats("self");
    let wire = wire_bytes() - wire_before;
    let peak_rss = server.peak_rss();
    let _ = stop_tx.send(true);
    subscribers.abort_all();
    while subscribers.join_next().await.is_some() {}
    if let Some(p) = publisher.take() {
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(5), p).await {
            published = Some(r.unwrap_or_else(|e| Err(format!("publisher task: {e}"))));
        }
    }

    // Totals.
    let (mut deliveries, mut lost, mut reordered, mut gaps, mut sub_errors) = (0, 0, 0, 0, 0);
    let mut last_ns = 0;
    let mut sub_error = None;
    for check in &checks {
        let mut check = check.lock().unwrap_or_else(PoisonError::into_inner);
        check.finish();
        deliveries += check.received;
        lost += check.lost;
        reordered += check.reordered;
        gaps += check.gaps;
        last_ns = last_ns.max(check.last_ns);
        if let Some(e) = &check.error {
            sub_errors += 1;
            sub_error.get_or_insert_with(|| e.clone());
        }
    }
    let (pub_stats, pub_error) = match published {
        Some(Ok(s)) => (s, None),
        Some(Err(e)) => (PublishStats::default(), Some(e)),
        None => (PublishStats::default(), None),
    };
    #[allow(clippy::cast_precision_loss)]
    let window_s = last_ns.saturating_sub(pub_stats.first_send_ns) as f64 / 1e9;
    #[allow(clippy::cast_precision_loss)]
    let per_s = |count: u64| {
        if window_s > 0.0 {
            count as f64 / window_s
        } else {
            0.0
        }
    };
    let h = merged_latencies();
    #[allow(clippy::cast_precision_loss)]
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let cpu = |before: Option<ProcStats>, after: Option<ProcStats>| match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu_s - b.cpu_s),
        _ => None,
    };
    let server_cpu = cpu(server_before, server_after);
    let nats_cpu = cpu(nats_before, nats_after);
    let client_cpu = cpu(client_before, client_after);
    #[allow(clippy::cast_precision_loss)]
    let per_delivery = |cpu: Option<f64>| {
        cpu.filter(|_| deliveries > 0)
            .map(|c| c * 1e9 / deliveries as f64)
    };

    let mut r = Report::default();
    r.put("scenario", "fanout");
    r.put("target", args.target.name());
    r.put("runtime", args.server.runtime.as_str());
    r.put("subscribers", n as u64);
    r.put("topics", if args.spread { n as u64 } else { 1 });
    r.put("size", args.size as u64);
    r.put("messages", args.messages);
    r.put_opt("rate", args.rate);
    r.put("window", args.window as u64);
    r.put("deliveries", deliveries);
    r.put_f("deliveries_per_sec", per_s(deliveries));
    r.put_f("publishes_per_sec", per_s(pub_stats.acked));
    r.put_f("wire_bytes_per_sec", per_s(wire));
    r.put_r("duration_s", window_s, 3);
    r.put_f("p50_us", us(0.5));
    r.put_f("p90_us", us(0.9));
    r.put_f("p99_us", us(0.99));
    r.put_f("p999_us", us(0.999));
    #[allow(clippy::cast_precision_loss)]
    r.put_f("max_us", h.max() as f64 / 1e3);
    // Publish-to-answer (the publisher's `ok`, or the HTTP answer), tidings only.
    #[allow(clippy::cast_precision_loss)]
    let answer_us = |q: f64| {
        pub_stats
            .answers
            .as_ref()
            .filter(|h| !h.is_empty())
            .map(|h| (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0)
    };
    r.put_opt("answer_p50_us", answer_us(0.5));
    r.put_opt("answer_p99_us", answer_us(0.99));
    r.put_opt("answer_p999_us", answer_us(0.999));
    r.put_opt("answer_max_us", answer_us(1.0));
    r.put("lost", lost);
    r.put("reordered", reordered);
    r.put("gaps", gaps);
    r.put("subscriber_errors", sub_errors);
    r.put("publish_acked", pub_stats.acked);
    r.put("publish_errors", pub_stats.errors);
    r.put_opt("server_rss_bytes", peak_rss);
    r.put_opt(
        "server_rss_subscribed_bytes",
        server_before.map(|s| s.rss_bytes),
    );
    r.put_opt("server_rss_end_bytes", server_after.map(|s| s.rss_bytes));
    r.put_opt(
        "server_cpu_s",
        server_cpu.map(|c| (c * 100.0).round() / 100.0),
    );
    r.put_opt(
        "server_cpu_ns_per_delivery",
        per_delivery(server_cpu).map(f64::round),
    );
    r.put_opt("cpu_hz", cpu_hz().map(f64::round));
    #[allow(clippy::cast_precision_loss)]
    r.put_opt(
        "server_cycles_per_delivery",
        per_delivery(server_cpu)
            .zip(cpu_hz())
            .map(|(ns, hz)| (ns * hz / 1e9).round()),
    );
    r.put("nodes", server.addrs.len() as u64);
    r.put_opt("nats_cpu_s", nats_cpu.map(|c| (c * 100.0).round() / 100.0));
    r.put_opt(
        "nats_cpu_ns_per_delivery",
        per_delivery(nats_cpu).map(f64::round),
    );
    r.put_opt(
        "client_cpu_s",
        client_cpu.map(|c| (c * 100.0).round() / 100.0),
    );
    r.put_opt(
        "client_cpu_ns_per_delivery",
        per_delivery(client_cpu).map(f64::round),
    );
    r.put_r("connect_s", connect_s, 2);
    r.put("timed_out", timed_out);

    let mut ok = !timed_out && can_publish && pub_error.is_none();
    if let Some(e) = first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        eprintln!(
            "tidings-bench: {} subscribers could not connect; first: {e}",
            n - subscribed
        );
        ok = false;
    }
    if let Some(e) = &pub_error {
        eprintln!("tidings-bench: publisher failed: {e}");
    }
    if let Some(e) = &pub_stats.first_error {
        eprintln!(
            "tidings-bench: {} publishes refused; first: {e}",
            pub_stats.errors
        );
    }
    if let Some(e) = sub_error {
        eprintln!("tidings-bench: {sub_errors} subscribers ended early; first: {e}");
    }
    if timed_out {
        eprintln!("tidings-bench: timed out after {} s", args.timeout);
    }
    (r, ok)
}
