//! The application side: what server code embedding the broker can do (publish from code, direct
//! messages, rooms, requests to clients, answers to client requests, grants, closing).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::appends::{Published, Publisher};
use crate::broker::Broker;
use crate::codec::Frame;
use crate::command::Recipient;
use crate::error::{ApiError, ProtocolError};
use crate::grants::Grants;
use crate::ids::{AckId, ConnId, ReqId};
use crate::payload::Payload;
use crate::timers::Timer;
use crate::topic::{Name, Topic};

impl Broker {
    /// Publishes from server code, exactly like a client publish: stored at once with the
    /// in-memory log ([`Published::Stored`] with the cursor), or handed to the external log
    /// ([`Published::Storing`]; [`crate::AppEvent::Stored`] tells the cursor).
    pub fn publish(
        &mut self,
        now: Instant,
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
    ) -> Published {
        self.advance(now);
        self.publish_event(topic, event, payload, None, Publisher::App)
    }

    /// Sends a message that is not retained to a connection, a client id, or a named
    /// subscription; returns how many connections of this node it reached. In a cluster, a
    /// client id held by no connection here and named subscriptions are relayed to the other
    /// nodes too (see [`crate::relay`]).
    pub fn send(
        &mut self,
        now: Instant,
        to: &Recipient,
        event: Option<&Name>,
        payload: &Payload,
    ) -> usize {
        self.advance(now);
        let reached = self.send_message(to, None, None, event, payload);
        let elsewhere = match to {
            Recipient::Client(_) => reached == 0,
            Recipient::Named { .. } => true,
            Recipient::Conn(_) => false,
        };
        if elsewhere && self.relays() {
            let message = crate::relay::Relayed {
                to: crate::relay::RelayTo::Recipient(to.clone()),
                from: None,
                event: event.cloned(),
                payload: payload.clone(),
            };
            self.relay(message, None);
        }
        reached
    }

    /// Puts a connection in a room (rooms are server-side groups; a connection leaves all of them
    /// when it closes). Returns whether it was not in the room yet.
    ///
    /// # Errors
    /// [`ApiError::UnknownConn`], or [`ApiError::LimitReached`] past `max_rooms_per_conn`.
    pub fn join(&mut self, conn: ConnId, room: Name) -> Result<bool, ApiError> {
        let slot = self.slot(conn)?;
        let max = self.config.limits.max_rooms_per_conn;
        let state = self.conn_mut(slot);
        if state.closing || state.rooms().contains(&room) {
            return Ok(false);
        }
        if state.rooms().len() >= max {
            return Err(ApiError::LimitReached {
                conn,
                what: "rooms per connection",
                limit: max,
            });
        }
        state.extras_mut().rooms.push(room.clone());
        self.add_to_room(room.clone(), slot);
        self.room_changed(slot, &room);
        Ok(true)
    }

    /// Takes a connection out of a room; returns whether it was in it. Empty rooms disappear.
    ///
    /// # Errors
    /// [`ApiError::UnknownConn`].
    pub fn leave(&mut self, conn: ConnId, room: &Name) -> Result<bool, ApiError> {
        let slot = self.slot(conn)?;
        let state = self.conn_mut(slot);
        let Some(i) = state.rooms().iter().position(|r| r == room) else {
            return Ok(false);
        };
        state.extras_mut().rooms.swap_remove(i);
        self.remove_from_room(room, slot);
        self.room_changed(slot, room);
        Ok(true)
    }

    /// Sends a message to every member of a room (encoded once per wire format); returns how
    /// many connections of this node it reached. In a cluster the other nodes' members get it
    /// too (see [`crate::relay`]).
    pub fn emit_room(
        &mut self,
        now: Instant,
        room: &Name,
        event: Option<&Name>,
        payload: &Payload,
    ) -> usize {
        self.advance(now);
        if self.relays() {
            let message = crate::relay::Relayed {
                to: crate::relay::RelayTo::Room(room.clone()),
                from: None,
                event: event.cloned(),
                payload: payload.clone(),
            };
            self.relay(message, None);
        }
        self.room_message(room, event, payload)
    }

    /// Sends a message to this node's members of a room; returns how many it reached.
    pub(crate) fn room_message(
        &mut self,
        room: &Name,
        event: Option<&Name>,
        payload: &Payload,
    ) -> usize {
        let members = self.rooms.get(room).cloned().unwrap_or_default();
        let frame = Frame::Message {
            from: None,
            room: Some(room),
            named: None,
            event,
            payload,
        };
        self.fan_out_message(&members, &frame)
    }

    /// The rooms that have members, sorted.
    pub fn rooms(&self) -> Vec<&Name> {
        let mut rooms: Vec<_> = self.rooms.keys().collect();
        rooms.sort();
        rooms
    }

    /// The members of a room, sorted.
    pub fn room_members(&self, room: &Name) -> Vec<ConnId> {
        let mut ids: Vec<_> = self
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .map(|s| self.conn_ref(*s).id)
            .collect();
        ids.sort();
        ids
    }

