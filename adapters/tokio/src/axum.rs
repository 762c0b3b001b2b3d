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
//! How it works: every request is turned into a [`RequestHead`] (method, percent-decoded path
//! relative to the mount, percent-decoded query, lowercased headers) exactly as the standalone
//! server reads it. `GET /ws`, `/ws/bus` and `/etp` are checked with [`Service::check_upgrade`] and answered `101`
//! with the accept key; the connection hyper hands over after the upgrade (through
//! `hyper::upgrade::on`) runs [`Service::run_upgraded`] with async-tungstenite, on a task of its
//! own. `GET /sse` is checked with [`Service::check_sse`] and streamed from
//! [`Service::sse_body`] with the request's headers. Everything else (publish, health, metrics,
//! preflights, refusals) is answered by [`Service::handle_request`] itself, reading the request
//! body as it arrives, so the answers are byte for byte the standalone server's (less
//! `Connection: close`: hyper manages the connection).
//!
//! Differences from the standalone server: hyper, not tidings, reads the request head (its own
//! limits apply), keeps connections alive between requests and owns the sockets (so
//! [`Service::tune_tcp`] is not applied: `TCP_USER_TIMEOUT` is the application's choice); the
//! `/publish` body still needs a `Content-Length` (`411` otherwise).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ::axum::Router;
use ::axum::body::Body;
use ::axum::extract::{Request, State};
use ::axum::http::{HeaderName, HeaderValue, StatusCode, header};
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::any;
use futures_util::{StreamExt as _, TryStreamExt as _};
use hyper_util::rt::TokioIo;
use tidings_adapter::async_tungstenite::WebSocketStream;
use tidings_adapter::async_tungstenite::tungstenite::handshake::derive_accept_key;
use tidings_adapter::async_tungstenite::tungstenite::protocol::Role;
use tidings_adapter::endpoints::{ENDPOINTS, Serve, endpoint};
use tidings_adapter::http::Refusal;
use tidings_adapter::request::parse_head;
use tidings_adapter::{RequestHead, Service};
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
    let Some(guard) = service.track() else {
        return refusal(Refusal::new(
            503,
            "shutting_down",
            "the server is shutting down",
        ));
    };
    let mut head = match request_head(&req) {
        Ok(head) => head,
        Err(r) => return refusal(r),
    };
    let serve = endpoint(&head.path).map(|e| e.serve);
    match (serve, head.method.as_str()) {
        (Some(Serve::WebSocket(_)), "GET") => match service.check_upgrade(&head) {
            Ok(upgrade) => upgrade_websocket(service, req, head, upgrade),
            Err(r) => refusal(r),
        },
        (Some(Serve::Sse), "GET") => match service.check_sse(&head) {
            Ok(request) => {
                let mut response = Response::new(Body::empty());
                let headers = response.headers_mut();
                // The stream headers (with `sse.headers`) and CORS.
                for (name, value) in &request.headers {
                    append(headers, name, value);
                }
                let body = service.sse_body(&head, request);
                drop(head);
                // The guard lives as long as the stream: a graceful shutdown waits for it.
                let body = body.map(move |chunk| {
                    let _ = &guard;
                    Ok::<_, Infallible>(chunk)
                });
                *response.body_mut() = Body::from_stream(body);
                response
            }
            // Answered by the service, which adds the CORS headers allowed cross-origin pages
            // need to read why.
            Err(r) => match answer(&service, head, req.into_body()).await {
                Some(response) if response.status().as_u16() >= 400 => response,
                _ => refusal(r),
            },
        },
        _ => {
            // hyper answers `Expect: 100-continue` itself when the body is read.
            head.headers.retain(|(name, _)| name != "expect");
            let body = req.into_body();
            if head.header("content-length").is_none() && head.header("transfer-encoding").is_none()
            {
                // HTTP/2 has no Content-Length requirement: use the size when it is known, or
                // answer 411 like the standalone server for a body of unknown length.
                use ::axum::body::HttpBody as _;
                match body.size_hint().exact() {
                    Some(0) => {}
                    Some(n) => head.headers.push(("content-length".into(), n.to_string())),
                    None => head
                        .headers
                        .push(("transfer-encoding".into(), "chunked".into())),
                }
            }
            answer(&service, head, body).await.unwrap_or_else(|| {
                refusal(Refusal::new(
                    500,
                    "internal",
                    "the tidings service gave no answer",
                ))
            })
        }
    }
}

