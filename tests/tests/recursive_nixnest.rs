//! Recursive Nix with nixnest-daemon end to end, beyond the example
//! (`recursive_example.rs`): the host's `nix-build` 2.8 outside, the Nix 2.8 client bundle
//! inside the builds, real sandboxes and build users.
//!
//! | test | what it holds nixnest to |
//! |---|---|
//! | [`inner_results_are_real_dependencies`] | the outer output refers to the inner result; GC after the build keeps it; a path the outputs do not mention survives GC while the build runs and is collected after |
//! | [`nesting_to_depth_three_and_past_the_limit`] | three levels of builds, each building the next; a fourth is refused with a clear error |
//! | [`nesting_deeper_than_the_build_users_fails_instead_of_hanging`] | one level more than there are build users: the last level fails at once, saying why |
//! | [`without_the_experimental_feature_like_upstream`] | `recursive-nix` not enabled: the derivation is refused with nix-daemon 2.8's words |
//! | [`the_view_inside_per_build_socket`], [`the_view_inside_seed_style`] | inside the build: paths outside the view are invalid and unreadable, `nix-store --gc` deletes nothing, `--option sandbox false` is refused (warned) and has no effect |
//! | [`build_users_without_a_build_are_rejected`] | seed style on: a build user with no running build is closed unanswered; the daemon makes the socket dir searchable |
//! | [`build_users_are_rejected_like_upstream_when_off`] | seed style off: nixnest refuses build users with nix-daemon 2.8's words, the client fails the same way |
//! | [`cancelling_the_outer_build_kills_the_inner_one`] | interrupting the client kills the outer and the nested build and frees both build users |
//! | [`a_hostile_build_disturbs_no_one_else`] | a build flooding the daemon with connections and garbage imports costs only itself |
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod recursive_support;

use std::path::Path;
use std::time::Duration;

