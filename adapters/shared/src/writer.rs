//! The writing side of a connection: what every consumer of an outbox shares.
//!
//! Four consumers read a connection's outbox: the WebSocket task (`ws`), the SSE task and the
//! SSE body of embeddings (`sse`), and in-process subscriptions (`hub`). They share, here:
//!
//! - **draining**: a batch starts with the entry the consumer waited for ([`ConnWriter::recv`])
//!   and goes on with what is already queued ([`ConnWriter::more`]) up to a [`Bound`] of entries
//!   and frame bytes, so one write carries many frames while a blocked write holds little;
//! - **credit**: the frame bytes taken are reported to the driver as written
//!   ([`ConnWriter::flushed`], the core's `Flushed`) once the transport has written them;
//! - **the end**: a batch ends at `ToConn::Close`, which the transport maps to its own close, and
//!   nothing after it is taken; `None` means the driver dropped the connection.
//!
//! Each transport keeps only its framing (WebSocket frame headers, SSE text as the core encoded
//! it, the in-process decode). Plain methods, no dispatch and no allocation per frame.

use std::future::poll_fn;
use std::task::{Context, Poll};

use tidings_core::ConnId;

use crate::conn::ToConn;
use crate::control::Control;
use crate::mailbox::Inbox;

/// How much one batch takes at most: it ends once either is reached (the entry that reaches
/// the byte bound is still part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bound {
    /// Entries (frames, pings, the close).
    pub(crate) entries: usize,
    /// Frame bytes.
    pub(crate) bytes: usize,
}

/// A connection's outbox with the batch and credit bookkeeping of its writer.
pub(crate) struct ConnWriter {
    conn: ConnId,
    inbox: Inbox<ToConn>,
    /// Where the credit goes.
    ctl: flume::Sender<Control>,
    /// Frame bytes taken and not yet reported as written.
    unflushed: usize,
    /// Entries taken in the current batch. (With `closed`, one word: the writer lives in every
    /// connection's task.)
    taken: u32,
    /// The current batch took a close: it takes nothing more.
    closed: bool,
}

impl ConnWriter {
    /// The writer of `conn`'s outbox `inbox`, reporting credit on `ctl`.
    pub(crate) fn new(conn: ConnId, inbox: Inbox<ToConn>, ctl: flume::Sender<Control>) -> Self {
        Self {
            conn,
            inbox,
            ctl,
            unflushed: 0,
            taken: 0,
            closed: false,
        }
    }

    /// The connection.
    pub(crate) fn conn(&self) -> ConnId {
        self.conn
    }

    /// The driver's control channel (for connections that report everything there).
    pub(crate) fn ctl(&self) -> &flume::Sender<Control> {
        &self.ctl
    }

