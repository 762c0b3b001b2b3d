//! The real ksbus client: PyPI `ksbus==1.3.1` (installed by `scripts/setup-python.sh` into
//! `tests/interop/.venv`) against the `tidings` binary on `/ws/bus`, on both runtimes. The
//! scenario is `tests/interop/ksbus_client.py`: connect, subscribe, publish object and string
//! data, publish-wait-recv, direct `pub_id`, remove topic (the `remove` action that client
//! sends), reconnect with the same id. It prints one JSON line per observation, checked here.
//! A second scenario (`tests/interop/ksbus_restart.py`) restarts the server gracefully under a
//! client with `AutoRestart`, which reconnects only because the shutdown closes `/ws/bus` with
//! 1012 (service restart): `websockets` ends a 1001 connection normally, without an error.
//!
//! Without python and the package the test prints why it skipped; with
//! `TIDINGS_REQUIRE_INTEROP=1` (set by CI) that is a failure.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::{RUNTIMES, Server, python_or_skip};

#[test]
fn the_pypi_ksbus_client_works_against_the_server() {
    let Some(python) = python_or_skip("ksbus, websockets") else {
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/ksbus_client.py");
    for &runtime in RUNTIMES {
        let server = Server::start(runtime, &[]);
        let out = Command::new(&python)
            .args([script, &server.addr.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .expect("python runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "[{runtime}] the ksbus client failed ({}):\n{text}",
            out.status
        );
        let steps: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        let step = |name: &str| -> &Value {
            steps
                .iter()
                .find(|s| s["step"] == name)
                .unwrap_or_else(|| panic!("[{runtime}] no {name} step in:\n{text}"))
        };
        let ids = step("connected");
        let (a, b) = (ids["a"].as_str().unwrap(), ids["b"].as_str().unwrap());
        let topic = step("object")["got"]["topic"].as_str().unwrap().to_owned();
        assert_eq!(
            step("object")["got"],
            json!({"from": b, "msg": "hi", "n": 1, "topic": topic})
        );
        assert_eq!(
            step("string")["got"],
            json!({"data": "hello", "from": "tidings", "topic": topic})
        );
        let ack = &step("wait_recv_ack")["got"];
        assert_eq!(
            (&ack["ok"], &ack["from"]),
            (&json!("done"), &json!("tidings"))
        );
        assert_eq!(step("wait_recv_ack")["expired"], false);
        let delivery = &step("wait_recv_delivery")["got"];
        assert_eq!(delivery["msg"], "wait");
        assert_eq!(delivery["event_id"], ack["topic"]);
        assert_eq!(
            step("direct")["got"],
            json!({"dm": 1, "from": b, "to_id": a})
        );
        assert_eq!(step("after_remove")["got"], Value::Null);
        assert_eq!(step("after_remove")["errors"], json!([]));
        assert_eq!(step("reconnected")["errors"], json!([]));
        assert_eq!(
            step("after_reconnect")["got"],
            json!({"from": b, "msg": "again", "topic": topic})
        );
        assert_eq!(
            step("direct_after_reconnect")["got"],
            json!({"data": "dm again", "from": b, "to_id": a})
        );
    }
}

#[test]
fn the_pypi_ksbus_client_reconnects_after_a_graceful_restart() {
    let Some(python) = python_or_skip("ksbus, websockets") else {
        return;
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/ksbus_restart.py"
    );
    for &runtime in RUNTIMES {
        let mut server = Server::start(runtime, &[]);
        let addr = server.addr.to_string();
        let mut client = Command::new(&python)
            .args([script, &addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs");
        // The client's steps; the library also prints lines of its own, which are not JSON.
        let (tx, steps) = mpsc::channel();
        let stdout = client.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(step) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(step["step"].as_str().unwrap_or_default().to_owned());
                }
            }
        });
        let next = |what: &str| {
            let got = steps.recv_timeout(Duration::from_secs(15));
            got.unwrap_or_else(|_| panic!("[{runtime}] no {what:?} from the ksbus client"))
        };
        assert_eq!(next("opened"), "opened", "[{runtime}]");
        let status = server.terminate();
        assert!(status.success(), "[{runtime}] exit status {status:?}");
        // The shutdown's close (1012) is an error for the client: OnClose, then AutoRestart.
        assert_eq!(next("closed"), "closed", "[{runtime}]");
        let mut again = Server::start_on(runtime, &addr, &[]);
        let reopened = next("opened");
        let _ = client.kill();
        let _ = client.wait();
        again.terminate();
        assert_eq!(
            reopened, "opened",
            "[{runtime}] the client did not reconnect"
        );
    }
}
