//! The log seam: where events are stored and numbered.
//!
//! The position of an event is assigned by the log that stores it, never invented by the broker.
//! With an in-memory log ([`LogMode::Memory`], the broker's own hot window is the whole log) an
//! append completes within the step that asked for it, at today's cost. With an external log
//! ([`LogMode::External`]: the embedded segment-file log of the adapter, later a cluster's
//! stream) the broker asks with [`LogRequest`]s (through `Output::Log`) and learns the outcome
//! from [`LogReply`]s (through `Input::Log`):
//!
//! - a publish becomes [`LogRequest::Append`]; it is delivered to subscribers and answered (with
//!   its cursor) only when [`LogReply::Appended`] brings its position: nothing half-stored is ever
//!   delivered or acknowledged;
//! - a catch-up older than the hot window becomes [`LogRequest::Read`], answered by a
//!   [`LogReply::Page`], so that events are read from storage without blocking the state machine;
//! - the log's own retention moves its first position ([`LogReply::Trimmed`]);
//! - a log shared by several nodes (`shared`, a cluster's stream) hands every node every event in
//!   log order ([`LogReply::Committed`]); a node delivers its own publishes from there too, so
//!   all nodes deliver in one order and one cursor means the same event everywhere.
//!
//! At start the adapter recovers the log and hands the broker its state ([`LogState`], with
//! `Broker::restore_log`) before any client connects: the epoch belongs to the log and survives a
//! restart.
//!
//! `record` is the on-disk record format and `scan` the recovery scan: pure functions, fuzzed
//! like the other decoders; the file I/O is the adapter's.

use crate::error::ProtocolError;
use crate::payload::Payload;
use crate::topic::{Name, Topic};

pub mod record;
pub mod scan;

/// Where the broker's events are stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogMode {
    /// Only in memory: the hot window (bounded by `Config::retention`) is the whole log, appends
    /// complete in the same step, and a restart starts a new epoch.
    #[default]
    Memory,
    /// In a log outside the broker, reached through [`LogRequest`]s and [`LogReply`]s; it keeps
    /// `Config::retention`, and the broker keeps the newest events in memory as a hot cache.
    External {
        /// Events kept in memory (the hot cache), at most.
        hot_events: usize,
        /// Payload and topic bytes kept in memory, at most.
        hot_bytes: usize,
        /// Appends asked for and not yet answered, at most; past it publishes fail with
        /// `unavailable` (the log is behind). With `shared`, also the stored events whose
        /// answers wait for this node to deliver them.
        max_pending_appends: usize,
        /// Other nodes append to the same log (a cluster's stream): every event, this node's
        /// own included, is delivered when it arrives in log order ([`LogReply::Committed`]),
        /// and [`LogReply::Appended`] only answers the publisher. A resume cursor ahead of what
        /// this node has received waits for it (it came from a node further along).
        shared: bool,
    },
}

/// What the log stores of one event: what was published, without its position and without any
/// wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// The topic.
    pub topic: Topic,
    /// The event name, if the publisher gave one.
    pub event: Option<Name>,
    /// The publisher's client id, if it had one.
    pub from: Option<Name>,
    /// The data.
    pub payload: Payload,
}

/// An event as the log holds it: with its position and the time it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Its position (the `seq` of its cursor).
    pub seq: u64,
    /// When the log stored it, in milliseconds since the Unix epoch (retention by age survives
    /// restarts).
    pub time_ms: u64,
    /// What was published.
    pub event: LogEvent,
}

/// Names one append the broker asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppendId(pub u64);

/// Names one range read the broker asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadId(pub u64);

/// What the broker asks of an external log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogRequest {
    /// Store this event after every earlier append and answer [`LogReply::Appended`] with its
    /// position. Appends are answered in the order they were asked.
    Append {
        /// Names the answer.
        id: AppendId,
        /// What to store.
        event: LogEvent,
    },
    /// Read stored events with positions `from..`, at most `max_events` of them, and answer
    /// [`LogReply::Page`].
    Read {
        /// Names the answer.
        read: ReadId,
        /// The first position wanted.
        from: u64,
        /// At most this many events.
        max_events: usize,
    },
}

/// The position the log gave an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's position.
    pub seq: u64,
    /// The log's first retained position after this append (its retention may have moved it).
    pub first: u64,
}

/// A page of stored events, in position order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The log's first retained position when it read: asked-for positions before it were
    /// evicted.
    pub first: u64,
    /// Events at or after the position asked for, in order; positions may skip numbers that
    /// name no event (never reused, see `docs/STORAGE.md`).
    pub events: Vec<Logged>,
    /// The log holds nothing after the last event of this page.
    pub done: bool,
}

/// What an external log tells the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogReply {
    /// The outcome of [`LogRequest::Append`]. An `Err` (e.g. `unavailable`: the disk is full)
    /// means nothing was stored: the publisher gets the error, subscribers nothing.
    Appended {
        /// The append.
        id: AppendId,
        /// Its position, or why it was not stored.
        result: Result<Appended, ProtocolError>,
    },
    /// The outcome of [`LogRequest::Read`].
    Page {
        /// The read.
        read: ReadId,
        /// The page, or why it could not be read.
        result: Result<Page, ProtocolError>,
    },
    /// The next event of a shared log, in log order, whoever appended it (only with
    /// `shared`). Positions at or before the last one received are ignored (a consumer that
    /// was recreated may repeat some); a position further than the next means the events in
    /// between were evicted before this node read them: its subscribers get a gap notice.
    Committed(Logged),
    /// A position of a shared log that holds no event for tidings (something else wrote there,
    /// in a form that is not an event): nothing to deliver, and nothing missing either.
    Passed {
        /// The position.
        seq: u64,
    },
    /// The log's retention evicted events: its first retained position is now `first`.
    Trimmed {
        /// The new first retained position.
        first: u64,
    },
    /// The shared log was replaced by another (a cluster's stream deleted and created again):
    /// its positions mean other events now. The broker takes `state` as its log, with its
    /// epoch, and every subscriber gets an `epoch` gap notice, then what the new log holds and
    /// its live events; cursors of the old log get the same notice when they resume. Committed
    /// events after this are the new log's.
    Replaced(LogState),
}

/// The state of a recovered log, handed to the broker before clients connect
/// (`Broker::restore_log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// The log's epoch (written in every cursor); it survives restarts.
    pub epoch: u64,
    /// The first retained position (`head + 1` when nothing is retained).
    pub first: u64,
    /// The last position ever given out, including positions reserved before a crash and never
    /// used: the next append gets a higher one.
    pub head: u64,
    /// The position of the last event actually recovered (`<= head`). Cursors after it and up to
    /// `head` name events that were lost (a power loss under `durability = "os"`): resuming from
    /// one gets a gap notice, never another event under the same cursor.
    pub recovered: u64,
    /// The newest events, oldest first, to warm the hot cache.
    pub recent: Vec<Logged>,
    /// The wall clock when `recent` was read, in milliseconds since the Unix epoch (their ages).
    pub now_ms: u64,
}
