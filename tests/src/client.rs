//! The real Nix clients: the host's Debian 12 `nix-bin` 2.8.0 and the newer ones in the
//! trixie (2.26.3) and sid (2.34.8) chroots, all behind one interface.
//!
//! A client command is a [`Command`] whose environment points Nix at a [`TestStore`]:
//!
//! | variable | value |
//! |---|---|
//! | `NIX_STORE_DIR`, `NIX_STATE_DIR`, `NIX_LOG_DIR`, `NIX_CONF_DIR` | the test store's dirs |
//! | `NIX_REMOTE` | `local`, or `unix://<socket>` for a daemon |
//! | `HOME`, `XDG_{CACHE,CONFIG,DATA,STATE}_HOME` | a per-user home inside the test root |
//! | `NIX_PATH` | empty (no channels, no `<nixpkgs>`) |
//! | `PATH` | `/usr/bin:/bin:/usr/sbin:/sbin` (inside the chroot for chroot clients) |
//! | `NIX_CONFIG` | chroot clients in local mode only: `build-dir = /run/nix-builds` |
//!
//! Nothing else of the caller's environment leaks in. The client also needs the store
//! variables in daemon mode: the store dir is client-side configuration (the daemon never
//! sends it), and 2.8 reads `.drv` files, logs and NARs straight from the file system.
//!
//! Chroot clients run through [`chroot::enter`] with the test root shared at its own path, so
//! store paths, sockets and files look the same inside and out. Every chroot has its own
//! `/etc/nix/nix.conf` defaults, which is why `NIX_CONF_DIR` is always set.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::chroot::{self, Pids};
use crate::daemon::Daemon;
use crate::store::TestStore;
use crate::users::TestUser;

/// `PATH` for every client and daemon, on the host and in the chroots.
pub const PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// One of the real Nix implementations the tests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    /// The host's `nix-bin` 2.8.0 (Debian 12), worker protocol 1.34.
    Host,
    /// Nix 2.26.3 from the Debian trixie chroot, worker protocol 1.38.
    Trixie,
    /// Nix 2.34.8 from the Debian sid chroot, worker protocol 1.38.
    Sid,
}

impl Client {
    /// Every client, oldest first.
    pub const ALL: [Client; 3] = [Client::Host, Client::Trixie, Client::Sid];

    /// A short name for messages and file names: `host`, `trixie`, `sid`.
    pub fn name(self) -> &'static str {
        match self {
            Client::Host => "host",
            Client::Trixie => "trixie",
            Client::Sid => "sid",
        }
    }

    /// The Nix version this client is expected to be (what `nix --version` prints last).
    pub fn version(self) -> &'static str {
        match self {
            Client::Host => "2.8.0",
            Client::Trixie => "2.26.3",
            Client::Sid => "2.34.8",
        }
    }

    /// The minor worker-protocol version it announces (the major is always 1).
    pub fn protocol_minor(self) -> u8 {
        match self {
            Client::Host => 34,
            Client::Trixie | Client::Sid => 38,
        }
    }

    /// The chroot it runs in, `None` for the host client.
    pub fn chroot(self) -> Option<PathBuf> {
        match self {
            Client::Host => None,
            Client::Trixie | Client::Sid => Some(chroot::clients_dir().join(self.name())),
        }
    }

    /// Whether the client can run here (the host always; a chroot once prepared).
    pub fn is_available(self) -> bool {
        self.chroot()
            .is_none_or(|dir| dir.join("usr/bin/nix-store").exists())
    }

    /// The chroot directory, panicking with the fix if it has not been prepared.
    pub(crate) fn require_chroot(self) -> Option<PathBuf> {
        let dir = self.chroot()?;
        assert!(
            dir.join("usr/bin/nix-store").exists(),
            "the Nix {} client chroot is missing at {}; run tests/prepare-clients",
            self.version(),
            dir.display()
        );
        Some(dir)
    }

    /// A [`Command`] running `argv` as this client would: directly on the host, or inside
    /// its chroot with `shared` directories visible. `pids` only matters for chroots (host
    /// programs are isolated by the caller when needed).
    pub(crate) fn command(self, shared: &[&Path], pids: Pids, argv: &[OsString]) -> Command {
        match self.require_chroot() {
            None => {
                let (program, args) = argv.split_first().expect("argv has a program");
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Some(dir) => chroot::enter(&dir, shared, pids, argv),
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nix {} ({})", self.version(), self.name())
    }
}

/// Where a client sends its store operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// `NIX_REMOTE=local`: the client opens the store and its SQLite db itself.
    Local,
    /// `NIX_REMOTE=unix://<socket>`: every operation goes to the daemon on that socket.
    Socket(PathBuf),
}

