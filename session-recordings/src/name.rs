//! Paths and file names exactly as they crossed the wire.
//!
//! SFTP and scp carry names as bytes, and a target's filesystem takes any bytes but `/`
//! and NUL. Most names are UTF-8 and are recorded as text; one that is not is recorded
//! as its text (U+FFFD in place of each invalid sequence) and, beside it, its exact
//! bytes in hex, so that two names that differ only in such bytes stay two names in the
//! recording.

use std::borrow::Cow;
use std::fmt;

/// A name or path as bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Name(Vec<u8>);

impl Name {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Name(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name as text; bytes that are not UTF-8 show as U+FFFD.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The exact bytes in hex, only when they are not UTF-8 (the text cannot hold them).
    pub fn hex(&self) -> Option<String> {
        std::str::from_utf8(&self.0).is_err().then(|| hex::encode(&self.0))
    }

    /// What a recording's event holds: the text, and the bytes when the text is lossy.
    pub fn recorded(&self) -> (String, Option<String>) {
        (self.text().into_owned(), self.hex())
    }

    /// The name back from an event's text and, when present, its bytes in hex. Hex that
    /// does not decode gives the text (the event was written by something else).
    pub fn from_recorded(text: &str, hex: Option<&str>) -> Name {
        match hex.map(hex::decode) {
            Some(Ok(bytes)) => Name(bytes),
            _ => Name::from(text),
        }
    }

    /// `self/part`, with one `/` between them.
    pub fn join(&self, part: &[u8]) -> Name {
        let mut out = self.0.clone();
        if !out.ends_with(b"/") {
            out.push(b'/');
        }
        out.extend_from_slice(part);
        Name(out)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Name(s.as_bytes().to_vec())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name(s.into_bytes())
    }
}

/// The text, as people read it.
impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// Quoted and escaped, with nothing lost: as a string (`"/srv/été"`) when UTF-8,
/// otherwise as a byte string (`"caf\xe9"`). Both escape `\`, so neither reads as the
/// other.
impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(_) => write!(f, "\"{}\"", self.0.escape_ascii()),
        }
    }
}

/// A recorded value for people: its text, followed by its exact bytes when the text is
/// lossy (`cat caf� [not UTF-8; bytes: 636166e9]`). Text that could pass for that (it
/// holds U+FFFD, or the marker's words) says what it is at its end: `[UTF-8; bytes: …]`.
/// The last bracket is always the gateway's, never the value's.
pub fn shown(text: &str, hex: Option<&str>) -> String {
    match hex {
        Some(h) => format!("{text} [not UTF-8; bytes: {h}]"),
        None if text.contains('\u{fffd}') || text.contains("UTF-8; bytes: ") => {
            format!("{text} [UTF-8; bytes: {}]", hex::encode(text))
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_utf8_value_cannot_pass_for_one_that_is_not() {
        // A real name that is not UTF-8: its lossy text holds U+FFFD.
        let real = shown("x\u{fffd}", Some("78ff"));
        assert_eq!(real, "x\u{fffd} [not UTF-8; bytes: 78ff]");
        // A UTF-8 name made to look like it: the gateway's own marker comes last.
        let forged = shown(&real, None);
        assert_ne!(forged, real);
        assert!(
            forged.ends_with(&format!("[UTF-8; bytes: {}]", hex::encode(&real))),
            "{forged}"
        );
        assert!(shown("plain [not UTF-8; bytes: 41]", None).contains("[UTF-8; bytes: "));
        assert_eq!(shown("/srv/été", None), "/srv/été");
    }

    #[test]
    fn only_names_that_are_not_utf8_carry_their_bytes() {
        let plain = Name::from("/srv/été");
        assert_eq!(plain.recorded(), ("/srv/été".to_owned(), None));
        let raw = Name::new(b"/srv/caf\xe9".to_vec());
        let (text, hex) = raw.recorded();
        assert_eq!(text, "/srv/caf\u{fffd}");
        assert_eq!(hex.as_deref(), Some("2f7372762f636166e9"));
        assert_eq!(Name::from_recorded(&text, hex.as_deref()), raw);
        assert_eq!(Name::from_recorded("/srv/été", None), plain);
        // Two names a lossy text would merge stay apart.
        assert_ne!(Name::new(b"a\xff".to_vec()).hex(), Name::new(b"a\xfe".to_vec()).hex());
        assert_eq!(format!("{raw:?}"), r#""/srv/caf\xe9""#);
        assert_eq!(format!("{plain:?}"), r#""/srv/été""#);
        assert_eq!(format!("{:?}", Name::from(r"a\xe9")), r#""a\\xe9""#);
        assert_eq!(raw.join(b"x\xff").as_bytes(), b"/srv/caf\xe9/x\xff");
        assert_eq!(Name::from("/").join(b"x").as_bytes(), b"/x");
        assert_eq!(
            shown(&text, hex.as_deref()),
            "/srv/caf\u{fffd} [not UTF-8; bytes: 2f7372762f636166e9]"
        );
    }
}
