//! History that survives a restart, with the real binary (`tidings serve --data-dir`): publishes
//! acknowledged before a `kill -9` are all there after a restart on the same port and directory,
//! and SSE (`Last-Event-ID`) and WebSocket (`from`) clients resume with no gap notice and no
//! duplicate, under the same epoch. Also: a torn last record, a flipped byte in a sealed segment,
//! two servers on one directory, a disk that refuses writes, and `--memory` (a restart is a new
//! epoch). Every test runs on both runtimes.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{Server, TempDir, for_each_runtime};
use serde_json::{Value, json};

/// The cursor's position (`<epoch hex>-<seq>`).
fn seq(cursor: &str) -> u64 {
    cursor
        .rsplit_once('-')
        .expect("a cursor")
        .1
        .parse()
        .expect("a sequence")
}

fn epoch(cursor: &str) -> &str {
    cursor.split_once('-').expect("a cursor").0
}

/// Publishes `n.<i>` on topic `crash` over one WebSocket as fast as answers come, and reports
/// each acknowledged cursor, until the server goes away.
fn publisher(server: &Server) -> mpsc::Receiver<(u64, String)> {
    let mut ws = server.ws();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for i in 1.. {
            let frame = json!({"op": "publish", "id": i, "topic": "crash", "data": i});
            if ws
                .ws
                .send(tungstenite::Message::text(frame.to_string()))
                .is_err()
            {
                return;
            }
            let answer = loop {
                match ws.ws.read() {
                    Ok(tungstenite::Message::Text(text)) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        if v["type"] == "ok" || v["type"] == "error" {
                            break v;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            };
            assert_eq!(answer["type"], "ok", "{answer}");
            if tx
                .send((i, answer["cursor"].as_str().unwrap().to_owned()))
                .is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Resumes on WebSocket from `from` and reads the `crash` events up to `last` (by position):
/// returns their data (as text) in order; a gap notice fails the test.
fn resume_ws(server: &Server, from: &str, last: u64) -> Vec<String> {
    let mut ws = server.ws();
    let ok = ws.ask(json!({"op": "subscribe", "id": 1, "topic": "crash", "from": from}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let mut got = Vec::new();
    loop {
        let frame = ws.recv();
        assert_ne!(
            frame["type"], "gap",
            "no gap notice after a restart: {frame}"
        );
        if frame["type"] != "event" {
            continue;
        }
        let cursor = frame["cursor"].as_str().unwrap();
        assert_eq!(epoch(cursor), epoch(from), "the epoch survives the restart");
        got.push(match &frame["data"] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        if seq(cursor) >= last {
            return got;
        }
    }
}

/// The same over SSE with `Last-Event-ID`.
fn resume_sse(server: &Server, from: &str, last: u64) -> Vec<String> {
    let mut sse = server.sse("/sse?topic=crash", &[("Last-Event-ID", from)]);
    assert_eq!(sse.head.status, 200);
    let mut got = Vec::new();
    loop {
        let event = sse.next_event();
        assert_ne!(
            event.event_type, "gap",
            "no gap notice after a restart: {}",
            event.data
        );
        if event.event_type != "message" {
            continue;
        }
        assert_eq!(epoch(&event.last_event_id), epoch(from));
        got.push(event.data.clone());
        if seq(&event.last_event_id) >= last {
            return got;
        }
    }
}

#[test]
fn a_killed_server_loses_nothing_it_acknowledged() {
    for_each_runtime(|rt| {
        // Killed at several points of a burst: early, and after the log rolled segments.
        for (kill_after, segment) in [(20u64, "1048576"), (400, "4096")] {
            let dir = TempDir::new("crash");
            let segment_bytes = format!("store.segment_bytes={segment}");
            let args = ["--data-dir", dir.path(), "--set", &segment_bytes];
            let mut server = Server::start(rt, &args);
            let acks = publisher(&server);
            let mut acked = Vec::new();
            while acked.len() < kill_after as usize {
                acked.push(
                    acks.recv_timeout(Duration::from_secs(15))
                        .expect("acks come"),
                );
            }
            server.kill9();
            // Whatever was acknowledged while it died is acknowledged too.
            acked.extend(acks.iter());
            let addr = server.addr.to_string();
            let server = Server::start_on(rt, &addr, &args);

            let (first_i, first) = acked[0].clone();
            let (last_i, last) = acked.last().cloned().unwrap();
            let want: Vec<String> = (first_i + 1..=last_i).map(|i| i.to_string()).collect();
            let ws = resume_ws(&server, &first, seq(&last));
            assert_eq!(
                ws, want,
                "[{rt}] WebSocket resume after kill -9 at {kill_after}"
            );
            let sse = resume_sse(&server, &first, seq(&last));
            assert_eq!(sse, want, "[{rt}] SSE resume after kill -9 at {kill_after}");

            // New events come after every old one, in the same epoch.
            let next = server.publish("crash", "after");
            assert_eq!(epoch(&next), epoch(&last));
            assert!(seq(&next) > seq(&last), "{next} after {last}");
        }
    });
}

#[test]
fn memory_only_restarts_with_a_new_epoch() {
    for_each_runtime(|rt| {
        let mut server = Server::start(rt, &["--memory"]);
        let cursor = server.publish("crash", "1");
        server.kill9();
        let server = Server::start_on(rt, &server.addr.to_string(), &["--memory"]);
        let mut ws = server.ws();
        ws.ask(json!({"op": "subscribe", "id": 1, "topic": "crash", "from": cursor}));
        let gap = ws.recv();
        assert_eq!(gap["type"], "gap", "[{rt}] {gap}");
        assert_eq!(gap["reason"], "epoch");
    });
}

/// The segment files of a data directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Runs `tidings serve` expecting it to refuse to start: its exit status and what it printed.
fn refused(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut stderr = String::new();
        let _ = pipe.read_to_string(&mut stderr);
        stderr
    });
    // It must give up at once; a server that starts instead is stopped and the test fails.
    let pid = child.id().to_string();
    let (exited, exit) = mpsc::channel();
    thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = match exit.recv_timeout(Duration::from_secs(30)) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("tidings serve {args:?} started instead of refusing");
        }
    };
    (status.code().unwrap_or(-1), reader.join().unwrap())
}

#[test]
fn a_torn_last_record_is_dropped_and_its_position_never_reused() {
    for_each_runtime(|rt| {
        let dir = TempDir::new("torn");
        let args = ["--data-dir", dir.path()];
        let mut server = Server::start(rt, &args);
        let cursors: Vec<String> = (1..=5)
            .map(|i| server.publish("crash", &i.to_string()))
            .collect();
        server.kill9();
        // The last record loses its last bytes, as if the machine stopped mid-write.
        let active = segments(&dir.0).pop().expect("a segment");
        let len = std::fs::metadata(&active).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&active)
            .unwrap();
        file.set_len(len - 3).unwrap();

        let server = Server::start_on(rt, &server.addr.to_string(), &args);
        let got = resume_ws(&server, &cursors[0], seq(&cursors[3]));
        assert_eq!(got, ["2", "3", "4"], "[{rt}] the intact records are there");
        // Resuming from the torn event's cursor (as a client that received it before a power
        // loss would): a gap, never another event under that cursor.
        let next = server.publish("crash", "after");
        assert!(
            seq(&next) > seq(&cursors[4]),
            "[{rt}] {next} reuses a position"
        );
        let mut ws = server.ws();
        ws.ask(json!({"op": "subscribe", "id": 1, "topic": "crash", "from": cursors[4]}));
        let first = ws.recv();
        assert_eq!(
            first["type"], "gap",
            "[{rt}] the torn event is announced as lost: {first}"
        );
        let event = ws.recv();
        assert_eq!(event["cursor"], next.as_str(), "[{rt}] {event}");
    });
}

#[test]
fn a_corrupt_sealed_segment_is_refused_or_skipped_on_request() {
    for_each_runtime(|rt| {
        let dir = TempDir::new("corrupt");
        let args = [
            "--data-dir",
            dir.path(),
            "--set",
            "store.segment_bytes=4096",
        ];
        let mut server = Server::start(rt, &args);
        let first = server.publish("crash", "0");
        let body = "x".repeat(200);
        let mut last = first.clone();
        for _ in 0..60 {
            last = server.publish("crash", &body);
        }
        server.terminate();
        let sealed = segments(&dir.0);
        assert!(sealed.len() >= 3, "[{rt}] the log rolled: {sealed:?}");
        let mut bytes = std::fs::read(&sealed[0]).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&sealed[0], bytes).unwrap();

        let (code, stderr) = refused(&args);
        let name = sealed[0].file_name().unwrap().to_str().unwrap();
        assert_ne!(code, 0, "[{rt}] it refuses to start");
        assert!(
            stderr.contains(name),
            "[{rt}] the message names the file: {stderr}"
        );
        assert!(
            stderr.contains("--skip-corrupt"),
            "[{rt}] and what to do: {stderr}"
        );

        let mut skip = args.to_vec();
        skip.push("--skip-corrupt");
        let server = Server::start_on(rt, "127.0.0.1:0", &skip);
        let mut ws = server.ws();
        ws.ask(json!({"op": "subscribe", "id": 1, "topic": "crash", "from": first}));
        let gap = ws.recv();
        assert_eq!(
            gap["type"], "gap",
            "[{rt}] resuming into the skipped segment: {gap}"
        );
        let event = ws.recv();
        assert_eq!(event["type"], "event", "[{rt}] then the rest: {event}");
        assert!(seq(event["cursor"].as_str().unwrap()) <= seq(&last));
    });
}

#[test]
fn one_data_directory_serves_one_server() {
    for_each_runtime(|rt| {
        let dir = TempDir::new("lock");
        let _server = Server::start(rt, &["--data-dir", dir.path()]);
        let (code, stderr) = refused(&["--runtime", rt, "--data-dir", dir.path()]);
        assert_ne!(code, 0);
        assert!(stderr.contains("lock"), "[{rt}] names the lock: {stderr}");
        assert!(
            stderr.contains(dir.path()),
            "[{rt}] and the directory: {stderr}"
        );
    });
}

#[test]
fn a_disk_that_refuses_writes_fails_publishes_and_loses_nothing_acknowledged() {
    for_each_runtime(|rt| {
        let dir = TempDir::new("full");
        // A file-size limit (`ulimit -f`, 512-byte blocks) stands in for a full disk: writes past
        // it fail with EFBIG (SIGXFSZ ignored, so the process lives).
        let mut child = Command::new("sh")
            .args([
                "-c",
                "trap '' XFSZ; ulimit -f 16; exec \"$0\" \"$@\"",
                env!("CARGO_BIN_EXE_tidings"),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--runtime",
                rt,
                "--data-dir",
                dir.path(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        while !line.ends_with('\n') {
            assert_eq!(
                stdout.read(&mut byte).unwrap(),
                1,
                "the server announces itself"
            );
            line.push(byte[0] as char);
        }
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap()
            .to_owned();
        let server = Server {
            child,
            addr: addr.parse().unwrap(),
            runtime: rt,
            own_data_dir: None,
        };
        let body = "y".repeat(500);
        let mut acked = Vec::new();
        let mut refused_with = None;
        for _ in 0..100 {
            let resp = server.request("POST", "/publish?topic=crash", &[], body.as_bytes());
            if resp.status == 200 {
                let v: Value = serde_json::from_str(&resp.body).unwrap();
                acked.push(v["id"].as_str().unwrap().to_owned());
            } else {
                refused_with = Some((resp.status, resp.error_code(), resp.body));
                break;
            }
        }
        let (status, code, body) = refused_with.expect("the limit is reached");
        assert_eq!(
            (status, code.as_str()),
            (503, "unavailable"),
            "[{rt}] {body}"
        );
        assert!(!acked.is_empty());
        drop(server);

        // Without the limit, every acknowledged event is there.
        let server = Server::start(rt, &["--data-dir", dir.path()]);
        let last = acked.last().unwrap();
        let got = resume_ws(&server, &format!("{}-0", epoch(last)), seq(last));
        assert_eq!(
            got.len(),
            acked.len(),
            "[{rt}] nothing acknowledged was lost"
        );
    });
}
