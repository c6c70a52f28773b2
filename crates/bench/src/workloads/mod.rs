//! The workloads, and the driver that runs each against every daemon.
//!
//! A workload makes one [`Runner`] per daemon kind ([`Workload::start`]: untimed set-up,
//! e.g. a filled store and a started daemon), then the driver asks every runner for its
//! rounds, interleaving the daemons round by round so that a change in background load
//! hits all of them alike. A round returns its wall time (only the measured operation:
//! filling stores and starting daemons are outside it), and, when asked to, the daemon's
//! memory peak during the operation ([`crate::memory`]). For the cheap workloads memory is
//! sampled in a round of its own after the timed ones, so the sampler's reads of `/proc` —
//! which cost more for a daemon with many processes (64 CppNix workers) — never slow a
//! timed round. The heavy workloads (imports, copy, builds, GC) run one or two daemon
//! processes for seconds; their last timed round is also the sampled one. With `--quick`
//! the single round is both timed and sampled.
//!
//! A failing runner (an error, or a panic of the test rig, which reports failures by
//! panicking) ends that daemon's part of the workload only; the others go on.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nixnest_core::StoreDir;
use nixnest_testkit::TestStore;

use crate::daemons::{Kind, Programs};
use crate::error::{Error, IoContext, Result, plain_text};
use crate::memory::MemoryPeak;
use crate::objects::{self, BigShape, NarFile};

mod build;
mod connections;
mod copy;
mod gc;
mod idle;
mod import;
mod queries;
mod recursive;

/// Sizes of every workload (see `--help` for the flags).
#[derive(Clone, Debug)]
pub struct Sizes {
    pub connections: usize,
    pub query_paths: usize,
    pub query_clients: usize,
    pub queries_per_client: usize,
    pub import_bytes: u64,
    pub import_files: u64,
    pub copy_paths: usize,
    pub build_drvs: usize,
    pub max_jobs: usize,
    pub recursive_inner: usize,
    pub gc_paths: usize,
    pub idle_connections: usize,
}

impl Sizes {
    /// The sizes the issue asks for.
    pub fn full() -> Sizes {
        Sizes {
            connections: 2000,
            query_paths: 10_000,
            query_clients: 64,
            queries_per_client: 1000,
            import_bytes: 1 << 30,
            import_files: 100_000,
            copy_paths: 5000,
            build_drvs: 500,
            max_jobs: 2,
            recursive_inner: 50,
            gc_paths: 50_000,
            idle_connections: 1000,
        }
    }

    /// Small sizes that keep every workload alive in CI in well under two minutes.
    pub fn quick() -> Sizes {
        Sizes {
            connections: 100,
            query_paths: 300,
            query_clients: 8,
            queries_per_client: 50,
            import_bytes: 4 << 20,
            import_files: 500,
            copy_paths: 100,
            build_drvs: 6,
            max_jobs: 2,
            recursive_inner: 3,
            gc_paths: 500,
            idle_connections: 50,
        }
    }
}

/// What the driver needs from every workload.
pub struct Ctx {
    pub programs: Programs,
    pub sizes: Sizes,
    pub rt: tokio::runtime::Runtime,
    /// Where the big NARs of the import workloads are written (once per run).
    pub scratch: PathBuf,
    nars: Mutex<HashMap<String, NarFile>>,
}

impl Ctx {
    pub fn new(programs: Programs, sizes: Sizes, scratch: PathBuf) -> Result<Ctx> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context(|| "starting the tokio runtime".to_owned())?;
        Ok(Ctx {
            programs,
            sizes,
            rt,
            scratch,
            nars: Mutex::new(HashMap::new()),
        })
    }

    /// The NAR file of a big object, written on first use.
    pub fn big_nar(&self, name: &str, shape: BigShape) -> Result<NarFile> {
        let mut nars = self.nars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(nar) = nars.get(name) {
            return Ok(nar.clone());
        }
        let file = self.scratch.join(format!("{name}.nar"));
        let nar = objects::write_big_nar(&file, name, shape)?;
        nars.insert(name.to_owned(), nar.clone());
        Ok(nar)
    }
}

/// One round's result.
#[derive(Clone, Debug, Default)]
pub struct Round {
    /// Wall time of the measured operation; `None` for pure memory workloads.
    pub elapsed: Option<Duration>,
    pub memory: Option<MemoryPeak>,
    /// Derived values worth reporting (per-build milliseconds, KiB per connection, …).
    pub notes: Vec<(&'static str, f64)>,
}

/// Wall time and daemon CPU time of a measured operation.
pub struct Stopwatch<'a> {
    procs: &'a crate::memory::ProcSet,
    start: Instant,
    cpu_start: Option<u64>,
}

impl<'a> Stopwatch<'a> {
    pub fn start(running: &'a crate::daemons::Running) -> Self {
        let procs = &*running.procs;
        Stopwatch {
            procs,
            cpu_start: procs.cpu_usec(),
            start: Instant::now(),
        }
    }

