//! Embeds every case file under `cases/` in the library, so that the installed binary carries
//! the suite (`--cases DIR` reads another copy instead).
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    for group in std::fs::read_dir(&root).expect("conformance/cases exists") {
        let group = group.expect("readable cases dir").path();
        if !group.is_dir() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", group.display());
        for file in std::fs::read_dir(&group).expect("readable group dir") {
            let file = file.expect("readable group dir").path();
            if file.extension().is_some_and(|e| e == "json") {
                println!("cargo:rerun-if-changed={}", file.display());
                files.push(file);
            }
        }
    }
    files.sort();
    let mut out = String::from(
        "/// Every built-in case file: (group, file stem, contents).\npub const CASE_FILES: &[(&str, &str, &str)] = &[\n",
    );
    for file in files {
        let group = file
            .parent()
            .and_then(Path::file_name)
            .and_then(|s| s.to_str())
            .expect("utf-8 group name");
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 file name");
        writeln!(
            out,
            "    ({group:?}, {stem:?}, include_str!({:?})),",
            file.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("case_files.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}
