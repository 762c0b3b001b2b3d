//! The runner's exit status (docs/CONFORMANCE.md): 2 when the suite cannot run, including when
//! the base URL cannot be reached (not 1, which says a case failed).

use std::net::TcpListener;
use std::process::Command;

#[test]
fn an_unreachable_base_exits_2_not_1() {
    // A loopback port that nothing listens on any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args([
            "--base",
            &format!("http://127.0.0.1:{port}"),
            "--timeout-ms",
            "2000",
        ])
        .output()
        .expect("the runner starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("cannot reach"), "stderr: {stderr}");
    // Nothing was run: no case lines.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_bad_option_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args(["--base", "ftp://x"])
        .output()
        .expect("the runner starts");
    assert_eq!(out.status.code(), Some(2));
}
