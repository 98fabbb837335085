//! Human tables and JSON output.

use serde::Serialize;

/// Unix microseconds as people read them (RFC 3339, UTC, seconds).
pub use herse::timefmt::rfc3339 as time;

/// Print `rows` as JSON (one array) or as an aligned table.
pub fn table<T: Serialize>(json: bool, rows: &[T], headers: &[&str], cells: impl Fn(&T) -> Vec<String>) {
    if json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into()));
        return;
    }
    let body: Vec<Vec<String>> = rows.iter().map(&cells).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &body {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cols: Vec<String>| {
        let s: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in body {
        line(r);
    }
}

/// Print one object as JSON or as `key: value` lines.
pub fn object<T: Serialize>(json: bool, value: &T) {
    let v = serde_json::to_value(value).unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    if let serde_json::Value::Object(map) = v {
        for (k, val) in map {
            match val {
                serde_json::Value::String(s) => println!("{k}: {s}"),
                serde_json::Value::Null => println!("{k}: -"),
                other => println!("{k}: {other}"),
            }
        }
    }
}
