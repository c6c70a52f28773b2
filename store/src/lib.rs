//! `nixnest-store`: the local Nix store on disk and in SQLite.
//!
//! A synchronous, thread-safe implementation of CppNix's `LocalStore` that shares the
//! store with CppNix itself: the same directory layout, the same SQLite schema (10) and
//! row formats, the same `flock` protocols (big-lock, gc.lock, per-path locks, temp-roots
//! files, the GC roots socket). The daemon calls it from `spawn_blocking`.
//!
//! Entry point: [`LocalStore::open`] with a [`StoreConfig`].
//!
//! | module | what |
//! |---|---|
//! | `store` | opening/creating the layout, schema check and upgrade, `big-lock` |
//! | [`db`] | schema-10 DDL, connection setup, busy retry, reader pool + one writer |
//! | `queries`, `pathinfo` | `ValidPathInfo` ⇄ rows, registration, all path queries |
//! | `ingest` | `add_to_store_nar`, `add_to_store_ca`, `add_text`, `nar_from_path` |
//! | [`canonicalise`] | store-object metadata canonicalisation (also for build outputs) |
//! | `export` | `nix-store --export` / `--import` streams |
//! | [`gc`] | roots, the collector, indirect/perm roots |
//! | [`temproots`], `gcsocket` | temp-roots files per session, the GC roots socket |
//! | [`lock`] | `flock` primitives and `PathLocks` |
//! | [`optimise`], `verify`, `buildlog` | `--optimise`, `--verify`, build logs |
//! | [`logger`] | progress messages for the daemon to forward |

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
mod buildlog;
pub mod canonicalise;
pub mod config;
pub mod db;
pub mod drv;
pub mod error;
mod export;
mod fsutil;
pub mod gc;
#[cfg(test)]
mod gc_tests;
mod gcsocket;
mod ingest;
#[cfg(test)]
mod ingest_tests;
pub mod lock;
pub mod logger;
pub mod optimise;
mod pathinfo;
pub mod paths;
mod queries;
mod store;
pub mod temproots;
#[cfg(test)]
mod testutil;
mod verify;

pub use buildlog::BuildLogWriter;
pub use config::{PublicKey, StoreConfig};
pub use error::{Error, Result};
pub use gc::{GcAction, GcOptions, GcResults, Roots};
pub use logger::{Logger, NullLogger, ResultType, Verbosity};
pub use optimise::OptimiseStats;
pub use store::LocalStore;
pub use temproots::TempRoots;
pub use verify::VerifyResult;

impl LocalStore {
    /// Starts a temp-roots session (one per client connection or build): roots added to
    /// it protect paths from every GC — ours and CppNix's — until it is dropped.
    pub fn temp_roots_session(&self) -> TempRoots {
        TempRoots::new(self.state_dir(), self.store_dir().clone())
    }
}
