//! The crate's one error type.
//!
//! An [`Error`] is something that stopped us from *running or judging* a build (a system
//! call failed, the helper died, the store refused a registration). A build that ran and
//! failed (non-zero exit, timeout, hash mismatch, rejected output) is not an error: it is a
//! [`crate::BuildOutcome`] with a failure status and CppNix's message.

use std::io;
use std::path::Path;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while preparing, running or finishing a build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed; `context` says what we were doing and on which file.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The local store failed (queries, registration, locks).
    #[error(transparent)]
    Store(#[from] nixnest_store::Error),

    /// A core type refused a value (store path, hash, derivation).
    #[error(transparent)]
    Core(#[from] nixnest_core::Error),

    /// Dumping or restoring a NAR failed.
    #[error(transparent)]
    Nar(#[from] nixnest_core::nar::NarError),

    /// `build-users-group` problems, with CppNix's wording.
    #[error("{0}")]
    BuildUsers(String),

    /// The derivation cannot be built as asked (bad attributes, wrong platform, …). The
    /// builder is refused before it starts: `InputRejected`.
    #[error("{0}")]
    BadDerivation(String),

    /// Setting up the sandbox or starting the builder failed.
    #[error("{0}")]
    Setup(String),

    /// The build helper process misbehaved or went away.
    #[error("build helper: {0}")]
    Helper(String),

    /// Anything else, with a message a person can act on.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// An I/O error about `path`: "`<what> '<path>'`: …".
    pub fn io_at(what: &str, path: &Path, source: impl Into<io::Error>) -> Self {
        Error::io(format!("{what} '{}'", path.display()), source)
    }

    /// The OS error number, if this is an I/O error.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Adds context to rustix and std I/O results.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T, E: Into<io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io_at(what, path, e))
    }
}
