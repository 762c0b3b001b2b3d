//! NATS over WebSocket (the NATS client protocol, text, carried in binary WebSocket frames):
//! `INFO`, `CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`, `+OK`/`-ERR`.
//!
//! The server may split one protocol message over several WebSocket frames, or put many in
//! one, so subscribers append every frame's payload to a byte stream and parse operations off
//! its front ([`parse`]). The publisher follows every `PUB` with a `PING`: NATS answers `PONG`
//! in order once it has processed everything before, so the `PONG`s are the publish answers
//! (the same window of unanswered publishes as the other targets' acks).

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use memchr::memchr;

use super::check::SeqCheck;
use super::payload;
use super::wsraw::{Flow, RawWs};

const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the client sends after `INFO`: no `+OK` per command, no echo of its own publishes.
pub(crate) const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"name\":\"tidings-bench\",\"lang\":\"rust\",\"version\":\"0.1.0\",\"protocol\":1,\"echo\":false}\r\n";

/// One server operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    /// `MSG <subject> <sid> [reply-to] <#bytes>␍␊<payload>␍␊`
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    /// `INFO {json}`
    Info(&'a [u8]),
    /// `-ERR 'text'`
    Err(&'a [u8]),
}

/// The operation at the start of `buf` and its length in bytes, if it is complete.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Op<'_>, usize)>, String> {
    let Some(eol) = memchr(b'\n', buf) else {
        if buf.len() > 4096 {
            return Err("NATS: protocol line longer than 4 KiB".into());
        }
        return Ok(None);
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    let after = eol + 1;
    let (verb, rest) = match memchr(b' ', line) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = match verb {
        b"MSG" | b"msg" => {
            let fields: Vec<&[u8]> = rest
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|f| !f.is_empty())
                .collect();
            let (subject, sid, size) = match fields.as_slice() {
                [s, i, n] | [s, i, _, n] => (*s, *i, *n),
                _ => return Err(format!("NATS: bad MSG line {:?}", lossy(line))),
            };
            let size: usize = std::str::from_utf8(size)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("NATS: bad MSG size in {:?}", lossy(line)))?;
            let end = after + size;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("NATS: MSG payload not followed by CRLF".into());
            }
            return Ok(Some((
                Op::Msg {
                    subject,
                    sid,
                    payload: &buf[after..end],
                },
                end + 2,
            )));
        }
        b"PING" | b"ping" => Op::Ping,
        b"PONG" | b"pong" => Op::Pong,
        b"+OK" | b"+ok" => Op::Ok,
        b"INFO" | b"info" => Op::Info(rest),
        b"-ERR" | b"-err" => Op::Err(rest),
        _ => return Err(format!("NATS: unknown operation {:?}", lossy(line))),
    };
    Ok(Some((op, after)))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `PUB <subject> <#bytes>␍␊<payload>␍␊PING␍␊` into `out` (cleared first).
pub(crate) fn encode_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.clear();
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
}

/// A byte stream of NATS operations assembled from WebSocket frames.
#[derive(Default)]
pub(crate) struct Stream {
    buf: Vec<u8>,
    start: usize,
}

impl Stream {
    /// Appends one frame's payload.
    pub(crate) fn push(&mut self, frame: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(frame);
    }

    /// Calls `f` for every complete operation; stops early when it returns `Flow::Stop`.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(Op<'_>) -> Flow) -> Result<(), String> {
        while let Some((op, len)) = parse(&self.buf[self.start..])? {
            self.start += len;
            if f(op) == Flow::Stop {
                break;
            }
        }
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(())
    }
}

/// A subscriber: connected, `CONNECT` sent, subscribed (confirmed by a `PONG`).
pub(crate) struct NatsConn {
    raw: RawWs,
    stream: Stream,
}

