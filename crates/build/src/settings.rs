//! Build settings: the `nix.conf` options a local build obeys, with CppNix 2.8's defaults.
//!
//! The daemon parses `nix.conf` (and trusted clients' overrides) and fills this in; this
//! crate never reads configuration files or its own environment for settings.
//!
//! | field | `nix.conf` option | default |
//! |---|---|---|
//! | `sandbox` | `sandbox` (`true`/`false`/`relaxed`) | `true` (Linux) |
//! | `sandbox_fallback` | `sandbox-fallback` | `true` |
//! | `sandbox_paths` | `sandbox-paths` + `extra-sandbox-paths` | empty (Debian's 2.8) |
//! | `sandbox_build_dir` | `sandbox-build-dir` | `/build` |
//! | `sandbox_dev_shm_size` | `sandbox-dev-shm-size` | `50%` |
//! | `build_dir` | `build-dir` | `<state dir>/builds` (as Nix ≥ 2.30) |
//! | `cores` | `cores` | number of CPUs |
//! | `timeout` | `timeout` (seconds, 0 = none) | 0 |
//! | `max_silent_time` | `max-silent-time` | 0 |
//! | `max_log_size` | `max-build-log-size` (bytes, 0 = none) | 0 |
//! | `log_lines` | `log-lines` | 10 |
//! | `keep_failed` | `keep-failed` | false |
//! | `filter_syscalls` | `filter-syscalls` | true |
//! | `allow_new_privileges` | `allow-new-privileges` | false |
//! | `system` | `system` | `x86_64-linux` etc. |
//! | `extra_platforms` | `extra-platforms` | empty |
//! | `system_features` | `system-features` | `benchmark big-parallel nixos-test` (+`kvm` when `/dev/kvm` exists) |
//! | `impersonate_linux_26` | `impersonate-linux-26` | false |
//! | `pre_build_hook` | `pre-build-hook` | none |

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// `sandbox = true | false | relaxed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxMode {
    /// Every build is sandboxed (`__noChroot` is an error).
    Enabled,
    /// No build is sandboxed.
    Disabled,
    /// Sandboxed unless fixed-output/impure or `__noChroot = true`.
    Relaxed,
}

/// How to start the build helper: a program plus leading arguments. The daemon passes
/// its own executable and a hidden subcommand; tests pass `nixnest-build-helper`. The
/// program must end up calling [`crate::helper_main`].
#[derive(Clone, Debug)]
pub struct HelperCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl HelperCommand {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        HelperCommand {
            program: program.into(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// Everything configurable about a local build. See the module docs for the options.
#[derive(Clone, Debug)]
pub struct BuildSettings {
    pub sandbox: SandboxMode,
    pub sandbox_fallback: bool,
    /// Raw entries: `path`, `target=source`, each optionally ending in `?`.
    pub sandbox_paths: Vec<String>,
    pub sandbox_build_dir: String,
    pub sandbox_dev_shm_size: String,
    /// Parent of the per-build directories; `None` = `<state dir>/builds`.
    pub build_dir: Option<PathBuf>,
    pub cores: u64,
    /// `None` = no limit.
    pub timeout: Option<Duration>,
    pub max_silent_time: Option<Duration>,
    /// `None` = no limit.
    pub max_log_size: Option<u64>,
    pub log_lines: usize,
    pub keep_failed: bool,
    pub filter_syscalls: bool,
    pub allow_new_privileges: bool,
    pub system: String,
    pub extra_platforms: BTreeSet<String>,
    pub system_features: BTreeSet<String>,
    pub impersonate_linux_26: bool,
    /// `pre-build-hook`: run as `<hook> <drv path> <chroot root>` before sandboxed builds;
    /// its stdout may add sandbox paths (see [`crate::chroot::parse_pre_build_hook`]).
    pub pre_build_hook: Option<std::path::PathBuf>,
    /// The program that runs [`crate::helper_main`].
    pub helper: HelperCommand,
}

impl BuildSettings {
    /// CppNix 2.8's defaults on this machine, with the given helper.
    pub fn new(helper: HelperCommand) -> Self {
        let mut system_features: BTreeSet<String> = ["benchmark", "big-parallel", "nixos-test"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if std::path::Path::new("/dev/kvm").exists() {
            system_features.insert("kvm".to_owned());
        }
        BuildSettings {
            sandbox: SandboxMode::Enabled,
            sandbox_fallback: true,
            sandbox_paths: Vec::new(),
            sandbox_build_dir: "/build".to_owned(),
            sandbox_dev_shm_size: "50%".to_owned(),
            build_dir: None,
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
            timeout: None,
            max_silent_time: None,
            max_log_size: None,
            log_lines: 10,
            keep_failed: false,
            filter_syscalls: true,
            allow_new_privileges: false,
            system: native_system().to_owned(),
            extra_platforms: BTreeSet::new(),
            system_features,
            impersonate_linux_26: false,
            pre_build_hook: None,
            helper,
        }
    }
}

/// The Nix system type of the machine this was compiled for.
pub fn native_system() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "x86_64-linux"
    } else if cfg!(target_arch = "aarch64") {
        "aarch64-linux"
    } else if cfg!(target_arch = "x86") {
        "i686-linux"
    } else if cfg!(target_arch = "riscv64") {
        "riscv64-linux"
    } else {
        "unknown-linux"
    }
}
