//! The client's error type.

use std::fmt;

use tidings_core::client::{ClientError, OpError, Reason, ServerError};

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a `ws://` URL the client can use.
    InvalidUrl(String),
    /// An argument is invalid (a topic, pattern, name or payload), or a limit refused the call
    /// locally. Nothing was sent.
    Invalid(String),
    /// [`crate::ClientBuilder::connect`]: the first connection failed.
    Connect(Reason),
    /// The server refused the operation (`forbidden`, `no_recipient`, …) or the application
    /// answered a request with an error (including the server's own `timeout`).
    Server(ServerError),
    /// No answer came within the operation's deadline.
    Timeout,
    /// The operation was sent, but the connection closed before its answer came: it may or may
    /// not have taken effect.
    ConnectionLost,
    /// The client has stopped: closed by the application, or for a reason that reconnecting
    /// cannot fix (given when known).
    Stopped(Option<Reason>),
}

impl Error {
    /// Whether the operation timed out: on the client ([`Error::Timeout`]) or on the server
    /// (a `timeout` error from the server).
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout => true,
            Self::Server(e) => e.code == "timeout",
            _ => false,
        }
    }

    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl(e) => write!(f, "invalid URL: {e}"),
            Self::Invalid(e) => f.write_str(e),
            Self::Connect(reason) => write!(f, "cannot connect: {reason}"),
            Self::Server(e) => write!(f, "the server refused: {e}"),
            Self::Timeout => f.write_str("no answer in time"),
            Self::ConnectionLost => f.write_str(
                "the connection closed before the answer came (the operation may have taken effect)",
            ),
            Self::Stopped(None) => f.write_str("the client is closed"),
            Self::Stopped(Some(reason)) => write!(f, "the client stopped: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<OpError> for Error {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Server(e) => Self::Server(e),
            OpError::Timeout => Self::Timeout,
            OpError::ConnectionLost => Self::ConnectionLost,
            _ => Self::Stopped(None),
        }
    }
}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Stopped => Self::Stopped(None),
            other => Self::Invalid(other.to_string()),
        }
    }
}

impl From<tidings_core::ProtocolError> for Error {
    fn from(e: tidings_core::ProtocolError) -> Self {
        Self::Invalid(e.message)
    }
}
