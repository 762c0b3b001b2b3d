//! Errors: [`ApiError`] for adapter misuse, [`ProtocolError`] for what a peer did wrong.
//!
//! A misbehaving client is never an `Err` from [`crate::Broker::handle_input`]: it gets an error
//! frame (and a close when fatal) and the application gets an [`crate::AppEvent`].

use std::fmt;

use crate::ConnId;

/// The adapter used the broker wrongly. Never caused by anything a peer sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The connection id was never opened, or its `Closed` was already handled.
    #[error("unknown connection {0}")]
    UnknownConn(ConnId),
    /// `Open` for a connection id that is open or was used before (ids are never reused).
    #[error("connection id {0} was already used; connection ids must never be reused")]
    DuplicateConn(ConnId),
    /// The application asked for more than a configured limit allows.
    #[error("connection {conn}: at most {limit} {what}")]
    LimitReached {
        /// The connection.
        conn: ConnId,
        /// What is limited.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The operation is not possible on this connection.
    #[error("connection {conn}: {what} are not possible")]
    Unsupported {
        /// The connection.
        conn: ConnId,
        /// What was attempted.
        what: &'static str,
    },
}

/// Machine-readable error codes, shared by every wire format.
///
/// The string form ([`ErrorCode::as_str`]) is what the native protocol sends; `docs/PROTOCOL.md`
/// lists each with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON, or not a JSON object.
    BadFrame,
    /// The `op` is not one this server knows.
    UnknownOp,
    /// A field is missing, has the wrong type, or has an invalid value.
    BadField,
    /// The frame is larger than the configured limit.
    FrameTooLarge,
    /// A topic name or pattern is invalid.
    InvalidTopic,
    /// A cursor could not be parsed.
    InvalidCursor,
    /// The connection's grants do not allow the operation.
    Forbidden,
    /// A per-connection limit (subscriptions, pending requests, ...) was reached.
    LimitReached,
    /// Unsubscribe from a pattern the connection is not subscribed to.
    NotSubscribed,
    /// A reply or request id the server does not know (or already answered).
    UnknownRequest,
    /// The request id is already in use by a pending request on this connection.
    DuplicateRequest,
    /// The client id is held by another connection.
    ClientIdTaken,
    /// The target of a direct send is not connected.
    NoRecipient,
    /// No answer came in time.
    Timeout,
    /// The application has no handler for the request's event name.
    NoHandler,
    /// The application answered the request with an error.
    Rejected,
    /// The payload is not valid UTF-8 (tidings refuses rather than mangles it).
    NotUtf8,
    /// The connection could not keep up and was closed (slow-consumer policy).
    SlowConsumer,
    /// The connection sent nothing for longer than the idle timeout.
    Idle,
    /// The server is at its connection limit.
    Overloaded,
    /// The server is shutting down.
    ShuttingDown,
    /// The peer broke the transport's framing rules (for WebSocket, RFC 6455: an unmasked client
    /// frame, reserved bits or opcodes, a control frame over 125 bytes or fragmented, a stray
    /// continuation frame); the connection is failed with close code 1002.
    ProtocolError,
    /// The event could not be stored (the log's disk is full or failing, or the log is too far
    /// behind): nothing was stored or delivered; retry later.
    Unavailable,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [Self; 23] = [
        Self::BadFrame,
        Self::UnknownOp,
        Self::BadField,
        Self::FrameTooLarge,
        Self::InvalidTopic,
        Self::InvalidCursor,
        Self::Forbidden,
        Self::LimitReached,
        Self::NotSubscribed,
        Self::UnknownRequest,
        Self::DuplicateRequest,
        Self::ClientIdTaken,
        Self::NoRecipient,
        Self::Timeout,
        Self::NoHandler,
        Self::Rejected,
        Self::NotUtf8,
        Self::SlowConsumer,
        Self::Idle,
        Self::Overloaded,
        Self::ShuttingDown,
        Self::ProtocolError,
        Self::Unavailable,
    ];

    /// The wire name, e.g. `"forbidden"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad_frame",
            Self::UnknownOp => "unknown_op",
            Self::BadField => "bad_field",
            Self::FrameTooLarge => "frame_too_large",
            Self::InvalidTopic => "invalid_topic",
            Self::InvalidCursor => "invalid_cursor",
            Self::Forbidden => "forbidden",
            Self::LimitReached => "limit_reached",
            Self::NotSubscribed => "not_subscribed",
            Self::UnknownRequest => "unknown_request",
            Self::DuplicateRequest => "duplicate_request",
            Self::ClientIdTaken => "client_id_taken",
            Self::NoRecipient => "no_recipient",
            Self::Timeout => "timeout",
            Self::NoHandler => "no_handler",
            Self::Rejected => "rejected",
            Self::NotUtf8 => "not_utf8",
            Self::SlowConsumer => "slow_consumer",
            Self::Idle => "idle",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::ProtocolError => "protocol_error",
            Self::Unavailable => "unavailable",
        }
    }

    /// Parses a wire name.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The WebSocket close code an adapter should use when this error closes a connection.
    pub fn ws_close_code(self) -> u16 {
        match self {
            Self::FrameTooLarge => 1009,
            Self::ShuttingDown => 1001,
            Self::Overloaded => 1013,
            Self::Idle => 1000,
            Self::NotUtf8 => 1007,
            Self::ProtocolError => 1002,
            _ => 1008,
        }
    }

    /// The HTTP status an adapter should use when this error refuses an HTTP request.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Forbidden => 403,
            Self::FrameTooLarge => 413,
            Self::Overloaded | Self::ShuttingDown | Self::Unavailable => 503,
            Self::Timeout => 504,
            Self::NoRecipient | Self::NoHandler => 404,
            Self::ClientIdTaken | Self::DuplicateRequest => 409,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a peer did wrong (or why its request failed): a code and a human-readable message that
/// says what was wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// A message for humans.
    pub message: String,
}

impl ProtocolError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
