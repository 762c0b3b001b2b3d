//! Small runtime-agnostic I/O helpers: deadlines built on [`Runtime::sleep_until`].

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_lite::FutureExt as _;

use crate::runtime::Runtime;

/// Runs `fut` until `deadline`: `None` if the deadline came first (`fut` is dropped).
pub(crate) async fn with_deadline<R: Runtime, F: Future>(
    rt: &R,
    deadline: Instant,
    fut: F,
) -> Option<F::Output> {
    let sleep = rt.sleep_until(deadline);
    async { Some(fut.await) }
        .or(async {
            sleep.await;
            None
        })
        .await
}

/// Runs `fut` for at most `timeout`: `None` if it did not finish in time. The clock is read and
/// a timer armed only if `fut` does not finish on its first poll (most socket writes do).
pub(crate) async fn with_timeout<R: Runtime, F: Future>(
    rt: &R,
    timeout: Duration,
    fut: F,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    if let Some(done) = futures_lite::future::poll_once(fut.as_mut()).await {
        return Some(done);
    }
    with_deadline(rt, rt.now() + timeout, fut).await
}
