//! Messages that are not retained across the nodes of a cluster (the relay seam,
//! `tidings_core::relay`): two brokers on a shared log, joined by a simulated relay that routes
//! by the interest each node announced (as the NATS relay does by subject). Clients speak the
//! native protocol, so answers (`ok`, `no_recipient`) are what a client would read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tidings_core::ask::{AskTo, ClientAnswer};
use tidings_core::log::LogMode;
use tidings_core::native::NativeCodec;
use tidings_core::presence::Presence;
use tidings_core::relay::{RelayReply, RelayRequest, Route};
use tidings_core::{
    AppOp, Broker, Config, ConnId, ErrorCode, Grants, Input, Name, Output, ProtocolError,
};

fn config() -> Config {
    Config {
        log: LogMode::External {
            hot_events: 16,
            hot_bytes: 1 << 20,
            max_pending_appends: 16,
            shared: true,
        },
        timers: tidings_core::Timers {
            reconnect_window: Some(std::time::Duration::from_secs(60)),
            ..tidings_core::Timers::default()
        },
        ..Config::default()
    }
}

/// Two nodes and the relay between them.
struct Cluster {
    nodes: Vec<Broker>,
    now: Instant,
    /// Routes each node announced as held.
    interest: Vec<HashSet<Route>>,
    /// Every announcement, per node, in order: `(route, held)`.
    announced: Vec<Vec<(Route, bool)>>,
    /// Frames each connection received, parsed.
    frames: HashMap<ConnId, Vec<Value>>,
    /// Relayed messages waiting for the nodes that hold their route to answer: sender node,
    /// send id, answers still expected, reached so far.
    pending: HashMap<u64, (usize, tidings_core::relay::RelayId, usize, bool)>,
    queue: VecDeque<(usize, Input)>,
    next_token: u64,
    /// Presence being gathered: token -> asking node, gathering id, answers still expected,
    /// merged so far.
    gathering: HashMap<u64, (usize, tidings_core::relay::RelayId, usize, Presence)>,
    /// The application events of each node.
    events: Vec<Vec<tidings_core::AppEvent>>,
    /// Claims waiting for an answer: token -> claiming node and id.
    claims: HashMap<u64, (usize, Name)>,
    /// Connections each node asked to close, with the error code.
    closed: HashMap<ConnId, Option<ErrorCode>>,
    /// Nodes watching each topic's presence.
    watching: HashMap<tidings_core::Topic, HashSet<usize>>,
    /// While set, gathered presences wait here (a slow gathering).
    slow_gathering: Option<Vec<(usize, Input)>>,
    /// Asks of clients on other nodes: token -> asking node, ask id, answers still expected,
    /// whether the first answer ends it, answers so far.
    asking: HashMap<u64, AskInFlight>,
    /// The relay drops asks (a NATS outage).
    relay_down: bool,
}

type AskInFlight = (
    usize,
    tidings_core::relay::RelayId,
    usize,
    bool,
    Vec<ClientAnswer>,
);

impl Cluster {
    fn new() -> Self {
        let now = Instant::now(); // clock: test-only
        Self {
            nodes: (0..2).map(|_| Broker::new(config(), now)).collect(),
            now,
            interest: vec![HashSet::new(); 2],
            announced: vec![Vec::new(); 2],
            frames: HashMap::new(),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            next_token: 1,
            gathering: HashMap::new(),
            events: vec![Vec::new(); 2],
            claims: HashMap::new(),
            closed: HashMap::new(),
            watching: HashMap::new(),
            slow_gathering: None,
            asking: HashMap::new(),
            relay_down: false,
        }
    }

    fn input(&mut self, n: usize, input: Input) {
        self.queue.push_back((n, input));
        self.run();
    }

    /// What the relay carries, until nothing is left.
    fn run(&mut self) {
        while let Some((n, input)) = self.queue.pop_front() {
            let _ = self.nodes[n].handle_input(self.now, input);
            self.drain(n);
        }
    }

    fn drain(&mut self, n: usize) {
        while let Some(out) = self.nodes[n].poll_output() {
            match out {
                Output::Transmit { conn, payload } => {
                    let v: Value = serde_json::from_slice(&payload).unwrap();
                    self.frames.entry(conn).or_default().push(v);
                }
                Output::Relay(req) => self.relay(n, req),
                Output::App(e) => self.events[n].push(*e),
                Output::Close { conn, reason } => {
                    self.closed.insert(conn, reason.map(|r| r.code));
                }
                _ => {}
            }
        }
    }

