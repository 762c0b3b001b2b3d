//! The application API ([`tidings_adapter::Hub`]) in-process, against clients over loopback:
//! request handlers, emit-with-ack, rooms joined from the connect hook, the disconnect hook,
//! direct sends and in-process subscriptions.
//!
//! Clients are the synchronous `tungstenite` client and plain `TcpStream`s, run on blocking
//! threads (`spawn_blocking`) so that they never hold up the server's tasks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tidings_adapter::{Received, ServerConfig};
use tidings_core::{ConnId, ErrorCode, Name, Pattern, Payload, ProtocolError, Recipient, Topic};
use tokio::task::spawn_blocking;
use tungstenite::{Message, WebSocket};

const TIMEOUT: Duration = Duration::from_secs(15);

async fn server() -> tidings_tokio::Server {
    let config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    tidings_tokio::serve(config).await.expect("serves")
}

struct Ws {
    ws: WebSocket<TcpStream>,
    conn: u64,
}

impl Ws {
    fn open(addr: SocketAddr, path: &str) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}{path}"), stream).unwrap();
        let mut ws = Self { ws, conn: 0 };
        let welcome = ws.recv();
        assert_eq!(welcome["type"], "welcome");
        ws.conn = welcome["conn"].as_u64().unwrap();
        ws
    }

    fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).unwrap();
    }

    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a frame in time") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(_) => panic!("closed"),
                _ => {}
            }
        }
    }
}

/// Runs blocking client code off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_blocking(f).await.expect("the client code succeeds")
}

fn name(s: &str) -> Name {
    Name::parse("name", s, 128).unwrap()
}

