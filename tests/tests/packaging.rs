//! End-to-end checks of how nixnest is installed (issue 9): the systemd units in
//! `packaging/systemd`, `packaging/install.sh` and `uninstall.sh`, the flake and the NixOS module
//! in `nix/`, and, once the daemon serves, the installed daemon under socket activation.
//!
//! The NixOS module is evaluated by the host's real Nix evaluator (2.8), but against
//! `nix/tests/stand-in/`: a tiny stand-in for the parts of nixpkgs' `lib` and of NixOS that the
//! module uses. **The stand-in is not nixpkgs**; the flake's `module-eval` and `vm` checks are
//! the tests against real nixpkgs (they need nixpkgs and KVM, which this machine lacks).
//!
//! Run as root on Debian 12. A test whose tool is missing (systemd-analyze,
//! systemd-socket-activate, nix-instantiate, nix, nix-store) prints why and returns; so do the
//! two tests that need a nixnest-daemon that can serve, until there is one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The path of a tool from the system, or `None` after printing why the test is skipped.
fn tool(name: &str) -> Option<PathBuf> {
    let found = SYSTEM_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: `{name}` is not installed on this machine");
    }
    found
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "{cmd:?}\nexit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command failed: {}",
        describe(cmd, &out)
    );
    out
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("nixnest-packaging-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// A shell script standing in for the daemon where only a file at the right place matters.
fn dummy_daemon(dir: &Path) -> PathBuf {
    let path = dir.join("dummy-nixnest-daemon");
    fs::write(
        &path,
        "#!/bin/sh\necho 'dummy nixnest-daemon (not the real one)'\n",
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `KEY=value` assignments of a unit file, in order, comments and section headers left out.
fn assignments(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values<'a>(assignments: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    assignments
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Runs `systemd-analyze verify` on unit files and returns its complaints about them: any line
/// of its output that names one of the files. (It exits 0 on many bad settings, only warning.)
fn verify_units(analyze: &Path, units: &[PathBuf]) -> Vec<String> {
    let mut cmd = Command::new(analyze);
    cmd.arg("verify").arg("--man=no").args(units);
    let out = run(&mut cmd);
    let names: Vec<String> = units
        .iter()
        .map(|u| u.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut complaints: Vec<String> = text(&out.stdout)
        .lines()
        .chain(text(&out.stderr).lines())
        .filter(|line| names.iter().any(|n| line.contains(n.as_str())))
        .map(str::to_owned)
        .collect();
    if !out.status.success() && complaints.is_empty() {
        complaints.push(describe(&cmd, &out));
    }
    complaints
}

/// Copies a unit into `dir`, replacing the daemon path in ExecStart= (which need not exist on
/// this machine) by `exe`, because `systemd-analyze verify` rejects a command it cannot run.
fn unit_copy_with_exec(unit: &Path, daemon_path: &str, exe: &Path, dir: &Path) -> PathBuf {
    let original = fs::read_to_string(unit).unwrap();
    assert_eq!(
        original.matches(daemon_path).count(),
        1,
        "{} should name {daemon_path} exactly once (in ExecStart=)",
        unit.display()
    );
    let copy = dir.join(unit.file_name().unwrap());
    fs::write(&copy, original.replace(daemon_path, exe.to_str().unwrap())).unwrap();
    copy
}

/// A throwaway store, state, log and config dir for the host's Nix, so nothing here touches
/// the machine's /nix.
struct NixDirs {
    root: TempDir,
}

impl NixDirs {
    fn new() -> Self {
        let dirs = NixDirs { root: tempdir() };
        for dir in [
            dirs.store(),
            dirs.state(),
            dirs.log(),
            dirs.conf(),
            dirs.home(),
        ] {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(
            dirs.conf().join("nix.conf"),
            "build-users-group =\nsubstituters =\nsandbox = false\n",
        )
        .unwrap();
        dirs
    }
    fn store(&self) -> PathBuf {
        self.root.path().join("store")
    }
    fn state(&self) -> PathBuf {
        self.root.path().join("var/nix")
    }
    fn log(&self) -> PathBuf {
        self.root.path().join("var/log/nix")
    }
    fn conf(&self) -> PathBuf {
        self.root.path().join("etc")
    }
    fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// The environment that points Nix (and nixnest) at these directories.
    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("NIX_STORE_DIR", self.store()),
            ("NIX_STATE_DIR", self.state()),
            ("NIX_LOG_DIR", self.log()),
            ("NIX_CONF_DIR", self.conf()),
        ]
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("HOME", self.home())
            .env("NIX_PATH", "")
            .envs(self.env());
        cmd
    }
}

// ---------------------------------------------------------------------------------------------
// The systemd units

const UNIT_DAEMON_PATH: &str = "/usr/local/bin/nixnest-daemon";

fn repo_units() -> [PathBuf; 2] {
    let dir = project_root().join("packaging/systemd");
    [
        dir.join("nix-daemon.socket"),
        dir.join("nix-daemon.service"),
    ]
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let dir = tempdir();
    // The units' ExecStart= names /usr/local/bin/nixnest-daemon, which need not exist here:
    // verify copies whose ExecStart= names a dummy executable instead.
    let exe = dummy_daemon(dir.path());
    let copies: Vec<PathBuf> = repo_units()
        .iter()
        .map(|unit| {
            if unit.extension().unwrap() == "service" {
                unit_copy_with_exec(unit, UNIT_DAEMON_PATH, &exe, dir.path())
            } else {
                let copy = dir.path().join(unit.file_name().unwrap());
                fs::copy(unit, &copy).unwrap();
                copy
            }
        })
        .collect();
    let complaints = verify_units(&analyze, &copies);
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains:\n{}",
        complaints.join("\n")
    );

    // The same check notices a bad setting (it only warns, exit status 0), so the empty
    // result above means something.
    let service = dir.path().join("nix-daemon.service");
    let good = fs::read_to_string(&service).unwrap();
    fs::write(
        &service,
        good.replace("KillMode=mixed", "KillMode=sometimes"),
    )
    .unwrap();
    let complaints = verify_units(&analyze, &copies);
    assert!(
        complaints.iter().any(|c| c.contains("kill mode")),
        "a bad KillMode= went unnoticed: {complaints:?}"
    );
}

#[test]
fn systemd_units_replace_the_stock_daemon_and_keep_its_socket() {
    let [socket, service] = repo_units();
    let socket = assignments(&fs::read_to_string(socket).unwrap());
    let service = assignments(&fs::read_to_string(service).unwrap());

    assert_eq!(
        values(&socket, "ListenStream"),
        ["/nix/var/nix/daemon-socket/socket"]
    );
    assert_eq!(values(&socket, "FileDescriptorName"), ["nix-daemon.socket"]);
    assert_eq!(values(&socket, "WantedBy"), ["sockets.target"]);

    let exec = values(&service, "ExecStart");
    assert_eq!(exec.len(), 1, "one ExecStart=: {exec:?}");
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(words[..2], [UNIT_DAEMON_PATH, "--daemon"]);
    assert_eq!(values(&service, "KillMode"), ["mixed"]);

    // The daemon builds: it needs root, namespaces, mounts and the same file system as
    // nix-daemon. None of these may creep in (see the comments in the unit).
    for key in [
        "User",
        "DynamicUser",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "ProtectProc",
        "NoNewPrivileges",
        "RestrictNamespaces",
        "SystemCallFilter",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "ProtectHostname",
        "ProtectClock",
        "DevicePolicy",
        "DeviceAllow",
    ] {
        assert!(
            values(&service, key).is_empty(),
            "{key}= would get in the way of builds"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// install.sh / uninstall.sh

fn install_script() -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg(project_root().join("packaging/install.sh"))
        .env("PATH", SYSTEM_PATH);
    cmd
}

/// Every file and symlink below `root`, relative to it, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn install_script_places_binary_and_units_in_destdir() {
    let work = tempdir();
    let dest = work.path().join("root");
    let daemon = dummy_daemon(work.path());
    run_ok(
        install_script()
            .arg("--destdir")
            .arg(&dest)
            .arg("--binary")
            .arg(&daemon),
    );

    assert_eq!(
        tree(&dest),
        [
            "etc/systemd/system/nix-daemon.service",
            "etc/systemd/system/nix-daemon.socket",
            "usr/local/bin/nixnest-daemon",
            "usr/local/sbin/nixnest-uninstall",
        ]
    );
    let installed = dest.join("usr/local/bin/nixnest-daemon");
    assert_eq!(fs::read(&installed).unwrap(), fs::read(&daemon).unwrap());
    assert_eq!(mode(&installed), 0o755);
    assert_eq!(
        mode(&dest.join("etc/systemd/system/nix-daemon.service")),
        0o644
    );

    // With the default prefix the units are the repository's, byte for byte.
    for unit in repo_units() {
        let name = unit.file_name().unwrap();
        assert_eq!(
            fs::read(dest.join("etc/systemd/system").join(name)).unwrap(),
            fs::read(&unit).unwrap(),
            "{name:?}"
        );
    }
    let uninstaller = fs::read_to_string(dest.join("usr/local/sbin/nixnest-uninstall")).unwrap();
    assert!(uninstaller.contains("\ndefault_prefix=/usr/local\n"));

    // The installed units verify, with ExecStart= pointed at the installed (dummy) binary.
    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    let copies = work.path().join("verify");
    fs::create_dir(&copies).unwrap();
    let unitdir = dest.join("etc/systemd/system");
    let service = unit_copy_with_exec(
        &unitdir.join("nix-daemon.service"),
        UNIT_DAEMON_PATH,
        &installed,
        &copies,
    );
    let socket = copies.join("nix-daemon.socket");
    fs::copy(unitdir.join("nix-daemon.socket"), &socket).unwrap();
    let complaints = verify_units(&analyze, &[socket, service]);
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));
}

#[test]
fn install_with_prefix_sets_stock_units_aside_and_uninstall_restores_them() {
    let work = tempdir();
    let dest = work.path().join("root");
    let unitdir = dest.join("etc/systemd/system");
    fs::create_dir_all(&unitdir).unwrap();
    // What another installation left in /etc/systemd/system: the upstream installer's symlink,
    // and a unit an administrator wrote.
    let stock_link = "/nix/var/nix/profiles/default/lib/systemd/system/nix-daemon.service";
    std::os::unix::fs::symlink(stock_link, unitdir.join("nix-daemon.service")).unwrap();
    let admin_socket = "[Socket]\nListenStream=/nix/var/nix/daemon-socket/socket\n";
    fs::write(unitdir.join("nix-daemon.socket"), admin_socket).unwrap();

    let daemon = dummy_daemon(work.path());
    let install = |cmd: &mut Command| {
        run_ok(
            cmd.arg("--destdir")
                .arg(&dest)
                .arg("--prefix")
                .arg("/opt/nixnest/")
                .arg("--binary")
                .arg(&daemon),
        )
    };
    install(&mut install_script());
    // Installing again replaces nixnest's own units and keeps the set-aside ones as they are.
    install(&mut install_script());

    assert_eq!(
        tree(&dest),
        [
            "etc/systemd/system/nix-daemon.service",
            "etc/systemd/system/nix-daemon.service.pre-nixnest",
            "etc/systemd/system/nix-daemon.socket",
            "etc/systemd/system/nix-daemon.socket.pre-nixnest",
            "opt/nixnest/bin/nixnest-daemon",
            "opt/nixnest/sbin/nixnest-uninstall",
        ]
    );
    assert_eq!(
        fs::read_link(unitdir.join("nix-daemon.service.pre-nixnest")).unwrap(),
        Path::new(stock_link)
    );
    let service = assignments(&fs::read_to_string(unitdir.join("nix-daemon.service")).unwrap());
    let exec = values(&service, "ExecStart");
    assert!(
        exec.len() == 1 && exec[0].starts_with("/opt/nixnest/bin/nixnest-daemon --daemon"),
        "{exec:?}"
    );

    // The installed uninstaller knows the prefix; one command goes back.
    let mut uninstall = Command::new("/bin/sh");
    uninstall
        .arg(dest.join("opt/nixnest/sbin/nixnest-uninstall"))
        .arg("--destdir")
        .arg(&dest)
        .env("PATH", SYSTEM_PATH);
    run_ok(&mut uninstall);
    assert_eq!(
        tree(&dest),
        [
            "etc/systemd/system/nix-daemon.service",
            "etc/systemd/system/nix-daemon.socket",
        ]
    );
    assert_eq!(
        fs::read_link(unitdir.join("nix-daemon.service")).unwrap(),
        Path::new(stock_link)
    );
    assert_eq!(
        fs::read_to_string(unitdir.join("nix-daemon.socket")).unwrap(),
        admin_socket
    );
}

#[test]
fn install_script_refuses_what_it_cannot_install_safely() {
    let work = tempdir();
    let dest = work.path().join("root");
    let daemon = dummy_daemon(work.path());
    let empty_target = work.path().join("empty-target");
    fs::create_dir(&empty_target).unwrap();

    let cases: [(&[&str], &str); 4] = [
        (&["--prefix", "usr/local"], "absolute path"),
        (&["--prefix", "/opt/my nixnest"], "may contain only"),
        (&["--prefix", "/opt/100%"], "may contain only"),
        (&["--frobnicate"], "unknown argument"),
    ];
    for (args, message) in cases {
        let mut cmd = install_script();
        cmd.args(args)
            .arg("--destdir")
            .arg(&dest)
            .arg("--binary")
            .arg(&daemon);
        let out = run(&mut cmd);
        assert!(!out.status.success(), "accepted: {}", describe(&cmd, &out));
        assert!(
            text(&out.stderr).contains(message),
            "{}",
            describe(&cmd, &out)
        );
    }

    // No --binary and no `cargo build --release` output: say how to get one.
    let mut cmd = install_script();
    cmd.arg("--destdir")
        .arg(&dest)
        .env("CARGO_TARGET_DIR", &empty_target);
    let out = run(&mut cmd);
    assert!(!out.status.success(), "{}", describe(&cmd, &out));
    assert!(
        text(&out.stderr).contains("cargo build --release -p nixnest-daemon"),
        "{}",
        describe(&cmd, &out)
    );

    assert!(!dest.exists(), "a refused install left files behind");
}

// ---------------------------------------------------------------------------------------------
// The flake and the NixOS module

/// Every `.nix` file of the flake and the module, found by walking, so new ones are covered.
fn nix_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "nix") {
                out.push(path);
            }
        }
    }
    let root = project_root();
    let mut files = vec![root.join("flake.nix")];
    walk(&root.join("nix"), &mut files);
    files.sort();
    files
}

