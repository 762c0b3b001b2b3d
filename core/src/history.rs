//! The retained history: one hub-wide log of published events, bounded by count, bytes and age.
//!
//! Sequences are contiguous (every publish is appended, eviction only removes from the front), so
//! finding the event after a cursor is an index computation. Evicted events leave a trace per topic
//! (the last evicted sequence) so a resume can tell whether *its* topics lost anything; past
//! `max_tracked_topics` the trace becomes one conservative watermark.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::config::Retention;
use crate::payload::Payload;
use crate::topic::{Name, Topic};

/// One published event, as stored: no wire format (encodings are the delivery side's,
/// `crate::encodings`).
pub(crate) struct StoredEvent {
    pub(crate) seq: u64,
    pub(crate) topic: Topic,
    pub(crate) event: Option<Name>,
    pub(crate) payload: Payload,
    /// The publisher's client id, if it identified itself.
    pub(crate) from: Option<Name>,
    pub(crate) at: Instant,
    /// The visibility of the topic when it was published, unless public (declared topics).
    pub(crate) scope: Option<crate::output::Visibility>,
}

impl StoredEvent {
    pub(crate) fn new(
        seq: u64,
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
        from: Option<Name>,
        at: Instant,
    ) -> Self {
        Self {
            seq,
            topic,
            event,
            payload,
            from,
            at,
            scope: None,
        }
    }

    fn size(&self) -> usize {
        self.payload.len() + self.topic.as_str().len()
    }
}

pub(crate) struct History {
    events: VecDeque<StoredEvent>,
    bytes: usize,
    /// The last position given out (0 before the first publish); may be past the newest event
    /// when the log skipped positions (a reservation not used before a crash).
    head: u64,
    evicted: HashMap<Topic, u64>,
    /// Evictions not tracked per topic (the map was full, or they happened before a restart):
    /// any cursor before it may have a gap.
    evicted_untracked: u64,
    retention: Retention,
    max_tracked_topics: usize,
}

