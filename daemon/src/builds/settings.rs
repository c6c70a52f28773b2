//! From the daemon's [`Settings`] (a session's copy, with its client's `SetOptions`
//! applied) to the builder's [`BuildSettings`].
//!
//! | `nix.conf` | `BuildSettings` | note |
//! |---|---|---|
//! | `sandbox`, `sandbox-fallback` | `sandbox`, `sandbox_fallback` | |
//! | `sandbox-paths` (+ `extra-`) | `sandbox_paths` | rendered back to `inside[=source][?]` |
//! | `sandbox-build-dir`, `sandbox-dev-shm-size` | same | |
//! | `build-dir` | `build_dir` | unset = `<state>/builds` |
//! | `cores` | `cores` | passed verbatim, `0` included (CppNix 2.8) |
//! | `timeout`, `max-silent-time` | `timeout`, `max_silent_time` | `0` = none |
//! | `max-build-log-size` | `max_log_size` | `0` = none |
//! | `log-lines`, `keep-failed` | same | |
//! | `filter-syscalls`, `allow-new-privileges`, `impersonate-linux-26` | same | |
//! | `system`, `extra-platforms`, `system-features` | same | `recursive-nix` added when it is in `experimental-features` |
//! | `pre-build-hook` | `pre_build_hook` | empty = none |
//!
//! The helper command is the daemon's own executable with the hidden
//! [`HELPER_SUBCOMMAND`] (see `main.rs`); tests pass another one.
//!
//! Who builds as whom follows CppNix 2.8 and is decided by the builder crate: build users
//! when the daemon runs as root with a non-empty `build-users-group`; otherwise builds run
//! with the daemon's own uid — as root too, when root has no build-users group (sandboxed
//! builds then see uid 1000 inside a user namespace). nixnest does not refuse that
//! configuration, as CppNix does not; it is the administrator's choice.

use std::path::PathBuf;
use std::time::Duration;

use nixnest_build::{BuildSettings, HelperCommand, SandboxMode as BuildSandbox};

use crate::config::{SandboxMode, Settings};

/// The hidden first argument that makes `nixnest-daemon` run as a build helper.
pub const HELPER_SUBCOMMAND: &str = "__build-helper";

/// The daemon's own executable running [`HELPER_SUBCOMMAND`].
pub fn own_helper() -> std::io::Result<HelperCommand> {
    let exe: PathBuf = std::env::current_exe()?;
    Ok(HelperCommand::new(exe).arg(HELPER_SUBCOMMAND))
}

fn seconds(s: u64) -> Option<Duration> {
    (s != 0).then(|| Duration::from_secs(s))
}

