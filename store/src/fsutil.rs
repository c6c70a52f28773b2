//! File-system helpers that never follow symlinks.
//!
//! Anything in the store dir may have been shaped by a build or a client (a symlink where
//! a directory was, a directory swapped for a link mid-way). Every operation here works
//! relative to an open directory descriptor, on one name at a time, with `O_NOFOLLOW` /
//! `AT_SYMLINK_NOFOLLOW`, so it can never be redirected outside the tree it was given.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};

/// Deepest directory nesting we descend into (each level holds one descriptor).
pub const MAX_DEPTH: usize = 512;

/// Opens a directory (the path itself may not be a symlink).
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .ctx("opening directory", path)
}

/// Opens the directory `name` inside `dir` without following symlinks.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
}

/// Turns a single path component into a C string, refusing `/`, NUL, `.`, `..`, "".
pub fn component(name: &OsStr) -> Result<CString> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Error::BadInput(format!(
            "invalid file name '{}'",
            name.to_string_lossy()
        )));
    }
    CString::new(b).map_err(|_| Error::BadInput("file name contains NUL".into()))
}

/// Lists a directory's entries (without `.` and `..`).
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

/// Recursively deletes `name` inside `parent` (file, symlink or directory tree) and
/// returns the bytes freed, counted as CppNix counts them (sizes of non-directories with
/// one or two links). A missing entry is not an error. `display` names the entry in
/// errors.
pub fn delete_at(parent: BorrowedFd<'_>, name: &CStr, display: &Path) -> Result<u64> {
    let mut freed = 0;
    delete_rec(parent, name, display, 0, &mut freed)?;
    Ok(freed)
}

fn delete_rec(
    parent: BorrowedFd<'_>,
    name: &CStr,
    display: &Path,
    depth: usize,
    freed: &mut u64,
) -> Result<()> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::io_at("getting status of", display, e.into())),
    };
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    if !is_dir {
        if st.st_nlink == 1 || st.st_nlink == 2 {
            *freed += u64::try_from(st.st_size).unwrap_or(0);
        }
    } else {
        if depth >= MAX_DEPTH {
            return Err(Error::Other(format!(
                "cannot delete '{}': directory nesting deeper than {MAX_DEPTH}",
                display.display()
            )));
        }
        // Store directories are read-only (0555); we need rwx to empty them.
        let mode = st.st_mode & 0o7777;
        if mode & 0o700 != 0o700 {
            rustix::fs::chmodat(
                parent,
                name,
                Mode::from_raw_mode(mode | 0o700),
                AtFlags::empty(),
            )
            .ctx("chmod", display)?;
        }
        let fd = match open_dir_at(parent, name) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(()),
            // Swapped for a non-directory since the stat: fall through to unlink it.
            Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                return delete_rec(parent, name, display, depth, freed);
            }
            Err(e) => return Err(Error::io_at("opening directory", display, e.into())),
        };
        let names = read_dir_names(fd.as_fd()).ctx("reading directory", display)?;
        for child in names {
            let child_display = display.join(OsStr::from_bytes(child.to_bytes()));
            delete_rec(fd.as_fd(), &child, &child_display, depth + 1, freed)?;
        }
    }
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    match rustix::fs::unlinkat(parent, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::io_at("cannot unlink", display, e.into())),
    }
}

/// Deletes `path` (its last component relative to its parent, never following a symlink
/// at that position) and returns the bytes freed.
#[cfg_attr(not(test), allow(dead_code))]
pub fn delete_path(path: &Path) -> Result<u64> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::BadInput(format!(
            "cannot delete '{}'",
            path.display()
        )));
    };
    let dir = match rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(Error::io_at("opening directory", parent, e.into())),
    };
    delete_at(dir.as_fd(), &component(name)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn deletes_read_only_trees_and_counts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), b"12345").unwrap();
        std::fs::write(t.join("g"), b"123").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.join("l")).unwrap();
        for d in ["a/b", "a", ""] {
            std::fs::set_permissions(t.join(d), std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        let freed = delete_path(&t).unwrap();
        assert_eq!(freed, 8 + "/etc/passwd".len() as u64);
        assert!(!t.exists());
        assert!(Path::new("/etc/passwd").exists());
        assert_eq!(delete_path(&t).unwrap(), 0);
    }

    #[test]
    fn never_follows_a_symlinked_directory() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), b"x").unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir(&t).unwrap();
        std::os::unix::fs::symlink(&victim, t.join("sub")).unwrap();
        delete_path(&t).unwrap();
        assert!(victim.join("keep").exists());
        // The path itself being a symlink: only the link goes.
        std::os::unix::fs::symlink(&victim, &t).unwrap();
        delete_path(&t).unwrap();
        assert!(victim.join("keep").exists());
    }

    #[test]
    fn component_rejects_bad_names() {
        for n in ["", ".", "..", "a/b"] {
            assert!(component(OsStr::new(n)).is_err());
        }
        assert!(component(OsStr::new("ok")).is_ok());
    }
}
