//! A stream that lost its tail: a `replicas = 1` NATS server whose store came back older (an
//! unclean stop before its files were synced, a restored backup) holds the same stream, with the
//! same creation time, but ends before what nodes delivered; its next appends would reuse those
//! positions, so a cursor handed out before would name another event.
//!
//! The node that notices appends an **epoch marker** on `<stream>.epoch`: its body is the new
//! epoch and the epoch it replaces. The stream's epoch is the latest marker's (its creation time
//! without one, so a stream that never lost anything keeps today's epoch), so every node, and a
//! node started later, agrees on it without a coordinator: nodes that see the marker in the
//! stream switch to it (`LogReply::Replaced`: an `epoch` gap, then what the stream holds). The
//! marker's `Nats-Msg-Id` is the stream's identity and length at detection, so two nodes
//! noticing the same loss store one marker; the new epoch is the wall clock in milliseconds
//! (above the one it replaces), so a store cut back to the same point twice still gives two
//! epochs.

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// An epoch marker, as stored in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Marker {
    /// Its position in the stream.
    pub(super) seq: u64,
    /// The epoch from here on.
    pub(super) epoch: u64,
    /// The epoch whose tail was lost.
    pub(super) replaces: u64,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub(super) time_ms: u64,
}

/// The marker's body (epochs in hex, as in cursors).
#[derive(Serialize, Deserialize)]
struct Body {
    epoch: String,
    replaces: String,
    /// The stream's last position when the loss was noticed (for operators); in a copy, the
    /// position of the marker copied.
    after: u64,
}

/// The marker's subject.
pub(super) fn subject(stream: &str) -> String {
    format!("{stream}.epoch")
}

/// The marker stored at `seq` (at `time_ms`) with `body`; `None` if that is not a marker's body.
pub(super) fn parse(seq: u64, time_ms: u64, body: &[u8]) -> Option<Marker> {
    let body: Body = serde_json::from_slice(body).ok()?;
    let hex = |s: &str| u64::from_str_radix(s, 16).ok().filter(|e| *e > 0);
    Some(Marker {
        seq,
        epoch: hex(&body.epoch)?,
        replaces: hex(&body.replaces)?,
        time_ms,
    })
}

/// The latest marker of the stream (`info`), if it holds one.
pub(super) async fn latest(
    stream: &stream::Stream,
    info: &stream::Info,
    subject: &str,
) -> Result<Option<Marker>, String> {
    // Asking for a subject the stream does not capture is an error.
    if !info.config.subjects.iter().any(|s| s == subject) {
        return Ok(None);
    }
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(parse(
            m.sequence,
            time_ms(m.time.unix_timestamp_nanos()),
            &m.payload,
        )),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(format!("cannot read the stream's epoch marker: {e}")),
    }
}

/// The epoch of the stream (`info`): the latest marker's, else its creation time (`created`).
pub(super) async fn epoch(
    stream: &stream::Stream,
    info: &stream::Info,
    subject: &str,
    created: u64,
) -> Result<u64, String> {
    Ok(latest(stream, info, subject)
        .await?
        .map_or(created, |m| m.epoch))
}

/// Whether the message at `head` (the last position this node delivered, stored at `head_ms`)
/// is another one now: the stream lost it and stored something else there since.
pub(super) async fn head_replaced(
    stream: &stream::Stream,
    info: &stream::Info,
    head: u64,
    head_ms: Option<u64>,
) -> Result<bool, String> {
    let Some(head_ms) = head_ms else {
        return Ok(false);
    };
    if head == 0 || head < info.state.first_sequence || head > info.state.last_sequence {
        return Ok(false);
    }
    match stream.get_raw_message(head).await {
        Ok(m) => Ok(time_ms(m.time.unix_timestamp_nanos()) != head_ms),
        // Deleted on purpose (not a loss of the tail).
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
        Err(e) => Err(format!("cannot read the stream at {head}: {e}")),
    }
}

/// A stream message's time (in nanoseconds) in milliseconds since the Unix epoch.
pub(super) fn time_ms(nanos: i128) -> u64 {
    u64::try_from(nanos / 1_000_000).unwrap_or(0)
}

