//! The sandbox's root directory, prepared on the host before the builder starts (the
//! mounts are the helper's job, see [`crate::helper`]). Layout as in Nix ≥ 2.24:
//!
//! ```text
//! <store>/<drv hash>-<name>.drv.chroot/      0700, owned by the daemon
//!   root/                                    0750 root:<build gid> — becomes `/`
//!     tmp/                                   1777
//!     etc/                                   0755: hosts (not for fixed-output), nsswitch.conf
//!                                            (fixed-output only); passwd and group are
//!                                            written by the helper once the ids are known
//!     <store dir>/                           1775 root:<build gid>; parents 0755
//!       <input file or symlink>              hard link (a copy if linking fails)
//!       <input directory>                    bind-mounted read-only by the helper
//! ```
//!
//! It lives inside the store so that outputs can be `rename`d into place and inputs
//! hard-linked. Store paths are bound **read-only** (CppNix relies on permissions alone):
//! a builder running with the uid that owns the store — no build users, or an unprivileged
//! daemon — could otherwise `chmod` its inputs and write to them; for the same reason such
//! a build gets its input *files* bind-mounted read-only instead of hard-linked. Bind mounts (sorted by target, so parents come first): every input
//! directory, the build dir at `sandbox-build-dir`, each `sandbox-paths` entry (`path`,
//! `target=source`, trailing `?` = optional; `/proc` is ignored) together with the closure
//! of any store path among them, and for fixed-output derivations the host's
//! `/etc/resolv.conf`, `/etc/services`, `/etc/hosts` when present. Outputs are never bound.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nixnest_core::StorePath;
use nixnest_store::LocalStore;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::etc;
use crate::fsutil;
use crate::spec::Bind;

/// A prepared chroot; deleted on drop.
#[derive(Debug)]
pub struct Chroot {
    store_fd: OwnedFd,
    name: CString,
    outer: PathBuf,
    root: PathBuf,
    chroot_store: PathBuf,
    chroot_store_fd: OwnedFd,
    /// Bind mounts for the helper, by target (inside).
    binds: BTreeMap<String, BindSource>,
}

#[derive(Debug, Clone)]
struct BindSource {
    source: String,
    optional: bool,
    read_only: bool,
}

impl BindSource {
    fn new(source: impl Into<String>, optional: bool, read_only: bool) -> Self {
        BindSource {
            source: source.into(),
            optional,
            read_only,
        }
    }
}

/// One `sandbox-paths` entry: target → (source, optional).
pub fn parse_sandbox_path(entry: &str) -> Option<(String, String, bool)> {
    let mut e = entry;
    if e.is_empty() {
        return None;
    }
    let optional = e.ends_with('?');
    if optional {
        e = e.get(..e.len() - 1)?;
    }
    Some(match e.split_once('=') {
        Some((t, s)) => (t.to_owned(), s.to_owned(), optional),
        None => (e.to_owned(), e.to_owned(), optional),
    })
}

/// Parses a `pre-build-hook`'s output (CppNix 2.8): lines `extra-sandbox-paths` (or
/// `extra-chroot-dirs`), then `target[=source]` lines up to an empty line; repeatable.
/// Returns (target, source) pairs; any other command is an error. Only complete lines
/// count. (No `?` suffix handling here, as in CppNix.)
pub fn parse_pre_build_hook(output: &str) -> Result<Vec<(String, String)>, String> {
    let mut extra = false;
    let mut paths = Vec::new();
    let complete = match output.rfind('\n') {
        Some(i) => output.get(..i).unwrap_or_default(),
        None => return Ok(paths),
    };
    for line in complete.split('\n') {
        if !extra {
            if line == "extra-sandbox-paths" || line == "extra-chroot-dirs" {
                extra = true;
            } else {
                return Err(format!("unknown pre-build hook command '{line}'"));
            }
        } else if line.is_empty() {
            extra = false;
        } else {
            match line.split_once('=') {
                Some((t, s)) => paths.push((t.to_owned(), s.to_owned())),
                None => paths.push((line.to_owned(), line.to_owned())),
            }
        }
    }
    Ok(paths)
}

/// What the chroot needs to know.
pub struct ChrootParams<'a> {
    pub store: &'a LocalStore,
    pub drv_path: &'a StorePath,
    /// The build group: owner group of `root/` and the chroot store.
    pub build_gid: Option<u32>,
    pub fixed_output: bool,
    pub input_paths: &'a BTreeSet<StorePath>,
    pub output_paths: &'a BTreeSet<StorePath>,
    pub sandbox_paths: &'a [String],
    /// Host build dir and where it appears inside.
    pub build_dir: &'a Path,
    pub build_dir_in_sandbox: &'a str,
    /// The builder runs with the uid that owns the store (no build user): then input files
    /// are bind-mounted read-only rather than hard-linked, since the owner of an inode
    /// could otherwise `chmod` it and write through the link.
    pub builder_owns_store: bool,
}

