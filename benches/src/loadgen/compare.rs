//! `compare`: tidings against its peers, in one run on one machine with one load generator.
//!
//! Every measurement is a single run of this same binary (`fanout`, `idle`, `loopback` with
//! `--json`) started as a child process, so each run has a fresh server, fresh client state and
//! closed sockets before the next one. Scenarios run in the order below; within one scenario
//! the targets take turns, repeat after repeat, so slow drifts of the shared machine's load
//! spread over all of them. Each cell of the table is the median of its repeats.
//!
//! 1. fan-out, 128 B, N = 1,000 and 10,000 (as fast as each system answers, 32 publishes in
//!    flight);
//! 2. fan-out, 4 KiB, N = 1,000 and 10,000;
//! 3. many topics: N subscribers each on a topic of its own, publishes spread over them;
//! 4. latency at a fixed offered load: N = 1,000, 128 B, paced at half of tidings' (native)
//!    peak of step 1, the same messages/s for every system;
//! 5. idle: 10,000 connections, RSS per connection;
//! 6. the limit: loopback bytes/s of a trivial writer.
//!
//! A peer that is not installed is reported as skipped, not failed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Target;
use super::plot;

/// `compare` options.
#[derive(Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// A short smoke run (fewer messages and connections, one repeat): checks that every peer
    /// works, not a measurement
    #[arg(long)]
    pub quick: bool,
    /// Write every run and the summary as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw deliveries/s and p99 latency against N for every system into FILE (PNG)
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Repeats of the fan-out (128 B), paced and idle runs [default: 3, 1 with --quick]
    #[arg(long)]
    pub repeat: Option<usize>,
    /// The systems (comma-separated) [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub targets: Vec<Target>,
    /// tidings' runtime
    #[arg(long, default_value = "tokio", value_parser = ["tokio", "async-std"])]
    pub runtime: String,
    /// The `tidings` binary [default: target/release/tidings]
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Before each run, wait up to this many seconds for a second in which the CPUs are at
    /// least 70 % idle (the machine may be shared); the idle share is recorded either way
    #[arg(long, default_value_t = 30)]
    pub quiet: u64,
    /// Do not measure: print the table (and draw the plot) of a JSON file written earlier
    #[arg(long, value_name = "FILE", conflicts_with_all = ["quick", "repeat"])]
    pub from: Option<PathBuf>,
}

/// One scenario: which subcommand, with what arguments.
#[derive(Debug, Clone)]
struct Scenario {
    /// Short name: the row of the table.
    name: String,
    kind: &'static str,
    args: Vec<String>,
    repeat: usize,
    /// N, for the plot (fan-out at 128 B only).
    plot_n: Option<u64>,
}

fn fanout(name: &str, n: u64, size: u64, messages: u64, extra: &[&str], repeat: usize) -> Scenario {
    let mut args: Vec<String> = [
        "--subscribers".to_owned(),
        n.to_string(),
        "--size".to_owned(),
        size.to_string(),
        "--messages".to_owned(),
        messages.to_string(),
    ]
    .into();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Scenario {
        name: name.to_owned(),
        kind: "fanout",
        args,
        repeat,
        plot_n: (size == 128 && extra.is_empty()).then_some(n),
    }
}

fn plan(quick: bool, repeat: usize) -> Vec<Scenario> {
    // Messages chosen for ~2 M deliveries per 128 B run (~0.5 M at 4 KiB): a few seconds for
    // tidings, up to ~20 s for the slowest peer.
    if quick {
        vec![
            fanout("fanout N=1000 128B", 1000, 128, 300, &[], repeat),
            fanout("fanout N=10000 128B", 10_000, 128, 30, &[], repeat),
            fanout("fanout N=1000 4KiB", 1000, 4096, 50, &[], 1),
            fanout("topics N=1000 128B", 1000, 128, 3, &["--spread"], 1),
        ]
    } else {
        vec![
            fanout("fanout N=1000 128B", 1000, 128, 2000, &[], repeat),
            fanout("fanout N=10000 128B", 10_000, 128, 200, &[], repeat),
            fanout("fanout N=1000 4KiB", 1000, 4096, 500, &[], 1),
            fanout("fanout N=10000 4KiB", 10_000, 4096, 50, &[], 1),
            fanout("topics N=1000 128B", 1000, 128, 20, &["--spread"], 1),
            fanout("topics N=10000 128B", 10_000, 128, 5, &["--spread"], 1),
        ]
    }
}