#[test]
fn flake_and_module_parse() {
    let Some(instantiate) = tool("nix-instantiate") else {
        return;
    };
    let dirs = NixDirs::new();
    let files = nix_files();
    for expected in [
        "flake.nix",
        "nix/module.nix",
        "nix/package.nix",
        "nix/tests/vm.nix",
        "nix/tests/module-eval.nix",
    ] {
        assert!(
            files.contains(&project_root().join(expected)),
            "{expected} missing"
        );
    }
    for file in &files {
        run_ok(dirs.command(&instantiate).arg("--parse").arg(file));
    }

    // The same command rejects a syntax error, so the passes above mean something.
    let broken = dirs.path("broken.nix");
    fs::write(
        &broken,
        "{ config, ... }: { services.nixnest = { enable = true; }",
    )
    .unwrap();
    let mut cmd = dirs.command(&instantiate);
    cmd.arg("--parse").arg(&broken);
    let out = run(&mut cmd);
    assert!(!out.status.success(), "{}", describe(&cmd, &out));
}

const STAND_IN_NOTE: &str = "NOTE: nix/module.nix is evaluated by the host's Nix against \
     nixnest's stand-in for nixpkgs lib and NixOS (nix/tests/stand-in), NOT against nixpkgs";

/// Evaluates `nix/tests/stand-in/scenarios.nix -A <attr>` to JSON with the real Nix evaluator.
struct StandIn {
    instantiate: PathBuf,
    dirs: NixDirs,
}

