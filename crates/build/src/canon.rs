//! Canonicalising build outputs with the build-user ownership check (CppNix's
//! `canonicalisePathMetaData(path, uid, inodesSeen)`), relative to directory descriptors and
//! never following symlinks:
//!
//! 1. only regular files, directories and symlinks ("file '…' has an unsupported type");
//! 2. extended attributes removed (except `security.selinux`, `system.nfs4_acl`);
//! 3. with a build uid: an object not owned by it is refused ("invalid ownership on file
//!    '…'") unless it is a hard link to an inode already seen in this build's outputs —
//!    defeats `ln /etc/shadow $out/x`;
//! 4. owner := the daemon's (euid, egid);
//! 5. modes 0444/0555, mtime 1 (`nixnest_core::nar::canonicalise_at`).
//!
//! (A private copy of what `nixnest-store` does on ingest: its canonicaliser is not
//! exported.)

use std::collections::HashSet;
use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Gid, Uid};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// Inodes seen while canonicalising one build's outputs.
pub type InodesSeen = HashSet<(u64, u64)>;

const IGNORED_XATTRS: [&[u8]; 2] = [b"security.selinux", b"system.nfs4_acl"];

/// Canonicalises `name` in `dir`; `display` names it in messages.
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
        return Err(Error::Other(format!(
            "file '{}' has an unsupported type",
            display.display()
        )));
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

/// Removes the extended attributes of `name` in `dir`, reached as
/// `/proc/self/fd/<dir>/<name>` (the final component is not followed by the `l*` calls).
fn remove_xattrs(dir: BorrowedFd<'_>, name: &CStr, display: &Path) -> Result<()> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    let p = PathBuf::from(OsStr::from_bytes(&p));
    let size = match rustix::fs::llistxattr_query(&p) {
        Ok(0) => return Ok(()),
        Ok(n) => n,
        Err(Errno::NOTSUP) | Err(Errno::NODATA) | Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(Error::io_at("querying extended attributes of", display, e)),
    };
    let mut buf = vec![0u8; size.min(1 << 20)];
    let n = match rustix::fs::llistxattr(&p, &mut buf) {
        Ok(n) => n,
        Err(Errno::NOTSUP) | Err(Errno::NODATA) => return Ok(()),
        Err(e) => return Err(Error::io_at("querying extended attributes of", display, e)),
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
                    e,
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
    fn foreign_owner_is_refused_and_modes_are_canonical() {
        let t = tempfile::tempdir().unwrap();
        let o = t.path().join("out");
        std::fs::create_dir(&o).unwrap();
        std::fs::write(o.join("f"), b"x").unwrap();
        std::fs::set_permissions(o.join("f"), std::fs::Permissions::from_mode(0o4775)).unwrap();
        let d = fsutil::open_dir(t.path()).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let e = canonicalise_at(
            d.as_fd(),
            OsStr::new("out"),
            &o,
            Some(me + 1),
            &mut InodesSeen::new(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid ownership on file"),
            "{e}"
        );
        canonicalise_at(
            d.as_fd(),
            OsStr::new("out"),
            &o,
            Some(me),
            &mut InodesSeen::new(),
        )
        .unwrap();
        let m = std::fs::metadata(o.join("f")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o555);
        assert_eq!(m.mtime(), 1);
        std::fs::set_permissions(&o, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
