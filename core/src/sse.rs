//! The Server-Sent Events (SSE) wire codec: a fast encoder and a strict decoder.
//!
//! # Encoder
//!
//! [`encode_event`] (and [`event`]) write one complete event: an optional `id` line, an optional
//! `event` line, one `data` line per line of the payload, and the terminating blank line. The
//! payload is split into lines at every CRLF, lone CR and lone LF (the three line breaks of the
//! event-stream grammar), so a payload that itself contains line breaks cannot end the event early
//! or inject fields; a receiver sees the lines joined with LF (CRLF and CR come back as LF).
//!
//! Every field line is written as `name: value\n` (the separator space protects values that start
//! with a space, since a reader removes exactly one), except that an empty value is written as
//! `name:\n`. Empty data still yields one `data:` line so that a browser dispatches an event with
//! empty data; data ending in a line break yields a final empty `data:` line (`"a\n"` gives
//! `data: a\ndata:\n`).
//!
//! Values that would break the framing are refused rather than escaped: `id`, `event` and comments
//! must not contain CR or LF, an `id` must not contain NUL (a browser ignores such an `id` line),
//! and data must be valid UTF-8. On error nothing is appended.
//!
//! # Decoder
//!
//! [`Decoder`] is the WHATWG HTML "event stream interpretation" (§9.2.5 and §9.2.6), fed in chunks
//! of any size, with two deliberate differences for a strict test decoder: invalid UTF-8 is
//! reported as [`DecodeError::NotUtf8`] instead of being replaced by U+FFFD, and comments and
//! reconnection-time changes are surfaced as [`Item`]s instead of being silently applied.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Why a field could not be written into an SSE stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseFieldError {
    /// `id`, `event` or a comment contained CR, LF (which would end the line) or, for `id`, NUL
    /// (which makes browsers ignore the id).
    #[error("the SSE `{field}` field must not contain {what}")]
    ForbiddenChar {
        /// The field: `"id"`, `"event"` or `"comment"`.
        field: &'static str,
        /// The character: `"a carriage return"`, `"a line feed"` or `"a NUL character"`.
        what: &'static str,
    },
    /// Data is not valid UTF-8 (an event stream is always UTF-8).
    #[error("SSE data must be valid UTF-8")]
    NotUtf8,
}

/// Refuses CR, LF and (if `nul`) NUL in a single-line field value.
fn check_line(field: &'static str, value: &str, nul: bool) -> Result<(), SseFieldError> {
    let bad = value
        .bytes()
        .find(|&b| b == b'\r' || b == b'\n' || (nul && b == 0));
    match bad {
        None => Ok(()),
        Some(b) => Err(SseFieldError::ForbiddenChar {
            field,
            what: match b {
                b'\r' => "a carriage return",
                b'\n' => "a line feed",
                _ => "a NUL character",
            },
        }),
    }
}

/// Checks a value for the `id` field: no CR, LF or NUL.
pub fn check_id(id: &str) -> Result<(), SseFieldError> {
    check_line("id", id, true)
}

/// Checks a value for the `event` field: no CR or LF.
pub fn check_event(event: &str) -> Result<(), SseFieldError> {
    check_line("event", event, false)
}

/// Checks the text of a comment: no CR or LF.
pub fn check_comment(text: &str) -> Result<(), SseFieldError> {
    check_line("comment", text, false)
}

/// Position of the first CR or LF in `hay`.
///
/// Scans 32-byte blocks with a branch-free reduction the compiler vectorizes, then locates the
/// byte inside the first block that has one.
#[inline]
fn find_eol(hay: &[u8]) -> Option<usize> {
    const BLOCK: usize = 32;
    let is_eol = |b: &u8| *b == b'\r' || *b == b'\n';
    let mut blocks = hay.chunks_exact(BLOCK);
    let mut offset = 0;
    for block in &mut blocks {
        let hit = block
            .iter()
            .fold(false, |acc, &b| acc | (b == b'\r') | (b == b'\n'));
        if hit {
            return block.iter().position(is_eol).map(|i| offset + i);
        }
        offset += BLOCK;
    }
    blocks
        .remainder()
        .iter()
        .position(is_eol)
        .map(|i| offset + i)
}

