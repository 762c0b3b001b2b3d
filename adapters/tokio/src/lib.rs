//! Runs the tidings server on tokio.
//!
//! This crate is thin: [`TokioRuntime`] implements [`tidings_adapter::Runtime`] (spawn and
//! sleep), and [`serve`] binds a TCP listener, starts the runtime-agnostic
//! [`Service`] (whose driver task owns the broker) and runs the shared HTTP server
//! ([`tidings_adapter::server::serve`], hyper) on the accepted streams, wrapped with
//! `tokio_util::compat`.
//!
//! To embed the server in an application that accepts connections itself, [`start`] makes the
//! [`Service`] without a listener; with the `axum` feature, `tidings_tokio::axum::router`
//! mounts it in an axum `Router` (see the `axum` module).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use tidings_adapter::ServerConfig;
//! use tidings_core::{Payload, Topic};
//!
//! let config = ServerConfig {
//!     listen: "127.0.0.1:0".into(),
//!     ..ServerConfig::default()
//! };
//! let server = tidings_tokio::serve(config).await?;
//! println!("listening on http://{}", server.addr());
//! let hub = server.hub().clone();
//! hub.on("echo", |_conn, payload| async move { Ok(payload) });
//! let topic = Topic::parse("chat.lobby", Default::default()).unwrap();
//! let cursor = hub.publish(topic, None, Payload::text("hi").unwrap()).await.unwrap();
//! # let _ = cursor;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tidings_adapter::server::Listener;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

pub use tidings_adapter::{Hub, Runtime, ServerConfig, Service, StartError};

#[cfg(feature = "axum")]
pub mod axum;

/// [`Runtime`] on tokio: tasks on the runtime whose handle it holds, tokio timers.
#[derive(Debug, Clone)]
pub struct TokioRuntime {
    handle: tokio::runtime::Handle,
}

impl TokioRuntime {
    /// The runtime of the calling task.
    ///
    /// # Panics
    /// Outside of a tokio runtime.
    pub fn current() -> Self {
        Self {
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// A given runtime.
    pub fn new(handle: tokio::runtime::Handle) -> Self {
        Self { handle }
    }
}

impl Runtime for TokioRuntime {
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(task));
    }

    /// tokio's clock, so that a test with paused time moves the server's time too.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep_until(deadline.into())
    }
}

/// A running server. Dropping it does not stop it: call [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    service: Service<TokioRuntime>,
    accept: JoinHandle<()>,
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
    pub fn service(&self) -> &Service<TokioRuntime> {
        &self.service
    }

    /// Graceful shutdown: stops accepting, closes every connection (WebSocket close 1001, SSE
    /// streams end after a `tidings-error` event), answers requests in flight, and returns when
    /// all connections are done or `timers.shutdown_grace` is over.
    pub async fn shutdown(&self) {
        self.service.shutdown().await;
    }

    /// Waits until the accept loop ends (after [`Server::shutdown`]).
    pub async fn wait(self) {
        let _ = self.accept.await;
    }
}

/// Starts the server without a listener, on the current tokio runtime: the broker's driver task
/// and the [`Service`] whose [`Hub`] is the application API, for an application that accepts
/// connections itself (with the `axum` feature, `axum::router` mounts it in an axum app;
/// `config.listen` is not used). The same as `Service::start(TokioRuntime::current(), config)`.
///
/// # Errors
/// [`StartError`] for an invalid configuration.
///
/// # Panics
/// Outside of a tokio runtime.
pub fn start(config: ServerConfig) -> Result<Service<TokioRuntime>, StartError> {
    Service::start(TokioRuntime::current(), config)
}

/// Binds `config.listen` (and `tls.redirect_http`), starts the broker and accepts connections
/// on the current tokio runtime. Returns once listening.
///
/// # Errors
/// If the address cannot be bound or the configuration is invalid.
pub async fn serve(config: ServerConfig) -> io::Result<Server> {
    let listener = TcpListener::bind(&config.listen).await?;
    let redirect = match &config.tls.redirect_http {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let server = serve_on(listener, config)?;
    if let Some(listener) = redirect {
        let accepting = Accept {
            listener,
            service: server.service.clone(),
        };
        let https_port = server.addr.port();
        tokio::spawn(tidings_adapter::server::redirect(
            server.service.clone(),
            accepting,
            https_port,
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
    let service = Service::start(TokioRuntime::current(), config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let accepting = Accept {
        listener,
        service: service.clone(),
    };
    let accept = tokio::spawn(tidings_adapter::server::serve(service.clone(), accepting));
    Ok(Server {
        addr,
        service,
        accept,
    })
}

/// The TCP listener, as the shared server takes it: tuned sockets as `futures-io` streams.
struct Accept {
    listener: TcpListener,
    service: Service<TokioRuntime>,
}

impl Listener for Accept {
    type Stream = Compat<tokio::net::TcpStream>;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, peer) = self.listener.accept().await?;
        self.service.tune_tcp(&stream);
        Ok((stream.compat(), peer))
    }
}
