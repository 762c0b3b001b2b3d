//! HTTP request heads: read with `httparse`, percent-decoded query, case-insensitive headers.
//!
//! This is the one representation of a request every part of the server looks at (routing,
//! authentication, CORS), whichever runtime or framework (our own listener, axum) received it.

use std::fmt;

/// The largest request head accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// The most headers accepted.
pub const MAX_HEADERS: usize = 64;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHead {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query, percent-decoded.
    pub path: String,
    /// Query parameters in order, percent-decoded (`+` is a space); a key may repeat. Never
    /// lossy: a query that is not UTF-8 once decoded is refused ([`HeadError::NotUtf8`]).
    pub query: Vec<(String, String)>,
    /// Headers in order; names lowercased.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a query parameter, in order.
    pub fn query_params<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a cookie from the `Cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
    }
}

/// Why a request head could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadError {
    /// Not valid HTTP/1.x (the message says where).
    Malformed(String),
    /// Larger than [`MAX_HEAD_BYTES`] or more than [`MAX_HEADERS`] headers.
    TooLarge,
    /// A query parameter (its name or its value) is not UTF-8 once percent-decoded (`%FF`):
    /// refused rather than mangled, so that distinct names never alias. Holds the parameter's
    /// name (lossily decoded, for the message).
    NotUtf8(String),
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed request: {why}"),
            Self::TooLarge => write!(
                f,
                "request head larger than {MAX_HEAD_BYTES} bytes or with more than {MAX_HEADERS} headers"
            ),
            Self::NotUtf8(param) => write!(
                f,
                "query parameter {param:?} is not valid UTF-8 once percent-decoded; percent-encode the UTF-8 bytes of the text (é is %C3%A9)"
            ),
        }
    }
}

impl std::error::Error for HeadError {}

/// Parses a request head from the start of `buf`. Returns `Ok(None)` when more bytes are needed,
/// or the head and how many bytes it took (the body starts there).
///
/// The server reads requests with hyper ([`RequestHead::from_http`], the same decoding); this
/// is for tools, tests and the `http_head` fuzz target.
///
/// # Errors
/// [`HeadError`] for anything that is not a valid HTTP/1.x request head within the limits.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let mut head = from_target(req.method.unwrap_or("GET"), req.path.unwrap_or("/"))?;
    head.headers.reserve(req.headers.len());
    for h in req.headers.iter() {
        push_header(&mut head, h.name, h.value)?;
    }
    Ok(Some((head, len)))
}

impl RequestHead {
    /// The head of a request hyper (or an embedding's HTTP server) has read: the same decoding
    /// and the same representation as [`parse_head`]. An HTTP/2 request carries its host in the
    /// `:authority` pseudo-header (in the URI): it is added as `host`, which the same-origin
    /// rule compares with `Origin`.
    ///
    /// # Errors
    /// [`HeadError`] for a query that is not UTF-8 once decoded, or a header value that is not
    /// UTF-8.
    pub fn from_http<B>(req: &http::Request<B>) -> Result<Self, HeadError> {
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut head = from_target(req.method().as_str(), target)?;
        head.headers.reserve(req.headers().len() + 1);
        for (name, value) in req.headers() {
            push_header(&mut head, name.as_str(), value.as_bytes())?;
        }
        if let (None, Some(authority)) = (head.header("host"), req.uri().authority()) {
            head.headers
                .push(("host".to_owned(), authority.as_str().to_owned()));
        }
        Ok(head)
    }
}

/// A head with the method and the decoded target (`path?query`; a target that does not start
/// with `/`, as axum's `nest` leaves them, is taken from the root).
fn from_target(method: &str, target: &str) -> Result<RequestHead, HeadError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = decode_lossy(path, false);
    Ok(RequestHead {
        method: method.to_owned(),
        path: if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        },
        query: query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let not_utf8 = || HeadError::NotUtf8(decode_lossy(k, true));
                let key = decode(k, true).ok_or_else(not_utf8)?;
                let value = decode(v, true).ok_or_else(not_utf8)?;
                Ok((key, value))
            })
            .collect::<Result<_, HeadError>>()?,
        headers: Vec::new(),
    })
}

/// Adds a header, its name lowercased and its value trimmed.
fn push_header(head: &mut RequestHead, name: &str, value: &[u8]) -> Result<(), HeadError> {
    let value = std::str::from_utf8(value)
        .map_err(|_| HeadError::Malformed(format!("header {name} is not UTF-8")))?;
    head.headers
        .push((name.to_ascii_lowercase(), value.trim().to_owned()));
    Ok(())
}

/// Percent-decodes (and, in queries, turns `+` into a space); `None` if the result is not UTF-8.
/// Query parameters are decoded strictly: a lossy decoding would turn `%FE` and `%FF` into the
/// same U+FFFD, making distinct topic names (or client ids, cursors, tokens) one.
fn decode(s: &str, plus_is_space: bool) -> Option<String> {
    let s = plus_to_space(s, plus_is_space);
    percent_encoding::percent_decode_str(&s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

/// Percent-decodes, replacing invalid UTF-8: for the path (a path that is not UTF-8 names no
/// endpoint, and gets `404`) and for naming a refused parameter.
fn decode_lossy(s: &str, plus_is_space: bool) -> String {
    let s = plus_to_space(s, plus_is_space);
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

fn plus_to_space(s: &str, plus_is_space: bool) -> std::borrow::Cow<'_, str> {
    if plus_is_space && s.contains('+') {
        std::borrow::Cow::Owned(s.replace('+', " "))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_head() {
        let raw = b"GET /sse?topic=chat.%2A&topic=a+b&last_event_id=1-2 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 3-4\r\nCookie: a=1; tidings_token=\"t0k\"\r\n\r\nbody";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(&raw[len..], b"body");
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/sse");
        assert_eq!(
            head.query_params("topic").collect::<Vec<_>>(),
            vec!["chat.*", "a b"]
        );
        assert_eq!(head.query_param("last_event_id"), Some("1-2"));
        assert_eq!(head.header("last-event-id"), Some("3-4"));
        assert_eq!(head.header("LAST-EVENT-ID"), Some("3-4"));
        assert_eq!(head.cookie("tidings_token"), Some("t0k"));
        assert_eq!(head.cookie("nope"), None);
    }

    #[test]
    fn query_parameters_that_are_not_utf8_are_refused() {
        for (raw, param) in [
            ("GET /sse?topic=%FF HTTP/1.1\r\n\r\n", "topic"),
            (
                "POST /publish?topic=a&event=%FE%FF HTTP/1.1\r\n\r\n",
                "event",
            ),
            (
                "GET /sse?topic=a&client_id=u%C3 HTTP/1.1\r\n\r\n",
                "client_id",
            ),
            ("GET /sse?%FF=1 HTTP/1.1\r\n\r\n", "\u{fffd}"),
        ] {
            assert_eq!(
                parse_head(raw.as_bytes()),
                Err(HeadError::NotUtf8(param.to_owned())),
                "{raw}"
            );
        }
        // Percent-encoded UTF-8 is fine, and the path is still decoded leniently.
        let raw = b"GET /x%FF?topic=caf%C3%A9.%E2%9C%93 HTTP/1.1\r\n\r\n";
        let (head, _) = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.query_param("topic"), Some("caf\u{e9}.\u{2713}"));
        assert_eq!(head.path, "/x\u{fffd}");
    }

    #[test]
    fn partial_malformed_and_too_large() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(parse_head(&big), Err(HeadError::TooLarge));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(raw.as_bytes()), Err(HeadError::TooLarge));
    }
}
