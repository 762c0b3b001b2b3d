//! Payloads: bytes plus whether they are JSON.
//!
//! SSE carries the bytes as they are; the native WebSocket protocol embeds JSON as a JSON value and
//! any other text as a JSON string. Payloads are always valid UTF-8: bytes that are not are refused
//! with [`ErrorCode::NotUtf8`] rather than mangled.

use bytes::Bytes;

use crate::error::{ErrorCode, ProtocolError};

/// An event's data. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Payload {
    bytes: Bytes,
    json: bool,
}

impl Payload {
    /// Text that is not (or is not to be treated as) JSON.
    ///
    /// # Errors
    /// [`ErrorCode::NotUtf8`] if the bytes are not UTF-8.
    pub fn text(bytes: impl Into<Bytes>) -> Result<Self, ProtocolError> {
        let bytes = bytes.into();
        check_utf8(&bytes)?;
        Ok(Self { bytes, json: false })
    }

    /// A JSON document; it is validated.
    ///
    /// # Errors
    /// [`ErrorCode::NotUtf8`] or [`ErrorCode::BadField`] if the bytes are not one JSON value.
    pub fn json(bytes: impl Into<Bytes>) -> Result<Self, ProtocolError> {
        let bytes = bytes.into();
        check_utf8(&bytes)?;
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
            return Err(ProtocolError::new(
                ErrorCode::BadField,
                format!("data is not valid JSON: {e}"),
            ));
        }
        Ok(Self { bytes, json: true })
    }

    /// A JSON value that the caller already validated (e.g. a `RawValue` cut out of a frame).
    pub(crate) fn json_unchecked(bytes: Bytes) -> Self {
        Self { bytes, json: true }
    }

    /// The empty text payload.
    pub fn empty() -> Self {
        Self {
            bytes: Bytes::new(),
            json: false,
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The bytes as text (always valid UTF-8).
    pub fn as_str(&self) -> &str {
        // Both constructors checked UTF-8, so this cannot fail; fall back to "" rather than panic.
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    /// Whether the bytes are a JSON document.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn check_utf8(bytes: &[u8]) -> Result<(), ProtocolError> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(()),
        Err(e) => Err(ProtocolError::new(
            ErrorCode::NotUtf8,
            format!(
                "payload is not valid UTF-8 (invalid byte at offset {}); send UTF-8 text or JSON",
                e.valid_up_to()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(Payload::text("héllo").is_ok());
        assert_eq!(
            Payload::text(&b"\xff\xfe"[..]).unwrap_err().code,
            ErrorCode::NotUtf8
        );
        assert!(Payload::json(r#"{"a":[1,2]}"#).unwrap().is_json());
        assert_eq!(Payload::json("{").unwrap_err().code, ErrorCode::BadField);
        assert_eq!(Payload::json("1 2").unwrap_err().code, ErrorCode::BadField);
    }
}
