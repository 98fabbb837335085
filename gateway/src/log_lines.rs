//! One log event, one line, whatever clients chose to be called.
//!
//! The gateway's log events carry strings that clients and targets choose: user and
//! target names, commands, paths, error messages from the wire. `tracing-subscriber`
//! writes a field formatted with `%` as it is, so a newline in one forges a log line of
//! the client's choosing (`alice\n... INFO herse: admin session opened`), and a
//! terminal escape acts on the operator's terminal. [`OneLine`] sits between the
//! formatter and the output: each event reaches it as one write, and every control
//! character and bidirectional override in it, but the newline that ends it, is written
//! as an escape (`\n`, `\x1b`, `\u{202e}`), as `hersectl` writes them.

use std::io::{self, Write};

use tracing_subscriber::EnvFilter;

/// The gateway's log subscriber: `filter`'s events, one line each, to the writers `out`
/// makes. Without colours, whose escapes would be escaped too.
pub fn subscriber<F, W>(filter: EnvFilter, out: F) -> impl tracing::Subscriber + Send + Sync
where
    F: Fn() -> W + Send + Sync + 'static,
    W: Write,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || OneLine(out()))
        .finish()
}

/// A writer that keeps each event on one line (see the module docs).
#[derive(Debug)]
pub struct OneLine<W>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(one_line(buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `buf`, one event as the formatter wrote it, with everything that could start a new
/// line or act on a terminal escaped; the newline at its end is kept. Bytes that are
/// not UTF-8 (the formatter writes only strings) become U+FFFD.
pub fn one_line(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (&*text, ""),
    };
    let mut out = String::with_capacity(text.len());
    for c in body.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out.push_str(end);
    out
}

/// Characters that reorder the text around them on display (embeddings, overrides,
/// isolates): a log line would read differently from what it holds.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn escapes_what_would_start_a_line_or_act_on_a_terminal() {
        assert_eq!(one_line(b"plain \xc3\xa9t\xc3\xa9\n"), "plain été\n");
        assert_eq!(
            one_line("a\nb\rc\td\u{1b}[31m\u{7f}\u{85}\u{202e}e\u{2066}\n".as_bytes()),
            "a\\nb\\rc\\td\\u{1b}[31m\\u{7f}\\u{85}\\u{202e}e\\u{2066}\n"
        );
        assert_eq!(one_line(b"no end"), "no end");
        assert_eq!(one_line(b"two ends\n\n"), "two ends\\n\n");
        assert_eq!(one_line(b"bad \xff\n"), "bad \u{fffd}\n");
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Through the subscriber the gateway uses: a client's name with a forged line in
    /// it, logged as a field and in the message, stays in its own event's line.
    #[test]
    fn a_forged_line_in_a_field_or_a_message_stays_inside_its_event() {
        let out = Shared::default();
        let sink = out.clone();
        let subscriber = subscriber(EnvFilter::new("info"), move || sink.clone());
        let user = "alice\n2026-01-01T00:00:00Z  INFO herse: root logged in\u{1b}]0;owned\u{7}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(user = %user, "login refused");
            tracing::warn!("no such user {user}");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("login refused") && lines[0].contains("user=alice\\n2026"));
        assert!(lines[1].contains("WARN") && lines[1].contains("no such user alice\\n2026"));
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{text:?}");
    }
}
