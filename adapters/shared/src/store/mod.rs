//! The embedded durable log: events in checksummed segment files under a data directory, so
//! they and the epoch survive restarts.
//!
//! The broker talks to it through the core's log seam ([`tidings_core::log`]): the driver hands
//! [`FileLog::request`] every [`LogRequest`] and feeds the broker every [`LogReply`] from the
//! channel [`FileLog::open`] returned. Three threads do the I/O, so no request ever blocks the
//! driver:
//!
//! - the writer owns the active segment: it takes every queued append at once, encodes them
//!   into one buffer, writes it with one positional write, syncs as [`Durability`] says, and
//!   answers in request order; it also applies retention and reserves positions in `meta`;
//! - the reader answers range reads from the shared index with positional reads, so a client
//!   catching up from far back never delays appends;
//! - under `durability = "os"`, the syncer syncs the active segment every `fsync_interval`.
//!
//! The formats (record, segment header, `meta`) and the recovery scan are pure functions in the
//! core ([`tidings_core::log::record`], [`tidings_core::log::scan`]); `docs/STORAGE.md` says what
//! is guaranteed when.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidings_core::log::{AppendId, LogEvent, LogReply, LogRequest, LogState, ReadId};

mod config;
mod error;
mod files;
mod index;
mod reader;
mod recover;
#[cfg(test)]
mod tests;
mod writer;

pub use config::{Durability, MAX_SEGMENT_BYTES, StoreConfig, StoreKind};
pub use error::StoreError;

use index::Index;

/// What [`FileLog::open`] recovered, for the broker (`state`) and the start-up log line.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The log's state, for `Broker::restore_log`.
    pub state: LogState,
    /// The data directory.
    pub dir: PathBuf,
    /// Segment files in use.
    pub segments: usize,
    /// How long recovery took.
    pub took: Duration,
    /// What was cut from a torn tail of the last segment (file, offset, bytes, why), if anything.
    pub truncated: Option<String>,
    /// Corrupt segments skipped (`skip_corrupt`), each with where and why; they were renamed
    /// `*.log.corrupt`.
    pub skipped: Vec<String>,
}

/// The file log's metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes of segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// The first retained position.
    pub first: u64,
    /// The last stored position (0 before any).
    pub last: u64,
    /// Events retained.
    pub events: usize,
    /// Appends stored.
    pub appends: u64,
    /// Appends refused (I/O errors, too large).
    pub append_errors: u64,
    /// Range reads answered.
    pub reads: u64,
    /// Syncs of segment data to the disk.
    pub fsyncs: u64,
    /// Time spent in those syncs.
    pub fsync_total: Duration,
    /// The longest of them.
    pub fsync_max: Duration,
    /// I/O errors (writes, syncs, reads, deletions).
    pub io_errors: u64,
}

/// Counters the threads update.
#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    append_errors: AtomicU64,
    reads: AtomicU64,
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    fsync_max_nanos: AtomicU64,
    io_errors: AtomicU64,
}

impl Counters {
    fn synced(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.fsync_max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    fn io_error(&self) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the threads share.
struct Shared {
    index: RwLock<Index>,
    counters: Counters,
    /// Test hook: the next this many segment writes fail as if the disk were full.
    write_faults: AtomicU32,
    /// The writer thread has ended (its queue is read no more).
    writer_stopped: std::sync::atomic::AtomicBool,
}

/// Marks the writer stopped when dropped, at the end of its thread.
struct WriterStopped<'a>(&'a Shared);

impl Drop for WriterStopped<'_> {
    fn drop(&mut self) {
        self.0.writer_stopped.store(true, Ordering::SeqCst);
    }
}

impl Shared {
    /// The index for reading; a poisoned lock (a thread panicked) still holds a usable index.
    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the writer thread is asked.
enum ToWriter {
    /// Appends, in order (a driver step's at once: one write, answers that come together).
    Appends(Vec<(AppendId, LogEvent)>),
    /// Write and sync what is pending, record the reservation actually used, stop; then answer.
    Close(flume::Sender<()>),
    /// Stop at once, like a killed process (tests).
    #[cfg(test)]
    Crash(flume::Sender<()>),
}

/// What the reader thread is asked.
struct ToReader {
    read: ReadId,
    from: u64,
    max_events: usize,
}

/// The embedded segment-file log. Dropping it closes it as [`FileLog::close`] does.
pub struct FileLog {
    writer: flume::Sender<ToWriter>,
    reader: Option<flume::Sender<ToReader>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    lock: Option<files::DirLock>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog").finish_non_exhaustive()
    }
}

