//! Build progress: one stream of events, rendered as plain lines, a redrawn tty line, or
//! nothing (quiet). Everything goes to stderr; stdout is left for `dest=-` and `-q`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::source::registry::TransferEvent;

mod rawjson;
mod tty;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line per event, numbered like BuildKit's plain output.
    Plain,
    /// buildx's live view: a `[+] Building` header, a row per step with its timer, the
    /// last lines of running steps' output, redrawn in place.
    Tty,
    /// One JSON document per line in buildx's `rawjson` shape (`vertexes`, `statuses`,
    /// `logs`), for tools that read it.
    RawJson,
    /// Nothing.
    Quiet,
}

/// A step that has started; finish it with [`Progress::done`] or [`Progress::failed`].
#[derive(Debug)]
pub struct StepHandle {
    id: usize,
    started: Instant,
    /// When it started, for rawjson.
    started_at: SystemTime,
    title: String,
}

/// Progress of one part of a step: a blob being fetched, a context being read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What it is about (`sha256:…`, `transferring context`).
    pub id: String,
    /// Bytes done.
    pub current: u64,
    /// Bytes in all, when known.
    pub total: Option<u64>,
    /// Finished.
    pub completed: bool,
}

impl Status {
    /// A pull's or a push's event as a status: a blob's row is named `{blob_prefix}{digest}`,
    /// a resolved manifest `resolve {reference}@{digest}`.
    pub fn of_transfer(e: &TransferEvent, reference: &str, blob_prefix: &str) -> Status {
        let blob = |digest, current, total, completed| Status {
            id: format!("{blob_prefix}{digest}"),
            current,
            total: Some(total),
            completed,
        };
        match e {
            TransferEvent::Resolved { manifest } => Status {
                id: format!("resolve {reference}@{manifest}"),
                current: 0,
                total: None,
                completed: true,
            },
            TransferEvent::Present { digest, size } | TransferEvent::Moved { digest, size } => {
                blob(digest, *size, *size, true)
            }
            TransferEvent::Progress {
                digest,
                done,
                total,
            } => blob(digest, *done, *total, false),
        }
    }
}

/// The progress sink shared by the build.
pub struct Progress {
    mode: Mode,
    next: Mutex<usize>,
    started: Instant,
    /// When plain mode last printed a status of each step (statuses are throttled).
    last_status: Mutex<HashMap<usize, Instant>>,
    tty: Option<tty::Board>,
}

/// Plain mode prints a step's unfinished statuses at most this often.
const STATUS_EVERY: Duration = Duration::from_secs(1);

impl Progress {
    /// A sink in `mode`.
    pub fn new(mode: Mode) -> Progress {
        Progress {
            mode,
            next: Mutex::new(1),
            started: Instant::now(),
            last_status: Mutex::new(HashMap::new()),
            tty: (mode == Mode::Tty).then(tty::Board::start),
        }
    }

    /// Announces a step, e.g. `[stage-0 2/5] COPY a /b`.
    pub fn start(&self, title: String) -> StepHandle {
        let id = {
            let mut n = lock(&self.next);
            let id = *n;
            *n += 1;
            id
        };
        let step = StepHandle {
            id,
            started: Instant::now(),
            started_at: SystemTime::now(),
            title,
        };
        match self.mode {
            Mode::Plain => eprintln!("#{id} {}", printable(&step.title)),
            Mode::Tty => self.board().add(id, &step.title),
            Mode::RawJson => rawjson::vertex(&step, None),
            Mode::Quiet => {}
        }
        step
    }

    /// A line of output belonging to a step.
    pub fn log(&self, step: &StepHandle, line: &str) {
        match self.mode {
            Mode::Plain => eprintln!(
                "#{} {:.3} {}",
                step.id,
                secs(step.started.elapsed()),
                printable(line)
            ),
            Mode::Tty => self.board().log(step.id, line),
            Mode::RawJson => rawjson::log(step, line),
            Mode::Quiet => {}
        }
    }