fn json_payload(v: &Value) -> Payload {
    Payload::json(v.to_string()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_answer_requests_concurrently_and_missing_ones_say_so() {
    let server = server().await;
    let hub = server.hub().clone();
    hub.on("add", |_conn, payload: Payload| async move {
        let v: Vec<i64> = serde_json::from_str(payload.as_str()).map_err(|e| {
            ProtocolError::new(ErrorCode::Rejected, format!("expected [a, b]: {e}"))
        })?;
        Ok(Payload::json(v.iter().sum::<i64>().to_string()).unwrap())
    });
    hub.on("slow", |conn: ConnId, _| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Payload::json(json!({ "conn": conn.0 }).to_string()).unwrap())
    });
    let addr = server.addr();
    blocking(move || {
        let mut ws = Ws::open(addr, "/ws");
        ws.send(json!({"op":"request","id":1,"event":"slow"}));
        ws.send(json!({"op":"request","id":2,"event":"add","data":[2,3]}));
        ws.send(json!({"op":"request","id":3,"event":"add","data":"nonsense"}));
        ws.send(json!({"op":"request","id":4,"event":"missing"}));
        let mut answers: Vec<Value> = (0..4).map(|_| ws.recv()).collect();
        // The slow handler does not hold up the others: its answer comes last.
        assert_eq!(answers[3]["id"], 1, "{answers:?}");
        assert_eq!(answers[3]["data"]["conn"], ws.conn);
        answers.sort_by_key(|a| a["id"].as_u64());
        assert_eq!(answers[1], json!({"type":"ok","id":2,"data":5}));
        assert_eq!(answers[2]["code"], "rejected");
        assert_eq!(answers[3]["code"], "no_handler");
    })
    .await;
    let stats = hub.stats().await.unwrap();
    assert_eq!(stats.handled_requests, 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_with_ack_gets_the_clients_answer_or_a_timeout() {
    let server = server().await;
    let hub = server.hub().clone();
    let addr = server.addr();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let client = spawn_blocking(move || {
        let mut ws = Ws::open(addr, "/ws");
        tx.send(ws.conn).unwrap();
        let request = ws.recv();
        assert_eq!(request["type"], "request");
        assert_eq!(request["event"], "confirm");
        assert_eq!(request["data"], json!({"amount":5}));
        ws.send(json!({"op":"reply","id":request["id"],"data":{"ok":true}}));
        let second = ws.recv();
        assert_eq!(second["event"], "ignored");
        // Not answered: the server times out. The connection is kept for a last check.
        ws
    });
    let conn = ConnId(rx.await.unwrap());
    let answer = hub
        .request(
            conn,
            name("confirm"),
            json_payload(&json!({"amount":5})),
            None,
        )
        .await
        .expect("the client answers");
    assert_eq!(answer.as_str(), r#"{"ok":true}"#);
    let error = hub
        .request(
            conn,
            name("ignored"),
            Payload::empty(),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Timeout);
    let error = hub
        .request(ConnId(999_999), name("x"), Payload::empty(), None)
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NoRecipient);
    drop(client.await.expect("the client code succeeds"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_client_id_and_to_a_room_get_their_members_answers() {
    let server = server().await;
    let hub = server.hub().clone();
    let addr = server.addr();
    // Two clients answer with their id.
    let answering = |id: &'static str, requests: usize| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let client = spawn_blocking(move || {
            let mut ws = Ws::open(addr, "/ws");
            ws.send(json!({"op":"identify","id":1,"client_id":id}));
            assert_eq!(ws.recv()["type"], "ok");
            tx.send(ws.conn).unwrap();
            for _ in 0..requests {
                let request = ws.recv();
                assert_eq!(request["type"], "request", "{request}");
                let data = format!("{id}:{}", request["data"].as_str().unwrap());
                ws.send(json!({"op":"reply","id":request["id"],"data":data}));
            }
            ws
        });
        (client, rx)
    };
    let (ann, ann_conn) = answering("ann", 3);
    let (ben, ben_conn) = answering("ben", 1);
    let (ann_conn, ben_conn) = (
        ConnId(ann_conn.await.unwrap()),
        ConnId(ben_conn.await.unwrap()),
    );
    for conn in [ann_conn, ben_conn] {
        assert_eq!(hub.join(conn, name("jury")).await, Ok(true));
    }
    let text = |s: &str| Payload::text(s.to_owned()).unwrap();
    let answer = hub
        .request_client(name("ann"), name("confirm"), text("pay?"), None)
        .await;
    assert_eq!(answer.map(|p| p.as_str().to_owned()), Ok("ann:pay?".into()));
    let mut answers: Vec<(String, String)> = hub
        .request_room(name("jury"), name("vote"), text("yes?"), None)
        .await
        .expect("the room's answers")
        .into_iter()
        .map(|a| {
            (
                a.client_id.unwrap().as_str().to_owned(),
                a.result.unwrap().as_str().to_owned(),
            )
        })
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        [("ann", "ann:yes?"), ("ben", "ben:yes?")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let error = hub
        .request_client(name("nobody"), name("x"), Payload::empty(), None)
        .await
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NoRecipient);
    let nobody = hub
        .request_room(name("empty"), name("x"), Payload::empty(), None)
        .await;
    assert_eq!(nobody, Ok(Vec::new()));
    // The room's request did not leave a second answer of ann's behind.
    let answer = hub
        .request_client(name("ann"), name("again"), text("sure?"), None)
        .await;
    assert_eq!(
        answer.map(|p| p.as_str().to_owned()),
        Ok("ann:sure?".into())
    );
    drop((ann.await.unwrap(), ben.await.unwrap()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_from_the_connect_hook_and_the_disconnect_hook() {
    let server = server().await;
    let hub = server.hub().clone();
    hub.on_connect(|c| {
        c.head
            .query_param("room")
            .and_then(|r| Name::parse("room", r, 128).ok())
            .into_iter()
            .collect()
    });
    let gone = Arc::new(AtomicUsize::new(0));
    let (gone_tx, mut gone_rx) = tokio::sync::mpsc::unbounded_channel();
    {
        let gone = gone.clone();
        hub.on_disconnect(move |conn| {
            gone.fetch_add(1, Ordering::SeqCst);
            let _ = gone_tx.send(conn);
        });
    }
    let addr = server.addr();
    let (mut a, b, mut c) = blocking(move || {
        (
            Ws::open(addr, "/ws?room=blue"),
            Ws::open(addr, "/ws?room=blue"),
            Ws::open(addr, "/ws?room=red"),
        )
    })
    .await;
    assert_eq!(hub.rooms().await.unwrap(), vec![name("blue"), name("red")]);
    let mut blue = vec![ConnId(a.conn), ConnId(b.conn)];
    blue.sort();
    assert_eq!(hub.room_members(name("blue")).await.unwrap(), blue);
    let reached = hub
        .emit_room(
            name("blue"),
            Some(name("hello")),
            Payload::text("hi blue").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reached, 2);
    // Joined and left from code too.
    assert!(hub.join(ConnId(c.conn), name("blue")).await.unwrap());
    assert!(hub.leave(ConnId(c.conn), name("red")).await.unwrap());
    let reached = hub
        .emit_room(name("blue"), None, Payload::text("all three").unwrap())
        .await
        .unwrap();
    assert_eq!(reached, 3);
    let sent = hub
        .send(
            Recipient::Conn(ConnId(c.conn)),
            None,
            Payload::text("just you").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(sent, 1);
    let b_conn = ConnId(b.conn);
    let (a, c) = blocking(move || {
        let first = a.recv();
        assert_eq!(
            first,
            json!({"type":"message","room":"blue","event":"hello","data":"hi blue"})
        );
        assert_eq!(a.recv()["data"], "all three");
        assert_eq!(c.recv()["data"], "all three");
        assert_eq!(c.recv(), json!({"type":"message","data":"just you"}));
        drop(b); // goes away: leaves its rooms
        (a, c)
    })
    .await;
    let gone_conn = tokio::time::timeout(TIMEOUT, gone_rx.recv())
        .await
        .expect("the disconnect hook runs")
        .unwrap();
    assert_eq!(gone_conn, b_conn);
    assert_eq!(gone.load(Ordering::SeqCst), 1);
    assert_eq!(hub.room_members(name("blue")).await.unwrap().len(), 2);
    drop((a, c));
    server.shutdown().await;
}

async fn next(sub: &mut tidings_adapter::Subscription) -> Received {
    tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_subscriptions_receive_and_resume() {
    let server = server().await;
    let hub = server.hub().clone();
    let pattern = Pattern::parse("chat.*", Default::default()).unwrap();
    let mut sub = hub.subscribe(vec![pattern.clone()], None).unwrap();
    let topic = Topic::parse("chat.lobby", Default::default()).unwrap();
    let first = hub
        .publish(
            topic.clone(),
            Some(name("msg")),
            Payload::json(r#"{"a":[1, 2]}"#).unwrap(),
        )
        .await
        .unwrap();
    // From a client over HTTP, text.
    let addr = server.addr();
    let second = blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
            .write_all(b"POST /publish?topic=chat.room HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nline\n")
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let body = raw.split("\r\n\r\n").nth(1).unwrap().to_owned();
        let id: Value = serde_json::from_str(&body).unwrap();
        id["id"].as_str().unwrap().to_owned()
    })
    .await;
    let Received::Event {
        topic: t,
        cursor,
        event,
        payload,
    } = next(&mut sub).await
    else {
        panic!("not an event")
    };
    assert_eq!(
        (t, cursor, event),
        (topic.clone(), first, Some(name("msg")))
    );
    assert!(payload.is_json());
    assert_eq!(payload.as_str(), r#"{"a":[1, 2]}"#);
    let Received::Event {
        cursor, payload, ..
    } = next(&mut sub).await
    else {
        panic!("not an event")
    };
    assert_eq!(cursor.to_string(), second);
    assert!(!payload.is_json());
    assert_eq!(payload.as_str(), "line\n");
    drop(sub);

    // Resuming after the first event yields exactly the second.
    let mut resumed = hub.subscribe(vec![pattern], Some(first)).unwrap();
    let item = tokio::time::timeout(TIMEOUT, resumed.next())
        .await
        .unwrap()
        .unwrap();
    let Received::Event { cursor, .. } = item else {
        panic!("not an event")
    };
    assert_eq!(cursor.to_string(), second);
    let stats = hub.stats().await.unwrap();
    assert_eq!(stats.internal_connections, 1);

    // Shutting down ends the stream.
    server.shutdown().await;
    let end = tokio::time::timeout(TIMEOUT, resumed.next()).await.unwrap();
    assert_eq!(end, None);
    assert_eq!(
        resumed.closed_reason().map(|r| r.code),
        Some(ErrorCode::ShuttingDown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_as_a_body_for_embeddings() {
    let server = server().await;
    let service = server.service().clone();
    let (head, _) =
        tidings_adapter::request::parse_head(b"GET /sse?topic=e.* HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .unwrap();
    let request = service.check_sse(&head).expect("a valid request");
    let mut body = service.sse_body(&head, request);
    let chunk = |b: Option<bytes::Bytes>| String::from_utf8(b.expect("a chunk").to_vec()).unwrap();
    let first = tokio::time::timeout(TIMEOUT, body.next()).await.unwrap();
    assert_eq!(chunk(first), "retry: 2000\n\n");
    let hub = server.hub();
    let cursor = hub
        .publish(
            Topic::parse("e.x", Default::default()).unwrap(),
            None,
            Payload::text("a\nb").unwrap(),
        )
        .await
        .unwrap();
    let event = tokio::time::timeout(TIMEOUT, body.next()).await.unwrap();
    assert_eq!(chunk(event), format!("id: {cursor}\ndata: a\ndata: b\n\n"));
    assert_eq!(hub.stats().await.unwrap().sse_connections, 1);
    drop(body);
    // The close travels on the same channel as the stats request: it is handled first.
    assert_eq!(hub.stats().await.unwrap().sse_connections, 0);
    server.shutdown().await;
}

/// On a single-threaded runtime, a busy driver still lets the other tasks run.
#[tokio::test(flavor = "current_thread")]
async fn a_single_threaded_runtime_is_not_starved_by_the_driver() {
    let server = server().await;
    let hub = server.hub().clone();
    let pattern = Pattern::parse("load.>", Default::default()).unwrap();
    let mut sub = hub.subscribe(vec![pattern], None).unwrap();
    let topic = Topic::parse("load.x", Default::default()).unwrap();
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 0..2000 {
                let payload = Payload::text(i.to_string()).unwrap();
                hub.publish(topic.clone(), None, payload).await.unwrap();
            }
        })
    };
    for i in 0..2000 {
        let Received::Event { payload, .. } = next(&mut sub).await else {
            panic!("not an event");
        };
        assert_eq!(payload.as_str(), i.to_string());
    }
    publisher.await.unwrap();
    server.shutdown().await;
}

/// Accepted sockets get the TCP options (Linux: `TCP_USER_TIMEOUT` finds vanished peers).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn accepted_sockets_are_tuned() {
    let server = server().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    server.service().tune_tcp(&stream);
    let socket = socket2::SockRef::from(&stream);
    assert_eq!(
        socket.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(60))
    );
    assert!(socket.tcp_nodelay().unwrap());
    server.shutdown().await;
}

/// Sends a raw HTTP request and returns the status line's code and the whole answer, read to
/// the end of the connection (so `request` says `Connection: close`).
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugged_in_authorizer_decides_after_token_authentication() {
    use tidings_adapter::auth::AuthError;
    let server = server().await;
    let addr = server.addr();
    // The application's rule: a `key` query parameter is required, and publishing is only
    // allowed to `public.>` whatever the token or anonymous access granted.
    server.hub().set_authorizer(|head, mut authenticated| {
        if head.query_param("key") != Some("sesame") {
            return Err(AuthError::unauthorized("a key is required"));
        }
        let public = Pattern::parse("public.>", Default::default()).unwrap();
        authenticated.grants.publish = vec![public];
        Ok(authenticated)
    });
    let (refused, no_key, allowed, forbidden) = blocking(move || {
        let get = |path: &str| {
            http(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
            .0
        };
        let post = |path: &str| {
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
            );
            http(addr, &request)
        };
        (
            get("/sse?topic=a"),
            post("/publish?topic=public.news"),
            post("/publish?topic=public.news&key=sesame"),
            post("/publish?topic=private&key=sesame"),
        )
    })
    .await;
    assert_eq!(refused, 401, "no key: refused before the stream starts");
    assert_eq!(no_key.0, 401);
    assert!(no_key.1.contains("a key is required"), "{}", no_key.1);
    assert_eq!(allowed.0, 200, "{}", allowed.1);
    assert_eq!(
        forbidden.0, 403,
        "the authorizer narrowed the publish grants: {}",
        forbidden.1
    );
    server.shutdown().await;
}

/// A raw WebSocket upgrade request (`GET path`) with extra header lines.
fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_hook_sees_an_etp_upgrade_from_a_foreign_origin() {
    let server = server().await;
    let addr = server.addr();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    server.hub().on_refused(move |head, refusal| {
        let origin = head.header("origin").unwrap_or_default().to_owned();
        log.lock().unwrap().push((
            head.path.clone(),
            origin,
            refusal.status,
            refusal.code.clone(),
        ));
    });
    let refused = blocking(move || {
        http(
            addr,
            // A second Connection field (`Upgrade, close`): the answer is read to the end.
            &upgrade_request(
                "/etp",
                "Origin: http://evil.example\r\nConnection: close\r\n",
            ),
        )
    })
    .await;
    assert_eq!(refused.0, 403, "{}", refused.1);
    let seen_now = seen.lock().unwrap().clone();
    assert_eq!(
        seen_now,
        vec![(
            "/etp".to_owned(),
            "http://evil.example".to_owned(),
            403,
            "origin_not_allowed".to_owned()
        )]
    );
    // An accepted upgrade (same host, no `Origin`) is not a refusal.
    let accepted = blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream
            .write_all(upgrade_request("/etp", "Origin: http://x\r\n").as_bytes())
            .unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await;
    assert_eq!(accepted, "HTTP/1.1 101");
    assert_eq!(seen.lock().unwrap().len(), 1, "only the refusal was seen");
    server.shutdown().await;
}

/// Opens an etp connection (no `Origin`), returning the client and the connection id the
/// connect hook reported, once the connection is open.
fn open_etp(
    addr: SocketAddr,
    ids: &std::sync::mpsc::Receiver<ConnId>,
) -> (WebSocket<TcpStream>, ConnId) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/etp"), stream).unwrap();
    let conn = ids.recv_timeout(TIMEOUT).expect("the connect hook ran");
    // The hook runs before the connection opens on the driver: an answered event says it has.
    ws.send(Message::text("x||1")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("__ack_x||1"));
    (ws, conn)
}

/// Reads until the server's close frame and returns its code.
fn close_code(ws: &mut WebSocket<TcpStream>) -> u16 {
    loop {
        if let Message::Close(frame) = ws.read().expect("a close in time") {
            return frame.map_or(1005, |f| u16::from(f.code));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etp_connections_close_normally_and_the_disconnect_hook_says_why() {
    use tidings_adapter::{Disconnect, HubError};
    let server = server().await;
    let addr = server.addr();
    let hub = server.hub().clone();
    let (id_tx, ids) = std::sync::mpsc::channel();
    let id_tx = std::sync::Mutex::new(id_tx);
    hub.on_connect(move |c| {
        let _ = id_tx.lock().unwrap().send(c.conn);
        Vec::new()
    });
    let (gone_tx, gone) = std::sync::mpsc::channel();
    let gone_tx = std::sync::Mutex::new(gone_tx);
    hub.on_disconnect_reason(move |conn, why| {
        let _ = gone_tx.lock().unwrap().send((conn, why.clone()));
    });
    let ids = Arc::new(std::sync::Mutex::new(ids));
    let gone = Arc::new(std::sync::Mutex::new(gone));
    let next_gone = {
        let gone = gone.clone();
        move || {
            gone.lock()
                .unwrap()
                .recv_timeout(TIMEOUT)
                .expect("the disconnect hook ran")
        }
    };

    // The application closes normally: close 1000, and the hook sees a normal close.
    let ids2 = ids.clone();
    let (mut ws, conn) = blocking(move || open_etp(addr, &ids2.lock().unwrap())).await;
    hub.close_normal(conn).await.unwrap();
    let code = blocking(move || close_code(&mut ws)).await;
    assert_eq!(code, 1000);
    let (c, why) = blocking(next_gone.clone()).await;
    assert_eq!((c, &why), (conn, &Disconnect::Normal));
    assert!(why.is_normal());
    assert_eq!(
        hub.close_normal(conn).await,
        Err(HubError::Api(tidings_core::ApiError::UnknownConn(conn))),
        "it is gone"
    );

    // The client closes: without a code it is not a normal close, with 1000 it is.
    let ids2 = ids.clone();
    let (mut ws, conn) = blocking(move || open_etp(addr, &ids2.lock().unwrap())).await;
    blocking(move || {
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    })
    .await;
    let (c, why) = blocking(next_gone.clone()).await;
    assert_eq!((c, &why), (conn, &Disconnect::Client(Some(1005))));
    assert!(!why.is_normal(), "a close without a code is not 1000");
    let ids2 = ids.clone();
    let (mut ws, conn) = blocking(move || open_etp(addr, &ids2.lock().unwrap())).await;
    blocking(move || {
        ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
        while ws.read().is_ok() {}
    })
    .await;
    let (c, why) = blocking(next_gone.clone()).await;
    assert_eq!((c, &why), (conn, &Disconnect::Client(Some(1000))));
    assert!(why.is_normal());

    // A close with a reason is not normal.
    let ids2 = ids.clone();
    let (mut ws, conn) = blocking(move || open_etp(addr, &ids2.lock().unwrap())).await;
    let reason = ProtocolError::new(ErrorCode::Forbidden, "go away");
    hub.close(conn, reason.clone()).await.unwrap();
    let code = blocking(move || close_code(&mut ws)).await;
    assert_eq!(code, 1008);
    let (c, why) = blocking(next_gone.clone()).await;
    assert_eq!((c, &why), (conn, &Disconnect::Server(reason)));
    assert!(!why.is_normal());

    // Shutdown: 1001, reported as the server's close.
    let ids2 = ids.clone();
    let (mut ws, conn) = blocking(move || open_etp(addr, &ids2.lock().unwrap())).await;
    let closing = blocking(move || close_code(&mut ws));
    server.shutdown().await;
    assert_eq!(closing.await, 1001);
    let (c, why) = blocking(next_gone).await;
    assert_eq!(c, conn);
    assert_eq!(why.ws_close_code(), Some(1001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_with_counter_payloads_wait_for_their_pong() {
    let server = server().await;
    let addr = server.addr();
    let hub = server.hub().clone();
    let (id_tx, ids) = std::sync::mpsc::channel();
    let id_tx = std::sync::Mutex::new(id_tx);
    hub.on_connect(move |c| {
        let _ = id_tx.lock().unwrap().send(c.conn);
        Vec::new()
    });
    let ids = Arc::new(std::sync::Mutex::new(ids));

    // tungstenite answers pings (while it reads): the client records their payloads.
    let ids2 = ids.clone();
    let (mut ws, conn) = blocking(move || open_etp(addr, &ids2.lock().unwrap())).await;
    let client = spawn_blocking(move || {
        let mut payloads = Vec::new();
        loop {
            match ws.read() {
                Ok(Message::Ping(p)) if !p.is_empty() => {
                    payloads.push(String::from_utf8(p.to_vec()).unwrap());
                }
                Ok(Message::Close(_)) | Err(_) => return payloads,
                Ok(_) => {}
            }
        }
    });
    let rtt = hub.ping(conn, TIMEOUT).await.expect("a pong");
    assert!(rtt < TIMEOUT);
    hub.ping(conn, TIMEOUT).await.expect("a second pong");
    hub.close_normal(conn).await.unwrap();
    assert_eq!(client.await.unwrap(), ["1", "2"]);
    let gone = hub.ping(conn, TIMEOUT).await.unwrap_err();
    assert_eq!(gone.code, ErrorCode::NoRecipient);

    // A client that does not read does not answer: the ping times out.
    let ids2 = ids.clone();
    let (ws, conn) = blocking(move || open_etp(addr, &ids2.lock().unwrap())).await;
    let started = std::time::Instant::now();
    let late = hub
        .ping(conn, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(late.code, ErrorCode::Timeout, "{late}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(ws);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_watches_a_presence() {
    use tidings_core::{PresenceAction, PresenceNotice};
    let server = server().await;
    let hub = server.hub().clone();
    let topic = Topic::parse("chat.room1", Default::default()).unwrap();
    let (start, mut watch) = hub.watch_presence(topic.clone()).await.unwrap();
    assert_eq!((start.connections, start.nodes), (0, 1));
    async fn next(watch: &mut tidings_adapter::PresenceWatch) -> tidings_core::PresenceNotice {
        tokio::time::timeout(TIMEOUT, watch.next())
            .await
            .expect("a notice in time")
            .expect("the watch goes on")
    }

    let addr = server.addr();
    let ws = blocking(move || {
        let mut ws = Ws::open(addr, "/ws");
        ws.send(json!({"op":"identify","id":1,"client_id":"alice"}));
        ws.send(json!({"op":"subscribe","id":2,"topic":"chat.*"}));
        assert_eq!(ws.recv()["type"], "ok");
        assert_eq!(ws.recv()["type"], "ok");
        ws
    })
    .await;
    assert_eq!(
        next(&mut watch).await,
        PresenceNotice {
            topic: topic.clone(),
            action: PresenceAction::Join,
            client_id: Some(name("alice")),
            info: None,
        }
    );
    // An in-process subscription is a connection too: anonymous.
    let pattern = Pattern::parse("chat.room1", Default::default()).unwrap();
    let sub = hub.subscribe(vec![pattern], None).unwrap();
    let notice = next(&mut watch).await;
    assert_eq!(
        (notice.action, notice.client_id),
        (PresenceAction::Join, None)
    );
    drop(sub);
    assert_eq!(next(&mut watch).await.action, PresenceAction::Leave);
    drop(ws);
    let notice = next(&mut watch).await;
    assert_eq!(
        (notice.action, notice.client_id),
        (PresenceAction::Leave, Some(name("alice")))
    );
    // A pattern is not a topic: nothing to watch (the type says so); the server's shutdown
    // ends the watch.
    server.shutdown().await;
    let end = tokio::time::timeout(TIMEOUT, watch.next()).await.unwrap();
    assert_eq!(end, None);
}