impl NatsConn {
    /// WebSocket handshake, `INFO`, `CONNECT`, then `SUB` if `topic` is given, and `PING`,
    /// whose `PONG` confirms that the server has processed both.
    pub(crate) async fn connect(addr: SocketAddr, topic: Option<&str>) -> Result<Self, String> {
        tokio::time::timeout(OPEN_TIMEOUT, async {
            let mut conn = Self {
                raw: RawWs::connect(addr, "/").await?,
                stream: Stream::default(),
            };
            conn.wait_for(|op| matches!(op, Op::Info(_))).await?;
            let mut hello = CONNECT.to_vec();
            if let Some(topic) = topic {
                hello.extend_from_slice(format!("SUB {topic} 1\r\n").as_bytes());
            }
            hello.extend_from_slice(b"PING\r\n");
            conn.raw.send_binary(&hello).await?;
            conn.wait_for(|op| matches!(op, Op::Pong)).await?;
            Ok(conn)
        })
        .await
        .map_err(|_| format!("NATS: no INFO/PONG from {addr} in {OPEN_TIMEOUT:?}"))?
    }

    async fn wait_for(&mut self, want: impl Fn(&Op<'_>) -> bool) -> Result<(), String> {
        loop {
            let mut found = false;
            let mut error = None;
            let mut ping = false;
            let Self { raw, stream } = self;
            raw.read_frames(|frame| {
                stream.push(frame);
                Flow::Continue
            })
            .await?;
            stream.drain(|op| {
                if want(&op) {
                    found = true;
                    return Flow::Stop;
                }
                match op {
                    Op::Err(e) => error = Some(lossy(e)),
                    Op::Ping => ping = true,
                    _ => {}
                }
                Flow::Continue
            })?;
            if let Some(e) = error {
                return Err(format!("NATS: -ERR {e}"));
            }
            if ping {
                self.raw.send_binary(b"PONG\r\n").await?;
            }
            if found {
                return Ok(());
            }
        }
    }

    /// Receives messages until the last one or the end of the connection (see
    /// `ws::WsConn::receive`).
    pub(crate) async fn receive(mut self, check: &Mutex<SeqCheck>) {
        let lock = || check.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let mut ping = false;
            let mut last = false;
            let Self { raw, stream } = &mut self;
            let read = raw
                .read_frames(|frame| {
                    stream.push(frame);
                    Flow::Continue
                })
                .await;
            let parsed = read.and_then(|()| {
                stream.drain(|op| {
                    match op {
                        Op::Msg { payload: p, .. } => {
                            if let Some((seq, t)) = payload::parse(p) {
                                if lock().on_payload(seq, t) {
                                    last = true;
                                    return Flow::Stop;
                                }
                            }
                        }
                        Op::Ping => ping = true,
                        Op::Err(e) => lock().error = Some(format!("NATS: -ERR {}", lossy(e))),
                        _ => {}
                    }
                    Flow::Continue
                })
            });
            if let Err(e) = parsed {
                lock().error.get_or_insert(e);
                return;
            }
            if last {
                return;
            }
            if ping {
                if let Err(e) = self.raw.send_binary(b"PONG\r\n").await {
                    lock().error = Some(e);
                    return;
                }
            }
        }
    }

    /// Holds the connection open, answering `PING`s, until it fails.
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

    // Frames captured from nats-server 2.9.10 (Debian bookworm), its WebSocket listener with
    // `no_tls: true`, by a raw client: the subscriber's `INFO` (server id shortened), the `PONG`
    // to `CONNECT`+`SUB`+`PING`, then one binary frame holding three messages; and the
    // publisher's three `PONG`s to `PUB`+`PING` ×3, also in one frame.
    const INFO: &[u8] = b"INFO {\"server_id\":\"NAIPX346\",\"server_name\":\"NAIPX346\",\"version\":\"2.9.10\",\"proto\":1,\"go\":\"go1.19.8\",\"host\":\"127.0.0.1\",\"port\":24222,\"headers\":true,\"max_payload\":1048576,\"client_id\":4,\"client_ip\":\"127.0.0.1\"} \r\n";
    const MSGS: &[u8] = b"MSG bench.fanout 1 24\r\n{\"seq\":0,\"t\":1234567890}\r\nMSG bench.fanout 1 24\r\n{\"seq\":1,\"t\":1234567890}\r\nMSG bench.fanout 1 24\r\n{\"seq\":2,\"t\":1234567890}\r\n";
    const PONGS: &[u8] = b"PONG\r\nPONG\r\nPONG\r\n";

