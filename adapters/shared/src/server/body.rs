//! The body of every response the server sends: complete bytes, or an SSE stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream as _;
use http_body::{Frame, SizeHint};

use super::activity::Active;
use crate::ctx::ConnGuard;
use crate::http::Response;
use crate::sse::SseBody;

/// A response body: complete, or an SSE stream sent as it comes (HTTP/1.1 chunks, HTTP/2 DATA
/// frames). Usable by any HTTP server built on `http-body` (hyper, axum).
#[derive(Debug)]
pub struct Body {
    kind: Kind,
    /// The request it answers, in progress until it is sent (the listener's idle check).
    _active: Option<Active>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Sse {
        /// The opening chunk, sent with the head.
        first: Option<Bytes>,
        stream: SseBody,
        /// Held as long as the stream: a graceful shutdown waits for it.
        _guard: ConnGuard,
    },
}

impl Body {
    /// No body.
    pub fn empty() -> Self {
        Self::of(Kind::Full(None))
    }

    fn of(kind: Kind) -> Self {
        Self {
            kind,
            _active: None,
        }
    }

    /// Holds `active` until the body is dropped (sent, or abandoned).
    pub(crate) fn holding(mut self, active: Active) -> Self {
        self._active = Some(active);
        self
    }

    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self::of(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    pub(crate) fn sse(first: Option<Bytes>, stream: SseBody, guard: ConnGuard) -> Self {
        Self::of(Kind::Sse {
            first,
            stream,
            _guard: guard,
        })
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Sse { first, stream, .. } => match first.take() {
                Some(first) => Poll::Ready(Some(Ok(Frame::data(first)))),
                None => Pin::new(stream)
                    .poll_next(cx)
                    .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Sse { .. } => SizeHint::default(),
        }
    }
}

/// A complete response as an HTTP response. 204 and 304 have no body (a 304 keeps the
/// headers of the content it stands for, not its length).
pub(crate) fn plain(response: Response) -> http::Response<Body> {
    let Response {
        status,
        headers,
        content_type,
        body,
    } = response;
    let bodiless = matches!(status, 204 | 304);
    let mut builder = http::Response::builder().status(status);
    if !bodiless {
        builder = builder.header(http::header::CONTENT_TYPE, content_type);
    }
    for (name, value) in &headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body = if bodiless {
        Body::empty()
    } else {
        Body::full(body)
    };
    builder.body(body).unwrap_or_else(|e| {
        // Header values are made by the server (or its configuration, checked at start).
        tracing::error!("a response could not be built: {e}");
        let mut response = http::Response::new(Body::empty());
        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}
