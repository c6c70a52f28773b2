//! [`LocalStore`]: opening (or creating) a store laid out exactly as CppNix lays it out.
//!
//! ```text
//! <store>/                 1775 root:<build-users-gid> when root with build users
//! <store>/.links/          hard-link pool (optimise)
//! <state>/db/              db.sqlite (WAL), schema ("10", no newline), big-lock, reserved
//! <state>/gcroots/         (+ profiles -> <state>/profiles on first creation), auto/, per-user/
//! <state>/profiles/        (+ per-user/)
//! <state>/temproots/       <pid>-<session> files, see `temproots`
//! <state>/gc.lock          global GC lock
//! <state>/daemon-socket/   the daemon's socket dir
//! <state>/userpool/        build-user locks
//! <log>/drvs/              build logs
//! ```
//!
//! Opening follows CppNix 2.8 (`LocalStore::LocalStore`): the `schema` file is checked
//! *first* — a corrupt or too-new schema is refused before anything is created or
//! changed — then missing directories are created, `reserved` is (re)sized, `big-lock` is
//! taken shared for the lifetime of the store, and the db is created (schema 0), upgraded
//! (7–9) under the exclusive `big-lock`, or opened (10).

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::StoreConfig;
use crate::db::{self, Db, SCHEMA_VERSION};
use crate::error::{Error, IoContext, Result};
use crate::lock::{self, LockType};
use crate::logger::{Logger, Verbosity};

/// The local store. `Send + Sync`; every method takes `&self` and may be called from many
/// threads at once.
#[derive(Debug)]
pub struct LocalStore {
    pub(crate) config: StoreConfig,
    pub(crate) db: Db,
    /// `config.store_dir` as text (store paths are text everywhere in Nix).
    store_dir_s: String,
    sd: nixnest_core::StoreDir,
    /// Shared `flock` on `db/big-lock`, held while the store is open so no schema
    /// migration can run under us.
    _big_lock: OwnedFd,
}

/// Reads `db/schema`: missing → 0; not a decimal number → corrupt.
fn read_schema(path: &Path) -> Result<u64> {
    match fs::read(path) {
        Ok(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Error::SchemaCorrupt(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io_at("reading", path, e)),
    }
}

fn check_schema_supported(v: u64) -> Result<()> {
    if v > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found: v,
            supported: SCHEMA_VERSION,
        });
    }
    if v != 0 && v < 7 {
        return Err(Error::SchemaTooOld { found: v });
    }
    Ok(())
}

fn mkdir_p(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .ctx("creating directory", path)
}

fn write_file_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = fs::File::create(&tmp).ctx("creating", &tmp)?;
    f.write_all(contents).ctx("writing", &tmp)?;
    drop(f);
    fs::rename(&tmp, path).ctx("renaming to", path)
}