    #[test]
    fn parses_captured_frames() {
        let (op, len) = parse(INFO).unwrap().unwrap();
        assert!(matches!(op, Op::Info(j) if j.starts_with(b"{\"server_id\"")));
        assert_eq!(len, INFO.len());
        assert_eq!(parse(b"PONG\r\n").unwrap(), Some((Op::Pong, 6)));

        let mut at = 0;
        for seq in 0..3 {
            let (op, len) = parse(&MSGS[at..]).unwrap().unwrap();
            let Op::Msg {
                subject,
                sid,
                payload: p,
            } = op
            else {
                panic!("{op:?}");
            };
            assert_eq!((subject, sid), (&b"bench.fanout"[..], &b"1"[..]));
            assert_eq!(payload::parse(p), Some((seq, 1_234_567_890)));
            at += len;
        }
        assert_eq!(at, MSGS.len());
        // Cut anywhere inside a message: incomplete, not an error.
        for cut in 1..MSGS.len() / 3 {
            assert_eq!(parse(&MSGS[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut s = Stream::default();
        s.push(PONGS);
        let mut pongs = 0;
        s.drain(|op| {
            assert_eq!(op, Op::Pong);
            pongs += 1;
            Flow::Continue
        })
        .unwrap();
        assert_eq!(pongs, 3);
    }

    #[test]
    fn other_operations_and_errors() {
        // A reply subject.
        let (op, _) = parse(b"MSG a.b 9 _INBOX.x 2\r\nhi\r\n").unwrap().unwrap();
        assert!(matches!(
            op,
            Op::Msg {
                sid: b"9",
                payload: b"hi",
                ..
            }
        ));
        // Captured: what nats-server 2.9.10 answers to a PUB whose size is wrong.
        let (op, _) = parse(b"-ERR 'Unknown Protocol Operation'\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(op, Op::Err(b"'Unknown Protocol Operation'"));
        assert_eq!(parse(b"PING\r\n").unwrap(), Some((Op::Ping, 6)));
        assert_eq!(parse(b"+OK\r\n").unwrap(), Some((Op::Ok, 5)));
        assert!(parse(b"BOGUS\r\n").is_err());
        assert!(parse(b"MSG a 1 2\r\nhiXX").is_err());
        assert!(parse(b"MSG a 1 x\r\nhi\r\n").is_err());
    }

    #[test]
    fn stream_joins_frames_split_anywhere() {
        let mut all = PONGS[..6].to_vec();
        all.extend_from_slice(MSGS);
        all.extend_from_slice(b"PING\r\n");
        for split in 1..all.len() {
            let mut s = Stream::default();
            let mut seen = Vec::new();
            for chunk in [&all[..split], &all[split..]] {
                s.push(chunk);
                s.drain(|op| {
                    seen.push(match op {
                        Op::Msg { payload: p, .. } => {
                            payload::parse(p).map_or(-1, |(q, _)| q as i64)
                        }
                        Op::Pong => 100,
                        Op::Ping => 200,
                        other => panic!("{other:?}"),
                    });
                    Flow::Continue
                })
                .unwrap();
            }
            assert_eq!(seen, [100, 0, 1, 2, 200], "split at {split}");
        }
    }

    #[test]
    fn pub_frame() {
        let mut out = Vec::new();
        encode_pub(&mut out, "bench.fanout", b"{\"seq\":0,\"t\":1234567890}");
        assert_eq!(
            out,
            b"PUB bench.fanout 24\r\n{\"seq\":0,\"t\":1234567890}\r\nPING\r\n"
        );
    }
}
