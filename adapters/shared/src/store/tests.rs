//! Tests of the file log, on temporary data directories. Nothing sleeps: each test waits for
//! the reply it expects.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tidings_core::log::{AppendId, Appended, LogEvent, LogReply, LogRequest, Page, ReadId};
use tidings_core::{ErrorCode, Name, NameLimits, Payload, ProtocolError, Retention, Topic};

use super::writer::RESERVE_AHEAD;
use super::{Durability, FileLog, StoreConfig, StoreError};

const WAIT: Duration = Duration::from_secs(20);

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        // Long: the tests count syncs, and only the ones they cause.
        fsync_interval: Duration::from_secs(3600),
        ..StoreConfig::default()
    }
}

fn keep_all() -> Retention {
    Retention {
        max_events: usize::MAX,
        max_bytes: usize::MAX,
        max_age: Duration::from_secs(1 << 30),
    }
}

fn event(i: u64, payload_bytes: usize) -> LogEvent {
    let digits = i.to_string();
    let text = "0".repeat(payload_bytes.saturating_sub(digits.len())) + &digits;
    LogEvent {
        topic: Topic::parse(&format!("room.{}", i % 3), NameLimits::default()).unwrap(),
        event: (i % 2 == 0).then(|| Name::parse("event", "said", 64).unwrap()),
        from: (i % 4 == 0).then(|| Name::parse("from", "alice", 64).unwrap()),
        payload: if i % 5 == 0 {
            Payload::json(format!("{{\"n\":{i}}}")).unwrap()
        } else {
            Payload::text(text).unwrap()
        },
    }
}

struct Log {
    log: FileLog,
    replies: flume::Receiver<LogReply>,
    next_id: u64,
}

impl Log {
    fn open(config: &StoreConfig, retention: &Retention) -> (Self, super::Recovery) {
        let (log, recovery, replies) = FileLog::open(config, retention).unwrap();
        (
            Self {
                log,
                replies,
                next_id: 0,
            },
            recovery,
        )
    }

    fn send(&mut self, event: LogEvent) -> AppendId {
        self.next_id += 1;
        let id = AppendId(self.next_id);
        self.log.request(LogRequest::Append { id, event });
        id
    }

    fn reply(&self) -> LogReply {
        self.replies.recv_timeout(WAIT).expect("a reply")
    }

    fn appended(&self, want: AppendId) -> Result<Appended, ProtocolError> {
        match self.reply() {
            LogReply::Appended { id, result } => {
                assert_eq!(id, want, "appends are answered in order");
                result
            }
            other => panic!("expected an append's reply, got {other:?}"),
        }
    }

    /// Appends events `from..to` (payloads of `size` bytes), all queued before any answer.
    fn append(&mut self, range: std::ops::Range<u64>, size: usize) -> Vec<Appended> {
        let ids: Vec<AppendId> = range.map(|i| self.send(event(i, size))).collect();
        ids.into_iter()
            .map(|id| self.appended(id).expect("stored"))
            .collect()
    }

    fn read(&self, from: u64, max_events: usize) -> Page {
        self.log.request(LogRequest::Read {
            read: ReadId(from),
            from,
            max_events,
        });
        match self.reply() {
            LogReply::Page { read, result } => {
                assert_eq!(read, ReadId(from));
                result.expect("a page")
            }
            other => panic!("expected a page, got {other:?}"),
        }
    }
}

