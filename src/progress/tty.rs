//! buildx's tty view: a `[+] Building 12.3s (7/9)` header and a row per step with a
//! live timer, the statuses and last output lines of running steps, redrawn in place
//! ten times a second; finished steps collapse to one row. The frame never has more rows
//! than the terminal (the oldest finished steps leave it first) and no row is wider than
//! it, so moving the cursor back up over the last frame always lands on its first row.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{lock, status_text, Status};

/// How often the frame is redrawn.
const TICK: Duration = Duration::from_millis(100);
/// Output lines kept and shown per running step.
const LOG_LINES: usize = 6;
/// Output lines of a failed step printed after the last frame.
const FAILED_LOG_LINES: usize = 12;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Finished; `cached` when it did no work.
    Done {
        /// Answered from the cache.
        cached: bool,
    },
    /// Failed.
    Failed,
}

/// One step's row.
struct Row {
    id: usize,
    title: String,
    started: Instant,
    ended: Option<(End, Duration)>,
    statuses: Vec<Status>,
    logs: VecDeque<String>,
}

/// What is on the screen, and what the next frame shows.
struct Screen {
    started: Instant,
    rows: Vec<Row>,
    /// Lines the last frame took (the cursor is on the line below it).
    drawn: usize,
    finished: bool,
}

/// The live view: the screen, and the thread that redraws it.
pub struct Board {
    screen: Arc<Mutex<Screen>>,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Board {
    /// Starts the view and its redraw thread.
    pub fn start() -> Board {
        let board = Board {
            screen: Arc::new(Mutex::new(Screen {
                started: Instant::now(),
                rows: Vec::new(),
                drawn: 0,
                finished: false,
            })),
            stop: Arc::new(AtomicBool::new(false)),
            ticker: Mutex::new(None),
        };
        board.resume();
        board
    }

    /// Stops the redraw thread (before a fork: a thread does not survive it, and a
    /// parent that only waits must not draw).
    pub fn pause(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = lock(&self.ticker).take() {
            let _ = t.join();
        }
    }

    /// Starts the redraw thread (again, e.g. in the child after a fork).
    pub fn resume(&self) {
        let mut ticker = lock(&self.ticker);
        if ticker.is_some() || lock(&self.screen).finished {
            return;
        }
        self.stop.store(false, Ordering::Relaxed);
        let (screen, stop) = (Arc::clone(&self.screen), Arc::clone(&self.stop));
        *ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    lock(&screen).redraw();
                }
            })
            .ok();
    }

    /// A step started.
    pub fn add(&self, id: usize, title: &str) {
        lock(&self.screen).rows.push(Row {
            id,
            title: super::printable(title).into_owned(),
            started: Instant::now(),
            ended: None,
            statuses: Vec::new(),
            logs: VecDeque::new(),
        });
    }

    /// A line of a step's output.
    pub fn log(&self, id: usize, line: &str) {
        let mut s = lock(&self.screen);
        if let Some(r) = s.row(id) {
            if r.logs.len() == FAILED_LOG_LINES {
                r.logs.pop_front();
            }
            r.logs.push_back(super::printable(line).into_owned());
        }
    }

    /// A status of a step, replacing the last one with its id.
    pub fn status(&self, id: usize, status: &Status) {
        let mut s = lock(&self.screen);
        if let Some(r) = s.row(id) {
            match r.statuses.iter_mut().find(|x| x.id == status.id) {
                Some(x) => *x = status.clone(),
                None => r.statuses.push(status.clone()),
            }
        }
    }

    /// A step ended.
    pub fn end(&self, id: usize, end: End) {
        let mut s = lock(&self.screen);
        if let Some(r) = s.row(id) {
            r.ended = Some((end, r.started.elapsed()));
        }
        s.redraw();
    }

    /// A message above the view (or below it, once finished).
    pub fn note(&self, text: &str) {
        let mut s = lock(&self.screen);
        let mut out = String::new();
        if !s.finished {
            s.clear_into(&mut out);
        }
        out.push_str(text);
        out.push('\n');
        write_err(&out);
        if !s.finished {
            s.redraw();
        }
    }

    /// The last frame, then the output of failed steps; the redraw thread stops.
    pub fn finish(&self, ok: bool) {
        self.pause();
        let mut s = lock(&self.screen);
        if s.finished {
            return;
        }
        s.redraw_final(ok);
        s.finished = true;
    }
}

