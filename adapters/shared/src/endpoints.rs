//! The server's endpoints, as one table: each path, the methods it allows and what serves it.
//! Routing (standalone and axum), the `404`/`405` answers and the WebSocket endpoints' codecs
//! and settings all read it. A new wire protocol over WebSocket is one codec module in the core
//! and one row here (with its conformance cases).

use tidings_core::codec::Codec;
use tidings_core::etp::EtpCodec;
use tidings_core::ksbus::KsbusCodec;
use tidings_core::native::NativeCodec;

use crate::config::ServerConfig;

/// What serves a path.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Serve {
    /// A WebSocket protocol (`GET` with an upgrade).
    WebSocket(WebSocket),
    /// A Server-Sent Events stream (`GET /sse`).
    Sse,
    /// `POST /publish`.
    Publish,
    /// `POST /subscriptions` (and its gochan name `/update_subscriptions`).
    Subscriptions,
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /presence?topic=`.
    Presence,
}

/// A WebSocket endpoint: the codec of its connections and its settings.
#[derive(Clone, Copy)]
pub struct WebSocket {
    /// The codec of a new connection, from the server's configuration.
    pub(crate) codec: fn(&ServerConfig) -> Box<dyn Codec>,
    /// The largest message it reads.
    pub(crate) max_message: fn(&ServerConfig) -> usize,
    /// Whose `Origin` allow-list applies: `[http] ws_origins`, or the endpoint's own.
    pub(crate) origins: Origins,
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

/// Whose `Origin` allow-list applies to a WebSocket endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origins {
    /// `[http] ws_origins` (with cookie tokens checked as for `/ws`).
    Server,
    /// `[etp] origins` (same host, or listed), as the etp server checks them.
    Etp,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// The path, relative to where the server is mounted.
    pub path: &'static str,
    /// The methods it allows (the `Allow` header of a `405`).
    pub methods: &'static str,
    /// What serves it.
    pub serve: Serve,
}

/// Every endpoint of the server (besides the embedded files: `GET /`, `GET /tidings.js`).
pub const ENDPOINTS: [Endpoint; 10] = [
    Endpoint {
        path: "/ws",
        methods: "GET",
        serve: Serve::WebSocket(WebSocket {
            codec: |_| Box::new(NativeCodec),
            max_message: |c| c.limits.max_frame_bytes,
            origins: Origins::Server,
        }),
    },
    Endpoint {
        path: "/ws/bus",
        methods: "GET",
        serve: Serve::WebSocket(WebSocket {
            codec: |c| Box::new(KsbusCodec::new(&c.ksbus.server_id)),
            max_message: |c| c.limits.max_frame_bytes,
            origins: Origins::Server,
        }),
    },
    Endpoint {
        path: "/etp",
        methods: "GET",
        serve: Serve::WebSocket(WebSocket {
            codec: |c| match c.etp.empty_data_separator {
                true => Box::new(EtpCodec::js()),
                false => Box::new(EtpCodec::go()),
            },
            max_message: |c| c.etp.read_limit,
            origins: Origins::Etp,
        }),
    },
    Endpoint {
        path: "/sse",
        methods: "GET, OPTIONS",
        serve: Serve::Sse,
    },
    Endpoint {
        path: "/publish",
        methods: "POST, OPTIONS",
        serve: Serve::Publish,
    },
    Endpoint {
        path: "/subscriptions",
        methods: "POST, OPTIONS",
        serve: Serve::Subscriptions,
    },
    Endpoint {
        path: "/update_subscriptions",
        methods: "POST, OPTIONS",
        serve: Serve::Subscriptions,
    },
    Endpoint {
        path: "/healthz",
        methods: "GET",
        serve: Serve::Health,
    },
    Endpoint {
        path: "/metrics",
        methods: "GET",
        serve: Serve::Metrics,
    },
    Endpoint {
        path: "/presence",
        methods: "GET, OPTIONS",
        serve: Serve::Presence,
    },
];

/// The endpoint at `path`, if any.
pub fn endpoint(path: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| e.path == path)
}

/// The paths of the WebSocket endpoints, for messages.
pub(crate) fn websocket_paths() -> String {
    let paths: Vec<_> = ENDPOINTS
        .iter()
        .filter(|e| matches!(e.serve, Serve::WebSocket(_)))
        .map(|e| e.path)
        .collect();
    match paths.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_each_path_once_and_names_the_websocket_endpoints() {
        let mut paths: Vec<_> = ENDPOINTS.iter().map(|e| e.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ENDPOINTS.len());
        assert_eq!(websocket_paths(), "/ws, /ws/bus and /etp");
        let config = ServerConfig::default();
        let formats: Vec<_> = ENDPOINTS
            .iter()
            .filter_map(|e| match e.serve {
                Serve::WebSocket(ws) => Some((ws.codec)(&config).format()),
                _ => None,
            })
            .collect();
        assert_eq!(formats, ["native", "ksbus", "etp"]);
    }
}
