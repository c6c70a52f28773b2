//! `nixnest-bench`: nixnest-daemon side by side with the real `nix-daemon` (2.34 from the
//! sid chroot, 2.8 on the host), each on an identical fresh store, on the workloads of
//! `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p nixnest-bench -- [--quick] [--json FILE] [--only a,b] [sizes…]
//! ```
//!
//! Needs root (daemons, chroots, build users, cgroups). Prints, per workload, the median
//! wall time over the rounds for each daemon, the ratio real/nixnest (above 1: nixnest is
//! faster) and each daemon's peak memory, plus the machine it ran on. `--quick` runs every
//! workload once at a small size, to keep the harness working in CI; its numbers mean
//! nothing.
//!
//! Modules: [`daemons`] (what is compared and how it starts), [`workloads`] (what is
//! measured, and the driver), [`memory`] (how memory is measured), [`objects`] (synthetic
//! store contents), [`machine`], [`report`].

mod daemons;
mod error;
mod machine;
mod memory;
mod objects;
mod report;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::daemons::{Kind, Programs};
use crate::error::{Error, Result};
use crate::workloads::{Ctx, Plan, Sizes};

#[derive(Debug, Parser)]
#[command(
    name = "nixnest-bench",
    about = "Benchmarks nixnest-daemon against the real nix-daemon (2.34 and 2.8)"
)]
struct Cli {
    /// Every workload once, at a small size (for CI: checks the harness, not the numbers).
    #[arg(long)]
    quick: bool,

    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also write the Markdown report to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,

    /// Only these workloads (comma-separated ids: connections, queries, import-large,
    /// import-files, copy, build, recursive, gc, idle, idle-connections).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,

    /// The daemons to compare (comma-separated: nixnest, nix-2.34, nix-2.8, nix-2.26).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nixnest,nix-2.34,nix-2.8"
    )]
    daemons: Vec<String>,

    /// Timed rounds of the cheap workloads (default 5; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,

    /// Timed rounds of the expensive workloads: imports, copy, builds, GC (default 3; 1
    /// with --quick).
    #[arg(long)]
    heavy_rounds: Option<usize>,

    /// The nixnest-daemon binary (default: the one next to this program, rebuilt first
    /// when run through cargo).
    #[arg(long, value_name = "PATH")]
    nixnest_daemon: Option<PathBuf>,

    /// Exit with status 1 if nixnest failed a workload too (by default only a failure of
    /// a real nix-daemon does: that means the harness itself is broken).
    #[arg(long)]
    strict: bool,

    /// Where the big NAR files of the import workloads go (default: a fresh directory
    /// under /tmp, removed at the end).
    #[arg(long, value_name = "DIR")]
    scratch: Option<PathBuf>,

    /// Workload 1: sequential connections.
    #[arg(long)]
    connections: Option<usize>,
    /// Workload 2: paths in the store.
    #[arg(long)]
    query_paths: Option<usize>,
    /// Workload 2: concurrent clients.
    #[arg(long)]
    query_clients: Option<usize>,
    /// Workload 2: QueryPathInfo calls per client.
    #[arg(long)]
    queries_per_client: Option<usize>,
    /// Workload 3: bytes to import, e.g. 1G, 64M, 4096.
    #[arg(long, value_parser = parse_bytes)]
    import_bytes: Option<u64>,
    /// Workload 3b: number of files sharing those bytes.
    #[arg(long)]
    import_files: Option<u64>,
    /// Workload 4: paths in the copied closure.
    #[arg(long)]
    copy_paths: Option<usize>,
    /// Workload 5: derivations to build.
    #[arg(long)]
    build_drvs: Option<usize>,
    /// Workload 5: max-jobs.
    #[arg(long)]
    max_jobs: Option<usize>,
    /// Workload 6: inner builds of the recursive build.
    #[arg(long)]
    recursive_inner: Option<usize>,
    /// Workload 7: dead paths to collect.
    #[arg(long)]
    gc_paths: Option<usize>,
    /// Workload 8: idle connections to hold open.
    #[arg(long)]
    idle_connections: Option<usize>,
}

