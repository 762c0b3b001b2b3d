//! The tidings server inside a tokio application, driven from Rust code through the `Hub`.
//!
//! ```text
//! cargo run -p tidings-tokio --example hub
//! curl -N 'http://127.0.0.1:9313/sse?topic=clock.>'        # a tick every second
//! websocat 'ws://127.0.0.1:9313/ws?room=lobby'             # joins the room "lobby", then:
//!   {"op":"request","id":1,"event":"echo","data":{"hi":1}} # -> {"type":"ok","id":1,"data":{"hi":1}}
//! ```
//! Every published `orders.*` event is also read in-process and logged, and every ten seconds
//! the room `lobby` gets a message.

use std::time::Duration;

use futures_util::StreamExt as _;
use tidings_adapter::{Received, ServerConfig};
use tidings_core::{Name, Pattern, Payload, Topic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = tidings_tokio::serve(ServerConfig::default()).await?;
    println!("listening on http://{}", server.addr());
    let hub = server.hub().clone();

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

    // An in-process subscriber.
    let mut orders = hub.subscribe(vec![Pattern::parse("orders.*", Default::default())?], None)?;
    tokio::spawn(async move {
        while let Some(item) = orders.next().await {
            if let Received::Event {
                topic,
                cursor,
                payload,
                ..
            } = item
            {
                println!("{topic} {cursor}: {}", payload.as_str());
            }
        }
    });

    // A publisher and a room broadcaster.
    let clock = hub.clone();
    tokio::spawn(async move {
        let topic = Topic::parse("clock.seconds", Default::default()).expect("a valid topic");
        let lobby = Name::parse("room", "lobby", 128).expect("a valid name");
        for tick in 1u64.. {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let payload = Payload::json(format!("{{\"tick\":{tick}}}")).expect("JSON");
            if clock.publish(topic.clone(), None, payload).await.is_err() {
                return;
            }
            if tick % 10 == 0 {
                let text = Payload::text(format!("tick {tick}")).expect("text");
                let _ = clock.emit_room(lobby.clone(), None, text).await;
            }
        }
    });

    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
