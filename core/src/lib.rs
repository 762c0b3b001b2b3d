#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(unused_must_use)]

mod app;
mod app_op;
mod appends;
pub mod ask;
mod broker;
pub mod client;
pub mod codec;
mod command;
mod config;
mod conn;
mod cursor;
mod delivery;
mod encodings;
mod error;
pub mod etp;
mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod grants;
mod history;
mod ids;
mod input;
pub mod ksbus;
pub mod log;
pub mod native;
mod output;
mod parked;
mod payload;
pub mod presence;
mod publish;
pub mod relay;
mod session;
pub mod sse;
mod subs;
mod subscribe;
mod timeouts;
mod timers;
mod topic;
pub mod typed;
mod watch;

pub use app_op::{AppOp, AppReply};
pub use appends::Published;
pub use broker::{Broker, ConnInfo, Stats, SubscriptionChange};
pub use command::{Claim, Command, Recipient, Subscribe};
pub use config::{
    Config, ConfigError, DEFAULT_SERVER_ID, Limits, Retention, SlowConsumer, SlowConsumerPolicy,
    Timers, units,
};
pub use cursor::Cursor;
pub use error::{ApiError, ErrorCode, ProtocolError};
pub use grants::{ClientIds, Grants};
pub use ids::{AckId, ConnId, ConnIdHasher, ConnMap, ReqId};
pub use input::Input;
pub use output::{AppEvent, Delivery, Gap, GapReason, Lifecycle, Output, Visibility};
pub use payload::Payload;
pub use presence::{PresenceAction, PresenceNotice};
pub use topic::{Name, NameLimits, Pattern, Topic};
