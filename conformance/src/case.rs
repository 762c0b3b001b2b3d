//! The case files: language-neutral JSON transcripts under `conformance/cases/<group>/`, parsed
//! into [`Case`]s of [`Step`]s. The format is specified in `docs/CONFORMANCE.md`; a mistake in a
//! file is reported with the file, the case and the step.

use serde_json::{Map, Value};

/// One conformance case: a transcript of connections, frames and requests.
#[derive(Debug, Clone)]
pub struct Case {
    /// `group/file/name`, e.g. `native/subscribe/resume-evicted-gap`.
    pub id: String,
    /// The group (the directory): `native`, `sse`, `http`, …
    pub group: String,
    /// What the case checks, in one sentence.
    pub description: String,
    /// Where the behaviour is specified (e.g. `PROTOCOL.md §6.1`).
    pub spec: String,
    /// Features the server must have (names from [`crate::profile::FEATURES`]); a case of kind
    /// extension also needs `tidings-extension`. Without them it is not applicable.
    pub requires: Vec<String>,
    /// Whether the case checks the protocol's own behaviour or a tidings extension.
    pub kind: Kind,
    /// For an extension: where tidings documents it (e.g. `COMPAT.md#deviations-from-the-go-server-on-purpose`).
    pub extension: Option<String>,
    /// JWTs the case uses, by name: their claims (signed with [`crate::PROFILE_JWT_SECRET`]).
    pub tokens: Vec<(String, Map<String, Value>)>,
    /// The transcript.
    pub steps: Vec<Step>,
}

/// What a case is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The protocol's own behaviour: any faithful implementation passes it.
    Spec,
    /// A tidings addition or deviation, documented where [`Case::extension`] says.
    Extension,
}

impl Kind {
    /// `spec` or `extension`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spec => "spec",
            Self::Extension => "extension",
        }
    }
}

/// One step of a transcript.
#[derive(Debug, Clone)]
pub enum Step {
    /// Open a WebSocket connection named `conn`.
    OpenWs(OpenWs),
    /// Open an SSE stream named `conn`.
    OpenSse(OpenSse),
    /// One plain HTTP request and its answer.
    Http(Http),
    /// Send a WebSocket message on `conn`.
    Send {
        /// The connection.
        conn: String,
        /// What to send.
        message: Outgoing,
        /// How many times (default 1); the variable `i` counts from 0.
        times: u64,
    },
    /// The next thing arriving on `conn` must match.
    Expect {
        /// The connection.
        conn: String,
        /// What must arrive.
        what: Expectation,
        /// WebSocket frames matching one of these patterns are skipped before it (e.g. keep-alive
        /// pings, or the events before a notice whose position is not fixed).
        skip: Vec<Value>,
    },
    /// Nothing (but keep-alives) arrives on `conn` for `ms` milliseconds.
    Silence {
        /// The connection.
        conn: String,
        /// How long.
        ms: u64,
    },
    /// Let time pass (for timers that the case is about).
    Wait {
        /// How long.
        ms: u64,
    },
    /// The client closes `conn`.
    Close {
        /// The connection.
        conn: String,
    },
}

/// Opening a WebSocket.
#[derive(Debug, Clone)]
pub struct OpenWs {
    /// The connection's name in the case.
    pub conn: String,
    /// The server: 1 (`--base`, the default) or 2 (`--peer`, another node of the same cluster).
    pub node: u8,
    /// Request path with query (interpolated); default `/ws`.
    pub path: String,
    /// Request headers (interpolated).
    pub headers: Vec<(String, String)>,
    /// The expected refusal status; `None`: the upgrade must succeed.
    pub status: Option<u16>,
    /// Expected headers of a refusal.
    pub response_headers: Vec<(String, Value)>,
    /// Expected body of a refusal.
    pub body: Body,
    /// Whether the first frame (`welcome`) is read and checked by the runner (default) or left
    /// to the case's own steps.
    pub welcome: bool,
    /// Whether server `ping` frames are shown to the case instead of answered by the runner.
    pub raw_pings: bool,
}

/// Opening an SSE stream.
#[derive(Debug, Clone)]
pub struct OpenSse {
    /// The connection's name in the case.
    pub conn: String,
    /// The server: 1 (`--base`, the default) or 2 (`--peer`, another node of the same cluster).
    pub node: u8,
    /// Request path with query (interpolated); default `/sse`.
    pub path: String,
    /// Request headers (interpolated).
    pub headers: Vec<(String, String)>,
    /// The expected status (default 200).
    pub status: u16,
    /// Expected response headers (names case-insensitive; `$absent` allowed).
    pub response_headers: Vec<(String, Value)>,
    /// Expected body when the status is not 200.
    pub body: Body,
}