impl History {
    pub(crate) fn new(retention: Retention, max_tracked_topics: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            head: 0,
            evicted: HashMap::new(),
            evicted_untracked: 0,
            retention,
            max_tracked_topics,
        }
    }

    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// The sequence of the oldest event held (`head + 1` when none is).
    pub(crate) fn first_seq(&self) -> u64 {
        self.events.front().map_or(self.head + 1, |e| e.seq)
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends an event positioned after `head` and evicts past the count and byte bounds.
    pub(crate) fn push(&mut self, event: StoredEvent) {
        debug_assert!(event.seq > self.head, "positions only grow");
        self.head = self.head.max(event.seq);
        self.bytes += event.size();
        self.events.push_back(event);
        while self.events.len() > self.retention.max_events || self.bytes > self.retention.max_bytes
        {
            self.evict_front();
        }
    }

    /// Moves the head to `seq` without an event there (a position of a shared log that names
    /// none).
    pub(crate) fn advance(&mut self, seq: u64) {
        self.head = self.head.max(seq);
    }

    /// Starts from a recovered log: positions up to `head` are given out, `recent` (oldest
    /// first, positions increasing) are the newest events, and evictions before them are not
    /// known by topic.
    pub(crate) fn restore(&mut self, head: u64, recent: Vec<StoredEvent>) {
        self.events.clear();
        self.evicted.clear();
        self.bytes = 0;
        self.head = 0;
        for event in recent {
            if event.seq > self.head && event.seq <= head {
                self.push(event);
            }
        }
        self.head = head;
        self.evicted_untracked = self.first_seq().saturating_sub(1);
    }

    /// Evicts events older than `max_age`; returns when the next one expires.
    pub(crate) fn evict_expired(&mut self, now: Instant) -> Option<Instant> {
        while let Some(front) = self.events.front() {
            let expires = front.at + self.retention.max_age;
            if expires > now {
                return Some(expires);
            }
            self.evict_front();
        }
        None
    }

    /// Evicts events before `first` (the log's retention moved past them).
    pub(crate) fn evict_before(&mut self, first: u64) {
        while self.events.front().is_some_and(|e| e.seq < first) {
            self.evict_front();
        }
    }

    fn evict_front(&mut self) {
        let Some(e) = self.events.pop_front() else {
            return;
        };
        self.bytes -= e.size();
        if let Some(seq) = self.evicted.get_mut(&e.topic) {
            *seq = e.seq;
        } else if self.evicted.len() < self.max_tracked_topics {
            self.evicted.insert(e.topic, e.seq);
        } else {
            self.evicted_untracked = e.seq;
        }
    }

    /// Positions up to `last` were lost without this history ever holding them (a shared log
    /// evicted them before this node read them): like untracked evictions, any cursor before
    /// `last` may have a gap there, also once the hole is no longer in the hot window.
    pub(crate) fn lost_until(&mut self, last: u64) {
        self.evicted_untracked = self.evicted_untracked.max(last);
    }

    /// The event at `seq`, if held.
    pub(crate) fn get(&self, seq: u64) -> Option<&StoredEvent> {
        let first = self.events.front()?.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        match self.events.get(i) {
            // Positions are contiguous but across a skipped reservation.
            Some(e) if e.seq == seq => Some(e),
            _ => {
                let i = self.events.partition_point(|e| e.seq < seq);
                self.events.get(i).filter(|e| e.seq == seq)
            }
        }
    }

    /// The first event held after `pos`.
    pub(crate) fn next_after(&self, pos: u64) -> Option<&StoredEvent> {
        self.get(pos + 1).or_else(|| {
            let i = self.events.partition_point(|e| e.seq <= pos);
            self.events.get(i)
        })
    }

    /// Whether an event after `pos` and before `first` (the first position still retained) may
    /// have been wanted: `wanted(topic, seq)` is asked for each topic's last eviction after `pos`.
    /// Exact for topics whose evictions were seen since start (up to `max_tracked_topics` of
    /// them); conservative otherwise.
    pub(crate) fn lost_between(
        &self,
        pos: u64,
        first: u64,
        mut wanted: impl FnMut(&str, u64) -> bool,
    ) -> bool {
        if first <= pos + 1 {
            return false;
        }
        self.evicted_untracked > pos
            || self
                .evicted
                .iter()
                .any(|(topic, seq)| *seq > pos && wanted(topic.as_str(), *seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(h: &mut History, topic: &str, at: Instant) {
        let seq = h.head() + 1;
        let topic = Topic::parse(topic, Default::default()).unwrap();
        h.push(StoredEvent::new(
            seq,
            topic,
            None,
            Payload::text("12345").unwrap(),
            None,
            at,
        ));
    }

    #[test]
    fn bounded_by_count_bytes_and_age() {
        let t0 = Instant::now(); // clock: test-only
        let retention = Retention {
            max_events: 3,
            max_bytes: 1000,
            max_age: Duration::from_secs(10),
        };
        let mut h = History::new(retention, 10);
        for i in 0..5 {
            ev(
                &mut h,
                if i % 2 == 0 { "even" } else { "odd" },
                t0 + Duration::from_secs(i),
            );
        }
        assert_eq!((h.len(), h.first_seq(), h.head()), (3, 3, 5));
        assert!(h.get(2).is_none());
        assert_eq!(h.get(4).unwrap().seq, 4);
        // seq 1 (even) and 2 (odd) were evicted.
        assert!(h.lost_between(0, h.first_seq(), |t, _| t == "odd"));
        assert!(h.lost_between(1, h.first_seq(), |t, _| t == "odd"));
        assert!(!h.lost_between(1, h.first_seq(), |t, _| t == "even"));
        assert!(!h.lost_between(2, h.first_seq(), |_, _| true));
        assert_eq!(
            h.evict_expired(t0 + Duration::from_secs(13)),
            Some(t0 + Duration::from_secs(14))
        );
        assert_eq!(h.first_seq(), 5);
        assert_eq!(h.evict_expired(t0 + Duration::from_secs(100)), None);
        assert_eq!((h.len(), h.first_seq(), h.bytes()), (0, 6, 0));

        let mut small = History::new(
            Retention {
                max_events: 100,
                max_bytes: 20,
                max_age: Duration::from_secs(1),
            },
            10,
        );
        for _ in 0..4 {
            ev(&mut small, "abcde", t0);
        }
        assert_eq!(small.len(), 2, "each event counts 10 bytes");
    }

    #[test]
    fn untracked_evictions_are_conservative() {
        let t0 = Instant::now(); // clock: test-only
        let mut h = History::new(
            Retention {
                max_events: 0,
                ..Retention::default()
            },
            1,
        );
        ev(&mut h, "a", t0);
        ev(&mut h, "b", t0);
        assert!(
            h.lost_between(0, h.first_seq(), |t, _| t == "zzz"),
            "b is untracked, so any topic may have lost it"
        );
        assert!(!h.lost_between(2, h.first_seq(), |_, _| true));
    }
}
