//! `--format junit`: a report as JUnit XML for CI systems. One `testsuite` per group, one
//! `testcase` per case (named by its id, its kind and features as properties), `failure` for a
//! failed case and `skipped` for one not applicable. A run stopped because the server died
//! ends with a `runner` suite holding one `error`. Written by hand, every text escaped.

use std::fmt::Write as _;

use crate::{Outcome, Report};

/// The report as a JUnit XML document.
pub fn junit(report: &Report) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let total_ms: u64 = report.results.iter().map(|r| r.millis).sum();
    let errors = usize::from(report.aborted.is_some());
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{errors}\" skipped=\"{}\" time=\"{}\">",
        esc(&format!("tidings-conformance: {}", report.target)),
        report.results.len() + errors,
        report.failed,
        report.skipped,
        secs(total_ms)
    );
    let mut groups: Vec<&str> = Vec::new();
    for r in &report.results {
        if !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    for group in groups {
        let results: Vec<_> = report.results.iter().filter(|r| r.group == group).collect();
        let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\">",
            esc(group),
            results.len(),
            count(|o| matches!(o, Outcome::Fail { .. })),
            count(|o| matches!(o, Outcome::Skip { .. })),
            secs(results.iter().map(|r| r.millis).sum())
        );
        for r in results {
            let classname = r.id.rsplit_once('/').map_or(r.id.as_str(), |(c, _)| c);
            let _ = writeln!(
                out,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\">",
                esc(&r.id),
                esc(&classname.replace('/', ".")),
                secs(r.millis)
            );
            out.push_str("      <properties>\n");
            let mut property = |name: &str, value: &str| {
                let _ = writeln!(
                    out,
                    "        <property name=\"{}\" value=\"{}\"/>",
                    esc(name),
                    esc(value)
                );
            };
            property("kind", &r.kind);
            property("features", &r.features.join(","));
            property("spec", &r.spec);
            if let Some(ext) = &r.extension {
                property("extension", ext);
            }
            out.push_str("      </properties>\n");
            match &r.outcome {
                Outcome::Pass => {}
                Outcome::Fail {
                    step,
                    message,
                    also,
                } => {
                    let first = message.lines().next().unwrap_or_default();
                    let mut message = message.clone();
                    for f in also {
                        message.push_str(&format!("\nalso step {}: {}", f.step, f.message));
                    }
                    let _ = writeln!(
                        out,
                        "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                        esc(&format!("step {step}: {first}")),
                        esc(&r.kind),
                        esc(&format!("{}\nstep {step}: {message}", r.description))
                    );
                }
                Outcome::Skip { reason } => {
                    let _ = writeln!(out, "      <skipped message=\"{}\"/>", esc(reason));
                }
            }
            out.push_str("    </testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    if let Some(why) = &report.aborted {
        out.push_str(
            "  <testsuite name=\"runner\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\" time=\"0\">\n",
        );
        let _ = writeln!(
            out,
            "    <testcase name=\"server-alive\" classname=\"runner\" time=\"0\">\n      <error message=\"{}\" type=\"server-died\"/>\n    </testcase>",
            esc(why)
        );
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn secs(millis: u64) -> String {
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

/// Escapes text for an XML attribute or element: the five special characters, and characters
/// XML 1.0 does not allow at all (control characters but tab, LF and CR) written as `\u{..}`.
/// Tab, LF and CR are written as character references so attributes keep them.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}
