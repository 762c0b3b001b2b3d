//! An event as a NATS message of the stream, and back: the subject carries the topic
//! (`<stream>.ev.<topic>`; tidings topics are valid NATS subjects, so NATS tools can filter them),
//! headers carry the event name, the publisher's client id and whether the data is JSON, and the
//! body is the payload as it was published. Pure functions, tested here.

use async_nats::HeaderMap;
use bytes::Bytes;
use tidings_core::log::{LogEvent, Logged};
use tidings_core::{Limits, Name, Payload, Topic};

/// The event name, if the publisher gave one.
pub(crate) const EVENT: &str = "Tid-Event";
/// The publisher's client id, if it had one.
pub(crate) const FROM: &str = "Tid-From";
/// `1` when the data is JSON (otherwise text).
pub(crate) const JSON: &str = "Tid-Json";

/// The subject, headers and body of `event` (without the deduplication id).
pub(crate) fn encode(prefix: &str, event: &LogEvent) -> (String, HeaderMap, Bytes) {
    let subject = format!("{prefix}.{}", event.topic.as_str());
    let mut headers = HeaderMap::new();
    if let Some(name) = &event.event {
        headers.insert(EVENT, name.as_str());
    }
    if let Some(from) = &event.from {
        headers.insert(FROM, from.as_str());
    }
    if event.payload.is_json() {
        headers.insert(JSON, "1");
    }
    (subject, headers, event.payload.bytes().clone())
}

/// The event a message of the stream holds, or why it holds none: a message another program put
/// on the stream's subjects is an event too if it fits (a topic tidings accepts, UTF-8 data).
pub(crate) fn decode(
    prefix: &str,
    limits: &Limits,
    seq: u64,
    time_ms: u64,
    subject: &str,
    headers: Option<&HeaderMap>,
    body: Bytes,
) -> Result<Logged, String> {
    let topic = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(|| format!("subject {subject:?} is not under {prefix}."))?;
    let topic = Topic::parse(topic, limits.names).map_err(|e| e.message)?;
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    let name = |what: &str, key: &str| {
        header(key)
            .map(|v| Name::parse(what, v, limits.max_name_len))
            .transpose()
            .map_err(|e| e.message)
    };
    let event = name("event", EVENT)?;
    let from = name("from", FROM)?;
    let payload = if header(JSON) == Some("1") {
        Payload::json(body)
    } else {
        Payload::text(body)
    }
    .map_err(|e| e.message)?;
    Ok(Logged {
        seq,
        time_ms,
        event: LogEvent {
            topic,
            event,
            from,
            payload,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: bool) -> LogEvent {
        let limits = Limits::default();
        LogEvent {
            topic: Topic::parse("orders.eu", limits.names).unwrap(),
            event: Some(Name::parse("event", "created", 64).unwrap()),
            from: Some(Name::parse("from", "alice ünïcode", 64).unwrap()),
            payload: if json {
                Payload::json(&b"{\"n\":1}"[..]).unwrap()
            } else {
                Payload::text(&b"plain"[..]).unwrap()
            },
        }
    }

    #[test]
    fn an_event_comes_back_as_it_went() {
        let limits = Limits::default();
        for json in [true, false] {
            let ev = event(json);
            let (subject, headers, body) = encode("tidings.ev", &ev);
            assert_eq!(subject, "tidings.ev.orders.eu");
            let back = decode("tidings.ev", &limits, 7, 9, &subject, Some(&headers), body).unwrap();
            assert_eq!((back.seq, back.time_ms), (7, 9));
            assert_eq!(back.event, ev);
        }
    }

    #[test]
    fn a_foreign_message_is_an_event_if_it_fits_and_says_why_not_otherwise() {
        let limits = Limits::default();
        let plain = decode("t.ev", &limits, 1, 0, "t.ev.a.b", None, Bytes::from("hi")).unwrap();
        assert_eq!(plain.event.topic.as_str(), "a.b");
        assert!(!plain.event.payload.is_json());
        let e = decode(
            "t.ev",
            &limits,
            1,
            0,
            "t.ev.a",
            None,
            Bytes::from(vec![0xff]),
        )
        .unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
        let e = decode("t.ev", &limits, 1, 0, "other.a", None, Bytes::new()).unwrap_err();
        assert!(e.contains("not under t.ev."), "{e}");
        let mut h = HeaderMap::new();
        h.insert(JSON, "1");
        let e = decode("t.ev", &limits, 1, 0, "t.ev.a", Some(&h), Bytes::from("{")).unwrap_err();
        assert!(e.contains("JSON"), "{e}");
    }
}
