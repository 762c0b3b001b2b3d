//! A connection's outbox: what the driver hands a connection task, in batches.
//!
//! Under a fan-out the driver hands every subscriber one frame per publish. A channel operation
//! (lock, push, wake-up of the task) per frame was the largest single cost of a delivery, so the
//! driver collects a connection's outputs for the whole of one step (up to a few hundred inputs)
//! and hands them over with [`Outbox::send_batch`]: one lock and at most one wake-up per
//! connection and step, however many publishes the step routed. The receiving task takes
//! everything queued in one lock too ([`Inbox::poll_recv`] refills a local queue by swapping),
//! so the two sides meet once per batch, not once per frame.
//!
//! Single producer (the driver), single consumer (the connection's task). The queue is bounded in
//! frames; a batch that does not fit is refused whole ([`SendError::Full`]), and the driver drops
//! the connection, as its writer cannot keep up. The queues' capacity is handed back and forth
//! by swapping, so a busy connection does not allocate per batch; a queue much larger than the
//! batches it carries is freed, so a connection that went idle gives the memory of its last
//! burst back with its next small batch (a keep-alive at the latest).
//!
//! Generic over what it carries (for the server: what a connection's writer receives), so that
//! it depends on nothing of the server.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Entries an emptied queue keeps allocated in any case; more only while its batches use a
/// quarter of it (then it is freed: idle connections stay small).
const KEEP_CAPACITY: usize = 16;

/// Whether an emptied queue of `capacity` that last carried `used` entries is worth keeping.
fn worth_keeping(capacity: usize, used: usize) -> bool {
    capacity <= KEEP_CAPACITY || used * 4 >= capacity
}

/// A new outbox bounded to `cap` queued entries.
pub(crate) fn mailbox<T>(cap: usize) -> (Outbox<T>, Inbox<T>) {
    let shared = Arc::new(Mutex::new(State {
        queue: VecDeque::new(),
        waker: None,
        sender: true,
        receiver: true,
    }));
    (
        Outbox {
            shared: shared.clone(),
            cap,
        },
        Inbox {
            shared,
            local: VecDeque::new(),
            taken: 0,
        },
    )
}

struct State<T> {
    queue: VecDeque<T>,
    /// The receiving task, when it waits for something.
    waker: Option<Waker>,
    sender: bool,
    receiver: bool,
}

fn lock<T>(shared: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Nothing panics while holding the lock; if something did, the state is still consistent.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a batch was not handed over (it stays with the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The queue would exceed its bound: the receiver is not keeping up.
    Full,
    /// The receiver is gone.
    Gone,
}

/// The driver's end.
pub(crate) struct Outbox<T> {
    shared: Arc<Mutex<State<T>>>,
    cap: usize,
}

impl<T> std::fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("cap", &self.cap).finish()
    }
}

impl<T> Outbox<T> {
    /// Appends all of `batch` (leaving it empty) and wakes the receiver, or refuses all of it.
    pub(crate) fn send_batch(&self, batch: &mut VecDeque<T>) -> Result<(), SendError> {
        let sent = batch.len();
        if sent == 0 {
            return Ok(());
        }
        let waker = {
            let mut state = lock(&self.shared);
            if !state.receiver {
                return Err(SendError::Gone);
            }
            if state.queue.len() + batch.len() > self.cap {
                return Err(SendError::Full);
            }
            if state.queue.is_empty() {
                // The receiver's last queue comes back to the caller: no allocation per batch.
                std::mem::swap(&mut state.queue, batch);
            } else {
                state.queue.append(batch);
            }
            state.waker.take()
        };
        if !worth_keeping(batch.capacity(), sent) {
            *batch = VecDeque::new();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Outbox<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.shared);
            state.sender = false;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The connection task's end: yields what was sent, in order, then `None` once the driver is
/// gone and everything was taken.
pub(crate) struct Inbox<T> {
    shared: Arc<Mutex<State<T>>>,
    /// Taken from the shared queue, not yet returned.
    local: VecDeque<T>,
    /// How many entries the last refill took.
    taken: usize,
}

impl<T> Inbox<T> {
    /// The next entry if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        if let Some(out) = self.pop_local() {
            return Some(out);
        }
        self.refill(None);
        self.pop_local()
    }

    /// Entries already taken from the shared queue and not yet returned (more may be waiting
    /// there): a lower bound of what [`Inbox::try_recv`] will return.
    pub(crate) fn queued(&self) -> usize {
        self.local.len()
    }

