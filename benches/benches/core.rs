//! Criterion benches of `tidings-core`: fan-out, one-subscriber publish, codecs, resume and
//! wildcard fan-out. Results and the commands that produce them: `docs/BENCHMARKS.md`.
//!
//! Every broker call is followed by a complete drain of its outputs (counted, then dropped, as an
//! adapter would after writing them). The clock is fixed, so no timer fires during a measurement.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tidings_bench::{
    Driver, bench_config, json_of_len, json_payload, subscribe_cmd, text_payload, topic,
};
use tidings_core::codec::Codec;
use tidings_core::codec::Frame;
use tidings_core::native::NativeCodec;
use tidings_core::sse::SseCodec;
use tidings_core::{ConnId, Cursor, Input, Limits, Name, Output, native, sse};

/// Bytes of the payload published in the fan-out, publish and resume benches.
const PAYLOAD: usize = 128;

/// How the subscribers of a fan-out are split between transports.
#[derive(Clone, Copy)]
enum Mix {
    Native,
    Sse,
    /// Even ids native, odd ids SSE: both encodings are made once per publish.
    Half,
}

impl Mix {
    fn codec(self, i: u64) -> Box<dyn Codec> {
        match self {
            Self::Native => Box::new(NativeCodec),
            Self::Sse => Box::new(SseCodec),
            Self::Half if i % 2 == 0 => Box::new(NativeCodec),
            Self::Half => Box::new(SseCodec),
        }
    }
}

/// A broker with `n` connections subscribed to `chat.room1`.
fn fanout_driver(n: u64, mix: Mix) -> Driver {
    let mut d = Driver::new(bench_config(10_000));
    for i in 0..n {
        let conn = d.open(i, mix.codec(i));
        d.subscribe(conn, "chat.room1", None);
    }
    d
}

fn fanout(c: &mut Criterion) {
    let t = topic("chat.room1");
    let payload = json_payload(PAYLOAD);
    for (group, mix) in [
        ("fanout", Mix::Native),
        ("fanout_sse", Mix::Sse),
        ("fanout_mixed", Mix::Half),
    ] {
        let mut g = c.benchmark_group(group);
        for n in [1u64, 100, 10_000] {
            let mut d = fanout_driver(n, mix);
            assert_eq!(
                d.publish(&t, &payload).frames as u64,
                n,
                "every subscriber gets it"
            );
            g.throughput(Throughput::Elements(n));
            g.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| black_box(d.publish(&t, &payload)));
            });
        }
        g.finish();
    }

    // The floor of the current output API, without the broker: per delivery, clone the shared
    // frame into an `Output::Transmit`, queue it, pop it and drop it (what `fanout/N` does beyond
    // the broker's own bookkeeping). `static` uses a `Bytes::from_static` frame, whose clone and
    // drop touch no reference count: the difference is the cost of the atomic count.
    let mut g = c.benchmark_group("fanout_floor");
    let shared = native::encode(&Frame::Event {
        topic: &t,
        cursor: Cursor::new(1, 1),
        from: None,
        event: None,
        payload: &payload,
    });
    let leaked: &'static [u8] = shared.to_vec().leak();
    let frames = [
        ("shared", shared.clone()),
        ("static", Bytes::from_static(leaked)),
    ];
    for n in [100u64, 10_000] {
        for (kind, frame) in &frames {
            let mut queue: VecDeque<Output> = VecDeque::new();
            g.throughput(Throughput::Elements(n));
            g.bench_function(BenchmarkId::new(*kind, n), |b| {
                b.iter(|| {
                    for conn in 0..n {
                        queue.push_back(Output::Transmit {
                            conn: ConnId(conn),
                            payload: frame.clone(),
                        });
                    }
                    let mut bytes = 0;
                    while let Some(out) = queue.pop_front() {
                        if let Output::Transmit { payload, .. } = out {
                            bytes += payload.len();
                        }
                    }
                    black_box(bytes)
                });
            });
        }
    }
    g.finish();

    // The same native fan-out, with the adapter returning the credit of every frame (one
    // `Flushed` each) inside the measurement: the whole broker-side cost of a delivery.
    let mut g = c.benchmark_group("fanout_with_credit");
    for n in [100u64, 10_000] {
        let mut d = fanout_driver(n, Mix::Native);
        let mut pending = Vec::with_capacity(n as usize);
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                d.broker.publish(d.now, t.clone(), None, payload.clone());
                black_box(d.drain_flushing(&mut pending))
            });
        });
    }
    g.finish();
}

