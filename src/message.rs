//! The JSON operator envelope: every message is a JSON object whose
//! operator field (default `"Operator"`) names what it is. Pure.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::Error;

/// An inbound JSON message with an operator.
///
/// Cheap to clone. `Debug` shows the operator and size only, never the
/// payload, which may hold secrets.
#[derive(Clone, PartialEq)]
pub struct Message {
    inner: Arc<Inner>,
}

#[derive(PartialEq)]
struct Inner {
    operator: String,
    value: Value,
    len: usize,
}

impl Message {
    pub(crate) fn new(operator: String, value: Value, len: usize) -> Self {
        Message {
            inner: Arc::new(Inner {
                operator,
                value,
                len,
            }),
        }
    }

    /// The operator, e.g. `"LoginOK"`.
    pub fn operator(&self) -> &str {
        &self.inner.operator
    }

    /// The whole message as JSON (always an object).
    pub fn value(&self) -> &Value {
        &self.inner.value
    }

    /// One field of the message, if present.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.inner.value.get(field)
    }

    /// The message as a typed value.
    ///
    /// # Errors
    /// [`Error::Serialize`] when the JSON does not fit `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.inner.value).map_err(Error::Serialize)
    }

    /// The message as JSON, by value.
    pub fn into_value(self) -> Value {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.value,
            Err(shared) => shared.value.clone(),
        }
    }

    /// Size of the frame it came in, in bytes.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// True for a frame of zero bytes (never for a decoded message).
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("operator", &self.inner.operator)
            .field("len", &self.inner.len)
            .finish_non_exhaustive()
    }
}

/// A frame that could not be read as an operator message.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidFrame {
    /// A text frame that is not a JSON object with a string operator.
    Text {
        /// The frame as received.
        text: String,
        /// Why it was not accepted.
        reason: String,
    },
    /// A text frame whose bytes were not UTF-8 (its content is gone).
    NotUtf8,
    /// A binary frame.
    Binary(Vec<u8>),
}

impl fmt::Debug for InvalidFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidFrame::Text { text, reason } => f
                .debug_struct("Text")
                .field("len", &text.len())
                .field("reason", reason)
                .finish_non_exhaustive(),
            InvalidFrame::NotUtf8 => f.write_str("NotUtf8"),
            InvalidFrame::Binary(b) => f.debug_struct("Binary").field("len", &b.len()).finish(),
        }
    }
}

/// Turn an outbound JSON value into frame text, checking the envelope.
/// Returns the text and the operator.
pub(crate) fn encode(value: Value, op_field: &str) -> Result<(String, String), Error> {
    let op = match operator_of(&value, op_field) {
        Ok(op) => op.to_owned(),
        Err(reason) => {
            return Err(Error::InvalidMessage {
                reason,
                message: value,
            });
        }
    };
    match serde_json::to_string(&value) {
        Ok(text) => Ok((text, op)),
        Err(e) => Err(Error::Serialize(e)),
    }
}

/// Serialize `msg` straight to frame text and check the envelope by
/// scanning the text's top level, without building a `Value` (a deep copy
/// per message otherwise). Returns the text, or `None` when the cheap path
/// cannot decide (escapes in the operator, a field named in `avoid` present):
/// then use [`encode`].
///
/// The text is written into a per-thread scratch buffer and copied out into
/// one allocation of exactly its size: no growth reallocations, and the
/// buffer becomes frame bytes without another allocation.
pub(crate) fn encode_direct(
    msg: &impl serde::Serialize,
    op_field: &str,
    avoid: &[&str],
) -> Result<Option<String>, Error> {
    /// Larger scratch buffers are not kept between messages.
    const KEEP: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| {
        // A `Serialize` impl that sends from inside finds the buffer in use.
        let mut own = Vec::new();
        let mut held = cell.try_borrow_mut();
        let buf = match held.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut own,
        };
        buf.clear();
        let written = serde_json::to_writer(&mut *buf, msg).map_err(Error::Serialize);
        let result = written.and_then(|()| {
            let text = std::str::from_utf8(buf).map_err(|e| Error::InvalidMessage {
                reason: format!("serializer wrote invalid UTF-8: {e}"),
                message: Value::Null,
            })?;
            match scan_top_level(text, op_field, avoid) {
                Scan::Operator(_) => Ok(Some(text.to_owned())),
                Scan::Undecided => Ok(None),
                // The slow path names the problem and hands the message back.
                Scan::Invalid => {
                    let value: Value = serde_json::from_str(text).map_err(Error::Serialize)?;
                    encode(value, op_field).map(|(text, _)| Some(text))
                }
            }
        });
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        result
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// The operator is a plain string at this byte range.
    Operator(std::ops::Range<usize>),
    /// Not an object with a string operator.
    Invalid,
    /// Needs the full parse.
    Undecided,
}

