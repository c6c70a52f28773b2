//! Timeouts, silence, log floods and failures: the whole process tree dies, the status and
//! message are CppNix's, and the build dir is removed or kept as asked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Collect, Fx, processes_of_uid};
use nixnest_build::BuildStatus;
use nixnest_testkit::Derivation as Expr;

/// A builder that leaves a daemonised grandchild ignoring SIGTERM/SIGHUP in its own
/// session, then sleeps.
const ESCAPER: &str = "setsid sh -c 'trap \"\" TERM HUP INT; while true; do sleep 1; done' </dev/null >/dev/null 2>&1 & \
                       echo started; sleep 1000";

#[test]
fn timeout_kills_the_whole_tree() {
    require_env!();
    let fx = Fx::new(1);
    let (drv_path, drv) = fx.instantiate("slow.nix", &Expr::new("slow", ESCAPER).to_nix());
    let lease = fx.lease();
    let mut settings = common::settings();
    settings.timeout = Some(Duration::from_secs(2));
    let mut ev = Collect::default();
    let out = fx.build_as(&drv_path, &drv, &settings, Some(&lease), &mut ev);
    assert_eq!(out.status, BuildStatus::TimedOut, "{:?}", out.error_msg);
    assert_eq!(
        out.error_msg.as_deref().unwrap(),
        format!(
            "building of '{}!out' from .drv file timed out after 2 seconds",
            fx.print(&drv_path)
        )
    );
    assert_eq!(ev.lines, ["started"]);
    let left = processes_of_uid(lease.uid);
    assert!(
        left.is_empty(),
        "processes of the build user survived: {left:?}"
    );
    assert!(
        !fx.store
            .real_store_dir()
            .join(format!("{drv_path}.chroot"))
            .exists()
    );
}

#[test]
fn silence_and_log_floods_are_killed() {
    require_env!();
    let fx = Fx::new(1);
    // max-silent-time: output once, then nothing.
    let (drv_path, drv) = fx.instantiate("quiet.nix", &Expr::new("quiet", ESCAPER).to_nix());
    let lease = fx.lease();
    let mut settings = common::settings();
    settings.max_silent_time = Some(Duration::from_secs(1));
    let out = fx.build_as(
        &drv_path,
        &drv,
        &settings,
        Some(&lease),
        &mut Collect::default(),
    );
    assert_eq!(out.status, BuildStatus::TimedOut);
    assert_eq!(
        out.error_msg.as_deref().unwrap(),
        format!(
            "building of '{}!out' from .drv file timed out after 1 seconds of silence",
            fx.print(&drv_path)
        )
    );
    assert!(processes_of_uid(lease.uid).is_empty());
    drop(lease);

    // max-build-log-size: a builder that never stops talking.
    let (drv_path, drv) = fx.instantiate(
        "flood.nix",
        &Expr::new(
            "flood",
            "while true; do echo 0123456789012345678901234567890123456789; done",
        )
        .to_nix(),
    );
    let lease = fx.lease();
    let mut settings = common::settings();
    settings.max_log_size = Some(100_000);
    let mut ev = Collect::default();
    let out = fx.build_as(&drv_path, &drv, &settings, Some(&lease), &mut ev);
    assert_eq!(out.status, BuildStatus::LogLimitExceeded);
    assert_eq!(
        out.error_msg.as_deref().unwrap(),
        format!(
            "building of '{}!out' from .drv file killed after writing more than 100000 bytes of log output",
            fx.print(&drv_path)
        )
    );
    let seen: usize = ev.lines.iter().map(|l| l.len() + 1).sum();
    assert!(
        seen <= 100_000 + 64 * 1024,
        "read {seen} bytes after the limit"
    );
    assert!(processes_of_uid(lease.uid).is_empty());
}