/// One `Input::Flushed` per call on a broker with 10,000 open, idle native connections: the id
/// lookup (`ConnMap`), the credit update and the `pump` check, plus `handle_input`'s timer check.
/// `in_order` reports the connections by ascending id (and slot), `shuffled` in a fixed scattered
/// order (no locality between consecutive calls in the id map or the connection table).
fn flushed(c: &mut Criterion) {
    const N: u64 = 10_000;
    let mut d = Driver::new(bench_config(10_000));
    for i in 0..N {
        d.open(i, Box::new(NativeCodec));
    }
    let in_order: Vec<ConnId> = (0..N).map(ConnId).collect();
    // A fixed permutation of 0..N: 7,919 is coprime to N, so i * 7,919 mod N visits every id once.
    let shuffled: Vec<ConnId> = (0..N).map(|i| ConnId(i * 7_919 % N)).collect();
    let mut g = c.benchmark_group("flushed");
    g.throughput(Throughput::Elements(N));
    for (name, order) in [("10000_in_order", &in_order), ("10000_shuffled", &shuffled)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                for &conn in order {
                    d.broker
                        .handle_input(d.now, Input::Flushed { conn, bytes: 64 })
                        .expect("open connection");
                }
                black_box(d.drain())
            });
        });
    }
    g.finish();
}

fn publish_one(c: &mut Criterion) {
    let t = topic("chat.room1");
    let payload = json_payload(PAYLOAD);
    let mut g = c.benchmark_group("publish_one");
    g.throughput(Throughput::Elements(1));

    // Server-side publish: assign cursor, encode once, deliver, retain (evicting the oldest of
    // 10,000 retained events once the history is full).
    let mut d = fanout_driver(1, Mix::Native);
    g.bench_function("server", |b| b.iter(|| black_box(d.publish(&t, &payload))));

    // The same publish as a decoded client command from another connection: adds the grant
    // check and the `ok` reply with the cursor (two frames out).
    let mut d = fanout_driver(1, Mix::Native);
    let publisher = d.open(1_000_000, Box::new(NativeCodec));
    g.bench_function("client_command", |b| {
        b.iter(|| {
            let cmd = tidings_core::Command::Publish {
                req: Some(7),
                topic: t.clone(),
                event: None,
                payload: payload.clone(),
            };
            d.broker
                .handle_input(
                    d.now,
                    Input::Command {
                        conn: publisher,
                        cmd,
                    },
                )
                .expect("open");
            black_box(d.drain())
        });
    });

    // From the raw client frame: native decode + the above.
    let mut d = fanout_driver(1, Mix::Native);
    let publisher = d.open(1_000_000, Box::new(NativeCodec));
    let frame = publish_frame(PAYLOAD);
    let limits = Limits::default();
    g.bench_function("client_frame", |b| {
        b.iter(|| {
            let cmd = native::decode(&frame, &limits);
            d.broker
                .handle_input(
                    d.now,
                    Input::Command {
                        conn: publisher,
                        cmd,
                    },
                )
                .expect("open");
            black_box(d.drain())
        });
    });
    g.finish();
}

/// `{"op":"publish","id":7,"topic":"chat.room1","data":<JSON of len bytes>}`.
fn publish_frame(len: usize) -> Bytes {
    let mut v = br#"{"op":"publish","id":7,"topic":"chat.room1","data":"#.to_vec();
    v.extend_from_slice(&json_of_len(len));
    v.push(b'}');
    Bytes::from(v)
}

