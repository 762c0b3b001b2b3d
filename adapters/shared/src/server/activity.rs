//! What a connection is doing, for closing idle ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::runtime::Runtime;

/// The requests of a connection: how many were started, and how many are in progress (their
/// response body not yet sent: an SSE stream is in progress as long as it lasts). hyper closes
/// an HTTP/1.1 connection idle between requests itself; this also closes one that never sends
/// a request (hyper-util reads until it can tell HTTP/1.1 from HTTP/2, without a timer) and an
/// HTTP/2 connection with no stream open.
#[derive(Clone, Default)]
pub(crate) struct Activity(Arc<ActivityCounts>);

#[derive(Default)]
struct ActivityCounts {
    started: AtomicU64,
    in_progress: AtomicUsize,
}

impl Activity {
    /// A request starts: in progress until the returned guard is dropped.
    pub(crate) fn begin(&self) -> Active {
        self.0.started.fetch_add(1, Ordering::Relaxed);
        self.0.in_progress.fetch_add(1, Ordering::Relaxed);
        Active(self.0.clone())
    }

    /// Completes once the connection has had no request in progress and started none for a
    /// whole `period` (checked every `period`: closed between one and two periods of quiet).
    pub(crate) async fn idle_for<R: Runtime>(&self, rt: &R, period: Duration) {
        let mut seen = u64::MAX;
        loop {
            rt.sleep_until(rt.now() + period).await;
            let started = self.0.started.load(Ordering::Relaxed);
            if self.0.in_progress.load(Ordering::Relaxed) == 0 && started == seen {
                return;
            }
            seen = started;
        }
    }
}

/// A request in progress (held by its response body).
pub(crate) struct Active(Arc<ActivityCounts>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Active")
    }
}
