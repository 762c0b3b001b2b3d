//! The Rust client for tidings (work in progress).
