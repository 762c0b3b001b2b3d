//! The driver as a router, step by step on a virtual clock: what the core decides (close
//! grace, the shutdown deadline, answers to requests nobody handles) reaches the connections'
//! outboxes and the application, and a connection that cannot keep up is dropped.

use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_util::future::BoxFuture;
use tidings_core::native::NativeCodec;
use tidings_core::sse::SseCodec;
use tidings_core::typed::TypedCodec;
use tidings_core::{
    AppOp, AppReply, Broker, Command, Config, ConnId, Delivery, ErrorCode, Grants, Name, Pattern,
    Payload, ProtocolError, Subscribe, Topic,
};

use super::Driver;
use crate::conn::{FromConn, Kind, Opening, ToConn};
use crate::control::{Answer, Control};
use crate::events::AppEvents;
use crate::mailbox::{Inbox, mailbox};
use crate::registry::{Disconnect, Registry};
use crate::runtime::Runtime;

/// A runtime on a virtual clock: time moves only when the test says so, and spawned tasks
/// (handlers) wait in a list until the test runs them.
#[derive(Clone)]
struct Virtual {
    now: Arc<Mutex<Instant>>,
    tasks: Arc<Mutex<Vec<BoxFuture<'static, ()>>>>,
}

impl Runtime for Virtual {
    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.tasks.lock().unwrap().push(Box::pin(task));
    }

    fn now(&self) -> Instant {
        *self.now.lock().unwrap()
    }

    fn sleep_until(&self, _: Instant) -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }
}

/// A driver on the virtual clock, with what the application's hooks saw.
struct Bench {
    rt: Virtual,
    driver: Driver<Virtual>,
    disconnects: Arc<Mutex<Vec<(ConnId, Disconnect)>>>,
    config: Config,
    /// Keeps the control channel open (the driver's handlers answer through it).
    _ctl: flume::Sender<Control>,
}

/// A connection as its task sees it: its outbox and whether the driver stopped it.
struct Peer {
    conn: ConnId,
    inbox: Inbox<ToConn>,
    killed: oneshot::Receiver<()>,
}

impl Peer {
    fn take(&mut self) -> Vec<ToConn> {
        std::iter::from_fn(|| self.inbox.try_recv()).collect()
    }

    /// Whether the driver dropped the connection (which stops its task).
    fn stopped(&mut self) -> bool {
        matches!(self.killed.try_recv(), Err(oneshot::Canceled))
    }
}

impl Bench {
    fn new() -> Self {
        let rt = Virtual {
            now: Arc::new(Mutex::new(Instant::now())),
            tasks: Arc::default(),
        };
        let mut config = Config::default();
        config.timers.close_grace = Duration::from_secs(5);
        config.timers.shutdown_grace = Duration::from_secs(10);
        config.timers.keepalive = None;
        let registry = Arc::new(RwLock::new(Registry::default()));
        let disconnects = Arc::new(Mutex::new(Vec::new()));
        let seen = disconnects.clone();
        registry.write().unwrap().on_disconnect_reason =
            Some(Arc::new(move |conn, why: &Disconnect| {
                seen.lock().unwrap().push((conn, why.clone()));
            }));
        let (ctl_tx, ctl_rx) = flume::unbounded();
        let (_, conn_rx) = flume::bounded(16);
        let app = AppEvents::new(registry, ctl_tx.downgrade());
        let broker = Broker::new(config.clone(), rt.now());
        let driver = Driver::new(rt.clone(), broker, ctl_rx, conn_rx, app, None);
        Self {
            rt,
            driver,
            disconnects,
            config,
            _ctl: ctl_tx,
        }
    }

    fn now(&self) -> Instant {
        self.rt.now()
    }

    /// Moves the virtual clock and runs a step (timers due, hand-over).
    fn advance(&mut self, by: Duration) {
        *self.rt.now.lock().unwrap() += by;
        let now = self.now();
        self.driver.step(now);
    }