    /// The simulated relay: a message goes to every other node holding its route.
    fn relay(&mut self, from: usize, req: RelayRequest) {
        match req {
            RelayRequest::Interest { route, held } => {
                self.announced[from].push((route.clone(), held));
                if held {
                    assert!(self.interest[from].insert(route), "announced twice");
                } else {
                    assert!(self.interest[from].remove(&route), "withdrawn unheld");
                }
            }
            RelayRequest::Send { id, message } => {
                let route = message.to.route().expect("relayed messages have a route");
                let holders: Vec<usize> = (0..self.nodes.len())
                    .filter(|&m| m != from && self.interest[m].contains(&route))
                    .collect();
                let token = id.map(|id| {
                    let token = self.next_token;
                    self.next_token += 1;
                    self.pending.insert(token, (from, id, holders.len(), false));
                    token
                });
                if let (Some(id), true) = (id, holders.is_empty()) {
                    let e = ProtocolError::new(ErrorCode::NoRecipient, "nobody holds it");
                    let result = Err(e);
                    self.queue
                        .push_back((from, Input::Relay(RelayReply::Sent { id, result })));
                }
                for m in holders {
                    let message = message.clone();
                    self.queue
                        .push_back((m, Input::Relay(RelayReply::Message { token, message })));
                }
            }
            RelayRequest::Reached { token, reached } => {
                let Some(p) = self.pending.get_mut(&token) else {
                    return;
                };
                p.2 -= 1;
                p.3 |= reached;
                let (node, id, left, any) = *p;
                if any || left == 0 {
                    self.pending.remove(&token);
                    let result = if any {
                        Ok(())
                    } else {
                        Err(ProtocolError::new(ErrorCode::NoRecipient, "nobody got it"))
                    };
                    self.queue
                        .push_back((node, Input::Relay(RelayReply::Sent { id, result })));
                }
            }
            RelayRequest::Claimed {
                client_id,
                principal,
            } => {
                let route = Route::Client(client_id.clone());
                for m in (0..self.nodes.len()).filter(|&m| m != from) {
                    if !self.interest[m].contains(&route) {
                        continue;
                    }
                    let token = (!principal).then(|| {
                        let token = self.next_token;
                        self.next_token += 1;
                        self.claims.insert(token, (from, client_id.clone()));
                        token
                    });
                    let claimed = RelayReply::ClaimedElsewhere {
                        token,
                        client_id: client_id.clone(),
                        principal,
                    };
                    self.queue.push_back((m, Input::Relay(claimed)));
                }
            }
            RelayRequest::ClaimAnswer { token, owned } => {
                let (node, client_id) = self.claims.remove(&token).expect("asked");
                if owned {
                    let refused = RelayReply::ClaimRefused { client_id };
                    self.queue.push_back((node, Input::Relay(refused)));
                }
            }
            RelayRequest::GatherPresence { id, topic } => {
                let token = self.next_token;
                self.next_token += 1;
                let others = self.nodes.len() - 1;
                self.gathering
                    .insert(token, (from, id, others, Presence::default()));
                // A gathering for a watch says so (the real relay's `Tid-Watch` header).
                let watch = self
                    .watching
                    .get(&topic)
                    .is_some_and(|nodes| nodes.contains(&from));
                for m in (0..self.nodes.len()).filter(|&m| m != from) {
                    let topic = topic.clone();
                    self.queue.push_back((
                        m,
                        Input::Relay(RelayReply::PresenceAsked {
                            token,
                            topic,
                            watch,
                        }),
                    ));
                }
            }
            RelayRequest::PresenceHere { token, presence } => {
                let g = self.gathering.get_mut(&token).expect("asked");
                g.2 -= 1;
                g.3.merge(presence);
                if g.2 == 0 {
                    let (node, id, _, presence) = self.gathering.remove(&token).unwrap();
                    let gathered = (
                        node,
                        Input::Relay(RelayReply::PresenceGathered { id, presence }),
                    );
                    match &mut self.slow_gathering {
                        Some(waiting) => waiting.push(gathered),
                        None => self.queue.push_back(gathered),
                    }
                }
            }
            // Presence watches: the other nodes hear of the first and last watch of a node at
            // once (as a real relay's gathering header makes sure before they answer).
            RelayRequest::Watch { topic, watched } => {
                let nodes = self.watching.entry(topic.clone()).or_default();
                let before = nodes.clone();
                if watched {
                    assert!(nodes.insert(from), "watched twice");
                } else {
                    assert!(nodes.remove(&from), "unwatched unwatched");
                }
                let after = nodes.clone();
                for m in (0..self.nodes.len()).filter(|&m| m != from) {
                    let was = before.iter().any(|&w| w != m);
                    let is = after.iter().any(|&w| w != m);
                    if was != is {
                        let topic = topic.clone();
                        let reply = RelayReply::WatchedElsewhere { topic, watched: is };
                        self.queue.push_back((m, Input::Relay(reply)));
                    }
                }
            }
            RelayRequest::Notice(notice) => {
                let watchers = self
                    .watching
                    .get(&notice.topic)
                    .cloned()
                    .unwrap_or_default();
                for m in watchers.into_iter().filter(|&m| m != from) {
                    let reply = RelayReply::Notice(notice.clone());
                    self.queue.push_back((m, Input::Relay(reply)));
                }
            }
            RelayRequest::Ask {
                id,
                to,
                event,
                payload,
                timeout,
            } => {
                if self.relay_down {
                    return;
                }
                let holders: Vec<usize> = (0..self.nodes.len())
                    .filter(|&m| m != from)
                    .filter(|&m| match &to {
                        AskTo::Client(client_id) => {
                            self.interest[m].contains(&Route::Client(client_id.clone()))
                        }
                        // A room's ask goes to every node (each answers, maybe with nothing).
                        _ => true,
                    })
                    .collect();
                if holders.is_empty() {
                    let e = ProtocolError::new(ErrorCode::NoRecipient, "no responders");
                    let reply = RelayReply::Answered { id, result: Err(e) };
                    self.queue.push_back((from, Input::Relay(reply)));
                    return;
                }
                let token = self.next_token;
                self.next_token += 1;
                let first_wins = matches!(to, AskTo::Client(_));
                self.asking
                    .insert(token, (from, id, holders.len(), first_wins, Vec::new()));
                for m in holders {
                    let asked = RelayReply::Asked {
                        token,
                        to: to.clone(),
                        event: event.clone(),
                        payload: payload.clone(),
                        timeout,
                    };
                    self.queue.push_back((m, Input::Relay(asked)));
                }
            }
            RelayRequest::AskedHere { token, answers } => {
                let Some(a) = self.asking.get_mut(&token) else {
                    return;
                };
                a.2 -= 1;
                a.4.extend(answers);
                if a.2 == 0 || (a.3 && !a.4.is_empty()) {
                    let (node, id, _, _, answers) = self.asking.remove(&token).unwrap();
                    let reply = RelayReply::Answered {
                        id,
                        result: Ok(answers),
                    };
                    self.queue.push_back((node, Input::Relay(reply)));
                }
            }
            other => panic!("unexpected relay request {other:?}"),
        }
    }

