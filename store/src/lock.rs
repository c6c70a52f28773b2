//! `flock(2)` locks, exactly as CppNix takes them, so that nixnest and CppNix processes
//! working on the same store exclude each other.
//!
//! * Lock files are opened `O_RDWR|O_CREAT|O_CLOEXEC`, mode 0600. Locks are BSD `flock`
//!   locks (never POSIX `fcntl` locks, which CppNix would not see), owned by the open file
//!   description: two descriptors opened separately conflict even within one process.
//! * Deleting a lock file that others may be waiting on: `unlink` it, then write the single
//!   byte `d` into the still-open descriptor. A locker that finally gets the lock `fstat`s
//!   its descriptor; a non-zero size means the file it holds was unlinked in the meantime,
//!   so it reopens and retries.
//! * [`PathLocks`] locks `<path>.lock` for several paths in sorted order (no deadlocks
//!   between lockers of overlapping sets).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};

/// Shared (`LOCK_SH`), exclusive (`LOCK_EX`) or none (`LOCK_UN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    Read,
    Write,
    None,
}

/// Opens (or with `create`, creates) a lock file. Without `create`, a missing file gives
/// `Ok(None)`.
pub fn open_lock_file(path: &Path, create: bool) -> Result<Option<OwnedFd>> {
    let mut flags = OFlags::RDWR | OFlags::CLOEXEC;
    if create {
        flags |= OFlags::CREATE;
    }
    match rustix::fs::open(path, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) if !create => Ok(None),
        Err(e) => Err(Error::io_at("opening lock file", path, e.into())),
    }
}

/// Takes, changes or releases a lock. With `wait == false` returns `Ok(false)` when the
/// lock is held elsewhere.
pub fn lock_file(fd: BorrowedFd<'_>, ty: LockType, wait: bool) -> Result<bool> {
    let op = match (ty, wait) {
        (LockType::Read, true) => FlockOperation::LockShared,
        (LockType::Read, false) => FlockOperation::NonBlockingLockShared,
        (LockType::Write, true) => FlockOperation::LockExclusive,
        (LockType::Write, false) => FlockOperation::NonBlockingLockExclusive,
        (LockType::None, _) => FlockOperation::Unlock,
    };
    loop {
        match rustix::fs::flock(fd, op) {
            Ok(()) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) if !wait => return Ok(false),
            Err(e) => return Err(Error::io("acquiring/releasing lock", e.into())),
        }
    }
}

/// Unlinks a lock file and marks the open descriptor stale (the `d` byte).
pub fn delete_lock_file(path: &Path, fd: BorrowedFd<'_>) {
    // Removing the file is an optimisation, not a necessity: errors are ignored.
    let _ = rustix::fs::unlink(path);
    let _ = rustix::io::write(fd, b"d");
}

/// True if the locked file was unlinked under us (see the module docs).
fn is_stale(fd: BorrowedFd<'_>, path: &Path) -> Result<bool> {
    let st = rustix::fs::fstat(fd).ctx("statting lock file", path)?;
    Ok(st.st_size != 0)
}

/// Locks a file, calling `on_wait` once if the lock is not immediately free.
pub fn lock_file_or_wait(fd: BorrowedFd<'_>, ty: LockType, on_wait: impl FnOnce()) -> Result<()> {
    if !lock_file(fd, ty, false)? {
        on_wait();
        lock_file(fd, ty, true)?;
    }
    Ok(())
}

/// Exclusive locks on `<path>.lock` for a set of paths, released (and, after
/// [`PathLocks::set_deletion`], deleted) on drop.
#[derive(Debug, Default)]
pub struct PathLocks {
    fds: Vec<(OwnedFd, PathBuf)>,
    delete: bool,
}

impl PathLocks {
    /// Locks every path, waiting as long as necessary; `on_wait` is called (with the
    /// path) before blocking on a busy lock.
    pub fn lock(paths: &[&Path], on_wait: &dyn Fn(&Path)) -> Result<PathLocks> {
        match Self::lock_inner(paths, true, on_wait)? {
            Some(l) => Ok(l),
            None => Err(Error::Other("lock acquisition failed".into())),
        }
    }

    /// Tries to lock every path without blocking; `Ok(None)` if any is busy (then none is
    /// held).
    pub fn try_lock(paths: &[&Path]) -> Result<Option<PathLocks>> {
        Self::lock_inner(paths, false, &|_| {})
    }

