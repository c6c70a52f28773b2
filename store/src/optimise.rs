//! Hard-link deduplication (`auto-optimise-store`, `nix-store --optimise`).
//!
//! Key of a file: nix32 of the SHA-256 of the NAR of that single file or symlink (so the
//! executable bit is part of the key); the pool is `<store>/.links/<key>`. New content is
//! linked into the pool; a file whose content is already pooled is replaced by a hard link
//! to the pool entry — made as `<store>/.tmp-link-<pid>-<rand>` and `rename`d over the
//! file, so the file never disappears. Everything is dirfd-relative and never follows
//! symlinks. `EMLINK` (too many links) skips the file; writable files are skipped.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::logger::{ActivityGuard, ActivityType, Logger, ResultType, Verbosity};
use crate::store::LocalStore;

/// What an optimisation run achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptimiseStats {
    /// Files replaced by a hard link.
    pub files_linked: u64,
    /// Bytes (file sizes) saved.
    pub bytes_freed: u64,
    /// 512-byte blocks saved.
    pub blocks_freed: u64,
}

impl OptimiseStats {
    /// CppNix's summary line, "X MiB freed by hard-linking N files".
    pub fn summary(&self) -> String {
        format!(
            "{:.2} MiB freed by hard-linking {} files",
            self.bytes_freed as f64 / (1024.0 * 1024.0),
            self.files_linked
        )
    }
}

struct Optimiser<'a> {
    store_fd: rustix::fd::OwnedFd,
    links_fd: rustix::fd::OwnedFd,
    /// Inodes of pool entries (files already deduplicated need no work).
    pool_inodes: HashSet<u64>,
    stats: OptimiseStats,
    logger: &'a dyn Logger,
    /// The per-path activity that `resFileLinked` results belong to (`optimise_store`).
    activity: Option<u64>,
}

impl LocalStore {
    fn optimiser<'a>(&self, logger: &'a dyn Logger, scan_pool: bool) -> Result<Optimiser<'a>> {
        let store_fd = fsutil::open_dir(self.real_store_dir())?;
        let links = self.links_dir();
        std::fs::create_dir_all(&links).ctx("creating", &links)?;
        let links_fd = fsutil::open_dir(&links)?;
        let mut pool_inodes = HashSet::new();
        if scan_pool {
            for n in fsutil::read_dir_names(links_fd.as_fd()).ctx("reading", &links)? {
                if let Ok(st) = rustix::fs::statat(&links_fd, &n, AtFlags::SYMLINK_NOFOLLOW) {
                    pool_inodes.insert(st.st_ino);
                }
            }
        }
        Ok(Optimiser {
            store_fd,
            links_fd,
            pool_inodes,
            stats: OptimiseStats::default(),
            logger,
            activity: None,
        })
    }

    /// Deduplicates the files of one store object (`path` is its real location).
    pub fn optimise_path(&self, path: &Path, logger: &dyn Logger) -> Result<OptimiseStats> {
        let mut o = self.optimiser(logger, false)?;
        let name = path
            .file_name()
            .ok_or_else(|| Error::BadInput(format!("cannot optimise '{}'", path.display())))?;
        let store_fd = o.store_fd.try_clone().ctx("duplicating", path)?;
        o.object(store_fd.as_fd(), &fsutil::component(name)?, path, 0)?;
        Ok(o.stats)
    }

    /// Deduplicates every valid path (`nix-store --optimise`). Reports like CppNix: an
    /// `actOptimiseStore` activity with `resProgress` per path, inside it one
    /// `optimising path '…'` activity per path carrying a `resFileLinked [bytes, blocks]`
    /// result per file replaced by a link, then the summary line.
    pub fn optimise_store(&self, logger: &dyn Logger) -> Result<OptimiseStats> {
        let mut o = self.optimiser(logger, true)?;
        let paths = self.query_all_valid_paths()?;
        let store_fd = o
            .store_fd
            .try_clone()
            .ctx("duplicating", self.real_store_dir())?;
        let act = ActivityGuard::start(logger, Verbosity::Error, ActivityType::OptimiseStore, "");
        let total = paths.len() as u64;
        logger.progress(act.id(), 0, total);
        for (done, p) in (1u64..).zip(paths) {
            let base = p.to_base_name();
            let real = self.real_store_dir().join(&base);
            let path_act = ActivityGuard::start(
                logger,
                Verbosity::Talkative,
                ActivityType::Unknown,
                &format!("optimising path '{}'", self.print(&p)),
            );
            o.activity = Some(path_act.id());
            match o.object(
                store_fd.as_fd(),
                &fsutil::component(OsStr::new(&base))?,
                &real,
                0,
            ) {
                Ok(()) => {}
                // Deleted by a concurrent GC: fine.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            drop(path_act);
            o.activity = None;
            logger.progress(act.id(), done, total);
        }
        drop(act);
        logger.log(Verbosity::Info, &o.stats.summary());
        Ok(o.stats)
    }
}

