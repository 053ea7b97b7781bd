//! Build progress: one stream of events, rendered as plain lines, a redrawn tty line, or
//! nothing (quiet). Everything goes to stderr; stdout is left for `dest=-` and `-q`.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One line per event, numbered like BuildKit's plain output.
    Plain,
    /// The running step redrawn in place, finished steps kept.
    Tty,
    /// One JSON document per line in buildx's `rawjson` shape (`vertexes`, `logs`), for
    /// tools that read it.
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
            Mode::RawJson => {}
            Mode::Quiet => {}
        }
        let step = StepHandle {
            id,
            started: Instant::now(),
            started_at: SystemTime::now(),
            title,
        };
        if self.mode == Mode::RawJson {
            raw_vertex(&step, None);
        }
        step
    }

    /// A line of output belonging to a step.
    pub fn log(&self, step: &StepHandle, line: &str) {
        match self.mode {
            Mode::Plain => eprintln!("#{} {:.3} {line}", step.id, secs(step.started.elapsed())),
            Mode::Tty => eprintln!("\r\x1b[K   {line}"),
            Mode::RawJson => raw_log(step, line),
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
            Mode::RawJson => raw_vertex(&step, Some((cached, None))),
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
            Mode::RawJson => raw_vertex(&step, Some((false, Some("failed")))),
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
            _ => eprintln!("{}", printable(text)),
        }
    }

    /// Time since the build started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A step's vertex digest in rawjson: stable for the step within the build.
fn vertex_digest(step: &StepHandle) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{}\0{}", step.id, step.title).as_bytes());
    format!("sha256:{}", hex::encode(h))
}

/// RFC 3339 with nanoseconds, as buildx writes times.
fn nanos_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", secs.trim_end_matches('Z'), d.subsec_nanos())
}

/// A rawjson vertex line: started, or (`end`) completed, cached or failed.
fn raw_vertex(step: &StepHandle, end: Option<(bool, Option<&str>)>) {
    let mut v = serde_json::json!({
        "digest": vertex_digest(step),
        "name": step.title,
        "started": nanos_rfc3339(step.started_at),
    });
    if let Some((cached, error)) = end {
        v["completed"] = nanos_rfc3339(SystemTime::now()).into();
        if cached {
            v["cached"] = true.into();
        }
        if let Some(e) = error {
            v["error"] = e.into();
        }
    }
    eprintln!("{}", serde_json::json!({ "vertexes": [v] }));
}

/// A rawjson log line of a step's output (base64, stream 1, as buildx's).
fn raw_log(step: &StepHandle, line: &str) {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(format!("{line}\n"));
    eprintln!(
        "{}",
        serde_json::json!({ "logs": [{
            "vertex": vertex_digest(step),
            "stream": 1,
            "data": data,
            "timestamp": nanos_rfc3339(SystemTime::now()),
        }] })
    );
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
    fn numbers_steps_in_order() {
        let p = Progress::new(Mode::Quiet);
        let a = p.start("a".into());
        let b = p.start("b".into());
        assert_eq!((a.id, b.id), (1, 2));
        p.done(a, false);
        p.failed(b);
    }
}
