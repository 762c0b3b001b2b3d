//! Encodings of retained events, made on first use and shared by every subscriber of a format.
//!
//! Kept beside the history, which stores events and knows no wire format: this ring holds, per
//! retained sequence, one slot per format (`Broker::formats`), and follows the history's
//! evictions.

use std::collections::VecDeque;

use smallvec::SmallVec;

use crate::codec::Wire;

/// One event's encodings, by format index: `None` not encoded yet, `Some(None)` the format has
/// nothing for it.
pub(crate) type Encoded = SmallVec<[Option<Option<Wire>>; 2]>;

/// The encodings of the retained events, aligned with the history by sequence.
#[derive(Default)]
pub(crate) struct Encodings {
    /// The sequence of `slots[0]`.
    first: u64,
    slots: VecDeque<Encoded>,
}

impl Encodings {
    /// Adds the encodings of event `seq` (the history's newest) and forgets those of events
    /// before `first_retained`.
    pub(crate) fn push(&mut self, seq: u64, encoded: Encoded, first_retained: u64) {
        if self.slots.is_empty() || self.first + self.slots.len() as u64 != seq {
            // Nothing yet, or not contiguous (the history was replaced): start over at `seq`.
            self.slots.clear();
            self.first = seq;
        }
        self.slots.push_back(encoded);
        self.trim(first_retained);
    }

    /// Forgets the encodings of events before `first_retained` (evicted from the history).
    pub(crate) fn trim(&mut self, first_retained: u64) {
        while self.first < first_retained && self.slots.pop_front().is_some() {
            self.first += 1;
        }
        if self.slots.is_empty() {
            self.first = first_retained;
        }
    }

    /// Forgets every encoding (the log was replaced: its positions name other events).
    pub(crate) fn clear(&mut self) {
        self.trim(u64::MAX);
    }

    /// The encodings of event `seq`, if it is retained.
    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut Encoded> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.slots.get_mut(i)
    }
}

/// The shared encoding of a frame for one format, made with `encode` on first use.
pub(crate) fn shared(
    encoded: &mut Encoded,
    format: u8,
    encode: impl FnOnce() -> Option<Wire>,
) -> Option<Wire> {
    let i = usize::from(format);
    if encoded.len() <= i {
        encoded.resize(i + 1, None);
    }
    encoded[i].get_or_insert_with(encode).clone()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn wire(s: &'static str) -> Option<Wire> {
        Some(Wire::Frame(Bytes::from_static(s.as_bytes())))
    }

    #[test]
    fn follows_the_history_and_encodes_once_per_format() {
        let mut e = Encodings::default();
        let mut calls = 0;
        for seq in 1..=3 {
            let mut enc = Encoded::new();
            shared(&mut enc, 1, || {
                calls += 1;
                wire("x")
            });
            e.push(seq, enc, 1);
        }
        assert_eq!(calls, 3);
        let enc = e.get_mut(2).expect("retained");
        assert_eq!(shared(enc, 1, || unreachable!("cached")), wire("x"));
        assert_eq!(shared(enc, 0, || None), None);
        assert_eq!(shared(enc, 0, || unreachable!("cached as nothing")), None);
        e.trim(3);
        assert!(e.get_mut(2).is_none());
        assert!(e.get_mut(3).is_some());
        // A jump (a replaced history) starts over.
        e.push(10, Encoded::new(), 10);
        assert!(e.get_mut(3).is_none());
        assert!(e.get_mut(10).is_some());
    }
}
