//! A throwaway Nix store: one directory under `/tmp` holding everything a store needs, and
//! the environment that points the real `nix` programs (and nixnest) at it.
//!
//! Layout of the root (`/tmp/nixnest-XXXXXX`, mode 0755 so every test user can reach the
//! store and the sockets):
//!
//! | path | what |
//! |---|---|
//! | `store/` | the store dir: store paths are `/tmp/nixnest-XXXXXX/store/<hash>-<name>` |
//! | `var/nix/` | the state dir (`db/`, `gcroots/`, `profiles/`, `temproots/`, …) |
//! | `var/log/nix/` | the log dir (`drvs/`) |
//! | `etc/nix.conf` | the config every client and daemon of this store reads (`NIX_CONF_DIR`) |
//! | `s/` | daemon sockets, short paths: a Unix socket path must fit in 108 bytes |
//! | `logs/` | daemon stdout+stderr, one file per daemon |
//! | `home/<user>/` | `HOME` and XDG dirs of each user running a client |
//! | `bb/` | the busybox toolchain, once asked for ([`TestStore::busybox`]) |
//!
//! The store dir is a plain value here, as everywhere in nixnest: nothing is at `/nix`. The
//! whole root is removed when the last handle is dropped; [`crate::Daemon`]s keep a handle,
//! so a daemon always dies before its store disappears.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use crate::client::{Client, Nix, PATH};
use crate::users::{BuildUsers, TestUser};

/// The longest path `bind(2)` accepts for a Unix socket (`sun_path` is 108 bytes with NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A throwaway store root under `/tmp`; cheap to clone (all clones share one directory, which
/// is removed when the last one is dropped).
#[derive(Clone, Debug)]
pub struct TestStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: Root,
    build_users: Option<BuildUsers>,
    busybox: OnceLock<PathBuf>,
}