/// Calls `f` on each line of `data`, split at CRLF, lone CR and lone LF (at least one line).
fn for_each_line<'a>(mut data: &'a [u8], mut f: impl FnMut(&'a [u8])) {
    while let Some(i) = find_eol(data) {
        f(&data[..i]);
        let crlf = data[i] == b'\r' && data.get(i + 1) == Some(&b'\n');
        data = &data[i + 1 + usize::from(crlf)..];
    }
    f(data);
}

/// Encoded size of `name value\n` (see [`put_field`]); `name` includes the colon.
fn field_len(name: &[u8], value: &[u8]) -> usize {
    let value_len = if value.is_empty() { 0 } else { 1 + value.len() };
    name.len() + value_len + 1
}

/// Appends `name value\n`, or `name\n` for an empty value; `name` includes the colon.
fn put_field(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    if !value.is_empty() {
        buf.extend_from_slice(b" ");
        buf.extend_from_slice(value);
    }
    buf.extend_from_slice(b"\n");
}

/// Validates the three parts of an event and returns its exact encoded size.
fn checked_len(id: Option<&str>, event: Option<&str>, data: &[u8]) -> Result<usize, SseFieldError> {
    let mut len = 1; // the terminating blank line
    if let Some(id) = id {
        check_id(id)?;
        len += field_len(b"id:", id.as_bytes());
    }
    if let Some(event) = event {
        check_event(event)?;
        len += field_len(b"event:", event.as_bytes());
    }
    std::str::from_utf8(data).map_err(|_| SseFieldError::NotUtf8)?;
    for_each_line(data, |line| len += field_len(b"data:", line));
    Ok(len)
}

/// Writes an already validated event.
fn put_event(buf: &mut BytesMut, id: Option<&str>, event: Option<&str>, data: &[u8]) {
    if let Some(id) = id {
        put_field(buf, b"id:", id.as_bytes());
    }
    if let Some(event) = event {
        put_field(buf, b"event:", event.as_bytes());
    }
    for_each_line(data, |line| put_field(buf, b"data:", line));
    buf.extend_from_slice(b"\n");
}

/// Appends one complete event: `id: <id>\n` (if `Some`), `event: <event>\n` (if `Some`), one
/// `data: <line>\n` per line of `data` (split at CRLF, lone CR and lone LF; an empty line is written
/// as `data:\n`, and empty data still gives one `data:` line), then the blank line `\n`.
///
/// Nothing is appended when it returns an error.
pub fn encode_event(
    buf: &mut BytesMut,
    id: Option<&str>,
    event: Option<&str>,
    data: &[u8],
) -> Result<(), SseFieldError> {
    let len = checked_len(id, event, data)?;
    buf.reserve(len);
    put_event(buf, id, event, data);
    Ok(())
}

/// Same as [`encode_event`], returning a frozen buffer allocated once at its exact size.
pub fn event(id: Option<&str>, event: Option<&str>, data: &[u8]) -> Result<Bytes, SseFieldError> {
    let len = checked_len(id, event, data)?;
    let mut buf = BytesMut::with_capacity(len);
    put_event(&mut buf, id, event, data);
    debug_assert_eq!(buf.len(), len);
    Ok(buf.freeze())
}

/// Appends `retry: <ms>\n\n`, which sets a browser's reconnection time in milliseconds.
pub fn encode_retry(buf: &mut BytesMut, ms: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = ms;
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.reserve(b"retry: \n\n".len() + digits.len() - start);
    buf.extend_from_slice(b"retry: ");
    buf.extend_from_slice(&digits[start..]);
    buf.extend_from_slice(b"\n\n");
}

/// Appends the comment `: <text>\n\n` (`:\n\n` for an empty text), e.g. as a keep-alive.
///
/// Errors, appending nothing, if `text` contains CR or LF.
pub fn encode_comment(buf: &mut BytesMut, text: &str) -> Result<(), SseFieldError> {
    check_comment(text)?;
    buf.reserve(field_len(b":", text.as_bytes()) + 1);
    put_field(buf, b":", text.as_bytes());
    buf.extend_from_slice(b"\n");
    Ok(())
}

