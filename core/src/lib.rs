#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(unused_must_use)]

mod app;
mod broker;
pub mod client;
pub mod codec;
mod config;
mod conn;
mod cursor;
mod delivery;
mod error;
pub mod etp;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod grants;
mod history;
mod input;
pub mod ksbus;
pub mod native;
mod output;
mod payload;
mod session;
pub mod sse;
mod subs;
mod subscribe;
mod timeouts;
mod timers;
mod topic;

pub use broker::{Broker, ConnInfo, Stats, SubscriptionChange};
pub use config::{
    Config, ConfigError, DEFAULT_SERVER_ID, Limits, Retention, SlowConsumer, SlowConsumerPolicy,
    Timers, units,
};
pub use cursor::Cursor;
pub use error::{ApiError, ErrorCode, ProtocolError};
pub use grants::{ClientIds, Grants};
pub use input::{
    AckId, Command, ConnId, ConnIdHasher, ConnMap, Input, Recipient, ReqId, Subscribe, Transport,
};
pub use output::{Event, Gap, GapReason, Lifecycle, Output, Visibility};
pub use payload::Payload;
pub use topic::{Name, NameLimits, Pattern, Topic};