impl LocalStore {
    /// Opens the store described by `config`, creating whatever is missing.
    pub fn open(config: StoreConfig, logger: &dyn Logger) -> Result<LocalStore> {
        let store_dir_s = config
            .store_dir
            .to_str()
            .filter(|s| s.starts_with('/') && !s.ends_with('/'))
            .ok_or_else(|| {
                Error::BadInput(format!(
                    "store directory '{}' must be an absolute UTF-8 path without trailing slash",
                    config.store_dir.display()
                ))
            })?
            .to_owned();
        let sd = nixnest_core::StoreDir::new(store_dir_s.clone())?;
        let db_dir = config.db_dir();
        let schema_path = db_dir.join("schema");

        // Refuse an unusable schema before touching anything.
        check_schema_supported(read_schema(&schema_path)?)?;

        Self::create_layout(&config)?;
        Self::fix_store_dir_owner(&config, logger)?;
        Self::check_not_symlinked(&config.store_dir)?;
        Self::make_reserved(&db_dir.join("reserved"), config.gc_reserved_space);

        let big_lock_path = db_dir.join("big-lock");
        let big_lock = lock::open_lock_file(&big_lock_path, true)?
            .ok_or_else(|| Error::Other("cannot create big-lock".into()))?;
        lock::lock_file_or_wait(big_lock.as_fd(), LockType::Read, || {
            logger.log(Verbosity::Info, "waiting for the big Nix store lock...")
        })?;

        let db_path = db_dir.join("db.sqlite");
        let fsync = config.fsync_metadata;
        let mut schema = read_schema(&schema_path)?;
        check_schema_supported(schema)?;

        let conn = if schema == 0 {
            let conn = db::open_connection(&db_path, true, fsync)?;
            db::create_schema(&conn, &db_path)?;
            write_file_atomic(&schema_path, SCHEMA_VERSION.to_string().as_bytes())?;
            conn
        } else if schema < SCHEMA_VERSION {
            lock::lock_file_or_wait(big_lock.as_fd(), LockType::Write, || {
                logger.log(
                    Verbosity::Info,
                    "waiting for exclusive access to the Nix store...",
                )
            })?;
            // Another process may have upgraded meanwhile.
            schema = read_schema(&schema_path)?;
            check_schema_supported(schema)?;
            let conn = Self::open_existing(&db_path, fsync)?;
            Self::upgrade_schema(&conn, &db_path, schema)?;
            write_file_atomic(&schema_path, SCHEMA_VERSION.to_string().as_bytes())?;
            lock::lock_file(big_lock.as_fd(), LockType::Read, true)?;
            conn
        } else {
            Self::open_existing(&db_path, fsync)?
        };

        Ok(LocalStore {
            db: Db::new(db_path, fsync, conn),
            config,
            store_dir_s,
            sd,
            _big_lock: big_lock,
        })
    }

    fn open_existing(db_path: &Path, fsync: bool) -> Result<rusqlite::Connection> {
        if !db_path.exists() {
            return Err(Error::Other(format!(
                "cannot open SQLite database '{}'",
                db_path.display()
            )));
        }
        db::open_connection(db_path, false, fsync)
    }

    /// CppNix's steps 7→8→9→10, each in its own transaction (not idempotent, exactly
    /// like CppNix's).
    fn upgrade_schema(conn: &rusqlite::Connection, db_path: &Path, from: u64) -> Result<()> {
        let step = |sql: &str| -> Result<()> {
            db::retry(db_path, || {
                conn.execute_batch(&format!("begin immediate; {sql} commit;"))
                    .map_err(|e| {
                        let _ = conn.execute_batch("rollback");
                        Error::Sqlite {
                            context: format!("executing SQLite statement '{sql}'"),
                            source: e,
                        }
                    })
            })
        };
        if from < 8 {
            step(
                "alter table ValidPaths add column ultimate integer; \
                 alter table ValidPaths add column sigs text;",
            )?;
        }
        if from < 9 {
            step("drop table FailedPaths;")?;
        }
        if from < 10 {
            step("alter table ValidPaths add column ca text;")?;
        }
        Ok(())
    }

