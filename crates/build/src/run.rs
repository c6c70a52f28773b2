//! Building one derivation: [`Builder::build`].
//!
//! ```text
//! checks (platform, features, output kinds, __noChroot)  ── InputRejected
//!   → temp roots + output locks (`<out>.lock`), re-check validity ── AlreadyValid
//!   → build dir, environment, files, `BuildEvents::prepare` (recursive Nix socket)
//!   → chroot (sandboxed), log pseudo-terminal
//!   → helper process: Started → log loop (lines, limits, timeouts) → Exited
//!   → `BuildEvents::builder_exited` (stop serving recursive Nix)
//!   → exit status ≠ 0: PermanentFailure / TransientFailure (+ last log lines)
//!   → registration (see `outputs`): Built / OutputRejected
//!   → chroot removed; build dir removed or kept (`keep-failed`)
//! ```
//!
//! Timeouts follow CppNix's worker: `max-silent-time` counts from the last output (or the
//! start), `timeout` from the start; either kills the build and reports TimedOut with
//! "`<goal>` timed out after N seconds[ of silence]". More than `max-build-log-size` bytes
//! of output kills it with LogLimitExceeded. Killing always means the whole tree: the
//! sandbox's pid 1 (the kernel then kills its pid namespace), the process group, and — with
//! a build user — every process of that uid.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nixnest_core::{Derivation, DerivationType, StorePath, ValidPathInfo};
use nixnest_store::{LocalStore, TempRoots};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use crate::builddir::BuildDir;
use crate::chroot::{Chroot, ChrootParams, link_or_copy};
use crate::drvattrs::DrvAttrs;
use crate::env::{EnvContext, builder_env};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::log::{LogLine, LogSplitter};
use crate::outputs::{RegisterJob, Registration, register_outputs};
use crate::pty::LogChannel;
use crate::settings::{BuildSettings, SandboxMode};
use crate::spec::{self, BuildIds, Event, Reply, Request, SandboxSpec, Spec};
use crate::status::{BuildStatus, status_ok, status_to_string};
use crate::users::UserLease;

/// One derivation to build.
pub struct BuildJob<'a> {
    pub drv_path: StorePath,
    pub drv: &'a Derivation,
    /// The input closure: every path the builder may see (input sources and the outputs of
    /// input derivations, with their closures). All must be valid.
    pub input_paths: BTreeSet<StorePath>,
    /// The build user, when the daemon uses build users (see [`crate::users`]). It must
    /// stay leased until `build` returns.
    pub build_user: Option<&'a UserLease>,
    /// `requiredSystemFeatures` contains `recursive-nix` and the daemon serves it: sets
    /// `NIX_REMOTE` to the per-build socket, which the daemon creates in
    /// [`BuildEvents::prepare`].
    pub recursive_nix: bool,
    /// Extra reference candidates (besides inputs, outputs and paths made visible).
    pub extra_candidates: BTreeSet<StorePath>,
    /// The temp-roots session protecting this build's paths; `None` = a private one.
    pub temp_roots: Option<&'a TempRoots>,
    /// How messages name the build (CppNix: `building of '<drv>!<outputs>' from .drv
    /// file`); `None` = that form with all outputs.
    pub goal_name: Option<String>,
    /// Set it (from any thread) to stop the build: everything is killed and the outcome
    /// is MiscFailure "interrupted by the user" (e.g. the client went away).
    pub cancel: Option<&'a AtomicBool>,
}

impl<'a> BuildJob<'a> {
    /// A job with no build user, no recursive Nix and the default goal name.
    pub fn new(drv_path: StorePath, drv: &'a Derivation, input_paths: BTreeSet<StorePath>) -> Self {
        BuildJob {
            drv_path,
            drv,
            input_paths,
            build_user: None,
            recursive_nix: false,
            extra_candidates: BTreeSet::new(),
            temp_roots: None,
            goal_name: None,
            cancel: None,
        }
    }
}

/// The build dir, as [`BuildEvents::prepare`] sees it before the builder starts.
pub struct PreparedBuild<'a> {
    /// The build dir on the host (bind-mounted at `in_sandbox`).
    pub host_dir: &'a Path,
    /// Its descriptor: create files with `*at` calls, or bind a socket at
    /// `/proc/self/fd/<fd>/.nix-socket` (short enough for `sun_path`).
    pub dir_fd: BorrowedFd<'a>,
    /// The build dir as the builder sees it.
    pub in_sandbox: &'a str,
    /// `(uid, gid)` a file must be chowned to for the builder (the build user), or `None`
    /// when the builder runs with the daemon's own ids.
    pub owner: Option<(u32, u32)>,
}