    /// The application of node `n` does `op`.
    fn app(&mut self, n: usize, op: AppOp) {
        self.nodes[n].handle_app(self.now, op);
        self.drain(n);
        self.run();
    }

    fn open(&mut self, n: usize, conn: u64) -> ConnId {
        let conn = ConnId(conn);
        self.input(
            n,
            Input::Open {
                conn,
                codec: Box::new(NativeCodec),
                grants: Arc::new(Grants::all()),
            },
        );
        self.take(conn);
        conn
    }

    fn send(&mut self, n: usize, conn: ConnId, frame: Value) {
        let bytes = bytes::Bytes::from(serde_json::to_vec(&frame).unwrap());
        let cmd = tidings_core::native::decode(&bytes, &Config::default().limits);
        self.input(n, Input::Command { conn, cmd });
    }

    fn take(&mut self, conn: ConnId) -> Vec<Value> {
        self.frames.remove(&conn).unwrap_or_default()
    }

    fn identify(&mut self, n: usize, conn: ConnId, id: &str) {
        self.send(n, conn, json!({"op": "identify", "id": 1, "client_id": id}));
        assert_eq!(self.take(conn), [json!({"type": "ok", "id": 1})]);
    }

    fn close(&mut self, n: usize, conn: ConnId) {
        self.input(n, Input::Closed { conn });
    }
}