impl Screen {
    fn row(&mut self, id: usize) -> Option<&mut Row> {
        self.rows.iter_mut().rev().find(|r| r.id == id)
    }

    /// Moves the cursor back to the first line of the last frame and clears from there.
    fn clear_into(&mut self, out: &mut String) {
        if self.drawn > 0 {
            out.push_str(&format!("\r\x1b[{}A\x1b[J", self.drawn));
            self.drawn = 0;
        }
    }

    fn redraw(&mut self) {
        if self.finished {
            return;
        }
        let lines = self.frame(None);
        self.paint(&lines);
    }

    fn redraw_final(&mut self, ok: bool) {
        let mut lines = self.frame(Some(ok));
        // The output of failed steps, as buildx prints it after the view.
        for r in self
            .rows
            .iter()
            .filter(|r| matches!(r.ended, Some((End::Failed, _))))
        {
            lines.push("------".into());
            lines.push(format!(" > {}:", r.title));
            lines.extend(r.logs.iter().cloned());
            lines.push("------".into());
        }
        // Long lines are left whole: nothing is redrawn over them.
        let mut out = String::new();
        self.clear_into(&mut out);
        for l in &lines {
            out.push_str(l);
            out.push('\n');
        }
        write_err(&out);
    }

    /// Replaces the last frame with `lines`.
    fn paint(&mut self, lines: &[String]) {
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\r\x1b[{}A", self.drawn));
        }
        for l in lines {
            out.push_str("\x1b[K");
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("\x1b[J");
        write_err(&out);
        self.drawn = lines.len();
    }

    /// The lines of a frame: the header, then the rows that fit. `end` marks the last
    /// frame (FINISHED when the build succeeded).
    fn frame(&self, end: Option<bool>) -> Vec<String> {
        let (width, height) = terminal_size();
        let done = self.rows.iter().filter(|r| r.ended.is_some()).count();
        let mut header = format!(
            "[+] Building {:.1}s ({done}/{})",
            self.started.elapsed().as_secs_f64(),
            self.rows.len()
        );
        if end == Some(true) {
            header.push_str(" FINISHED");
        }
        let blocks: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.lines(width, end.is_some()))
            .collect();
        // Drop the oldest finished rows until the frame fits (running ones stay).
        let room = height.saturating_sub(2).max(1);
        let mut total: usize = blocks.iter().map(Vec::len).sum();
        let mut keep = vec![true; blocks.len()];
        for (i, r) in self.rows.iter().enumerate() {
            if total <= room || end.is_some() {
                break;
            }
            if r.ended.is_some() {
                keep[i] = false;
                total -= blocks[i].len();
            }
        }
        let mut lines = vec![fit(&header, width)];
        for (b, k) in blocks.into_iter().zip(keep) {
            if k {
                lines.extend(b);
            }
        }
        if end.is_none() {
            lines.truncate(room + 1);
        }
        lines
    }
}

impl Row {
    /// ` => [stage 1/2] RUN make   1.2s`, and for a running step its statuses and last
    /// output lines (` => => # …`).
    fn lines(&self, width: usize, last_frame: bool) -> Vec<String> {
        let (prefix, took) = match self.ended {
            None => ("", self.started.elapsed()),
            Some((End::Done { cached: true }, d)) => ("CACHED ", d),
            Some((End::Done { cached: false }, d)) => ("", d),
            Some((End::Failed, d)) => ("ERROR ", d),
        };
        let timer = format!(" {:.1}s", took.as_secs_f64());
        let mut out = vec![row_line(
            &format!(" => {prefix}{}", self.title),
            &timer,
            width,
        )];
        if self.ended.is_none() && !last_frame {
            for s in &self.statuses {
                let mark = if s.completed { " done" } else { "" };
                out.push(row_line(
                    &format!(" => => {}{mark}", status_text(s)),
                    "",
                    width,
                ));
            }
            let skip = self.logs.len().saturating_sub(LOG_LINES);
            for l in self.logs.iter().skip(skip) {
                out.push(fit(&format!(" => => # {l}"), width));
            }
        }
        out
    }
}

