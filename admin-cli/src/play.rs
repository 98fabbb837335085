//! `hersectl recordings play`: replay a terminal in real time, with pause, speed, seeking
//! and idle skipping when run in a terminal; plain timed output otherwise.

use std::io::Write;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use crossterm::terminal;
use session_recordings::{DataDirection, Event, Meta};

use crate::commands::Failure;
use crate::term_filter::TerminalFilter;

/// Finds the terminal channel among events seen one at a time: the first with a pty
/// (its terminal type and size), else the first with output (at 80×24).
#[derive(Default)]
pub struct TerminalFinder {
    pty: Option<(u32, String, u32, u32)>,
    output: Option<u32>,
}

impl TerminalFinder {
    pub fn see(&mut self, e: &Event) {
        match e {
            Event::Meta {
                channel,
                meta: Meta::Pty { term, cols, rows, .. },
                ..
            } if self.pty.is_none() => self.pty = Some((*channel, term.clone(), *cols, *rows)),
            Event::Data {
                channel,
                direction: DataDirection::Output,
                ..
            } if self.output.is_none() => self.output = Some(*channel),
            _ => {}
        }
    }

    pub fn has_pty(&self) -> bool {
        self.pty.is_some()
    }

    pub fn found(self) -> (u32, String, u32, u32) {
        self.pty
            .unwrap_or_else(|| (self.output.unwrap_or(0), "xterm".into(), 80, 24))
    }
}

/// The output of one channel, in time order, as it may reach the auditor's terminal
/// (through [`TerminalFilter`]: what draws, not what acts on the terminal).
pub struct Timeline {
    pub frames: Vec<(u64, Vec<u8>)>,
    pub duration: u64,
}

/// A [`Timeline`] of one channel, from events taken one at a time: only that channel's
/// output is kept.
pub struct TimelineBuilder {
    channel: u32,
    filter: TerminalFilter,
    frames: Vec<(u64, Vec<u8>)>,
    last_t: u64,
}

impl TimelineBuilder {
    pub fn new(channel: u32) -> Self {
        TimelineBuilder {
            channel,
            filter: TerminalFilter::default(),
            frames: Vec::new(),
            last_t: 0,
        }
    }

    pub fn add(&mut self, e: &Event) {
        self.last_t = e.t_micros();
        if let Some((t_micros, data)) = e.output_on(self.channel) {
            let mut shown = Vec::with_capacity(data.len());
            self.filter.feed(data, &mut shown);
            self.frames.push((t_micros, shown));
        }
    }

    pub fn build(self) -> Timeline {
        Timeline {
            frames: self.frames,
            duration: self.last_t,
        }
    }
}

pub struct PlayOptions {
    pub speed: f64,
    pub at_micros: u64,
    /// Gaps longer than this (recording time) are shortened to it.
    pub max_idle: Option<Duration>,
}

/// Restores the terminal even on error or panic.
struct RawMode;

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = terminal::disable_raw_mode();
        let _ = std::io::stdout().write_all(b"\x1b[?25h\r\n");
    }
}

pub fn play(t: &Timeline, opts: &PlayOptions) -> Result<(), Failure> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        interactive(t, opts)
    } else {
        plain(t, opts)
    }
}

fn plain(t: &Timeline, opts: &PlayOptions) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let mut vt = opts.at_micros;
    for (ts, data) in &t.frames {
        if *ts < opts.at_micros {
            continue;
        }
        let mut gap = Duration::from_micros(ts.saturating_sub(vt));
        if let Some(m) = opts.max_idle {
            gap = gap.min(m);
        }
        std::thread::sleep(gap.div_f64(opts.speed.max(0.01)));
        vt = *ts;
        out.write_all(data)?;
        out.flush()?;
    }
    Ok(())
}

fn fmt_t(us: u64) -> String {
    let s = us / 1_000_000;
    format!("{:02}:{:02}", s / 60, s % 60)
}

