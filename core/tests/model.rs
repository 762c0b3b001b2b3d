//! Model-based property test: random sequences of everything clients, the application, the
//! transport and the clock can do, run against the broker, and checked against a plain model.
//!
//! The model keeps, per connection, what it asked for as *interests*: (pattern, wanted after
//! seq, until seq). From the full list of published events it derives what each connection must
//! get. After every step the harness drains the outputs and checks cheap invariants (queues
//! bounded, timers not in the past, every frame decodes, replies match requests); at the end it
//! drains all transports and checks every delivery, gap notice, message and reply.
//!
//! Client sessions: connections identify with one of a few shared client ids (or a unique one).
//! A closing identified connection parks its session (subscriptions, rooms) for the reconnect
//! window; the model tracks the parked sessions exactly (which exist, which expire or are evicted
//! and when). A connection that claims a parked session inherits its interests together with the
//! *chain* of connections that held them: what the chain received as a whole must be complete
//! and free of duplicates, so the model needs no knowledge of the broker's internal position.
//!
//! Declared topics: every event records the visibility of its topic at publish time. A delivery
//! must be visible to the connection's identity and rooms when it arrives; completeness is owed
//! for events that stayed visible to every connection of the chain from publish to the end.
//!
//! Claims: a connection's grants allow any client id, or are bound to one shared id (it is that
//! id's principal). Identify uses each `Claim`; the model predicts who holds every id (checked
//! with `client_conn` after every step), who is closed by a take-over, and who gets which parked
//! session (a session goes back only to the same principal: a principal's to a principal, a
//! wildcard claimer's to a wildcard claimer; a principal's is not replaced by another's, and
//! keeps its id from wildcard claimers; a principal claims its id back from a wildcard holder).
//!
//! Policy timers: some peers do not close when told (`stuck`): the broker must drop them exactly
//! at the end of `close_grace` (the clock steps to just before and to each deadline). A shutdown
//! (near the end of some runs) closes everyone with `shutting_down`, closes new connections at
//! once, drops the stuck ones at `shutdown_grace`, and emits `Stopped` once, when the last one is
//! reported closed. Client events (`Command::Notify`) are bounded per connection by
//! `max_pending_requests` until the application says they are done.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Value;
use tidings_core::sse::{Decoder, Item};
use tidings_core::{
    AppEvent, AppOp, AppReply, Broker, Claim, ClientIds, Command, Config, ConnId, Cursor,
    ErrorCode, Grants, Input, Name, Output, Pattern, Payload, SlowConsumerPolicy, Subscribe, Topic,
    Visibility, native,
};

const TOPICS: [&str; 5] = ["a", "b", "a.x", "a.y", "b.x.y"];
const PATTERNS: [&str; 7] = ["a", "b", "a.*", "a.>", "*.x", ">", "b.x.y"];
const ROOMS: [&str; 2] = ["r1", "r2"];
/// Client ids several connections compete for (and reclaim sessions of).
const CLIENTS: [&str; 3] = ["u0", "u1", "u2"];
const EPOCH: u64 = 5;
const CLAIMS: [Claim; 3] = [Claim::Explicit, Claim::IfFree, Claim::TakeOver];

#[derive(Debug, Clone)]
enum Op {
    Open {
        sse: bool,
        /// Identify with this shared client id (falling back to a unique one when taken).
        shared: Option<usize>,
        /// Grants bound to the shared id (its principal) rather than any id.
        bound: bool,
        /// Index into `CLAIMS`.
        claim: usize,
        /// The peer does not close when told to (the broker must drop it).
        stuck: bool,
    },
    Close(usize),
    /// The application closes a connection normally.
    AppClose(usize),
    /// Claim a shared client id (`CLIENTS.len()`: the connection's own unique id).
    Identify {
        conn: usize,
        who: usize,
        claim: usize,
    },
    /// A client event for the application (`Command::Notify`).
    Notify(usize),
    /// The application finished handling one (any connection, even closed ones).
    NotifyDone(usize),
    /// Declare a topic: 0 public, then private to each of `CLIENTS`, then group of each room.
    Declare {
        topic: usize,
        vis: usize,
    },
    RemoveTopic(usize),
    Subscribe {
        conn: usize,
        patterns: Vec<usize>,
        from: Option<From>,
        named: bool,
    },
    Unsubscribe {
        conn: usize,
        pattern: usize,
    },
    Publish {
        conn: Option<usize>,
        topic: usize,
        big: bool,
    },
    SendDirect {
        conn: usize,
        to: usize,
    },
    SendNamed {
        conn: usize,
        topic: usize,
    },
    Join {
        conn: usize,
        room: usize,
    },
    Leave {
        conn: usize,
        room: usize,
    },
    EmitRoom {
        room: usize,
    },
    ClientRequest(usize),
    AppReply(usize),
    ServerRequest(usize),
    ClientReply(usize),
    Flush {
        conn: usize,
        all: bool,
    },
    Tick(u64),
    Garbage {
        conn: usize,
        bytes: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy)]
enum From {
    /// This many events back from the head (clamped to 0).
    Back(u64),
    OtherEpoch,
    Ahead,
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..8usize;
    prop_oneof![
        3 => (any::<bool>(), prop::option::weighted(0.6, 0..CLIENTS.len()), prop::bool::weighted(0.4), 0..CLAIMS.len(), prop::bool::weighted(0.2))
            .prop_map(|(sse, shared, bound, claim, stuck)| Op::Open { sse, shared, bound, claim, stuck }),
        2 => conn.clone().prop_map(Op::Close),
        1 => conn.clone().prop_map(Op::AppClose),
        3 => (conn.clone(), 0..=CLIENTS.len(), 0..CLAIMS.len())
            .prop_map(|(conn, who, claim)| Op::Identify { conn, who, claim }),
        2 => conn.clone().prop_map(Op::Notify),
        1 => (0..16usize).prop_map(Op::NotifyDone),
        2 => (0..TOPICS.len(), 0..1 + CLIENTS.len() + ROOMS.len())
            .prop_map(|(topic, vis)| Op::Declare { topic, vis }),
        1 => (0..TOPICS.len()).prop_map(Op::RemoveTopic),
        5 => (conn.clone(), prop::collection::vec(0..PATTERNS.len(), 1..3), prop::option::weighted(0.5, prop_oneof![
                6 => (0..12u64).prop_map(From::Back),
                1 => Just(From::OtherEpoch),
                1 => Just(From::Ahead),
            ]), any::<bool>())
            .prop_map(|(conn, patterns, from, named)| Op::Subscribe { conn, patterns, from, named }),
        2 => (conn.clone(), 0..PATTERNS.len()).prop_map(|(conn, pattern)| Op::Unsubscribe { conn, pattern }),
        8 => (prop::option::of(conn.clone()), 0..TOPICS.len(), prop::bool::weighted(0.3))
            .prop_map(|(conn, topic, big)| Op::Publish { conn, topic, big }),
        3 => (conn.clone(), conn.clone()).prop_map(|(conn, to)| Op::SendDirect { conn, to }),
        1 => (conn.clone(), 0..TOPICS.len()).prop_map(|(conn, topic)| Op::SendNamed { conn, topic }),
        2 => (conn.clone(), 0..ROOMS.len()).prop_map(|(conn, room)| Op::Join { conn, room }),
        1 => (conn.clone(), 0..ROOMS.len()).prop_map(|(conn, room)| Op::Leave { conn, room }),
        3 => (0..ROOMS.len()).prop_map(|room| Op::EmitRoom { room }),
        1 => conn.clone().prop_map(Op::ClientRequest),
        1 => conn.clone().prop_map(Op::AppReply),
        1 => conn.clone().prop_map(Op::ServerRequest),
        1 => conn.clone().prop_map(Op::ClientReply),
        4 => (conn.clone(), prop::bool::weighted(0.3)).prop_map(|(conn, all)| Op::Flush { conn, all }),
        2 => (0..3000u64).prop_map(Op::Tick),
        1 => (conn, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(conn, bytes)| Op::Garbage { conn, bytes }),
    ]
}

