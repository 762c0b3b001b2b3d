//! Topic names and subscription patterns: validation and matching.
//!
//! A topic is a dot-separated list of non-empty segments (`chat.room1.messages`). A pattern may also
//! use two wildcards, NATS-style, each as a whole segment: `*` matches exactly one segment, and `>`
//! (only as the last segment) matches one or more remaining segments. `chat.*` matches
//! `chat.room1` but not `chat` nor `chat.room1.messages`; `chat.>` matches both of the latter two.

use std::fmt;
use std::sync::Arc;

use crate::error::ErrorCode;
use crate::error::ProtocolError;

/// The characters a segment may not contain besides the wildcards: whitespace, control characters
/// and the separator.
fn segment_char_ok(c: char) -> bool {
    !(c.is_control() || c.is_whitespace() || c == '.' || c == '*' || c == '>')
}

/// Limits applied when validating names; see [`crate::Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameLimits {
    /// Maximum length in bytes.
    pub max_len: usize,
    /// Maximum number of dot-separated segments.
    pub max_segments: usize,
}

impl Default for NameLimits {
    fn default() -> Self {
        Self {
            max_len: 256,
            max_segments: 16,
        }
    }
}

fn check_shape(kind: &str, s: &str, limits: NameLimits) -> Result<(), ProtocolError> {
    if s.is_empty() {
        return Err(ProtocolError::new(
            ErrorCode::InvalidTopic,
            format!("{kind} must not be empty"),
        ));
    }
    if s.len() > limits.max_len {
        return Err(ProtocolError::new(
            ErrorCode::InvalidTopic,
            format!(
                "{kind} is {} bytes long; at most {} are allowed",
                s.len(),
                limits.max_len
            ),
        ));
    }
    if s.split('.').count() > limits.max_segments {
        return Err(ProtocolError::new(
            ErrorCode::InvalidTopic,
            format!(
                "{kind} {s:?} has more than {} dot-separated segments",
                limits.max_segments
            ),
        ));
    }
    Ok(())
}

fn bad_segment(kind: &str, s: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::InvalidTopic,
        format!(
            "{kind} {s:?} is invalid: segments are separated by single dots, must not be empty, and \
             must not contain whitespace, control characters, '*' or '>'{}",
            if kind == "pattern" {
                " except as a whole-segment wildcard ('*' for one segment, '>' as the last segment for the rest)"
            } else {
                " (wildcards are only allowed in subscriptions)"
            }
        ),
    )
}

