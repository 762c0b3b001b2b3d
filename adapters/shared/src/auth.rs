//! Authentication: JWT bearer tokens and anonymous access, turned into [`Grants`].
//!
//! An [`Authenticator`] is built once at start-up from an [`AuthConfig`] (keys are read, parsed
//! and checked then, so a bad key stops the server with a clear message instead of refusing
//! every client later). For each request it looks for a token, in this order, and uses the first
//! one it finds:
//!
//! 1. the `Authorization: Bearer <token>` header,
//! 2. a cookie (`tidings_token` unless configured otherwise),
//! 3. the `token` query parameter (for `EventSource`, which cannot set headers; query strings end
//!    up in access logs, so prefer short-lived tokens there).
//!
//! A request without a token gets the anonymous grants, or `401` when anonymous access is
//! refused. A request with a token that does not verify (bad signature, expired, wrong issuer or
//! audience, malformed claims) always gets `401`: it never falls back to anonymous access, nor to
//! a token from a later source. A valid token grants what its claims say plus whatever anonymous
//! clients get (a token never gives less than no token). `docs/AUTH.md` documents the
//! configuration and the claim format for operators.

use std::fmt;
use std::path::{Path, PathBuf};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tidings_core::{ClientIds, Grants, Limits, Name, NameLimits, Pattern, Topic};

use crate::request::RequestHead;

/// The cookie read for a token unless [`AuthConfig::cookie`] says otherwise.
pub const DEFAULT_COOKIE: &str = "tidings_token";
/// The query parameter read for a token (when [`AuthConfig::query_token`] is on).
pub const TOKEN_QUERY_PARAM: &str = "token";
/// The claim holding tidings grants unless [`JwtConfig::claim`] says otherwise.
pub const DEFAULT_CLAIM: &str = "tidings";
/// The prefix of tidings entries in a space-separated `scope` claim
/// (`tidings:subscribe:<pattern>`, `tidings:publish:<pattern>`, `tidings:direct`).
pub const SCOPE_PREFIX: &str = "tidings:";
/// Clock skew tolerated on `exp` and `nbf` unless [`JwtConfig::leeway`] says otherwise.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The largest [`JwtConfig::leeway`] accepted.
pub const MAX_LEEWAY_SECS: u64 = 3600;
/// The shortest HS256 secret accepted (RFC 7518 §3.2: at least the size of the hash output).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// The shortest RSA modulus accepted for RS256.
pub const MIN_RSA_BITS: usize = 2048;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The `[auth]` section of the server configuration.
///
/// The default is anonymous full access and no tokens accepted: what a development server on
/// loopback wants. [`Authenticator::describe`] says so in one line for the start-up log.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// What requests without a token get: `anonymous = false` refuses them with `401`,
    /// `anonymous = true` (the default) allows everything, and a table
    /// `{ subscribe = [..], publish = [..], direct = bool, any_client_id = bool }` allows that.
    pub anonymous: Anonymous,
    /// How bearer tokens are verified (`[auth.jwt]`). Without it the server accepts no token,
    /// and a request carrying one gets `401`.
    pub jwt: Option<JwtConfig>,
    /// The cookie a token is read from; an empty string turns cookies off.
    pub cookie: String,
    /// Whether a token is read from the `token` query parameter. When off, a request carrying
    /// one gets `401` rather than having it silently ignored.
    pub query_token: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: Anonymous::default(),
            jwt: None,
            cookie: DEFAULT_COOKIE.to_owned(),
            query_token: true,
        }
    }
}

/// What requests without a token get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anonymous {
    /// Refused with `401` (`anonymous = false`).
    Refused,
    /// Allowed with these grants (`anonymous = true` for everything, or a table).
    Allowed(GrantsConfig),
}

impl Default for Anonymous {
    fn default() -> Self {
        Self::Allowed(GrantsConfig::all())
    }
}

impl<'de> Deserialize<'de> for Anonymous {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnonymousVisitor;

        impl<'de> Visitor<'de> for AnonymousVisitor {
            type Value = Anonymous;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "`false` (refuse requests without a token), `true` (allow everything) or a \
                     table { subscribe = [patterns], publish = [patterns], direct = bool, \
                     any_client_id = bool }",
                )
            }

            fn visit_bool<E: de::Error>(self, allowed: bool) -> Result<Anonymous, E> {
                Ok(if allowed {
                    Anonymous::Allowed(GrantsConfig::all())
                } else {
                    Anonymous::Refused
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Anonymous, A::Error> {
                GrantsConfig::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Anonymous::Allowed)
            }
        }

        deserializer.deserialize_any(AnonymousVisitor)
    }
}

/// Grants as written in the configuration (patterns are validated by [`Authenticator::new`]).
/// Every field defaults to "nothing".
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GrantsConfig {
    /// Patterns that may be subscribed to (a subscription must be covered by one of them).
    pub subscribe: Vec<String>,
    /// Patterns of topics that may be published to.
    pub publish: Vec<String>,
    /// Whether direct messages (to connections or client ids) and requests may be sent.
    pub direct: bool,
    /// Whether any free client id may be claimed with `identify`.
    pub any_client_id: bool,
}

impl GrantsConfig {
    /// Everything: subscribe and publish to `>`, direct messages, any client id.
    pub fn all() -> Self {
        Self {
            subscribe: vec![">".to_owned()],
            publish: vec![">".to_owned()],
            direct: true,
            any_client_id: true,
        }
    }
}

/// The JWT signature algorithms accepted.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[serde(rename = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256; verified with an RSA public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256; verified with a P-256 public key.
    #[serde(rename = "ES256")]
    Es256,
}

impl JwtAlgorithm {
    fn jsonwebtoken(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }

    /// The name used in tokens and in the configuration (`HS256`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shared secret from the configuration; its `Debug` output does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The `[auth.jwt]` section: how bearer tokens are verified.
///
/// Exactly one key: `secret` or `secret_file` for HS256, `public_key` or `public_key_file` (PEM)
/// for RS256 and ES256. `algorithm` may be left out; it is then HS256 for a secret and follows
/// the key type for a public key.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// `HS256`, `RS256` or `ES256`; the only algorithm tokens may use (inferred from the key when
    /// absent).
    pub algorithm: Option<JwtAlgorithm>,
    /// The HS256 secret, inline (at least [`MIN_HMAC_SECRET_BYTES`] bytes).
    pub secret: Option<Secret>,
    /// A file holding the HS256 secret (its bytes, less one trailing newline).
    pub secret_file: Option<PathBuf>,
    /// The RS256 or ES256 public key in PEM (`-----BEGIN PUBLIC KEY-----`), inline.
    pub public_key: Option<String>,
    /// A PEM file holding the RS256 or ES256 public key.
    pub public_key_file: Option<PathBuf>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud` (one of theirs, if a list). When not set, tokens
    /// carrying an `aud` are refused (RFC 7519 §4.1.3).
    pub audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway: u64,
    /// The claim holding the tidings grants (a namespaced name such as
    /// `https://example.com/tidings` suits identity providers that require one).
    pub claim: String,
    /// Whether `sub` becomes the client id when the grants claim has no `client_id`.
    pub client_id_from_sub: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: None,
            secret: None,
            secret_file: None,
            public_key: None,
            public_key_file: None,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY_SECS,
            claim: DEFAULT_CLAIM.to_owned(),
            client_id_from_sub: true,
        }
    }
}

/// A configuration [`Authenticator::new`] cannot use; the message says what is wrong and what is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfigError(String);

impl AuthConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "auth configuration: {}", self.0)
    }
}

impl std::error::Error for AuthConfigError {}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// What an accepted request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The grants the connection is opened with.
    pub grants: Grants,
    /// The client id the token names (`client_id` in the grants claim, else `sub` unless
    /// configured otherwise); `None` for anonymous requests. The grants allow claiming it.
    pub client_id: Option<Name>,
}

impl Authenticated {
    /// Checks up front that every pattern may be subscribed to (for `/sse`, whose topics come with
    /// the request).
    ///
    /// # Errors
    /// `403` naming the first pattern the grants do not cover.
    pub fn check_subscribe(&self, patterns: &[Pattern]) -> Result<(), AuthError> {
        match patterns.iter().find(|p| !self.grants.may_subscribe(p)) {
            None => Ok(()),
            Some(p) => Err(AuthError::forbidden(format!(
                "not allowed to subscribe to {:?} (may subscribe to: {})",
                p.as_str(),
                list(&self.grants.subscribe)
            ))),
        }
    }

    /// Checks up front that `topic` may be published to (for `POST /publish`).
    ///
    /// # Errors
    /// `403` naming the topic when the grants do not allow it.
    pub fn check_publish(&self, topic: &Topic) -> Result<(), AuthError> {
        if self.grants.may_publish(topic) {
            Ok(())
        } else {
            Err(AuthError::forbidden(format!(
                "not allowed to publish to {:?} (may publish to: {})",
                topic.as_str(),
                list(&self.grants.publish)
            )))
        }
    }
}

