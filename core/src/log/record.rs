//! The on-disk formats of the segment-file log, as pure functions: the record (one per event),
//! the segment header, and the `meta` file.
//!
//! A record, little-endian:
//!
//! | field | size | what |
//! |---|---|---|
//! | `len` | u32 | bytes after this field |
//! | `crc` | u32 | CRC-32C of everything after this field |
//! | `seq` | u64 | the event's position |
//! | `time_ms` | u64 | when the log stored it (ms since the Unix epoch) |
//! | `flags` | u8 | bit 0: the payload is JSON; bit 1: an event name follows; bit 2: a `from` follows |
//! | `topic_len`, topic | u16 + bytes | the topic |
//! | `event_len`, event | u16 + bytes | the event name (if bit 1) |
//! | `from_len`, from | u16 + bytes | the publisher's client id (if bit 2) |
//! | payload | the rest | the data |
//!
//! Decoding never panics and never allocates what a length field only announces: every length is
//! checked against the bytes at hand first, and `len` is capped at [`MAX_RECORD`]. Names are
//! re-validated with permissive limits: they were checked when published, and a limit lowered in
//! the configuration since must not make old records unreadable.

use std::fmt;

use bytes::Bytes;

use crate::error::{ErrorCode, ProtocolError};
use crate::log::{LogEvent, Logged};
use crate::payload::Payload;
use crate::topic::{Name, NameLimits, Topic};

/// Bytes of `len` and `crc`, before the checksummed body.
pub const RECORD_HEADER: usize = 8;

/// The fixed part of the body: `seq`, `time_ms`, `flags`, `topic_len`.
const BODY_FIXED: usize = 8 + 8 + 1 + 2;

/// The largest payload a record holds.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// The largest record, header included: the largest payload and three names of the largest
/// length a `u16` can say.
pub const MAX_RECORD: usize =
    RECORD_HEADER + BODY_FIXED + 2 * 2 + 3 * (u16::MAX as usize) + MAX_PAYLOAD;

const FLAG_JSON: u8 = 1;
const FLAG_EVENT: u8 = 2;
const FLAG_FROM: u8 = 4;
const FLAGS_KNOWN: u8 = FLAG_JSON | FLAG_EVENT | FLAG_FROM;

/// The limits names are re-validated with when read back: only what every stored name satisfied.
const READ_LIMITS: NameLimits = NameLimits {
    max_len: u16::MAX as usize,
    max_segments: usize::MAX,
};

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The bytes end before the record does (a torn write, or more bytes to read).
    Incomplete,
    /// The bytes are not a record: the reason says what is wrong.
    Corrupt(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incomplete => f.write_str("the record is incomplete (torn write)"),
            Self::Corrupt(reason) => write!(f, "the record is corrupt ({reason})"),
        }
    }
}

impl std::error::Error for RecordError {}

/// An event too large for a record: a name longer than 65,535 bytes or a payload over
/// [`MAX_PAYLOAD`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge(pub String);

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TooLarge {}

impl From<TooLarge> for ProtocolError {
    fn from(e: TooLarge) -> Self {
        Self::new(ErrorCode::FrameTooLarge, e.0)
    }
}

/// The bytes [`encode`] writes for this event.
pub fn encoded_len(event: &LogEvent) -> usize {
    RECORD_HEADER
        + BODY_FIXED
        + event.topic.as_str().len()
        + event.event.as_ref().map_or(0, |n| 2 + n.as_str().len())
        + event.from.as_ref().map_or(0, |n| 2 + n.as_str().len())
        + event.payload.len()
}

fn name_len(what: &str, s: &str) -> Result<u16, TooLarge> {
    u16::try_from(s.len()).map_err(|_| {
        TooLarge(format!(
            "the {what} is {} bytes long; a stored event's names are at most 65535 bytes",
            s.len()
        ))
    })
}