/// One thing a connection wanted: events matching `pattern` with `after < seq <= until`.
#[derive(Debug, Clone)]
struct Interest {
    pattern: usize,
    after: u64,
    until: Option<u64>,
    /// The connections that served it, this one last: more than one when it was inherited from
    /// a parked session; what any of them received (or was told it lost) counts.
    chain: Vec<usize>,
    /// Inherited while the connection had resumed from this cursor: the broker replays from
    /// there, so events after it may repeat what an earlier connection of the chain received.
    dup_ok_after: Option<u64>,
    /// Inherited by a connection that had unsubscribed before: it forgot what it delivered
    /// through that subscription, so the replay may repeat it (as a resume may; see
    /// `resubscribe_allowed`).
    repeat_ok: bool,
    /// The connection's delivery count when the interest began (later deliveries may be its).
    since: usize,
}

/// The model's visibility of a declared topic (indexes into `CLIENTS` and `ROOMS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vis {
    Public,
    Private(usize),
    Group(usize),
}

fn sees(client_id: Option<&str>, rooms: &[usize], scope: Option<Vis>) -> bool {
    match scope {
        None | Some(Vis::Public) => true,
        Some(Vis::Private(k)) => client_id == Some(CLIENTS[k]),
        Some(Vis::Group(r)) => rooms.contains(&r),
    }
}

struct MEvent {
    topic: usize,
    data: String,
    /// The topic's visibility when it was published, unless public.
    scope: Option<Vis>,
    step: u64,
}

/// A closed connection's session, as the model expects the broker to keep it.
struct MParked {
    client_id: String,
    /// (pattern, named, the interest it served).
    subs: Vec<(usize, bool, Interest)>,
    rooms: Vec<usize>,
    /// Interests of the session that ended (unsubscribed, or their topic removed, before or
    /// while it was parked): what they delivered counts for the session's completeness, since
    /// the broker does not repeat what the session already received.
    ended: Vec<Interest>,
    expires: Instant,
    /// Parked by the id's principal: restored only to a principal (and not parked by one:
    /// restored only to a wildcard claimer).
    bound: bool,
}

#[derive(Debug, Clone)]
struct GapSeen {
    from: Option<Cursor>,
    to: Cursor,
    reason: String,
    dropped: u64,
}

struct MConn {
    id: ConnId,
    sse: bool,
    /// Neither closed by the peer nor told to close by the broker.
    open: bool,
    /// The shared id its grants are bound to (`None`: any id).
    bound: Option<usize>,
    /// Does not close when the broker says so: reported closed only after `Output::Drop`.
    stuck: bool,
    /// When the broker said `Close` to this stuck peer (still not reported closed).
    awaiting: Option<Instant>,
    /// `Input::Closed` was given.
    reported_closed: bool,
    /// `Output::Close` count and the last reason's code (`Some(None)`: a normal close).
    closes: usize,
    close_reason: Option<Option<ErrorCode>>,
    disconnected: usize,
    /// Client events the application is handling (`Command::Notify` minus `NotifyDone`).
    notifies: usize,
    /// Closed by the broker (slow consumer, garbage over the limit): completeness is not owed.
    dropped_by_broker: bool,
    held: Vec<(usize, bool)>,
    interests: Vec<Interest>,
    resubscribe_allowed: bool,
    delivered: Vec<u64>,
    /// Indexes into `delivered` where a resume may restart the order.
    rewinds: Vec<usize>,
    gaps: Vec<GapSeen>,
    messages_expected: Vec<String>,
    messages_got: Vec<String>,
    unflushed: usize,
    decoder: Decoder,
    next_req: u64,
    replies_due: HashSet<u64>,
    replies: HashMap<u64, usize>,
    app_pending: Vec<u64>,
    server_pending: Vec<u64>,
    /// Its own unique client id, `c<conn>`.
    own_id: String,
    client_id: Option<String>,
    rooms: Vec<usize>,
    /// (step, client id, rooms) from each step that changed them: what it could see when.
    states: Vec<(u64, Option<String>, Vec<usize>)>,
    closed_step: Option<u64>,
    /// The earliest cursor it subscribed from (a session it claims replays from there).
    resumed_from: Option<u64>,
    /// `tidings-*` notices: (kind, data).
    notices: Vec<(String, Value)>,
    /// Answers by request id: "ok" or the error code.
    answers: HashMap<u64, String>,
}

struct Harness {
    broker: Broker,
    now: Instant,
    conns: Vec<MConn>,
    /// Published events by seq.
    events: Vec<MEvent>,
    max_events: u64,
    max_queued: usize,
    next_conn: u64,
    next_msg: u64,
    acks_resolved: HashMap<(ConnId, u64), usize>,
    acks_sent: Vec<(ConnId, u64)>,
    step_no: u64,
    window: Option<Duration>,
    max_parked: usize,
    catalog: HashMap<usize, Vis>,
    /// In parking order (the broker evicts the oldest first).
    parked: Vec<MParked>,
    expired_want: Vec<String>,
    expired_got: Vec<String>,
    close_grace: Duration,
    shutdown_grace: Duration,
    /// `limits.max_pending_requests`: also the bound of running client events.
    max_notifies: usize,
    shutdown_at: Option<Instant>,
    stopped: usize,
    /// The `Notify` and `ProtocolViolation` events of the current step.
    step_events: Vec<AppEvent>,
}

/// The harness's knobs for one run.
struct Params {
    max_events: u64,
    max_queued: usize,
    disconnect_b: bool,
    window: Option<Duration>,
    max_parked: usize,
    close_grace: Duration,
    shutdown_grace: Duration,
    max_notifies: usize,
}

fn pattern(i: usize) -> Pattern {
    Pattern::parse(PATTERNS[i], Default::default()).unwrap()
}

fn topic(i: usize) -> Topic {
    Topic::parse(TOPICS[i], Default::default()).unwrap()
}

/// The topic an exact pattern names (exact subscriptions to invisible topics are refused).
fn exact_topic(p: usize) -> Option<usize> {
    TOPICS.iter().position(|t| *t == PATTERNS[p])
}

fn name(kind: &str, s: &str) -> Name {
    Name::parse(kind, s, 64).unwrap()
}

/// The one place that builds `Input::Open` (its shape and `Transport` may change). `bound`:
/// grants bound to that shared id, else any id.
fn open_input(conn: ConnId, sse: bool, bound: Option<usize>) -> Input {
    let codec: Box<dyn tidings_core::codec::Codec> = if sse {
        Box::new(tidings_core::sse::SseCodec)
    } else {
        Box::new(tidings_core::native::NativeCodec)
    };
    let mut grants = Grants::all();
    if let Some(k) = bound {
        grants.client_ids = ClientIds::Only(name("client_id", CLIENTS[k]));
    }
    Input::Open {
        conn,
        codec,
        grants: Arc::new(grants),
    }
}

impl Harness {
    fn new(params: &Params) -> Self {
        let &Params {
            max_events,
            max_queued,
            disconnect_b,
            window,
            max_parked,
            close_grace,
            shutdown_grace,
            max_notifies,
        } = params;
        let mut config = Config {
            epoch: EPOCH,
            ..Config::default()
        };
        config.retention.max_events = max_events as usize;
        config.limits.max_queued_bytes = max_queued;
        config.timers.idle_timeout = None;
        config.timers.keepalive = Some(Duration::from_secs(7));
        config.timers.request_timeout = Duration::from_secs(5);
        config.timers.reconnect_window = window;
        config.limits.max_parked_sessions = max_parked;
        config.limits.max_pending_requests = max_notifies;
        config.timers.close_grace = close_grace;
        config.timers.shutdown_grace = shutdown_grace;
        if disconnect_b {
            config.slow_consumer.rules = vec![(
                Pattern::parse("b.>", Default::default()).unwrap(),
                SlowConsumerPolicy::Disconnect,
            )];
        }
        let now = Instant::now();
        Self {
            broker: Broker::new(config, now),
            now,
            conns: Vec::new(),
            events: vec![MEvent {
                topic: 0,
                data: String::new(),
                scope: None,
                step: 0,
            }], // seq 0 is not an event
            max_events,
            max_queued,
            next_conn: 1,
            next_msg: 0,
            acks_resolved: HashMap::new(),
            acks_sent: Vec::new(),
            step_no: 0,
            window,
            max_parked,
            catalog: HashMap::new(),
            parked: Vec::new(),
            expired_want: Vec::new(),
            expired_got: Vec::new(),
            close_grace,
            shutdown_grace,
            max_notifies,
            shutdown_at: None,
            stopped: 0,
            step_events: Vec::new(),
        }
    }

