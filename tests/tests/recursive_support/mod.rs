//! Shared pieces of the recursive-Nix tests (`recursive_*.rs`): a sandboxed store with
//! private build users and `recursive-nix` enabled, nixnest-daemon serving it (seed style
//! on request), the busybox toolchain and the Nix client bundle of `examples/recursive/`,
//! and a small Nix library (`lib.nix`) for outer builds that run `nix` inside.
//!
//! The tests need root, the host's Nix 2.8, busybox-static and a built nixnest-daemon;
//! without them they print why and pass without checking anything.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nixnest_testkit::*;

/// `examples/recursive/` of this repository.
pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("examples/recursive")
}

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/usr/bin/nix-build").exists() {
        return Some("/usr/bin/nix-build is missing (Debian's nix-bin)".into());
    }
    if !busybox::source().exists() {
        return Some("no static busybox (busybox-static)".into());
    }
    if try_cargo_bin("nixnest-daemon").is_none() {
        return Some("nixnest-daemon is not built (cargo build -p nixnest-daemon)".into());
    }
    None
}

/// Host-side helpers for outer builds: `outer name script attrs` is a derivation whose
/// builder runs `script` under busybox `sh -eu` with the Nix client bundle in `PATH`,
/// talking to the daemon over the test's channel (per-build socket, or the daemon socket
/// for seed style). `${busybox}` and `${nixBundle}` are inputs.
const LIB_NIX: &str = r#"
{ nix, bb, socket ? null }:
let
  nixBundle = builtins.storePath nix;
  busybox = builtins.storePath bb;
  channel =
    if socket == null
    then { requiredSystemFeatures = [ "recursive-nix" ]; }
    else { NIX_REMOTE = "unix://${socket}"; };
in {
  inherit nixBundle busybox;
  outer = name: script: attrs: derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "${busybox}/bin/sh";
    PATH = "${nixBundle}/bin:${busybox}/bin";
    args = [ "-euc" ''
      export NIX_STORE_DIR=$NIX_STORE HOME=$TMPDIR NIX_PAGER=cat
      export NIX_STATE_DIR=$TMPDIR/nix/var NIX_LOG_DIR=$TMPDIR/nix/log NIX_CONF_DIR=$TMPDIR/nix/etc
      ${script}
    '' ];
  } // channel // attrs);
}
"#;

/// An inner build, evaluated inside the outer sandbox (so it must be self-contained):
/// sleeps `sleep` seconds, then writes `text` and the build dir it saw.
pub const INNER_NIX: &str = r#"
{ bb, text ? "FOO", sleep ? "0" }:
let busybox = builtins.storePath bb;
in derivation {
  name = "inside-${text}";
  system = builtins.currentSystem;
  builder = "${busybox}/bin/sh";
  PATH = "${busybox}/bin";
  args = [ "-c" "sleep ${sleep}; echo ${text} > $out; echo \"build dir $NIX_BUILD_TOP\" >> $out" ];
}
"#;

/// A store and nixnest-daemon ready for outer builds.
pub struct Rec {
    pub store: TestStore,
    pub daemon: Daemon,
    /// Store path of the busybox toolchain.
    pub bb: String,
    /// Store path of the Nix client bundle.
    pub nix: String,
    pub seed: bool,
    lib: PathBuf,
}

/// How to set a [`Rec`] up.
pub struct Setup<'a> {
    /// Build users in the private group.
    pub users: usize,
    /// Seed style: `allow-build-user-connections` and the socket dir in
    /// `extra-sandbox-paths`.
    pub seed: bool,
    /// More `--option`s for the daemon.
    pub options: &'a [(&'a str, &'a str)],
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            users: 2,
            seed: false,
            options: &[],
        }
    }
}

impl Rec {
    /// `None` (after printing why) when the tests cannot run here.
    pub fn start(setup: Setup<'_>) -> Option<Rec> {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let store = TestStore::builder()
            .sandbox(true)
            .build_users(BuildUsers::private(setup.users))
            .conf("extra-experimental-features = recursive-nix")
            .build();
        if setup.seed {
            store.append_conf(&format!(
                "extra-sandbox-paths = {}",
                store.root().join("s").display()
            ));
        }
        let mut spec = store.daemon("nixnest", try_cargo_bin("nixnest-daemon").unwrap());
        if setup.seed {
            spec = spec.option("allow-build-user-connections", "true");
        }
        for (k, v) in setup.options {
            spec = spec.option(k, v);
        }
        let daemon = spec.start();
        let nix = |program: &str| store.client(Client::Host).daemon(&daemon).command(program);
        let bb = nix("nix-store").arg("--add").arg(store.busybox()).run();
        let bundle = nix(example_dir().join("make-nix-bundle").to_str().unwrap())
            .arg("--busybox")
            .arg(busybox::source())
            .run();
        let lib = store.write("lib.nix", LIB_NIX);
        store.write("inner.nix", INNER_NIX);
        Some(Rec {
            store,
            daemon,
            bb,
            nix: bundle,
            seed: setup.seed,
            lib,
        })
    }

