//! The NAR module's error type.
//!
//! [`NarError`] says *where* (byte offset, entry path inside the archive, or file-system
//! path) and *what*; [`Malformation`] names the broken format rule, so callers and tests
//! can match on it and people can read it.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::MAX_DEPTH;

/// A path inside a NAR, as raw bytes: entry names joined with `/`, empty for the root.
/// It is displayed like upstream's canonical paths: `/` for the root, `/a/b` below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NarPath(pub Vec<u8>);

impl NarPath {
    /// Build from the entry names leading from the root to an object.
    pub(super) fn from_names<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut path = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            if i > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
        }
        NarPath(path)
    }
}

impl fmt::Display for NarPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", Shown(&self.0))
    }
}

/// Displays bytes as text where they are UTF-8, escaping control characters (so a NUL in
/// a name is visible) and falling back to `\xNN` escapes for invalid UTF-8.
pub(super) struct Shown<'a>(pub &'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            write!(f, "{}", chunk.invalid().escape_ascii())?;
        }
        Ok(())
    }
}

/// A broken rule of the NAR format (see the module documentation for the rules).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformation {
    /// The first token is not `nix-archive-1`.
    #[error("input doesn't look like a Nix archive")]
    NotANar,
    /// A keyword other than the one the grammar requires here.
    #[error("expected tag {expected}, got '{}'", Shown(.got))]
    UnexpectedTag {
        /// What the grammar allows at this point, e.g. `'contents'` or `'entry' or ')'`.
        expected: &'static str,
        /// The tag that was found.
        got: Vec<u8>,
    },
    /// A length word larger than the bound for this kind of string.
    #[error("{what} is {len} bytes long, more than the limit of {limit}")]
    TooLong {
        /// Which kind of string: `tag`, `entry name`, `symlink target`, ….
        what: &'static str,
        /// The length word as found.
        len: u64,
        /// The bound.
        limit: u64,
    },
    /// A padding byte that is not zero.
    #[error("non-zero padding after {what}")]
    NonZeroPadding {
        /// Which string the padding follows.
        what: &'static str,
    },
    /// The value after `executable` is not the empty string.
    #[error("executable marker has non-empty value")]
    ExecutableMarkerNotEmpty,
    /// A `type` other than `regular`, `symlink` or `directory`.
    #[error("unknown file type '{}'", Shown(.0))]
    UnknownType(Vec<u8>),
    /// An entry name that is empty, `.`, `..`, or contains `/` or NUL.
    #[error("NAR contains invalid file name '{}'", Shown(.0))]
    InvalidName(Vec<u8>),
    /// An entry name smaller than its predecessor.
    #[error("NAR directory is not sorted: '{}' comes after '{}'", Shown(.name), Shown(.previous))]
    NotSorted {
        /// The preceding entry's name.
        previous: Vec<u8>,
        /// The offending name.
        name: Vec<u8>,
    },
    /// An entry name equal to its predecessor.
    #[error("NAR directory is not sorted: it contains '{}' twice", Shown(.0))]
    DuplicateName(Vec<u8>),
    /// A symlink target that is empty or contains NUL.
    #[error("NAR contains invalid symlink target '{}': {reason}", Shown(.target))]
    InvalidSymlinkTarget {
        /// The target as found.
        target: Vec<u8>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A node nested deeper than [`MAX_DEPTH`].
    #[error("NAR directory nesting exceeds maximum depth of {MAX_DEPTH}")]
    TooDeep,
}

/// Any failure of the NAR module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NarError {
    /// The archive being read breaks a format rule.
    #[error("bad archive: {problem} (at byte {offset}, in '{path}')")]
    BadArchive {
        /// The broken rule.
        problem: Malformation,
        /// Offset of the offending token from the start of the NAR.
        offset: u64,
        /// Entry being parsed.
        path: NarPath,
    },
    /// The input ended before the archive did.
    #[error("bad archive: unexpected end-of-file after {offset} bytes (in '{path}')")]
    UnexpectedEof {
        /// Number of bytes of the NAR read before the input ended.
        offset: u64,
        /// Entry being parsed.
        path: NarPath,
    },
    /// The input stream failed.
    #[error("reading NAR after {offset} bytes: {source}")]
    Read {
        /// Number of bytes of the NAR read before the failure.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The output stream failed.
    #[error("writing NAR: {0}")]
    Write(#[source] io::Error),
    /// The writer was asked to encode something no valid NAR can hold.
    #[error("cannot encode '{path}' in a NAR: {problem}")]
    Unencodable {
        /// The broken rule.
        problem: Malformation,
        /// Entry being written.
        path: NarPath,
    },
    /// The writer's methods were called in an order the grammar does not allow.
    #[error("NAR writer used out of order: {0}")]
    OutOfOrder(&'static str),
    /// The source of a regular file's contents ended before its declared size.
    #[error("contents of '{path}': declared {declared} bytes, but the source ended after {read}")]
    ShortContents {
        /// Entry being written.
        path: NarPath,
        /// The size announced to the writer.
        declared: u64,
        /// Bytes actually available.
        read: u64,
    },
    /// The source of a regular file's contents failed.
    #[error("reading contents of '{path}': {source}")]
    ContentsRead {
        /// Entry being written.
        path: NarPath,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The reader was used again after it had returned an error.
    #[error("NAR reader used after an earlier error")]
    ReaderFailed,
    /// A file-system operation failed.
    #[error("{action} '{}': {source}", path.display())]
    Fs {
        /// What was being done, e.g. `creating directory`.
        action: &'static str,
        /// The file-system path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file that is neither a regular file, a directory nor a symlink.
    #[error("file '{}' has an unsupported type ({kind})", path.display())]
    UnsupportedType {
        /// The file-system path concerned.
        path: PathBuf,
        /// `socket`, `FIFO`, `character device`, ….
        kind: &'static str,
    },
    /// A tree too deep for a NAR (see [`MAX_DEPTH`]).
    #[error("path '{}' exceeds maximum NAR directory depth of {MAX_DEPTH}", path.display())]
    TooDeep {
        /// The first path below the limit.
        path: PathBuf,
    },
    /// The restore target is not a fresh single path component.
    #[error("cannot restore a NAR to '{}': {reason}", path.display())]
    BadTarget {
        /// The requested target.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl NarError {
    /// The broken format rule, if this error is about one.
    pub fn malformation(&self) -> Option<&Malformation> {
        match self {
            NarError::BadArchive { problem, .. } | NarError::Unencodable { problem, .. } => {
                Some(problem)
            }
            _ => None,
        }
    }

    /// Recover a `NarError` that travelled through an `io::Error` (see [`Contents`]).
    ///
    /// [`Contents`]: super::Contents
    pub(super) fn from_io(error: io::Error) -> Result<NarError, io::Error> {
        if !error.get_ref().is_some_and(|inner| inner.is::<NarError>()) {
            return Err(error);
        }
        let kind = error.kind();
        match error.into_inner().map(|inner| inner.downcast::<NarError>()) {
            Some(Ok(nar)) => Ok(*nar),
            // Unreachable given the check above; rebuild rather than panic.
            Some(Err(other)) => Err(io::Error::new(kind, other)),
            None => Err(io::Error::from(kind)),
        }
    }

    /// Wrap into an `io::Error` whose kind reflects the cause.
    pub(super) fn into_io(self) -> io::Error {
        let kind = match &self {
            NarError::UnexpectedEof { .. } => io::ErrorKind::UnexpectedEof,
            NarError::Read { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}
