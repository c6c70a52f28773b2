//! The recursive-Nix example of `examples/recursive/` end to end: a build that runs `nix-build`
//! inside its sandbox (the 2019 "recursive Nix" experiment, without nixpkgs).
//!
//! Every case makes a throwaway store with `sandbox = true`, a private build-users group of two
//! (the outer and the inner build each hold a build user, at the same time) and
//! `extra-experimental-features = recursive-nix`, and starts a daemon of some [`DaemonKind`] on
//! it. Through that daemon it adds the busybox toolchain and the Nix client bundle
//! (`examples/recursive/make-nix-bundle`), then builds `examples/recursive/outer.nix` with the
//! host's `nix-build` 2.8 over one of two [`Channel`]s:
//!
//! * [`Channel::PerBuild`]: the outer derivation requires the `recursive-nix` system feature and
//!   the daemon gives its builder a private socket (`NIX_REMOTE`);
//! * [`Channel::Seed`]: the builder talks to the daemon's own socket, which `extra-sandbox-paths`
//!   makes visible in the sandbox.
//!
//! The baseline is CppNix: `nix-daemon` 2.8 (host) and 2.34 (sid chroot) serve the per-build
//! socket, and refuse seed style because the peer is a build user. The nixnest cases use the
//! same code with [`DaemonKind::Nixnest`] (they skip, saying why, only while nixnest-daemon
//! is not built): both channels must work, seed style included
//! (`allow-build-user-connections = true`), with the inner output visible in the outer
//! sandbox and recorded as a reference; without that setting nixnest refuses seed style
//! exactly as CppNix does. `examples/recursive/run` (the README's command) is run with
//! nix-daemon 2.8 and with nixnest, in both channels.
//!
//! More of recursive Nix with nixnest is in `recursive_nixnest.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nixnest_testkit::*;

/// `examples/recursive/` of this repository.
fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("examples/recursive")
}

/// The daemon serving the example's store.
#[derive(Clone, Copy, Debug)]
enum DaemonKind {
    /// The real `nix-daemon` of a client: the host's 2.8 or a chroot's.
    CppNix(Client),
    /// `nixnest-daemon` as built by cargo.
    Nixnest,
    /// `nixnest-daemon` without `allow-build-user-connections`.
    NixnestDefault,
}

/// How the outer build reaches a daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    /// `requiredSystemFeatures = [ "recursive-nix" ]`: a per-build socket from the daemon.
    PerBuild,
    /// `NIX_REMOTE=unix://<daemon socket>`, the socket dir in `extra-sandbox-paths`.
    Seed,
}

/// A store with a daemon, busybox and the Nix client bundle, ready for `outer.nix`.
struct Example {
    kind: DaemonKind,
    channel: Channel,
    store: TestStore,
    daemon: Daemon,
    /// Store path of the busybox toolchain.
    bb: String,
    /// Store path of the Nix client bundle.
    nix: String,
}

impl DaemonKind {
    /// A store for `channel` with this daemon serving it, or `None` after printing why this
    /// daemon cannot run here.
    fn prepare(self, channel: Channel) -> Option<Example> {
        if let DaemonKind::CppNix(client) = self
            && !client.is_available()
        {
            eprintln!("SKIPPED: the {client} chroot is missing (run tests/prepare-clients)");
            return None;
        }
        let store = TestStore::builder()
            .sandbox(true)
            .build_users(BuildUsers::private(2))
            .conf("extra-experimental-features = recursive-nix")
            .build();
        if channel == Channel::Seed {
            // Every daemon socket of the store lives in <root>/s (0755, so build users can
            // reach the socket inside).
            store.append_conf(&format!(
                "extra-sandbox-paths = {}",
                store.root().join("s").display()
            ));
        }
        let daemon = match self {
            DaemonKind::CppNix(client) => store.nix_daemon(client).start(),
            DaemonKind::Nixnest | DaemonKind::NixnestDefault => {
                let Some(program) = try_cargo_bin("nixnest-daemon") else {
                    eprintln!(
                        "SKIPPED: nixnest-daemon is not built (cargo build -p nixnest-daemon)"
                    );
                    return None;
                };
                let mut spec = store.daemon("nixnest", program);
                if channel == Channel::Seed && matches!(self, DaemonKind::Nixnest) {
                    spec = spec.option("allow-build-user-connections", "true");
                }
                spec.start()
            }
        };
        let nix = |program: &str| store.client(Client::Host).daemon(&daemon).command(program);
        let bb = nix("nix-store").arg("--add").arg(store.busybox()).run();
        let bundle = nix(example_dir().join("make-nix-bundle").to_str().unwrap())
            .arg("--busybox")
            .arg(busybox::source())
            .run();
        // The bundle refers only to itself: its closure is all a sandbox gets of it.
        let refs = nix("nix-store").args(["-q", "--references", &bundle]).run();
        assert_eq!(refs, bundle, "references of the Nix bundle");
        Some(Example {
            kind: self,
            channel,
            store,
            daemon,
            bb,
            nix: bundle,
        })
    }
}