    /// Opens a connection subscribed to `topic`, with an outbox of `cap` batches' entries.
    fn open(&mut self, id: u64, kind: Kind, topic: &str, cap: usize) -> Peer {
        let conn = ConnId(id);
        let (outbox, inbox) = mailbox(cap);
        let (kill, killed) = oneshot::channel();
        let codec: Box<dyn tidings_core::codec::Codec> = match kind {
            Kind::Sse => Box::new(SseCodec),
            Kind::Internal => Box::new(TypedCodec),
            _ => Box::new(NativeCodec),
        };
        let subscribe = Command::Subscribe(Subscribe {
            req: None,
            patterns: vec![Pattern::parse(topic, Default::default()).unwrap()],
            from: None,
            name: None,
        });
        let opening = Opening {
            conn,
            kind,
            codec,
            grants: Arc::new(Grants::all()),
            outbox,
            kill: Some(kill),
            rooms: Vec::new(),
            commands: vec![subscribe],
        };
        let now = self.now();
        self.driver.conn_msg(now, FromConn::Open(Box::new(opening)));
        self.driver.step(now);
        let mut peer = Peer {
            conn,
            inbox,
            killed,
        };
        peer.take(); // the opening frame
        peer
    }

    /// Applies an operation, answered on a channel; returns the reply.
    fn app(&mut self, op: AppOp) -> AppReply {
        let (tx, mut rx) = oneshot::channel();
        let now = self.now();
        self.driver.ctl(now, Control::App(op, Answer::Reply(tx)));
        self.driver.step(now);
        rx.try_recv().unwrap().expect("answered in the same step")
    }

    fn publish(&mut self, topic: &str, data: &str) {
        let op = AppOp::Publish {
            topic: Topic::parse(topic, Default::default()).unwrap(),
            event: None,
            payload: Payload::text(data.to_owned()).unwrap(),
        };
        assert!(matches!(self.app(op), AppReply::Cursor(_)));
    }

    fn disconnects(&self) -> Vec<(ConnId, Disconnect)> {
        self.disconnects.lock().unwrap().clone()
    }

    fn dead(&mut self) -> u64 {
        let (tx, mut rx) = oneshot::channel();
        let now = self.now();
        self.driver.ctl(now, Control::Stats(tx));
        rx.try_recv().unwrap().unwrap().dead_connections
    }
}

#[test]
fn a_connection_that_does_not_close_within_the_grace_is_dropped() {
    let mut b = Bench::new();
    let mut peer = b.open(1, Kind::Sse, "a", 64);
    let reason = ProtocolError::new(ErrorCode::Rejected, "go away");
    let op = AppOp::Close {
        conn: peer.conn,
        reason: Some(reason.clone()),
    };
    assert_eq!(b.app(op), AppReply::Done);
    let outs = peer.take();
    assert!(
        matches!(outs.as_slice(), [ToConn::Frame(_), ToConn::Close(Some(r))] if *r == reason),
        "the error frame, then the close: {outs:?}"
    );
    // Nothing more is handed out once it is closing.
    b.publish("a", "late");
    assert!(peer.take().is_empty());

    b.advance(b.config.timers.close_grace - Duration::from_millis(1));
    assert!(!peer.stopped(), "within the grace it may still close");
    assert!(b.disconnects().is_empty());

    b.advance(Duration::from_millis(1));
    assert!(peer.stopped(), "dropped at the end of the grace");
    assert_eq!(
        b.disconnects(),
        [(peer.conn, Disconnect::Server(reason))],
        "the hook learns why it ended"
    );
    assert_eq!(b.dead(), 1);
}

#[test]
fn a_shutdown_completes_when_every_connection_is_gone_or_at_the_deadline() {
    let mut b = Bench::new();
    let mut polite = b.open(1, Kind::WebSocket, "a", 64);
    let mut stuck = b.open(2, Kind::WebSocket, "a", 64);
    let (tx, mut stopped) = oneshot::channel();
    let now = b.now();
    b.driver
        .ctl(now, Control::App(AppOp::Shutdown, Answer::Stopped(tx)));
    b.driver.step(now);
    for peer in [&mut polite, &mut stuck] {
        let outs = peer.take();
        assert!(
            matches!(outs.last(), Some(ToConn::Close(Some(r))) if r.code == ErrorCode::ShuttingDown),
            "{outs:?}"
        );
    }
    // One closes as asked; the other never does.
    b.driver.conn_msg(
        now,
        FromConn::Closed(polite.conn, crate::conn::Ended::Peer(1001)),
    );
    b.driver.step(now);
    assert_eq!(stopped.try_recv(), Ok(None), "one connection is left");

    b.advance(b.config.timers.shutdown_grace);
    assert!(stuck.stopped(), "dropped at the shutdown deadline");
    assert_eq!(
        stopped.try_recv(),
        Ok(Some(())),
        "and the shutdown is complete"
    );
    // A later shutdown call is answered at once.
    let (tx, mut again) = oneshot::channel();
    b.driver
        .ctl(now, Control::App(AppOp::Shutdown, Answer::Stopped(tx)));
    assert_eq!(again.try_recv(), Ok(Some(())));
}