fn seqs(page: &Page) -> Vec<u64> {
    page.events.iter().map(|e| e.seq).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn append_and_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, recovery) = Log::open(&config(dir.path()), &keep_all());
    assert_eq!(
        (
            recovery.state.first,
            recovery.state.head,
            recovery.state.recovered
        ),
        (1, 0, 0)
    );
    assert!(recovery.state.epoch > 0);
    let appended = log.append(1..11, 20);
    let positions: Vec<u64> = appended.iter().map(|a| a.seq).collect();
    assert_eq!(positions, (1..=10).collect::<Vec<_>>());
    assert!(appended.iter().all(|a| a.first == 1));
    let page = log.read(1, 100);
    assert_eq!(seqs(&page), (1..=10).collect::<Vec<_>>());
    assert!(page.done);
    assert_eq!(page.first, 1);
    for (i, logged) in (1..).zip(&page.events) {
        assert_eq!(logged.event, event(i, 20));
        assert!(logged.time_ms > 1_600_000_000_000);
    }
    let page = log.read(5, 3);
    assert_eq!(seqs(&page), [5, 6, 7]);
    assert!(!page.done);
    let page = log.read(11, 3);
    assert!(page.events.is_empty() && page.done);
    let stats = log.log.stats();
    assert_eq!(
        (stats.first, stats.last, stats.events, stats.appends),
        (1, 10, 10, 10)
    );
    assert_eq!(stats.segments, 1);
    assert!(stats.bytes > 10 * 20);
}

#[test]
fn reopen_after_close_keeps_epoch_events_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, first_open) = Log::open(&config(dir.path()), &keep_all());
    log.append(1..6, 10);
    log.log.close();
    let (mut log, recovery) = Log::open(&config(dir.path()), &keep_all());
    let state = &recovery.state;
    assert_eq!(state.epoch, first_open.state.epoch);
    assert_eq!((state.first, state.head, state.recovered), (1, 5, 5));
    assert_eq!(state.recent.len(), 5);
    assert_eq!(state.recent[4].event, event(5, 10));
    assert_eq!(recovery.truncated, None);
    assert_eq!(log.append(6..7, 10)[0].seq, 6);
    assert_eq!(seqs(&log.read(1, 100)), [1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_log_stopped_by_a_server_shutdown_keeps_its_events_and_drops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..20 {
        let (mut log, _) = Log::open(&config(dir.path()), &keep_all());
        log.append(1..3, 10);
        futures_lite::future::block_on(log.log.flush_and_stop());
        // Dropping it afterwards (what a server process does last) must not wait for the
        // writer that is gone: it once did, forever, when its close was queued behind the end.
        let (done, dropped) = flume::bounded(1);
        std::thread::spawn(move || {
            drop(log);
            let _ = done.send(());
        });
        dropped.recv_timeout(WAIT).expect("the log drops at once");
    }
    let (log, recovery) = Log::open(&config(dir.path()), &keep_all());
    let state = &recovery.state;
    assert_eq!(
        (state.head, state.recovered),
        (40, 40),
        "a clean stop leaves no hole"
    );
    log.log.close();
}

#[test]
fn recent_is_bounded_by_hot_events_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&config(dir.path()), &keep_all());
    log.append(1..101, 100);
    log.log.close();
    let bounded = StoreConfig {
        hot_events: 30,
        ..config(dir.path())
    };
    let (log, recovery) = Log::open(&bounded, &keep_all());
    let recent: Vec<u64> = recovery.state.recent.iter().map(|e| e.seq).collect();
    assert_eq!(recent, (71..=100).collect::<Vec<_>>());
    log.log.close();
    let bounded = StoreConfig {
        hot_bytes: 1000,
        ..config(dir.path())
    };
    let (_log, recovery) = Log::open(&bounded, &keep_all());
    let n = recovery.state.recent.len();
    assert!((1..10).contains(&n), "{n}");
    assert_eq!(recovery.state.recent[n - 1].seq, 100);
}

#[test]
fn unclean_stop_continues_after_the_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&config(dir.path()), &keep_all());
    log.append(1..4, 10);
    log.log.crash();
    let (mut log, recovery) = Log::open(&config(dir.path()), &keep_all());
    let state = &recovery.state;
    assert_eq!((state.head, state.recovered), (RESERVE_AHEAD, 3));
    assert!(state.recovered < state.head);
    assert_eq!(log.append(4..5, 10)[0].seq, RESERVE_AHEAD + 1);
    assert_eq!(seqs(&log.read(1, 100)), [1, 2, 3, RESERVE_AHEAD + 1]);
}

