//! Replays the checked-in corpus of the `http_head` fuzz target (`fuzz/corpus/http_head/`), so
//! `cargo test -p tidings-adapter --features fuzzing` catches regressions without cargo-fuzz.
#![cfg(feature = "fuzzing")]

use std::path::Path;

#[test]
fn http_head_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/http_head");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "the corpus in {} is seeded",
        dir.display()
    );
    for path in files {
        let data = std::fs::read(&path).expect("corpus file");
        let result = std::panic::catch_unwind(|| tidings_adapter::fuzzing::http_head(&data));
        assert!(result.is_ok(), "http_head fails on {}", path.display());
    }
}