/// `left` and `right` on one line of `width` columns: `left` cut to fit, `right` at the end.
fn row_line(left: &str, right: &str, width: usize) -> String {
    let right_len = right.chars().count();
    let room = width.saturating_sub(right_len).max(1);
    let left = fit(left, room);
    let pad = room.saturating_sub(left.chars().count());
    format!("{left}{}{right}", " ".repeat(pad))
}

/// `s` cut to `width` columns (an ellipsis marks the cut).
fn fit(s: &str, width: usize) -> String {
    let s = s.replace('\t', " ");
    if s.chars().count() <= width {
        return s;
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The terminal's columns and rows (80×24 when stderr is not a terminal that says).
fn terminal_size() -> (usize, usize) {
    match terminal_size::terminal_size_of(std::io::stderr()) {
        Some((terminal_size::Width(w), terminal_size::Height(h))) if w > 0 && h > 0 => {
            (usize::from(w), usize::from(h))
        }
        _ => (80, 24),
    }
}

fn write_err(s: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(s.as_bytes());
    let _ = e.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn screen(rows: Vec<Row>) -> Screen {
        Screen {
            started: Instant::now(),
            rows,
            drawn: 0,
            finished: false,
        }
    }

    fn row(id: usize, title: &str, ended: Option<End>, logs: &[&str]) -> Row {
        Row {
            id,
            title: title.into(),
            started: Instant::now(),
            ended: ended.map(|e| (e, Duration::from_millis(1200))),
            statuses: Vec::new(),
            logs: logs.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn rows_fit_the_width_with_the_timer_at_the_end() {
        let r = row(1, &"x".repeat(200), Some(End::Done { cached: false }), &[]);
        let lines = r.lines(40, false);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].chars().count(), 40, "{}", lines[0]);
        assert!(lines[0].ends_with(" 1.2s"), "{}", lines[0]);
        assert!(lines[0].contains('…'));
    }

    #[test]
    fn running_steps_show_their_last_output_lines() {
        let logs: Vec<String> = (1..=9).map(|i| format!("line {i}")).collect();
        let refs: Vec<&str> = logs.iter().map(String::as_str).collect();
        let r = row(1, "RUN make", None, &refs);
        let lines = r.lines(80, false);
        assert_eq!(lines.len(), 1 + LOG_LINES);
        assert!(lines[1].starts_with(" => => # line 4"), "{lines:?}");
        // Finished, the row collapses.
        let done = row(1, "RUN make", Some(End::Done { cached: true }), &refs);
        let lines = done.lines(80, false);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with(" => CACHED RUN make"), "{lines:?}");
    }

    #[test]
    fn frames_never_exceed_the_terminal_and_count_steps() {
        let mut rows: Vec<Row> = (1..=40)
            .map(|i| {
                row(
                    i,
                    &format!("step {i}"),
                    Some(End::Done { cached: false }),
                    &[],
                )
            })
            .collect();
        rows.push(row(41, "RUN long", None, &["out"]));
        let s = screen(rows);
        let lines = s.frame(None);
        assert!(lines.len() <= 23, "{} lines", lines.len());
        assert!(lines[0].contains("(40/41)"), "{}", lines[0]);
        assert!(
            lines.iter().any(|l| l.contains("RUN long")),
            "the running step stays: {lines:?}"
        );
        let last = s.frame(Some(true));
        assert!(last[0].ends_with("(40/41) FINISHED"), "{}", last[0]);
    }
}
