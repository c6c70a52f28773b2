//! Daemon processes serving a [`TestStore`] on a Unix socket: the real `nix-daemon` (host 2.8,
//! or 2.26 / 2.34 from a chroot) as the reference, and later `nixnest-daemon` itself, all
//! started, awaited and stopped the same way.
//!
//! Lifecycle of a [`Daemon`]:
//!
//! * **start**: the program runs with the store's environment (`NIX_STORE_DIR`, …,
//!   `NIX_DAEMON_SOCKET_PATH=<socket>`), stdin from `/dev/null`, stdout and stderr appended to
//!   `<root>/logs/<name>.log`, in its own process group, and with `PR_SET_PDEATHSIG = SIGKILL`
//!   so it dies if the test process dies without unwinding. (The "parent" of that signal is
//!   the *thread* that started the daemon: start daemons on the test's own thread, not on a
//!   short-lived helper thread.)
//! * **ready**: [`DaemonSpec::start`] returns once the socket is *listening* — a line for
//!   that path with the `__SO_ACCEPTCON` flag in `/proc/net/unix` — without connecting, so
//!   the daemon's log and connection count see only the test's own clients. A daemon that
//!   exits first, or is not ready in time, fails the test with its log.
//! * **isolation** (default on): the daemon runs as init of a new PID namespace (`unshare
//!   --pid --fork --kill-child`, with its own `/proc`). When it dies, the kernel kills every
//!   process it started — per-connection workers, builders — whatever state the test left
//!   them in. A daemon in its own PID namespace sees clients as pid 0 and cannot find their
//!   runtime GC roots in `/proc`; turn isolation off for tests that need either.
//! * **stop**: on drop (or [`Daemon::stop`]) the process group gets SIGKILL and is reaped; if
//!   the test is panicking, the daemon's log is printed so the failure report includes it.
//!
//! Chroot daemons run through [`crate::chroot::enter`] with the test root shared, so their
//! socket, store and logs are at the same paths on the host. They get `build-dir =
//! /run/nix-builds` (a tmpfs inside their namespace): Nix ≥ 2.26 refuses a build dir below a
//! world-writable directory such as `/tmp` when it uses build users.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

use crate::chroot::{self, Pids};
use crate::client::Client;
use crate::run::{describe, kill_group};
use crate::store::TestStore;

/// Where a daemon program lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Host,
    Chroot(Client),
}

/// How to start a daemon; made by [`TestStore::nix_daemon`] or [`TestStore::daemon`],
/// adjusted with the builder methods, then [`DaemonSpec::start`]ed.
#[derive(Debug)]
#[must_use = "a DaemonSpec does nothing until started"]
pub struct DaemonSpec {
    name: String,
    place: Place,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    socket: PathBuf,
    isolate_pids: bool,
    ready_timeout: Duration,
    store: TestStore,
}

impl TestStore {
    /// The real `nix-daemon` of `client` (host 2.8, or 2.26 / 2.34 in their chroot) serving
    /// this store on `<root>/s/nix-<client>.sock`.
    pub fn nix_daemon(&self, client: Client) -> DaemonSpec {
        let mut spec = DaemonSpec::new(self, &format!("nix-{}", client.name()), "nix-daemon");
        if client != Client::Host {
            spec.place = Place::Chroot(client);
            spec = spec.option("build-dir", "/run/nix-builds");
        }
        spec
    }

    /// Any daemon program on the host (e.g. `nixnest-daemon`, see [`cargo_bin`]) serving this
    /// store on `<root>/s/<name>.sock`, with the store's environment. Add its own flags with
    /// [`DaemonSpec::arg`].
    pub fn daemon(&self, name: &str, program: impl AsRef<OsStr>) -> DaemonSpec {
        DaemonSpec::new(self, name, program)
    }
}

