//! `nixnest-build`: building derivations in a Linux sandbox, as CppNix 2.8 does, with the
//! later security fixes.
//!
//! | module | what |
//! |---|---|
//! | [`run`] | [`Builder::build`]: one derivation from checks to registered outputs |
//! | [`settings`] | [`BuildSettings`]: the `nix.conf` options of local builds |
//! | [`users`] | the build-users pool ([`UserPool`], [`UserLease`], [`kill_user`]) |
//! | [`env`](mod@env) | the builder's environment, `passAsFile`, structured attrs, `exportReferencesGraph` |
//! | [`builddir`] | the temporary build directory (post-CVE layout, descriptor-relative) |
//! | [`chroot`] | the sandbox root on the host, and its bind mounts |
//! | [`etc`] | the sandbox's `/etc` files, byte for byte |
//! | [`spec`] | the caller ↔ helper protocol (spec, control messages, replies) |
//! | [`helper`] | the helper process: namespaces, mounts, `pivot_root`, supervision |
//! | [`seccomp`] | the syscall filter |
//! | [`log`] | log line splitting, `@nix` messages, the failure tail |
//! | [`outputs`] | output registration |
//! | [`status`] | `BuildResult::Status` and wait-status texts |
//!
//! Process model: the daemon (multi-threaded) never forks to do real work. Every build
//! runs through a helper — a fresh, single-threaded `execve` of a program calling
//! [`helper_main`] — which creates the namespaces, sets up the chroot, `execve`s the
//! builder, stays alive as its supervisor (exit status, kill requests, making new store
//! paths visible for recursive Nix) and reports back over a control socket.
//!
//! Using it from a daemon:
//!
//! 1. In `main`, before any runtime or thread starts, dispatch a hidden subcommand to
//!    [`helper_main`]; put `HelperCommand::new(<own exe>).arg(<subcommand>)` into
//!    [`BuildSettings::helper`].
//! 2. Per build: if [`UserPool::applies`] (root and a `build-users-group`), take a
//!    [`UserLease`] with [`UserPool::try_acquire`] (`None` = "waiting for UID", retry later)
//!    and keep it until `build` returns.
//! 3. [`Builder::build`] with a [`BuildJob`] (drv path, parsed derivation, input closure,
//!    lease, `recursive_nix`, temp-roots session, cancel flag) and a [`BuildEvents`] sink:
//!    `prepare` (create `/build/.nix-socket` for recursive Nix), `started` (a
//!    [`SandboxHandle`] to make paths visible), `log_chunk`/`log_line`/`structured_log`,
//!    `builder_exited` (stop the recursive-Nix server), `note`.
//! 4. The [`BuildOutcome`] carries CppNix's status ([`BuildStatus`]), message and the
//!    registered outputs. `build` takes the output locks itself.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod builddir;
pub mod chroot;
pub mod drvattrs;
pub mod env;
pub mod error;
pub mod etc;
pub mod fsutil;
pub mod helper;
pub mod log;
pub mod outputs;
pub mod pty;
pub mod run;
pub mod seccomp;
pub mod settings;
pub mod spec;
pub mod status;
pub mod users;

pub use error::{Error, Result};
pub use helper::helper_main;
pub use run::{
    BuildEvents, BuildJob, BuildOutcome, BuildStarted, BuildTimings, Builder, NoEvents,
    PreparedBuild, SandboxHandle,
};
pub use settings::{BuildSettings, HelperCommand, SandboxMode};
pub use status::BuildStatus;
pub use users::{UserLease, UserPool, kill_user};
