//! Durations in configuration: parsing, formatting and the serde adapters every configuration
//! struct uses, so each format is defined here once.
//!
//! A duration is a string with a unit (`"500ms"`, `"15s"`, `"5m"`, `"1h"`) or a number of
//! milliseconds. A timer that can be disabled is an `Option<Duration>` and also accepts `"off"`
//! (or `"none"`, `"0"`, `0`). Sizes need no helper: they are plain numbers of bytes.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a duration: `"250ms"`, `"15s"`, `"5m"`, `"2h"`, or a bare number of milliseconds.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{s:?} is not a duration (e.g. \"500ms\", \"15s\", \"5m\", \"1h\")")
    })?;
    let ms = match unit.trim() {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m or h"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Parses a duration that may be disabled with `"off"` (or `"none"`, `"0"`).
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_opt_duration(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "off" | "none" | "0" => Ok(None),
        other => parse_duration(other).map(Some),
    }
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest whole unit
/// (`"5m"`, `"15s"`, `"500ms"`). Below a millisecond is dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0ms".to_owned(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Formats a timer that may be off: [`format_duration`], or `"off"`.
pub fn format_opt_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "off".to_owned(), format_duration)
}

/// What a duration may be written as.
#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Millis(u64),
    Text(String),
}

/// `#[serde(with = "units::duration")]` for a [`Duration`].
pub mod duration {
    use super::{Deserialize, Deserializer, Duration, Repr, Serializer};

    /// Writes the duration as [`super::format_duration`] does.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads a string with a unit or a number of milliseconds.
    ///
    /// # Errors
    /// A message saying what is accepted.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Millis(ms) => Ok(Duration::from_millis(ms)),
            Repr::Text(s) => super::parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// `#[serde(with = "units::opt_duration")]` for a timer that may be off (`Option<Duration>`).
pub mod opt_duration {
    use super::{Deserialize, Deserializer, Duration, Repr, Serializer};

    /// Writes the duration as [`super::format_opt_duration`] does (`"off"` for `None`).
    ///
    /// # Errors
    /// The serializer's.
    #[allow(clippy::ref_option)] // serde's `with` passes a reference to the field
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_opt_duration(*d))
    }

    /// Reads `"off"`, a string with a unit or a number of milliseconds (0 is off).
    ///
    /// # Errors
    /// A message saying what is accepted.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Millis(0) => Ok(None),
            Repr::Millis(ms) => Ok(Some(Duration::from_millis(ms))),
            Repr::Text(s) => super::parse_opt_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_their_text() {
        for text in ["0ms", "250ms", "1500ms", "15s", "5m", "2h", "90s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
        assert_eq!(parse_duration("1min").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_millis(42));
        assert_eq!(parse_opt_duration("off").unwrap(), None);
        assert_eq!(format_opt_duration(None), "off");
        assert!(
            parse_duration("5 fortnights")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse_duration("99999999999999999h")
                .unwrap_err()
                .contains("too long")
        );
    }
}
