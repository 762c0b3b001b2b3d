//! The application's side of the broker's events: hooks, request handlers and the callers
//! waiting for an answer. The driver hands every [`AppEvent`] here; nothing here decides policy
//! (the core did), it only delivers: a request goes to its handler (a task of its own, whose
//! answer comes back as an [`AppOp::Reply`]), an ack result to the [`crate::Hub::request`] caller
//! waiting for it, a disconnect to the hooks.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};

use futures_channel::oneshot;
use futures_lite::FutureExt as _;
use tidings_core::log::AppendId;
use tidings_core::{
    AckId, AppEvent, AppOp, AppReply, ConnId, ErrorCode, Name, Payload, ProtocolError,
};

use crate::registry::{Disconnect, Handler, Registry};
use crate::runtime::Runtime;

/// Where a handler's answer goes: back to the driver, as an application operation.
pub(crate) type Answers = flume::WeakSender<crate::control::Control>;

/// The waiting callers and the registry of hooks and handlers.
pub(crate) struct AppEvents {
    registry: Arc<RwLock<Registry>>,
    /// Weak, so that the control channel closes when every hub is gone.
    answers: Answers,
    /// Callers of `Hub::request` waiting for the client's answer.
    acks: HashMap<(ConnId, AckId), oneshot::Sender<Result<Payload, ProtocolError>>>,
    /// Callers of `Hub::shutdown` waiting for it to complete.
    stopped: Vec<oneshot::Sender<()>>,
    /// Whether the shutdown completed (later callers are answered at once).
    is_stopped: bool,
    /// Callers of `Hub::publish` waiting for the external log to store their event.
    stored: HashMap<AppendId, oneshot::Sender<AppReply>>,
    /// Operations whose answer comes from other nodes (a cluster), by the id of their reply.
    relayed: HashMap<tidings_core::relay::RelayId, oneshot::Sender<AppReply>>,
}

impl AppEvents {
    pub(crate) fn new(registry: Arc<RwLock<Registry>>, answers: Answers) -> Self {
        Self {
            registry,
            answers,
            acks: HashMap::new(),
            stopped: Vec::new(),
            is_stopped: false,
            stored: HashMap::new(),
            relayed: HashMap::new(),
        }
    }

    /// Waits for the external log to store application publish `id`; the waiter gets
    /// [`AppReply::Cursor`] or [`AppReply::Failed`], as with the in-memory log.
    pub(crate) fn await_stored(&mut self, id: AppendId, waiter: oneshot::Sender<AppReply>) {
        self.stored.insert(id, waiter);
    }

    /// Waits for the answer other nodes give (`AppReply::Relaying(id)`).
    pub(crate) fn await_relayed(
        &mut self,
        id: tidings_core::relay::RelayId,
        waiter: oneshot::Sender<AppReply>,
    ) {
        self.relayed.insert(id, waiter);
    }

    /// Waits for the client's answer to server request `ack` of `conn`.
    pub(crate) fn await_ack(
        &mut self,
        conn: ConnId,
        ack: AckId,
        waiter: oneshot::Sender<Result<Payload, ProtocolError>>,
    ) {
        self.acks.insert((conn, ack), waiter);
    }

    /// Waits for the shutdown to complete.
    pub(crate) fn await_stopped(&mut self, waiter: oneshot::Sender<()>) {
        if self.is_stopped {
            let _ = waiter.send(());
        } else {
            self.stopped.push(waiter);
        }
    }