    /// When the broker must drop a stuck connection it said `Close` to: at the end of its close
    /// grace, or at the shutdown deadline if that comes first (and after the close).
    fn drop_due(&self, i: usize) -> Option<Instant> {
        let at = self.conns[i].awaiting?;
        let shutdown = self
            .shutdown_at
            .map(|s| s + self.shutdown_grace)
            .filter(|d| *d > at);
        Some(shutdown.map_or(at + self.close_grace, |d| d.min(at + self.close_grace)))
    }

    fn head(&self) -> u64 {
        self.events.len() as u64 - 1
    }

    fn pick(&self, k: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.conns.len())
            .filter(|i| self.conns[*i].open)
            .collect();
        (!open.is_empty()).then(|| open[k % open.len()])
    }

    fn input(&mut self, input: Input) {
        self.broker
            .handle_input(self.now, input)
            .expect("the harness never misuses the API");
        self.drain();
    }

    fn index_of(&self, id: ConnId) -> usize {
        self.conns
            .iter()
            .position(|c| c.id == id)
            .expect("outputs name known connections")
    }

    fn drain(&mut self) {
        let mut to_close = Vec::new();
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, payload } => {
                    let i = self.index_of(conn);
                    let c = &self.conns[i];
                    assert!(
                        c.closes == 0 && !c.reported_closed,
                        "nothing is sent to {conn} after Close or Closed"
                    );
                    self.conns[i].unflushed += payload.len();
                    self.frame(i, &payload);
                }
                Output::Close { conn, reason } => {
                    let i = self.index_of(conn);
                    let c = &mut self.conns[i];
                    assert!(
                        !c.reported_closed && c.closes == 0,
                        "Close once, and only for connections not closed: {conn}"
                    );
                    c.closes += 1;
                    c.close_reason = Some(reason.map(|r| r.code));
                    c.dropped_by_broker = true;
                    if c.open {
                        // (A take-over's close is modeled before the input.)
                        c.open = false;
                        c.closed_step = Some(self.step_no);
                        // The broker parks the session as it decides to close, before `Closed`.
                        self.park(i);
                    }
                    if self.conns[i].stuck {
                        self.conns[i].awaiting = Some(self.now);
                    } else {
                        to_close.push(conn);
                    }
                }
                Output::Drop { conn } => {
                    let i = self.index_of(conn);
                    let due = self.drop_due(i).unwrap_or_else(|| {
                        panic!("Drop only for a stuck connection told to close: {conn}")
                    });
                    assert!(
                        self.now >= due,
                        "{conn} dropped before its deadline ({:?} early)",
                        due - self.now
                    );
                    self.conns[i].awaiting = None;
                    to_close.push(conn);
                }
                Output::App(e) => self.event(*e),
                other => panic!("unknown output {other:?}"),
            }
        }
        for conn in to_close {
            let i = self.index_of(conn);
            if !self.conns[i].reported_closed {
                self.conns[i].reported_closed = true;
                self.input(Input::Closed { conn });
            }
        }
    }

    fn event(&mut self, e: AppEvent) {
        match e {
            AppEvent::Request { conn, req, .. } => {
                let i = self.index_of(conn);
                self.conns[i].app_pending.push(req);
            }
            AppEvent::AckResult { conn, ack, .. } => {
                *self.acks_resolved.entry((conn, ack)).or_default() += 1;
                if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                    c.server_pending.retain(|a| *a != ack);
                }
            }
            AppEvent::SessionExpired { client_id } => self.expired_got.push(client_id.to_string()),
            AppEvent::Disconnected { conn } => {
                let i = self.index_of(conn);
                assert!(self.conns[i].reported_closed, "Disconnected after Closed");
                self.conns[i].disconnected += 1;
            }
            AppEvent::Stopped => {
                assert!(self.shutdown_at.is_some(), "Stopped only after a shutdown");
                assert!(
                    self.conns.iter().all(|c| c.reported_closed),
                    "Stopped only once every connection is reported closed"
                );
                self.stopped += 1;
                assert_eq!(self.stopped, 1, "Stopped exactly once");
            }
            e @ (AppEvent::Notify { .. } | AppEvent::ProtocolViolation { .. }) => {
                self.step_events.push(e);
            }
            _ => {}
        }
    }

    /// A connection is closing: the model of `park_or_forget`.
    fn park(&mut self, i: usize) {
        let c = &self.conns[i];
        let Some(client_id) = c.client_id.clone() else {
            return;
        };
        if self.window.is_none()
            || self.max_parked == 0
            || (c.held.is_empty() && c.rooms.is_empty())
        {
            return;
        }
        let subs = c
            .held
            .iter()
            .map(|&(p, named)| {
                let interest = c
                    .interests
                    .iter()
                    .rev()
                    .find(|x| x.pattern == p && x.until.is_none())
                    .expect("a held pattern has an active interest")
                    .clone();
                (p, named, interest)
            })
            .collect();
        let rooms = c.rooms.clone();
        let ended = c
            .interests
            .iter()
            .filter(|x| x.until.is_some())
            .cloned()
            .collect();
        let bound = c.bound.is_some_and(|k| CLIENTS[k] == client_id);
        // A connection that got a principal's id while its session stayed parked: the
        // principal's session is kept, this one's forgotten.
        if self
            .parked
            .iter()
            .any(|p| p.client_id == client_id && p.bound && !bound)
        {
            return;
        }
        while self.parked.len() >= self.max_parked {
            let oldest = self.parked.remove(0);
            self.expired_want.push(oldest.client_id);
        }
        // (Otherwise a session of the same id is replaced: only when claiming closed it.)
        self.parked.retain(|p| p.client_id != client_id);
        self.parked.push(MParked {
            client_id,
            subs,
            rooms,
            ended,
            expires: self.now + self.window.unwrap(),
            bound,
        });
    }

    /// Records the connection's identity and rooms as of this step.
    fn record_state(&mut self, i: usize) {
        let step = self.step_no;
        let c = &mut self.conns[i];
        let state = (step, c.client_id.clone(), c.rooms.clone());
        match c.states.last_mut() {
            Some(last) if last.0 == step => *last = state,
            _ => c.states.push(state),
        }
    }

    fn frame(&mut self, i: usize, payload: &Bytes) {
        let c = &mut self.conns[i];
        if c.sse {
            c.decoder.feed(payload).expect("SSE output decodes");
            while let Some(item) = c.decoder.next_item() {
                let Item::Event(ev) = item else { continue };
                match ev.event_type.as_str() {
                    "tidings-gap" => {
                        let v: Value = serde_json::from_str(&ev.data).unwrap();
                        c.gaps.push(gap(&v));
                    }
                    "tidings-error" => {}
                    t if t.starts_with("tidings-") => {
                        let v: Value = serde_json::from_str(&ev.data).unwrap();
                        c.notices.push((t.to_owned(), v));
                    }
                    _ if ev.data.starts_with('p') => {
                        let cursor: Cursor = ev.last_event_id.parse().unwrap();
                        assert_eq!(cursor.epoch, EPOCH);
                        let e = &self.events[cursor.seq as usize];
                        assert_eq!(e.data, ev.data, "SSE data is the payload");
                        assert_visible(c, cursor.seq, e);
                        c.delivered.push(cursor.seq);
                    }
                    _ => c.messages_got.push(ev.data),
                }
            }
            return;
        }
        let v: Value = serde_json::from_slice(payload).expect("native frames are JSON");
        match v["type"].as_str().unwrap() {
            "event" => {
                let cursor: Cursor = v["cursor"].as_str().unwrap().parse().unwrap();
                let e = &self.events[cursor.seq as usize];
                assert_eq!(v["topic"], TOPICS[e.topic]);
                assert_eq!(v["data"], e.data.as_str());
                assert_visible(c, cursor.seq, e);
                c.delivered.push(cursor.seq);
            }
            "message" => match v["event"].as_str() {
                Some(kind) if kind.starts_with("tidings-") => {
                    c.notices.push((kind.to_owned(), v["data"].clone()));
                }
                _ => c.messages_got.push(v["data"].as_str().unwrap().to_owned()),
            },
            "gap" => c.gaps.push(gap(&v)),
            "ok" | "error" | "pong" => {
                if let Some(id) = v["id"].as_u64() {
                    assert!(
                        c.replies_due.contains(&id),
                        "reply {v} answers a request that was made"
                    );
                    *c.replies.entry(id).or_default() += 1;
                    let answer = v["code"].as_str().unwrap_or("ok").to_owned();
                    c.answers.insert(id, answer);
                }
            }
            "request" => c.server_pending.push(v["id"].as_u64().unwrap()),
            "welcome" | "ping" => {}
            other => panic!("unknown frame type {other}"),
        }
    }

    fn send_native(&mut self, i: usize, frame: String, with_id: Option<u64>) {
        if let Some(id) = with_id {
            self.conns[i].replies_due.insert(id);
        }
        let cmd = native::decode(&Bytes::from(frame), &self.broker.config().limits);
        let conn = self.conns[i].id;
        self.input(Input::Command { conn, cmd });
    }

    fn req_id(&mut self, i: usize) -> u64 {
        self.conns[i].next_req += 1;
        self.conns[i].next_req
    }

    /// Claims `client_id` for connection `i`: predicts the outcome of the claim (refused,
    /// silently not claimed, claimed, taken over from a holder it closes), models the restore
    /// of a parked session, and checks the answer and the `tidings-session` notice. Returns
    /// whether it holds the id.
    fn identify(&mut self, i: usize, client_id: &str, claim: Claim) -> bool {
        if !self.conns[i].open {
            return false;
        }
        let bound_to = |c: &MConn| c.bound.is_some_and(|k| CLIENTS[k] == client_id);
        let granted = self.conns[i].bound.is_none() || bound_to(&self.conns[i]);
        let holder = (0..self.conns.len()).find(|&j| {
            j != i && self.conns[j].open && self.conns[j].client_id.as_deref() == Some(client_id)
        });
        // A principal's id goes only to the principal (also while its session is parked), who
        // claims it back from a wildcard holder; other ids to anyone asking to take over.
        let me_bound = bound_to(&self.conns[i]);
        let kept = !me_bound
            && self
                .parked
                .iter()
                .any(|p| p.client_id == client_id && p.bound);
        let answer = match (granted, holder, claim) {
            (false, _, _) => Some("forbidden"),
            (true, None, Claim::IfFree) if kept => None,
            (true, None, _) if kept => Some("client_id_taken"),
            (true, None, _) => Some("ok"),
            (true, Some(j), _) if me_bound && !bound_to(&self.conns[j]) => Some("ok"),
            (true, Some(_), Claim::IfFree) => None,
            (true, Some(j), Claim::TakeOver) if me_bound || !bound_to(&self.conns[j]) => Some("ok"),
            _ => Some("client_id_taken"),
        };
        let got = answer == Some("ok");
        // Authentication's claims carry no request id.
        let req = (!self.conns[i].sse && claim != Claim::IfFree).then(|| self.req_id(i));
        if let Some(id) = req {
            self.conns[i].replies_due.insert(id);
        }
        let mut restored = None;
        let mut taken_from = None;
        if got {
            if let Some(j) = holder {
                // Closed with `client_id_taken`: its session is parked (for this connection if
                // the same principal's).
                let c = &mut self.conns[j];
                c.open = false;
                c.closed_step = Some(self.step_no);
                self.park(j);
                taken_from = Some(j);
            }
            self.conns[i].client_id = Some(client_id.to_owned());
            // An `ok` that takes the queue past twice its limit closes the connection as it is
            // answered, before its parked session could come back: the broker then parks the
            // connection's own session under the id (the parked one is replaced).
            let closes_on_answer = req.is_some_and(|id| {
                let ok = format!("{{\"type\":\"ok\",\"id\":{id}}}").len();
                let c = &self.conns[i];
                c.unflushed > 0 && c.unflushed + ok > 2 * self.max_queued
            });
            if let Some(k) = self
                .parked
                .iter()
                .position(|p| p.client_id == client_id && p.bound == me_bound)
                .filter(|_| !closes_on_answer)
            {
                let parked = self.parked.remove(k);
                restored = Some(self.restore(i, parked));
            }
            self.record_state(i);
        }
        let seen = self.conns[i].notices.len();
        let conn = self.conns[i].id;
        self.step_events.clear();
        self.input(Input::Command {
            conn,
            cmd: Command::Identify {
                req,
                client_id: name("client_id", client_id),
                claim,
            },
        });
        if let Some(j) = taken_from {
            assert_eq!(
                self.conns[j].close_reason,
                Some(Some(ErrorCode::ClientIdTaken)),
                "conn {conn} took {client_id} over from conn {}",
                self.conns[j].id
            );
        }
        if answer.is_none() {
            assert!(
                self.step_events.is_empty(),
                "a claim of a held id if free is silent: {:?}",
                self.step_events
            );
        }
        let c = &self.conns[i];
        // A connection the broker closed meanwhile may have lost its answer.
        if let Some(id) = req.filter(|_| !c.dropped_by_broker) {
            assert_eq!(
                c.answers.get(&id).map(String::as_str),
                answer,
                "conn {conn} identifies as {client_id} ({claim:?})"
            );
        }
        let sessions: Vec<&Value> = c.notices[seen..]
            .iter()
            .filter(|(kind, _)| kind == "tidings-session")
            .map(|(_, v)| v)
            .collect();
        // Streams are always told their session; WebSockets when subscriptions came back.
        let due = got
            && if c.sse {
                self.window.is_some() || !self.catalog.is_empty()
            } else {
                restored
                    .as_ref()
                    .is_some_and(|r: &Vec<usize>| !r.is_empty())
            };
        // (When answering closed it, the notice may or may not have gone first.)
        assert!(
            c.dropped_by_broker || sessions.len() == usize::from(due),
            "conn {conn} identifying as {client_id}: tidings-session notices {sessions:?}, due: {due}"
        );
        if let Some(v) = sessions.first() {
            assert_eq!(v["resumed"], restored.is_some(), "conn {conn}: {v}");
            let mut got: Vec<&str> = v["subscriptions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            let mut want: Vec<&str> = c.held.iter().map(|(p, _)| PATTERNS[*p]).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "conn {conn}: the session's subscriptions");
        }
        got
    }

    /// The model of `Broker::restore`: patterns not held yet come back as interests inherited
    /// with their chain; rooms come back.
    fn restore(&mut self, i: usize, parked: MParked) -> Vec<usize> {
        let c = &mut self.conns[i];
        let mut restored = Vec::new();
        for (p, named, interest) in parked.subs {
            if c.held.iter().any(|(h, _)| *h == p) {
                continue; // held patterns keep their own position
            }
            c.held.push((p, named));
            let mut chain = interest.chain;
            chain.push(i);
            let dup_ok_after = match (interest.dup_ok_after, c.resumed_from) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            c.interests.push(Interest {
                pattern: p,
                after: interest.after,
                until: None,
                chain,
                dup_ok_after,
                repeat_ok: !c.resubscribe_allowed,
                since: c.delivered.len(),
            });
            restored.push(p);
        }
        for mut interest in parked.ended {
            interest.chain.push(i);
            interest.since = c.delivered.len();
            c.interests.push(interest);
        }
        if !restored.is_empty() {
            c.rewinds.push(c.delivered.len());
        }
        for r in parked.rooms {
            if !c.rooms.contains(&r) {
                c.rooms.push(r);
            }
        }
        restored
    }

    fn close(&mut self, i: usize) {
        self.park(i);
        self.conns[i].open = false;
        self.conns[i].reported_closed = true;
        self.conns[i].closed_step = Some(self.step_no);
        let conn = self.conns[i].id;
        self.input(Input::Closed { conn });
    }

    /// Advances the clock, stopping just before and at each deadline of a stuck connection, so
    /// a `Drop` must come exactly at its deadline.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = (0..self.conns.len())
                .filter_map(|i| self.drop_due(i))
                .filter(|d| *d > self.now && *d <= end)
                .min();
            let Some(due) = next else { break };
            let before = due - Duration::from_millis(1);
            if before > self.now {
                self.tick_to(before);
            }
            self.tick_to(due);
        }
        self.tick_to(end);
    }

    /// Sets the clock: parked sessions whose window is over expire.
    fn tick_to(&mut self, now: Instant) {
        self.now = now;
        // One window for all: parking order is expiry order, as the broker reports them.
        let (gone, kept): (Vec<MParked>, _) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.expires <= now);
        self.parked = kept;
        self.expired_want
            .extend(gone.into_iter().map(|p| p.client_id));
        self.broker.handle_timeout(self.now);
        self.drain();
        self.check_drops();
    }

    /// Every stuck connection whose deadline passed was dropped (and is reported closed).
    fn check_drops(&self) {
        for (i, c) in self.conns.iter().enumerate() {
            if let Some(due) = self.drop_due(i) {
                assert!(due > self.now, "{} not dropped at its deadline", c.id);
                let info = self.broker.conn(c.id).expect("known until reported closed");
                assert!(info.closing);
            }
        }
    }

    fn step(&mut self, op: &Op) {
        self.step_no += 1;
        self.step_events.clear();
        // MODEL_TRACE=1 prints each op: shrunk cases index connections modulo the open ones,
        // so a trace is the quickest way to read one.
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("step {}: {op:?}", self.step_no);
        }
        match op.clone() {
            Op::Open {
                sse,
                shared,
                bound,
                claim,
                stuck,
            } => {
                let id = ConnId(self.next_conn);
                self.next_conn += 1;
                self.conns.push(MConn {
                    id,
                    sse,
                    open: true,
                    bound: shared.filter(|_| bound),
                    stuck,
                    awaiting: None,
                    reported_closed: false,
                    closes: 0,
                    close_reason: None,
                    disconnected: 0,
                    notifies: 0,
                    dropped_by_broker: false,
                    held: Vec::new(),
                    interests: Vec::new(),
                    resubscribe_allowed: true,
                    delivered: Vec::new(),
                    rewinds: Vec::new(),
                    gaps: Vec::new(),
                    messages_expected: Vec::new(),
                    messages_got: Vec::new(),
                    unflushed: 0,
                    decoder: Decoder::new(),
                    next_req: 0,
                    replies_due: HashSet::new(),
                    replies: HashMap::new(),
                    app_pending: Vec::new(),
                    server_pending: Vec::new(),
                    own_id: format!("c{}", id.0),
                    client_id: None,
                    rooms: Vec::new(),
                    states: Vec::new(),
                    closed_step: None,
                    resumed_from: None,
                    notices: Vec::new(),
                    answers: HashMap::new(),
                });
                let i = self.conns.len() - 1;
                self.record_state(i);
                let bound = self.conns[i].bound;
                self.input(open_input(id, sse, bound));
                if self.shutdown_at.is_some() {
                    assert_eq!(
                        self.conns[i].close_reason,
                        Some(Some(ErrorCode::ShuttingDown)),
                        "connections opened after a shutdown are closed at once"
                    );
                }
                // Every connection not bound to an id holds some client id, so direct messages
                // can reach it.
                let claimed = shared.is_some_and(|k| self.identify(i, CLIENTS[k], CLAIMS[claim]));
                if !claimed && bound.is_none() {
                    let own = self.conns[i].own_id.clone();
                    self.identify(i, &own, Claim::Explicit);
                }
            }
            Op::Close(k) => {
                let Some(i) = self.pick(k) else { return };
                self.close(i);
            }
            Op::AppClose(k) => {
                let Some(i) = self.pick(k) else { return };
                let conn = self.conns[i].id;
                let reply = self
                    .broker
                    .handle_app(self.now, AppOp::Close { conn, reason: None });
                assert_eq!(reply, AppReply::Done);
                self.drain();
                assert_eq!(
                    self.conns[i].close_reason,
                    Some(None),
                    "the application closes {conn} normally"
                );
            }
            Op::Identify { conn, who, claim } => {
                let Some(i) = self.pick(conn) else { return };
                let client_id = CLIENTS
                    .get(who)
                    .map_or_else(|| self.conns[i].own_id.clone(), |s| (*s).to_owned());
                self.identify(i, &client_id, CLAIMS[claim]);
            }
            Op::Notify(k) => {
                let Some(i) = self.pick(k) else { return };
                let conn = self.conns[i].id;
                let queued = self.conns[i].unflushed;
                self.step_events.clear();
                self.input(Input::Command {
                    conn,
                    cmd: Command::Notify {
                        event: name("event", "n"),
                        payload: Payload::empty(),
                    },
                });
                let c = &mut self.conns[i];
                let runs = c.notifies < self.max_notifies;
                if runs {
                    c.notifies += 1;
                }
                let ok = match self.step_events.as_slice() {
                    [AppEvent::Notify { conn: c, .. }] => runs && *c == conn,
                    [AppEvent::ProtocolViolation { conn: c, error }] => {
                        !runs && *c == conn && error.code == ErrorCode::LimitReached
                    }
                    _ => false,
                };
                assert!(
                    ok,
                    "conn {conn}: {} of {} client events running; got {:?}",
                    self.conns[i].notifies, self.max_notifies, self.step_events
                );
                assert_eq!(
                    self.conns[i].unflushed, queued,
                    "client events are never answered"
                );
            }
            Op::NotifyDone(k) => {
                if self.conns.is_empty() {
                    return;
                }
                let i = k % self.conns.len();
                let conn = self.conns[i].id;
                let reply = self.broker.handle_app(self.now, AppOp::NotifyDone { conn });
                self.drain();
                assert_eq!(
                    reply,
                    AppReply::Bool(!self.conns[i].reported_closed),
                    "notify_done({conn}) is known until the connection is reported closed"
                );
                let c = &mut self.conns[i];
                c.notifies = c.notifies.saturating_sub(1);
            }
            Op::Declare { topic: t, vis } => {
                let (v, visibility) = match vis {
                    0 => (Vis::Public, Visibility::Public),
                    k if k <= CLIENTS.len() => (
                        Vis::Private(k - 1),
                        Visibility::Private(name("client_id", CLIENTS[k - 1])),
                    ),
                    k => {
                        let r = k - 1 - CLIENTS.len();
                        (Vis::Group(r), Visibility::Group(name("room", ROOMS[r])))
                    }
                };
                let changed = self.catalog.insert(t, v) != Some(v);
                assert_eq!(
                    self.broker.declare_topic(self.now, topic(t), visibility),
                    changed
                );
                self.drain();
            }
            Op::RemoveTopic(t) => {
                let declared = self.catalog.remove(&t).is_some();
                if declared && let Some(p) = PATTERNS.iter().position(|p| *p == TOPICS[t]) {
                    // Every exact subscription to it ends, connected or parked.
                    let head = self.head();
                    for c in self.conns.iter_mut().filter(|c| c.open) {
                        end_interest(c, p, head);
                    }
                    for parked in &mut self.parked {
                        while let Some(k) = parked.subs.iter().position(|(q, _, _)| *q == p) {
                            let (_, _, mut interest) = parked.subs.remove(k);
                            interest.until = Some(head);
                            parked.ended.push(interest);
                        }
                    }
                }
                assert_eq!(self.broker.remove_topic(self.now, &topic(t)), declared);
                self.drain();
            }
            Op::Subscribe {
                conn,
                patterns,
                from,
                named,
            } => {
                let Some(i) = self.pick(conn) else { return };
                let head = self.head();
                let c = &self.conns[i];
                let from = if c.resubscribe_allowed { from } else { None };
                let cursor = from.map(|f| match f {
                    From::Back(n) => Cursor::new(EPOCH, head.saturating_sub(n)),
                    From::OtherEpoch => Cursor::new(EPOCH + 1, 3),
                    From::Ahead => Cursor::new(EPOCH, head + 5),
                });
                let first_retained = if head == 0 {
                    1
                } else {
                    (head + 1).saturating_sub(self.max_events).max(1)
                };
                let valid = cursor.is_some_and(|c| c.seq <= head && c.epoch == EPOCH);
                let after = match cursor {
                    None => head,
                    Some(c) if valid => c.seq,
                    Some(_) => first_retained - 1,
                };
                // An exact subscription to a declared topic it cannot see is refused as a whole.
                let refused = patterns.iter().any(|p| {
                    exact_topic(*p)
                        .and_then(|t| self.catalog.get(&t))
                        .is_some_and(|v| !sees(c.client_id.as_deref(), &c.rooms, Some(*v)))
                });
                let mut new: Vec<usize> = patterns
                    .iter()
                    .copied()
                    .filter(|p| !c.held.iter().any(|(h, _)| h == p))
                    .collect();
                new.sort_unstable();
                new.dedup();
                let c = &mut self.conns[i];
                if !refused && cursor.is_some() && !new.is_empty() {
                    c.rewinds.push(c.delivered.len());
                }
                let req = (!c.sse).then(|| self.req_id(i));
                let sub = Subscribe {
                    req,
                    patterns: patterns.iter().map(|p| pattern(*p)).collect(),
                    from: cursor,
                    name: named.then(|| name("name", "worker")),
                };
                if let Some(id) = req {
                    self.conns[i].replies_due.insert(id);
                }
                let conn = self.conns[i].id;
                self.input(Input::Command {
                    conn,
                    cmd: Command::Subscribe(sub),
                });
                // Recorded after the input: if answering closes the connection (its queue is
                // over twice the limit), the broker parks its session before the new patterns.
                let c = &mut self.conns[i];
                if !refused {
                    // Where the broker starts; a session claimed later replays from there.
                    let start = if !valid && new.is_empty() {
                        head
                    } else {
                        after
                    };
                    if cursor.is_some() && start < head {
                        c.resumed_from = Some(c.resumed_from.map_or(start, |r| r.min(start)));
                    }
                    for p in &new {
                        c.held.push((*p, named));
                        c.interests.push(Interest {
                            pattern: *p,
                            after,
                            until: None,
                            chain: vec![i],
                            dup_ok_after: None,
                            repeat_ok: false,
                            since: c.delivered.len(),
                        });
                    }
                }
                if let Some(id) = req.filter(|_| !self.conns[i].dropped_by_broker) {
                    let want = if refused { "forbidden" } else { "ok" };
                    assert_eq!(
                        self.conns[i].answers.get(&id).map(String::as_str),
                        Some(want),
                        "conn {conn} subscribes to {patterns:?}"
                    );
                }
            }
            Op::Unsubscribe { conn, pattern: p } => {
                let Some(i) = self.pick(conn) else { return };
                let head = self.head();
                let c = &mut self.conns[i];
                end_interest(c, p, head);
                let conn = c.id;
                self.input(Input::Command {
                    conn,
                    cmd: Command::Unsubscribe {
                        req: None,
                        patterns: vec![pattern(p)],
                    },
                });
            }
            Op::Publish {
                conn,
                topic: t,
                big,
            } => {
                let seq = self.head() + 1;
                let data = format!(
                    "p{seq}{}",
                    if big { "x".repeat(300) } else { String::new() }
                );
                let scope = self.catalog.get(&t).copied().filter(|v| *v != Vis::Public);
                self.events.push(MEvent {
                    topic: t,
                    data: data.clone(),
                    scope,
                    step: self.step_no,
                });
                let payload = Payload::text(data.clone()).unwrap();
                match conn
                    .and_then(|k| self.pick(k))
                    .filter(|i| !self.conns[*i].sse)
                {
                    Some(i) => {
                        let id = self.req_id(i);
                        let frame = format!(
                            r#"{{"op":"publish","id":{id},"topic":"{}","data":"{data}"}}"#,
                            TOPICS[t]
                        );
                        self.send_native(i, frame, Some(id));
                    }
                    None => {
                        let cursor = self
                            .broker
                            .publish(self.now, topic(t), None, payload)
                            .cursor();
                        assert_eq!(cursor, Some(Cursor::new(EPOCH, seq)));
                        self.drain();
                    }
                }
            }
            Op::SendDirect { conn, to } => {
                let (Some(i), Some(j)) = (self.pick(conn), self.pick(to)) else {
                    return;
                };
                if self.conns[i].sse {
                    return;
                }
                // (A connection bound to an id held by another holds none.)
                let Some(to) = self.conns[j].client_id.clone() else {
                    return;
                };
                let data = self.message(&[j]);
                let id = self.req_id(i);
                let frame = format!(r#"{{"op":"send","id":{id},"to":"{to}","data":"{data}"}}"#);
                self.send_native(i, frame, Some(id));
            }
            Op::SendNamed { conn, topic: t } => {
                let Some(i) = self.pick(conn) else { return };
                if self.conns[i].sse {
                    return;
                }
                let targets: Vec<usize> = (0..self.conns.len())
                    .filter(|j| self.conns[*j].open)
                    .filter(|j| {
                        self.conns[*j]
                            .held
                            .iter()
                            .any(|(p, named)| *named && pattern(*p).matches(TOPICS[t]))
                    })
                    .collect();
                let data = self.message(&targets);
                let id = self.req_id(i);
                let frame = format!(
                    r#"{{"op":"send","id":{id},"topic":"{}","name":"worker","data":"{data}"}}"#,
                    TOPICS[t]
                );
                self.send_native(i, frame, Some(id));
            }
            Op::Join { conn, room } => {
                let Some(i) = self.pick(conn) else { return };
                let fresh = !self.conns[i].rooms.contains(&room);
                if fresh {
                    self.conns[i].rooms.push(room);
                    self.record_state(i);
                }
                let id = self.conns[i].id;
                assert_eq!(self.broker.join(id, name("room", ROOMS[room])), Ok(fresh));
                self.drain();
            }
            Op::Leave { conn, room } => {
                let Some(i) = self.pick(conn) else { return };
                let was = self.conns[i].rooms.contains(&room);
                self.conns[i].rooms.retain(|r| *r != room);
                self.record_state(i);
                let id = self.conns[i].id;
                assert_eq!(self.broker.leave(id, &name("room", ROOMS[room])), Ok(was));
                self.drain();
            }
            Op::EmitRoom { room } => {
                let name = Name::parse("room", ROOMS[room], 64).unwrap();
                let members: Vec<usize> = (0..self.conns.len())
                    .filter(|i| self.conns[*i].open && self.conns[*i].rooms.contains(&room))
                    .collect();
                let ids: Vec<ConnId> = members.iter().map(|i| self.conns[*i].id).collect();
                assert_eq!(self.broker.room_members(&name), ids, "members of {name}");
                let data = self.message(&members);
                let n = self
                    .broker
                    .emit_room(self.now, &name, None, &Payload::text(data).unwrap());
                assert_eq!(n, members.len());
                self.drain();
            }
            Op::ClientRequest(k) => {
                let Some(i) = self.pick(k).filter(|i| !self.conns[*i].sse) else {
                    return;
                };
                let id = self.req_id(i);
                self.send_native(
                    i,
                    format!(r#"{{"op":"request","id":{id},"event":"q","data":1}}"#),
                    Some(id),
                );
            }
            Op::AppReply(k) => {
                let Some(i) = self.pick(k) else { return };
                if let Some(req) = self.conns[i].app_pending.pop() {
                    let conn = self.conns[i].id;
                    self.broker
                        .reply(self.now, conn, req, Ok(Payload::json("2").unwrap()));
                    self.drain();
                }
            }
            Op::ServerRequest(k) => {
                let Some(i) = self.pick(k).filter(|i| !self.conns[*i].sse) else {
                    return;
                };
                let conn = self.conns[i].id;
                let ack = self.broker.request(
                    self.now,
                    conn,
                    &Name::parse("e", "ask", 8).unwrap(),
                    &Payload::empty(),
                    Some(Duration::from_secs(4)),
                );
                if let Ok(ack) = ack {
                    self.acks_sent.push((conn, ack));
                }
                self.drain();
            }
            Op::ClientReply(k) => {
                let Some(i) = self.pick(k) else { return };
                if let Some(ack) = self.conns[i].server_pending.pop() {
                    // The ack may have timed out already: then the answer is an unknown_request error.
                    self.send_native(
                        i,
                        format!(r#"{{"op":"reply","id":{ack},"data":"yes"}}"#),
                        None,
                    );
                }
            }
            Op::Flush { conn, all } => {
                let targets: Vec<usize> = if all {
                    (0..self.conns.len()).collect()
                } else {
                    self.pick(conn).into_iter().collect()
                };
                for i in targets {
                    self.flush(i);
                }
            }
            Op::Tick(ms) => self.advance(Duration::from_millis(ms)),
            Op::Garbage { conn, bytes } => {
                let Some(i) = self.pick(conn).filter(|i| !self.conns[*i].sse) else {
                    return;
                };
                let conn = self.conns[i].id;
                let cmd = native::decode(&Bytes::from(bytes), &self.broker.config().limits);
                let had_id = matches!(&cmd, Command::Invalid { req: Some(_), .. })
                    || !matches!(cmd, Command::Invalid { .. });
                if had_id {
                    return; // random bytes that happen to be a valid frame or carry an id: skip
                }
                self.input(Input::Command { conn, cmd });
            }
        }
        self.check_step();
    }

    /// The application shuts the broker down: everyone is told to close with `shutting_down`.
    fn shutdown(&mut self) {
        self.step_no += 1;
        if std::env::var_os("MODEL_TRACE").is_some() {
            eprintln!("step {}: Shutdown", self.step_no);
        }
        self.shutdown_at = Some(self.now);
        let open: Vec<usize> = (0..self.conns.len())
            .filter(|i| self.conns[*i].open)
            .collect();
        let reply = self.broker.handle_app(self.now, AppOp::Shutdown);
        assert_eq!(reply, AppReply::Done);
        self.drain();
        for i in open {
            assert_eq!(
                self.conns[i].close_reason,
                Some(Some(ErrorCode::ShuttingDown)),
                "shutdown closes {}",
                self.conns[i].id
            );
        }
        self.check_step();
    }

    fn message(&mut self, targets: &[usize]) -> String {
        self.next_msg += 1;
        let data = format!("m{}", self.next_msg);
        for &j in targets {
            self.conns[j].messages_expected.push(data.clone());
        }
        data
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.open || c.unflushed == 0 {
            return;
        }
        let bytes = std::mem::take(&mut c.unflushed);
        let conn = c.id;
        self.input(Input::Flushed { conn, bytes });
    }

    fn check_step(&self) {
        assert_eq!(
            self.expired_got, self.expired_want,
            "sessions expire at the end of the window, or oldest first past max_parked_sessions"
        );
        let mut parked: Vec<&str> = self.parked.iter().map(|p| p.client_id.as_str()).collect();
        parked.sort_unstable();
        let got: Vec<&str> = self
            .broker
            .parked_sessions()
            .into_iter()
            .map(Name::as_str)
            .collect();
        assert_eq!(got, parked, "parked sessions");
        // Who holds each id: the shared ones, and every open connection's.
        let ids = CLIENTS
            .iter()
            .map(|s| (*s).to_owned())
            .chain(self.conns.iter().filter_map(|c| c.client_id.clone()));
        for client_id in ids {
            let holder = self
                .conns
                .iter()
                .find(|c| c.open && c.client_id.as_deref() == Some(&client_id))
                .map(|c| c.id);
            assert_eq!(
                self.broker.client_conn(&name("client_id", &client_id)),
                holder,
                "the holder of {client_id}"
            );
        }
        self.check_drops();
        if self.shutdown_at.is_some() && self.conns.iter().all(|c| c.reported_closed) {
            assert_eq!(
                self.stopped, 1,
                "Stopped once the last connection is closed"
            );
        }
        if let Some(t) = self.broker.poll_timeout() {
            assert!(t >= self.now, "poll_timeout is never in the past");
        }
        for c in self.conns.iter().filter(|c| c.open) {
            let info = self.broker.conn(c.id).expect("open connections are known");
            assert!(
                info.queued_bytes <= 2 * self.max_queued,
                "queue bounded: {}",
                info.queued_bytes
            );
            assert_eq!(
                info.queued_bytes, c.unflushed,
                "the broker counts exactly what it handed out"
            );
        }
    }

    /// Drains every transport, lets every timer run out, then checks the whole run.
    fn finish(&mut self) {
        for _ in 0..1000 {
            if self.conns.iter().all(|c| !c.open || c.unflushed == 0) {
                break;
            }
            for i in 0..self.conns.len() {
                self.flush(i);
            }
        }
        for _ in 0..3 {
            self.advance(Duration::from_secs(6));
            for i in 0..self.conns.len() {
                self.flush(i);
            }
        }
        self.check_step();
        for c in &self.conns {
            assert!(c.awaiting.is_none(), "{} never dropped", c.id);
            let closed = usize::from(c.reported_closed);
            assert_eq!(c.disconnected, closed, "{}: Disconnected once closed", c.id);
        }
        let head = self.head();
        for c in &self.conns {
            check_conn(c, &self.conns, &self.events, head, self.max_events);
        }
        for ack in &self.acks_sent {
            assert_eq!(
                self.acks_resolved.get(ack),
                Some(&1),
                "server request {ack:?} resolved exactly once"
            );
        }
    }
}

/// Ends the connection's subscription to pattern `p` (unsubscribed, or its topic removed).
fn end_interest(c: &mut MConn, p: usize, head: u64) {
    if let Some(j) = c.held.iter().position(|(h, _)| *h == p) {
        c.held.remove(j);
        c.resubscribe_allowed = false;
        for interest in c
            .interests
            .iter_mut()
            .filter(|x| x.pattern == p && x.until.is_none())
        {
            interest.until = Some(head);
        }
    }
}

/// Whether the event stayed visible to every connection of the chain from its publication on
/// (completeness is owed only then: visibility is checked when the event is handed out).
fn visible_throughout(conns: &[MConn], chain: &[usize], e: &MEvent) -> bool {
    if e.scope.is_none() {
        return true;
    }
    chain.iter().all(|&x| {
        let c = &conns[x];
        if c.closed_step.is_some_and(|s| s < e.step) {
            return true;
        }
        c.states.iter().enumerate().all(|(k, (_, id, rooms))| {
            let relevant = c.states.get(k + 1).is_none_or(|next| next.0 > e.step);
            !relevant || sees(id.as_deref(), rooms, e.scope)
        })
    })
}

/// A delivery must be visible to the connection's identity and rooms when it arrives.
fn assert_visible(c: &MConn, seq: u64, e: &MEvent) {
    assert!(
        sees(c.client_id.as_deref(), &c.rooms, e.scope),
        "conn {} (client id {:?}, rooms {:?}) got event {seq} of a topic it cannot see ({:?})",
        c.id,
        c.client_id,
        c.rooms,
        e.scope
    );
}

fn gap(v: &Value) -> GapSeen {
    GapSeen {
        from: v["from"].as_str().map(|s| s.parse().unwrap()),
        to: v["to"].as_str().unwrap().parse().unwrap(),
        reason: v["reason"].as_str().unwrap().to_owned(),
        dropped: v["dropped_messages"].as_u64().unwrap(),
    }
}

fn check_conn(c: &MConn, conns: &[MConn], events: &[MEvent], head: u64, max_events: u64) {
    let wants = |x: &Interest, seq: u64| {
        pattern(x.pattern).matches(TOPICS[events[seq as usize].topic])
            && seq > x.after
            && x.until.is_none_or(|u| seq <= u)
    };
    let wanted = |seq: u64, active_only: bool| {
        c.interests
            .iter()
            .any(|x| (!active_only || x.until.is_none()) && wants(x, seq))
    };
    // Sound: only wanted events, each once, in order between resume points.
    let mut seen = HashSet::new();
    for (k, &seq) in c.delivered.iter().enumerate() {
        assert!(
            wanted(seq, false),
            "conn {} got unwanted event {seq}; interests {:?}",
            c.id,
            c.interests
        );
        let repeat_ok = c.interests.iter().any(|x| x.repeat_ok && wants(x, seq));
        assert!(
            seen.insert(seq) || repeat_ok,
            "conn {} got event {seq} twice: {:?}",
            c.id,
            c.delivered
        );
        if k > 0 && !c.rewinds.contains(&k) {
            assert!(
                seq > c.delivered[k - 1],
                "conn {} order: {:?} (rewinds {:?})",
                c.id,
                c.delivered,
                c.rewinds
            );
        }
        // A claimed session does not repeat what an earlier connection of it received (unless
        // this connection asked for a replay from before).
        for x in c
            .interests
            .iter()
            .filter(|x| x.chain.len() > 1 && x.since <= k && wants(x, seq))
        {
            let before = x.chain[..x.chain.len() - 1]
                .iter()
                .find(|&&j| conns[j].delivered.contains(&seq));
            // Another subscription of this connection that never saw that connection may want it.
            let other = before.is_some_and(|j| {
                c.interests
                    .iter()
                    .any(|y| wants(y, seq) && !y.chain.contains(j))
            });
            assert!(
                before.is_none() || other || x.dup_ok_after.is_some_and(|r| seq > r),
                "conn {} got event {seq} that conn {} of its session already got; interest {x:?}",
                c.id,
                conns[*before.unwrap()].id
            );
        }
    }
    // Gaps only where something was really lost.
    let evicted_up_to = head.saturating_sub(max_events);
    for g in &c.gaps {
        let plausible = g.dropped > 0
            || g.reason == "epoch"
            || g.from.is_some_and(|f| f.seq < evicted_up_to.min(g.to.seq));
        assert!(
            plausible,
            "conn {} got a gap {g:?} with nothing evicted (evicted up to {evicted_up_to})",
            c.id
        );
    }
    if !c.open || c.dropped_by_broker {
        return;
    }
    // Complete: every event of an active interest arrived at some connection of the chains
    // that want it, or a gap notice there covers it. All chains count: subscriptions remember
    // what they delivered (or considered, when it was invisible then) on every connection of
    // their session, and a connection may have claimed more than one session.
    for seq in 1..=head {
        let e = &events[seq as usize];
        let Some(x) = c
            .interests
            .iter()
            .find(|x| x.until.is_none() && wants(x, seq))
        else {
            continue;
        };
        let mut chain: Vec<usize> = c
            .interests
            .iter()
            .filter(|y| wants(y, seq))
            .flat_map(|y| y.chain.iter().copied())
            .collect();
        chain.sort_unstable();
        chain.dedup();
        if !visible_throughout(conns, &chain, e) {
            continue;
        }
        let got = chain.iter().any(|&j| conns[j].delivered.contains(&seq));
        let covered = chain
            .iter()
            .flat_map(|&j| &conns[j].gaps)
            .any(|g| seq <= g.to.seq && g.from.is_none_or(|f| f.epoch != EPOCH || f.seq < seq));
        assert!(
            got || covered,
            "conn {} silently lost event {seq} ({:?}): delivered {:?}, gaps {:?}, interest {x:?}",
            c.id,
            e.scope,
            c.delivered,
            c.gaps
        );
    }
    // Messages: what arrived was sent to it; what did not is counted in gap notices.
    let mut expected = c.messages_expected.clone();
    for m in &c.messages_got {
        let i = expected
            .iter()
            .position(|e| e == m)
            .unwrap_or_else(|| panic!("conn {} got message {m} not sent to it", c.id));
        expected.swap_remove(i);
    }
    let dropped: u64 = c.gaps.iter().map(|g| g.dropped).sum();
    assert_eq!(
        expected.len() as u64,
        dropped,
        "conn {}: lost messages are all announced",
        c.id
    );
    // Every request with an id got exactly one reply.
    for id in &c.replies_due {
        assert_eq!(
            c.replies.get(id),
            Some(&1),
            "conn {} request {id}: exactly one reply",
            c.id
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 4096, ..ProptestConfig::default() })]

    #[test]
    fn broker_matches_model(
        ops in prop::collection::vec(op(), 1..120),
        max_events in 1..12u64,
        max_queued in 250..2500usize,
        disconnect_b in any::<bool>(),
        window_ms in prop::option::weighted(0.8, 1000..8000u64),
        max_parked in 1..4usize,
        close_grace_ms in 1..4000u64,
        shutdown_grace_ms in 1..6000u64,
        max_notifies in 1..4usize,
        // How many ops before the end the application shuts down.
        shutdown in prop::option::weighted(0.25, 0..25usize),
    ) {
        let params = Params {
            max_events,
            max_queued,
            disconnect_b,
            window: window_ms.map(Duration::from_millis),
            max_parked,
            close_grace: Duration::from_millis(close_grace_ms),
            shutdown_grace: Duration::from_millis(shutdown_grace_ms),
            max_notifies,
        };
        let mut h = Harness::new(&params);
        let shutdown_at = shutdown.map(|k| ops.len().saturating_sub(k));
        for (n, op) in ops.iter().enumerate() {
            if shutdown_at == Some(n) {
                h.shutdown();
            }
            h.step(op);
        }
        if shutdown_at == Some(ops.len()) {
            h.shutdown();
        }
        h.finish();
    }
}