/// Appends the marker of a new epoch replacing `replaces` (the stream `info`, created at
/// `created`, lost its tail); the marker stored, which is another node's if it noticed the
/// same loss first.
pub(super) async fn mark(
    js: &jetstream::Context,
    stream: &mut stream::Stream,
    subject: &str,
    created: u64,
    replaces: u64,
) -> Result<Marker, String> {
    let info = stream.get_info().await.map_err(|e| e.to_string())?;
    // Streams get the subject when they first need it: nodes of an earlier version refuse a
    // stream with other subjects than theirs.
    if !info.config.subjects.iter().any(|s| s == subject) {
        let mut config = info.config.clone();
        config.subjects.push(subject.to_owned());
        js.update_stream(config)
            .await
            .map_err(|e| format!("cannot add {subject} to the stream's subjects: {e}"))?;
    }
    let last = info.state.last_sequence;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let epoch = now.max(replaces.saturating_add(1));
    let body = Body {
        epoch: format!("{epoch:x}"),
        replaces: format!("{replaces:x}"),
        after: last,
    };
    let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    let message = PublishMessage::build()
        .payload(body)
        .message_id(format!("tidings-epoch-{created:x}-{last}"));
    let ack = js
        .send_publish(subject.to_owned(), message)
        .await
        .map_err(|e| format!("cannot append the epoch marker: {e}"))?
        .await
        .map_err(|e| format!("cannot append the epoch marker: {e}"))?;
    if !ack.duplicate {
        return Ok(Marker {
            seq: ack.sequence,
            epoch,
            replaces,
            time_ms: now,
        });
    }
    // Another node stored it first: its body decides.
    let stored = stream
        .get_raw_message(ack.sequence)
        .await
        .map_err(|e| format!("cannot read the epoch marker: {e}"))?;
    let time = time_ms(stored.time.unix_timestamp_nanos());
    parse(stored.sequence, time, &stored.payload)
        .ok_or_else(|| format!("the message at {} is not an epoch marker", ack.sequence))
}

/// Keeps the latest marker from the stream's retention, which evicts it like an event (a node
/// started then would take the creation time as the epoch again): while it is in the older
/// half of what the stream (`info`) holds, or older than half its `max_age`, a copy (same
/// body, same epoch) is appended at the end. Nodes copying the same marker store one copy.
/// The marker kept (`marker`, the copy once made).
pub(super) async fn keep(
    js: &jetstream::Context,
    info: &stream::Info,
    subject: &str,
    marker: Marker,
) -> Result<Marker, String> {
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let limited =
        info.config.max_messages > 0 || info.config.max_bytes > 0 || !info.config.max_age.is_zero();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let half_age = u64::try_from(info.config.max_age.as_millis() / 2).unwrap_or(u64::MAX);
    let old = marker.seq < first + (last.saturating_sub(first) / 2)
        || (half_age > 0 && now.saturating_sub(marker.time_ms) > half_age);
    if !limited || !old || marker.seq < first {
        return Ok(marker);
    }
    let body = Body {
        epoch: format!("{:x}", marker.epoch),
        replaces: format!("{:x}", marker.replaces),
        after: marker.seq,
    };
    let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    let message = PublishMessage::build().payload(body).message_id(format!(
        "tidings-epoch-copy-{:x}-{}",
        marker.epoch, marker.seq
    ));
    let ack = js
        .send_publish(subject.to_owned(), message)
        .await
        .map_err(|e| format!("cannot copy the epoch marker: {e}"))?
        .await
        .map_err(|e| format!("cannot copy the epoch marker: {e}"))?;
    Ok(Marker {
        seq: ack.sequence,
        time_ms: now,
        ..marker
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_and_garbage_is_none() {
        let body = serde_json::to_vec(&Body {
            epoch: format!("{:x}", 0x018c_5e2f_04a1_u64),
            replaces: "10".to_owned(),
            after: 7,
        })
        .unwrap();
        assert_eq!(
            parse(9, 5, &body),
            Some(Marker {
                seq: 9,
                epoch: 0x018c_5e2f_04a1,
                replaces: 16,
                time_ms: 5,
            })
        );
        assert_eq!(parse(9, 5, b"hello"), None);
        assert_eq!(
            parse(9, 5, br#"{"epoch":"0","replaces":"1","after":1}"#),
            None
        );
        assert_eq!(
            parse(9, 5, br#"{"epoch":"X","replaces":"1","after":1}"#),
            None
        );
    }
}
