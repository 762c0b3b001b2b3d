//! `loopback`: the machine's limit for the fan-out's bytes. A trivial Rust writer pushes
//! `--chunk`-byte buffers over `--connections` loopback TCP connections for `--seconds`
//! seconds (blocking `write_all`, one thread per side and connection) and the readers count
//! what arrives: bytes/s that no event bus on this machine can exceed when it writes to
//! sockets. Compare with `wire_bytes_per_sec` of a `fanout` run.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::report::Report;

/// `loopback` options.
#[derive(Debug, clap::Args)]
pub(crate) struct LoopbackArgs {
    /// Bytes per `write`
    #[arg(long, default_value_t = 64 << 10)]
    pub chunk: usize,
    /// Connections (each a writer thread and a reader thread)
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Seconds to write
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Print the result as one JSON object on the last line too
    #[arg(long)]
    pub json: bool,
}

/// Runs `loopback`.
pub(crate) fn main(args: &LoopbackArgs) -> Result<bool, String> {
    if args.chunk == 0 || args.connections == 0 || !(args.seconds > 0.0 && args.seconds <= 60.0) {
        return Err("--chunk and --connections must be at least 1, --seconds in (0, 60]".into());
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..args.connections {
        let writer = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        let (reader, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let (stop_w, chunk) = (Arc::clone(&stop), args.chunk);
        threads.push(std::thread::spawn(move || {
            let mut writer = writer;
            let buf = vec![b'x'; chunk];
            while !stop_w.load(Ordering::Relaxed) {
                if writer.write_all(&buf).is_err() {
                    break;
                }
            }
        }));
        let received = Arc::clone(&received);
        threads.push(std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Warm up, then measure.
    std::thread::sleep(Duration::from_millis(200));
    let from = received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let bytes = received.load(Ordering::Relaxed) - from;
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    #[allow(clippy::cast_precision_loss)]
    let per_s = bytes as f64 / elapsed;
    let mut r = Report::default();
    r.put("scenario", "loopback");
    r.put("connections", args.connections as u64);
    r.put("chunk", args.chunk as u64);
    r.put_r("seconds", elapsed, 3);
    r.put("bytes", bytes);
    r.put_f("bytes_per_sec", per_s);
    r.put_r("gib_per_sec", per_s / f64::from(1u32 << 30), 2);
    r.print(
        &format!(
            "loopback: {} connection(s), {} B writes",
            args.connections, args.chunk
        ),
        args.json,
    );
    Ok(true)
}
