//! `nixnest-protocol`: the Nix daemon worker protocol (versions 1.21–1.38 with features).
//!
//! Layers, bottom up:
//! * [`wire`]: the codec — a [`WireReader`] and a [`WireWriter`] that know u64 words and
//!   padded byte strings, and carry the negotiated version, features and store dir;
//!   the [`WireType`] trait every protocol value implements.
//! * [`handshake`]: connection setup for both sides.
//! * [`stderr`]: the stderr channel (log lines, activities, errors, `STDERR_LAST`).
//! * [`framed`]: framed streams and `STDERR_READ` tunnelling.
//!
//! This crate knows the wire, not the store: no file system, no SQLite.

// unwrap/expect are fine in tests (COMMON.md); never on peer bytes in library code.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod error;
pub mod framed;
pub mod handshake;
pub mod nar;
pub mod payload;
pub mod request;
pub mod response;
pub mod stderr;
pub mod types;
pub mod version;
pub mod wire;
pub mod wiretap;

#[cfg(test)]
mod exchange_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
pub use version::{FeatureSet, ProtocolVersion};
pub use wire::{WireReader, WireType, WireWriter};
