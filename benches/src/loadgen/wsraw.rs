//! A minimal WebSocket client (RFC 6455) for the subscribers, which receive nearly every byte
//! of a run: frames are parsed in place in one buffer per connection and handed to a callback
//! as slices. The handshake uses tungstenite's key functions; only what a subscriber needs is
//! here: unfragmented text frames in, masked text frames out, ping answered, close ends.

use std::net::SocketAddr;

use async_tungstenite::tungstenite::handshake::client::generate_key;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use memchr::memmem;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Initial read buffer; it grows for larger frames.
const BUF: usize = 16 << 10;

/// Whether [`RawWs::read_frames`] should hand over more frames.
#[derive(PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// An open WebSocket connection, client side.
pub(crate) struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..len]`.
    start: usize,
    len: usize,
    mask: u32,
}

/// `(header length, payload length, opcode, fin)` of the frame at the start of `b`, if its
/// header is complete.
fn header(b: &[u8]) -> Result<Option<(usize, usize, u8, bool)>, String> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err("masked frame from the server".into());
    }
    let (hlen, plen) = match b[1] & 0x7f {
        126 if b.len() < 4 => return Ok(None),
        126 => (4, usize::from(u16::from_be_bytes([b[2], b[3]]))),
        127 if b.len() < 10 => return Ok(None),
        127 => {
            let mut n = [0; 8];
            n.copy_from_slice(&b[2..10]);
            (
                10,
                usize::try_from(u64::from_be_bytes(n)).map_err(|_| "frame too large")?,
            )
        }
        n => (2, usize::from(n)),
    };
    Ok(Some((hlen, plen, b[0] & 0x0f, b[0] & 0x80 != 0)))
}

impl RawWs {
    /// TCP connect and the opening handshake for `path`.
    pub(crate) async fn connect(addr: SocketAddr, path: &str) -> Result<Self, String> {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
        let mut ws = Self {
            tcp,
            buf: vec![0; BUF],
            start: 0,
            len: 0,
            mask: u32::from_le_bytes(*b"tdng") ^ u32::from(addr.port()),
        };
        let head_end = loop {
            if let Some(i) = memmem::find(&ws.buf[..ws.len], b"\r\n\r\n") {
                break i + 4;
            }
            ws.fill().await?;
        };
        let head = String::from_utf8_lossy(&ws.buf[..head_end]).to_ascii_lowercase();
        let accept = derive_accept_key(key.as_bytes()).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") {
            return Err(format!(
                "WebSocket upgrade refused: {}",
                head.lines().next().unwrap_or_default()
            ));
        }
        if !head
            .lines()
            .any(|l| l.starts_with("sec-websocket-accept:") && l.ends_with(&accept))
        {
            return Err("WebSocket upgrade: wrong Sec-WebSocket-Accept".into());
        }
        ws.start = head_end;
        Ok(ws)
    }

    /// Reads more bytes after `len` (moving unconsumed bytes to the front first, growing the
    /// buffer when it is full).
    async fn fill(&mut self) -> Result<(), String> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.len, 0);
            self.len -= self.start;
            self.start = 0;
        }
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.tcp.read(&mut self.buf[self.len..]).await {
            Ok(0) => Err("connection closed".into()),
            Ok(n) => {
                self.len += n;
                super::count_wire_bytes(n);
                Ok(())
            }
            Err(e) => Err(format!("reading: {e}")),
        }
    }

    /// Hands the payload of every complete text (or binary) frame already buffered to `f`, or,
    /// if there is none, reads once and then does so; stops early at [`Flow::Stop`] (the rest
    /// stays buffered).
    pub(crate) async fn read_frames(
        &mut self,
        mut f: impl FnMut(&[u8]) -> Flow,
    ) -> Result<(), String> {
        loop {
            let mut handed = false;
            let mut ping: Option<Vec<u8>> = None;
            while let Some((hlen, plen, opcode, fin)) = header(&self.buf[self.start..self.len])? {
                let begin = self.start + hlen;
                let end = begin + plen;
                if end > self.len {
                    // Incomplete: make sure the buffer can hold it.
                    let need = end - self.start;
                    if need > self.buf.len() {
                        self.buf.resize(need.next_power_of_two(), 0);
                    }
                    break;
                }
                self.start = end;
                handed = true;
                match (opcode, fin) {
                    (1 | 2, true) if f(&self.buf[begin..end]) == Flow::Stop => break,
                    (1 | 2, true) => {}
                    (0..=2, _) => return Err("fragmented messages are not supported".into()),
                    (8, _) => return Err("closed by the server".into()),
                    (9, _) => ping = Some(self.buf[begin..end].to_vec()),
                    _ => {}
                }
            }
            if let Some(payload) = ping {
                self.send(0xA, &payload).await?;
            }
            if handed {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Sends one masked text frame.
    pub(crate) async fn send_text(&mut self, payload: &[u8]) -> Result<(), String> {
        self.send(0x1, payload).await
    }

    /// Sends one masked binary frame.
    pub(crate) async fn send_binary(&mut self, payload: &[u8]) -> Result<(), String> {
        self.send(0x2, payload).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        // xorshift: any key will do, RFC 6455 only asks that it be hard to predict.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let key = self.mask.to_be_bytes();
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | u8::try_from(n).unwrap_or(0)),
            n @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).unwrap_or(0).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        self.tcp
            .write_all(&frame)
            .await
            .map_err(|e| format!("sending: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::header;

    #[test]
    fn headers() {
        assert_eq!(header(&[0x81]).unwrap(), None);
        assert_eq!(header(&[0x81, 5]).unwrap(), Some((2, 5, 1, true)));
        assert_eq!(header(&[0x81, 126, 1]).unwrap(), None);
        assert_eq!(
            header(&[0x01, 126, 1, 0]).unwrap(),
            Some((4, 256, 1, false))
        );
        let mut long = vec![0x82, 127];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(header(&long).unwrap(), Some((10, 70_000, 2, true)));
        assert!(header(&[0x81, 0x85]).is_err());
    }
}
