//! `tidings-bench`: the load generator. It runs the whole `tidings` server over loopback and
//! measures fan-out throughput, publish-to-delivery latency, and server memory and CPU.
//!
//! ```sh
//! cargo build --release -p tidings                     # the server it starts
//! cargo run --release -p tidings-bench -- fanout --target tidings --subscribers 1000 \
//!     --size 128 --messages 2000 --json
//! cargo run --release -p tidings-bench -- idle --target tidings-sse --connections 10000 --json
//! benches/scripts/setup-peers.sh                       # nats-server, socket.io, socketioxide
//! cargo run --release -p tidings-bench -- fanout --target nats --subscribers 1000 --json
//! cargo run --release -p tidings-bench -- compare --json compare.json --plot docs/compare.png
//! ```
//!
//! Every subcommand prints a human table on stdout; with `--json` the last stdout line is one
//! JSON object (the keys are listed in `docs/BENCHMARKS.md`). Progress goes to stderr. The exit
//! status is 1 when the run failed (timeout, connection errors) after the partial report, and 3
//! when the target is a peer that is not installed (`skipped: …` on stdout).
//!
//! The code is in `src/loadgen/`: `server` (starting the server, `/proc` readers), `ws` and
//! `sse`, `nats`, `sio` (the wire protocols), `publisher`, `payload` (the sequence-numbered payload), `check` (order, loss,
//! latency histograms), `fanout` and `idle` (the scenarios), `compare` and `plot` (every system, one table and one
//! picture), `loopback` (the machine's limit), `report` (output).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod loadgen;

use loadgen::{compare, fanout, idle, loopback};

/// Load generator for tidings: fan-out throughput, latency and memory over loopback.
#[derive(Debug, Parser)]
#[command(name = "tidings-bench", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One publisher, N subscribers of one topic: deliveries/s, latency, lost and reordered
    Fanout(fanout::FanoutArgs),
    /// N idle connections: server RSS per connection
    Idle(idle::IdleArgs),
    /// tidings against nats-server, socket.io and socketioxide: every scenario, a table with
    /// ratios, JSON and a plot
    Compare(compare::CompareArgs),
    /// The machine's limit: loopback bytes/s of a trivial Rust writer
    Loopback(loopback::LoopbackArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Fanout(args) => fanout::main(&args),
        Command::Idle(args) => idle::main(&args),
        Command::Compare(args) => compare::main(&args),
        Command::Loopback(args) => loopback::main(&args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.starts_with("skipped:") => {
            println!("{e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("tidings-bench: {e}");
            ExitCode::from(2)
        }
    }
}
