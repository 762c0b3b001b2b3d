//! Plain HTTP answers as data: refusals with their JSON error bodies, complete responses, CORS
//! and the `Origin` policies. The HTTP server ([`crate::server`]) puts them on the wire.

use std::time::Duration;

use futures_io::AsyncRead;
use futures_util::AsyncReadExt as _;
use tidings_core::ProtocolError;

use crate::io::with_deadline;
use crate::request::{HeadError, RequestHead};
use crate::runtime::Runtime;

/// The default response headers of every SSE stream (DESIGN.md §4): the stream task writes
/// them, embeddings that write the response themselves send them, and `sse.headers` adds to
/// them. Here, below the configuration and the stream, so that both can use them.
pub const SSE_HEADERS: [(&str, &str); 3] = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
];

/// A refused request: status, machine-readable code, message, extra headers. Its body is the
/// JSON `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// A machine-readable code: a core [`tidings_core::ErrorCode`] name where one applies
    /// (`invalid_topic`, `forbidden`, `frame_too_large`, ...), else an HTTP one (`not_found`,
    /// `method_not_allowed`, `unauthorized`, ...).
    pub code: String,
    /// For humans: what was wrong and what is allowed.
    pub message: String,
    /// Extra headers (`Allow`, `WWW-Authenticate`, CORS, ...).
    pub headers: Vec<(String, String)>,
}

impl Refusal {
    /// A refusal with no extra headers.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// A refusal carrying a core error, with its HTTP status.
    pub fn protocol(error: &ProtocolError) -> Self {
        Self::new(
            error.code.http_status(),
            error.code.as_str(),
            error.message.clone(),
        )
    }

    /// The answer to a request head that could not be read: `431 head_too_large`,
    /// `400 not_utf8` (a query parameter is not UTF-8), or `400 bad_request`.
    pub fn head(error: &HeadError) -> Self {
        match error {
            HeadError::TooLarge => Self::new(431, "head_too_large", error.to_string()),
            HeadError::NotUtf8(_) => Self::new(400, "not_utf8", error.to_string()),
            HeadError::Malformed(_) => Self::new(400, "bad_request", error.to_string()),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        error_body(&self.code, &self.message)
    }

    /// As a complete response.
    pub fn into_response(self) -> Response {
        let body = self.body();
        Response {
            status: self.status,
            headers: self.headers,
            content_type: "application/json",
            body: body.into_bytes(),
        }
    }
}

/// The JSON error body `{"error":{"code":..,"message":..}}`.
pub fn error_body(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message } }).to_string()
}

/// A complete plain response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status.
    pub status: u16,
    /// Headers besides `Content-Type` and `Content-Length`.
    pub headers: Vec<(String, String)>,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 with a body.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            content_type,
            body: body.into(),
        }
    }

    /// Adds headers.
    #[must_use]
    pub fn with_headers(mut self, headers: impl IntoIterator<Item = (String, String)>) -> Self {
        self.headers.extend(headers);
        self
    }
}

