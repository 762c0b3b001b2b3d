//! The small trait an async runtime implements to run the tidings server.
//!
//! Everything else in this crate (the driver task owning the broker, the HTTP, WebSocket and SSE
//! connection handlers, the [`crate::Hub`]) is written against `futures-io` and this trait, so a
//! runtime adapter only has to provide:
//!
//! 1. an implementation of [`Runtime`] (spawning a task, sleeping until an instant);
//! 2. an accept loop that turns its TCP streams into `futures_io::AsyncRead + AsyncWrite` (tokio:
//!    `tokio_util::compat`; async-io/smol: their streams already are) and hands each to
//!    [`crate::handle_connection`];
//! 3. a `serve` function starting both (see `tidings-tokio` for a complete one, about 150 lines).
//!
//! Channels are runtime-agnostic (`flume`, `futures-channel`). The clock is the runtime's too
//! ([`Runtime::now`]), so that a test runtime can run the server on a virtual clock.

use std::future::Future;
use std::time::Instant;

/// What the server needs from an async runtime: spawn a detached task, a clock and a timer.
///
/// Implementations are cheap handles (`Clone`), usable from any thread.
///
/// ```
/// use std::future::Future;
/// use std::time::Instant;
/// use tidings_adapter::Runtime;
///
/// /// A runtime that runs everything on a thread pool of some executor.
/// #[derive(Clone)]
/// struct MyRuntime;
///
/// impl Runtime for MyRuntime {
///     fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
///         # let _ = task;
///         // e.g. async_std::task::spawn(task); (detached: the handle is dropped)
///     }
///
///     fn now(&self) -> Instant {
///         Instant::now()
///     }
///
///     fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
///         # let _ = deadline;
///         // e.g. async_io::Timer::at(deadline) mapped to ()
///         std::future::ready(())
///     }
/// }
/// ```
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Runs `task` to completion in the background (detached: nobody joins it).
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// The current instant: every time the server reads goes through this (the core never
    /// reads the clock; the driver passes this in).
    fn now(&self) -> Instant;

    /// Completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;
}