#[test]
fn a_torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&config(dir.path()), &keep_all());
    log.append(1..4, 10);
    log.log.close();
    let segment = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&segment).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (mut log, recovery) = Log::open(&config(dir.path()), &keep_all());
    let truncated = recovery.truncated.expect("reported");
    assert!(
        truncated.contains(&segment.display().to_string()),
        "{truncated}"
    );
    assert!(truncated.contains("incomplete"), "{truncated}");
    assert_eq!((recovery.state.recovered, recovery.state.head), (2, 3));
    assert_eq!(seqs(&log.read(1, 100)), [1, 2]);
    // Position 3 was given out before: it is never given again.
    assert_eq!(log.append(4..5, 10)[0].seq, 4);
    log.log.close();
    let (_log, recovery) = Log::open(&config(dir.path()), &keep_all());
    assert_eq!(recovery.truncated, None);
    assert_eq!(recovery.state.recovered, 4);
}

fn small_segments(dir: &Path) -> StoreConfig {
    StoreConfig {
        segment_bytes: 4096,
        ..config(dir)
    }
}

#[test]
fn a_corrupt_sealed_segment_stops_the_start_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&small_segments(dir.path()), &keep_all());
    log.append(1..101, 100);
    log.log.close();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    let mut bytes = fs::read(&files[0]).unwrap();
    bytes[1000] ^= 0x01;
    fs::write(&files[0], &bytes).unwrap();

    let err = FileLog::open(&small_segments(dir.path()), &keep_all()).unwrap_err();
    assert!(matches!(err, StoreError::CorruptSegment { .. }));
    let message = err.to_string();
    assert!(
        message.contains(&files[0].display().to_string()),
        "{message}"
    );
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(message.contains("--skip-corrupt"), "{message}");

    let skip = StoreConfig {
        skip_corrupt: true,
        ..small_segments(dir.path())
    };
    let (log, recovery) = Log::open(&skip, &keep_all());
    assert_eq!(recovery.skipped.len(), 1, "{:?}", recovery.skipped);
    assert!(recovery.skipped[0].contains(&files[0].display().to_string()));
    let second_base: u64 = files[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(recovery.state.first, second_base);
    assert_eq!(recovery.state.recovered, 100);
    let page = log.read(1, 5);
    assert_eq!(page.first, second_base);
    assert_eq!(page.events[0].seq, second_base);
    assert!(!files[0].exists());
}

#[test]
fn a_second_open_of_one_directory_fails_naming_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = Log::open(&config(dir.path()), &keep_all());
    let err = FileLog::open(&config(dir.path()), &keep_all()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, StoreError::Locked { pid: Some(_), .. }),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().join("lock").display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
}

#[test]
fn the_lock_is_released_at_close_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(&config(dir.path()), &keep_all());
    log.log.close();
    let (log, _) = Log::open(&config(dir.path()), &keep_all());
    drop(log);
    let (_log, _) = Log::open(&config(dir.path()), &keep_all());
}

#[test]
fn retention_by_count_moves_first_and_deletes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_events: 30,
        ..keep_all()
    };
    let (mut log, _) = Log::open(&small_segments(dir.path()), &retention);
    let appended = log.append(1..101, 100);
    assert_eq!(appended.last().unwrap().first, 71);
    let stats = log.log.stats();
    assert_eq!((stats.first, stats.events), (71, 30));
    // A read from before `first` says what was evicted.
    let page = log.read(1, 5);
    assert_eq!(page.first, 71);
    assert_eq!(seqs(&page), [71, 72, 73, 74, 75]);
    // Segments out of retention are deleted after the appends are answered; the close comes
    // after that deletion in the writer's queue.
    log.log.close();
    let files = segment_files(dir.path());
    assert_eq!(files.len(), stats.segments);
    // Only the segment holding 71 and later ones are left.
    let bases: Vec<u64> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        bases[0] <= 71 && bases.get(1).is_none_or(|b| *b > 71),
        "{bases:?}"
    );
    // Recovery applies retention again.
    let (_log, recovery) = Log::open(&small_segments(dir.path()), &retention);
    assert_eq!(recovery.state.first, 71);
    assert_eq!(recovery.state.recent.len(), 30);
}

