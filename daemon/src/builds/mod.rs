//! Building: the daemon-wide build scheduler behind BuildPaths (9), EnsurePath (10),
//! BuildDerivation (36), QueryMissing (40) and BuildPathsWithResults (46).
//!
//! | module | what |
//! |---|---|
//! | [`plan`] | a request's derivation DAG: what is valid, what must be built, in which order |
//! | [`scheduler`] | the shared [`Scheduler`]: build slots, build users, builds in flight (dedupe, cancellation), the build threads and their log files |
//! | [`realise`] | one request: running its DAG (`max-jobs`, `keep-going`), results and CppNix's errors |
//! | [`activity`] | what the client sees: CppNix's activity tree and log lines as stderr messages |
//! | [`missing`] | QueryMissing |
//! | [`settings`] | `nix.conf` → the builder's [`nixnest_build::BuildSettings`]; the helper subcommand |
//! | [`error`] | how a request fails as a whole |
//!
//! The session calls [`Scheduler::build_paths`], [`Scheduler::build_paths_with_results`],
//! [`Scheduler::build_derivation`], [`Scheduler::ensure_path`] and
//! [`Scheduler::query_missing`], passing a [`BuildRequest`] (its targets, its own settings,
//! verbosity, session id and temp roots) and a [`Sink`] for the stderr messages; dropping
//! the returned future (the client went away) detaches the request from its builds.

pub mod activity;
pub mod error;
pub mod missing;
pub mod plan;
pub mod realise;
pub mod scheduler;
pub mod settings;

pub use activity::Sink;
pub use error::{Error, Result};
pub use realise::BuildRequest;
pub use scheduler::{Scheduler, SchedulerConfig, SchedulerStats};
pub use settings::{HELPER_SUBCOMMAND, build_settings, own_helper};
