//! The one error type of `nixnest-core`.
//!
//! Every variant carries the offending input (truncated when long, see [`excerpt`]) and what
//! was expected, because these messages end up verbatim in front of a person: the daemon
//! sends `Display` text to the client as the `STDERR_ERROR` message.

use crate::hash::HashAlgo;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while parsing or computing Nix values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string is not valid Nix base-32 (bad character, bad length or non-zero padding bits).
    #[error("invalid nix base-32 string '{input}': {reason}")]
    BadNixBase32 { input: String, reason: String },

    /// A hash algorithm name other than `md5`, `sha1`, `sha256`, `sha512`.
    #[error("unknown hash algorithm '{0}' (expected md5, sha1, sha256 or sha512)")]
    UnknownHashAlgo(String),

    /// A raw digest whose length does not fit its algorithm.
    #[error("{algo} digest must be {expected} bytes, got {found}")]
    DigestLength {
        algo: HashAlgo,
        expected: usize,
        found: usize,
    },

    /// A textual hash that could not be parsed.
    #[error("invalid hash '{input}': {reason}")]
    BadHash { input: String, reason: String },

    /// A store directory that is not an absolute, canonical path.
    #[error("invalid store directory '{dir}': {reason}")]
    BadStoreDir { dir: String, reason: String },

    /// A path that is not exactly `<store dir>/<hash>-<name>`.
    #[error("path '{path}' is not in the Nix store")]
    NotInStore { path: String },

    /// A store path base name with a bad hash part or a missing `-`.
    #[error("invalid store path '{path}': {reason}")]
    BadStorePath { path: String, reason: String },

    /// A store path name (or derivation output name) that breaks Nix's naming rules.
    #[error("invalid store path name '{name}': {reason}")]
    BadStorePathName { name: String, reason: String },

    /// A derivation output name that breaks Nix's naming rules.
    #[error("invalid derivation output name '{name}': {reason}")]
    BadOutputName { name: String, reason: String },

    /// Inputs that cannot form a store path of the requested kind (e.g. references on a flat
    /// fixed-output path).
    #[error("cannot compute store path for '{name}': {reason}")]
    BadPathComputation { name: String, reason: String },

    /// A content address (`text:…`, `fixed:…`) or its method-and-algorithm form.
    #[error("invalid content address '{input}': {reason}")]
    BadContentAddress { input: String, reason: String },

    /// A `DerivedPath` / `StorePathWithOutputs` / outputs-spec string.
    #[error("invalid derived path '{input}': {reason}")]
    BadDerivedPath { input: String, reason: String },

    /// A `ValidPathInfo` that cannot be used as asked (e.g. a fingerprint without a NAR size).
    #[error("invalid path info for '{path}': {reason}")]
    BadPathInfo { path: String, reason: String },

    /// A `DrvOutput` id (`sha256:<hex>!<output>`).
    #[error("invalid derivation output id '{input}': {reason}")]
    BadDrvOutput { input: String, reason: String },

    /// A signing key file (`<name>:<base64>`) that cannot be used.
    #[error("invalid {kind} key '{name}': {reason}")]
    BadKey {
        kind: &'static str,
        name: String,
        reason: String,
    },

    /// A malformed ATerm `.drv` text.
    #[error("error parsing derivation at byte {offset}: {reason}")]
    DrvParse { offset: usize, reason: String },

    /// A derivation that parsed but breaks one of Nix's invariants (output paths, env vars,
    /// output kinds).
    #[error("invalid derivation '{name}': {reason}")]
    BadDerivation { name: String, reason: String },

    /// Hashing a derivation needed an input derivation the caller could not supply.
    #[error("cannot hash derivation '{name}': {reason}")]
    DrvHash { name: String, reason: String },
}

/// At most this many bytes of an offending input are quoted in an error message, so a hostile
/// megabyte-long string does not become a megabyte-long error.
pub const EXCERPT_MAX: usize = 200;

/// The offending input as it should appear in an error: lossy UTF-8, cut at
/// [`EXCERPT_MAX`] bytes with a `…` marker.
pub fn excerpt(input: impl AsRef<[u8]>) -> String {
    let bytes = input.as_ref();
    if bytes.len() <= EXCERPT_MAX {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut s = String::from_utf8_lossy(bytes.get(..EXCERPT_MAX).unwrap_or(bytes)).into_owned();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_long_input() {
        assert_eq!(excerpt("abc"), "abc");
        let long = "x".repeat(1000);
        let e = excerpt(&long);
        assert!(e.starts_with(&"x".repeat(EXCERPT_MAX)));
        assert!(e.ends_with('…'));
        assert_eq!(e.chars().count(), EXCERPT_MAX + 1);
    }

    #[test]
    fn not_in_store_message_matches_nix() {
        let e = Error::NotInStore {
            path: "/tmp/foo".into(),
        };
        assert_eq!(e.to_string(), "path '/tmp/foo' is not in the Nix store");
    }
}
