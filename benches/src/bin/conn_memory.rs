//! Heap memory the broker holds per connection and per subscription.
//!
//! Run with `cargo run --release -p tidings-bench --bin conn_memory`. Counts every allocation of
//! the process with `stats_alloc`'s instrumented system allocator (no unsafe code of ours), and
//! reports the *net* heap bytes (allocated − freed, growth by reallocation included) that a scenario leaves
//! behind inside the broker, divided by the number of connections. These are requested sizes:
//! the allocator's own per-block overhead (8–16 bytes per block with glibc malloc) comes on top,
//! so the allocation count is printed too.
//!
//! Scenarios, each on a fresh broker with `n` connections:
//! - `idle`: open `n` native connections (one shared `Arc<Grants>`), drain their welcome frames;
//! - `idle_own_grants`: the same, each connection with its own `Arc::new(Grants::all())`
//!   (as with per-connection JWT grants);
//! - `idle_sse`: SSE streams;
//! - `1_sub_same_topic`: each also subscribes to `chat.room1` (pattern parsed per connection, as
//!   a decoded command owns it);
//! - `1_sub_own_topic`: each subscribes to its own exact topic `user.<i>`;
//! - `1_sub_own_wildcard`: each subscribes to its own wildcard `user.<i>.*`;
//! - `4_subs_own_topics`: four exact topics of its own each.

use std::alloc::System;
use std::sync::Arc;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tidings_bench::Driver;
use tidings_core::codec::Codec;
use tidings_core::native::NativeCodec;
use tidings_core::sse::SseCodec;
use tidings_core::{Config, Grants};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Idle,
    IdleOwnGrants,
    IdleSse,
    SameTopic,
    OwnTopic,
    OwnWildcard,
    FourOwnTopics,
}

impl Scenario {
    const ALL: [Self; 7] = [
        Self::Idle,
        Self::IdleOwnGrants,
        Self::IdleSse,
        Self::SameTopic,
        Self::OwnTopic,
        Self::OwnWildcard,
        Self::FourOwnTopics,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle (native, shared grants)",
            Self::IdleOwnGrants => "idle (native, own Arc<Grants>)",
            Self::IdleSse => "idle (SSE, shared grants)",
            Self::SameTopic => "1 sub, all on chat.room1",
            Self::OwnTopic => "1 sub, own exact topic",
            Self::OwnWildcard => "1 sub, own wildcard user.<i>.*",
            Self::FourOwnTopics => "4 subs, own exact topics",
        }
    }

    fn subs(self) -> usize {
        match self {
            Self::Idle | Self::IdleOwnGrants | Self::IdleSse => 0,
            Self::FourOwnTopics => 4,
            _ => 1,
        }
    }
}

struct Measured {
    bytes_per_conn: f64,
    allocs_per_conn: f64,
}

fn measure(scenario: Scenario, n: u64) -> Measured {
    let mut d = Driver::new(Config::default());
    // Warm the broker's fixed structures (output queue, scratch) so they are not charged to
    // the connections: open and close one connection outside the region.
    let c = d.open(u64::MAX, Box::new(NativeCodec));
    d.subscribe(c, "warm.up", None);
    d.close(c);

    let region = Region::new(GLOBAL);
    for i in 0..n {
        let transport: Box<dyn Codec> = if scenario == Scenario::IdleSse {
            Box::new(SseCodec)
        } else {
            Box::new(NativeCodec)
        };
        let conn = if scenario == Scenario::IdleOwnGrants {
            d.open_with(i, transport, Arc::new(Grants::all()))
        } else {
            d.open(i, transport)
        };
        match scenario {
            Scenario::Idle | Scenario::IdleOwnGrants | Scenario::IdleSse => {}
            Scenario::SameTopic => {
                d.subscribe(conn, "chat.room1", None);
            }
            Scenario::OwnTopic => {
                d.subscribe(conn, &format!("user.{i}"), None);
            }
            Scenario::OwnWildcard => {
                d.subscribe(conn, &format!("user.{i}.*"), None);
            }
            Scenario::FourOwnTopics => {
                for k in 0..4 {
                    d.subscribe(conn, &format!("user.{i}.t{k}"), None);
                }
            }
        }
    }
    let s = region.change();
    // `stats_alloc` already books a reallocation's growth (shrinkage) in `bytes_allocated`
    // (`bytes_deallocated`); `bytes_reallocated` is the same delta again, so it is not added.
    let net = s.bytes_allocated as f64 - s.bytes_deallocated as f64;
    let live_allocs = s.allocations as f64 - s.deallocations as f64;
    assert_eq!(d.broker.stats().connections as u64, n);
    std::hint::black_box(&d);
    Measured {
        bytes_per_conn: net / n as f64,
        allocs_per_conn: live_allocs / n as f64,
    }
}

fn main() {
    let sizes = [10_000u64, 100_000];
    println!("net heap bytes held by the broker per connection (live blocks per connection)");
    print!("{:<34}", "scenario");
    for n in sizes {
        print!(" | {:>22}", format!("n = {n}"));
    }
    println!(" | per subscription (n = {})", sizes[0]);
    let mut idle = [0.0; 2];
    for scenario in Scenario::ALL {
        print!("{:<34}", scenario.name());
        let mut first = 0.0;
        for (k, n) in sizes.into_iter().enumerate() {
            let m = measure(scenario, n);
            if scenario == Scenario::Idle {
                idle[k] = m.bytes_per_conn;
            }
            if k == 0 {
                first = m.bytes_per_conn;
            }
            print!(
                " | {:>22}",
                format!("{:.0} B ({:.2})", m.bytes_per_conn, m.allocs_per_conn)
            );
        }
        if scenario.subs() > 0 {
            print!(" | {:.0} B", (first - idle[0]) / scenario.subs() as f64);
        }
        println!();
    }
}