    /// The progress of a part of a step (bytes of a blob).
    pub fn status(&self, step: &StepHandle, status: &Status) {
        match self.mode {
            Mode::Plain => {
                let mut last = lock(&self.last_status);
                let now = Instant::now();
                let due = last
                    .get(&step.id)
                    .is_none_or(|t| now.duration_since(*t) >= STATUS_EVERY);
                if status.completed || due {
                    last.insert(step.id, now);
                    // Byte counts of blobs carry the time, as buildx's do.
                    let time = match status.total {
                        Some(_) => format!(" {:.1}s", secs(step.started.elapsed())),
                        None => String::new(),
                    };
                    let done = if status.completed { " done" } else { "" };
                    eprintln!("#{} {}{time}{done}", step.id, status_text(status));
                }
            }
            Mode::Tty => self.board().status(step.id, status),
            Mode::RawJson => rawjson::status(step, status),
            Mode::Quiet => {}
        }
    }

    /// Marks a step finished; `cached` when it did no work.
    pub fn done(&self, step: StepHandle, cached: bool) {
        let took = secs(step.started.elapsed());
        match self.mode {
            Mode::Plain if cached => eprintln!("#{} CACHED", step.id),
            Mode::Plain => eprintln!("#{} DONE {took:.1}s", step.id),
            Mode::Tty => self.board().end(step.id, tty::End::Done { cached }),
            Mode::RawJson => rawjson::vertex(&step, Some((cached, None))),
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
            Mode::Tty => self.board().end(step.id, tty::End::Failed),
            Mode::RawJson => rawjson::vertex(&step, Some((false, Some("failed")))),
            Mode::Quiet => {}
        }
    }

    /// A note outside any step (warnings, the final summary).
    pub fn note(&self, text: &str) {
        match self.mode {
            Mode::Quiet => {}
            // Warnings, as buildx's rawjson carries them; nothing else but JSON.
            Mode::RawJson => {
                if let Some(w) = text.strip_prefix("warning: ") {
                    eprintln!("{}", serde_json::json!({ "warnings": [{ "short": w }] }));
                }
            }
            Mode::Tty => self.board().note(&printable(text)),
            Mode::Plain => eprintln!("{}", printable(text)),
        }
    }

    /// Ends the live view (tty): the last frame, marked FINISHED when `ok`. Later notes
    /// print below it. Dropping the sink ends it too, as failed.
    pub fn finish(&self, ok: bool) {
        if let Some(b) = &self.tty {
            b.finish(ok);
        }
    }

    /// Before a fork: stops what runs on other threads (the tty view's redraws).
    pub fn pause(&self) {
        if let Some(b) = &self.tty {
            b.pause();
        }
    }

    /// After a fork, in the process that goes on: starts it again.
    pub fn resume(&self) {
        if let Some(b) = &self.tty {
            b.resume();
        }
    }

    /// Time since the build started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn board(&self) -> &tty::Board {
        self.tty.as_ref().expect("tty mode has a board")
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// `sha256:… 1.2MB / 3.4MB`, or the bytes alone when the total is unknown.
fn status_text(s: &Status) -> String {
    match s.total {
        Some(t) => format!(
            "{} {} / {}",
            printable(&s.id),
            human_bytes(s.current),
            human_bytes(t)
        ),
        None if s.current > 0 => format!("{}: {}", printable(&s.id), human_bytes(s.current)),
        None => printable(&s.id).into_owned(),
    }
}

/// Bytes as buildx prints them (decimal units: `2.10MB`, `512B`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.2}{}", UNITS[unit])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Formats seconds since the epoch as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(printable("a\x1b[2Jb\r\u{9b}"), "a\\x1b[2Jb\\x0d\\u{9b}");
    }

    #[test]
    fn bytes_read_like_buildx() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(2_100_000), "2.10MB");
        assert_eq!(human_bytes(3_400_000_000), "3.40GB");
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
