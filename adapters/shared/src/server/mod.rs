//! The HTTP server: hyper for HTTP/1.1 (keep-alive, pipelining, chunked streams) and HTTP/2
//! (by prior knowledge, `h2c`), one listener for every runtime.
//!
//! - [`answer`] turns a request into its response, following [`Service::route`]: the one
//!   mapping from routes to HTTP responses, used by the listener and by embeddings (the axum
//!   router); an upgrade comes back as an [`Upgrading`] for the caller to finish.
//! - [`serve`] accepts connections from a [`Listener`] (the runtime adapter supplies accepted
//!   `futures-io` streams) and serves each with hyper on a task of the runtime, within the
//!   connection limits.
//!
//! Request bodies are read as they arrive into a buffer that grows with them, up to the
//! route's limit, within `http.read_timeout`; nothing is allocated for what a client only
//! announced.

mod activity;
mod body;
mod listener;
#[cfg(test)]
pub(crate) use listener::connection;
mod rt;
mod timed;

use std::error::Error as StdError;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Limited};
use tidings_core::{ErrorCode, ProtocolError};

pub use body::Body;
pub use listener::{Listener, redirect, serve};

use crate::ctx::WriteStall;
use crate::http::{Refusal, Response};
use crate::io::{with_deadline, with_timeout};
use crate::request::RequestHead;
use crate::runtime::Runtime;
use crate::service::{Route, Service, Upgrade};

/// The response to a request, and what to do after it for a WebSocket upgrade.
#[derive(Debug)]
pub struct Answer {
    /// The response.
    pub response: http::Response<Body>,
    /// For a `101 Switching Protocols`: the upgrade to finish once hyper hands the connection
    /// over.
    pub upgrade: Option<Upgrading>,
}

/// A WebSocket upgrade answered `101`: await [`Upgrading::on`] (hyper's handover of the
/// connection), then run the connection with [`Service::run_upgraded`].
#[derive(Debug)]
pub struct Upgrading {
    /// Completes with the connection once the `101` is sent.
    pub on: hyper::upgrade::OnUpgrade,
    /// The request's head, for the connect hook.
    pub head: RequestHead,
    /// The checked upgrade.
    pub upgrade: Upgrade,
}

/// Answers a request as the server does: [`Service::route`], then the body read, the broker
/// asked, the stream opened or the upgrade accepted.
pub async fn answer<R, B>(service: &Service<R>, req: http::Request<B>) -> Answer
where
    R: Runtime,
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    answer_on(service, req, None).await
}

