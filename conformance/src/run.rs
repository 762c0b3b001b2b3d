//! Runs one case: a small interpreter over the steps, holding the case's connections and
//! variables.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Map, Value};
use tidings_core::sse::{Decoder, Item};
use tungstenite::Message;

use crate::case::{Body, Case, Expectation, Http, OpenSse, OpenWs, Outgoing, Step};
use crate::pattern::{Vars, matches};
use crate::wire::{BodyRead, Head, HttpStream, Incoming, Upgrade, Ws, request};
use crate::{Options, Target};

/// Runs `case` against `target`; the failures, each the step (1-based) and what was wrong (none:
/// the case passed).
///
/// A failure does not end the case when what follows can still be checked on its own: after a
/// failed expectation (`expect`, `silence`, a refused or answered `ws`/`sse`/`http` checked
/// against its expected answer) the steps that only read other connections, and plain HTTP
/// requests, still run and report their own failures. A step on the connection that failed, or
/// one using a value the failed step was to bind, is not checked; when such a step would act
/// (send, open, close), or when the failing step itself acted, the case stops there, since
/// everything after may depend on it.
pub fn run_case(
    case: &Case,
    target: &Target,
    peer: Option<&Target>,
    options: &Options,
    ns: &str,
) -> Vec<(usize, String)> {
    let mut run = Run {
        target,
        peer,
        profile: &options.profile,
        timeout: options.timeout,
        trace: options.trace,
        vars: Vars::default(),
        ws: HashMap::new(),
        sse: HashMap::new(),
    };
    run.vars.set("ns", Value::String(ns.to_owned()));
    run.vars.set(
        "ksbus_server_id",
        Value::String(options.profile.ksbus_server_id.clone()),
    );
    for (name, claims) in &case.tokens {
        let token = Value::Object(claims.clone());
        let token = run
            .vars
            .interpolate_json(&token)
            .and_then(|claims| {
                sign(
                    claims.as_object().expect("an object stays an object"),
                    &options.profile.jwt_secret,
                )
            })
            .map_err(|e| (0, format!("token {name:?}: {e}")));
        match token {
            Ok(token) => run.vars.set(format!("token:{name}"), Value::String(token)),
            Err(failure) => return vec![failure],
        }
    }
    let mut failures: Vec<(usize, String)> = Vec::new();
    // Connections whose stream position is unknown after a failed step on them.
    let mut broken: Vec<&str> = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let conn = step_conn(step);
        let acts = matches!(
            step,
            Step::Send { .. } | Step::OpenWs(_) | Step::OpenSse(_) | Step::Close { .. }
        );
        if conn.is_some_and(|c| broken.contains(&c)) {
            if acts {
                break;
            }
            continue;
        }
        match run.step(step) {
            Ok(()) => {}
            // A value the failed step was to bind: this step depends on it.
            Err(e) if !failures.is_empty() && e.contains("is bound at this point") => {
                if acts {
                    break;
                }
            }
            Err(e) => {
                failures.push((i + 1, format!("{}: {e}", describe(step))));
                // An action that failed (or a failure that is not about one connection):
                // what follows may depend on it.
                let reads_only = matches!(step, Step::Expect { .. } | Step::Silence { .. });
                match (conn, reads_only) {
                    (Some(c), true) => broken.push(c),
                    (None, _) if matches!(step, Step::Http(_)) => {}
                    _ => break,
                }
            }
        }
    }
    failures
}

/// The connection a step uses, if any.
fn step_conn(step: &Step) -> Option<&str> {
    match step {
        Step::OpenWs(o) => Some(&o.conn),
        Step::OpenSse(o) => Some(&o.conn),
        Step::Send { conn, .. }
        | Step::Expect { conn, .. }
        | Step::Silence { conn, .. }
        | Step::Close { conn } => Some(conn),
        Step::Http(_) | Step::Wait { .. } => None,
    }
}

