//! The client machine against the real broker, both sans-IO: every frame goes through the
//! native codec both ways, time is virtual, and the "network" can drop at any frame.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::grants::Grants;
use crate::ids::ConnId;
use crate::input::Input;
use crate::output::{GapReason, Output};
use crate::topic::NameLimits;
use crate::{Broker, native};

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s, NameLimits::default()).unwrap()
}

fn topic(s: &str) -> Topic {
    Topic::parse(s, NameLimits::default()).unwrap()
}

fn name(s: &str) -> Name {
    Name::parse("name", s, 128).unwrap()
}

fn text(s: &str) -> Payload {
    Payload::text(s.to_owned()).unwrap()
}

fn fast() -> ClientConfig {
    ClientConfig {
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
        ..ClientConfig::default()
    }
}

/// A client and a broker joined by a virtual network.
struct Pair {
    now: Instant,
    broker: Broker,
    client: Client,
    /// The broker's side of the current connection.
    conn: Option<ConnId>,
    next_conn: u64,
    /// Whether the server accepts connections.
    up: bool,
    items: Vec<(Vec<SubId>, Item)>,
    messages: Vec<Message>,
    done: Vec<(OpId, Result<Answer, OpError>)>,
    ended: Vec<(SubId, OpError)>,
    states: Vec<State>,
    requests: Vec<(ServerRequestId, Name, Payload)>,
    /// Application events of the broker.
    app: Vec<crate::AppEvent>,
    /// Every frame the client wrote.
    sent: Vec<String>,
    /// Server frames delivered to the client since the connection opened.
    received: usize,
    /// Presence notices and watches asked again.
    presence: Vec<Event>,
}

impl Pair {
    fn new(config: ClientConfig) -> Self {
        Self::with_broker(config, Config::default())
    }

    fn with_broker(config: ClientConfig, broker: Config) -> Self {
        let now = Instant::now(); // clock: test-only
        let mut pair = Self {
            now,
            broker: Broker::new(broker, now),
            client: Client::new(config, 7, now),
            conn: None,
            next_conn: 1,
            up: true,
            items: Vec::new(),
            messages: Vec::new(),
            done: Vec::new(),
            ended: Vec::new(),
            states: Vec::new(),
            requests: Vec::new(),
            app: Vec::new(),
            sent: Vec::new(),
            presence: Vec::new(),
            received: 0,
        };
        pair.drive();
        pair
    }

    /// Runs both machines until neither has anything to do.
    fn drive(&mut self) {
        self.drive_limited(usize::MAX);
    }

    /// Like `drive`, but the network drops once `limit` server frames reached the client on
    /// this connection. Returns whether it dropped.
    fn drive_limited(&mut self, limit: usize) -> bool {
        loop {
            let mut busy = false;
            while let Some(event) = self.client.poll_event() {
                busy = true;
                match event {
                    Event::Connect { .. } => {
                        if self.up {
                            let conn = ConnId(self.next_conn);
                            self.next_conn += 1;
                            self.broker
                                .handle_input(
                                    self.now,
                                    Input::Open {
                                        conn,
                                        codec: Box::new(crate::native::NativeCodec),
                                        grants: Arc::new(Grants::all()),
                                    },
                                )
                                .unwrap();
                            self.conn = Some(conn);
                            self.received = 0;
                            self.client.handle_connected(self.now);
                        } else {
                            self.client.handle_disconnected(
                                self.now,
                                Reason::Transport("connection refused".into()),
                            );
                        }
                    }
                    Event::Close => {
                        if let Some(conn) = self.conn.take() {
                            let _ = self.broker.handle_input(self.now, Input::Closed { conn });
                        }
                        self.client.handle_disconnected(self.now, Reason::Closed);
                    }
                    Event::State(s) => self.states.push(s),
                    Event::Deliver { subs, item } => self.items.push((subs, item)),
                    Event::Message(m) => self.messages.push(m),
                    Event::Done { op, result } => self.done.push((op, result)),
                    Event::Request { id, event, payload } => {
                        self.requests.push((id, event, payload));
                    }
                    Event::SubscriptionEnded { sub, error } => self.ended.push((sub, error)),
                    Event::Notice(_) => {}
                    e @ (Event::Presence(_) | Event::PresenceRewatched { .. }) => {
                        self.presence.push(e);
                    }
                }
            }
            while let Some(frame) = self.client.poll_transmit() {
                busy = true;
                self.sent.push(String::from_utf8(frame.to_vec()).unwrap());
                if let Some(conn) = self.conn {
                    let cmd = native::decode(&frame, &self.broker.config().limits);
                    self.broker
                        .handle_input(self.now, Input::Command { conn, cmd })
                        .unwrap();
                }
            }
            while let Some(out) = self.broker.poll_output() {
                busy = true;
                match out {
                    Output::Transmit { conn, payload } if Some(conn) == self.conn => {
                        let _ = self.broker.handle_input(
                            self.now,
                            Input::Flushed {
                                conn,
                                bytes: payload.len(),
                            },
                        );
                        if self.received >= limit {
                            self.drop_network();
                            return true;
                        }
                        self.received += 1;
                        self.client.handle_frame(self.now, &payload);
                    }
                    Output::Close { conn, .. } if Some(conn) == self.conn => {
                        self.conn = None;
                        let _ = self.broker.handle_input(self.now, Input::Closed { conn });
                        self.client.handle_disconnected(self.now, Reason::Closed);
                    }
                    Output::App(e) => self.app.push(*e),
                    _ => {}
                }
            }
            if !busy {
                return false;
            }
        }
    }