    fn create_layout(config: &StoreConfig) -> Result<()> {
        let state = &config.state_dir;
        mkdir_p(&config.store_dir)?;
        mkdir_p(&config.store_dir.join(".links"))?;
        let profiles = state.join("profiles");
        mkdir_p(&profiles)?;
        mkdir_p(&state.join("temproots"))?;
        mkdir_p(&config.db_dir())?;
        let gcroots = state.join("gcroots");
        if !gcroots.exists() {
            mkdir_p(&gcroots)?;
            let link = gcroots.join("profiles");
            std::os::unix::fs::symlink(&profiles, &link).ctx("creating symlink", &link)?;
        }
        mkdir_p(&gcroots.join("auto"))?;
        for d in [profiles.join("per-user"), gcroots.join("per-user")] {
            mkdir_p(&d)?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755))
                .ctx("could not set permissions on", &d)?;
        }
        mkdir_p(&state.join("daemon-socket"))?;
        mkdir_p(&state.join("userpool"))?;
        mkdir_p(&config.log_dir.join("drvs"))?;
        let gc_lock = state.join("gc.lock");
        lock::open_lock_file(&gc_lock, true)?;
        Ok(())
    }

    /// When root with build users: the store dir must be `root:<gid>` mode 1775, so build
    /// users (without sandbox) can create but not delete entries.
    fn fix_store_dir_owner(config: &StoreConfig, logger: &dyn Logger) -> Result<()> {
        let Some(gid) = config.build_users_gid else {
            return Ok(());
        };
        if !rustix::process::geteuid().is_root() {
            return Ok(());
        }
        let dir = &config.store_dir;
        let md = fs::metadata(dir).ctx("getting attributes of path", dir)?;
        if md.uid() != 0 || md.gid() != gid || md.mode() & 0o7777 != 0o1775 {
            std::os::unix::fs::chown(dir, Some(0), Some(gid))
                .ctx("changing ownership of path", dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o1775))
                .ctx("changing permissions on path", dir)?;
            logger.log(
                Verbosity::Talkative,
                &format!("fixed owner and mode of '{}'", dir.display()),
            );
        }
        Ok(())
    }

    fn check_not_symlinked(store_dir: &Path) -> Result<()> {
        let mut p = Some(store_dir);
        while let Some(path) = p {
            if path.as_os_str() == "/" || path.as_os_str().is_empty() {
                break;
            }
            let md = fs::symlink_metadata(path).ctx("getting status of", path)?;
            if md.file_type().is_symlink() {
                return Err(Error::Other(format!(
                    "the path '{}' is a symlink; this is not allowed for the Nix store and its parent directories",
                    path.display()
                )));
            }
            p = path.parent();
        }
        Ok(())
    }

    /// Keeps `gc-reserved-space` bytes allocated so a GC can free them on a full disk.
    /// Errors are ignored, as in CppNix.
    fn make_reserved(path: &Path, size: u64) {
        let ok = fs::metadata(path).map(|m| m.len() == size).unwrap_or(false);
        if ok {
            return;
        }
        let Ok(f) = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode_0600()
            .open(path)
        else {
            return;
        };
        if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, size).is_err() {
            let _ = f.set_len(size);
        }
        if let Ok(m) = f.metadata()
            && m.len() > size
        {
            let _ = f.set_len(size);
        }
    }

    /// The settings this store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The store directory (`/nix/store`), for printing and parsing store paths.
    pub fn store_dir(&self) -> &nixnest_core::StoreDir {
        &self.sd
    }

    /// The store directory on disk.
    pub fn real_store_dir(&self) -> &Path {
        &self.config.store_dir
    }

    /// The store directory as text.
    pub fn store_dir_str(&self) -> &str {
        &self.store_dir_s
    }

    /// The state directory (`/nix/var/nix`).
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// `<store>/.links`.
    pub fn links_dir(&self) -> PathBuf {
        self.config.store_dir.join(".links")
    }

    /// `<state>/temproots`.
    pub fn temproots_dir(&self) -> PathBuf {
        self.config.state_dir.join("temproots")
    }

    /// `<state>/gc.lock`.
    pub fn gc_lock_path(&self) -> PathBuf {
        self.config.state_dir.join("gc.lock")
    }

    /// `<state>/gc-socket/socket`.
    pub fn gc_socket_path(&self) -> PathBuf {
        self.config.state_dir.join("gc-socket/socket")
    }

    /// `<state>/gcroots`.
    pub fn gcroots_dir(&self) -> PathBuf {
        self.config.state_dir.join("gcroots")
    }

    /// `<state>/db/reserved`.
    pub fn reserved_path(&self) -> PathBuf {
        self.config.db_dir().join("reserved")
    }

    /// Creates `profiles/per-user/<name>` and `gcroots/per-user/<name>` owned by `uid`
    /// (group = ours), mode 0755, as CppNix does for every user that connects.
    pub fn create_user_dirs(&self, name: &str, uid: u32) -> Result<()> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::BadInput(format!("invalid user name '{name}'")));
        }
        let gid = rustix::process::getegid().as_raw();
        for base in ["profiles", "gcroots"] {
            let dir = self.config.state_dir.join(base).join("per-user").join(name);
            mkdir_p(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .ctx("changing permissions of directory", &dir)?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .ctx("changing owner of directory", &dir)?;
        }
        Ok(())
    }
}