impl Example {
    /// The host client, through the daemon.
    fn nix(&self, program: &str) -> Command {
        self.store
            .client(Client::Host)
            .daemon(&self.daemon)
            .command(program)
    }

    /// `nix-build outer.nix` through the daemon with the host's client; whatever happens.
    fn build_outer(&self) -> Output {
        self.build_outer_with(Client::Host)
    }

    /// `nix-build outer.nix` through the daemon with `client` outside; whatever happens.
    fn build_outer_with(&self, client: Client) -> Output {
        let example = if client == Client::Host {
            example_dir()
        } else {
            // A chroot client sees the test root only.
            let dir = self.store.root().join("example");
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["outer.nix", "inner.nix"] {
                std::fs::copy(example_dir().join(f), dir.join(f)).unwrap();
            }
            dir
        };
        let mut cmd = self
            .store
            .client(client)
            .daemon(&self.daemon)
            .command("nix-build");
        cmd.arg(example.join("outer.nix"))
            .arg("--no-out-link")
            .args(["--argstr", "nix", &self.nix])
            .args(["--argstr", "bb", &self.bb]);
        if self.channel == Channel::Seed {
            cmd.args(["--argstr", "socket"]).arg(self.daemon.socket());
        }
        cmd.run_unchecked()
    }

    /// The store paths named `*-<name>` present in the store dir.
    fn paths_named(&self, name: &str) -> Vec<String> {
        let suffix = format!("-{name}");
        std::fs::read_dir(self.store.store_dir())
            .unwrap()
            .map(|e| e.unwrap().path().to_str().unwrap().to_owned())
            .filter(|p| p.ends_with(&suffix))
            .collect()
    }

    /// The outer build ran `nix-build inner.nix` and the daemon answered it: the inner output
    /// was readable in the sandbox as soon as the inner `nix-build` returned, the outer output
    /// holds its path, and the daemon recorded it as a reference of the outer output.
    fn assert_recursive_build_worked(&self, out: &Output) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "outer build through {:?} ({:?}) failed: {}\n{stderr}\n--- daemon log ---\n{}",
            self.kind,
            self.channel,
            out.status,
            self.daemon.log()
        );
        let outer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(outer.ends_with("-recursive-nix"), "{outer}");

        let inner = std::fs::read_to_string(&outer).unwrap().trim().to_owned();
        assert_eq!(
            Path::new(&inner).parent(),
            Some(self.store.store_dir().as_path()),
            "the outer output holds a store path: {inner:?}"
        );
        assert!(inner.ends_with("-inside"), "{inner}");
        assert_eq!(std::fs::read_to_string(&inner).unwrap(), "FOO\n");

        // The outer builder's own lines (the host client shows the build log).
        let remote_line = stderr
            .lines()
            .find_map(|l| l.strip_prefix("outer: NIX_REMOTE="))
            .unwrap_or_else(|| panic!("no NIX_REMOTE line in the build log:\n{stderr}"));
        match (self.kind, self.channel) {
            (_, Channel::PerBuild) => assert_eq!(remote_line, "unix:///build/.nix-socket"),
            (_, Channel::Seed) => assert_eq!(remote_line, self.daemon.uri()),
        }
        assert!(
            stderr.contains(&format!("outer: inner nix-build returned {inner}\n")),
            "{stderr}"
        );
        assert!(
            stderr.contains("outer: inner output contents: FOO\n"),
            "{stderr}"
        );

        let refs = self
            .nix("nix-store")
            .args(["-q", "--references", &outer])
            .run();
        assert_eq!(refs, inner, "references of the outer output");
    }

    /// CppNix refuses the builder on its main socket: the peer's primary group is the
    /// build-users group. The outer build fails without an output; the inner derivation is
    /// never even instantiated (evaluating `inner.nix` already needs the store).
    fn assert_seed_style_refused(&self, out: &Output) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "outer build: {stderr}");
        let client_error = format!(
            "error: cannot open connection to remote store '{}'",
            self.daemon.uri()
        );
        assert!(stderr.contains(&client_error), "{stderr}");
        // The daemon closes the connection before reading the client's greeting; whether the
        // client notices while writing it or while reading the reply is a race.
        assert!(
            ["Broken pipe", "Connection reset by peer", "end of file"]
                .iter()
                .any(|e| stderr.contains(e)),
            "{stderr}"
        );
        // (How the failure is reported differs: 2.8 "builder for '…' failed with exit code 1",
        // 2.34 "Cannot build '…'.")
        assert_eq!(self.paths_named("recursive-nix"), Vec::<String>::new());

        let users = self.store.build_users().unwrap().users();
        let refused = |log: &str| {
            users.iter().any(|u| {
                log.contains(&format!(
                    "user '{}' is not allowed to connect to the Nix daemon",
                    u.name
                ))
            })
        };
        let log = wait_for_log(&self.daemon, refused);
        assert!(refused(&log), "daemon log:\n{log}");
        assert_eq!(self.paths_named("inside"), Vec::<String>::new());
        assert_eq!(self.paths_named("inside.drv"), Vec::<String>::new());
    }
}