/// The keep-alive comment `:\n\n`.
pub fn keepalive() -> Bytes {
    Bytes::from_static(b":\n\n")
}

/// One dispatched event, as a browser's `EventSource` would deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEvent {
    /// The event type (`message` when the stream gave none).
    pub event_type: String,
    /// The data, lines joined with LF, without the final LF.
    pub data: String,
    /// The last event ID in force when this event was dispatched (it persists across events).
    pub last_event_id: String,
}

/// Something the decoder met, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Item {
    /// A dispatched event.
    Event(DecodedEvent),
    /// A valid `retry` field set the reconnection time to this many milliseconds (values beyond
    /// `u64::MAX` saturate).
    Retry(u64),
    /// A comment line, without its `:` and without one following space if present (so `: ping`
    /// and `:ping` both give `ping`); browsers ignore these, keep-alives use them.
    Comment(String),
}

/// Errors of the [`Decoder`]: resource limits and invalid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A line (without its line break) is longer than the limit.
    #[error("an SSE line is longer than {limit} bytes")]
    LineTooLong {
        /// The decoder's `max_event_bytes`.
        limit: usize,
    },
    /// The data of one event is longer than the limit.
    #[error("the data of an SSE event is longer than {limit} bytes")]
    EventTooLarge {
        /// The decoder's `max_event_bytes`.
        limit: usize,
    },
    /// A line is not valid UTF-8. WHATWG decodes with replacement characters; this strict decoder
    /// reports the error instead.
    #[error("the SSE stream is not valid UTF-8")]
    NotUtf8,
}

const BOM: &[u8] = "\u{feff}".as_bytes();

/// Incremental, strict WHATWG event-stream decoder.
///
/// Feed it arbitrary chunks: a CR at the end of one chunk followed by LF at the start of the next
/// is one line break, and a BOM is stripped only at the very start of the stream, even if split
/// across chunks. No line and no event's data may exceed `max_event_bytes`, so the memory held is
/// a small multiple of it, plus the items not yet taken with [`Decoder::next_item`].
///
/// After an error the decoder refuses further input (returning the same error) until
/// [`Decoder::finish`]; items decoded before the error stay available.
#[derive(Debug, Clone)]
pub struct Decoder {
    limit: usize,
    /// The incomplete current line (at stream start: the bytes that may still be a BOM).
    line: Vec<u8>,
    bom_done: bool,
    /// The last chunk ended in CR: a LF starting the next one belongs to the same line break.
    pending_cr: bool,
    data: String,
    event_type: String,
    id: String,
    /// The event source's "last event ID string", set at every blank line.
    reconnect_id: String,
    retry: Option<u64>,
    items: VecDeque<Item>,
    failed: Option<DecodeError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with a limit of 16 MiB per line and per event.
    pub fn new() -> Self {
        Self::with_limit(16 << 20)
    }

