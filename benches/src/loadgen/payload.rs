//! The published payload: `{"seq":N,"t":T,"pad":"xx…"}`, exactly `size` bytes (or the
//! shortest form, without `pad`, when `size` is smaller), where `N` is the sequence number
//! from 0 and `T` the send time in nanoseconds since the run's start. Receivers find `"seq":`
//! in whatever frame carries the payload instead of parsing JSON.

use std::io::Write as _;
use std::sync::LazyLock;

use memchr::memmem::Finder;

static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));

/// Writes the payload for `seq` sent at `t_ns` into `buf` (cleared first).
pub(crate) fn build(buf: &mut Vec<u8>, seq: u64, t_ns: u64, size: usize) {
    buf.clear();
    let _ = write!(buf, "{{\"seq\":{seq},\"t\":{t_ns}");
    const PAD: &[u8] = b",\"pad\":\"\"}";
    if buf.len() + PAD.len() <= size {
        buf.extend_from_slice(b",\"pad\":\"");
        let pad = size - buf.len() - 2;
        buf.resize(buf.len() + pad, b'x');
        buf.extend_from_slice(b"\"}");
    } else {
        buf.push(b'}');
    }
}

/// `(seq, t_ns)` of the payload inside `frame`, if there is one.
pub(crate) fn parse(frame: &[u8]) -> Option<(u64, u64)> {
    let at = SEQ.find(frame)? + 6;
    let (seq, rest) = number(&frame[at..])?;
    let rest = rest.strip_prefix(b",\"t\":")?;
    let (t, _) = number(rest)?;
    Some((seq, t))
}

fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let n = bytes[..digits]
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Some((n, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_and_parsed() {
        let mut buf = Vec::new();
        for size in [16, 41, 128, 4096] {
            build(&mut buf, 123_456, 987_654_321_000, size);
            assert!(buf.len() == size || (size < 42 && buf.len() < 42), "{size}");
            let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(v["seq"], 123_456);
            let frame = format!(
                "{{\"type\":\"event\",\"topic\":\"t\",\"cursor\":\"1-1\",\"data\":{}}}",
                String::from_utf8_lossy(&buf)
            );
            assert_eq!(parse(frame.as_bytes()), Some((123_456, 987_654_321_000)));
        }
        assert_eq!(parse(b"{\"type\":\"ping\"}"), None);
    }
}
