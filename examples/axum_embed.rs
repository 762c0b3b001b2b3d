//! tidings inside an axum application: the app's own routes, tidings nested under `/realtime`,
//! and the `Hub` driving it from Rust code.
//!
//! ```text
//! cargo run --example axum_embed
//! curl http://127.0.0.1:3000/hello
//! curl -N 'http://127.0.0.1:3000/realtime/sse?topic=clock.%3E'           # clock.> (hyper wants > encoded)
//! curl -d 'hi' 'http://127.0.0.1:3000/realtime/publish?topic=orders.new'  # logged by the app
//! websocat 'ws://127.0.0.1:3000/realtime/ws?room=lobby'                   # joins room "lobby", then:
//!   {"op":"request","id":1,"event":"echo","data":{"hi":1}}               # -> {"type":"ok","id":1,"data":{"hi":1}}
//! ```
//! `TIDINGS_EXAMPLE_LISTEN=127.0.0.1:0` picks another address.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use futures_util::StreamExt as _;
use tidings_adapter::{Received, ServerConfig};
use tidings_core::{Name, Pattern, Payload, Topic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The server without a listener of its own: axum accepts the connections.
    let service = tidings_tokio::start(ServerConfig::default())?;
    let hub = service.hub().clone();

    // Client requests named "echo" are answered with their own data.
    hub.on("echo", |_conn, payload| async move { Ok(payload) });
    // Connections opened with ?room=NAME join that room.
    hub.on_connect(|c| {
        c.head
            .query_param("room")
            .and_then(|room| Name::parse("room", room, 128).ok())
            .into_iter()
            .collect()
    });
    hub.on_disconnect(|conn| println!("connection {conn} left"));

    // An in-process subscriber: every `orders.*` event, however it was published.
    let mut orders = hub.subscribe(vec![Pattern::parse("orders.*", Default::default())?], None)?;
    tokio::spawn(async move {
        while let Some(item) = orders.next().await {
            match item {
                Received::Event {
                    topic,
                    cursor,
                    payload,
                    ..
                } => println!("order on {topic} ({cursor}): {}", payload.as_str()),
                other => println!("{other:?}"),
            }
        }
    });

    // Publishing from code: a tick every second, and a room message every ten.
    let clock = hub.clone();
    tokio::spawn(async move {
        let topic = Topic::parse("clock.seconds", Default::default()).expect("a valid topic");
        let lobby = Name::parse("room", "lobby", 128).expect("a valid name");
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        for tick in 1u64.. {
            interval.tick().await;
            let payload = Payload::json(format!("{{\"tick\":{tick}}}")).expect("JSON");
            if clock.publish(topic.clone(), None, payload).await.is_err() {
                return; // shut down
            }
            if tick % 10 == 0 {
                let text = Payload::text(format!("tick {tick}")).expect("text");
                let _ = clock.emit_room(lobby.clone(), None, text).await;
            }
        }
    });

    let app = Router::new()
        .route("/hello", get(|| async { "hello from the application\n" }))
        .nest("/realtime", tidings_tokio::axum::router(service.clone()));
    let listen =
        std::env::var("TIDINGS_EXAMPLE_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}; try:");
    println!("  curl http://{addr}/hello");
    println!("  curl -N 'http://{addr}/realtime/sse?topic=clock.%3E'");
    println!("  curl -d 'hi' 'http://{addr}/realtime/publish?topic=orders.new'");
    println!("  websocat 'ws://{addr}/realtime/ws?room=lobby'");
    println!(r#"    then: {{"op":"request","id":1,"event":"echo","data":{{"hi":1}}}}"#);

    // Ctrl-C: close tidings' connections gracefully (WebSocket 1001, SSE streams end), then
    // stop axum.
    let shutdown = service.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.shutdown().await;
        })
        .await?;
    Ok(())
}
