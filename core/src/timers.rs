//! The timer heap: one entry per armed timer, cancelled lazily (a fired timer whose purpose is
//! gone does nothing), compacted when stale entries pile up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::ids::{AckId, ConnId, ReqId};

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A connection's keep-alive and idle checks (one entry per connection).
    Conn(ConnId),
    /// A client request the application has not answered.
    Request(ConnId, ReqId),
    /// A server request the client has not answered.
    Ack(ConnId, AckId),
    /// The oldest retained event expires.
    Retention,
    /// The oldest parked session expires.
    Parked,
    /// A connection asked to close must have reported `Closed` by now.
    CloseGrace(ConnId),
    /// The graceful shutdown's deadline.
    Shutdown,
    /// A connection resumed from a cursor ahead of the head must have been reached by now.
    Ahead(ConnId),
    /// A server request to a client id or a room ends with the answers it has.
    Ask(crate::relay::RelayId),
}

#[derive(Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Entries known to be obsolete (answered requests and acks).
    stale: usize,
}

impl TimerHeap {
    pub(crate) fn schedule(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops the earliest timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((_, t))| t),
            _ => None,
        }
    }

    /// Records that one entry became obsolete; compacts with `live` when they dominate.
    pub(crate) fn mark_stale(&mut self, live: impl FnMut(&Timer) -> bool) {
        self.stale += 1;
        if self.stale > 1024 && self.stale > self.heap.len() / 2 {
            let mut live = live;
            self.heap.retain(|Reverse((_, t))| live(t));
            self.stale = 0;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}