/// Reads and discards until EOF, `max_bytes` or `max_time`.
pub(crate) async fn linger<R, S>(rt: &R, io: &mut S, max_bytes: usize, max_time: Duration)
where
    R: Runtime,
    S: AsyncRead + Unpin,
{
    let deadline = rt.now() + max_time;
    // On the heap: a buffer in the future would enlarge every connection's task.
    let mut scratch = vec![0u8; 4096];
    let mut total = 0;
    while total < max_bytes {
        match with_deadline(rt, deadline, io.read(&mut scratch)).await {
            Some(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// Whether a browser's `Origin` is the request's own: its host and port (after the scheme)
/// equal the `Host` header, whatever the scheme (a TLS proxy in front changes the scheme, not
/// the host). The one same-origin rule of every endpoint (CORS, `/ws`, `/ws/bus`, `/etp`): etp's
/// WebSocket library (coder/websocket) checks origins this way.
pub(crate) fn same_origin(head: &RequestHead, origin: &str) -> bool {
    let host = origin.split_once("://").map_or(origin, |(_, h)| h);
    head.header("host")
        .is_some_and(|h| h.eq_ignore_ascii_case(host.trim_end_matches('/')))
}

/// Whom an `Origin` allow-list lets in (`http.cors_origins`, `http.ws_origins`,
/// `etp.origins`); one meaning per value:
///
/// - `[]`: the same origin only (the demo page and pages the server itself serves);
/// - `["https://a.example", ...]`: those and the same origin;
/// - `["*"]` (anywhere in the list): any origin.
///
/// Requests without `Origin` (not from a browser page: curl, servers, the CLI) are not subject
/// to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OriginPolicy {
    any: bool,
    listed: Vec<String>,
}

/// What an [`OriginPolicy`] says of a browser request's `Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OriginCheck {
    /// The same origin, or a listed one.
    Listed,
    /// Neither, but the policy allows any origin (`"*"`).
    Any,
    /// Refused.
    Refused,
}

impl OriginPolicy {
    pub(crate) fn new(origins: &[String]) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            listed: origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
        }
    }

    /// Whether any origin is allowed (`"*"`).
    pub(crate) fn allows_any(&self) -> bool {
        self.any
    }

    /// What the policy says of `origin`, the `Origin` header of `head`.
    pub(crate) fn check(&self, head: &RequestHead, origin: &str) -> OriginCheck {
        let origin = origin.trim_end_matches('/');
        if same_origin(head, origin) || self.listed.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            OriginCheck::Listed
        } else if self.any {
            OriginCheck::Any
        } else {
            OriginCheck::Refused
        }
    }

    /// `Ok` for a request without `Origin` or from an allowed one; else `403`
    /// `origin_not_allowed`, saying `what` is refused and which key (`setting`) allows it.
    pub(crate) fn require(
        &self,
        head: &RequestHead,
        what: &str,
        setting: &str,
    ) -> Result<(), Refusal> {
        match head.header("origin") {
            Some(origin) if self.check(head, origin) == OriginCheck::Refused => Err(Refusal::new(
                403,
                "origin_not_allowed",
                format!(
                    "{what} from origin {origin} are not allowed: only the server's own origin \
                     and those listed in {setting} are"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// CORS: the `Origin` policy of `/sse`, `/publish` and `/subscriptions` (`http.cors_origins`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cors(OriginPolicy);

impl Cors {
    pub(crate) fn new(origins: &[String]) -> Self {
        Self(OriginPolicy::new(origins))
    }

    /// Whether any origin is allowed (`"*"`).
    pub(crate) fn allows_any(&self) -> bool {
        self.0.allows_any()
    }

    /// The CORS headers for a request, or a 403 for a browser request from an origin that is
    /// not allowed. The same origin and listed ones get their origin back with credentials;
    /// others, with `"*"` configured, get `*` (no credentials). Requests without `Origin` (not
    /// from a browser page) get none.
    pub(crate) fn headers(&self, head: &RequestHead) -> Result<Vec<(String, String)>, Refusal> {
        let Some(origin) = head.header("origin") else {
            return Ok(Vec::new());
        };
        match self.0.check(head, origin) {
            OriginCheck::Listed => Ok(vec![
                ("Access-Control-Allow-Origin".into(), origin.to_owned()),
                ("Access-Control-Allow-Credentials".into(), "true".into()),
                ("Vary".into(), "Origin".into()),
            ]),
            OriginCheck::Any => Ok(vec![("Access-Control-Allow-Origin".into(), "*".into())]),
            OriginCheck::Refused => Err(Refusal::new(
                403,
                "origin_not_allowed",
                format!(
                    "requests from origin {origin} are not allowed by this server's CORS \
                     settings: only its own origin and those listed in http.cors_origins are"
                ),
            )),
        }
    }

    /// The answer to a preflight `OPTIONS` request for a path allowing `methods`.
    pub(crate) fn preflight(&self, head: &RequestHead, methods: &str) -> Response {
        let mut headers = match self.headers(head) {
            Ok(headers) => headers,
            Err(refusal) => return refusal.into_response(),
        };
        headers.push(("Access-Control-Allow-Methods".into(), methods.to_owned()));
        let requested = head
            .header("access-control-request-headers")
            .unwrap_or("Content-Type, Authorization, Last-Event-ID");
        headers.push(("Access-Control-Allow-Headers".into(), requested.to_owned()));
        headers.push(("Access-Control-Max-Age".into(), "600".into()));
        headers.push(("Allow".into(), methods.to_owned()));
        Response {
            status: 204,
            headers,
            content_type: "text/plain",
            body: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_with_origin(origin: Option<&str>) -> RequestHead {
        let mut head = RequestHead::default();
        if let Some(origin) = origin {
            head.headers.push(("origin".into(), origin.into()));
        }
        head
    }

    #[test]
    fn cors_headers() {
        let any = Cors::new(&["*".to_owned()]);
        assert_eq!(any.headers(&head_with_origin(None)), Ok(vec![]));
        let h = any
            .headers(&head_with_origin(Some("https://x.example")))
            .unwrap();
        assert_eq!(h[0].1, "*");
        let some = Cors::new(&["https://a.example/".to_owned()]);
        let h = some
            .headers(&head_with_origin(Some("https://a.example")))
            .unwrap();
        assert_eq!(h[0].1, "https://a.example");
        let e = some
            .headers(&head_with_origin(Some("https://b.example")))
            .unwrap_err();
        assert_eq!(e.status, 403);
    }

    fn head_from(host: &str, origin: &str) -> RequestHead {
        let mut head = head_with_origin(Some(origin));
        head.headers.push(("host".into(), host.into()));
        head
    }

    #[test]
    fn origin_policies_one_meaning_per_value() {
        let same = head_from("127.0.0.1:9313", "http://127.0.0.1:9313");
        // The scheme does not matter (a TLS proxy in front), the host and port do.
        let same_tls = head_from("rt.example", "https://RT.example");
        let other_port = head_from("127.0.0.1:9313", "http://127.0.0.1:8080");
        let other = head_from("127.0.0.1:9313", "https://evil.example");
        let listed = head_from("127.0.0.1:9313", "https://a.example");
        let check = |list: &[&str], head: &RequestHead| {
            let list: Vec<String> = list.iter().map(|o| (*o).to_owned()).collect();
            OriginPolicy::new(&list).check(head, head.header("origin").unwrap())
        };
        use OriginCheck::{Any, Listed, Refused};
        // Empty: the same origin only.
        assert_eq!(check(&[], &same), Listed);
        assert_eq!(check(&[], &same_tls), Listed);
        assert_eq!(check(&[], &other_port), Refused);
        assert_eq!(check(&[], &other), Refused);
        // Listed: those and the same origin.
        assert_eq!(check(&["https://a.example/"], &listed), Listed);
        assert_eq!(check(&["https://a.example"], &same), Listed);
        assert_eq!(check(&["https://a.example"], &other), Refused);
        // "*": any.
        assert_eq!(check(&["*"], &other), Any);
        assert_eq!(check(&["*"], &same), Listed);
        // No Origin: not a browser page, never refused.
        let none = head_with_origin(None);
        assert!(OriginPolicy::new(&[]).require(&none, "x", "y").is_ok());
        let e = OriginPolicy::new(&[])
            .require(&other, "WebSocket connections", "http.ws_origins")
            .unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (403, "origin_not_allowed"));
        assert!(e.message.contains("http.ws_origins"), "{}", e.message);
    }

    #[test]
    fn cors_headers_by_default_only_for_the_same_origin() {
        let cors = Cors::new(&[]);
        let h = cors
            .headers(&head_from("127.0.0.1:9313", "http://127.0.0.1:9313"))
            .unwrap();
        assert_eq!(h[0].1, "http://127.0.0.1:9313");
        let e = cors
            .headers(&head_from("127.0.0.1:9313", "https://evil.example"))
            .unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(cors.headers(&head_with_origin(None)), Ok(vec![]));
    }

    #[test]
    fn refusals_carry_a_json_body() {
        let r = Refusal::new(404, "not_found", "no \"x\"").into_response();
        assert_eq!(r.status, 404);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(
            r.body,
            br#"{"error":{"code":"not_found","message":"no \"x\""}}"#
        );
    }
}
