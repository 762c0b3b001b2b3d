//! End-to-end test of the runtime-free embedding example (`examples/sse_std.rs`) over loopback
//! sockets: live delivery, exact resume (header and query parameter), errors, core-driven
//! keep-alives. Every read has a timeout, so a broken server fails the test instead of hanging.

#[allow(dead_code)]
#[path = "../examples/sse_std.rs"]
mod sse_std;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tidings_core::sse::{DecodedEvent, Decoder, Item};
use tidings_core::{Config, Cursor, Timers};

const TIMEOUT: Duration = Duration::from_secs(5);

fn start(config: Config) -> sse_std::Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    sse_std::serve(listener, config).expect("serve")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// A parsed response head and what followed it.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        let h = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        h.map(|(_, v)| v.as_str())
    }
}

/// Reads until the response head is complete.
fn read_head(stream: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read response head");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(&buf).expect("valid response head") {
            return Response {
                status: resp.code.unwrap(),
                headers: resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8(h.value.to_vec()).unwrap(),
                        )
                    })
                    .collect(),
                rest: buf[len..].to_vec(),
            };
        }
    }
}

/// One request, the whole response (the server closes after non-SSE responses).
fn request(addr: SocketAddr, head: &str, body: &[u8]) -> (Response, String) {
    let mut stream = connect(addr);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut resp = read_head(&mut stream);
    stream
        .read_to_end(&mut resp.rest)
        .expect("read response body");
    let body = String::from_utf8(std::mem::take(&mut resp.rest)).unwrap();
    (resp, body)
}

fn get(addr: SocketAddr, target: &str) -> (Response, String) {
    request(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"),
        b"",
    )
}

fn post(addr: SocketAddr, target: &str, content_type: &str, body: &[u8]) -> (Response, String) {
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    request(addr, &head, body)
}

/// Publishes and returns the cursor from the `{"id":...}` answer.
fn publish(addr: SocketAddr, target: &str, content_type: &str, body: &str) -> String {
    let (resp, text) = post(addr, target, content_type, body.as_bytes());
    assert_eq!(resp.status, 200, "publish {target}: {text}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON answer");
    let id = json["id"].as_str().expect("an id").to_string();
    id.parse::<Cursor>().expect("the id is a cursor");
    id
}

/// An open SSE stream, decoded with the core's strict WHATWG decoder.
struct Sse {
    stream: TcpStream,
    decoder: Decoder,
}

impl Sse {
    /// Opens the stream and waits for the opening `retry:` frame: from then on the subscription
    /// is in place (the example opens and subscribes in one driver step).
    fn open(addr: SocketAddr, target: &str, extra_headers: &str) -> Self {
        let mut stream = connect(addr);
        let head = format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra_headers}\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let resp = read_head(&mut stream);
        assert_eq!(resp.status, 200, "{target}");
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        assert_eq!(resp.header("cache-control"), Some("no-cache"));
        assert_eq!(resp.header("x-accel-buffering"), Some("no"));
        assert_eq!(resp.header("connection"), Some("keep-alive"));
        assert_eq!(resp.header("content-length"), None);
        let mut sse = Self {
            stream,
            decoder: Decoder::new(),
        };
        sse.decoder.feed(&resp.rest).unwrap();
        assert_eq!(
            sse.next_item(),
            Item::Retry(2000),
            "the stream opens with retry:"
        );
        sse
    }

    fn next_item(&mut self) -> Item {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(item) = self.decoder.next_item() {
                return item;
            }
            let n = self
                .stream
                .read(&mut chunk)
                .expect("read the stream (timed out?)");
            assert!(n > 0, "the stream ended");
            self.decoder
                .feed(&chunk[..n])
                .expect("a valid event stream");
        }
    }

    fn next_event(&mut self) -> DecodedEvent {
        loop {
            if let Item::Event(event) = self.next_item() {
                return event;
            }
        }
    }

    /// Every event up to and including the one whose data is `last`.
    fn events_until(&mut self, last: &str) -> Vec<DecodedEvent> {
        let mut events = vec![self.next_event()];
        while events.last().unwrap().data != last {
            events.push(self.next_event());
        }
        events
    }
}

fn ev(event_type: &str, data: &str, id: &str) -> DecodedEvent {
    DecodedEvent {
        event_type: event_type.into(),
        data: data.into(),
        last_event_id: id.into(),
    }
}

