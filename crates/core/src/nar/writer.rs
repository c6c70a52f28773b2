//! [`NarWriter`]: encode a NAR from a sequence of events.
//!
//! The methods mirror [`NarEvent`](super::NarEvent): a node is `regular`, `symlink`, or
//! `directory` followed by any number of `entry(name)` + node, then `end`. The writer emits
//! the grammar's parentheses itself and enforces every rule the reader enforces (name
//! validity and order, target validity, depth), so whatever it produces parses.
//!
//! Tokens are written straight to the sink in small pieces: give it a buffered sink
//! (`BufWriter`, a `Vec`, a hasher) rather than a raw file or socket.

use std::io::{self, Read, Write};

use super::error::{NarError, NarPath};
use super::{
    CHUNK, MAX_DEPTH, Malformation, NAR_VERSION_MAGIC, check_name, check_order, check_target,
    padding_len,
};

/// Where the writer is in the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A node must come next (the root, or the node of a just-opened entry).
    Node,
    /// Inside a regular file whose contents are still being written.
    Contents { remaining: u64, size: u64 },
    /// Inside a directory: an entry or the directory's end may come next.
    Directory,
    /// The root node is complete.
    Done,
}

/// An open directory.
#[derive(Debug, Default)]
struct OpenDir {
    /// Name of the last entry started in it, which is the open one while its node is
    /// being written.
    last: Option<Vec<u8>>,
}

/// Streaming NAR encoder. See the [module documentation](self).
#[derive(Debug)]
pub struct NarWriter<W> {
    out: W,
    state: State,
    dirs: Vec<OpenDir>,
    written: u64,
    buf: Vec<u8>,
}

impl<W: Write> NarWriter<W> {
    /// Start a NAR on `out`, writing the `nix-archive-1` magic.
    pub fn new(out: W) -> Result<Self, NarError> {
        let mut writer = NarWriter {
            out,
            state: State::Node,
            dirs: Vec::new(),
            written: 0,
            buf: Vec::new(),
        };
        writer.token(NAR_VERSION_MAGIC)?;
        Ok(writer)
    }

    /// Write a regular file node whose contents are the next `size` bytes of `contents`,
    /// copied in bounded chunks. Fails with [`NarError::ShortContents`] if `contents` ends
    /// early; bytes beyond `size` are not read.
    pub fn regular(
        &mut self,
        executable: bool,
        size: u64,
        mut contents: impl Read,
    ) -> Result<(), NarError> {
        self.begin_regular(executable, size)?;
        if self.buf.len() < CHUNK {
            self.buf.resize(CHUNK, 0);
        }
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.copy_contents(&mut contents, &mut buf);
        self.buf = buf;
        result?;
        self.end_regular()
    }