/// The root directory of a store, removed (with everything in it) on drop.
#[derive(Debug)]
enum Root {
    /// A fresh `/tmp/nixnest-XXXXXX`.
    Temp(tempfile::TempDir),
    /// A path chosen by the test ([`TestStoreBuilder::root`]).
    Fixed(PathBuf),
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Temp(dir) => dir.path(),
            Root::Fixed(path) => path,
        }
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Root::Fixed(path) = self {
            // Like `TempDir`: best effort, a leftover directory is no test failure.
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Options for a new [`TestStore`]; made by [`TestStore::builder`].
#[derive(Debug, Default)]
pub struct TestStoreBuilder {
    sandbox: bool,
    build_users: Option<BuildUsers>,
    conf: Vec<String>,
    root: Option<PathBuf>,
}

impl TestStoreBuilder {
    /// `sandbox = true` (with `sandbox-fallback = false`, so a sandbox that cannot be set up
    /// is an error rather than a silently unsandboxed build). Default: `sandbox = false`.
    pub fn sandbox(mut self, on: bool) -> Self {
        self.sandbox = on;
        self
    }

    /// Builds run as the members of `users`' group (`build-users-group = <group>`); the
    /// store holds the lease until it is dropped. Default: `build-users-group =` (builds run
    /// as the daemon's own user).
    pub fn build_users(mut self, users: BuildUsers) -> Self {
        self.build_users = Some(users);
        self
    }

    /// An extra `nix.conf` line, e.g. `"trusted-users = root alice"`.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }

    /// Uses exactly `path` (absolute, under `/tmp`, not existing yet; its parent must exist)
    /// as the root instead of a fresh `/tmp/nixnest-XXXXXX`. It is removed like any root
    /// when the last handle is dropped. For tests that compare two daemons on stores at the
    /// *same* paths, one after the other: store paths depend on the store dir, so only
    /// stores at one location give byte-identical answers.
    pub fn root(mut self, path: impl Into<PathBuf>) -> Self {
        self.root = Some(path.into());
        self
    }

    /// Creates the root, its directories and `nix.conf`.
    pub fn build(self) -> TestStore {
        let dir = match self.root {
            None => Root::Temp(
                tempfile::Builder::new()
                    .prefix("nixnest-")
                    .tempdir_in("/tmp")
                    .expect("creating a test store root under /tmp"),
            ),
            Some(path) => {
                assert!(
                    path.is_absolute() && path.starts_with("/tmp/"),
                    "a test store root must be under /tmp (chroot clients share it): {}",
                    path.display()
                );
                std::fs::create_dir(&path)
                    .unwrap_or_else(|e| panic!("creating test store root {}: {e}", path.display()));
                Root::Fixed(path)
            }
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod test store root");
        let mut conf = vec![
            format!(
                "build-users-group = {}",
                self.build_users.as_ref().map_or("", |u| u.group())
            ),
            "substituters =".to_owned(),
            "experimental-features = nix-command".to_owned(),
            format!("sandbox = {}", self.sandbox),
        ];
        if self.sandbox {
            conf.push("sandbox-fallback = false".to_owned());
        }
        conf.extend(self.conf);
        let store = TestStore {
            inner: Arc::new(Inner {
                dir,
                build_users: self.build_users,
                busybox: OnceLock::new(),
            }),
        };
        for dir in [
            store.store_dir(),
            store.state_dir(),
            store.log_dir(),
            store.conf_dir(),
            store.root().join("s"),
            store.root().join("logs"),
            store.root().join("home"),
        ] {
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        let mut text = conf.join("\n");
        text.push('\n');
        std::fs::write(store.conf_file(), text).expect("writing nix.conf");
        store
    }
}

impl TestStore {
    /// A store with the defaults: no sandbox, no build users, no substituters,
    /// `experimental-features = nix-command`.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Options for a store (sandbox, build users, extra config).
    pub fn builder() -> TestStoreBuilder {
        TestStoreBuilder::default()
    }

    /// The root directory, `/tmp/nixnest-XXXXXX`.
    pub fn root(&self) -> &Path {
        self.inner.dir.path()
    }

    /// `root` joined with a relative path.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root().join(rel)
    }

    /// The store dir (`NIX_STORE_DIR`), `<root>/store`.
    pub fn store_dir(&self) -> PathBuf {
        self.root().join("store")
    }

    /// The state dir (`NIX_STATE_DIR`), `<root>/var/nix`; the db is in `db/db.sqlite`.
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("var/nix")
    }

    /// The SQLite database, `<state dir>/db/db.sqlite` (exists once a store was opened).
    pub fn db_path(&self) -> PathBuf {
        self.state_dir().join("db/db.sqlite")
    }

    /// The log dir (`NIX_LOG_DIR`), `<root>/var/log/nix`.
    pub fn log_dir(&self) -> PathBuf {
        self.root().join("var/log/nix")
    }

    /// The config dir (`NIX_CONF_DIR`), `<root>/etc`.
    pub fn conf_dir(&self) -> PathBuf {
        self.root().join("etc")
    }

    /// `<root>/etc/nix.conf`.
    pub fn conf_file(&self) -> PathBuf {
        self.conf_dir().join("nix.conf")
    }

    /// Appends a line to `nix.conf`. Clients read it on every run; a daemon only when it
    /// starts.
    pub fn append_conf(&self, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.conf_file())
            .expect("opening nix.conf");
        writeln!(f, "{line}").expect("appending to nix.conf");
    }

    /// The build-user group this store's builds use, if any.
    pub fn build_users(&self) -> Option<&BuildUsers> {
        self.inner.build_users.as_ref()
    }

    /// A socket path for a daemon called `name`: `<root>/s/<name>.sock`. Panics if it would
    /// not fit in `sun_path`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        let path = self.root().join("s").join(format!("{name}.sock"));
        assert!(
            path.as_os_str().len() <= MAX_SOCKET_PATH,
            "socket path too long for a Unix socket: {}",
            path.display()
        );
        path
    }

    /// Writes `contents` to `<root>/<rel>` (creating parent dirs) and returns the path.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating parent dir");
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// The variables that point Nix at this store (`NIX_STORE_DIR`, `NIX_STATE_DIR`,
    /// `NIX_LOG_DIR`, `NIX_CONF_DIR`, plus `PATH` and an empty `NIX_PATH`), for clients and
    /// daemons alike. `NIX_REMOTE` and `HOME` are the caller's business.
    pub fn nix_env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("PATH", PATH.into()),
            ("NIX_PATH", OsString::new()),
            ("NIX_STORE_DIR", self.store_dir().into()),
            ("NIX_STATE_DIR", self.state_dir().into()),
            ("NIX_LOG_DIR", self.log_dir().into()),
            ("NIX_CONF_DIR", self.conf_dir().into()),
        ]
    }

    /// The home dir of `user` (root if `None`), `<root>/home/<name>`, created on first use
    /// and owned by the user.
    pub fn home(&self, user: Option<&TestUser>) -> PathBuf {
        let name = user.map_or("root", |u| u.name.as_str());
        let home = self.root().join("home").join(name);
        std::fs::create_dir_all(&home)
            .unwrap_or_else(|e| panic!("creating {}: {e}", home.display()));
        if let Some(user) = user {
            std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", home.display()));
        }
        home
    }

    /// Runs `client` against this store; local mode and root until told otherwise.
    pub fn client(&self, client: Client) -> Nix<'_> {
        Nix::new(self, client)
    }

    /// Shortcut: the host `nix` 2.8 program `program`, local mode, as root.
    pub fn nix(&self, program: &str) -> Command {
        self.client(Client::Host).command(program)
    }

    /// The busybox toolchain dir `<root>/bb` (see [`crate::busybox`]), created on first use.
    pub fn busybox(&self) -> &Path {
        self.inner.busybox.get_or_init(|| {
            let dir = self.root().join("bb");
            crate::busybox::install(&dir);
            dir
        })
    }

    /// Writes a Nix expression to `<root>/<name>` next to the busybox toolchain (so `./bb`
    /// in it refers to [`TestStore::busybox`]) and returns its path.
    pub fn write_expr(&self, name: &str, expr: &str) -> PathBuf {
        self.busybox();
        self.write(name, expr)
    }
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}