/// [`answer`] on a connection of the server's listener, whose socket reports a write timeout
/// through `stall`.
pub(crate) async fn answer_on<R, B>(
    service: &Service<R>,
    mut req: http::Request<B>,
    stall: Option<&WriteStall>,
) -> Answer
where
    R: Runtime,
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let plain = |response: Response| Answer {
        response: body::plain(response),
        upgrade: None,
    };
    let Some(guard) = service.track() else {
        let refusal = Refusal::new(
            503,
            "shutting_down",
            "the server is shutting down; retry (another instance, or this one once restarted)",
        )
        .with_header("Retry-After", "1");
        return plain(refusal.into_response());
    };
    let head = match RequestHead::from_http(&req) {
        Ok(head) => head,
        Err(e) => return plain(Refusal::head(&e).into_response()),
    };
    // A client that waits for `100 Continue` sends no body unless asked: nothing to discard.
    let expects_continue = head
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    match service.route(&head) {
        Route::Respond(response) => {
            if !expects_continue {
                discard(service, req.into_body()).await;
            }
            plain(response)
        }
        Route::Metrics => plain(service.metrics().await),
        Route::Presence(request) => plain(service.presence(request).await),
        Route::ReadBody(request) => {
            let read = read_body(service, req.into_body(), request.limit(), expects_continue).await;
            match read {
                Ok(bytes) => plain(service.answer_body(&head, request, bytes).await),
                Err(refusal) => plain(request.refuse(refusal)),
            }
        }
        Route::Sse(request) => {
            let mut response = http::Response::builder().status(200);
            for (name, value) in &request.headers {
                response = response.header(name.as_str(), value.as_str());
            }
            let mut stream = service.sse_body_on(&head, request, stall.cloned());
            // The head goes out with the stream's opening chunk (`retry:`, or a `:` comment),
            // which the broker sends in the step that subscribes it: a client that sees the
            // head is subscribed, and sees the stream open (`onopen`) without waiting for an
            // event.
            let first = stream.next().await;
            // The guard lives as long as the stream: a graceful shutdown waits for it.
            match response.body(Body::sse(first, stream, guard)) {
                Ok(response) => Answer {
                    response,
                    upgrade: None,
                },
                Err(e) => plain(
                    Refusal::new(
                        500,
                        "internal",
                        format!("a configured header is not valid: {e}"),
                    )
                    .into_response(),
                ),
            }
        }
        Route::Upgrade(upgrade) => {
            let accept = tungstenite::handshake::derive_accept_key(
                head.header("sec-websocket-key")
                    .unwrap_or_default()
                    .as_bytes(),
            );
            let on = hyper::upgrade::on(&mut req);
            let response = http::Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", accept)
                .body(Body::empty());
            match response {
                Ok(response) => Answer {
                    response,
                    upgrade: Some(Upgrading { on, head, upgrade }),
                },
                Err(e) => plain(Refusal::new(500, "internal", e.to_string()).into_response()),
            }
        }
    }
}

/// How much of a refused request's body is read and dropped at most, and for how long, so that
/// the client (still sending it) reads the answer instead of a reset (RFC 9112 §9.6).
const DISCARD_BYTES: usize = 4 << 20;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops what is left of a request body, within [`DISCARD_BYTES`] and
/// [`DISCARD_TIME`]: nothing is kept.
async fn discard<R, B>(service: &Service<R>, body: B)
where
    R: Runtime,
    B: http_body::Body<Data = Bytes>,
{
    if body.is_end_stream() {
        return;
    }
    let drain = async {
        let mut body = std::pin::pin!(body);
        let mut read = 0;
        while read < DISCARD_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    };
    let _ = with_timeout(service.runtime(), DISCARD_TIME, drain).await;
}

/// Reads a request body as it arrives, at most `limit` bytes, within `http.read_timeout`: a
/// `Content-Length` over the limit is refused before anything is kept (what the client sends
/// meanwhile is discarded, unless it waits for `100 Continue`).
async fn read_body<R, B>(
    service: &Service<R>,
    body: B,
    limit: usize,
    expects_continue: bool,
) -> Result<Vec<u8>, Refusal>
where
    R: Runtime,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let too_large = |what: String| {
        Refusal::protocol(&ProtocolError::new(
            ErrorCode::FrameTooLarge,
            format!("{what}; at most {limit} bytes are allowed"),
        ))
    };
    if let Some(length) = body.size_hint().exact()
        && length > limit as u64
    {
        if !expects_continue {
            discard(service, body).await;
        }
        return Err(too_large(format!("the body is {length} bytes")));
    }
    let rt = service.runtime();
    let deadline = rt.now() + service.http_config().read_timeout;
    let collected = with_deadline(rt, deadline, Limited::new(body, limit).collect()).await;
    match collected {
        // Copied out: the body's bytes are a slice of hyper's read buffer (8 KiB or more), which
        // a stored event would otherwise keep alive for as long as it is retained.
        Some(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(too_large("the body is larger".to_owned()))
        }
        Some(Err(e)) => Err(Refusal::new(
            400,
            "bad_request",
            format!("the body could not be read: {e}"),
        )),
        None => Err(Refusal::new(
            408,
            "timeout",
            "the body did not arrive in time",
        )),
    }
}
