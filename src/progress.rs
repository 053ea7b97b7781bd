//! Build progress: one stream of events, rendered as plain lines, a redrawn tty line, or
//! nothing (quiet). Everything goes to stderr; stdout is left for `dest=-` and `-q`.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line per event, numbered like BuildKit's plain output.
    Plain,
    /// The running step redrawn in place, finished steps kept.
    Tty,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// Parses `--progress` (`auto` picks tty when stderr is a terminal).
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "auto" => Some(if std::io::stderr().is_terminal() {
                Mode::Tty
            } else {
                Mode::Plain
            }),
            "plain" | "rawjson" => Some(Mode::Plain),
            "tty" => Some(Mode::Tty),
            "quiet" => Some(Mode::Quiet),
            _ => None,
        }
    }
}

/// A step that has started; finish it with [`Progress::done`] or [`Progress::failed`].
#[derive(Debug)]
pub struct StepHandle {
    id: usize,
    started: Instant,
    title: String,
}

/// The progress sink shared by the build.
pub struct Progress {
    mode: Mode,
    next: Mutex<usize>,
    started: Instant,
}

impl Progress {
    /// A sink in `mode`.
    pub fn new(mode: Mode) -> Progress {
        Progress {
            mode,
            next: Mutex::new(1),
            started: Instant::now(),
        }
    }

    /// Announces a step, e.g. `[stage-0 2/5] COPY a /b`.
    pub fn start(&self, title: String) -> StepHandle {
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let id = *n;
            *n += 1;
            id
        };
        match self.mode {
            Mode::Plain => eprintln!("#{id} {}", printable(&title)),
            Mode::Tty => {
                eprint!("\r\x1b[K => {}", printable(&title));
                let _ = std::io::stderr().flush();
            }
            Mode::Quiet => {}
        }
        StepHandle {
            id,
            started: Instant::now(),
            title,
        }
    }

    /// A line of output belonging to a step.
    pub fn log(&self, step: &StepHandle, line: &str) {
        match self.mode {
            Mode::Plain => eprintln!("#{} {:.3} {line}", step.id, secs(step.started.elapsed())),
            Mode::Tty => eprintln!("\r\x1b[K   {line}"),
            Mode::Quiet => {}
        }
    }

    /// Marks a step finished; `cached` when it did no work.
    pub fn done(&self, step: StepHandle, cached: bool) {
        let took = secs(step.started.elapsed());
        match self.mode {
            Mode::Plain if cached => eprintln!("#{} CACHED", step.id),
            Mode::Plain => eprintln!("#{} DONE {took:.1}s", step.id),
            Mode::Tty if cached => eprintln!("\r\x1b[K => CACHED {}", printable(&step.title)),
            Mode::Tty => eprintln!("\r\x1b[K => {} {took:.1}s", printable(&step.title)),
            Mode::Quiet => {}
        }
    }

    /// Marks a step failed.
    pub fn failed(&self, step: StepHandle) {
        match self.mode {
            Mode::Plain => eprintln!(
                "#{} ERROR after {:.1}s",
                step.id,
                secs(step.started.elapsed())
            ),
            Mode::Tty => eprintln!("\r\x1b[K => ERROR {}", printable(&step.title)),
            Mode::Quiet => {}
        }
    }

    /// A note outside any step (warnings, the final summary).
    pub fn note(&self, text: &str) {
        if self.mode != Mode::Quiet {
            eprintln!("{}", printable(text));
        }
    }

    /// Time since the build started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// `text` with its control characters escaped (`\x1b`, `\u{9b}`; newlines and tabs
/// kept), for every message that can quote input: a Dockerfile line or a tar header must
/// not drive the terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!(Mode::parse("plain"), Some(Mode::Plain));
        assert_eq!(Mode::parse("quiet"), Some(Mode::Quiet));
        assert_eq!(Mode::parse("tty"), Some(Mode::Tty));
        assert!(Mode::parse("auto").is_some());
        assert_eq!(Mode::parse("fancy"), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(printable("a\x1b[2Jb\r\u{9b}"), "a\\x1b[2Jb\\x0d\\u{9b}");
    }

    #[test]
    fn numbers_steps_in_order() {
        let p = Progress::new(Mode::Quiet);
        let a = p.start("a".into());
        let b = p.start("b".into());
        assert_eq!((a.id, b.id), (1, 2));
        p.done(a, false);
        p.failed(b);
    }
}