/// The daemon's log once `done` holds for it, or after 10 s: a daemon may log a refusal just
/// after the client saw the connection close.
fn wait_for_log(daemon: &Daemon, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let log = daemon.log();
        if done(&log) || start.elapsed() > Duration::from_secs(10) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The per-build socket: the example works.
fn per_build_socket(kind: DaemonKind) {
    let Some(example) = kind.prepare(Channel::PerBuild) else {
        return;
    };
    let out = example.build_outer();
    example.assert_recursive_build_worked(&out);
}

/// Seed style: CppNix refuses the build user; nixnest (allow-build-user-connections) serves it.
fn seed_style(kind: DaemonKind) {
    let Some(example) = kind.prepare(Channel::Seed) else {
        return;
    };
    let out = example.build_outer();
    match kind {
        DaemonKind::CppNix(_) | DaemonKind::NixnestDefault => {
            example.assert_seed_style_refused(&out)
        }
        DaemonKind::Nixnest => example.assert_recursive_build_worked(&out),
    }
}

#[test]
fn per_build_socket_nix_daemon_2_8() {
    per_build_socket(DaemonKind::CppNix(Client::Host));
}

#[test]
fn per_build_socket_nix_daemon_2_34() {
    per_build_socket(DaemonKind::CppNix(Client::Sid));
}

#[test]
fn per_build_socket_nixnest() {
    per_build_socket(DaemonKind::Nixnest);
}

#[test]
fn seed_style_refused_by_nix_daemon_2_8() {
    seed_style(DaemonKind::CppNix(Client::Host));
}

#[test]
fn seed_style_refused_by_nix_daemon_2_34() {
    seed_style(DaemonKind::CppNix(Client::Sid));
}

#[test]
fn seed_style_nixnest() {
    seed_style(DaemonKind::Nixnest);
}

/// Both channels with Nix 2.34 outside (the builds inside still run the 2.8 bundle).
#[test]
fn nixnest_with_client_2_34_outside() {
    if !Client::Sid.is_available() {
        eprintln!("SKIPPED: the sid chroot is missing (run tests/prepare-clients)");
        return;
    }
    for channel in [Channel::PerBuild, Channel::Seed] {
        let Some(example) = DaemonKind::Nixnest.prepare(channel) else {
            return;
        };
        let out = example.build_outer_with(Client::Sid);
        example.assert_recursive_build_worked(&out);
    }
}

/// Off by default: nixnest refuses the build user as CppNix does.
#[test]
fn seed_style_refused_by_nixnest_by_default() {
    seed_style(DaemonKind::NixnestDefault);
}

/// `examples/recursive/run` with `args`: prints the inner output's contents and the outer
/// output's references, and removes its store afterwards.
fn run_script(args: &[&str]) {
    let users = BuildUsers::private(2);
    let out = Command::new(example_dir().join("run"))
        .args(args)
        .args(["--build-users-group", users.group()])
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("NIXNEST_BUSYBOX", busybox::source())
        .run_output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} line:\n{stdout}"))
            .to_owned()
    };
    let inner = field("inner output: ");
    assert!(inner.ends_with("-inside"), "{inner}");
    assert_eq!(field("inner output contents: "), "FOO");
    let refs: Vec<&str> = stdout
        .split_once("references of the outer output:\n")
        .unwrap_or_else(|| panic!("no references:\n{stdout}"))
        .1
        .lines()
        .collect();
    assert_eq!(refs, [inner.as_str()]);
    assert!(
        stderr.contains("outer: inner output contents: FOO"),
        "{stderr}"
    );

    // The throwaway store is gone.
    let store = stderr
        .split_once(", store ")
        .and_then(|(_, rest)| rest.lines().next())
        .unwrap_or_else(|| panic!("no store line:\n{stderr}"));
    assert!(store.starts_with("/tmp/nixnest-rec."), "{store}");
    assert!(!Path::new(store).exists(), "{store} left behind");
}

/// `examples/recursive/run --daemon nix-daemon`: the baseline.
#[test]
fn run_script_with_nix_daemon_2_8() {
    run_script(&["--daemon", "nix-daemon"]);
}

/// `examples/recursive/run` with nixnest (the README's command, with the daemon cargo
/// built for this test), per-build socket and seed style.
#[test]
fn run_script_with_nixnest() {
    let Some(program) = try_cargo_bin("nixnest-daemon") else {
        eprintln!("SKIPPED: nixnest-daemon is not built (cargo build -p nixnest-daemon)");
        return;
    };
    let program = program.to_str().unwrap();
    run_script(&["--daemon", program]);
    run_script(&["--daemon", program, "--seed"]);
}
