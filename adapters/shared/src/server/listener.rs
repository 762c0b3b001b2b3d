//! The accept loop and one hyper connection per accepted socket.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};
use futures_lite::FutureExt as _;
use hyper_util::server::conn::auto;

use super::activity::Activity;
use super::rt::{Clock, Exec, HyperIo};
use super::timed::TimedIo;
use super::{Answer, Upgrading, answer, answer_on, body};
use crate::ctx::{Full, Slot, WriteStall};
use crate::http::Refusal;
use crate::io::with_timeout;
use crate::request::{MAX_HEAD_BYTES, MAX_HEADERS};
use crate::runtime::Runtime;
use crate::service::Service;
use crate::tls::MaybeTls;

/// Where connections come from: a runtime adapter's TCP listener, yielding `futures-io`
/// streams (the server adds TLS when it is configured).
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and its peer's address. Errors (out of file descriptors, ...) are
    /// counted and logged, and accepting goes on after a short pause.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

/// How long a refused connection (over a connection limit) may take to send its request
/// and read the `503`.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// HTTP/2 streams one connection may have open at once (20 `EventSource`s of one page and
/// more fit).
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// How long the accept queue is drained at shutdown: accepting stops once no connection came
/// for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(50);

/// Accepts connections until [`Service::shutdown`] starts, and serves each on a task of the
/// runtime: HTTP/1.1 with keep-alive, or HTTP/2 when the client starts with its preface.
///
/// At shutdown, the connections already in the kernel's accept queue (whose clients may have
/// written a publish) are accepted too and each request on them is answered (`503
/// shutting_down` with `Retry-After`) before the listener is closed: none is reset unanswered.
/// The shutdown waits for them.
pub async fn serve<R: Runtime, L: Listener>(service: Service<R>, mut listener: L) {
    let rt = service.runtime().clone();
    let guard = service.track();
    accept_until_closing(&service, &mut listener, |stream, peer| {
        rt.spawn(connection(service.clone(), stream, peer));
    })
    .await;
    let mut drained = Vec::new();
    while let Some(Ok((stream, peer))) = with_timeout(&rt, DRAIN_QUIET, listener.accept()).await {
        drained.push(connection_at_shutdown(service.clone(), stream, peer));
    }
    drop(listener);
    if !drained.is_empty() {
        tracing::debug!(
            "answering {} connections accepted at shutdown",
            drained.len()
        );
    }
    futures_util::future::join_all(drained).await;
    drop(guard);
    tracing::debug!("no longer accepting connections");
}

/// The TLS handshake, with TLS (within `http.read_timeout`): `None` if it failed, or for an
/// ACME validation (done with the handshake).
async fn secure<R, S>(service: &Service<R>, stream: S, peer: SocketAddr) -> Option<MaybeTls<S>>
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = service.tls() else {
        return Some(MaybeTls::Plain(stream));
    };
    let read_timeout = service.http_config().read_timeout;
    match with_timeout(service.runtime(), read_timeout, tls.accept(stream)).await {
        Some(Ok(Some(stream))) => Some(MaybeTls::Tls(Box::new(stream))),
        Some(Ok(None)) => None,
        Some(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            None
        }
        None => {
            tracing::debug!(%peer, "TLS handshake not done within http.read_timeout");
            None
        }
    }
}

/// A connection accepted at shutdown: its request is answered (`503 shutting_down`), then it is
/// closed, within [`REFUSAL_TIME`].
async fn connection_at_shutdown<R, S>(service: Service<R>, stream: S, peer: SocketAddr)
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(stream) = secure(&service, stream, peer).await else {
        return;
    };
    let io = HyperIo::new(TimedIo::new(
        stream,
        service.runtime().clone(),
        service.http_config().write_timeout,
        WriteStall::default(),
    ));
    let mut builder = builder(&service);
    builder.http1().keep_alive(false);
    let answering = service.clone();
    let handler = hyper::service::service_fn(move |req| {
        let service = answering.clone();
        async move { Ok::<_, Infallible>(answer(&service, req).await.response) }
    });
    let conn = builder.serve_connection(io, handler);
    if with_timeout(service.runtime(), REFUSAL_TIME, conn)
        .await
        .is_none()
    {
        tracing::debug!(%peer, "a connection accepted at shutdown sent no request in time");
    }
}