fn name(s: &str) -> Name {
    Name::parse("name", s, 64).unwrap()
}

#[test]
fn a_direct_message_reaches_a_client_id_held_on_another_node_and_is_answered_ok() {
    let mut c = Cluster::new();
    let alice = c.open(1, 1);
    c.identify(1, alice, "alice");
    let bob = c.open(0, 2);
    c.send(
        0,
        bob,
        json!({"op": "send", "id": 7, "to": "alice", "event": "hi", "data": {"n": 1}}),
    );
    let got = c.take(alice);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "message");
    assert_eq!(got[0]["data"], json!({"n": 1}));
    assert_eq!(got[0]["event"], "hi");
    assert_eq!(c.take(bob), [json!({"type": "ok", "id": 7})]);
}

#[test]
fn a_client_id_held_nowhere_is_answered_no_recipient() {
    let mut c = Cluster::new();
    let bob = c.open(0, 2);
    c.send(
        0,
        bob,
        json!({"op": "send", "id": 3, "to": "carol", "data": 1}),
    );
    let got = c.take(bob);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["type"], "error");
    assert_eq!(got[0]["id"], 3);
    assert_eq!(got[0]["code"], "no_recipient");
}

#[test]
fn a_client_id_held_here_is_not_relayed() {
    let mut c = Cluster::new();
    let alice = c.open(0, 1);
    c.identify(0, alice, "alice");
    let bob = c.open(0, 2);
    c.send(
        0,
        bob,
        json!({"op": "send", "id": 1, "to": "alice", "data": 1}),
    );
    assert_eq!(c.take(alice).len(), 1);
    assert_eq!(c.take(bob), [json!({"type": "ok", "id": 1})]);
    assert!(c.pending.is_empty());
}

#[test]
fn named_routing_reaches_named_subscriptions_on_every_node() {
    let mut c = Cluster::new();
    let w0 = c.open(0, 1);
    let w1 = c.open(1, 2);
    for (n, w) in [(0, w0), (1, w1)] {
        c.send(
            n,
            w,
            json!({"op": "subscribe", "id": 1, "topic": "jobs.>", "name": "worker"}),
        );
        assert_eq!(c.take(w)[0]["type"], "ok");
    }
    let p = c.open(0, 3);
    c.send(
        0,
        p,
        json!({"op": "send", "id": 2, "topic": "jobs.a", "name": "worker", "data": "x"}),
    );
    assert_eq!(c.take(w0).len(), 1);
    assert_eq!(c.take(w1).len(), 1);
    assert_eq!(c.take(p), [json!({"type": "ok", "id": 2})]);
}

#[test]
fn a_room_emit_reaches_members_on_every_node() {
    let mut c = Cluster::new();
    let a = c.open(0, 1);
    let b = c.open(1, 2);
    for (n, conn) in [(0, a), (1, b)] {
        let op = AppOp::Join {
            conn,
            room: name("lobby"),
        };
        c.app(n, op);
    }
    let op = AppOp::EmitRoom {
        room: name("lobby"),
        event: None,
        payload: tidings_core::Payload::text("hello").unwrap(),
    };
    c.app(0, op);
    for conn in [a, b] {
        let got = c.take(conn);
        assert_eq!(got.len(), 1, "{conn}: {got:?}");
        assert_eq!(got[0]["room"], "lobby");
    }
}

#[test]
fn interest_is_announced_once_per_route_as_it_comes_and_goes() {
    let mut c = Cluster::new();
    let a = c.open(1, 1);
    let b = c.open(1, 2);
    for conn in [a, b] {
        c.send(
            1,
            conn,
            json!({"op": "subscribe", "id": 1, "topic": "jobs.>", "name": "worker"}),
        );
        c.take(conn);
    }
    c.identify(1, a, "alice");
    assert_eq!(
        c.announced[1],
        [
            (Route::Named(name("worker")), true),
            (Route::Client(name("alice")), true)
        ]
    );
    c.close(1, a);
    assert_eq!(
        c.announced[1][2..],
        [(Route::Client(name("alice")), false)],
        "b still holds the name"
    );
    c.close(1, b);
    assert_eq!(c.announced[1][3..], [(Route::Named(name("worker")), false)]);
    assert!(c.announced[0].is_empty());
}

