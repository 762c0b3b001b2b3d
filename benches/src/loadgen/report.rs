//! Output: a two-column table for people, and with `--json` one JSON object as the last line
//! (keys in the table's order).

use serde_json::Value;

/// Named results, in the order they are printed.
#[derive(Debug, Default)]
pub(crate) struct Report {
    fields: Vec<(&'static str, Value)>,
}

impl Report {
    pub(crate) fn put(&mut self, key: &'static str, value: impl Into<Value>) {
        self.fields.push((key, value.into()));
    }

    /// Rounds to one decimal (latencies in µs, rates).
    pub(crate) fn put_f(&mut self, key: &'static str, value: f64) {
        self.put_r(key, value, 1);
    }

    /// Rounds to `decimals` decimals.
    pub(crate) fn put_r(&mut self, key: &'static str, value: f64, decimals: i32) {
        let scale = 10f64.powi(decimals);
        self.put(key, (value * scale).round() / scale);
    }

    pub(crate) fn put_opt(&mut self, key: &'static str, value: Option<impl Into<Value>>) {
        self.put(key, value.map_or(Value::Null, Into::into));
    }

    /// The table, then the JSON line if asked for.
    pub(crate) fn print(&self, title: &str, json: bool) {
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!("{title}");
        for (key, value) in &self.fields {
            let shown = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => group(&n.to_string()),
                other => other.to_string(),
            };
            println!("  {key:<width$}  {shown:>14}");
        }
        if json {
            println!("{}", self.json());
        }
    }

    pub(crate) fn json(&self) -> String {
        let body: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

/// `1234567.8` as `1,234,567.8`.
fn group(n: &str) -> String {
    let (int, frac) = n.split_once('.').map_or((n, None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
    format!("{sign}{out}{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_order_and_grouping_reads() {
        let mut r = Report::default();
        r.put("target", "tidings");
        r.put_f("p50_us", 123.456);
        r.put_opt("server_rss_bytes", None::<u64>);
        assert_eq!(
            r.json(),
            r#"{"target":"tidings","p50_us":123.5,"server_rss_bytes":null}"#
        );
        assert_eq!(group("1234567.8"), "1,234,567.8");
        assert_eq!(group("-1000"), "-1,000");
        assert_eq!(group("999"), "999");
    }
}
