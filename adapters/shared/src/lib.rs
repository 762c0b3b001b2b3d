//! The runtime-agnostic part of the tidings server, shared by `tidings-tokio` and
//! `tidings-async-std`.
#![forbid(unsafe_code)]

pub mod auth;
pub mod request;
