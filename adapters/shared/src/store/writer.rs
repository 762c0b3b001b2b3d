//! The writer thread: owns the active segment, numbers and stores appends in batches, applies
//! retention, reserves positions in `meta`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tidings_core::log::record::{self, Meta, SEGMENT_HEADER};
use tidings_core::log::scan::Entry;
use tidings_core::log::{AppendId, Appended, LogEvent, LogReply, Logged};
use tidings_core::{ErrorCode, ProtocolError, Retention};

use super::index::Segment;
use super::{Durability, Shared, ToWriter, files, now_ms};

/// Positions reserved in `meta` at a time: a crash skips at most this many, and `meta` is
/// synced once per this many appends.
pub(crate) const RESERVE_AHEAD: u64 = 1_000_000;

/// Appends taken from the queue into one batch, at most (bounds the batch buffer).
const MAX_BATCH: usize = 4096;

/// Empty polls of the queue before a batch is written (a few microseconds).
const COALESCE_SPINS: u32 = 64;

/// How often retention by age runs.
const AGE_TICK: Duration = Duration::from_secs(1);

/// The segment being appended to.
struct Active {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes written and kept (the offset of the next record).
    len: u64,
    /// Records in it.
    records: usize,
    /// A failed write could not be cut off: cut it before writing again.
    needs_truncate: bool,
}

/// The active segment the syncer syncs, and whether it has unsynced writes.
#[derive(Default)]
pub(crate) struct SyncTarget {
    pub file: std::sync::Mutex<Option<Arc<File>>>,
    pub dirty: AtomicBool,
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    pub durability: Durability,
    pub segment_bytes: u64,
    pub retention: Retention,
    pub epoch: u64,
    pub next_seq: u64,
    pub reserved_through: u64,
    pub replies: flume::Sender<LogReply>,
    pub sync: Arc<SyncTarget>,
    /// Dropped at close: stops the syncer thread.
    pub syncer_stop: Option<flume::Sender<()>>,
    active: Option<Active>,
    /// The records of the current sub-batch, encoded.
    buf: Vec<u8>,
    /// Their index entries.
    entries: Vec<Entry>,
    /// The sub-batch's appends in request order: a position, or why it was refused.
    pending: Vec<(AppendId, Result<u64, ProtocolError>)>,
    /// The last write failed (errors are logged once per change of state).
    failing: bool,
}

