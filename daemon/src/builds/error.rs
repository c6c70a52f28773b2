//! How a build request fails as a whole (as opposed to a derivation failing, which is a
//! status in its `BuildResult`).

/// A build request that could not be carried out, or BuildPaths' summary of failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed while the request was planned.
    #[error(transparent)]
    Store(#[from] nixnest_store::Error),

    /// A derivation could not be read or hashed.
    #[error(transparent)]
    Core(#[from] nixnest_core::Error),

    /// The request cannot be served as asked (CppNix throws these from its worker):
    /// repair/check mode, outputs a derivation does not have, `max-jobs = 0`.
    #[error("{0}")]
    Refused(String),

    /// BuildPaths, EnsurePath: something was not built. `exit_status` is CppNix's
    /// `Worker::exitStatus()` (100 build failure, 101 timeout, 102 hash mismatch, else 1),
    /// sent to clients older than protocol 1.26.
    #[error("{msg}")]
    Failed { msg: String, exit_status: u64 },

    /// The client's connection is gone (its log could not be delivered).
    #[error("the client went away")]
    ClientGone,

    /// A task of ours failed (a panic in a blocking job, a closed channel).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The exit status a client < 1.26 should use.
    pub fn exit_status(&self) -> u64 {
        match self {
            Error::Failed { exit_status, .. } => *exit_status,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
