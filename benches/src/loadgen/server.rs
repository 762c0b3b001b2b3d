//! The server under test: started by the load generator (on a free loopback port) or already
//! running (`--url`), and its memory and CPU time read from `/proc/<pid>`. The peers are
//! started here too, from what `benches/scripts/setup-peers.sh` installed: `nats-server` (on the
//! `PATH` or in `/usr/sbin`) with a generated config, `node benches/peers/socketio/server.js`,
//! and `tidings-peer-socketioxide` from the target directory.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Target;

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
    /// instead of starting one. Repeatable, for the nodes of a cluster: subscribers (and idle
    /// connections) are spread over them in turn, the publisher uses the first
    #[arg(long, value_name = "URL", conflicts_with = "server_bin")]
    pub url: Vec<String>,
    /// With `--url`: the server's process id, for its RSS and CPU time (else not reported).
    /// Repeatable (the nodes of a cluster): RSS and CPU time are the sums over them
    #[arg(long, value_name = "PID", requires = "url")]
    pub server_pid: Vec<u32>,
    /// With `--url`: a process measured apart from the server, e.g. the nats-server(s) under a
    /// cluster of nodes (repeatable): its CPU time is reported as `nats_cpu_s` (summed)
    #[arg(long, value_name = "PID", requires = "url")]
    pub nats_pid: Vec<u32>,
    /// An extra argument for `tidings serve` (repeatable), e.g. `--server-arg=--keepalive=off`
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// The `nats-server` binary [default: `nats-server` on the PATH, or /usr/sbin/nats-server]
    #[arg(long, value_name = "PATH")]
    pub nats_bin: Option<PathBuf>,
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

/// The CPU clock rate in Hz (`cpu MHz` of the first CPU in `/proc/cpuinfo`).
pub(crate) fn cpu_hz() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some(mhz * 1e6)
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

/// The sum of the RSS and CPU time of `pids`; `None` if there are none or one is gone.
fn sum_stats(pids: &[u32]) -> Option<ProcStats> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(ProcStats::default(), |sum, pid| {
        let s = proc_stats(&pid.to_string())?;
        Some(ProcStats {
            rss_bytes: sum.rss_bytes + s.rss_bytes,
            cpu_s: sum.cpu_s + s.cpu_s,
        })
    })
}

/// A server to measure.
pub(crate) struct Server {
    /// The first (or only) address: the publisher's.
    pub addr: SocketAddr,
    /// Every address (`--url` given several times: the nodes of a cluster), `addr` first.
    pub addrs: Vec<SocketAddr>,
    /// The first (or only) process.
    pub pid: Option<u32>,
    /// Every process whose RSS and CPU time are the server's (summed).
    pub pids: Vec<u32>,
    /// Processes measured apart (`--nats-pid`).
    pub nats_pids: Vec<u32>,
    child: Option<Child>,
    sampler: Option<Sampler>,
    /// A file to remove when the server stops (the generated nats-server config).
    temp_file: Option<PathBuf>,
    /// A directory to remove once the server has stopped (tidings' data directory).
    temp_dir: Option<PathBuf>,
}

/// The message of a run that could not start because a peer is missing.
pub(crate) fn skipped(peer: &str) -> String {
    format!("skipped: {peer} not installed (run benches/scripts/setup-peers.sh)")
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, else the one this binary was built in
/// (it runs from `<target>/release/`), else `target/` of the workspace.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let release = exe.parent()?;
            (release.file_name()? == "release").then(|| release.parent().map(PathBuf::from))?
        })
        .unwrap_or_else(|| bench_dir().join("../target"))
}

