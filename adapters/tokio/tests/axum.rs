//! tidings mounted in an axum application (`tidings_tokio::axum`, feature `axum`), over real
//! sockets: the application's own route, SSE with resume, WebSocket pub/sub and requests
//! answered by an `on` handler, `POST /publish`, and the server's 404/405 under the mount.
//!
//! Clients are plain `TcpStream`s (HTTP/1.1, chunked bodies decoded here, SSE read with the
//! core's `sse::Decoder`) and the synchronous `tungstenite` client, on blocking threads.
//! Built with the `axum` feature (which `cargo test --workspace` enables through the root
//! package's dev-dependencies); `cargo test -p tidings-tokio --features axum` runs it alone.
#![cfg(feature = "axum")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use tidings_adapter::ServerConfig;
use tidings_core::sse::{DecodedEvent, Decoder};
use tidings_core::{Name, Payload, Topic};
use tokio::task::spawn_blocking;
use tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(15);

// The root package's test harness's decoder (a test of this package cannot use that harness).
#[path = "../../../tests/common/chunked.rs"]
mod chunked;
use chunked::ChunkedDecoder;

/// An axum app with a route of its own and tidings under `/realtime`.
async fn app() -> (
    SocketAddr,
    tidings_tokio::Service<tidings_tokio::TokioRuntime>,
) {
    let service = tidings_tokio::start(ServerConfig::default()).expect("starts");
    let app = Router::new()
        .route("/hello", get(|| async { "hello from the app" }))
        .nest("/realtime", tidings_tokio::axum::router(service.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, service)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Reads a response head: the status and the headers (names lowercased).
fn read_head(stream: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    loop {
        let n = stream.read(&mut byte).expect("a response in time");
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&byte[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(&buf).unwrap() {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8(h.value.to_vec()).unwrap();
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect();
            return (resp.code.unwrap(), headers, buf[len..].to_vec());
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// One request with `Connection: close`; the body is read to the end (de-chunked).
fn request(addr: SocketAddr, method: &str, target: &str, extra: &str, body: &str) -> Resp {
    let mut stream = connect(addr);
    let length = if method == "POST" {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}{length}Connection: close\r\n\r\n{body}"
    )
    .unwrap();
    let (status, headers, mut rest) = read_head(&mut stream);
    stream.read_to_end(&mut rest).unwrap();
    let body = if header(&headers, "transfer-encoding") == Some("chunked") {
        let mut chunked = ChunkedDecoder::default();
        let body = chunked.feed(&rest);
        assert!(
            chunked.is_done(),
            "the chunked body ended with its last chunk"
        );
        body
    } else {
        rest
    };
    Resp {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn error_code(resp: &Resp) -> String {
    let v: Value = serde_json::from_str(&resp.body).unwrap();
    v["error"]["code"].as_str().unwrap().to_owned()
}

/// An SSE stream read with the core's decoder.
struct Sse {
    stream: TcpStream,
    chunks: ChunkedDecoder,
    decoder: Decoder,
}

impl Sse {
    fn open(addr: SocketAddr, target: &str, extra: &str) -> Self {
        let mut stream = connect(addr);
        write!(stream, "GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let (status, headers, rest) = read_head(&mut stream);
        assert_eq!(status, 200, "{headers:?}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/event-stream"),
            "{headers:?}"
        );
        assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
        assert_eq!(header(&headers, "x-accel-buffering"), Some("no"));
        assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
        let mut sse = Self {
            stream,
            chunks: ChunkedDecoder::default(),
            decoder: Decoder::new(),
        };
        sse.push(&rest);
        // The stream starts with `retry:`.
        while sse.decoder.retry().is_none() {
            sse.fill();
        }
        sse
    }

    fn push(&mut self, bytes: &[u8]) {
        let body = self.chunks.feed(bytes);
        self.decoder.feed(&body).unwrap();
    }

    fn fill(&mut self) {
        let mut buf = [0u8; 4096];
        let n = self.stream.read(&mut buf).expect("stream data in time");
        assert!(n > 0, "the stream ended");
        self.push(&buf[..n]);
    }

    fn next_event(&mut self) -> DecodedEvent {
        loop {
            if let Some(event) = self.decoder.next_event() {
                return event;
            }
            self.fill();
        }
    }
}

/// Runs blocking client code off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_blocking(f).await.expect("the client code succeeds")
}

fn topic(s: &str) -> Topic {
    Topic::parse(s, Default::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_route_and_the_server_answers_under_the_mount() {
    let (addr, _service) = app().await;
    blocking(move || {
        let hello = request(addr, "GET", "/hello", "", "");
        assert_eq!(
            (hello.status, hello.body.as_str()),
            (200, "hello from the app")
        );

        let health = request(addr, "GET", "/realtime/healthz", "", "");
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

        // Unknown paths under the mount: the server's 404, naming the path relative to it.
        let missing = request(addr, "GET", "/realtime/nope", "", "");
        assert_eq!(missing.status, 404, "{}", missing.body);
        assert_eq!(error_code(&missing), "not_found");
        assert!(
            missing.body.contains("nothing at /nope"),
            "{}",
            missing.body
        );
        // Percent-decoded like the standalone server: `/realtime/heal%74hz` is `/healthz`.
        let encoded = request(addr, "GET", "/realtime/heal%74hz", "", "");
        assert_eq!(encoded.status, 200, "{}", encoded.body);

        // Wrong method: 405 with Allow.
        let wrong = request(addr, "GET", "/realtime/publish?topic=a", "", "");
        assert_eq!(wrong.status, 405, "{}", wrong.body);
        assert_eq!(error_code(&wrong), "method_not_allowed");
        assert_eq!(header(&wrong.headers, "allow"), Some("POST, OPTIONS"));

        // /ws without an upgrade: 426; /sse without topic: 400.
        let plain = request(addr, "GET", "/realtime/ws", "", "");
        assert_eq!(plain.status, 426, "{}", plain.body);
        assert_eq!(header(&plain.headers, "upgrade"), Some("websocket"));
        let no_topic = request(addr, "GET", "/realtime/sse", "", "");
        assert_eq!(no_topic.status, 400, "{}", no_topic.body);
        assert_eq!(error_code(&no_topic), "bad_field");

        // Publish refusals and CORS, as the standalone server answers them.
        let bad = request(addr, "POST", "/realtime/publish?topic=a..b", "", "x");
        assert_eq!(
            (bad.status, error_code(&bad).as_str()),
            (400, "invalid_topic")
        );
        // Query values that are not UTF-8 are refused the same way (hyper lets `%FF` through).
        for target in ["/realtime/publish?topic=%FE", "/realtime/sse?topic=%FF"] {
            let method = if target.contains("publish") {
                "POST"
            } else {
                "GET"
            };
            let resp = request(addr, method, target, "", "x");
            assert_eq!(
                (resp.status, error_code(&resp).as_str()),
                (400, "not_utf8"),
                "{target}: {}",
                resp.body
            );
        }
        let big = "x".repeat((1 << 20) + 1);
        let too_large = request(addr, "POST", "/realtime/publish?topic=a", "", &big);
        assert_eq!(too_large.status, 413, "{}", too_large.body);
        // CORS by default: the server's own origin (the Host is `x`) only.
        let cors = request(
            addr,
            "OPTIONS",
            "/realtime/publish",
            "Origin: http://x\r\nAccess-Control-Request-Method: POST\r\n",
            "",
        );
        assert_eq!(cors.status, 204);
        assert_eq!(
            header(&cors.headers, "access-control-allow-origin"),
            Some("http://x")
        );
        let foreign = request(
            addr,
            "OPTIONS",
            "/realtime/publish",
            "Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n",
            "",
        );
        assert_eq!(foreign.status, 403, "{}", foreign.body);
        assert_eq!(
            header(&foreign.headers, "access-control-allow-origin"),
            None
        );

        let metrics = request(addr, "GET", "/realtime/metrics", "", "");
        assert_eq!(metrics.status, 200);
        assert!(
            metrics.body.contains("tidings_publishes_total"),
            "{}",
            metrics.body
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_under_the_mount_receives_hub_publishes_and_resumes_with_last_event_id() {
    let (addr, service) = app().await;
    let hub = service.hub().clone();

    let mut sse = blocking(move || Sse::open(addr, "/realtime/sse?topic=chat.*", "")).await;
    let event = Some(Name::parse("event", "msg", 128).unwrap());
    let first = hub
        .publish(topic("chat.lobby"), event, Payload::text("hello").unwrap())
        .await
        .unwrap();
    let got = blocking(move || {
        let e = sse.next_event();
        drop(sse); // the client goes away
        e
    })
    .await;
    assert_eq!(got.last_event_id, first.to_string());
    assert_eq!(got.event_type, "msg");
    assert_eq!(got.data, "hello");

    // Missed while disconnected, then resumed from the first cursor: exactly those, in order.
    let mut missed = Vec::new();
    for (t, data) in [("chat.lobby", "missed 1"), ("chat.room", "missed 2")] {
        let payload = Payload::text(data).unwrap();
        missed.push(hub.publish(topic(t), None, payload).await.unwrap());
    }
    hub.publish(topic("news.eu"), None, Payload::text("other").unwrap())
        .await
        .unwrap();
    let resume = format!("Last-Event-ID: {first}\r\n");
    let mut sse = blocking(move || Sse::open(addr, "/realtime/sse?topic=chat.*", &resume)).await;
    let live = {
        // A live event after the replay (the stream is open: its subscription was made when
        // the response started).
        hub.publish(topic("chat.lobby"), None, Payload::text("live").unwrap())
            .await
            .unwrap()
    };
    let events = blocking(move || (0..3).map(|_| sse.next_event()).collect::<Vec<_>>()).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.last_event_id.clone(), e.data.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (missed[0].to_string(), "missed 1".to_owned()),
            (missed[1].to_string(), "missed 2".to_owned()),
            (live.to_string(), "live".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_under_the_mount_gets_http_publishes_requests_and_rooms() {
    let (addr, service) = app().await;
    let hub = service.hub().clone();
    hub.on("echo", |_conn, payload| async move { Ok(payload) });
    hub.on_connect(|c| {
        c.head
            .query_param("room")
            .and_then(|room| Name::parse("room", room, 128).ok())
            .into_iter()
            .collect()
    });
    let (ws, conn) = blocking(move || {
        let stream = connect(addr);
        let url = format!("ws://{addr}/realtime/ws?room=lobby");
        let (mut ws, response) = tungstenite::client(url, stream).unwrap();
        assert_eq!(response.status(), 101);
        let welcome = recv(&mut ws);
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        send(
            &mut ws,
            json!({"op":"subscribe","id":1,"topics":["orders.*"]}),
        );
        let ok = recv(&mut ws);
        assert_eq!(ok["type"], "ok", "{ok}");
        (ws, welcome["conn"].as_u64().unwrap())
    })
    .await;

    // The connect hook put it in the room from its query.
    let lobby = Name::parse("room", "lobby", 128).unwrap();
    let members = hub.room_members(lobby).await.unwrap();
    assert_eq!(members.iter().map(|c| c.0).collect::<Vec<_>>(), vec![conn]);

    blocking(move || {
        let mut ws = ws;
        // A publish over HTTP through the mount reaches the WebSocket subscriber.
        let published = request(
            addr,
            "POST",
            "/realtime/publish?topic=orders.new&event=created",
            "Content-Type: application/json\r\n",
            r#"{"order":42}"#,
        );
        assert_eq!(published.status, 200, "{}", published.body);
        let cursor: Value = serde_json::from_str(&published.body).unwrap();
        let event = recv(&mut ws);
        assert_eq!(event["type"], "event", "{event}");
        assert_eq!(event["topic"], "orders.new");
        assert_eq!(event["event"], "created");
        assert_eq!(event["data"], json!({"order":42}));
        assert_eq!(event["cursor"], cursor["id"]);

        // A request answered by the application's `on("echo")` handler.
        send(
            &mut ws,
            json!({"op":"request","id":2,"event":"echo","data":{"x":[1,2]}}),
        );
        let answer = recv(&mut ws);
        assert_eq!(answer["type"], "ok", "{answer}");
        assert_eq!(answer["id"], 2);
        assert_eq!(answer["data"], json!({"x":[1,2]}));
        ws.close(None).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ksbus_and_etp_endpoints_under_the_mount() {
    let (addr, _service) = app().await;
    blocking(move || {
        // A ksbus subscriber on /realtime/ws/bus (`sub` is silent: a ping orders it).
        let url = format!("ws://{addr}/realtime/ws/bus");
        let (mut bus, response) = tungstenite::client(url, connect(addr)).unwrap();
        assert_eq!(response.status(), 101);
        bus.send(Message::text(
            r#"{"action":"sub","topic":"orders.x","from":"k1"}"#,
        ))
        .unwrap();
        bus.send(Message::text(r#"{"action":"ping"}"#)).unwrap();
        assert_eq!(recv_text(&mut bus), r#"{"data":"pong"}"#);

        // An etp client on /realtime/etp publishes through the reserved event and gets the
        // cursor in its ack; the ksbus subscriber gets the event in ksbus's own shape.
        let url = format!("ws://{addr}/realtime/etp");
        let (mut etp, response) = tungstenite::client(url, connect(addr)).unwrap();
        assert_eq!(response.status(), 101);
        etp.send(Message::text(
            r#"tidings.publish||3||{"topic":"orders.x","data":{"a":1}}"#,
        ))
        .unwrap();
        let ack = recv_text(&mut etp);
        assert!(
            ack.starts_with(r#"__ack_tidings.publish||3||{"cursor":""#),
            "{ack}"
        );
        assert_eq!(
            recv_text(&mut bus),
            r#"{"a":1,"from":"tidings","topic":"orders.x"}"#
        );
    })
    .await;
}

fn recv_text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
    loop {
        match ws.read().expect("a frame in time") {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

fn send(ws: &mut tungstenite::WebSocket<TcpStream>, frame: Value) {
    ws.send(Message::text(frame.to_string())).unwrap();
}

fn recv(ws: &mut tungstenite::WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("a frame in time") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_merge_at_the_root_of_an_app_with_its_own_fallback() {
    let service = tidings_tokio::start(ServerConfig::default()).expect("starts");
    let app = Router::new()
        .route("/hello", get(|| async { "hello from the app" }))
        .merge(tidings_tokio::axum::routes().with_state(service.clone()))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "the app's own 404") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    blocking(move || {
        let health = request(addr, "GET", "/healthz", "", "");
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        let published = request(addr, "POST", "/publish?topic=a.b", "", "x");
        assert_eq!(published.status, 200, "{}", published.body);
        let wrong = request(addr, "DELETE", "/sse", "", "");
        assert_eq!(wrong.status, 405, "{}", wrong.body);
        let missing = request(addr, "GET", "/nope", "", "");
        assert_eq!(
            (missing.status, missing.body.as_str()),
            (404, "the app's own 404")
        );
    })
    .await;
}
