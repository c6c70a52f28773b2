//! Progress reporting for long store operations (GC, verify, optimise, imports).
//!
//! The store never prints. It hands each message to a caller-supplied [`Logger`]; the
//! daemon turns `log` into `STDERR_NEXT` (when the client's verbosity admits the level)
//! and activities into `STDERR_START_ACTIVITY` / `STDERR_RESULT` / `STDERR_STOP_ACTIVITY`,
//! so clients see the same lines CppNix's daemon sends ("finding garbage collector
//! roots...", "deleting '…'", …).
//!
//! # Wording
//!
//! nixnest reports itself as Nix 2.34, so the store-maintenance messages (GC, verify,
//! optimise) use 2.34's text, which differs from 2.8's in two ways that show:
//! * sizes are rendered by [`render_size`] (`-4.0 KiB`, `1.9 MiB`) where 2.8 printed
//!   `{:.2} MiB`;
//! * file-system paths that CppNix formats as `std::filesystem::path` (links, roots,
//!   `.links` entries) are in double quotes ([`quote_path`]), store paths stay in single
//!   quotes, as CppNix prints them as strings.

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

/// CppNix 2.34's `renderSize`: one decimal and a binary unit, `KiB` at least (100 bytes
/// are `0.1 KiB`). The unit is the largest one the magnitude *exceeds* when divided by
/// 1024 step by step with integer division (so 1024 bytes are `1.0 KiB` and 1 MiB is
/// `1024.0 KiB`); the number is then `value / 1024^unit` as a double, printed with
/// round-half-to-even on its exact binary value (like `printf("%.1f")`). Negative values
/// (GC's "currently saving" can be) keep their sign, `-0.0` included.
pub fn render_size(value: i64) -> String {
    const UNITS: [char; 9] = ['K', 'K', 'M', 'G', 'T', 'P', 'E', 'Z', 'Y'];
    let mut unit = 0usize;
    let mut magnitude = value.unsigned_abs();
    while magnitude > 1024 && unit + 1 < UNITS.len() {
        unit += 1;
        magnitude /= 1024;
    }
    let power = i32::try_from(unit.max(1)).unwrap_or(1);
    let number = value as f64 / 1024f64.powi(power);
    let suffix = UNITS.get(unit).copied().unwrap_or('K');
    format!("{number:.1} {suffix}iB")
}

/// A file-system path as CppNix 2.34 prints a `std::filesystem::path` argument: in
/// double quotes, nothing escaped.
pub fn quote_path(path: &std::path::Path) -> String {
    format!("\"{}\"", path.display())
}

/// Allocates process-unique activity ids (CppNix uses `pid << 32 | counter`).
pub fn next_activity_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (u64::from(std::process::id()) << 32) | NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_size_matches_cppnix_2_34() {
        // Values seen from nix-daemon 2.34.8 (GC notes, optimise and GC summaries) and the
        // unit boundaries of its renderSize.
        let table: &[(i64, &str)] = &[
            (0, "0.0 KiB"),
            (-4096, "-4.0 KiB"),
            (-10, "-0.0 KiB"),
            (100, "0.1 KiB"),
            (10_752, "10.5 KiB"),
            (1024, "1.0 KiB"),
            (1025, "1.0 KiB"),
            (1024 * 1024, "1024.0 KiB"),
            (1024 * 1024 + 1024, "1.0 MiB"),
            (1_981_808, "1.9 MiB"),
            (12_433_615_056, "11.6 GiB"),
            (256, "0.2 KiB"),
            (i64::MAX, "8.0 EiB"),
            (i64::MIN, "-8.0 EiB"),
        ];
        for &(v, want) in table {
            assert_eq!(render_size(v), want, "render_size({v})");
        }
    }

    #[test]
    fn quote_path_uses_double_quotes() {
        assert_eq!(
            quote_path(std::path::Path::new("/nix/store/.links/0abc")),
            "\"/nix/store/.links/0abc\""
        );
    }
}
