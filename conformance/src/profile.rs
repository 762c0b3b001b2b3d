//! Server profiles: what a server under test has (`--profile FILE`, TOML), so that cases it
//! cannot run are reported as not applicable instead of failing. The vocabulary of features is
//! [`FEATURES`]; docs/CONFORMANCE.md explains it and ships profiles for tidings and for plain
//! ksbus, etp and SSE servers (`conformance/profiles/`).

use std::collections::BTreeMap;

use serde::Deserialize;

/// Every feature a case may need and a profile may declare, with what it means.
pub const FEATURES: &[(&str, &str)] = &[
    (
        "native-ws",
        "the native WebSocket protocol on /ws (PROTOCOL.md)",
    ),
    (
        "sse",
        "Server-Sent Events streams, GET /sse?topic=T (repeatable)",
    ),
    (
        "publish-http",
        "POST /publish?topic=T[&event=E] publishes its body (HTTP.md §4)",
    ),
    (
        "subscriptions-http",
        "POST /subscriptions changes an open SSE stream's topics (HTTP.md §4.1)",
    ),
    (
        "http-endpoints",
        "GET /healthz, GET /metrics, JSON 404/405/426 answers, malformed requests (HTTP.md)",
    ),
    (
        "ksbus",
        "the ksbus gen C protocol on /ws/bus (the ksbus checklist K1-K15)",
    ),
    (
        "ksbus-gen-a",
        "ksbus gen A additions: the id handshake alias and named routing (send/sendTo)",
    ),
    ("etp", "the etp v3/v4 protocol on /etp (the etp checklist)"),
    (
        "etp-handlers",
        "the application handlers of the etp-handlers cases (hello, empty, fast, slow, e, mystery*)",
    ),
    (
        "cross-protocol",
        "one bus behind every protocol: what one protocol publishes reaches the others' subscribers",
    ),
    (
        "wildcards",
        "topic patterns with * (one segment) and > (the rest)",
    ),
    (
        "replay",
        "cursors and resuming from them (native from, SSE Last-Event-ID) from a bounded history",
    ),
    (
        "grants",
        "anonymous clients limited to subscribe/publish t.>, direct messages, no client id",
    ),
    (
        "jwt",
        "HS256 tokens (header, cookie, query) whose grants are added to the anonymous ones",
    ),
    (
        "cors",
        "the CORS and WebSocket Origin allow-list https://allowed.example",
    ),
    (
        "sse-trigger",
        "the test hook of a plain SSE server: POST <publish path>?topic=T[&event=E] answers 200 and sends the body as one event to the streams of T (CONFORMANCE.md)",
    ),
    (
        "cluster",
        "a node of a cluster with another node of it at --peer URL (given on the command line, not in a profile): resume, delivery and presence across nodes",
    ),
    (
        "presence",
        "who is subscribed to a topic: the native presence op and GET /presence?topic=T",
    ),
    (
        "tidings-extension",
        "tidings' documented additions and deviations (every extension case needs it)",
    ),
];

/// The mount points a profile may move, by name, and where the cases expect them.
pub const PATHS: &[(&str, &str)] = &[
    ("ksbus", "/ws/bus"),
    ("etp", "/etp"),
    ("ws", "/ws"),
    ("sse", "/sse"),
    ("publish", "/publish"),
    ("subscriptions", "/subscriptions"),
];

/// The limits and timers the cases are written for (docs/CONFORMANCE.md); a profile may list
/// them, and must then agree.
pub const LIMITS: &[(&str, u64)] = &[
    ("max_frame_bytes", 65536),
    ("max_subscriptions", 8),
    ("max_topic_len", 64),
    ("max_topic_segments", 6),
    ("max_pending_requests", 4),
    ("max_name_len", 32),
    ("max_queued_bytes", 65536),
    ("retention_events", 100),
    ("keepalive_ms", 1000),
    ("idle_timeout_ms", 3000),
    ("request_timeout_ms", 1000),
    ("sse_retry_ms", 1500),
    ("etp_read_limit", 65536),
];

/// The HS256 secret of the conformance profile: a server under test verifies the cases' tokens
/// with it (see `conformance/server.toml`) unless its profile names another.
pub const PROFILE_JWT_SECRET: &str = "tidings-conformance-profile-secret-0123456789";

/// What the server under test has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// A name for reports (e.g. `ksbus (Go)`).
    pub name: String,
    /// The features it has (names from [`FEATURES`]).
    pub features: Vec<String>,
    /// The groups to run when `--suite` does not say (empty: all).
    pub groups: Vec<String>,
    /// Mount points moved from their default (name from [`PATHS`] → path).
    pub paths: BTreeMap<String, String>,
    /// The HS256 secret the `jwt` cases sign with.
    pub jwt_secret: String,
    /// The id a ksbus server writes as `from` in its own frames (`tidings` for tidings).
    pub ksbus_server_id: String,
}

