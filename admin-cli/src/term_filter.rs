//! What a replayed terminal may send to the auditor's terminal.
//!
//! A recording's output is whatever the target sent, and a target (or anyone who could
//! write to the recorded terminal) chooses it. Played back as it is, it could act on the
//! auditor's terminal beyond drawing: write their clipboard (OSC 52), plant links
//! (OSC 8), resize or retitle their window and ask for reports that the terminal
//! answers as if typed (window reports, device status, device attributes), which lands
//! in hersectl's own input. The player and `sessions watch` pass output through
//! [`TerminalFilter`], which keeps what draws (text, SGR colours, cursor movement,
//! erasing, modes, scrolling regions) and drops the rest: every OSC, DCS, SOS, PM and
//! APC string, the C1 controls, and the CSI sequences that make the terminal answer or
//! touch its window. The recording itself keeps every byte.

/// The longest CSI sequence passed on; a longer one is dropped whole.
const MAX_CSI: usize = 64;

#[derive(Debug, Default)]
enum State {
    #[default]
    Ground,
    /// After ESC.
    Esc,
    /// After the UTF-8 lead byte 0xC2, which with 0x80..=0x9F encodes a C1 control.
    C2,
    /// Inside a CSI sequence, held until its final byte says what it is.
    Csi(Vec<u8>),
    /// Inside an OSC, DCS, SOS, PM or APC string: dropped up to its terminator.
    Str,
    /// ESC inside such a string: `\` ends it (ST), anything else starts anew.
    StrEsc,
    /// 0xC2 inside such a string: with 0x9C it is ST.
    StrC2,
}

/// A streaming filter: feed it the output in the order it was recorded, in any pieces.
#[derive(Debug, Default)]
pub struct TerminalFilter {
    state: State,
    /// Continuation bytes still due to the UTF-8 character being passed on. A byte of
    /// 0x80..=0x9F that no character is due is a raw C1 control (a terminal in an 8-bit
    /// locale acts on it) and is dropped.
    continuation: u8,
}

impl TerminalFilter {
    /// Append to `out` what of `input` may reach the terminal.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.byte(b, out);
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match std::mem::take(&mut self.state) {
            State::Ground => {
                let due = std::mem::take(&mut self.continuation);
                match b {
                    0x80..=0xbf if due > 0 => {
                        self.continuation = due - 1;
                        out.push(b);
                    }
                    0x80..=0x9f => {}
                    0x1b => self.state = State::Esc,
                    0xc2 => self.state = State::C2,
                    0xc3..=0xdf => {
                        self.continuation = 1;
                        out.push(b);
                    }
                    0xe0..=0xef => {
                        self.continuation = 2;
                        out.push(b);
                    }
                    0xf0..=0xf4 => {
                        self.continuation = 3;
                        out.push(b);
                    }
                    _ => out.push(b),
                }
            }
            State::Esc => match b {
                b'[' => self.state = State::Csi(vec![0x1b, b'[']),
                b']' | b'P' | b'X' | b'^' | b'_' => self.state = State::Str,
                // A lone ESC before another ESC or a C1 control is dropped; the byte
                // is read afresh.
                0x1b | 0xc2 => self.byte(b, out),
                _ => out.extend_from_slice(&[0x1b, b]),
            },
            State::C2 => match b {
                0x9b => self.state = State::Csi(vec![0x1b, b'[']),
                0x90 | 0x98 | 0x9d | 0x9e | 0x9f => self.state = State::Str,
                // The other C1 controls are dropped.
                0x80..=0x9f => {}
                _ => {
                    out.push(0xc2);
                    self.continuation = 1;
                    self.byte(b, out);
                }
            },
            State::Csi(mut seq) => match b {
                0x40..=0x7e => {
                    seq.push(b);
                    if seq.len() <= MAX_CSI && !answers_or_touches_window(&seq[2..]) {
                        out.extend_from_slice(&seq);
                    }
                }
                0x20..=0x3f => {
                    seq.push(b);
                    self.state = State::Csi(seq);
                }
                // Anything else cancels the sequence (as a terminal does) and is read
                // afresh.
                _ => self.byte(b, out),
            },
            State::Str => match b {
                0x07 => {}
                0x1b => self.state = State::StrEsc,
                0xc2 => self.state = State::StrC2,
                _ => self.state = State::Str,
            },
            State::StrEsc => match b {
                b'\\' => {}
                _ => {
                    self.state = State::Esc;
                    self.byte(b, out);
                }
            },
            State::StrC2 => match b {
                0x9c => {}
                0xc2 => self.state = State::StrC2,
                0x1b => self.state = State::StrEsc,
                _ => self.state = State::Str,
            },
        }
    }
}

