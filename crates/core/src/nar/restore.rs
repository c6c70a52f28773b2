//! Restoring a NAR onto the file system, and the store's metadata canonicalisation.
//!
//! # Why a NAR cannot write outside its target
//!
//! * The target must not exist: the root object is created with `mkdirat`, `symlinkat` or
//!   `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` in the target's parent, all of which fail on
//!   an existing name — including a symlink — instead of following it.
//! * Every other object is created relative to the file descriptor of a directory this
//!   restore itself just created, opened with `O_DIRECTORY | O_NOFOLLOW`; nothing is ever
//!   resolved through a path string.
//! * Names come from [`NarReader`], which only yields single, valid components (never
//!   empty, `.`, `..`, nor containing `/` or NUL) in strictly increasing order, so an entry
//!   can neither climb out, nor reach through an earlier symlink, nor replace an earlier
//!   object of the same name.
//!
//! # Permissions
//!
//! Objects are created owner-writable: files 0644 (0755 when executable), directories
//! 0755, independent of the umask. Making them read-only with mtime 1 is a separate step,
//! [`canonicalise_path_metadata`], because the store may still have to rewrite or move
//! the tree (e.g. to rewrite self-references) before freezing it. Ownership and extended
//! attributes are store policy and are not touched here.
//!
//! On error the partially restored tree is left in place; callers restore into a
//! temporary location and delete it on failure.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};

use super::error::NarError;
use super::reader::{NarEvent, NarReader};
use super::{CHUNK, MAX_DEPTH, check_name};

/// Restore the NAR read from `input` to `target`, which must not exist yet (its parent
/// must). Returns the NAR's size in bytes. Reads exactly the NAR from `input`.
pub fn restore(input: impl Read, target: &Path) -> Result<u64, NarError> {
    let (parent, name) = split_target(target)?;
    let parent_fd = open_parent(parent, target)?;
    let mut nar = NarReader::new(input);
    Restorer::new(target.to_path_buf()).run(&mut nar, parent_fd.as_fd(), name)?;
    Ok(nar.position())
}

