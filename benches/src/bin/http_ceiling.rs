//! `http_ceiling`: the most trivial HTTP/1.1 server hyper makes, the ceiling for
//! `POST /publish` over keep-alive connections (docs/BENCHMARKS.md, "The HTTP server on hyper").
//!
//! Every request, whatever its method and path, has its body read to the end and is answered
//! `200` with a small JSON body shaped like tidings' publish answer. Keep-alive is hyper's
//! default; sockets get `TCP_NODELAY` as tidings' do. tokio multi-threaded runtime (one worker
//! per core, as `tidings serve --runtime tokio`), one task per connection.
//!
//! ```sh
//! cargo build --release -p tidings-bench --bin http_ceiling
//! target/release/http_ceiling 127.0.0.1:0     # prints `listening on http://ADDR`, like tidings
//! ```

use std::convert::Infallible;
use std::io::Write as _;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The answer's body, the length of a tidings cursor answer.
const BODY: &[u8] = br#"{"id":"18c5e2f04a1-42"}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole body, as a publish does (the bytes are dropped).
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        let mut out = std::io::stdout();
        writeln!(out, "listening on http://{}", listener.local_addr()?)?;
        out.flush()?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("http_ceiling: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    })
}
