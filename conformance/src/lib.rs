//! The tidings conformance suite (work in progress).