impl Optimiser<'_> {
    fn object(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        display: &Path,
        depth: usize,
    ) -> Result<()> {
        if depth > fsutil::MAX_DEPTH {
            return Ok(());
        }
        let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .ctx("getting attributes of path", display)?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let fd = fsutil::open_dir_at(dir, name).ctx("opening directory", display)?;
                for child in fsutil::read_dir_names(fd.as_fd()).ctx("reading", display)? {
                    let d = display.join(OsStr::from_bytes(child.to_bytes()));
                    self.object(fd.as_fd(), &child, &d, depth + 1)?;
                }
                Ok(())
            }
            FileType::RegularFile | FileType::Symlink => self.file(dir, name, display, &st),
            _ => Ok(()),
        }
    }

    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        display: &Path,
        st: &rustix::fs::Stat,
    ) -> Result<()> {
        let is_reg = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        if is_reg && st.st_mode & 0o200 != 0 {
            self.logger.log(
                Verbosity::Warn,
                &format!(
                    "warning: skipping suspicious writable file '{}'",
                    display.display()
                ),
            );
            return Ok(());
        }
        if st.st_nlink > 1 && self.pool_inodes.contains(&st.st_ino) {
            return Ok(());
        }
        // The NAR of this one object, reached through our directory descriptor.
        let mut via_fd = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        via_fd.extend_from_slice(name.to_bytes());
        let hs = nixnest_core::nar::nar_hash_and_size(Path::new(OsStr::from_bytes(&via_fd)))?;
        let key = CString::new(nixnest_core::nixbase32::encode(&hs.sha256))
            .map_err(|_| Error::Other("bad link name".into()))?;

        match rustix::fs::linkat(dir, name, &self.links_fd, &key, AtFlags::empty()) {
            Ok(()) => {
                self.pool_inodes.insert(st.st_ino);
                return Ok(());
            }
            Err(Errno::EXIST) => {}
            // Out of space or link limits: just don't deduplicate.
            Err(Errno::NOSPC) | Err(Errno::MLINK) => return Ok(()),
            Err(e) => return Err(Error::io_at("creating link for", display, e.into())),
        }
        let pool = rustix::fs::statat(&self.links_fd, &key, AtFlags::SYMLINK_NOFOLLOW)
            .ctx("getting attributes of link for", display)?;
        self.pool_inodes.insert(pool.st_ino);
        if pool.st_ino == st.st_ino {
            return Ok(());
        }
        let tmp = CString::new(format!(
            ".tmp-link-{}-{}",
            std::process::id(),
            crate::db::cheap_random() % 1_000_000_000
        ))
        .map_err(|_| Error::Other("bad temp name".into()))?;
        match rustix::fs::linkat(&self.links_fd, &key, &self.store_fd, &tmp, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::MLINK) => return Ok(()),
            Err(e) => {
                return Err(Error::io_at(
                    "creating temporary link for",
                    display,
                    e.into(),
                ));
            }
        }
        // The parent is read-only (0555) in a canonical store object; open it up briefly
        // and put mode and mtime back afterwards.
        let dst = rustix::fs::fstat(dir).ctx("getting attributes of parent of", display)?;
        let writable = dst.st_mode & 0o200 != 0;
        if !writable {
            let _ = rustix::fs::fchmod(dir, Mode::from_raw_mode((dst.st_mode & 0o7777) | 0o200));
        }
        let r = rustix::fs::renameat(&self.store_fd, &tmp, dir, name);
        if !writable {
            let _ = rustix::fs::fchmod(dir, Mode::from_raw_mode(dst.st_mode & 0o7777));
            let ts = Timestamps {
                last_access: Timespec {
                    tv_sec: 0,
                    tv_nsec: UTIME_OMIT,
                },
                last_modification: Timespec {
                    tv_sec: dst.st_mtime,
                    tv_nsec: dst.st_mtime_nsec as _,
                },
            };
            let _ = rustix::fs::futimens(dir, &ts);
        }
        if let Err(e) = r {
            let _ = rustix::fs::unlinkat(&self.store_fd, &tmp, AtFlags::empty());
            return Err(Error::io_at("replacing with a link", display, e.into()));
        }
        let bytes = u64::try_from(st.st_size).unwrap_or(0);
        let blocks = u64::try_from(st.st_blocks).unwrap_or(0);
        self.stats.files_linked += 1;
        self.stats.bytes_freed += bytes;
        self.stats.blocks_freed += blocks;
        if let Some(act) = self.activity {
            self.logger
                .result(act, ResultType::FileLinked, &[bytes, blocks]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use crate::logger::{ActivityType, Logger, ResultType, Verbosity};
    use crate::testutil::new_store;

    /// Records activity events as text.
    #[derive(Default)]
    struct Events(Mutex<Vec<String>>);

    impl Events {
        fn push(&self, s: String) {
            self.0.lock().unwrap().push(s);
        }
    }

    impl Logger for Events {
        fn log(&self, _level: Verbosity, msg: &str) {
            self.push(format!("log {msg}"));
        }
        fn start_activity(&self, id: u64, level: Verbosity, kind: ActivityType, text: &str) {
            self.push(format!(
                "start {} {level:?} {kind:?} {text}",
                id & 0xffff_ffff
            ));
        }
        fn progress(&self, id: u64, done: u64, expected: u64) {
            self.push(format!("progress {} {done}/{expected}", id & 0xffff_ffff));
        }
        fn result(&self, id: u64, kind: ResultType, fields: &[u64]) {
            self.push(format!("result {} {kind:?} {fields:?}", id & 0xffff_ffff));
        }
        fn stop_activity(&self, id: u64) {
            self.push(format!("stop {}", id & 0xffff_ffff));
        }
    }

    #[test]
    fn optimise_store_reports_activities_and_linked_files() {
        let (_d, s) = new_store();
        let roots = s.temp_roots_session();
        let a = s
            .add_text("a", b"same\n", &BTreeSet::new(), &roots, &Events::default())
            .unwrap();
        let b = s
            .add_text("b", b"same\n", &BTreeSet::new(), &roots, &Events::default())
            .unwrap();
        // Paths are optimised in store-path order; the second one gets linked.
        let (first_path, second_path) = if a.path < b.path { (a, b) } else { (b, a) };
        let events = Events::default();
        let stats = s.optimise_store(&events).unwrap();
        assert_eq!(stats.files_linked, 1);
        let ev = events.0.into_inner().unwrap();
        let id = |line: &str| line.split(' ').nth(1).unwrap().to_owned();
        let outer = id(&ev[0]);
        assert_eq!(ev[0], format!("start {outer} Error OptimiseStore "));
        assert_eq!(ev[1], format!("progress {outer} 0/2"));
        // Per path: start, (result), stop, progress.
        let first = id(&ev[2]);
        assert_eq!(
            ev[2],
            format!(
                "start {first} Talkative Unknown optimising path '{}'",
                s.print(&first_path.path)
            )
        );
        assert_eq!(ev[3], format!("stop {first}"));
        assert_eq!(ev[4], format!("progress {outer} 1/2"));
        let second = id(&ev[5]);
        assert!(ev[5].ends_with(&format!("'{}'", s.print(&second_path.path))));
        assert!(
            ev[6].starts_with(&format!("result {second} FileLinked [5, ")),
            "{ev:?}"
        );
        assert_eq!(ev[7], format!("stop {second}"));
        assert_eq!(ev[8], format!("progress {outer} 2/2"));
        assert_eq!(ev[9], format!("stop {outer}"));
        assert!(
            ev[10].starts_with("log ") && ev[10].ends_with("hard-linking 1 files"),
            "{ev:?}"
        );
        assert_eq!(ev.len(), 11, "{ev:?}");
    }
}