/// A validated topic name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `s` as a topic name (no wildcards).
    ///
    /// # Errors
    /// [`ErrorCode::InvalidTopic`] with a message saying what is wrong and what is allowed.
    pub fn parse(s: &str, limits: NameLimits) -> Result<Self, ProtocolError> {
        check_shape("topic", s, limits)?;
        if s.split('.')
            .any(|seg| seg.is_empty() || !seg.chars().all(segment_char_ok))
        {
            return Err(bad_segment("topic", s));
        }
        Ok(Self(Arc::from(s)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Looks a topic up by its name (hash, equality and order are the string's).
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated subscription pattern: a topic name that may contain `*` and `>` segments.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern {
    text: Arc<str>,
    /// Whether a segment is `*` or `>`; exact patterns match with one string comparison.
    wild: bool,
}

impl Pattern {
    /// Validates `s` as a pattern.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidTopic`] with a message saying what is wrong and what is allowed.
    pub fn parse(s: &str, limits: NameLimits) -> Result<Self, ProtocolError> {
        check_shape("pattern", s, limits)?;
        let count = s.split('.').count();
        for (i, seg) in s.split('.').enumerate() {
            let ok = match seg {
                "*" => true,
                ">" => i + 1 == count,
                _ => !seg.is_empty() && seg.chars().all(segment_char_ok),
            };
            if !ok {
                return Err(bad_segment("pattern", s));
            }
        }
        Ok(Self {
            text: Arc::from(s),
            wild: s.split('.').any(|seg| seg == "*" || seg == ">"),
        })
    }

    /// A pattern matching exactly this topic.
    pub fn exact(topic: &Topic) -> Self {
        Self {
            text: topic.0.clone(),
            wild: false,
        }
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The shared string (indexes key on it without copying).
    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.text
    }

    /// Whether the pattern contains a wildcard segment.
    pub fn is_wildcard(&self) -> bool {
        self.wild
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        if self.wild {
            matches(&self.text, topic)
        } else {
            *self.text == *topic
        }
    }

    /// Whether every topic matched by `other` is matched by `self` (used for grants: a
    /// subscription to `chat.*` needs a grant covering all of `chat.*`).
    pub fn covers(&self, other: &Self) -> bool {
        let mut mine = self.text.split('.');
        let mut theirs = other.text.split('.');
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(t)) if t != ">" => {}
                (Some(m), Some(t)) if m == t => {}
                _ => return false,
            }
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A validated short name: a client id, event name, room or subscription name.
///
/// Names are 1 to `max_len` bytes of any characters except control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates `s` as a name; `what` names the field in the error message.
    ///
    /// # Errors
    /// [`ErrorCode::BadField`] when empty, too long, or containing control characters.
    pub fn parse(what: &str, s: &str, max_len: usize) -> Result<Self, ProtocolError> {
        if s.is_empty() || s.len() > max_len || s.chars().any(char::is_control) {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                format!(
                    "`{what}` must be 1 to {max_len} bytes without control characters (got {} bytes)",
                    s.len()
                ),
            ));
        }
        Ok(Self(Arc::from(s)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Matches a (wildcard) pattern string against a topic string, segment by segment, on bytes and
/// without allocating.
pub(crate) fn matches(pattern: &str, topic: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), topic.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        let pe = p[i..]
            .iter()
            .position(|&b| b == b'.')
            .map_or(p.len(), |k| i + k);
        let seg = &p[i..pe];
        if seg == b">" {
            return j < t.len(); // one or more segments remain
        }
        if j > t.len() {
            return false;
        }
        let te = t[j..]
            .iter()
            .position(|&b| b == b'.')
            .map_or(t.len(), |k| j + k);
        if seg != b"*" && seg != &t[j..te] {
            return false;
        }
        match (pe == p.len(), te == t.len()) {
            (false, false) => (i, j) = (pe + 1, te + 1),
            (p_end, t_end) => return p_end && t_end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s, NameLimits::default()).unwrap()
    }

    #[test]
    fn topic_validation() {
        let l = NameLimits::default();
        assert!(Topic::parse("chat.room1", l).is_ok());
        assert!(Topic::parse("événements.été", l).is_ok());
        assert!(Topic::parse("6f1c-aa:b@c", l).is_ok());
        for bad in ["", ".a", "a.", "a..b", "a b", "a.*", "a.>", "a\nb", "a*"] {
            let err = Topic::parse(bad, l).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidTopic, "{bad:?}");
        }
        let long = "a".repeat(257);
        assert!(
            Topic::parse(&long, l)
                .unwrap_err()
                .message
                .contains("at most 256")
        );
        let deep = vec!["a"; 17].join(".");
        assert!(Topic::parse(&deep, l).is_err());
    }

    #[test]
    fn pattern_validation() {
        let l = NameLimits::default();
        for ok in ["a", "a.*", "*.b", "a.>", ">", "*", "*.*.>"] {
            assert!(Pattern::parse(ok, l).is_ok(), "{ok:?}");
        }
        for bad in ["a.>.b", "a*", "a.b*", "a.>>", "", "a..b"] {
            assert!(Pattern::parse(bad, l).is_err(), "{bad:?}");
        }
    }

    /// The plain definition, as the oracle of the byte-level matcher.
    fn oracle(pattern: &str, topic: &str) -> bool {
        let mut pat = pattern.split('.');
        let mut top = topic.split('.');
        loop {
            match (pat.next(), top.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(t)) if p == t => {}
                _ => return false,
            }
        }
    }

    #[test]
    fn byte_matcher_agrees_with_the_definition() {
        let patterns = [
            "a", "a.b", "a.*", "*", "*.b", "a.>", ">", "*.*", "a.*.c", "*.>", "ab.*", "a.bc",
        ];
        let topics = [
            "a", "b", "a.b", "ab", "a.bc", "ab.c", "a.b.c", "a.x.c", "x.y.z.w", "a.b.c.d",
        ];
        for p in patterns {
            for t in topics {
                assert_eq!(pat(p).matches(t), oracle(p, t), "{p} vs {t}");
            }
        }
    }

    #[test]
    fn matching() {
        assert!(pat("chat.*").matches("chat.room1"));
        assert!(!pat("chat.*").matches("chat"));
        assert!(!pat("chat.*").matches("chat.room1.messages"));
        assert!(pat("chat.>").matches("chat.room1.messages"));
        assert!(pat("chat.>").matches("chat.room1"));
        assert!(!pat("chat.>").matches("chat"));
        assert!(pat(">").matches("anything.at.all"));
        assert!(pat("*.b.*").matches("a.b.c"));
        assert!(!pat("*.b.*").matches("a.c.c"));
        assert!(pat("a.b").matches("a.b"));
        assert!(!pat("a.b").matches("a.bc"));
    }

    #[test]
    fn covering() {
        assert!(pat(">").covers(&pat("a.*")));
        assert!(pat("a.>").covers(&pat("a.b.>")));
        assert!(pat("a.>").covers(&pat("a.*")));
        assert!(!pat("a.*").covers(&pat("a.>")));
        assert!(pat("a.*").covers(&pat("a.*")));
        assert!(pat("a.*").covers(&pat("a.b")));
        assert!(!pat("a.b").covers(&pat("a.*")));
        assert!(!pat("a.>").covers(&pat("a")));
        assert!(!pat("a.*.c").covers(&pat("a.>")));
    }
}
