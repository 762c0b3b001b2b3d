//! The driver's table of open connections: their outboxes, what the current step queued for
//! each, why each is ending, and counts by kind. Plain data; the driver decides what goes in.

use std::collections::VecDeque;

use futures_channel::oneshot;
use tidings_core::{ConnId, ConnMap, Stats};

use crate::conn::{Kind, ToConn};
use crate::mailbox::{Outbox, SendError};
use crate::metrics::ServerStats;
use crate::registry::Disconnect;

/// One open connection.
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    outbox: Outbox<ToConn>,
    /// What this step queued for it, handed over at the step's end.
    pending: VecDeque<ToConn>,
    /// `false` once the broker asked to close it: nothing more is handed out.
    pub(crate) open: bool,
    /// Never sent: dropping it (with the entry) stops the connection task at once.
    _kill: Option<oneshot::Sender<()>>,
    /// Why it is ending, once known (the server closed it, or the client sent a close).
    pub(crate) ending: Option<Disconnect>,
}

/// The open connections.
#[derive(Default)]
pub(crate) struct ConnTable {
    entries: ConnMap<Entry>,
    /// Connections with something pending, in the order they got it.
    dirty: Vec<ConnId>,
    /// `dirty`'s second buffer (swapped in while handing over, so neither allocates per step).
    handing: Vec<ConnId>,
    /// Open connections by [`Kind::index`].
    pub(crate) counts: [usize; 3],
    /// Connections dropped (a full outbox, a task gone, no close in time), in-process ones
    /// not counted.
    pub(crate) dead: u64,
    /// Connections dropped because a write to them took longer than `http.write_timeout`.
    pub(crate) write_timeouts: u64,
}

impl ConnTable {
    /// Adds a connection. `false` if the id is already open.
    pub(crate) fn insert(
        &mut self,
        conn: ConnId,
        kind: Kind,
        outbox: Outbox<ToConn>,
        kill: Option<oneshot::Sender<()>>,
    ) -> bool {
        if self.entries.contains_key(&conn) {
            return false;
        }
        let entry = Entry {
            kind,
            outbox,
            pending: VecDeque::new(),
            open: true,
            _kill: kill,
            ending: None,
        };
        self.entries.insert(conn, entry);
        self.counts[kind.index()] += 1;
        true
    }

    pub(crate) fn get(&self, conn: ConnId) -> Option<&Entry> {
        self.entries.get(&conn)
    }

    pub(crate) fn get_mut(&mut self, conn: ConnId) -> Option<&mut Entry> {
        self.entries.get_mut(&conn)
    }

    /// Removes a connection that ended by itself; returns why it ended.
    pub(crate) fn remove(&mut self, conn: ConnId) -> Option<Option<Disconnect>> {
        let entry = self.entries.remove(&conn)?;
        self.counts[entry.kind.index()] -= 1;
        Some(entry.ending)
    }

    /// Removes a connection dropped without waiting for it (its task stops at once; an
    /// in-process subscription still reads what it was handed); returns why it ended.
    pub(crate) fn drop_conn(&mut self, conn: ConnId) -> Option<Option<Disconnect>> {
        let mut entry = self.entries.remove(&conn)?;
        let _ = entry.outbox.send_batch(&mut entry.pending);
        self.counts[entry.kind.index()] -= 1;
        if entry.kind != Kind::Internal {
            self.dead += 1;
        }
        Some(entry.ending.take())
    }

    /// Queues `out` for `conn` (if it is open and not closing) until the end of the step.
    pub(crate) fn queue(&mut self, conn: ConnId, out: ToConn) {
        if let Some(entry) = self.entries.get_mut(&conn)
            && entry.open
        {
            if entry.pending.is_empty() {
                self.dirty.push(conn);
            }
            entry.pending.push_back(out);
        }
    }

    /// Hands every connection what the step queued for it, in one batch each. Returns the
    /// connections whose outbox refused it (full, or its task gone): the caller drops them.
    pub(crate) fn hand_over(&mut self, refused: &mut Vec<ConnId>) {
        std::mem::swap(&mut self.dirty, &mut self.handing);
        for conn in self.handing.drain(..) {
            let Some(entry) = self.entries.get_mut(&conn) else {
                continue; // dropped meanwhile
            };
            if let Err(e) = entry.outbox.send_batch(&mut entry.pending) {
                if e == SendError::Full {
                    tracing::info!(%conn, "its outgoing queue is full: dropped");
                }
                refused.push(conn);
            }
        }
    }

    /// The counters for `/metrics`, with the broker's.
    pub(crate) fn stats(&self, broker: Stats, handled: u64, epoch: u64) -> ServerStats {
        ServerStats {
            broker,
            ws_connections: self.counts[Kind::WebSocket.index()],
            sse_connections: self.counts[Kind::Sse.index()],
            internal_connections: self.counts[Kind::Internal.index()],
            dead_connections: self.dead,
            write_timeouts: self.write_timeouts,
            accept_failures: 0, // the listener's, filled in by the service
            refused_server: 0,  // the listener's too
            refused_per_ip: 0,
            handled_requests: handled,
            epoch,
            log: None, // the file log's, filled in by the hub
        }
    }

    /// Whether anything is queued and not handed over.
    pub(crate) fn has_pending(&self) -> bool {
        !self.dirty.is_empty()
    }
}