/// Signs `claims` with the profile secret; `exp` is added (an hour from now) when missing, and a
/// negative `exp` counts from now (an expired token). `"$secret"` signs with another secret.
fn sign(claims: &Map<String, Value>, profile_secret: &str) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let mut claims = claims.clone();
    let secret = match claims.remove("$secret") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("\"$secret\" must be a string".into()),
        None => profile_secret.to_owned(),
    };
    match claims.get("exp").and_then(Value::as_i64) {
        None => {
            claims.insert("exp".into(), Value::from(now + 3600));
        }
        Some(exp) if exp < 0 => {
            claims.insert("exp".into(), Value::from(now + exp));
        }
        Some(_) => {}
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

fn describe(step: &Step) -> String {
    match step {
        Step::OpenWs(o) => format!("ws {} {}", o.conn, o.path),
        Step::OpenSse(o) => format!("sse {} {}", o.conn, o.path),
        Step::Http(h) => match &h.raw {
            Some(_) => "http (raw request)".to_owned(),
            None => format!("http {} {}", h.method, h.path),
        },
        Step::Send { conn, .. } => format!("send on {conn}"),
        Step::Expect { conn, what, .. } => format!("expect on {conn} ({})", kind(what)),
        Step::Silence { conn, ms } => format!("silence on {conn} for {ms} ms"),
        Step::Wait { ms } => format!("wait {ms} ms"),
        Step::Close { conn } => format!("close {conn}"),
    }
}

fn kind(what: &Expectation) -> &'static str {
    match what {
        Expectation::Json(_) => "json",
        Expectation::Unordered(_) => "unordered",
        Expectation::Text(_) => "text",
        Expectation::Close(_) => "close",
        Expectation::Event(_) => "event",
        Expectation::Retry(_) => "retry",
        Expectation::Comment(_) => "comment",
        Expectation::Bytes(_) => "bytes",
        Expectation::Eof => "eof",
    }
}

struct Run<'a> {
    target: &'a Target,
    /// Another node of the same cluster (`--peer`): node 2 of the steps.
    peer: Option<&'a Target>,
    profile: &'a crate::Profile,
    timeout: Duration,
    trace: bool,
    vars: Vars,
    ws: HashMap<String, WsConn>,
    sse: HashMap<String, SseConn>,
}

struct WsConn {
    ws: Box<Ws>,
    raw_pings: bool,
}

struct SseConn {
    http: HttpStream,
    raw: VecDeque<u8>,
    decoder: Decoder,
    items: VecDeque<Item>,
    ended: bool,
    /// Whether anything was read yet, and whether the last item read was an event (or bytes).
    consumed_any: bool,
    after_event: bool,
}

/// Which SSE items a step passes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// None.
    Nothing,
    /// Comments (keep-alives).
    Comments,
    /// Comments and `retry` fields.
    Fields,
}

impl<'a> Run<'a> {
    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    fn path_on(&self, target: &Target, path: &str) -> Result<String, String> {
        Ok(format!(
            "{}{}",
            target.prefix,
            self.profile.map_path(&self.vars.interpolate(path)?)
        ))
    }