    /// A decoder refusing lines and event data longer than `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        Self {
            limit: max_event_bytes,
            line: Vec::new(),
            bom_done: false,
            pending_cr: false,
            data: String::new(),
            event_type: String::new(),
            id: String::new(),
            reconnect_id: String::new(),
            retry: None,
            items: VecDeque::new(),
            failed: None,
        }
    }

    /// Feeds bytes; decoded items become available from [`Decoder::next_item`].
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.feed_inner(chunk);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    fn feed_inner(&mut self, mut chunk: &[u8]) -> Result<(), DecodeError> {
        if !self.bom_done {
            let take = chunk.len().min(BOM.len() - self.line.len());
            self.line.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if BOM.starts_with(&self.line) {
                if self.line.len() < BOM.len() {
                    return Ok(()); // the whole chunk was taken: wait for more
                }
                self.line.clear();
            }
            self.bom_done = true;
            let head = std::mem::take(&mut self.line);
            self.scan(&head)?;
        }
        self.scan(chunk)
    }

    /// Splits bytes into lines, completing the buffered partial line first.
    fn scan(&mut self, mut bytes: &[u8]) -> Result<(), DecodeError> {
        if self.pending_cr && !bytes.is_empty() {
            self.pending_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(i) = find_eol(bytes) {
            self.check_line_len(self.line.len() + i)?;
            if self.line.is_empty() {
                self.process_line(&bytes[..i])?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..i]);
                let result = self.process_line(&line);
                line.clear();
                self.line = line;
                result?;
            }
            let cr = bytes[i] == b'\r';
            bytes = &bytes[i + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
        }
        self.check_line_len(self.line.len() + bytes.len())?;
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn check_line_len(&self, len: usize) -> Result<(), DecodeError> {
        if len > self.limit {
            return Err(DecodeError::LineTooLong { limit: self.limit });
        }
        Ok(())
    }

    /// WHATWG §9.2.6 for one complete line.
    fn process_line(&mut self, line: &[u8]) -> Result<(), DecodeError> {
        let line = std::str::from_utf8(line).map_err(|_| DecodeError::NotUtf8)?;
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if let Some(text) = line.strip_prefix(':') {
            let text = text.strip_prefix(' ').unwrap_or(text);
            self.items.push_back(Item::Comment(text.to_owned()));
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                // The delivered data is the buffer without its final LF.
                if self.data.len() + value.len() > self.limit {
                    return Err(DecodeError::EventTooLarge { limit: self.limit });
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                let ms = value.bytes().fold(0u64, |ms, b| {
                    ms.saturating_mul(10).saturating_add(u64::from(b - b'0'))
                });
                self.retry = Some(ms);
                self.items.push_back(Item::Retry(ms));
            }
            _ => {}
        }
        Ok(())
    }

    /// WHATWG "dispatch the event", run at every blank line.
    fn dispatch(&mut self) {
        self.reconnect_id.clone_from(&self.id);
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        self.data.pop(); // the final LF
        let event_type = if self.event_type.is_empty() {
            "message".to_owned()
        } else {
            std::mem::take(&mut self.event_type)
        };
        self.items.push_back(Item::Event(DecodedEvent {
            event_type,
            data: std::mem::take(&mut self.data),
            last_event_id: self.id.clone(),
        }));
    }

    /// Next decoded item, in stream order.
    pub fn next_item(&mut self) -> Option<Item> {
        self.items.pop_front()
    }

    /// Next dispatched event, dropping the [`Item::Retry`] and [`Item::Comment`] items before it.
    pub fn next_event(&mut self) -> Option<DecodedEvent> {
        while let Some(item) = self.items.pop_front() {
            if let Item::Event(event) = item {
                return Some(event);
            }
        }
        None
    }

    /// The stream ended: a pending event without its final blank line, including an unterminated
    /// last line and an `id` it set, is discarded (WHATWG). Returns whether something was
    /// discarded.
    ///
    /// The decoder is then ready for a new stream (as after a reconnection: a BOM may appear again,
    /// any error is cleared), keeping the reconnection time and the last event ID, which becomes
    /// [`Decoder::reconnect_id`] as in a browser.
    pub fn finish(&mut self) -> bool {
        let discarded = !self.line.is_empty()
            || !self.data.is_empty()
            || !self.event_type.is_empty()
            || self.id != self.reconnect_id;
        self.line.clear();
        self.data.clear();
        self.event_type.clear();
        self.id.clone_from(&self.reconnect_id);
        self.bom_done = false;
        self.pending_cr = false;
        self.failed = None;
        discarded
    }

    /// The current last-event-ID buffer (changed by every accepted `id` field, even before the
    /// event is dispatched).
    pub fn last_event_id(&self) -> &str {
        &self.id
    }

    /// The event source's last event ID string, updated at every blank line (even when no event
    /// is dispatched): what a browser would send as `Last-Event-ID` when reconnecting.
    pub fn reconnect_id(&self) -> &str {
        &self.reconnect_id
    }

    /// The reconnection time in milliseconds, `None` until a valid `retry` field was seen.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }
}

