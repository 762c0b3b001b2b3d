//! Variables, `${…}` interpolation and JSON pattern matching: the small language of the case
//! files (specified in `docs/CONFORMANCE.md`).
//!
//! - `${name}` is replaced by a variable's text; `${name+3}` adds 3 to a cursor's sequence (or
//!   to an integer); `${repeat:ab:3}` is `ababab`. A string that is exactly one `${…}` of a
//!   non-string variable becomes that JSON value. `$${` writes a literal `${`.
//! - In expected JSON, a string that is exactly `$any`, `$absent` (as an object value: the key
//!   must be missing), `$cursor`, `$int`, `$string`, `$object` matches by kind; `$cursor:NAME`
//!   (and `$any:NAME`, …) also binds the matched value to `NAME`. Anything else is interpolated
//!   and then compared exactly. Objects must have exactly the expected keys, unless the pattern
//!   has the key `"...": true` (extra keys allowed).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

/// The variables of one running case: bound values plus the built-ins (`ns`, tokens).
#[derive(Debug, Default, Clone)]
pub struct Vars {
    values: HashMap<String, Value>,
}

impl Vars {
    /// Binds `name` (replacing an earlier value).
    pub fn set(&mut self, name: impl Into<String>, value: Value) {
        self.values.insert(name.into(), value);
    }

