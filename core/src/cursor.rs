//! Cursors: where a subscriber is in the hub's event history.
//!
//! Every published event gets a cursor made of the hub's *epoch* (chosen by the adapter at start,
//! so it changes on restart) and one hub-wide *sequence* number (1, 2, 3, ...). Because the
//! sequence is hub-wide, one cursor (one SSE `Last-Event-ID`) resumes a stream of many topics.
//! The wire form is `<epoch in lowercase hex>-<sequence in decimal>`, e.g. `18c5e2f04a1-42`.

use std::fmt;
use std::str::FromStr;

use crate::error::{ErrorCode, ProtocolError};

/// A position in the hub's history: "everything up to and including `seq` of `epoch`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cursor {
    /// The hub epoch the sequence belongs to.
    pub epoch: u64,
    /// The hub-wide sequence number (0 = before the first event).
    pub seq: u64,
}

impl Cursor {
    /// Builds a cursor.
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// A cursor's wire form on the stack (encoders write one per event, so no `fmt`, no allocation).
pub(crate) struct CursorText {
    buf: [u8; 40],
    start: usize,
}

impl CursorText {
    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII hex digits, decimal digits and '-' are ever written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or_default()
    }
}

impl Cursor {
    /// The wire form, written right to left into a stack buffer.
    pub(crate) fn text(self) -> CursorText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 40];
        let mut i = buf.len();
        let mut seq = self.seq;
        loop {
            i -= 1;
            buf[i] = b'0' + (seq % 10) as u8;
            seq /= 10;
            if seq == 0 {
                break;
            }
        }
        i -= 1;
        buf[i] = b'-';
        let mut epoch = self.epoch;
        loop {
            i -= 1;
            buf[i] = HEX[(epoch & 15) as usize];
            epoch >>= 4;
            if epoch == 0 {
                break;
            }
        }
        CursorText { buf, start: i }
    }
}

impl FromStr for Cursor {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ProtocolError::new(
                ErrorCode::InvalidCursor,
                format!(
                    "cursor {:?} is invalid: expected <epoch hex>-<sequence>, e.g. \"18c5e2f04a1-42\", as sent in event ids",
                    truncate(s, 64)
                ),
            )
        };
        let (epoch, seq) = s.split_once('-').ok_or_else(bad)?;
        let hex = |c: char| c.is_ascii_hexdigit() && !c.is_ascii_uppercase();
        if epoch.is_empty() || epoch.len() > 16 || !epoch.chars().all(hex) {
            return Err(bad());
        }
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Self {
            epoch: u64::from_str_radix(epoch, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = Cursor::new(0x18c5e2f04a1, 42);
        assert_eq!(c.to_string(), "18c5e2f04a1-42");
        assert_eq!("18c5e2f04a1-42".parse::<Cursor>().unwrap(), c);
        assert_eq!("0-0".parse::<Cursor>().unwrap(), Cursor::new(0, 0));
        let max = Cursor::new(u64::MAX, u64::MAX);
        assert_eq!(max.to_string().parse::<Cursor>().unwrap(), max);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "g-1",
            "1-x",
            "1--1",
            "1-+1",
            "A-1",
            " 1-1",
            "1-1 ",
            "1-99999999999999999999",
            "11111111111111111-1",
        ] {
            let err = bad.parse::<Cursor>().unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidCursor, "{bad:?}");
        }
    }
}
