//! What goes into the broker from the adapter: [`Input`]s.

use std::sync::Arc;

use crate::codec::Codec;
use crate::command::Command;
use crate::grants::Grants;
use crate::ids::ConnId;
use crate::log::LogReply;

/// Something the adapter tells the broker.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// A client connected. The broker answers with the format's opening frame.
    Open {
        /// Adapter-assigned id, never reused.
        conn: ConnId,
        /// The connection's wire format, as a value it owns (e.g. [`crate::native::NativeCodec`]).
        codec: Box<dyn Codec>,
        /// What the connection may do.
        grants: Arc<Grants>,
    },
    /// A client frame, decoded by the transport's codec (e.g. [`crate::native::decode`]).
    Command {
        /// The sender.
        conn: ConnId,
        /// What it asked for.
        cmd: Command,
    },
    /// The transport finished writing `bytes` of payload previously handed out for `conn`
    /// (flow-control credit; reports may be coalesced).
    Flushed {
        /// The connection.
        conn: ConnId,
        /// Bytes written since the last report.
        bytes: usize,
    },
    /// The transport is gone (EOF, error, or after the broker asked to close it).
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// What the external log answered ([`crate::log::LogMode::External`]): an append's
    /// position, a page of a range read, or its retention moving its first position.
    Log(LogReply),
    /// What the relay to other nodes answered or brought (see [`crate::relay`]).
    Relay(crate::relay::RelayReply),
}
