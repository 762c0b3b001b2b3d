//! The ids the broker and its peers name things by: connections (assigned by the adapter),
//! client requests and server requests.

use std::fmt;

/// A connection id, assigned by the adapter. Never reuse one: the broker refuses an `Open` for an
/// id that is still open, and a reused id could receive another connection's late outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Hashes adapter-assigned connection ids with one multiplication: they are not chosen by peers,
/// so the DoS-resistant default hasher is not needed on this hot path (every `Flushed`, and in
/// an adapter every delivery). Only for [`ConnId`] keys.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnIdHasher(u64);

impl std::hash::Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by connection id, with [`ConnIdHasher`].
pub type ConnMap<V> =
    std::collections::HashMap<ConnId, V, std::hash::BuildHasherDefault<ConnIdHasher>>;

/// A request id chosen by a client (native `"id"` field). Unique among the client's pending
/// requests.
pub type ReqId = u64;

/// An id the broker assigns to a server request (emit-with-ack) on one connection: 1, 2, 3, ...
pub type AckId = u64;
