//! The application's operations as data: one [`AppOp`] enum, one entry point
//! ([`Broker::handle_app`]) and one [`AppReply`], so that an adapter forwards them without a
//! case per operation (the typed methods of `app.rs` and `session.rs` do the work).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::{Broker, ConnInfo, Stats};
use crate::command::Recipient;
use crate::cursor::Cursor;
use crate::error::{ApiError, ErrorCode, ProtocolError};
use crate::grants::Grants;
use crate::ids::{AckId, ConnId, ReqId};
use crate::output::Visibility;
use crate::parked::SubscriptionChange;
use crate::payload::Payload;
use crate::topic::{Name, Pattern, Topic};

/// An operation of the application (server code embedding the broker).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AppOp {
    /// [`Broker::publish`]: answers [`AppReply::Cursor`].
    Publish {
        /// The topic.
        topic: Topic,
        /// Optional event name.
        event: Option<Name>,
        /// The data.
        payload: Payload,
    },
    /// Who is subscribed to `topic` ([`crate::presence`]): answers [`AppReply::Presence`] on a
    /// single node, [`AppReply::Relaying`] in a cluster (then [`crate::AppEvent::Relayed`]
    /// brings every node's, merged).
    Presence {
        /// The topic.
        topic: Topic,
        /// Whose grants to check (`GET /presence` for a client): `None` for the application
        /// itself, which sees every topic; refused with [`AppReply::Failed`] (`forbidden`).
        viewer: Option<std::sync::Arc<crate::Grants>>,
    },
    /// [`Broker::send`]: answers [`AppReply::Count`] (connections reached).
    Send {
        /// Who gets it.
        to: Recipient,
        /// Optional event name.
        event: Option<Name>,
        /// The data.
        payload: Payload,
    },
    /// [`Broker::join`]: answers [`AppReply::Bool`] (newly joined).
    Join {
        /// The connection.
        conn: ConnId,
        /// The room.
        room: Name,
    },
    /// [`Broker::leave`]: answers [`AppReply::Bool`] (was in it).
    Leave {
        /// The connection.
        conn: ConnId,
        /// The room.
        room: Name,
    },
    /// [`Broker::emit_room`]: answers [`AppReply::Count`].
    EmitRoom {
        /// The room.
        room: Name,
        /// Optional event name.
        event: Option<Name>,
        /// The data.
        payload: Payload,
    },
    /// [`Broker::rooms`]: answers [`AppReply::Names`].
    Rooms,
    /// [`Broker::room_members`]: answers [`AppReply::Conns`].
    RoomMembers {
        /// The room.
        room: Name,
    },
    /// [`Broker::request`]: answers [`AppReply::Ack`]; the client's answer comes later as
    /// [`crate::AppEvent::AckResult`].
    Request {
        /// The connection asked.
        conn: ConnId,
        /// The handler name on the client.
        event: Name,
        /// The data.
        payload: Payload,
        /// How long to wait (default `Timers::ack_timeout`).
        timeout: Option<Duration>,
    },
    /// A server request to the connection holding a client id, on any node ([`crate::ask`]):
    /// answers [`AppReply::Relaying`], then [`crate::AppEvent::Relayed`] brings
    /// [`AppReply::Answers`] with exactly one answer.
    RequestClient {
        /// The client id.
        client_id: Name,
        /// The handler name on the client.
        event: Name,
        /// The data.
        payload: Payload,
        /// How long to wait (default `Timers::ack_timeout`).
        timeout: Option<Duration>,
    },
    /// A server request to every member of a room, on every node ([`crate::ask`]): answers
    /// [`AppReply::Relaying`], then [`crate::AppEvent::Relayed`] brings [`AppReply::Answers`]
    /// with one answer per member that can answer.
    RequestRoom {
        /// The room.
        room: Name,
        /// The handler name on the clients.
        event: Name,
        /// The data.
        payload: Payload,
        /// How long to wait (default `Timers::ack_timeout`).
        timeout: Option<Duration>,
    },
    /// [`Broker::reply`]: answers [`AppReply::Bool`] (sent).
    Reply {
        /// The asking connection.
        conn: ConnId,
        /// Its request id.
        req: ReqId,
        /// The answer.
        result: Result<Payload, ProtocolError>,
    },
    /// [`Broker::notify_done`]: answers [`AppReply::Bool`].
    NotifyDone {
        /// The connection whose event was handled.
        conn: ConnId,
    },
    /// [`Broker::close_conn`]: answers [`AppReply::Done`].
    Close {
        /// The connection.
        conn: ConnId,
        /// Why (`None`: a normal close).
        reason: Option<ProtocolError>,
    },
    /// [`Broker::shutdown`]: answers [`AppReply::Done`] (at once; [`crate::AppEvent::Stopped`]
    /// says when it is complete).
    Shutdown,
    /// [`Broker::set_lifecycle_events`]: answers [`AppReply::Done`].
    LifecycleEvents(bool),
    /// [`Broker::set_grants`]: answers [`AppReply::Done`].
    SetGrants {
        /// The connection.
        conn: ConnId,
        /// Its new grants.
        grants: Arc<Grants>,
    },
    /// [`Broker::update_subscriptions_as`]: answers [`AppReply::Subscriptions`].
    UpdateSubscriptions {
        /// Who asks: `None` for the application itself, else the requester's grants.
        by: Option<Arc<Grants>>,
        /// The client.
        client_id: Name,
        /// Patterns to add.
        add: Vec<Pattern>,
        /// Patterns to remove.
        remove: Vec<Pattern>,
    },
    /// [`Broker::declare_topic`]: answers [`AppReply::Bool`] (changed).
    DeclareTopic {
        /// The topic.
        topic: Topic,
        /// Who may see it.
        visibility: Visibility,
    },
    /// [`Broker::remove_topic`]: answers [`AppReply::Bool`] (was declared).
    RemoveTopic {
        /// The topic.
        topic: Topic,
    },
    /// [`Broker::declared_topics`]: answers [`AppReply::Topics`].
    DeclaredTopics,
    /// [`Broker::parked_sessions`]: answers [`AppReply::Names`].
    ParkedSessions,
    /// [`Broker::stats`]: answers [`AppReply::Stats`].
    Stats,
    /// [`Broker::conn`]: answers [`AppReply::Conn`].
    Conn {
        /// The connection.
        conn: ConnId,
    },
}