/// Why a request was refused: `401` (no acceptable credentials) or `403` (authenticated, but not
/// allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    kind: Refusal,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// 401, no token and anonymous access refused.
    NoToken,
    /// 401, a token (or an `Authorization` header) that is not acceptable.
    InvalidToken,
    /// 403.
    Forbidden,
}

impl AuthError {
    /// A `401` for a token that is not acceptable (also for use by custom authorizers).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            kind: Refusal::InvalidToken,
            message: message.into(),
        }
    }

    /// A `403` (also for use by custom authorizers).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            kind: Refusal::Forbidden,
            message: message.into(),
        }
    }

    /// A `401` for a request without a token where one is required.
    pub(crate) fn no_token(message: impl Into<String>) -> Self {
        Self {
            kind: Refusal::NoToken,
            message: message.into(),
        }
    }

    /// The HTTP status: `401` or `403`.
    pub fn status(&self) -> u16 {
        match self.kind {
            Refusal::NoToken | Refusal::InvalidToken => 401,
            Refusal::Forbidden => 403,
        }
    }

    /// A message for the client (the response body).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The value of the `WWW-Authenticate` response header (RFC 6750 §3): `Bearer
    /// realm="tidings"`, plus `error="invalid_token"` or `error="insufficient_scope"` and the
    /// message as `error_description` (reduced to printable ASCII).
    pub fn www_authenticate(&self) -> String {
        let error = match self.kind {
            Refusal::NoToken => return "Bearer realm=\"tidings\"".to_owned(),
            Refusal::InvalidToken => "invalid_token",
            Refusal::Forbidden => "insufficient_scope",
        };
        let description: String = self
            .message
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                ' '..='~' => c,
                _ => '?',
            })
            .collect();
        format!("Bearer realm=\"tidings\", error=\"{error}\", error_description=\"{description}\"")
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.message)
    }
}

impl std::error::Error for AuthError {}

// ---------------------------------------------------------------------------------------------
// The authenticator
// ---------------------------------------------------------------------------------------------

/// Decides what each request may do. Built once at start-up; cheap to share (`Arc`) and to use
/// from many tasks at once.
#[derive(Clone)]
pub struct Authenticator {
    anonymous: Option<Grants>,
    jwt: Option<Verifier>,
    cookie: Option<String>,
    query_token: bool,
    names: NameLimits,
    max_name_len: usize,
    description: String,
}

#[derive(Clone)]
struct Verifier {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    claim: String,
    client_id_from_sub: bool,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// Where a token came from (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Cookie,
    Query,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Header => "from the Authorization header",
            Self::Cookie => "from the cookie",
            Self::Query => "from the `token` query parameter",
        })
    }
}

/// The grants claim of a token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GrantsClaim {
    subscribe: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    direct: Option<bool>,
    client_id: Option<String>,
    /// What others see of the connection in presence notices: any JSON value, at most
    /// `MAX_INFO_BYTES` as JSON text.
    info: Option<Value>,
}

impl Authenticator {
    /// Builds the authenticator with the core's default name limits: validates the anonymous
    /// grants, reads and checks the key.
    ///
    /// # Errors
    /// [`AuthConfigError`] saying what is wrong and what is allowed.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        Self::with_limits(config, &Limits::default())
    }

    /// Like [`Self::new`], validating patterns and client ids with the broker's `limits`
    /// (`names` and `max_name_len`).
    ///
    /// # Errors
    /// [`AuthConfigError`] saying what is wrong and what is allowed.
    pub fn with_limits(config: &AuthConfig, limits: &Limits) -> Result<Self, AuthConfigError> {
        let names = limits.names;
        let anonymous = match &config.anonymous {
            Anonymous::Refused => None,
            Anonymous::Allowed(g) => Some(config_grants(g, names)?),
        };
        let jwt = config.jwt.as_ref().map(Verifier::new).transpose()?;
        let cookie = Some(config.cookie.clone()).filter(|c| !c.is_empty());
        if let Some(c) = &cookie {
            if !c
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
            {
                return Err(AuthConfigError::new(format!(
                    "cookie {c:?} is not a valid cookie name: use letters, digits and -_.!#$%&'*+^`|~ \
                     (or \"\" to read no cookie)"
                )));
            }
        }
        let mut auth = Self {
            anonymous,
            jwt,
            cookie,
            query_token: config.query_token,
            names,
            max_name_len: limits.max_name_len,
            description: String::new(),
        };
        auth.description = auth.build_description();
        Ok(auth)
    }

    /// Decides what the request may do.
    ///
    /// # Errors
    /// `401` when there is no token and anonymous access is refused, or when the first token
    /// found is not acceptable (the message says why).
    pub fn authenticate(&self, head: &RequestHead) -> Result<Authenticated, AuthError> {
        match self.find_token(head)? {
            Some((token, source)) => self.verify(token, source),
            None => match &self.anonymous {
                Some(grants) => Ok(Authenticated {
                    grants: grants.clone(),
                    client_id: None,
                }),
                None => Err(AuthError::no_token(self.token_required_message())),
            },
        }
    }

    /// One line for the start-up log saying who may do what, e.g. `anonymous clients may
    /// subscribe to > and publish to > (open access); no tokens accepted (no [auth.jwt]
    /// configured)`.
    pub fn describe(&self) -> String {
        self.description.clone()
    }

    /// Whether anonymous clients may do everything (worth a warning outside loopback).
    pub fn is_open(&self) -> bool {
        self.anonymous.as_ref() == Some(&Grants::all())
    }

    /// The cookie tokens are read from, when tokens are accepted (`[auth.jwt]`) and the cookie
    /// is not turned off.
    pub fn token_cookie(&self) -> Option<&str> {
        self.jwt.as_ref().and(self.cookie.as_deref())
    }

    /// The grants of requests without a token; `None` when they are refused.
    pub fn anonymous_grants(&self) -> Option<&Grants> {
        self.anonymous.as_ref()
    }

    /// The first token present, in source order. `Err` for an `Authorization` header that is not
    /// `Bearer <token>`, and for a query token when query tokens are off.
    fn find_token<'a>(
        &self,
        head: &'a RequestHead,
    ) -> Result<Option<(&'a str, Source)>, AuthError> {
        if let Some(value) = head.header("authorization") {
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            let token = rest.trim();
            if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
                return Err(AuthError::unauthorized(
                    "the Authorization header must be `Bearer <token>` (a JWT)",
                ));
            }
            return Ok(Some((token, Source::Header)));
        }
        if let Some(name) = &self.cookie {
            if let Some(token) = head.cookie(name).filter(|t| !t.is_empty()) {
                return Ok(Some((token, Source::Cookie)));
            }
        }
        if let Some(token) = head
            .query_param(TOKEN_QUERY_PARAM)
            .filter(|t| !t.is_empty())
        {
            if !self.query_token {
                return Err(AuthError::unauthorized(
                    "this server does not accept tokens in the query string; send an \
                     `Authorization: Bearer` header instead",
                ));
            }
            return Ok(Some((token, Source::Query)));
        }
        Ok(None)
    }

    fn verify(&self, token: &str, source: Source) -> Result<Authenticated, AuthError> {
        let Some(v) = &self.jwt else {
            return Err(AuthError::unauthorized(format!(
                "a token was sent ({source}) but this server accepts none (no [auth.jwt] \
                 configured); send the request without it"
            )));
        };
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &v.key, &v.validation)
            .map_err(|e| {
                AuthError::unauthorized(format!(
                    "invalid token ({source}): {}",
                    v.explain(&e, token)
                ))
            })?
            .claims;
        let refuse =
            |why: String| AuthError::unauthorized(format!("invalid token ({source}): {why}"));

        let string_claim = |name: &str| match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(refuse(format!("its `{name}` claim must be a string"))),
        };
        let sub = string_claim("sub")?;
        let scope = string_claim("scope")?;
        let claim = match claims.get(&v.claim) {
            None | Some(Value::Null) => GrantsClaim::default(),
            Some(value) => GrantsClaim::deserialize(value).map_err(|e| {
                refuse(format!(
                    "its `{}` claim is malformed ({e}); expected {{\"subscribe\": [patterns], \
                     \"publish\": [patterns], \"direct\": bool, \"client_id\": string, \
                     \"info\": any JSON value}}",
                    v.claim
                ))
            })?,
        };

        let info = match &claim.info {
            None => None,
            Some(value) => {
                let text = value.to_string();
                let max = tidings_core::presence::MAX_INFO_BYTES;
                if text.len() > max {
                    return Err(refuse(format!(
                        "its `{}.info` is {} bytes of JSON; at most {max} are allowed (it goes \
                         with every presence notice of the connection)",
                        v.claim,
                        text.len()
                    )));
                }
                Some(std::sync::Arc::<str>::from(text))
            }
        };
        let mut subscribe = claim.subscribe.unwrap_or_default();
        let mut publish = claim.publish.unwrap_or_default();
        let mut direct = claim.direct.unwrap_or(false);
        for entry in scope.unwrap_or("").split_ascii_whitespace() {
            let Some(rest) = entry.strip_prefix(SCOPE_PREFIX) else {
                continue; // someone else's scope
            };
            if rest == "direct" {
                direct = true;
            } else if let Some(p) = rest.strip_prefix("subscribe:") {
                subscribe.push(p.to_owned());
            } else if let Some(p) = rest.strip_prefix("publish:") {
                publish.push(p.to_owned());
            } else {
                return Err(refuse(format!(
                    "its `scope` has an unknown tidings entry {entry:?}; expected \
                     tidings:subscribe:<pattern>, tidings:publish:<pattern> or tidings:direct"
                )));
            }
        }
        let parse_all = |what: &str, patterns: &[String]| -> Result<Vec<Pattern>, AuthError> {
            patterns
                .iter()
                .map(|p| {
                    Pattern::parse(p, self.names).map_err(|e| {
                        refuse(format!(
                            "it grants an invalid {what} pattern {p:?}: {}",
                            e.message
                        ))
                    })
                })
                .collect()
        };
        let subscribe = parse_all("subscribe", &subscribe)?;
        let publish = parse_all("publish", &publish)?;

        let (client_id, from_sub) = match (claim.client_id.as_deref(), sub) {
            (Some(id), _) => (Some(id), false),
            (None, Some(sub)) if v.client_id_from_sub => (Some(sub), true),
            _ => (None, false),
        };
        let client_id = client_id
            .map(|id| {
                Name::parse("client_id", id, self.max_name_len).map_err(|e| {
                    let hint = if from_sub {
                        format!(
                            " (taken from `sub`; set `{}.client_id`, or client_id_from_sub = \
                             false on the server)",
                            v.claim
                        )
                    } else {
                        String::new()
                    };
                    refuse(format!(
                        "its client id {id:?} is invalid: {}{hint}",
                        e.message
                    ))
                })
            })
            .transpose()?;

        let mut grants = Grants {
            subscribe,
            publish,
            direct,
            client_ids: client_id.clone().map_or(ClientIds::None, ClientIds::Only),
            principal: client_id.clone(),
            info,
        };
        if let Some(anonymous) = &self.anonymous {
            add_grants(&mut grants, anonymous);
        }
        Ok(Authenticated { grants, client_id })
    }

    fn token_required_message(&self) -> String {
        let mut sources = vec!["an `Authorization: Bearer <token>` header".to_owned()];
        if let Some(c) = &self.cookie {
            sources.push(format!("a `{c}` cookie"));
        }
        if self.query_token {
            sources.push(format!("a `{TOKEN_QUERY_PARAM}` query parameter"));
        }
        format!(
            "this server requires a token: send one in {}",
            join_or(&sources)
        )
    }

    fn build_description(&self) -> String {
        let mut line = match &self.anonymous {
            None => "anonymous clients are refused (401)".to_owned(),
            Some(g) if *g == Grants::all() => {
                "anonymous clients may subscribe to > and publish to > (open access)".to_owned()
            }
            Some(g) => format!("anonymous clients {}", describe_grants(g)),
        };
        match &self.jwt {
            None => line.push_str("; no tokens accepted (no [auth.jwt] configured)"),
            Some(v) => {
                let mut what = vec![format!("{}", v.algorithm)];
                if let Some(iss) = &v.issuer {
                    what.push(format!("issuer {iss:?}"));
                }
                if let Some(aud) = &v.audience {
                    what.push(format!("audience {aud:?}"));
                }
                what.push(format!("leeway {} s", v.leeway));
                let mut sources = vec!["the Authorization header".to_owned()];
                if let Some(c) = &self.cookie {
                    sources.push(format!("the {c} cookie"));
                }
                if self.query_token {
                    sources.push(format!("?{TOKEN_QUERY_PARAM}="));
                }
                line.push_str(&format!(
                    "; JWT bearer tokens ({}) accepted from {}, granting the `{}` claim{}",
                    what.join(", "),
                    join_and(&sources),
                    v.claim,
                    if self.anonymous.is_some() {
                        " plus the anonymous grants"
                    } else {
                        ""
                    }
                ));
                if self.is_open() {
                    line.push_str(
                        " (WARNING: anonymous access is open, so tokens grant nothing more; set \
                         `anonymous` in [auth])",
                    );
                }
            }
        }
        line
    }
}