#[test]
fn presence_counts_the_subscribers_of_every_node() {
    let mut c = Cluster::new();
    let alice = c.open(0, 1);
    c.identify(0, alice, "alice");
    let bob = c.open(1, 2);
    c.identify(1, bob, "bob");
    let anon = c.open(1, 3);
    for (n, conn) in [(0, alice), (1, bob), (1, anon)] {
        c.send(
            n,
            conn,
            json!({"op": "subscribe", "id": 2, "topic": "chat.>"}),
        );
        c.take(conn);
    }
    let asker = c.open(0, 4);
    c.send(
        0,
        asker,
        json!({"op": "presence", "id": 5, "topic": "chat.a"}),
    );
    assert_eq!(
        c.take(asker),
        [json!({"type": "ok", "id": 5, "data": {
            "topic": "chat.a", "connections": 3, "anonymous": 1,
            "clients": [{"client_id": "alice", "connections": 1}, {"client_id": "bob", "connections": 1}],
            "truncated": false, "nodes": 2}})]
    );
    // The application asks too: gathered, then an event with the same answer.
    let op = AppOp::Presence {
        topic: tidings_core::Topic::parse("chat.a", Default::default()).unwrap(),
        viewer: None,
    };
    let reply = c.nodes[1].handle_app(c.now, op);
    let tidings_core::AppReply::Relaying(id) = reply else {
        panic!("a cluster gathers: {reply:?}")
    };
    c.drain(1);
    c.run();
    let presence = std::mem::take(&mut c.events[1])
        .into_iter()
        .find_map(|e| match e {
            tidings_core::AppEvent::Relayed {
                id: got,
                reply: tidings_core::AppReply::Presence(presence),
            } if got == id => Some(presence),
            _ => None,
        })
        .expect("the gathered presence");
    assert_eq!((presence.connections, presence.nodes), (3, 2));
}

fn logged(seq: u64, topic: &str, data: &str) -> tidings_core::log::Logged {
    tidings_core::log::Logged {
        seq,
        time_ms: 0,
        event: tidings_core::log::LogEvent {
            topic: tidings_core::Topic::parse(topic, Default::default()).unwrap(),
            event: None,
            from: None,
            payload: tidings_core::Payload::text(data.to_owned()).unwrap(),
        },
    }
}

#[test]
fn a_replaced_log_gives_every_subscriber_an_epoch_gap_then_the_new_logs_events() {
    use tidings_core::log::{LogReply, LogState};
    let mut c = Cluster::new();
    let s = c.open(0, 1);
    c.send(0, s, json!({"op": "subscribe", "id": 1, "topic": "t.>"}));
    c.take(s);
    for seq in 1..=3 {
        c.input(
            0,
            Input::Log(LogReply::Committed(logged(seq, "t.a", "old"))),
        );
    }
    let old = c.take(s);
    assert_eq!(old.len(), 3, "{old:?}");
    let old_head = old[2]["cursor"].as_str().unwrap().to_owned();
    // The stream was deleted and created again; two events are in it already.
    let state = LogState {
        epoch: 0xbeef,
        first: 1,
        head: 2,
        recovered: 2,
        recent: vec![logged(1, "t.a", "new 1"), logged(2, "t.b", "new 2")],
        now_ms: 0,
    };
    c.input(0, Input::Log(LogReply::Replaced(state)));
    c.input(
        0,
        Input::Log(LogReply::Committed(logged(3, "t.a", "new 3"))),
    );
    assert_eq!(
        c.take(s),
        [
            json!({"type": "gap", "from": old_head, "to": "beef-0", "reason": "epoch", "dropped_messages": 0}),
            json!({"type": "event", "topic": "t.a", "cursor": "beef-1", "data": "new 1"}),
            json!({"type": "event", "topic": "t.b", "cursor": "beef-2", "data": "new 2"}),
            json!({"type": "event", "topic": "t.a", "cursor": "beef-3", "data": "new 3"}),
        ]
    );
    // A client resuming with a cursor of the old log: the same notice, then the new log.
    let r = c.open(0, 2);
    c.send(
        0,
        r,
        json!({"op": "subscribe", "id": 1, "topic": "t.a", "from": old_head}),
    );
    let got = c.take(r);
    assert_eq!(got[1]["reason"], "epoch", "{got:?}");
    assert_eq!(got[2]["cursor"], "beef-1", "{got:?}");
}