    /// Waits for the next entry, which starts a batch; `None` once the driver dropped the
    /// connection (or is gone) and everything was taken.
    pub(crate) async fn recv(&mut self) -> Option<ToConn> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`ConnWriter::recv`] as a poll function (for `Stream` implementations).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<ToConn>> {
        let out = std::task::ready!(self.inbox.poll_recv(cx));
        self.taken = 0;
        self.closed = false;
        Poll::Ready(self.took(out))
    }

    /// The next entry of the batch, if one is queued, the batch is within `bound` and it took
    /// no close.
    pub(crate) fn more(&mut self, bound: Bound) -> Option<ToConn> {
        if self.closed || self.taken as usize >= bound.entries || self.unflushed >= bound.bytes {
            return None;
        }
        let out = self.inbox.try_recv();
        self.took(out)
    }

    /// Books an entry taken.
    fn took(&mut self, out: Option<ToConn>) -> Option<ToConn> {
        match &out {
            Some(ToConn::Frame(frame)) => self.unflushed += frame.len(),
            // Counted against the credit like a frame, by the core's measure.
            Some(ToConn::Item(item)) => self.unflushed += item.size(),
            Some(ToConn::Close(_)) => self.closed = true,
            Some(ToConn::Ping(_) | ToConn::KeepAlive) | None => {}
        }
        if out.is_some() {
            self.taken = self.taken.saturating_add(1);
        }
        out
    }

    /// Entries already taken from the shared queue and not yet returned: a lower bound of what
    /// follows in this batch (to size a buffer).
    pub(crate) fn queued(&self) -> usize {
        self.inbox.queued()
    }

    /// Frame bytes taken and not yet reported as written (in a batch: its size so far).
    #[cfg(test)]
    pub(crate) fn unflushed(&self) -> usize {
        self.unflushed
    }

    /// Reports the frame bytes taken as written: the driver feeds them to the broker as
    /// flow-control credit. Call once the transport has written them (nothing is sent if
    /// there are none).
    pub(crate) fn flushed(&mut self) {
        if self.unflushed > 0 {
            // A send fails only once the driver is gone, when credit no longer matters.
            let _ = self.ctl.send(Control::Flushed(self.conn, self.unflushed));
            self.unflushed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;
    use futures_lite::future::block_on;
    use tidings_core::{ConnId, ErrorCode, ProtocolError};

    use super::{Bound, ConnWriter};
    use crate::conn::ToConn;
    use crate::control::Control;
    use crate::mailbox::{Outbox, mailbox};

    const ANY: Bound = Bound {
        entries: usize::MAX,
        bytes: usize::MAX,
    };

    fn writer() -> (Outbox<ToConn>, ConnWriter, flume::Receiver<Control>) {
        let (outbox, inbox) = mailbox(64);
        let (ctl, credit) = flume::unbounded();
        (outbox, ConnWriter::new(ConnId(7), inbox, ctl), credit)
    }

    fn frame(len: usize) -> ToConn {
        ToConn::Frame(Bytes::from(vec![b'x'; len]))
    }

    fn send(outbox: &Outbox<ToConn>, outs: impl IntoIterator<Item = ToConn>) {
        let mut batch: VecDeque<ToConn> = outs.into_iter().collect();
        outbox.send_batch(&mut batch).unwrap();
    }

    /// The credits reported so far.
    fn credits(ctl: &flume::Receiver<Control>) -> Vec<usize> {
        ctl.try_iter()
            .map(|msg| match msg {
                Control::Flushed(conn, bytes) => {
                    assert_eq!(conn, ConnId(7));
                    bytes
                }
                _ => panic!("only credit is sent"),
            })
            .collect()
    }

    fn len(out: Option<ToConn>) -> Option<usize> {
        match out {
            Some(ToConn::Frame(f)) => Some(f.len()),
            _ => None,
        }
    }

    #[test]
    fn a_batch_stops_at_its_entry_bound_and_credits_what_it_took() {
        let (outbox, mut w, ctl) = writer();
        send(&outbox, (1..=5).map(frame));
        assert_eq!(len(block_on(w.recv())), Some(1));
        let bound = Bound {
            entries: 3,
            bytes: usize::MAX,
        };
        assert_eq!(len(w.more(bound)), Some(2));
        assert_eq!(len(w.more(bound)), Some(3));
        assert_eq!(len(w.more(bound)), None, "three entries: the batch is full");
        assert_eq!(w.unflushed(), 6);
        assert!(
            credits(&ctl).is_empty(),
            "nothing is credited before it is written"
        );
        w.flushed();
        assert_eq!(credits(&ctl), vec![6]);
        // The next batch starts where this one stopped.
        assert_eq!(len(block_on(w.recv())), Some(4));
        assert_eq!(len(w.more(bound)), Some(5));
        assert_eq!(len(w.more(bound)), None, "nothing queued");
        w.flushed();
        assert_eq!(credits(&ctl), vec![9]);
    }

    #[test]
    fn a_batch_stops_once_its_byte_bound_is_reached() {
        let (outbox, mut w, _ctl) = writer();
        send(&outbox, (0..4).map(|_| frame(10)));
        let bound = Bound {
            entries: usize::MAX,
            bytes: 25,
        };
        assert_eq!(len(block_on(w.recv())), Some(10));
        assert_eq!(len(w.more(bound)), Some(10));
        // 20 < 25: one more, which reaches the bound.
        assert_eq!(len(w.more(bound)), Some(10));
        assert_eq!(len(w.more(bound)), None);
        assert_eq!(w.unflushed(), 30);
    }

    #[test]
    fn nothing_after_a_close_joins_its_batch() {
        let (outbox, mut w, ctl) = writer();
        let reason = ProtocolError::new(ErrorCode::ShuttingDown, "bye");
        send(
            &outbox,
            [frame(3), ToConn::Close(Some(reason.clone())), frame(4)],
        );
        assert_eq!(len(block_on(w.recv())), Some(3));
        assert!(matches!(w.more(ANY), Some(ToConn::Close(Some(r))) if r == reason));
        assert!(w.more(ANY).is_none(), "the batch ended with the close");
        w.flushed();
        assert_eq!(credits(&ctl), vec![3], "the close is no frame");
    }

    #[test]
    fn credit_adds_up_until_reported_and_none_is_sent_for_nothing() {
        let (outbox, mut w, ctl) = writer();
        w.flushed();
        assert!(credits(&ctl).is_empty());
        // One frame per poll (an SSE body): credited when the next one is asked for.
        send(
            &outbox,
            [
                frame(5),
                ToConn::Ping(futures_channel::oneshot::channel().0),
            ],
        );
        assert_eq!(len(block_on(w.recv())), Some(5));
        assert!(matches!(block_on(w.recv()), Some(ToConn::Ping(_))));
        assert_eq!(w.unflushed(), 5, "a ping is no frame");
        w.flushed();
        w.flushed();
        assert_eq!(credits(&ctl), vec![5]);
    }

    #[test]
    fn ends_once_the_driver_dropped_the_connection_and_all_was_taken() {
        let (outbox, mut w, _ctl) = writer();
        send(&outbox, [frame(1)]);
        drop(outbox);
        assert_eq!(len(block_on(w.recv())), Some(1));
        assert!(w.more(ANY).is_none());
        assert!(block_on(w.recv()).is_none());
    }
}
