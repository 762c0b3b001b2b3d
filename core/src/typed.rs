//! The in-process format: frames as typed values ([`Delivery`]) for subscribers inside the
//! server process (an application's own subscriptions), never bytes to be parsed again.

use std::sync::Arc;

use bytes::Bytes;

use crate::codec::{Codec, Frame, Wire};
use crate::command::Command;
use crate::config::Limits;
use crate::error::{ErrorCode, ProtocolError};
use crate::output::Delivery;

/// The codec of in-process subscriptions: events, messages and gap notices as [`Delivery`]
/// values; nothing else (answers, pings and errors have no reader in process). It sends no
/// commands over a wire, so it is not duplex: no idle timeout, no keep-alives.
#[derive(Debug, Clone, Copy, Default)]
pub struct TypedCodec;

impl Codec for TypedCodec {
    fn format(&self) -> &'static str {
        "typed"
    }

    fn duplex(&self) -> bool {
        false
    }

    fn decode(&self, _frame: &Bytes, _limits: &Limits, out: &mut Vec<Command>) {
        out.push(Command::Invalid {
            req: None,
            error: ProtocolError::new(
                ErrorCode::BadFrame,
                "an in-process subscription sends commands, not frames",
            ),
            fatal: false,
        });
    }

    fn encode(&mut self, frame: &Frame<'_>) -> Option<Wire> {
        let item = match *frame {
            Frame::Event {
                topic,
                cursor,
                from,
                event,
                payload,
            } => Delivery::Event {
                topic: topic.clone(),
                cursor,
                from: from.cloned(),
                event: event.cloned(),
                payload: payload.clone(),
            },
            Frame::Message {
                from,
                room,
                named,
                event,
                payload,
            } => Delivery::Message {
                from: from.cloned(),
                room: room.cloned(),
                named: named.map(|(t, n)| (t.clone(), n.clone())),
                event: event.cloned(),
                payload: payload.clone(),
            },
            Frame::Gap(gap) => Delivery::Gap(gap.clone()),
            Frame::Presence(notice) => Delivery::Presence(notice.clone()),
            // The answer to a watch: the presence it starts from.
            Frame::Ok {
                payload: Some(payload),
                ..
            } => Delivery::Answer(payload.clone()),
            _ => return None,
        };
        Some(Wire::Item(Arc::new(item)))
    }

    fn fresh(&self) -> Box<dyn Codec> {
        Box::new(Self)
    }
}