fn bound_to(id: &str) -> Grants {
    Grants {
        principal: Some(name(id)),
        ..Grants::all()
    }
}

#[test]
fn a_principal_claim_closes_a_wildcard_holder_of_its_id_on_another_node_and_back() {
    let mut c = Cluster::new();
    // A wildcard holder of "alice" on node 1.
    let mallory = c.open(1, 1);
    c.identify(1, mallory, "alice");
    // Alice, bound to her id, claims it on node 0: mallory is closed on node 1.
    let alice = ConnId(2);
    c.input(
        0,
        Input::Open {
            conn: alice,
            codec: Box::new(NativeCodec),
            grants: Arc::new(bound_to("alice")),
        },
    );
    c.take(alice);
    c.identify(0, alice, "alice");
    assert_eq!(
        c.closed.get(&mallory),
        Some(&Some(ErrorCode::ClientIdTaken))
    );
    // A wildcard claim on node 1 while she holds it on node 0: refused after the fact.
    let carol = c.open(1, 3);
    c.send(
        1,
        carol,
        json!({"op": "identify", "id": 1, "client_id": "alice"}),
    );
    let got = c.take(carol);
    assert_eq!(
        got[0],
        json!({"type": "ok", "id": 1}),
        "node 1 did not know yet"
    );
    assert_eq!(got[1]["code"], "client_id_taken", "{got:?}");
    assert_eq!(c.closed.get(&carol), Some(&Some(ErrorCode::ClientIdTaken)));
    assert!(!c.closed.contains_key(&alice), "alice keeps her id");
    // Two wildcard holders on two nodes: nobody to protect, both stay.
    let (x, y) = (c.open(0, 4), c.open(1, 5));
    c.identify(0, x, "anon");
    c.identify(1, y, "anon");
    assert!(!c.closed.contains_key(&x) && !c.closed.contains_key(&y));
}

#[test]
fn presence_notices_cross_nodes_and_wait_for_the_gathered_answer() {
    let mut c = Cluster::new();
    // A slow gathering: changes while it runs, here and on node 1, come after the answer.
    c.slow_gathering = Some(Vec::new());
    let watcher = c.open(0, 1);
    c.send(
        0,
        watcher,
        json!({"op": "presence", "id": 5, "topic": "chat.a", "watch": true}),
    );
    assert_eq!(c.take(watcher), Vec::<Value>::new(), "the answer waits");
    let here = c.open(0, 2);
    c.send(0, here, json!({"op": "subscribe", "topic": "chat.*"}));
    let there = c.open(1, 3);
    c.identify(1, there, "bob");
    c.send(1, there, json!({"op": "subscribe", "topic": "chat.a"}));
    assert_eq!(
        c.take(watcher),
        Vec::<Value>::new(),
        "held until the answer"
    );
    let waiting = c.slow_gathering.take().unwrap();
    c.queue.extend(waiting);
    c.run();
    let got = c.take(watcher);
    assert_eq!(got[0]["type"], "ok");
    assert_eq!(
        (
            got[0]["data"]["connections"].as_u64(),
            got[0]["data"]["nodes"].as_u64()
        ),
        (Some(0), Some(2)),
        "{got:?}"
    );
    assert_eq!(
        got[1..],
        [
            json!({"type": "presence", "topic": "chat.a", "action": "join"}),
            json!({"type": "presence", "topic": "chat.a", "action": "join", "client_id": "bob"}),
        ]
    );
    // Later changes on node 1 come at once; the watch's end stops node 1's relaying.
    c.send(1, there, json!({"op": "unsubscribe", "topic": "chat.a"}));
    assert_eq!(
        c.take(watcher),
        [json!({"type": "presence", "topic": "chat.a", "action": "leave", "client_id": "bob"})]
    );
    c.send(
        0,
        watcher,
        json!({"op": "presence", "id": 6, "topic": "chat.a", "watch": false}),
    );
    c.take(watcher);
    c.send(1, there, json!({"op": "subscribe", "topic": "chat.a"}));
    assert!(
        c.watching
            .get(&tidings_core::Topic::parse("chat.a", Default::default()).unwrap())
            .is_none_or(HashSet::is_empty)
    );
    assert_eq!(c.take(watcher), Vec::<Value>::new());
}