/// Appends the record of `logged` to `out` and returns its length.
///
/// # Errors
/// [`TooLarge`] when a name is longer than 65,535 bytes or the payload larger than
/// [`MAX_PAYLOAD`]; `out` is then unchanged.
pub fn encode(logged: &Logged, out: &mut Vec<u8>) -> Result<usize, TooLarge> {
    let event = &logged.event;
    let topic_len = name_len("topic", event.topic.as_str())?;
    let event_len = event
        .event
        .as_ref()
        .map(|n| name_len("event name", n.as_str()))
        .transpose()?;
    let from_len = event
        .from
        .as_ref()
        .map(|n| name_len("client id", n.as_str()))
        .transpose()?;
    if event.payload.len() > MAX_PAYLOAD {
        return Err(TooLarge(format!(
            "the data is {} bytes long; a stored event holds at most {MAX_PAYLOAD}",
            event.payload.len()
        )));
    }
    let total = encoded_len(event);
    let start = out.len();
    out.reserve(total);
    // `total` is at most MAX_RECORD (checked above), far below u32::MAX.
    let len = u32::try_from(total - 4).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the checksum, filled in below
    out.extend_from_slice(&logged.seq.to_le_bytes());
    out.extend_from_slice(&logged.time_ms.to_le_bytes());
    let mut flags = 0;
    if event.payload.is_json() {
        flags |= FLAG_JSON;
    }
    if event.event.is_some() {
        flags |= FLAG_EVENT;
    }
    if event.from.is_some() {
        flags |= FLAG_FROM;
    }
    out.push(flags);
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(event.topic.as_str().as_bytes());
    if let (Some(len), Some(name)) = (event_len, &event.event) {
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
    }
    if let (Some(len), Some(name)) = (from_len, &event.from) {
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
    }
    out.extend_from_slice(event.payload.bytes());
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(total)
}

/// What a record says about itself, read without allocating: enough for the recovery scan and
/// the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    /// The event's position.
    pub seq: u64,
    /// When it was stored (ms since the Unix epoch).
    pub time_ms: u64,
    /// The whole record's length in bytes, header included.
    pub len: usize,
}

/// Where the parts of a checked record are, as offsets into the buffer it was checked in.
struct Layout {
    head: RecordHead,
    json: bool,
    topic: (usize, usize),
    event: Option<(usize, usize)>,
    from: Option<(usize, usize)>,
    payload: (usize, usize),
}

fn corrupt(reason: impl Into<String>) -> RecordError {
    RecordError::Corrupt(reason.into())
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    buf.get(at..at + 2)?.try_into().ok().map(u16::from_le_bytes)
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes)
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    buf.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes)
}

/// Checks the record at the start of `buf`: length, checksum, and that its fields fit.
fn layout(buf: &[u8]) -> Result<Layout, RecordError> {
    let Some(len) = u32_at(buf, 0) else {
        return Err(RecordError::Incomplete);
    };
    let len = len as usize;
    let total = len.saturating_add(4);
    if total < RECORD_HEADER + BODY_FIXED {
        return Err(corrupt(format!("record length {len} is below the minimum")));
    }
    if total > MAX_RECORD {
        return Err(corrupt(format!("record length {len} is above the maximum")));
    }
    if buf.len() < total {
        return Err(RecordError::Incomplete);
    }
    let buf = &buf[..total];
    let stored = u32_at(buf, 4).unwrap_or_default();
    if crc32c::crc32c(&buf[RECORD_HEADER..]) != stored {
        return Err(corrupt("checksum mismatch"));
    }
    let truncated = || corrupt("a field runs past the end of the record");
    let seq = u64_at(buf, 8).ok_or_else(truncated)?;
    let time_ms = u64_at(buf, 16).ok_or_else(truncated)?;
    let flags = buf[24];
    if flags & !FLAGS_KNOWN != 0 {
        return Err(corrupt(format!("unknown flags {flags:#04x}")));
    }
    let mut at = 25;
    let mut field = || -> Result<(usize, usize), RecordError> {
        let n = usize::from(u16_at(buf, at).ok_or_else(truncated)?);
        let start = at + 2;
        if start + n > total {
            return Err(truncated());
        }
        at = start + n;
        Ok((start, start + n))
    };
    let topic = field()?;
    let event = if flags & FLAG_EVENT != 0 {
        Some(field()?)
    } else {
        None
    };
    let from = if flags & FLAG_FROM != 0 {
        Some(field()?)
    } else {
        None
    };
    Ok(Layout {
        head: RecordHead {
            seq,
            time_ms,
            len: total,
        },
        json: flags & FLAG_JSON != 0,
        topic,
        event,
        from,
        payload: (at, total),
    })
}

