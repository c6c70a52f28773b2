//! The store's one error type.
//!
//! Messages follow CppNix 2.8's wording wherever a client or a test might compare them
//! (`path '…' is not valid`, `'…/db/schema' is corrupt`, the import mismatch texts, …):
//! the daemon sends `Display` text to clients unchanged.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the local store.
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

    /// An SQLite statement failed for a reason other than "busy" (which is retried).
    #[error("{context}: {source}")]
    Sqlite {
        context: String,
        #[source]
        source: rusqlite::Error,
    },

    /// `db/schema` exists but does not hold a decimal number.
    #[error("'{}' is corrupt", .0.display())]
    SchemaCorrupt(PathBuf),

    /// The store was created or upgraded by a newer Nix.
    #[error("current Nix store schema is version {found}, but I only support {supported}")]
    SchemaTooNew { found: u64, supported: u64 },

    /// A schema so old that only an old Nix can upgrade it.
    #[error(
        "your Nix store has a database of schema version {found}, which is no longer supported; \
         please upgrade it with Nix 1.11 or later first"
    )]
    SchemaTooOld { found: u64 },

    /// The db directory is not readable and writable by us.
    #[error("Nix database directory '{}' is not writable", .0.display())]
    DbNotWritable(PathBuf),

    /// A path that must be a valid (registered) store path is not.
    #[error("path '{0}' is not valid")]
    InvalidPath(String),

    /// A string that should be a store path is not one (wrong dir, bad hash or name).
    #[error("path '{0}' is not a store path")]
    NotAStorePath(String),

    /// A store path whose hash part is unknown.
    #[error("path '{0}' is not in the Nix store")]
    NotInStore(String),

    /// `DeleteSpecific` of a path that is reachable from a root.
    #[error(
        "Cannot delete path '{0}' since it is still alive. To find out why, use: nix-store --query --roots and nix-store --query --referrers"
    )]
    StillAlive(String),

    /// Invalidating a path that other valid paths still refer to.
    #[error("cannot delete path '{path}' because it is in use by {referrers}")]
    InUse { path: String, referrers: String },

    /// The NAR's SHA-256 differs from the claimed `narHash`.
    #[error("hash mismatch importing path '{path}';\n  specified: {specified}\n  got:       {got}")]
    HashMismatch {
        path: String,
        specified: String,
        got: String,
    },

    /// The NAR's length differs from the claimed `narSize`.
    #[error("size mismatch importing path '{path}';\n  specified: {specified}\n  got:       {got}")]
    SizeMismatch {
        path: String,
        specified: u64,
        got: u64,
    },

    /// The recomputed content address differs from the claimed one.
    #[error(
        "ca hash mismatch importing path '{path}';\n  specified: {specified}\n  got:       {got}"
    )]
    CaMismatch {
        path: String,
        specified: String,
        got: String,
    },

    /// The path a content address yields differs from the path claimed for it.
    #[error("path '{path}' claims to be content-addressed but it hashes to '{computed}'")]
    CaPathMismatch { path: String, computed: String },

    /// An import of an input-addressed path without an acceptable signature.
    #[error("cannot add path '{0}' because it lacks a signature by a trusted key")]
    LacksSignature(String),

    /// The references of a registration batch contain a cycle.
    #[error("cycle detected in the references of '{path}' from '{from}'")]
    Cycle { path: String, from: String },

    /// A NAR (or export stream) that does not parse.
    #[error("bad archive: {0}")]
    BadArchive(String),

    /// Malformed input that is not a NAR (export records, content-address strings, …).
    #[error("{0}")]
    BadInput(String),

    /// A file system object that cannot be in a store path (device, socket, fifo).
    #[error("file '{}' has an unsupported type", .0.display())]
    UnsupportedFileType(PathBuf),

    /// An error from the data model (bad store path, hash, content address, …).
    #[error(transparent)]
    Core(#[from] nixnest_core::Error),

    /// A NAR that does not parse, or a failure while dumping/restoring one.
    #[error(transparent)]
    Nar(#[from] nixnest_core::nar::NarError),

    /// Any other error with a plain message.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an I/O error with a description of the operation.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error that happened on `path` while doing `what`.
    pub fn io_at(what: &str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            context: format!("{what} '{}'", path.display()),
            source,
        }
    }

    /// The underlying OS error number, if this is an I/O error.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::io("system call", e.into())
    }
}

/// Adds a context string to `rustix`/`std::io` results.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, io::Error> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io_at(what, path, e))
    }
}

impl<T> IoContext<T> for std::result::Result<T, rustix::io::Errno> {
    fn ctx(self, what: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io_at(what, path, e.into()))
    }
}
