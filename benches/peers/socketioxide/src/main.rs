//! The socketioxide peer of the comparison (`tidings-bench compare`): axum + socketioxide, the
//! same events as `benches/peers/socketio/server.js`:
//!
//! - `join` (room, ack): joins the room, acks `"ok"`;
//! - `pub` (room, data, ack): emits `msg` with `data` to the room (encoded once), acks `"ok"`.
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
    let (layer, io) = SocketIo::new_layer();
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
