//! `tidings-conformance`: runs the conformance suite against a server.
//!
//! ```text
//! tidings-conformance --base http://127.0.0.1:9313 [--profile FILE] [--suite native,sse,http]
//!                     [--case GLOB]… [--skip GLOB]… [--format text|json|junit] [--label NAME]
//!                     [--without FEATURE]… [--cases DIR] [--peer URL]
//! tidings-conformance --base https://127.0.0.1:9313 --ca ca.pem …   # over TLS (wss://)
//! tidings-conformance --list [--profile FILE] [--case GLOB]…   # what would run, kinds, features
//! tidings-conformance --table tokio.json async-std.json      # Markdown, from --format json runs
//! tidings-conformance --make-test-cert DIR   # DIR/ca.pem, server.pem, server.key for 127.0.0.1
//! ```
//!
//! Text output is one line per case and a summary line; JSON output is one object (the
//! [`tidings_conformance::Report`]); JUnit output is one XML document. The exit status is 0 when
//! no case failed, 1 if one did, 2 on a usage or setup error (an unreachable base included), 3
//! when the server stopped answering during the run.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tidings_conformance::{
    ByKind, Counts, Options, Profile, Report, builtin_cases, load_dir, markdown_table, run, select,
    text_line,
};

/// The exit status when the server stopped answering during the run.
const SERVER_DIED: u8 = 3;

/// Runs the tidings conformance suite against a server started with the conformance profile
/// (for tidings: `tidings serve --config conformance/server.toml`).
#[derive(Debug, Parser)]
#[command(name = "tidings-conformance", version, about)]
struct Cli {
    /// The server's base URL (http://HOST:PORT, optionally with a path prefix; https://HOST:PORT
    /// for a server speaking TLS, WebSockets then going to wss://).
    #[arg(long, required_unless_present_any = ["list", "table", "make_test_cert"])]
    base: Option<String>,
    /// With an https:// base: a PEM file of the certificates to trust (a CA, or the server's
    /// self-signed certificate). Without it, the public roots of webpki-roots.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Groups to run, comma-separated (native, sse, http, ksbus, etp); default all.
    #[arg(long, value_delimiter = ',')]
    suite: Vec<String>,
    /// What the server has: a TOML profile (features, moved paths, JWT secret); cases needing
    /// features it lacks are not applicable. Default: tidings' full profile.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Only cases whose id (group/file/name) matches this glob. Repeatable (any may match).
    #[arg(long = "case", value_name = "GLOB")]
    case_globs: Vec<String>,
    /// Leave out cases whose id matches this glob. Repeatable.
    #[arg(long = "skip", value_name = "GLOB")]
    skip_globs: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// A name for the server under test, shown in reports and tables (default: the base URL).
    #[arg(long)]
    label: Option<String>,
    /// A feature the server lacks although its profile has it (e.g. etp-handlers): cases
    /// needing it are not applicable. Repeatable.
    #[arg(long)]
    without: Vec<String>,
    /// Another node of the same cluster as --base: the cluster cases (profile feature cluster)
    /// open connections on both.
    #[arg(long, value_name = "URL")]
    peer: Option<String>,
    /// How long one expectation may wait, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print every frame sent and received to stderr.
    #[arg(long)]
    trace: bool,
    /// Read the cases from this directory instead of the built-in copy.
    #[arg(long)]
    cases: Option<PathBuf>,
    /// List the selected cases (id, whether they run or are not applicable, kind, features,
    /// description) and exit.
    #[arg(long)]
    list: bool,
    /// Print a Markdown table of these JSON reports side by side, and exit.
    #[arg(long, num_args = 1..)]
    table: Vec<PathBuf>,
    /// Write a test CA (ca.pem) and a server certificate it signs for 127.0.0.1, ::1 and
    /// localhost (server.pem, server.key) to this directory, print their paths, and exit.
    #[arg(long, value_name = "DIR")]
    make_test_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
    Junit,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match main_with(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tidings-conformance: {message}");
            ExitCode::from(2)
        }
    }
}

