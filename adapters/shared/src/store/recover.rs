//! Opening the file log: the lock, `meta`, the scan of every segment, retention, the newest
//! events for the hot cache, and the threads.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use tidings_core::Retention;
use tidings_core::log::record::{self, Meta};
use tidings_core::log::scan::{self, Entry};
use tidings_core::log::{LogReply, LogState, Logged};

use super::files::{self, DirLock};
use super::index::{Index, Segment};
use super::writer::{self, SyncTarget, Writer};
use super::{Counters, Durability, FileLog, Recovery, Shared, StoreConfig, StoreError, now_ms};

/// What is wrong with a segment, and where its valid part ends.
struct Damage {
    /// Valid records kept (a prefix of the scan's entries).
    keep: usize,
    offset: usize,
    reason: String,
}

pub(crate) fn open(
    config: &StoreConfig,
    retention: &Retention,
) -> Result<(FileLog, Recovery, flume::Receiver<LogReply>), StoreError> {
    config.validate().map_err(StoreError::Config)?;
    let started = Instant::now();
    let dir = config.dir.clone();
    fs::create_dir_all(&dir).map_err(|e| StoreError::io("create the data directory", &dir, e))?;
    let lock = DirLock::acquire(&dir)?;
    files::remove_meta_tmp(&dir);

    let mut bases = Vec::new();
    let listing = fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
        if let Some(base) = entry
            .file_name()
            .to_str()
            .and_then(files::parse_segment_name)
        {
            bases.push((base, entry.path()));
        }
    }
    bases.sort();

    let meta_path = dir.join(files::META);
    let meta = match fs::read(&meta_path) {
        Ok(bytes) => record::decode_meta(&bytes).map_err(|e| StoreError::CorruptMeta {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound && bases.is_empty() => {
            // A new log: its epoch is chosen now, once.
            let meta = Meta {
                epoch: now_ms().max(1),
                reserved_through: 0,
                first: 1,
            };
            files::write_meta(&dir, &meta).map_err(|e| StoreError::io("write", &meta_path, e))?;
            meta
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::MissingMeta {
                dir,
                meta: meta_path,
            });
        }
        Err(e) => return Err(StoreError::io("read", &meta_path, e)),
    };

    let mut index = Index::new(meta.first.max(1));
    let mut doomed = Vec::new();
    let mut truncated = None;
    let mut skipped = Vec::new();
    let mut raise_to = 0;
    let mut last_seq = 0;
    let mut buf = Vec::new();
    for (i, (base, path)) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io("open", path, e))?;
        buf.clear();
        (&file)
            .read_to_end(&mut buf)
            .map_err(|e| StoreError::io("read", path, e))?;
        let scan = scan::scan(&buf);
        let mut entries = scan.entries;
        let damage = if scan.base.is_some_and(|b| b != *base) {
            Some(Damage {
                keep: 0,
                offset: 8,
                reason: format!(
                    "its header names position {}, its file name {base}",
                    scan.base.unwrap_or_default()
                ),
            })
        } else if let Some(overlap) = entries.iter().position(|e| e.seq <= last_seq) {
            Some(Damage {
                keep: overlap,
                offset: entries[overlap].offset as usize,
                reason: format!(
                    "position {} is not above the previous segment's last, {last_seq}",
                    entries[overlap].seq
                ),
            })
        } else {
            scan.tail.map(|t| Damage {
                keep: entries.len(),
                offset: t.offset,
                reason: t.reason,
            })
        };
        if let Some(damage) = damage {
            if is_last {
                // The segment being written when the server stopped: a torn write is expected
                // there. Cut it back to its last valid record.
                entries.truncate(damage.keep);
                let keep_len = entries
                    .last()
                    .map_or(0, |e| u64::from(e.offset) + u64::from(e.len));
                truncated = Some(format!(
                    "{}: {} bytes from byte {} ({})",
                    path.display(),
                    (buf.len() as u64).saturating_sub(keep_len),
                    keep_len,
                    damage.reason
                ));
                if entries.is_empty() {
                    fs::remove_file(path).map_err(|e| StoreError::io("remove", path, e))?;
                    continue;
                }
                file.set_len(keep_len)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| StoreError::io("truncate the torn tail of", path, e))?;
            } else if config.skip_corrupt {
                let aside = path.with_extension("log.corrupt");
                fs::rename(path, &aside).map_err(|e| StoreError::io("rename", path, e))?;
                skipped.push(format!(
                    "{} (corrupt at byte {}: {}), renamed {}",
                    path.display(),
                    damage.offset,
                    damage.reason,
                    aside.display()
                ));
                // Everything before the next segment is gone.
                raise_to = bases[i + 1].0;
                continue;
            } else {
                return Err(StoreError::CorruptSegment {
                    path: path.clone(),
                    offset: damage.offset,
                    reason: damage.reason,
                });
            }
        }
        let Some(last) = entries.last() else {
            // A header and nothing else: no need to keep it.
            fs::remove_file(path).map_err(|e| StoreError::io("remove", path, e))?;
            continue;
        };
        last_seq = last.seq;
        let len = u64::from(last.offset) + u64::from(last.len);
        index.push_segment(
            Segment {
                path: path.clone(),
                file: Arc::new(file),
                entries,
                len,
            },
            &mut doomed,
        );
    }
    drop(buf);
    if raise_to > 0 {
        index.raise_first(raise_to, &mut doomed);
    }
    let head = meta.reserved_through.max(last_seq);
    let now = now_ms();
    index.apply_retention(retention, Some(now), &mut doomed);
    if index.events == 0 {
        index.first = index.first.max(head + 1);
    }
    for segment in doomed.drain(..) {
        fs::remove_file(&segment.path).map_err(|e| StoreError::io("remove", &segment.path, e))?;
    }
    let recent = read_recent(&index, config.hot_events, config.hot_bytes)?;
    let state = LogState {
        epoch: meta.epoch,
        first: index.first,
        head,
        recovered: last_seq,
        recent,
        now_ms: now,
    };
    let segments = index.segments.len();

    let shared = Arc::new(Shared {
        index: RwLock::new(index),
        counters: Counters::default(),
        write_faults: AtomicU32::new(0),
        writer_stopped: std::sync::atomic::AtomicBool::new(false),
    });
    let (replies_tx, replies) = flume::unbounded();
    let (writer_tx, writer_rx) = flume::unbounded();
    let (reader_tx, reader_rx) = flume::unbounded();
    let sync = Arc::new(SyncTarget::default());
    let mut threads = Vec::new();
    let spawn_error = |e| StoreError::io("start a thread for", &dir, e);
    let syncer_stop = if config.durability == Durability::Os {
        let (stop_tx, stop_rx) = flume::bounded::<()>(0);
        let (shared, sync, interval) = (
            Arc::clone(&shared),
            Arc::clone(&sync),
            config.fsync_interval,
        );
        threads.push(
            std::thread::Builder::new()
                .name("tidings-log-sync".into())
                .spawn(move || writer::run_syncer(&shared, &sync, interval, &stop_rx))
                .map_err(spawn_error)?,
        );
        Some(stop_tx)
    } else {
        None
    };
    let writer = Writer::new(
        Arc::clone(&shared),
        dir.clone(),
        config.durability,
        config.segment_bytes,
        retention.clone(),
        meta.epoch,
        head,
        replies_tx.clone(),
        sync,
        syncer_stop,
    );
    let writer_shared = Arc::clone(&shared);
    threads.push(
        std::thread::Builder::new()
            .name("tidings-log-write".into())
            .spawn(move || {
                // Set however the writer ends (a panic too): a close asked afterwards waits for
                // nobody.
                let _stopped = super::WriterStopped(&writer_shared);
                writer.run(&writer_rx);
            })
            .map_err(spawn_error)?,
    );
    let reader_shared = Arc::clone(&shared);
    threads.push(
        std::thread::Builder::new()
            .name("tidings-log-read".into())
            .spawn(move || super::reader::run(&reader_shared, &reader_rx, &replies_tx))
            .map_err(spawn_error)?,
    );
    let log = FileLog {
        writer: writer_tx,
        reader: Some(reader_tx),
        shared,
        threads,
        lock: Some(lock),
    };
    let recovery = Recovery {
        state,
        dir,
        segments,
        took: started.elapsed(),
        truncated,
        skipped,
    };
    Ok((log, recovery, replies))
}

