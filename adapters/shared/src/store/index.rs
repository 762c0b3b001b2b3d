//! The in-memory index of the file log, shared by the writer (which extends it and applies
//! retention) and the reader (which looks positions up in it): per segment, where each record is.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use tidings_core::Retention;
use tidings_core::log::scan::Entry;

/// One segment file and the index of its records.
pub(crate) struct Segment {
    pub path: PathBuf,
    /// Shared with the reader, which keeps reading a segment deleted meanwhile (Unix semantics).
    pub file: Arc<File>,
    /// Its records, in position order.
    pub entries: Vec<Entry>,
    /// Its valid length in bytes.
    pub len: u64,
}

/// Every segment's index, and the logical first position that retention moves.
pub(crate) struct Index {
    /// Oldest first; the last one is the active segment once the writer has one.
    pub segments: VecDeque<Segment>,
    /// The first retained entry of `segments[0]`.
    pub front: usize,
    /// The first retained position: everything before it is evicted.
    pub first: u64,
    /// The last indexed position (0 before any).
    pub last: u64,
    /// Retained events and their record bytes.
    pub events: usize,
    pub bytes: u64,
}

impl Index {
    pub(crate) fn new(first: u64) -> Self {
        Self {
            segments: VecDeque::new(),
            front: 0,
            first,
            last: 0,
            events: 0,
            bytes: 0,
        }
    }

    /// Adds a recovered segment (after every earlier one), counting only entries at or after
    /// `first`; segments found spent go into `doomed`.
    pub(crate) fn push_segment(&mut self, segment: Segment, doomed: &mut Vec<Segment>) {
        if let Some(last) = segment.entries.last() {
            self.last = self.last.max(last.seq);
        }
        let retained = &segment.entries[segment.entries.partition_point(|e| e.seq < self.first)..];
        self.events += retained.len();
        self.bytes += retained.iter().map(|e| u64::from(e.len)).sum::<u64>();
        self.segments.push_back(segment);
        if self.segments.len() == 1 {
            self.front = self.segments[0]
                .entries
                .partition_point(|e| e.seq < self.first);
        }
        self.drop_spent(doomed);
    }

    /// Appends entries to the last segment (the writer's active one).
    pub(crate) fn extend(&mut self, entries: &[Entry], file_len: u64) {
        let Some(segment) = self.segments.back_mut() else {
            return;
        };
        segment.entries.extend_from_slice(entries);
        segment.len = file_len;
        if let Some(last) = entries.last() {
            self.last = last.seq;
        }
        self.events += entries.len();
        self.bytes += entries.iter().map(|e| u64::from(e.len)).sum::<u64>();
    }

    /// The oldest retained entry.
    fn front_entry(&self) -> Option<&Entry> {
        self.segments
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.entries.get(if i == 0 { self.front } else { 0 }))
    }

    /// Evicts the oldest retained entry; spent segments (all evicted, not the last) go into
    /// `doomed` for deletion.
    fn evict_one(&mut self, doomed: &mut Vec<Segment>) -> bool {
        self.drop_spent(doomed);
        let Some(segment) = self.segments.front() else {
            return false;
        };
        let Some(entry) = segment.entries.get(self.front).copied() else {
            return false;
        };
        self.front += 1;
        self.events -= 1;
        self.bytes -= u64::from(entry.len);
        self.first = self.first.max(entry.seq + 1);
        self.drop_spent(doomed);
        self.forget_evicted();
        true
    }

    /// Drops the evicted entries of the front segment once they are most of it. Without this
    /// the active segment's index keeps one entry (24 bytes) per event ever appended to it,
    /// evicted or not, until the segment is sealed (64 MiB of records: hundreds of thousands of
    /// small events); a retention far below a segment's worth (the default 10,000 events) made
    /// it the server's steady growth under a publish load (RELIABILITY.md §5.1). Amortized
    /// O(1) per eviction: at most `front` entries are moved, after `front` evictions.
    fn forget_evicted(&mut self) {
        const MIN: usize = 1024;
        let Some(segment) = self.segments.front_mut() else {
            return;
        };
        if self.front >= MIN && self.front >= segment.entries.len() / 2 {
            segment.entries.drain(..self.front);
            self.front = 0;
            // The retained entries need at most half the capacity grown so far.
            if segment.entries.capacity() > 4 * segment.entries.len().max(MIN) {
                segment
                    .entries
                    .shrink_to(2 * segment.entries.len().max(MIN));
            }
        }
    }

    /// Removes front segments whose entries are all evicted, except the last segment.
    fn drop_spent(&mut self, doomed: &mut Vec<Segment>) {
        while self.segments.len() > 1 && self.front >= self.segments[0].entries.len() {
            if let Some(segment) = self.segments.pop_front() {
                doomed.push(segment);
            }
            self.front = self.segments[0]
                .entries
                .partition_point(|e| e.seq < self.first);
        }
    }

    /// Evicts by count and bytes, and by age when `now_ms` is given; returns whether `first`
    /// moved.
    pub(crate) fn apply_retention(
        &mut self,
        retention: &Retention,
        now_ms: Option<u64>,
        doomed: &mut Vec<Segment>,
    ) -> bool {
        let before = self.first;
        let max_age = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
        loop {
            let over = self.events > retention.max_events
                || self.bytes > retention.max_bytes as u64
                || now_ms.is_some_and(|now| {
                    self.front_entry()
                        .is_some_and(|e| e.time_ms.saturating_add(max_age) <= now)
                });
            if !over || !self.evict_one(doomed) {
                break;
            }
        }
        self.first != before
    }

    /// Evicts everything before `to` and raises `first` to it (a skipped corrupt segment).
    pub(crate) fn raise_first(&mut self, to: u64, doomed: &mut Vec<Segment>) {
        while self.front_entry().is_some_and(|e| e.seq < to) {
            self.evict_one(doomed);
        }
        self.first = self.first.max(to);
        self.drop_spent(doomed);
    }

    /// Where the first retained entry at or after `from` is: (segment, entry) indices.
    pub(crate) fn locate(&self, from: u64) -> Option<(usize, usize)> {
        let from = from.max(self.first);
        let start = self
            .segments
            .partition_point(|s| s.entries.last().is_none_or(|e| e.seq < from));
        let segment = self.segments.get(start)?;
        let mut at = segment.entries.partition_point(|e| e.seq < from);
        if start == 0 {
            at = at.max(self.front);
        }
        (at < segment.entries.len()).then_some((start, at))
    }

    /// Bytes of all segment files.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }
}
