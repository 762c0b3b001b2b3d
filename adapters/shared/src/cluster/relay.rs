//! Messages that are not retained, between nodes, over core NATS (the core's relay seam,
//! `tidings_core::relay`).
//!
//! A node subscribes to the subject of each route it holds (a client id, a subscription name, a
//! room: announced as changes by the broker, so a mass reconnect is one SUB per id, not per
//! connection) and nothing else. A relayed send is published on its route's subject; when the
//! sender waits for the outcome it is a NATS request: a node that delivered it answers, and the
//! first answer is `ok`. NATS answers at once when no node holds the route ("no responders"),
//! and a request nobody delivered ends after [`SENT_WAIT`]: both are `no_recipient`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tidings_core::relay::{RelayReply, RelayRequest, Route};
use tidings_core::{ErrorCode, ProtocolError};

use super::Setup;
use super::codec;

/// How long a relayed send waits for a node to say it delivered it.
pub(crate) const SENT_WAIT: Duration = Duration::from_secs(2);

/// A relayed message that came in, for the broker: its route and the NATS message.
struct Incoming {
    route: Route,
    message: async_nats::Message,
}

/// Serves the broker's relay requests until the hub drops its link.
pub(crate) async fn run(
    client: async_nats::Client,
    setup: Arc<Setup>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<Vec<RelayRequest>>,
    replies: flume::Sender<RelayReply>,
) {
    let stream = setup.cluster.stream.clone();
    let (in_tx, mut in_rx) = tokio::sync::mpsc::unbounded_channel::<Incoming>();
    // One forwarding task per route held; aborting it drops its subscription (UNSUB).
    let mut held: HashMap<Route, tokio::task::JoinHandle<()>> = HashMap::new();
    // Messages delivered here whose sender waits: the token given to the broker -> reply subject.
    let mut answering: HashMap<u64, async_nats::Subject> = HashMap::new();
    let mut next_token = 1u64;
    loop {
        tokio::select! {
            batch = requests.recv() => {
                let Some(batch) = batch else { break };
                for request in batch {
                    match request {
                        RelayRequest::Interest { route, held: true } => {
                            let Some(subject) = codec::route_subject(&stream, &route) else {
                                continue;
                            };
                            let task = tokio::spawn(forward(
                                client.clone(),
                                subject,
                                route.clone(),
                                in_tx.clone(),
                            ));
                            if let Some(old) = held.insert(route, task) {
                                old.abort();
                            }
                        }
                        RelayRequest::Interest { route, held: false } => {
                            if let Some(task) = held.remove(&route) {
                                task.abort();
                            }
                        }
                        RelayRequest::Send { id, message } => {
                            let Some((subject, headers, body)) =
                                codec::encode_relayed(&stream, &setup.nonce, &message)
                            else {
                                continue;
                            };
                            match id {
                                None => {
                                    if let Err(e) = client
                                        .publish_with_headers(subject, headers, body)
                                        .await
                                    {
                                        tracing::debug!("relaying a message failed: {e}");
                                    }
                                }
                                Some(id) => {
                                    let (client, replies) = (client.clone(), replies.clone());
                                    tokio::spawn(async move {
                                        let result = ask(&client, subject, headers, body).await;
                                        let _ = replies.send(RelayReply::Sent { id, result });
                                    });
                                }
                            }
                        }
                        RelayRequest::Reached { token, reached } => {
                            if let Some(reply) = answering.remove(&token)
                                && reached
                                && let Err(e) = client.publish(reply, "1".into()).await
                            {
                                tracing::debug!("answering a relayed message failed: {e}");
                            }
                        }
                        _ => {}
                    }
                }
            }
            Some(Incoming { route, message }) = in_rx.recv() => {
                let Some(relayed) = codec::decode_relayed(
                    &route,
                    &setup.nonce,
                    &setup.limits,
                    message.headers.as_ref(),
                    message.payload,
                ) else {
                    continue;
                };
                let token = message.reply.map(|reply| {
                    let token = next_token;
                    next_token += 1;
                    answering.insert(token, reply);
                    token
                });
                if replies
                    .send(RelayReply::Message { token, message: relayed })
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    for task in held.into_values() {
        task.abort();
    }
}

/// Subscribes to a route's subject and hands what arrives to the relay task.
async fn forward(
    client: async_nats::Client,
    subject: String,
    route: Route,
    to: tokio::sync::mpsc::UnboundedSender<Incoming>,
) {
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!("cannot subscribe to {subject}: messages relayed there are lost: {e}");
            return;
        }
    };
    while let Some(message) = sub.next().await {
        let incoming = Incoming {
            route: route.clone(),
            message,
        };
        if to.send(incoming).is_err() {
            return;
        }
    }
}

/// A relayed send whose sender waits: `Ok` once a node says it delivered it.
async fn ask(
    client: &async_nats::Client,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
) -> Result<(), ProtocolError> {
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(body)
        .timeout(Some(SENT_WAIT));
    match client.send_request(subject, request).await {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders | async_nats::RequestErrorKind::TimedOut => {
                Err(tidings_core::relay::no_recipient())
            }
            async_nats::RequestErrorKind::Other => Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!("cannot reach the other nodes: {e}; try again later"),
            )),
        },
    }
}