impl Profile {
    /// tidings' full profile: every feature (what a run without `--profile` assumes).
    pub fn full() -> Self {
        Self {
            name: "tidings (full)".into(),
            features: FEATURES.iter().map(|(f, _)| (*f).to_owned()).collect(),
            groups: Vec::new(),
            paths: BTreeMap::new(),
            jwt_secret: PROFILE_JWT_SECRET.into(),
            ksbus_server_id: "tidings".into(),
        }
    }

    /// Whether the server has `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Parses a profile file's text (`source` names it in errors).
    pub fn from_toml(source: &str, text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        check_features(source, &file.features)?;
        if let Some(g) = file
            .groups
            .iter()
            .find(|g| !crate::GROUPS.contains(&g.as_str()))
        {
            return Err(format!(
                "{source}: unknown group {g:?} in groups; the groups are {}",
                crate::GROUPS.join(", ")
            ));
        }
        for name in file.paths.keys() {
            if !PATHS.iter().any(|(p, _)| p == name) {
                return Err(format!(
                    "{source}: unknown path {name:?} in [paths]; the paths are {}",
                    PATHS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        for (name, path) in &file.paths {
            if !path.starts_with('/') {
                return Err(format!(
                    "{source}: [paths] {name} must start with / (got {path:?})"
                ));
            }
        }
        for (name, value) in &file.limits {
            match LIMITS.iter().find(|(l, _)| l == name) {
                None => {
                    return Err(format!(
                        "{source}: unknown limit {name:?} in [limits]; the limits are {}",
                        LIMITS
                            .iter()
                            .map(|(l, _)| *l)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Some((_, want)) if want != value => {
                    return Err(format!(
                        "{source}: [limits] {name} = {value}, but the cases are written for {want}; configure the server with {want}"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(Self {
            name: file.name.unwrap_or_else(|| source.to_owned()),
            features: file.features,
            groups: file.groups,
            paths: file.paths,
            jwt_secret: file
                .auth
                .jwt_secret
                .unwrap_or_else(|| PROFILE_JWT_SECRET.into()),
            ksbus_server_id: file.ksbus.server_id.unwrap_or_else(|| "tidings".to_owned()),
        })
    }

    /// Reads a profile file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_toml(&path.display().to_string(), &text)
    }

    /// `path` (a case's request path, with its query) with a moved mount point replaced.
    pub fn map_path(&self, path: &str) -> String {
        for (name, default) in PATHS {
            let Some(moved) = self.paths.get(*name) else {
                continue;
            };
            if let Some(rest) = path.strip_prefix(default)
                && (rest.is_empty() || rest.starts_with(['?', '/']))
            {
                // `/ws/bus` is its own mount point, not `/ws` plus `/bus`.
                if *name == "ws" && rest.starts_with("/bus") {
                    continue;
                }
                return format!("{}{rest}", moved.trim_end_matches('/'));
            }
        }
        path.to_owned()
    }
}

/// Every name of `features` is in [`FEATURES`]; otherwise an error listing the allowed names.
pub fn check_features(source: &str, features: &[String]) -> Result<(), String> {
    match features
        .iter()
        .find(|f| !FEATURES.iter().any(|(n, _)| n == f))
    {
        Some(unknown) => Err(format!(
            "{source}: unknown feature {unknown:?}; the features are {}",
            FEATURES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    features: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    paths: BTreeMap<String, String>,
    #[serde(default)]
    limits: BTreeMap<String, u64>,
    #[serde(default)]
    auth: Auth,
    #[serde(default)]
    ksbus: Ksbus,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    jwt_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ksbus {
    server_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_features_are_errors() {
        let e = Profile::from_toml("p.toml", "features = [\"ksbus\", \"wildcard\"]").unwrap_err();
        assert!(e.contains("unknown feature \"wildcard\""), "{e}");
        assert!(e.contains("wildcards") && e.contains("native-ws"), "{e}");
    }

    #[test]
    fn limits_must_agree() {
        let e = Profile::from_toml(
            "p.toml",
            "features = []\n[limits]\nmax_frame_bytes = 1048576",
        )
        .unwrap_err();
        assert!(e.contains("written for 65536"), "{e}");
        assert!(
            Profile::from_toml("p.toml", "features = []\n[limits]\nmax_frame_bytes = 65536")
                .is_ok()
        );
    }

    #[test]
    fn paths_move_mount_points() {
        let p = Profile::from_toml(
            "p.toml",
            "features = []\n[paths]\nksbus = \"/bus\"\nws = \"/rt/ws\"\n",
        )
        .unwrap();
        assert_eq!(p.map_path("/ws/bus"), "/bus");
        assert_eq!(p.map_path("/ws?token=x"), "/rt/ws?token=x");
        assert_eq!(p.map_path("/wsx"), "/wsx");
        assert_eq!(p.map_path("/etp"), "/etp");
    }
}
