//! The socketioxide peer of the comparison (`tidings-bench compare`): axum + socketioxide, the
//! same events as `benches/peers/socketio/server.js`:
//!
//! - `join` (room, ack): joins the room, acks `"ok"`;
//! - `pub` (room, data, ack): emits `msg` with `data` to the room (encoded once), acks `"ok"`.
//!
//! Otherwise the defaults, on a multi-threaded tokio runtime (one worker per core, as tidings).
//!
//! Listens on 127.0.0.1 (port from the first argument, 0 = any free one) and prints
//! `listening on http://127.0.0.1:PORT` as its first stdout line.

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // The send buffer per connection: 128 packets by default, past which socketioxide drops
    // what a broadcast emits to that connection. Raised to 32,768 (~4 MiB of 128 B events) to
    // match tidings' default limit of 4 MiB queued per connection (and nats-server's 64 MiB,
    // socket.io's unbounded buffers); tokio's bounded channel allocates it lazily.
    let (layer, io) = SocketIo::builder().max_buffer_size(32_768).build_layer();
    io.ns("/", async |socket: SocketRef| {
        socket.on(
            "join",
            async |socket: SocketRef, Data::<String>(room), ack: AckSender| {
                socket.join(room);
                let _ = ack.send("ok");
            },
        );
        socket.on(
            "pub",
            async |socket: SocketRef, Data::<(String, Value)>((room, data)), ack: AckSender| {
                let _ = socket.to(room).emit("msg", &data).await;
                let _ = ack.send("ok");
            },
        );
    });
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
