//! The tidings native protocol over `GET /ws` (docs/PROTOCOL.md): subscribers and the
//! publisher. Subscribers read frames in place with `wsraw` (per delivery: no allocation, no
//! copy, no UTF-8 pass) and look for `"seq":` in each text frame, and only then for the frame
//! types they must act on (`ping`, `gap`, `error`). The publisher is in `publisher.rs`.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use memchr::memmem;

use super::check::SeqCheck;
use super::payload;
use super::wsraw::{Flow, RawWs};

/// How long the handshake, `welcome` and a `subscribe` answer may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A native subscriber connection (raw frames, `wsraw`) that has received its `welcome`.
pub(crate) struct WsConn {
    raw: RawWs,
}

pub(crate) fn has(frame: &[u8], needle: &[u8]) -> bool {
    memmem::find(frame, needle).is_some()
}

impl WsConn {
    /// TCP connect, WebSocket handshake, and the `welcome` frame.
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self, String> {
        tokio::time::timeout(OPEN_TIMEOUT, async {
            let mut conn = Self {
                raw: RawWs::connect(addr, "/ws").await?,
            };
            let first = conn.next_text().await?;
            if has(&first, b"\"type\":\"welcome\"") {
                Ok(conn)
            } else {
                Err(format!(
                    "expected welcome, got {}",
                    String::from_utf8_lossy(&first)
                ))
            }
        })
        .await
        .map_err(|_| format!("no welcome from {addr} in {OPEN_TIMEOUT:?}"))?
    }

    /// The next text frame (answering pings on the way); for the opening exchange only.
    async fn next_text(&mut self) -> Result<Vec<u8>, String> {
        loop {
            let mut text = None;
            let mut ping = false;
            self.raw
                .read_frames(|t| {
                    if has(t, b"\"type\":\"ping\"") {
                        ping = true;
                        Flow::Continue
                    } else {
                        text = Some(t.to_vec());
                        Flow::Stop
                    }
                })
                .await?;
            if ping {
                self.raw.send_text(br#"{"op":"pong"}"#).await?;
            }
            if let Some(text) = text {
                return Ok(text);
            }
        }
    }

    /// Subscribes to `topic` and waits for the `ok`.
    pub(crate) async fn subscribe(&mut self, topic: &str) -> Result<(), String> {
        let frame = serde_json::json!({"op": "subscribe", "id": 1, "topic": topic}).to_string();
        self.raw.send_text(frame.as_bytes()).await?;
        tokio::time::timeout(OPEN_TIMEOUT, async {
            loop {
                let frame = self.next_text().await?;
                if has(&frame, b"\"type\":\"ok\"") {
                    return Ok(());
                }
                if has(&frame, b"\"type\":\"error\"") {
                    return Err(format!(
                        "subscribe refused: {}",
                        String::from_utf8_lossy(&frame)
                    ));
                }
            }
        })
        .await
        .map_err(|_| format!("no answer to subscribe in {OPEN_TIMEOUT:?}"))?
    }

    /// Receives events until the last message or the end of the connection. The caller ends
    /// it early by aborting its task; `check` (locked per frame, by this task only) keeps what
    /// was counted. (A shared stop signal polled in every wait would make all subscribers
    /// contend for one lock.)
    pub(crate) async fn receive(mut self, check: &Mutex<SeqCheck>) {
        let lock = || check.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let mut ping = false;
            let mut last = false;
            let read = self
                .raw
                .read_frames(|frame| {
                    if let Some((seq, t)) = payload::parse(frame) {
                        if lock().on_payload(seq, t) {
                            last = true;
                            return Flow::Stop;
                        }
                    } else if has(frame, b"\"type\":\"ping\"") {
                        ping = true;
                    } else if has(frame, b"\"type\":\"gap\"") {
                        lock().gaps += 1;
                    } else if has(frame, b"\"type\":\"error\"") {
                        lock().error = Some(String::from_utf8_lossy(frame).into_owned());
                    }
                    Flow::Continue
                })
                .await;
            if let Err(e) = read {
                lock().error.get_or_insert(e);
                return;
            }
            if last {
                return;
            }
            if ping {
                if let Err(e) = self.raw.send_text(br#"{"op":"pong"}"#).await {
                    lock().error = Some(e);
                    return;
                }
            }
        }
    }

    /// Holds the connection open, answering pings, until it fails (idle connections; the
    /// caller aborts the task to close it).
    pub(crate) async fn hold(mut self) -> String {
        loop {
            let mut ping = false;
            let mut error = None;
            let read = self
                .raw
                .read_frames(|t| {
                    if has(t, b"\"type\":\"ping\"") {
                        ping = true;
                    } else if has(t, b"\"type\":\"error\"") {
                        error = Some(String::from_utf8_lossy(t).into_owned());
                    }
                    Flow::Continue
                })
                .await;
            if let Err(e) = read {
                return error.unwrap_or(e);
            }
            if ping {
                if let Err(e) = self.raw.send_text(br#"{"op":"pong"}"#).await {
                    return e;
                }
            }
        }
    }
}
