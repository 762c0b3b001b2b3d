//! Small runtime-agnostic I/O helpers: deadlines built on [`Runtime::sleep_until`].

use std::future::Future;
use std::time::Instant;

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
