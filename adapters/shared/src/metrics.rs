//! `/metrics`: the broker's counters in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;

use tidings_core::{ErrorCode, Stats};

/// Counters for `/metrics`: the broker's, plus connections by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// The broker's counters.
    pub broker: Stats,
    /// Open `/ws` connections.
    pub ws_connections: usize,
    /// Open `/sse` streams.
    pub sse_connections: usize,
    /// Open in-process subscriptions.
    pub internal_connections: usize,
    /// Connections dropped because their outbox was full or their writer was gone.
    pub dead_connections: u64,
    /// Connections dropped because writing to them took longer than `http.write_timeout` (a
    /// client that does not read).
    pub write_timeouts: u64,
    /// Failed `accept`s of the listener (out of file descriptors, ...).
    pub accept_failures: u64,
    /// Connections refused because `limits.max_connections` were open.
    pub refused_server: u64,
    /// Connections refused because `http.max_connections_per_ip` were open from their address.
    pub refused_per_ip: u64,
    /// Client requests answered by an application handler.
    pub handled_requests: u64,
    /// The hub epoch (the log's: with the file log it survives restarts).
    pub epoch: u64,
    /// The file log's counters, if events are stored in files.
    pub log: Option<crate::store::LogStats>,
}

/// Renders the counters.
pub fn render(stats: &ServerStats) -> String {
    let b = &stats.broker;
    let mut out = String::with_capacity(4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    let n = |v: usize| v as u64;
    family(
        "tidings_connections",
        "gauge",
        "Open connections by transport (internal: in-process subscriptions).",
        &[
            ("transport=\"ws\"", n(stats.ws_connections)),
            ("transport=\"sse\"", n(stats.sse_connections)),
            ("transport=\"internal\"", n(stats.internal_connections)),
        ],
    );
    family(
        "tidings_subscriptions",
        "gauge",
        "Subscriptions (patterns) held over all connections.",
        &[("", n(b.subscriptions))],
    );
    family(
        "tidings_publishes_total",
        "counter",
        "Events published.",
        &[("", b.publishes)],
    );
    family(
        "tidings_deliveries_total",
        "counter",
        "Frames carrying an event or message handed to connections.",
        &[("", b.deliveries)],
    );
    family(
        "tidings_bytes_out_total",
        "counter",
        "Bytes handed to connections (all frames).",
        &[("", b.bytes_out)],
    );
    family(
        "tidings_dropped_messages_total",
        "counter",
        "Messages dropped for slow consumers (events are caught up from history instead).",
        &[("", b.dropped)],
    );
    family(
        "tidings_slow_consumer_closes_total",
        "counter",
        "Connections closed by the slow-consumer policy.",
        &[("", b.slow_consumer_closes)],
    );
    family(
        "tidings_dead_connections_total",
        "counter",
        "Connections dropped because their outgoing queue was full or they did not close in time.",
        &[("", stats.dead_connections)],
    );
    family(
        "tidings_write_timeouts_total",
        "counter",
        "Connections dropped because writing to them took longer than http.write_timeout (clients that do not read).",
        &[("", stats.write_timeouts)],
    );
    family(
        "tidings_accept_failures_total",
        "counter",
        "Failed accepts of the listener (out of file descriptors and the like).",
        &[("", stats.accept_failures)],
    );
    family(
        "tidings_refused_connections_total",
        "counter",
        "Connections refused with 503 limit_reached, by the limit they were over (max_connections: limits.max_connections; per_ip: http.max_connections_per_ip).",
        &[
            ("limit=\"max_connections\"", stats.refused_server),
            ("limit=\"per_ip\"", stats.refused_per_ip),
        ],
    );
    family(
        "tidings_gaps_total",
        "counter",
        "Gap notices sent.",
        &[("", b.gaps)],
    );
    family(
        "tidings_retained_events",
        "gauge",
        "Events retained for replay.",
        &[("", n(b.retained_events))],
    );
    family(
        "tidings_retained_bytes",
        "gauge",
        "Payload and topic bytes retained for replay.",
        &[("", n(b.retained_bytes))],
    );
    family(
        "tidings_handled_requests_total",
        "counter",
        "Client requests answered by an application handler.",
        &[("", stats.handled_requests)],
    );
    let labels: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|c| format!("code=\"{}\"", c.as_str()))
        .collect();
    let errors: Vec<(&str, u64)> = ErrorCode::ALL
        .iter()
        .zip(&labels)
        .map(|(code, label)| {
            let count = b
                .errors
                .iter()
                .find(|(c, _)| c == code)
                .map_or(0, |(_, n)| *n);
            (label.as_str(), count)
        })
        .collect();
    family(
        "tidings_errors_total",
        "counter",
        "Errors sent to clients, by code.",
        &errors,
    );
    if let Some(log) = &stats.log {
        family(
            "tidings_log_bytes",
            "gauge",
            "Bytes of the file log's segment files.",
            &[("", log.bytes)],
        );
        family(
            "tidings_log_segments",
            "gauge",
            "Segment files of the file log.",
            &[("", n(log.segments))],
        );
        family(
            "tidings_log_events",
            "gauge",
            "Events retained by the file log.",
            &[("", n(log.events))],
        );
        family(
            "tidings_log_first_seq",
            "gauge",
            "The first position the file log retains.",
            &[("", log.first)],
        );
        family(
            "tidings_log_last_seq",
            "gauge",
            "The last position the file log stored.",
            &[("", log.last)],
        );
        family(
            "tidings_log_appends_total",
            "counter",
            "Events the file log stored.",
            &[("", log.appends)],
        );
        family(
            "tidings_log_append_errors_total",
            "counter",
            "Appends the file log refused (the disk full or failing: publishers got unavailable).",
            &[("", log.append_errors)],
        );
        family(
            "tidings_log_reads_total",
            "counter",
            "Range reads of the file log (resumes older than the events kept in memory).",
            &[("", log.reads)],
        );
        family(
            "tidings_log_io_errors_total",
            "counter",
            "I/O errors of the file log (writes, syncs, reads, deletions).",
            &[("", log.io_errors)],
        );
        family(
            "tidings_log_fsyncs_total",
            "counter",
            "Syncs of the file log to the disk.",
            &[("", log.fsyncs)],
        );
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        family(
            "tidings_log_fsync_microseconds_total",
            "counter",
            "Time spent in syncs of the file log, in microseconds (divide by tidings_log_fsyncs_total for the mean).",
            &[("", micros(log.fsync_total))],
        );
        family(
            "tidings_log_fsync_max_microseconds",
            "gauge",
            "The longest sync of the file log since start, in microseconds.",
            &[("", micros(log.fsync_max))],
        );
    }
    let epoch = format!(
        "epoch=\"{:x}\",version=\"{}\"",
        stats.epoch,
        env!("CARGO_PKG_VERSION")
    );
    family(
        "tidings_info",
        "gauge",
        "The hub epoch (hex, as in cursors) and the server version.",
        &[(epoch.as_str(), 1)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let text = render(&ServerStats::default());
        assert!(text.contains("tidings_connections{transport=\"ws\"} 0\n"));
        assert!(text.contains("tidings_errors_total{code=\"forbidden\"} 0\n"));
        assert!(text.contains("# TYPE tidings_publishes_total counter\n"));
        assert!(
            !text.contains("tidings_log_"),
            "no file log, no log families"
        );
        let with_log = ServerStats {
            log: Some(crate::store::LogStats {
                appends: 7,
                ..Default::default()
            }),
            ..ServerStats::default()
        };
        assert!(render(&with_log).contains("tidings_log_appends_total 7\n"));
    }
}