/// A stranger (any client id) asks for a principal's id while the principal's session is
/// parked: refused (the id is kept for her); it closes with a session of its own; the
/// principal's session must stay (not evicted, not replaced by the stranger's), and come back
/// to the principal.
#[test]
fn principal_session_outlives_a_stranger_holding_its_id() {
    let open = |bound| Op::Open {
        sse: false,
        shared: Some(2),
        bound,
        claim: 0,
        stuck: false,
    };
    let subscribe = |pattern| Op::Subscribe {
        conn: 0,
        patterns: vec![pattern],
        from: None,
        named: false,
    };
    for max_parked in [2, 1] {
        let mut h = Harness::new(&Params {
            max_events: 8,
            max_queued: 2500,
            disconnect_b: false,
            window: Some(Duration::from_secs(5)),
            max_parked,
            close_grace: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
            max_notifies: 1,
        });
        let ops = [
            open(true),
            subscribe(0),
            Op::Close(0),
            open(false),
            subscribe(1),
            Op::Close(0),
            open(true),
        ];
        for op in &ops {
            h.step(op);
        }
        h.finish();
    }
}

/// A case CI's longer run found (2,000 cases): an id taken over (`TakeOver`) twice in a row
/// by the same connection, with parked sessions around.
#[test]
fn a_connection_taking_over_two_ids_in_a_row_parks_what_the_model_parks() {
    let open = |shared: Option<usize>| Op::Open {
        sse: false,
        shared,
        bound: false,
        claim: 0,
        stuck: false,
    };
    let sub = |conn: usize, p: usize| Op::Subscribe {
        conn,
        patterns: vec![p],
        from: None,
        named: false,
    };
    let ops = vec![
        open(None),
        open(Some(1)),
        open(Some(0)),
        Op::ClientReply(0),
        Op::Close(0),
        sub(1, 0),
        Op::Join { conn: 0, room: 0 },
        Op::Close(1),
        Op::Declare { topic: 0, vis: 1 },
        Op::Tick(0),
        Op::Identify {
            conn: 0,
            who: 3,
            claim: 0,
        },
        open(None),
        open(None),
        Op::Close(1),
        sub(0, 0),
        Op::RemoveTopic(1),
        Op::RemoveTopic(1),
        sub(2, 0),
        Op::Notify(0),
        Op::Identify {
            conn: 0,
            who: 1,
            claim: 0,
        },
        Op::Join { conn: 0, room: 0 },
        open(None),
        Op::Publish {
            conn: Some(1),
            topic: 0,
            big: false,
        },
        Op::Close(2),
        sub(0, 1),
        sub(0, 0),
        Op::Identify {
            conn: 0,
            who: 2,
            claim: 2,
        },
        Op::Identify {
            conn: 0,
            who: 0,
            claim: 2,
        },
    ];
    let params = Params {
        max_events: 1,
        max_queued: 254,
        disconnect_b: false,
        window: Some(Duration::from_millis(1000)),
        max_parked: 3,
        close_grace: Duration::from_millis(1),
        shutdown_grace: Duration::from_millis(1),
        max_notifies: 1,
    };
    let mut h = Harness::new(&params);
    for op in &ops {
        h.step(op);
    }
    h.finish();
}