impl Chroot {
    pub fn prepare(p: &ChrootParams<'_>) -> Result<Chroot> {
        let store_dir = p.store.store_dir();
        let real = p.store.real_store_dir();
        let store_fd = fsutil::open_dir(real)?;
        let name = fsutil::component(format!("{}.chroot", p.drv_path))?;
        let outer = real.join(name.to_str().unwrap_or_default());
        fsutil::delete_tree_at(store_fd.as_fd(), &name, &outer)?;
        let outer_fd =
            fsutil::mkdir_at(store_fd.as_fd(), &name, 0o700).ctx("cannot create", &outer)?;
        let mut chroot = Chroot {
            store_fd,
            name,
            root: outer.join("root"),
            chroot_store: PathBuf::new(),
            chroot_store_fd: outer_fd.try_clone().map_err(|e| Error::io("dup", e))?,
            outer,
            binds: BTreeMap::new(),
        };
        let root_fd = fsutil::mkdir_at(outer_fd.as_fd(), c"root", 0o750)
            .ctx("cannot create", &chroot.root)?;
        if let Some(gid) = p.build_gid {
            fsutil::fchown(root_fd.as_fd(), 0, gid)
                .ctx("cannot change ownership of", &chroot.root)?;
        }
        fsutil::mkdir_at(root_fd.as_fd(), c"tmp", 0o1777)
            .ctx("creating", &chroot.root.join("tmp"))?;
        let etc_fd = fsutil::mkdir_at(root_fd.as_fd(), c"etc", 0o755)
            .ctx("creating", &chroot.root.join("etc"))?;
        if p.fixed_output {
            fsutil::write_new_file_at(
                etc_fd.as_fd(),
                c"nsswitch.conf",
                etc::NSSWITCH_CONF.as_bytes(),
                0o644,
            )
            .ctx("writing", &chroot.root.join("etc/nsswitch.conf"))?;
        } else {
            fsutil::write_new_file_at(etc_fd.as_fd(), c"hosts", etc::HOSTS.as_bytes(), 0o644)
                .ctx("writing", &chroot.root.join("etc/hosts"))?;
        }

        // The store dir and its parents.
        let mut dir = root_fd;
        let components: Vec<&str> = store_dir
            .as_str()
            .split('/')
            .filter(|c| !c.is_empty())
            .collect();
        let mut path = chroot.root.clone();
        for (i, c) in components.iter().enumerate() {
            let last = i + 1 == components.len();
            let cn = fsutil::component(c)?;
            path.push(c);
            let mode = if last { 0o1775 } else { 0o755 };
            dir = fsutil::ensure_dir_at(dir.as_fd(), &cn, mode).ctx("creating", &path)?;
            if last && let Some(gid) = p.build_gid {
                fsutil::fchown(dir.as_fd(), 0, gid).ctx("cannot change ownership of", &path)?;
            }
        }
        chroot.chroot_store = path;
        chroot.chroot_store_fd = dir;

        // sandbox-paths, and the closure of the store paths among them.
        let mut closure_start = BTreeSet::new();
        for entry in p.sandbox_paths {
            let Some((target, source, optional)) = parse_sandbox_path(entry) else {
                continue;
            };
            if let Ok((sp, _)) = store_dir.split_path(&source)
                && p.store.is_valid_path(&sp)?
            {
                closure_start.insert(sp);
            }
            chroot
                .binds
                .insert(target, BindSource::new(source, optional, false));
        }
        chroot.binds.insert(
            p.build_dir_in_sandbox.to_owned(),
            BindSource::new(p.build_dir.to_string_lossy(), false, false),
        );
        if !closure_start.is_empty() {
            for sp in p
                .store
                .compute_closure(&closure_start, false, false, false)?
            {
                let s = store_dir.print(&sp);
                chroot.binds.insert(
                    s,
                    BindSource::new(
                        p.store
                            .real_store_dir()
                            .join(sp.to_string())
                            .to_string_lossy(),
                        false,
                        true,
                    ),
                );
            }
        }
        if p.fixed_output {
            for f in etc::FOD_HOST_FILES {
                if Path::new(f).exists() {
                    chroot
                        .binds
                        .insert(f.to_owned(), BindSource::new(f, false, false));
                }
            }
        }

        // Inputs: directories bound read-only; files hard-linked (or, when the builder owns
        // them, bound read-only); symlinks hard-linked.
        for input in p.input_paths {
            let base = fsutil::component(input.to_string())?;
            let st = rustix::fs::statat(chroot.store_fd.as_fd(), &base, AtFlags::SYMLINK_NOFOLLOW)
                .ctx("getting attributes of path", &real.join(input.to_string()))?;
            let ft = FileType::from_raw_mode(st.st_mode);
            if ft == FileType::Directory || (ft == FileType::RegularFile && p.builder_owns_store) {
                chroot.binds.insert(
                    store_dir.print(input),
                    BindSource::new(real.join(input.to_string()).to_string_lossy(), false, true),
                );
            } else {
                link_or_copy(
                    chroot.store_fd.as_fd(),
                    chroot.chroot_store_fd.as_fd(),
                    &base,
                    &chroot.chroot_store.join(input.to_string()),
                )?;
            }
        }
        for out in p.output_paths {
            chroot.binds.remove(&store_dir.print(out));
        }
        Ok(chroot)
    }

