//! The test rig: throwaway Nix stores and the real Nix clients.
//!
//! Every end-to-end test builds its own [`TestStore`] under `/tmp` and points the real
//! `nix` commands at it through Nix's own environment variables, so tests never touch
//! the machine's `/nix` and can run in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A throwaway Nix store root: store dir, state dir, log dir and config dir under one
/// temporary directory that is removed when the value is dropped.
pub struct TestStore {
    root: tempfile::TempDir,
}

impl TestStore {
    /// Creates an empty store root under `/tmp` with a `nix.conf` that needs no network,
    /// no build users and no substituters.
    pub fn new() -> std::io::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("nixnest-test-")
            .tempdir_in("/tmp")?;
        let this = TestStore { root };
        for dir in [
            this.store_dir(),
            this.state_dir(),
            this.log_dir(),
            this.conf_dir(),
        ] {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            this.conf_dir().join("nix.conf"),
            "build-users-group =\nsubstituters =\nexperimental-features = nix-command\nsandbox = false\n",
        )?;
        Ok(this)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
    pub fn store_dir(&self) -> PathBuf {
        self.root().join("store")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("var/nix")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root().join("var/log/nix")
    }
    pub fn conf_dir(&self) -> PathBuf {
        self.root().join("etc")
    }

    /// A host `nix` command (`nix-store`, `nix-instantiate`, `nix`, …) that uses this store
    /// directly in local mode.
    pub fn nix(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", self.root())
            .env("NIX_STORE_DIR", self.store_dir())
            .env("NIX_STATE_DIR", self.state_dir())
            .env("NIX_LOG_DIR", self.log_dir())
            .env("NIX_CONF_DIR", self.conf_dir())
            .env("NIX_REMOTE", "local");
        cmd
    }
}
