//! The one error type of the protocol crate.
//!
//! Every variant says what was wrong with the bytes (which field, what limit, what value)
//! so that the daemon can pass the `Display` text to the client and a person reading a
//! log can tell which side misbehaved.

use crate::stderr::NixError;
use crate::version::ProtocolVersion;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("protocol mismatch: expected magic {expected:#x}, got {got:#x}")]
    BadMagic { expected: u64, got: u64 },

    #[error("peer speaks worker protocol {got}, but at least {min} is required; upgrade Nix")]
    VersionTooOld {
        got: ProtocolVersion,
        min: ProtocolVersion,
    },

    #[error("peer speaks worker protocol major version {0:#x}; only major version 1 exists")]
    UnsupportedMajor(u64),

    #[error("invalid operation {0}")]
    UnknownOpcode(u64),

    #[error(
        "operation {op} needs worker protocol {needs} or a feature that was not negotiated (connection uses {have})"
    )]
    NotNegotiated {
        op: &'static str,
        needs: &'static str,
        have: ProtocolVersion,
    },

    #[error("{field}: string of {len} bytes is longer than the limit of {max} bytes")]
    StringTooLong {
        field: &'static str,
        len: u64,
        max: u64,
    },

    #[error("{field}: {count} items is more than the limit of {max}")]
    TooManyItems {
        field: &'static str,
        count: u64,
        max: u64,
    },

    #[error("the message carries more than {max} bytes of strings")]
    MessageTooLarge { max: u64 },

    #[error("{field}: non-zero padding after a string (stream out of sync?)")]
    NonZeroPadding { field: &'static str },

    #[error("{field}: expected a boolean (0 or 1), got {value}")]
    BadBool { field: &'static str, value: u64 },

    #[error("{field}: {value} is not a valid {kind}")]
    BadEnum {
        field: &'static str,
        kind: &'static str,
        value: u64,
    },

    #[error("{field}: not valid UTF-8")]
    NotUtf8 { field: &'static str },

    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    /// A value that is well-formed on the wire but not as a Nix value (a path outside
    /// the store, a bad hash, a bad content address, …).
    #[error("{field}: {source}")]
    Value {
        field: &'static str,
        #[source]
        source: nixnest_core::Error,
    },

    #[error("unknown stderr message type {0:#x} from the daemon")]
    UnknownStderrCode(u64),

    #[error("unexpected end of stream: the peer closed the connection mid-message")]
    Eof,

    #[error("I/O error on the worker connection: {0}")]
    Io(#[source] std::io::Error),

    /// The daemon answered an operation with `STDERR_ERROR` (client side only).
    #[error("{0}")]
    Remote(NixError),

    #[error("unexpected message from the daemon: {0}")]
    Unexpected(String),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// Wraps a core parse error with the field it came from.
    pub fn value(field: &'static str) -> impl FnOnce(nixnest_core::Error) -> Error {
        move |source| Error::Value { field, source }
    }

    /// True when the error leaves the byte stream at an unknown position, so the
    /// connection cannot continue (everything except a daemon-reported error).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Error::Remote(_))
    }
}

impl From<std::io::Error> for Error {
    /// Recovers a protocol error that travelled through an `AsyncRead` adapter.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Error::Eof;
        }
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let kind = e.kind();
            return match e.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(ours)) => *ours,
                _ => Error::Io(std::io::Error::from(kind)),
            };
        }
        Error::Io(e)
    }
}

/// Protocol errors travel through `AsyncRead` adapters (framed streams) as `io::Error`s;
/// this keeps the typed error inside so it can be recovered.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Eof => std::io::Error::new(std::io::ErrorKind::UnexpectedEof, Error::Eof),
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        }
    }
}