/// Checks the record at the start of `buf` (length, checksum, fields within it) without
/// building the event: what the recovery scan needs.
///
/// # Errors
/// [`RecordError::Incomplete`] when `buf` ends before the record; [`RecordError::Corrupt`] when
/// it is not a record.
pub fn peek(buf: &[u8]) -> Result<RecordHead, RecordError> {
    layout(buf).map(|l| l.head)
}

fn text<'a>(
    what: &str,
    buf: &'a [u8],
    (start, end): (usize, usize),
) -> Result<&'a str, RecordError> {
    std::str::from_utf8(&buf[start..end]).map_err(|_| corrupt(format!("the {what} is not UTF-8")))
}

fn build(
    buf: &[u8],
    l: &Layout,
    payload: impl FnOnce(usize, usize) -> Bytes,
) -> Result<Logged, RecordError> {
    let topic = Topic::parse(text("topic", buf, l.topic)?, READ_LIMITS)
        .map_err(|e| corrupt(format!("invalid topic: {}", e.message)))?;
    let name = |what: &str, at: Option<(usize, usize)>| -> Result<Option<Name>, RecordError> {
        at.map(|at| {
            Name::parse(what, text(what, buf, at)?, READ_LIMITS.max_len)
                .map_err(|e| corrupt(format!("invalid {what}: {}", e.message)))
        })
        .transpose()
    };
    let event = name("event", l.event)?;
    let from = name("from", l.from)?;
    let (start, end) = l.payload;
    let bytes = payload(start, end);
    let payload = if l.json {
        // Validated as JSON when it was published; UTF-8 is checked again (cheap), the JSON
        // grammar is not (it was checked once, and the checksum vouches for the bytes).
        if std::str::from_utf8(&bytes).is_err() {
            return Err(corrupt("the data is not UTF-8"));
        }
        Payload::json_unchecked(bytes)
    } else {
        Payload::text(bytes).map_err(|_| corrupt("the data is not UTF-8"))?
    };
    Ok(Logged {
        seq: l.head.seq,
        time_ms: l.head.time_ms,
        event: LogEvent {
            topic,
            event,
            from,
            payload,
        },
    })
}

/// Decodes the record at the start of `buf`; returns it and the bytes it took.
///
/// # Errors
/// [`RecordError::Incomplete`] when `buf` ends before the record; [`RecordError::Corrupt`] when
/// it is not a valid record.
pub fn decode(buf: &[u8]) -> Result<(Logged, usize), RecordError> {
    let l = layout(buf)?;
    let logged = build(buf, &l, |start, end| {
        Bytes::copy_from_slice(&buf[start..end])
    })?;
    Ok((logged, l.head.len))
}

/// Like [`decode`], on shared bytes: the payload is a slice of `buf`, not a copy.
///
/// # Errors
/// As [`decode`].
pub fn decode_shared(buf: &Bytes) -> Result<(Logged, usize), RecordError> {
    let l = layout(buf)?;
    let logged = build(buf, &l, |start, end| buf.slice(start..end))?;
    Ok((logged, l.head.len))
}

/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TDLOG\0\0\x01";

/// Bytes of the segment header: magic, base position, CRC-32C of both, four reserved zeros.
pub const SEGMENT_HEADER: usize = 24;