/// The builder is running.
pub struct BuildStarted {
    /// Host pid of the builder (pid 1 of the sandbox).
    pub pid: i32,
    pub host_build_dir: PathBuf,
    pub sandboxed: bool,
    pub user_namespace: bool,
    /// From the helper's start to the builder's `execve`.
    pub setup_time: Duration,
    /// Makes store paths appear in the running sandbox (recursive Nix).
    pub handle: SandboxHandle,
}

/// What the caller hears about a build while it runs. Every method has a no-op default.
pub trait BuildEvents {
    /// The build dir exists and the builder has not started (create the recursive-Nix
    /// socket here).
    fn prepare(&mut self, _build: &PreparedBuild<'_>) -> Result<()> {
        Ok(())
    }
    fn started(&mut self, _started: &BuildStarted) {}
    /// Raw output, for the build log file.
    fn log_chunk(&mut self, _data: &[u8]) {}
    /// One line of output (no newline).
    fn log_line(&mut self, _line: &[u8]) {}
    /// The JSON of an `@nix` line.
    fn structured_log(&mut self, _json: &str) {}
    /// The builder and all its processes are gone; outputs are not registered yet. Stop
    /// serving recursive Nix here (CppNix joins its threads at this point).
    fn builder_exited(&mut self) {}
    /// Notes for the user ("note: keeping build directory '…'", "waiting for lock …").
    fn note(&mut self, _msg: &str) {}
}

/// A sink that ignores everything.
pub struct NoEvents;
impl BuildEvents for NoEvents {}

/// Time spent in phases of the build.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildTimings {
    /// From `build` to the helper's start (checks, build dir, chroot, pty).
    pub prepare: Duration,
    /// The helper's share: namespaces, mounts, `pivot_root`, up to `execve`.
    pub sandbox_setup: Duration,
    /// The builder's run time.
    pub run: Duration,
    /// Registration and cleanup.
    pub finish: Duration,
}

/// The result of [`Builder::build`].
#[derive(Debug)]
pub struct BuildOutcome {
    pub status: BuildStatus,
    /// CppNix's message for failures.
    pub error_msg: Option<String>,
    /// Registered outputs (on success; and the mismatching path of a fixed-output build).
    pub built_outputs: BTreeMap<String, ValidPathInfo>,
    pub times_built: u32,
    pub start_time: SystemTime,
    pub stop_time: SystemTime,
    /// The builder's wait status, if it ran.
    pub exit_status: Option<i32>,
    /// A fixed-output hash mismatch (CppNix's exit code 102).
    pub hash_mismatch: bool,
    pub timings: BuildTimings,
    /// Whether the build ran sandboxed.
    pub sandboxed: bool,
}

impl BuildOutcome {
    fn failure(status: BuildStatus, msg: String) -> Self {
        let now = SystemTime::now();
        BuildOutcome {
            status,
            error_msg: Some(msg),
            built_outputs: BTreeMap::new(),
            times_built: 0,
            start_time: now,
            stop_time: now,
            exit_status: None,
            hash_mismatch: false,
            timings: BuildTimings::default(),
            sandboxed: false,
        }
    }
}

/// Makes store paths visible inside a running sandbox (CppNix's `addDependency`). Cheap to
/// clone; usable from any thread while the build runs.
#[derive(Clone, Debug)]
pub struct SandboxHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    control: Arc<OwnedFd>,
    store: StoreLoc,
    chroot: Option<ChrootLoc>,
    allowed: BTreeSet<StorePath>,
    /// Bind files read-only instead of hard-linking them (the builder owns the store).
    bind_files: bool,
    added: Mutex<BTreeSet<StorePath>>,
    finished: AtomicBool,
}

#[derive(Debug)]
struct StoreLoc {
    dir: String,
    real: PathBuf,
    fd: OwnedFd,
}

#[derive(Debug)]
struct ChrootLoc {
    store_path: PathBuf,
    store_fd: OwnedFd,
}

impl SandboxHandle {
    /// Whether `path` is an input or was already added.
    pub fn is_allowed(&self, path: &StorePath) -> bool {
        self.inner.allowed.contains(path)
            || self
                .inner
                .added
                .lock()
                .map(|a| a.contains(path))
                .unwrap_or(false)
    }