/// Restore the NAR read by `nar` as `name` inside the directory `dir`. `name` must be a
/// single path component that does not exist in `dir`. On success the reader is
/// [done](NarReader::is_done).
pub fn restore_at<R: Read>(
    nar: &mut NarReader<R>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> Result<(), NarError> {
    if check_name(name.as_bytes()).is_some() {
        return Err(NarError::BadTarget {
            path: PathBuf::from(name),
            reason: "it must be a single, valid file name",
        });
    }
    Restorer::new(PathBuf::from(name)).run(nar, dir, name)
}

/// Split `target` into the directory to create in and the name to create.
fn split_target(target: &Path) -> Result<(&Path, &OsStr), NarError> {
    let bad = |reason| NarError::BadTarget {
        path: target.to_path_buf(),
        reason,
    };
    let name = target
        .file_name()
        .ok_or_else(|| bad("it does not end in a file name"))?;
    if check_name(name.as_bytes()).is_some() {
        return Err(bad("its last component is not a valid file name"));
    }
    let parent = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

fn open_parent(parent: &Path, target: &Path) -> Result<OwnedFd, NarError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    rustix::fs::openat(CWD, parent, flags, Mode::empty()).map_err(|e| NarError::Fs {
        action: "opening parent directory of",
        path: target.to_path_buf(),
        source: e.into(),
    })
}

fn cstring(name: &[u8], path: &Path) -> Result<CString, NarError> {
    CString::new(name).map_err(|_| NarError::Fs {
        action: "creating",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"),
    })
}

struct Restorer {
    /// File-system path of the object being created, for error messages.
    path: PathBuf,
}

impl Restorer {
    fn new(path: PathBuf) -> Self {
        Restorer { path }
    }

    fn run<R: Read>(
        &mut self,
        nar: &mut NarReader<R>,
        root_parent: BorrowedFd<'_>,
        root_name: &OsStr,
    ) -> Result<(), NarError> {
        // Open directories, innermost last; the object being created goes into the last
        // one (or into `root_parent` for the root) under `name`.
        let mut dirs: Vec<OwnedFd> = Vec::new();
        let mut name = cstring(root_name.as_bytes(), &self.path)?;
        let mut buf = vec![0u8; CHUNK];
        while let Some(event) = nar.next()? {
            let parent = dirs.last().map_or(root_parent, |d| d.as_fd());
            match event {
                NarEvent::Directory => {
                    let fd = self.create_directory(parent, &name)?;
                    dirs.push(fd);
                }
                NarEvent::Entry { name: entry } => {
                    name = cstring(&entry, &self.path)?;
                    self.path.push(OsStr::from_bytes(&entry));
                }
                NarEvent::Regular { executable, .. } => {
                    self.create_regular(nar, parent, &name, executable, &mut buf)?;
                    self.path.pop();
                }
                NarEvent::Symlink { target } => {
                    rustix::fs::symlinkat(target.as_slice(), parent, &name)
                        .map_err(|e| self.fs_error("creating symlink", e))?;
                    self.path.pop();
                }
                NarEvent::End => {
                    let fd = dirs.pop();
                    if let Some(fd) = fd {
                        // Directories are made traversable and writable by their owner
                        // only once filled; see `create_directory`.
                        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                            .map_err(|e| self.fs_error("setting permissions of", e))?;
                    }
                    self.path.pop();
                }
            }
        }
        Ok(())
    }

    fn create_directory(
        &self,
        parent: BorrowedFd<'_>,
        name: &CString,
    ) -> Result<OwnedFd, NarError> {
        rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
            .map_err(|e| self.fs_error("creating directory", e))?;
        // NOFOLLOW | DIRECTORY: if something replaced the new directory, fail rather than
        // follow it.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::openat(parent, name, flags, Mode::empty())
            .map_err(|e| self.fs_error("opening directory", e))
    }

    fn create_regular<R: Read>(
        &self,
        nar: &mut NarReader<R>,
        parent: BorrowedFd<'_>,
        name: &CString,
        executable: bool,
        buf: &mut [u8],
    ) -> Result<(), NarError> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| self.fs_error("creating file", e))?;
        let mut file = File::from(fd);
        loop {
            let n = nar.read_contents(buf)?;
            if n == 0 {
                break;
            }
            file.write_all(buf.get(..n).unwrap_or_default())
                .map_err(|e| self.fs_error("writing file", e))?;
        }
        let mode = if executable { 0o755 } else { 0o644 };
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))
            .map_err(|e| self.fs_error("setting permissions of", e))
    }

    fn fs_error(&self, action: &'static str, e: impl Into<io::Error>) -> NarError {
        NarError::Fs {
            action,
            path: self.path.clone(),
            source: e.into(),
        }
    }
}

/// Apply the permission and timestamp part of the store's canonicalisation to `path` and
/// everything below it, without following symlinks: regular files become 0444, or 0555
/// when their owner-execute bit is set; directories 0555; every object, symlinks included,
/// gets mtime 1 (one second after the epoch) with its atime kept. Other file types are
/// refused with [`NarError::UnsupportedType`], trees deeper than [`MAX_DEPTH`] with
/// [`NarError::TooDeep`]. Ownership and extended attributes are not changed.
///
/// Regular files are opened read-only to change them, so the caller must be able to read
/// them (true for anything [`restore`] made, and always for root).
pub fn canonicalise_path_metadata(path: &Path) -> Result<(), NarError> {
    let (parent, name) = split_target(path)?;
    let parent_fd = open_parent(parent, path)?;
    Canonicaliser {
        path: path.to_path_buf(),
    }
    .object(parent_fd.as_fd(), name.as_bytes(), 1)
}