/// Decodes a complete stream in one go ([`Decoder::feed`] then [`Decoder::finish`]).
pub fn decode_all(stream: &[u8]) -> Result<Vec<Item>, DecodeError> {
    let mut decoder = Decoder::new();
    decoder.feed(stream)?;
    decoder.finish();
    Ok(decoder.items.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(id: Option<&str>, ev: Option<&str>, data: &str) -> String {
        let mut buf = BytesMut::new();
        encode_event(&mut buf, id, ev, data.as_bytes()).unwrap();
        assert_eq!(event(id, ev, data.as_bytes()).unwrap(), buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    fn refused(id: Option<&str>, ev: Option<&str>, data: &[u8], err: SseFieldError) {
        let mut buf = BytesMut::from("keep");
        assert_eq!(encode_event(&mut buf, id, ev, data), Err(err.clone()));
        assert_eq!(event(id, ev, data), Err(err));
        assert_eq!(buf, "keep");
    }

    fn forbidden(field: &'static str, what: &'static str) -> SseFieldError {
        SseFieldError::ForbiddenChar { field, what }
    }

    fn de(event_type: &str, data: &str, last_event_id: &str) -> DecodedEvent {
        let (event_type, data) = (event_type.into(), data.into());
        DecodedEvent {
            event_type,
            data,
            last_event_id: last_event_id.into(),
        }
    }

    fn ev(event_type: &str, data: &str, id: &str) -> Item {
        Item::Event(de(event_type, data, id))
    }

    fn msg(data: &str) -> Item {
        ev("message", data, "")
    }

    fn decode(stream: &str) -> Vec<Item> {
        decode_all(stream.as_bytes()).unwrap()
    }

    fn drain(decoder: &mut Decoder) -> Vec<Item> {
        std::iter::from_fn(|| decoder.next_item()).collect()
    }

    #[test]
    fn encodes_exact_bytes() {
        assert_eq!(
            enc(Some("7"), Some("up"), "{}"),
            "id: 7\nevent: up\ndata: {}\n\n"
        );
        assert_eq!(enc(Some(""), Some(""), ""), "id:\nevent:\ndata:\n\n");
        for data in ["a\nb", "a\r\nb", "a\rb"] {
            assert_eq!(enc(None, None, data), "data: a\ndata: b\n\n");
        }
        let mixed = "data: a\ndata:\ndata: b\ndata:\ndata: c\ndata:\n\n";
        assert_eq!(enc(None, None, "a\r\rb\n\r\nc\r"), mixed);
        assert_eq!(enc(None, None, "a\n"), "data: a\ndata:\n\n");
        assert_eq!(enc(None, None, ""), "data:\n\n");
        assert_eq!(enc(None, None, " x"), "data:  x\n\n");
        assert_eq!(enc(None, None, ":x"), "data: :x\n\n");
        assert_eq!(
            enc(None, Some("é"), "ü\n✓"),
            "event: é\ndata: ü\ndata: ✓\n\n"
        );
        let (x, y) = ("x".repeat(100), "y".repeat(50));
        assert_eq!(
            enc(None, None, &format!("{x}\n{y}")),
            format!("data: {x}\ndata: {y}\n\n")
        );
    }

    #[test]
    fn refuses_bad_fields_and_appends_nothing() {
        let whats = [
            ("\r", "a carriage return"),
            ("\n", "a line feed"),
            ("\0", "a NUL character"),
        ];
        for (c, what) in whats {
            refused(Some(&format!("a{c}b")), None, b"x", forbidden("id", what));
        }
        for (c, what) in &whats[..2] {
            refused(
                None,
                Some(&format!("a{c}b")),
                b"x",
                forbidden("event", what),
            );
        }
        refused(Some("1"), Some("e"), b"ok\xff\xfe", SseFieldError::NotUtf8);
        assert_eq!(check_event("a\0b"), Ok(()));
        let err = forbidden("id", "a NUL character").to_string();
        assert_eq!(err, "the SSE `id` field must not contain a NUL character");
    }

    #[test]
    fn encodes_retry_and_comments() {
        let mut buf = BytesMut::new();
        encode_retry(&mut buf, 0);
        encode_retry(&mut buf, 1500);
        encode_retry(&mut buf, u64::MAX);
        encode_comment(&mut buf, "ping").unwrap();
        encode_comment(&mut buf, "").unwrap();
        let err = encode_comment(&mut buf, "a\rb").unwrap_err();
        assert_eq!(err, forbidden("comment", "a carriage return"));
        let want = "retry: 0\n\nretry: 1500\n\nretry: 18446744073709551615\n\n: ping\n\n:\n\n";
        assert_eq!(buf, want);
        assert_eq!(keepalive(), ":\n\n");
        let retries = [0, 1500, u64::MAX].map(Item::Retry);
        let comments = ["ping", ""].map(|c| Item::Comment(c.into()));
        assert_eq!(
            decode_all(&buf).unwrap(),
            [retries.as_slice(), &comments].concat()
        );
    }

    #[test]
    fn decodes_encoder_output() {
        let mut buf = BytesMut::new();
        encode_event(&mut buf, Some("1"), Some("up"), b" lead\r\n:colon\r").unwrap();
        encode_event(&mut buf, None, None, b"").unwrap();
        let want = [ev("up", " lead\n:colon\n", "1"), ev("message", "", "1")];
        assert_eq!(decode_all(&buf).unwrap(), want);
    }

    #[test]
    fn bom_is_stripped_once_even_split() {
        assert_eq!(decode("\u{feff}data: a\n\n"), [msg("a")]);
        // A second BOM is part of the first field name, which is then unknown.
        assert_eq!(decode("\u{feff}\u{feff}data: a\n\ndata: b\n\n"), [msg("b")]);
        assert_eq!(decode("\n\ndata: a\n\n"), [msg("a")]);
        // A partial BOM followed by something else is kept (and here is invalid UTF-8).
        assert_eq!(
            decode_all(b"\xef\xbbdata: a\n\n"),
            Err(DecodeError::NotUtf8)
        );
        let stream = "\u{feff}data: a\n\n".as_bytes();
        for i in 0..=4 {
            for j in i..=stream.len() {
                let mut decoder = Decoder::new();
                for chunk in [&stream[..i], &stream[i..j], &stream[j..]] {
                    decoder.feed(chunk).unwrap();
                }
                assert_eq!(drain(&mut decoder), [msg("a")], "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn line_endings_in_any_chunking() {
        let stream = "data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r";
        let want = [msg("a\nb\nc"), msg("d")];
        assert_eq!(decode(stream), want);
        for split in 0..=stream.len() {
            let mut decoder = Decoder::new();
            decoder.feed(&stream.as_bytes()[..split]).unwrap();
            decoder.feed(&stream.as_bytes()[split..]).unwrap();
            assert!(!decoder.finish());
            assert_eq!(drain(&mut decoder), want, "split at {split}");
        }
        let mut decoder = Decoder::new();
        for byte in stream.as_bytes() {
            decoder.feed(std::slice::from_ref(byte)).unwrap();
        }
        assert_eq!(drain(&mut decoder), want);
        // A CR ending one chunk and a LF starting the next are one line break.
        let mut decoder = Decoder::new();
        for chunk in ["data: x\r", "\ndata: y\r", "\n\n"] {
            decoder.feed(chunk.as_bytes()).unwrap();
        }
        assert_eq!(drain(&mut decoder), [msg("x\ny")]);
    }

    #[test]
    fn fields_per_whatwg() {
        let stream = ": hi\n:  two\n:\ndata\ndata:  x\ndata:y\nfoo: bar\nretry\n\n";
        let comments = ["hi", " two", ""].map(|c| Item::Comment(c.into()));
        assert_eq!(
            decode(stream),
            [comments.as_slice(), &[msg("\n x\ny")]].concat()
        );
        assert_eq!(decode("data\n\n"), [msg("")]);
        assert_eq!(decode("data\ndata\n\n"), [msg("\n")]);
        assert_eq!(decode("event: a:b\ndata: c:d\n\n"), [ev("a:b", "c:d", "")]);
        assert_eq!(decode("event\ndata: x\n\n"), [msg("x")]);
        assert_eq!(decode("Data: x\n\n data: y\n\n"), []);
    }

    #[test]
    fn ids_persist_and_reset() {
        let stream =
            "id: 1\ndata: a\n\ndata: b\n\nid: 2\0\ndata: c\n\nid\n\nid: 3\n\nevent: t\ndata: d\n\n";
        let want = [
            ev("message", "a", "1"),
            ev("message", "b", "1"),
            ev("message", "c", "1"),
        ];
        assert_eq!(
            decode(stream),
            [want.as_slice(), &[ev("t", "d", "3")]].concat()
        );
        let mut decoder = Decoder::new();
        decoder.feed(b"id: 5\ndata: a\n\nid: 6\n\n").unwrap();
        assert_eq!(drain(&mut decoder), [ev("message", "a", "5")]);
        assert_eq!(
            (decoder.last_event_id(), decoder.reconnect_id()),
            ("6", "6")
        );
        decoder.feed(b"id:\n").unwrap();
        assert_eq!((decoder.last_event_id(), decoder.reconnect_id()), ("", "6"));
        decoder.feed(b"\n").unwrap();
        assert_eq!(decoder.reconnect_id(), "");
    }

    #[test]
    fn retry_only_when_all_digits() {
        let mut decoder = Decoder::new();
        decoder
            .feed(b"retry: 1a\nretry: -1\nretry:\nretry:  5\nretry: 5 \n")
            .unwrap();
        assert_eq!((drain(&mut decoder), decoder.retry()), (vec![], None));
        decoder
            .feed(b"retry: 0250\nretry:99999999999999999999999\nretry: x\n")
            .unwrap();
        assert_eq!(
            drain(&mut decoder),
            [Item::Retry(250), Item::Retry(u64::MAX)]
        );
        assert_eq!(decoder.retry(), Some(u64::MAX));
    }

    #[test]
    fn type_resets_and_unterminated_event_is_discarded() {
        let stream = "event: a\ndata: 1\n\ndata: 2\n\nevent: b\n\ndata: 3\n\n";
        assert_eq!(decode(stream), [ev("a", "1", ""), msg("2"), msg("3")]);
        assert_eq!(decode("data: a\n\ndata: b\n"), [msg("a")]);
        let mut decoder = Decoder::new();
        decoder
            .feed(b": c\ndata: 1\n\nid: 9\nevent: x\ndata: 2\n")
            .unwrap();
        assert!(decoder.finish());
        assert_eq!(decoder.next_event(), Some(de("message", "1", "")));
        assert_eq!((decoder.next_item(), decoder.last_event_id()), (None, ""));
        decoder.feed(b"data: 3").unwrap();
        assert!(decoder.finish());
        assert!(!decoder.finish());
        assert_eq!(decoder.next_item(), None);
    }

    #[test]
    fn limits_are_enforced() {
        let mut decoder = Decoder::with_limit(10);
        decoder.feed(b"data: 1234\ndata: 5\n\n").unwrap();
        assert_eq!(decoder.next_event(), Some(de("message", "1234\n5", "")));
        let too_large = Err(DecodeError::EventTooLarge { limit: 10 });
        assert_eq!(
            decoder.feed(b"data: 1234\ndata: 5678\ndata: 9\n"),
            too_large
        );
        assert_eq!(decoder.feed(b"\n"), too_large);
        assert_eq!(decoder.data.len(), 10);
        decoder.finish();
        decoder.feed(b"data: 1\n\n").unwrap();
        assert_eq!(drain(&mut decoder), [msg("1")]);
        let too_long = Err(DecodeError::LineTooLong { limit: 10 });
        assert_eq!(decoder.feed(b"data: 1234"), Ok(()));
        assert_eq!(decoder.feed(b"5"), too_long);
        assert_eq!(decoder.line.len(), 10);
        assert_eq!(Decoder::with_limit(10).feed(b": 345678901\n"), too_long);
        assert_eq!(decode_all(b"data: \xc3\n\n"), Err(DecodeError::NotUtf8));
    }

    proptest! {
        #[test]
        fn round_trip(
            id in proptest::option::of("[^\r\n\0]*"),
            event_type in proptest::option::of("[^\r\n]*"),
            data in ".*|[a\r\n ]*",
        ) {
            let bytes = event(id.as_deref(), event_type.as_deref(), data.as_bytes()).unwrap();
            let event_type = event_type.filter(|t| !t.is_empty()).unwrap_or("message".into());
            let data = data.replace("\r\n", "\n").replace('\r', "\n");
            let want = de(&event_type, &data, id.as_deref().unwrap_or(""));
            prop_assert_eq!(decode_all(&bytes).unwrap(), [Item::Event(want)]);
        }
    }
}

/// The SSE stream as a [`crate::codec::Codec`] (`/sse`): events carry their cursor as `id:` and
/// their event name as `event:`; gap notices are `tidings-gap` events whose `id:` is the cursor
/// to continue from; a closing error is a `tidings-error` event; keep-alives are comments. A
/// stream sends nothing, so it is not duplex, and answers have no place in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SseCodec;

impl crate::codec::Codec for SseCodec {
    fn format(&self) -> &'static str {
        "sse"
    }

    fn duplex(&self) -> bool {
        false
    }

    fn decode(&self, _frame: &Bytes, _limits: &crate::Limits, out: &mut Vec<crate::Command>) {
        out.push(crate::Command::Invalid {
            req: None,
            error: crate::ProtocolError::new(
                crate::ErrorCode::BadFrame,
                "an SSE stream takes its subscriptions from the request; it sends no frames",
            ),
            fatal: false,
        });
    }

    fn encode(&mut self, frame: &crate::codec::Frame<'_>) -> Option<crate::codec::Wire> {
        use crate::codec::Frame;
        use crate::native;
        let ev = |id: Option<&str>, name: Option<&str>, data: &[u8]| {
            // Names are validated (no control characters) and cursors are hex digits, so
            // encoding cannot fail; an empty frame is the harmless fallback.
            event(id, name, data).unwrap_or_default()
        };
        let bytes = match frame {
            Frame::Welcome { config, .. } => match config.sse_retry {
                Some(retry) => {
                    let mut buf = BytesMut::with_capacity(24);
                    encode_retry(
                        &mut buf,
                        u64::try_from(retry.as_millis()).unwrap_or(u64::MAX),
                    );
                    buf.freeze()
                }
                None => keepalive(),
            },
            Frame::Event {
                cursor,
                event: name,
                payload,
                ..
            } => ev(
                Some(cursor.text().as_str()),
                name.map(crate::Name::as_str),
                payload.bytes(),
            ),
            Frame::Message {
                event: name,
                payload,
                ..
            } => ev(None, name.map(crate::Name::as_str), payload.bytes()),
            Frame::Gap(gap) => ev(
                Some(gap.to.text().as_str()),
                Some("tidings-gap"),
                &native::gap_json(gap),
            ),
            Frame::Error { error, .. } => {
                ev(None, Some("tidings-error"), &native::error_json(error))
            }
            // Not retained: no `id:`, so it does not move the stream's `Last-Event-ID`.
            Frame::Presence(notice) => ev(None, Some("presence"), notice.to_json().as_bytes()),
            Frame::Ping => keepalive(),
            // A stream sends no requests: an answer with data is that of a presence watch the
            // stream asked for (`/sse?presence=`), the presence its notices start from.
            Frame::Ok {
                payload: Some(payload),
                ..
            } => ev(None, Some("presence"), payload.bytes()),
            Frame::Ok { .. } | Frame::Request { .. } | Frame::Pong { .. } => return None,
        };
        Some(crate::codec::Wire::Frame(bytes))
    }

    fn fresh(&self) -> Box<dyn crate::codec::Codec> {
        Box::new(Self)
    }
}