    /// The wall time, and a `daemon_cpu_s` note when the daemon's CPU time is known:
    /// user + system time of all its processes (builders included) during the operation.
    pub fn stop(self) -> (Duration, Option<(&'static str, f64)>) {
        let elapsed = self.start.elapsed();
        let cpu = match (self.cpu_start, self.procs.cpu_usec()) {
            (Some(a), Some(b)) => Some(("daemon_cpu_s", b.saturating_sub(a) as f64 / 1e6)),
            _ => None,
        };
        (elapsed, cpu)
    }
}

/// `notes` plus the daemon CPU time, when known.
pub fn with_cpu(
    cpu: Option<(&'static str, f64)>,
    mut notes: Vec<(&'static str, f64)>,
) -> Vec<(&'static str, f64)> {
    notes.extend(cpu);
    notes
}

/// One daemon's side of a workload.
pub trait Runner {
    /// Runs the measured operation once; `sample`: also measure the daemon's memory.
    fn round(&mut self, ctx: &Ctx, sample: bool) -> Result<Round>;
}

type Start = fn(&Ctx, Kind) -> Result<Box<dyn Runner>>;

/// A workload: an id (for `--only` and the JSON `name`), a title with its sizes, and how
/// to make a runner for a daemon.
pub struct Workload {
    pub id: &'static str,
    pub title: String,
    /// Expensive rounds (big imports, builds, GC): runs `--heavy-rounds` rounds.
    pub heavy: bool,
    /// Whether the time column means anything (the idle workload only has memory).
    pub timed: bool,
    start: Start,
}

/// Every workload, in the order of the issue.
pub fn all(s: &Sizes) -> Vec<Workload> {
    fn w(id: &'static str, title: String, heavy: bool, start: Start) -> Workload {
        Workload {
            id,
            title,
            heavy,
            timed: true,
            start,
        }
    }
    vec![
        w(
            "connections",
            format!(
                "1 {} sequential connections (handshake + IsValidPath)",
                s.connections
            ),
            false,
            connections::start,
        ),
        w(
            "queries",
            format!(
                "2 {} clients × {} QueryPathInfo, store of {} paths",
                s.query_clients, s.queries_per_client, s.query_paths
            ),
            false,
            queries::start,
        ),
        w(
            "import-large",
            format!(
                "3a AddToStoreNar of one {} file",
                human_bytes(s.import_bytes)
            ),
            true,
            import::start_large,
        ),
        w(
            "import-files",
            format!(
                "3b AddToStoreNar of {} files ({})",
                s.import_files,
                human_bytes(s.import_bytes)
            ),
            true,
            import::start_files,
        ),
        w(
            "copy",
            format!(
                "4 nix copy of a {}-path closure to the daemon",
                s.copy_paths
            ),
            true,
            copy::start,
        ),
        w(
            "build",
            format!(
                "5 build {} trivial derivations (DAG, max-jobs {}, sandbox)",
                s.build_drvs, s.max_jobs
            ),
            true,
            build::start,
        ),
        w(
            "recursive",
            format!("6 recursive build with {} inner builds", s.recursive_inner),
            true,
            recursive::start,
        ),
        w(
            "gc",
            format!("7 GC of {} dead paths", s.gc_paths),
            true,
            gc::start,
        ),
        Workload {
            id: "idle",
            title: "8a idle daemon (no connection)".to_owned(),
            heavy: false,
            timed: false,
            start: idle::start_idle,
        },
        w(
            "idle-connections",
            format!("8b open {} idle connections", s.idle_connections),
            false,
            idle::start_connections,
        ),
    ]
}

/// Rounds of a workload.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rounds: usize,
    /// A memory round after the timed ones (else the last timed round is sampled).
    pub memory_round: bool,
}

/// The result of one daemon on one workload.
#[derive(Clone, Debug)]
pub enum Outcome {
    Measured(Measured),
    NotMeasured(String),
    Failed(String),
}

#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Seconds of each timed round.
    pub times: Vec<f64>,
    pub memory: Option<MemoryPeak>,
    pub notes: Vec<(&'static str, f64)>,
}

impl Measured {
    pub fn median(&self) -> Option<f64> {
        median(&self.times)
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v.get(mid).copied().unwrap_or(0.0)
    } else {
        (v.get(mid - 1).copied().unwrap_or(0.0) + v.get(mid).copied().unwrap_or(0.0)) / 2.0
    })
}

/// Runs `w` against every daemon of `kinds`; see the module docs.
pub fn run(ctx: &Ctx, w: &Workload, kinds: &[Kind], plan: Plan) -> Vec<(Kind, Outcome)> {
    struct Slot {
        kind: Kind,
        runner: Option<Box<dyn Runner>>,
        end: Option<Outcome>,
        measured: Measured,
        rounds: Vec<Round>,
    }
    let mut slots: Vec<Slot> = kinds
        .iter()
        .map(|&kind| {
            eprintln!("bench: {} — setting up {}", w.id, kind.id());
            let (runner, end) = match guarded(|| (w.start)(ctx, kind)) {
                Ok(r) => (Some(r), None),
                Err(outcome) => (None, Some(outcome)),
            };
            Slot {
                kind,
                runner,
                end,
                measured: Measured::default(),
                rounds: Vec::new(),
            }
        })
        .collect();

    let total = plan.rounds + usize::from(plan.memory_round);
    for i in 0..total {
        let sampled_round = if plan.memory_round {
            i == plan.rounds
        } else {
            i + 1 == plan.rounds
        };
        let timed_round = i < plan.rounds;
        for slot in &mut slots {
            let Some(runner) = slot.runner.as_mut() else {
                continue;
            };
            eprintln!(
                "bench: {} — {} round {}/{}{}",
                w.id,
                slot.kind.id(),
                i + 1,
                total,
                if sampled_round { " (memory)" } else { "" }
            );
            match guarded(|| runner.round(ctx, sampled_round)) {
                Ok(round) => {
                    if let Some(e) = round.elapsed.filter(|_| timed_round) {
                        eprintln!("bench:   {:.3} s", e.as_secs_f64());
                        slot.measured.times.push(e.as_secs_f64());
                    }
                    if let Some(m) = round.memory {
                        let merged = slot.measured.memory.get_or_insert_with(MemoryPeak::default);
                        merged.merge(&m);
                    }
                    slot.rounds.push(round);
                }
                Err(outcome) => {
                    slot.end = Some(outcome);
                    slot.runner = None;
                }
            }
        }
    }

    slots
        .into_iter()
        .map(|mut slot| {
            drop(slot.runner.take());
            slot.measured.notes = median_notes(&slot.rounds);
            let outcome = slot.end.unwrap_or(Outcome::Measured(slot.measured));
            (slot.kind, outcome)
        })
        .collect()
}

/// The median of each note over the rounds that have it, in first-seen order.
fn median_notes(rounds: &[Round]) -> Vec<(&'static str, f64)> {
    let mut keys: Vec<&'static str> = Vec::new();
    for r in rounds {
        for (k, _) in &r.notes {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
    }
    keys.into_iter()
        .filter_map(|k| {
            let vals: Vec<f64> = rounds
                .iter()
                .flat_map(|r| r.notes.iter().filter(|(n, _)| *n == k).map(|(_, v)| *v))
                .collect();
            median(&vals).map(|m| (k, m))
        })
        .collect()
}

/// Runs `f`, turning errors and panics into the outcome that ends the daemon's part.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T, Outcome> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(Error::Unsupported(why))) => Err(Outcome::NotMeasured(plain_text(&why))),
        Ok(Err(e)) => {
            eprintln!("bench: error: {e}");
            Err(Outcome::Failed(plain_text(&e.to_string())))
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".to_owned());
            Err(Outcome::Failed(msg))
        }
    }
}

