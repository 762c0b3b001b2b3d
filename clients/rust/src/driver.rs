//! The tokio task that drives [`tidings_core::client::Client`]: it owns the machine, the socket
//! and the one timer, and talks to the application's handles through channels.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::ConnectStream;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::{HeaderValue, Request};
use async_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use tidings_core::client::{
    Answer, Client as Machine, Event, Item, Message, OpId, Reason, ServerRequestId, State, SubId,
};
use tidings_core::{Cursor, Name, Pattern, Payload, Recipient, Topic};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{Error, TokenSource};

type Ws = WebSocketStream<ConnectStream>;
type Connecting = Pin<Box<dyn Future<Output = Result<Ws, Reason>> + Send>>;

/// A handler for server requests.
pub(crate) type Handler = Arc<
    dyn Fn(Payload) -> Pin<Box<dyn Future<Output = Result<Payload, String>> + Send>> + Send + Sync,
>;

/// Handlers by event name, shared by the handles and the driver.
pub(crate) type Handlers = Arc<Mutex<HashMap<String, Handler>>>;

/// What a subscription's channel carries: items, then possibly why it ended.
pub(crate) type SubMsg = Result<Item, Error>;

/// An operation for the machine.
pub(crate) enum Op {
    Publish {
        topic: Topic,
        event: Option<Name>,
        payload: Payload,
    },
    Send {
        to: Recipient,
        event: Option<Name>,
        payload: Payload,
    },
    Request {
        event: Name,
        payload: Payload,
        timeout: Option<Duration>,
    },
    Identify(Name),
    Presence(Topic),
    /// Starts or stops the server's watch of a topic's presence.
    WatchPresence(Topic, bool),
    Ping,
}

/// What the handles ask the driver.
pub(crate) enum Cmd {
    Subscribe {
        patterns: Vec<Pattern>,
        name: Option<Name>,
        from: Option<Cursor>,
        items: mpsc::Sender<SubMsg>,
        done: oneshot::Sender<Result<SubId, Error>>,
    },
    Unsubscribe(SubId),
    Op(Op, oneshot::Sender<Result<Answer, Error>>),
    Reply(ServerRequestId, Result<Payload, String>),
    Messages(mpsc::Sender<Message>),
    Close(oneshot::Sender<()>),
    /// A [`crate::PresenceWatch`] of `topic` (its watch on the server is asked with
    /// `Op::WatchPresence`) receives its updates through `items`.
    Watch {
        topic: Topic,
        id: u64,
        items: mpsc::Sender<crate::PresenceUpdate>,
    },
    /// A [`crate::PresenceWatch`] was dropped: the last one of its topic stops the server's.
    Unwatch {
        topic: Topic,
        id: u64,
    },
}

/// The [`crate::PresenceWatch`]es of each watched topic.
type Watchers = HashMap<Topic, Vec<(u64, mpsc::Sender<crate::PresenceUpdate>)>>;

/// Where the answer to an operation goes.
enum Waiter {
    Op(oneshot::Sender<Result<Answer, Error>>),
    Subscribe(SubId, oneshot::Sender<Result<SubId, Error>>),
}

pub(crate) struct Driver {
    pub(crate) machine: Machine,
    pub(crate) request: Request<()>,
    /// Asked for the token of every connection attempt, if set.
    pub(crate) token_source: Option<TokenSource>,
    /// TLS for `wss://` URLs.
    #[cfg(feature = "tls")]
    pub(crate) tls: tokio_rustls::TlsConnector,
    pub(crate) connect_timeout: Duration,
    pub(crate) commands: mpsc::Receiver<Cmd>,
    /// To send replies from handler tasks without keeping the driver alive.
    pub(crate) myself: mpsc::WeakSender<Cmd>,
    pub(crate) state: watch::Sender<State>,
    pub(crate) cursor: watch::Sender<Option<Cursor>>,
    pub(crate) handlers: Handlers,
}