impl Verifier {
    fn new(c: &JwtConfig) -> Result<Self, AuthConfigError> {
        // If feature unification also turns on jsonwebtoken's `aws_lc_rs`, it no longer picks a
        // backend by itself (and would panic when first used): choose the pure-Rust one, unless
        // the process has chosen already.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        );
        let secret = match (&c.secret, &c.secret_file) {
            (Some(_), Some(_)) => {
                return Err(AuthConfigError::new(
                    "[auth.jwt] has both `secret` and `secret_file`: set one",
                ));
            }
            (Some(s), None) => Some(s.expose().as_bytes().to_vec()),
            (None, Some(path)) => {
                let mut bytes = read_file("secret_file", path)?;
                if bytes.ends_with(b"\n") {
                    bytes.pop();
                    if bytes.ends_with(b"\r") {
                        bytes.pop();
                    }
                }
                Some(bytes)
            }
            (None, None) => None,
        };
        let public_key = match (&c.public_key, &c.public_key_file) {
            (Some(_), Some(_)) => {
                return Err(AuthConfigError::new(
                    "[auth.jwt] has both `public_key` and `public_key_file`: set one",
                ));
            }
            (Some(pem), None) => Some(("public_key", pem.as_bytes().to_vec())),
            (None, Some(path)) => Some(("public_key_file", read_file("public_key_file", path)?)),
            (None, None) => None,
        };
        let (algorithm, key) = match (secret, public_key) {
            (Some(_), Some(_)) => {
                return Err(AuthConfigError::new(
                    "[auth.jwt] has both a secret and a public key: HS256 uses `secret` or \
                     `secret_file`, RS256 and ES256 use `public_key` or `public_key_file`; set one",
                ));
            }
            (None, None) => {
                return Err(AuthConfigError::new(
                    "[auth.jwt] needs a key: `secret` or `secret_file` for HS256, or \
                     `public_key` or `public_key_file` (PEM) for RS256 and ES256",
                ));
            }
            (Some(secret), None) => {
                if let Some(alg @ (JwtAlgorithm::Rs256 | JwtAlgorithm::Es256)) = c.algorithm {
                    return Err(AuthConfigError::new(format!(
                        "[auth.jwt] algorithm {alg} verifies with a public key: set \
                         `public_key` or `public_key_file` instead of a secret"
                    )));
                }
                if secret.len() < MIN_HMAC_SECRET_BYTES {
                    return Err(AuthConfigError::new(format!(
                        "the HS256 secret is {} bytes long; at least {MIN_HMAC_SECRET_BYTES} are \
                         required (e.g. `openssl rand -base64 48`)",
                        secret.len()
                    )));
                }
                (JwtAlgorithm::Hs256, DecodingKey::from_secret(&secret))
            }
            (None, Some((field, pem))) => public_key_from_pem(c.algorithm, field, &pem)?,
        };

        for (name, value) in [("issuer", &c.issuer), ("audience", &c.audience)] {
            if value.as_deref() == Some("") {
                return Err(AuthConfigError::new(format!(
                    "[auth.jwt] {name} is empty: leave it out or give the expected value"
                )));
            }
        }
        if c.leeway > MAX_LEEWAY_SECS {
            return Err(AuthConfigError::new(format!(
                "[auth.jwt] leeway is {} seconds; at most {MAX_LEEWAY_SECS} are allowed",
                c.leeway
            )));
        }
        if c.claim.is_empty() {
            return Err(AuthConfigError::new(
                "[auth.jwt] claim is empty: name the claim holding the grants (default \"tidings\")",
            ));
        }

        let mut validation = Validation::new(algorithm.jsonwebtoken());
        validation.leeway = c.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &c.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &c.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            algorithm,
            key,
            validation,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway: c.leeway,
            claim: c.claim.clone(),
            client_id_from_sub: c.client_id_from_sub,
        })
    }

    /// Why `jsonwebtoken` refused a token, for the client.
    fn explain(&self, e: &jsonwebtoken::errors::Error, token: &str) -> String {
        match e.kind() {
            ErrorKind::ExpiredSignature => "it has expired (`exp` is in the past)".to_owned(),
            ErrorKind::ImmatureSignature => {
                "it is not valid yet (`nbf` is in the future)".to_owned()
            }
            ErrorKind::InvalidSignature => {
                "its signature does not verify with the server's key".to_owned()
            }
            ErrorKind::InvalidAlgorithm => {
                let used = jsonwebtoken::decode_header(token)
                    .map(|h| format!("{:?}", h.alg))
                    .unwrap_or_else(|_| "another algorithm".to_owned());
                format!(
                    "it is signed with {used}; this server accepts {} only",
                    self.algorithm
                )
            }
            ErrorKind::InvalidIssuer => format!(
                "its issuer (`iss`) is not {:?}",
                self.issuer.as_deref().unwrap_or_default()
            ),
            ErrorKind::InvalidAudience => match &self.audience {
                Some(aud) => format!("its audience (`aud`) does not include {aud:?}"),
                None => "it has an audience (`aud`) but the server expects none (configure \
                         [auth.jwt] audience)"
                    .to_owned(),
            },
            ErrorKind::MissingRequiredClaim(claim) if claim == "exp" || claim == "nbf" => format!(
                "its `{claim}` claim is missing or not a NumericDate (seconds since the epoch)"
            ),
            ErrorKind::MissingRequiredClaim(claim) => {
                format!("its `{claim}` claim is missing or malformed")
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                format!("its `{claim}` claim is not a number of seconds since the epoch")
            }
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => {
                "it is not a well-formed JWT (three base64url parts separated by \
                                    dots, a JSON header and a JSON object of claims)"
                    .to_owned()
            }
            _ => e.to_string(),
        }
    }
}

