//! Mounting tidings in an [axum](https://docs.rs/axum) application (feature `axum`).
//!
//! [`router`] serves the whole HTTP surface of the server (`/ws`, the ksbus and etp endpoints
//! `/ws/bus` and `/etp`, `/sse`, `POST /publish`, `POST /subscriptions`,
//! `/healthz`, `/metrics`, the browser client `/tidings.js` and the demo page `/`, CORS
//! preflights, `404`/`405` answers listing what exists) as an axum
//! [`Router`], with the same behaviour and status codes as the standalone server (see
//! `docs/HTTP.md`). Nest it under a prefix or merge it at the root:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use tidings_adapter::ServerConfig;
//!
//! let service = tidings_tokio::start(ServerConfig::default())?;
//! let hub = service.hub().clone(); // publish, subscribe, on(..), on_connect(..)
//! # let _ = hub;
//! let app = Router::new()
//!     .route("/hello", get(|| async { "hello" }))
//!     .nest("/realtime", tidings_tokio::axum::router(service.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Under `nest("/realtime", ..)` the endpoints are `/realtime/ws`, `/realtime/sse?topic=..`,
//! `/realtime/publish?topic=..`, `/realtime/healthz`, `/realtime/metrics`; anything else under
//! the prefix gets the server's JSON `404`. Paths are seen relative to the mount; the demo page
//! is at `/realtime` (axum's `nest` does not route `/realtime/`) and finds `tidings.js`, `ws` and `sse` next to itself. To merge the
//! endpoints at the root of an application that has a fallback of its own, use [`routes`] (the
//! same routes without a fallback, as axum refuses two, and without the demo page, as the
//! application's root is its own).
//!
//! The router is a [tower `Service`](https://docs.rs/tower-service) like any axum router:
//! `router(service).into_service()` (or `.into_make_service()` for a hyper server).
//!
//! How it works: every request goes through the server's own [`answer`]: the head is read
//! into a [`RequestHead`](tidings_adapter::RequestHead) exactly as the standalone server reads it (paths relative to the
//! mount), [`Service::route`] decides what answers it, and the response (a complete body, or an
//! SSE stream sent as it comes) is the standalone server's. `GET /ws`, `/ws/bus` and `/etp` are
//! answered `101`; the connection hyper hands over after the upgrade (through
//! `hyper::upgrade::on`) runs [`Service::run_upgraded`] with async-tungstenite, on a task of its
//! own.
//!
//! Differences from the standalone server: the application's HTTP server, not tidings', reads
//! the request head (its own limits apply) and owns the sockets (so [`Service::tune_tcp`] and
//! the connection limits of `http.max_connections_per_ip` are not applied: they are the
//! application's choice).

use ::axum::Router;
use ::axum::body::Body;
use ::axum::extract::{Request, State};
use ::axum::response::Response;
use ::axum::routing::any;
use hyper_util::rt::TokioIo;
use tidings_adapter::Service;
use tidings_adapter::async_tungstenite::WebSocketStream;
use tidings_adapter::async_tungstenite::tungstenite::protocol::Role;
use tidings_adapter::endpoints::ENDPOINTS;
use tidings_adapter::server::{Answer, Upgrading, answer};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

use crate::TokioRuntime;

/// The paths the server answers (relative to the mount), besides the demo page at `/`: its
/// endpoints and the browser client.
fn paths() -> impl Iterator<Item = &'static str> {
    ENDPOINTS
        .iter()
        .map(|e| e.path)
        .chain(std::iter::once("/tidings.js"))
}

/// The tidings HTTP surface as an axum [`Router`], with a fallback answering the server's JSON
/// `404` for unknown paths: nest it (`Router::nest("/realtime", router(service))`) or merge it
/// into an application that has no fallback of its own.
pub fn router(service: Service<TokioRuntime>) -> Router {
    routes()
        .route("/", any(dispatch))
        .fallback(dispatch)
        .with_state(service)
}

/// The same routes as [`router`] (`/ws`, `/ws/bus`, `/etp`, `/sse`, `/publish`,
/// `/subscriptions`, `/healthz`, `/metrics`,
/// `/tidings.js`, any method: wrong ones get the server's `405`) without a fallback and without
/// the demo page at `/` (the application's root is its own), to merge at the root of an
/// application that has a fallback of its own: `app.merge(routes().with_state(service))`.
pub fn routes() -> Router<Service<TokioRuntime>> {
    paths().fold(Router::new(), |r, path| r.route(path, any(dispatch)))
}

/// Answers one request as the standalone server would.
async fn dispatch(State(service): State<Service<TokioRuntime>>, req: Request) -> Response {
    let Answer { response, upgrade } = answer(&service, req).await;
    if let Some(upgrading) = upgrade {
        tokio::spawn(run_upgrade(service, upgrading));
    }
    response.map(Body::new)
}

/// Once hyper hands the connection over after the `101`, runs it on a task of its own.
async fn run_upgrade(service: Service<TokioRuntime>, upgrading: Upgrading) {
    let Upgrading { on, head, upgrade } = upgrading;
    let upgraded = match on.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!("WebSocket upgrade failed: {e}");
            return;
        }
    };
    let io = TokioIo::new(upgraded).compat();
    let config = Some(service.upgrade_config(&upgrade));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, config).await;
    // A task of exactly the connection's size.
    tokio::spawn(service.run_upgraded(ws, head, upgrade));
}
