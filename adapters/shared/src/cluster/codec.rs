//! An event as a NATS message of the stream, and back: the subject carries the topic
//! (`<stream>.ev.<topic>`; tidings topics are valid NATS subjects, so NATS tools can filter them),
//! headers carry the event name, the publisher's client id and whether the data is JSON, and the
//! body is the payload as it was published. A relayed message (not retained) goes on a core NATS
//! subject naming its route, `<stream>.relay.<c|n|r>.<hex of the client id, name or room>`
//! (hex, since ids may hold characters NATS subjects may not), with the same headers; on a
//! client id's subject, `Tid-Kind` tells a subscription change or a claim from a message. Pure
//! functions, tested here.

use async_nats::HeaderMap;
use bytes::Bytes;
use tidings_core::log::{LogEvent, Logged};
use tidings_core::relay::{RelayTo, Relayed, Route};
use tidings_core::{Limits, Name, Payload, Recipient, Topic};

/// How often a node says it is alive (on `<stream>.nodes`).
pub(crate) const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// A node not heard from for this long is taken as gone: not waited for.
pub(crate) const ALIVE: std::time::Duration = std::time::Duration::from_secs(3);
/// The event name, if the publisher gave one.
pub(crate) const EVENT: &str = "Tid-Event";
/// The publisher's client id, if it had one.
pub(crate) const FROM: &str = "Tid-From";
/// `1` when the data is JSON (otherwise text).
pub(crate) const JSON: &str = "Tid-Json";

/// The node (its per-process nonce) that relayed a message: a node ignores its own.
pub(crate) const NODE: &str = "Tid-Node";
/// The topic of a named send.
pub(crate) const TOPIC: &str = "Tid-Topic";
/// What a message on a client id's subject is besides a direct message: `subscriptions` (a
/// change of its subscriptions, `tidings_core::relay::json`).
pub(crate) const KIND: &str = "Tid-Kind";
/// [`KIND`] of a subscription change.
pub(crate) const SUBSCRIPTIONS: &str = "subscriptions";
/// [`KIND`] of a claim of the id by a connection of another node (header [`PRINCIPAL`]: `1`
/// when it is the id's principal).
pub(crate) const CLAIM: &str = "claim";
/// [`KIND`] of a server request to the id's connection (`tidings_core::relay::json`).
pub(crate) const ASK: &str = "ask";
/// Whether a claim is the principal's.
pub(crate) const PRINCIPAL: &str = "Tid-Principal";

/// The subject of the relayed messages for `route`.
pub(crate) fn route_subject(stream: &str, route: &Route) -> Option<String> {
    let (kind, name) = match route {
        Route::Client(id) => ("c", id),
        Route::Named(name) => ("n", name),
        Route::Room(room) => ("r", room),
        _ => return None,
    };
    let hex: String = name.as_str().bytes().map(|b| format!("{b:02x}")).collect();
    Some(format!("{stream}.relay.{kind}.{hex}"))
}

/// The subject, headers and body of a relayed message.
pub(crate) fn encode_relayed(
    stream: &str,
    node: &str,
    message: &Relayed,
) -> Option<(String, HeaderMap, Bytes)> {
    let subject = route_subject(stream, &message.to.route()?)?;
    let mut headers = HeaderMap::new();
    headers.insert(NODE, node);
    if let RelayTo::Recipient(Recipient::Named { topic, .. }) = &message.to {
        headers.insert(TOPIC, topic.as_str());
    }
    if let Some(name) = &message.event {
        headers.insert(EVENT, name.as_str());
    }
    if let Some(from) = &message.from {
        headers.insert(FROM, from.as_str());
    }
    if message.payload.is_json() {
        headers.insert(JSON, "1");
    }
    Some((subject, headers, message.payload.bytes().clone()))
}

/// A relayed message, from its route and NATS message; `None` for one this node relayed itself
/// (`node`), or one that does not decode (another program's).
pub(crate) fn decode_relayed(
    route: &Route,
    node: &str,
    limits: &Limits,
    headers: Option<&HeaderMap>,
    body: Bytes,
) -> Option<Relayed> {
    let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    if header(NODE) == Some(node) {
        return None;
    }
    let name = |what: &str, key: &str| {
        header(key)
            .map(|v| Name::parse(what, v, limits.max_name_len))
            .transpose()
            .ok()
    };
    let to = match route {
        Route::Client(id) => RelayTo::Recipient(Recipient::Client(id.clone())),
        Route::Named(name) => RelayTo::Recipient(Recipient::Named {
            topic: Topic::parse(header(TOPIC)?, limits.names).ok()?,
            name: name.clone(),
        }),
        Route::Room(room) => RelayTo::Room(room.clone()),
        _ => return None,
    };
    let payload = if header(JSON) == Some("1") {
        Payload::json(body)
    } else {
        Payload::text(body)
    }
    .ok()?;
    Some(Relayed {
        to,
        from: name("from", FROM)?,
        event: name("event", EVENT)?,
        payload,
    })
}

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
    fn a_relayed_message_comes_back_as_it_went_except_on_its_own_node() {
        let limits = Limits::default();
        let name = |s: &str| Name::parse("name", s, 64).unwrap();
        let topic = Topic::parse("jobs.eu", limits.names).unwrap();
        for to in [
            RelayTo::Recipient(Recipient::Client(name("alice.ü *>"))),
            RelayTo::Recipient(Recipient::Named {
                topic,
                name: name("worker"),
            }),
            RelayTo::Room(name("lobby")),
        ] {
            let message = Relayed {
                to,
                from: Some(name("bob")),
                event: Some(name("hi")),
                payload: Payload::json(&b"{\"n\":1}"[..]).unwrap(),
            };
            let route = message.to.route().unwrap();
            let (subject, headers, body) = encode_relayed("t", "node-a", &message).unwrap();
            assert!(
                subject.starts_with("t.relay.")
                    && subject[8..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.'),
                "{subject}"
            );
            assert_eq!(route_subject("t", &route).unwrap(), subject);
            let back = decode_relayed(&route, "node-b", &limits, Some(&headers), body.clone());
            assert_eq!(back.as_ref(), Some(&message));
            assert_eq!(
                decode_relayed(&route, "node-a", &limits, Some(&headers), body),
                None,
                "its own"
            );
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