    /// Delivers one event. `ending` is why `conn` ended, for a `Disconnected`. Returns an
    /// operation to apply at once (a request nobody handles is answered `no_handler`).
    pub(crate) fn handle(
        &mut self,
        rt: &impl Runtime,
        event: AppEvent,
        ending: impl FnOnce(ConnId) -> Disconnect,
    ) -> Option<AppOp> {
        match event {
            AppEvent::Disconnected { conn } => {
                let (hook, reason_hook) = self
                    .registry
                    .read()
                    .map(|r| (r.on_disconnect.clone(), r.on_disconnect_reason.clone()))
                    .unwrap_or_default();
                if let Some(hook) = hook {
                    guarded("the disconnect hook", || hook(conn));
                }
                if let Some(hook) = reason_hook {
                    let reason = ending(conn);
                    guarded("the disconnect hook", || hook(conn, &reason));
                }
            }
            AppEvent::Request {
                conn,
                req,
                event,
                payload,
            } => {
                let Some(handler) = self.handler(&event) else {
                    let error = ProtocolError::new(
                        ErrorCode::NoHandler,
                        format!("the server has no handler for {:?}", event.as_str()),
                    );
                    return Some(AppOp::Reply {
                        conn,
                        req,
                        result: Err(error),
                    });
                };
                self.spawn(rt, conn, &event, handler, payload, move |result| {
                    AppOp::Reply { conn, req, result }
                });
            }
            AppEvent::Notify {
                conn,
                event,
                payload,
            } => match self.handler(&event) {
                Some(handler) => self.spawn(rt, conn, &event, handler, payload, move |_| {
                    AppOp::NotifyDone { conn }
                }),
                None => {
                    tracing::debug!(%conn, event = event.as_str(), "no handler for the event");
                    return Some(AppOp::NotifyDone { conn });
                }
            },
            AppEvent::AckResult { conn, ack, result } => {
                if let Some(waiter) = self.acks.remove(&(conn, ack)) {
                    let _ = waiter.send(result);
                }
            }
            AppEvent::Lifecycle(event) => {
                let hook = self
                    .registry
                    .read()
                    .ok()
                    .and_then(|r| r.on_lifecycle.clone());
                if let Some(hook) = hook {
                    guarded("the lifecycle hook", || hook(&event));
                }
            }
            AppEvent::ProtocolViolation { conn, error } => {
                tracing::debug!(%conn, "protocol violation: {error}");
                let hook = self.registry.read().ok().and_then(|r| r.on_error.clone());
                if let Some(hook) = hook {
                    guarded("the error hook", || hook(conn, &error));
                }
            }
            AppEvent::Stored { id, result } => {
                if let Some(waiter) = self.stored.remove(&id) {
                    let _ = waiter.send(result.map_or_else(AppReply::Failed, AppReply::Cursor));
                }
            }
            AppEvent::Relayed { id, reply } => {
                if let Some(waiter) = self.relayed.remove(&id) {
                    let _ = waiter.send(reply);
                }
            }
            AppEvent::Stopped => {
                self.is_stopped = true;
                for waiter in self.stopped.drain(..) {
                    let _ = waiter.send(());
                }
            }
            AppEvent::SessionExpired { client_id } => {
                tracing::debug!(client_id = client_id.as_str(), "session expired");
            }
            AppEvent::SlowConsumer { conn, policy } => {
                tracing::debug!(%conn, ?policy, "slow consumer");
            }
            other => tracing::debug!("unhandled event: {other:?}"),
        }
        None
    }

    fn handler(&self, event: &Name) -> Option<Handler> {
        self.registry.read().ok().and_then(|r| r.handler(event))
    }

    /// Runs `handler` as a task of its own; its result (an error if it panicked) becomes the
    /// operation `then` makes, sent back to the driver.
    fn spawn(
        &self,
        rt: &impl Runtime,
        conn: ConnId,
        event: &Name,
        handler: Handler,
        payload: Payload,
        then: impl FnOnce(Result<Payload, ProtocolError>) -> AppOp + Send + 'static,
    ) {
        let Some(answers) = self.answers.upgrade() else {
            return;
        };
        let event = event.clone();
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| handler(conn, payload)));
        rt.spawn(async move {
            let result = match call {
                Ok(fut) => AssertUnwindSafe(fut).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            let result = result.unwrap_or_else(|_| {
                tracing::error!(%conn, event = event.as_str(), "a handler panicked");
                Err(ProtocolError::new(
                    ErrorCode::Rejected,
                    "the handler failed",
                ))
            });
            let op = then(result);
            let _ = answers
                .send_async(crate::control::Control::App(
                    op,
                    crate::control::Answer::Nobody,
                ))
                .await;
        });
    }
}

/// Runs a hook of the application, logging (not propagating) a panic.
fn guarded(what: &str, hook: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(hook)).is_err() {
        tracing::error!("{what} panicked");
    }
}

/// The application-facing error for a refused server request.
pub(crate) fn refusal(e: &tidings_core::ApiError) -> ProtocolError {
    let code = match e {
        tidings_core::ApiError::UnknownConn(_) => ErrorCode::NoRecipient,
        tidings_core::ApiError::LimitReached { .. } => ErrorCode::LimitReached,
        _ => ErrorCode::Rejected,
    };
    ProtocolError::new(code, e.to_string())
}