/// One plain HTTP exchange.
#[derive(Debug, Clone)]
pub struct Http {
    /// The server: 1 (`--base`, the default) or 2 (`--peer`).
    pub node: u8,
    /// Method.
    pub method: String,
    /// Path with query (interpolated).
    pub path: String,
    /// Request headers (interpolated).
    pub headers: Vec<(String, String)>,
    /// Request body (interpolated); with a body, `Content-Length` is added unless given.
    pub body: Option<String>,
    /// A complete raw request instead (interpolated), for malformed requests.
    pub raw: Option<String>,
    /// The expected status.
    pub status: u16,
    /// Expected response headers.
    pub response_headers: Vec<(String, Value)>,
    /// Expected body.
    pub body_expect: Body,
}

/// An expected body.
#[derive(Debug, Clone, Default)]
pub enum Body {
    /// Not checked.
    #[default]
    Any,
    /// Parsed as JSON and matched against a pattern.
    Json(Value),
    /// Exactly this text (interpolated).
    Text(String),
}

/// A WebSocket message to send.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A JSON value (interpolated), sent as a text message.
    Json(Value),
    /// Exactly this text (interpolated).
    Text(String),
    /// A binary message (bytes given as hex).
    Binary(Vec<u8>),
    /// Bytes written to the connection as they are, not as a message: a WebSocket frame the
    /// case builds itself (given as hex), to break the framing rules on purpose.
    Frame(Vec<u8>),
}

/// What must arrive next on a connection.
#[derive(Debug, Clone)]
pub enum Expectation {
    /// WebSocket: a text message whose JSON matches the pattern.
    Json(Value),
    /// WebSocket: the next messages match these patterns, in any order.
    Unordered(Vec<Value>),
    /// WebSocket: a text message that is exactly this text (interpolated).
    Text(String),
    /// WebSocket: a close frame (with this code, if given), then the end of the connection.
    Close(Option<u16>),
    /// SSE: an event, as an `EventSource` dispatches it: `{"event","data","id"}`, each a pattern
    /// (`data_json` instead of `data` matches the data parsed as JSON).
    Event(Value),
    /// SSE: a `retry:` field with this value.
    Retry(u64),
    /// SSE: a comment line with this text (a keep-alive is the empty comment).
    Comment(String),
    /// SSE: exactly these bytes next in the stream (interpolated).
    Bytes(String),
    /// The server ends the stream or connection.
    Eof,
}

/// Parses one case file of `group` (named `file`, without extension).
pub fn parse_file(group: &str, file: &str, text: &str) -> Result<Vec<Case>, String> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| format!("{group}/{file}.json: {e}"))?;
    let cases = root
        .get("cases")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{group}/{file}.json: the top level needs a \"cases\" array"))?;
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            parse_case(group, file, case).map_err(|e| format!("{group}/{file}.json, case {i}: {e}"))
        })
        .collect()
}

fn parse_case(group: &str, file: &str, case: &Value) -> Result<Case, String> {
    let obj = case.as_object().ok_or("a case must be an object")?;
    let name = string(obj, "name")?.ok_or("\"name\" is missing")?;
    const KEYS: &[&str] = &[
        "name",
        "spec",
        "description",
        "requires",
        "kind",
        "extension",
        "tokens",
        "steps",
    ];
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "case {name:?}: unknown key {k:?} (allowed: {})",
            KEYS.join(", ")
        ));
    }
    let description = string(obj, "description")?.ok_or("\"description\" is missing")?;
    let spec = string(obj, "spec")?.unwrap_or_default();
    let mut requires: Vec<String> = match obj.get("requires") {
        None => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| "\"requires\" must be a list of strings")?,
    };
    crate::profile::check_features(&format!("case {name:?}, \"requires\""), &requires)?;
    let kind = match string(obj, "kind")?.as_deref() {
        None | Some("spec") => Kind::Spec,
        Some("extension") => Kind::Extension,
        Some(other) => {
            return Err(format!(
                "\"kind\" is \"spec\" or \"extension\" (got {other:?})"
            ));
        }
    };
    let extension = string(obj, "extension")?;
    match (kind, &extension) {
        (Kind::Extension, None) => {
            return Err(format!(
                "case {name:?}: an extension names where tidings documents it (\"extension\": \"COMPAT.md#…\")"
            ));
        }
        (Kind::Spec, Some(_)) => {
            return Err(format!(
                "case {name:?}: \"extension\" is for cases of kind extension"
            ));
        }
        _ => {}
    }
    if kind == Kind::Extension && !requires.iter().any(|f| f == "tidings-extension") {
        requires.push("tidings-extension".into());
    }
    let tokens = match obj.get("tokens") {
        None => Vec::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::Object(claims) => Ok((k.clone(), claims.clone())),
                _ => Err(format!("token {k:?} must be an object of claims")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"tokens\" must be an object".into()),
    };
    let steps = obj
        .get("steps")
        .and_then(Value::as_array)
        .ok_or("\"steps\" must be an array")?
        .iter()
        .enumerate()
        .map(|(i, s)| parse_step(s).map_err(|e| format!("case {name:?}, step {}: {e}", i + 1)))
        .collect::<Result<_, _>>()?;
    Ok(Case {
        id: format!("{group}/{file}/{name}"),
        group: group.to_owned(),
        description,
        spec,
        requires,
        kind,
        extension,
        tokens,
        steps,
    })
}

