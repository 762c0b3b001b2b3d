//! A real `nats-server` with JetStream for the cluster tests: started on a free loopback port
//! with its store under a temporary directory, stopped by pid (and restarted on the same port
//! and store, for outage tests). Debian's package (`scripts/setup-interop.sh` installs it).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, skip};

pub struct Nats {
    pub child: Option<Child>,
    pub port: u16,
    pub store: TempDir,
    bin: PathBuf,
    /// The clustering flags of a member of a NATS cluster.
    cluster_args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The nats-server binary, or `None` after saying why the test skips.
fn nats_server_or_skip() -> Option<PathBuf> {
    let found = [
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|bin| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        skip("nats-server is missing (scripts/setup-interop.sh installs Debian's)");
    }
    found
}

impl Nats {
    /// A JetStream server on a free port; `None` (skipped) without nats-server.
    pub fn start() -> Option<Self> {
        let bin = nats_server_or_skip()?;
        let mut nats = Self {
            child: None,
            port: free_port(),
            store: TempDir::new("nats"),
            bin,
            cluster_args: Vec::new(),
        };
        nats.restart();
        Some(nats)
    }

    /// A NATS cluster of `n` JetStream servers routed to each other on loopback (for streams
    /// with replicas); `None` (skipped) without nats-server.
    pub fn cluster(n: usize) -> Option<Vec<Self>> {
        let bin = nats_server_or_skip()?;
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let all = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<Self> = routes
            .iter()
            .enumerate()
            .map(|(i, route)| Self {
                child: None,
                port: free_port(),
                store: TempDir::new("nats"),
                bin: bin.clone(),
                cluster_args: vec![
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "tidings-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    all.clone(),
                ],
            })
            .collect();
        for server in &mut servers {
            server.restart();
        }
        Some(servers)
    }

    /// The URLs of every server of a cluster, as `--nats` takes them.
    pub fn urls(servers: &[Self]) -> String {
        servers.iter().map(Self::url).collect::<Vec<_>>().join(",")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port and store, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.cluster_args)
            .arg("-l")
            .arg(self.store.0.join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Deletes a JetStream stream, as an operator would (with the NATS client library).
    pub fn delete_stream(&self, name: &str) {
        let url = self.url();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let client = async_nats::connect(url).await.expect("connected to NATS");
            let js = async_nats::jetstream::new(client);
            js.delete_stream(name).await.expect("the stream deleted");
        });
    }

    /// SIGTERM (a clean stop: the store is written out), then waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success());
            let deadline = Instant::now() + Duration::from_secs(15);
            while child.try_wait().expect("wait works").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nats-server did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// A copy of the store of the stopped server (a backup, or the files a power loss leaves).
    pub fn copy_store(&self) -> TempDir {
        assert!(self.child.is_none(), "stop it first");
        let copy = TempDir::new("nats-copy");
        copy_dir(&self.store.0, &copy.0);
        copy
    }

    /// Puts a copy made by [`Nats::copy_store`] back as the store of the stopped server: what it
    /// stored since is gone (its log file stays).
    pub fn restore_store(&self, copy: &TempDir) {
        assert!(self.child.is_none(), "stop it first");
        let jetstream = self.store.0.join("jetstream");
        std::fs::remove_dir_all(&jetstream).expect("the store removed");
        copy_dir(&copy.0.join("jetstream"), &jetstream);
    }

    /// SIGKILL, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Copies the directory `from` (recursively) to `to`, created if missing.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("a directory");
    for entry in std::fs::read_dir(from).expect("a readable directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("a copied file");
        }
    }
}