/// Answers every request of the connections from `listener` with a permanent redirect (`308`)
/// to the same host and target over `https://` on `https_port` (`tls.redirect_http`), until
/// [`Service::shutdown`] starts.
pub async fn redirect<R: Runtime, L: Listener>(
    service: Service<R>,
    mut listener: L,
    https_port: u16,
) {
    let rt = service.runtime().clone();
    accept_until_closing(&service, &mut listener, |stream, peer| {
        let slot = match service.slots().take(peer.ip()) {
            Ok(slot) => slot,
            Err(full) => {
                service.connection_refused(peer, full);
                return; // over a limit: closed at once
            }
        };
        let service = service.clone();
        rt.spawn(async move {
            let _slot = slot;
            let mut builder = builder(&service);
            builder.http1().keep_alive(false);
            let handler = hyper::service::service_fn(move |req: http::Request<_>| {
                let response = body::plain(to_https(&req, https_port));
                async move { Ok::<_, Infallible>(response) }
            });
            let io = HyperIo::new(TimedIo::new(
                stream,
                service.runtime().clone(),
                service.http_config().write_timeout,
                WriteStall::default(),
            ));
            let conn = builder.serve_connection(io, handler);
            let _ = with_timeout(service.runtime(), REFUSAL_TIME, conn).await;
        });
    })
    .await;
}

/// Hands every connection `listener` accepts to `accepted`, until [`Service::shutdown`]
/// starts. A failed `accept` (out of file descriptors, ...) is counted and logged, and
/// accepting goes on after 50 ms instead of spinning.
async fn accept_until_closing<R: Runtime, L: Listener>(
    service: &Service<R>,
    listener: &mut L,
    mut accepted: impl FnMut(L::Stream, SocketAddr),
) {
    let rt = service.runtime();
    loop {
        let closing = async {
            service.closing().await;
            None
        };
        let next = async { Some(listener.accept().await) };
        match closing.or(next).await {
            None => break,
            Some(Ok((stream, peer))) => accepted(stream, peer),
            Some(Err(e)) => {
                service.accept_failed(&e);
                rt.sleep_until(rt.now() + Duration::from_millis(50)).await;
            }
        }
    }
}

/// `308 Permanent Redirect` to the request's URL over `https://` on `port`.
fn to_https<B>(req: &http::Request<B>, port: u16) -> crate::http::Response {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("localhost");
    // The host without its port (an IPv6 literal keeps its brackets).
    let name = match host.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .map_or(host, |(v6, _)| &host[..v6.len() + 2]),
        None => host.split_once(':').map_or(host, |(name, _)| name),
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = match port {
        443 => format!("https://{name}{target}"),
        port => format!("https://{name}:{port}{target}"),
    };
    crate::http::Response {
        status: 308,
        headers: vec![("Location".to_owned(), location.clone())],
        content_type: "text/plain; charset=utf-8",
        body: format!("this server is at {location}\n").into_bytes(),
    }
}

/// The hyper settings of every connection.
fn builder<R: Runtime>(service: &Service<R>) -> auto::Builder<Exec<R>> {
    let rt = service.runtime();
    let mut builder = auto::Builder::new(Exec(rt.clone()));
    builder
        .http1()
        .timer(Clock(rt.clone()))
        // Also the idle time allowed between two requests of a keep-alive connection.
        .header_read_timeout(service.http_config().read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES)
        // Header names as most servers send them (Go's among them): clients that compare them
        // case-sensitively exist. (Not `pipeline_flush`: with it, hyper 1.12 does not send its
        // `400` for a malformed request.)
        .title_case_headers(true);
    builder
        .http2()
        .timer(Clock(rt.clone()))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    builder
}

/// Serves one accepted connection until it closes.
pub(crate) async fn connection<R, S>(service: Service<R>, stream: S, peer: SocketAddr)
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(_guard) = service.track() else {
        // Accepted as the shutdown started: its request is answered, not reset.
        return connection_at_shutdown(service, stream, peer).await;
    };
    let rt = service.runtime().clone();
    // Counted from here: a connection in its TLS handshake holds a place too.
    let slot = service.slots().take(peer.ip());
    let Some(stream) = secure(&service, stream, peer).await else {
        return;
    };
    let stall = WriteStall::default();
    let io = HyperIo::new(TimedIo::new(
        stream,
        rt.clone(),
        service.http_config().write_timeout,
        stall.clone(),
    ));
    let builder = builder(&service);
    let slot = match slot {
        Ok(slot) => slot,
        Err(full) => {
            service.connection_refused(peer, full);
            refuse(&builder, &service, io, peer, full).await;
            return;
        }
    };
    let activity = Activity::default();
    let answering = service.clone();
    let requests = activity.clone();
    let handler = hyper::service::service_fn(move |req| {
        let service = answering.clone();
        let slot = slot.clone();
        let stall = stall.clone();
        let active = requests.begin();
        async move {
            let Answer { response, upgrade } = answer_on(&service, req, Some(&stall)).await;
            if let Some(upgrading) = upgrade {
                let rt = service.runtime().clone();
                rt.spawn(run_upgrade::<R, S>(service, upgrading, slot));
            }
            // Active until its body is sent (a stream: as long as it lasts).
            Ok::<_, Infallible>(response.map(|body| body.holding(active)))
        }
    });
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, handler));
    let closing = service.closing();
    let idle = activity.idle_for(&rt, service.http_config().read_timeout);
    let served = async { Some(conn.as_mut().await) }
        .or(async {
            closing.await;
            None
        })
        .or(async {
            idle.await;
            tracing::debug!(%peer, "closing a connection idle for http.read_timeout");
            None
        })
        .await;
    let served = match served {
        Some(served) => Some(served),
        None => {
            // Requests in flight are answered; an idle connection closes now (HTTP/2: after
            // its GOAWAY and a PING round trip, which a silent peer does not make: bounded).
            conn.as_mut().graceful_shutdown();
            with_timeout(&rt, service.http_config().read_timeout, conn).await
        }
    };
    match served {
        Some(Err(e)) => tracing::debug!(%peer, "connection ended: {e}"),
        None => tracing::debug!(%peer, "connection dropped: it did not close in time"),
        Some(Ok(())) => {}
    }
}

