//! The temporary build directory, laid out as in Nix ≥ 2.30 (with the CVE-2024-38531 and
//! GHSA-g948-229j-48j3 hardening):
//!
//! ```text
//! <build-dir>/                          default <state dir>/builds, 0755 (created if missing)
//!   nix-build-<drv name>-<pid>-<n>/     "top": 0700, owned by the daemon
//!     build/                            sandboxed builds: 0700, owned by the build user;
//!                                       bind-mounted at sandbox-build-dir (/build)
//! ```
//!
//! An unsandboxed build uses `top` itself as its build dir (owned by the build user), as
//! CppNix does — it runs on the host, where `/build` does not exist.
//!
//! Every file we put there (`passAsFile`, `.attrs.*`, exported reference graphs) is created
//! relative to the directory's descriptor with `O_CREAT | O_EXCL | O_NOFOLLOW` and chowned
//! through its own descriptor, so nothing a builder planted can redirect it. When the build
//! is over, `top` is first set to mode 000 (a failed deletion leaves nothing usable), then
//! either deleted — recursively, relative to descriptors, never following a symlink — or,
//! with `keep-failed`, reopened (0755) with "note: keeping build directory '…'".

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::Mode;
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// One build's directory; deleted on drop unless [`BuildDir::finish`] kept it.
#[derive(Debug)]
pub struct BuildDir {
    parent: OwnedFd,
    top_name: CString,
    top_path: PathBuf,
    top: OwnedFd,
    dir_path: PathBuf,
    dir: OwnedFd,
    done: bool,
}

impl BuildDir {
    /// Creates `<parent>/nix-build-<drv_name>-<pid>-<n>` (and `build/` inside when
    /// `nested`), the build dir owned by `owner` (uid, gid) when given.
    pub fn create(
        parent: &Path,
        drv_name: &str,
        owner: Option<(u32, u32)>,
        nested: bool,
    ) -> Result<Self> {
        match std::fs::DirBuilder::new().mode(0o755).create(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io_at("creating", parent, e)),
        }
        let parent_fd = fsutil::open_dir(parent)?;
        let pid = std::process::id();
        let (top_name, top) = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = fsutil::component(format!("nix-build-{drv_name}-{pid}-{n}"))?;
            match fsutil::mkdir_at(parent_fd.as_fd(), &name, 0o700) {
                Ok(fd) => break (name, fd),
                Err(Errno::EXIST) => continue,
                Err(e) => {
                    return Err(Error::io_at("creating build directory in", parent, e));
                }
            }
        };
        let top_path = parent.join(top_name.to_str().unwrap_or_default());
        let mut bd = BuildDir {
            parent: parent_fd,
            top_name,
            top_path: top_path.clone(),
            dir_path: top_path.clone(),
            dir: top.try_clone().map_err(|e| Error::io("dup", e))?,
            top,
            done: false,
        };
        if nested {
            let dir = fsutil::mkdir_at(bd.top.as_fd(), c"build", 0o700)
                .ctx("creating", &top_path.join("build"))?;
            bd.dir = dir;
            bd.dir_path = top_path.join("build");
        }
        if let Some((uid, gid)) = owner {
            fsutil::fchown(bd.dir.as_fd(), uid, gid)
                .ctx("cannot change ownership of", &bd.dir_path)?;
        }
        Ok(bd)
    }

    /// The build dir on the host.
    pub fn path(&self) -> &Path {
        &self.dir_path
    }

    /// The build dir's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The top directory on the host.
    pub fn top_path(&self) -> &Path {
        &self.top_path
    }

    /// Creates file `name` (a single component) in the build dir with `contents`, mode
    /// 0644, owned by `owner` when given.
    pub fn write_file(&self, name: &str, contents: &[u8], owner: Option<(u32, u32)>) -> Result<()> {
        let c = fsutil::component(name)?;
        let display = self.dir_path.join(name);
        let fd = fsutil::write_new_file_at(self.dir.as_fd(), &c, contents, 0o644)
            .ctx("writing", &display)?;
        if let Some((uid, gid)) = owner {
            fsutil::fchown(fd.as_fd(), uid, gid).ctx("cannot change ownership of", &display)?;
        }
        Ok(())
    }

    /// Ends the build dir's life: mode 000 first, then kept (0755, and the note returned)
    /// or deleted.
    pub fn finish(mut self, keep: bool) -> Result<Option<String>> {
        self.done = true;
        rustix::fs::fchmod(&self.top, Mode::empty()).ctx("chmod", &self.top_path)?;
        if keep {
            rustix::fs::fchmod(&self.top, Mode::from_raw_mode(0o755))
                .ctx("chmod", &self.top_path)?;
            rustix::fs::fchmod(&self.dir, Mode::from_raw_mode(0o755))
                .ctx("chmod", &self.dir_path)?;
            return Ok(Some(format!(
                "note: keeping build directory '{}'",
                self.dir_path.display()
            )));
        }
        fsutil::delete_tree_at(self.parent.as_fd(), &self.top_name, &self.top_path)?;
        Ok(None)
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = rustix::fs::fchmod(&self.top, Mode::empty());
            let _ = fsutil::delete_tree_at(self.parent.as_fd(), &self.top_name, &self.top_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn layout_files_and_deletion() {
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("builds");
        let bd = BuildDir::create(&parent, "hello", None, true).unwrap();
        assert!(bd.path().ends_with("build"));
        let top = bd.top_path().to_owned();
        assert_eq!(std::fs::metadata(&top).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(std::fs::metadata(bd.path()).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(std::fs::metadata(&parent).unwrap().mode() & 0o7777, 0o755);
        bd.write_file(".attr-x", b"v", None).unwrap();
        assert_eq!(std::fs::read(bd.path().join(".attr-x")).unwrap(), b"v");
        // A builder-planted symlink is not followed by later writes.
        std::os::unix::fs::symlink("/etc/passwd", bd.path().join(".attrs.json")).unwrap();
        assert!(bd.write_file(".attrs.json", b"{}", None).is_err());
        assert!(bd.finish(false).unwrap().is_none());
        assert!(!top.exists());
        assert!(std::fs::metadata("/etc/passwd").unwrap().len() > 0);
    }

    #[test]
    fn keep_failed_reopens() {
        let t = tempfile::tempdir().unwrap();
        let bd = BuildDir::create(t.path(), "x", None, true).unwrap();
        let p = bd.path().to_owned();
        let note = bd.finish(true).unwrap().unwrap();
        assert_eq!(
            note,
            format!("note: keeping build directory '{}'", p.display())
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
}
