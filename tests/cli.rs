//! The command-line client (`tidings sub`, `tidings pub`) against the real server binary over
//! loopback: events as JSON lines, resuming after a server restart with a gap line, stdin data,
//! and clear errors (exit code 2 for bad input, 1 for a server that cannot be reached).
//!
//! Nothing sleeps: `sub` starts from a cursor so that it gets every event published after it,
//! whenever its subscription lands; reads have timeouts so that a failure fails fast.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.env("RUST_LOG", "warn")
        .env_remove("TIDINGS_URL")
        .env_remove("TIDINGS_TOKEN");
    cmd
}

/// A child whose stdout lines arrive on a channel.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the tidings binary starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(READ_TIMEOUT)
            .expect("a line in time")
    }

    fn next_json(&self) -> Value {
        let line = self.next();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }

    /// Waits for the exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait();
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Server {
    proc: Lines,
    addr: SocketAddr,
}

impl Server {
    fn start(listen: &str) -> Self {
        let mut cmd = bin();
        cmd.args(["serve", "--listen", listen, "--memory"]);
        let proc = Lines::spawn(cmd);
        let line = proc.next();
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self { proc, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// `tidings pub`, which must succeed; returns the cursor it printed.
fn publish(server: &Server, args: &[&str], stdin: Option<&str>) -> String {
    let url = server.url();
    let mut all = vec!["pub", "--url", &url];
    all.extend_from_slice(args);
    let out = run(&all, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pub {args:?} failed: {stderr}");
    let cursor = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (epoch, seq) = cursor.split_once('-').expect("a cursor");
    assert!(epoch.chars().all(|c| c.is_ascii_hexdigit()), "{cursor}");
    assert!(seq.parse::<u64>().is_ok(), "{cursor}");
    cursor
}

#[test]
fn sub_prints_json_lines_and_pub_prints_cursors() {
    let server = Server::start("127.0.0.1:0");
    let start = publish(&server, &["chat.lobby", "before"], None);
    let mut sub = bin();
    sub.args([
        "sub",
        "chat.*",
        "orders.>",
        "--url",
        &server.url(),
        "--from",
        &start,
    ]);
    let sub = Lines::spawn(sub);
    let one = publish(&server, &["chat.lobby", "one"], None);
    let two = publish(
        &server,
        &[
            "orders.eu.new",
            r#"{"id": 7}"#,
            "--json",
            "--event",
            "created",
        ],
        None,
    );
    publish(&server, &["news.x", "not subscribed"], None);
    let three = publish(&server, &["chat.room", "-"], Some("line 1\nline \"2\""));
    assert_eq!(
        sub.next_json(),
        json!({"type":"event","topic":"chat.lobby","cursor":one,"data":"one"})
    );
    // JSON data is printed as the JSON value, verbatim.
    assert_eq!(
        sub.next(),
        format!(
            r#"{{"type":"event","topic":"orders.eu.new","cursor":"{two}","event":"created","data":{{"id": 7}}}}"#
        )
    );
    assert_eq!(
        sub.next_json(),
        json!({"type":"event","topic":"chat.room","cursor":three,"data":"line 1\nline \"2\""})
    );
}

#[test]
fn sub_resumes_after_a_server_restart_with_a_gap_line() {
    let mut server = Server::start("127.0.0.1:0");
    let addr = server.addr.to_string();
    let start = publish(&server, &["t.a", "0"], None);
    let mut cmd = bin();
    cmd.args([
        "sub",
        "t.*",
        "--url",
        &server.url(),
        "--from",
        &start,
        "--count",
        "3",
    ]);
    let mut sub = Lines::spawn(cmd);
    let first = publish(&server, &["t.a", "1"], None);
    assert_eq!(sub.next_json()["cursor"], first.as_str());
    server.proc.terminate();
    let server = Server::start(&addr);
    let after = publish(&server, &["t.b", "2"], None);
    let gap = sub.next_json();
    assert_eq!(gap["type"], "gap");
    assert_eq!(gap["reason"], "epoch");
    assert_eq!(gap["from"], first.as_str());
    let event = sub.next_json();
    assert_eq!(event["cursor"], after.as_str());
    assert_eq!(event["data"], "2");
    // --count 3: exits cleanly after the third event.
    publish(&server, &["t.c", "3"], None);
    assert_eq!(sub.next_json()["data"], "3");
    assert!(sub.wait().success());
}

#[test]
fn bad_input_and_unreachable_servers_are_clear_errors() {
    let server = Server::start("127.0.0.1:0");
    let url = server.url();
    let check = |args: &[&str], code: i32, needle: &str| {
        let out = run(args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    check(&["pub", "--url", &url, "a.*", "x"], 2, "invalid");
    check(&["pub", "--url", &url, "a", "{", "--json"], 2, "not valid");
    check(
        &["pub", "--url", &url, "a", "x", "--event", "tidings-x"],
        2,
        "reserved",
    );
    check(&["sub", "--url", &url, "a..b"], 2, "invalid");
    check(&["sub", "--url", &url, "a", "--from", "nope"], 2, "cursor");
    check(&["sub", "--url", &url], 2, "TOPIC");
    check(&["pub", "--url", "http://x/ws", "a", "x"], 1, "invalid URL");
    // Nobody listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = format!("ws://{closed}/ws");
    check(&["pub", "--url", &dead, "a", "x"], 1, "cannot connect");
    check(&["sub", "--url", &dead, "a"], 1, "cannot connect");
}

#[test]
fn tokens_are_sent_and_refusals_reported() {
    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
    let mut cmd = bin();
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--memory",
        "--anonymous",
        "false",
        "--set",
        &format!("auth.jwt.secret=\"{SECRET}\""),
    ]);
    let proc = Lines::spawn(cmd);
    let line = proc.next();
    let addr = line.strip_prefix("listening on http://").unwrap();
    let url = format!("ws://{addr}/ws");
    let out = run(&["pub", "--url", &url, "chat.a", "x"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"cli","exp":exp,"tidings":{"publish":["chat.*"]}}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let out = run(
        &["pub", "--url", &url, "--token", &token, "chat.a", "x"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["pub", "--url", &url, "--token", &token, "news.a", "x"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
}

/// `tidings serve` refuses a bad configuration before it listens: exit code 2 and a message
/// naming the key or flag, for the file, `--set` and the flags alike; the example file is
/// accepted.
#[test]
fn serve_refuses_bad_configuration_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("tidings-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let typo = file(
        "typo.toml",
        "[timers]\nkeepalive = \"5s\"\nidle_timout = \"1m\"\n",
    );
    let moved = file("moved.toml", "[http]\nclose_grace = \"5s\"\n");
    let check = |args: &[&str], needle: &str| {
        let out = run(args, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?} listened");
    };
    check(&["serve", "--config", &typo], "idle_timout");
    check(&["serve", "--config", &moved], "timers.close_grace");
    check(
        &["serve", "--set", "limits.max_frame_byte=1"],
        "max_frame_byte",
    );
    check(&["serve", "--set", "retention.max_age=5y"], "unknown unit");
    check(&["serve", "--retention-age", "5y"], "--retention-age");
    check(
        &["serve", "--max-frame-bytes", "0"],
        "limits.max_frame_bytes",
    );
    check(
        &["serve", "--slow-consumer-rule", "prices"],
        "PATTERN=POLICY",
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // The example file parses, and the server starts with it.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/tidings.example.toml");
    let mut cmd = bin();
    let data = std::env::temp_dir().join(format!("tidings-example-{}", std::process::id()));
    cmd.args(["serve", "--config", example, "--listen", "127.0.0.1:0"]);
    cmd.arg("--data-dir").arg(&data);
    let mut server = Lines::spawn(cmd);
    assert!(server.next().starts_with("listening on http://127.0.0.1:"));
    server.terminate();
    assert!(server.wait().success());
    let _ = std::fs::remove_dir_all(&data);
}