/// [`canonicalise_path_metadata`] for the object `name` (a single component) in `dir`.
pub fn canonicalise_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), NarError> {
    if check_name(name.as_bytes()).is_some() {
        return Err(NarError::BadTarget {
            path: PathBuf::from(name),
            reason: "it must be a single, valid file name",
        });
    }
    Canonicaliser {
        path: PathBuf::from(name),
    }
    .object(dir, name.as_bytes(), 1)
}

/// The canonical mtime: one second after the epoch.
const CANONICAL_MTIME: Timestamps = Timestamps {
    last_access: Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_OMIT,
    },
    last_modification: Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    },
};

struct Canonicaliser {
    path: PathBuf,
}

impl Canonicaliser {
    fn object(&mut self, dir: BorrowedFd<'_>, name: &[u8], depth: usize) -> Result<(), NarError> {
        if depth > MAX_DEPTH {
            return Err(NarError::TooDeep {
                path: self.path.clone(),
            });
        }
        let name = cstring(name, &self.path)?;
        let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.fs_error("getting status of", e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                if st.st_mtime != 1 || st.st_mtime_nsec != 0 {
                    rustix::fs::utimensat(dir, &name, &CANONICAL_MTIME, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| self.fs_error("setting modification time of", e))?;
                }
                Ok(())
            }
            FileType::RegularFile => {
                let flags = OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir, &name, flags, Mode::empty())
                    .map_err(|e| self.fs_error("opening file", e))?;
                let exec = st.st_mode & 0o100 != 0;
                self.freeze(&fd, FileType::RegularFile, if exec { 0o555 } else { 0o444 })
            }
            FileType::Directory => {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir, &name, flags, Mode::empty())
                    .map_err(|e| self.fs_error("opening directory", e))?;
                let mut names = Vec::new();
                let mut entries =
                    Dir::read_from(&fd).map_err(|e| self.fs_error("reading directory", e))?;
                while let Some(entry) = entries.read() {
                    let entry = entry.map_err(|e| self.fs_error("reading directory", e))?;
                    let entry_name = entry.file_name().to_bytes();
                    if entry_name != b"." && entry_name != b".." {
                        names.push(entry_name.to_vec());
                    }
                }
                drop(entries);
                for entry_name in &names {
                    self.path.push(OsStr::from_bytes(entry_name));
                    let result = self.object(fd.as_fd(), entry_name, depth + 1);
                    self.path.pop();
                    result?;
                }
                // Last, so the directory is frozen only once its contents are.
                self.freeze(&fd, FileType::Directory, 0o555)
            }
            other => Err(NarError::UnsupportedType {
                path: self.path.clone(),
                kind: file_type_name(other),
            }),
        }
    }

    /// Set `mode` and mtime 1 on an opened object, after checking (on the descriptor) that
    /// it is still of the type the `lstat` saw.
    fn freeze(&self, fd: &OwnedFd, expected: FileType, mode: u32) -> Result<(), NarError> {
        let st = rustix::fs::fstat(fd).map_err(|e| self.fs_error("getting status of", e))?;
        if FileType::from_raw_mode(st.st_mode) != expected {
            let changed = io::Error::other("it changed type during canonicalisation");
            return Err(self.fs_error("canonicalising", changed));
        }
        if st.st_mode & 0o7777 != mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
                .map_err(|e| self.fs_error("setting permissions of", e))?;
        }
        if st.st_mtime != 1 || st.st_mtime_nsec != 0 {
            rustix::fs::futimens(fd, &CANONICAL_MTIME)
                .map_err(|e| self.fs_error("setting modification time of", e))?;
        }
        Ok(())
    }

    fn fs_error(&self, action: &'static str, e: impl Into<io::Error>) -> NarError {
        NarError::Fs {
            action,
            path: self.path.clone(),
            source: e.into(),
        }
    }
}

/// How error messages name a file type NAR cannot hold.
pub(super) fn file_type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Unknown => "unknown",
    }
}
