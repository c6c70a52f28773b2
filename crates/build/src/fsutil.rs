//! File-system helpers that never follow a symlink a build could have planted.
//!
//! Build directories, chroots and outputs are written by the builder. Everything here works
//! on one path component at a time relative to an open directory descriptor, with
//! `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`, so a symlink placed by a builder (say `/build/x ->
//! /etc`) is only ever treated as a symlink: created files fail with `EEXIST`/`ELOOP`,
//! recursive deletion unlinks the link itself. Directories are made accessible for
//! deletion through an `O_PATH` descriptor and its `/proc/self/fd` name, which names the
//! very inode we opened rather than a path the builder can change.

use std::ffi::{CStr, CString, OsStr};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};

/// Deepest directory nesting we descend into when deleting (one descriptor per level).
pub const MAX_DEPTH: usize = 512;

/// Opens a directory by absolute path (the last component must not be a symlink).
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .ctx("opening directory", path)
}

/// Opens the directory `name` inside `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
}

/// One path component as a C string; refuses `/`, NUL, `.`, `..` and "".
pub fn component(name: impl AsRef<OsStr>) -> Result<CString> {
    let b = name.as_ref().as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Error::Other(format!(
            "invalid file name '{}'",
            String::from_utf8_lossy(b)
        )));
    }
    CString::new(b).map_err(|_| Error::Other("file name contains NUL".into()))
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates directory `name` in `dir` with exactly `mode` (the umask is undone by a
/// `fchmod` on the new directory).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> rustix::io::Result<OwnedFd> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?;
    let fd = open_dir_at(dir, name)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(fd)
}

/// Creates directory `name` in `dir` unless it exists as a directory; returns it open.
pub fn ensure_dir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> rustix::io::Result<OwnedFd> {
    match mkdir_at(dir, name, mode) {
        Ok(fd) => Ok(fd),
        Err(Errno::EXIST) => open_dir_at(dir, name),
        Err(e) => Err(e),
    }
}

/// Creates the new file `name` in `dir` (never through or over a symlink, never over an
/// existing file) with `contents` and exactly `mode`; returns it open.
pub fn write_new_file_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    contents: &[u8],
    mode: u32,
) -> rustix::io::Result<OwnedFd> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(contents)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    Ok(OwnedFd::from(f))
}

/// `fchown` of an open file or directory.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> rustix::io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
}

/// `/proc/self/fd/<fd>`: a name for exactly the inode `fd` refers to.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `/proc/self/fd/<dir>/<name>`: `name` inside the directory we hold, for APIs that take
/// paths (the final component is still subject to the API's own follow rules).
pub fn path_in(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    proc_fd_path(dir).join(name)
}

/// Recursively deletes `name` inside `parent` — a file, a symlink (the link itself) or a
/// directory tree — without ever following a symlink. Directories are made `u+rwx` first
/// (a builder may have left them 000). A missing entry is not an error. `display` names
/// the entry in errors.
pub fn delete_tree_at(parent: BorrowedFd<'_>, name: &CStr, display: &Path) -> Result<()> {
    delete_rec(parent, name, display, 0)
}

fn delete_rec(parent: BorrowedFd<'_>, name: &CStr, display: &Path, depth: usize) -> Result<()> {
    let Some(st) = lstat_at(parent, name).ctx("getting status of", display)? else {
        return Ok(());
    };
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    if is_dir {
        if depth >= MAX_DEPTH {
            return Err(Error::Other(format!(
                "cannot delete '{}': directory nesting deeper than {MAX_DEPTH}",
                display.display()
            )));
        }
        match open_for_deletion(parent, name, st.st_mode) {
            Ok(fd) => {
                let children = read_dir_names(fd.as_fd()).ctx("reading directory", display)?;
                for child in children {
                    let d = display.join(OsStr::from_bytes(child.to_bytes()));
                    delete_rec(fd.as_fd(), &child, &d, depth + 1)?;
                }
            }
            Err(Errno::NOENT) => return Ok(()),
            // Replaced by a non-directory since the lstat: unlink whatever it is now.
            Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                return delete_rec(parent, name, display, depth);
            }
            Err(e) => return Err(Error::io_at("opening directory", display, e)),
        }
    }
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    match rustix::fs::unlinkat(parent, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // A directory replaced by a file (or the reverse) between lstat and unlink.
        Err(Errno::ISDIR) | Err(Errno::NOTDIR) => delete_rec(parent, name, display, depth),
        Err(e) => Err(Error::io_at("cannot unlink", display, e)),
    }
}

/// Opens directory `name` for listing, first granting ourselves `u+rwx` through an
/// `O_PATH` handle if the mode lacks it.
fn open_for_deletion(
    parent: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
) -> rustix::io::Result<OwnedFd> {
    if mode & 0o700 != 0o700 {
        let p = rustix::fs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::chmod(
            proc_fd_path(p.as_fd()).as_path(),
            Mode::from_raw_mode((mode & 0o7777) | 0o700),
        )?;
    }
    open_dir_at(parent, name)
}

/// The names in a directory, without `.` and `..`.
pub fn read_dir_names(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<CString>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name();
        if n.to_bytes() == b"." || n.to_bytes() == b".." {
            continue;
        }
        names.push(n.to_owned());
    }
    Ok(names)
}

/// Splits an absolute path into its parent (opened) and last component.
pub fn open_parent(path: &Path) -> Result<(OwnedFd, CString)> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::Other(format!(
            "'{}' has no parent directory",
            path.display()
        )));
    };
    Ok((open_dir(parent)?, component(name)?))
}

/// Deletes `path` (not following a symlink at its last component); missing is fine.
pub fn delete_path(path: &Path) -> Result<()> {
    let (dir, name) = open_parent(path)?;
    delete_tree_at(dir.as_fd(), &name, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn delete_never_follows_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious"), b"keep").unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("a/link")).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("a/b/link2")).unwrap();
        std::fs::write(tree.join("a/b/file"), b"x").unwrap();
        std::fs::set_permissions(tree.join("a/b"), std::fs::Permissions::from_mode(0o0)).unwrap();
        std::fs::set_permissions(tree.join("a"), std::fs::Permissions::from_mode(0o500)).unwrap();
        delete_path(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read(victim.join("precious")).unwrap(), b"keep");
        // A symlink as the root is removed, its target untouched.
        std::os::unix::fs::symlink(&victim, t.path().join("l")).unwrap();
        delete_path(&t.path().join("l")).unwrap();
        assert!(victim.join("precious").exists());
        // Missing is fine.
        delete_path(&t.path().join("nothing")).unwrap();
    }

    #[test]
    fn new_files_never_go_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let d = open_dir(t.path()).unwrap();
        std::os::unix::fs::symlink(t.path().join("target"), t.path().join("planted")).unwrap();
        let e = write_new_file_at(d.as_fd(), c"planted", b"x", 0o644).unwrap_err();
        assert_eq!(e, Errno::EXIST);
        assert!(!t.path().join("target").exists());
        write_new_file_at(d.as_fd(), c"fresh", b"data", 0o600).unwrap();
        let m = std::fs::metadata(t.path().join("fresh")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(t.path().join("fresh")).unwrap(), b"data");
        assert!(component("..").is_err());
        assert!(component("a/b").is_err());
    }
}
