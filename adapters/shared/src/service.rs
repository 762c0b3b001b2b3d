//! The server as a runtime-agnostic service: what answers each request (DESIGN.md §4):
//!
//! | path | methods | what |
//! |---|---|---|
//! | `/ws`, `/ws/bus`, `/etp` | `GET` (upgrade) | the native, ksbus and etp WebSocket protocols |
//! | `/sse` | `GET`, `OPTIONS` | a Server-Sent Events stream of `topic` patterns |
//! | `/publish` | `POST`, `OPTIONS` | publish the body to `topic` |
//! | `/subscriptions` | `POST`, `OPTIONS` | change a client's subscriptions |
//! | `/healthz` | `GET` | `ok` |
//! | `/metrics` | `GET` | Prometheus text |
//! | `/` | `GET` | the demo page (`clients/js/index.html`, embedded) |
//! | `/tidings.js` | `GET` | the browser client (`clients/js/tidings.js`, embedded) |
//!
//! [`Service::route`] decides from a request's head alone what answers it ([`Route`]); the HTTP
//! server ([`crate::server`], hyper) or an embedding's own (the axum router) carries it out.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use futures_io::{AsyncRead, AsyncWrite};
use tidings_core::{
    Cursor, ErrorCode, Grants, Name, Pattern, Payload, ProtocolError, Topic, native,
};

use crate::auth::{AuthError, Authenticated, Authenticator};
use crate::config::{ServerConfig, TlsError};
use crate::ctx::{ConnCtx, ConnGuard, Full, Slot, Slots, WriteStall};
use crate::endpoints::{Endpoint, Origins, Serve, endpoint, websocket_paths};
use crate::http::{Cors, OriginPolicy, Refusal, Response};
use crate::hub::{Hub, HubError, StartError};
use crate::io::with_deadline;
use crate::request::RequestHead;
use crate::runtime::Runtime;
use crate::sse::SseRequest;
use crate::tls::{RELOAD_CHECK, Tls};

/// What exists, for 404 and 405 answers.
const ROUTES: &str = "GET /ws (WebSocket), GET /ws/bus (ksbus), GET /etp (etp), \
     GET /sse?topic=..., POST /publish?topic=..., POST /subscriptions, \
     GET /presence?topic=..., GET /healthz, GET /metrics, GET / (demo page), GET /tidings.js (browser client)";

/// What answers a request, decided from its head alone ([`Service::route`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Route {
    /// A complete answer (refusals, preflights, `/healthz`, the embedded files).
    Respond(Response),
    /// `GET /metrics`, answered by [`Service::metrics`] (it asks the broker).
    Metrics,
    /// Read the body (at most [`BodyRequest::limit`] bytes, within `http.read_timeout`), then
    /// answer with [`Service::answer_body`]: `POST /publish`, `POST /subscriptions`.
    ReadBody(BodyRequest),
    /// A WebSocket upgrade: answer `101 Switching Protocols` (with the accept key of the
    /// request's `Sec-WebSocket-Key`), then run the connection with [`Service::run_upgraded`].
    Upgrade(Upgrade),
    /// A Server-Sent Events stream: answer `200` with [`SseRequest::headers`] and the body of
    /// [`Service::sse_body`].
    Sse(SseRequest),
    /// `GET /presence?topic=`, answered by [`Service::presence`] (it asks the broker, and in a
    /// cluster the other nodes).
    Presence(PresenceRequest),
}

/// A presence request that passed every check but the topic's grant (the broker checks that,
/// with the declared topics it knows).
#[derive(Debug)]
pub struct PresenceRequest {
    topic: Topic,
    grants: Arc<Grants>,
    cors: Vec<(String, String)>,
}

/// A request whose body is to be read ([`Route::ReadBody`]): it passed every check that does
/// not need the body.
#[derive(Debug)]
pub struct BodyRequest {
    kind: BodyKind,
    auth: Authenticated,
    /// The CORS headers of the answer, whatever it is.
    cors: Vec<(String, String)>,
    limit: usize,
}

#[derive(Debug)]
enum BodyKind {
    Publish {
        topic: Topic,
        event: Option<Name>,
        json: bool,
    },
    Subscriptions,
}

impl BodyRequest {
    /// The largest body accepted (`limits.max_frame_bytes`); a larger one is answered `413`.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A refusal of the body (too large, too slow, cut short) as the answer, with the
    /// request's CORS headers.
    pub fn refuse(&self, refusal: Refusal) -> Response {
        refusal.with_headers(self.cors.clone()).into_response()
    }
}

/// A WebSocket request that passed its checks ([`Service::check_upgrade`]): who is asking and
/// which of the server's WebSocket protocols its endpoint speaks.
#[derive(Debug)]
pub struct Upgrade {
    auth: Authenticated,
    /// The codec of its endpoint.
    codec: Box<dyn tidings_core::codec::Codec>,
    max_message: usize,
    /// The listener's count of the connection, held as long as it lives.
    slot: Option<Slot>,
}

impl Upgrade {
    /// The connection keeps `slot` (its place in the listener's connection limits) until it
    /// ends.
    pub(crate) fn hold(&mut self, slot: Slot) {
        self.slot = Some(slot);
    }
}

/// A file the server serves from its own binary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StaticFile {
    /// Its path (relative to where the server is mounted).
    pub(crate) path: &'static str,
    /// Its `Content-Type`.
    pub(crate) content_type: &'static str,
    /// Its content.
    pub(crate) body: &'static str,
    /// Whether any page may load it (`Access-Control-Allow-Origin: *`): the client module, so
    /// that pages of other origins can `import` it (module scripts are fetched with CORS).
    pub(crate) public: bool,
}

impl StaticFile {
    /// The strong `ETag` of the content (a quoted 64-bit FNV-1a hash), so that a browser
    /// revalidating with `If-None-Match` gets a `304` until the server is upgraded.
    pub(crate) fn etag(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.body.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("\"{hash:016x}\"")
    }