use nixnest_testkit::*;
use recursive_support::{Background, Rec, Setup, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// `nix-store --gc` through the daemon; the paths it deleted.
fn gc(r: &Rec) -> String {
    let out = r.nix("nix-store").arg("--gc").run_output();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn inner_results_are_real_dependencies() {
    let Some(r) = Rec::start(Setup::default()) else {
        return;
    };
    // The outer build builds `inner`, adds a file it never mentions, then waits for the
    // test's go-ahead (a file in its build dir) before writing its output.
    let expr = r.expr(
        "gc.nix",
        &[],
        r#"lib.outer "gc-outer" ''
          result=$(nix-build --no-out-link ${inner} --argstr bb ${lib.busybox} --argstr text FOO)
          echo "outer: inner output contents: $(head -1 $result)"
          echo unmentioned > $TMPDIR/loose
          loose=$(nix-store --add $TMPDIR/loose)
          test -e $loose
          while [ ! -e /build/go ]; do sleep 0.1; done
          echo $result > $out
        '' {}"#,
    );
    let result_link = r.store.root().join("result");
    let mut cmd = r.build_command(&expr, &[]);
    cmd.arg("-o").arg(&result_link);
    let build = Background::spawn(cmd, r.store.root(), "gc-build");

    assert!(
        eventually(WAIT, || !r.paths_named("loose").is_empty()
            && r.build_dir_of("gc-outer").is_some()),
        "the outer build did not get to its wait:\n{}",
        build.stderr()
    );
    let loose = r.paths_named("loose").remove(0);
    let inner = r.paths_named("inside-FOO").remove(0);

    // While the build runs, its temp roots keep both.
    let log = gc(&r);
    assert!(Path::new(&loose).exists(), "{log}");
    assert!(Path::new(&inner).exists(), "{log}");

    std::fs::write(r.build_dir_of("gc-outer").unwrap().join("go"), "").unwrap();
    let (ok, stdout, stderr) = build.wait(WAIT);
    assert!(ok, "{stderr}\n{}", r.daemon.log());
    let outer = stdout;
    assert_eq!(std::fs::read_to_string(&outer).unwrap().trim(), inner);
    assert!(
        stderr.contains("outer: inner output contents: FOO"),
        "{stderr}"
    );
    let refs = r
        .nix("nix-store")
        .args(["-q", "--references", &outer])
        .run();
    assert_eq!(refs, inner);

    // After the build: the outer output is rooted by `result`, the inner one kept by the
    // reference; the unmentioned path is garbage now.
    let log = gc(&r);
    assert!(Path::new(&outer).exists(), "{log}");
    assert_eq!(
        std::fs::read_to_string(&inner).unwrap().lines().next(),
        Some("FOO")
    );
    assert!(!Path::new(&loose).exists(), "{loose} survived:\n{log}");
}

/// levels.nix: level L builds level L+1 until `levels`, each with its own per-build
/// socket; the output lists what every level below produced.
const LEVELS_NIX: &str = r#"
{ nix, bb, self, level ? "1", levels ? "3" }:
let
  nixBundle = builtins.storePath nix;
  busybox = builtins.storePath bb;
  me = builtins.storePath self;
in derivation {
  name = "level-${level}-of-${levels}";
  system = builtins.currentSystem;
  builder = "${busybox}/bin/sh";
  PATH = "${nixBundle}/bin:${busybox}/bin";
  requiredSystemFeatures = [ "recursive-nix" ];
  args = [ "-euc" ''
    export NIX_STORE_DIR=$NIX_STORE HOME=$TMPDIR NIX_PAGER=cat
    export NIX_STATE_DIR=$TMPDIR/nix/var NIX_LOG_DIR=$TMPDIR/nix/log NIX_CONF_DIR=$TMPDIR/nix/etc
    echo "level ${level}" > $out
    if [ ${level} -lt ${levels} ]; then
      next=$(nix-build --no-out-link ${me} --argstr nix ${nixBundle} --argstr bb ${busybox} \
        --argstr self ${me} --argstr level $((${level} + 1)) --argstr levels ${levels})
      cat $next >> $out
    fi
  '' ];
}
"#;

#[test]
fn nesting_to_depth_three_and_past_the_limit() {
    let Some(r) = Rec::start(Setup {
        users: 3,
        ..Setup::default()
    }) else {
        return;
    };
    let build = |n: &str| build_levels(&r, n);

    // Depth 3 (the default `recursive-nix-max-depth`): three builds, each inside the last.
    let out = r.built(&build("3"));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "level 1\nlevel 2\nlevel 3\n"
    );
    assert_eq!(r.paths_named("level-3-of-3").len(), 1);

    // A fourth level: the build at depth 3 may not start builds.
    let out = build("4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let level3 = r.paths_named("level-3-of-4.drv");
    assert_eq!(level3.len(), 1, "{stderr}");
    let expected = format!(
        "recursive Nix is nested too deeply: '{}' runs at depth 3 and 'recursive-nix-max-depth' is 3, so it cannot start builds",
        level3[0]
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(r.paths_named("level-4-of-4").is_empty());
}

/// Builds `levels.nix` (added to the store) with `levels` levels.
fn build_levels(r: &Rec, levels: &str) -> std::process::Output {
    let file = r.store.write("levels.nix", LEVELS_NIX);
    let me = r.nix("nix-store").arg("--add").arg(&file).run();
    r.nix("nix-build")
        .arg(&me)
        .arg("--no-out-link")
        .args(["--argstr", "nix", &r.nix])
        .args(["--argstr", "bb", &r.bb])
        .args(["--argstr", "self", &me])
        .args(["--argstr", "levels", levels])
        .run_unchecked()
}

#[test]
fn nesting_deeper_than_the_build_users_fails_instead_of_hanging() {
    let Some(r) = Rec::start(Setup {
        options: &[("recursive-nix-max-depth", "32")],
        ..Setup::default()
    }) else {
        return;
    };
    // The pool is every member of the group (a private group may have more members than
    // this test asked for). One level per build user, plus one: the last level waits for a
    // user while all of them are held by the levels above it, none of which can end.
    let group = r.store.build_users().unwrap().group().to_owned();
    let (_, members) = nixnest_testkit::users::lookup_group(&group).unwrap();
    let n = members.len();
    let out = build_levels(&r, &(n + 1).to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let waiting_parent = r.paths_named(&format!("level-{n}-of-{}.drv", n + 1));
    assert_eq!(waiting_parent.len(), 1, "{stderr}");
    let expected = format!(
        "no build user can become free for a nested build of '{}': all {n} build users are held by builds that wait for nested builds ({n} by this build and the builds it runs inside)",
        waiting_parent[0]
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        eventually(WAIT, || r.running_builds().is_empty()
            && r.busy_build_users() == 0),
        "{:?}",
        r.running_builds()
    );
}

#[test]
fn without_the_experimental_feature_like_upstream() {
    if let Some(why) = recursive_support::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let store = TestStore::builder()
        .sandbox(true)
        .build_users(BuildUsers::private(1))
        .build();
    let probe = Derivation::new("wants-recursive-nix", "echo > $out")
        .attr("requiredSystemFeatures", r#"[ "recursive-nix" ]"#);
    let expr = store.write_expr("probe.nix", &probe.to_nix());
    let refusal = |d: &Daemon| {
        let out = store
            .client(Client::Host)
            .daemon(d)
            .command("nix-build")
            .arg(&expr)
            .arg("--no-out-link")
            .run_unchecked();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{stderr}");
        stderr
            .lines()
            .find(|l| l.contains("with features {recursive-nix} is required to build"))
            .unwrap_or_else(|| panic!("{}: {stderr}", d.name()))
            .to_owned()
    };
    let upstream = refusal(&store.nix_daemon(Client::Host).start());
    let ours = refusal(
        &store
            .daemon("nixnest", try_cargo_bin("nixnest-daemon").unwrap())
            .start(),
    );
    assert_eq!(ours, upstream);
}

/// An outer build that tries what its view forbids and reports what happened.
fn probe_the_view(r: &Rec) {
    // Outside the view: a valid path the build has no dependency on (its path reaches the
    // build as a plain string) and that nothing roots.
    let hidden_file = r.store.write("hidden.txt", "secret\n");
    let hidden = r.nix("nix-store").arg("--add").arg(&hidden_file).run();
    let expr = r.expr(
        "probe.nix",
        &["hidden"],
        r#"lib.outer "probe" ''
          echo "socket: $(stat -c '%F %a %U' /build/.nix-socket 2>/dev/null || echo none)"
          if nix-store -q --references ${hidden} 2>$TMPDIR/err; then echo "query: visible"
          else echo "query: $(cat $TMPDIR/err)"; fi
          if nix-store -q --hash ${hidden} 2>/dev/null; then echo "hash: visible"
          else echo "hash: invalid"; fi
          if cat ${hidden} 2>/dev/null; then echo "read: visible"; else echo "read: unreadable"; fi
          echo "gc: $(nix-store --gc 2>&1 | tail -1)"
          result=$(nix-build --no-out-link --option sandbox false ${inner} \
            --argstr bb ${lib.busybox} --argstr text sandboxed 2>$TMPDIR/err)
          echo "sandbox option: $(grep "'sandbox'" $TMPDIR/err)"
          echo "inner: $(tail -1 $result)"
          echo done > $out
        '' {}"#,
    );
    let out = r.build(&expr, &[("hidden", &hidden)]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    r.built(&out);
    let line = |prefix: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{stderr}"))
            .to_owned()
    };
    // The per-build socket: private to the build user (`nixbld` inside the sandbox).
    let socket = if r.seed { "none" } else { "socket 600 nixbld" };
    assert_eq!(line("socket: "), socket);
    assert_eq!(
        line("query: "),
        format!("error: path '{hidden}' is not valid")
    );
    assert_eq!(line("hash: "), "invalid");
    assert_eq!(line("read: "), "unreadable");
    assert_eq!(line("gc: "), "0 store paths deleted, 0.00 MiB freed");
    assert_eq!(
        line("sandbox option: "),
        "warning: ignoring setting 'sandbox' sent from inside a build"
    );
    // The nested build ran sandboxed all the same (`/build`, not a host directory).
    assert_eq!(line("inner: "), "build dir /build");
    assert!(Path::new(&hidden).exists(), "the GC inside deleted nothing");
}

#[test]
fn the_view_inside_per_build_socket() {
    if let Some(r) = Rec::start(Setup::default()) {
        probe_the_view(&r);
    }
}

#[test]
fn the_view_inside_seed_style() {
    if let Some(r) = Rec::start(Setup {
        seed: true,
        ..Setup::default()
    }) {
        probe_the_view(&r);
    }
}

/// A client running as a build user (host side, via `setpriv`).
fn as_build_user(r: &Rec, socket: &Path) -> std::process::Output {
    let user = r.store.build_users().unwrap().users()[0].clone();
    r.store
        .client(Client::Host)
        .socket(socket)
        .user(&user)
        .command("nix-store")
        .args(["-q", "--hash", &r.bb])
        .run_unchecked()
}

#[test]
fn build_users_without_a_build_are_rejected() {
    use std::os::unix::fs::PermissionsExt;
    if let Some(why) = recursive_support::skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    // A socket directory build users cannot traverse: the daemon opens it (o+x) itself
    // when seed style is on.
    let probe = TestStore::new();
    std::fs::set_permissions(
        probe.root().join("s"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let d = probe
        .daemon("nixnest", try_cargo_bin("nixnest-daemon").unwrap())
        .option("allow-build-user-connections", "true")
        .start();
    let mode = std::fs::metadata(probe.root().join("s"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o011, 0o011, "{mode:o}");
    drop(d);

    let Some(r) = Rec::start(Setup {
        seed: true,
        ..Setup::default()
    }) else {
        return;
    };
    let user = &r.store.build_users().unwrap().users()[0];
    let out = as_build_user(&r, r.daemon.socket());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: cannot open connection to remote store '{}'",
            r.daemon.uri()
        )),
        "{stderr}"
    );
    let wanted = format!(
        "error processing connection: user '{}' is a build user, but no build is running as that user",
        user.name
    );
    assert!(
        eventually(Duration::from_secs(10), || r.daemon.log().contains(&wanted)),
        "{}",
        r.daemon.log()
    );
    // The daemon is fine, and serves the same user during a build (the example).
    let out = r.build(&recursive_support::example_dir().join("outer.nix"), &[]);
    let outer = r.built(&out);
    assert!(outer.ends_with("-recursive-nix"), "{outer}");
}

#[test]
fn build_users_are_rejected_like_upstream_when_off() {
    let Some(r) = Rec::start(Setup::default()) else {
        return;
    };
    let user = &r.store.build_users().unwrap().users()[0];
    let upstream = r.store.nix_daemon(Client::Host).start();
    let refusal = format!(
        "error processing connection: user '{}' is not allowed to connect to the Nix daemon",
        user.name
    );
    for d in [&r.daemon, &upstream] {
        let out = as_build_user(&r, d.socket());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: {stderr}", d.name());
        // Closed before the greeting was answered: how the client notices is a race.
        assert!(
            stderr.contains(&format!(
                "error: cannot open connection to remote store '{}'",
                d.uri()
            )) && ["Broken pipe", "Connection reset by peer", "end of file"]
                .iter()
                .any(|e| stderr.contains(e)),
            "{}: {stderr}",
            d.name()
        );
        assert!(
            eventually(Duration::from_secs(10), || d.log().contains(&refusal)),
            "{}:\n{}",
            d.name(),
            d.log()
        );
    }
}

#[test]
fn cancelling_the_outer_build_kills_the_inner_one() {
    let Some(r) = Rec::start(Setup::default()) else {
        return;
    };
    let expr = r.expr(
        "cancel.nix",
        &[],
        r#"lib.outer "cancel-outer" ''
          nix-build --no-out-link ${inner} --argstr bb ${lib.busybox} --argstr text slow --argstr sleep 1000
          echo never > $out
        '' {}"#,
    );
    let mut cmd = r.build_command(&expr, &[]);
    cmd.arg("--no-out-link");
    let build = Background::spawn(cmd, r.store.root(), "cancel");
    assert!(
        eventually(WAIT, || r.running_builds().len() == 2
            && r.busy_build_users() == 2),
        "the inner build did not start: {:?}\n{}",
        r.running_builds(),
        build.stderr()
    );
    // Ctrl-C on the client.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(build.pid() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let (ok, _, stderr) = build.wait(WAIT);
    assert!(!ok, "{stderr}");
    assert!(
        eventually(WAIT, || r.running_builds().is_empty()
            && r.busy_build_users() == 0),
        "still running: {:?}, {} build users busy\n{}",
        r.running_builds(),
        r.busy_build_users(),
        r.daemon.log()
    );
    assert!(r.paths_named("inside-slow").is_empty());
    // Both build users are free again: the example needs both at once.
    let out = r.build(&recursive_support::example_dir().join("outer.nix"), &[]);
    r.built(&out);
}

#[test]
fn a_hostile_build_disturbs_no_one_else() {
    let Some(r) = Rec::start(Setup {
        users: 3,
        seed: true,
        ..Setup::default()
    }) else {
        return;
    };
    // Seed style: the flood goes to the daemon's own socket. 60 clients at once (more than
    // the build's 32 sessions: the rest are closed), and imports of random bytes.
    let expr = r.expr(
        "hostile.nix",
        &[],
        r#"lib.outer "hostile" ''
          i=0
          while [ $i -lt 60 ]; do
            nix-store -q --hash ${lib.busybox} >/dev/null 2>&1 &
            i=$((i + 1))
          done
          for j in 1 2 3 4 5; do
            head -c 100000 /dev/urandom | nix-store --import >/dev/null 2>&1 || echo "import $j refused"
          done
          wait
          echo "hostile: still served: $(nix-store -q --hash ${lib.busybox})"
          echo survived > $out
        '' {}"#,
    );
    let mut cmd = r.build_command(&expr, &[]);
    cmd.arg("--no-out-link");
    let hostile = Background::spawn(cmd, r.store.root(), "hostile");
    // Meanwhile: another recursive build (the example) and plain queries from the host.
    let t0 = std::time::Instant::now();
    let out = r.build(&recursive_support::example_dir().join("outer.nix"), &[]);
    let outer = r.built(&out);
    assert!(outer.ends_with("-recursive-nix"));
    while t0.elapsed() < Duration::from_secs(3) {
        r.nix("nix-store").args(["-q", "--hash", &r.bb]).run();
    }
    let (ok, _, stderr) = hostile.wait(WAIT);
    assert!(ok, "{stderr}\n{}", r.daemon.log());
    assert!(stderr.contains("import 1 refused"), "{stderr}");
    assert!(
        stderr.contains("hostile: still served: sha256:"),
        "{stderr}"
    );
    r.nix("nix-store").args(["-q", "--hash", &r.bb]).run();
}