#[test]
fn failures_keep_the_build_dir_only_when_asked() {
    require_env!();
    let fx = Fx::new(1);
    let (drv_path, drv) = fx.instantiate(
        "fail.nix",
        &Expr::new(
            "fail",
            "echo partial > /build/state; echo '@nix {\"action\":\"msg\",\"level\":0,\"msg\":\"structured\"}'; exit 7",
        )
        .to_nix(),
    );
    let mut ev = Collect::default();
    let out = fx.build_with(&drv_path, &drv, &common::settings(), &mut ev);
    assert_eq!(out.status, BuildStatus::PermanentFailure);
    assert_eq!(
        out.error_msg.as_deref().unwrap(),
        format!(
            "builder for '{}' failed with exit code 7",
            fx.print(&drv_path)
        )
    );
    assert!(ev.notes.is_empty());
    // `@nix` lines are structured messages, not log lines (nor part of the failure tail).
    assert_eq!(
        ev.structured,
        [r#"{"action":"msg","level":0,"msg":"structured"}"#]
    );
    assert!(ev.lines.is_empty(), "{:?}", ev.lines);
    let builds = fx.ts.state_dir().join("builds");
    assert_eq!(std::fs::read_dir(&builds).unwrap().count(), 0);

    let mut settings = common::settings();
    settings.keep_failed = true;
    let mut ev = Collect::default();
    let out = fx.build_with(&drv_path, &drv, &settings, &mut ev);
    assert_eq!(out.status, BuildStatus::PermanentFailure);
    let kept = ev.notes[0]
        .strip_prefix("note: keeping build directory '")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap()
        .to_owned();
    let kept = std::path::Path::new(&kept);
    assert_eq!(
        std::fs::read_to_string(kept.join("state")).unwrap(),
        "partial\n"
    );
    assert_eq!(
        std::fs::metadata(kept).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(kept.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    // A builder that cannot even start.
    let (drv_path, drv) = fx.instantiate(
        "nobuilder.nix",
        "derivation { name = \"nobuilder\"; system = builtins.currentSystem; builder = \"/no/such/builder\"; }",
    );
    let out = fx.build_with(
        &drv_path,
        &drv,
        &common::settings(),
        &mut Collect::default(),
    );
    assert_eq!(out.status, BuildStatus::PermanentFailure);
    let msg = out.error_msg.unwrap();
    assert!(
        msg.contains("failed with exit code 1")
            && msg.contains("> error: executing '/no/such/builder': No such file or directory"),
        "{msg}"
    );
}

#[test]
fn unsandboxed_builds_still_use_build_users() {
    require_env!();
    let fx = Fx::new(1);
    let (drv_path, drv) = fx.instantiate(
        "plain.nix",
        &Expr::new(
            "plain",
            "id -u > $out; echo $NIX_BUILD_TOP >> $out; setsid sleep 1000 & echo done",
        )
        .to_nix(),
    );
    let lease = fx.lease();
    let mut settings = common::settings();
    settings.sandbox = nixnest_build::SandboxMode::Disabled;
    let out = fx.build_as(
        &drv_path,
        &drv,
        &settings,
        Some(&lease),
        &mut Collect::default(),
    );
    assert_eq!(out.status, BuildStatus::Built, "{:?}", out.error_msg);
    assert!(!out.sandboxed);
    let text = fx.read_output(&out, "out");
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), lease.uid.to_string());
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with(&*fx.ts.state_dir().join("builds").to_string_lossy())
    );
    // The background sleep was killed with the rest of the build user's processes.
    assert!(processes_of_uid(lease.uid).is_empty());
}

#[test]
fn cancelling_kills_the_build() {
    require_env!();
    let fx = Fx::new(1);
    let (drv_path, drv) = fx.instantiate("cancel.nix", &Expr::new("cancel", ESCAPER).to_nix());
    let lease = fx.lease();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let settings = common::settings();
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut job = nixnest_build::BuildJob::new(drv_path.clone(), &drv, fx.inputs(&drv));
        job.build_user = Some(&lease);
        job.cancel = Some(&cancel);
        nixnest_build::Builder::new(&fx.store, &settings)
            .build(&job, &mut Collect::default())
            .unwrap()
    });
    assert_eq!(out.status, BuildStatus::MiscFailure);
    assert_eq!(out.error_msg.as_deref(), Some("interrupted by the user"));
    assert!(processes_of_uid(lease.uid).is_empty());
}

#[test]
fn a_dying_helper_takes_the_build_with_it() {
    require_env!();
    let fx = Fx::new(1);
    let (drv_path, drv) = fx.instantiate("orphan.nix", &Expr::new("orphan", ESCAPER).to_nix());
    let lease = fx.lease();
    let mut ev = Collect {
        on_started: Some(Box::new(|s| {
            // The builder's parent is the helper: kill it hard, as a crash would.
            let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid)).unwrap();
            let ppid: i32 = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(ppid).unwrap(),
                rustix::process::Signal::KILL,
            )
            .unwrap();
        })),
        ..Collect::default()
    };
    let out = fx.build_as(&drv_path, &drv, &common::settings(), Some(&lease), &mut ev);
    assert_eq!(out.status, BuildStatus::MiscFailure, "{:?}", out.error_msg);
    // The builder had asked to die with its helper; its pid namespace went with it.
    for _ in 0..50 {
        if processes_of_uid(lease.uid).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_of_uid(lease.uid).is_empty(),
        "{:?}",
        processes_of_uid(lease.uid)
    );
}