    /// The host client, through the daemon.
    pub fn nix(&self, program: &str) -> Command {
        self.store
            .client(Client::Host)
            .daemon(&self.daemon)
            .command(program)
    }

    /// Writes `<root>/<name>`: an expression whose body is `body`, with `lib` (see
    /// [`LIB_NIX`]) and `inner` (the path of [`INNER_NIX`], copied into the store as an
    /// input when used) in scope, and any further `--argstr`s.
    pub fn expr(&self, name: &str, args: &[&str], body: &str) -> PathBuf {
        let mut params = vec!["nix", "bb", "socket ? null"];
        params.extend_from_slice(args);
        let text = format!(
            "{{ {} }}:\nlet lib = import {} {{ inherit nix bb socket; }};\n    inner = ./inner.nix;\nin {body}\n",
            params.join(", "),
            self.lib.display()
        );
        self.store.write(name, text)
    }

    /// `nix-build <file>` with the channel's `--argstr`s and `args` (add `--no-out-link`
    /// or `-o`).
    pub fn build_command(&self, file: &Path, args: &[(&str, &str)]) -> Command {
        let mut cmd = self.nix("nix-build");
        cmd.arg(file)
            .args(["--argstr", "nix", &self.nix])
            .args(["--argstr", "bb", &self.bb]);
        if self.seed {
            cmd.args(["--argstr", "socket"]).arg(self.daemon.socket());
        }
        for (k, v) in args {
            cmd.args(["--argstr", k, v]);
        }
        cmd
    }

    pub fn build(&self, file: &Path, args: &[(&str, &str)]) -> Output {
        self.build_command(file, args)
            .arg("--no-out-link")
            .run_unchecked()
    }

    /// Asserts `out` succeeded and returns its one output path.
    pub fn built(&self, out: &Output) -> String {
        assert!(
            out.status.success(),
            "build failed: {}\n{}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The store paths named `*-<name>` present in the store dir.
    pub fn paths_named(&self, name: &str) -> Vec<String> {
        let suffix = format!("-{name}");
        std::fs::read_dir(self.store.store_dir())
            .unwrap()
            .map(|e| e.unwrap().path().to_str().unwrap().to_owned())
            .filter(|p| p.ends_with(&suffix))
            .collect()
    }

    /// The host build dir (`…/build`, seen as `/build` inside) of the running build of
    /// the derivation named `drv_name`, once it exists.
    pub fn build_dir_of(&self, drv_name: &str) -> Option<PathBuf> {
        let prefix = format!("nix-build-{drv_name}.drv-");
        std::fs::read_dir(self.store.state_dir().join("builds"))
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path().join("build"))
            .filter(|p| p.is_dir())
    }

    /// The uids of the store's build users.
    pub fn build_uids(&self) -> Vec<u32> {
        self.store
            .build_users()
            .unwrap()
            .users()
            .iter()
            .map(|u| u.uid)
            .collect()
    }

    /// How many of the build users have processes running now.
    pub fn busy_build_users(&self) -> usize {
        let uids = self.build_uids();
        let mut busy = std::collections::BTreeSet::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok());
            if let Some(uid) = uid.filter(|u| uids.contains(u)) {
                busy.insert(uid);
            }
        }
        busy.len()
    }

    /// `nixnest-daemon status --json`: the running builds' derivations.
    pub fn running_builds(&self) -> Vec<String> {
        let out = Command::new(try_cargo_bin("nixnest-daemon").unwrap())
            .args(["status", "--json", "--control-socket"])
            .arg(self.store.state_dir().join("nixnest/control"))
            .run();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["builds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["drv_path"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A command running in the background with its output going to files.
pub struct Background {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Background {
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Background {
        use std::os::unix::process::CommandExt;
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .process_group(0)
            .spawn()
            .expect("spawning a background command");
        Background {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (at most `timeout`) for it to end: (success, stdout, stderr).
    pub fn wait(mut self, timeout: Duration) -> (bool, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > timeout {
                let _ = rustix::process::kill_process_group(
                    rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
                    rustix::process::Signal::KILL,
                );
                panic!("still running after {timeout:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status.success(),
            std::fs::read_to_string(&self.stdout)
                .unwrap_or_default()
                .trim()
                .to_owned(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            let _ = self.child.wait();
        }
    }
}

/// Waits up to `timeout` for `cond`; whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
