//! The recovery scan of one segment: which records are valid, where each one is (the index),
//! and what follows the last valid one (a torn or corrupt tail).
//!
//! A segment is a header ([`record::encode_segment_header`]) followed by records
//! ([`record::encode`]) whose positions strictly increase and are at least the header's base. The
//! scan checks every record's length and checksum without building the events, so recovering a
//! large log stays fast.

use crate::log::record::{self, RecordError, SEGMENT_HEADER};

/// Where one valid record of a segment is: what the index of a segment holds per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The event's position.
    pub seq: u64,
    /// When it was stored (ms since the Unix epoch), for retention by age.
    pub time_ms: u64,
    /// The record's offset in the segment file.
    pub offset: u32,
    /// The record's length in bytes, header included.
    pub len: u32,
}

/// What follows the last valid record of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    /// Where it starts (the segment's valid length).
    pub offset: usize,
    /// How many bytes follow the last valid record.
    pub bytes: usize,
    /// Why they are not a record: incomplete (a torn write) or corrupt, and how.
    pub reason: String,
    /// The bytes end in the middle of a record that is valid so far (a torn write), rather than
    /// being corrupt.
    pub incomplete: bool,
}

/// The outcome of [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The base position the header names; `None` when the header itself is torn or corrupt
    /// (then nothing else is read).
    pub base: Option<u64>,
    /// The valid records, in order.
    pub entries: Vec<Entry>,
    /// The bytes up to the end of the last valid record (the header's length if there is none, 0
    /// if the header is not valid).
    pub valid_len: usize,
    /// What follows `valid_len`, if anything.
    pub tail: Option<Torn>,
}

/// Scans a whole segment's bytes. Never panics, whatever the bytes.
pub fn scan(buf: &[u8]) -> Scan {
    let base = match record::decode_segment_header(buf) {
        Ok(base) => base,
        Err(e) => {
            return Scan {
                base: None,
                entries: Vec::new(),
                valid_len: 0,
                tail: (!buf.is_empty()).then(|| Torn {
                    offset: 0,
                    bytes: buf.len(),
                    incomplete: e == RecordError::Incomplete,
                    reason: format!("segment header: {e}"),
                }),
            };
        }
    };
    let mut entries = Vec::new();
    let mut at = SEGMENT_HEADER;
    let mut tail = None;
    // Positions are at least the base: the first record may hold the base itself.
    let mut min_seq = base;
    while at < buf.len() {
        let here = at;
        let torn = move |reason: String, incomplete: bool| Torn {
            offset: here,
            bytes: buf.len() - here,
            reason,
            incomplete,
        };
        let Ok(offset) = u32::try_from(at) else {
            tail = Some(torn("the segment is larger than 4 GiB".to_owned(), false));
            break;
        };
        match record::peek(&buf[at..]) {
            Ok(head) if head.seq < min_seq => {
                tail = Some(torn(
                    format!(
                        "the record's position {} is not above the one before it ({})",
                        head.seq,
                        min_seq.saturating_sub(1)
                    ),
                    false,
                ));
                break;
            }
            Ok(head) => {
                entries.push(Entry {
                    seq: head.seq,
                    time_ms: head.time_ms,
                    offset,
                    // At most MAX_RECORD, which fits.
                    len: u32::try_from(head.len).unwrap_or(u32::MAX),
                });
                at += head.len;
                // The last position u64::MAX has nothing after it.
                min_seq = match head.seq.checked_add(1) {
                    Some(next) => next,
                    None => {
                        if at < buf.len() {
                            tail = Some(Torn {
                                offset: at,
                                bytes: buf.len() - at,
                                reason: "a record follows the last possible position".to_owned(),
                                incomplete: false,
                            });
                        }
                        break;
                    }
                };
            }
            Err(e) => {
                let incomplete = e == RecordError::Incomplete;
                tail = Some(torn(e.to_string(), incomplete));
                break;
            }
        }
    }
    let valid_len = tail.as_ref().map_or(buf.len(), |t| t.offset);
    Scan {
        base: Some(base),
        entries,
        valid_len,
        tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::{encode, encode_segment_header};
    use crate::log::{LogEvent, Logged};
    use crate::{NameLimits, Payload, Topic};

    fn logged(seq: u64) -> Logged {
        Logged {
            seq,
            time_ms: 1000 + seq,
            event: LogEvent {
                topic: Topic::parse("a.b", NameLimits::default()).unwrap(),
                event: None,
                from: None,
                payload: Payload::text(format!("event {seq}")).unwrap(),
            },
        }
    }

    fn segment(base: u64, seqs: &[u64]) -> Vec<u8> {
        let mut buf = encode_segment_header(base).to_vec();
        for &seq in seqs {
            encode(&logged(seq), &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn scans_valid_segment() {
        let buf = segment(5, &[5, 6, 9]);
        let scan = scan(&buf);
        assert_eq!(scan.base, Some(5));
        assert_eq!(scan.valid_len, buf.len());
        assert_eq!(scan.tail, None);
        let seqs: Vec<u64> = scan.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 6, 9]);
        assert_eq!(scan.entries[0].offset as usize, SEGMENT_HEADER);
        let second = scan.entries[1];
        assert_eq!(
            record::decode(&buf[second.offset as usize..]).unwrap().1,
            second.len as usize
        );
        assert_eq!(second.time_ms, 1006);
    }

    #[test]
    fn empty_and_header_only() {
        assert_eq!(scan(&[]).tail, None);
        assert_eq!(scan(&[]).base, None);
        let head = encode_segment_header(1);
        let s = scan(&head);
        assert_eq!(
            (s.base, s.valid_len, s.tail),
            (Some(1), SEGMENT_HEADER, None)
        );
        let s = scan(&head[..5]);
        assert_eq!(s.valid_len, 0);
        assert!(s.tail.unwrap().incomplete);
    }

    #[test]
    fn every_truncation_keeps_the_whole_records() {
        let buf = segment(1, &[1, 2, 3]);
        let full = scan(&buf);
        for cut in SEGMENT_HEADER..buf.len() {
            let s = scan(&buf[..cut]);
            let whole = full
                .entries
                .iter()
                .filter(|e| (e.offset + e.len) as usize <= cut)
                .count();
            assert_eq!(s.entries, full.entries[..whole]);
            let end = s
                .entries
                .last()
                .map_or(SEGMENT_HEADER, |e| (e.offset + e.len) as usize);
            assert_eq!(s.valid_len, end);
            if cut > end {
                let tail = s.tail.unwrap();
                assert!(tail.incomplete, "{tail:?}");
                assert_eq!((tail.offset, tail.bytes), (end, cut - end));
            }
        }
    }

    #[test]
    fn a_flipped_byte_stops_the_scan_there() {
        let buf = segment(1, &[1, 2, 3]);
        let full = scan(&buf);
        for at in SEGMENT_HEADER..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x40;
            let s = scan(&bad);
            let before = full
                .entries
                .iter()
                .filter(|e| (e.offset + e.len) as usize <= at)
                .count();
            assert_eq!(s.entries, full.entries[..before], "byte {at}");
            assert!(s.tail.is_some());
        }
    }

    #[test]
    fn positions_must_increase() {
        let buf = segment(1, &[1, 3, 3]);
        let s = scan(&buf);
        assert_eq!(s.entries.len(), 2);
        let tail = s.tail.unwrap();
        assert!(!tail.incomplete);
        assert!(tail.reason.contains("not above"), "{}", tail.reason);
        // Below the base.
        let s = scan(&segment(10, &[9]));
        assert!(s.entries.is_empty() && s.tail.is_some());
    }
}