    /// The paths added so far.
    pub fn added_paths(&self) -> BTreeSet<StorePath> {
        self.inner
            .added
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Makes the valid store path `path` appear in the sandbox: directories (and, when the
    /// builder runs with the store owner's uid, files) are bind-mounted read-only by the
    /// helper from inside the sandbox's namespaces; other files and symlinks are
    /// hard-linked (copied if linking fails) into the chroot's store. Unsandboxed builds
    /// only record it. Added paths become reference candidates. Safe to call from any
    /// thread, including from `BuildEvents` callbacks: the helper answers on a pipe of its
    /// own, not through the build loop.
    pub fn make_visible(&self, path: &StorePath) -> Result<()> {
        if self.is_allowed(path) {
            return Ok(());
        }
        if self.inner.finished.load(Ordering::SeqCst) {
            return Err(Error::Helper(
                "the build finished before the path could be added".into(),
            ));
        }
        self.inner
            .added
            .lock()
            .map_err(|_| Error::Other("poisoned lock".into()))?
            .insert(path.clone());
        let Some(chroot) = &self.inner.chroot else {
            return Ok(());
        };
        let base = path.to_string();
        let cbase = fsutil::component(&base)?;
        let printed = format!("{}/{base}", self.inner.store.dir);
        let target = chroot.store_path.join(&base);
        if fsutil::lstat_at(chroot.store_fd.as_fd(), &cbase)
            .map_err(|e| Error::io_at("getting status of", &target, e))?
            .is_some()
        {
            return Err(Error::Other(format!(
                "store path '{printed}' already exists in the sandbox"
            )));
        }
        let source = self.inner.store.real.join(&base);
        let st = fsutil::lstat_at(self.inner.store.fd.as_fd(), &cbase)
            .map_err(|e| Error::io_at("getting status of", &source, e))?
            .ok_or_else(|| Error::Other(format!("path '{printed}' does not exist")))?;
        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
        if ft == rustix::fs::FileType::Directory
            || (ft == rustix::fs::FileType::RegularFile && self.inner.bind_files)
        {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(|e| Error::io("pipe", e))?;
            spec::send(
                self.inner.control.as_fd(),
                &Request::MakeVisible {
                    source: source.to_string_lossy().into_owned(),
                    target: target.to_string_lossy().into_owned(),
                },
                &[w.as_fd()],
            )?;
            drop(w);
            match spec::read_reply(r)? {
                Reply::Ok => Ok(()),
                Reply::Error(e) => Err(Error::Other(e)),
            }
        } else {
            link_or_copy(
                self.inner.store.fd.as_fd(),
                chroot.store_fd.as_fd(),
                &cbase,
                &target,
            )
        }
    }
}

/// Builds derivations in one store with one set of settings.
pub struct Builder<'a> {
    store: &'a LocalStore,
    settings: &'a BuildSettings,
}

/// How the helper run ended.
struct RunResult {
    status: Option<i32>,
    setup_failed: Option<(String, bool)>,
    killed_for: Option<(BuildStatus, String)>,
    setup_time: Duration,
    run_time: Duration,
}

impl<'a> Builder<'a> {
    pub fn new(store: &'a LocalStore, settings: &'a BuildSettings) -> Self {
        Builder { store, settings }
    }