// --- helpers shared by the workloads ----------------------------------------------------

/// The store dir of a test store as a checked value.
pub fn store_dir(store: &TestStore) -> Result<StoreDir> {
    Ok(StoreDir::new(store.store_dir().to_string_lossy())?)
}

/// Imports an export stream into `store` with the real `nix-store --import` (host 2.8,
/// local mode: no daemon involved). `nix_remote` overrides the store URI (a chroot store
/// `local?root=…` for `nix copy` sources).
pub fn import_local(store: &TestStore, export: &[u8], nix_remote: Option<&str>) -> Result<()> {
    let file = store.write(format!("import-{}.export", export.len()), export);
    let mut cmd = store.nix("nix-store");
    cmd.arg("--import");
    if let Some(uri) = nix_remote {
        cmd.env("NIX_REMOTE", uri);
    }
    let input = std::fs::File::open(&file).context(|| format!("opening {}", file.display()))?;
    exec(&mut cmd, Some(input.into()), Duration::from_secs(3600))?;
    std::fs::remove_file(&file).context(|| format!("removing {}", file.display()))?;
    Ok(())
}

/// Runs a command to completion (stdout, stderr captured; its own process group, killed
/// after `timeout`) and fails unless it exits with status 0. Returns stdout.
pub fn exec(cmd: &mut Command, stdin: Option<Stdio>, timeout: Duration) -> Result<String> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(stdin.unwrap_or_else(Stdio::null))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let described = nixnest_testkit::run::describe(cmd);
    let mut child = cmd.spawn().context(|| format!("starting {described}"))?;
    let drain = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err_t = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .context(|| format!("waiting for {described}"))?
        {
            break status;
        }
        if start.elapsed() > timeout {
            kill_group(child.id());
            let _ = child.wait();
            return Err(Error::Command {
                command: described,
                status: format!("killed after {timeout:?}"),
                stderr: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    };
    if !out.status.success() {
        return Err(Error::command(cmd, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// How long a client command may run: generous, only there to turn a hang into an error.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(1800);

/// `1 GiB`, `4 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let unit = UNITS.get(unit).copied().unwrap_or("B");
    if (v - v.round()).abs() < 0.05 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(4 << 20), "4 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10), "10 B");
    }

    #[test]
    fn notes_take_the_median_per_key() {
        let r = |v| Round {
            notes: vec![("ms", v)],
            ..Round::default()
        };
        assert_eq!(median_notes(&[r(1.0), r(5.0), r(2.0)]), vec![("ms", 2.0)]);
    }
}
