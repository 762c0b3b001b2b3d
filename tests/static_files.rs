//! The files the server serves from its own binary: the demo page at `GET /` and the browser
//! client at `GET /tidings.js` (`clients/js/`), with their content types and caching headers
//! (`Cache-Control: no-cache` + `ETag`, `304` on revalidation), on both runtimes of the
//! `tidings` binary and in the axum embedding (nested under a prefix, and merged at the root of
//! an application with routes of its own).
//!
//! The binary is started by the shared harness (`tests/common`: `tidings serve --listen
//! 127.0.0.1:0`, the address read from its first stdout line) and spoken to with plain
//! `TcpStream`s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tidings_adapter::ServerConfig;

const READ_TIMEOUT: Duration = Duration::from_secs(15);

const PAGE: &str = include_str!("../clients/js/index.html");
const CLIENT: &str = include_str!("../clients/js/tidings.js");

// ---- harness -----------------------------------------------------------------------------------

mod common;
use common::{RUNTIMES, Resp, Server};

/// One request (`Connection: close`, so that hyper closes too); reads the answer to the end
/// (de-chunked by `Resp::parse`).
fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("the server answers and closes");
    Resp::parse(&raw)
}

fn for_each_runtime(test: impl Fn(SocketAddr)) {
    for runtime in RUNTIMES {
        eprintln!("runtime: {runtime}");
        let server = Server::start(runtime, &[]);
        test(server.addr);
    }
}

/// `GET path` answers the file, byte for byte, with its content type and caching headers;
/// returns its `ETag`.
fn assert_serves(addr: SocketAddr, path: &str, content_type: &str, content: &str) -> String {
    let resp = request(addr, "GET", path, &[]);
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.body);
    assert_eq!(resp.header("content-type"), Some(content_type), "{path}");
    assert_eq!(resp.body, content, "GET {path} serves the file as it is");
    assert_eq!(resp.header("cache-control"), Some("no-cache"), "{path}");
    assert_eq!(
        resp.header("x-content-type-options"),
        Some("nosniff"),
        "{path}"
    );
    let etag = resp.header("etag").expect("an ETag").to_owned();
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "a strong ETag: {etag}"
    );
    etag
}

/// A browser revalidating its copy gets `304` without a body while the file is unchanged, and
/// the file again for any other tag.
fn assert_revalidates(addr: SocketAddr, path: &str, etag: &str) {
    for tags in [
        etag.to_owned(),
        format!("W/{etag}"),
        format!("\"0000\", {etag}"),
        "*".to_owned(),
    ] {
        let resp = request(addr, "GET", path, &[("If-None-Match", &tags)]);
        assert_eq!(resp.status, 304, "If-None-Match: {tags}");
        assert_eq!(resp.body, "", "a 304 has no body");
        assert_eq!(resp.header("content-length"), None, "nor a Content-Length");
        assert_eq!(resp.header("etag"), Some(etag));
        assert_eq!(resp.header("cache-control"), Some("no-cache"));
    }
    let stale = request(
        addr,
        "GET",
        path,
        &[("If-None-Match", "\"0123456789abcdef\"")],
    );
    assert_eq!(stale.status, 200, "another tag gets the file");
    assert!(!stale.body.is_empty());
}

// ---- tests -------------------------------------------------------------------------------------

#[test]
fn the_demo_page_and_the_browser_client_are_served() {
    // The page loads the client next to itself, and the client finds /ws and /sse next to
    // itself: the pair works at the root and under a mount.
    assert!(PAGE.contains("import(base + 'tidings.js')"));
    assert!(CLIENT.contains("new URL(path, import.meta.url)"));
    for_each_runtime(|addr| {
        let page = assert_serves(addr, "/", "text/html; charset=utf-8", PAGE);
        let client = assert_serves(
            addr,
            "/tidings.js",
            "text/javascript; charset=utf-8",
            CLIENT,
        );
        assert_ne!(page, client, "each file has its own ETag");
        // Pages of any origin may import the client (module scripts are fetched with CORS);
        // the page itself is not shared.
        let js = request(
            addr,
            "GET",
            "/tidings.js",
            &[("Origin", "https://app.example")],
        );
        assert_eq!(js.header("access-control-allow-origin"), Some("*"));
        let html = request(addr, "GET", "/", &[("Origin", "https://app.example")]);
        assert_eq!(html.header("access-control-allow-origin"), None);
        assert_revalidates(addr, "/", &page);
        assert_revalidates(addr, "/tidings.js", &client);
        // Stable: the same tag on every request (a browser's cache would be useless otherwise).
        assert_eq!(request(addr, "GET", "/", &[]).header("etag"), Some(&*page));
    });
}

#[test]
fn other_methods_and_paths_are_refused_and_the_404_lists_the_files() {
    for_each_runtime(|addr| {
        for path in ["/", "/tidings.js"] {
            let resp = request(addr, "POST", path, &[]);
            assert_eq!(resp.status, 405, "POST {path}: {}", resp.body);
            assert_eq!(resp.error_code(), "method_not_allowed");
            assert_eq!(resp.header("allow"), Some("GET"));
        }
        for path in ["/index.html", "/tidings.js/x", "/clients/js/tidings.js"] {
            let resp = request(addr, "GET", path, &[]);
            assert_eq!(resp.status, 404, "GET {path}: {}", resp.body);
            assert_eq!(resp.error_code(), "not_found");
            assert!(
                resp.body.contains("GET / (demo page)")
                    && resp.body.contains("GET /tidings.js (browser client)"),
                "{}",
                resp.body
            );
        }
    });
}

/// An axum application on a listener of its own.
async fn serve_app(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_embedding_serves_them_under_its_mount_and_merged_at_the_root() {
    use axum::routing::get;
    let service = tidings_tokio::start(ServerConfig::default()).expect("starts");
    let nested = serve_app(
        axum::Router::new()
            .route("/", get(|| async { "the app's own root" }))
            .nest("/realtime", tidings_tokio::axum::router(service.clone())),
    )
    .await;
    let merged = serve_app(
        axum::Router::new()
            .route("/", get(|| async { "the app's own root" }))
            .merge(tidings_tokio::axum::routes().with_state(service.clone())),
    )
    .await;
    tokio::task::spawn_blocking(move || {
        // Under the mount: the page at /realtime (axum's `nest` does not route `/realtime/`)
        // loads /realtime/tidings.js, which connects to /realtime/ws.
        let page = assert_serves(nested, "/realtime", "text/html; charset=utf-8", PAGE);
        let client = assert_serves(
            nested,
            "/realtime/tidings.js",
            "text/javascript; charset=utf-8",
            CLIENT,
        );
        assert_revalidates(nested, "/realtime/tidings.js", &client);
        assert_revalidates(nested, "/realtime", &page);
        assert_eq!(request(nested, "GET", "/", &[]).body, "the app's own root");
        // Merged at the root: the client is there, the root stays the application's.
        let merged_client = assert_serves(
            merged,
            "/tidings.js",
            "text/javascript; charset=utf-8",
            CLIENT,
        );
        assert_eq!(merged_client, client);
        assert_eq!(request(merged, "GET", "/", &[]).body, "the app's own root");
        let wrong = request(merged, "POST", "/tidings.js", &[]);
        assert_eq!(wrong.status, 405, "{}", wrong.body);
    })
    .await
    .expect("the checks pass");
}
