//! How an operation ends when it does not succeed, and the one place where errors of the
//! layers below become the text a client sees.
//!
//! | variant | when | on the wire |
//! |---|---|---|
//! | [`OpError::Failed`] | the request was read completely, then the work failed | `STDERR_ERROR`; the session goes on |
//! | [`OpError::Refused`] | a check CppNix makes before `startWork` (repair or perm roots by untrusted clients, ops a session may not use) | `STDERR_ERROR` once, then close |
//! | [`OpError::Broken`] | bytes that cannot be parsed mid-request or mid-payload | `STDERR_ERROR` (best effort), then close |
//! | [`OpError::Disconnected`] | the peer went away (a read hit EOF or a write failed) | nothing; close |
//!
//! Clients only ever see `Display` text ([`store_message`], [`protocol_message`]).

use std::fmt;

use nixnest_protocol::stderr::NixError;

/// Why an operation did not produce its reply.
#[derive(Debug)]
pub enum OpError {
    Failed(NixError),
    Refused(NixError),
    Broken(nixnest_protocol::Error),
    Disconnected(std::io::Error),
}

impl OpError {
    /// A failure reported to the client; the session continues.
    pub fn failed(msg: impl Into<String>) -> Self {
        OpError::Failed(NixError::new(msg))
    }

    /// A refusal before work began: reported once, then the connection is closed.
    pub fn refused(msg: impl Into<String>) -> Self {
        OpError::Refused(NixError::new(msg))
    }

    /// Whether the session can go on after this error.
    pub fn keeps_session(&self) -> bool {
        matches!(self, OpError::Failed(_))
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Failed(e) => write!(f, "{e}"),
            OpError::Refused(e) => write!(f, "refused: {e}"),
            OpError::Broken(e) => write!(f, "stream broken: {}", protocol_message(e)),
            OpError::Disconnected(e) => write!(f, "client disconnected: {e}"),
        }
    }
}

/// The text a client sees for a store error (the store words its messages like CppNix).
pub fn store_message(e: &nixnest_store::Error) -> String {
    e.to_string()
}

/// The text a client sees for bytes it sent that we could not decode. A bad value keeps
/// only the value's own message (`path '/tmp/x' is not in the Nix store`), as CppNix.
pub fn protocol_message(e: &nixnest_protocol::Error) -> String {
    match e {
        nixnest_protocol::Error::Value { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

impl From<nixnest_store::Error> for OpError {
    fn from(e: nixnest_store::Error) -> Self {
        OpError::failed(store_message(&e))
    }
}

impl From<nixnest_core::Error> for OpError {
    fn from(e: nixnest_core::Error) -> Self {
        OpError::failed(e.to_string())
    }
}

impl From<nixnest_core::nar::NarError> for OpError {
    fn from(e: nixnest_core::nar::NarError) -> Self {
        OpError::failed(e.to_string())
    }
}

/// An I/O error inside a job (reading its input, writing its output) is an ordinary
/// failure of the operation; a broken connection is detected by the session itself.
impl From<std::io::Error> for OpError {
    fn from(e: std::io::Error) -> Self {
        OpError::failed(e.to_string())
    }
}

/// For results whose error is already an [`OpError`] or one of the errors above.
pub type OpResult<T> = Result<T, OpError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_own_message() {
        let sd = nixnest_core::StoreDir::new("/nix/store".to_owned()).unwrap();
        let source = sd.parse_path("/tmp/x").unwrap_err();
        let e = nixnest_protocol::Error::Value {
            field: "path",
            source,
        };
        assert_eq!(
            protocol_message(&e),
            "path '/tmp/x' is not in the Nix store"
        );
        assert_eq!(
            protocol_message(&nixnest_protocol::Error::UnknownOpcode(999)),
            "invalid operation 999"
        );
    }

    #[test]
    fn only_failures_keep_the_session() {
        assert!(OpError::failed("x").keeps_session());
        assert!(!OpError::refused("x").keeps_session());
        assert!(!OpError::Broken(nixnest_protocol::Error::Eof).keeps_session());
    }
}