/// Reads and checks a PEM public key; infers the algorithm when not configured.
fn public_key_from_pem(
    configured: Option<JwtAlgorithm>,
    field: &str,
    pem: &[u8],
) -> Result<(JwtAlgorithm, DecodingKey), AuthConfigError> {
    if configured == Some(JwtAlgorithm::Hs256) {
        return Err(AuthConfigError::new(format!(
            "[auth.jwt] algorithm HS256 verifies with a shared secret: set `secret` or \
             `secret_file` instead of `{field}`"
        )));
    }
    let text = String::from_utf8_lossy(pem);
    if text.contains("PRIVATE KEY") {
        return Err(AuthConfigError::new(format!(
            "`{field}` holds a private key; give the server the public half only (`openssl pkey \
             -in private.pem -pubout`)"
        )));
    }
    let rsa = rsa_key(pem);
    let ec = ec_key(pem);
    match (configured, rsa, ec) {
        (None | Some(JwtAlgorithm::Rs256), Ok(key), _) => Ok((JwtAlgorithm::Rs256, key)),
        (None | Some(JwtAlgorithm::Es256), _, Ok(key)) => Ok((JwtAlgorithm::Es256, key)),
        (Some(JwtAlgorithm::Rs256), Err(why), _) => Err(AuthConfigError::new(format!(
            "`{field}` is not a usable RS256 key: {why}"
        ))),
        (Some(JwtAlgorithm::Es256), _, Err(why)) => Err(AuthConfigError::new(format!(
            "`{field}` is not a usable ES256 key: {why}"
        ))),
        (_, Err(rsa_why), Err(ec_why)) => Err(AuthConfigError::new(format!(
            "`{field}` is neither a usable RS256 key ({rsa_why}) nor a usable ES256 key \
             ({ec_why}); give a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ))),
        (Some(JwtAlgorithm::Hs256), ..) => unreachable!("checked above"),
    }
}

/// An RSA public key the RS256 verifier can use (it parses the same bytes the same way).
fn rsa_key(pem: &[u8]) -> Result<DecodingKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    let key =
        DecodingKey::from_rsa_pem(pem).map_err(|_| "not an RSA public key in PEM".to_owned())?;
    let parsed = rsa::RsaPublicKey::from_pkcs1_der(key.as_bytes())
        .map_err(|e| format!("the RSA key does not parse ({e})"))?;
    let bits = parsed.n().bits();
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(key)
}

/// A P-256 public key the ES256 verifier can use (it parses the same bytes the same way).
fn ec_key(pem: &[u8]) -> Result<DecodingKey, String> {
    let key =
        DecodingKey::from_ec_pem(pem).map_err(|_| "not an EC public key in PEM".to_owned())?;
    p256::ecdsa::VerifyingKey::from_sec1_bytes(key.as_bytes())
        .map_err(|_| "not a P-256 (prime256v1) key, which ES256 requires".to_owned())?;
    Ok(key)
}

fn read_file(field: &str, path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path)
        .map_err(|e| AuthConfigError::new(format!("[auth.jwt] {field} {}: {e}", path.display())))
}

fn config_grants(g: &GrantsConfig, names: NameLimits) -> Result<Grants, AuthConfigError> {
    let parse_all = |what: &str, patterns: &[String]| -> Result<Vec<Pattern>, AuthConfigError> {
        patterns
            .iter()
            .map(|p| {
                Pattern::parse(p, names).map_err(|e| {
                    AuthConfigError::new(format!(
                        "anonymous {what} pattern {p:?} is invalid: {}",
                        e.message
                    ))
                })
            })
            .collect()
    };
    Ok(Grants {
        subscribe: parse_all("subscribe", &g.subscribe)?,
        publish: parse_all("publish", &g.publish)?,
        direct: g.direct,
        client_ids: if g.any_client_id {
            ClientIds::Any
        } else {
            ClientIds::None
        },
        principal: None,
        info: None,
    })
}

/// Adds `extra` (the anonymous grants) to a token's grants.
fn add_grants(grants: &mut Grants, extra: &Grants) {
    for p in &extra.subscribe {
        if !grants.subscribe.contains(p) {
            grants.subscribe.push(p.clone());
        }
    }
    for p in &extra.publish {
        if !grants.publish.contains(p) {
            grants.publish.push(p.clone());
        }
    }
    grants.direct |= extra.direct;
    if extra.client_ids == ClientIds::Any {
        grants.client_ids = ClientIds::Any;
    }
}

fn describe_grants(g: &Grants) -> String {
    format!(
        "may subscribe to {}; publish to {}; direct messages: {}; client ids: {}",
        list(&g.subscribe),
        list(&g.publish),
        if g.direct { "yes" } else { "no" },
        match &g.client_ids {
            ClientIds::Any => "any".to_owned(),
            ClientIds::Only(id) => format!("only {id:?}"),
            _ => "none".to_owned(),
        }
    )
}

fn list(patterns: &[Pattern]) -> String {
    if patterns.is_empty() {
        "nothing".to_owned()
    } else {
        patterns
            .iter()
            .map(Pattern::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn join_with(items: &[String], word: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} {word} {last}", init.join(", ")),
    }
}

fn join_or(items: &[String]) -> String {
    join_with(items, "or")
}

fn join_and(items: &[String]) -> String {
    join_with(items, "and")
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;

    use super::*;
    use crate::request::parse_head;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa_public.pem");
    const RSA_PUBLIC_PKCS1: &str = include_str!("../tests/keys/rsa_public_pkcs1.pem");
    const RSA_OTHER_PRIVATE: &str = include_str!("../tests/keys/rsa_other_private.pem");
    const RSA_1024_PUBLIC: &str = include_str!("../tests/keys/rsa_1024_public.pem");
    const EC_PRIVATE: &str = include_str!("../tests/keys/ec_private.pem");
    const EC_PUBLIC: &str = include_str!("../tests/keys/ec_public.pem");
    const EC_OTHER_PRIVATE: &str = include_str!("../tests/keys/ec_other_private.pem");
    const EC_P384_PUBLIC: &str = include_str!("../tests/keys/ec_p384_public.pem");

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s, NameLimits::default()).unwrap()
    }

    fn pats(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|s| pat(s)).collect()
    }

    fn name(s: &str) -> Name {
        Name::parse("client_id", s, 128).unwrap()
    }

    fn in_an_hour() -> u64 {
        get_current_timestamp() + 3600
    }

    fn hs256(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn rs256(private_pem: &str, claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
    }

    fn es256(private_pem: &str, claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
    }

    /// Claims granting `chat.>` / `chat.*` to alice.
    fn alice() -> Value {
        json!({
            "sub": "alice",
            "exp": in_an_hour(),
            "tidings": {"subscribe": ["chat.>"], "publish": ["chat.*"], "direct": true},
        })
    }

    fn alice_grants() -> Grants {
        Grants {
            subscribe: pats(&["chat.>"]),
            publish: pats(&["chat.*"]),
            direct: true,
            client_ids: ClientIds::Only(name("alice")),
            principal: Some(name("alice")),
            info: None,
        }
    }

    fn jwt_secret() -> JwtConfig {
        JwtConfig {
            secret: Some(Secret::new(SECRET)),
            ..JwtConfig::default()
        }
    }

    /// Tokens only (anonymous refused), so grants come from the token alone.
    fn token_only(jwt: JwtConfig) -> Authenticator {
        Authenticator::new(&AuthConfig {
            anonymous: Anonymous::Refused,
            jwt: Some(jwt),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn bearer(token: &str) -> RequestHead {
        with_header("authorization", &format!("Bearer {token}"))
    }

    fn with_header(name: &str, value: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/sse".into(),
            headers: vec![(name.into(), value.into())],
            ..RequestHead::default()
        }
    }

    fn with_query(token: &str) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/sse".into(),
            query: vec![
                ("topic".into(), "chat.x".into()),
                ("token".into(), token.into()),
            ],
            ..RequestHead::default()
        }
    }

    #[track_caller]
    fn refused(result: Result<Authenticated, AuthError>, status: u16, contains: &str) -> AuthError {
        let err = result.expect_err("should be refused");
        assert_eq!(err.status(), status, "{}", err.message());
        assert!(
            err.message().contains(contains),
            "{:?} should contain {contains:?}",
            err.message()
        );
        err
    }

    #[track_caller]
    fn config_error(config: &AuthConfig, contains: &str) {
        let err = Authenticator::new(config).expect_err("should be refused");
        assert!(
            err.to_string().contains(contains),
            "{err} should contain {contains:?}"
        );
    }

    fn with_jwt(jwt: JwtConfig) -> AuthConfig {
        AuthConfig {
            jwt: Some(jwt),
            ..AuthConfig::default()
        }
    }

    // --- anonymous access ------------------------------------------------------------------

    #[test]
    fn default_is_open_anonymous_access_and_says_so() {
        let auth = Authenticator::new(&AuthConfig::default()).unwrap();
        let ok = auth.authenticate(&RequestHead::default()).unwrap();
        assert_eq!(ok.grants, Grants::all());
        assert_eq!(ok.client_id, None);
        assert!(auth.is_open());
        assert_eq!(
            auth.describe(),
            "anonymous clients may subscribe to > and publish to > (open access); no tokens \
             accepted (no [auth.jwt] configured)"
        );
    }

    #[test]
    fn anonymous_refused_is_401_naming_the_sources() {
        let auth = token_only(jwt_secret());
        let err = refused(
            auth.authenticate(&RequestHead::default()),
            401,
            "requires a token",
        );
        assert!(
            err.message().contains("`tidings_token` cookie"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("`token` query parameter"),
            "{}",
            err.message()
        );
        assert_eq!(err.www_authenticate(), "Bearer realm=\"tidings\"");
        assert!(!auth.is_open());
        assert!(auth.describe().starts_with(
            "anonymous clients are refused (401); JWT bearer tokens (HS256, leeway 30 s)"
        ));
    }

    #[test]
    fn configured_anonymous_grants() {
        let auth = Authenticator::new(&AuthConfig {
            anonymous: Anonymous::Allowed(GrantsConfig {
                subscribe: vec!["public.>".into(), "news.*".into()],
                publish: vec![],
                direct: false,
                any_client_id: false,
            }),
            ..AuthConfig::default()
        })
        .unwrap();
        let ok = auth.authenticate(&RequestHead::default()).unwrap();
        assert_eq!(
            ok.grants,
            Grants {
                subscribe: pats(&["public.>", "news.*"]),
                ..Grants::none()
            }
        );
        assert!(!auth.is_open());
        assert_eq!(
            auth.describe(),
            "anonymous clients may subscribe to public.>, news.*; publish to nothing; direct \
             messages: no; client ids: none; no tokens accepted (no [auth.jwt] configured)"
        );
        assert_eq!(auth.anonymous_grants(), Some(&ok.grants));
    }

    #[test]
    fn a_token_without_a_verifier_is_401_not_anonymous() {
        let auth = Authenticator::new(&AuthConfig::default()).unwrap();
        refused(
            auth.authenticate(&bearer(&hs256(&alice()))),
            401,
            "accepts none",
        );
        let cookie = with_header("cookie", "tidings_token=abc");
        refused(auth.authenticate(&cookie), 401, "accepts none");
    }

    // --- algorithms and sources ---------------------------------------------------------

    #[test]
    fn hs256_token_from_each_source() {
        let auth = token_only(jwt_secret());
        let token = hs256(&alice());
        let expected = Authenticated {
            grants: alice_grants(),
            client_id: Some(name("alice")),
        };
        assert_eq!(auth.authenticate(&bearer(&token)).unwrap(), expected);
        let lower = with_header("Authorization", &format!("bearer   {token}"));
        assert_eq!(auth.authenticate(&lower).unwrap(), expected);
        let cookie = with_header("cookie", &format!("theme=dark; tidings_token={token}"));
        assert_eq!(auth.authenticate(&cookie).unwrap(), expected);
        assert_eq!(auth.authenticate(&with_query(&token)).unwrap(), expected);
    }

    #[test]
    fn tokens_in_a_real_request_head() {
        let auth = token_only(jwt_secret());
        let token = hs256(&alice());
        let raw = format!(
            "GET /sse?topic=chat.a&token={token} HTTP/1.1\r\nHost: x\r\nCookie: a=b; \
             tidings_token=\"{token}\"\r\n\r\n"
        );
        let (head, _) = parse_head(raw.as_bytes()).unwrap().unwrap();
        assert_eq!(auth.authenticate(&head).unwrap().grants, alice_grants());
    }

    #[test]
    fn rs256_accepted_and_wrong_key_refused() {
        let auth = token_only(JwtConfig {
            algorithm: Some(JwtAlgorithm::Rs256),
            public_key: Some(RSA_PUBLIC.into()),
            ..JwtConfig::default()
        });
        let ok = auth
            .authenticate(&bearer(&rs256(RSA_PRIVATE, &alice())))
            .unwrap();
        assert_eq!(ok.grants, alice_grants());
        let forged = rs256(RSA_OTHER_PRIVATE, &alice());
        refused(
            auth.authenticate(&bearer(&forged)),
            401,
            "signature does not verify",
        );
        // Another algorithm is refused even when its signature would verify.
        refused(
            auth.authenticate(&bearer(&es256(EC_PRIVATE, &alice()))),
            401,
            "signed with ES256; this server accepts RS256 only",
        );
    }

    #[test]
    fn rsa_public_key_in_pkcs1_pem() {
        let auth = token_only(JwtConfig {
            public_key: Some(RSA_PUBLIC_PKCS1.into()),
            ..JwtConfig::default()
        });
        assert!(
            auth.describe().contains("(RS256, leeway 30 s)"),
            "{}",
            auth.describe()
        );
        let ok = auth.authenticate(&bearer(&rs256(RSA_PRIVATE, &alice())));
        assert_eq!(ok.unwrap().grants, alice_grants());
    }

    #[test]
    fn es256_accepted_and_wrong_key_refused() {
        // The algorithm is inferred from the key.
        let auth = token_only(JwtConfig {
            public_key: Some(EC_PUBLIC.into()),
            ..JwtConfig::default()
        });
        assert!(
            auth.describe().contains("JWT bearer tokens (ES256"),
            "{}",
            auth.describe()
        );
        let ok = auth
            .authenticate(&bearer(&es256(EC_PRIVATE, &alice())))
            .unwrap();
        assert_eq!(ok.grants, alice_grants());
        let forged = es256(EC_OTHER_PRIVATE, &alice());
        refused(
            auth.authenticate(&bearer(&forged)),
            401,
            "signature does not verify",
        );
    }

    #[test]
    fn public_key_used_as_hmac_secret_is_refused() {
        // The classic algorithm confusion: HS256 "signed" with the server's public key.
        let auth = token_only(JwtConfig {
            public_key: Some(RSA_PUBLIC.into()),
            ..JwtConfig::default()
        });
        let token = encode(
            &Header::new(Algorithm::HS256),
            &alice(),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        )
        .unwrap();
        refused(auth.authenticate(&bearer(&token)), 401, "signed with HS256");
    }

    #[test]
    fn wrong_secret_and_tampered_claims_are_401() {
        let auth = token_only(jwt_secret());
        let other = encode(
            &Header::new(Algorithm::HS256),
            &alice(),
            &EncodingKey::from_secret(b"another-secret-that-is-long-enough-too"),
        )
        .unwrap();
        refused(
            auth.authenticate(&bearer(&other)),
            401,
            "signature does not verify",
        );

        // Swap in claims granting more, keeping the original signature.
        let token = hs256(&alice());
        let greedy = hs256(&json!({"exp": in_an_hour(), "tidings": {"subscribe": [">"]}}));
        let parts: Vec<&str> = token.split('.').collect();
        let greedy_payload = greedy.split('.').nth(1).unwrap();
        let tampered = format!("{}.{}.{}", parts[0], greedy_payload, parts[2]);
        refused(
            auth.authenticate(&bearer(&tampered)),
            401,
            "signature does not verify",
        );
    }

    #[test]
    fn source_order_header_then_cookie_then_query_without_fallthrough() {
        let auth = token_only(jwt_secret());
        let chat = hs256(&alice());
        let news = hs256(&json!({"exp": in_an_hour(), "tidings": {"subscribe": ["news.>"]}}));
        let head = |auth_header: Option<&str>, cookie: Option<&str>, query: Option<&str>| {
            let mut h = RequestHead::default();
            if let Some(t) = auth_header {
                h.headers
                    .push(("authorization".into(), format!("Bearer {t}")));
            }
            if let Some(t) = cookie {
                h.headers
                    .push(("cookie".into(), format!("tidings_token={t}")));
            }
            if let Some(t) = query {
                h.query.push(("token".into(), t.into()));
            }
            h
        };
        let subs = |r: Result<Authenticated, AuthError>| r.unwrap().grants.subscribe;
        assert_eq!(
            subs(auth.authenticate(&head(Some(&chat), Some(&news), Some(&news)))),
            pats(&["chat.>"])
        );
        assert_eq!(
            subs(auth.authenticate(&head(None, Some(&news), Some(&chat)))),
            pats(&["news.>"])
        );
        assert_eq!(
            subs(auth.authenticate(&head(None, None, Some(&chat)))),
            pats(&["chat.>"])
        );
        // A bad token in an earlier source is refused, not skipped.
        refused(
            auth.authenticate(&head(Some("junk"), Some(&chat), None)),
            401,
            "Authorization header",
        );
        refused(
            auth.authenticate(&head(None, Some("junk"), Some(&chat))),
            401,
            "from the cookie",
        );
        // Empty cookie and query values count as absent.
        assert_eq!(
            subs(auth.authenticate(&head(None, Some(""), Some(&news)))),
            pats(&["news.>"])
        );
        refused(
            auth.authenticate(&head(None, Some(""), Some(""))),
            401,
            "requires a token",
        );
    }

    #[test]
    fn cookie_name_and_query_tokens_are_configurable() {
        let auth = Authenticator::new(&AuthConfig {
            anonymous: Anonymous::Refused,
            jwt: Some(jwt_secret()),
            cookie: "session".into(),
            query_token: false,
        })
        .unwrap();
        let token = hs256(&alice());
        let ok = auth.authenticate(&with_header("cookie", &format!("session={token}")));
        assert_eq!(ok.unwrap().grants, alice_grants());
        // The default cookie name is no longer read.
        refused(
            auth.authenticate(&with_header("cookie", &format!("tidings_token={token}"))),
            401,
            "requires a token",
        );
        // A query token is refused rather than silently ignored.
        refused(auth.authenticate(&with_query(&token)), 401, "query string");

        // An empty cookie name reads no cookie: an open server then treats the request as
        // anonymous, since no token was sent where tokens are read.
        let open = Authenticator::new(&AuthConfig {
            jwt: Some(jwt_secret()),
            cookie: String::new(),
            ..AuthConfig::default()
        })
        .unwrap();
        let head = with_header("cookie", "tidings_token=junk");
        assert_eq!(open.authenticate(&head).unwrap().grants, Grants::all());
    }

    #[test]
    fn malformed_authorization_headers_are_401() {
        let auth = Authenticator::new(&with_jwt(jwt_secret())).unwrap();
        for value in [
            "Basic YWxpY2U6cHc=",
            "Bearer",
            "Bearer    ",
            "Token abc",
            "Bearerabc",
        ] {
            refused(
                auth.authenticate(&with_header("authorization", value)),
                401,
                "must be `Bearer <token>`",
            );
        }
        for junk in ["not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", "...."] {
            let err = refused(auth.authenticate(&bearer(junk)), 401, "invalid token");
            assert!(err.www_authenticate().contains("error=\"invalid_token\""));
        }
    }

    // --- time, issuer, audience -------------------------------------------------------------

    #[test]
    fn expiry_leeway_and_not_before() {
        let auth = token_only(jwt_secret()); // leeway 30 s
        let now = get_current_timestamp();
        let with = |extra: Value| {
            let mut claims = json!({"tidings": {"subscribe": ["a"]}});
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            auth.authenticate(&bearer(&hs256(&claims)))
        };
        refused(with(json!({"exp": now - 300})), 401, "expired");
        assert!(with(json!({"exp": now - 5})).is_ok(), "within the leeway");
        refused(with(json!({})), 401, "`exp` claim is missing");
        refused(
            with(json!({"exp": "tomorrow"})),
            401,
            "`exp` claim is missing or not a NumericDate",
        );
        refused(
            with(json!({"exp": now + 600, "nbf": "soon"})),
            401,
            "`nbf` claim is not a number",
        );
        refused(
            with(json!({"exp": now + 600, "nbf": now + 300})),
            401,
            "not valid yet",
        );
        assert!(with(json!({"exp": now + 600, "nbf": now - 1})).is_ok());

        let strict = token_only(JwtConfig {
            leeway: 0,
            ..jwt_secret()
        });
        let token = hs256(&json!({"exp": now - 5}));
        refused(strict.authenticate(&bearer(&token)), 401, "expired");
    }

    #[test]
    fn issuer_and_audience() {
        let auth = token_only(JwtConfig {
            issuer: Some("https://auth.example.com/".into()),
            audience: Some("tidings".into()),
            ..jwt_secret()
        });
        let claims = |iss: Value, aud: Value| {
            let mut c = alice();
            let obj = c.as_object_mut().unwrap();
            if !iss.is_null() {
                obj.insert("iss".into(), iss);
            }
            if !aud.is_null() {
                obj.insert("aud".into(), aud);
            }
            auth.authenticate(&bearer(&hs256(&c)))
        };
        let iss = json!("https://auth.example.com/");
        assert!(claims(iss.clone(), json!("tidings")).is_ok());
        assert!(claims(iss.clone(), json!(["billing", "tidings"])).is_ok());
        refused(
            claims(json!("https://evil.example/"), json!("tidings")),
            401,
            "issuer",
        );
        refused(claims(iss.clone(), json!("billing")), 401, "audience");
        // Configured means required: a token without them does not slip through.
        refused(
            claims(Value::Null, json!("tidings")),
            401,
            "`iss` claim is missing",
        );
        refused(claims(iss, Value::Null), 401, "`aud` claim is missing");
        assert!(
            auth.describe()
                .contains("issuer \"https://auth.example.com/\", audience \"tidings\"")
        );

        // With no audience configured, a token meant for some audience is refused.
        let plain = token_only(jwt_secret());
        let mut c = alice();
        c["aud"] = json!("billing");
        refused(
            plain.authenticate(&bearer(&hs256(&c))),
            401,
            "configure [auth.jwt] audience",
        );
    }

    // --- claims to grants -------------------------------------------------------------------

    #[test]
    fn claims_map_to_grants() {
        let auth = token_only(jwt_secret());
        let grants_of = |claims: Value| auth.authenticate(&bearer(&hs256(&claims)));

        // An explicit client_id wins over sub.
        let ok = grants_of(json!({"sub": "u-17", "exp": in_an_hour(), "tidings": {
            "subscribe": ["chat.>", "user.alice.*"], "publish": ["chat.*"], "client_id": "alice"
        }}))
        .unwrap();
        assert_eq!(
            ok,
            Authenticated {
                grants: Grants {
                    subscribe: pats(&["chat.>", "user.alice.*"]),
                    publish: pats(&["chat.*"]),
                    direct: false,
                    client_ids: ClientIds::Only(name("alice")),
                    principal: Some(name("alice")),
                    info: None,
                },
                client_id: Some(name("alice")),
            }
        );

        // No grants claim: a valid token with empty grants (and sub as the client id).
        let ok = grants_of(json!({"sub": "bob", "exp": in_an_hour()})).unwrap();
        assert_eq!(ok.grants.subscribe, vec![]);
        assert_eq!(ok.grants.publish, vec![]);
        assert!(!ok.grants.direct);
        assert_eq!(ok.grants.client_ids, ClientIds::Only(name("bob")));
        assert_eq!(ok.client_id, Some(name("bob")));

        // Nulls mean absent; no sub and no client_id means no client id.
        let ok = grants_of(json!({"exp": in_an_hour(), "sub": null,
            "tidings": {"subscribe": null, "publish": ["x"], "direct": null, "client_id": null}}))
        .unwrap();
        assert_eq!(
            ok.grants,
            Grants {
                publish: pats(&["x"]),
                ..Grants::none()
            }
        );
        assert_eq!(ok.client_id, None);

        // The space-separated scope form adds to the claim; other scopes are ignored.
        let ok = grants_of(json!({"exp": in_an_hour(), "sub": "carol",
            "scope": "openid profile tidings:subscribe:feed.> tidings:publish:feed.carol tidings:direct",
            "tidings": {"subscribe": ["chat.>"]}}))
        .unwrap();
        assert_eq!(ok.grants.subscribe, pats(&["chat.>", "feed.>"]));
        assert_eq!(ok.grants.publish, pats(&["feed.carol"]));
        assert!(ok.grants.direct);
    }

    #[test]
    fn claim_name_and_client_id_from_sub_are_configurable() {
        let auth = token_only(JwtConfig {
            claim: "https://example.com/tidings".into(),
            client_id_from_sub: false,
            ..jwt_secret()
        });
        let token = hs256(&json!({"sub": "dave", "exp": in_an_hour(),
            "tidings": {"subscribe": ["ignored.>"]},
            "https://example.com/tidings": {"subscribe": ["used.>"]}}));
        let ok = auth.authenticate(&bearer(&token)).unwrap();
        assert_eq!(ok.grants.subscribe, pats(&["used.>"]));
        assert_eq!(ok.client_id, None);
        assert_eq!(ok.grants.client_ids, ClientIds::None);
    }

    #[test]
    fn token_grants_add_to_anonymous_grants() {
        let auth = Authenticator::new(&AuthConfig {
            anonymous: Anonymous::Allowed(GrantsConfig {
                subscribe: vec!["public.>".into(), "chat.>".into()],
                publish: vec![],
                direct: false,
                any_client_id: false,
            }),
            jwt: Some(jwt_secret()),
            ..AuthConfig::default()
        })
        .unwrap();
        let ok = auth.authenticate(&bearer(&hs256(&alice()))).unwrap();
        assert_eq!(
            ok.grants,
            Grants {
                subscribe: pats(&["chat.>", "public.>"]),
                publish: pats(&["chat.*"]),
                direct: true,
                client_ids: ClientIds::Only(name("alice")),
                principal: Some(name("alice")),
                info: None,
            }
        );
        assert!(auth.describe().contains("plus the anonymous grants"));
        assert!(!auth.describe().contains("WARNING"));

        // Open anonymous access plus tokens: the start-up line warns that tokens add nothing.
        let open = Authenticator::new(&with_jwt(jwt_secret())).unwrap();
        assert!(
            open.describe()
                .contains("WARNING: anonymous access is open"),
            "{}",
            open.describe()
        );
        let ok = open.authenticate(&bearer(&hs256(&alice()))).unwrap();
        assert_eq!(ok.grants.client_ids, ClientIds::Any);
        assert_eq!(ok.client_id, Some(name("alice")));
    }

    #[test]
    fn bad_claims_are_401_naming_what_is_wrong() {
        let auth = token_only(jwt_secret());
        let check = |tidings: Value, contains: &str| {
            let token = hs256(&json!({"sub": "alice", "exp": in_an_hour(), "tidings": tidings}));
            refused(auth.authenticate(&bearer(&token)), 401, contains);
        };
        check(
            json!({"subscribe": ["chat..x"]}),
            "invalid subscribe pattern \"chat..x\"",
        );
        check(
            json!({"subscribe": ["ok.>", "a.>.b"]}),
            "invalid subscribe pattern \"a.>.b\"",
        );
        check(
            json!({"publish": ["chat.*", "bad topic"]}),
            "invalid publish pattern \"bad topic\"",
        );
        check(
            json!({"subscribe": "chat.>"}),
            "`tidings` claim is malformed",
        );
        check(json!({"subscibe": ["chat.>"]}), "unknown field `subscibe`");
        check(json!({"direct": "yes"}), "`tidings` claim is malformed");
        check(json!(["chat.>"]), "`tidings` claim is malformed");
        check(
            json!({"client_id": "a\u{7}b"}),
            "client id \"a\\u{7}b\" is invalid",
        );

        let token = hs256(&json!({"sub": "x".repeat(200), "exp": in_an_hour()}));
        refused(auth.authenticate(&bearer(&token)), 401, "taken from `sub`");
        let token = hs256(&json!({"sub": 42, "exp": in_an_hour()}));
        refused(
            auth.authenticate(&bearer(&token)),
            401,
            "`sub` claim must be a string",
        );
        let token = hs256(&json!({"exp": in_an_hour(), "scope": "tidings:subscribe:a..b"}));
        refused(
            auth.authenticate(&bearer(&token)),
            401,
            "invalid subscribe pattern \"a..b\"",
        );
        let token = hs256(&json!({"exp": in_an_hour(), "scope": "tidings:admin"}));
        refused(
            auth.authenticate(&bearer(&token)),
            401,
            "unknown tidings entry \"tidings:admin\"",
        );
    }

    #[test]
    fn the_broker_limits_apply_to_claims() {
        let limits = Limits {
            names: NameLimits {
                max_len: 16,
                max_segments: 3,
            },
            max_name_len: 4,
            ..Limits::default()
        };
        let config = AuthConfig {
            anonymous: Anonymous::Refused,
            jwt: Some(jwt_secret()),
            ..AuthConfig::default()
        };
        let auth = Authenticator::with_limits(&config, &limits).unwrap();
        let token = hs256(&json!({"exp": in_an_hour(), "tidings": {"subscribe": ["a.b.c.d"]}}));
        refused(
            auth.authenticate(&bearer(&token)),
            401,
            "invalid subscribe pattern \"a.b.c.d\"",
        );
        let token = hs256(&json!({"sub": "alice", "exp": in_an_hour()}));
        refused(
            auth.authenticate(&bearer(&token)),
            401,
            "client id \"alice\" is invalid",
        );
        let token =
            hs256(&json!({"sub": "bob", "exp": in_an_hour(), "tidings": {"subscribe": ["a.b.c"]}}));
        assert!(auth.authenticate(&bearer(&token)).is_ok());
    }

    #[test]
    fn check_subscribe_and_publish_are_403_naming_the_pattern() {
        let ok = Authenticated {
            grants: alice_grants(),
            client_id: Some(name("alice")),
        };
        assert_eq!(
            ok.check_subscribe(&pats(&["chat.a", "chat.*", "chat.>"])),
            Ok(())
        );
        assert_eq!(ok.check_subscribe(&[]), Ok(()));
        let err = ok
            .check_subscribe(&pats(&["chat.a", "news.*", "other"]))
            .unwrap_err();
        assert_eq!(err.status(), 403);
        assert_eq!(
            err.message(),
            "not allowed to subscribe to \"news.*\" (may subscribe to: chat.>)"
        );
        assert!(
            err.www_authenticate()
                .contains("error=\"insufficient_scope\"")
        );
        // A wildcard subscription needs a grant covering all of it.
        let narrow = Authenticated {
            grants: Grants {
                subscribe: pats(&["chat.*"]),
                ..Grants::none()
            },
            client_id: None,
        };
        let err = narrow.check_subscribe(&pats(&["chat.>"])).unwrap_err();
        assert!(err.message().contains("\"chat.>\""));

        let topic = |s: &str| Topic::parse(s, NameLimits::default()).unwrap();
        assert_eq!(ok.check_publish(&topic("chat.room1")), Ok(()));
        let err = ok.check_publish(&topic("chat.room1.x")).unwrap_err();
        assert_eq!(err.status(), 403);
        assert!(
            err.message().contains("\"chat.room1.x\""),
            "{}",
            err.message()
        );
        let none = Authenticated {
            grants: Grants::none(),
            client_id: None,
        };
        let err = none.check_publish(&topic("a")).unwrap_err();
        assert!(err.message().ends_with("(may publish to: nothing)"));
    }

    #[test]
    fn shareable_between_tasks() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Authenticator>();
        check::<Authenticated>();
        check::<AuthError>();
        check::<AuthConfigError>();
    }

    #[test]
    fn www_authenticate_is_a_valid_header_value() {
        let err = AuthError::unauthorized("bad \"token\" \\ for été\n");
        assert_eq!(
            err.www_authenticate(),
            "Bearer realm=\"tidings\", error=\"invalid_token\", error_description=\"bad 'token' ' \
             for ?t??\""
        );
        assert_eq!(err.to_string(), "401 bad \"token\" \\ for été\n");
    }

    // --- configuration ------------------------------------------------------------------

    #[test]
    fn bad_configurations_are_refused_at_start_up() {
        config_error(&with_jwt(JwtConfig::default()), "needs a key");
        config_error(
            &with_jwt(JwtConfig {
                secret: Some(Secret::new("short")),
                ..JwtConfig::default()
            }),
            "5 bytes long; at least 32",
        );
        config_error(
            &with_jwt(JwtConfig {
                secret_file: Some("/nonexistent/tidings-secret".into()),
                ..jwt_secret()
            }),
            "both `secret` and `secret_file`",
        );
        config_error(
            &with_jwt(JwtConfig {
                secret_file: Some("/nonexistent/tidings-secret".into()),
                ..JwtConfig::default()
            }),
            "secret_file /nonexistent/tidings-secret",
        );
        config_error(
            &with_jwt(JwtConfig {
                public_key: Some(RSA_PUBLIC.into()),
                ..jwt_secret()
            }),
            "both a secret and a public key",
        );
        config_error(
            &with_jwt(JwtConfig {
                algorithm: Some(JwtAlgorithm::Rs256),
                ..jwt_secret()
            }),
            "RS256 verifies with a public key",
        );
        let key = |alg: Option<JwtAlgorithm>, pem: &str| {
            with_jwt(JwtConfig {
                algorithm: alg,
                public_key: Some(pem.into()),
                ..JwtConfig::default()
            })
        };
        config_error(
            &key(Some(JwtAlgorithm::Hs256), RSA_PUBLIC),
            "HS256 verifies with a shared secret",
        );
        config_error(&key(None, RSA_PRIVATE), "holds a private key");
        config_error(&key(None, EC_PRIVATE), "holds a private key");
        config_error(
            &key(Some(JwtAlgorithm::Es256), RSA_PUBLIC),
            "not a usable ES256 key",
        );
        config_error(
            &key(Some(JwtAlgorithm::Rs256), EC_PUBLIC),
            "not a usable RS256 key",
        );
        config_error(&key(None, EC_P384_PUBLIC), "not a P-256");
        config_error(
            &key(Some(JwtAlgorithm::Rs256), RSA_1024_PUBLIC),
            "1024 bits; at least 2048",
        );
        config_error(&key(None, "not a key"), "give a PEM public key");
        config_error(
            &with_jwt(JwtConfig {
                audience: Some(String::new()),
                ..jwt_secret()
            }),
            "audience is empty",
        );
        config_error(
            &with_jwt(JwtConfig {
                leeway: 86_400,
                ..jwt_secret()
            }),
            "at most 3600",
        );
        config_error(
            &with_jwt(JwtConfig {
                claim: String::new(),
                ..jwt_secret()
            }),
            "claim is empty",
        );
        config_error(
            &AuthConfig {
                anonymous: Anonymous::Allowed(GrantsConfig {
                    subscribe: vec!["ok.>".into(), "not ok".into()],
                    ..GrantsConfig::default()
                }),
                ..AuthConfig::default()
            },
            "anonymous subscribe pattern \"not ok\" is invalid",
        );
        config_error(
            &AuthConfig {
                cookie: "a;b".into(),
                ..AuthConfig::default()
            },
            "not a valid cookie name",
        );
    }

    #[test]
    fn key_and_secret_files() {
        let dir = std::env::temp_dir().join(format!("tidings-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret_path = dir.join("secret");
        std::fs::write(&secret_path, format!("{SECRET}\n")).unwrap();
        let key_path = dir.join("key.pem");
        std::fs::write(&key_path, RSA_PUBLIC).unwrap();

        // The trailing newline is not part of the secret.
        let auth = token_only(JwtConfig {
            secret_file: Some(secret_path.clone()),
            ..JwtConfig::default()
        });
        assert!(auth.authenticate(&bearer(&hs256(&alice()))).is_ok());
        let auth = token_only(JwtConfig {
            public_key_file: Some(key_path),
            ..JwtConfig::default()
        });
        assert!(
            auth.authenticate(&bearer(&rs256(RSA_PRIVATE, &alice())))
                .is_ok()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        auth: AuthConfig,
    }

    fn from_toml(text: &str) -> Result<AuthConfig, String> {
        toml::from_str::<File>(text)
            .map(|f| f.auth)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn toml_configuration() {
        assert_eq!(from_toml("").unwrap(), AuthConfig::default());
        assert_eq!(
            from_toml("[auth]\nanonymous = false").unwrap().anonymous,
            Anonymous::Refused
        );
        assert_eq!(
            from_toml("[auth]\nanonymous = true").unwrap().anonymous,
            Anonymous::Allowed(GrantsConfig::all())
        );
        let config = from_toml(
            "[auth]\nanonymous = { subscribe = [\"public.>\"], direct = true }\ncookie = \"s\"\n\
             query_token = false\n[auth.jwt]\nalgorithm = \"HS256\"\nsecret = \"xyz\"\n\
             issuer = \"i\"\naudience = \"a\"\nleeway = 5\n",
        )
        .unwrap();
        assert_eq!(
            config,
            AuthConfig {
                anonymous: Anonymous::Allowed(GrantsConfig {
                    subscribe: vec!["public.>".into()],
                    direct: true,
                    ..GrantsConfig::default()
                }),
                jwt: Some(JwtConfig {
                    algorithm: Some(JwtAlgorithm::Hs256),
                    secret: Some(Secret::new("xyz")),
                    issuer: Some("i".into()),
                    audience: Some("a".into()),
                    leeway: 5,
                    ..JwtConfig::default()
                }),
                cookie: "s".into(),
                query_token: false,
            }
        );
        // The secret does not end up in logs of the configuration.
        assert!(!format!("{config:?}").contains("xyz"));

        let err = from_toml("[auth.jwt]\nalgorithm = \"HS512\"").unwrap_err();
        assert!(
            err.contains("HS512") && err.contains("`HS256`, `RS256`, `ES256`"),
            "{err}"
        );
        let err =
            from_toml("[auth]\nanonymous = { subscribe = [\"a\"], publsh = [] }").unwrap_err();
        assert!(err.contains("unknown field `publsh`"), "{err}");
        let err = from_toml("[auth]\nanonymous = \"yes\"").unwrap_err();
        assert!(
            err.contains("`false` (refuse requests without a token)"),
            "{err}"
        );
        let err = from_toml("[auth]\nanonymus = false").unwrap_err();
        assert!(err.contains("unknown field `anonymus`"), "{err}");
    }

    /// Every TOML example in docs/AUTH.md parses and builds (files it names are swapped for the
    /// test fixtures), and the start-up lines the document shows are what `describe` says.
    #[test]
    fn the_examples_in_auth_md_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        if !root.join("docs").is_dir() {
            eprintln!("skipped: not in the tidings repository (packaged crate), no docs/AUTH.md");
            return;
        }
        let doc = std::fs::read_to_string(root.join("docs/AUTH.md")).unwrap();
        let block_after = |from: usize, fence: &str| -> Option<(usize, String)> {
            let start = doc[from..].find(fence)? + from + fence.len();
            let end = doc[start..].find("```").expect("closed block") + start;
            Some((end, doc[start..end].to_owned()))
        };
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys/rsa_public.pem");
        let mut described = Vec::new();
        let mut at = 0;
        while let Some((end, body)) = block_after(at, "```toml\n") {
            let mut config = from_toml(&body)
                .unwrap_or_else(|e| panic!("AUTH.md example does not parse: {e}\n{body}"));
            if let Some(jwt) = &mut config.jwt {
                assert!(
                    jwt.secret_file.is_none(),
                    "no fixture for secret_file examples"
                );
                if jwt.public_key_file.is_some() {
                    assert_eq!(jwt.algorithm, Some(JwtAlgorithm::Rs256), "fixture is RSA");
                    jwt.public_key_file = Some(fixture.clone());
                }
            }
            let auth = Authenticator::new(&config)
                .unwrap_or_else(|e| panic!("AUTH.md example is refused: {e}\n{body}"));
            described.push(auth.describe());
            at = end + 3;
        }
        assert!(
            described.len() >= 4,
            "found only {} TOML examples",
            described.len()
        );

        let section = doc
            .find("## What the server says at start-up")
            .expect("section");
        let (end, lines) = block_after(section, "```\n").expect("a block of start-up lines");
        let lines: Vec<&str> = lines.lines().filter(|l| !l.is_empty()).collect();
        assert!(lines.len() >= 3);
        for line in lines {
            assert!(
                described.iter().any(|d| d == line),
                "AUTH.md shows {line:?}, but describe() says {described:#?}"
            );
        }
        let (_, warning) = block_after(end + 3, "```\n").expect("the warning");
        let open = Authenticator::new(&with_jwt(jwt_secret())).unwrap();
        assert!(
            open.describe().ends_with(&format!(" {}", warning.trim())),
            "{}",
            open.describe()
        );
    }

    #[test]
    fn the_info_claim_goes_with_presence_notices_and_is_bounded() {
        let auth = token_only(jwt_secret());
        let token = hs256(&json!({"sub": "alice", "exp": in_an_hour(), "tidings": {
            "subscribe": ["chat.>"], "info": {"name": "Alice", "color": 3}
        }}));
        let ok = auth.authenticate(&bearer(&token)).unwrap();
        assert_eq!(
            ok.grants.info.as_deref(),
            Some(r#"{"color":3,"name":"Alice"}"#)
        );
        let big = "x".repeat(tidings_core::presence::MAX_INFO_BYTES);
        let token = hs256(&json!({"sub": "alice", "exp": in_an_hour(), "tidings": {"info": big}}));
        refused(auth.authenticate(&bearer(&token)), 401, "`tidings.info` is");
    }
}