/// CSI sequences (after `ESC [`, up to and with the final byte) that make the terminal
/// answer or act on its window: device status (`n`), device attributes (`c`), window
/// operations and reports (`t`), mode reports (`$p`), the terminal's version (`>q`).
fn answers_or_touches_window(body: &[u8]) -> bool {
    let Some((&last, rest)) = body.split_last() else {
        return false;
    };
    match last {
        b'n' | b'c' | b't' => true,
        b'p' => rest.contains(&b'$'),
        b'q' => rest.first() == Some(&b'>'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(pieces: &[&[u8]]) -> Vec<u8> {
        let mut f = TerminalFilter::default();
        let mut out = Vec::new();
        for p in pieces {
            f.feed(p, &mut out);
        }
        out
    }

    #[test]
    fn drawing_passes_and_what_acts_beyond_it_does_not() {
        let drawing = "\x1b[1;31mred\x1b[0m \x1b[2J\x1b[H\x1b[?25l\x1b[5;20r\x1b(B caf\u{e9} \u{2502}\r\n".as_bytes();
        assert_eq!(filtered(&[drawing]), drawing, "drawing is untouched");
        // Clipboard write, link, title, a DCS query, device status and attributes,
        // window report and resize, mode report, version query.
        let acting: &[&[u8]] = &[
            b"a\x1b]52;c;cm0gLXJmIH4K\x07b",
            b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\",
            b"\x1b]0;title\x07",
            b"\x1bP$qm\x1b\\",
            b"\x1b[6n\x1b[c\x1b[>c\x1b[21t\x1b[8;100;200t\x1b[?1$p\x1b[>q",
            b"\x1b_apc\x1b\\\x1bXsos\x1b\\\x1b^pm\x1b\\",
        ];
        assert_eq!(filtered(acting), b"ablink");
        // C1 controls written in UTF-8 (U+009D OSC, U+009B CSI, U+009C ST).
        assert_eq!(filtered(&["x\u{9d}52;c;aGk=\u{9c}y\u{9b}6nz".as_bytes()]), b"xyz");
        assert_eq!(filtered(&["\u{9b}1mq".as_bytes()]), b"\x1b[1mq");
        assert_eq!(
            filtered(&["\x1b\u{9d}0;t\x07!".as_bytes()]),
            b"!",
            "ESC before a C1 control"
        );
        assert_eq!(filtered(&["\u{a9} \x1b(B".as_bytes()]), "\u{a9} \x1b(B".as_bytes());
        // Raw C1 bytes (an 8-bit terminal's CSI and OSC) are dropped; the same bytes
        // inside UTF-8 characters are not.
        assert_eq!(filtered(&[b"a\x9b6n\x9d0;t\x07b"]), b"a6n0;t\x07b");
        let text = "\u{100}\u{800}\u{10000}\u{1b}[0m caf\u{e9}".as_bytes();
        for cut in 0..text.len() {
            assert_eq!(filtered(&[&text[..cut], &text[cut..]]), text, "cut at {cut}");
        }
    }

    #[test]
    fn sequences_split_across_pieces_are_still_recognised() {
        let whole = b"1\x1b]52;c;aGk=\x1b\\2\x1b[6n3\x1b[31m4";
        for cut in 0..whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(filtered(&[a, b]), b"123\x1b[31m4", "cut at {cut}");
        }
    }
}