#[test]
fn live_delivery_then_exact_resume_by_header_and_by_query() {
    let server = start(Config::default());
    let addr = server.addr;

    // (1) Live: three events on news.a / news.b, one ignored on another topic.
    let mut sub = Sse::open(addr, "/sse?topic=news.*", "");
    let a = publish(addr, "/publish?topic=news.a", "text/plain", "hello");
    publish(
        addr,
        "/publish?topic=sports.x",
        "text/plain",
        "not for news.*",
    );
    let b = publish(
        addr,
        "/publish?topic=news.b&event=multi",
        "text/plain; charset=utf-8",
        "line1\nline2",
    );
    let c = publish(
        addr,
        "/publish?topic=news.a",
        "application/json",
        r#"{"n":3,"s":"x y"}"#,
    );
    let got: Vec<_> = (0..3).map(|_| sub.next_event()).collect();
    assert_eq!(
        got,
        [
            ev("message", "hello", &a),
            ev("multi", "line1\nline2", &b),
            ev("message", r#"{"n":3,"s":"x y"}"#, &c),
        ]
    );

    // (2) Disconnect, miss two events, resume with Last-Event-ID: exactly those two, in order,
    // then live events (a sentinel published after the resume proves nothing else came first).
    drop(sub);
    let d = publish(addr, "/publish?topic=news.b", "text/plain", "missed 1");
    publish(
        addr,
        "/publish?topic=sports.y",
        "text/plain",
        "still not news",
    );
    let e = publish(
        addr,
        "/publish?topic=news.a&event=late",
        "text/plain",
        "missed 2",
    );
    let mut sub = Sse::open(
        addr,
        "/sse?topic=news.*",
        &format!("Last-Event-ID: {c}\r\n"),
    );
    let s1 = publish(addr, "/publish?topic=news.z", "text/plain", "sentinel 1");
    assert_eq!(
        sub.events_until("sentinel 1"),
        [
            ev("message", "missed 1", &d),
            ev("late", "missed 2", &e),
            ev("message", "sentinel 1", &s1)
        ]
    );
    drop(sub);

    // (3) The same resume through the query parameter (and a percent-encoded `news.>` pattern).
    let mut sub = Sse::open(addr, &format!("/sse?topic=news.%3E&last_event_id={c}"), "");
    let s2 = publish(
        addr,
        "/publish?topic=news.deep.er",
        "text/plain",
        "sentinel 2",
    );
    assert_eq!(
        sub.events_until("sentinel 2"),
        [
            ev("message", "missed 1", &d),
            ev("late", "missed 2", &e),
            ev("message", "sentinel 1", &s1),
            ev("message", "sentinel 2", &s2),
        ]
    );

    // Lines typed on stdin publish too (a bad topic is only reported).
    let typed = "bad..topic lost\nnews.typed typed by hand\n";
    sse_std::publish_lines(typed.as_bytes(), &server.publisher);
    let event = sub.next_event();
    assert_eq!(
        (event.event_type.as_str(), event.data.as_str()),
        ("message", "typed by hand")
    );
    let id: Cursor = event.last_event_id.parse().unwrap();
    assert!(id > s2.parse().unwrap(), "{id} follows {s2}");
}

#[test]
fn bad_requests_get_clear_errors() {
    let addr = start(Config::default()).addr;
    let (resp, body) = get(addr, "/sse?topic=bad..topic");
    assert_eq!(resp.status, 400);
    assert!(body.contains("\"bad..topic\" is invalid"), "{body}");
    let (resp, body) = get(addr, "/sse");
    assert_eq!(resp.status, 400);
    assert!(body.contains("topic"), "{body}");
    let (resp, body) = get(addr, "/sse?topic=news.a&last_event_id=nope");
    assert_eq!(resp.status, 400);
    assert!(body.contains("cursor \"nope\" is invalid"), "{body}");
    let (resp, body) = get(addr, "/sse?topic=a%ZZ");
    assert_eq!(resp.status, 400, "{body}");
    assert_eq!(get(addr, "/nowhere").0.status, 404);
    assert_eq!(get(addr, "/publish?topic=a").0.status, 404);

    let (resp, body) = post(addr, "/publish?topic=a", "application/json", b"{");
    assert_eq!(resp.status, 400);
    assert!(body.contains("not valid JSON"), "{body}");
    let (resp, body) = post(addr, "/publish?topic=a", "text/plain", b"\xff\xfe");
    assert_eq!(resp.status, 400);
    assert!(body.contains("UTF-8"), "{body}");
    let (resp, body) = post(addr, "/publish?topic=a.*", "text/plain", b"x");
    assert_eq!(resp.status, 400);
    assert!(
        body.contains("wildcards are only allowed in subscriptions"),
        "{body}"
    );
    assert_eq!(post(addr, "/publish", "text/plain", b"x").0.status, 400);
    let head = "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(request(addr, head, b"").0.status, 411);
    let head = "POST /publish?topic=a HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n";
    assert_eq!(request(addr, head, b"").0.status, 413);
}

#[test]
fn keepalives_come_from_the_core_timers() {
    let timers = Timers {
        keepalive: Some(Duration::from_millis(50)),
        ..Timers::default()
    };
    let config = Config {
        timers,
        ..Config::default()
    };
    let addr = start(config).addr;
    let mut sub = Sse::open(addr, "/sse?topic=idle", "");
    assert_eq!(sub.next_item(), Item::Comment(String::new()));
    assert_eq!(sub.next_item(), Item::Comment(String::new()));
}
