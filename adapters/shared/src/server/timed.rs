//! A connection whose writes must make progress within `http.write_timeout`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};

use crate::ctx::WriteStall;
use crate::runtime::Runtime;

/// Wraps a connection: a write (or flush) that stays blocked for `timeout` (a client that
/// does not read) fails with [`io::ErrorKind::TimedOut`], so hyper drops the connection. The
/// timer is armed only while a write is blocked.
pub(crate) struct TimedIo<S, R> {
    io: S,
    rt: R,
    timeout: Duration,
    stalled: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Set when the timeout struck.
    stall: WriteStall,
}

// Nothing in it is pinned in place (the sleep is boxed).
impl<S: Unpin, R> Unpin for TimedIo<S, R> {}

impl<S, R: Runtime> TimedIo<S, R> {
    pub(crate) fn new(io: S, rt: R, timeout: Duration, stall: WriteStall) -> Self {
        Self {
            io,
            rt,
            timeout,
            stalled: None,
            stall,
        }
    }

    /// The connection itself (after an upgrade: the WebSocket task has its own timeouts).
    pub(crate) fn into_inner(self) -> S {
        self.io
    }

    /// After a write returned `Pending`: `Err` once it has been blocked for the timeout.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let rt = &self.rt;
        let deadline = rt.now() + self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(rt.sleep_until(deadline)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stall.set();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client read nothing for http.write_timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => match self.blocked(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin, R> AsyncRead for TimedIo<S, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, R: Runtime> AsyncWrite for TimedIo<S, R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.progress(cx, poll)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}
