//! Publishes waiting for the external log, as plain data: who waits for each, and what became
//! of a publish.

use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::ids::ConnId;
use crate::log::{AppendId, LogEvent};

/// Who waits for a publish's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publisher {
    /// A client: answered with `ok` and the cursor (when it gave a request id) or an error.
    Conn {
        /// The connection (ids are never reused: a closed one is simply not answered).
        conn: ConnId,
        /// Its request id.
        req: Option<u64>,
    },
    /// The application: answered with [`crate::AppEvent::Stored`].
    App,
}

/// What became of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Published {
    /// Stored and delivered: its cursor.
    Stored(Cursor),
    /// Handed to the external log; [`crate::AppEvent::Stored`] with this id tells the outcome.
    Storing(AppendId),
    /// Not stored (the log is too far behind: `unavailable`).
    Refused(ProtocolError),
}

impl Published {
    /// The cursor, if the event is already stored.
    pub fn cursor(&self) -> Option<Cursor> {
        match self {
            Self::Stored(c) => Some(*c),
            _ => None,
        }
    }
}

/// A publish waiting for the external log.
pub(crate) struct Pending {
    pub(crate) id: AppendId,
    pub(crate) publisher: Publisher,
    pub(crate) event: LogEvent,
}