/// The request as the standalone server reads it: the target relative to the mount (axum's
/// `nest` strips the prefix) and the headers, parsed by the server's own parser, so that the
/// decoding and the limits are the same.
fn request_head(req: &Request) -> Result<RequestHead, Refusal> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let target = if target.starts_with('/') {
        target
    } else {
        format!("/{target}")
    };
    let mut raw = Vec::with_capacity(256);
    raw.extend_from_slice(req.method().as_str().as_bytes());
    raw.push(b' ');
    raw.extend_from_slice(target.as_bytes());
    raw.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    // HTTP/2 carries the host in `:authority` (hyper puts it in the URI): the same-origin
    // check of the `Origin` policies compares the `Origin` with `Host`.
    if let (None, Some(authority)) = (req.headers().get("host"), req.uri().authority()) {
        raw.extend_from_slice(b"host: ");
        raw.extend_from_slice(authority.as_str().as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    match parse_head(&raw) {
        Ok(Some((head, _))) => Ok(head),
        Ok(None) => Err(Refusal::new(400, "bad_request", "incomplete request head")),
        Err(e) => Err(Refusal::head(&e)),
    }
}

/// Answers `101` and, once hyper hands the connection over, runs it on a task of its own.
fn upgrade_websocket(
    service: Service<TokioRuntime>,
    mut req: Request,
    head: RequestHead,
    upgrade: tidings_adapter::Upgrade,
) -> Response {
    let accept = derive_accept_key(
        head.header("sec-websocket-key")
            .unwrap_or_default()
            .as_bytes(),
    );
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
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
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Lets [`Service::handle_request`] answer on an in-memory connection whose input is the
/// request body, and turns what it wrote into a response; `None` if it wrote no complete
/// answer.
async fn answer(
    service: &Service<TokioRuntime>,
    head: RequestHead,
    body: Body,
) -> Option<Response> {
    let written = Arc::new(Mutex::new(Vec::new()));
    let input = body
        .into_data_stream()
        .map_err(io::Error::other)
        .into_async_read();
    let io = Exchange {
        input,
        written: written.clone(),
    };
    service.handle_request(io, head, Vec::new()).await;
    let bytes = std::mem::take(&mut *written.lock().ok()?);
    parse_response(&bytes)
}

/// Parses the bytes of a plain answer (`Connection: close` and `Content-Length` are left to
/// hyper).
fn parse_response(bytes: &[u8]) -> Option<Response> {
    let mut headers = [httparse_header(); 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = parsed.parse(bytes).ok()? else {
        return None;
    };
    let status = StatusCode::from_u16(parsed.code?).ok()?;
    let mut response = Response::new(Body::from(bytes[len..].to_vec()));
    *response.status_mut() = status;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection")
            || h.name.eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Some(response)
}

const fn httparse_header() -> httparse::Header<'static> {
    httparse::EMPTY_HEADER
}

fn append(headers: &mut ::axum::http::HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.append(name, value);
    }
}

/// A refusal as an axum response (the server's JSON error body and headers).
fn refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        r.body(),
    )
        .into_response();
    for (name, value) in &r.headers {
        append(response.headers_mut(), name, value);
    }
    response
}

/// An in-memory connection: reads the request body, collects what is written.
struct Exchange<I> {
    input: I,
    written: Arc<Mutex<Vec<u8>>>,
}

impl<I: futures_util::io::AsyncRead + Unpin> futures_util::io::AsyncRead for Exchange<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl<I: Unpin> futures_util::io::AsyncWrite for Exchange<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.written.lock() {
            Ok(mut written) => {
                written.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            Err(_) => Poll::Ready(Err(io::Error::other("poisoned"))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