#[test]
fn an_owners_parked_session_keeps_her_id_on_every_node_until_she_is_back() {
    let mut c = Cluster::new();
    let open_as_alice = |c: &mut Cluster, n: usize, conn: u64| {
        let conn = ConnId(conn);
        let grants = Arc::new(bound_to("alice"));
        let codec = Box::new(NativeCodec);
        c.input(
            n,
            Input::Open {
                conn,
                codec,
                grants,
            },
        );
        c.take(conn);
        c.identify(n, conn, "alice");
        conn
    };
    let alice = open_as_alice(&mut c, 0, 1);
    c.send(
        0,
        alice,
        json!({"op": "subscribe", "id": 2, "topic": "news"}),
    );
    c.close(0, alice);
    let route = Route::Client(name("alice"));
    assert!(
        c.interest[0].contains(&route),
        "her parked session keeps her id on node 0"
    );
    // A wildcard claim of her id on node 1 while she is away: refused, as on one node.
    let mallory = c.open(1, 2);
    c.send(
        1,
        mallory,
        json!({"op": "identify", "id": 1, "client_id": "alice"}),
    );
    assert_eq!(
        c.closed.get(&mallory),
        Some(&Some(ErrorCode::ClientIdTaken))
    );
    c.close(1, mallory);
    // She comes back on node 1: node 0 lets her parked session go, and with it her id.
    let again = open_as_alice(&mut c, 1, 3);
    assert!(!c.closed.contains_key(&again));
    assert!(
        !c.interest[0].contains(&route),
        "node 0 still routes her id"
    );
    assert!(c.interest[1].contains(&route));
    let expired = c.events[0].iter().any(|e| {
        matches!(e, tidings_core::AppEvent::SessionExpired { client_id } if client_id.as_str() == "alice")
    });
    assert!(
        expired,
        "node 0's application is told her session there is over"
    );
}

/// The answers node `n`'s application got for the ask it started with `op`.
fn ask(c: &mut Cluster, n: usize, op: AppOp) -> tidings_core::relay::RelayId {
    match c.nodes[n].handle_app(c.now, op) {
        tidings_core::AppReply::Relaying(id) => {
            c.drain(n);
            c.run();
            id
        }
        other => panic!("an ask is answered later, not {other:?}"),
    }
}

fn answers(
    c: &mut Cluster,
    n: usize,
    id: tidings_core::relay::RelayId,
) -> Option<Vec<ClientAnswer>> {
    let i = c.events[n]
        .iter()
        .position(|e| matches!(e, tidings_core::AppEvent::Relayed { id: got, .. } if *got == id))?;
    match c.events[n].remove(i) {
        tidings_core::AppEvent::Relayed {
            reply: tidings_core::AppReply::Answers(answers),
            ..
        } => Some(answers),
        other => panic!("not answers: {other:?}"),
    }
}

/// Lets `d` pass on every node.
fn wait(c: &mut Cluster, d: std::time::Duration) {
    c.now += d;
    for n in 0..c.nodes.len() {
        c.nodes[n].handle_timeout(c.now);
        c.drain(n);
    }
    c.run();
}

fn request_to(c: &mut Cluster, conn: ConnId) -> Value {
    let got = c.take(conn);
    assert_eq!(got.len(), 1, "{conn}: {got:?}");
    assert_eq!(got[0]["type"], "request", "{got:?}");
    got[0].clone()
}

fn text(s: &str) -> tidings_core::Payload {
    tidings_core::Payload::text(s.to_owned()).unwrap()
}

#[test]
fn a_server_request_reaches_a_client_id_on_another_node_and_its_reply_comes_back() {
    let mut c = Cluster::new();
    let alice = c.open(1, 1);
    c.identify(1, alice, "alice");
    let op = AppOp::RequestClient {
        client_id: name("alice"),
        event: name("confirm"),
        payload: text("pay 5?"),
        timeout: None,
    };
    let id = ask(&mut c, 0, op);
    let request = request_to(&mut c, alice);
    assert_eq!(request["event"], "confirm");
    assert_eq!(request["data"], "pay 5?");
    assert_eq!(
        answers(&mut c, 0, id),
        None,
        "answered before alice replied"
    );
    c.send(
        1,
        alice,
        json!({"op": "reply", "id": request["id"], "data": "yes"}),
    );
    let got = answers(&mut c, 0, id).expect("alice's reply reaches node 0's application");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].client_id, Some(name("alice")));
    assert_eq!(
        got[0].result.as_ref().map(|p| p.as_str().to_owned()),
        Ok("yes".into())
    );
}