/// `1G`, `64M`, `4k`, `4096` (binary units).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                _ => return Err(format!("unknown unit in {s:?} (use k, M or G)")),
            };
            (s.get(..i).unwrap_or_default(), shift)
        }
        _ => (s, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

impl Cli {
    fn sizes(&self) -> Sizes {
        let mut s = if self.quick {
            Sizes::quick()
        } else {
            Sizes::full()
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { s.$f = v; } )* };
        }
        set!(
            connections,
            query_paths,
            query_clients,
            queries_per_client,
            import_bytes,
            import_files,
            copy_paths,
            build_drvs,
            max_jobs,
            recursive_inner,
            gc_paths,
            idle_connections
        );
        s
    }

    fn kinds(&self) -> Result<Vec<Kind>> {
        let mut kinds = Vec::new();
        for d in &self.daemons {
            let kind = Kind::parse(d.trim()).ok_or_else(|| {
                Error::Setup(format!(
                    "unknown daemon {d:?} (nixnest, nix-2.34, nix-2.26, nix-2.8)"
                ))
            })?;
            if !kind.available() {
                eprintln!(
                    "bench: skipping {}: its chroot is missing (run tests/prepare-clients)",
                    kind.id()
                );
                continue;
            }
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err(Error::Setup("no daemon to measure".into()));
        }
        Ok(kinds)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(Verdict::Fine) => ExitCode::SUCCESS,
        Ok(Verdict::HarnessBroken(what)) => {
            eprintln!("error: the harness failed against a real nix-daemon: {what}");
            ExitCode::FAILURE
        }
        Ok(Verdict::NixnestFailed(what)) if cli.strict => {
            eprintln!("error: nixnest failed (--strict): {what}");
            ExitCode::FAILURE
        }
        Ok(Verdict::NixnestFailed(_)) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the exit status says (see `--strict`).
enum Verdict {
    Fine,
    /// A real nix-daemon failed a workload: the harness is broken.
    HarnessBroken(String),
    NixnestFailed(String),
}

fn run(cli: &Cli) -> Result<Verdict> {
    if !rustix::process::geteuid().is_root() {
        return Err(Error::Setup(
            "nixnest-bench needs root (daemons, chroots, build users, cgroups)".into(),
        ));
    }
    let kinds = cli.kinds()?;
    let sizes = cli.sizes();
    let all = workloads::all(&sizes);
    for id in &cli.only {
        if !all.iter().any(|w| w.id == id) {
            return Err(Error::Setup(format!("unknown workload {id:?}")));
        }
    }
    let selected: Vec<_> = all
        .into_iter()
        .filter(|w| cli.only.is_empty() || cli.only.iter().any(|id| id == w.id))
        .collect();
    let programs = Programs::find(cli.nixnest_daemon.as_deref())?;
    let (scratch, remove_scratch) = match &cli.scratch {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("nixnest-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
    // 1000 idle connections need 1000 descriptors here (and in nixnest, which inherits it).
    raise_fd_limit();

    let mut machine = machine::Machine::probe(&std::env::temp_dir());
    let ctx = Ctx::new(programs, sizes, scratch.clone())?;
    let (rounds, heavy_rounds) = if cli.quick {
        (cli.rounds.unwrap_or(1), cli.heavy_rounds.unwrap_or(1))
    } else {
        (cli.rounds.unwrap_or(5), cli.heavy_rounds.unwrap_or(3))
    };
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for w in &selected {
        // A heavy workload's daemon has one or two processes, whose sampling costs
        // nothing worth a round of its own; see the driver's docs.
        let plan = Plan {
            rounds: if w.heavy { heavy_rounds } else { rounds }.max(1),
            memory_round: !cli.quick && !w.heavy,
        };
        let outcomes = workloads::run(&ctx, w, &kinds, plan);
        rows.push(report::Row::new(w, outcomes));
    }
    machine.finish();
    if remove_scratch {
        let _ = std::fs::remove_dir_all(&scratch);
    }

    let failures = |real: bool| -> Vec<String> {
        rows.iter()
            .flat_map(|row| {
                row.outcomes.iter().filter_map(move |(k, o)| match o {
                    workloads::Outcome::Failed(_) if (*k != Kind::Nixnest) == real => {
                        Some(format!("{} on {}", row.id, k.id()))
                    }
                    _ => None,
                })
            })
            .collect()
    };
    let verdict = match (failures(true), failures(false)) {
        (real, _) if !real.is_empty() => Verdict::HarnessBroken(real.join(", ")),
        (_, ours) if !ours.is_empty() => Verdict::NixnestFailed(ours.join(", ")),
        _ => Verdict::Fine,
    };

    let report = report::Report {
        machine,
        command: command_line(),
        quick: cli.quick,
        kinds,
        rows,
    };
    let text = report.markdown();
    println!("{text}");
    eprintln!(
        "bench: finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &cli.markdown {
        std::fs::write(path, &text)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report.json())
            .map_err(|e| Error::Setup(format!("encoding JSON: {e}")))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(verdict)
}

/// The command as typed, for the report: `nixnest-bench` and its arguments.
fn command_line() -> String {
    let mut parts = vec!["nixnest-bench".to_owned()];
    parts.extend(std::env::args().skip(1));
    parts.join(" ")
}

fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("4k"), Ok(4096));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1T").is_err());
        assert!(parse_bytes("x").is_err());
    }

    #[test]
    fn flags_override_quick_sizes() {
        let cli = Cli::parse_from(["nixnest-bench", "--quick", "--gc-paths", "7"]);
        let s = cli.sizes();
        assert_eq!(s.gc_paths, 7);
        assert_eq!(s.connections, Sizes::quick().connections);
    }
}
