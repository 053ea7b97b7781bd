//! Errors that point at a line of the Dockerfile.

use std::fmt;

/// An error tied to a Dockerfile line; the CLI prints it as `Dockerfile:LINE: message`
/// followed by the offending line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line of the instruction.
    pub line: usize,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

/// Builds an `anyhow::Error` carrying a [`LineError`].
pub fn at_line(line: usize, message: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(LineError {
        line,
        // `{:#}`: an anyhow error keeps its whole chain of causes.
        message: format!("{message:#}"),
    })
}

/// Attaches a line to an error unless it already carries one.
pub fn with_line(line: usize, err: anyhow::Error) -> anyhow::Error {
    if err.downcast_ref::<LineError>().is_some() {
        err
    } else {
        at_line(line, format!("{err:#}"))
    }
}