/// The answer to an [`AppOp`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AppReply {
    /// Done (nothing to report).
    Done,
    /// Yes or no, as the operation says.
    Bool(bool),
    /// How many connections were reached.
    Count(usize),
    /// The cursor of the event published.
    Cursor(Cursor),
    /// Client ids or rooms, sorted.
    Names(Vec<Name>),
    /// Connections, sorted.
    Conns(Vec<ConnId>),
    /// Declared topics and who may see them.
    Topics(Vec<(Topic, Visibility)>),
    /// The id of a server request.
    Ack(AckId),
    /// The outcome of a change of a client's subscriptions.
    Subscriptions(SubscriptionChange),
    /// The broker's counters.
    Stats(Box<Stats>),
    /// What the broker knows about a connection (`None`: not open).
    Conn(Option<Box<ConnInfo>>),
    /// The broker refused: an unknown connection, a limit, an operation the connection does
    /// not support.
    Refused(ApiError),
    /// The publish was handed to the external log: its cursor (or why it was not stored) comes
    /// as [`crate::AppEvent::Stored`] with this id.
    Storing(crate::log::AppendId),
    /// The operation failed as a client's would (a change of subscriptions checked against
    /// the client's grants).
    Failed(ProtocolError),
    /// Who is subscribed to a topic.
    Presence(crate::presence::Presence),
    /// The clients' answers to a [`AppOp::RequestClient`] or [`AppOp::RequestRoom`].
    Answers(Vec<crate::ask::ClientAnswer>),
    /// Other nodes of the cluster are asked (a presence, a client id held on another node): the
    /// answer comes as [`crate::AppEvent::Relayed`] with this id.
    Relaying(crate::relay::RelayId),
}

impl From<Result<(), ApiError>> for AppReply {
    fn from(r: Result<(), ApiError>) -> Self {
        r.map_or_else(Self::Refused, |()| Self::Done)
    }
}

impl From<Result<bool, ApiError>> for AppReply {
    fn from(r: Result<bool, ApiError>) -> Self {
        r.map_or_else(Self::Refused, Self::Bool)
    }
}

