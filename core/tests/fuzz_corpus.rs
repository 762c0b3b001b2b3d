//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the target bodies, so
//! `cargo test -p tidings-core --features fuzzing` catches regressions without cargo-fuzz.
#![cfg(feature = "fuzzing")]

use std::path::Path;

use tidings_core::fuzzing;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    for path in files {
        let data = std::fs::read(&path).expect("corpus file");
        let result = std::panic::catch_unwind(|| body(&data));
        assert!(result.is_ok(), "{target} fails on {}", path.display());
    }
}

#[test]
fn native_decode_corpus() {
    replay("native_decode", fuzzing::native_decode);
}

#[test]
fn sse_decode_corpus() {
    replay("sse_decode", fuzzing::sse_decode);
}

#[test]
fn sse_roundtrip_corpus() {
    replay("sse_roundtrip", fuzzing::sse_roundtrip);
}

#[test]
fn broker_ops_corpus() {
    replay("broker_ops", fuzzing::broker_ops);
}

#[test]
fn ksbus_decode_corpus() {
    replay("ksbus_decode", fuzzing::ksbus_decode);
}

#[test]
fn etp_decode_corpus() {
    replay("etp_decode", fuzzing::etp_decode);
}

#[test]
fn log_decode_corpus() {
    replay("log_decode", fuzzing::log_decode);
}