    fn copy_contents(&mut self, contents: &mut impl Read, buf: &mut [u8]) -> Result<(), NarError> {
        while let State::Contents { remaining, size } = self.state {
            if remaining == 0 {
                break;
            }
            let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
            let chunk = buf.get_mut(..want).unwrap_or_default();
            let n = match contents.read(chunk) {
                Ok(0) => {
                    return Err(NarError::ShortContents {
                        path: self.path(),
                        declared: size,
                        read: size - remaining,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(NarError::from_io(e).unwrap_or_else(|source| {
                        NarError::ContentsRead {
                            path: self.path(),
                            source,
                        }
                    }));
                }
            };
            self.write_contents(chunk.get(..n).unwrap_or_default())?;
        }
        Ok(())
    }

    /// Write the header of a regular file node; its contents follow through
    /// [`write_contents`](Self::write_contents), then [`end_regular`](Self::end_regular).
    pub(super) fn begin_regular(&mut self, executable: bool, size: u64) -> Result<(), NarError> {
        self.begin_node()?;
        self.token(b"(")?;
        self.token(b"type")?;
        self.token(b"regular")?;
        if executable {
            self.token(b"executable")?;
            self.token(b"")?;
        }
        self.token(b"contents")?;
        self.raw(&size.to_le_bytes())?;
        self.state = State::Contents {
            remaining: size,
            size,
        };
        Ok(())
    }

    /// Write the next piece of the current regular file's contents.
    pub(super) fn write_contents(&mut self, data: &[u8]) -> Result<(), NarError> {
        let State::Contents { remaining, size } = self.state else {
            return Err(NarError::OutOfOrder("file contents outside a regular file"));
        };
        if data.len() as u64 > remaining {
            return Err(NarError::OutOfOrder(
                "more file contents than the declared size",
            ));
        }
        self.raw(data)?;
        self.state = State::Contents {
            remaining: remaining - data.len() as u64,
            size,
        };
        Ok(())
    }

    /// Finish the current regular file: padding and the closing parenthesis.
    pub(super) fn end_regular(&mut self) -> Result<(), NarError> {
        let State::Contents { remaining, size } = self.state else {
            return Err(NarError::OutOfOrder(
                "end of a regular file that is not open",
            ));
        };
        if remaining != 0 {
            return Err(NarError::ShortContents {
                path: self.path(),
                declared: size,
                read: size - remaining,
            });
        }
        self.raw(&[0; 8][..padding_len(size)])?;
        self.token(b")")?;
        self.end_node()
    }

    /// Write a symlink node pointing to `target` (1..=4095 bytes, no NUL).
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        if let Some(problem) = check_target(target) {
            return Err(self.unencodable(problem));
        }
        self.begin_node()?;
        self.token(b"(")?;
        self.token(b"type")?;
        self.token(b"symlink")?;
        self.token(b"target")?;
        self.token(target)?;
        self.token(b")")?;
        self.end_node()
    }

    /// Open a directory node; its entries follow, then [`end`](Self::end).
    pub fn directory(&mut self) -> Result<(), NarError> {
        self.begin_node()?;
        self.token(b"(")?;
        self.token(b"type")?;
        self.token(b"directory")?;
        self.dirs.push(OpenDir::default());
        self.state = State::Directory;
        Ok(())
    }

    /// Open an entry of the current directory; its node must follow. Names must be valid
    /// and strictly increasing in byte order.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarError> {
        if self.state != State::Directory {
            return Err(NarError::OutOfOrder("entry outside a directory"));
        }
        if let Some(problem) = check_name(name) {
            return Err(self.unencodable(problem));
        }
        let previous = self.dirs.last().and_then(|d| d.last.as_deref());
        if let Some(problem) = check_order(previous, name) {
            return Err(self.unencodable(problem));
        }
        if self.dirs.len() >= MAX_DEPTH {
            // The entry's node would be one deeper than its directory.
            return Err(NarError::Unencodable {
                problem: Malformation::TooDeep,
                path: self.path_with(Some(name)),
            });
        }
        self.token(b"entry")?;
        self.token(b"(")?;
        self.token(b"name")?;
        self.token(name)?;
        self.token(b"node")?;
        if let Some(dir) = self.dirs.last_mut() {
            dir.last = Some(name.to_vec());
        }
        self.state = State::Node;
        Ok(())
    }

    /// Close the innermost open directory.
    pub fn end(&mut self) -> Result<(), NarError> {
        if self.state != State::Directory {
            return Err(NarError::OutOfOrder("end outside a directory"));
        }
        self.token(b")")?;
        self.dirs.pop();
        self.end_node()
    }

    /// Whether the root node is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Number of bytes written so far.
    pub fn position(&self) -> u64 {
        self.written
    }

    /// Check that the archive is complete, flush, and return the sink.
    pub fn finish(mut self) -> Result<W, NarError> {
        if self.state != State::Done {
            return Err(NarError::OutOfOrder(
                "archive finished before its root node",
            ));
        }
        self.out.flush().map_err(NarError::Write)?;
        Ok(self.out)
    }

    fn begin_node(&mut self) -> Result<(), NarError> {
        if self.state != State::Node {
            return Err(NarError::OutOfOrder(
                "a node must be the root or follow an entry",
            ));
        }
        Ok(())
    }

    /// After a node's closing parenthesis: close the entry holding it, if any.
    fn end_node(&mut self) -> Result<(), NarError> {
        if self.dirs.is_empty() {
            self.state = State::Done;
        } else {
            self.token(b")")?;
            self.state = State::Directory;
        }
        Ok(())
    }

    fn token(&mut self, s: &[u8]) -> Result<(), NarError> {
        self.raw(&(s.len() as u64).to_le_bytes())?;
        self.raw(s)?;
        self.raw(&[0; 8][..padding_len(s.len() as u64)])
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        self.out.write_all(bytes).map_err(NarError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Path of the node being written.
    fn path(&self) -> NarPath {
        self.path_with(None)
    }

    fn path_with(&self, extra: Option<&[u8]>) -> NarPath {
        // Directories whose `last` entry is open: all but the innermost when it is between
        // entries.
        let open = match self.state {
            State::Directory => self.dirs.len().saturating_sub(1),
            _ => self.dirs.len(),
        };
        NarPath::from_names(
            self.dirs
                .iter()
                .take(open)
                .filter_map(|d| d.last.as_deref())
                .chain(extra),
        )
    }

    fn unencodable(&self, problem: Malformation) -> NarError {
        NarError::Unencodable {
            problem,
            path: self.path(),
        }
    }
}