/// The index entries a log holds, evicted ones included, and the capacity they occupy.
fn indexed(log: &Log) -> (usize, usize) {
    let index = log.log.shared.index();
    index.segments.iter().fold((0, 0), |(len, cap), s| {
        (len + s.entries.len(), cap + s.entries.capacity())
    })
}

#[test]
fn evicted_entries_of_the_active_segment_are_not_kept() {
    // The soak's shape (RELIABILITY.md §5.1): a count retention far below what one segment
    // holds, so every event stays in the active segment and retention only moves `front`.
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_events: 100,
        ..keep_all()
    };
    let (mut log, _) = Log::open(&config(dir.path()), &retention);
    for chunk in 0..40 {
        log.append(chunk * 250 + 1..chunk * 250 + 251, 50);
    }
    let stats = log.log.stats();
    assert_eq!((stats.segments, stats.first, stats.events), (1, 9_901, 100));
    let (len, capacity) = indexed(&log);
    // Evicted entries are dropped once there are 1,024 of them and they are at least half:
    // at most that, the retained 100 and one batch of 250 are indexed (10,000 before).
    assert!(
        len <= 1024 + 100 + 250 && capacity <= 4096,
        "10,000 appended, 100 retained, {len} entries indexed in a capacity of {capacity}"
    );
    // Reads and recovery still find exactly the retained events.
    assert_eq!(seqs(&log.read(1, 3)), [9_901, 9_902, 9_903]);
    assert_eq!(log.read(9_998, 10).events.len(), 3);
    log.log.close();
    let (_log, recovery) = Log::open(&config(dir.path()), &retention);
    assert_eq!(recovery.state.first, 9_901);
    assert_eq!(recovery.state.recent.len(), 100);
}

#[test]
fn retention_by_bytes_moves_first() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&small_segments(dir.path()), &keep_all());
    let one = log.append(1..2, 100);
    assert_eq!(one[0].first, 1);
    let record = log.log.stats().bytes - 24;
    log.log.close();
    let retention = Retention {
        max_bytes: usize::try_from(record * 10).unwrap(),
        ..keep_all()
    };
    let (mut log, recovery) = Log::open(&small_segments(dir.path()), &retention);
    assert_eq!(recovery.state.first, 1);
    let appended = log.append(2..51, 100);
    // Records of about one size (names vary): about ten fit.
    let stats = log.log.stats();
    assert!((9..=11).contains(&stats.events), "{stats:?}");
    assert_eq!(appended.last().unwrap().first, 51 - stats.events as u64);
    assert_eq!(stats.first, appended.last().unwrap().first);
    log.log.close();
    assert!(segment_files(dir.path()).len() <= 2);
}

#[test]
fn retention_by_age_sends_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_age: Duration::from_millis(1),
        ..keep_all()
    };
    let (mut log, _) = Log::open(&config(dir.path()), &retention);
    let appended = log.append(1..4, 10);
    assert_eq!(appended[2].first, 1, "appends do not apply the age");
    // The writer checks ages every second.
    match log.reply() {
        LogReply::Trimmed { first } => assert_eq!(first, 4),
        other => panic!("expected Trimmed, got {other:?}"),
    }
    let page = log.read(1, 10);
    assert_eq!(page.first, 4);
    assert!(page.events.is_empty() && page.done);
}

#[test]
fn reads_are_capped_by_events_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&config(dir.path()), &keep_all());
    log.append(1..31, 100_000);
    let page = log.read(1, 1000);
    // About 1 MiB: ten 100 kB payloads, and the small JSON ones between them.
    let bytes: usize = page.events.iter().map(|e| e.event.payload.len()).sum();
    assert!(bytes <= super::reader::PAGE_BYTES as usize, "{bytes}");
    assert!(
        (9..=13).contains(&page.events.len()),
        "{}",
        page.events.len()
    );
    assert!(!page.done);
    let page = log.read(1, 3);
    assert_eq!(seqs(&page), [1, 2, 3]);
    // A single event larger than the byte cap is still returned.
    let big = log.append(31..32, 2 << 20)[0].seq;
    let page = log.read(big, 10);
    assert_eq!(seqs(&page), [big]);
    assert!(page.done);
    assert_eq!(log.read(1, 0).events.len(), 0);
}

