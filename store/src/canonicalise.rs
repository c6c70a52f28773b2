//! Canonicalisation of new store objects (CppNix's `canonicalisePathMetaData`), applied
//! recursively without following symlinks, relative to directory descriptors:
//!
//! 1. only regular files, directories and symlinks are allowed;
//! 2. extended attributes are removed (except `security.selinux`, `system.nfs4_acl`);
//! 3. with a build uid: an object not owned by the build user is refused ("invalid
//!    ownership on file …") unless it is a hard link to an inode already seen in this
//!    output set — this defeats `ln /etc/shadow $out/x`;
//! 4. owner := the store's (euid, egid);
//! 5. permissions 0444 / 0555 (no write, setuid, setgid, sticky bits) and mtime 1, done by
//!    `nixnest_core::nar::canonicalise_at`.

use std::collections::HashSet;
use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Uid};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// xattrs CppNix leaves alone (`ignored-acls` default).
const IGNORED_XATTRS: [&[u8]; 2] = [b"security.selinux", b"system.nfs4_acl"];

/// Inodes seen while canonicalising one set of outputs (shared so hard links between
/// outputs of one build are accepted).
pub type InodesSeen = HashSet<(u64, u64)>;

/// Canonicalises `name` inside `dir`. `build_uid`: refuse objects not owned by it (see
/// the module docs). `display` names the object in messages.
pub fn canonicalise_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    display: &Path,
    build_uid: Option<u32>,
    seen: &mut InodesSeen,
) -> Result<()> {
    let owner = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let cname = fsutil::component(name)?;
    walk(dir, &cname, display, build_uid, owner, seen, 1)?;
    nixnest_core::nar::canonicalise_at(dir, name)?;
    Ok(())
}

fn walk(
    dir: BorrowedFd<'_>,
    name: &CStr,
    display: &Path,
    build_uid: Option<u32>,
    owner: (u32, u32),
    seen: &mut InodesSeen,
    depth: usize,
) -> Result<()> {
    if depth > fsutil::MAX_DEPTH {
        return Err(Error::Other(format!(
            "'{}' is nested too deeply",
            display.display()
        )));
    }
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ctx("getting attributes of path", display)?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if !matches!(
        ft,
        FileType::RegularFile | FileType::Directory | FileType::Symlink
    ) {
        return Err(Error::UnsupportedFileType(display.to_owned()));
    }
    remove_xattrs(dir, name, display)?;
    let inode = (st.st_dev, st.st_ino);
    if let Some(uid) = build_uid
        && st.st_uid != uid
    {
        if ft == FileType::Directory || !seen.contains(&inode) {
            return Err(Error::Other(format!(
                "invalid ownership on file '{}'",
                display.display()
            )));
        }
        // An already canonicalised hard link: nothing more to do.
        return Ok(());
    }
    seen.insert(inode);
    if (st.st_uid, st.st_gid) != owner {
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(owner.0)),
            Some(Gid::from_raw(owner.1)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .ctx("changing owner of", display)?;
    }
    if ft == FileType::Directory {
        let fd = fsutil::open_dir_at(dir, name).ctx("opening directory", display)?;
        for child in fsutil::read_dir_names(fd.as_fd()).ctx("reading directory", display)? {
            let d: PathBuf = display.join(OsStr::from_bytes(child.to_bytes()));
            walk(fd.as_fd(), &child, &d, build_uid, owner, seen, depth + 1)?;
        }
    }
    Ok(())
}

/// Removes the extended attributes of `name` in `dir` (not following a final symlink).
/// The object is reached as `/proc/self/fd/<dir>/<name>`: the magic link resolves to the
/// very directory we hold, so no path a build controls is traversed.
fn remove_xattrs(dir: BorrowedFd<'_>, name: &CStr, display: &Path) -> Result<()> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    let p = PathBuf::from(OsStr::from_bytes(&p));
    let size = match rustix::fs::llistxattr_query(&p) {
        Ok(0) => return Ok(()),
        Ok(n) => n,
        Err(Errno::NOTSUP) | Err(Errno::NODATA) | Err(Errno::NOENT) => return Ok(()),
        Err(e) => {
            return Err(Error::io_at(
                "querying extended attributes of",
                display,
                e.into(),
            ));
        }
    };
    let mut buf = vec![0u8; size.min(1 << 20)];
    let n = match rustix::fs::llistxattr(&p, &mut buf) {
        Ok(n) => n,
        Err(Errno::NOTSUP) | Err(Errno::NODATA) => return Ok(()),
        Err(e) => {
            return Err(Error::io_at(
                "querying extended attributes of",
                display,
                e.into(),
            ));
        }
    };
    for attr in buf.get(..n).unwrap_or_default().split(|&b| b == 0) {
        if attr.is_empty() || IGNORED_XATTRS.contains(&attr) {
            continue;
        }
        match rustix::fs::lremovexattr(&p, attr) {
            Ok(()) | Err(Errno::NOTSUP) | Err(Errno::NODATA) => {}
            Err(e) => {
                return Err(Error::io_at(
                    &format!(
                        "removing extended attribute '{}' from",
                        String::from_utf8_lossy(attr)
                    ),
                    display,
                    e.into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn canonical_modes_mtime_owner_and_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("obj");
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("exe"), b"x").unwrap();
        std::fs::set_permissions(t.join("exe"), std::fs::Permissions::from_mode(0o4775)).unwrap();
        std::fs::write(t.join("plain"), b"y").unwrap();
        std::os::unix::fs::symlink("plain", t.join("link")).unwrap();
        let has_xattr = xattr_set(&t.join("plain"));
        let d = fsutil::open_dir(dir.path()).unwrap();
        canonicalise_at(
            d.as_fd(),
            OsStr::new("obj"),
            &t,
            None,
            &mut InodesSeen::new(),
        )
        .unwrap();
        let m = |p: &str| std::fs::symlink_metadata(t.join(p)).unwrap();
        assert_eq!(m("exe").mode() & 0o7777, 0o555);
        assert_eq!(m("plain").mode() & 0o7777, 0o444);
        assert_eq!(std::fs::metadata(&t).unwrap().mode() & 0o7777, 0o555);
        for p in ["exe", "plain", "link", ""] {
            assert_eq!(m(p).mtime(), 1, "{p}");
            assert_eq!(m(p).uid(), rustix::process::geteuid().as_raw());
        }
        if has_xattr {
            assert_eq!(rustix::fs::llistxattr_query(t.join("plain")).unwrap(), 0);
        }
        // Make it deletable for the tempdir cleanup.
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn xattr_set(p: &Path) -> bool {
        rustix::fs::lsetxattr(p, "user.test", b"v", rustix::fs::XattrFlags::empty()).is_ok()
    }

    #[test]
    fn refuses_special_files_and_foreign_owners() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("obj");
        std::fs::create_dir(&t).unwrap();
        let fifo = t.join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let d = fsutil::open_dir(dir.path()).unwrap();
        let e = canonicalise_at(
            d.as_fd(),
            OsStr::new("obj"),
            &t,
            None,
            &mut InodesSeen::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("has an unsupported type"), "{e}");
        std::fs::remove_file(&fifo).unwrap();
        // Owned by us, but the "build user" is someone else.
        let e = canonicalise_at(
            d.as_fd(),
            OsStr::new("obj"),
            &t,
            Some(12345),
            &mut InodesSeen::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("invalid ownership on file"), "{e}");
    }
}