    /// The server of a step: node 1 is `--base`, node 2 `--peer`.
    fn node(&self, node: u8) -> Result<&'a Target, String> {
        match (node, self.peer) {
            (1, _) => Ok(self.target),
            (2, Some(peer)) => Ok(peer),
            (2, None) => Err("node 2 needs --peer (another node of the same cluster)".into()),
            (n, _) => Err(format!(
                "node {n}: only nodes 1 (--base) and 2 (--peer) exist"
            )),
        }
    }

    fn headers(&self, headers: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
        headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.vars.interpolate(v)?)))
            .collect()
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::OpenWs(open) => self.open_ws(open),
            Step::OpenSse(open) => self.open_sse(open),
            Step::Http(http) => self.http(http),
            Step::Send {
                conn,
                message,
                times,
            } => {
                for i in 0..*times {
                    self.vars.set("i", Value::from(i));
                    let message = match message {
                        Outgoing::Json(v) => {
                            Message::text(self.vars.interpolate_json(v)?.to_string())
                        }
                        Outgoing::Text(t) => Message::text(self.vars.interpolate(t)?),
                        Outgoing::Binary(b) => Message::binary(b.clone()),
                        Outgoing::Frame(bytes) => {
                            if self.trace {
                                trace(conn, "->", &format!("(raw frame, {} bytes)", bytes.len()));
                            }
                            self.ws_conn(conn)?.ws.send_raw(bytes)?;
                            continue;
                        }
                    };
                    if self.trace {
                        trace(conn, "->", message.to_text().unwrap_or("(binary)"));
                    }
                    self.ws_conn(conn)?.ws.send(message)?;
                }
                Ok(())
            }
            Step::Expect { conn, what, skip } => {
                if self.sse.contains_key(conn) {
                    self.expect_sse(conn, what)
                } else {
                    self.expect_ws(conn, what, skip)
                }
            }
            Step::Silence { conn, ms } => {
                let deadline = Instant::now() + Duration::from_millis(*ms);
                if self.sse.contains_key(conn) {
                    match self.next_sse_item(conn, deadline, true)? {
                        None => Ok(()),
                        Some(item) => Err(format!("expected silence, got {}", show_item(&item))),
                    }
                } else {
                    match self.next_ws(conn, deadline)? {
                        Incoming::Timeout => Ok(()),
                        other => Err(format!("expected silence, got {}", show(&other))),
                    }
                }
            }
            Step::Wait { ms } => {
                std::thread::sleep(Duration::from_millis(*ms));
                Ok(())
            }
            Step::Close { conn } => {
                if let Some(mut c) = self.ws.remove(conn) {
                    c.ws.close();
                    Ok(())
                } else if self.sse.remove(conn).is_some() {
                    Ok(())
                } else {
                    Err(format!("no connection {conn:?} is open"))
                }
            }
        }
    }

    fn ws_conn(&mut self, conn: &str) -> Result<&mut WsConn, String> {
        self.ws
            .get_mut(conn)
            .ok_or_else(|| format!("no WebSocket connection {conn:?} is open"))
    }

    fn open_ws(&mut self, open: &OpenWs) -> Result<(), String> {
        let target = self.node(open.node)?;
        let path = self.path_on(target, &open.path)?;
        let headers = self.headers(&open.headers)?;
        let deadline = self.deadline();
        match (Ws::open(target, &path, &headers, deadline)?, open.status) {
            (Upgrade::Open(ws), None) => {
                self.ws.insert(
                    open.conn.clone(),
                    WsConn {
                        ws,
                        raw_pings: open.raw_pings,
                    },
                );
                if open.welcome {
                    let welcome = self.expect_ws_json(&open.conn, deadline)?;
                    if welcome.get("type").and_then(Value::as_str) != Some("welcome") {
                        return Err(format!("the first frame must be welcome, got {welcome}"));
                    }
                    if let Some(cursor) = welcome.get("cursor") {
                        self.vars
                            .set(format!("{}.cursor", open.conn), cursor.clone());
                    }
                }
                Ok(())
            }
            (Upgrade::Open(_), Some(status)) => Err(format!(
                "expected the upgrade to be refused with {status}, it succeeded"
            )),
            (Upgrade::Refused(head, body), Some(status)) => {
                check_head(&head, status, &open.response_headers, &mut self.vars)?;
                check_body(&open.body, &body, &mut self.vars)
            }
            (Upgrade::Refused(head, body), None) => Err(format!(
                "the upgrade was refused with {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )),
        }
    }

    fn open_sse(&mut self, open: &OpenSse) -> Result<(), String> {
        let target = self.node(open.node)?;
        let path = self.path_on(target, &open.path)?;
        let mut headers = self.headers(&open.headers)?;
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
        {
            headers.push(("Accept".into(), "text/event-stream".into()));
        }
        let deadline = self.deadline();
        let req = request("GET", &target.authority, &path, &headers, None);
        let mut http = HttpStream::send(target, &req, deadline)?;
        let head = http.head(deadline)?;
        check_head(&head, open.status, &open.response_headers, &mut self.vars)?;
        if head.status != 200 {
            let body = http.body(deadline)?;
            return check_body(&open.body, &body, &mut self.vars);
        }
        self.sse.insert(
            open.conn.clone(),
            SseConn {
                http,
                raw: VecDeque::new(),
                decoder: Decoder::new(),
                items: VecDeque::new(),
                ended: false,
                consumed_any: false,
                after_event: false,
            },
        );
        Ok(())
    }

    fn http(&mut self, http: &Http) -> Result<(), String> {
        let target = self.node(http.node)?;
        let deadline = self.deadline();
        let req = match &http.raw {
            Some(raw) => self.vars.interpolate(raw)?.into_bytes(),
            None => {
                let body = http
                    .body
                    .as_deref()
                    .map(|b| self.vars.interpolate(b))
                    .transpose()?;
                request(
                    &http.method,
                    &target.authority,
                    &self.path_on(target, &http.path)?,
                    &self.headers(&http.headers)?,
                    body.as_deref(),
                )
            }
        };
        let mut stream = HttpStream::send(target, &req, deadline)?;
        let head = stream.head(deadline)?;
        let body = stream.body(deadline)?;
        check_head(&head, http.status, &http.response_headers, &mut self.vars)
            .map_err(|e| format!("{e} (body: {})", String::from_utf8_lossy(&body)))?;
        check_body(&http.body_expect, &body, &mut self.vars)
    }

    /// The next WebSocket message; server `ping` frames are answered with `pong` and skipped
    /// unless the connection shows them.
    fn next_ws(&mut self, conn: &str, deadline: Instant) -> Result<Incoming, String> {
        let tracing = self.trace;
        let c = self.ws_conn(conn)?;
        loop {
            let incoming = c.ws.next(deadline)?;
            if tracing {
                trace(conn, "<-", &show(&incoming));
            }
            if !c.raw_pings
                && let Incoming::Text(text) = &incoming
                && text == r#"{"type":"ping"}"#
            {
                c.ws.send(Message::text(r#"{"op":"pong"}"#))?;
                continue;
            }
            return Ok(incoming);
        }
    }

    fn expect_ws_json(&mut self, conn: &str, deadline: Instant) -> Result<Value, String> {
        self.expect_ws_json_skipping(conn, deadline, None, &[])
    }

    /// The next JSON frame, or with `skip`, the first one that matches `pattern` after frames that
    /// match one of `skip` (a frame matching both is the one expected).
    fn expect_ws_json_skipping(
        &mut self,
        conn: &str,
        deadline: Instant,
        pattern: Option<&Value>,
        skip: &[Value],
    ) -> Result<Value, String> {
        loop {
            let frame: Value = match self.next_ws(conn, deadline)? {
                Incoming::Text(text) => serde_json::from_str(&text).map_err(|e| {
                    format!("the server sent a frame that is not JSON ({e}): {text}")
                })?,
                other => return Err(format!("expected a frame, got {}", show(&other))),
            };
            let expected =
                pattern.is_none_or(|p| matches(p, &frame, &mut self.vars.clone()).is_ok());
            if expected
                || !skip
                    .iter()
                    .any(|p| matches(p, &frame, &mut self.vars.clone()).is_ok())
            {
                return Ok(frame);
            }
        }
    }

    fn expect_ws(&mut self, conn: &str, what: &Expectation, skip: &[Value]) -> Result<(), String> {
        let deadline = self.deadline();
        match what {
            Expectation::Json(pattern) => {
                let frame = self.expect_ws_json_skipping(conn, deadline, Some(pattern), skip)?;
                matches(pattern, &frame, &mut self.vars)
                    .map_err(|e| format!("{e}\n    frame: {frame}"))
            }
            Expectation::Unordered(patterns) => {
                let mut left: Vec<&Value> = patterns.iter().collect();
                while !left.is_empty() {
                    let frame = self.expect_ws_json(conn, deadline)?;
                    let found = left.iter().position(|p| {
                        let mut vars = self.vars.clone();
                        let ok = matches(p, &frame, &mut vars).is_ok();
                        if ok {
                            self.vars = vars;
                        }
                        ok
                    });
                    match found {
                        Some(i) => {
                            left.remove(i);
                        }
                        None => {
                            let want: Vec<String> = left.iter().map(|p| p.to_string()).collect();
                            return Err(format!(
                                "{frame} matches none of the expected frames left: {}",
                                want.join(", ")
                            ));
                        }
                    }
                }
                Ok(())
            }
            Expectation::Text(text) => {
                let want = self.vars.interpolate(text)?;
                match self.next_ws(conn, deadline)? {
                    Incoming::Text(got) if got == want => Ok(()),
                    Incoming::Text(got) => Err(text_diff("the frame", &want, &got)),
                    other => Err(format!("expected {want}, got {}", show(&other))),
                }
            }
            Expectation::Close(code) => {
                match self.next_ws(conn, deadline)? {
                    Incoming::Close(got, reason) => {
                        if code.is_some() && got != *code {
                            return Err(format!(
                                "expected close code {code:?}, got {got:?} ({reason:?})"
                            ));
                        }
                    }
                    Incoming::End if code.is_none() => return Ok(()),
                    other => return Err(format!("expected a close frame, got {}", show(&other))),
                }
                match self.next_ws(conn, deadline)? {
                    Incoming::End => Ok(()),
                    other => Err(format!(
                        "expected the connection to end after the close frame, got {}",
                        show(&other)
                    )),
                }
            }
            Expectation::Eof => match self.next_ws(conn, deadline)? {
                Incoming::End | Incoming::Close(..) => Ok(()),
                other => Err(format!(
                    "expected the connection to end, got {}",
                    show(&other)
                )),
            },
            other => Err(format!(
                "`{}` is an SSE expectation; {conn:?} is a WebSocket",
                kind(other)
            )),
        }
    }

    /// The next SSE item; `None` at the deadline (with `quiet`) — otherwise a timeout is an
    /// error. Comments are skipped when `skip_comments`.
    fn next_sse_item(
        &mut self,
        conn: &str,
        deadline: Instant,
        quiet: bool,
    ) -> Result<Option<Item>, String> {
        self.next_sse(conn, deadline, Skip::Fields).or_else(|e| {
            if quiet && e == TIMEOUT {
                Ok(None)
            } else {
                Err(e)
            }
        })
    }

    fn next_sse(
        &mut self,
        conn: &str,
        deadline: Instant,
        skip: Skip,
    ) -> Result<Option<Item>, String> {
        let c = self
            .sse
            .get_mut(conn)
            .ok_or_else(|| format!("no SSE stream {conn:?} is open"))?;
        loop {
            if let Some(item) = c.items.pop_front() {
                c.after_event = matches!(item, Item::Event(_));
                let skipped = match item {
                    Item::Comment(_) => skip != Skip::Nothing,
                    Item::Retry(_) => skip == Skip::Fields,
                    _ => false,
                };
                if skipped {
                    continue;
                }
                return Ok(Some(item));
            }
            // One byte at a time, so that items end exactly where their bytes end.
            if let Some(byte) = c.raw.pop_front() {
                c.consumed_any = true;
                c.decoder
                    .feed(&[byte])
                    .map_err(|e| format!("the stream is not valid SSE: {e}"))?;
                while let Some(item) = c.decoder.next_item() {
                    if self.trace {
                        trace(conn, "<-", &show_item(&item));
                    }
                    c.items.push_back(item);
                }
                continue;
            }
            if c.ended {
                return Ok(None);
            }
            match c.http.body_part(deadline)? {
                BodyRead::Data(data) => c.raw.extend(data),
                BodyRead::End => c.ended = true,
                BodyRead::Timeout => return Err(TIMEOUT.into()),
            }
        }
    }

    fn expect_sse(&mut self, conn: &str, what: &Expectation) -> Result<(), String> {
        let deadline = self.deadline();
        match what {
            Expectation::Event(pattern) => match self.next_sse(conn, deadline, Skip::Fields)? {
                Some(Item::Event(event)) => {
                    let mut actual = serde_json::json!({
                        "event": event.event_type,
                        "data": event.data,
                        "id": event.last_event_id,
                    });
                    if pattern.get("data_json").is_some() {
                        let parsed: Value = serde_json::from_str(&event.data).map_err(|e| {
                            format!("the event's data is not JSON ({e}): {:?}", event.data)
                        })?;
                        actual.as_object_mut().map(|o| {
                            o.remove("data");
                            o.insert("data_json".into(), parsed)
                        });
                    }
                    matches(pattern, &actual, &mut self.vars)
                        .map_err(|e| format!("{e}\n    event: {actual}"))
                }
                Some(other) => Err(format!("expected an event, got {}", show_item(&other))),
                None => Err("expected an event, the stream ended".into()),
            },
            Expectation::Retry(ms) => match self.next_sse(conn, deadline, Skip::Comments)? {
                Some(Item::Retry(got)) if got == *ms => Ok(()),
                Some(other) => Err(format!("expected retry: {ms}, got {}", show_item(&other))),
                None => Err("expected retry, the stream ended".into()),
            },
            Expectation::Comment(text) => match self.next_sse(conn, deadline, Skip::Nothing)? {
                Some(Item::Comment(got)) if &got == text => Ok(()),
                Some(other) => Err(format!(
                    "expected the comment {text:?}, got {}",
                    show_item(&other)
                )),
                None => Err("expected a comment, the stream ended".into()),
            },
            Expectation::Bytes(text) => {
                let want = self.vars.interpolate(text)?.into_bytes();
                let c = self
                    .sse
                    .get_mut(conn)
                    .ok_or_else(|| format!("no SSE stream {conn:?} is open"))?;
                if !c.items.is_empty() {
                    return Err(
                        "`bytes` must not follow a step that read part of an SSE block".into(),
                    );
                }
                // A retry or comment step consumed its line; the blank line that ends its block
                // is still to come and belongs to it.
                if !c.after_event && c.consumed_any {
                    while c.raw.is_empty() && !c.ended {
                        match c.http.body_part(deadline)? {
                            BodyRead::Data(data) => c.raw.extend(data),
                            BodyRead::End => c.ended = true,
                            BodyRead::Timeout => break,
                        }
                    }
                    if c.raw.front() == Some(&b'\n') {
                        c.raw.pop_front();
                        c.decoder.feed(b"\n").map_err(|e| e.to_string())?;
                    }
                }
                while c.raw.len() < want.len() && !c.ended {
                    match c.http.body_part(deadline)? {
                        BodyRead::Data(data) => c.raw.extend(data),
                        BodyRead::End => c.ended = true,
                        BodyRead::Timeout => break,
                    }
                }
                let got: Vec<u8> = c.raw.iter().take(want.len()).copied().collect();
                if got != want {
                    return Err(text_diff(
                        "the bytes",
                        &String::from_utf8_lossy(&want),
                        &String::from_utf8_lossy(&got),
                    ));
                }
                c.raw.drain(..want.len());
                c.decoder.feed(&want).map_err(|e| e.to_string())?;
                while c.decoder.next_item().is_some() {}
                c.after_event = true;
                c.consumed_any = true;
                Ok(())
            }
            Expectation::Eof => match self.next_sse(conn, deadline, Skip::Fields)? {
                None => Ok(()),
                Some(item) => Err(format!(
                    "expected the stream to end, got {}",
                    show_item(&item)
                )),
            },
            other => Err(format!(
                "`{}` is a WebSocket expectation; {conn:?} is an SSE stream",
                kind(other)
            )),
        }
    }
}

fn trace(conn: &str, dir: &str, what: &str) {
    let what = match what.char_indices().nth(160) {
        Some((at, _)) => format!("{}… ({} bytes)", &what[..at], what.len()),
        None => what.to_owned(),
    };
    eprintln!("    {conn} {dir} {what}");
}

const TIMEOUT: &str = "nothing arrived in time";

fn check_head(
    head: &Head,
    status: u16,
    expected: &[(String, Value)],
    vars: &mut Vars,
) -> Result<(), String> {
    if head.status != status {
        return Err(format!("expected status {status}, got {}", head.status));
    }
    for (name, pattern) in expected {
        let actual = head.header(name).map(|v| Value::String(v.to_owned()));
        if pattern.as_str() == Some("$absent") {
            if let Some(v) = actual {
                return Err(format!("header {name} should be absent, got {v}"));
            }
            continue;
        }
        let actual = actual.ok_or_else(|| format!("header {name} is missing"))?;
        matches(pattern, &actual, vars).map_err(|e| format!("header {name}: {e}"))?;
    }
    Ok(())
}

fn check_body(expected: &Body, body: &[u8], vars: &mut Vars) -> Result<(), String> {
    match expected {
        Body::Any => Ok(()),
        Body::Text(text) => {
            let want = vars.interpolate(text)?;
            if want.as_bytes() == body {
                Ok(())
            } else {
                Err(text_diff("the body", &want, &String::from_utf8_lossy(body)))
            }
        }
        Body::Json(pattern) => {
            let actual: Value = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "the body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(body)
                )
            })?;
            matches(pattern, &actual, vars).map_err(|e| format!("{e}\n    body: {actual}"))
        }
    }
}