    /// The answer to a `GET` with these request headers: `200` with the file, or `304` when
    /// `If-None-Match` names its `ETag` (or is `*`). Either way `Cache-Control: no-cache`
    /// (browsers may keep it but revalidate before each use, so an upgraded server is seen at
    /// once, at the cost of a `304`), the `ETag`, `X-Content-Type-Options: nosniff`, and for a
    /// public file `Access-Control-Allow-Origin: *`.
    pub(crate) fn response(&self, head: &RequestHead) -> Response {
        let etag = self.etag();
        let fresh = head.header("if-none-match").is_some_and(|tags| {
            tags.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == etag)
        });
        let mut headers: Vec<(String, String)> = [
            ("Cache-Control", "no-cache"),
            ("ETag", etag.as_str()),
            ("X-Content-Type-Options", "nosniff"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .into();
        if self.public {
            headers.push(("Access-Control-Allow-Origin".to_owned(), "*".to_owned()));
        }
        if fresh {
            Response {
                status: 304,
                headers,
                content_type: self.content_type,
                body: Vec::new(),
            }
        } else {
            Response::ok(self.content_type, self.body).with_headers(headers)
        }
    }
}

/// The demo page and the browser client, embedded in the binary (`GET /`, `GET /tidings.js`).
pub(crate) const STATIC_FILES: [StaticFile; 2] = [
    StaticFile {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../../clients/js/index.html"),
        public: false,
    },
    StaticFile {
        path: "/tidings.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../../clients/js/tidings.js"),
        public: true,
    },
];

/// The embedded file served at `path`, if any.
pub(crate) fn static_file(path: &str) -> Option<&'static StaticFile> {
    STATIC_FILES.iter().find(|f| f.path == path)
}

struct Inner<R> {
    rt: R,
    hub: Hub,
    config: ServerConfig,
    auth: Authenticator,
    cors: Cors,
    /// `http.ws_origins`: `/ws` and `/ws/bus`.
    ws_origins: OriginPolicy,
    /// `etp.origins`: `/etp`.
    etp_origins: OriginPolicy,
    /// The token `GET /metrics` requires (`http.metrics_token`), if any.
    metrics_token: Option<crate::auth::Secret>,
    /// Held (cloned) by every connection task; `None` once shutting down.
    live: Mutex<Option<flume::Sender<()>>>,
    /// Disconnects when every connection task has ended after shutdown started.
    idle: flume::Receiver<()>,
    /// Failed `accept`s (out of file descriptors, ...), and when the last was logged.
    accept_failures: Mutex<Repeated>,
    /// Connections refused over `limits.max_connections`, and when the last was logged.
    refused_server: Mutex<Repeated>,
    /// Connections refused over `http.max_connections_per_ip`, and when the last was logged.
    refused_per_ip: Mutex<Repeated>,
    /// Dropped when a graceful shutdown starts ([`Service::closing`]).
    closing_tx: Mutex<Option<flume::Sender<()>>>,
    closing: flume::Receiver<()>,
    /// The open connections per peer address, within their limits.
    slots: Slots,
    /// The TLS settings, with HTTPS.
    tls: Option<Arc<Tls>>,
}

/// Something that may repeat many times a second (failed `accept`s, refused connections):
/// counted for `/metrics`, logged at most every [`LOG_EVERY`].
#[derive(Default)]
struct Repeated {
    total: u64,
    /// When the last line was logged, and the failures since.
    logged: Option<(std::time::Instant, u64)>,
}

impl Repeated {
    /// Counts a failure at `now`; returns the failures not logged since the last line when this
    /// one is to be logged.
    fn record(&mut self, now: std::time::Instant) -> Option<u64> {
        self.total += 1;
        match &mut self.logged {
            Some((at, since)) if now < *at + LOG_EVERY => {
                *since += 1;
                None
            }
            logged => {
                let since = logged.map_or(0, |(_, n)| n);
                *logged = Some((now, 0));
                Some(since)
            }
        }
    }
}

/// How often failed `accept`s (they repeat every few milliseconds at the file-descriptor limit)
/// and refused connections are logged at most.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The tidings server, independent of the runtime: cheap to clone.
pub struct Service<R: Runtime> {
    inner: Arc<Inner<R>>,
}

impl<R: Runtime> Clone for Service<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<R: Runtime> fmt::Debug for Service<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