fn interactive(t: &Timeline, opts: &PlayOptions) -> Result<(), Failure> {
    terminal::enable_raw_mode()?;
    let _raw = RawMode;
    let mut out = std::io::stdout().lock();
    let mut speed = opts.speed.max(0.01);
    let mut paused = false;
    let mut skip_idle = opts.max_idle.is_some();
    let mut pos = 0usize; // next frame to show
    let mut vt = 0u64; // virtual time, microseconds of the recording
    let mut wall = Instant::now();
    let mut redraw_bar = Instant::now();
    // Start at the requested point: render everything before it at once.
    let seek = |out: &mut std::io::StdoutLock<'_>, pos: &mut usize, vt: &mut u64, to: u64| -> std::io::Result<()> {
        if to < *vt {
            out.write_all(b"\x1b[2J\x1b[H")?;
            *pos = 0;
        }
        while *pos < t.frames.len() && t.frames[*pos].0 <= to {
            out.write_all(&t.frames[*pos].1)?;
            *pos += 1;
        }
        *vt = to;
        out.flush()
    };
    out.write_all(b"\x1b[2J\x1b[H")?;
    seek(&mut out, &mut pos, &mut vt, opts.at_micros)?;
    loop {
        // Advance virtual time.
        if !paused {
            let now = Instant::now();
            vt += (now.duration_since(wall).as_micros() as f64 * speed) as u64;
            wall = now;
        } else {
            wall = Instant::now();
        }
        if skip_idle && pos < t.frames.len() && t.frames[pos].0 > vt + 1_000_000 {
            vt = t.frames[pos].0.saturating_sub(100_000);
        }
        while pos < t.frames.len() && t.frames[pos].0 <= vt {
            out.write_all(&t.frames[pos].1)?;
            pos += 1;
        }
        if redraw_bar.elapsed() >= Duration::from_millis(250) {
            bar(&mut out, t, vt.min(t.duration), speed, paused, skip_idle)?;
            redraw_bar = Instant::now();
        }
        out.flush()?;
        if pos >= t.frames.len() && vt >= t.duration {
            bar(&mut out, t, t.duration, speed, true, skip_idle)?;
            break;
        }
        if event::poll(Duration::from_millis(20))? {
            if let TermEvent::Key(KeyEvent { code, modifiers, .. }) = event::read()? {
                match code {
                    KeyCode::Char('q') | KeyCode::Esc => break,
                    KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => break,
                    KeyCode::Char(' ') => paused = !paused,
                    KeyCode::Right => {
                        let to = (vt + 10_000_000).min(t.duration);
                        seek(&mut out, &mut pos, &mut vt, to)?
                    }
                    KeyCode::Left => {
                        let to = vt.saturating_sub(10_000_000);
                        seek(&mut out, &mut pos, &mut vt, to)?
                    }
                    KeyCode::Char('+') | KeyCode::Char('=') => speed = (speed * 2.0).min(64.0),
                    KeyCode::Char('-') => speed = (speed / 2.0).max(0.125),
                    KeyCode::Char('i') => skip_idle = !skip_idle,
                    _ => {}
                }
                bar(&mut out, t, vt.min(t.duration), speed, paused, skip_idle)?;
            }
        }
    }
    Ok(())
}

/// A progress bar on the bottom row (the cursor is saved and restored around it).
fn bar(out: &mut impl Write, t: &Timeline, vt: u64, speed: f64, paused: bool, skip_idle: bool) -> std::io::Result<()> {
    let (cols, rows) = terminal::size().unwrap_or((80, 24));
    let label = format!(
        " {} {} / {}  x{speed}{}  [space] pause [<-/->] 10s [+/-] speed [i] idle [q] quit ",
        if paused { "||" } else { ">" },
        fmt_t(vt),
        fmt_t(t.duration),
        if skip_idle { " skip-idle" } else { "" }
    );
    let width = usize::from(cols).max(10);
    let filled = if t.duration == 0 {
        width
    } else {
        (vt as f64 / t.duration as f64 * width as f64) as usize
    };
    let mut line: Vec<char> = label.chars().chain(std::iter::repeat(' ')).take(width).collect();
    line.truncate(width);
    let (done, rest): (String, String) = (
        line[..filled.min(width)].iter().collect(),
        line[filled.min(width)..].iter().collect(),
    );
    write!(out, "\x1b7\x1b[{rows};1H\x1b[7m{done}\x1b[0m\x1b[2m{rest}\x1b[0m\x1b8")
}
