//! Runs the tidings server on the async-std family of runtimes, and under smol.
//!
//! async-std is discontinued upstream, so this adapter is built on the crates it was made of:
//! [`AsyncIoRuntime`] spawns on `async-global-executor` (async-std's executor, one worker per core)
//! and sleeps on `async-io` timers; [`serve`] accepts `async-net` TCP streams, which already are
//! `futures-io` streams, and runs the shared HTTP server ([`tidings_adapter::server::serve`],
//! hyper) on them. Nothing here depends
//! on a particular executor, so it also runs inside an async-std or a smol program.
//!
//! ```no_run
//! use tidings_adapter::ServerConfig;
//!
//! # fn main() -> std::io::Result<()> {
//! async_io::block_on(async {
//!     let mut config = ServerConfig::default();
//!     config.listen = "127.0.0.1:0".into();
//!     let server = tidings_async_std::serve(config).await?;
//!     println!("listening on http://{}", server.addr());
//!     server.shutdown().await;
//!     server.wait().await;
//!     Ok(())
//! })
//! # }
//! ```
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use async_net::{TcpListener, TcpStream};
use tidings_adapter::server::Listener;

pub use tidings_adapter::{Hub, Runtime, ServerConfig, Service};

/// [`Runtime`] on async-io: tasks on `async-global-executor`, `async-io` timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsyncIoRuntime;

impl Runtime for AsyncIoRuntime {
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        async_global_executor::spawn(task).detach();
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    // Not an `async fn`: the future must be `'static`, not borrow `self`.
    #[allow(clippy::manual_async_fn)]
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        async move {
            async_io::Timer::at(deadline).await;
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    service: Service<AsyncIoRuntime>,
    stopped: async_channel::Receiver<()>,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The application API.
    pub fn hub(&self) -> &Hub {
        self.service.hub()
    }

    /// The runtime-agnostic service (to serve connections accepted elsewhere).
    pub fn service(&self) -> &Service<AsyncIoRuntime> {
        &self.service
    }

    /// Graceful shutdown: stops accepting, closes every connection (WebSocket close 1001, SSE
    /// streams end after a `tidings-error` event), answers requests in flight, and returns when
    /// all connections are done or the shutdown grace period is over.
    pub async fn shutdown(&self) {
        self.service.shutdown().await;
    }

    /// Waits until the accept loop ends (after [`Server::shutdown`]).
    pub async fn wait(self) {
        // The accept loop holds the sender and drops it when it ends.
        let _ = self.stopped.recv().await;
    }
}

/// Binds `config.listen` (and `tls.redirect_http`), starts the broker and accepts connections.
/// Returns once listening.
///
/// # Errors
/// If the address cannot be bound or the configuration is invalid.
pub async fn serve(config: ServerConfig) -> io::Result<Server> {
    let listener = TcpListener::bind(config.listen.as_str()).await?;
    let redirect = match &config.tls.redirect_http {
        Some(addr) => Some(TcpListener::bind(addr.as_str()).await?),
        None => None,
    };
    let server = serve_on(listener, config)?;
    if let Some(listener) = redirect {
        let accepting = Accept {
            listener,
            service: server.service.clone(),
        };
        AsyncIoRuntime.spawn(tidings_adapter::server::redirect(
            server.service.clone(),
            accepting,
            server.addr.port(),
        ));
    }
    Ok(server)
}

/// Like [`serve`], on a listener already bound (`config.listen` is ignored).
///
/// # Errors
/// If the configuration is invalid.
pub fn serve_on(listener: TcpListener, config: ServerConfig) -> io::Result<Server> {
    let addr = listener.local_addr()?;
    let service = Service::start(AsyncIoRuntime, config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let (done, stopped) = async_channel::bounded::<()>(1);
    let accepting = Accept {
        listener,
        service: service.clone(),
    };
    let serving = service.clone();
    AsyncIoRuntime.spawn(async move {
        tidings_adapter::server::serve(serving, accepting).await;
        drop(done);
    });
    Ok(Server {
        addr,
        service,
        stopped,
    })
}

/// The TCP listener, as the shared server takes it: tuned sockets (already `futures-io`).
struct Accept {
    listener: TcpListener,
    service: Service<AsyncIoRuntime>,
}

impl Listener for Accept {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        self.service.tune_tcp(&stream);
        Ok((stream, peer))
    }
}