    /// The directory that becomes `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root><store dir>` on the host.
    pub fn store_path(&self) -> &Path {
        &self.chroot_store
    }

    /// The chroot store's descriptor.
    pub fn store_fd(&self) -> BorrowedFd<'_> {
        self.chroot_store_fd.as_fd()
    }

    /// The bind mounts, ordered by target.
    pub fn binds(&self) -> Vec<Bind> {
        self.binds
            .iter()
            .map(|(t, b)| Bind {
                target: t.clone(),
                source: b.source.clone(),
                optional: b.optional,
                read_only: b.read_only,
            })
            .collect()
    }

    /// Adds bind mounts (from a pre-build hook).
    pub fn add_binds(&mut self, paths: &[(String, String)]) {
        for (t, s) in paths {
            self.binds
                .insert(t.clone(), BindSource::new(s.clone(), false, false));
        }
    }

    /// Whether `/dev` (resp. `/dev/pts`) is bound from the host.
    pub fn binds_target(&self, target: &str) -> bool {
        self.binds.contains_key(target)
    }

    /// Deletes the chroot (never following symlinks the builder left).
    pub fn remove(self) -> Result<()> {
        let r = fsutil::delete_tree_at(self.store_fd.as_fd(), &self.name, &self.outer);
        std::mem::forget(self);
        r
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        let _ = fsutil::delete_tree_at(self.store_fd.as_fd(), &self.name, &self.outer);
    }
}

/// Hard-links `name` from `from` into `to`, or copies it when the file system refuses
/// (`EMLINK`, `EPERM`, `EXDEV`), as CppNix's `linkOrCopy`.
pub fn link_or_copy(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    name: &CString,
    display: &Path,
) -> Result<()> {
    match rustix::fs::linkat(from, name, to, name, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::MLINK) | Err(Errno::PERM) | Err(Errno::XDEV) => {
            copy_entry(from, to, name, display)
        }
        Err(e) => Err(Error::io_at("linking", display, e)),
    }
}

/// Copies a regular file or symlink (mode kept), never following a symlink.
fn copy_entry(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    name: &CString,
    display: &Path,
) -> Result<()> {
    let st = rustix::fs::statat(from, name, AtFlags::SYMLINK_NOFOLLOW)
        .ctx("getting attributes of", display)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Symlink => {
            let target =
                rustix::fs::readlinkat(from, name, Vec::new()).ctx("reading link", display)?;
            rustix::fs::symlinkat(target.as_c_str(), to, name).ctx("creating symlink", display)?;
        }
        FileType::RegularFile => {
            let src = rustix::fs::openat(
                from,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ctx("opening", display)?;
            let dst = fsutil::write_new_file_at(to, name, b"", st.st_mode & 0o777)
                .ctx("creating", display)?;
            let mut r = std::fs::File::from(src);
            let mut w = std::fs::File::from(dst);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.read(&mut buf).ctx("reading", display)?;
                if n == 0 {
                    break;
                }
                w.write_all(buf.get(..n).unwrap_or_default())
                    .ctx("writing", display)?;
            }
        }
        _ => {
            return Err(Error::Other(format!(
                "cannot copy '{}' into the sandbox: unsupported file type",
                display.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_build_hook_output() {
        assert_eq!(
            parse_pre_build_hook("extra-sandbox-paths\n/a=/b\n/c\n\nextra-chroot-dirs\n/d\n"),
            Ok(vec![
                ("/a".into(), "/b".into()),
                ("/c".into(), "/c".into()),
                ("/d".into(), "/d".into()),
            ])
        );
        assert_eq!(parse_pre_build_hook(""), Ok(vec![]));
        // An unfinished last line is ignored.
        assert_eq!(parse_pre_build_hook("extra-sandbox-paths\n/x"), Ok(vec![]));
        assert_eq!(
            parse_pre_build_hook("nonsense\n"),
            Err("unknown pre-build hook command 'nonsense'".into())
        );
    }

    #[test]
    fn sandbox_path_entries() {
        assert_eq!(
            parse_sandbox_path("/bin/sh"),
            Some(("/bin/sh".into(), "/bin/sh".into(), false))
        );
        assert_eq!(
            parse_sandbox_path("/bin/sh=/nix/store/x-bash/bin/bash"),
            Some(("/bin/sh".into(), "/nix/store/x-bash/bin/bash".into(), false))
        );
        assert_eq!(
            parse_sandbox_path("/opt?"),
            Some(("/opt".into(), "/opt".into(), true))
        );
        assert_eq!(
            parse_sandbox_path("/m=/x?"),
            Some(("/m".into(), "/x".into(), true))
        );
        assert_eq!(parse_sandbox_path(""), None);
    }
}
