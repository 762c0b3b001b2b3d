//! The reader thread: answers range reads from the shared index with positional reads, so
//! catching a client up from far back never delays appends.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tidings_core::log::record;
use tidings_core::log::scan::Entry;
use tidings_core::log::{LogReply, Logged, Page};
use tidings_core::{ErrorCode, ProtocolError};

use super::{Shared, ToReader};

/// Bytes of records in one page, at most (a page always holds at least one event).
pub(crate) const PAGE_BYTES: u64 = 1 << 20;

/// A stretch of consecutive records of one segment to read.
struct Run {
    file: Arc<File>,
    path: PathBuf,
    entries: Vec<Entry>,
}

pub(crate) fn run(
    shared: &Shared,
    rx: &flume::Receiver<ToReader>,
    replies: &flume::Sender<LogReply>,
) {
    while let Ok(req) = rx.recv() {
        let result = read(shared, req.from, req.max_events);
        shared.counters.reads.fetch_add(1, Ordering::Relaxed);
        if replies
            .send(LogReply::Page {
                read: req.read,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Reads the retained events from `from` on: at most `max_events` and about [`PAGE_BYTES`].
pub(crate) fn read(shared: &Shared, from: u64, max_events: usize) -> Result<Page, ProtocolError> {
    let (first, runs, done) = plan(shared, from, max_events);
    let mut events = Vec::with_capacity(runs.iter().map(|r| r.entries.len()).sum());
    for run in runs {
        read_run(shared, &run, &mut events)?;
    }
    Ok(Page {
        first,
        events,
        done,
    })
}

/// Under the index's read lock, only: which records to read.
fn plan(shared: &Shared, from: u64, max_events: usize) -> (u64, Vec<Run>, bool) {
    let index = shared.index();
    let first = index.first;
    let Some((mut s, mut e)) = index.locate(from) else {
        return (first, Vec::new(), true);
    };
    let mut runs = Vec::new();
    let (mut count, mut bytes) = (0, 0);
    while count < max_events {
        let Some(segment) = index.segments.get(s) else {
            break;
        };
        let mut take = 0;
        for entry in &segment.entries[e..] {
            let len = u64::from(entry.len);
            if count == max_events || (count > 0 && bytes + len > PAGE_BYTES) {
                break;
            }
            count += 1;
            bytes += len;
            take += 1;
        }
        if take > 0 {
            runs.push(Run {
                file: Arc::clone(&segment.file),
                path: segment.path.clone(),
                entries: segment.entries[e..e + take].to_vec(),
            });
        }
        if e + take < segment.entries.len() {
            // Stopped inside this segment: by count or bytes.
            return (first, runs, false);
        }
        s += 1;
        e = 0;
        if count > 0 && bytes >= PAGE_BYTES {
            break;
        }
    }
    let done = index
        .segments
        .iter()
        .skip(s)
        .all(|seg| seg.entries.is_empty());
    (first, runs, done)
}

fn read_run(shared: &Shared, run: &Run, out: &mut Vec<Logged>) -> Result<(), ProtocolError> {
    let (Some(head), Some(tail)) = (run.entries.first(), run.entries.last()) else {
        return Ok(());
    };
    let start = u64::from(head.offset);
    let end = u64::from(tail.offset) + u64::from(tail.len);
    let mut buf = vec![0; usize::try_from(end - start).unwrap_or(0)];
    if let Err(e) = run.file.read_exact_at(&mut buf, start) {
        shared.counters.io_error();
        tracing::error!("file log: cannot read {}: {e}", run.path.display());
        return Err(ProtocolError::new(
            ErrorCode::Unavailable,
            format!(
                "stored events could not be read ({}: {e}); retry later",
                run.path.display()
            ),
        ));
    }
    let buf = Bytes::from(buf);
    for entry in &run.entries {
        let at = (u64::from(entry.offset) - start) as usize;
        let slice = buf.slice(at..at + entry.len as usize);
        match record::decode_shared(&slice) {
            Ok((logged, _)) if logged.seq == entry.seq => out.push(logged),
            outcome => {
                let why = match outcome {
                    Err(e) => e.to_string(),
                    Ok((logged, _)) => {
                        format!("position {} where {} was indexed", logged.seq, entry.seq)
                    }
                };
                shared.counters.io_error();
                tracing::error!(
                    "file log: {} is corrupt at byte {}: {why}",
                    run.path.display(),
                    entry.offset
                );
                return Err(ProtocolError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "stored events could not be read ({} is corrupt at byte {}: {why})",
                        run.path.display(),
                        entry.offset
                    ),
                ));
            }
        }
    }
    Ok(())
}
