//! The runtime-agnostic part of the tidings server, shared by `tidings-tokio` and (later)
//! `tidings-async-std`.
//!
//! - [`Runtime`]: the small trait a runtime adapter implements (spawn, sleep until).
//! - [`Service`]: the HTTP surface of DESIGN.md §4 (`/ws`, `/sse`, `/publish`, `/healthz`,
//!   `/metrics`): what answers each request ([`Service::route`]).
//! - [`server`]: the HTTP server (hyper: HTTP/1.1 with keep-alive, HTTP/2) over any
//!   `futures-io` connections a runtime adapter accepts ([`server::Listener`]), with TLS
//!   (rustls: certificate files or ACME) when configured.
//! - [`Hub`]: the application API (publish, send, rooms, emit-with-ack, request handlers,
//!   connect/disconnect hooks, in-process subscriptions), talking to the one driver task that
//!   owns the broker (`driver.rs`).
//! - [`ServerConfig`]: every setting, from TOML and command-line overrides.
//! - [`auth`]: who may do what.
//! - [`request`]: HTTP request heads (`httparse`).
//!
//! A runtime adapter binds a listener, calls [`Service::start`], and runs [`server::serve`]
//! with its accepted streams; see `tidings-tokio`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cluster;
pub mod config;
mod conn;
mod conn_table;
mod control;
mod ctx;
mod driver;
pub mod endpoints;
mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod hub;
mod io;
mod mailbox;
pub mod metrics;
mod registry;
pub mod request;
mod runtime;
pub mod server;
mod service;
pub mod sse;
pub mod store;
mod tls;
mod writer;
mod ws;

pub use async_tungstenite;
pub use config::{ConfigError, ServerConfig, TlsConfig, TlsError};
pub use ctx::ConnGuard;
pub use hub::{Hub, HubError, PresenceWatch, Received, StartError, Subscription};
pub use metrics::ServerStats;
pub use registry::{
    Authorizer, ConnectHook, Connecting, Disconnect, DisconnectHook, DisconnectReasonHook,
    ErrorHook, Handler, RefusedHook, UnknownHandler,
};
pub use request::RequestHead;
pub use runtime::Runtime;
pub use service::{BodyRequest, Route, Service, Upgrade};
pub use sse::SseRequest;
