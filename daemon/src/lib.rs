//! `nixnest-daemon`: configuration (`nix.conf`), peer authorization, the accept loop,
//! the control socket, and the worker-protocol session that serves each connection
//! (plugged in through [`listener::Handler`]).
//!
//! Module map:
//! * [`config`] — `nix.conf` grammar, file locations, typed [`config::Settings`], and the
//!   per-session `SetOptions` policy;
//! * [`auth`] — `SO_PEERCRED` → [`auth::PeerInfo`] → the pure [`auth::authorize`];
//! * [`listener`] — binding / socket activation, connection cap, backoff, shutdown;
//! * [`control`] — the session/build [`control::Registry`] and the root-only control socket;
//! * [`cli`] — command-line flags (`nix-daemon` compatible);
//! * [`session`] — the worker-protocol session ([`session::Worker`] is the handler):
//!   handshake, the request loop, per-session state;
//! * [`work`] — the work phase: stderr output and the blocking-store-call helper;
//! * [`ops`] — one handler per operation, grouped by module;
//! * [`policy`] — every trust-dependent rule; [`view`] — what a session may see (the
//!   restricted op table of recursive Nix); [`error`] — how operations fail;
//! * [`builds`] — the build scheduler behind the build operations;
//! * [`recursive`] — recursive Nix: build views, per-build sockets, seed-style admission.

// `unwrap`/`expect` are fine in tests (COMMON.md); the workspace lints forbid them elsewhere.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod builds;
pub mod cli;
pub mod config;
pub mod control;
pub mod error;
pub mod listener;
pub mod ops;
pub mod policy;
pub mod recursive;
pub mod session;
pub mod view;
pub mod work;

/// nixnest's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

macro_rules! nix_version_compat {
    () => {
        "2.34.8"
    };
}
pub(crate) use nix_version_compat;

macro_rules! daemon_version_string {
    () => {
        concat!(
            $crate::nix_version_compat!(),
            "+nixnest.",
            env!("CARGO_PKG_VERSION")
        )
    };
}
pub(crate) use daemon_version_string;

/// The Nix release whose protocol and behaviour nixnest follows (written only here).
pub const NIX_VERSION_COMPAT: &str = nix_version_compat!();

/// The daemon version string sent in the handshake (protocol ≥ 1.33). Clients only
/// display it (`nix store info`), so it states what we are: a semver string whose
/// release part is the Nix version we follow — version-comparing scripts still see
/// 2.34.8 — and whose build metadata names nixnest: `2.34.8+nixnest.0.1.0`.
pub const DAEMON_VERSION_STRING: &str = daemon_version_string!();
