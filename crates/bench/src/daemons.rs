//! The daemons under comparison, and how each is started on a store.
//!
//! | kind | program | where |
//! |---|---|---|
//! | `nixnest` | `nixnest-daemon` of this workspace | host |
//! | `nix-2.34` | `nix-daemon` 2.34.8 | sid chroot (`nixnest_testkit::Client::Sid`) |
//! | `nix-2.8` | `nix-daemon` 2.8.0 | host (Debian 12 `nix-bin`) |
//!
//! All three run the same way through the test rig ([`nixnest_testkit::DaemonSpec`]): as
//! root, as init of their own PID namespace, with the store's environment and `nix.conf`.
//! Each started daemon gets a [`ProcSet`] so its memory can be measured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nixnest_testkit::{Client, Daemon, TestStore};

use crate::error::{Error, Result};
use crate::memory::ProcSet;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Nixnest,
    Nix(Client),
}

impl Kind {
    /// What `--daemons` accepts and the report prints: `nixnest`, `nix-2.34`, `nix-2.8`.
    pub fn id(self) -> &'static str {
        match self {
            Kind::Nixnest => "nixnest",
            Kind::Nix(Client::Sid) => "nix-2.34",
            Kind::Nix(Client::Trixie) => "nix-2.26",
            Kind::Nix(Client::Host) => "nix-2.8",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Nixnest,
            Kind::Nix(Client::Sid),
            Kind::Nix(Client::Trixie),
            Kind::Nix(Client::Host),
        ]
        .into_iter()
        .find(|k| k.id() == s)
    }

    /// A description for the report header.
    pub fn describe(self) -> String {
        match self {
            Kind::Nixnest => "nixnest-daemon (this workspace)".to_owned(),
            Kind::Nix(c) => format!("nix-daemon {} ({})", c.version(), c.name()),
        }
    }

    /// Whether it can run here (the chroot daemons need `tests/prepare-clients`).
    pub fn available(self) -> bool {
        match self {
            Kind::Nixnest => true,
            Kind::Nix(c) => c.is_available(),
        }
    }
}

/// Where the programs are.
#[derive(Clone, Debug)]
pub struct Programs {
    pub nixnest_daemon: PathBuf,
}

impl Programs {
    /// `--nixnest-daemon PATH`, else the `nixnest-daemon` next to this program (same cargo
    /// target dir and profile). When run by `cargo run`, that binary is (re)built first
    /// with the same profile, so `cargo run -p nixnest-bench` measures the current source.
    pub fn find(explicit: Option<&Path>) -> Result<Programs> {
        if let Some(path) = explicit {
            return Ok(Programs {
                nixnest_daemon: path.to_owned(),
            });
        }
        let exe = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
        let dir = exe
            .parent()
            .ok_or_else(|| Error::Setup("this program has no directory".into()))?;
        let path = dir.join("nixnest-daemon");
        if let Some(cargo) = std::env::var_os("CARGO") {
            build_sibling(&cargo, dir)?;
        }
        if !path.exists() {
            return Err(Error::Setup(format!(
                "{} not found; build it (cargo build --release -p nixnest-daemon) or pass \
                 --nixnest-daemon PATH",
                path.display()
            )));
        }
        Ok(Programs {
            nixnest_daemon: path,
        })
    }
}

/// `cargo build -p nixnest-daemon` (and the builder's helper binaries, which the daemon
/// starts) with the profile whose output directory is `dir`.
fn build_sibling(cargo: &std::ffi::OsStr, dir: &Path) -> Result<()> {
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| if n == "debug" { "dev" } else { n })
        .unwrap_or("dev")
        .to_owned();
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--profile", &profile, "-p", "nixnest-daemon"]);
    if has_package_bins("nixnest-build") {
        cmd.args(["-p", "nixnest-build", "--bins"]);
    }
    eprintln!("bench: building nixnest-daemon ({profile} profile)");
    let status = cmd
        .status()
        .map_err(|e| Error::io("running cargo build", e))?;
    if !status.success() {
        return Err(Error::Setup(format!(
            "cargo build of nixnest-daemon failed ({status})"
        )));
    }
    Ok(())
}

/// Whether the workspace package `name` has binaries (the builder's helper, once it
/// exists), judged from its `Cargo.toml` next to this crate's.
fn has_package_bins(name: &str) -> bool {
    // This crate is crates/bench; the builder is crates/build.
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = match name.strip_prefix("nixnest-") {
        Some(short) => crates.join(short),
        None => return false,
    };
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[[bin]]"))
        || dir.join("src/bin").is_dir()
        || dir.join("src/main.rs").exists()
}

/// A daemon serving a store, with its process set.
pub struct Running {
    pub daemon: Daemon,
    pub procs: Arc<ProcSet>,
}

impl Running {
    /// Starts `kind` on `store` (waits until it listens) and begins tracking its processes.
    pub fn start(kind: Kind, store: &TestStore, programs: &Programs) -> Running {
        Self::start_with(kind, store, programs, &[])
    }

    /// Like [`Running::start`], with extra `--option NAME VALUE` pairs for nixnest only
    /// (settings CppNix does not know, such as `max-connections`).
    pub fn start_with(
        kind: Kind,
        store: &TestStore,
        programs: &Programs,
        nixnest_options: &[(&str, &str)],
    ) -> Running {
        let spec = match kind {
            Kind::Nixnest => {
                let mut spec = store.daemon("nixnest", &programs.nixnest_daemon);
                for (name, value) in nixnest_options {
                    spec = spec.option(name, value);
                }
                spec
            }
            Kind::Nix(client) => store.nix_daemon(client),
        };
        let daemon = spec.start();
        let procs = Arc::new(ProcSet::track(daemon.main_pid(), kind.id()));
        Running { daemon, procs }
    }

    pub fn socket(&self) -> &Path {
        self.daemon.socket()
    }
}

/// How long a daemon may take to exit after SIGTERM before the test rig kills it.
const STOP_GRACE: Duration = Duration::from_secs(20);

impl Drop for Running {
    /// Stops the daemon with SIGTERM and waits for it, so a daemon run under a profiler
    /// (`--nixnest-daemon` naming a wrapper that `exec`s `valgrind --tool=callgrind …`)
    /// writes its profile; the test rig's SIGKILL follows only if it does not exit.
    fn drop(&mut self) {
        if !self.daemon.is_running() {
            return;
        }
        let pid = self.daemon.main_pid();
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            if self.daemon.wait_exit(STOP_GRACE).is_none() {
                eprintln!(
                    "bench: {} did not exit within {STOP_GRACE:?} of SIGTERM; killing it",
                    self.daemon.name()
                );
            }
        }
    }
}