/// The wall clock in milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl FileLog {
    /// Opens (creating) the data directory, takes its lock, recovers, and starts the I/O
    /// threads. The log applies `retention`; recovery reads back the newest events (at most
    /// `config.hot_events` of them and `config.hot_bytes` of records) into `Recovery.state.recent`.
    /// Replies to [`FileLog::request`] come on the returned channel.
    ///
    /// # Errors
    /// A [`StoreError`] naming the file and saying what to do: the directory is locked by another
    /// server, unreadable, or holds a corrupt sealed segment (see `skip_corrupt`).
    pub fn open(
        config: &StoreConfig,
        retention: &tidings_core::Retention,
    ) -> Result<(Self, Recovery, flume::Receiver<LogReply>), StoreError> {
        recover::open(config, retention)
    }

    /// Hands the log a request; never blocks. Appends are answered in the order they were asked.
    pub fn request(&self, req: LogRequest) {
        self.requests(std::iter::once(req));
    }

    /// Hands the log requests in order; never blocks. The appends among them reach the writer
    /// as one message, so they are written together and answered together: a driver hands over
    /// a step's requests at once, and the deliveries they release then come in one step too.
    pub fn requests(&self, reqs: impl IntoIterator<Item = LogRequest>) {
        let mut appends = Vec::new();
        for req in reqs {
            match req {
                LogRequest::Append { id, event } => appends.push((id, event)),
                other => self.read(other),
            }
        }
        if !appends.is_empty() {
            // Refused only once the writer has stopped (`flush_and_stop` at a server's shutdown):
            // those appends are never answered, as that method says.
            let _ = self.writer.send(ToWriter::Appends(appends));
        }
    }

    fn read(&self, req: LogRequest) {
        match req {
            LogRequest::Read {
                read,
                from,
                max_events,
            } => {
                if let Some(reader) = &self.reader {
                    let _ = reader.send(ToReader {
                        read,
                        from,
                        max_events,
                    });
                }
            }
            other => tracing::warn!(?other, "the file log does not handle this request"),
        }
    }

    /// The log's metrics.
    pub fn stats(&self) -> LogStats {
        let c = &self.shared.counters;
        let index = self.shared.index();
        LogStats {
            bytes: index.disk_bytes(),
            segments: index.segments.len(),
            first: index.first,
            last: index.last,
            events: index.events,
            appends: c.appends.load(Ordering::Relaxed),
            append_errors: c.append_errors.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            fsync_total: Duration::from_nanos(c.fsync_nanos.load(Ordering::Relaxed)),
            fsync_max: Duration::from_nanos(c.fsync_max_nanos.load(Ordering::Relaxed)),
            io_errors: c.io_errors.load(Ordering::Relaxed),
        }
    }

    /// Writes and syncs what is pending, records the positions actually used, and stops the
    /// writer, for a log still shared (a server shutting down): appends asked afterwards are
    /// never answered. The threads end and the lock is released when the log is dropped (or the
    /// process exits).
    pub async fn flush_and_stop(&self) {
        if self.shared.writer_stopped.load(Ordering::SeqCst) {
            return;
        }
        let (done, wait) = flume::bounded(1);
        if self.writer.send(ToWriter::Close(done)).is_ok() {
            let _ = wait.recv_async().await;
        }
    }

    /// Writes and syncs what is pending, stops the threads and releases the directory's lock.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        let (done, wait) = flume::bounded(1);
        if self.writer.send(ToWriter::Close(done)).is_ok() {
            // A close queued after the writer ended (`flush_and_stop` before, or a panic) is
            // never answered: its queue outlives it while this sender does.
            while let Err(flume::RecvTimeoutError::Timeout) =
                wait.recv_timeout(Duration::from_millis(20))
            {
                if self.shared.writer_stopped.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
        self.join();
    }

    fn join(&mut self) {
        // The reader stops when its channel closes; the syncer when the writer's handle to it
        // does.
        self.reader = None;
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a file log thread panicked");
            }
        }
        self.lock = None;
    }

    /// Test hook: the next `n` segment writes fail as if the disk were full.
    #[cfg(test)]
    fn fail_writes(&self, n: u32) {
        self.shared.write_faults.store(n, Ordering::SeqCst);
    }

    /// Test hook: stops like a killed process (nothing synced, the reservation left as is).
    #[cfg(test)]
    fn crash(mut self) {
        let (done, wait) = flume::bounded(1);
        if self.writer.send(ToWriter::Crash(done)).is_ok() {
            let _ = wait.recv();
        }
        self.join();
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}