/// Percent of CPU time idle over the next second (all CPUs, from `/proc/stat`).
fn idle_pct() -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|n| n.parse().ok())
            .collect();
        let idle = cpu.get(3)? + cpu.get(4)?;
        Some((idle, cpu.iter().sum()))
    };
    let (i0, t0) = sample()?;
    std::thread::sleep(Duration::from_secs(1));
    let (i1, t1) = sample()?;
    #[allow(clippy::cast_precision_loss)]
    (t1 > t0).then(|| 100.0 * (i1 - i0) as f64 / (t1 - t0) as f64)
}

/// Waits up to `max_s` seconds for a second with ≥ 70 % idle CPU; returns the last sample.
fn wait_quiet(max_s: u64) -> Option<f64> {
    let until = Instant::now() + Duration::from_secs(max_s);
    loop {
        let idle = idle_pct();
        if idle.is_none_or(|i| i >= 70.0) || Instant::now() >= until {
            return idle;
        }
    }
}

/// Runs this binary with `args`; the last stdout line parsed as JSON. `Ok(None)`: skipped.
fn run_child(args: &[String]) -> Result<Option<Value>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    eprintln!("+ tidings-bench {}", args.join(" "));
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running tidings-bench: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = stdout.lines().find(|l| l.starts_with("skipped:")) {
        eprintln!("  {line}");
        return Ok(None);
    }
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).map_err(|_| {
        format!(
            "no JSON result (exit {:?}); stdout ends {:?}",
            out.status.code(),
            stdout
                .chars()
                .rev()
                .take(300)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        )
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
        eprintln!(
            "  (run reported a failure, exit {:?}): {}",
            out.status.code(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(Some(v))
}

/// The runs of one scenario and target.
type Cell = Vec<Value>;

/// Everything measured: scenario name → target name → runs.
pub(crate) type Results = BTreeMap<String, BTreeMap<String, Cell>>;

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Whether a run counts: it did not time out, and a fan-out delivered something.
fn valid(run: &Value) -> bool {
    run["timed_out"] != Value::Bool(true)
        && (run["scenario"] != "fanout" || num(run, "deliveries").is_some_and(|d| d > 0.0))
}

/// The median of `key` over the valid runs (lower middle for an even count).
pub(crate) fn median(runs: &[Value], key: &str) -> Option<f64> {
    let mut xs: Vec<f64> = runs
        .iter()
        .filter(|r| valid(r))
        .filter_map(|r| num(r, key))
        .collect();
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(xs[(xs.len() - 1) / 2])
}

/// Runs `compare`.
#[allow(clippy::too_many_lines)]
pub(crate) fn main(args: &CompareArgs) -> Result<bool, String> {
    let targets: Vec<Target> = if args.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        args.targets.clone()
    };
    if let Some(from) = &args.from {
        let text = std::fs::read_to_string(from).map_err(|e| format!("{}: {e}", from.display()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", from.display()))?;
        let results: Results = serde_json::from_value(doc["results"].clone())
            .map_err(|e| format!("{}: results: {e}", from.display()))?;
        let order: Vec<String> = doc["order"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_else(|| results.keys().cloned().collect());
        print_tables(&order, &results, &doc["loopback"], &targets);
        if let Some(path) = &args.plot {
            plot::draw(path, &results, &targets)?;
            eprintln!("plot written to {}", path.display());
        }
        return Ok(true);
    }
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let mut common: Vec<String> = vec!["--json".into(), "--runtime".into(), args.runtime.clone()];
    if let Some(bin) = &args.server_bin {
        common.push("--server-bin".into());
        common.push(bin.display().to_string());
    }
    let started = Instant::now();
    let quiet = if args.quick { 0 } else { args.quiet };
    let mut results: Results = BTreeMap::new();
    let mut order = Vec::new();
    let mut skipped: Vec<Target> = Vec::new();
    let mut failures = 0;

    let mut measure = |sc: &Scenario, results: &mut Results, skipped: &mut Vec<Target>| {
        order.push(sc.name.clone());
        for _ in 0..sc.repeat {
            for &target in &targets {
                if skipped.contains(&target) {
                    continue;
                }
                let mut a = vec![sc.kind.to_owned(), "--target".into(), target.name().into()];
                a.extend(sc.args.iter().cloned());
                a.extend(common.iter().cloned());
                let idle = wait_quiet(quiet);
                match run_child(&a) {
                    Ok(Some(mut v)) => {
                        v["scenario_name"] = Value::from(sc.name.as_str());
                        v["machine_idle_pct_before"] =
                            idle.map_or(Value::Null, |i| Value::from(i.round()));
                        v["load_avg_before"] = Value::from(
                            std::fs::read_to_string("/proc/loadavg")
                                .unwrap_or_default()
                                .split(' ')
                                .take(3)
                                .collect::<Vec<_>>()
                                .join(" "),
                        );
                        results
                            .entry(sc.name.clone())
                            .or_default()
                            .entry(target.name().into())
                            .or_default()
                            .push(v);
                    }
                    Ok(None) => skipped.push(target),
                    Err(e) => {
                        eprintln!("  failed: {e}");
                        failures += 1;
                    }
                }
                // Let the sockets of the last run close.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };

    for sc in plan(args.quick, repeat) {
        let sc = Scenario {
            repeat: if sc.plot_n.is_some() {
                repeat
            } else {
                sc.repeat
            },
            ..sc
        };
        measure(&sc, &mut results, &mut skipped);
    }

    // Latency at a fixed offered load: half of tidings' peak (N = 1,000, 128 B).
    let peak = results
        .get("fanout N=1000 128B")
        .and_then(|m| m.get("tidings"))
        .and_then(|runs| median(runs, "deliveries_per_sec"));
    let rate = peak.map_or(100.0, |p| (p * 0.5 / 1000.0).round().max(10.0));
    // And at half of the slowest system's peak, a load every system keeps up with.
    let slowest = results.get("fanout N=1000 128B").and_then(|m| {
        m.values()
            .filter_map(|runs| median(runs, "deliveries_per_sec"))
            .min_by(f64::total_cmp)
    });
    let low_rate = slowest.map_or(10.0, |p| (p * 0.5 / 1000.0).round().max(10.0));
    let seconds = if args.quick { 1.0 } else { 3.0 };
    for (name, rate) in [
        ("paced N=1000 128B", rate),
        ("paced-low N=1000 128B", low_rate),
    ] {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let messages = ((rate * seconds) as u64).max(10);
        let paced = Scenario {
            name: name.into(),
            kind: "fanout",
            args: vec![
                "--subscribers".into(),
                "1000".into(),
                "--size".into(),
                "128".into(),
                "--messages".into(),
                messages.to_string(),
                "--rate".into(),
                rate.to_string(),
            ],
            repeat,
            plot_n: None,
        };
        eprintln!("== {name}: {rate} msgs/s");
        measure(&paced, &mut results, &mut skipped);
    }
    eprintln!(
        "paced at {rate} msgs/s (half of tidings' peak {peak:?} deliveries/s / 1,000) and {low_rate} \
         (half of the slowest system's peak {slowest:?})"
    );

    let idle_n = if args.quick { 2000 } else { 10_000 };
    let idle = Scenario {
        name: format!("idle {idle_n}"),
        kind: "idle",
        args: vec!["--connections".into(), idle_n.to_string()],
        repeat: if args.quick { 1 } else { 2 },
        plot_n: None,
    };
    measure(&idle, &mut results, &mut skipped);

    // The limit: the best of a trivial writer over 1, 2 and 4 loopback connections.
    let mut loopback = Value::Null;
    for connections in ["1", "2", "4"] {
        let run = run_child(&[
            "loopback".into(),
            "--json".into(),
            "--chunk".into(),
            "262144".into(),
            "--connections".into(),
            connections.into(),
            "--seconds".into(),
            if args.quick { "1" } else { "3" }.into(),
        ])
        .ok()
        .flatten()
        .unwrap_or(Value::Null);
        if num(&run, "bytes_per_sec") > num(&loopback, "bytes_per_sec") {
            loopback = run;
        }
    }

    eprintln!("compare took {:.0} s", started.elapsed().as_secs_f64());
    for t in &skipped {
        println!("{}", super::server::skipped(t.name()));
    }
    print_tables(&order, &results, &loopback, &targets);
    if let Some(path) = &args.json {
        let doc = json!({
            "machine": machine(),
            "quick": args.quick,
            "repeat": repeat,
            "paced_rate": rate,
            "paced_low_rate": low_rate,
            "order": order,
            "skipped": skipped.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "loopback": loopback,
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("JSON written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &results, &targets)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(failures == 0)
}

/// CPU model, cores, kernel: for the JSON.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "cpu_hz": super::server::cpu_hz(),
        "kernel": kernel.trim(),
    })
}

fn fmt_value(metric: &str, v: f64) -> String {
    if metric.contains("deliveries") {
        if v >= 1e6 {
            format!("{:.2} M", v / 1e6)
        } else {
            format!("{:.0} k", v / 1e3)
        }
    } else if metric.ends_with("_us") {
        if v >= 1e4 {
            format!("{:.0} ms", v / 1e3)
        } else if v >= 1e3 {
            format!("{:.1} ms", v / 1e3)
        } else {
            format!("{v:.0} µs")
        }
    } else {
        format!("{v:.0}")
    }
}

/// The markdown tables: per scenario and metric, the median of every system, then
/// tidings ÷ each peer (tidings-sse ÷ peer for the SSE idle row), then the targets.
#[allow(clippy::too_many_lines)]
fn print_tables(order: &[String], results: &Results, loopback: &Value, targets: &[Target]) {
    let peers: Vec<Target> = targets
        .iter()
        .copied()
        .filter(|t| !t.is_tidings())
        .collect();
    let mut head = String::from("| scenario | metric |");
    let mut rule = String::from("|---|---|");
    for t in targets {
        head.push_str(&format!(" {} |", t.name()));
        rule.push_str("---|");
    }
    for p in &peers {
        head.push_str(&format!(" tidings ÷ {} |", p.name()));
        rule.push_str("---|");
    }
    println!("\n{head}\n{rule}");
    let mut verdicts = Vec::new();
    for name in order {
        let Some(by_target) = results.get(name) else {
            continue;
        };
        let metrics: &[&str] = if name.starts_with("idle") {
            &["rss_per_conn_bytes"]
        } else if name.starts_with("paced") {
            &["rate", "p50_us", "p99_us", "p999_us", "deliveries_per_sec"]
        } else {
            &[
                "deliveries_per_sec",
                "p99_us",
                "server_cpu_ns_per_delivery",
                "server_cycles_per_delivery",
            ]
        };
        for metric in metrics {
            let med = |t: Target| by_target.get(t.name()).and_then(|r| median(r, metric));
            let mut line = format!("| {name} | {metric} |");
            for &t in targets {
                line.push_str(&match med(t) {
                    Some(v) => format!(" {} |", fmt_value(metric, v)),
                    None => " – |".into(),
                });
            }
            for &p in &peers {
                line.push_str(&match (med(Target::Tidings), med(p)) {
                    (Some(a), Some(b)) if b > 0.0 => format!(" {:.2}× |", a / b),
                    _ => " – |".into(),
                });
            }
            println!("{line}");
        }
        // Loss and order, per system.
        let mut bad = Vec::new();
        for (t, runs) in by_target {
            let lost: f64 = runs.iter().filter_map(|r| num(r, "lost")).sum();
            let reord: f64 = runs.iter().filter_map(|r| num(r, "reordered")).sum();
            let failed = runs
                .iter()
                .filter(|r| r["timed_out"] == Value::Bool(true))
                .count();
            if lost > 0.0 || reord > 0.0 || failed > 0 {
                bad.push(format!(
                    "{t}: {lost} lost, {reord} reordered, {failed} timed out"
                ));
            }
        }
        if !bad.is_empty() {
            println!("| {name} | lost/reordered | {} |", bad.join("; "));
        }
        // The targets.
        let med = |t: Target, m: &str| by_target.get(t.name()).and_then(|r| median(r, m));
        if name.starts_with("fanout") && name.ends_with("128B") {
            for (peer, want) in [
                (Target::Nats, 1.5),
                (Target::Socketio, 5.0),
                (Target::Socketioxide, 2.0),
            ] {
                if let (Some(a), Some(b)) = (
                    med(Target::Tidings, "deliveries_per_sec"),
                    med(peer, "deliveries_per_sec"),
                ) {
                    verdicts.push(format!(
                        "{name}: deliveries/s tidings ÷ {} = {:.2}× (target ≥ {want}×): {}",
                        peer.name(),
                        a / b,
                        if a / b >= want { "met" } else { "NOT met" }
                    ));
                }
            }
        }
        if name.starts_with("paced N") {
            if let Some(ours) = med(Target::Tidings, "p99_us") {
                for &p in &peers {
                    if let Some(theirs) = med(p, "p99_us") {
                        verdicts.push(format!(
                            "{name}: p99 tidings {} vs {} {} (target ≤): {}",
                            fmt_value("p99_us", ours),
                            p.name(),
                            fmt_value("p99_us", theirs),
                            if ours <= theirs { "met" } else { "NOT met" }
                        ));
                    }
                }
            }
        }
        if name.starts_with("idle") {
            let best_peer = peers
                .iter()
                .filter_map(|&p| med(p, "rss_per_conn_bytes"))
                .min_by(f64::total_cmp);
            for (t, limit) in [(Target::Tidings, 6144.0), (Target::TidingsSse, 4096.0)] {
                if let Some(v) = med(t, "rss_per_conn_bytes") {
                    let below = best_peer.is_none_or(|b| v < b);
                    verdicts.push(format!(
                        "{name}: {} {v:.0} B per connection (target ≤ {limit:.0} B and below every peer, best peer {}): {}",
                        t.name(),
                        best_peer.map_or("–".into(), |b| format!("{b:.0} B")),
                        if v <= limit && below { "met" } else { "NOT met" }
                    ));
                }
            }
        }
    }
    if let Some(bps) = num(loopback, "bytes_per_sec") {
        println!(
            "\nloopback limit: a trivial writer pushes {:.2} GiB/s ({} connection(s), {} B writes)",
            bps / f64::from(1u32 << 30),
            loopback["connections"],
            loopback["chunk"],
        );
        for scenario in [
            "fanout N=1000 128B",
            "fanout N=1000 4KiB",
            "fanout N=10000 4KiB",
        ] {
            for t in [Target::Tidings, Target::TidingsSse] {
                if let Some(w) = results
                    .get(scenario)
                    .and_then(|m| m.get(t.name()))
                    .and_then(|r| median(r, "wire_bytes_per_sec"))
                {
                    println!(
                        "{scenario}: {} delivers {:.2} GiB/s to its subscribers, {:.0} % of that",
                        t.name(),
                        w / f64::from(1u32 << 30),
                        100.0 * w / bps
                    );
                }
            }
        }
    }
    if !verdicts.is_empty() {
        println!("\nissue 7 targets:");
        for v in verdicts {
            println!("- {v}");
        }
    }
}