trait OpenOptionsExt0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsExt0600 for fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logger::NullLogger;

    fn cfg(dir: &Path) -> StoreConfig {
        StoreConfig::under(dir)
    }

    #[test]
    fn creates_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let s = LocalStore::open(c.clone(), &NullLogger).unwrap();
        let st = &c.state_dir;
        assert_eq!(fs::read(st.join("db/schema")).unwrap(), b"10");
        for d in [
            "db",
            "gcroots",
            "gcroots/auto",
            "gcroots/per-user",
            "profiles",
            "profiles/per-user",
            "temproots",
            "daemon-socket",
            "userpool",
        ] {
            assert!(st.join(d).is_dir(), "{d}");
        }
        assert!(c.store_dir.join(".links").is_dir());
        assert!(c.log_dir.join("drvs").is_dir());
        assert_eq!(
            fs::read_link(st.join("gcroots/profiles")).unwrap(),
            st.join("profiles")
        );
        assert_eq!(fs::metadata(st.join("db/reserved")).unwrap().len(), 8 << 20);
        assert!(st.join("db/big-lock").is_file());
        assert!(st.join("gc.lock").is_file());
        drop(s);
        // Reopening works and does not recreate the profiles link.
        fs::remove_file(st.join("gcroots/profiles")).unwrap();
        let _s = LocalStore::open(c.clone(), &NullLogger).unwrap();
        assert!(!st.join("gcroots/profiles").exists());
    }

    #[test]
    fn big_lock_is_held_shared() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let _s = LocalStore::open(c.clone(), &NullLogger).unwrap();
        let fd = lock::open_lock_file(&c.db_dir().join("big-lock"), false)
            .unwrap()
            .unwrap();
        assert!(!lock::lock_file(fd.as_fd(), LockType::Write, false).unwrap());
        assert!(lock::lock_file(fd.as_fd(), LockType::Read, false).unwrap());
    }

    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(e.path());
                    out.push((e.path(), vec![]));
                } else if ft.is_file() {
                    out.push((e.path(), fs::read(e.path()).unwrap()));
                } else {
                    out.push((e.path(), vec![1]));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn refuses_bad_schema_without_touching_anything() {
        for (content, want) in [
            (
                &b"11"[..],
                "current Nix store schema is version 11, but I only support 10",
            ),
            (b"abc", "/db/schema' is corrupt"),
            (b"", "/db/schema' is corrupt"),
            (b"10\n", "/db/schema' is corrupt"),
            (b"5", "schema version 5"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let c = cfg(dir.path());
            fs::create_dir_all(c.db_dir()).unwrap();
            fs::write(c.db_dir().join("schema"), content).unwrap();
            let before = snapshot(dir.path());
            let err = LocalStore::open(c.clone(), &NullLogger).unwrap_err();
            assert!(err.to_string().contains(want), "{err} vs {want}");
            assert_eq!(
                before,
                snapshot(dir.path()),
                "{content:?} touched the store"
            );
        }
    }

    #[test]
    fn missing_db_with_schema_10_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        drop(LocalStore::open(c.clone(), &NullLogger).unwrap());
        fs::remove_file(c.db_dir().join("db.sqlite")).unwrap();
        let err = LocalStore::open(c, &NullLogger).unwrap_err();
        assert!(
            err.to_string().contains("cannot open SQLite database"),
            "{err}"
        );
    }

    #[test]
    fn upgrades_schema_7() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        fs::create_dir_all(c.db_dir()).unwrap();
        let p = c.db_dir().join("db.sqlite");
        let conn = rusqlite::Connection::open(&p).unwrap();
        conn.execute_batch(
            "create table ValidPaths (id integer primary key autoincrement not null, path text unique not null, hash text not null, registrationTime integer not null, deriver text, narSize integer);
             create table FailedPaths (path text primary key not null, time integer not null);",
        )
        .unwrap();
        drop(conn);
        fs::write(c.db_dir().join("schema"), "7").unwrap();
        let s = LocalStore::open(c.clone(), &NullLogger).unwrap();
        assert_eq!(fs::read(c.db_dir().join("schema")).unwrap(), b"10");
        s.db.read(|c| {
            c.prepare("select ultimate, sigs, ca from ValidPaths")?;
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LocalStore>();
    }
}
