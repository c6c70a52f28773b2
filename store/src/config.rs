//! Store settings: where the store lives and the `nix.conf` options the store itself obeys.
//!
//! The daemon parses `nix.conf` and fills this in; the store never reads configuration
//! files or environment variables itself, so every test can run on a private temp store.

use std::path::{Path, PathBuf};

pub use nixnest_core::PublicKey;

/// Everything `LocalStore::open` needs to know.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The logical store directory, e.g. `/nix/store` (`NIX_STORE_DIR`). Also where the
    /// files are: chroot stores (`--store /x`) are not supported by nixnest.
    pub store_dir: PathBuf,
    /// `NIX_STATE_DIR`, default `/nix/var/nix`: db, gcroots, profiles, temproots, locks.
    pub state_dir: PathBuf,
    /// `NIX_LOG_DIR`, default `/nix/var/log/nix`: build logs under `drvs/`.
    pub log_dir: PathBuf,
    /// `gc-reserved-space` (default 8 MiB): size of `db/reserved`.
    pub gc_reserved_space: u64,
    /// `fsync-metadata` (default true): `synchronous = normal` instead of `off`.
    pub fsync_metadata: bool,
    /// The gid of `build-users-group`; when running as root the store dir is forced to
    /// `root:<gid>` mode 1775 on open. `None` = no build users.
    pub build_users_gid: Option<u32>,
    /// `require-sigs` (default true): imports of input-addressed paths need a signature.
    pub require_sigs: bool,
    /// `trusted-public-keys` (`<name>:<base64>` each, parsed with `PublicKey::parse`).
    pub trusted_public_keys: Vec<PublicKey>,
    /// `auto-optimise-store` (default false): hard-link identical files on ingest.
    pub auto_optimise_store: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            store_dir: PathBuf::from("/nix/store"),
            state_dir: PathBuf::from("/nix/var/nix"),
            log_dir: PathBuf::from("/nix/var/log/nix"),
            gc_reserved_space: 8 * 1024 * 1024,
            fsync_metadata: true,
            build_users_gid: None,
            require_sigs: true,
            trusted_public_keys: Vec::new(),
            auto_optimise_store: false,
        }
    }
}

impl StoreConfig {
    /// A store rooted at `root`, laid out like `nix-store --store <root>`'s real paths:
    /// `<root>/nix/store`, `<root>/nix/var/nix`, `<root>/nix/var/log/nix`. Used by tests.
    pub fn under(root: &Path) -> Self {
        StoreConfig {
            store_dir: root.join("nix/store"),
            state_dir: root.join("nix/var/nix"),
            log_dir: root.join("nix/var/log/nix"),
            ..StoreConfig::default()
        }
    }

    /// `<state>/db`.
    pub fn db_dir(&self) -> PathBuf {
        self.state_dir.join("db")
    }
}