fn show(incoming: &Incoming) -> String {
    match incoming {
        Incoming::Text(t) => format!("the frame {t}"),
        Incoming::Binary(b) => format!("a binary message of {} bytes", b.len()),
        Incoming::Close(code, reason) => format!("a close frame ({code:?}, {reason:?})"),
        Incoming::End => "the end of the connection".into(),
        Incoming::Timeout => TIMEOUT.into(),
    }
}

fn show_item(item: &Item) -> String {
    match item {
        Item::Event(e) => format!(
            "the event {{event: {:?}, data: {:?}, id: {:?}}}",
            e.event_type, e.data, e.last_event_id
        ),
        Item::Retry(ms) => format!("retry: {ms}"),
        Item::Comment(c) => format!("the comment {c:?}"),
        _ => "an unknown SSE item".into(),
    }
}

/// Writes text with what is invisible made visible: `\n`, `\r`, `\t`, other control characters
/// as `\u{..}`, a backslash as `\\`, and a space at either end as `\x20` (spaces inside stay).
pub(crate) fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            ' ' if i == 0 || i == last => out.push_str("\\x20"),
            c if c.is_control() || c == '\u{feff}' || c == '\u{a0}' => {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// A mismatch of exact texts, invisible characters escaped, and where they first differ.
fn text_diff(what: &str, want: &str, got: &str) -> String {
    let at = want
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| want.len().min(got.len()));
    let rest = |s: &str| match s.get(at..) {
        Some("") | None => "the end".to_owned(),
        Some(r) => format!("\"{}\"", visible(&r.chars().take(12).collect::<String>())),
    };
    format!(
        "expected {what} exactly\n      \"{}\"\n    got\n      \"{}\"\n    first difference at byte {at}: expected {}, got {}",
        visible(want),
        visible(got),
        rest(want),
        rest(got)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_differences_are_shown() {
        let e = text_diff("the frame", "{\"a\":1}", "{\"a\":1}\n");
        assert!(e.contains(r#""{"a":1}\n""#), "{e}");
        assert!(e.contains(r#"expected the end, got "\n""#), "{e}");
        let e = text_diff("the body", "ok\r\n", "ok\n");
        assert!(e.contains(r#""ok\r\n""#) && e.contains("byte 2"), "{e}");
        let e = text_diff("the body", "a b", "a b ");
        assert!(e.contains(r#""a b\x20""#), "{e}");
    }
}
