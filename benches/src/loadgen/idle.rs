//! `idle`: N connections that receive nothing; server RSS per connection.
//!
//! The server's RSS is read before any connection, after a tenth of them, and after all of
//! them (plus `--settle` seconds). `rss_per_conn_bytes` = (after − before) ÷ N, which charges
//! one-off growth (thread arenas, tables) to the connections too; `rss_per_conn_marginal_bytes`
//! = (after − at a tenth) ÷ (0.9 N) leaves most of that out. Connections answer keep-alive
//! pings, so the server's idle timeout does not close them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::report::Report;
use super::server::{Server, ServerArgs};
use super::{Target, check_fd_limit, open_with_retry, runtime};

const CONNECT_PARALLEL: usize = 64;

/// `idle` options.
#[derive(Debug, clap::Args)]
pub(crate) struct IdleArgs {
    /// The system and protocol measured
    #[arg(long, value_enum, default_value = "tidings")]
    pub target: Target,
    /// Idle connections
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// The topic every connection subscribes to
    #[arg(long, default_value = "bench.idle")]
    pub topic: String,
    /// Connections subscribe to nothing (SSE streams always have a topic)
    #[arg(long)]
    pub no_subscribe: bool,
    /// Seconds to wait after the last connection opened before reading RSS
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Seconds the whole run may take
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Runs `idle`; false if the run failed.
pub(crate) fn main(args: &IdleArgs) -> Result<bool, String> {
    if args.connections < 10 {
        return Err("--connections must be at least 10".into());
    }
    check_fd_limit(args.connections)?;
    let limits = vec![format!(
        "--max-connections={}",
        (args.connections + 100).max(100_000)
    )];
    let limits = if args.target.is_tidings() {
        limits
    } else {
        Vec::new()
    };
    let server = Server::start(args.target, &args.server, &limits)?;
    eprintln!(
        "server {} (pid {}), {} idle {} connections",
        server.addr,
        server.pid.map_or("?".into(), |p| p.to_string()),
        args.connections,
        args.target.name(),
    );
    let rt = runtime(args.server.threads)?;
    let (report, ok) = rt.block_on(run(args, &server));
    let title = format!(
        "idle: {} ({}), {} connections",
        args.target.name(),
        args.server.runtime,
        args.connections
    );
    report.print(&title, args.server.json);
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(ok)
}

/// Opens `count` connections as tasks that hold them until aborted; waits until all are open.
/// Returns the number that failed to open, and the first error.
#[allow(clippy::too_many_arguments)]
async fn open(
    args: &IdleArgs,
    server: &Server,
    count: usize,
    tasks: &mut JoinSet<String>,
    deadline: Instant,
) -> Result<(), String> {
    let connecting = Arc::new(Semaphore::new(CONNECT_PARALLEL));
    let done = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let topic =
        (!args.no_subscribe || args.target == Target::TidingsSse).then(|| args.topic.clone());
    for i in 0..count {
        let (connecting, done, tx) = (Arc::clone(&connecting), Arc::clone(&done), tx.clone());
        let addr = server.addrs[i % server.addrs.len()];
        let (target, topic) = (args.target, topic.clone());
        tasks.spawn(async move {
            let permit = connecting.acquire().await;
            let conn = open_with_retry(target, addr, topic.as_deref()).await;
            drop(permit);
            if let Err(e) = &conn {
                let _ = tx.send(e.clone());
            }
            drop(tx);
            done.fetch_add(1, Ordering::Relaxed);
            match conn {
                Ok(conn) => conn.hold().await,
                Err(e) => e,
            }
        });
    }
    drop(tx);
    while done.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out with {} of {count} connections open",
                done.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match rx.try_recv() {
        Ok(e) => {
            let mut failed = 1;
            while rx.try_recv().is_ok() {
                failed += 1;
            }
            Err(format!("{failed} connections failed; first: {e}"))
        }
        Err(_) => Ok(()),
    }
}

async fn run(args: &IdleArgs, server: &Server) -> (Report, bool) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout);
    let n = args.connections;
    let tenth = n / 10;
    let mut tasks = JoinSet::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.stats();
    let mut result = open(args, server, tenth, &mut tasks, deadline).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_tenth = server.stats();
    if result.is_ok() {
        result = open(args, server, n - tenth, &mut tasks, deadline).await;
    }
    let connect_s = start.elapsed().as_secs_f64();
    eprintln!("  {n} connections in {connect_s:.1} s; settling");
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = server.stats();
    // Connections that ended while idle.
    let mut dropped = 0u64;
    let mut first_drop = None;
    while let Some(Ok(ended)) = tasks.try_join_next() {
        dropped += 1;
        first_drop.get_or_insert(ended);
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(1)).await;
    let closed = server.stats();

    let rss = |s: Option<super::server::ProcStats>| s.map(|s| s.rss_bytes);
    let diff = |a: Option<u64>, b: Option<u64>, count: usize| match (a, b) {
        (Some(a), Some(b)) if count > 0 => Some(a.saturating_sub(b) / count as u64),
        _ => None,
    };
    let mut r = Report::default();
    r.put("scenario", "idle");
    r.put("target", args.target.name());
    r.put("runtime", args.server.runtime.as_str());
    r.put("connections", n as u64);
    r.put(
        "subscribed",
        !args.no_subscribe || args.target == Target::TidingsSse,
    );
    r.put_opt("rss_per_conn_bytes", diff(rss(after), rss(before), n));
    r.put_opt(
        "rss_per_conn_marginal_bytes",
        diff(rss(after), rss(at_tenth), n - tenth),
    );
    r.put_opt("server_rss_before_bytes", rss(before));
    r.put_opt("server_rss_bytes", rss(after));
    r.put_opt("server_rss_closed_bytes", rss(closed));
    r.put("dropped_while_idle", dropped);
    r.put_r("connect_s", connect_s, 2);
    let mut ok = true;
    if let Err(e) = &result {
        eprintln!("tidings-bench: {e}");
        ok = false;
    }
    if let Some(e) = first_drop {
        eprintln!("tidings-bench: {dropped} connections ended while idle; first: {e}");
        ok = false;
    }
    (r, ok)
}