#[test]
fn a_write_error_refuses_the_batch_and_a_later_append_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&config(dir.path()), &keep_all());
    log.append(1..3, 10);
    log.log.fail_writes(1);
    let id = log.send(event(3, 10));
    let err = log.appended(id).unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(err.message.contains("the disk is full"), "{}", err.message);
    assert!(
        err.message.contains("nothing was stored"),
        "{}",
        err.message
    );
    let stats = log.log.stats();
    assert_eq!(
        (stats.io_errors, stats.append_errors, stats.last),
        (1, 1, 2)
    );
    // Nothing of it was kept: the position is given to the next append.
    assert_eq!(log.append(4..5, 10)[0].seq, 3);
    let page = log.read(1, 10);
    assert_eq!(seqs(&page), [1, 2, 3]);
    assert_eq!(page.events[2].event, event(4, 10));
    log.log.close();
    let (_log, recovery) = Log::open(&config(dir.path()), &keep_all());
    assert_eq!((recovery.state.recovered, recovery.truncated), (3, None));
}

#[test]
fn strict_durability_syncs_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    let strict = StoreConfig {
        durability: Durability::Strict,
        ..config(dir.path())
    };
    let (mut log, _) = Log::open(&strict, &keep_all());
    for i in 1..=5 {
        log.append(i..i + 1, 10);
        assert!(
            log.log.stats().fsyncs >= i,
            "a sync per batch before the answer"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&config(dir.path()), &keep_all());
    log.append(1..6, 10);
    assert_eq!(
        log.log.stats().fsyncs,
        0,
        "durability = os syncs in the background"
    );
}

#[test]
fn the_os_syncer_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let os = StoreConfig {
        fsync_interval: Duration::from_millis(10),
        ..config(dir.path())
    };
    let (mut log, _) = Log::open(&os, &keep_all());
    log.append(1..3, 10);
    let deadline = std::time::Instant::now() + WAIT;
    while log.log.stats().fsyncs == 0 {
        assert!(std::time::Instant::now() < deadline, "no background sync");
        std::thread::yield_now();
    }
}

#[test]
fn many_segments_read_across_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(&small_segments(dir.path()), &keep_all());
    log.append(1..501, 50);
    assert!(log.log.stats().segments > 5);
    let mut from = 1;
    let mut all = Vec::new();
    loop {
        let page = log.read(from, 37);
        all.extend(seqs(&page));
        if page.done {
            break;
        }
        from = all.last().unwrap() + 1;
    }
    assert_eq!(all, (1..=500).collect::<Vec<_>>());
    log.log.close();
    let (_log, recovery) = Log::open(&small_segments(dir.path()), &keep_all());
    assert_eq!(recovery.state.recovered, 500);
    assert!(recovery.segments > 5);
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = Log::open(&config(dir.path()), &keep_all());
    log.log.close();
    fs::write(dir.path().join("meta"), b"garbage").unwrap();
    let message = FileLog::open(&config(dir.path()), &keep_all())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&dir.path().join("meta").display().to_string()),
        "{message}"
    );
    fs::remove_file(dir.path().join("meta")).unwrap();
    fs::write(dir.path().join("00000000000000000001.log"), b"x").unwrap();
    let err = FileLog::open(&config(dir.path()), &keep_all()).unwrap_err();
    assert!(matches!(err, StoreError::MissingMeta { .. }), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = FileLog::open(&config(&file.join("data")), &keep_all()).unwrap_err();
    assert!(
        err.to_string()
            .contains(&file.join("data").display().to_string()),
        "{err}"
    );
}
