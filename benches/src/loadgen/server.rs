//! The server under test: started by the load generator (on a free loopback port) or already
//! running (`--url`), and its memory and CPU time read from `/proc/<pid>`.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which server, and how to start it. Shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The server's async runtime (passed as `tidings serve --runtime`)
    #[arg(long, default_value = "tokio", value_parser = ["tokio", "async-std"])]
    pub runtime: String,
    /// The `tidings` binary to start [default: target/release/tidings of this workspace]
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Use a running server at this address (`http://127.0.0.1:9313` or `127.0.0.1:9313`)
    /// instead of starting one
    #[arg(long, value_name = "URL", conflicts_with = "server_bin")]
    pub url: Option<String>,
    /// With `--url`: the server's process id, for its RSS and CPU time (else not reported)
    #[arg(long, value_name = "PID", requires = "url")]
    pub server_pid: Option<u32>,
    /// An extra argument for `tidings serve` (repeatable), e.g. `--server-arg=--keepalive=off`
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Client worker threads (0: one per CPU)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print the result as one JSON object on the last line too
    #[arg(long)]
    pub json: bool,
}

/// Memory and CPU of a process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcStats {
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// `utime + stime`, seconds.
    pub cpu_s: f64,
}

/// Reads `VmRSS` and `utime + stime` of `pid` (`"self"` for this process).
pub(crate) fn proc_stats(pid: &str) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux for every architecture the kernel exports to user space.
    #[allow(clippy::cast_precision_loss)]
    let cpu_s = (utime + stime) as f64 / 100.0;
    Some(ProcStats {
        rss_bytes: rss_kib * 1024,
        cpu_s,
    })
}

/// A server to measure.
pub(crate) struct Server {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
    sampler: Option<Sampler>,
}

impl Server {
    /// Starts `tidings serve` on a free loopback port with `limits` (extra flags) added, or
    /// attaches to `--url`. Waits for the `listening on http://ADDR` line.
    pub(crate) fn start(args: &ServerArgs, limits: &[String]) -> Result<Self, String> {
        if let Some(url) = &args.url {
            let hostport = url
                .trim_start_matches("http://")
                .trim_start_matches("ws://")
                .trim_end_matches('/');
            let addr = hostport
                .to_socket_addrs()
                .map_err(|e| format!("--url {url}: {e}"))?
                .next()
                .ok_or_else(|| format!("--url {url}: no address"))?;
            return Ok(Self {
                addr,
                pid: args.server_pid,
                child: None,
                sampler: None,
            });
        }
        let bin = args.server_bin.clone().unwrap_or_else(default_bin);
        if !bin.exists() {
            return Err(format!(
                "no server binary at {}: build it with `cargo build --release -p tidings`, or \
                 pass --server-bin or --url",
                bin.display()
            ));
        }
        let mut cmd = Command::new(&bin);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            &args.runtime,
        ])
        .args(limits)
        .args(&args.server_args)
        .env(
            "RUST_LOG",
            std::env::var("TIDINGS_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads the first line, then drains stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
        });
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid: Some(pid),
            child: Some(child),
            sampler: None,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| format!("{} printed no `listening on` line in 30 s", bin.display()))?;
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                format!(
                    "{} did not start: first stdout line {:?} (see its log above)",
                    bin.display(),
                    line.trim()
                )
            })?;
        server.addr = addr;
        Ok(server)
    }

    /// The server's memory and CPU now, if its process is known.
    pub(crate) fn stats(&self) -> Option<ProcStats> {
        proc_stats(&self.pid?.to_string())
    }

    /// Starts sampling the server's RSS every 50 ms (for the peak).
    pub(crate) fn start_sampling(&mut self) {
        if let Some(pid) = self.pid {
            self.sampler = Some(Sampler::start(pid));
        }
    }

    /// The highest RSS sampled since `start_sampling` (and now), in bytes.
    pub(crate) fn peak_rss(&mut self) -> Option<u64> {
        let now = self.stats().map(|s| s.rss_bytes);
        let sampled = self.sampler.take().map(Sampler::stop);
        match (now, sampled) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Drop for Server {
    /// Stops a server this process started: SIGTERM (graceful shutdown), SIGKILL after 10 s.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            for _ in 0..200 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn default_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("release/tidings")
}

struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let pid = pid.to_string();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(stats) = proc_stats(&pid) {
                    p.fetch_max(stats.rss_bytes, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { stop, peak, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed)
    }
}
