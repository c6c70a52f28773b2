//! `nixnest-daemon`: the daemon's foundation — configuration (`nix.conf`), peer
//! authorization, the accept loop and the control socket. The worker-protocol session
//! plugs in through [`listener::Handler`].
//!
//! Module map:
//! * [`config`] — `nix.conf` grammar, file locations, typed [`config::Settings`], and the
//!   per-session `SetOptions` policy;
//! * [`auth`] — `SO_PEERCRED` → [`auth::PeerInfo`] → the pure [`auth::authorize`];
//! * [`listener`] — binding / socket activation, connection cap, backoff, shutdown;
//! * [`control`] — the session/build [`control::Registry`] and the root-only control socket;
//! * [`cli`] — command-line flags (`nix-daemon` compatible).

// `unwrap`/`expect` are fine in tests (COMMON.md); the workspace lints forbid them elsewhere.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod auth;
pub mod config;
