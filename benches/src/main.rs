//! `tidings-bench`: the load generator. It runs the whole `tidings` server over loopback and
//! measures fan-out throughput, publish-to-delivery latency, and server memory and CPU.
//!
//! ```sh
//! cargo build --release -p tidings                     # the server it starts
//! cargo run --release -p tidings-bench -- fanout --target tidings --subscribers 1000 \
//!     --size 128 --messages 2000 --json
//! cargo run --release -p tidings-bench -- idle --target tidings-sse --connections 10000 --json
//! ```
//!
//! Every subcommand prints a human table on stdout; with `--json` the last stdout line is one
//! JSON object (the keys are listed in `docs/BENCHMARKS.md`). Progress goes to stderr. The exit
//! status is 1 when the run failed (timeout, connection errors) after the partial report.
//!
//! The code is in `src/loadgen/`: `server` (starting the server, `/proc` readers), `ws` and
//! `sse` (the wire protocols), `payload` (the sequence-numbered payload), `check` (order, loss,
//! latency histograms), `fanout` and `idle` (the scenarios), `report` (output).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod loadgen;

use loadgen::{fanout, idle};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Fanout(args) => fanout::main(&args),
        Command::Idle(args) => idle::main(&args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tidings-bench: {e}");
            ExitCode::from(2)
        }
    }
}
