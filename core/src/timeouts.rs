//! Timers firing: per-connection keep-alive and idle checks, request and ack deadlines, history
//! age eviction. Cancellation is lazy: each timer checks that its purpose still holds.

use std::time::Instant;

use crate::broker::Broker;
use crate::codec::Frame;
use crate::error::{ErrorCode, ProtocolError};
use crate::ids::ConnId;
use crate::output::Output;
use crate::subs::Slot;
use crate::timers::Timer;

impl Broker {
    /// A connection's one timer: keep-alive pings and the idle timeout. Pings go when nothing
    /// was written for a while (so proxies keep the connection) and when a duplex client said
    /// nothing for a while (so it answers before the idle timeout, even while receiving events).
    pub(crate) fn conn_timer(&mut self, slot: Slot) {
        let now = self.now;
        let timers = &self.config.timers;
        let (keepalive, idle) = (timers.keepalive, timers.idle_timeout);
        let c = self.conn_ref(slot);
        let (id, duplex, last_read) = (c.id, c.duplex, c.last_read);
        let idle = idle.filter(|_| duplex);
        if let Some(idle) = idle.filter(|idle| now >= last_read + *idle) {
            self.count_error(ErrorCode::Idle);
            let e = ProtocolError::new(
                ErrorCode::Idle,
                format!(
                    "nothing received for {} s; clients answer pings to stay connected",
                    idle.as_secs()
                ),
            );
            return self.close(slot, e);
        }
        let next_ping = keepalive.map(|every| {
            let c = self.conn_ref(slot);
            let quiet_since = if duplex {
                c.last_write.min(c.last_read)
            } else {
                c.last_write
            };
            if now >= quiet_since + every {
                self.send_frame(slot, &Frame::Ping);
                now + every
            } else {
                quiet_since + every
            }
        });
        let next_idle = idle.map(|idle| last_read + idle);
        if let Some(next) = next_ping.into_iter().chain(next_idle).min() {
            self.timers.schedule(next, Timer::Conn(id));
        }
    }

    pub(crate) fn mark_stale(&mut self) {
        let (ids, conns) = (&self.ids, &self.conns);
        self.timers.mark_stale(|t| match *t {
            Timer::Request(c, req) => ids
                .get(&c)
                .and_then(|s| conns[*s as usize].as_ref())
                .is_some_and(|s| s.requests().contains(&req)),
            Timer::Ack(c, ack) => ids
                .get(&c)
                .and_then(|s| conns[*s as usize].as_ref())
                .is_some_and(|s| s.acks().contains(&ack)),
            _ => true,
        });
    }

    pub(crate) fn arm_retention(&mut self, at: Instant) {
        if self.retention_timer.is_none() {
            self.retention_timer = Some(at);
            self.timers.schedule(at, Timer::Retention);
        }
    }

    /// A due timer: each kind checks that its purpose still holds (cancellation is lazy).
    pub(crate) fn fire(&mut self, timer: Timer) {
        let now = self.now;
        let live = |b: &Self, conn: ConnId| {
            b.ids
                .get(&conn)
                .copied()
                .filter(|s| !b.conn_ref(*s).closing)
        };
        match timer {
            Timer::Conn(conn) => {
                if let Some(slot) = live(self, conn) {
                    self.conn_timer(slot);
                }
            }
            Timer::Request(conn, req) => {
                let Some(slot) = live(self, conn) else { return };
                let state = self.conn_mut(slot);
                let Some(i) = state.requests().iter().position(|r| *r == req) else {
                    return;
                };
                state.extras_mut().requests.swap_remove(i);
                let ms = self.config.timers.request_timeout.as_millis();
                self.count_error(ErrorCode::Timeout);
                let e = ProtocolError::new(
                    ErrorCode::Timeout,
                    format!("the application did not answer within {ms} ms"),
                );
                self.send_frame(
                    slot,
                    &Frame::Error {
                        req: Some(req),
                        error: &e,
                    },
                );
            }
            Timer::Ack(conn, ack) => {
                let Some(slot) = live(self, conn) else { return };
                let state = self.conn_mut(slot);
                let Some(i) = state.acks().iter().position(|a| *a == ack) else {
                    return;
                };
                state.extras_mut().acks.swap_remove(i);
                let e = ProtocolError::new(ErrorCode::Timeout, "the client did not answer in time");
                self.ack_result(conn, ack, Err(e));
            }
            Timer::Ask(id) => self.ask_deadline(id),
            Timer::Parked => self.expire_parked(now),
            Timer::CloseGrace(conn) => {
                // Still not closed (ids are never reused, so this is the same connection).
                if self.ids.contains_key(&conn) {
                    self.out.push_back(Output::Drop { conn });
                }
            }
            Timer::Ahead(conn) => {
                if let Some(slot) = live(self, conn) {
                    self.ahead_unanswered(slot);
                }
            }
            Timer::Shutdown => {
                let mut left: Vec<ConnId> = self.ids.keys().copied().collect();
                left.sort_unstable();
                self.out
                    .extend(left.into_iter().map(|conn| Output::Drop { conn }));
            }
            Timer::Retention => {
                self.retention_timer = None;
                if let Some(next) = self.history.evict_expired(now) {
                    self.arm_retention(next);
                }
                // The encodings of what expired go with it (not at the next publish).
                self.encodings.trim(self.history.first_seq());
            }
        }
    }
}