/// The header of a segment whose first position is `base`.
pub fn encode_segment_header(base: u64) -> [u8; SEGMENT_HEADER] {
    let mut out = [0; SEGMENT_HEADER];
    out[..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..16].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&out[..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads a segment header: the segment's base position.
///
/// # Errors
/// [`RecordError::Incomplete`] when `buf` is shorter than the header; [`RecordError::Corrupt`]
/// when it is not a segment header.
pub fn decode_segment_header(buf: &[u8]) -> Result<u64, RecordError> {
    let Some(head) = buf.get(..SEGMENT_HEADER) else {
        return Err(RecordError::Incomplete);
    };
    if head[..8] != SEGMENT_MAGIC {
        return Err(corrupt("not a tidings log segment (bad magic)"));
    }
    if crc32c::crc32c(&head[..16]) != u32_at(head, 16).unwrap_or_default() {
        return Err(corrupt("segment header checksum mismatch"));
    }
    if head[20..] != [0; 4] {
        return Err(corrupt("segment header reserved bytes are not zero"));
    }
    u64_at(head, 8).ok_or_else(|| corrupt("segment header truncated"))
}

/// The first bytes of the `meta` file.
pub const META_MAGIC: [u8; 8] = *b"TDMETA\0\0";

/// The `meta` format version this code writes and reads.
pub const META_VERSION: u32 = 1;

/// Bytes of the `meta` file.
pub const META_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4;

/// The log's own state, kept in the `meta` file of its directory (replaced atomically, synced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The log's epoch, chosen once when the directory was created.
    pub epoch: u64,
    /// Positions up to this one may have been given out: after a restart, numbering continues
    /// above it, so no cursor ever names two different events.
    pub reserved_through: u64,
    /// The logical first retained position when it was written (retention only moves it up;
    /// recovery applies retention again).
    pub first: u64,
}

/// The bytes of the `meta` file.
pub fn encode_meta(meta: &Meta) -> [u8; META_LEN] {
    let mut out = [0; META_LEN];
    out[..8].copy_from_slice(&META_MAGIC);
    out[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&meta.epoch.to_le_bytes());
    out[20..28].copy_from_slice(&meta.reserved_through.to_le_bytes());
    out[28..36].copy_from_slice(&meta.first.to_le_bytes());
    let crc = crc32c::crc32c(&out[..36]);
    out[36..40].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads the `meta` file.
///
/// # Errors
/// [`RecordError::Corrupt`] saying what is wrong (also for a wrong length: the file is replaced
/// atomically, so a short one is damage, not a torn write).
pub fn decode_meta(buf: &[u8]) -> Result<Meta, RecordError> {
    if buf.len() != META_LEN {
        return Err(corrupt(format!(
            "{} bytes where {META_LEN} were expected",
            buf.len()
        )));
    }
    if buf[..8] != META_MAGIC {
        return Err(corrupt("not a tidings meta file (bad magic)"));
    }
    let version = u32_at(buf, 8).unwrap_or_default();
    if version != META_VERSION {
        return Err(corrupt(format!(
            "format version {version}; this server reads version {META_VERSION}"
        )));
    }
    if crc32c::crc32c(&buf[..36]) != u32_at(buf, 36).unwrap_or_default() {
        return Err(corrupt("checksum mismatch"));
    }
    let field = |at| u64_at(buf, at).unwrap_or_default();
    Ok(Meta {
        epoch: field(12),
        reserved_through: field(20),
        first: field(28),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(seq: u64, payload: &str, json: bool, names: bool) -> Logged {
        Logged {
            seq,
            time_ms: 1_700_000_000_000u64.wrapping_add(seq),
            event: LogEvent {
                topic: Topic::parse("chat.room1", NameLimits::default()).unwrap(),
                event: names.then(|| Name::parse("event", "said", 64).unwrap()),
                from: names.then(|| Name::parse("from", "alice", 64).unwrap()),
                payload: if json {
                    Payload::json(payload.as_bytes().to_vec()).unwrap()
                } else {
                    Payload::text(payload.as_bytes().to_vec()).unwrap()
                },
            },
        }
    }

    fn samples() -> Vec<Logged> {
        vec![
            sample(1, "", false, false),
            sample(2, "hello", false, true),
            sample(u64::MAX, r#"{"a":[1,2,"é"]}"#, true, true),
            sample(7, "42", true, false),
        ]
    }

    #[test]
    fn round_trip() {
        for logged in samples() {
            let mut buf = vec![9, 9];
            let n = encode(&logged, &mut buf).unwrap();
            assert_eq!(n, buf.len() - 2);
            assert_eq!(n, encoded_len(&logged.event));
            assert_eq!(decode(&buf[2..]).unwrap(), (logged.clone(), n));
            assert_eq!(
                decode_shared(&Bytes::copy_from_slice(&buf[2..])).unwrap(),
                (logged.clone(), n)
            );
            let head = peek(&buf[2..]).unwrap();
            assert_eq!(
                (head.seq, head.time_ms, head.len),
                (logged.seq, logged.time_ms, n)
            );
            // Followed by more bytes: only the record is consumed.
            buf.extend_from_slice(b"more");
            assert_eq!(decode(&buf[2..]).unwrap().1, n);
        }
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for logged in samples() {
            let mut buf = Vec::new();
            encode(&logged, &mut buf).unwrap();
            for cut in 0..buf.len() {
                assert_eq!(
                    decode(&buf[..cut]),
                    Err(RecordError::Incomplete),
                    "cut {cut}"
                );
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        for logged in samples() {
            let mut buf = Vec::new();
            encode(&logged, &mut buf).unwrap();
            for at in 0..buf.len() {
                for bit in [0x01, 0x80, 0xff] {
                    let mut bad = buf.clone();
                    bad[at] ^= bit;
                    match decode(&bad) {
                        Err(RecordError::Corrupt(_) | RecordError::Incomplete) => {}
                        Ok(got) => panic!("byte {at} ^ {bit:#x} decoded as {got:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn announced_lengths_are_not_trusted() {
        // A huge length with few bytes: incomplete or corrupt, no allocation of the length.
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0, 0]),
            Err(RecordError::Corrupt(_))
        ));
        assert_eq!(decode(&[100, 0, 0, 0, 1, 2]), Err(RecordError::Incomplete));
        assert!(matches!(
            decode(&[1, 0, 0, 0, 1]),
            Err(RecordError::Corrupt(_))
        ));
        // A valid checksum over fields that run past the record.
        let mut body = vec![0u8; BODY_FIXED];
        body[17..19].copy_from_slice(&500u16.to_le_bytes());
        let mut buf = ((body.len() + 4) as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        buf.extend_from_slice(&body);
        assert!(matches!(decode(&buf), Err(RecordError::Corrupt(_))));
    }

    #[test]
    fn invalid_text_is_corrupt() {
        let mut buf = Vec::new();
        encode(&sample(3, "ab", false, false), &mut buf).unwrap();
        // Replace the payload with invalid UTF-8 and fix the checksum.
        let n = buf.len();
        buf[n - 2..].copy_from_slice(b"\xff\xfe");
        let crc = crc32c::crc32c(&buf[RECORD_HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&buf), Err(RecordError::Corrupt(r)) if r.contains("UTF-8")));
    }

    #[test]
    fn names_longer_than_today_limits_are_read() {
        let long = "a".repeat(1000);
        let logged = Logged {
            seq: 1,
            time_ms: 2,
            event: LogEvent {
                topic: Topic::parse(
                    &long,
                    NameLimits {
                        max_len: 2000,
                        max_segments: 1,
                    },
                )
                .unwrap(),
                event: None,
                from: Some(Name::parse("from", &long, 2000).unwrap()),
                payload: Payload::empty(),
            },
        };
        let mut buf = Vec::new();
        encode(&logged, &mut buf).unwrap();
        assert_eq!(decode(&buf).unwrap().0, logged);
    }

    #[test]
    fn too_large_is_refused() {
        let long = "a".repeat(70_000);
        let mut logged = sample(1, "x", false, false);
        logged.event.from = Some(Name::parse("from", &long, 100_000).unwrap());
        let mut buf = vec![1];
        assert!(encode(&logged, &mut buf).is_err());
        assert_eq!(buf, [1]);
    }

    #[test]
    fn segment_header_and_meta() {
        let head = encode_segment_header(1234);
        assert_eq!(decode_segment_header(&head), Ok(1234));
        assert_eq!(
            decode_segment_header(&head[..10]),
            Err(RecordError::Incomplete)
        );
        for at in 0..SEGMENT_HEADER {
            let mut bad = head;
            bad[at] ^= 1;
            assert!(decode_segment_header(&bad).is_err());
        }
        let meta = Meta {
            epoch: 99,
            reserved_through: 1_000_000,
            first: 17,
        };
        let bytes = encode_meta(&meta);
        assert_eq!(decode_meta(&bytes), Ok(meta));
        for at in 0..META_LEN {
            let mut bad = bytes;
            bad[at] ^= 0x10;
            assert!(decode_meta(&bad).is_err(), "byte {at}");
        }
        assert!(decode_meta(&bytes[..20]).is_err());
    }
}
