//! Server requests (emit-with-ack) to a client id or to a room, wherever its connections are:
//! [`crate::AppOp::RequestClient`] and [`crate::AppOp::RequestRoom`].
//!
//! [`crate::Broker::request`] asks one connection of this node. An application of several nodes
//! names clients by id and groups them in rooms instead, and their connections may be on any
//! node: an *ask* sends the request to the connections holding the id or in the room here and,
//! in a cluster, hands it to the relay ([`RelayRequest::Ask`]) for the other nodes, which ask
//! theirs ([`RelayReply::Asked`]) and answer with what their clients said
//! ([`RelayRequest::AskedHere`]). The application gets one [`crate::AppEvent::Relayed`] with
//! [`crate::AppReply::Answers`]:
//!
//! - a client id: exactly one answer, the first one (from any node; a client id is normally
//!   held by one connection); `no_recipient` when no connection that can answer holds it,
//!   `timeout` when none answered in time. Held here, it is not relayed (as for a direct
//!   message).
//! - a room: one answer per member that can answer (WebSocket connections; SSE members cannot
//!   answer and are left out), each its reply or the error (`timeout`, `rejected`,
//!   `no_recipient` when it closed first, `limit_reached`); members of nodes that did not
//!   answer in time are left out.
//!
//! Exactly one answer per ask, whatever the relay does: the ask ends at the latest
//! [`ASK_GRACE`] after its timeout.

use std::collections::HashMap;
use std::time::Duration;

use crate::broker::Broker;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::{AckId, ConnId};
use crate::output::{AppEvent, Output};
use crate::payload::Payload;
use crate::relay::{RelayId, RelayReply, RelayRequest};
use crate::subs::Slot;
use crate::timers::Timer;
use crate::topic::Name;

/// How long after its timeout an ask ends at the latest, with the answers it has: room for the
/// other nodes' answers to travel.
pub const ASK_GRACE: Duration = Duration::from_secs(2);

/// Who an ask goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AskTo {
    /// The connection holding this client id (one answer).
    Client(Name),
    /// Every member of this room (one answer each).
    Room(Name),
}

/// One client's answer to an ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAnswer {
    /// The client id of the connection that answered, if it has one.
    pub client_id: Option<Name>,
    /// Its reply, or why there is none.
    pub result: Result<Payload, ProtocolError>,
}

/// Who waits for an ask's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The application, answered with [`AppEvent::Relayed`] under this id.
    App,
    /// Another node, answered with [`RelayRequest::AskedHere`] under the relay's token.
    Node(u64),
}

/// One ask in progress.
#[derive(Debug)]
struct Ask {
    origin: Origin,
    /// A client id's ask ends with its first answer.
    first_wins: bool,
    /// Requests sent to connections here and not answered yet.
    local: usize,
    /// Whether the other nodes were asked and have not answered yet.
    remote: bool,
    /// Whether any connection was asked (here, or another node may hold it).
    asked: bool,
    answers: Vec<ClientAnswer>,
}

/// The asks in progress: plain data owned by the broker.
#[derive(Debug, Default)]
pub(crate) struct Asks {
    asks: HashMap<RelayId, Ask>,
    /// The server requests sent for an ask, and the client id of the connection asked.
    by_ack: HashMap<(ConnId, AckId), (RelayId, Option<Name>)>,
}

impl Broker {
    /// Starts an ask of the application; its answers come as [`AppEvent::Relayed`] under the
    /// returned id.
    pub(crate) fn ask_from_app(
        &mut self,
        to: AskTo,
        event: &Name,
        payload: &Payload,
        timeout: Option<Duration>,
    ) -> RelayId {
        let id = self.relay_id();
        self.ask(id, Origin::App, to, event, payload, timeout);
        id
    }

