//! `nixnest-protocol`: the Nix daemon worker protocol, versions 1.21–1.38 and the 1.38
//! feature strings, for both sides of the socket.
//!
//! Layers, bottom up:
//! * [`wire`]: the codec — a [`WireReader`] and a [`WireWriter`] that know u64 words and
//!   padded byte strings (bounded, zero padding enforced) and carry the negotiated
//!   version, features and store dir; the [`WireType`] trait every value implements once.
//! * [`types`]: wire forms of Nix's values (store paths, content addresses,
//!   ValidPathInfo, BuildResult, realisations, GC options, client settings, …).
//! * [`handshake`]: connection setup, daemon and client side.
//! * [`stderr`]: the stderr channel (log lines, activities, results, errors, `STDERR_LAST`).
//! * [`request`] / [`response`]: one typed request per opcode, typed replies.
//! * [`framed`], [`nar`], [`payload`]: the streams inside operations (framed data,
//!   `STDERR_READ` pulls, unframed NARs) as `AsyncRead`s that can be drained.
//! * [`client`]: an async client for any daemon; [`wiretap`]: a decoding proxy (the
//!   `nixnest-wiretap` binary).
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
