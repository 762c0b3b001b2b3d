//! The tidings conformance suite: language-neutral case files and a runner.
//!
//! **Contract.** A case is a JSON transcript (connections to open, frames and HTTP requests to
//! send, what must come back, silences that must hold) under `conformance/cases/<group>/`; the
//! format is specified in `docs/CONFORMANCE.md`. The runner plays each case against a server
//! reachable at a base URL, one case at a time, and reports pass, fail (with the step and a
//! precise difference) or not applicable (a feature the server's [`Profile`] lacks) per case,
//! spec cases (the protocol's own behaviour) and extension cases (tidings' additions) apart.
//! The server under test runs with the conformance configuration (`conformance/server.toml` for
//! tidings: small limits, short timers, a known JWT secret), which the cases rely on.
//!
//! The suite is a library (our tests run it in-process against both runtime adapters) and a
//! binary, `tidings-conformance --base http://127.0.0.1:9313`. Over TLS the base is
//! `https://HOST:PORT` (WebSockets go to `wss://`), trusting the certificates of
//! [`Options::ca`] or else the public roots.
//!
//! ```
//! // Load the built-in cases and pick the SSE group.
//! let cases = tidings_conformance::builtin_cases().unwrap();
//! let sse: Vec<_> = cases.iter().filter(|c| c.group == "sse").collect();
//! assert!(!sse.is_empty());
//! assert!(cases.len() > 100);
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub mod case;
pub mod junit;
pub mod pattern;
pub mod profile;
mod run;
pub mod tls;
pub mod wire;

pub use case::{Case, Kind};
pub use profile::{FEATURES, PROFILE_JWT_SECRET, Profile};

include!(concat!(env!("OUT_DIR"), "/case_files.rs"));

/// The groups a suite may name, in report order.
pub const GROUPS: &[&str] = &["native", "sse", "http", "ksbus", "etp", "cluster"];

/// The cases compiled into this crate.
pub fn builtin_cases() -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    for (group, file, text) in CASE_FILES {
        cases.extend(case::parse_file(group, file, text)?);
    }
    check_unique(&cases)?;
    Ok(cases)
}

/// The cases of a directory laid out like `conformance/cases/` (`<group>/<file>.json`).
pub fn load_dir(dir: &Path) -> Result<Vec<Case>, String> {
    let mut files = Vec::new();
    let groups = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for group in groups {
        let group = group.map_err(|e| e.to_string())?.path();
        if !group.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&group).map_err(|e| format!("{}: {e}", group.display()))? {
            let file = file.map_err(|e| e.to_string())?.path();
            if file.extension().is_some_and(|e| e == "json") {
                files.push(file);
            }
        }
    }
    files.sort();
    let mut cases = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let group = file
            .parent()
            .and_then(Path::file_name)
            .and_then(|s| s.to_str())
            .unwrap_or("");
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        cases.extend(case::parse_file(group, stem, &text)?);
    }
    check_unique(&cases)?;
    Ok(cases)
}

fn check_unique(cases: &[Case]) -> Result<(), String> {
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    match ids.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!("two cases are named {}", w[0])),
        None => Ok(()),
    }
}

/// What to run and against what.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's base URL, `http://HOST:PORT` optionally with a path prefix
    /// (`http://127.0.0.1:3000/realtime` for an embedding mounted there), or `https://…` for
    /// a server speaking TLS (WebSockets then go to `wss://`).
    pub base: String,
    /// For an `https://` base: a PEM file of the certificates to trust (a CA, or the server's
    /// self-signed certificate); `None` trusts the public roots of webpki-roots.
    pub ca: Option<PathBuf>,
    /// Another node of the same cluster as `base` (`--peer`): the `cluster` cases open
    /// connections on both; without it they are not applicable.
    pub peer: Option<String>,
    /// The groups to run; empty runs all.
    pub suites: Vec<String>,
    /// Only cases whose id matches one of these globs (`*` any characters, `?` one); empty
    /// selects every case.
    pub case_globs: Vec<String>,
    /// Leave out cases whose id matches one of these globs.
    pub skip_globs: Vec<String>,
    /// What the server has: cases needing features it lacks are not applicable.
    pub profile: Profile,
    /// Features the server lacks although its profile has them (`--without`).
    pub without: Vec<String>,
    /// How long any single expectation may wait.
    pub timeout: Duration,
    /// Print every frame, event and request to stderr (to see why a case fails).
    pub trace: bool,
}

impl Options {
    /// Options for `base` with every group, no filter and a 5 s timeout.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            ca: None,
            peer: None,
            suites: Vec::new(),
            case_globs: Vec::new(),
            skip_globs: Vec::new(),
            profile: Profile::full(),
            without: Vec::new(),
            timeout: Duration::from_secs(5),
            trace: false,
        }
    }
}