/// Find the top-level string field `key` of a JSON object text.
fn scan_top_level(text: &str, key: &str, avoid: &[&str]) -> Scan {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Scan::Invalid;
    }
    i += 1;
    let mut found = None;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'}') => break,
            Some(b'"') => {}
            _ => return Scan::Undecided,
        }
        let Some(k_end) = string_end(b, i) else {
            return Scan::Undecided;
        };
        let raw_key = &text[i + 1..k_end - 1];
        if raw_key.contains('\\') {
            return Scan::Undecided;
        }
        i = skip_ws(b, k_end);
        if b.get(i) != Some(&b':') {
            return Scan::Undecided;
        }
        i = skip_ws(b, i + 1);
        let Some(v_end) = value_end(b, i) else {
            return Scan::Undecided;
        };
        if avoid.contains(&raw_key) {
            return Scan::Undecided;
        }
        if raw_key == key && found.is_none() {
            if b[i] != b'"' {
                return Scan::Invalid;
            }
            let inner = i + 1..v_end - 1;
            if text[inner.clone()].contains('\\') {
                return Scan::Undecided;
            }
            // Nothing else to look for: the rest is valid JSON (serde wrote it).
            if avoid.is_empty() {
                return Scan::Operator(inner);
            }
            found = Some(inner);
        }
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => break,
            _ => return Scan::Undecided,
        }
    }
    match found {
        Some(r) => Scan::Operator(r),
        None => Scan::Invalid,
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// One past the closing quote of the string starting at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// One past the end of the JSON value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Read one inbound text frame. Borrows it: the text is copied only when invalid.
pub(crate) fn decode(text: &str, op_field: &str) -> Result<Message, InvalidFrame> {
    let len = text.len();
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Err(InvalidFrame::Text {
                text: text.to_owned(),
                reason: format!("not JSON: {e}"),
            });
        }
    };
    match operator_of(&value, op_field) {
        Ok(op) => {
            let op = op.to_owned();
            Ok(Message::new(op, value, len))
        }
        Err(reason) => Err(InvalidFrame::Text {
            text: text.to_owned(),
            reason,
        }),
    }
}

fn operator_of<'a>(value: &'a Value, op_field: &str) -> Result<&'a str, String> {
    let Value::Object(map) = value else {
        return Err(format!("not a JSON object but {}", kind(value)));
    };
    operator_in(map, op_field)
}

fn operator_in<'a>(map: &'a Map<String, Value>, op_field: &str) -> Result<&'a str, String> {
    match map.get(op_field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "field {op_field:?} is {} and not a string",
            kind(other)
        )),
        None => Err(format!("no {op_field:?} field")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_level_scan_finds_the_operator_and_agrees_with_the_full_parse() {
        let op = |t: &str| match scan_top_level(t, "Operator", &["msgId"]) {
            Scan::Operator(r) => Some(t[r].to_owned()),
            _ => None,
        };
        assert_eq!(op(r#"{"Operator":"X"}"#).as_deref(), Some("X"));
        assert_eq!(
            op(r#"{"a":{"Operator":"inner"},"b":[1,"}",{"c":"]"}],"Operator":"Y","z":null}"#)
                .as_deref(),
            Some("Y")
        );
        assert_eq!(op(r#" { "Operator" : "Z" } "#).as_deref(), Some("Z"));
        for invalid in [
            r#"[1]"#,
            r#""s""#,
            r#"{}"#,
            r#"{"Operator":1}"#,
            r#"{"a":{"Operator":"X"}}"#,
        ] {
            assert_eq!(
                scan_top_level(invalid, "Operator", &[]),
                Scan::Invalid,
                "{invalid}"
            );
        }
        for undecided in [
            r#"{"Operator":"a\"b"}"#,
            r#"{"msgId":1,"Operator":"X"}"#,
            r#"{"Oper\u0061tor":"X"}"#,
        ] {
            assert_eq!(
                scan_top_level(undecided, "Operator", &["msgId"]),
                Scan::Undecided,
                "{undecided}"
            );
        }
    }

    #[test]
    fn direct_encoding_matches_the_value_path() {
        let v = serde_json::json!({"Operator": "Post", "n": 1, "nested": {"Operator": "no"}});
        let text = encode_direct(&v, "Operator", &[]).unwrap().unwrap();
        assert_eq!(text.len(), text.capacity(), "one exact allocation");
        assert_eq!((text, "Post".to_owned()), encode(v, "Operator").unwrap());
        let bad = serde_json::json!({"op": "X"});
        assert!(matches!(
            encode_direct(&bad, "Operator", &[]),
            Err(Error::InvalidMessage { .. })
        ));
    }
    use serde_json::json;

    #[test]
    fn encodes_objects_with_an_operator() {
        let (text, op) = encode(json!({"Operator": "Heart"}), "Operator").unwrap();
        assert_eq!(text, r#"{"Operator":"Heart"}"#);
        assert_eq!(op, "Heart");
    }

    #[test]
    fn refuses_and_hands_back_what_is_not_an_envelope() {
        for (v, why) in [
            (json!([1, 2]), "not a JSON object but an array"),
            (json!({"op": "X"}), "no \"Operator\" field"),
            (
                json!({"Operator": 5}),
                "field \"Operator\" is a number and not a string",
            ),
        ] {
            match encode(v.clone(), "Operator") {
                Err(Error::InvalidMessage { reason, message }) => {
                    assert_eq!(reason, why);
                    assert_eq!(message, v);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn decodes_with_a_custom_operator_field() {
        let m = decode(r#"{"type":"LoginOK","openId":"o1"}"#, "type").unwrap();
        assert_eq!(m.operator(), "LoginOK");
        assert_eq!(m.get("openId"), Some(&json!("o1")));
        #[derive(serde::Deserialize)]
        struct Login {
            #[serde(rename = "openId")]
            open_id: String,
        }
        assert_eq!(m.deserialize::<Login>().unwrap().open_id, "o1");
    }

    #[test]
    fn bad_frames_are_described_never_panicked_on() {
        for text in [
            "",
            "not json",
            "[1]",
            "\"s\"",
            "{\"Operator\":null}",
            "{}",
            "{\"Operator\":",
        ] {
            assert!(decode(text, "Operator").is_err(), "{text:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_payload() {
        let m = decode(r#"{"Operator":"LoginOK","token":"s3cret"}"#, "Operator").unwrap();
        assert!(!format!("{m:?}").contains("s3cret"));
        let bad = decode(r#"{"token":"s3cret"}"#, "Operator").unwrap_err();
        assert!(!format!("{bad:?}").contains("s3cret"));
    }
}