impl Driver {
    pub(crate) async fn run(mut self) {
        let mut ws: Option<Ws> = None;
        let mut connecting: Option<Connecting> = None;
        let mut subs: HashMap<SubId, mpsc::Sender<SubMsg>> = HashMap::new();
        let mut waiters: HashMap<OpId, Waiter> = HashMap::new();
        let mut messages: Vec<mpsc::Sender<Message>> = Vec::new();
        let mut closing: Vec<oneshot::Sender<()>> = Vec::new();
        let mut watchers: Watchers = HashMap::new();
        let mut commands_open = true;
        loop {
            // The cursor first: it is never behind an item a subscription has received.
            self.cursor.send_if_modified(|c| {
                let now = self.machine.cursor();
                (*c != now).then(|| *c = now).is_some()
            });
            // Act on everything the machine has to say, write its frames.
            while let Some(event) = self.machine.poll_event() {
                match event {
                    Event::Connect { .. } => {
                        connecting = Some(Box::pin(connect(
                            self.request.clone(),
                            self.token_source.clone(),
                            #[cfg(feature = "tls")]
                            self.tls.clone(),
                            self.connect_timeout,
                        )));
                    }
                    Event::Close => {
                        connecting = None;
                        if let Some(mut socket) = ws.take() {
                            // A close frame, best effort: do not wait on a dead peer.
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), socket.close(None))
                                    .await;
                        }
                        self.machine
                            .handle_disconnected(Instant::now(), Reason::Closed);
                    }
                    Event::State(state) => {
                        if let State::Stopped { reason } = &state {
                            for (_, waiter) in waiters.drain() {
                                let error = Error::Stopped(reason.clone());
                                match waiter {
                                    Waiter::Op(tx) => {
                                        let _ = tx.send(Err(error));
                                    }
                                    Waiter::Subscribe(_, tx) => {
                                        let _ = tx.send(Err(error));
                                    }
                                }
                            }
                            // Items already queued stay readable; then the streams end.
                            for (_, tx) in subs.drain() {
                                let _ = tx.try_send(Err(Error::Stopped(reason.clone())));
                            }
                            messages.clear();
                            watchers.clear();
                        }
                        self.state.send_replace(state);
                    }
                    Event::Deliver { subs: to, item } => {
                        for sub in to {
                            let Some(tx) = subs.get(&sub) else { continue };
                            // A full buffer pauses reading from the server (backpressure; the
                            // server then applies its slow-consumer policy).
                            if tx.send(Ok(item.clone())).await.is_err() {
                                subs.remove(&sub);
                                self.machine.unsubscribe(Instant::now(), sub);
                            }
                        }
                    }
                    Event::Message(message) => {
                        let mut open = Vec::with_capacity(messages.len());
                        for tx in messages.drain(..) {
                            if tx.send(message.clone()).await.is_ok() {
                                open.push(tx);
                            }
                        }
                        messages = open;
                    }
                    Event::Done { op, result } => match waiters.remove(&op) {
                        Some(Waiter::Op(tx)) => {
                            let _ = tx.send(result.map_err(|e| self.refusal(e.into())));
                        }
                        Some(Waiter::Subscribe(sub, tx)) => {
                            let result = result.map(|_| sub).map_err(|e| self.refusal(e.into()));
                            if result.is_err() {
                                subs.remove(&sub);
                            }
                            if tx.send(result).is_err() {
                                // Nobody waits for it any more.
                                subs.remove(&sub);
                                self.machine.unsubscribe(Instant::now(), sub);
                            }
                        }
                        None => {}
                    },
                    Event::Request { id, event, payload } => {
                        self.serve_request(id, event, payload);
                    }
                    Event::SubscriptionEnded { sub, error } => {
                        if let Some(tx) = subs.remove(&sub) {
                            let _ = tx.try_send(Err(self.refusal(error.into())));
                        }
                    }
                    Event::Notice(e) => tracing::debug!("tidings server notice: {e}"),
                    Event::Presence(notice) => {
                        let topic = notice.topic.clone();
                        let update = crate::PresenceUpdate::Notice(notice);
                        self.hand_to_watchers(&mut watchers, &topic, update).await;
                    }
                    Event::PresenceRewatched { topic, result } => {
                        let presence = result.ok().and_then(|p| {
                            serde_json::from_slice::<tidings_core::presence::Presence>(p.bytes())
                                .ok()
                        });
                        match presence {
                            Some(presence) => {
                                let update = crate::PresenceUpdate::Resync(presence);
                                self.hand_to_watchers(&mut watchers, &topic, update).await;
                            }
                            // Refused on the new connection: the watches end.
                            None => drop(watchers.remove(&topic)),
                        }
                    }
                    _ => {}
                }
            }
            if let Some(socket) = ws.as_mut() {
                let mut failed = None;
                while let Some(frame) = self.machine.poll_transmit() {
                    let Ok(text) = Utf8Bytes::try_from(frame) else {
                        continue;
                    };
                    if let Err(e) = socket.feed(WsMessage::Text(text)).await {
                        failed = Some(e);
                        break;
                    }
                }
                let failed = match failed {
                    Some(e) => Some(e),
                    None => socket.flush().await.err(),
                };
                if let Some(e) = failed {
                    ws = None;
                    self.machine
                        .handle_disconnected(Instant::now(), transport_reason(&e));
                    continue;
                }
            }
            if matches!(self.machine.state(), State::Stopped { .. }) && connecting.is_none() {
                if let Some(mut socket) = ws.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                }
                for tx in closing.drain(..) {
                    let _ = tx.send(());
                }
                if !commands_open {
                    return;
                }
            }
            let deadline = self.machine.poll_timeout();
            tokio::select! {
                cmd = self.commands.recv(), if commands_open => match cmd {
                    Some(Cmd::Watch { topic, id, items }) => {
                        watchers.entry(topic).or_default().push((id, items));
                    }
                    Some(Cmd::Unwatch { topic, id }) => {
                        let Some(list) = watchers.get_mut(&topic) else { continue };
                        list.retain(|(i, _)| *i != id);
                        if list.is_empty() {
                            watchers.remove(&topic);
                            let _ = self.machine.watch_presence(Instant::now(), topic, false);
                        }
                    }
                    Some(cmd) => self.command(cmd, &mut subs, &mut waiters, &mut messages, &mut closing),
                    None => {
                        // Every handle is gone: nobody can receive anything any more.
                        commands_open = false;
                        self.machine.close();
                    }
                },
                result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    match result {
                        Ok(socket) => {
                            ws = Some(socket);
                            self.machine.handle_connected(Instant::now());
                        }
                        Err(reason) => self.machine.handle_disconnected(Instant::now(), reason),
                    }
                }
                message = async { ws.as_mut().expect("guarded").next().await }, if ws.is_some() => {
                    let now = Instant::now();
                    match message {
                        Some(Ok(WsMessage::Text(text))) => {
                            self.machine.handle_frame(now, &Bytes::from(text));
                        }
                        Some(Ok(WsMessage::Close(_))) | None => {
                            ws = None;
                            self.machine.handle_disconnected(now, Reason::Closed);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            ws = None;
                            self.machine.handle_disconnected(now, transport_reason(&e));
                        }
                    }
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.machine.handle_timeout(Instant::now());
                }
            }
        }
    }

    fn command(
        &mut self,
        cmd: Cmd,
        subs: &mut HashMap<SubId, mpsc::Sender<SubMsg>>,
        waiters: &mut HashMap<OpId, Waiter>,
        messages: &mut Vec<mpsc::Sender<Message>>,
        closing: &mut Vec<oneshot::Sender<()>>,
    ) {
        let now = Instant::now();
        match cmd {
            Cmd::Subscribe {
                patterns,
                name,
                from,
                items,
                done,
            } => match self.machine.subscribe(now, patterns, name, from) {
                Ok((sub, op)) => {
                    subs.insert(sub, items);
                    waiters.insert(op, Waiter::Subscribe(sub, done));
                }
                Err(e) => {
                    let _ = done.send(Err(self.refusal(e.into())));
                }
            },
            Cmd::Unsubscribe(sub) => {
                subs.remove(&sub);
                self.machine.unsubscribe(now, sub);
            }
            Cmd::Op(op, done) => {
                let result = match op {
                    Op::Publish {
                        topic,
                        event,
                        payload,
                    } => self.machine.publish(now, topic, event, payload),
                    Op::Send { to, event, payload } => self.machine.send(now, to, event, payload),
                    Op::Request {
                        event,
                        payload,
                        timeout,
                    } => self.machine.request(now, event, payload, timeout),
                    Op::Identify(id) => self.machine.identify(now, id),
                    Op::Presence(topic) => self.machine.presence(now, topic),
                    Op::WatchPresence(topic, watch) => {
                        self.machine.watch_presence(now, topic, watch)
                    }
                    Op::Ping => self.machine.ping(now),
                };
                match result {
                    Ok(op) => {
                        waiters.insert(op, Waiter::Op(done));
                    }
                    Err(e) => {
                        let _ = done.send(Err(self.refusal(e.into())));
                    }
                }
            }
            Cmd::Reply(id, result) => {
                self.machine.reply(now, id, result);
            }
            Cmd::Messages(tx) => {
                if !matches!(self.machine.state(), State::Stopped { .. }) {
                    messages.push(tx);
                }
            }
            Cmd::Close(tx) => {
                closing.push(tx);
                self.machine.close();
            }
            // Handled in `run`, which holds the watches.
            Cmd::Watch { .. } | Cmd::Unwatch { .. } => {}
        }
    }

    /// Hands a presence update to the watches of `topic`; a watch whose receiver is gone is
    /// dropped, and the server's watch stops with the last one.
    async fn hand_to_watchers(
        &mut self,
        watchers: &mut Watchers,
        topic: &Topic,
        update: crate::PresenceUpdate,
    ) {
        let Some(list) = watchers.get_mut(topic) else {
            return;
        };
        let mut open = Vec::with_capacity(list.len());
        for (id, tx) in list.drain(..) {
            // A full buffer pauses reading from the server, as for subscriptions.
            if tx.send(update.clone()).await.is_ok() {
                open.push((id, tx));
            }
        }
        if open.is_empty() {
            watchers.remove(topic);
            let _ = self
                .machine
                .watch_presence(Instant::now(), topic.clone(), false);
        } else {
            *list = open;
        }
    }

    /// A refusal by a stopped machine says why it stopped.
    fn refusal(&self, error: Error) -> Error {
        match (error, self.machine.state()) {
            (Error::Stopped(None), State::Stopped { reason }) => Error::Stopped(reason.clone()),
            (error, _) => error,
        }
    }

    /// Runs the handler for a server request on a task of its own and sends its reply.
    fn serve_request(&mut self, id: ServerRequestId, event: Name, payload: Payload) {
        let handler = self
            .handlers
            .lock()
            .ok()
            .and_then(|h| h.get(event.as_str()).cloned());
        let Some(handler) = handler else {
            self.machine.reply(
                Instant::now(),
                id,
                Err(format!("no handler for {:?}", event.as_str())),
            );
            return;
        };
        let myself = self.myself.clone();
        tokio::spawn(async move {
            let result = handler(payload).await;
            if let Some(tx) = myself.upgrade() {
                let _ = tx.send(Cmd::Reply(id, result)).await;
            }
        });
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Opens the WebSocket (with a fresh token from `token_source`, if there is one); an HTTP
/// refusal (401, 403, …) is reported with its status and body.
async fn connect(
    mut request: Request<()>,
    token_source: Option<TokenSource>,
    #[cfg(feature = "tls")] tls: tokio_rustls::TlsConnector,
    timeout: Duration,
) -> Result<Ws, Reason> {
    if let Some(source) = token_source {
        let token = match tokio::time::timeout(timeout, source()).await {
            Err(_) => {
                return Err(Reason::Transport(format!(
                    "the token source gave no token within {} ms",
                    timeout.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(Reason::Transport(format!("the token source failed: {e}"))),
            Ok(Ok(token)) => token,
        };
        let value = bearer(&token).map_err(|e| Reason::Transport(e.to_string()))?;
        request.headers_mut().insert("authorization", value);
    }
    #[cfg(feature = "tls")]
    let handshake = async_tungstenite::tokio::connect_async_with_tls_connector(request, Some(tls));
    #[cfg(not(feature = "tls"))]
    let handshake = async_tungstenite::tokio::connect_async(request);
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(Reason::Transport(format!(
            "no WebSocket handshake within {} ms",
            timeout.as_millis()
        ))),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
            Err(Reason::Refused {
                status: status.as_u16(),
                message: body,
            })
        }
        Ok(Err(e)) => Err(transport_reason(&e)),
    }
}

fn transport_reason(e: &tungstenite::Error) -> Reason {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => Reason::Closed,
        e => Reason::Transport(e.to_string()),
    }
}

/// The handshake request: the URL, plus the token as a bearer `Authorization` header.
pub(crate) fn handshake(url: &str, token: Option<&str>) -> Result<Request<()>, Error> {
    let mut request = url
        .into_client_request()
        .map_err(|e| Error::InvalidUrl(format!("{url:?}: {e}")))?;
    match request.uri().scheme_str() {
        Some("ws") => {}
        #[cfg(feature = "tls")]
        Some("wss") => {}
        #[cfg(not(feature = "tls"))]
        Some("wss") => {
            return Err(Error::InvalidUrl(format!(
                "{url:?}: wss:// needs TLS, which this build does not include (the `tls` feature \
                 of tidings-client); terminate TLS in front of the client or use ws://"
            )));
        }
        _ => {
            return Err(Error::InvalidUrl(format!(
                "{url:?}: expected ws://HOST:PORT/ws or wss://HOST/ws"
            )));
        }
    }
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", bearer(token)?);
    }
    Ok(request)
}

/// The `Authorization` header value for `token`.
fn bearer(token: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| Error::Invalid("the token has characters a header cannot carry".into()))
}