/// Answers every request of a connection over a limit with `503 limit_reached`, then closes
/// it, all within [`REFUSAL_TIME`].
async fn refuse<R, S>(
    builder: &auto::Builder<Exec<R>>,
    service: &Service<R>,
    io: HyperIo<TimedIo<MaybeTls<S>, R>>,
    peer: SocketAddr,
    full: Full,
) where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let message = match full {
        Full::Server(max) => format!(
            "the server has {max} connections open, its limit (limits.max_connections); try again later"
        ),
        Full::Peer(max) => format!(
            "{max} connections from {} are open, the limit per address (http.max_connections_per_ip); close some first",
            peer.ip()
        ),
    };
    tracing::debug!(%peer, "connection refused: {message}");
    let refusal = Refusal::new(503, "limit_reached", message).with_header("Connection", "close");
    let handler = hyper::service::service_fn(move |_req| {
        let response = body::plain(refusal.clone().into_response());
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = builder.clone();
    builder.http1().keep_alive(false);
    let conn = builder.serve_connection(io, handler);
    let _ = with_timeout(service.runtime(), REFUSAL_TIME, conn).await;
}

/// Finishes a WebSocket upgrade: takes the connection back from hyper and runs it on a task of
/// its own.
async fn run_upgrade<R, S>(service: Service<R>, upgrading: Upgrading, slot: Slot)
where
    R: Runtime,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Upgrading {
        on,
        head,
        mut upgrade,
    } = upgrading;
    let upgraded = match on.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!("WebSocket upgrade failed: {e}");
            return;
        }
    };
    // The socket itself, not hyper's wrapper: the WebSocket task reads and writes it directly.
    let parts = match auto::upgrade::downcast::<HyperIo<TimedIo<MaybeTls<S>, R>>>(upgraded) {
        Ok(parts) => parts,
        Err(_) => {
            tracing::error!("an upgraded connection is not the one accepted");
            return;
        }
    };
    let io = parts.io.into_inner().into_inner();
    upgrade.hold(slot);
    let config = Some(service.upgrade_config(&upgrade));
    let ws = if parts.read_buf.is_empty() {
        async_tungstenite::WebSocketStream::from_raw_socket(
            io,
            async_tungstenite::tungstenite::protocol::Role::Server,
            config,
        )
        .await
    } else {
        async_tungstenite::WebSocketStream::from_partially_read(
            io,
            parts.read_buf.to_vec(),
            async_tungstenite::tungstenite::protocol::Role::Server,
            config,
        )
        .await
    };
    // A task of exactly the connection's size.
    let rt = service.runtime().clone();
    rt.spawn(service.run_upgraded(ws, head, upgrade));
}

#[cfg(test)]
mod tests {
    use super::to_https;

    fn location(host: &str, target: &str, port: u16) -> String {
        let req = http::Request::builder()
            .uri(target)
            .header("host", host)
            .body(())
            .unwrap();
        let response = to_https(&req, port);
        assert_eq!(response.status, 308);
        response.headers[0].1.clone()
    }

    #[test]
    fn redirects_keep_the_host_and_target_and_take_the_https_port() {
        assert_eq!(
            location("events.example.com", "/sse?topic=a", 443),
            "https://events.example.com/sse?topic=a"
        );
        assert_eq!(
            location("events.example.com:80", "/", 8443),
            "https://events.example.com:8443/"
        );
        assert_eq!(location("[::1]:80", "/x", 443), "https://[::1]/x");
        assert_eq!(location("[::1]", "/x", 9443), "https://[::1]:9443/x");
    }
}