    /// Sends a request (emit-with-ack) to a client. Exactly one [`crate::AppEvent::AckResult`]
    /// follows: the client's answer, a timeout after `timeout` (default `ack_timeout`), or
    /// `no_recipient` if it closes first.
    ///
    /// # Errors
    /// [`ApiError::UnknownConn`]; [`ApiError::Unsupported`] for a transport clients cannot answer
    /// on (SSE); [`ApiError::LimitReached`] past `max_pending_acks`.
    pub fn request(
        &mut self,
        now: Instant,
        conn: ConnId,
        event: &Name,
        payload: &Payload,
        timeout: Option<Duration>,
    ) -> Result<AckId, ApiError> {
        self.advance(now);
        let slot = self.slot(conn)?;
        let max = self.config.limits.max_pending_acks;
        let timeout = timeout.unwrap_or(self.config.timers.ack_timeout);
        let state = self.conn_mut(slot);
        if !state.duplex || state.closing {
            return Err(ApiError::Unsupported {
                conn,
                what: "requests to a connection that cannot answer (SSE, or closing)",
            });
        }
        if state.acks().len() >= max {
            return Err(ApiError::LimitReached {
                conn,
                what: "pending requests to the client",
                limit: max,
            });
        }
        let extras = state.extras_mut();
        extras.next_ack += 1;
        let ack = extras.next_ack;
        extras.acks.push(ack);
        self.timers
            .schedule(self.now + timeout, Timer::Ack(conn, ack));
        self.send_frame(
            slot,
            &Frame::Request {
                ack,
                event,
                payload,
            },
        );
        Ok(ack)
    }

    /// Answers a client request ([`crate::AppEvent::Request`]). Returns `false` if it was already
    /// answered (e.g. by the broker's timeout) or the connection is gone: nothing is sent then.
    pub fn reply(
        &mut self,
        now: Instant,
        conn: ConnId,
        req: ReqId,
        result: Result<Payload, ProtocolError>,
    ) -> bool {
        self.advance(now);
        let Ok(slot) = self.slot(conn) else {
            return false;
        };
        let state = self.conn_mut(slot);
        let Some(i) = state.requests().iter().position(|r| *r == req) else {
            return false;
        };
        state.extras_mut().requests.swap_remove(i);
        match &result {
            Ok(payload) => self.send_frame(
                slot,
                &Frame::Ok {
                    req,
                    cursor: None,
                    payload: Some(payload),
                },
            ),
            Err(error) => {
                self.count_error(error.code);
                self.send_frame(
                    slot,
                    &Frame::Error {
                        req: Some(req),
                        error,
                    },
                );
            }
        }
        self.mark_stale();
        true
    }

    /// The application finished handling an [`crate::AppEvent::Notify`] of `conn` (its handlers
    /// are bounded per connection by `max_pending_requests`). Returns `false` if the connection
    /// is gone.
    pub fn notify_done(&mut self, conn: ConnId) -> bool {
        let Ok(slot) = self.slot(conn) else {
            return false;
        };
        if let Some(x) = self.conn_mut(slot).extras.as_deref_mut() {
            x.notifies = x.notifies.saturating_sub(1);
        }
        true
    }

    /// Turns the [`crate::Lifecycle`] events on or off (`Config::lifecycle_events`).
    pub fn set_lifecycle_events(&mut self, on: bool) {
        self.config.lifecycle_events = on;
    }

    /// Replaces a connection's grants (e.g. after a token refresh). Existing subscriptions are
    /// kept; later operations are checked against the new grants.
    ///
    /// # Errors
    /// [`ApiError::UnknownConn`].
    pub fn set_grants(&mut self, conn: ConnId, grants: Arc<Grants>) -> Result<(), ApiError> {
        let slot = self.slot(conn)?;
        self.conn_mut(slot).grants = grants;
        Ok(())
    }

    /// Closes a connection from the application side, with a reason sent to the client, or
    /// normally (`None`: WebSocket close 1000, no error frame).
    ///
    /// # Errors
    /// [`ApiError::UnknownConn`].
    pub fn close_conn(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: Option<ProtocolError>,
    ) -> Result<(), ApiError> {
        self.advance(now);
        let slot = self.slot(conn)?;
        self.close_with(slot, reason);
        Ok(())
    }

    /// Closes every connection with `shutting_down` (graceful shutdown: adapters then flush and
    /// close each, and report `Closed`); connections opened from now on are closed at once.
    /// Those still open after `Timers::shutdown_grace` are dropped ([`crate::Output::Drop`]);
    /// [`crate::AppEvent::Stopped`] follows once none is left. Calling it again does nothing.
    pub fn shutdown(&mut self, now: Instant) {
        self.advance(now);
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(false);
        let deadline = self.now + self.config.timers.shutdown_grace;
        self.timers.schedule(deadline, Timer::Shutdown);
        let mut slots: Vec<_> = self.ids.values().copied().collect();
        slots.sort_unstable();
        for slot in slots {
            self.close(slot, crate::broker::shutting_down());
        }
        self.stop_if_done();
    }
}