impl<R: Runtime> Service<R> {
    /// Starts the broker's driver on `rt` and returns the service.
    ///
    /// # Errors
    /// [`StartError`] for an invalid configuration.
    pub fn start(rt: R, config: ServerConfig) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let core = config.into_core().map_err(StartError::Config)?;
        let auth =
            Authenticator::with_limits(&config.auth, &core.limits).map_err(StartError::Auth)?;
        // Checked before the data directory is opened: a wrong file is reported as such.
        let tls = Tls::load(&config.tls, &config.store.dir).map_err(StartError::Tls)?;
        let (tls, renewals) = match tls {
            Some((tls, renewals)) => (Some(Arc::new(tls)), renewals),
            None => (None, None),
        };
        let hub = Hub::start(&rt, &config)?;
        let (live, idle) = flume::bounded(1);
        let cors = Cors::new(&config.http.cors_origins);
        let ws_origins = OriginPolicy::new(&config.http.ws_origins);
        let etp_origins = OriginPolicy::new(&config.etp.origins);
        let metrics_token = config.http.metrics_token().map_err(StartError::Config)?;
        let (closing_tx, closing) = flume::bounded(1);
        let slots = Slots::new(
            core.limits.max_connections,
            config.http.max_connections_per_ip,
            config.http.per_ip_exempt_loopback,
        );
        let service = Self {
            inner: Arc::new(Inner {
                rt,
                hub,
                config,
                auth,
                cors,
                ws_origins,
                etp_origins,
                metrics_token,
                live: Mutex::new(Some(live)),
                idle,
                accept_failures: Mutex::default(),
                refused_server: Mutex::default(),
                refused_per_ip: Mutex::default(),
                closing_tx: Mutex::new(Some(closing_tx)),
                closing,
                slots,
                tls,
            }),
        };
        service.watch_tls_files();
        if let Some(renewals) = renewals {
            let closing = service.closing();
            service
                .inner
                .rt
                .spawn(futures_lite::FutureExt::or(renewals, closing));
        }
        Ok(service)
    }

    /// Whether the listener speaks TLS (`tls.cert` and `tls.key` are set).
    pub fn is_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// Reads the TLS certificate and key files again (SIGHUP): new connections get the new
    /// certificate, open ones keep theirs. The files are also checked every 2 s and reloaded
    /// when they change.
    ///
    /// # Errors
    /// [`TlsError`] for files that cannot be used: the certificate in use stays.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        match &self.inner.tls {
            Some(tls) => tls.reload(false).map(|_| ()),
            None => Ok(()),
        }
    }

    /// The TLS side of the listener, with HTTPS.
    pub(crate) fn tls(&self) -> Option<&Tls> {
        self.inner.tls.as_deref()
    }

    /// With TLS, checks the certificate and key files for changes until the shutdown, and
    /// serves what they hold once they changed (a broken file is logged, the old certificate
    /// stays).
    fn watch_tls_files(&self) {
        let Some(tls) = self.inner.tls.clone().filter(|tls| tls.has_cert_files()) else {
            return;
        };
        let rt = self.inner.rt.clone();
        let closing = self.closing();
        self.inner.rt.spawn(async move {
            let checks = async {
                loop {
                    rt.sleep_until(rt.now() + RELOAD_CHECK).await;
                    match tls.reload(true) {
                        Ok(true) => tracing::info!("tls: the certificate files changed: reloaded"),
                        Ok(false) => {}
                        Err(e) => tracing::error!("{e}; the certificate in use stays"),
                    }
                }
            };
            futures_lite::FutureExt::or(checks, closing).await;
        });
    }

    /// The application API of this server's broker.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// One line describing who may do what (for the start-up log).
    pub fn describe_auth(&self) -> String {
        self.inner.auth.describe()
    }

    /// Runtime adapters report a failed `accept` here: it is counted
    /// (`tidings_accept_failures_total`) and logged at most every 10 s, with the number of
    /// failures since the last line.
    pub fn accept_failed(&self, error: &std::io::Error) {
        let now = self.inner.rt.now();
        let Ok(mut failures) = self.inner.accept_failures.lock() else {
            return;
        };
        if let Some(since) = failures.record(now) {
            tracing::warn!(
                "accept failed: {error} ({since} more failures since the last line; logged at most every {} s)",
                LOG_EVERY.as_secs()
            );
        }
    }

    /// The listener reports a connection it refused over a limit (`503 limit_reached`) here:
    /// it is counted (`tidings_refused_connections_total`) and logged at `warn`, the first one
    /// at once and then at most every 10 s, with the number refused since the last line.
    pub(crate) fn connection_refused(&self, peer: std::net::SocketAddr, full: Full) {
        let now = self.inner.rt.now();
        let repeated = match full {
            Full::Server(_) => &self.inner.refused_server,
            Full::Peer(_) => &self.inner.refused_per_ip,
        };
        let Ok(mut refused) = repeated.lock() else {
            return;
        };
        let Some(since) = refused.record(now) else {
            return;
        };
        let every = LOG_EVERY.as_secs();
        match full {
            Full::Server(max) => tracing::warn!(
                "connection from {} refused: {max} connections are open, the server's limit \
                 (limits.max_connections) ({since} more refused since the last line; logged at \
                 most every {every} s)",
                peer.ip()
            ),
            Full::Peer(max) => tracing::warn!(
                "connection from {} refused: {max} connections from that address are open, the \
                 limit per address (http.max_connections_per_ip). Behind a reverse proxy on \
                 another host every client has the proxy's address: raise the limit, or set it \
                 to 0 for none (docs/HTTP.md) ({since} more refused since the last line; logged \
                 at most every {every} s)",
                peer.ip()
            ),
        }
    }

    /// One line for the start-up log: the connection limits in force.
    pub fn describe_limits(&self) -> String {
        let http = &self.inner.config.http;
        let max = self.inner.config.limits.max_connections;
        match http.max_connections_per_ip {
            0 => format!(
                "connections: at most {max} (limits.max_connections); no limit per client \
                 address (http.max_connections_per_ip = 0)"
            ),
            per_ip => format!(
                "connections: at most {max} (limits.max_connections), {per_ip} per client \
                 address (http.max_connections_per_ip{}; behind a reverse proxy on another host \
                 raise it or set 0)",
                if http.per_ip_exempt_loopback {
                    ", loopback exempt"
                } else {
                    ", loopback included"
                }
            ),
        }
    }

    /// Socket options for an accepted TCP connection: no Nagle delay, and on Linux
    /// `http.tcp_user_timeout`, so that the keep-alives the server sends find half-open
    /// connections. Runtime adapters call it on every accepted socket (errors are ignored: the
    /// options are an optimisation).
    pub fn tune_tcp<'s, T>(&self, socket: &'s T)
    where
        socket2::SockRef<'s>: From<&'s T>,
    {
        let socket = socket2::SockRef::from(socket);
        let _ = socket.set_tcp_nodelay(true);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(timeout) = self.inner.config.http.tcp_user_timeout {
            let _ = socket.set_tcp_user_timeout(Some(timeout));
        }
    }

    /// A warning for the start-up log when the browser sends credentials the server accepts
    /// to pages of any site: cookie tokens are accepted and an `Origin` policy is `"*"`.
    pub fn cookie_origin_warning(&self) -> Option<String> {
        let cookie = self.inner.auth.token_cookie()?;
        let open: Vec<&str> = [
            (self.inner.ws_origins.allows_any(), "http.ws_origins"),
            (self.inner.etp_origins.allows_any(), "etp.origins"),
            (self.inner.cors.allows_any(), "http.cors_origins"),
        ]
        .into_iter()
        .filter_map(|(any, key)| any.then_some(key))
        .collect();
        if open.is_empty() {
            return None;
        }
        Some(format!(
            "tokens are accepted from the `{cookie}` cookie and {} allow{} any origin (\"*\"): a \
             page of any other site the user visits can open a WebSocket to this server (and \
             publish) carrying the user's cookie, as the user. List the sites that should use \
             tidings there instead (an empty list allows the server's own origin only), or set \
             auth.cookie = \"\" to read no cookie (docs/AUTH.md)",
            open.join(", "),
            if open.len() == 1 { "s" } else { "" }
        ))
    }

    /// Whether anonymous clients may do everything (worth a warning beyond loopback).
    pub fn auth_is_open(&self) -> bool {
        self.inner.auth.is_open()
    }

    /// A guard for a new connection, or `None` once the server is shutting down (the accept
    /// loop then closes the connection).
    pub fn track(&self) -> Option<ConnGuard> {
        let live = self.inner.live.lock().ok()?;
        live.as_ref().map(|l| ConnGuard(l.clone()))
    }

    /// Graceful shutdown: refuses new connections, closes every open one (WebSocket close 1001,
    /// SSE streams end after a `tidings-error` event), lets requests in flight finish (a publish
    /// is still answered), and returns when every connection has ended or the shutdown grace
    /// period is over.
    pub async fn shutdown(&self) {
        let deadline = self.inner.rt.now() + self.inner.config.timers.shutdown_grace;
        if let Ok(mut live) = self.inner.live.lock() {
            live.take();
        }
        if let Ok(mut closing) = self.inner.closing_tx.lock() {
            closing.take();
        }
        let _ = with_deadline(&self.inner.rt, deadline, self.inner.hub.shutdown()).await;
        let idle = self.inner.idle.recv_async();
        if with_deadline(&self.inner.rt, deadline, idle)
            .await
            .is_none()
        {
            tracing::warn!("shutdown: some connections were still open after the grace period");
        }
        // Publishes answered during the shutdown are stored; then the log is synced and closed.
        self.inner.hub.close_log().await;
    }

    /// What answers a request, decided from its head alone: the one routing of the server,
    /// used by its own listener and by embeddings (the axum router) alike (docs/HTTP.md).
    pub fn route(&self, head: &RequestHead) -> Route {
        let method = head.method.as_str();
        let serve = endpoint(&head.path).map(|e| e.serve);
        match (serve, method) {
            (Some(Serve::WebSocket(_)), "GET") => match self.check_upgrade(head) {
                Ok(upgrade) => Route::Upgrade(upgrade),
                Err(refusal) => Route::Respond(refusal.into_response()),
            },
            (Some(Serve::Sse), "GET") => match self.check_sse(head) {
                Ok(request) => Route::Sse(request),
                // Allowed cross-origin pages get the CORS headers, so they can read why.
                Err(refusal) => {
                    let cors = self.inner.cors.headers(head).unwrap_or_default();
                    Route::Respond(refusal.with_headers(cors).into_response())
                }
            },
            (Some(Serve::Presence), "GET") => match self.check_presence(head) {
                Ok(request) => Route::Presence(request),
                Err(refusal) => {
                    let cors = self.inner.cors.headers(head).unwrap_or_default();
                    Route::Respond(refusal.with_headers(cors).into_response())
                }
            },
            (
                Some(Serve::Sse | Serve::Publish | Serve::Subscriptions | Serve::Presence),
                "OPTIONS",
            ) => {
                let methods = endpoint(&head.path).map_or("", |e| e.methods);
                Route::Respond(self.inner.cors.preflight(head, methods))
            }
            (Some(Serve::Publish), "POST") => match self.check_publish(head) {
                Ok(request) => Route::ReadBody(request),
                Err(response) => Route::Respond(response),
            },
            (Some(Serve::Subscriptions), "POST") => match self.check_subscriptions(head) {
                Ok(request) => Route::ReadBody(request),
                Err(response) => Route::Respond(response),
            },
            (Some(Serve::Health), "GET") => {
                Route::Respond(Response::ok("text/plain; charset=utf-8", "ok\n"))
            }
            (Some(Serve::Metrics), "GET") => match self.check_metrics_token(head) {
                Err(refusal) => Route::Respond(refusal.into_response()),
                Ok(()) => Route::Metrics,
            },
            _ => Route::Respond(match (static_file(&head.path), method) {
                (Some(file), "GET") => file.response(head),
                _ => match allowed(&head.path) {
                    Some(allow) => Refusal::new(
                        405,
                        "method_not_allowed",
                        format!(
                            "{method} is not allowed on {}; use {allow}. This server has: {ROUTES}",
                            head.path
                        ),
                    )
                    .with_header("Allow", allow)
                    .into_response(),
                    None => Refusal::new(
                        404,
                        "not_found",
                        format!(
                            "there is nothing at {}. This server has: {ROUTES}",
                            head.path
                        ),
                    )
                    .into_response(),
                },
            }),
        }
    }

    /// Answers a request whose body was read after [`Service::route`] said
    /// [`Route::ReadBody`]: the publish, or the subscription change.
    pub async fn answer_body(
        &self,
        head: &RequestHead,
        request: BodyRequest,
        body: Vec<u8>,
    ) -> Response {
        let answer = match request.kind {
            BodyKind::Publish { topic, event, json } => {
                self.publish(topic, event, json, body).await
            }
            BodyKind::Subscriptions => self.update_subscriptions(head, &request.auth, body).await,
        };
        match answer {
            Ok(response) => response.with_headers(request.cors),
            Err(refusal) => refusal.with_headers(request.cors).into_response(),
        }
    }

    /// The settings of the server's HTTP connections.
    pub(crate) fn http_config(&self) -> &crate::config::HttpConfig {
        &self.inner.config.http
    }

    /// The runtime the service runs on.
    pub(crate) fn runtime(&self) -> &R {
        &self.inner.rt
    }

    /// Completes when a graceful shutdown starts: connections finish the requests in flight
    /// and close.
    pub(crate) fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let closing = self.inner.closing.clone();
        async move {
            // Nothing is ever sent: the sender is dropped when the shutdown starts.
            let _ = closing.recv_async().await;
        }
    }

    /// Counts open connections per peer address, within `limits.max_connections` and
    /// `http.max_connections_per_ip`.
    pub(crate) fn slots(&self) -> &Slots {
        &self.inner.slots
    }

    /// `GET /metrics` (after [`Route::Metrics`]): the Prometheus text.
    pub async fn metrics(&self) -> Response {
        match self.inner.hub.stats().await {
            Ok(mut stats) => {
                stats.accept_failures = self.inner.accept_failures.lock().map_or(0, |f| f.total);
                stats.refused_server = self.inner.refused_server.lock().map_or(0, |f| f.total);
                stats.refused_per_ip = self.inner.refused_per_ip.lock().map_or(0, |f| f.total);
                Response::ok(
                    "text/plain; version=0.0.4; charset=utf-8",
                    crate::metrics::render(&stats),
                )
            }
            Err(e) => Refusal::new(503, "shutting_down", e.to_string()).into_response(),
        }
    }

    /// With `http.metrics_token` set, `GET /metrics` needs `Authorization: Bearer <token>`:
    /// `401 unauthorized` (with `WWW-Authenticate: Bearer`) without it or with another token.
    fn check_metrics_token(&self, head: &RequestHead) -> Result<(), Refusal> {
        let Some(expected) = &self.inner.metrics_token else {
            return Ok(());
        };
        let given = head.header("authorization").and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        // In constant time (for equal lengths), so that timing does not reveal how much of a
        // guess was right.
        let right = given.is_some_and(|given| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                given.as_bytes(),
                expected.expose().as_bytes(),
            ))
        });
        if right {
            return Ok(());
        }
        Err(auth_refusal(&if given.is_some() {
            AuthError::unauthorized("the metrics token is not the configured one")
        } else {
            AuthError::no_token(
                "/metrics requires a token: send `Authorization: Bearer <http.metrics_token>`",
            )
        }))
    }

    fn authenticate(&self, head: &RequestHead) -> Result<Authenticated, Refusal> {
        let authenticated = self.inner.auth.authenticate(head);
        let authorized = authenticated.and_then(|a| self.inner.hub.run_authorizer(head, a));
        authorized.map_err(|e| auth_refusal(&e))
    }

    // ---- WebSocket -----------------------------------------------------------------------------

    /// Checks a `/ws` request: the upgrade headers, the `Origin` allow-list, authentication.
    ///
    /// # Errors
    /// The [`Refusal`] to answer with (400, 401, 403, 426).
    pub fn check_websocket(&self, head: &RequestHead) -> Result<Authenticated, Refusal> {
        check_upgrade_headers(head)?;
        self.inner
            .ws_origins
            .require(head, "WebSocket connections", "http.ws_origins")?;
        self.authenticate(head)
    }

    /// etp's origin rule (coder/websocket): a browser `Origin` must be the request's own host,
    /// or in `etp.origins` (`"*"`: any).
    fn check_etp_origin(&self, head: &RequestHead) -> Result<(), Refusal> {
        self.inner
            .etp_origins
            .require(head, "etp connections", "etp.origins")
    }

    /// The WebSocket settings: messages and frames limited to `max_frame_bytes` (larger ones
    /// close the connection with 1009) and a small read buffer per connection. tungstenite
    /// writes only control frames (data frames are framed and coalesced by the connection task),
    /// so its write buffer stays small: at most 8 KiB gathered before they go to the socket.
    pub fn websocket_config(&self) -> WebSocketConfig {
        let max = self.inner.config.limits.max_frame_bytes;
        WebSocketConfig::default()
            .read_buffer_size(self.inner.config.http.ws_read_buffer.max(256))
            .write_buffer_size(8 << 10)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    /// Checks a request to any of the WebSocket endpoints (`/ws` native, `/ws/bus` ksbus, `/etp`
    /// etp): the upgrade headers, the `Origin` allow-lists, authentication. The [`Upgrade`] says
    /// which protocol the connection speaks; an embedding upgrades the connection with
    /// [`Service::upgrade_config`] and runs it with [`Service::run_upgraded`].
    ///
    /// # Errors
    /// The [`Refusal`] to answer with (400, 401, 403, 404 for a path that is not a WebSocket
    /// endpoint, 426).
    pub fn check_upgrade(&self, head: &RequestHead) -> Result<Upgrade, Refusal> {
        let checked = self.check_upgrade_request(head);
        if let Err(refusal) = &checked {
            self.inner.hub.refused(head, refusal);
        }
        checked
    }

    fn check_upgrade_request(&self, head: &RequestHead) -> Result<Upgrade, Refusal> {
        let c = &self.inner.config;
        let ws = match endpoint(&head.path) {
            Some(Endpoint {
                serve: Serve::WebSocket(ws),
                ..
            }) => ws,
            _ => {
                return Err(Refusal::new(
                    404,
                    "not_found",
                    format!(
                        "{} is not a WebSocket endpoint (those are {})",
                        head.path,
                        websocket_paths()
                    ),
                ));
            }
        };
        // Each endpoint its own `Origin` policy: `/etp` etp's, the others `http.ws_origins`.
        let auth = match ws.origins {
            Origins::Etp => {
                self.check_etp_origin(head)?;
                check_upgrade_headers(head)?;
                self.authenticate(head)?
            }
            Origins::Server => self.check_websocket(head)?,
        };
        Ok(Upgrade {
            auth,
            codec: (ws.codec)(c),
            max_message: (ws.max_message)(c),
            slot: None,
        })
    }

    /// The WebSocket settings for an accepted upgrade: [`Service::websocket_config`] with the
    /// message limit of its protocol (etp's `read_limit`).
    pub fn upgrade_config(&self, upgrade: &Upgrade) -> WebSocketConfig {
        self.websocket_config()
            .max_message_size(Some(upgrade.max_message))
            .max_frame_size(Some(upgrade.max_message))
    }

    /// Runs a connection upgraded after [`Service::check_upgrade`] until it ends, in the protocol
    /// of its endpoint. `head` is dropped as soon as the connect hook has seen it. The future owns
    /// everything it needs: spawn it, so that the connection's task is exactly its size.
    pub fn run_upgraded<S>(
        &self,
        ws: WebSocketStream<S>,
        head: RequestHead,
        upgrade: Upgrade,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut ctx = self.conn_ctx();
        ctx._slot = upgrade.slot;
        crate::ws::run(ctx, ws, head, upgrade.auth, upgrade.codec)
    }

    /// Runs an upgraded WebSocket connection (after [`Service::check_websocket`]) until it ends.
    /// `head` is dropped as soon as the connect hook has seen it. The future owns everything it
    /// needs: spawn it, so that the connection's task is exactly its size.
    pub fn run_websocket<S>(
        &self,
        ws: WebSocketStream<S>,
        head: RequestHead,
        auth: Authenticated,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Not an `async` wrapper: it would store the connection twice.
        let codec = Box::new(tidings_core::native::NativeCodec);
        crate::ws::run(self.conn_ctx(), ws, head, auth, codec)
    }

    fn conn_ctx(&self) -> ConnCtx<R> {
        ConnCtx {
            rt: self.inner.rt.clone(),
            hub: self.inner.hub.clone(),
            write_timeout: self.inner.config.http.write_timeout,
            close_grace: self.inner.config.timers.close_grace,
            _guard: self.track(),
            _slot: None,
        }
    }

    // ---- SSE -----------------------------------------------------------------------------------

    /// Checks a `/sse` request: topics (at least one, valid patterns), the resume cursor
    /// (`Last-Event-ID` header, else `last_event_id` parameter), CORS, authentication and the
    /// subscribe grants.
    ///
    /// # Errors
    /// The [`Refusal`] to answer with (400, among them `limit_reached` for too many topics; 401;
    /// 403).
    pub fn check_sse(&self, head: &RequestHead) -> Result<SseRequest, Refusal> {
        let cors = self.inner.cors.headers(head)?;
        let limits = self.inner.hub.limits();
        // `channel` is gosse's name for a topic.
        let mut patterns = head
            .query_params("topic")
            .chain(head.query_params("channel"))
            .map(|t| Pattern::parse(t, limits.names))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Refusal::protocol(&e))?;
        let client_id = head
            .query_param("client_id")
            .map(|id| Name::parse("client_id", id, limits.max_name_len))
            .transpose()
            .map_err(|e| Refusal::protocol(&e))?;
        let presence = head
            .query_params("presence")
            .map(|t| Topic::parse(t, limits.names))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Refusal::protocol(&e))?;
        if presence.len() > limits.max_subscriptions {
            return Err(Refusal::protocol(&ProtocolError::new(
                ErrorCode::LimitReached,
                format!(
                    "{} presence topics requested; at most {} are allowed per stream",
                    presence.len(),
                    limits.max_subscriptions
                ),
            )));
        }
        if patterns.is_empty() && client_id.is_none() && presence.is_empty() {
            return Err(Refusal::new(
                400,
                "bad_field",
                "at least one topic (or channel) parameter is required, e.g. /sse?topic=chat.* (wildcards: * for one segment, > for the rest), unless a client_id resumes a session",
            ));
        }
        if patterns.len() > limits.max_subscriptions {
            return Err(Refusal::protocol(&ProtocolError::new(
                ErrorCode::LimitReached,
                format!(
                    "{} topics requested; at most {} are allowed per stream",
                    patterns.len(),
                    limits.max_subscriptions
                ),
            )));
        }
        let last = head
            .header("last-event-id")
            .or_else(|| head.query_param("last_event_id"))
            .map(str::trim)
            .filter(|c| !c.is_empty());
        let from = last
            .map(str::parse::<Cursor>)
            .transpose()
            .map_err(|e| Refusal::protocol(&e))?;
        let auth = self.authenticate(head)?;
        auth.check_subscribe(&patterns)
            .map_err(|e| auth_refusal(&e))?;
        // Watching a presence needs what the presence needs: the right to subscribe to the
        // topic (a declared private topic is checked by the broker, as for subscriptions).
        if let Some(t) = presence
            .iter()
            .find(|t| !auth.grants.may_subscribe(&Pattern::exact(t)))
        {
            return Err(auth_refusal(&AuthError::forbidden(format!(
                "the presence of {:?} is not granted: it needs the right to subscribe to that \
                 topic",
                t.as_str()
            ))));
        }
        if let Some(id) = &client_id
            && !auth.grants.may_identify(id)
        {
            return Err(auth_refusal(&AuthError::forbidden(format!(
                "not allowed to use client id {:?}",
                id.as_str()
            ))));
        }
        // gosse's broadcast: every stream also receives the broadcast topic, if it may.
        if let Some(topic) = &self.inner.config.sse.broadcast_topic
            && let Ok(broadcast) = Pattern::parse(topic, limits.names)
            && !patterns.contains(&broadcast)
            && patterns.len() < limits.max_subscriptions
            && auth.grants.may_subscribe(&broadcast)
        {
            patterns.push(broadcast);
        }
        let mut headers = self.inner.config.sse.response_headers();
        headers.extend(cors);
        Ok(SseRequest {
            patterns,
            from,
            auth,
            headers,
            client_id,
            presence,
        })
    }

    /// Opens an SSE stream (after [`Service::check_sse`]) as a body of chunks, for an embedding
    /// whose HTTP server writes the response: send the request's `headers` (the stream headers
    /// with `sse.headers`, and CORS), then the chunks.
    pub fn sse_body(&self, head: &RequestHead, request: SseRequest) -> crate::sse::SseBody {
        crate::sse::SseBody::open(&self.inner.hub, head, request, None)
    }

    /// [`Service::sse_body`] on a connection of the server's listener, which reports a write
    /// timeout through `stall`.
    pub(crate) fn sse_body_on(
        &self,
        head: &RequestHead,
        request: SseRequest,
        stall: Option<WriteStall>,
    ) -> crate::sse::SseBody {
        crate::sse::SseBody::open(&self.inner.hub, head, request, stall)
    }

    // ---- publish -------------------------------------------------------------------------------

    /// `POST /publish`, before its body: CORS, who is asking, the topic and event name, the
    /// grant. The body is read only for a request that may publish.
    fn check_publish(&self, head: &RequestHead) -> Result<BodyRequest, Response> {
        let cors = self
            .inner
            .cors
            .headers(head)
            .map_err(Refusal::into_response)?;
        let refuse = |r: Refusal| r.with_headers(cors.clone()).into_response();
        let limits = self.inner.hub.limits();
        let auth = self.authenticate(head).map_err(refuse)?;
        let topic = head
            .query_param("topic")
            .or_else(|| head.query_param("channel"))
            .ok_or_else(|| {
                refuse(Refusal::new(
                    400,
                    "bad_field",
                    "the topic (or channel) parameter is required: POST /publish?topic=NAME[&event=NAME]",
                ))
            })?;
        let topic = Topic::parse(topic, limits.names).map_err(|e| refuse(Refusal::protocol(&e)))?;
        let event = head
            .query_param("event")
            .filter(|e| !e.is_empty())
            .map(|e| native::event_name(e, limits.max_name_len))
            .transpose()
            .map_err(|e| refuse(Refusal::protocol(&e)))?;
        auth.check_publish(&topic)
            .map_err(|e| refuse(auth_refusal(&e)))?;
        let json = head.header("content-type").is_some_and(is_json);
        Ok(BodyRequest {
            kind: BodyKind::Publish { topic, event, json },
            auth,
            cors,
            limit: limits.max_frame_bytes,
        })
    }

    async fn publish(
        &self,
        topic: Topic,
        event: Option<Name>,
        json: bool,
        body: Vec<u8>,
    ) -> Result<Response, Refusal> {
        let payload = if json {
            Payload::json(body)
        } else {
            Payload::text(body)
        }
        .map_err(|e| Refusal::protocol(&e))?;
        match self.inner.hub.publish(topic, event, payload).await {
            Ok(cursor) => {
                let body = format!("{{\"id\":\"{cursor}\"}}");
                Ok(Response::ok("application/json", body))
            }
            Err(HubError::Failed(e)) => Err(Refusal::protocol(&e)),
            Err(e) => Err(Refusal::new(503, "shutting_down", e.to_string())),
        }
    }

    // ---- presence ------------------------------------------------------------------------------

    /// `GET /presence?topic=T`, from its head: CORS, the topic, who is asking.
    fn check_presence(&self, head: &RequestHead) -> Result<PresenceRequest, Refusal> {
        let cors = self.inner.cors.headers(head)?;
        let limits = self.inner.hub.limits();
        let topic = head.query_param("topic").ok_or_else(|| {
            Refusal::new(
                400,
                "bad_field",
                "the topic parameter is required, e.g. /presence?topic=chat.room1 (a topic, \
                 not a pattern: who would receive an event published there)",
            )
        })?;
        let topic = Topic::parse(topic, limits.names).map_err(|e| Refusal::protocol(&e))?;
        let auth = self.authenticate(head)?;
        Ok(PresenceRequest {
            topic,
            grants: Arc::new(auth.grants),
            cors,
        })
    }

    /// Answers `GET /presence`: `200` with the presence as JSON, `403` when the requester may not
    /// subscribe to the topic.
    pub async fn presence(&self, request: PresenceRequest) -> Response {
        let PresenceRequest {
            topic,
            grants,
            cors,
        } = request;
        let answer = match self
            .inner
            .hub
            .presence_as(topic.clone(), Some(grants))
            .await
        {
            Ok(presence) => Response::ok("application/json", presence.to_json(&topic)),
            Err(HubError::Failed(e)) => Refusal::protocol(&e).into_response(),
            Err(e) => Refusal::new(503, "shutting_down", e.to_string()).into_response(),
        };
        answer.with_headers(cors)
    }

    // ---- subscriptions over HTTP (gochan's update_subscriptions) --------------------------------

    /// `POST /subscriptions`, before its body: CORS, who is asking, and whether it may use a
    /// client id at all (a requester who may use none has nothing to change), or the one in the
    /// query when there is one. Whether the id belongs to another principal is the broker's
    /// decision, after the body.
    fn check_subscriptions(&self, head: &RequestHead) -> Result<BodyRequest, Response> {
        let cors = self
            .inner
            .cors
            .headers(head)
            .map_err(Refusal::into_response)?;
        let refuse = |r: Refusal| r.with_headers(cors.clone()).into_response();
        let auth = self.authenticate(head).map_err(refuse)?;
        if auth.grants.client_ids == tidings_core::ClientIds::None {
            return Err(refuse(auth_refusal(&AuthError::forbidden(
                "changing a client's subscriptions needs the right to use its client id",
            ))));
        }
        // An id in the query is checked now, one in the body only after it (a body naming
        // another id than the query is refused, so this refuses nothing the body could allow).
        if let Some(id) = head.query_param("client_id") {
            let max = self.inner.hub.limits().max_name_len;
            if let Ok(id) = Name::parse("client_id", id, max)
                && !auth.grants.may_identify(&id)
            {
                return Err(refuse(auth_refusal(&AuthError::forbidden(format!(
                    "not allowed to use client id {:?}",
                    id.as_str()
                )))));
            }
        }
        Ok(BodyRequest {
            kind: BodyKind::Subscriptions,
            auth,
            cors,
            limit: self.inner.hub.limits().max_frame_bytes,
        })
    }

    /// `POST /subscriptions`: changes the subscriptions of a client (a live stream or a parked
    /// session), authorized like the stream itself: the request's grants must allow claiming the
    /// client id and subscribing to what is added.
    async fn update_subscriptions(
        &self,
        head: &RequestHead,
        auth: &Authenticated,
        body: Vec<u8>,
    ) -> Result<Response, Refusal> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Change {
            client_id: Option<String>,
            #[serde(default)]
            add: Vec<String>,
            #[serde(default)]
            remove: Vec<String>,
        }
        let limits = self.inner.hub.limits();
        let bad = |message: String| Refusal::new(400, "bad_field", message);
        let change = if body.iter().all(u8::is_ascii_whitespace) {
            Change {
                client_id: None,
                add: Vec::new(),
                remove: Vec::new(),
            }
        } else {
            serde_json::from_slice::<Change>(&body).map_err(|e| {
                bad(format!(
                    "the body must be JSON {{\"client_id\": ID, \"add\": [topics], \"remove\": [topics]}}: {e}"
                ))
            })?
        };
        let client_id = match (change.client_id.as_deref(), head.query_param("client_id")) {
            (Some(body), Some(query)) if body != query => {
                return Err(bad(format!(
                    "client_id {body:?} in the body and {query:?} in the query differ"
                )));
            }
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => {
                return Err(bad(
                    "client_id is required (in the JSON body or the query)".to_owned()
                ));
            }
        };
        let client_id = Name::parse("client_id", client_id, limits.max_name_len)
            .map_err(|e| Refusal::protocol(&e))?;
        let parse = |list: Vec<String>, param: &str| {
            list.iter()
                .map(String::as_str)
                .chain(head.query_params(param))
                .map(|t| Pattern::parse(t, limits.names))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Refusal::protocol(&e))
        };
        let add = parse(change.add, "add")?;
        let remove = parse(change.remove, "remove")?;
        if add.len() + remove.len() > 2 * limits.max_subscriptions {
            return Err(Refusal::protocol(&ProtocolError::new(
                ErrorCode::LimitReached,
                format!(
                    "at most {} topics may be added or removed at once",
                    2 * limits.max_subscriptions
                ),
            )));
        }
        if !auth.grants.may_identify(&client_id) {
            return Err(auth_refusal(&AuthError::forbidden(format!(
                "not allowed to use client id {:?}",
                client_id.as_str()
            ))));
        }
        auth.check_subscribe(&add).map_err(|e| auth_refusal(&e))?;
        let by = Some(Arc::new(auth.grants.clone()));
        match self
            .inner
            .hub
            .update_subscriptions_as(by, client_id.clone(), add, remove)
            .await
        {
            Ok(Ok(change)) => {
                let list =
                    |p: &[Pattern]| p.iter().map(|p| p.as_str().to_owned()).collect::<Vec<_>>();
                let body = serde_json::json!({
                    "client_id": client_id.as_str(),
                    "subscriptions": list(&change.subscriptions),
                    "added": list(&change.added),
                    "removed": list(&change.removed),
                    "connected": change.connected,
                });
                Ok(Response::ok("application/json", body.to_string()))
            }
            Ok(Err(e)) => Err(Refusal::protocol(&e)),
            Err(e) => Err(Refusal::new(503, "shutting_down", e.to_string())),
        }
    }
}

