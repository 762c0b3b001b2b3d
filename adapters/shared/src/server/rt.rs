//! hyper's executor, timer and I/O traits, on the server's [`Runtime`] and `futures-io` streams.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_io::{AsyncRead, AsyncWrite};
use smol_hyper::rt::FuturesIo;

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

/// hyper's I/O traits over a `futures-io` stream (smol-hyper's `FuturesIo`), telling hyper that
/// vectored writes work (every stream the listener serves forwards them: TCP on both runtimes,
/// rustls, the write deadline): hyper then queues response chunks and writes them with one
/// `writev` instead of first copying each into its own buffer.
pub(crate) struct HyperIo<T>(FuturesIo<T>);

impl<T> HyperIo<T> {
    pub(crate) fn new(io: T) -> Self {
        Self(FuturesIo::new(io))
    }

    /// The stream (after an upgrade).
    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