fn codecs(c: &mut Criterion) {
    let id = "18c5e2f04a1-4242";
    let one_line = json_of_len(1024);
    // The same kilobyte as 16 lines of 63 bytes + LF: 16 `data:` lines.
    let multi_line: Bytes = {
        let mut v = one_line.to_vec();
        for i in 1..16 {
            v[i * 64 - 1] = b'\n';
        }
        Bytes::from(v)
    };

    let mut g = c.benchmark_group("sse_encode");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("1KiB", |b| {
        b.iter(|| sse::event(Some(black_box(id)), Some("update"), black_box(&one_line)));
    });
    let mut buf = BytesMut::with_capacity(4096);
    g.bench_function("1KiB_into_reused_buf", |b| {
        b.iter(|| {
            buf.clear();
            sse::encode_event(
                &mut buf,
                Some(black_box(id)),
                Some("update"),
                black_box(&one_line),
            )
            .expect("valid event");
            black_box(buf.len())
        });
    });
    g.bench_function("1KiB_16_lines", |b| {
        b.iter(|| sse::event(Some(black_box(id)), Some("update"), black_box(&multi_line)));
    });
    g.finish();

    let t = topic("chat.room1");
    let cursor = Cursor::new(0x018c_5e2f_04a1, 4242);
    let publisher = Name::parse("from", "user-42", 256).expect("valid client id");
    let mut g = c.benchmark_group("native_encode");
    for (name, payload, from) in [
        ("event_128B_json", json_payload(128), None),
        ("event_128B_json_from", json_payload(128), Some(&publisher)),
        ("event_128B_text", text_payload(128), None),
        ("event_1KiB_json", json_payload(1024), None),
        ("event_1KiB_text", text_payload(1024), None),
    ] {
        let frame = Frame::Event {
            topic: &t,
            cursor,
            from,
            event: None,
            payload: &payload,
        };
        g.throughput(Throughput::Bytes(native::encode(&frame).len() as u64));
        g.bench_function(name, |b| b.iter(|| native::encode(black_box(&frame))));
    }
    g.finish();

    let limits = Limits::default();
    let mut g = c.benchmark_group("native_decode");
    for (name, len) in [("publish_128B", 128), ("publish_1KiB", 1024)] {
        let frame = publish_frame(len);
        assert!(matches!(
            native::decode(&frame, &limits),
            tidings_core::Command::Publish { .. }
        ));
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| native::decode(black_box(&frame), &limits))
        });
    }
    g.finish();
}

/// One resume scenario: a fresh connection subscribes to `pattern` from `back` events before the
/// head and must get `expect` events replayed.
struct ResumeCase {
    name: &'static str,
    /// An SSE stream (else a native connection, which gets the subscribe's `ok`).
    sse: bool,
    pattern: &'static str,
    back: u64,
    expect: usize,
}

/// Measures `Open` + `Subscribe { from }` + draining the whole replay, for a fresh connection
/// each time; the `Closed` that removes it again is outside the measurement.
fn resume(c: &mut Criterion) {
    let payload = json_payload(PAYLOAD);
    // Default limits: the replay (~190 KB) fits the 2 MiB flow-control window of a new connection.
    let config = |retained| {
        let mut config = tidings_core::Config::default();
        config.retention.max_events = retained;
        config
    };
    // 2,000 events on one topic.
    let mut one = Driver::new(config(10_000));
    let t = topic("chat.room1");
    for _ in 0..2_000 {
        one.publish(&t, &payload);
    }
    // 10,000 events round-robin over 10 topics.
    let mut ten = Driver::new(config(10_000));
    let topics: Vec<_> = (0..10).map(|i| topic(&format!("chat.room{i}"))).collect();
    for i in 0..10_000 {
        ten.publish(&topics[i % 10], &payload);
    }

    let mut g = c.benchmark_group("resume");
    g.throughput(Throughput::Elements(1_000));
    let cases = [
        (
            &mut one,
            ResumeCase {
                name: "1000",
                sse: false,
                pattern: "chat.room1",
                back: 1_000,
                expect: 1_000,
            },
        ),
        (
            &mut ten,
            ResumeCase {
                name: "1000_of_10000_10_topics",
                sse: false,
                pattern: "chat.room3",
                back: 10_000,
                expect: 1_000,
            },
        ),
    ];
    for (d, case) in cases {
        run_resume(&mut g, d, &case);
    }
    let cases = [
        (
            &mut one,
            ResumeCase {
                name: "1000_sse",
                sse: true,
                pattern: "chat.room1",
                back: 1_000,
                expect: 1_000,
            },
        ),
        (
            &mut ten,
            ResumeCase {
                name: "1000_wildcard_of_10_topics",
                sse: false,
                pattern: "chat.*",
                back: 1_000,
                expect: 1_000,
            },
        ),
    ];
    for (d, case) in cases {
        run_resume(&mut g, d, &case);
    }
    g.finish();
}