#[test]
fn a_server_request_to_a_client_id_nobody_holds_is_no_recipient_at_once() {
    let mut c = Cluster::new();
    let op = AppOp::RequestClient {
        client_id: name("carol"),
        event: name("confirm"),
        payload: text("?"),
        timeout: None,
    };
    let id = ask(&mut c, 0, op);
    let got = answers(&mut c, 0, id).expect("answered at once");
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].result.as_ref().unwrap_err().code,
        ErrorCode::NoRecipient
    );
}

#[test]
fn a_server_request_to_a_room_gets_every_members_answer_on_every_node() {
    let mut c = Cluster::new();
    let a = c.open(0, 1);
    c.identify(0, a, "ann");
    let b = c.open(1, 2);
    c.identify(1, b, "ben");
    let silent = c.open(1, 3);
    for (n, conn) in [(0, a), (1, b), (1, silent)] {
        c.app(
            n,
            AppOp::Join {
                conn,
                room: name("jury"),
            },
        );
    }
    let op = AppOp::RequestRoom {
        room: name("jury"),
        event: name("vote"),
        payload: text("guilty?"),
        timeout: Some(std::time::Duration::from_secs(5)),
    };
    let id = ask(&mut c, 0, op);
    for (n, conn, vote) in [(0, a, "no"), (1, b, "yes")] {
        let request = request_to(&mut c, conn);
        c.send(
            n,
            conn,
            json!({"op": "reply", "id": request["id"], "data": vote}),
        );
    }
    request_to(&mut c, silent);
    assert_eq!(
        answers(&mut c, 0, id),
        None,
        "one member has not answered yet"
    );
    wait(&mut c, std::time::Duration::from_secs(5));
    let mut got = answers(&mut c, 0, id).expect("answered when the silent member timed out");
    got.sort_by_key(|a| a.client_id.clone());
    let shown: Vec<_> = got
        .iter()
        .map(|a| {
            let who = a.client_id.as_ref().map_or("-", |n| n.as_str()).to_owned();
            match &a.result {
                Ok(p) => (who, p.as_str().to_owned()),
                Err(e) => (who, e.code.as_str().to_owned()),
            }
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("-".to_owned(), "timeout".to_owned()),
            ("ann".to_owned(), "no".to_owned()),
            ("ben".to_owned(), "yes".to_owned()),
        ]
    );
}

#[test]
fn a_server_request_ends_once_at_its_deadline_when_the_other_nodes_never_answer() {
    let mut c = Cluster::new();
    c.relay_down = true;
    let a = c.open(0, 1);
    c.app(
        0,
        AppOp::Join {
            conn: a,
            room: name("r"),
        },
    );
    let op = AppOp::RequestRoom {
        room: name("r"),
        event: name("e"),
        payload: text("x"),
        timeout: Some(std::time::Duration::from_secs(1)),
    };
    let id = ask(&mut c, 0, op);
    let request = request_to(&mut c, a);
    c.send(0, a, json!({"op": "reply", "id": request["id"], "data": 1}));
    assert_eq!(answers(&mut c, 0, id), None, "waits for the other nodes");
    wait(&mut c, std::time::Duration::from_secs(1));
    assert_eq!(
        answers(&mut c, 0, id),
        None,
        "the other nodes have a moment more"
    );
    wait(&mut c, tidings_core::ask::ASK_GRACE);
    let got = answers(&mut c, 0, id).expect("ended at its deadline");
    assert_eq!(got.len(), 1, "this node's member answered: {got:?}");
    wait(&mut c, std::time::Duration::from_secs(10));
    assert_eq!(answers(&mut c, 0, id), None, "answered once");
    let op = AppOp::RequestClient {
        client_id: name("zed"),
        event: name("e"),
        payload: text("x"),
        timeout: Some(std::time::Duration::from_secs(1)),
    };
    let id = ask(&mut c, 0, op);
    wait(
        &mut c,
        std::time::Duration::from_secs(1) + tidings_core::ask::ASK_GRACE,
    );
    let got = answers(&mut c, 0, id).expect("ended at its deadline");
    assert_eq!(got[0].result.as_ref().unwrap_err().code, ErrorCode::Timeout);
}