    /// The value bound to `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// Replaces every `${…}` in `text`.
    pub fn interpolate(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("$${") {
                out.push_str("${");
                rest = after;
            } else if let Some(after) = tail.strip_prefix("${") {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unterminated `${{` in {text:?}"))?;
                out.push_str(&self.expand(&after[..end])?);
                rest = &after[end + 1..];
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Interpolates every string of a JSON value (a frame or body to send).
    pub fn interpolate_json(&self, value: &Value) -> Result<Value, String> {
        Ok(match value {
            Value::String(s) => match whole_expression(s) {
                Some(expr) => match self.lookup(expr)? {
                    Value::String(text) => Value::String(text),
                    other => other,
                },
                None => Value::String(self.interpolate(s)?),
            },
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.interpolate_json(v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((self.interpolate(k)?, self.interpolate_json(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    fn expand(&self, expr: &str) -> Result<String, String> {
        Ok(match self.lookup(expr)? {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }

    fn lookup(&self, expr: &str) -> Result<Value, String> {
        if let Some(args) = expr.strip_prefix("repeat:") {
            let (text, count) = args
                .rsplit_once(':')
                .ok_or_else(|| format!("`${{{expr}}}`: write ${{repeat:TEXT:COUNT}}"))?;
            let count: usize = count
                .parse()
                .map_err(|_| format!("`${{{expr}}}`: COUNT must be a number"))?;
            return Ok(Value::String(text.repeat(count)));
        }
        let (name, offset) = match expr.rfind(['+', '-']) {
            Some(at)
                if expr[at + 1..].chars().all(|c| c.is_ascii_digit()) && at + 1 < expr.len() =>
            {
                let n: i64 = expr[at + 1..]
                    .parse()
                    .map_err(|_| format!("`${{{expr}}}`: offset too large"))?;
                (
                    &expr[..at],
                    if expr.as_bytes()[at] == b'-' { -n } else { n },
                )
            }
            _ => (expr, 0),
        };
        let value = self
            .values
            .get(name)
            .ok_or_else(|| format!("`${{{expr}}}`: no variable {name:?} is bound at this point"))?;
        if offset == 0 {
            return Ok(value.clone());
        }
        match value {
            Value::String(s) => shift_cursor(s, offset)
                .map(Value::String)
                .ok_or_else(|| format!("`${{{expr}}}`: {s:?} is not a cursor")),
            Value::Number(n) => n
                .as_i64()
                .map(|n| Value::from(n + offset))
                .ok_or_else(|| format!("`${{{expr}}}`: {n} is not an integer")),
            other => Err(format!("`${{{expr}}}`: cannot add to {other}")),
        }
    }
}

/// `Some(expr)` when `s` is exactly `${expr}`.
fn whole_expression(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("${")?.strip_suffix('}')?;
    (!inner.contains('}')).then_some(inner)
}

/// `<epoch>-<seq>` with the sequence moved by `offset`.
fn shift_cursor(cursor: &str, offset: i64) -> Option<String> {
    let (epoch, seq) = cursor.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    let seq = seq.checked_add_signed(offset)?;
    Some(format!("{epoch}-{seq}"))
}

/// Whether `s` is a cursor as PROTOCOL.md §5.5 defines it.
pub fn is_cursor(s: &str) -> bool {
    let Some((epoch, seq)) = s.split_once('-') else {
        return false;
    };
    (1..=16).contains(&epoch.len())
        && epoch
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (1..=20).contains(&seq.len())
        && seq.bytes().all(|b| b.is_ascii_digit())
        && seq.parse::<u64>().is_ok()
}

/// Checks `actual` against the pattern `expected`, binding `$kind:NAME` captures into `vars`.
/// The error names the JSON path that differs and both values.
pub fn matches(expected: &Value, actual: &Value, vars: &mut Vars) -> Result<(), String> {
    match_at("", expected, Some(actual), vars)
}

fn match_at(
    path: &str,
    expected: &Value,
    actual: Option<&Value>,
    vars: &mut Vars,
) -> Result<(), String> {
    let here = if path.is_empty() { "the value" } else { path };
    if let Value::String(pattern) = expected
        && let Some(kind) = pattern.strip_prefix('$')
        && !kind.starts_with('{')
        && !kind.starts_with('$')
    {
        let (kind, bind) = match kind.split_once(':') {
            Some((kind, name)) => (kind, Some(name)),
            None => (kind, None),
        };
        if kind == "absent" {
            return match actual {
                None => Ok(()),
                Some(v) => Err(format!("{here} should be absent, got {v}")),
            };
        }
        let Some(actual) = actual else {
            return Err(format!("{here} is missing (expected {pattern})"));
        };
        let ok = match kind {
            "any" => true,
            "cursor" => actual.as_str().is_some_and(is_cursor),
            "int" => actual.as_u64().is_some() || actual.as_i64().is_some(),
            "string" => actual.is_string(),
            "object" => actual.is_object(),
            _ => return Err(format!("unknown pattern {pattern:?} at {here}")),
        };
        if !ok {
            return Err(format!("{here}: expected {pattern}, got {actual}"));
        }
        if let Some(name) = bind {
            vars.set(name, actual.clone());
        }
        return Ok(());
    }
    let Some(actual) = actual else {
        return Err(format!("{here} is missing (expected {expected})"));
    };
    match (expected, actual) {
        (Value::String(pattern), _) => {
            let want = match whole_expression(pattern) {
                Some(expr) => vars.lookup(expr)?,
                None => Value::String(vars.interpolate(pattern)?),
            };
            if &want == actual {
                Ok(())
            } else {
                Err(format!("{here}: expected {want}, got {actual}"))
            }
        }
        (Value::Object(want), Value::Object(got)) => {
            let open = want.get("...") == Some(&Value::Bool(true));
            // Fields that bind variables first, so that their siblings may use them.
            let (binding, plain): (Vec<_>, Vec<_>) = want.iter().partition(|(_, p)| binds(p));
            for (key, pattern) in binding.into_iter().chain(plain) {
                if key == "..." {
                    continue;
                }
                let key = vars.interpolate(key)?;
                match_at(&join(path, &key), pattern, got.get(&key), vars)?;
            }
            if !open
                && let Some(extra) = got.keys().find(|k| {
                    !want.contains_key(k.as_str()) && !want_has_interpolated(want, k, vars)
                })
            {
                return Err(format!(
                    "{here} has the unexpected field {extra:?} (= {})",
                    got[extra]
                ));
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(got)) => {
            if want.len() != got.len() {
                return Err(format!(
                    "{here}: expected {} items, got {}: {actual}",
                    want.len(),
                    got.len()
                ));
            }
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                match_at(&format!("{path}[{i}]"), w, Some(g), vars)?;
            }
            Ok(())
        }
        _ if expected == actual => Ok(()),
        _ => Err(format!("{here}: expected {expected}, got {actual}")),
    }
}

/// Whether a pattern binds a variable (`$kind:NAME`) anywhere inside.
fn binds(pattern: &Value) -> bool {
    match pattern {
        Value::String(s) => s.starts_with('$') && !s.starts_with("${") && s.contains(':'),
        Value::Array(items) => items.iter().any(binds),
        Value::Object(map) => map.values().any(binds),
        _ => false,
    }
}

/// Whether an expected object has a key that interpolates to `key` (keys may use `${…}`).
fn want_has_interpolated(want: &serde_json::Map<String, Value>, key: &str, vars: &Vars) -> bool {
    want.keys()
        .any(|k| k.contains("${") && vars.interpolate(k).is_ok_and(|k| k == key))
}

fn join(path: &str, key: &str) -> String {
    let mut out = String::from(path);
    if !out.is_empty() {
        out.push('.');
    }
    let _ = write!(out, "{key}");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.set("ns", json!("n1"));
        v.set("c", json!("18c5e2f04a1-41"));
        v.set("n", json!(5));
        v
    }

    #[test]
    fn interpolation() {
        let v = vars();
        assert_eq!(v.interpolate("t.${ns}.a").unwrap(), "t.n1.a");
        assert_eq!(v.interpolate("${c+2}").unwrap(), "18c5e2f04a1-43");
        assert_eq!(v.interpolate("${c-1}").unwrap(), "18c5e2f04a1-40");
        assert_eq!(v.interpolate("${n+1}").unwrap(), "6");
        assert_eq!(v.interpolate("${repeat:ab:3}").unwrap(), "ababab");
        assert_eq!(v.interpolate("$${x} $5").unwrap(), "${x} $5");
        assert!(v.interpolate("${nope}").unwrap_err().contains("nope"));
        assert!(v.interpolate("${ns").is_err());
        assert_eq!(
            v.interpolate_json(&json!({"id": "${n}"})).unwrap(),
            json!({"id": 5})
        );
    }

    #[test]
    fn matching() {
        let mut v = vars();
        let want = json!({"type": "ok", "id": 1, "cursor": "$cursor:k", "x": "$absent"});
        matches(
            &want,
            &json!({"type": "ok", "id": 1, "cursor": "1f-7"}),
            &mut v,
        )
        .unwrap();
        assert_eq!(v.get("k"), Some(&json!("1f-7")));
        let err = matches(
            &want,
            &json!({"type": "ok", "id": 1, "cursor": "1F-7"}),
            &mut v,
        );
        assert!(err.unwrap_err().contains("cursor"));
        let err = matches(&json!({"a": 1}), &json!({"a": 1, "b": 2}), &mut v).unwrap_err();
        assert!(err.contains("unexpected field \"b\""), "{err}");
        matches(
            &json!({"a": 1, "...": true}),
            &json!({"a": 1, "b": 2}),
            &mut v,
        )
        .unwrap();
        matches(
            &json!({"c": "${c+1}"}),
            &json!({"c": "18c5e2f04a1-42"}),
            &mut v,
        )
        .unwrap();
        matches(&json!({"${ns}": 1}), &json!({"n1": 1}), &mut v).unwrap();
        // A sibling may use what another field binds, whatever the key order.
        matches(
            &json!({"a": "${z}", "b": {"z": "$int:z"}}),
            &json!({"a": 7, "b": {"z": 7}}),
            &mut v,
        )
        .unwrap();
        assert!(matches(&json!([1, 2]), &json!([1]), &mut v).is_err());
        assert!(matches(&json!({"a": "$absent"}), &json!({"a": null}), &mut v).is_err());
    }

    #[test]
    fn cursors() {
        assert!(is_cursor("18c5e2f04a1-0"));
        assert!(!is_cursor("18C5-1"));
        assert!(!is_cursor("-1"));
        assert!(!is_cursor("1-"));
        assert!(!is_cursor("1-99999999999999999999"));
    }
}