/// The newest retained events, at most `max_events` of them and `max_bytes` of records, oldest
/// first.
fn read_recent(
    index: &Index,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<Logged>, StoreError> {
    // Walk back from the newest entry: (segment, entries) pairs, newest segment first.
    let mut picks: Vec<(&Segment, &[Entry])> = Vec::new();
    let (mut count, mut bytes) = (0usize, 0u64);
    'segments: for (i, segment) in index.segments.iter().enumerate().rev() {
        let start = if i == 0 { index.front } else { 0 };
        let entries = segment.entries.get(start..).unwrap_or_default();
        let mut take = 0;
        for entry in entries.iter().rev() {
            if count == max_events || bytes + u64::from(entry.len) > max_bytes as u64 {
                if take > 0 {
                    picks.push((segment, &entries[entries.len() - take..]));
                }
                break 'segments;
            }
            count += 1;
            bytes += u64::from(entry.len);
            take += 1;
        }
        if take > 0 {
            picks.push((segment, &entries[entries.len() - take..]));
        }
    }
    let mut recent = Vec::with_capacity(count);
    for (segment, entries) in picks.into_iter().rev() {
        read_entries(&segment.file, &segment.path, entries, &mut recent)?;
    }
    Ok(recent)
}

fn read_entries(
    file: &File,
    path: &Path,
    entries: &[Entry],
    out: &mut Vec<Logged>,
) -> Result<(), StoreError> {
    let (Some(head), Some(tail)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    let start = u64::from(head.offset);
    let end = u64::from(tail.offset) + u64::from(tail.len);
    let mut buf = vec![0; usize::try_from(end - start).unwrap_or(0)];
    file.read_exact_at(&mut buf, start)
        .map_err(|e| StoreError::io("read", path, e))?;
    let buf = Bytes::from(buf);
    for entry in entries {
        let at = (u64::from(entry.offset) - start) as usize;
        match record::decode_shared(&buf.slice(at..at + entry.len as usize)) {
            Ok((logged, _)) => out.push(logged),
            Err(e) => {
                return Err(StoreError::CorruptSegment {
                    path: PathBuf::from(path),
                    offset: entry.offset as usize,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(())
}
