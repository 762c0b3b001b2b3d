//! The same application API on `tidings-async-std` (async-io, runs under smol too): the server
//! with its own listener, driven from Rust code through the `Hub`.
//!
//! ```text
//! cargo run --example async_std_embed
//! curl -N 'http://127.0.0.1:9313/sse?topic=clock.%3E'                # a tick every second
//! curl -d 'hi' 'http://127.0.0.1:9313/publish?topic=orders.new'    # logged by the app
//! websocat 'ws://127.0.0.1:9313/ws'                                # then:
//!   {"op":"request","id":1,"event":"echo","data":{"hi":1}}        # -> {"type":"ok","id":1,"data":{"hi":1}}
//! ```
//! `TIDINGS_EXAMPLE_LISTEN=127.0.0.1:0` picks another address. Stop it with Ctrl-C.

use std::time::Duration;

use futures_lite::StreamExt as _;
use tidings_adapter::{Received, ServerConfig};
use tidings_async_std::{AsyncIoRuntime, Runtime as _};
use tidings_core::{Pattern, Payload, Topic};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    async_io::block_on(async {
        let config = ServerConfig {
            listen: std::env::var("TIDINGS_EXAMPLE_LISTEN")
                .unwrap_or_else(|_| "127.0.0.1:9313".into()),
            ..ServerConfig::default()
        };
        let server = tidings_async_std::serve(config).await?;
        let addr = server.addr();
        let hub = server.hub().clone();

        // Client requests named "echo" are answered with their own data.
        hub.on("echo", |_conn, payload| async move { Ok(payload) });

        // An in-process subscriber, on a task of the runtime's executor (async-global-executor).
        let mut orders =
            hub.subscribe(vec![Pattern::parse("orders.*", Default::default())?], None)?;
        AsyncIoRuntime.spawn(async move {
            while let Some(item) = orders.next().await {
                if let Received::Event {
                    topic,
                    cursor,
                    payload,
                    ..
                } = item
                {
                    println!("order on {topic} ({cursor}): {}", payload.as_str());
                }
            }
        });

        // Publishing from code: a tick every second.
        let clock = hub.clone();
        AsyncIoRuntime.spawn(async move {
            let topic = Topic::parse("clock.seconds", Default::default()).expect("a valid topic");
            let mut ticks = async_io::Timer::interval(Duration::from_secs(1));
            for tick in 1u64.. {
                ticks.next().await;
                let payload = Payload::json(format!("{{\"tick\":{tick}}}")).expect("JSON");
                if clock.publish(topic.clone(), None, payload).await.is_err() {
                    return; // shut down
                }
            }
        });

        println!("listening on http://{addr}; try:");
        println!("  curl -N 'http://{addr}/sse?topic=clock.%3E'");
        println!("  curl -d 'hi' 'http://{addr}/publish?topic=orders.new'");
        println!("  websocat 'ws://{addr}/ws'");
        println!(r#"    then: {{"op":"request","id":1,"event":"echo","data":{{"hi":1}}}}"#);

        // Ctrl-C: a graceful shutdown (WebSocket close 1001, SSE streams end).
        let mut signals = async_signal::Signals::new([async_signal::Signal::Int])?;
        signals.next().await;
        server.shutdown().await;
        server.wait().await;
        Ok(())
    })
}