impl StandIn {
    fn new() -> Option<Self> {
        let instantiate = tool("nix-instantiate")?;
        eprintln!("{STAND_IN_NOTE}");
        let stand_in = StandIn {
            instantiate,
            dirs: NixDirs::new(),
        };
        let note = stand_in.eval("note");
        assert!(note.contains("not nixpkgs"), "{note}");
        Some(stand_in)
    }

    fn try_eval(&self, attr: &str) -> Output {
        let mut cmd = self.dirs.command(&self.instantiate);
        // --read-write-mode: some attributes write files (builtins.toFile) into the throwaway
        // store.
        cmd.args(["--eval", "--strict", "--json", "--read-write-mode"])
            .arg(project_root().join("nix/tests/stand-in/scenarios.nix"))
            .args(["-A", attr]);
        run(&mut cmd)
    }

    fn eval(&self, attr: &str) -> String {
        let out = self.try_eval(attr);
        assert!(
            out.status.success(),
            "evaluating {attr}: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    }

    /// A JSON string result without escapes (store paths), unquoted.
    fn eval_path(&self, attr: &str) -> String {
        let json = self.eval(attr);
        let inner = json
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{attr} is not a string: {json}"));
        assert!(!inner.contains('\\'), "{attr} needs unescaping: {json}");
        inner.to_owned()
    }

    fn read(&self, attr: &str) -> String {
        fs::read_to_string(self.eval_path(attr)).unwrap()
    }
}

#[test]
fn module_swaps_only_the_daemon_command() {
    let Some(nix) = StandIn::new() else {
        return;
    };
    let daemon = nix.eval_path("pkgs.nixnest-daemon");
    let real_nix = nix.eval("pkgs.nix");

    assert_eq!(
        nix.eval("enabled.execStart"),
        format!(r#"["","{daemon}/bin/nixnest-daemon --daemon"]"#)
    );
    assert_eq!(nix.eval("enabled.killMode"), r#""mixed""#);
    assert_eq!(
        nix.eval("enabled.listenStream"),
        r#"["","/nix/var/nix/daemon-socket/socket"]"#
    );
    assert_eq!(
        nix.eval("enabled.fileDescriptorName"),
        r#""nix-daemon.socket""#
    );
    // The client, and NixOS's nix.conf check, keep the real Nix.
    assert_eq!(nix.eval("enabled.nixPackage"), real_nix);
    assert_eq!(
        nix.eval("enabled.systemPackages"),
        format!(r#"["{daemon}"]"#)
    );
    assert_eq!(nix.eval("enabled.failedAssertions"), "[]");
    // Without the recursive options, nix.settings is exactly what it is without nixnest.
    assert_eq!(
        nix.eval("enabled.nixSettings"),
        nix.eval("disabled.nixSettings")
    );

    // Disabled, the module leaves the units alone.
    for attr in [
        "execStart",
        "killMode",
        "listenStream",
        "fileDescriptorName",
    ] {
        assert_eq!(nix.eval(&format!("disabled.{attr}")), "null", "{attr}");
    }
    assert_eq!(nix.eval("disabled.systemPackages"), "[]");
}

#[test]
fn module_per_build_socket_adds_recursive_nix_to_nix_settings() {
    let Some(nix) = StandIn::new() else {
        return;
    };
    // Merged with the user's experimental features, not replacing them.
    assert_eq!(
        nix.eval("perBuildSocket.nixSettings.experimental-features"),
        r#"["recursive-nix","nix-command"]"#
    );
    // Merged with NixOS's default system features, not replacing them.
    assert_eq!(
        nix.eval("perBuildSocket.nixSettings.system-features"),
        r#"["nixos-test","benchmark","big-parallel","kvm","recursive-nix"]"#
    );
    assert_eq!(
        nix.eval("perBuildSocket.execStart"),
        nix.eval("enabled.execStart"),
        "standard recursive Nix needs no nixnest-only setting"
    );
    assert_eq!(nix.eval("perBuildSocket.failedAssertions"), "[]");

    // A user who sets system-features without recursive-nix is told.
    let failed = nix.eval("ownSystemFeatures.failedAssertions");
    assert!(
        failed.contains("needs \\\"recursive-nix\\\" in nix.settings.system-features"),
        "{failed}"
    );
}

#[test]
fn module_seed_passes_its_nixnest_only_setting_outside_nix_conf() {
    let Some(nix) = StandIn::new() else {
        return;
    };
    let daemon = nix.eval_path("pkgs.nixnest-daemon");
    assert_eq!(
        nix.eval("seed.execStart"),
        format!(
            r#"["","{daemon}/bin/nixnest-daemon --daemon --option allow-build-user-connections true"]"#
        )
    );
    assert_eq!(
        nix.eval("seed.nixSettings.extra-sandbox-paths"),
        r#"["/nix/var/nix/daemon-socket"]"#
    );
    for scenario in ["seed", "everything"] {
        let settings = nix.eval(&format!("{scenario}.nixSettings"));
        let conf = nix.read(&format!("{scenario}.nixConfFile"));
        for nixnest_only in ["allow-build-user-connections", "nixnest-quoting-probe"] {
            assert!(!settings.contains(nixnest_only), "{scenario}: {settings}");
            assert!(!conf.contains(nixnest_only), "{scenario}: {conf}");
        }
    }

    // Seed style needs the setting true; a user saying false too gets a conflict, not a
    // silently ignored setting.
    let out = nix.try_eval("seedConflict.execStart");
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("conflicting definition values"),
        "{}",
        text(&out.stderr)
    );

    // A standard setting put in extraSettings would differ between daemon and clients.
    let failed = nix.eval("settingInBoth.failedAssertions");
    assert!(failed.contains("also in nix.settings: sandbox"), "{failed}");
    let failed = nix.eval("nixDisabled.failedAssertions");
    assert!(failed.contains("nix.enable = true"), "{failed}");
}

#[test]
fn module_quotes_nixnest_settings_for_systemd() {
    let Some(nix) = StandIn::new() else {
        return;
    };
    assert_eq!(
        nix.eval_path("everything.nixPackage"),
        nix.eval_path("pkgs.nix")
    );
    // The value is `two words, "quotes", 100% and $HOME`: one word for systemd, with `%` and `$`
    // doubled so systemd expands neither.
    assert_eq!(
        nix.eval("everything.execStart"),
        r#"["","/nix/store/22222222222222222222222222222222-nixnest-daemon-custom/bin/nixnest-daemon --daemon --option allow-build-user-connections true --option nixnest-quoting-probe \"two words, \\\"quotes\\\", 100%% and $$HOME\""]"#
    );

    let Some(analyze) = tool("systemd-analyze") else {
        return;
    };
    // The drop-ins as the stand-in renders them (one line per list element, as NixOS does),
    // verified by systemd with ExecStart= pointed at a dummy instead of the fake store path.
    let dir = tempdir();
    let exe = dummy_daemon(dir.path());
    let service_drop_in = PathBuf::from(nix.eval_path("everything.serviceDropIn"));
    let service = unit_copy_with_exec(
        &service_drop_in,
        "/nix/store/22222222222222222222222222222222-nixnest-daemon-custom/bin/nixnest-daemon",
        &exe,
        dir.path(),
    );
    let service = {
        let named = dir.path().join("nix-daemon.service");
        fs::rename(&service, &named).unwrap();
        named
    };
    let socket = dir.path().join("nix-daemon.socket");
    fs::copy(nix.eval_path("everything.socketDropIn"), &socket).unwrap();
    let rendered = fs::read_to_string(&service).unwrap();
    assert!(
        rendered.starts_with("[Service]\nExecStart=\nExecStart="),
        "{rendered}"
    );
    // systemd accepts the quoting and escapes. (Seeing the argv it makes of them would need a
    // running service manager, which this machine lacks.)
    let units = [socket, service.clone()];
    let complaints = verify_units(&analyze, &units);
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));

    // The check notices broken quoting, so the pass above means something.
    let unbalanced = rendered.replacen("$$HOME\"", "$$HOME", 1);
    assert_ne!(unbalanced, rendered);
    fs::write(&service, unbalanced).unwrap();
    let complaints = verify_units(&analyze, &units);
    assert!(
        complaints.iter().any(|c| c.contains("quoting")),
        "{complaints:?}"
    );
}

/// NixOS's nix.checkConfig, with the host's Nix: `nix show-config` on a nix.conf, every warning
/// counted as an error. Returns the complaints and show-config's output.
fn nix_conf_check(nix: &Path, dirs: &NixDirs, conf: &str) -> (Vec<String>, String) {
    let conf_dir = tempfile::tempdir_in(dirs.root.path()).unwrap();
    fs::write(conf_dir.path().join("nix.conf"), conf).unwrap();
    let mut cmd = dirs.command(nix);
    cmd.env("NIX_CONF_DIR", conf_dir.path()).args([
        "show-config",
        "--no-net",
        "--extra-experimental-features",
        "nix-command",
    ]);
    let out = run(&mut cmd);
    let mut complaints: Vec<String> = text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("warning:") || l.starts_with("error:"))
        .map(str::to_owned)
        .collect();
    if !out.status.success() {
        complaints.push(describe(&cmd, &out));
    }
    (complaints, text(&out.stdout))
}

fn show_config_value(output: &str, key: &str) -> Vec<String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("show-config has no {key}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn real_nix_accepts_the_nix_conf_the_module_generates() {
    let Some(nix_bin) = tool("nix") else {
        return;
    };
    let Some(nix) = StandIn::new() else {
        return;
    };
    for scenario in [
        "disabled",
        "enabled",
        "perBuildSocket",
        "seed",
        "everything",
    ] {
        let conf = nix.read(&format!("{scenario}.nixConfFile"));
        let (complaints, shown) = nix_conf_check(&nix_bin, &nix.dirs, &conf);
        assert!(
            complaints.is_empty(),
            "real Nix rejects the nix.conf of scenario {scenario}:\n{conf}\n{}",
            complaints.join("\n")
        );
        if scenario == "everything" {
            let features = show_config_value(&shown, "experimental-features");
            assert!(
                features.iter().any(|f| f == "recursive-nix"),
                "{features:?}"
            );
            let system = show_config_value(&shown, "system-features");
            for feature in ["recursive-nix", "kvm", "nixos-test", "big-parallel"] {
                assert!(system.iter().any(|f| f == feature), "{feature}: {system:?}");
            }
            // extra-sandbox-paths is appended to sandbox-paths.
            let paths = show_config_value(&shown, "sandbox-paths");
            assert!(
                paths.iter().any(|p| p == "/nix/var/nix/daemon-socket"),
                "{paths:?}"
            );
        }
    }

    // The check is not blind: a nixnest-only setting in nix.conf is exactly what it rejects.
    let conf = nix.read("everything.nixConfFile") + "allow-build-user-connections = true\n";
    let (complaints, _) = nix_conf_check(&nix_bin, &nix.dirs, &conf);
    assert!(
        complaints
            .iter()
            .any(|c| c.contains("unknown setting 'allow-build-user-connections'")),
        "{complaints:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The installed daemon (needs a nixnest-daemon that serves; skipped until there is one)

/// A nixnest-daemon built by cargo that answers `--version`, or `None` after printing why not.
fn serving_daemon() -> PathBuf {
    // The workspace's own build (or an explicit one): never "whatever was built last", and
    // never a silent skip — the daemon is part of this workspace, so its absence is a failure.
    let daemon = std::env::var_os("NIXNEST_DAEMON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| nixnest_testkit::cargo_bin("nixnest-daemon"));
    let out = run(Command::new(&daemon).arg("--version"));
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "{} does not answer --version: {}",
        daemon.display(),
        text(&out.stderr).trim()
    );
    daemon
}

/// A process this test started, killed (by its own pid) when the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_socket(path: &Path, daemon: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("the daemon exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "no socket at {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real `nix-store` client, through the socket at `socket`: adds a file, then reads it back
/// and asks for its references (two sessions, several requests).
fn client_round_trip(nix_store: &Path, dirs: &NixDirs, socket: &Path) {
    let file = dirs.path("greeting");
    let mut f = fs::File::create(&file).unwrap();
    writeln!(f, "served by an installed nixnest").unwrap();
    let remote = format!("unix://{}", socket.display());

    let out = run_ok(
        dirs.command(nix_store)
            .env("NIX_REMOTE", &remote)
            .arg("--add")
            .arg(&file),
    );
    let added = text(&out.stdout).trim().to_owned();
    assert!(
        added.starts_with(&format!("{}/", dirs.store().display())) && added.ends_with("-greeting"),
        "{added}"
    );
    assert_eq!(
        fs::read_to_string(&added).unwrap(),
        "served by an installed nixnest\n"
    );
    let out = run_ok(
        dirs.command(nix_store)
            .env("NIX_REMOTE", &remote)
            .args(["--query", "--references"])
            .arg(&added),
    );
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn installed_daemon_serves_the_real_client() {
    let Some(nix_store) = tool("nix-store") else {
        return;
    };
    let built = serving_daemon();
    let dirs = NixDirs::new();
    let dest = dirs.path("root");
    run_ok(
        install_script()
            .arg("--destdir")
            .arg(&dest)
            .arg("--binary")
            .arg(&built),
    );
    let installed = dest.join("usr/local/bin/nixnest-daemon");
    // The command line of the installed unit, with its paths moved into the destdir.
    let socket = dirs.path("daemon-socket/socket");
    let mut daemon = Running(
        dirs.command(&installed)
            .arg("--daemon")
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_socket(&socket, &mut daemon);
    client_round_trip(&nix_store, &dirs, &socket);
}

#[test]
fn socket_activation_hands_the_daemon_its_named_socket() {
    let Some(activate) = tool("systemd-socket-activate") else {
        return;
    };
    let Some(nix_store) = tool("nix-store") else {
        return;
    };
    let daemon = serving_daemon();
    let dirs = NixDirs::new();
    let socket = dirs.path("socket");
    // If the daemon ignored LISTEN_FDS it would bind this path instead, and the client below,
    // which uses the activated socket, would find nobody there.
    let own_socket = dirs.path("daemon-socket/socket");
    let mut cmd = Command::new(&activate);
    cmd.env_clear()
        .env("PATH", SYSTEM_PATH)
        .arg("--listen")
        .arg(&socket)
        .arg("--fdname=nix-daemon.socket");
    for (key, value) in dirs.env() {
        cmd.arg(format!("--setenv={key}={}", value.display()));
    }
    cmd.arg(format!(
        "--setenv=NIX_DAEMON_SOCKET_PATH={}",
        own_socket.display()
    ))
    .arg(&daemon)
    .arg("--daemon")
    .stdin(Stdio::null());
    let mut running = Running(cmd.spawn().unwrap());
    wait_for_socket(&socket, &mut running);
    client_round_trip(&nix_store, &dirs, &socket);
    assert!(
        !own_socket.exists(),
        "the daemon bound its own socket although systemd handed it one"
    );
}