fn io_message(what: &str, path: &std::path::Path, e: &io::Error) -> String {
    let why = match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "the disk is full",
        io::ErrorKind::ReadOnlyFilesystem => "the disk is read-only",
        io::ErrorKind::PermissionDenied => "the log's files are not writable",
        _ => "the disk failed",
    };
    format!(
        "the event was not stored: {why} ({what} {}: {e}); nothing was stored; retry later",
        path.display()
    )
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        dir: PathBuf,
        durability: Durability,
        segment_bytes: u64,
        retention: Retention,
        epoch: u64,
        head: u64,
        replies: flume::Sender<LogReply>,
        sync: Arc<SyncTarget>,
        syncer_stop: Option<flume::Sender<()>>,
    ) -> Self {
        Self {
            shared,
            dir,
            durability,
            segment_bytes,
            retention,
            epoch,
            next_seq: head + 1,
            reserved_through: head,
            replies,
            sync,
            syncer_stop,
            active: None,
            buf: Vec::new(),
            entries: Vec::new(),
            pending: Vec::new(),
            failing: false,
        }
    }

    pub(crate) fn run(mut self, rx: &flume::Receiver<ToWriter>) {
        let mut batch: Vec<(AppendId, LogEvent)> = Vec::new();
        let mut next_tick = Instant::now() + AGE_TICK;
        loop {
            let msg = rx.recv_deadline(next_tick);
            let mut stop = None;
            match msg {
                Ok(ToWriter::Appends(appends)) => {
                    batch.extend(appends);
                    // Take what is queued; when the queue runs dry, wait a moment for more
                    // (a driver step queues its publishes back to back): fewer, larger writes
                    // and fewer thread wake-ups.
                    let mut idle = 0;
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(ToWriter::Appends(appends)) => {
                                batch.extend(appends);
                                idle = 0;
                            }
                            Ok(other) => {
                                stop = Some(other);
                                break;
                            }
                            Err(_) if idle < COALESCE_SPINS => {
                                idle += 1;
                                std::hint::spin_loop();
                            }
                            Err(_) => break,
                        }
                    }
                    self.append_batch(&mut batch);
                }
                Ok(other) => stop = Some(other),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => {
                    self.close();
                    return;
                }
            }
            match stop {
                Some(ToWriter::Close(done)) => {
                    self.close();
                    let _ = done.send(());
                    return;
                }
                #[cfg(test)]
                Some(ToWriter::Crash(done)) => {
                    self.syncer_stop = None;
                    let _ = done.send(());
                    return;
                }
                _ => {}
            }
            if Instant::now() >= next_tick {
                self.age_tick();
                next_tick = Instant::now() + AGE_TICK;
            }
        }
    }

    /// Stores a batch: the appends are numbered and encoded into one buffer, written at once
    /// (more than once only when the batch fills a segment), and answered in order.
    fn append_batch(&mut self, batch: &mut Vec<(AppendId, LogEvent)>) {
        let now = now_ms();
        let total = batch.len();
        let mut done = 0;
        for (id, event) in batch.drain(..) {
            done += 1;
            if let Err(message) = self.make_room(total - done + 1) {
                self.commit();
                self.refuse(id, message);
                continue;
            }
            let seq = self.next_seq;
            let logged = Logged {
                seq,
                time_ms: now,
                event,
            };
            let Some(active) = &self.active else {
                continue;
            };
            let offset = active.len + self.buf.len() as u64;
            match record::encode(&logged, &mut self.buf) {
                Ok(len) => {
                    self.entries.push(Entry {
                        seq,
                        time_ms: now,
                        // A segment is at most 1 GiB plus one record: offsets fit.
                        offset: u32::try_from(offset).unwrap_or(u32::MAX),
                        len: u32::try_from(len).unwrap_or(u32::MAX),
                    });
                    self.pending.push((id, Ok(seq)));
                    self.next_seq += 1;
                }
                Err(e) => self.pending.push((id, Err(e.into()))),
            }
        }
        self.commit();
    }

    /// Makes sure the next append has a reserved position and an active segment with room.
    fn make_room(&mut self, remaining: usize) -> Result<(), String> {
        if self.next_seq > self.reserved_through {
            // Store what is pending before `meta` says more positions are taken.
            self.commit();
            let through = self.next_seq - 1 + RESERVE_AHEAD.max(remaining as u64);
            let first = self.shared.index().first;
            let meta = Meta {
                epoch: self.epoch,
                reserved_through: through,
                first,
            };
            if let Err(e) = files::write_meta(&self.dir, &meta) {
                self.shared.counters.io_error();
                let message = io_message("writing", &self.dir.join(files::META), &e);
                self.report_failure(&message);
                return Err(message);
            }
            self.reserved_through = through;
        }
        let full = self.active.as_ref().is_none_or(|a| {
            a.records + self.entries.len() > 0
                && a.len + self.buf.len() as u64 >= self.segment_bytes
        });
        if full {
            self.commit();
            if let Err((path, e)) = self.roll() {
                self.shared.counters.io_error();
                let message = io_message("creating", &path, &e);
                self.report_failure(&message);
                return Err(message);
            }
        }
        Ok(())
    }

    fn refuse(&mut self, id: AppendId, message: String) {
        self.shared
            .counters
            .append_errors
            .fetch_add(1, Ordering::Relaxed);
        let _ = self.replies.send(LogReply::Appended {
            id,
            result: Err(ProtocolError::new(ErrorCode::Unavailable, message)),
        });
    }

    fn report_failure(&mut self, message: &str) {
        if !self.failing {
            tracing::error!("file log: {message}");
            self.failing = true;
        }
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        let started = Instant::now();
        let result = file.sync_data();
        self.shared.counters.synced(started.elapsed());
        result
    }

    /// Writes the pending records (syncing them under `strict`), indexes them, applies
    /// retention and answers their appends. On an I/O error nothing of it is kept and every
    /// append of it is refused.
    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let outcome = if self.buf.is_empty() {
            Ok(())
        } else {
            self.write_pending()
        };
        match outcome {
            Ok(()) => {
                let mut doomed = Vec::new();
                let first = {
                    let mut index = self.shared.index_mut();
                    if let Some(active) = &mut self.active {
                        active.len += self.buf.len() as u64;
                        active.records += self.entries.len();
                        index.extend(&self.entries, active.len);
                    }
                    index.apply_retention(&self.retention, None, &mut doomed);
                    index.first
                };
                if self.failing {
                    tracing::info!("file log: writing works again");
                    self.failing = false;
                }
                let counters = &self.shared.counters;
                for (id, result) in self.pending.drain(..) {
                    let result = match result {
                        Ok(seq) => {
                            counters.appends.fetch_add(1, Ordering::Relaxed);
                            Ok(Appended { seq, first })
                        }
                        Err(e) => {
                            counters.append_errors.fetch_add(1, Ordering::Relaxed);
                            Err(e)
                        }
                    };
                    let _ = self.replies.send(LogReply::Appended { id, result });
                }
                self.delete(doomed);
            }
            Err(message) => {
                let counters = &self.shared.counters;
                for (id, result) in self.pending.drain(..) {
                    counters.append_errors.fetch_add(1, Ordering::Relaxed);
                    let result = Err(match result {
                        Ok(_) => ProtocolError::new(ErrorCode::Unavailable, message.clone()),
                        Err(e) => e,
                    });
                    let _ = self.replies.send(LogReply::Appended { id, result });
                }
            }
        }
        self.buf.clear();
        self.entries.clear();
    }

    /// The write (and sync, under `strict`) of the pending records; on failure the segment is
    /// cut back to its last good length, so nothing half-written is ever read back.
    fn write_pending(&mut self) -> Result<(), String> {
        let Some(active) = &mut self.active else {
            return Err("the event was not stored: no segment is open; retry later".to_owned());
        };
        let mut result = Ok(());
        if active.needs_truncate {
            result = active.file.set_len(active.len);
            if result.is_ok() {
                active.needs_truncate = false;
            }
        }
        let faults = &self.shared.write_faults;
        let faulty = faults
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        result = result.and_then(|()| {
            if faulty {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            active.file.write_all_at(&self.buf, active.len)
        });
        if result.is_ok() && self.durability == Durability::Strict {
            let started = Instant::now();
            result = active.file.sync_data();
            self.shared.counters.synced(started.elapsed());
        }
        match result {
            Ok(()) => {
                if self.durability == Durability::Os {
                    self.sync.dirty.store(true, Ordering::Release);
                }
                Ok(())
            }
            Err(e) => {
                self.shared.counters.io_error();
                let message = io_message("writing", &active.path, &e);
                if active.file.set_len(active.len).is_ok() {
                    // Nothing of this batch is in the file: its positions can be given again.
                    self.next_seq -= self.entries.len() as u64;
                } else {
                    // Positions of what may be left are never given again; cut it before the
                    // next write.
                    active.needs_truncate = true;
                }
                self.report_failure(&message);
                Err(message)
            }
        }
    }

    /// Seals the active segment (synced) and starts a new one named by the next position.
    fn roll(&mut self) -> Result<(), (PathBuf, io::Error)> {
        if let Some(old) = self.active.take() {
            // Sealed segments are synced in every mode: recovery trusts them.
            if let Err(e) = self.sync(&old.file) {
                self.shared.counters.io_error();
                tracing::error!("file log: cannot sync {}: {e}", old.path.display());
            }
        }
        let base = self.next_seq;
        let path = files::segment_path(&self.dir, base);
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|file| {
                file.write_all_at(&record::encode_segment_header(base), 0)?;
                if self.durability != Durability::None {
                    file.sync_all()?;
                    files::sync_dir(&self.dir)?;
                }
                Ok(file)
            });
        let file = match created {
            Ok(file) => Arc::new(file),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err((path, e));
            }
        };
        self.shared.index_mut().segments.push_back(Segment {
            path: path.clone(),
            file: Arc::clone(&file),
            entries: Vec::new(),
            len: SEGMENT_HEADER as u64,
        });
        if let Ok(mut target) = self.sync.file.lock() {
            *target = Some(Arc::clone(&file));
        }
        self.active = Some(Active {
            file,
            path,
            len: SEGMENT_HEADER as u64,
            records: 0,
            needs_truncate: false,
        });
        Ok(())
    }

    /// Retention by age, once a second; a move of `first` is told to the broker.
    fn age_tick(&mut self) {
        let mut doomed = Vec::new();
        let moved = {
            let mut index = self.shared.index_mut();
            index
                .apply_retention(&self.retention, Some(now_ms()), &mut doomed)
                .then_some(index.first)
        };
        if let Some(first) = moved {
            let _ = self.replies.send(LogReply::Trimmed { first });
        }
        self.delete(doomed);
    }

    fn delete(&self, doomed: Vec<Segment>) {
        if doomed.is_empty() {
            return;
        }
        for segment in doomed {
            if let Err(e) = std::fs::remove_file(&segment.path) {
                self.shared.counters.io_error();
                tracing::error!(
                    "file log: cannot delete {} (out of retention): {e}",
                    segment.path.display()
                );
            }
        }
        if self.durability != Durability::None {
            let _ = files::sync_dir(&self.dir);
        }
    }

    /// Syncs the active segment and records in `meta` the positions actually given, so that a
    /// clean restart continues without a gap.
    fn close(&mut self) {
        self.syncer_stop = None;
        if let Some(active) = &self.active {
            if let Err(e) = self.sync(&active.file) {
                self.shared.counters.io_error();
                tracing::error!("file log: cannot sync {}: {e}", active.path.display());
                // The reservation stays: positions may have been lost, never reused.
                return;
            }
        }
        let meta = Meta {
            epoch: self.epoch,
            reserved_through: self.next_seq - 1,
            first: self.shared.index().first,
        };
        if let Err(e) = files::write_meta(&self.dir, &meta) {
            self.shared.counters.io_error();
            tracing::error!(
                "file log: cannot write {}: {e}",
                self.dir.join(files::META).display()
            );
        }
    }
}

/// The syncer thread (`durability = "os"`): syncs the active segment every `interval` when it
/// has unsynced writes; stops when `stop` closes.
pub(crate) fn run_syncer(
    shared: &Shared,
    sync: &SyncTarget,
    interval: Duration,
    stop: &flume::Receiver<()>,
) {
    while let Err(flume::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        if !sync.dirty.swap(false, Ordering::AcqRel) {
            continue;
        }
        let file = sync.file.lock().ok().and_then(|f| f.clone());
        if let Some(file) = file {
            let started = Instant::now();
            let result = file.sync_data();
            shared.counters.synced(started.elapsed());
            if let Err(e) = result {
                shared.counters.io_error();
                tracing::error!("file log: cannot sync the active segment: {e}");
            }
        }
    }
}