/// The `node` of a step that opens or asks: 1 (the default) or 2.
fn node(obj: &serde_json::Map<String, Value>) -> Result<u8, String> {
    match number(obj, "node")? {
        None | Some(1) => Ok(1),
        Some(2) => Ok(2),
        Some(n) => Err(format!("\"node\" is 1 (--base) or 2 (--peer), not {n}")),
    }
}

fn parse_step(step: &Value) -> Result<Step, String> {
    let obj = step.as_object().ok_or("a step must be an object")?;
    let known = |allowed: &[&str]| -> Result<(), String> {
        match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "unknown key {k:?} (allowed here: {})",
                allowed.join(", ")
            )),
            None => Ok(()),
        }
    };
    if let Some(conn) = string(obj, "ws")? {
        known(&[
            "ws",
            "path",
            "headers",
            "status",
            "response_headers",
            "json",
            "body",
            "welcome",
            "raw_pings",
            "node",
        ])?;
        let path = string(obj, "path")?.unwrap_or_else(|| "/ws".into());
        // ksbus and etp have no welcome frame.
        let compat = path.starts_with("/ws/bus") || path.starts_with("/etp");
        return Ok(Step::OpenWs(OpenWs {
            conn,
            node: node(obj)?,
            path,
            headers: headers(obj, "headers")?,
            status: number(obj, "status")?.map(|n| n as u16),
            response_headers: expected_headers(obj)?,
            body: body(obj)?,
            welcome: boolean(obj, "welcome")?.unwrap_or(!compat),
            raw_pings: boolean(obj, "raw_pings")?.unwrap_or(false),
        }));
    }
    if let Some(conn) = string(obj, "sse")? {
        known(&[
            "sse",
            "path",
            "headers",
            "status",
            "response_headers",
            "json",
            "body",
            "node",
        ])?;
        return Ok(Step::OpenSse(OpenSse {
            conn,
            node: node(obj)?,
            path: string(obj, "path")?
                .ok_or("\"path\" is missing (e.g. \"/sse?topic=t.${ns}.a\")")?,
            headers: headers(obj, "headers")?,
            status: number(obj, "status")?.map_or(200, |n| n as u16),
            response_headers: expected_headers(obj)?,
            body: body(obj)?,
        }));
    }
    if let Some(request) = obj.get("http") {
        known(&["http", "status", "response_headers", "json", "body", "node"])?;
        let req = request.as_object().ok_or("\"http\" must be an object")?;
        let raw = string(req, "raw")?;
        return Ok(Step::Http(Http {
            node: node(obj)?,
            method: string(req, "method")?.unwrap_or_else(|| "GET".into()),
            path: match (&raw, string(req, "path")?) {
                (_, Some(path)) => path,
                (Some(_), None) => String::new(),
                (None, None) => return Err("\"http\" needs a \"path\" or a \"raw\" request".into()),
            },
            headers: headers(req, "headers")?,
            body: string(req, "body")?,
            raw,
            status: number(obj, "status")?.ok_or("\"status\" is missing")? as u16,
            response_headers: expected_headers(obj)?,
            body_expect: body(obj)?,
        }));
    }
    if let Some(conn) = string(obj, "send")? {
        known(&["send", "json", "text", "binary", "frame", "times"])?;
        let message = if let Some(v) = obj.get("json") {
            Outgoing::Json(v.clone())
        } else if let Some(t) = string(obj, "text")? {
            Outgoing::Text(t)
        } else if let Some(hex) = string(obj, "binary")? {
            Outgoing::Binary(unhex(&hex)?)
        } else if let Some(hex) = string(obj, "frame")? {
            Outgoing::Frame(unhex(&hex)?)
        } else {
            return Err("\"send\" needs \"json\", \"text\", \"binary\" or \"frame\"".into());
        };
        let times = number(obj, "times")?.unwrap_or(1);
        return Ok(Step::Send {
            conn,
            message,
            times,
        });
    }
    if let Some(conn) = string(obj, "expect")? {
        known(&[
            "expect",
            "json",
            "unordered",
            "text",
            "close",
            "event",
            "retry",
            "comment",
            "bytes",
            "eof",
            "skip",
        ])?;
        let skip = match obj.get("skip") {
            None => Vec::new(),
            Some(Value::Array(patterns)) => patterns.clone(),
            Some(_) => return Err("\"skip\" must be an array of frame patterns".into()),
        };
        let what = if let Some(v) = obj.get("json") {
            Expectation::Json(v.clone())
        } else if let Some(v) = obj.get("unordered") {
            Expectation::Unordered(
                v.as_array()
                    .ok_or("\"unordered\" must be an array")?
                    .clone(),
            )
        } else if let Some(t) = string(obj, "text")? {
            Expectation::Text(t)
        } else if let Some(v) = obj.get("close") {
            Expectation::Close(match v {
                Value::Bool(true) => None,
                Value::Number(n) => Some(n.as_u64().ok_or("bad close code")? as u16),
                _ => return Err("\"close\" is a close code or true".into()),
            })
        } else if let Some(v) = obj.get("event") {
            Expectation::Event(v.clone())
        } else if let Some(n) = number(obj, "retry")? {
            Expectation::Retry(n)
        } else if let Some(t) = string(obj, "comment")? {
            Expectation::Comment(t)
        } else if let Some(t) = string(obj, "bytes")? {
            Expectation::Bytes(t)
        } else if boolean(obj, "eof")? == Some(true) {
            Expectation::Eof
        } else {
            return Err("\"expect\" needs one of json, unordered, text, close, event, retry, comment, bytes, eof".into());
        };
        return Ok(Step::Expect { conn, what, skip });
    }
    if let Some(conn) = string(obj, "silence")? {
        known(&["silence", "ms"])?;
        return Ok(Step::Silence {
            conn,
            ms: number(obj, "ms")?.ok_or("\"ms\" is missing")?,
        });
    }
    if let Some(ms) = number(obj, "wait_ms")? {
        known(&["wait_ms"])?;
        return Ok(Step::Wait { ms });
    }
    if let Some(conn) = string(obj, "close")? {
        known(&["close"])?;
        return Ok(Step::Close { conn });
    }
    Err("a step needs one of ws, sse, http, send, expect, silence, wait_ms, close".into())
}