/// The builder's settings for `settings`.
pub fn build_settings(settings: &Settings, helper: &HelperCommand) -> BuildSettings {
    let mut b = BuildSettings::new(helper.clone());
    b.sandbox = match settings.sandbox {
        SandboxMode::Enabled => BuildSandbox::Enabled,
        SandboxMode::Disabled => BuildSandbox::Disabled,
        SandboxMode::Relaxed => BuildSandbox::Relaxed,
    };
    b.sandbox_fallback = settings.sandbox_fallback;
    b.sandbox_paths = settings
        .sandbox_paths
        .0
        .iter()
        .map(|(inside, p)| {
            let mut entry = inside.clone();
            if p.source != *inside {
                entry.push('=');
                entry.push_str(&p.source);
            }
            if p.optional {
                entry.push('?');
            }
            entry
        })
        .collect();
    b.sandbox_build_dir = settings.sandbox_build_dir.0.display().to_string();
    b.sandbox_dev_shm_size = settings.sandbox_dev_shm_size.clone();
    b.build_dir = Some(settings.build_dir());
    b.cores = u64::from(settings.cores);
    b.timeout = seconds(settings.timeout);
    b.max_silent_time = seconds(settings.max_silent_time);
    b.max_log_size = (settings.max_build_log_size != 0).then_some(settings.max_build_log_size);
    b.log_lines = settings.log_lines;
    b.keep_failed = settings.keep_failed;
    b.filter_syscalls = settings.filter_syscalls;
    b.allow_new_privileges = settings.allow_new_privileges;
    b.system = settings.system.clone();
    b.extra_platforms = settings.extra_platforms.clone();
    b.system_features = settings.system_features.clone();
    // As CppNix: with the experimental feature on, the store offers the system feature,
    // so that derivations requiring it can be built here (and get a per-build socket).
    if settings.has_experimental_feature(crate::recursive::FEATURE) {
        b.system_features
            .insert(crate::recursive::FEATURE.to_owned());
    }
    b.impersonate_linux_26 = settings.impersonate_linux_26;
    b.pre_build_hook =
        (!settings.pre_build_hook.is_empty()).then(|| PathBuf::from(&settings.pre_build_hook));
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigEnv;

    fn settings() -> Settings {
        let env = ConfigEnv::from_vars(|_| None, None).unwrap();
        Settings::defaults(&env)
    }

    #[test]
    fn every_option_is_carried_over() {
        let mut s = settings();
        for (k, v) in [
            ("sandbox", "relaxed"),
            ("sandbox-fallback", "false"),
            (
                "sandbox-paths",
                "/bin/sh=/store/x-bb/bin/sh /etc/a /opt/b=/srv/b? /c?",
            ),
            ("sandbox-build-dir", "/b"),
            ("sandbox-dev-shm-size", "10%"),
            ("build-dir", "/var/builds"),
            ("cores", "0"),
            ("timeout", "7"),
            ("max-silent-time", "0"),
            ("max-build-log-size", "1K"),
            ("log-lines", "3"),
            ("keep-failed", "true"),
            ("filter-syscalls", "false"),
            ("allow-new-privileges", "true"),
            ("system", "aarch64-linux"),
            ("extra-platforms", "armv7l-linux"),
            ("system-features", "kvm big"),
            ("impersonate-linux-26", "true"),
            ("pre-build-hook", "/usr/bin/hook"),
        ] {
            s.set(k, v).unwrap();
        }
        let h = HelperCommand::new("/x/nixnest-daemon").arg(HELPER_SUBCOMMAND);
        let b = build_settings(&s, &h);
        assert_eq!(b.sandbox, BuildSandbox::Relaxed);
        assert!(!b.sandbox_fallback);
        assert_eq!(
            b.sandbox_paths,
            [
                "/bin/sh=/store/x-bb/bin/sh",
                "/c?",
                "/etc/a",
                "/opt/b=/srv/b?"
            ]
        );
        assert_eq!(b.sandbox_build_dir, "/b");
        assert_eq!(b.sandbox_dev_shm_size, "10%");
        assert_eq!(b.build_dir, Some(PathBuf::from("/var/builds")));
        assert_eq!(b.cores, 0);
        assert_eq!(b.timeout, Some(Duration::from_secs(7)));
        assert_eq!(b.max_silent_time, None);
        assert_eq!(b.max_log_size, Some(1024));
        assert_eq!(b.log_lines, 3);
        assert!(b.keep_failed && !b.filter_syscalls && b.allow_new_privileges);
        assert_eq!(b.system, "aarch64-linux");
        assert!(b.extra_platforms.contains("armv7l-linux"));
        assert_eq!(
            b.system_features
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["big", "kvm"]
        );
        assert!(b.impersonate_linux_26);
        assert_eq!(b.pre_build_hook, Some(PathBuf::from("/usr/bin/hook")));
        assert_eq!(b.helper.program, PathBuf::from("/x/nixnest-daemon"));
        assert_eq!(b.helper.args, [HELPER_SUBCOMMAND]);
    }

    #[test]
    fn defaults_follow_cppnix() {
        let s = settings();
        let b = build_settings(&s, &HelperCommand::new("/h"));
        assert_eq!(b.sandbox, BuildSandbox::Enabled);
        assert_eq!(b.timeout, None);
        assert_eq!(b.max_log_size, None);
        assert_eq!(b.pre_build_hook, None);
        assert_eq!(b.sandbox_build_dir, "/build");
        assert_eq!(b.build_dir, Some(s.state_dir.join("builds")));
    }
}
