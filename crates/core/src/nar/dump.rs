//! [`dump_path`]: serialise a file-system tree as a NAR (upstream's `dumpPath`).
//!
//! The walk is relative to directory file descriptors and never follows a symlink: each
//! object is `lstat`ed by name in its parent, opened with `O_NOFOLLOW`, and re-checked with
//! `fstat` on the open descriptor, so a tree that a build is still changing can make the
//! dump fail but never make it read a file outside the tree. (As upstream, only the final
//! component of the root path itself is not followed: a symlink root is dumped as a
//! symlink.) Directory entries are emitted in byte order; file contents stream through a
//! fixed buffer, so memory does not depend on file sizes.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};

use super::error::NarError;
use super::restore::file_type_name;
use super::writer::NarWriter;
use super::{CHUNK, MAX_DEPTH};

/// Write the NAR serialisation of `path` to `out` and return its size in bytes.
///
/// Regular files (with their owner-execute bit), symlinks and directories are dumped;
/// any other file type is refused with [`NarError::UnsupportedType`] naming the path, and a
/// tree nested deeper than [`MAX_DEPTH`] with [`NarError::TooDeep`]. Output is buffered
/// internally and flushed before returning.
pub fn dump_path(path: &Path, out: impl Write) -> Result<u64, NarError> {
    let mut nar = NarWriter::new(BufWriter::with_capacity(CHUNK, out))?;
    let mut dumper = Dumper {
        path: path.to_path_buf(),
        buf: vec![0; CHUNK],
    };
    dumper.node(&mut nar, CWD, path.as_os_str().as_bytes(), 1)?;
    let size = nar.position();
    nar.finish()?;
    Ok(size)
}

struct Dumper {
    /// File-system path of the object being dumped, for error messages.
    path: PathBuf,
    buf: Vec<u8>,
}

impl Dumper {
    fn node<W: Write>(
        &mut self,
        nar: &mut NarWriter<W>,
        parent: BorrowedFd<'_>,
        name: &[u8],
        depth: usize,
    ) -> Result<(), NarError> {
        let name = CString::new(name).map_err(|_| NarError::Fs {
            action: "getting status of",
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
        })?;
        let st = rustix::fs::statat(parent, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.fs_error("getting status of", e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => self.regular(nar, parent, &name),
            FileType::Directory => self.directory(nar, parent, &name, depth),
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(parent, &name, Vec::new())
                    .map_err(|e| self.fs_error("reading symlink", e))?;
                nar.symlink(target.as_bytes())
            }
            other => Err(self.unsupported(other)),
        }
    }

    fn regular<W: Write>(
        &mut self,
        nar: &mut NarWriter<W>,
        parent: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<(), NarError> {
        // O_NONBLOCK: if a FIFO was swapped in after the lstat, opening must not hang.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
        let fd: OwnedFd = rustix::fs::openat(parent, name, flags | OFlags::NONBLOCK, Mode::empty())
            .map_err(|e| self.fs_error("opening file", e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| self.fs_error("getting status of", e))?;
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type != FileType::RegularFile {
            let changed = io::Error::other("it changed type while being dumped");
            return Err(self.fs_error("opening file", changed));
        }
        let executable = st.st_mode & 0o100 != 0;
        // `st_size` of a regular file is never negative.
        let size = u64::try_from(st.st_size).unwrap_or_default();
        let mut file = File::from(fd);
        nar.begin_regular(executable, size)?;
        let mut remaining = size;
        while remaining > 0 {
            let want = usize::try_from(remaining).map_or(self.buf.len(), |r| r.min(self.buf.len()));
            let chunk = self.buf.get_mut(..want).unwrap_or_default();
            let n = match file.read(chunk) {
                Ok(0) => {
                    return Err(self.fs_error(
                        "reading file",
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("file shrank while being dumped (expected {size} bytes)"),
                        ),
                    ));
                }
                Ok(n) => n.min(want),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fs_error("reading file", e)),
            };
            nar.write_contents(chunk.get(..n).unwrap_or_default())?;
            remaining -= n as u64;
        }
        nar.end_regular()
    }

    fn directory<W: Write>(
        &mut self,
        nar: &mut NarWriter<W>,
        parent: BorrowedFd<'_>,
        name: &CStr,
        depth: usize,
    ) -> Result<(), NarError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(parent, name, flags, Mode::empty())
            .map_err(|e| self.fs_error("opening directory", e))?;
        let mut names = Vec::new();
        let mut dir = Dir::read_from(&fd).map_err(|e| self.fs_error("reading directory", e))?;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| self.fs_error("reading directory", e))?;
            let entry_name = entry.file_name().to_bytes();
            if entry_name != b"." && entry_name != b".." {
                names.push(entry_name.to_vec());
            }
        }
        drop(dir);
        names.sort_unstable();

        nar.directory()?;
        for entry_name in &names {
            self.path.push(std::ffi::OsStr::from_bytes(entry_name));
            if depth + 1 > MAX_DEPTH {
                return Err(NarError::TooDeep {
                    path: self.path.clone(),
                });
            }
            let result = nar
                .entry(entry_name)
                .and_then(|()| self.node(nar, fd.as_fd(), entry_name, depth + 1));
            self.path.pop();
            result?;
        }
        nar.end()
    }

    fn fs_error(&self, action: &'static str, e: impl Into<io::Error>) -> NarError {
        NarError::Fs {
            action,
            path: self.path.clone(),
            source: e.into(),
        }
    }

    fn unsupported(&self, file_type: FileType) -> NarError {
        NarError::UnsupportedType {
            path: self.path.clone(),
            kind: file_type_name(file_type),
        }
    }
}