fn string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key:?} must be a string")),
    }
}

fn number(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{key:?} must be a non-negative integer")),
    }
}

fn boolean(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!("{key:?} must be true or false")),
    }
}

fn headers(obj: &Map<String, Value>, key: &str) -> Result<Vec<(String, String)>, String> {
    match obj.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("header {k:?} must be a string")),
            })
            .collect(),
        Some(_) => Err(format!("{key:?} must be an object of header strings")),
    }
}

fn expected_headers(obj: &Map<String, Value>) -> Result<Vec<(String, Value)>, String> {
    match obj.get("response_headers") {
        None => Ok(Vec::new()),
        Some(Value::Object(map)) => Ok(map
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()),
        Some(_) => Err("\"response_headers\" must be an object".into()),
    }
}

fn body(obj: &Map<String, Value>) -> Result<Body, String> {
    Ok(match (obj.get("json"), string(obj, "body")?) {
        (Some(v), None) => Body::Json(v.clone()),
        (None, Some(t)) => Body::Text(t),
        (None, None) => Body::Any,
        (Some(_), Some(_)) => return Err("give \"json\" or \"body\", not both".into()),
    })
}

fn unhex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.len() % 2 != 0 {
        return Err("\"binary\" must be an even number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("bad hex in {hex:?}")))
        .collect()
}