    fn ask(
        &mut self,
        id: RelayId,
        origin: Origin,
        to: AskTo,
        event: &Name,
        payload: &Payload,
        timeout: Option<Duration>,
    ) {
        let timeout = timeout.unwrap_or(self.config.timers.ack_timeout);
        let (targets, first_wins): (Vec<Slot>, bool) = match &to {
            AskTo::Client(client_id) => (
                self.clients.get(client_id).copied().into_iter().collect(),
                true,
            ),
            AskTo::Room(room) => (self.rooms.get(room).cloned().unwrap_or_default(), false),
        };
        let mut ask = Ask {
            origin,
            first_wins,
            local: 0,
            remote: false,
            asked: false,
            answers: Vec::new(),
        };
        for slot in targets {
            let (conn, duplex) = {
                let state = self.conn_ref(slot);
                (state.id, state.duplex && !state.closing)
            };
            if !duplex {
                // SSE cannot answer: left out of a room's answers, not a holder for a client id.
                continue;
            }
            let client_id = self.conn_ref(slot).client_id().cloned();
            ask.asked = true;
            match self.request(self.now, conn, event, payload, Some(timeout)) {
                Ok(ack) => {
                    ask.local += 1;
                    self.asks.by_ack.insert((conn, ack), (id, client_id));
                }
                Err(e) => {
                    let code = match e {
                        crate::ApiError::LimitReached { .. } => ErrorCode::LimitReached,
                        _ => ErrorCode::NoRecipient,
                    };
                    ask.answers.push(ClientAnswer {
                        client_id,
                        result: Err(ProtocolError::new(code, e.to_string())),
                    });
                }
            }
        }
        // Held here: a client id's ask stays here, as a direct message does.
        let relay = origin == Origin::App && self.relays() && !(first_wins && ask.asked);
        if relay {
            ask.remote = true;
            ask.asked = true;
            self.out.push_back(Output::Relay(RelayRequest::Ask {
                id,
                to,
                event: event.clone(),
                payload: payload.clone(),
                timeout,
            }));
        }
        self.timers
            .schedule(self.now + timeout + ASK_GRACE, Timer::Ask(id));
        self.asks.asks.insert(id, ask);
        self.finish_ask_if_done(id);
    }

    /// The outcome of server request `ack` of `conn`: `None` when it was sent for an ask (taken
    /// here), else handed back for [`AppEvent::AckResult`].
    pub(crate) fn ack_result(
        &mut self,
        conn: ConnId,
        ack: AckId,
        result: Result<Payload, ProtocolError>,
    ) {
        let Some((id, client_id)) = self.asks.by_ack.remove(&(conn, ack)) else {
            self.emit(AppEvent::AckResult { conn, ack, result });
            return;
        };
        // The ask may have ended already (a client id's first answer, its deadline).
        if let Some(ask) = self.asks.asks.get_mut(&id) {
            ask.local -= 1;
            ask.answers.push(ClientAnswer { client_id, result });
            self.finish_ask_if_done(id);
        }
    }

    /// The relay's part of an ask: another node asking this one, or the other nodes' answers.
    pub(crate) fn handle_ask_relay(&mut self, reply: RelayReply) {
        match reply {
            RelayReply::Asked {
                token,
                to,
                event,
                payload,
                timeout,
            } => {
                let id = self.relay_id();
                self.ask(id, Origin::Node(token), to, &event, &payload, Some(timeout));
            }
            RelayReply::Answered { id, result } => {
                let Some(ask) = self.asks.asks.get_mut(&id) else {
                    return;
                };
                ask.remote = false;
                match result {
                    Ok(answers) => ask.answers.extend(answers),
                    // Nobody holds it: not asked anywhere, unless here.
                    Err(e) if e.code == ErrorCode::NoRecipient => {}
                    Err(e) => {
                        if ask.first_wins {
                            ask.answers.push(ClientAnswer {
                                client_id: None,
                                result: Err(e),
                            });
                        }
                    }
                }
                if ask.first_wins && ask.answers.is_empty() && ask.local == 0 {
                    ask.asked = false;
                }
                self.finish_ask_if_done(id);
            }
            _ => {}
        }
    }

    /// An ask's deadline: it ends with the answers it has.
    pub(crate) fn ask_deadline(&mut self, id: RelayId) {
        if let Some(ask) = self.asks.asks.get_mut(&id) {
            ask.local = 0;
            ask.remote = false;
            self.finish_ask_if_done(id);
        }
    }

    fn finish_ask_if_done(&mut self, id: RelayId) {
        let Some(ask) = self.asks.asks.get(&id) else {
            return;
        };
        let answered = ask.first_wins && !ask.answers.is_empty();
        if !answered && (ask.local > 0 || ask.remote) {
            return;
        }
        let Some(mut ask) = self.asks.asks.remove(&id) else {
            return;
        };
        if ask.first_wins {
            ask.answers.truncate(1);
            if ask.answers.is_empty() && ask.origin == Origin::App {
                let error = if ask.asked {
                    ProtocolError::new(ErrorCode::Timeout, "the client did not answer in time")
                } else {
                    ProtocolError::new(
                        ErrorCode::NoRecipient,
                        "no connection that can answer holds that client id",
                    )
                };
                ask.answers.push(ClientAnswer {
                    client_id: None,
                    result: Err(error),
                });
            }
        }
        match ask.origin {
            Origin::App => self.emit(AppEvent::Relayed {
                id,
                reply: crate::AppReply::Answers(ask.answers),
            }),
            Origin::Node(token) => self.out.push_back(Output::Relay(RelayRequest::AskedHere {
                token,
                answers: ask.answers,
            })),
        }
    }
}
