//! What a connection task owns besides its socket ([`ConnCtx`]), and the guard that graceful
//! shutdown waits for ([`ConnGuard`]).
//!
//! Its own module, between the hub and the connection tasks (`ws`, `sse`), so that those do not
//! import the service that spawns them.

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
}