impl Refusal {
    /// Adds headers.
    #[must_use]
    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers.extend(headers);
        self
    }
}

/// `application/json`, or any `application/...+json`, with or without parameters.
/// The answer to a refused authentication or authorization: `401 unauthorized` or
/// `403 forbidden`, with the `WWW-Authenticate` header of RFC 6750 (docs/AUTH.md).
fn auth_refusal(e: &AuthError) -> Refusal {
    let code = if e.status() == 401 {
        "unauthorized"
    } else {
        "forbidden"
    };
    Refusal::new(e.status(), code, e.message().to_string())
        .with_header("WWW-Authenticate", e.www_authenticate())
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The WebSocket upgrade headers of a request (RFC 6455 §4.2.1): `426` or `400` when missing.
fn check_upgrade_headers(head: &RequestHead) -> Result<(), Refusal> {
    let has_token = |name: &str, token: &str| {
        head.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::new(
            426,
            "upgrade_required",
            "/ws is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket",
        )
        .with_header("Upgrade", "websocket"));
    }
    if head.header("sec-websocket-version") != Some("13") {
        return Err(Refusal::new(
            426,
            "upgrade_required",
            "only WebSocket version 13 is supported",
        )
        .with_header("Sec-WebSocket-Version", "13"));
    }
    if head.header("sec-websocket-key").is_none_or(str::is_empty) {
        return Err(Refusal::new(
            400,
            "bad_request",
            "the Sec-WebSocket-Key header is missing",
        ));
    }
    Ok(())
}