#[test]
fn a_connection_whose_outbox_is_full_is_dropped_and_the_others_are_served() {
    let mut b = Bench::new();
    // An outbox of one entry that is never read, beside one that is.
    let mut slow = b.open(1, Kind::WebSocket, "a", 1);
    let mut fast = b.open(2, Kind::WebSocket, "a", 64);
    let now = b.now();
    for i in 0..3 {
        let op = AppOp::Publish {
            topic: Topic::parse("a", Default::default()).unwrap(),
            event: None,
            payload: Payload::text(format!("e{i}")).unwrap(),
        };
        b.driver.ctl(now, Control::App(op, Answer::Nobody));
    }
    b.driver.step(now);
    assert!(slow.stopped(), "its batch did not fit its outbox");
    assert_eq!(fast.take().len(), 3, "one batch of the step's three frames");
    assert_eq!(b.disconnects(), [(slow.conn, Disconnect::Lost)]);
    assert_eq!(b.dead(), 1);
}

#[test]
fn in_process_subscriptions_get_typed_items_in_one_batch() {
    let mut b = Bench::new();
    let mut sub = b.open(1, Kind::Internal, "a.*", 64);
    b.publish("a.x", "one");
    b.publish("a.y", "two");
    let items: Vec<_> = sub
        .take()
        .into_iter()
        .map(|out| match out {
            ToConn::Item(item) => match &*item {
                Delivery::Event { topic, payload, .. } => {
                    format!("{}={}", topic.as_str(), payload.as_str())
                }
                other => panic!("{other:?}"),
            },
            other => panic!("not a typed item: {other:?}"),
        })
        .collect();
    assert_eq!(items, ["a.x=one", "a.y=two"]);
}

#[test]
fn a_request_nobody_handles_is_answered_at_once_and_handled_ones_through_their_task() {
    let mut b = Bench::new();
    let mut client = b.open(1, Kind::WebSocket, "a", 64);
    let now = b.now();
    let ask = |req, event: &str| Command::Request {
        req,
        event: Name::parse("event", event, 64).unwrap(),
        payload: Payload::text("?").unwrap(),
    };
    b.driver
        .conn_msg(now, FromConn::Command(client.conn, ask(7, "nobody")));
    b.driver.step(now);
    let frames: Vec<String> = client
        .take()
        .into_iter()
        .filter_map(|o| match o {
            ToConn::Frame(f) => Some(String::from_utf8(f.to_vec()).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(frames[0].contains("no_handler") && frames[0].contains("\"id\":7"));

    // A registered handler runs as a task of its own; its answer comes back as an operation.
    let registry = Arc::new(RwLock::new(Registry::default()));
    registry.write().unwrap().handlers.insert(
        "echo".into(),
        Arc::new(|_, payload| Box::pin(async move { Ok(payload) })),
    );
    let (ctl_tx, ctl_rx) = flume::unbounded();
    b.driver.app = AppEvents::new(registry, ctl_tx.downgrade());
    b.driver
        .conn_msg(now, FromConn::Command(client.conn, ask(8, "echo")));
    assert!(
        client.take().is_empty(),
        "nothing until the handler answers"
    );
    let tasks = std::mem::take(&mut *b.rt.tasks.lock().unwrap());
    assert_eq!(tasks.len(), 1);
    for task in tasks {
        futures_lite::future::block_on(task);
    }
    let answer = ctl_rx.try_recv().expect("the handler's answer");
    b.driver.ctl(now, answer);
    b.driver.step(now);
    let frames = client.take();
    assert!(
        matches!(&frames[..], [ToConn::Frame(f)] if f.starts_with(br#"{"type":"ok","id":8"#)),
        "{frames:?}"
    );
    let (tx, mut rx) = oneshot::channel();
    b.driver.ctl(now, Control::Stats(tx));
    assert_eq!(rx.try_recv().unwrap().unwrap().handled_requests, 1);
}
