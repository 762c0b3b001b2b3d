//! An incremental decoder of HTTP/1.1 chunked bodies (RFC 9112 §7.1), for the raw-socket test
//! clients. Self-contained (only httparse) so that `adapters/tokio/tests` can include this file
//! by `#[path]` instead of keeping a copy.

/// Bytes in as they arrive, split anywhere; the chunks' data out. Trailers after the last chunk
/// are ignored. Panics on a malformed body (it is test code).
#[derive(Default)]
pub struct ChunkedDecoder {
    /// Read but not yet decodable: an incomplete size line or chunk end.
    pending: Vec<u8>,
    state: ChunkState,
}

#[derive(Default, Clone, Copy)]
enum ChunkState {
    /// A size line is next.
    #[default]
    Size,
    /// This many data bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The last (0-size) chunk was read: the body ended.
    Done,
}

impl ChunkedDecoder {
    /// Decodes `bytes`; returns the body data they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut data = Vec::new();
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(rest)
                    .unwrap_or_else(|_| panic!("not a chunk size line: {rest:?}"))
                {
                    httparse::Status::Complete((len, size)) => {
                        at += len;
                        self.state = if size == 0 {
                            ChunkState::Done
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    httparse::Status::Partial => break,
                },
                ChunkState::Data(left) => {
                    let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&rest[..n]);
                    at += n;
                    self.state = match left - n as u64 {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    assert_eq!(&rest[..2], b"\r\n", "a chunk's data ends with CRLF");
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => {
                    at = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..at);
        data
    }

    /// Whether the last chunk was read (the body ended; the connection may stay open).
    pub fn is_done(&self) -> bool {
        matches!(self.state, ChunkState::Done)
    }
}
