//! What every subscriber checks per message (order, loss) and records (latency).
//!
//! Latencies go into one HDR histogram per client thread (an uncontended lock per record,
//! no allocation), merged at the end: per-subscriber histograms would take tens of KiB each.

use std::cell::OnceCell;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Highest latency recorded exactly: 10 minutes, in nanoseconds.
const MAX_NS: u64 = 600_000_000_000;

static HISTOGRAMS: Mutex<Vec<Arc<Mutex<Histogram<u64>>>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: OnceCell<Arc<Mutex<Histogram<u64>>>> = const { OnceCell::new() };
}

/// An empty latency histogram (1 ns to 10 minutes, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// Records `ns` in `h` (clamped to what it holds).
pub(crate) fn record_in(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, MAX_NS));
}

/// Records one publish-to-delivery latency.
pub(crate) fn record_latency(ns: u64) {
    LOCAL.with(|local| {
        let h = local.get_or_init(|| {
            let h = Arc::new(Mutex::new(new_histogram()));
            HISTOGRAMS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::clone(&h));
            h
        });
        h.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(ns.clamp(1, MAX_NS));
    });
}

/// All latencies recorded so far, in nanoseconds.
pub(crate) fn merged_latencies() -> Histogram<u64> {
    let mut all = new_histogram();
    for h in HISTOGRAMS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
    {
        let _ = all.add(&*h.lock().unwrap_or_else(PoisonError::into_inner));
    }
    all
}

/// One subscriber's view of the sequence.
#[derive(Debug, Clone)]
pub(crate) struct SeqCheck {
    /// Messages the publisher sends (sequence numbers `0..total`).
    pub total: u64,
    /// The clock the payload's `t` counts from.
    pub start: Instant,
    /// The next sequence number expected.
    pub next: u64,
    /// Payloads received.
    pub received: u64,
    /// Sequence numbers skipped (a late arrival takes one back; the tail missing at the end
    /// is added by [`SeqCheck::finish`]).
    pub lost: u64,
    /// Payloads that arrived after a later one.
    pub reordered: u64,
    /// Gap notices received (`gap` frames, `tidings-gap` events).
    pub gaps: u64,
    /// When the last payload arrived, ns since `start`.
    pub last_ns: u64,
    /// Why the connection ended early, if it did.
    pub error: Option<String>,
}

impl SeqCheck {
    pub(crate) const fn new(total: u64, start: Instant) -> Self {
        Self {
            total,
            start,
            next: 0,
            received: 0,
            lost: 0,
            reordered: 0,
            gaps: 0,
            last_ns: 0,
            error: None,
        }
    }

    /// Takes one payload; true once the last message has arrived and, if anything arrived out
    /// of order, every skipped one too (a system that reorders may still deliver them; one
    /// that keeps order never will).
    pub(crate) fn on_payload(&mut self, seq: u64, sent_ns: u64) -> bool {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        record_latency(now.saturating_sub(sent_ns));
        self.received += 1;
        self.last_ns = now;
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            self.lost += seq - self.next;
            self.next = seq + 1;
        } else {
            self.reordered += 1;
            self.lost = self.lost.saturating_sub(1);
        }
        self.next >= self.total && (self.lost == 0 || self.reordered == 0)
    }

    /// Counts the messages that never came at the end.
    pub(crate) const fn finish(&mut self) {
        self.lost += self.total.saturating_sub(self.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_and_reordering() {
        let mut c = SeqCheck::new(6, Instant::now());
        for seq in [0, 2, 1, 3] {
            assert!(!c.on_payload(seq, 0));
        }
        c.finish();
        assert_eq!((c.received, c.lost, c.reordered), (4, 2, 1));
        let mut c = SeqCheck::new(3, Instant::now());
        assert!(!c.on_payload(0, 0));
        assert!(c.on_payload(2, 0));
        c.finish();
        assert_eq!((c.lost, c.reordered), (1, 0));
        // Out of order: done only once the skipped ones are in too.
        let mut c = SeqCheck::new(4, Instant::now());
        for seq in [0, 2, 1] {
            assert!(!c.on_payload(seq, 0));
        }
        assert!(!c.on_payload(3, 0) || c.lost == 0);
        let mut c = SeqCheck::new(4, Instant::now());
        assert!(!c.on_payload(1, 0));
        assert!(!c.on_payload(0, 0));
        assert!(!c.on_payload(3, 0));
        assert!(c.on_payload(2, 0));
        c.finish();
        assert_eq!((c.received, c.lost, c.reordered), (4, 0, 2));
    }
}
