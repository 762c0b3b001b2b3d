//! What a connection task owns besides its socket ([`ConnCtx`]), the guard that graceful
//! shutdown waits for ([`ConnGuard`]), and its place in the connection limits ([`Slot`]).
//!
//! Its own module, between the hub and the connection tasks (`ws`, `sse`), so that those do not
//! import the service that spawns them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::hub::Hub;

/// Held by a connection task while it runs (graceful shutdown waits for all of them).
#[derive(Debug)]
pub struct ConnGuard(#[allow(dead_code)] pub(crate) flume::Sender<()>);

/// What a connection task owns besides its socket.
pub(crate) struct ConnCtx<R> {
    pub(crate) rt: R,
    pub(crate) hub: Hub,
    pub(crate) write_timeout: Duration,
    pub(crate) close_grace: Duration,
    pub(crate) _guard: Option<ConnGuard>,
    /// Its count in the listener's connection limits, if the listener accepted it.
    pub(crate) _slot: Option<Slot>,
}

/// Set when a connection was dropped because its client read nothing for
/// `http.write_timeout`: the listener's socket sets it, the SSE stream on the connection
/// reports it (`tidings_write_timeouts_total`).
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteStall(Arc<AtomicBool>);

impl WriteStall {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The open connections the listener accepted, in all and per peer address: every accepted
/// socket counts from its `accept` (before its request head is read) until it closes, so
/// that requests in progress, idle keep-alive connections and streams share the limits.
#[derive(Debug, Clone)]
pub(crate) struct Slots(Arc<SlotCounts>);

#[derive(Debug)]
struct SlotCounts {
    /// `limits.max_connections`.
    max: usize,
    /// `http.max_connections_per_ip` (0: no limit).
    max_per_ip: usize,
    /// `http.per_ip_exempt_loopback`: loopback peers are not held to `max_per_ip`.
    exempt_loopback: bool,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    /// Only peers with connections open: the map never holds more entries than connections.
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `limits.max_connections` connections are open.
    Server(usize),
    /// `http.max_connections_per_ip` connections from this address are open.
    Peer(usize),
}

impl Slots {
    pub(crate) fn new(max: usize, max_per_ip: usize, exempt_loopback: bool) -> Self {
        Self(Arc::new(SlotCounts {
            max,
            max_per_ip,
            exempt_loopback,
            open: Mutex::default(),
        }))
    }

    /// A slot for a new connection from `ip`, or which limit is reached.
    pub(crate) fn take(&self, ip: IpAddr) -> Result<Slot, Full> {
        let counts = &self.0;
        let Ok(mut open) = counts.open.lock() else {
            return Err(Full::Server(counts.max));
        };
        if open.total >= counts.max {
            return Err(Full::Server(counts.max));
        }
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        // An IPv4 peer of a dual-stack (`[::]`) listener has an IPv4-mapped address.
        let exempt = counts.exempt_loopback && ip.to_canonical().is_loopback();
        if counts.max_per_ip > 0 && !exempt && from_ip >= counts.max_per_ip {
            return Err(Full::Peer(counts.max_per_ip));
        }
        open.total += 1;
        open.per_ip.insert(ip, from_ip + 1);
        Ok(Slot(Arc::new(SlotInner {
            slots: self.clone(),
            ip,
        })))
    }

    /// The connections open, in all.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.0.open.lock().map_or(0, |open| open.total)
    }
}

/// A connection's place in the limits, given back when the last clone is dropped (a
/// keep-alive connection's requests and an upgraded connection share one).
#[derive(Debug, Clone)]
pub(crate) struct Slot(#[allow(dead_code)] Arc<SlotInner>);

#[derive(Debug)]
struct SlotInner {
    slots: Slots,
    ip: IpAddr,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let Ok(mut open) = self.slots.0.open.lock() else {
            return;
        };
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_in_all_and_per_address_and_come_back() {
        let slots = Slots::new(3, 2, false);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Full::Peer(2));
        let b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).unwrap_err(), Full::Server(3));
        let shared = a1.clone();
        drop(a1);
        assert_eq!(slots.open(), 3, "a clone still holds the slot");
        drop(shared);
        assert_eq!(slots.open(), 2);
        let _a3 = slots.take(a).unwrap();
        drop((a2, b1));
        assert_eq!(slots.open(), 1);
        // No limit per address: only the total.
        let open = Slots::new(2, 0, false);
        let _x = open.take(a).unwrap();
        let _y = open.take(a).unwrap();
        assert_eq!(open.take(a).unwrap_err(), Full::Server(2));
    }

    #[test]
    fn loopback_peers_are_exempt_from_the_per_address_limit_when_so_configured() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let other_v4: IpAddr = "127.0.0.2".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let exempt = Slots::new(10, 1, true);
        let mut held = Vec::new();
        for ip in [v4, v4, other_v4, other_v4, v6, v6, mapped, mapped] {
            held.push(exempt.take(ip).expect("loopback is exempt"));
        }
        held.push(exempt.take(remote).unwrap());
        assert_eq!(exempt.take(remote).unwrap_err(), Full::Peer(1));
        // Still within the total.
        held.push(exempt.take(v4).unwrap());
        assert_eq!(exempt.take(v4).unwrap_err(), Full::Server(10));
        // Not exempt: loopback is an address like any other.
        let strict = Slots::new(10, 1, false);
        let _a = strict.take(v4).unwrap();
        assert_eq!(strict.take(v4).unwrap_err(), Full::Peer(1));
        let _b = strict.take(mapped).unwrap();
        assert_eq!(strict.take(mapped).unwrap_err(), Full::Peer(1));
    }
}
