//! The runner as a user sees it (docs/CONFORMANCE.md). Exit statuses: 2 when the suite cannot
//! run, including when the base URL cannot be reached (not 1, which says a case failed), when
//! the TLS handshake with an `https://` base fails (saying so, naming the base and the CA file),
//! or when a profile names an unknown feature; 3 when the server dies during the run. Profiles
//! select cases (a ksbus-only profile: only ksbus spec cases), `--case`/`--skip` globs, JUnit
//! output that is well-formed XML, and failures of independent later steps still reported.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// The runner's stderr and exit status against `base`, with these extra arguments.
fn runner(base: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args(["--base", base, "--timeout-ms", "2000"])
        .args(extra)
        .output()
        .expect("the runner starts");
    assert!(
        out.stdout.is_empty(),
        "no case ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh directory under the test target's temporary directory.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn an_https_base_that_does_not_speak_tls_exits_2_saying_so() {
    let certs = tidings_conformance::tls::make_test_cert(&temp_dir("not-tls")).unwrap();
    // A plain HTTP listener: the runner's reachability check, then its TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(2) {
            let mut conn = conn.unwrap();
            let _ = conn.read(&mut [0u8; 1024]);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let base = format!("https://{addr}");
    let ca = certs.ca.display().to_string();
    let (code, stderr) = runner(&base, &["--ca", &ca]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("TLS handshake failed"), "stderr: {stderr}");
    assert!(
        stderr.contains(&base) && stderr.contains(&ca),
        "names the base and the CA file: {stderr}"
    );
}

#[test]
fn a_certificate_the_runner_does_not_trust_exits_2_saying_so() {
    // The server's certificate is signed by one test CA; the runner trusts another.
    let served = tidings_conformance::tls::make_test_cert(&temp_dir("served")).unwrap();
    let other = tidings_conformance::tls::make_test_cert(&temp_dir("other")).unwrap();
    let cert = CertificateDer::pem_file_iter(&served.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&served.key).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert, key)
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(2) {
            let mut tcp = tcp.unwrap();
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            while conn.is_handshaking() && conn.complete_io(&mut tcp).is_ok() {}
        }
    });
    let base = format!("https://{addr}");
    let ca = other.ca.display().to_string();
    let (code, stderr) = runner(&base, &["--ca", &ca]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    // (BadSignature: both test CAs have the same name, so the other one is taken for the
    // issuer and its key does not verify the signature; UnknownIssuer for a CA of another name.)
    assert!(
        stderr.contains("TLS handshake failed: invalid peer certificate"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains(&base) && stderr.contains(&ca),
        "stderr: {stderr}"
    );
}

#[test]
fn make_test_cert_writes_the_three_files() {
    let dir = temp_dir("make");
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args(["--make-test-cert", &dir.display().to_string()])
        .output()
        .expect("the runner starts");
    assert!(out.status.success());
    for file in ["ca.pem", "server.pem", "server.key"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{file}: {text}");
    }
}

/// The runner's output (exit status, stdout, stderr) with these arguments.
fn conformance(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings-conformance"))
        .args(args)
        .output()
        .expect("the runner starts");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A profile file with this text.
fn profile_file(name: &str, text: &str) -> String {
    let dir = temp_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("profile.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The shipped profiles, by file name.
fn shipped(name: &str) -> String {
    format!("{}/profiles/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `--list` lines: (id, status, kind, features).
fn listing(args: &[&str]) -> Vec<(String, String, String, Vec<String>)> {
    let (code, stdout, stderr) = conformance(&[&["--list"], args].concat());
    assert_eq!(code, Some(0), "stderr: {stderr}");
    stdout
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(
                f.len(),
                5,
                "id, status, kind, features, description: {line}"
            );
            (
                f[0].to_owned(),
                f[1].to_owned(),
                f[2].to_owned(),
                f[3].split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn an_unknown_feature_in_a_profile_is_an_error_naming_the_allowed_ones() {
    let path = profile_file(
        "unknown-feature",
        "features = [\"ksbus\", \"websockets\"]\n",
    );
    let (code, stdout, stderr) = conformance(&["--list", "--profile", &path]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stdout.is_empty(), "nothing listed: {stdout}");
    assert!(
        stderr.contains(&path) && stderr.contains("unknown feature \"websockets\""),
        "{stderr}"
    );
    for (feature, _) in tidings_conformance::FEATURES {
        assert!(stderr.contains(feature), "lists {feature}: {stderr}");
    }
    // The same with --base: the run does not start either (no server is needed to say so).
    let (code, stdout, _) = conformance(&["--base", "http://127.0.0.1:9", "--profile", &path]);
    assert_eq!((code, stdout.as_str()), (Some(2), ""));
}

#[test]
fn every_shipped_profile_loads() {
    for name in [
        "tidings.toml",
        "tidings-serve.toml",
        "ksbus.toml",
        "etp.toml",
        "sse.toml",
    ] {
        let cases = listing(&["--profile", &shipped(name)]);
        assert!(cases.iter().any(|c| c.1 == "run"), "{name} runs something");
    }
}

#[test]
fn a_ksbus_only_profile_runs_only_ksbus_spec_cases() {
    let cases = listing(&["--profile", &shipped("ksbus.toml")]);
    let run: Vec<_> = cases.iter().filter(|c| c.1 == "run").collect();
    assert!(run.len() >= 15, "the ksbus spec cases run: {}", run.len());
    for (id, _, kind, features) in &run {
        assert!(id.starts_with("ksbus/"), "{id}");
        assert_eq!(kind, "spec", "{id}");
        assert_eq!(features, &["ksbus"], "{id}");
    }
    // Everything else is listed as not applicable, naming what is missing; the ksbus
    // extensions among them.
    let na: Vec<_> = cases.iter().filter(|c| c.1 != "run").collect();
    assert_eq!(run.len() + na.len(), cases.len());
    assert!(na.iter().all(|c| c.1.starts_with("n/a (needs ")), "{na:?}");
    assert!(
        na.iter().any(|c| c.0 == "ksbus/subscribe/double-sub-once"
            && c.2 == "extension"
            && c.1 == "n/a (needs tidings-extension)"),
        "{na:?}"
    );
    // Without --profile: tidings' full profile, every case runs (the cluster ones with a peer).
    assert!(
        listing(&["--peer", "http://127.0.0.1:9"])
            .iter()
            .all(|c| c.1 == "run")
    );
}

#[test]
fn case_and_skip_globs_select_cases() {
    let ids: Vec<String> = listing(&[
        "--case",
        "ksbus/handshake/*",
        "--case",
        "etp/origin/*",
        "--skip",
        "*/duplicate-id",
        "--skip",
        "*alias*",
    ])
    .into_iter()
    .map(|c| c.0)
    .collect();
    assert_eq!(
        ids,
        [
            "etp/origin/foreign-origin",
            "etp/origin/no-origin",
            "ksbus/handshake/ping",
            "ksbus/handshake/ping-without-id",
        ]
    );
    // A glob that matches nothing selects nothing.
    assert!(listing(&["--case", "nothing/*"]).is_empty());
}

/// A fake server: answers every request with an empty 404 and closes, for the first `limit`
/// connections (then stops listening: connections are refused).
fn fake_server(limit: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(limit) {
            let mut conn = conn.unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_millis(300)))
                .unwrap();
            let _ = conn.read(&mut [0u8; 4096]);
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        // The listener is dropped here: the server is gone.
    });
    format!("http://{addr}")
}

#[test]
fn a_server_dying_mid_run_stops_the_run_with_status_3() {
    // The first connection is the runner's reachability check; the first case's request and
    // the check after it fails are answered; then nothing listens.
    let base = fake_server(3);
    let (code, stdout, stderr) = conformance(&[
        "--base",
        &base,
        "--timeout-ms",
        "2000",
        "--case",
        "http/endpoints/healthz",
        "--case",
        "http/endpoints/metrics",
        "--case",
        "http/endpoints/unknown-path",
    ]);
    assert_eq!(code, Some(3), "stdout: {stdout}\nstderr: {stderr}");
    // The first case failed on its merits (404, not 200), and is reported.
    assert!(
        stdout.contains(
            "FAIL  http/endpoints/healthz: step 1: http GET /healthz: expected status 200, got 404"
        ),
        "{stdout}"
    );
    // The second found the server gone: said once, and the run stopped (no third case).
    assert_eq!(stdout.matches("stopped answering").count(), 1, "{stdout}");
    assert!(
        stdout.contains("STOP  the server stopped answering during http/endpoints/metrics"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL  http/endpoints/metrics"), "{stdout}");
    assert!(!stdout.contains("unknown-path"), "{stdout}");
    assert!(stderr.contains("stopped answering"), "{stderr}");
}

#[test]
fn junit_output_is_well_formed_with_failures_and_skipped_cases() {
    let base = fake_server(usize::MAX);
    let (code, stdout, stderr) = conformance(&[
        "--base",
        &base,
        "--timeout-ms",
        "2000",
        "--format",
        "junit",
        "--case",
        "http/endpoints/healthz",
        "--case",
        "http/endpoints/not-http",
        "--case",
        "etp/handlers/request-ack",
        "--without",
        "etp-handlers",
    ]);
    assert_eq!(code, Some(1), "a case failed: {stderr}");
    let elements = xml_elements(&stdout);
    let count = |name: &str| elements.iter().filter(|e| e.as_str() == name).count();
    assert_eq!(count("testsuites"), 1, "{stdout}");
    assert_eq!(count("testsuite"), 2, "one per group (etp, http): {stdout}");
    assert_eq!(count("testcase"), 3, "{stdout}");
    assert_eq!(count("failure"), 2, "{stdout}");
    assert_eq!(count("skipped"), 1, "{stdout}");
    assert!(
        stdout.contains("<testsuite name=\"http\" tests=\"2\" failures=\"2\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("<testcase name=\"etp/handlers/request-ack\" classname=\"etp.handlers\""),
        "{stdout}"
    );
    // The failure text is escaped ("expected status 200, got 404" survives in an attribute).
    assert!(stdout.contains("expected status 200, got 404"), "{stdout}");
}

#[test]
fn junit_escapes_what_xml_cannot_hold() {
    use tidings_conformance::{CaseResult, Outcome, Report};
    let mut report = Report::new("a & b <c>", "http://x", "p");
    report.push(CaseResult {
        id: "native/x/\"quoted\"".into(),
        group: "native".into(),
        description: "d".into(),
        spec: "§1 & §2".into(),
        kind: "spec".into(),
        extension: None,
        features: vec!["native-ws".into()],
        missing: Vec::new(),
        outcome: Outcome::Fail {
            step: 2,
            message: "expected <a>, got ]]> & \u{1}\u{0}'x'\r\n".into(),
            also: vec![tidings_conformance::StepFailure {
                step: 3,
                message: "</testcase> & more".into(),
            }],
        },
        millis: 1234,
    });
    report.aborted = Some("the server stopped answering <now>".into());
    let xml = tidings_conformance::junit::junit(&report);
    let elements = xml_elements(&xml);
    assert!(elements.contains(&"failure".to_owned()) && elements.contains(&"error".to_owned()));
    assert!(!xml.contains('\u{1}') && !xml.contains('\u{0}'), "{xml}");
    assert!(xml.contains("time=\"1.234\""), "{xml}");
}

/// Checks that `xml` is a well-formed XML document (declaration, one root, balanced tags,
/// quoted attributes, only the predefined and numeric entities, no `<` or bare `&` in text, no
/// characters XML 1.0 forbids) and returns the names of its elements in document order.
fn xml_elements(xml: &str) -> Vec<String> {
    fn check_text(text: &str, xml: &str) {
        assert!(!text.contains('<'), "a raw < in {text:?}\n{xml}");
        for c in text.chars() {
            assert!(
                (c as u32) >= 0x20 || matches!(c, '\t' | '\n' | '\r'),
                "a forbidden character {c:?} in {text:?}"
            );
        }
        let mut rest = text;
        while let Some(at) = rest.find('&') {
            let tail = &rest[at + 1..];
            let end = tail
                .find(';')
                .unwrap_or_else(|| panic!("a bare & in {text:?}"));
            let entity = &tail[..end];
            assert!(
                matches!(entity, "amp" | "lt" | "gt" | "quot" | "apos")
                    || entity
                        .strip_prefix('#')
                        .is_some_and(|n| n.parse::<u32>().is_ok()),
                "an unknown entity &{entity}; in {text:?}"
            );
            rest = &tail[end + 1..];
        }
    }
    let body = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>")
        .unwrap_or_else(|| panic!("no XML declaration: {xml}"));
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut roots = 0;
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        if stack.is_empty() {
            assert!(text.trim().is_empty(), "text outside the root: {text:?}");
        }
        check_text(text, xml);
        let close = rest[open..].find('>').expect("an unclosed tag") + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "unbalanced </{name}>");
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
        let name = &tag[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "a bad element name {name:?}"
        );
        // Attributes: name="value", the value without < or ".
        let mut attrs = tag[name_end..].trim();
        while !attrs.is_empty() {
            let eq = attrs
                .find("=\"")
                .unwrap_or_else(|| panic!("a bad attribute in <{tag}>"));
            let value_end = attrs[eq + 2..].find('"').expect("an unterminated value") + eq + 2;
            check_text(&attrs[eq + 2..value_end], xml);
            attrs = attrs[value_end + 1..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        names.push(name.to_owned());
        if !self_closing {
            stack.push(name.to_owned());
        }
    }
    assert!(
        rest.trim().is_empty() && stack.is_empty(),
        "unclosed: {stack:?}"
    );
    assert_eq!(roots, 1, "one root element");
    names
}

#[test]
fn later_steps_that_do_not_depend_on_a_failed_one_are_still_checked() {
    // Three requests: the first fails (404, not 200) while binding `n`; the second fails on its
    // own; the third uses `n`, so it is not checked (and not reported).
    let dir = temp_dir("independent-steps").join("http");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("steps.json"),
        r#"{"cases": [{"name": "three", "description": "d", "steps": [
            {"http": {"path": "/a"}, "status": 200, "json": {"n": "$int:n"}},
            {"http": {"path": "/b"}, "status": 201},
            {"http": {"path": "/c?n=${n}"}, "status": 404}
        ]}]}"#,
    )
    .unwrap();
    let base = fake_server(usize::MAX);
    let cases = dir.parent().unwrap().display().to_string();
    let (code, stdout, stderr) = conformance(&["--base", &base, "--cases", &cases]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stdout
            .contains("FAIL  http/steps/three: step 1: http GET /a: expected status 200, got 404"),
        "{stdout}"
    );
    assert!(
        stdout.contains("also step 2: http GET /b: expected status 201, got 404"),
        "{stdout}"
    );
    assert!(!stdout.contains("step 3"), "{stdout}");
}

#[test]
fn cluster_cases_run_only_with_a_peer() {
    let (code, without, stderr) = conformance(&["--list", "--case", "cluster/*"]);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = without.lines().collect();
    assert!(!lines.is_empty(), "the cluster group has cases");
    for line in &lines {
        assert!(line.contains("n/a (needs cluster)"), "{line}");
    }
    let (code, with, stderr) = conformance(&[
        "--list",
        "--case",
        "cluster/*",
        "--peer",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(with.lines().count(), lines.len());
    for line in with.lines() {
        assert!(line.contains("\trun\t"), "{line}");
    }
}
