//! Messages that are not retained, between nodes, over core NATS (the core's relay seam,
//! `tidings_core::relay`).
//!
//! A node subscribes to the subject of each route it holds (a client id, a subscription name, a
//! room: announced as changes by the broker, so a mass reconnect is one SUB per id, not per
//! connection) and nothing else. A relayed send is published on its route's subject; when the
//! sender waits for the outcome it is a NATS request: a node that delivered it answers, and the
//! first answer is `ok`. NATS answers at once when no node holds the route ("no responders"),
//! and a request nobody delivered ends after [`SENT_WAIT`]: both are `no_recipient`.
//!
//! Presence is gathered: a node asks on `<stream>.presence` and merges the answers of the other
//! nodes. Every node says it is alive on `<stream>.nodes` every [`HEARTBEAT`], so the asking node
//! knows how many answers to wait for: it answers as soon as every node heard from within
//! [`ALIVE`] has, and after [`GATHER_WAIT`] at most (a node that does not answer in time is left
//! out, and `nodes` in the answer says how many took part).
//!
//! Presence watches (join and leave notices) are `super::watch`'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tidings_core::ask::{AskTo, ClientAnswer};
use tidings_core::presence::Presence;
use tidings_core::relay::{RelayReply, RelayRequest, Route, json};
use tidings_core::{ErrorCode, ProtocolError, Topic};

use super::Setup;
use super::codec::{self, ALIVE, HEARTBEAT};

/// How long a relayed send waits for a node to say it delivered it.
pub(crate) const SENT_WAIT: Duration = Duration::from_secs(2);
/// How long a presence gathering waits for the other nodes' answers, at most.
pub(crate) const GATHER_WAIT: Duration = Duration::from_millis(500);