fn run_resume(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    d: &mut Driver,
    case: &ResumeCase,
) {
    let from = Cursor::new(d.broker.config().epoch, d.broker.head().seq - case.back);
    let extra = usize::from(!case.sse); // the `ok` answer
    let codec = || -> Box<dyn Codec> {
        if case.sse {
            Box::new(SseCodec)
        } else {
            Box::new(NativeCodec)
        }
    };
    // Check once what a resume delivers. This also fills the per-format encoding
    // cache, as live subscribers of the topic would have at publish time.
    let mut next_id = 1u64 << 40;
    let conn = d.open(next_id, codec());
    let got = d.subscribe(conn, case.pattern, Some(from));
    assert_eq!(
        got.frames,
        case.expect + extra,
        "{}: replayed events",
        case.name
    );
    d.close(conn);
    g.bench_function(case.name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                next_id += 1;
                let conn = ConnId(next_id);
                let cmd = subscribe_cmd(!case.sse, case.pattern, Some(from));
                let grants = d.grants.clone();
                let start = Instant::now();
                d.broker
                    .handle_input(
                        d.now,
                        Input::Open {
                            conn,
                            codec: codec(),
                            grants,
                        },
                    )
                    .expect("fresh id");
                let opened = d.drain();
                d.broker
                    .handle_input(d.now, Input::Command { conn, cmd })
                    .expect("open");
                let replayed = d.drain();
                total += start.elapsed();
                black_box((opened, replayed));
                d.close(conn);
            }
            total
        });
    });
}

fn wildcard_fanout(c: &mut Criterion) {
    let payload = json_payload(PAYLOAD);
    let t = topic("chat.room0");
    let mut g = c.benchmark_group("wildcard_fanout");

    // 1,000 connections on `chat.*`, 1,000 others each on its own exact topic `chat.room<i>`;
    // the publish to `chat.room0` reaches the 1,000 wildcard ones and one exact one.
    let mut d = Driver::new(bench_config(10_000));
    for i in 0..1_000u64 {
        let conn = d.open(i, Box::new(NativeCodec));
        d.subscribe(conn, "chat.*", None);
        let conn = d.open(10_000 + i, Box::new(NativeCodec));
        d.subscribe(conn, &format!("chat.room{i}"), None);
    }
    assert_eq!(d.publish(&t, &payload).frames, 1_001);
    g.throughput(Throughput::Elements(1_001));
    g.bench_function("1000_star_1000_exact", |b| {
        b.iter(|| black_box(d.publish(&t, &payload)));
    });

    // 1,000 connections each holding both `chat.*` and `chat.room0`: 2,000 index matches,
    // deduplicated to 1,000 deliveries.
    let mut d = Driver::new(bench_config(10_000));
    for i in 0..1_000u64 {
        let conn = d.open(i, Box::new(NativeCodec));
        d.subscribe(conn, "chat.*", None);
        d.subscribe(conn, "chat.room0", None);
    }
    assert_eq!(d.publish(&t, &payload).frames, 1_000);
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("1000_overlapping", |b| {
        b.iter(|| black_box(d.publish(&t, &payload)));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = fanout, flushed, publish_one, codecs, resume, wildcard_fanout
}
criterion_main!(benches);