fn find_on_path(name: &str, extra: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1 (bound and released; another process could take it before
/// the server does, which only fails that run).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl Server {
    /// Starts `tidings serve` on a free loopback port with `limits` (extra flags) added, or
    /// attaches to `--url`. Waits for the `listening on http://ADDR` line.
    pub(crate) fn start(
        target: Target,
        args: &ServerArgs,
        limits: &[String],
    ) -> Result<Self, String> {
        if !args.url.is_empty() {
            let addrs = args
                .url
                .iter()
                .map(|url| {
                    let hostport = url
                        .trim_start_matches("http://")
                        .trim_start_matches("ws://")
                        .trim_end_matches('/');
                    hostport
                        .to_socket_addrs()
                        .map_err(|e| format!("--url {url}: {e}"))?
                        .next()
                        .ok_or_else(|| format!("--url {url}: no address"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Self {
                addr: addrs[0],
                addrs,
                pid: args.server_pid.first().copied(),
                pids: args.server_pid.clone(),
                nats_pids: args.nats_pid.clone(),
                child: None,
                sampler: None,
                temp_file: None,
                temp_dir: None,
            });
        }
        match target {
            Target::Tidings | Target::TidingsSse => {}
            Target::Nats => return Self::start_nats(args),
            Target::Socketio => {
                let dir = bench_dir().join("peers/socketio");
                let node = find_on_path("node", &[]);
                let (Some(node), true) = (node, dir.join("node_modules/socket.io").is_dir()) else {
                    return Err(skipped("socketio"));
                };
                let mut cmd = Command::new(node);
                cmd.arg("server.js")
                    .arg("0")
                    .current_dir(&dir)
                    .env("NODE_ENV", "production");
                return Self::spawn_announced(cmd, "node benches/peers/socketio/server.js");
            }
            Target::Socketioxide => {
                let bin = target_dir().join("release/tidings-peer-socketioxide");
                if !bin.is_file() {
                    return Err(skipped("socketioxide"));
                }
                let mut cmd = Command::new(&bin);
                cmd.arg("0").env_remove("RUST_LOG");
                return Self::spawn_announced(cmd, &bin.display().to_string());
            }
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
        );
        // The server's default is the durable log: a fresh data directory per run, unless the
        // run chose one (or `--memory`).
        let chose = args
            .server_args
            .iter()
            .any(|a| a.starts_with("--data-dir") || a == "--memory");
        let temp_dir = (!chose).then(|| {
            static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("tidings-bench-{}-{n}", std::process::id()))
        });
        if let Some(dir) = &temp_dir {
            let _ = std::fs::remove_dir_all(dir);
            cmd.arg("--data-dir").arg(dir);
        }
        let mut server = Self::spawn_announced(cmd, &bin.display().to_string())?;
        server.temp_dir = temp_dir;
        Ok(server)
    }

    /// Starts `cmd` and waits for its first stdout line, `listening on http://ADDR`.
    fn spawn_announced(mut cmd: Command, what: &str) -> Result<Self, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
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
            addrs: Vec::new(),
            pid: Some(pid),
            pids: vec![pid],
            nats_pids: Vec::new(),
            child: Some(child),
            sampler: None,
            temp_file: None,
            temp_dir: None,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| format!("{what} printed no `listening on` line in 30 s"))?;
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                format!(
                    "{what} did not start: first stdout line {:?} (see its log above)",
                    line.trim()
                )
            })?;
        server.addr = addr;
        server.addrs = vec![addr];
        Ok(server)
    }

    /// `nats-server -c CONFIG`: client port and WebSocket port on 127.0.0.1 (free ports),
    /// WebSocket without TLS and without compression, no debug or trace logging, otherwise
    /// defaults (`max_pending` 64 MiB per client: the slow-consumer limit). Waits until the
    /// WebSocket port accepts connections.
    fn start_nats(args: &ServerArgs) -> Result<Self, String> {
        let bin = args
            .nats_bin
            .clone()
            .or_else(|| find_on_path("nats-server", &["/usr/sbin", "/usr/local/sbin"]))
            .ok_or_else(|| skipped("nats"))?;
        let (port, ws_port) = (free_port()?, free_port()?);
        let config = std::env::temp_dir().join(format!(
            "tidings-bench-nats-{}-{ws_port}.conf",
            std::process::id()
        ));
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\nmax_connections: 100000\n\
                 websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n  \
                 compression: false\n}}\n"
            ),
        )
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], ws_port));
        let server = Self {
            addr,
            addrs: vec![addr],
            pid: Some(child.id()),
            pids: vec![child.id()],
            nats_pids: Vec::new(),
            child: Some(child),
            sampler: None,
            temp_file: Some(config),
            temp_dir: None,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{} did not listen on {addr} in 10 s",
            bin.display()
        ))
    }

    /// The server's memory and CPU now (summed over its processes), if they are known.
    pub(crate) fn stats(&self) -> Option<ProcStats> {
        sum_stats(&self.pids)
    }

    /// The CPU time of the `--nats-pid` processes now (summed), if any were given.
    pub(crate) fn nats_stats(&self) -> Option<ProcStats> {
        sum_stats(&self.nats_pids)
    }

    /// Starts sampling the server's RSS every 50 ms (for the peak).
    pub(crate) fn start_sampling(&mut self) {
        if !self.pids.is_empty() {
            self.sampler = Some(Sampler::start(self.pids.clone()));
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
        if let Some(file) = self.temp_file.take() {
            let _ = std::fs::remove_file(file);
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let stopped = (0..200).any(|_| {
                let done = matches!(child.try_wait(), Ok(Some(_)));
                if !done {
                    std::thread::sleep(Duration::from_millis(50));
                }
                done
            });
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(dir) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn default_bin() -> PathBuf {
    target_dir().join("release/tidings")
}

struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(stats) = sum_stats(&pids) {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    /// `--url` and `--server-pid` given several times (the nodes of a cluster): every address
    /// in order, the first one the publisher's; the CPU time is the sum over the processes.
    #[test]
    fn attaches_to_several_urls() {
        let me = std::process::id();
        let cli = Cli::try_parse_from([
            "t",
            "--url",
            "http://127.0.0.1:9001/",
            "--url=127.0.0.1:9002",
            "--url",
            "ws://127.0.0.1:9003",
            "--server-pid",
            &me.to_string(),
            "--server-pid",
            &me.to_string(),
            "--nats-pid",
            &me.to_string(),
        ])
        .unwrap();
        let server = Server::start(Target::Tidings, &cli.server, &[]).unwrap();
        let ports: Vec<u16> = server.addrs.iter().map(SocketAddr::port).collect();
        assert_eq!(ports, [9001, 9002, 9003]);
        assert_eq!(server.addr.port(), 9001);
        assert_eq!(server.pids, [me, me]);
        let (one, both) = (proc_stats("self").unwrap(), server.stats().unwrap());
        assert!(
            both.rss_bytes >= one.rss_bytes * 3 / 2,
            "{both:?} vs {one:?}"
        );
        assert!(server.nats_stats().is_some());
        // One --url is still one address; the pid options need --url.
        let cli = Cli::try_parse_from(["t", "--url", "127.0.0.1:9001"]).unwrap();
        let server = Server::start(Target::Tidings, &cli.server, &[]).unwrap();
        assert_eq!(server.addrs.len(), 1);
        assert!(server.stats().is_none());
        assert!(Cli::try_parse_from(["t", "--server-pid", "1"]).is_err());
    }
}
