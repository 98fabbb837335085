//! Human tables and JSON output.
//!
//! Human output shows text that clients and targets chose (commands, file names, user
//! names tried at login). Printed as it is, an escape sequence in it would act on the
//! auditor's terminal: erase the line that names it, retitle the window, write the
//! clipboard. So every string printed for humans goes through [`clean`]; JSON output is
//! escaped by the encoder.

use std::borrow::Cow;

use serde::Serialize;

/// Unix microseconds as people read them (RFC 3339, UTC, seconds).
pub use herse::timefmt::rfc3339 as time;

/// Print `rows` as JSON (one array) or as an aligned table.
pub fn table<T: Serialize>(json: bool, rows: &[T], headers: &[&str], cells: impl Fn(&T) -> Vec<String>) {
    if json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into()));
        return;
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cells(r).iter().map(|c| clean(c).into_owned()).collect())
        .collect();
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
                serde_json::Value::String(s) => println!("{k}: {}", clean(&s)),
                serde_json::Value::Null => println!("{k}: -"),
                other => println!("{k}: {}", clean(&other.to_string())),
            }
        }
    }
}

/// `text` with what a terminal would act on written out as escapes (`\u{1b}`): control
/// characters (C0, DEL, C1) and the bidirectional overrides and isolates that reorder
/// what is shown.
pub fn clean(text: &str) -> Cow<'_, str> {
    let acts = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(acts) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if acts(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// [`clean`], line by line: the newlines of text made of several lines are kept.
pub fn clean_lines(text: &str) -> String {
    text.split('\n').map(clean).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_terminal_acts_on_is_written_out() {
        assert!(matches!(clean("rm -rf /srv/été"), Cow::Borrowed(_)));
        assert_eq!(
            clean("ls\r\u{1b}[2K\u{9b}1A\u{7f}\t\n\u{202e}txt.exe"),
            "ls\\u{d}\\u{1b}[2K\\u{9b}1A\\u{7f}\\u{9}\\u{a}\\u{202e}txt.exe"
        );
        assert_eq!(clean_lines("a\u{1b}\nb\r\n"), "a\\u{1b}\nb\\u{d}\n");
    }
}