impl DaemonSpec {
    fn new(store: &TestStore, name: &str, program: impl AsRef<OsStr>) -> Self {
        let socket = store.socket_path(name);
        let mut env: Vec<(OsString, OsString)> = store
            .nix_env()
            .into_iter()
            .map(|(k, v)| (k.into(), v))
            .collect();
        env.push(("HOME".into(), store.home(None).into()));
        env.push(("NIX_DAEMON_SOCKET_PATH".into(), socket.clone().into()));
        DaemonSpec {
            name: name.to_owned(),
            place: Place::Host,
            argv: vec![program.as_ref().to_owned()],
            env,
            socket,
            isolate_pids: true,
            ready_timeout: Duration::from_secs(30),
            store: store.clone(),
        }
    }

    /// Renames it (for the log file `<root>/logs/<name>.log`) and moves its socket to
    /// `<root>/s/<name>.sock`: for a second daemon of the same kind on one store.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        let socket = self.store.socket_path(name);
        self.socket(socket)
    }

    /// Appends a command-line argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.argv.push(arg.as_ref().to_owned());
        self
    }

    /// Appends command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Appends `--option <name> <value>` (Nix's way to override one setting).
    pub fn option(self, name: &str, value: &str) -> Self {
        self.args(["--option", name, value])
    }

    /// Sets an environment variable (on top of the store's).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_owned();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.as_ref().to_owned()));
        self
    }

    /// Listens on `socket` instead of `<root>/s/<name>.sock` (also sets
    /// `NIX_DAEMON_SOCKET_PATH`). For a chroot daemon it must be under the test root.
    pub fn socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = socket.into();
        let socket = self.socket.clone();
        self.env("NIX_DAEMON_SOCKET_PATH", socket)
    }

    /// Whether to run the daemon as init of its own PID namespace (default: yes).
    pub fn isolate_pids(mut self, on: bool) -> Self {
        self.isolate_pids = on;
        self
    }

    /// How long to wait for the socket to listen (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The socket it will listen on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The command that [`DaemonSpec::start`] runs (environment included).
    pub fn command(&self) -> Command {
        let root = self.store.root();
        let mut cmd = match (self.place, self.isolate_pids) {
            (Place::Host, true) => chroot::isolate_pids(&self.argv),
            (Place::Host, false) => {
                let mut cmd = Command::new(&self.argv[0]);
                cmd.args(&self.argv[1..]);
                cmd
            }
            (Place::Chroot(client), isolate) => {
                let pids = if isolate { Pids::Own } else { Pids::Shared };
                client.command(&[root], pids, &self.argv)
            }
        };
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Starts the daemon and waits until its socket listens. Panics (with the daemon's log)
    /// if it exits or is not ready within the timeout.
    pub fn start(self) -> Daemon {
        let log_path = self.store.path(format!("logs/{}.log", self.name));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("dup log fd");
        // A stale socket file from an earlier daemon would not be listening; remove it so
        // the file we later check is this daemon's.
        let _ = std::fs::remove_file(&self.socket);

        let mut cmd = self.command();
        cmd.stdout(log).stderr(log2).process_group(0);
        // SAFETY: the closure only makes one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(Into::into)
            });
        }
        let description = describe(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start daemon {}: {e}", description));
        let mut daemon = Daemon {
            name: self.name,
            child,
            socket: self.socket,
            log: log_path,
            isolated: self.isolate_pids,
            status: None,
            _store: self.store,
        };
        daemon.wait_ready(self.ready_timeout, &description);
        daemon
    }
}

/// A running daemon; killed (with everything it started) and reaped when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    isolated: bool,
    status: Option<ExitStatus>,
    // Keeps the store's directory alive until the daemon is gone.
    _store: TestStore,
}