    /// Builds `job`: see the module docs. `Err` is for failures of the machinery (system
    /// calls, the store); a build that ran and failed is an `Ok` outcome with its status.
    pub fn build(&self, job: &BuildJob<'_>, events: &mut dyn BuildEvents) -> Result<BuildOutcome> {
        let t0 = Instant::now();
        let start_time = SystemTime::now();
        let sd = self.store.store_dir();
        let drv_s = sd.print(&job.drv_path);
        let reject = |e: Error| {
            Ok(BuildOutcome::failure(
                BuildStatus::InputRejected,
                e.to_string(),
            ))
        };

        let attrs = match DrvAttrs::new(job.drv, &drv_s) {
            Ok(a) => a,
            Err(e) => return reject(e),
        };
        if let Err(e) = attrs.check_can_build_locally(self.settings) {
            return reject(e);
        }
        let ty = job.drv.derivation_type()?;
        if !matches!(
            ty,
            DerivationType::InputAddressed { deferred: false }
                | DerivationType::ContentAddressed { fixed: true }
        ) {
            return reject(Error::BadDerivation(format!(
                "cannot build '{drv_s}': only input-addressed and fixed-output derivations are supported"
            )));
        }
        if let Some(name) = job.drv.builder.strip_prefix("builtin:") {
            return reject(Error::BadDerivation(format!(
                "cannot build '{drv_s}': the builtin builder '{name}' is not supported by nixnest yet"
            )));
        }
        let mut outputs = BTreeMap::new();
        for (name, out) in job.drv.output_paths(sd)? {
            let p = out.ok_or_else(|| {
                Error::BadDerivation(format!("output '{name}' has no known path"))
            })?;
            outputs.insert(name, p);
        }
        let no_chroot = match attrs.no_chroot() {
            Ok(b) => b,
            Err(e) => return reject(e),
        };
        let mut sandboxed = match self.settings.sandbox {
            SandboxMode::Enabled => {
                if no_chroot {
                    return reject(Error::BadDerivation(format!(
                        "derivation '{drv_s}' has '__noChroot' set, but that's not allowed when 'sandbox' is 'true'"
                    )));
                }
                true
            }
            SandboxMode::Disabled => false,
            SandboxMode::Relaxed => ty.is_sandboxed() && !no_chroot,
        };

        // Temp roots and output locks; re-check validity under the locks.
        let own_roots;
        let roots = match job.temp_roots {
            Some(r) => r,
            None => {
                own_roots = self.store.temp_roots_session();
                &own_roots
            }
        };
        roots.add_path(&job.drv_path)?;
        for p in outputs.values() {
            roots.add_path(p)?;
        }
        let real_outputs: Vec<PathBuf> = outputs
            .values()
            .map(|p| self.store.real_store_dir().join(p.to_string()))
            .collect();
        let refs: Vec<&Path> = real_outputs.iter().map(PathBuf::as_path).collect();
        let note_wait = |p: &Path| {
            tracing::info!("waiting for lock on '{}'", p.display());
        };
        let mut locks = nixnest_store::lock::PathLocks::lock(&refs, &note_wait)?;
        let mut wanted = BTreeMap::new();
        let mut valid = BTreeMap::new();
        for (name, p) in &outputs {
            if self.store.is_valid_path(p)? {
                valid.insert(name.clone(), self.store.path_info(p)?);
            } else {
                wanted.insert(name.clone(), p.clone());
            }
        }
        if wanted.is_empty() {
            locks.set_deletion(true);
            let mut o = BuildOutcome::failure(BuildStatus::AlreadyValid, String::new());
            o.error_msg = None;
            o.built_outputs = valid;
            return Ok(o);
        }

        loop {
            let attempt = self.attempt(
                job, &attrs, ty, &outputs, &wanted, sandboxed, roots, events, t0, start_time,
            )?;
            match attempt {
                Attempt::Fallback(msg) => {
                    tracing::warn!("{msg}; building without the sandbox (sandbox-fallback = true)");
                    sandboxed = false;
                }
                Attempt::Done(mut outcome) => {
                    if outcome.status.is_success() {
                        locks.set_deletion(true);
                        for (n, i) in valid {
                            outcome.built_outputs.entry(n).or_insert(i);
                        }
                    }
                    return Ok(outcome);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        job: &BuildJob<'_>,
        attrs: &DrvAttrs<'_>,
        ty: DerivationType,
        outputs: &BTreeMap<String, StorePath>,
        wanted: &BTreeMap<String, StorePath>,
        sandboxed: bool,
        roots: &TempRoots,
        events: &mut dyn BuildEvents,
        t0: Instant,
        start_time: SystemTime,
    ) -> Result<Attempt> {
        let sd = self.store.store_dir();
        let drv_s = sd.print(&job.drv_path);
        let owner = job.build_user.map(|u| (u.uid, u.gid));
        let reject = |e: Error| {
            Ok(Attempt::Done(BuildOutcome::failure(
                BuildStatus::InputRejected,
                e.to_string(),
            )))
        };

        // Unsandboxed builds write straight into the store: clear invalid leftovers, and
        // refuse to run a builder that would write into a valid output (CppNix rewrites
        // hashes to scratch paths there; nixnest does not).
        if !sandboxed {
            if wanted.len() != outputs.len() {
                return reject(Error::BadDerivation(format!(
                    "cannot build the missing outputs of '{drv_s}' without the sandbox: some of its outputs are already valid"
                )));
            }
            let store_fd = fsutil::open_dir(self.store.real_store_dir())?;
            for p in wanted.values() {
                let base = fsutil::component(p.to_string())?;
                fsutil::delete_tree_at(
                    store_fd.as_fd(),
                    &base,
                    &self.store.real_store_dir().join(p.to_string()),
                )?;
            }
            if Path::new("/homeless-shelter").exists() {
                return reject(Error::BadDerivation(
                    "home directory '/homeless-shelter' exists; please remove it to assure purity of builds without sandboxing".into(),
                ));
            }
        }

        let parent = self
            .settings
            .build_dir
            .clone()
            .unwrap_or_else(|| self.store.state_dir().join("builds"));
        let build_dir = BuildDir::create(&parent, job.drv_path.name(), owner, sandboxed)?;
        let host_dir = build_dir.path().to_owned();
        let in_sandbox = if sandboxed {
            self.settings.sandbox_build_dir.clone()
        } else {
            host_dir.to_string_lossy().into_owned()
        };
        let impure = |k: &str| std::env::var(k).ok();
        let env = match builder_env(
            attrs,
            &EnvContext {
                store: self.store,
                drv_path: &job.drv_path,
                input_paths: &job.input_paths,
                output_paths: outputs,
                build_dir_in_sandbox: &in_sandbox,
                cores: self.settings.cores,
                impure_env: &impure,
                recursive_nix: job.recursive_nix,
            },
        ) {
            Ok(e) => e,
            Err(e @ Error::BadDerivation(_)) => return reject(e),
            Err(e) => return Err(e),
        };
        for (name, contents) in &env.files {
            build_dir.write_file(name, contents, owner)?;
        }
        events.prepare(&PreparedBuild {
            host_dir: &host_dir,
            dir_fd: build_dir.fd(),
            in_sandbox: &in_sandbox,
            owner,
        })?;

        let output_set: BTreeSet<StorePath> = outputs.values().cloned().collect();
        let mut chroot = if sandboxed {
            Some(Chroot::prepare(&ChrootParams {
                store: self.store,
                drv_path: &job.drv_path,
                build_gid: owner.map(|o| o.1),
                fixed_output: !ty.is_sandboxed(),
                input_paths: &job.input_paths,
                output_paths: &output_set,
                sandbox_paths: &self.settings.sandbox_paths,
                build_dir: &host_dir,
                build_dir_in_sandbox: &in_sandbox,
                builder_owns_store: job.build_user.is_none(),
            })?)
        } else {
            None
        };
        if let (Some(c), Some(hook)) = (chroot.as_mut(), &self.settings.pre_build_hook) {
            match run_pre_build_hook(hook, &drv_s, c.root()) {
                Ok(paths) => c.add_binds(&paths),
                Err(m) => return reject(Error::Setup(m)),
            }
        }

        let platform = &job.drv.platform;
        let machine_x86_64 = cfg!(target_arch = "x86_64");
        let spec = Spec {
            builder: env.builder.clone(),
            args: env.args.clone(),
            env: env.env_strings(),
            cwd: in_sandbox.clone(),
            build_user: job.build_user.map(|u| BuildIds {
                uid: u.uid,
                gid: u.gid,
                supplementary_gids: u.supplementary_gids.clone(),
            }),
            sandbox: chroot.as_ref().map(|c| SandboxSpec {
                root: c.root().to_string_lossy().into_owned(),
                store_dir: sd.as_str().to_owned(),
                private_network: ty.is_sandboxed(),
                user_namespace: user_namespaces_enabled(),
                binds: c.binds(),
                minimal_dev: !c.binds_target("/dev"),
                kvm: self.settings.system_features.contains("kvm"),
                dev_shm_size: self.settings.sandbox_dev_shm_size.clone(),
                dev_pts_bound: c.binds_target("/dev/pts"),
                build_dir: in_sandbox.clone(),
            }),
            filter_syscalls: self.settings.filter_syscalls,
            allow_new_privileges: self.settings.allow_new_privileges,
            linux32: (platform == "i686-linux"
                && (self.settings.system == "x86_64-linux" || machine_x86_64))
                || platform == "armv7l-linux"
                || platform == "armv6l-linux",
            uname26: (platform == "i686-linux" || platform == "x86_64-linux")
                && self.settings.impersonate_linux_26,
        };
        let log = LogChannel::open(owner.map(|o| o.0))?;
        let prepare_time = t0.elapsed();

        let handle_parts = HandleParts {
            store: StoreLoc {
                dir: sd.as_str().to_owned(),
                real: self.store.real_store_dir().to_owned(),
                fd: fsutil::open_dir(self.store.real_store_dir())?,
            },
            chroot: match &chroot {
                Some(c) => Some(ChrootLoc {
                    store_path: c.store_path().to_owned(),
                    store_fd: c
                        .store_fd()
                        .try_clone_to_owned()
                        .map_err(|e| Error::io("dup", e))?,
                }),
                None => None,
            },
            allowed: job.input_paths.clone(),
            bind_files: job.build_user.is_none(),
        };
        let goal = job.goal_name.clone().unwrap_or_else(|| {
            format!(
                "building of '{drv_s}!{}' from .drv file",
                outputs.keys().cloned().collect::<Vec<_>>().join(",")
            )
        });
        let mut splitter = LogSplitter::new(self.settings.log_lines);
        let run = self.run_helper(
            &spec,
            log,
            handle_parts,
            &host_dir,
            sandboxed,
            &goal,
            job.cancel,
            &mut splitter,
            events,
        )?;
        let handle_added = run.1;
        let run = run.0;
        events.builder_exited();
        let finish_start = Instant::now();

        let mut outcome = BuildOutcome {
            status: BuildStatus::Built,
            error_msg: None,
            built_outputs: BTreeMap::new(),
            times_built: 1,
            start_time,
            stop_time: start_time,
            exit_status: run.status,
            hash_mismatch: false,
            timings: BuildTimings {
                prepare: prepare_time,
                sandbox_setup: run.setup_time,
                run: run.run_time,
                finish: Duration::ZERO,
            },
            sandboxed,
        };

        if let Some((message, unavailable)) = run.setup_failed {
            drop(chroot);
            let _ = build_dir.finish(false);
            if unavailable && sandboxed && self.settings.sandbox_fallback {
                return Ok(Attempt::Fallback(message));
            }
            outcome.status = BuildStatus::InputRejected;
            outcome.error_msg = Some(message);
            outcome.times_built = 0;
            return Ok(Attempt::Done(self.finish_outcome(outcome, finish_start)));
        }

        let mut failed = true;
        if let Some((status, msg)) = run.killed_for {
            outcome.status = status;
            outcome.error_msg = Some(msg);
        } else if let Some(status) = run.status.filter(|s| !status_ok(*s)) {
            let disk_full = disk_looks_full(self.store.real_store_dir(), &host_dir);
            let mut msg = format!("builder for '{drv_s}' {}", status_to_string(status));
            if splitter.tail_len() > 0 {
                msg.push_str(&format!(";\nlast {} log lines:\n", splitter.tail_len()));
                for l in splitter.tail() {
                    msg.push_str("> ");
                    msg.push_str(l);
                    msg.push('\n');
                }
                msg.push_str(&format!("For full logs, run 'nix log {drv_s}'."));
            }
            if disk_full {
                msg.push_str(
                    "\nnote: build failure may have been caused by lack of free disk space",
                );
            }
            outcome.status = if !ty.is_sandboxed() || disk_full {
                BuildStatus::TransientFailure
            } else {
                BuildStatus::PermanentFailure
            };
            outcome.error_msg = Some(msg);
        } else if run.status.is_none() {
            outcome.status = BuildStatus::MiscFailure;
            outcome.error_msg = Some(format!(
                "the build helper for '{drv_s}' exited without reporting the builder's status"
            ));
        } else {
            let mut candidates: BTreeSet<StorePath> = job.input_paths.clone();
            candidates.extend(outputs.values().cloned());
            candidates.extend(handle_added);
            candidates.extend(job.extra_candidates.iter().cloned());
            let (loc_fd, loc_path): (OwnedFd, PathBuf) = match &chroot {
                Some(c) => (
                    c.store_fd()
                        .try_clone_to_owned()
                        .map_err(|e| Error::io("dup", e))?,
                    c.store_path().to_owned(),
                ),
                None => (
                    fsutil::open_dir(self.store.real_store_dir())?,
                    self.store.real_store_dir().to_owned(),
                ),
            };
            let registered = register_outputs(&RegisterJob {
                store: self.store,
                drv_path: &job.drv_path,
                attrs,
                outputs: wanted,
                location: loc_fd.as_fd(),
                location_path: &loc_path,
                in_real_store: chroot.is_none(),
                build_uid: owner.map(|o| o.0),
                candidates: &candidates,
                temp_roots: roots,
            });
            match registered {
                Ok(Registration::Registered(infos)) => {
                    outcome.built_outputs = infos;
                    failed = false;
                }
                Ok(Registration::Rejected {
                    message,
                    hash_mismatch,
                    registered,
                }) => {
                    outcome.status = BuildStatus::OutputRejected;
                    outcome.error_msg = Some(message);
                    outcome.hash_mismatch = hash_mismatch;
                    outcome.built_outputs = registered;
                }
                Err(e) => {
                    self.remove_unregistered(chroot.is_none(), wanted);
                    drop(chroot);
                    let _ = build_dir.finish(self.settings.keep_failed);
                    return Err(e);
                }
            }
        }
        if failed && chroot.is_none() {
            self.remove_unregistered(true, wanted);
        }
        if let Some(c) = chroot {
            c.remove()?;
        }
        if let Some(note) = build_dir.finish(failed && self.settings.keep_failed)? {
            events.note(&note);
        }
        Ok(Attempt::Done(self.finish_outcome(outcome, finish_start)))
    }

    fn finish_outcome(&self, mut o: BuildOutcome, finish_start: Instant) -> BuildOutcome {
        o.stop_time = SystemTime::now();
        o.timings.finish = finish_start.elapsed();
        o
    }

    /// Deletes outputs an unsandboxed build left in the store without registering them.
    fn remove_unregistered(&self, unsandboxed: bool, wanted: &BTreeMap<String, StorePath>) {
        if !unsandboxed {
            return;
        }
        let Ok(store_fd) = fsutil::open_dir(self.store.real_store_dir()) else {
            return;
        };
        for p in wanted.values() {
            if self.store.is_valid_path(p).unwrap_or(true) {
                continue;
            }
            if let Ok(c) = fsutil::component(p.to_string()) {
                let _ = fsutil::delete_tree_at(
                    store_fd.as_fd(),
                    &c,
                    &self.store.real_store_dir().join(p.to_string()),
                );
            }
        }
    }

    /// Starts the helper and runs the log/timeout loop until the build is over.
    #[allow(clippy::too_many_arguments)]
    fn run_helper(
        &self,
        spec: &Spec,
        log: LogChannel,
        handle_parts: HandleParts,
        host_dir: &Path,
        sandboxed: bool,
        goal: &str,
        cancel: Option<&AtomicBool>,
        splitter: &mut LogSplitter,
        events: &mut dyn BuildEvents,
    ) -> Result<(RunResult, BTreeSet<StorePath>)> {
        let (ctl, ctl_helper) = spec::socketpair()?;
        let (spec_r, spec_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::io("pipe", e))?;
        let helper = &self.settings.helper;
        let mut child = Command::new(&helper.program)
            .args(&helper.args)
            .env_clear()
            .stdin(Stdio::from(spec_r))
            .stdout(Stdio::from(ctl_helper))
            .stderr(Stdio::from(log.slave))
            .spawn()
            .map_err(|e| {
                Error::io(
                    format!("starting the build helper '{}'", helper.program.display()),
                    e,
                )
            })?;
        let bytes = serde_json::to_vec(spec)
            .map_err(|e| Error::Helper(format!("encoding the spec: {e}")))?;
        let wrote = std::fs::File::from(spec_w).write_all(&bytes);
        let ctl = Arc::new(ctl);
        let handle = SandboxHandle {
            inner: Arc::new(HandleInner {
                control: ctl.clone(),
                store: handle_parts.store,
                chroot: handle_parts.chroot,
                allowed: handle_parts.allowed,
                bind_files: handle_parts.bind_files,
                added: Mutex::new(BTreeSet::new()),
                finished: AtomicBool::new(false),
            }),
        };
        if let Err(e) = wrote {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::io("sending the spec to the build helper", e));
        }

        let master = log.master;
        let mut result = RunResult {
            status: None,
            setup_failed: None,
            killed_for: None,
            setup_time: Duration::ZERO,
            run_time: Duration::ZERO,
        };
        let mut log_open = true;
        let mut ctl_open = true;
        let mut started_at: Option<Instant> = None;
        let mut last_output = Instant::now();
        let mut log_size: u64 = 0;
        let mut kill_sent = false;
        let mut exited_at: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        // After the builder is gone, wait this long for the last log bytes (a process that
        // escaped the build could otherwise hold the log open forever).
        let drain = Duration::from_secs(1);

        // The loop returns early only on a failing system call; the helper is reaped
        // either way (dropping our end of the control socket makes it kill the build).
        let looped = (|| -> Result<()> {
            while log_open || ctl_open {
                if let Some(t) = exited_at
                    && t.elapsed() >= drain
                {
                    break;
                }
                let now = Instant::now();
                // Deadlines.
                let mut wait: Option<Duration> =
                    exited_at.map(|t| drain.saturating_sub(t.elapsed()));
                if let (Some(start), None, false) = (started_at, exited_at, kill_sent) {
                    if let Some(max) = self.settings.max_silent_time {
                        let left = max.saturating_sub(now.duration_since(last_output));
                        if left.is_zero() {
                            result.killed_for = Some((
                                BuildStatus::TimedOut,
                                format!(
                                    "{goal} timed out after {} seconds of silence",
                                    max.as_secs()
                                ),
                            ));
                        }
                        wait = Some(wait.map_or(left, |w| w.min(left)));
                    }
                    if let Some(max) = self.settings.timeout
                        && result.killed_for.is_none()
                    {
                        let left = max.saturating_sub(now.duration_since(start));
                        if left.is_zero() {
                            result.killed_for = Some((
                                BuildStatus::TimedOut,
                                format!("{goal} timed out after {} seconds", max.as_secs()),
                            ));
                        }
                        wait = Some(wait.map_or(left, |w| w.min(left)));
                    }
                }
                if let Some(c) = cancel {
                    if c.load(Ordering::SeqCst)
                        && result.killed_for.is_none()
                        && exited_at.is_none()
                    {
                        result.killed_for =
                            Some((BuildStatus::MiscFailure, "interrupted by the user".into()));
                    }
                    // Look at the flag at least this often.
                    let poll = Duration::from_millis(100);
                    wait = Some(wait.map_or(poll, |w| w.min(poll)));
                }
                if result.killed_for.is_some() && !kill_sent {
                    kill_sent = true;
                    let _ = spec::send(ctl.as_fd(), &Request::Kill, &[]);
                    continue;
                }

                let mut fds = Vec::with_capacity(2);
                if log_open {
                    fds.push(PollFd::new(&master, PollFlags::IN));
                }
                if ctl_open {
                    fds.push(PollFd::new(ctl.as_ref(), PollFlags::IN));
                }
                let ts = wait.map(|w| rustix::event::Timespec {
                    tv_sec: i64::try_from(w.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(w.subsec_nanos()).max(if w.is_zero() { 0 } else { 1 }),
                });
                match rustix::event::poll(&mut fds, ts.as_ref()) {
                    Ok(_) => {}
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(Error::io("poll", e)),
                }
                let mut idx = 0;
                let log_ready = log_open && {
                    let r = !fds[idx].revents().is_empty();
                    idx += 1;
                    r
                };
                let ctl_ready = ctl_open && !fds[idx].revents().is_empty();
                drop(fds);

                if log_ready {
                    match rustix::io::read(&master, &mut buf) {
                        Ok(0) | Err(Errno::IO) => log_open = false,
                        Ok(n) => {
                            let data = buf.get(..n).unwrap_or_default();
                            last_output = Instant::now();
                            log_size += n as u64;
                            if let Some(max) = self.settings.max_log_size
                                && log_size > max
                                && result.killed_for.is_none()
                            {
                                result.killed_for = Some((
                                    BuildStatus::LogLimitExceeded,
                                    format!(
                                        "{goal} killed after writing more than {max} bytes of log output"
                                    ),
                                ));
                            }
                            if !kill_sent {
                                events.log_chunk(data);
                                splitter.feed(data, &mut |l| match l {
                                    LogLine::Text(t) => events.log_line(t),
                                    LogLine::Structured(j) => events.structured_log(j),
                                });
                            }
                        }
                        Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                        Err(e) => return Err(Error::io("reading the build log", e)),
                    }
                }
                if ctl_ready {
                    match spec::recv::<Event>(ctl.as_fd()) {
                        Ok(Some((
                            Event::Started {
                                pid,
                                user_namespace,
                                setup_us,
                            },
                            _,
                        ))) => {
                            let now = Instant::now();
                            started_at = Some(now);
                            last_output = now;
                            result.setup_time = Duration::from_micros(setup_us);
                            events.started(&BuildStarted {
                                pid,
                                host_build_dir: host_dir.to_owned(),
                                sandboxed,
                                user_namespace,
                                setup_time: result.setup_time,
                                handle: handle.clone(),
                            });
                        }
                        Ok(Some((
                            Event::SetupFailed {
                                message,
                                sandbox_unavailable,
                            },
                            _,
                        ))) => {
                            result.setup_failed = Some((message, sandbox_unavailable));
                        }
                        Ok(Some((Event::Exited { status }, _))) => {
                            result.status = Some(status);
                            if let Some(s) = started_at {
                                result.run_time = s.elapsed();
                            }
                            handle.inner.finished.store(true, Ordering::SeqCst);
                            exited_at.get_or_insert_with(Instant::now);
                        }
                        Ok(None) | Err(_) => {
                            ctl_open = false;
                            handle.inner.finished.store(true, Ordering::SeqCst);
                            exited_at.get_or_insert_with(Instant::now);
                        }
                    }
                }
            }
            Ok(())
        })();
        splitter.finish(&mut |l| match l {
            LogLine::Text(t) => events.log_line(t),
            LogLine::Structured(j) => events.structured_log(j),
        });
        handle.inner.finished.store(true, Ordering::SeqCst);
        if looped.is_err() {
            // We stop watching: the build must not go on without us. (Closing our end
            // would do, but handles handed out to other threads may keep it open.)
            let _ = spec::send(ctl.as_fd(), &Request::Kill, &[]);
        }
        // The helper exits on its own after `Exited`.
        drop(ctl);
        let helper_status = child
            .wait()
            .map_err(|e| Error::io("waiting for the build helper", e))?;
        looped?;
        // A helper that died before starting the builder is a setup failure; after, the
        // build's status is unknown (MiscFailure, decided by the caller).
        if result.status.is_none() && result.setup_failed.is_none() && started_at.is_none() {
            result.setup_failed =
                Some((format!("the build helper failed ({helper_status})"), false));
        }
        Ok((result, handle.added_paths()))
    }
}

enum Attempt {
    Done(BuildOutcome),
    Fallback(String),
}

struct HandleParts {
    store: StoreLoc,
    chroot: Option<ChrootLoc>,
    allowed: BTreeSet<StorePath>,
    bind_files: bool,
}

/// Runs `pre-build-hook` as `<hook> <drv path> <chroot root>` and parses what it prints.
fn run_pre_build_hook(
    hook: &Path,
    drv: &str,
    root: &Path,
) -> std::result::Result<Vec<(String, String)>, String> {
    use std::io::Read;
    let mut child = Command::new(hook)
        .arg(drv)
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("executing '{}': {e}", hook.display()))?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = (&mut stdout).take(1 << 20).read_to_string(&mut out);
        // Keep the hook from blocking on a full pipe; what is beyond the limit is dropped.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for '{}': {e}", hook.display()))?;
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        return Err(format!(
            "program '{}' {}",
            hook.display(),
            status_to_string(status.into_raw())
        ));
    }
    crate::chroot::parse_pre_build_hook(&out)
}

/// `/proc/sys/user/max_user_namespaces` exists and is not 0.
pub fn user_namespaces_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim() != "0")
        .unwrap_or(false)
}

/// CppNix's heuristic: less than 8 MiB free on the store's or the build dir's file system.
fn disk_looks_full(store: &Path, build_dir: &Path) -> bool {
    const REQUIRED: u64 = 8 * 1024 * 1024;
    [store, build_dir].iter().any(|p| {
        rustix::fs::statvfs(*p)
            .map(|s| s.f_bavail.saturating_mul(s.f_bsize) < REQUIRED)
            .unwrap_or(false)
    })
}
