//! The crate's one error type.
//!
//! A benchmark run keeps going when one daemon fails one workload: the error becomes that
//! cell of the table. [`Error::Unsupported`] is the daemon saying it cannot do the work at
//! all yet (no builder, no recursive Nix) and is shown as "not measured"; everything else
//! is shown as "failed".

use std::process::Output;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("worker protocol: {0}")]
    Protocol(#[from] nixnest_protocol::Error),

    #[error("{0}")]
    Core(#[from] nixnest_core::Error),

    #[error("NAR: {0}")]
    Nar(#[from] nixnest_core::nar::NarError),

    #[error("{status}: {stderr} (command: {command})")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// The daemon cannot do what the workload needs (yet); not a measurement failure.
    #[error("{0}")]
    Unsupported(String),

    /// The daemon answered, but not what the workload set up (wrong count, missing path):
    /// timing it would measure something else.
    #[error("check failed: {0}")]
    Check(String),

    /// A bad command-line value or machine precondition.
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The error of a finished command that did not exit with status 0.
    pub fn command(cmd: &std::process::Command, out: &Output) -> Self {
        Error::Command {
            command: nixnest_testkit::run::describe(cmd),
            status: out.status.to_string(),
            stderr: error_lines(&String::from_utf8_lossy(&out.stderr)),
        }
    }
}

/// What a program's stderr says about its failure: the lines mentioning an error (Nix
/// prints `error:` lines, possibly among progress), else the last few lines.
pub fn error_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("error") || l.contains("warning"))
        .take(8)
        .collect();
    if !errors.is_empty() {
        return errors.join("\n");
    }
    let start = lines.len().saturating_sub(4);
    lines.get(start..).unwrap_or_default().join("\n")
}

/// `text` without terminal colour codes (`ESC [ … final byte`): CppNix puts them into
/// error messages it sends over the wire, and they would end up in the Markdown report.
pub fn plain_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameter and intermediate bytes, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Extension for attaching a context to `std::io::Result`s.
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_drops_colour_codes_only() {
        assert_eq!(
            plain_text("writing to file: \u{1b}[35;1mNo space left on device\u{1b}[0m"),
            "writing to file: No space left on device"
        );
        assert_eq!(plain_text("a [b] \u{1b}c"), "a [b] \u{1b}c");
        // A code cut off at the end is dropped, not kept half.
        assert_eq!(plain_text("x\u{1b}[35"), "x");
    }
}