    fn lock_inner(
        paths: &[&Path],
        wait: bool,
        on_wait: &dyn Fn(&Path),
    ) -> Result<Option<PathLocks>> {
        let sorted: BTreeSet<&Path> = paths.iter().copied().collect();
        // Built incrementally: on failure, drop releases exactly what we got.
        let mut locks = PathLocks::default();
        for path in sorted {
            let lock_path = lock_path_for(path);
            loop {
                let fd = open_lock_file(&lock_path, true)?
                    .ok_or_else(|| Error::Other("lock file vanished".into()))?;
                if !lock_file(fd.as_fd(), LockType::Write, false)? {
                    if !wait {
                        return Ok(None);
                    }
                    on_wait(path);
                    lock_file(fd.as_fd(), LockType::Write, true)?;
                }
                if is_stale(fd.as_fd(), &lock_path)? {
                    continue;
                }
                locks.fds.push((fd, lock_path));
                break;
            }
        }
        Ok(Some(locks))
    }

    /// With `true`, the lock files are deleted when the locks are released. Used once the
    /// locked paths are valid: later lockers re-check validity first, so they never need
    /// the file again.
    pub fn set_deletion(&mut self, delete: bool) {
        self.delete = delete;
    }

    /// Releases the locks now.
    pub fn unlock(&mut self) {
        for (fd, path) in self.fds.drain(..) {
            if self.delete {
                delete_lock_file(&path, fd.as_fd());
            }
            drop(fd);
        }
    }
}

impl Drop for PathLocks {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// `<path>.lock`.
pub fn lock_path_for(path: &Path) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(OsString::from_vec(s.into_vec()))
}

/// A lock held on an fd we don't own (e.g. `gc.lock` held only for a moment), released on
/// drop.
pub struct FdLock<'a> {
    fd: BorrowedFd<'a>,
    acquired: bool,
}

impl<'a> FdLock<'a> {
    /// Takes the lock; with `wait`, calls `on_wait` before blocking.
    pub fn new(
        fd: BorrowedFd<'a>,
        ty: LockType,
        wait: bool,
        on_wait: impl FnOnce(),
    ) -> Result<FdLock<'a>> {
        let acquired = if wait {
            lock_file_or_wait(fd, ty, on_wait)?;
            true
        } else {
            lock_file(fd, ty, false)?
        };
        Ok(FdLock { fd, acquired })
    }

    /// Whether the lock was obtained (always true when waiting).
    pub fn acquired(&self) -> bool {
        self.acquired
    }
}

impl Drop for FdLock<'_> {
    fn drop(&mut self) {
        if self.acquired {
            let _ = lock_file(self.fd, LockType::None, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn separately_opened_descriptors_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let a = open_lock_file(&p, true).unwrap().unwrap();
        let b = open_lock_file(&p, true).unwrap().unwrap();
        assert!(lock_file(a.as_fd(), LockType::Write, false).unwrap());
        assert!(!lock_file(b.as_fd(), LockType::Write, false).unwrap());
        assert!(!lock_file(b.as_fd(), LockType::Read, false).unwrap());
        lock_file(a.as_fd(), LockType::Read, true).unwrap();
        assert!(lock_file(b.as_fd(), LockType::Read, false).unwrap());
        assert!(!lock_file(a.as_fd(), LockType::Write, false).unwrap());
    }

    #[test]
    fn missing_lock_file_without_create() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            open_lock_file(&dir.path().join("nope"), false)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn path_locks_exclude_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let mut l1 = PathLocks::lock(&[&b, &a], &|_| {}).unwrap();
        assert!(dir.path().join("a.lock").exists());
        assert!(PathLocks::try_lock(&[&a]).unwrap().is_none());
        // A partially overlapping set fails as a whole and holds nothing afterwards.
        let c = dir.path().join("c");
        assert!(PathLocks::try_lock(&[&c, &b]).unwrap().is_none());
        assert!(PathLocks::try_lock(&[&c]).unwrap().is_some());
        l1.set_deletion(true);
        drop(l1);
        assert!(!dir.path().join("a.lock").exists());
        assert!(PathLocks::try_lock(&[&a, &b]).unwrap().is_some());
    }

    #[test]
    fn waiter_retries_after_stale_deletion() {
        // The waiter blocks on the old file; the holder deletes it (unlink + 'd'); the
        // waiter must notice and lock a fresh file instead of "holding" the dead one.
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(dir.path().join("x"));
        let mut holder = PathLocks::lock(&[&p], &|_| {}).unwrap();
        let waited = Arc::new(AtomicBool::new(false));
        let (p2, w2) = (p.clone(), waited.clone());
        let t = std::thread::spawn(move || {
            let l = PathLocks::lock(&[&p2], &|_| w2.store(true, Ordering::SeqCst)).unwrap();
            let st = std::fs::metadata(lock_path_for(&p2)).unwrap();
            assert_eq!(st.len(), 0, "waiter must hold a live (empty) lock file");
            drop(l);
        });
        while !waited.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(20));
        holder.set_deletion(true);
        drop(holder);
        t.join().unwrap();
    }

    #[test]
    fn lock_path_appends_suffix() {
        assert_eq!(
            lock_path_for(Path::new("/nix/store/abc-x")),
            PathBuf::from("/nix/store/abc-x.lock")
        );
    }
}