/// A case CI's longer run found (2,000 cases): a resume from one event back by a connection
/// closed by the application, with an id taken over and a topic declared and removed.
#[test]
fn a_resume_then_an_app_close_with_an_id_taken_over_matches_the_model() {
    let open = || Op::Open {
        sse: false,
        shared: None,
        bound: false,
        claim: 0,
        stuck: false,
    };
    let ops = vec![
        open(),
        Op::Subscribe {
            conn: 0,
            patterns: vec![0],
            from: None,
            named: false,
        },
        Op::Identify {
            conn: 0,
            who: 1,
            claim: 0,
        },
        Op::Publish {
            conn: None,
            topic: 0,
            big: false,
        },
        open(),
        open(),
        Op::Identify {
            conn: 2,
            who: 1,
            claim: 2,
        },
        Op::Subscribe {
            conn: 1,
            patterns: vec![5],
            from: Some(From::Back(1)),
            named: false,
        },
        Op::AppClose(1),
        Op::Declare { topic: 0, vis: 0 },
        open(),
        Op::RemoveTopic(0),
        Op::Identify {
            conn: 0,
            who: 1,
            claim: 0,
        },
    ];
    let params = Params {
        max_events: 1,
        max_queued: 396,
        disconnect_b: false,
        window: Some(Duration::from_millis(1000)),
        max_parked: 1,
        close_grace: Duration::from_millis(1),
        shutdown_grace: Duration::from_millis(1),
        max_notifies: 1,
    };
    let mut h = Harness::new(&params);
    for op in &ops {
        h.step(op);
    }
    h.finish();
}