/// The methods a known path allows.
fn allowed(path: &str) -> Option<&'static str> {
    endpoint(path)
        .map(|e| e.methods)
        .or_else(|| static_file(path).map(|_| "GET"))
}

/// Every connection's task is as large as its future's largest state, for as long as the
/// connection lives: these keep the per-connection memory small (short-lived large steps are
/// boxed, long-lived connections run on tasks of their own, no buffers in futures).
#[cfg(test)]
mod task_sizes {
    use super::*;
    use std::mem::size_of_val;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Instant;

    #[derive(Clone)]
    pub(super) struct Rt;

    impl Runtime for Rt {
        fn spawn<F: Future<Output = ()> + Send + 'static>(&self, _: F) {}

        fn now(&self) -> Instant {
            Instant::now()
        }

        fn sleep_until(&self, _: Instant) -> impl Future<Output = ()> + Send + 'static {
            std::future::pending()
        }
    }

    /// A stand-in socket (the futures are measured, never polled).
    struct Io;

    impl AsyncRead for Io {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Io {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    #[test]
    fn connection_tasks_stay_small() {
        let svc = Service::start(Rt, ServerConfig::default()).unwrap();
        let head = RequestHead::default();
        let auth = svc.authenticate(&head).unwrap();
        let peer = "127.0.0.1:1".parse().unwrap();
        let http = size_of_val(&crate::server::connection(svc.clone(), Io, peer));
        let request = SseRequest {
            patterns: vec![],
            from: None,
            auth: auth.clone(),
            headers: vec![],
            client_id: None,
            presence: vec![],
        };
        let sse = size_of_val(&svc.sse_body(&head, request));
        let ws = futures_lite::future::block_on(WebSocketStream::from_raw_socket(
            Io,
            async_tungstenite::tungstenite::protocol::Role::Server,
            None,
        ));
        let ws = size_of_val(&svc.run_websocket(ws, head, auth));
        eprintln!("task sizes: http connection {http}, sse body {sse}, ws {ws} bytes");
        // Measured 5,632 bytes: hyper's connection state, in every HTTP connection's task (an
        // SSE stream's too, besides hyper's buffers) for the connection's life.
        assert!(http <= 6144, "{http}");
        // Measured 88 and 888 bytes (issue 15; the WebSocket was 904 before, 1,608 and 984 for
        // the stream and the WebSocket before the request was used up outside the futures,
        // issue 7): these are in every idle connection's memory.
        assert!(sse <= 256, "{sse}");
        assert!(ws <= 1024, "{ws}");
    }
}

#[cfg(test)]
mod cookie_warning {
    use super::task_sizes::Rt;
    use super::*;

    fn warning(toml: &str) -> Option<String> {
        let config = ServerConfig::from_toml(toml).unwrap();
        Service::start(Rt, config).unwrap().cookie_origin_warning()
    }

    const JWT: &str = "[auth.jwt]\nsecret = \"0123456789abcdef0123456789abcdef\"\n";

    #[test]
    fn when_cookie_tokens_meet_an_origin_policy_of_star() {
        // The defaults: no tokens accepted at all; then tokens, with same-origin policies.
        assert_eq!(warning(""), None);
        assert_eq!(warning(JWT), None);
        let w = warning(&format!("[http]\nws_origins = [\"*\"]\n{JWT}")).unwrap();
        assert!(w.contains("`tidings_token` cookie"), "{w}");
        assert!(w.contains("http.ws_origins allows any origin"), "{w}");
        assert!(w.contains("WebSocket"), "{w}");
        let w = warning(&format!(
            "[http]\ncors_origins = [\"*\"]\n[etp]\norigins = [\"*\"]\n{JWT}"
        ))
        .unwrap();
        assert!(
            w.contains("etp.origins, http.cors_origins allow any"),
            "{w}"
        );
        // Listed origins, or no cookie read: nothing to warn about.
        assert_eq!(
            warning(&format!(
                "[http]\nws_origins = [\"https://a.example\"]\n{JWT}"
            )),
            None
        );
        assert_eq!(
            warning(&format!(
                "[http]\nws_origins = [\"*\"]\n[auth]\ncookie = \"\"\n{JWT}"
            )),
            None
        );
        // "*" without tokens: nothing carries a user's identity.
        assert_eq!(warning("[http]\nws_origins = [\"*\"]"), None);
    }
}

#[cfg(test)]
mod accept_failures {
    use std::time::{Duration, Instant};

    use super::Repeated;

    #[test]
    fn are_all_counted_and_logged_at_most_every_ten_seconds() {
        let t0 = Instant::now();
        let mut f = Repeated::default();
        assert_eq!(f.record(t0), Some(0), "the first one is logged");
        for i in 1..=200 {
            // Every 50 ms, as the accept loops retry, for 10 s.
            let logged = f.record(t0 + Duration::from_millis(50 * i));
            if i == 200 {
                assert_eq!(
                    logged,
                    Some(199),
                    "after 10 s, with the count of the others"
                );
            } else {
                assert_eq!(logged, None, "failure {i} within 10 s of the last line");
            }
        }
        assert_eq!(f.total, 201);
    }
}
