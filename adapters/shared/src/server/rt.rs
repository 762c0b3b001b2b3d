//! hyper's executor and timer, on the server's [`Runtime`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::runtime::Runtime;

/// Spawns hyper's tasks (HTTP/2 streams) on the runtime.
#[derive(Clone)]
pub(crate) struct Exec<R>(pub(crate) R);

impl<R: Runtime, F> hyper::rt::Executor<F> for Exec<R>
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// hyper's timeouts (reading a request head, an idle keep-alive connection) on the runtime's
/// clock, so that a virtual clock moves them too.
#[derive(Clone)]
pub(crate) struct Clock<R>(pub(crate) R);

impl<R: Runtime> hyper::rt::Timer for Clock<R> {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.0.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Sleep(Mutex::new(Box::pin(self.0.sleep_until(deadline)))))
    }

    fn now(&self) -> Instant {
        self.0.now()
    }
}

/// A runtime's sleep, `Sync` as hyper requires (the lock is never contended: only the
/// connection's task polls it).
struct Sleep(Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut().0.get_mut() {
            Ok(sleep) => sleep.as_mut().poll(cx),
            Err(_) => Poll::Ready(()),
        }
    }
}

impl hyper::rt::Sleep for Sleep {}