    /// The next entry, or `None` once the sender is gone and nothing is left; registers the
    /// task to wake if there is nothing yet.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(out) = self.pop_local() {
            return Poll::Ready(Some(out));
        }
        match self.refill(Some(cx.waker())) {
            Refill::Some => Poll::Ready(self.pop_local()),
            Refill::Empty => Poll::Pending,
            Refill::Ended => Poll::Ready(None),
        }
    }

    fn pop_local(&mut self) -> Option<T> {
        let out = self.local.pop_front();
        if out.is_none() && !worth_keeping(self.local.capacity(), self.taken) {
            self.local = VecDeque::new();
        }
        out
    }

    /// Takes the whole shared queue (the local one is empty); registers `waker` if there is
    /// nothing.
    fn refill(&mut self, waker: Option<&Waker>) -> Refill {
        let mut state = lock(&self.shared);
        if !state.queue.is_empty() {
            std::mem::swap(&mut state.queue, &mut self.local);
            self.taken = self.local.len();
            // The emptied queue going back to the sender: freed if far larger than batches now.
            if !worth_keeping(state.queue.capacity(), self.taken) {
                state.queue = VecDeque::new();
            }
            return Refill::Some;
        }
        if !state.sender {
            return Refill::Ended;
        }
        if let Some(waker) = waker {
            match &mut state.waker {
                Some(w) if w.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
        }
        Refill::Empty
    }
}

enum Refill {
    Some,
    Empty,
    Ended,
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.receiver = false;
        // Frames nobody will write: freed now rather than with the driver's entry.
        state.queue = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::{SendError, mailbox};

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn frames(range: std::ops::Range<u8>) -> VecDeque<u8> {
        range.collect()
    }

    #[test]
    fn batches_arrive_in_order_with_one_wake_per_batch() {
        let (outbox, mut inbox) = mailbox(100);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(inbox.poll_recv(&mut cx).is_pending());
        let mut batch = frames(0..3);
        outbox.send_batch(&mut batch).unwrap();
        assert!(batch.is_empty());
        outbox.send_batch(&mut frames(3..5)).unwrap();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "one wake for two batches"
        );
        let got: Vec<u8> = std::iter::from_fn(|| inbox.try_recv()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(inbox.poll_recv(&mut cx).is_pending());
        outbox.send_batch(&mut frames(5..6)).unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Ready(Some(5)));
    }

    #[test]
    fn a_batch_over_the_bound_is_refused_whole() {
        let (outbox, mut inbox) = mailbox(4);
        outbox.send_batch(&mut frames(0..3)).unwrap();
        let mut batch = frames(3..5);
        assert_eq!(outbox.send_batch(&mut batch), Err(SendError::Full));
        assert_eq!(batch.len(), 2, "a refused batch stays with the sender");
        assert_eq!(inbox.try_recv(), Some(0));
        // Taken by the receiver: room again.
        outbox.send_batch(&mut batch).unwrap();
        let got: Vec<u8> = std::iter::from_fn(|| inbox.try_recv()).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[test]
    fn ends_after_the_sender_is_gone_and_everything_is_taken() {
        let (outbox, mut inbox) = mailbox(8);
        outbox.send_batch(&mut frames(0..2)).unwrap();
        drop(outbox);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(matches!(inbox.poll_recv(&mut cx), Poll::Ready(Some(_))));
        assert!(matches!(inbox.poll_recv(&mut cx), Poll::Ready(Some(_))));
        assert!(matches!(inbox.poll_recv(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_large_queue_is_freed_once_batches_are_small_again() {
        let (outbox, mut inbox) = mailbox(1000);
        let mut batch = frames(0..200);
        outbox.send_batch(&mut batch).unwrap();
        while inbox.try_recv().is_some() {}
        assert!(
            inbox.local.capacity() >= 200,
            "kept while batches are large"
        );
        // A small batch (a keep-alive, say) after the burst: the large queue is given back.
        outbox.send_batch(&mut frames(0..1)).unwrap();
        while inbox.try_recv().is_some() {}
        assert!(inbox.local.capacity() <= 16, "{}", inbox.local.capacity());
        let shared = super::lock(&inbox.shared).queue.capacity();
        assert!(shared <= 16, "{shared}");
    }

    #[test]
    fn a_gone_receiver_refuses_and_wakes_nobody() {
        let (outbox, inbox) = mailbox(8);
        drop(inbox);
        let mut batch = frames(0..1);
        assert_eq!(outbox.send_batch(&mut batch), Err(SendError::Gone));
    }

    #[test]
    fn the_senders_drop_wakes_a_waiting_receiver() {
        let (outbox, mut inbox) = mailbox::<u8>(8);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(inbox.poll_recv(&mut cx).is_pending());
        drop(outbox);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(matches!(inbox.poll_recv(&mut cx), Poll::Ready(None)));
    }
}