/// How to run one of the real clients against a [`TestStore`]: which client, local or
/// through a daemon, as which user. Made by [`TestStore::client`]; [`Nix::command`] turns it
/// into a [`Command`] for one program (`nix-store`, `nix-build`, `nix`, …).
///
/// ```no_run
/// # use nixnest_testkit::*;
/// let store = TestStore::new();
/// let daemon = store.nix_daemon(Client::Host).start();
/// let file = store.write("hello.txt", "hello\n");
/// let path = store.client(Client::Sid).daemon(&daemon)
///     .command("nix-store").arg("--add").arg(&file).run();
/// ```
#[derive(Clone, Debug)]
pub struct Nix<'s> {
    store: &'s TestStore,
    client: Client,
    remote: Remote,
    user: Option<TestUser>,
}

impl<'s> Nix<'s> {
    pub(crate) fn new(store: &'s TestStore, client: Client) -> Self {
        Nix {
            store,
            client,
            remote: Remote::Local,
            user: None,
        }
    }

    /// Talks to `daemon` instead of opening the store locally.
    pub fn daemon(self, daemon: &Daemon) -> Self {
        self.socket(daemon.socket())
    }

    /// Talks to the daemon listening on `socket`.
    pub fn socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.remote = Remote::Socket(socket.into());
        self
    }

    /// Opens the store directly (the default).
    pub fn local(mut self) -> Self {
        self.remote = Remote::Local;
        self
    }

    /// Runs as `user` (real and effective uid/gid, supplementary groups from
    /// `/etc/group`) via `setpriv`, with its own home inside the test root.
    pub fn user(mut self, user: &TestUser) -> Self {
        self.user = Some(user.clone());
        self
    }

    /// The client this runs.
    pub fn client(&self) -> Client {
        self.client
    }

    /// The `NIX_REMOTE` value it uses.
    pub fn nix_remote(&self) -> OsString {
        match &self.remote {
            Remote::Local => "local".into(),
            Remote::Socket(path) => {
                let mut s = OsString::from("unix://");
                s.push(path);
                s
            }
        }
    }

    /// A [`Command`] for `program` (looked up in the client's `PATH`), ready for arguments.
    /// Arguments and `env` added to it reach the Nix program unchanged, also through the
    /// chroot; relative paths resolve against `current_dir` when that exists in the chroot
    /// (always true under the test root).
    pub fn command(&self, program: &str) -> Command {
        let home = self.store.home(self.user.as_ref());
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(user) = &self.user {
            argv.extend(
                [
                    "setpriv",
                    "--reuid",
                    &user.uid.to_string(),
                    "--regid",
                    &user.gid.to_string(),
                    "--init-groups",
                    "--",
                ]
                .map(OsString::from),
            );
        }
        argv.push(program.into());
        let mut cmd = self
            .client
            .command(&[self.store.root()], Pids::Shared, &argv);
        cmd.env_clear()
            .envs(self.store.nix_env())
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("NIX_REMOTE", self.nix_remote());
        if self.client != Client::Host && self.remote == Remote::Local {
            // Building locally with build users, Nix ≥ 2.26 refuses a build dir below a
            // world-writable directory; the default one is in the state dir under /tmp.
            cmd.env("NIX_CONFIG", "build-dir = /run/nix-builds");
        }
        if let Some(user) = &self.user {
            cmd.env("USER", &user.name).env("LOGNAME", &user.name);
        } else {
            cmd.env("USER", "root").env("LOGNAME", "root");
        }
        cmd
    }
}
