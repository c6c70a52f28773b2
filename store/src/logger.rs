//! Progress reporting for long store operations (GC, verify, optimise, imports).
//!
//! The store never prints. It hands each message to a caller-supplied [`Logger`]; the
//! daemon turns `log` into `STDERR_NEXT` (when the client's verbosity admits the level)
//! and activities into `STDERR_START_ACTIVITY` / `STDERR_RESULT` / `STDERR_STOP_ACTIVITY`,
//! so clients see the same lines CppNix's daemon sends ("finding garbage collector
//! roots...", "deleting '…'", …).

/// Nix's verbosity levels, with their wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u64)]
pub enum Verbosity {
    Error = 0,
    Warn = 1,
    Notice = 2,
    Info = 3,
    Talkative = 4,
    Chatty = 5,
    Debug = 6,
    Vomit = 7,
}

/// Nix's activity types used by the store, with their wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum ActivityType {
    Unknown = 0,
    CopyPath = 100,
    OptimiseStore = 106,
    VerifyPaths = 107,
}

/// Nix's result types reported by the store, with their wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum ResultType {
    /// A file was replaced by a hard link: fields `[bytes, blocks]` (`resFileLinked`).
    FileLinked = 100,
}

/// Receives the store's progress messages. Implementations must be cheap and must not
/// call back into the store.
pub trait Logger: Send + Sync {
    /// One message at `level`. Warnings already carry CppNix's `warning: ` prefix where
    /// CppNix's `warn()` would add it.
    fn log(&self, level: Verbosity, msg: &str);

    /// Start of an activity (`id` unique within the process).
    fn start_activity(&self, _id: u64, _level: Verbosity, _kind: ActivityType, _text: &str) {}

    /// Progress of an activity: `done` of `expected` units.
    fn progress(&self, _id: u64, _done: u64, _expected: u64) {}

    /// A result of an activity (CppNix's `Activity::result`), integer fields only.
    fn result(&self, _id: u64, _kind: ResultType, _fields: &[u64]) {}

    /// End of an activity.
    fn stop_activity(&self, _id: u64) {}
}

/// Stops an activity when dropped, so every started activity is stopped even when the
/// operation fails half-way (CppNix's `Activity` destructor).
pub(crate) struct ActivityGuard<'a> {
    logger: &'a dyn Logger,
    id: u64,
}

impl<'a> ActivityGuard<'a> {
    /// Starts an activity with a fresh id.
    pub(crate) fn start(
        logger: &'a dyn Logger,
        level: Verbosity,
        kind: ActivityType,
        text: &str,
    ) -> Self {
        let id = next_activity_id();
        logger.start_activity(id, level, kind, text);
        ActivityGuard { logger, id }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for ActivityGuard<'_> {
    fn drop(&mut self) {
        self.logger.stop_activity(self.id);
    }
}

/// Discards everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullLogger;

impl Logger for NullLogger {
    fn log(&self, _level: Verbosity, _msg: &str) {}
}

/// Forwards to `tracing` (for the daemon's own log, and tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLogger;

impl Logger for TracingLogger {
    fn log(&self, level: Verbosity, msg: &str) {
        match level {
            Verbosity::Error => tracing::error!("{msg}"),
            Verbosity::Warn => tracing::warn!("{msg}"),
            Verbosity::Notice | Verbosity::Info => tracing::info!("{msg}"),
            Verbosity::Talkative | Verbosity::Chatty | Verbosity::Debug => {
                tracing::debug!("{msg}")
            }
            Verbosity::Vomit => tracing::trace!("{msg}"),
        }
    }
}

/// Records every message; for tests.
#[derive(Debug, Default)]
pub struct CollectingLogger {
    lines: std::sync::Mutex<Vec<(Verbosity, String)>>,
}

impl CollectingLogger {
    /// All messages so far.
    pub fn lines(&self) -> Vec<(Verbosity, String)> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// True if some message contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|(_, l)| l.contains(needle))
    }
}

impl Logger for CollectingLogger {
    fn log(&self, level: Verbosity, msg: &str) {
        if let Ok(mut l) = self.lines.lock() {
            l.push((level, msg.to_owned()));
        }
    }
}

/// Allocates process-unique activity ids (CppNix uses `pid << 32 | counter`).
pub fn next_activity_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u64::from(std::process::id()) << 32) | NEXT.fetch_add(1, Ordering::Relaxed)
}