impl Daemon {
    /// The name given at start (`nix-host`, `nix-sid`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The store URI clients use for it: `unix://<socket>`.
    pub fn uri(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The pid of the process the test started (`unshare` when isolated).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid (in the host's PID namespace) of the daemon program itself: the child of
    /// `unshare` when isolated, else [`Daemon::pid`].
    pub fn main_pid(&self) -> u32 {
        if !self.isolated {
            return self.pid();
        }
        children_of(self.pid())
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("daemon {} has no process inside its namespace", self.name))
    }

    /// Sends `signal` to the daemon program itself. (As init of a PID namespace it only
    /// receives signals it has a handler for, besides SIGKILL.)
    pub fn signal(&self, signal: Signal) {
        let pid = rustix::process::Pid::from_raw(self.main_pid() as i32).expect("pid > 0");
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("signalling daemon {}: {e}", self.name));
    }

    /// Whether it is still running (reaps it if not).
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for it to exit on its own; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it (SIGKILL to its process group) and reaps it; returns how it ended.
    pub fn stop(mut self) -> ExitStatus {
        self.kill()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        if self.isolated {
            // Killing the namespace's init first lets `unshare` reap it (and the kernel
            // kill the rest of the namespace); killing both at once would leave the
            // daemon's zombie to the system's init.
            for pid in children_of(self.child.id()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
            if self.wait_exit(Duration::from_secs(5)).is_some() {
                return self.status.expect("set by wait_exit");
            }
        }
        kill_group(self.child.id());
        let status = self.child.wait().expect("reaping daemon");
        self.status = Some(status);
        status
    }

    fn wait_ready(&mut self, timeout: Duration, description: &str) {
        let start = Instant::now();
        loop {
            if is_listening(&self.socket) && self.socket.exists() {
                return;
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "daemon {} exited ({status}) before listening on {}\ncommand: {description}\n--- log ---\n{}",
                    self.name,
                    self.socket.display(),
                    self.log()
                );
            }
            if start.elapsed() >= timeout {
                self.kill();
                panic!(
                    "daemon {} not listening on {} after {timeout:?}\ncommand: {description}\n--- log ---\n{}",
                    self.name,
                    self.socket.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- log of daemon {} ({}) ---\n{}\n--- end of log ---",
                self.name,
                self.log.display(),
                self.log().trim_end()
            );
        }
    }
}

/// Whether a Unix socket bound to exactly `path` is listening in this network namespace.
///
/// `/proc/net/unix` lines are `Num RefCount Protocol Flags Type St Inode [Path]`; Flags
/// `00010000` is `__SO_ACCEPTCON`, set by `listen(2)`. The path is the one given to `bind(2)`.
pub fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let path = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() == 8
            && fields[7] == path
            && u32::from_str_radix(fields[3], 16).is_ok_and(|flags| flags & 0x1_0000 != 0)
    })
}

/// The pids whose parent is `pid`, from `/proc/<pid>/stat` (field 4, after the `(comm)`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// The path of a binary built by cargo in this workspace, e.g. `cargo_bin("nixnest-daemon")`:
/// env `CARGO_BIN_EXE_<name>` if set, else `<target>/<profile>/<name>` next to the running
/// test executable (`<target>/<profile>/deps/<test>-<hash>`). Panics with the fix if the
/// binary has not been built (`cargo test --workspace` builds every binary first).
pub fn cargo_bin(name: &str) -> PathBuf {
    try_cargo_bin(name).unwrap_or_else(|| {
        panic!(
            "binary {name} not built at {}; run `cargo build --workspace` (or `cargo test --workspace`)",
            profile_dir().join(name).display()
        )
    })
}

/// Like [`cargo_bin`], but `None` when the binary has not been built: for tests that skip
/// (saying why) instead of failing when it is absent, e.g. when only one package is tested.
pub fn try_cargo_bin(name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return Some(PathBuf::from(path));
    }
    Some(profile_dir().join(name)).filter(|path| path.exists())
}

/// `<target>/<profile>`, the directory of the running test executable or its parent when
/// that is `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .filter(|d| d.ends_with("deps"))
        .and_then(Path::parent)
        .or_else(|| exe.parent())
        .expect("test executable has a parent dir")
        .to_path_buf()
}
