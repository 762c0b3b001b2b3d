//! Criterion benches of the embedded file log (`tidings_adapter::store::FileLog`): append
//! throughput of 128-byte events in batches, a sequential read of 100,000 events, and the
//! recovery of 1,000,000 events. Each runs on a temporary data directory under `$TMPDIR`
//! (`durability = "os"`, the default: appends are answered once written to the OS).
//!
//! `cargo bench -p tidings-bench --bench log`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidings_adapter::store::{FileLog, StoreConfig};
use tidings_core::log::{AppendId, LogEvent, LogReply, LogRequest, ReadId};
use tidings_core::{NameLimits, Payload, Retention, Topic};

/// Bytes of each event's payload.
const PAYLOAD: usize = 128;

fn event() -> LogEvent {
    LogEvent {
        topic: Topic::parse("bench.prices", NameLimits::default()).expect("topic"),
        event: None,
        from: None,
        payload: Payload::text("x".repeat(PAYLOAD)).expect("payload"),
    }
}

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        ..StoreConfig::default()
    }
}

/// Keeps at most 2,000,000 events (about 350 MB of segments), so long runs stay bounded.
fn retention() -> Retention {
    Retention {
        max_events: 2_000_000,
        max_bytes: usize::MAX,
        max_age: Duration::from_secs(1 << 30),
    }
}

/// Appends `n` events in batches of `batch` (all of a batch queued before its answers are
/// awaited, as the driver does with one step's publishes).
fn append(
    log: &FileLog,
    replies: &flume::Receiver<LogReply>,
    next: &mut u64,
    n: usize,
    batch: usize,
) {
    let event = event();
    let mut left = n;
    while left > 0 {
        let k = left.min(batch);
        for _ in 0..k {
            *next += 1;
            log.request(LogRequest::Append {
                id: AppendId(*next),
                event: event.clone(),
            });
        }
        for _ in 0..k {
            match replies.recv().expect("reply") {
                LogReply::Appended { result, .. } => {
                    black_box(result.expect("stored"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        left -= k;
    }
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    for batch in [64, 256, 1024] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _, replies) = FileLog::open(&config(dir.path()), &retention()).expect("open");
        let mut next = 0;
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| append(&log, &replies, &mut next, batch, batch));
        });
        log.close();
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    const EVENTS: usize = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _, replies) = FileLog::open(&config(dir.path()), &retention()).expect("open");
    let mut next = 0;
    append(&log, &replies, &mut next, EVENTS, 1024);
    let mut group = c.benchmark_group("log_read");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(20);
    group.bench_function(BenchmarkId::from_parameter(EVENTS), |b| {
        b.iter(|| {
            let (mut from, mut got, mut read) = (1, 0, 0);
            loop {
                read += 1;
                log.request(LogRequest::Read {
                    read: ReadId(read),
                    from,
                    max_events: 4096,
                });
                let LogReply::Page { result, .. } = replies.recv().expect("reply") else {
                    panic!("expected a page");
                };
                let page = result.expect("page");
                got += page.events.len();
                if page.done {
                    break;
                }
                from = page.events.last().map_or(from, |e| e.seq + 1);
                black_box(page);
            }
            assert_eq!(got, EVENTS);
        });
    });
    group.finish();
    log.close();
}

fn recover(c: &mut Criterion) {
    const EVENTS: usize = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _, replies) = FileLog::open(&config(dir.path()), &retention()).expect("open");
        let mut next = 0;
        append(&log, &replies, &mut next, EVENTS, 1024);
        log.close();
    }
    let mut group = c.benchmark_group("log_recover");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function(BenchmarkId::from_parameter(EVENTS), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (log, recovery, _) =
                    FileLog::open(&config(dir.path()), &retention()).expect("open");
                took += started.elapsed();
                assert_eq!(recovery.state.recovered, EVENTS as u64);
                black_box(recovery);
                log.close();
            }
            took
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = appends, read, recover
}
criterion_main!(benches);