/// The server under test, resolved from [`Options::base`].
#[derive(Debug, Clone)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// `host:port`, for `Host` headers and WebSocket URLs.
    pub authority: String,
    /// The path prefix (empty, or like `/realtime`).
    pub prefix: String,
    /// For an `https://` base: how to speak TLS to it.
    pub tls: Option<tls::TlsClient>,
}

impl Target {
    /// Parses and resolves a base URL; an `https://` one trusts the certificates in `ca` (PEM),
    /// or without it the public roots of webpki-roots.
    pub fn parse(base: &str, ca: Option<&Path>) -> Result<Self, String> {
        let (rest, secure) = match (base.strip_prefix("http://"), base.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(format!(
                    "the base URL must start with http:// or https:// (got {base:?})"
                ));
            }
        };
        if let (false, Some(ca)) = (secure, ca) {
            return Err(format!(
                "--ca {} is for an https:// base (got {base:?})",
                ca.display()
            ));
        }
        let (authority, prefix) = match rest.find('/') {
            Some(at) => (&rest[..at], rest[at..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let tls = match secure {
            true => {
                let host = match authority.rfind(':') {
                    Some(at) if !authority[at..].contains(']') => &authority[..at],
                    _ => authority,
                };
                Some(tls::TlsClient::new(base, host, ca)?)
            }
            false => None,
        };
        Ok(Self {
            addr: wire::resolve(authority)?,
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
            tls,
        })
    }
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// Every step held.
    Pass,
    /// A step did not hold.
    Fail {
        /// The step, counted from 1 (0: before the first step).
        step: usize,
        /// What was expected and what came.
        message: String,
        /// Later steps that did not hold either (checked because they did not depend on it).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        also: Vec<StepFailure>,
    },
    /// Not applicable: the server lacks a feature the case needs (status `skip` in JSON).
    Skip {
        /// Why.
        reason: String,
    },
}

/// A further failed step of a case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepFailure {
    /// The step, counted from 1.
    pub step: usize,
    /// What was expected and what came.
    pub message: String,
}

/// Passed, failed and not applicable cases of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases not applicable to the server (features it lacks).
    pub not_applicable: usize,
}

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Pass => self.passed += 1,
            Outcome::Fail { .. } => self.failed += 1,
            Outcome::Skip { .. } => self.not_applicable += 1,
        }
    }
}

/// Spec and extension results apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ByKind {
    /// Cases of the protocols' own behaviour.
    pub spec: Counts,
    /// Cases of tidings' documented additions and deviations.
    pub extension: Counts,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// What it checks.
    pub description: String,
    /// Where that is specified.
    pub spec: String,
    /// `spec` or `extension`.
    pub kind: String,
    /// For an extension: where tidings documents it.
    pub extension: Option<String>,
    /// The features the case needs.
    pub features: Vec<String>,
    /// Those the server lacks (when not applicable).
    pub missing: Vec<String>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// How long it took.
    pub millis: u64,
}

/// The results of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// A label for the server under test (e.g. `tidings tokio`).
    pub target: String,
    /// The base URL.
    pub base: String,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases that were not applicable (features the server lacks).
    pub skipped: usize,
    /// The profile's name.
    pub profile: String,
    /// The same counts, spec and extension cases apart.
    pub by_kind: ByKind,
    /// Why the run stopped early: the server stopped answering (then the binary exits with 3).
    pub aborted: Option<String>,
    /// One entry per case, in run order.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// An empty report.
    pub fn new(target: &str, base: &str, profile: &str) -> Self {
        Self {
            target: target.to_owned(),
            base: base.to_owned(),
            passed: 0,
            failed: 0,
            skipped: 0,
            profile: profile.to_owned(),
            by_kind: ByKind::default(),
            aborted: None,
            results: Vec::new(),
        }
    }

    /// Adds a result, counting it.
    pub fn push(&mut self, result: CaseResult) {
        match result.outcome {
            Outcome::Pass => self.passed += 1,
            Outcome::Fail { .. } => self.failed += 1,
            Outcome::Skip { .. } => self.skipped += 1,
        }
        match result.kind.as_str() {
            "extension" => self.by_kind.extension.add(&result.outcome),
            _ => self.by_kind.spec.add(&result.outcome),
        }
        self.results.push(result);
    }

    /// `N passed, N failed, N not applicable`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} not applicable",
            self.passed, self.failed, self.skipped
        )
    }

    /// The summary of each kind: `spec: N passed, …; extension: N passed, …`.
    pub fn kind_summary(&self) -> String {
        let c = |c: &Counts| {
            format!(
                "{} passed, {} failed, {} not applicable",
                c.passed, c.failed, c.not_applicable
            )
        };
        format!(
            "spec: {}; extension: {}",
            c(&self.by_kind.spec),
            c(&self.by_kind.extension)
        )
    }
}