impl Broker {
    /// The one entry point of the application's operations; drain `poll_output` afterwards, as
    /// after every `handle_*` call.
    pub fn handle_app(&mut self, now: Instant, op: AppOp) -> AppReply {
        self.handle_timeout(now);
        match op {
            AppOp::Presence { topic, viewer } => {
                if let Some(grants) = viewer
                    && !self.may_see_presence(&grants, &topic)
                {
                    return AppReply::Failed(crate::presence::not_granted(&topic));
                }
                if !self.relays() {
                    return AppReply::Presence(self.presence(&topic));
                }
                let id = self.relay_id();
                self.ask_presence(crate::relay::Asker::App(id), topic);
                AppReply::Relaying(id)
            }
            AppOp::Publish {
                topic,
                event,
                payload,
            } => match self.publish(now, topic, event, payload) {
                crate::Published::Stored(cursor) => AppReply::Cursor(cursor),
                crate::Published::Storing(id) => AppReply::Storing(id),
                crate::Published::Refused(e) => AppReply::Failed(e),
            },
            AppOp::Send { to, event, payload } => {
                AppReply::Count(self.send(now, &to, event.as_ref(), &payload))
            }
            AppOp::Join { conn, room } => self.join(conn, room).into(),
            AppOp::Leave { conn, room } => self.leave(conn, &room).into(),
            AppOp::EmitRoom {
                room,
                event,
                payload,
            } => AppReply::Count(self.emit_room(now, &room, event.as_ref(), &payload)),
            AppOp::Rooms => AppReply::Names(self.rooms().into_iter().cloned().collect()),
            AppOp::RoomMembers { room } => AppReply::Conns(self.room_members(&room)),
            AppOp::Request {
                conn,
                event,
                payload,
                timeout,
            } => self
                .request(now, conn, &event, &payload, timeout)
                .map_or_else(AppReply::Refused, AppReply::Ack),
            AppOp::RequestClient {
                client_id,
                event,
                payload,
                timeout,
            } => {
                self.advance(now);
                let to = crate::ask::AskTo::Client(client_id);
                AppReply::Relaying(self.ask_from_app(to, &event, &payload, timeout))
            }
            AppOp::RequestRoom {
                room,
                event,
                payload,
                timeout,
            } => {
                self.advance(now);
                let to = crate::ask::AskTo::Room(room);
                AppReply::Relaying(self.ask_from_app(to, &event, &payload, timeout))
            }
            AppOp::Reply { conn, req, result } => {
                AppReply::Bool(self.reply(now, conn, req, result))
            }
            AppOp::NotifyDone { conn } => AppReply::Bool(self.notify_done(conn)),
            AppOp::Close { conn, reason } => self.close_conn(now, conn, reason).into(),
            AppOp::Shutdown => {
                self.shutdown(now);
                AppReply::Done
            }
            AppOp::LifecycleEvents(on) => {
                self.set_lifecycle_events(on);
                AppReply::Done
            }
            AppOp::SetGrants { conn, grants } => self.set_grants(conn, grants).into(),
            AppOp::UpdateSubscriptions {
                by,
                client_id,
                add,
                remove,
            } => {
                let by_principal = by.as_deref().map(|g| g.is_bound_to(&client_id));
                let (a, r) = (add.clone(), remove.clone());
                match self.update_subscriptions_by(now, by_principal, &client_id, add, remove) {
                    Ok(change) => AppReply::Subscriptions(change),
                    // Not here: in a cluster, the node holding the client id changes them.
                    Err(e) if e.code == ErrorCode::NoRecipient && self.relays() => {
                        let update = crate::relay::SubscriptionUpdate {
                            add: a,
                            remove: r,
                            by_principal,
                        };
                        AppReply::Relaying(self.relay_update(client_id, update, e))
                    }
                    Err(e) => AppReply::Failed(e),
                }
            }
            AppOp::DeclareTopic { topic, visibility } => {
                AppReply::Bool(self.declare_topic(now, topic, visibility))
            }
            AppOp::RemoveTopic { topic } => AppReply::Bool(self.remove_topic(now, &topic)),
            AppOp::DeclaredTopics => AppReply::Topics(self.declared_topics()),
            AppOp::ParkedSessions => {
                AppReply::Names(self.parked_sessions().into_iter().cloned().collect())
            }
            AppOp::Stats => AppReply::Stats(Box::new(self.stats())),
            AppOp::Conn { conn } => AppReply::Conn(self.conn(conn).map(Box::new)),
        }
    }
}
