//! The test rig: throwaway Nix stores, the real Nix clients and daemons, busybox derivations
//! and test users.
//!
//! Every end-to-end test makes its own [`TestStore`] under `/tmp` and points the real Nix
//! programs at it through Nix's own environment variables, so tests never touch the
//! machine's `/nix` and run in parallel. The pieces:
//!
//! * [`store`]: [`TestStore`] — root, store/state/log/conf dirs, `nix.conf`, paths, homes;
//! * [`client`]: [`Client`] (`Host` 2.8.0, `Trixie` 2.26.3, `Sid` 2.34.8) and [`Nix`], the
//!   builder for a client [`std::process::Command`] (local or via a daemon, as some user);
//! * [`chroot`]: how the chroot clients run (private mount namespace + `pivot_root`);
//! * [`daemon`]: [`DaemonSpec`] / [`Daemon`] — the real `nix-daemon`s and any other daemon
//!   program (nixnest's) on a store socket, killed with all their children on drop;
//! * [`busybox`]: the `bb/` toolchain and [`Derivation`] expressions that need no nixpkgs;
//! * [`users`]: [`TestUser`]s and exclusive [`BuildUsers`] leases;
//! * [`run`]: [`RunExt`] — run a command, get stdout, or panic with the whole story.
//!
//! ```no_run
//! use nixnest_testkit::*;
//!
//! let store = TestStore::builder().sandbox(true).build_users(BuildUsers::private(2)).build();
//! let daemon = store.nix_daemon(Client::Host).start();
//! let expr = store.write_expr("hello.nix", &Derivation::new("hello", "echo hi > $out").to_nix());
//! let out = store.client(Client::Sid).daemon(&daemon)
//!     .command("nix-build").arg(&expr).arg("--no-out-link").run();
//! assert_eq!(std::fs::read_to_string(out).unwrap(), "hi\n");
//! ```
//!
//! Everything here is test code: failures are panics with messages meant for the person
//! reading the test log, so `expect` is the error handling of this crate.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod busybox;
pub mod chroot;
pub mod client;
pub mod daemon;
pub mod run;
pub mod store;
pub mod users;

pub use busybox::{Derivation, nix_str};
pub use client::{Client, Nix, Remote};
pub use daemon::{Daemon, DaemonSpec, Signal, cargo_bin, try_cargo_bin};
pub use run::RunExt;
pub use store::{TestStore, TestStoreBuilder};
pub use users::{BuildUsers, TestUser};