    /// The network drops the connection (no close reason).
    fn drop_network(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = self.broker.handle_input(self.now, Input::Closed { conn });
            while self.broker.poll_output().is_some() {}
            self.client
                .handle_disconnected(self.now, Reason::Transport("reset".into()));
        }
    }

    /// Moves time on by `d`, firing both machines' timers, and drives.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = [self.client.poll_timeout(), self.broker.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(next) = next else { break };
            self.now = self.now.max(next);
            self.client.handle_timeout(self.now);
            self.broker.handle_timeout(self.now);
            self.drive();
        }
        self.now = end;
        self.client.handle_timeout(self.now);
        self.broker.handle_timeout(self.now);
        self.drive();
    }

    /// Waits (virtually) until the client is connected again.
    fn reconnect(&mut self) {
        for _ in 0..100 {
            if self.client.is_connected() {
                return;
            }
            self.advance(Duration::from_millis(100));
        }
        panic!("did not reconnect: {:?}", self.client.state());
    }

    fn publish(&mut self, t: &str, data: &str) -> Cursor {
        let c = self
            .broker
            .publish(self.now, topic(t), None, text(data))
            .cursor()
            .expect("the in-memory log stores at once");
        self.drive();
        c
    }

    fn subscribe(&mut self, patterns: &[&str], name: Option<&str>) -> SubId {
        let (sub, op) = self
            .client
            .subscribe(
                self.now,
                patterns.iter().map(|p| pattern(p)).collect(),
                name.map(self::name),
                None,
            )
            .unwrap();
        self.drive();
        assert!(
            matches!(self.result(op), Some(Ok(_))),
            "subscribed: {:?}",
            self.done
        );
        sub
    }

    fn result(&self, op: OpId) -> Option<&Result<Answer, OpError>> {
        self.done.iter().find(|(o, _)| *o == op).map(|(_, r)| r)
    }

    /// The payloads of the events `sub` received, in order.
    fn events_of(&self, sub: SubId) -> Vec<String> {
        self.items
            .iter()
            .filter(|(subs, _)| subs.contains(&sub))
            .filter_map(|(_, item)| match item {
                Item::Event(e) => Some(e.payload.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }

    fn gaps(&self) -> Vec<Gap> {
        self.items
            .iter()
            .filter_map(|(_, item)| match item {
                Item::Gap(g) => Some(g.clone()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn connects_subscribes_and_tracks_the_cursor() {
    let mut p = Pair::new(fast());
    assert!(p.client.is_connected());
    assert_eq!(p.client.cursor(), None);
    let sub = p.subscribe(&["chat.*"], None);
    // No cursor yet and no `from`: the subscribe's ok gives it (PROTOCOL.md §9.2).
    assert_eq!(p.client.cursor(), Some(Cursor::new(1, 0)));
    p.publish("chat.a", "1");
    p.publish("news.x", "not mine");
    let c = p.publish("chat.b", "2");
    assert_eq!(p.events_of(sub), ["1", "2"]);
    // The cursor is the last event received, not the hub's position.
    assert_eq!(p.client.cursor(), Some(c));
    p.publish("news.y", "not mine either");
    assert_eq!(p.client.cursor(), Some(c));
    assert_eq!(
        p.states,
        [
            State::Connecting { attempt: 0 },
            State::Connected { conn: 1 }
        ]
    );
}

#[test]
fn resumes_exactly_once_in_order_across_drops() {
    let mut p = Pair::new(fast());
    let sub = p.subscribe(&["chat.*"], None);
    p.publish("chat.a", "1");
    p.drop_network();
    assert!(matches!(
        p.client.state(),
        State::Reconnecting { attempt: 1, .. }
    ));
    p.up = false;
    for i in 2..=4 {
        p.publish("chat.a", &i.to_string());
        p.publish("other", "x");
    }
    // Connection attempts fail meanwhile; the back-off grows.
    p.advance(Duration::from_millis(700));
    let attempts = p
        .states
        .iter()
        .filter(|s| matches!(s, State::Connecting { .. }))
        .count();
    assert!(attempts >= 3, "{:?}", p.states);
    p.up = true;
    p.reconnect();
    // The resubscribe carried the cursor of event 1.
    let last = p
        .sent
        .iter()
        .rev()
        .find(|f| f.contains("subscribe"))
        .unwrap();
    assert!(last.contains(r#""from":"1-1""#), "{last}");
    p.publish("chat.b", "5");
    assert_eq!(p.events_of(sub), ["1", "2", "3", "4", "5"]);
    assert!(p.gaps().is_empty());
    // Dropping again right after: nothing twice.
    p.drop_network();
    p.reconnect();
    p.publish("chat.b", "6");
    assert_eq!(p.events_of(sub), ["1", "2", "3", "4", "5", "6"]);
}

#[test]
fn a_drop_at_any_frame_of_an_interleaved_resume_loses_and_repeats_nothing() {
    // Two resuming frames (one unnamed, one named) make the broker's replays interleave and the
    // cursor move backwards; a drop at any point must still give each subscription each event
    // exactly once.
    for cut in 0..40 {
        let mut p = Pair::new(fast());
        let plain = p.subscribe(&["a.*", "b.*"], None);
        let named = p.subscribe(&["c.*"], Some("worker"));
        let mut expected_plain = Vec::new();
        let mut expected_named = Vec::new();
        p.drop_network();
        for i in 0..12 {
            let t = ["a.x", "b.x", "c.x"][i % 3];
            let data = format!("{t}-{i}");
            p.publish(t, &data);
            if t == "c.x" {
                expected_named.push(data);
            } else {
                expected_plain.push(data);
            }
        }
        p.advance(Duration::from_millis(200));
        // Reconnected; the first `cut` frames arrive, then the network drops.
        let _ = p.drive_limited(cut);
        if !p.client.is_connected() {
            p.reconnect();
        } else {
            p.drop_network();
            p.reconnect();
        }
        p.drive();
        assert_eq!(p.events_of(plain), expected_plain, "cut at {cut}");
        assert_eq!(p.events_of(named), expected_named, "cut at {cut}");
        assert!(p.gaps().is_empty(), "cut at {cut}");
    }
}

#[test]
fn a_restarted_server_gives_an_epoch_gap_first() {
    let mut p = Pair::new(fast());
    let sub = p.subscribe(&["chat.>"], None);
    p.publish("chat.a", "old");
    p.drop_network();
    // A new server: new epoch, empty history; something is published before we are back.
    p.broker = Broker::new(
        Config {
            epoch: 2,
            ..Config::default()
        },
        p.now,
    );
    p.conn = None;
    p.publish("chat.a.b", "new 1");
    p.reconnect();
    p.publish("chat.a", "new 2");
    let gaps = p.gaps();
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].reason, GapReason::Epoch);
    assert_eq!(gaps[0].from, Some(Cursor::new(1, 1)));
    assert_eq!(gaps[0].to, Cursor::new(2, 0));
    assert_eq!(p.events_of(sub), ["old", "new 1", "new 2"]);
    // The gap comes before the new epoch's events.
    let gap_at = p
        .items
        .iter()
        .position(|(_, i)| matches!(i, Item::Gap(_)))
        .unwrap();
    assert_eq!(gap_at, 1);
    assert_eq!(p.client.cursor(), Some(Cursor::new(2, 2)));
}

#[test]
fn evicted_events_are_announced_by_a_gap() {
    let mut broker = Config::default();
    broker.retention.max_events = 2;
    let mut p = Pair::with_broker(fast(), broker);
    let sub = p.subscribe(&["t"], None);
    p.publish("t", "1");
    p.drop_network();
    for i in 2..=6 {
        p.publish("t", &i.to_string());
    }
    p.reconnect();
    assert_eq!(p.events_of(sub), ["1", "5", "6"]);
    let gaps = p.gaps();
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].reason, GapReason::Evicted);
    assert_eq!(gaps[0].from, Some(Cursor::new(1, 1)));
    assert_eq!(gaps[0].to, Cursor::new(1, 4));
}

#[test]
fn requests_time_out_and_late_answers_are_dropped() {
    let mut p = Pair::new(fast());
    let op = p
        .client
        .request(
            p.now,
            name("slow"),
            text("x"),
            Some(Duration::from_millis(500)),
        )
        .unwrap();
    p.drive();
    let (conn, req) = p
        .app
        .iter()
        .find_map(|e| match e {
            crate::AppEvent::Request { conn, req, .. } => Some((*conn, *req)),
            _ => None,
        })
        .expect("the application was asked");
    p.advance(Duration::from_millis(499));
    assert_eq!(p.result(op), None);
    p.advance(Duration::from_millis(1));
    assert_eq!(p.result(op), Some(&Err(OpError::Timeout)));
    // The application answers late: the answer is dropped, the op had its one outcome.
    assert!(p.broker.reply(p.now, conn, req, Ok(text("late"))));
    p.drive();
    assert_eq!(p.done.iter().filter(|(o, _)| *o == op).count(), 1);
    // An answer in time.
    let op = p
        .client
        .request(p.now, name("fast"), text("y"), None)
        .unwrap();
    p.drive();
    let req = p
        .app
        .iter()
        .rev()
        .find_map(|e| match e {
            crate::AppEvent::Request { req, .. } => Some(*req),
            _ => None,
        })
        .unwrap();
    assert!(p.broker.reply(p.now, conn, req, Ok(text("answer"))));
    p.drive();
    let Some(Ok(answer)) = p.result(op) else {
        panic!("{:?}", p.done)
    };
    assert_eq!(answer.payload.as_ref().unwrap().as_str(), "answer");
}

#[test]
fn the_default_request_deadline_follows_the_server() {
    let mut p = Pair::new(fast());
    let op = p.client.request(p.now, name("x"), text(""), None).unwrap();
    p.drive();
    // The broker answers `timeout` after its request_timeout (10 s), before ours (12 s).
    p.advance(Duration::from_secs(10));
    let Some(Err(OpError::Server(e))) = p.result(op) else {
        panic!("{:?}", p.done)
    };
    assert!(e.is(ErrorCode::Timeout));
}

#[test]
fn operations_wait_for_a_connection_and_in_flight_ones_are_lost() {
    let mut p = Pair::new(fast());
    p.up = false;
    p.drop_network();
    // Asked while disconnected: waits, then goes out in order once connected.
    let first = p
        .client
        .publish(p.now, topic("a"), None, text("1"))
        .unwrap();
    let second = p
        .client
        .publish(p.now, topic("a"), None, text("2"))
        .unwrap();
    let doomed = p
        .client
        .request(p.now, name("x"), text(""), Some(Duration::from_millis(50)))
        .unwrap();
    p.advance(Duration::from_millis(100));
    assert_eq!(p.result(doomed), Some(&Err(OpError::Timeout)));
    assert_eq!(p.result(first), None);
    p.up = true;
    p.reconnect();
    let cursor = |op| match p.result(op) {
        Some(Ok(a)) => a.cursor.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(cursor(first), Cursor::new(1, 1));
    assert_eq!(cursor(second), Cursor::new(1, 2));
    // Sent, then the connection drops before the answer: the outcome is unknown.
    let lost = p
        .client
        .publish(p.now, topic("a"), None, text("3"))
        .unwrap();
    let frame = p.client.poll_transmit().unwrap();
    assert!(frame.starts_with(b"{\"op\":\"publish\""));
    p.drop_network();
    p.drive();
    assert_eq!(p.result(lost), Some(&Err(OpError::ConnectionLost)));
}

#[test]
fn the_resubscribe_set_is_the_confirmed_subscriptions_by_name() {
    let mut config = fast();
    config.client_id = Some(name("alice"));
    let mut p = Pair::new(config);
    let a = p.subscribe(&["chat.*", "news.>"], None);
    let _w = p.subscribe(&["jobs.*"], Some("worker"));
    let gone = p.subscribe(&["tmp.*"], None);
    let shared = p.subscribe(&["chat.*"], None);
    p.client.unsubscribe(p.now, gone);
    p.drive();
    assert!(p.sent.last().unwrap().contains(r#""op":"unsubscribe""#));
    assert!(p.sent.last().unwrap().contains(r#""topic":"tmp.*""#));
    // chat.* is still held by `a`: unsubscribing `shared` tells the server nothing.
    p.client.unsubscribe(p.now, shared);
    p.drive();
    assert!(!p.sent.last().unwrap().contains("chat.*"));
    let held: Vec<(String, Option<String>)> = p
        .client
        .patterns()
        .map(|(p, n)| (p.to_string(), n.map(|n| n.to_string())))
        .collect();
    assert_eq!(
        held,
        [
            ("chat.*".into(), None),
            ("jobs.*".into(), Some("worker".into())),
            ("news.>".into(), None)
        ]
    );
    p.publish("chat.x", "1");
    p.drop_network();
    let before = p.sent.len();
    p.reconnect();
    let frames: Vec<serde_json::Value> = p.sent[before..]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    assert_eq!(frames.len(), 3, "{frames:?}");
    assert_eq!(frames[0]["op"], "identify");
    assert_eq!(frames[0]["client_id"], "alice");
    assert_eq!(frames[1]["op"], "subscribe");
    assert_eq!(frames[1]["topics"], serde_json::json!(["chat.*", "news.>"]));
    assert_eq!(frames[1]["from"], "1-1");
    assert_eq!(frames[2]["topic"], "jobs.*");
    assert_eq!(frames[2]["name"], "worker");
    assert_eq!(frames[2]["from"], "1-1");
    // The restored subscriptions work, named routing included.
    p.broker.send(
        p.now,
        &Recipient::Named {
            topic: topic("jobs.eu"),
            name: name("worker"),
        },
        None,
        &text("job"),
    );
    p.drive();
    assert!(matches!(p.items.last(), Some((_, Item::Message(m))) if m.payload.as_str() == "job"));
    p.publish("news.a.b", "2");
    assert_eq!(p.events_of(a), ["1", "2"]);
}

#[test]
fn unconfirmed_and_refused_subscriptions() {
    let mut p = Pair::new(fast());
    p.up = false;
    p.drop_network();
    // Subscribed while disconnected: sent (and confirmed) on the next connection.
    let (sub, op) = p
        .client
        .subscribe(p.now, vec![pattern("x.*")], None, None)
        .unwrap();
    p.up = true;
    p.reconnect();
    assert!(matches!(p.result(op), Some(Ok(_))));
    p.publish("x.y", "1");
    assert_eq!(p.events_of(sub), ["1"]);
    // A name conflict is refused locally.
    assert!(matches!(
        p.client
            .subscribe(p.now, vec![pattern("x.*")], Some(name("n")), None),
        Err(ClientError::NameConflict { .. })
    ));
    assert!(matches!(
        p.client.subscribe(p.now, vec![], None, None),
        Err(ClientError::Invalid(_))
    ));
}

#[test]
fn server_pings_are_answered_and_dead_servers_detected() {
    let mut p = Pair::new(fast());
    // The broker pings after 15 s of silence; the client answers, so it is not idle.
    p.advance(Duration::from_secs(16));
    assert!(p.sent.iter().any(|f| f == r#"{"op":"pong"}"#));
    p.advance(Duration::from_secs(100));
    assert!(p.client.is_connected(), "{:?}", p.client.state());
    assert_eq!(p.next_conn, 2, "still the first connection");
    // The server goes silent (its pings stop arriving): gone after twice the keep-alive.
    p.conn.take().unwrap();
    let start = p.now;
    for _ in 0..40 {
        p.now += Duration::from_secs(1);
        p.client.handle_timeout(p.now);
        if let Some(Event::Close) = p.client.poll_event() {
            break;
        }
    }
    // The last server ping came at most 15 s before `start`; the client waits 2 × 15 s + 1 s.
    assert!(
        p.now - start >= Duration::from_secs(16),
        "{:?}",
        p.now - start
    );
    assert!(
        p.now - start <= Duration::from_secs(32),
        "{:?}",
        p.now - start
    );
    p.client.handle_disconnected(p.now, Reason::Closed);
    assert!(matches!(
        p.client.state(),
        State::Reconnecting {
            reason: Reason::Unresponsive,
            ..
        }
    ));
}

#[test]
fn a_server_without_keepalive_gets_pings_from_the_client() {
    let mut broker = Config::default();
    broker.timers.keepalive = None;
    broker.timers.idle_timeout = Some(Duration::from_secs(10));
    let mut p = Pair::with_broker(fast(), broker);
    p.advance(Duration::from_secs(60));
    assert!(p.client.is_connected());
    assert_eq!(p.next_conn, 2, "never closed for idleness");
    assert!(p.sent.iter().filter(|f| *f == r#"{"op":"ping"}"#).count() >= 10);
}

#[test]
fn server_requests_are_answered_once_per_connection() {
    let mut p = Pair::new(fast());
    let conn = p.conn.unwrap();
    let ack = p
        .broker
        .request(p.now, conn, &name("confirm"), &text("?"), None)
        .unwrap();
    p.drive();
    let (id, event, _) = p.requests.pop().unwrap();
    assert_eq!(event.as_str(), "confirm");
    assert!(p.client.reply(p.now, id, Ok(text("yes"))));
    assert!(!p.client.reply(p.now, id, Ok(text("twice"))));
    p.drive();
    assert!(p.app.iter().any(|e| matches!(
        e,
        crate::AppEvent::AckResult { ack: a, result: Ok(pl), .. } if *a == ack && pl.as_str() == "yes"
    )));
    // A request from a connection that is gone cannot be answered on the next one.
    p.broker
        .request(p.now, conn, &name("late"), &text("?"), None)
        .unwrap();
    p.drive();
    let (old, ..) = p.requests.pop().unwrap();
    p.drop_network();
    p.reconnect();
    assert!(!p.client.reply(p.now, old, Ok(text("too late"))));
}

#[test]
fn refusals_stop_the_client_and_end_subscriptions() {
    let mut p = Pair::new(fast());
    let sub = p.subscribe(&["a"], None);
    let waiting = p
        .client
        .publish(p.now, topic("a"), None, text("1"))
        .unwrap();
    let _ = p.client.poll_transmit();
    p.client.handle_disconnected(
        p.now,
        Reason::Refused {
            status: 401,
            message: "invalid token".into(),
        },
    );
    p.conn = None;
    p.drive();
    assert!(matches!(
        p.client.state(),
        State::Stopped {
            reason: Some(Reason::Refused { status: 401, .. })
        }
    ));
    assert_eq!(p.ended, [(sub, OpError::Stopped)]);
    assert_eq!(p.result(waiting), Some(&Err(OpError::ConnectionLost)));
    assert_eq!(p.client.poll_timeout(), None, "no reconnection");
    assert!(matches!(
        p.client.publish(p.now, topic("a"), None, text("2")),
        Err(ClientError::Stopped)
    ));
    // Retryable reasons are not fatal.
    for reason in [
        Reason::Refused {
            status: 503,
            message: String::new(),
        },
        Reason::Server(ServerError::new("shutting_down", "")),
        Reason::Server(ServerError::new("something_new", "")),
        Reason::Closed,
    ] {
        assert!(!reason.is_fatal(), "{reason}");
    }
    assert!(Reason::Server(ServerError::new("forbidden", "")).is_fatal());
}

#[test]
fn with_a_refreshable_token_a_401_is_retried_but_a_403_still_stops() {
    let mut config = fast();
    config.refreshable_token = true;
    let mut p = Pair::new(config);
    let sub = p.subscribe(&["a"], None);
    p.client.handle_disconnected(
        p.now,
        Reason::Refused {
            status: 401,
            message: "the token has expired".into(),
        },
    );
    p.conn = None;
    p.drive();
    assert!(
        matches!(
            p.client.state(),
            State::Reconnecting {
                reason: Reason::Refused { status: 401, .. },
                ..
            }
        ),
        "{:?}",
        p.client.state()
    );
    assert!(
        p.ended.is_empty(),
        "the subscription lives on: {:?}",
        p.ended
    );
    // The next attempt (with a fresh token) gets through, and the subscription is restored.
    p.reconnect();
    let cursor = p.publish("a", "after");
    p.drive();
    assert_eq!(p.events_of(sub), ["after"], "{cursor}");
    // Forbidden is not a matter of a fresh token: the client stops.
    let conn = p.conn.take().unwrap();
    let _ = p.broker.handle_input(p.now, Input::Closed { conn });
    p.client.handle_disconnected(
        p.now,
        Reason::Refused {
            status: 403,
            message: "forbidden".into(),
        },
    );
    p.drive();
    assert!(matches!(
        p.client.state(),
        State::Stopped {
            reason: Some(Reason::Refused { status: 403, .. })
        }
    ));
    assert_eq!(p.ended, [(sub, OpError::Stopped)]);
}

#[test]
fn a_server_close_reason_is_reported_and_overloaded_backs_off_longer() {
    let mut p = Pair::new(fast());
    let conn = p.conn.unwrap();
    p.broker
        .close_conn(
            p.now,
            conn,
            Some(ProtocolError::new(ErrorCode::Overloaded, "full")),
        )
        .unwrap();
    p.drive();
    let Some(State::Reconnecting { delay, reason, .. }) = p.states.last() else {
        panic!("{:?}", p.states)
    };
    assert_eq!(
        reason,
        &Reason::Server(ServerError::new("overloaded", "full"))
    );
    // Attempt 0 + 2: at least half of 4 × 100 ms.
    assert!(*delay >= Duration::from_millis(200), "{delay:?}");
}

#[test]
fn close_stops_everything_once() {
    let mut p = Pair::new(fast());
    let sub = p.subscribe(&["a"], None);
    p.client.close();
    p.drive();
    assert_eq!(p.ended, [(sub, OpError::Stopped)]);
    assert!(matches!(p.client.state(), State::Stopped { reason: None }));
    assert!(p.conn.is_none());
    p.client.close();
    p.advance(Duration::from_secs(60));
    assert_eq!(p.next_conn, 2, "no reconnection");
}

#[test]
fn limits_bound_what_waits() {
    let mut config = fast();
    config.max_pending = 3;
    let mut p = Pair::new(config);
    p.up = false;
    p.drop_network();
    for _ in 0..3 {
        p.client.ping(p.now).unwrap();
    }
    assert_eq!(
        p.client.ping(p.now),
        Err(ClientError::TooManyPending { limit: 3 })
    );
    assert_eq!(p.client.pending_ops(), 3);
    // They expire.
    p.advance(Duration::from_secs(31));
    assert_eq!(p.client.pending_ops(), 0);
}

#[test]
fn no_welcome_in_time_closes_and_retries() {
    let now = Instant::now(); // clock: test-only
    let mut c = Client::new(fast(), 1, now);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Connect { attempt: 0 })
    ));
    c.handle_connected(now);
    let deadline = c.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(10));
    c.handle_timeout(deadline);
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(events.contains(&Event::Close));
    c.handle_disconnected(deadline, Reason::Closed);
    assert!(matches!(
        c.state(),
        State::Reconnecting {
            reason: Reason::NoWelcome,
            ..
        }
    ));
    // Garbage is a notice, not a panic.
    c.handle_frame(deadline, &Bytes::from_static(b"\xff\x00"));
    assert!(matches!(
        c.poll_event(),
        Some(Event::Notice(_)) | Some(Event::State(_))
    ));
    // Another protocol version is fatal.
    let at = c.poll_timeout().unwrap();
    c.handle_timeout(at);
    c.handle_connected(at);
    c.handle_frame(
        at,
        &Bytes::from_static(br#"{"type":"welcome","protocol":2,"cursor":"1-0"}"#),
    );
    c.handle_disconnected(at, Reason::Closed);
    assert!(matches!(
        c.state(),
        State::Stopped {
            reason: Some(Reason::Protocol(_))
        }
    ));
}

proptest::proptest! {
    /// Whatever a server sends, in any order, the machine neither panics nor grows without
    /// bound, and every operation still gets exactly one outcome.
    #[test]
    fn any_server_frames_never_panic(frames in proptest::collection::vec(
        (0usize..12, 0u64..6, 0u64..4, "(a|a.b|c.d.e)"),
        0..60,
    )) {
        let now = Instant::now(); // clock: test-only
        let mut c = Client::new(fast(), 3, now);
        c.handle_connected(now);
        c.handle_frame(now, &Bytes::from_static(br#"{"type":"welcome","protocol":1,"cursor":"1-0","keepalive_ms":1000}"#));
        let (_, sub_op) = c.subscribe(now, vec![pattern("a.>"), pattern("a")], None, None).unwrap();
        let publish = c.publish(now, topic("a"), None, text("x")).unwrap();
        for (kind, id, seq, t) in frames {
            let frame = match kind {
                0 => format!(r#"{{"type":"event","topic":"{t}","cursor":"1-{seq}","data":1}}"#),
                1 => format!(r#"{{"type":"event","topic":"{t}","cursor":"{seq}-1","data":"s"}}"#),
                2 => format!(r#"{{"type":"ok","id":{id},"cursor":"1-{seq}"}}"#),
                3 => format!(r#"{{"type":"error","id":{id},"code":"x","message":"m"}}"#),
                4 => format!(r#"{{"type":"gap","from":"1-{id}","to":"{seq}-{id}","reason":"epoch","dropped_messages":1}}"#),
                5 => format!(r#"{{"type":"request","id":{id},"event":"e","data":null}}"#),
                6 => r#"{"type":"ping"}"#.to_owned(),
                7 => format!(r#"{{"type":"message","topic":"{t}","name":"n","data":[]}}"#),
                8 => r#"{"type":"welcome","protocol":1,"cursor":"2-0"}"#.to_owned(),
                9 => r#"{"type":"error","code":"shutting_down","message":"bye"}"#.to_owned(),
                10 => format!(r#"{{"type":"pong","id":{id}}}"#),
                _ => "}{".to_owned(),
            };
            c.handle_frame(now, &Bytes::from(frame));
            while c.poll_transmit().is_some() {}
        }
        c.handle_timeout(now + Duration::from_secs(60));
        c.handle_disconnected(now + Duration::from_secs(60), Reason::Closed);
        let mut outcomes = std::collections::BTreeMap::new();
        while let Some(e) = c.poll_event() {
            if let Event::Done { op, .. } = e {
                *outcomes.entry(op).or_insert(0) += 1;
            }
        }
        proptest::prop_assert_eq!(outcomes.get(&publish), Some(&1));
        proptest::prop_assert!(outcomes.get(&sub_op).copied().unwrap_or(0) <= 1);
        proptest::prop_assert!(outcomes.values().all(|n| *n == 1));
    }
}

/// Another connection of the broker (not the client's) sends a native frame.
fn other_sends(pair: &mut Pair, conn: ConnId, frame: &str) {
    if pair.broker.conn(conn).is_none() {
        let codec = Box::new(crate::native::NativeCodec);
        let grants = Arc::new(Grants::all());
        pair.broker
            .handle_input(
                pair.now,
                Input::Open {
                    conn,
                    codec,
                    grants,
                },
            )
            .unwrap();
    }
    let cmd = native::decode(
        &bytes::Bytes::from(frame.to_owned()),
        &crate::Limits::default(),
    );
    pair.broker
        .handle_input(pair.now, Input::Command { conn, cmd })
        .unwrap();
    pair.drive();
}

#[test]
fn a_presence_watch_gets_notices_and_is_asked_again_after_a_reconnect() {
    let mut pair = Pair::new(fast());
    let other = ConnId(1000);
    other_sends(&mut pair, other, r#"{"op":"subscribe","topic":"room.a"}"#);
    let op = pair
        .client
        .watch_presence(pair.now, topic("room.a"), true)
        .unwrap();
    pair.drive();
    let (done, result) = pair.done.pop().unwrap();
    assert_eq!(done, op);
    let data = result.unwrap().payload.unwrap();
    let snapshot: serde_json::Value = serde_json::from_slice(data.bytes()).unwrap();
    assert_eq!(snapshot["connections"], 1);

    other_sends(&mut pair, other, r#"{"op":"unsubscribe","topic":"room.a"}"#);
    let leave = crate::presence::PresenceNotice {
        topic: topic("room.a"),
        action: crate::presence::PresenceAction::Leave,
        client_id: None,
        info: None,
    };
    assert_eq!(pair.presence, [Event::Presence(leave)]);
    pair.presence.clear();

    // The connection drops: the watch is asked again on the next one, its presence the new
    // starting point.
    pair.drop_network();
    other_sends(&mut pair, other, r#"{"op":"subscribe","topic":"room.a"}"#);
    pair.reconnect();
    pair.drive();
    let [Event::PresenceRewatched { topic: t, result }] = &pair.presence[..] else {
        panic!("{:?}", pair.presence);
    };
    assert_eq!(t, &topic("room.a"));
    let again: serde_json::Value =
        serde_json::from_slice(result.as_ref().unwrap().bytes()).unwrap();
    assert_eq!(again["connections"], 1, "the join while away is in it");
    pair.presence.clear();

    // Stopped: nothing more, and not asked again.
    pair.client
        .watch_presence(pair.now, topic("room.a"), false)
        .unwrap();
    pair.drive();
    other_sends(&mut pair, other, r#"{"op":"unsubscribe","topic":"room.a"}"#);
    pair.drop_network();
    pair.reconnect();
    pair.drive();
    assert_eq!(pair.presence, []);
}
