//! socket.io v4 over engine.io v4, WebSocket transport only (`GET
//! /socket.io/?EIO=4&transport=websocket`): the protocol of both the socket.io (Node) and the
//! socketioxide peers (`benches/peers/`).
//!
//! Every WebSocket text frame is one engine.io packet: a type digit (`0` open, `1` close, `2`
//! ping, `3` pong, `4` message, `6` noop) and data. A message carries one socket.io packet: a
//! type digit (`0` connect, `1` disconnect, `2` event, `3` ack, `4` connect error), an optional
//! namespace (`/nsp,`), an optional ack id, and JSON: `42["msg",{…}]`, `421["join","room"]`,
//! `431["ok"]`. The server pings; the client answers `3`.
//!
//! The peers define two events: `join` (room) and `pub` (room, data), both acknowledged, and
//! emit `msg` (data) to the room's members.

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::check::SeqCheck;
use super::payload;
use super::wsraw::{Flow, RawWs};

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `join` is sent at most this many times, a second apart.
pub(crate) const JOIN_ATTEMPTS: u64 = 10;

/// The WebSocket path of engine.io v4.
pub(crate) const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// One engine.io packet, with the socket.io packet inside a message decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    /// engine.io `0{"sid":…,"pingInterval":…}`
    Open(&'a [u8]),
    /// engine.io `1`
    Close,
    /// engine.io `2`: answer with `3`
    Ping,
    /// engine.io `3`
    Pong,
    /// engine.io `6`
    Noop,
    /// socket.io `0[/nsp,]{"sid":…}`
    Connect(&'a [u8]),
    /// socket.io `1`
    Disconnect,
    /// socket.io `2[/nsp,][id][…]`; `data` is the JSON array `["name", args…]`
    Event { ack: Option<u64>, data: &'a [u8] },
    /// socket.io `3[/nsp,]id[…]`
    Ack { id: u64, data: &'a [u8] },
    /// socket.io `4[/nsp,]{"message":…}`
    ConnectError(&'a [u8]),
}

/// Decodes one WebSocket text frame.
pub(crate) fn parse(frame: &[u8]) -> Result<Packet<'_>, String> {
    let bad = || format!("socket.io: bad packet {:?}", String::from_utf8_lossy(frame));
    let (&eio, rest) = frame.split_first().ok_or_else(bad)?;
    Ok(match eio {
        b'0' => Packet::Open(rest),
        b'1' => Packet::Close,
        b'2' => Packet::Ping,
        b'3' => Packet::Pong,
        b'6' => Packet::Noop,
        b'4' => {
            let (&sio, mut rest) = rest.split_first().ok_or_else(bad)?;
            if rest.first() == Some(&b'/') {
                // A namespace other than the main one, up to the comma.
                let comma = rest.iter().position(|&b| b == b',').ok_or_else(bad)?;
                rest = &rest[comma + 1..];
            }
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let id = (digits > 0 && digits < 20).then(|| {
                rest[..digits]
                    .iter()
                    .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'))
            });
            let data = &rest[digits..];
            match sio {
                b'0' => Packet::Connect(data),
                b'1' => Packet::Disconnect,
                b'2' => Packet::Event { ack: id, data },
                b'3' => Packet::Ack {
                    id: id.ok_or_else(bad)?,
                    data,
                },
                b'4' => Packet::ConnectError(data),
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    })
}

/// Whether the event array `data` is an event called `name` (`["name",…`).
pub(crate) fn is_event(data: &[u8], name: &str) -> bool {
    data.strip_prefix(b"[\"")
        .and_then(|d| d.strip_prefix(name.as_bytes()))
        .is_some_and(|d| d.starts_with(b"\""))
}

/// `42<id>["pub","<room>",<payload>]` into `out` (cleared first); `payload` is JSON.
pub(crate) fn encode_pub(out: &mut Vec<u8>, id: u64, room: &str, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(b"42");
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(b"[\"pub\",");
    out.extend_from_slice(serde_json::Value::from(room).to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(payload);
    out.push(b']');
}

/// A socket.io client connection on the main namespace.
pub(crate) struct SioConn {
    raw: RawWs,
}

impl SioConn {
    /// WebSocket handshake, engine.io open, socket.io connect, and `join` of `room` if given
    /// (waits for its ack).
    pub(crate) async fn connect(addr: SocketAddr, room: Option<&str>) -> Result<Self, String> {
        tokio::time::timeout(OPEN_TIMEOUT, async {
            let mut conn = Self {
                raw: RawWs::connect(addr, PATH).await?,
            };
            conn.wait_for(|p| matches!(p, Packet::Open(_))).await?;
            conn.raw.send_text(b"40").await?;
            conn.wait_for(|p| matches!(p, Packet::Connect(_))).await?;
            if let Some(room) = room {
                conn.join(room).await?;
            }
            Ok(conn)
        })
        .await
        .map_err(|_| {
            format!("socket.io: no open/connect/join answer from {addr} in {OPEN_TIMEOUT:?}")
        })?
    }

    /// Joins `room`, sending `join` again every second until an ack comes: socketioxide 0.18
    /// sends the socket.io connect packet before it runs the (spawned) connect handler that
    /// registers the event handlers, so an event sent right after the connect can find no
    /// handler and is dropped without an answer. Joining twice is harmless.
    async fn join(&mut self, room: &str) -> Result<(), String> {
        for attempt in 1..=JOIN_ATTEMPTS {
            let join = format!("42{attempt}[\"join\",{}]", serde_json::Value::from(room));
            self.raw.send_text(join.as_bytes()).await?;
            let acked = tokio::time::timeout(
                Duration::from_secs(1),
                self.wait_for(|p| matches!(p, Packet::Ack { .. })),
            )
            .await;
            if let Ok(acked) = acked {
                return acked;
            }
        }
        Err(format!(
            "socket.io: no ack to join in {JOIN_ATTEMPTS} attempts"
        ))
    }

    /// Reads until a packet matches `want` (answering pings; errors on close, disconnect or
    /// a connect error).
    async fn wait_for(&mut self, want: impl Fn(&Packet<'_>) -> bool) -> Result<(), String> {
        loop {
            let mut found = false;
            let mut ping = false;
            let mut error = None;
            self.raw
                .read_frames(|frame| {
                    match parse(frame) {
                        Ok(p) if want(&p) => {
                            found = true;
                            return Flow::Stop;
                        }
                        Ok(Packet::Ping) => ping = true,
                        Ok(Packet::Close | Packet::Disconnect) => {
                            error = Some("socket.io: closed by the server".into());
                        }
                        Ok(Packet::ConnectError(e)) => {
                            error = Some(format!(
                                "socket.io: connect error {}",
                                String::from_utf8_lossy(e)
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => error = Some(e),
                    }
                    Flow::Continue
                })
                .await?;
            if ping {
                self.raw.send_text(b"3").await?;
            }
            if let Some(e) = error {
                return Err(e);
            }
            if found {
                return Ok(());
            }
        }
    }

    /// Receives `msg` events until the last one or the end of the connection (see
    /// `ws::WsConn::receive`).
    pub(crate) async fn receive(mut self, check: &Mutex<SeqCheck>) {
        let lock = || check.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let mut ping = false;
            let mut last = false;
            let read = self
                .raw
                .read_frames(|frame| {
                    match parse(frame) {
                        Ok(Packet::Event { data, .. }) if is_event(data, "msg") => {
                            if let Some((seq, t)) = payload::parse(data) {
                                if lock().on_payload(seq, t) {
                                    last = true;
                                    return Flow::Stop;
                                }
                            }
                        }
                        Ok(Packet::Ping) => ping = true,
                        Ok(Packet::Close | Packet::Disconnect) => {
                            lock().error = Some("socket.io: closed by the server".into());
                        }
                        Ok(_) => {}
                        Err(e) => lock().error = Some(e),
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
                if let Err(e) = self.raw.send_text(b"3").await {
                    lock().error = Some(e);
                    return;
                }
            }
        }
    }

    /// Holds the connection open, answering pings, until it fails.
    pub(crate) async fn hold(mut self) -> String {
        match self.wait_for(|_| false).await {
            Ok(()) => "ended".into(),
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_socket_io_frames() {
        // socket.io 4.8.1 on Node 20 (benches/peers/socketio), captured by a raw client: open,
        // connect, the join's ack, an event, the publisher's ack.
        let open = br#"0{"sid":"4JfsBIhDXtkfyYpGAAAA","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert!(matches!(parse(open), Ok(Packet::Open(j)) if j.starts_with(b"{\"sid\"")));
        assert_eq!(
            parse(br#"40{"sid":"VbmoiBw5P9r2txAdAAAA"}"#),
            Ok(Packet::Connect(br#"{"sid":"VbmoiBw5P9r2txAdAAAA"}"#))
        );
        assert_eq!(
            parse(br#"431["ok"]"#),
            Ok(Packet::Ack {
                id: 1,
                data: br#"["ok"]"#
            })
        );
        assert_eq!(
            parse(br#"4312["ok"]"#),
            Ok(Packet::Ack {
                id: 12,
                data: br#"["ok"]"#
            })
        );
        let msg = br#"42["msg",{"seq":3,"t":52191043,"pad":"xx"}]"#;
        let Ok(Packet::Event { ack: None, data }) = parse(msg) else {
            panic!("{:?}", parse(msg));
        };
        assert!(is_event(data, "msg"));
        assert!(!is_event(data, "ms"));
        assert_eq!(payload::parse(data), Some((3, 52_191_043)));
    }

    #[test]
    fn captured_socketioxide_frames() {
        // socketioxide 0.18.9 (benches/peers/socketioxide): it pings right after the open
        // packet, and its serde_json re-encodes the event's object with sorted keys.
        let open = br#"0{"sid":"e0uIUDa8Vg-IrZaY","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":100000}"#;
        assert!(matches!(parse(open), Ok(Packet::Open(_))));
        assert_eq!(parse(b"2"), Ok(Packet::Ping));
        assert!(matches!(
            parse(br#"40{"sid":"e0uIUDa8Vg-IrZaY"}"#),
            Ok(Packet::Connect(_))
        ));
        let msg = br#"42["msg",{"pad":"xx","seq":3,"t":52191043}]"#;
        let Ok(Packet::Event { ack: None, data }) = parse(msg) else {
            panic!("{:?}", parse(msg));
        };
        assert!(is_event(data, "msg"));
        assert_eq!(payload::parse(data), Some((3, 52_191_043)));
    }

    #[test]
    fn other_packets() {
        assert_eq!(parse(b"1"), Ok(Packet::Close));
        assert_eq!(parse(b"3"), Ok(Packet::Pong));
        assert_eq!(parse(b"41"), Ok(Packet::Disconnect));
        assert_eq!(
            parse(br#"42/admin,7["x"]"#),
            Ok(Packet::Event {
                ack: Some(7),
                data: br#"["x"]"#
            })
        );
        assert!(matches!(
            parse(br#"44{"message":"Invalid namespace"}"#),
            Ok(Packet::ConnectError(_))
        ));
        assert!(parse(b"").is_err());
        assert!(parse(b"9").is_err());
        assert!(parse(b"43[]").is_err());
    }

    #[test]
    fn pub_frame() {
        let mut out = Vec::new();
        encode_pub(
            &mut out,
            12,
            "bench.fanout",
            br#"{"seq":3,"t":52191043,"pad":"xx"}"#,
        );
        // The frame the captured exchange above answered with `4312["ok"]`.
        assert_eq!(
            out,
            br#"4212["pub","bench.fanout",{"seq":3,"t":52191043,"pad":"xx"}]"#
        );
    }
}