/// The longest timeout another node's server request is given here.
pub(crate) const MAX_ASK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long after a server request's timeout the asking node waits for the other nodes'
/// answers (the core ends the ask [`tidings_core::ask::ASK_GRACE`] after it anyway).
const ASK_TRAVEL: Duration = Duration::from_secs(1);
/// The most answers taken from one node's reply.
const MAX_ANSWERS: usize = 100_000;

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
    let started = tokio::time::Instant::now();
    let (presence_subject, nodes_subject) =
        (format!("{stream}.presence"), format!("{stream}.nodes"));
    let ask_subject = format!("{stream}.ask");
    let mut asked_rooms = match client.subscribe(ask_subject.clone()).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::error!("cannot subscribe to the cluster's request subject: {e}");
            return;
        }
    };
    // Server requests asked here for a client id: answered only by a node that has an answer.
    let mut asked_clients: std::collections::HashSet<u64> = std::collections::HashSet::new();
    // Presence watches across nodes (`super::watch`).
    let mut watches = super::watch::Watches::new(&stream, &setup.nonce, setup.limits.clone());
    let (mut asked, mut heard, mut announced) = match (
        client.subscribe(presence_subject.clone()).await,
        client.subscribe(nodes_subject.clone()).await,
        client.subscribe(watches.subject()).await,
    ) {
        (Ok(asked), Ok(heard), Ok(announced)) => (asked, heard, announced),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            tracing::error!("cannot subscribe to the cluster's presence subjects: {e}");
            return;
        }
    };
    // The other nodes heard from, and when.
    let mut alive: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
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
                                        let result =
                                            ask(&client, subject, headers, body).await.map(drop);
                                        let _ = replies.send(RelayReply::Sent { id, result });
                                    });
                                }
                            }
                        }
                        request @ (RelayRequest::Watch { .. } | RelayRequest::Notice(_)) => {
                            watches.request(&client, request).await;
                        }
                        RelayRequest::GatherPresence { id, topic } => {
                            let expected = expected_answers(&mut alive, started);
                            let (client, replies) = (client.clone(), replies.clone());
                            let (subject, node) = (presence_subject.clone(), setup.nonce.clone());
                            // For a watch here: the nodes answering register it first.
                            let watch = watches.watched_here(&topic);
                            tokio::spawn(async move {
                                let presence =
                                    gather(&client, subject, &node, &topic, expected, watch).await;
                                let _ = replies.send(RelayReply::PresenceGathered { id, presence });
                            });
                        }
                        RelayRequest::UpdateSubscriptions { id, client_id, update } => {
                            let route = Route::Client(client_id);
                            let Some(subject) = codec::route_subject(&stream, &route) else {
                                continue;
                            };
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert(codec::NODE, setup.nonce.as_str());
                            headers.insert(codec::KIND, codec::SUBSCRIPTIONS);
                            let body = bytes::Bytes::from(json::encode_update(&update));
                            let (client, replies) = (client.clone(), replies.clone());
                            let names = setup.limits.names;
                            tokio::spawn(async move {
                                let result = match ask(&client, subject, headers, body).await {
                                    Ok(answer) => Some(
                                        json::decode_change(&answer, names)
                                            .unwrap_or_else(|| Err(garbled())),
                                    ),
                                    Err(e) if e.code == ErrorCode::NoRecipient => None,
                                    Err(e) => Some(Err(e)),
                                };
                                let _ = replies.send(RelayReply::Updated { id, result });
                            });
                        }
                        RelayRequest::Claimed { client_id, principal } => {
                            let route = Route::Client(client_id.clone());
                            let Some(subject) = codec::route_subject(&stream, &route) else {
                                continue;
                            };
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert(codec::NODE, setup.nonce.as_str());
                            headers.insert(codec::KIND, codec::CLAIM);
                            headers.insert(codec::PRINCIPAL, if principal { "1" } else { "0" });
                            if principal {
                                // Nodes holding it through a wildcard grant close their holder.
                                let _ = client
                                    .publish_with_headers(subject, headers, bytes::Bytes::new())
                                    .await;
                                continue;
                            }
                            // A node whose holder is the principal answers: this claim loses.
                            let (client, replies) = (client.clone(), replies.clone());
                            tokio::spawn(async move {
                                if ask(&client, subject, headers, bytes::Bytes::new()).await.is_ok() {
                                    let _ = replies.send(RelayReply::ClaimRefused { client_id });
                                }
                            });
                        }
                        RelayRequest::ClaimAnswer { token, owned } => {
                            // Only an owner answers: the claimer takes the first answer.
                            if let Some(reply) = answering.remove(&token)
                                && owned
                                && let Err(e) = client.publish(reply, "owned".into()).await
                            {
                                tracing::debug!("answering a claim failed: {e}");
                            }
                        }
                        RelayRequest::UpdatedHere { token, result } => {
                            if let Some(reply) = answering.remove(&token) {
                                let body = json::encode_change(&result);
                                if let Err(e) = client.publish(reply, body.into()).await {
                                    tracing::debug!("answering a subscription change failed: {e}");
                                }
                            }
                        }
                        RelayRequest::PresenceHere { token, presence } => {
                            if let Some(reply) = answering.remove(&token) {
                                let body = serde_json::to_vec(&presence).unwrap_or_default();
                                if let Err(e) = client.publish(reply, body.into()).await {
                                    tracing::debug!("answering a presence question failed: {e}");
                                }
                            }
                        }
                        RelayRequest::Ask { id, to, event, payload, timeout } => {
                            let body = bytes::Bytes::from(json::encode_ask(&to, &event, &payload, timeout));
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert(codec::NODE, setup.nonce.as_str());
                            headers.insert(codec::KIND, codec::ASK);
                            let (client, replies) = (client.clone(), replies.clone());
                            let max_name_len = setup.limits.max_name_len;
                            let wait = timeout.saturating_add(ASK_TRAVEL);
                            match to {
                                AskTo::Client(client_id) => {
                                    let Some(subject) =
                                        codec::route_subject(&stream, &Route::Client(client_id))
                                    else {
                                        continue;
                                    };
                                    tokio::spawn(async move {
                                        let result = ask_client(&client, subject, headers, body, wait, max_name_len).await;
                                        let _ = replies.send(RelayReply::Answered { id, result });
                                    });
                                }
                                AskTo::Room(_) => {
                                    let expected = expected_answers(&mut alive, started);
                                    let subject = ask_subject.clone();
                                    tokio::spawn(async move {
                                        let answers = ask_everyone(&client, subject, headers, body, wait, expected, max_name_len).await;
                                        let _ = replies.send(RelayReply::Answered { id, result: Ok(answers) });
                                    });
                                }
                                _ => {}
                            }
                        }
                        RelayRequest::AskedHere { token, answers } => {
                            let for_client = asked_clients.remove(&token);
                            if let Some(reply) = answering.remove(&token)
                                && !(for_client && answers.is_empty())
                            {
                                let max = client.server_info().max_payload;
                                let body = json::encode_answers(&answers, max);
                                if let Err(e) = client.publish(reply, body.into()).await {
                                    tracing::debug!("answering a server request failed: {e}");
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
            _ = heartbeat.tick() => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(codec::NODE, setup.nonce.as_str());
                let _ = client
                    .publish_with_headers(nodes_subject.clone(), headers, bytes::Bytes::new())
                    .await;
                watches.tick(&client, &replies).await;
            }
            Some(message) = heard.next() => {
                if let Some(node) = sender(&message)
                    && node != setup.nonce
                {
                    // A node heard anew (starting, or back) learns what this one watches.
                    if watches.heard(&node) {
                        watches.announce_all(&client).await;
                    }
                    alive.insert(node, tokio::time::Instant::now());
                }
            }
            Some(message) = announced.next() => watches.announced(&message, &replies),
            Some(message) = watches.next_notice() => {
                if let Some(notice) = watches.notice(&message)
                    && replies.send(notice).is_err()
                {
                    break;
                }
            }
            Some(message) = asked.next() => {
                let Some(node) = sender(&message) else { continue };
                let (Some(reply), false) = (message.reply.clone(), node == setup.nonce) else {
                    continue;
                };
                let Ok(topic) = std::str::from_utf8(&message.payload)
                    .map_err(|e| e.to_string())
                    .and_then(|t| Topic::parse(t, setup.limits.names).map_err(|e| e.message))
                else {
                    continue;
                };
                // A gathering for a watch: the broker registers it with its answer (one step),
                // so that every change after the answer is relayed and none before it.
                let watch = message
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get(super::watch::WATCH).is_some());
                let watch = watch && watches.watched_by_gathering(&node, topic.clone());
                let token = next_token;
                next_token += 1;
                answering.insert(token, reply);
                if replies.send(RelayReply::PresenceAsked { token, topic, watch }).is_err() {
                    break;
                }
            }
            Some(message) = asked_rooms.next() => {
                let Some(node) = sender(&message) else { continue };
                let (Some(reply), false) = (message.reply.clone(), node == setup.nonce) else {
                    continue;
                };
                let Some((to, event, payload, timeout)) =
                    json::decode_ask(&message.payload, setup.limits.max_name_len, MAX_ASK_TIMEOUT)
                else {
                    continue;
                };
                let token = next_token;
                next_token += 1;
                answering.insert(token, reply);
                let asked = RelayReply::Asked { token, to, event, payload, timeout };
                if replies.send(asked).is_err() {
                    break;
                }
            }
            Some(Incoming { route, message }) = in_rx.recv() => {
                let header = |name: &str| {
                    message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned())
                };
                if header(codec::KIND).as_deref() == Some(codec::CLAIM) {
                    let Route::Client(client_id) = &route else { continue };
                    if header(codec::NODE).as_deref() == Some(setup.nonce.as_str()) {
                        continue;
                    }
                    let principal = header(codec::PRINCIPAL).as_deref() == Some("1");
                    let token = message.reply.clone().map(|reply| {
                        let token = next_token;
                        next_token += 1;
                        answering.insert(token, reply);
                        token
                    });
                    let claimed = RelayReply::ClaimedElsewhere {
                        token,
                        client_id: client_id.clone(),
                        principal,
                    };
                    if replies.send(claimed).is_err() {
                        break;
                    }
                    continue;
                }
                if header(codec::KIND).as_deref() == Some(codec::ASK) {
                    // A server request to the connection holding a client id held here.
                    let (Route::Client(client_id), Some(reply)) = (&route, message.reply.clone())
                    else {
                        continue;
                    };
                    if header(codec::NODE).as_deref() == Some(setup.nonce.as_str()) {
                        continue;
                    }
                    let Some((AskTo::Client(asked_id), event, payload, timeout)) =
                        json::decode_ask(&message.payload, setup.limits.max_name_len, MAX_ASK_TIMEOUT)
                    else {
                        continue;
                    };
                    if asked_id != *client_id {
                        continue;
                    }
                    let token = next_token;
                    next_token += 1;
                    answering.insert(token, reply);
                    asked_clients.insert(token);
                    let to = AskTo::Client(asked_id);
                    let asked = RelayReply::Asked { token, to, event, payload, timeout };
                    if replies.send(asked).is_err() {
                        break;
                    }
                    continue;
                }
                if header(codec::KIND).as_deref() == Some(codec::SUBSCRIPTIONS) {
                    // A change of the subscriptions of a client id held here.
                    let (Route::Client(client_id), Some(reply)) = (&route, message.reply.clone())
                    else {
                        continue;
                    };
                    if header(codec::NODE).as_deref() == Some(setup.nonce.as_str()) {
                        continue;
                    }
                    let Some(update) = json::decode_update(&message.payload, setup.limits.names)
                    else {
                        continue;
                    };
                    let token = next_token;
                    next_token += 1;
                    answering.insert(token, reply);
                    let asked = RelayReply::UpdateAsked {
                        token,
                        client_id: client_id.clone(),
                        update,
                    };
                    if replies.send(asked).is_err() {
                        break;
                    }
                    continue;
                }
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
    watches.stop();
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

/// A request to the nodes holding a route: the first answer (a node that delivered a message,
/// or the outcome of a subscription change); `no_recipient` when no node holds the route or
/// none answered within [`SENT_WAIT`].
async fn ask(
    client: &async_nats::Client,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
) -> Result<bytes::Bytes, ProtocolError> {
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(body)
        .timeout(Some(SENT_WAIT));
    match client.send_request(subject, request).await {
        Ok(answer) => Ok(answer.payload),
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

/// How many other nodes a question to every node waits for: those heard from within
/// [`ALIVE`] (forgetting the others); `None` just after start, when they may not have been
/// heard yet.
fn expected_answers(
    alive: &mut HashMap<String, tokio::time::Instant>,
    started: tokio::time::Instant,
) -> Option<usize> {
    let now = tokio::time::Instant::now();
    alive.retain(|_, at| now.duration_since(*at) < ALIVE);
    (now.duration_since(started) >= ALIVE).then_some(alive.len())
}

/// The node that sent a message of the cluster's subjects.
fn sender(message: &async_nats::Message) -> Option<String> {
    let node = message.headers.as_ref()?.get(codec::NODE)?;
    Some(node.as_str().to_owned())
}

/// Asks the other nodes for their presence of `topic` and merges what they answer: until
/// `expected` have (when known), within [`GATHER_WAIT`].
async fn gather(
    client: &async_nats::Client,
    subject: String,
    node: &str,
    topic: &Topic,
    expected: Option<usize>,
    watch: bool,
) -> Presence {
    let mut merged = Presence::default();
    if expected == Some(0) {
        return merged;
    }
    let inbox = client.new_inbox();
    let mut answers = match client.subscribe(inbox.clone()).await {
        Ok(answers) => answers,
        Err(e) => {
            tracing::debug!("cannot gather presence: {e}");
            return merged;
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(codec::NODE, node);
    if watch {
        headers.insert(super::watch::WATCH, "1");
    }
    let body = bytes::Bytes::from(topic.as_str().to_owned());
    if let Err(e) = client
        .publish_with_reply_and_headers(subject, inbox, headers, body)
        .await
    {
        tracing::debug!("cannot gather presence: {e}");
        return merged;
    }
    let deadline = tokio::time::Instant::now() + GATHER_WAIT;
    let mut got = 0;
    while expected.is_none_or(|n| got < n) {
        let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await else {
            break;
        };
        // What another node sends is bounded: at most MAX_PRESENCE_CLIENTS ids are kept.
        if let Ok(mut presence) = serde_json::from_slice::<Presence>(&answer.payload) {
            presence.bound();
            merged.merge(presence);
            got += 1;
        }
    }
    merged
}

/// An answer from another node that does not decode.
fn garbled() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unavailable,
        "the node holding that client id answered with something that does not decode; try again",
    )
}

/// A server request to the connection holding a client id on another node: the first node with
/// an answer answers; `no_recipient` when no node holds the id, no answer (the core's
/// `timeout`) when none did within `wait`.
async fn ask_client(
    client: &async_nats::Client,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
    wait: Duration,
    max_name_len: usize,
) -> Result<Vec<ClientAnswer>, ProtocolError> {
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(body)
        .timeout(Some(wait));
    match client.send_request(subject, request).await {
        Ok(answer) => json::decode_answers(&answer.payload, max_name_len, 1).ok_or_else(garbled),
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Err(tidings_core::relay::no_recipient()),
            async_nats::RequestErrorKind::TimedOut => Ok(Vec::new()),
            async_nats::RequestErrorKind::Other => Err(ProtocolError::new(
                ErrorCode::Unavailable,
                format!("cannot reach the other nodes: {e}; try again later"),
            )),
        },
    }
}

/// A server request to a room's members on every node: every node answers (with nothing when
/// it has no member); the answers of those that did within `wait`, until `expected` have (when
/// known).
async fn ask_everyone(
    client: &async_nats::Client,
    subject: String,
    headers: async_nats::HeaderMap,
    body: bytes::Bytes,
    wait: Duration,
    expected: Option<usize>,
    max_name_len: usize,
) -> Vec<ClientAnswer> {
    let mut all = Vec::new();
    if expected == Some(0) {
        return all;
    }
    let inbox = client.new_inbox();
    let mut answers = match client.subscribe(inbox.clone()).await {
        Ok(answers) => answers,
        Err(e) => {
            tracing::debug!("cannot ask the other nodes: {e}");
            return all;
        }
    };
    if let Err(e) = client
        .publish_with_reply_and_headers(subject, inbox, headers, body)
        .await
    {
        tracing::debug!("cannot ask the other nodes: {e}");
        return all;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = 0;
    while expected.is_none_or(|n| got < n) {
        let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await else {
            break;
        };
        let room = MAX_ANSWERS.saturating_sub(all.len());
        if let Some(answers) = json::decode_answers(&answer.payload, max_name_len, room) {
            all.extend(answers);
            got += 1;
        }
    }
    all
}