fn main_with(cli: Cli) -> Result<ExitCode, String> {
    if let Some(dir) = &cli.make_test_cert {
        let files = tidings_conformance::tls::make_test_cert(dir)?;
        out(&format!("ca\t{}", files.ca.display()));
        out(&format!("cert\t{}", files.cert.display()));
        out(&format!("key\t{}", files.key.display()));
        return Ok(ExitCode::SUCCESS);
    }
    if !cli.table.is_empty() {
        let reports = cli
            .table
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_str::<serde_json::Value>(&text)
                    .and_then(report_from_json)
                    .map_err(|e| format!("{}: not a report ({e})", path.display()))
            })
            .collect::<Result<Vec<Report>, String>>()?;
        out(markdown_table(&reports).trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let cases = match &cli.cases {
        Some(dir) => load_dir(dir)?,
        None => builtin_cases()?,
    };
    let profile = match &cli.profile {
        Some(path) => Profile::load(path)?,
        None => Profile::full(),
    };
    let base = cli.base.clone().unwrap_or_default();
    let options = Options {
        base: base.clone(),
        ca: cli.ca.clone(),
        peer: cli.peer.clone(),
        suites: cli.suite.clone(),
        case_globs: cli.case_globs.clone(),
        skip_globs: cli.skip_globs.clone(),
        profile,
        without: cli.without.clone(),
        timeout: Duration::from_millis(cli.timeout_ms),
        trace: cli.trace,
    };
    if cli.list {
        // id, run or n/a (and what is missing), kind, features, description: tab-separated.
        for s in select(&cases, &options)? {
            let status = match s.missing.as_slice() {
                [] => "run".to_owned(),
                missing => format!("n/a (needs {})", missing.join(",")),
            };
            out(&format!(
                "{}\t{status}\t{}\t{}\t{}",
                s.case.id,
                s.case.kind.as_str(),
                s.case.requires.join(","),
                s.case.description
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let label = cli.label.clone().unwrap_or(base);
    let text = cli.format == Format::Text;
    let report = run(&cases, &options, &label, |result| {
        if text {
            out(&text_line(result));
        }
    })?;
    match cli.format {
        Format::Text => {
            if let Some(why) = &report.aborted {
                out(&format!("STOP  {why}"));
            }
            out(&report.kind_summary());
            out(&report.summary());
        }
        Format::Json => out(&serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?),
        Format::Junit => out(tidings_conformance::junit::junit(&report).trim_end()),
    }
    if let Some(why) = &report.aborted {
        eprintln!("tidings-conformance: {why}");
        return Ok(ExitCode::from(SERVER_DIED));
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints a line; a closed stdout (`| head`) ends the program quietly instead of panicking.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

/// Reads a report written by `--format json` (the parts the table needs).
fn report_from_json(value: serde_json::Value) -> Result<Report, serde_json::Error> {
    use serde::de::Error as _;
    let get = |k: &str| {
        value
            .get(k)
            .cloned()
            .ok_or_else(|| serde_json::Error::custom(format!("no {k:?}")))
    };
    let results: Vec<tidings_conformance::CaseResult> = get("results")?
        .as_array()
        .ok_or_else(|| serde_json::Error::custom("\"results\" is not a list"))?
        .iter()
        .map(|r| {
            let s = |k: &str| {
                r.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let outcome = match s("status").as_str() {
                "pass" => tidings_conformance::Outcome::Pass,
                "skip" => tidings_conformance::Outcome::Skip {
                    reason: s("reason"),
                },
                _ => tidings_conformance::Outcome::Fail {
                    step: r.get("step").and_then(|v| v.as_u64()).unwrap_or(0) as usize,
                    message: s("message"),
                    also: Vec::new(),
                },
            };
            let list = |k: &str| -> Vec<String> {
                r.get(k)
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            tidings_conformance::CaseResult {
                id: s("id"),
                group: s("group"),
                description: s("description"),
                spec: s("spec"),
                kind: match s("kind").as_str() {
                    "" => "spec".to_owned(),
                    kind => kind.to_owned(),
                },
                extension: r
                    .get("extension")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
                features: list("features"),
                missing: list("missing"),
                outcome,
                millis: r.get("millis").and_then(|v| v.as_u64()).unwrap_or(0),
            }
        })
        .collect();
    let n = |k: &str| value.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    // The per-kind counts are recounted from the results (older reports have none).
    let mut by_kind = ByKind::default();
    for r in &results {
        let c: &mut Counts = match r.kind.as_str() {
            "extension" => &mut by_kind.extension,
            _ => &mut by_kind.spec,
        };
        match r.outcome {
            tidings_conformance::Outcome::Pass => c.passed += 1,
            tidings_conformance::Outcome::Fail { .. } => c.failed += 1,
            tidings_conformance::Outcome::Skip { .. } => c.not_applicable += 1,
        }
    }
    Ok(Report {
        target: value
            .get("target")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        base: value
            .get("base")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        passed: n("passed"),
        failed: n("failed"),
        skipped: n("skipped"),
        profile: value
            .get("profile")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        by_kind,
        aborted: value
            .get("aborted")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        results,
    })
}