/// Whether `id` matches `glob` (`*`: any characters, `?`: one character).
pub fn glob_matches(glob: &str, id: &str) -> bool {
    fn go(g: &[char], s: &[char]) -> bool {
        match g.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    let g: Vec<char> = glob.chars().collect();
    let s: Vec<char> = id.chars().collect();
    go(&g, &s)
}

/// A case chosen by the options, and the features it needs that the server lacks (none: it
/// runs).
#[derive(Debug, Clone)]
pub struct Selected<'a> {
    /// The case.
    pub case: &'a Case,
    /// Features it needs that the profile lacks (or `--without` takes away).
    pub missing: Vec<String>,
}

/// The cases the options choose (groups, `--case` and `--skip` globs), in order, each with the
/// features the server lacks for it.
///
/// # Errors
/// An unknown suite, or an unknown feature in `without`.
pub fn select<'a>(cases: &'a [Case], options: &Options) -> Result<Vec<Selected<'a>>, String> {
    if let Some(unknown) = options
        .suites
        .iter()
        .find(|s| !GROUPS.contains(&s.as_str()))
    {
        return Err(format!(
            "unknown suite {unknown:?}; the suites are {}",
            GROUPS.join(", ")
        ));
    }
    profile::check_features("--without", &options.without)?;
    let suites = match options.suites.is_empty() {
        true => &options.profile.groups,
        false => &options.suites,
    };
    Ok(cases
        .iter()
        .filter(|c| {
            (suites.is_empty() || suites.contains(&c.group))
                && (options.case_globs.is_empty()
                    || options.case_globs.iter().any(|g| glob_matches(g, &c.id)))
                && !options.skip_globs.iter().any(|g| glob_matches(g, &c.id))
        })
        .map(|case| Selected {
            case,
            missing: case
                .requires
                .iter()
                .filter(|f| match f.as_str() {
                    // What a cluster node has is another node to talk to: `--peer`.
                    "cluster" => options.peer.is_none(),
                    _ => !options.profile.has(f) || options.without.contains(f),
                })
                .cloned()
                .collect(),
        })
        .collect())
}

/// Runs the selected `cases` one after the other (they share the server's history, so they
/// never overlap), calling `each` as every result comes in. Cases needing features the
/// server's profile lacks are not applicable (not run).
///
/// When a case fails and the server can no longer be connected to, the server has died: the
/// run stops there and [`Report::aborted`] says so (that case is not counted).
///
/// # Errors
/// When the suite cannot run: a bad base URL, an unknown suite or feature, or a server that
/// cannot be reached (the binary exits with status 2 then, 1 when a case failed and 3 when the
/// server died during the run).
pub fn run(
    cases: &[Case],
    options: &Options,
    label: &str,
    mut each: impl FnMut(&CaseResult),
) -> Result<Report, String> {
    let target = Target::parse(&options.base, options.ca.as_deref())?;
    let peer = options
        .peer
        .as_deref()
        .map(|peer| Target::parse(peer, options.ca.as_deref()))
        .transpose()?;
    let selected = select(cases, options)?;
    // A server that cannot be reached is not one that fails every case: the suite cannot run
    // (exit status 2, like a bad option), and says why once. Over TLS, the same for a
    // handshake that fails (a certificate not trusted, a server not speaking TLS).
    if let Err(e) = std::net::TcpStream::connect_timeout(&target.addr, options.timeout) {
        return Err(format!(
            "cannot reach {} ({}): {e}",
            options.base, target.addr
        ));
    }
    if target.tls.is_some() {
        wire::connect(&target, Instant::now() + options.timeout)?;
    }
    // A run-unique namespace per case keeps runs against the same server apart.
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros()) as u64
        & 0xffff_ffff;
    let mut report = Report::new(label, &options.base, &options.profile.name);
    for (i, Selected { case, missing }) in selected.into_iter().enumerate() {
        let started = Instant::now();
        let outcome = if missing.is_empty() {
            let ns = format!("n{nonce:x}x{i}");
            let mut failures = run::run_case(case, &target, peer.as_ref(), options, &ns)
                .into_iter()
                .map(|(step, message)| StepFailure { step, message });
            match failures.next() {
                None => Outcome::Pass,
                Some(first) => Outcome::Fail {
                    step: first.step,
                    message: first.message,
                    also: failures.collect(),
                },
            }
        } else {
            Outcome::Skip {
                reason: format!(
                    "not applicable: needs {}, which the server's profile lacks",
                    missing.join(", ")
                ),
            }
        };
        if matches!(outcome, Outcome::Fail { .. })
            && let Err(e) = std::net::TcpStream::connect_timeout(
                &target.addr,
                options.timeout.min(Duration::from_secs(2)),
            )
        {
            report.aborted = Some(format!(
                "the server stopped answering during {}: cannot connect to {} ({}): {e}; the run stops here",
                case.id, options.base, target.addr
            ));
            break;
        }
        let result = CaseResult {
            id: case.id.clone(),
            group: case.group.clone(),
            description: case.description.clone(),
            spec: case.spec.clone(),
            kind: case.kind.as_str().to_owned(),
            extension: case.extension.clone(),
            features: case.requires.clone(),
            missing,
            outcome,
            millis: started.elapsed().as_millis() as u64,
        };
        each(&result);
        report.push(result);
    }
    Ok(report)
}

/// One line for a result: `pass  ID (N ms)`, `FAIL  ID: step N: …`, `n/a   ID: reason`.
pub fn text_line(result: &CaseResult) -> String {
    match &result.outcome {
        Outcome::Pass => format!("pass  {} ({} ms)", result.id, result.millis),
        Outcome::Fail {
            step,
            message,
            also,
        } => {
            let mut line = format!("FAIL  {}: step {step}: {message}", result.id);
            for f in also {
                line.push_str(&format!("\n      also step {}: {}", f.step, f.message));
            }
            line
        }
        Outcome::Skip { reason } => format!("n/a   {}: {reason}", result.id),
    }
}

/// A Markdown table of several reports side by side: one row per case (with its kind), one
/// column per report, then the totals of spec and extension cases apart and together.
pub fn markdown_table(reports: &[Report]) -> String {
    let mut out = String::from("| case | kind | checks |");
    for r in reports {
        out.push_str(&format!(" {} |", r.target));
    }
    out.push_str("\n|---|---|---|");
    out.push_str(&"---|".repeat(reports.len()));
    out.push('\n');
    let Some(first) = reports.first() else {
        return out;
    };
    for result in &first.results {
        out.push_str(&format!(
            "| `{}` | {} | {} |",
            result.id,
            result.kind,
            result.description.replace('|', "\\|")
        ));
        for r in reports {
            let cell = match r
                .results
                .iter()
                .find(|x| x.id == result.id)
                .map(|x| &x.outcome)
            {
                Some(Outcome::Pass) => "pass",
                Some(Outcome::Fail { .. }) => "**FAIL**",
                Some(Outcome::Skip { .. }) => "n/a",
                None => "—",
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    let counts = |c: &Counts| {
        format!(
            "{} passed, {} failed, {} n/a",
            c.passed, c.failed, c.not_applicable
        )
    };
    out.push_str("| **spec** | | |");
    for r in reports {
        out.push_str(&format!(" {} |", counts(&r.by_kind.spec)));
    }
    out.push_str("\n| **extension** | | |");
    for r in reports {
        out.push_str(&format!(" {} |", counts(&r.by_kind.extension)));
    }
    out.push_str("\n| **total** | | |");
    for r in reports {
        out.push_str(&format!(" {} |", r.summary()));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("native/*", "native/subscribe/x"));
        assert!(glob_matches("*resume*", "sse/resume/header"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(!glob_matches("sse/*", "native/x"));
    }

    #[test]
    fn builtin_cases_parse() {
        let cases = builtin_cases().unwrap();
        for group in ["native", "sse", "http", "ksbus", "etp"] {
            assert!(cases.iter().any(|c| c.group == group), "no {group} cases");
        }
    }

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:9313/realtime/", None).unwrap();
        assert_eq!(t.authority, "127.0.0.1:9313");
        assert_eq!(t.prefix, "/realtime");
        assert!(t.tls.is_none());
        assert!(Target::parse("ws://x", None).is_err());
        let t = Target::parse("https://127.0.0.1:9313", None).unwrap();
        assert!(t.tls.is_some_and(|tls| tls.trust.contains("webpki-roots")));
        let t = Target::parse("https://[::1]:9313/x", None).unwrap();
        assert_eq!(t.authority, "[::1]:9313");
        assert!(t.tls.is_some());
        // --ca is for https:// only.
        let e = Target::parse("http://127.0.0.1:9313", Some(Path::new("ca.pem"))).unwrap_err();
        assert!(e.contains("--ca ca.pem"), "{e}");
    }
}
