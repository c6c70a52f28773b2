//! [`NarReader`]: a streaming pull parser for NARs.
//!
//! The parser is a state machine with an explicit stack of open directories (no recursion),
//! so a hostile archive costs at most [`MAX_DEPTH`] small frames. Every read is exact: the
//! parser asks its `Read` for precisely the bytes of the next token (or fewer, for file
//! contents), so it never consumes a byte past the archive's final `)`. It does no
//! buffering of its own; wrap an unbuffered source in a `BufReader` if you can afford the
//! read-ahead, or keep it unbuffered when the bytes after the NAR belong to someone else.

use std::io::{self, Read};

use super::error::{NarError, NarPath};
use super::{
    CHUNK, MAX_DEPTH, MAX_NAME_LEN, MAX_TAG_LEN, MAX_TARGET_LEN, Malformation, NAR_VERSION_MAGIC,
    check_name, check_order, check_target, padding_len,
};

/// One step of a NAR, in archive order. A node is `Regular`, `Symlink`, or `Directory`
/// followed by zero or more (`Entry`, node) pairs and then `End`. These are exactly the
/// calls [`NarWriter`](super::NarWriter) takes, so events can be re-encoded one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEvent {
    /// A regular file. Its `size` bytes of contents can be read next with
    /// [`NarReader::read_contents`] or [`NarReader::contents`]; whatever is not read is
    /// skipped by the next call to [`NarReader::next`].
    Regular {
        /// Whether the owner-execute bit is set.
        executable: bool,
        /// Length of the contents in bytes.
        size: u64,
    },
    /// A symlink (target 1..=4095 bytes, no NUL).
    Symlink {
        /// The link's target, uninterpreted.
        target: Vec<u8>,
    },
    /// The start of a directory.
    Directory,
    /// An entry of the innermost open directory; its node follows. The name is valid
    /// (non-empty, not `.`/`..`, no `/` or NUL, at most 255 bytes) and greater than the
    /// previous entry's.
    Entry {
        /// The entry's file name.
        name: Vec<u8>,
    },
    /// The end of the innermost open directory.
    End,
}

/// Where the parser is in the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the `nix-archive-1` magic.
    Magic,
    /// Before a node's `(`.
    Node,
    /// Inside a regular file's contents.
    Contents { remaining: u64, size: u64 },
    /// After a regular file's contents and padding, before its `)`.
    RegularEnd,
    /// Inside a directory, before `entry` or `)`.
    Directory,
    /// The archive is complete.
    Done,
    /// An error was returned; the stream position is unknown.
    Failed,
}

/// An open directory.
#[derive(Debug, Default)]
struct OpenDir {
    /// The last entry name read in this directory.
    last: Option<Vec<u8>>,
    /// Whether that entry's node is being parsed.
    in_entry: bool,
}

/// Streaming NAR parser. See the [module documentation](self).
#[derive(Debug)]
pub struct NarReader<R> {
    input: R,
    pos: u64,
    state: State,
    dirs: Vec<OpenDir>,
}

impl<R: Read> NarReader<R> {
    /// Parse the NAR at the start of `input`.
    pub fn new(input: R) -> Self {
        NarReader {
            input,
            pos: 0,
            state: State::Magic,
            dirs: Vec::new(),
        }
    }

    /// The next event, or `None` once the archive is complete (at which point exactly the
    /// archive's bytes have been consumed). Skips any unread file contents first.
    ///
    /// After an error the reader is unusable and returns [`NarError::ReaderFailed`].
    // Not an `Iterator`: the contents of a regular file are read from the parser itself
    // between events.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<NarEvent>, NarError> {
        let result = self.step();
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Read the next piece of the current regular file's contents into `buf`; `Ok(0)` once
    /// they are exhausted (or when no regular file is open). The padding after the last
    /// byte is checked before `Ok(0)` is returned.
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        let result = self.contents_step(buf);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// The current regular file's contents as a `Read`. Format errors surface as
    /// `io::Error`s that wrap the [`NarError`] (kind `InvalidData` or `UnexpectedEof`).
    pub fn contents(&mut self) -> Contents<'_, R> {
        Contents { nar: self }
    }

    /// Read and check the rest of the archive, discarding it. Returns the NAR's total size.
    pub fn skip_to_end(&mut self) -> Result<u64, NarError> {
        while self.next()?.is_some() {}
        Ok(self.pos)
    }

    /// Whether the archive is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Number of bytes consumed from the input so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Give back the input, positioned wherever parsing stopped (just after the NAR if
    /// [`is_done`](Self::is_done)).
    pub fn into_inner(self) -> R {
        self.input
    }

    /// Borrow the input.
    pub fn get_ref(&self) -> &R {
        &self.input
    }

    fn step(&mut self) -> Result<Option<NarEvent>, NarError> {
        loop {
            match self.state {
                State::Failed => return Err(NarError::ReaderFailed),
                State::Done => return Ok(None),
                State::Magic => {
                    self.read_magic()?;
                    self.state = State::Node;
                }
                State::Node => return self.node().map(Some),
                State::Contents { .. } => self.skip_contents()?,
                State::RegularEnd => {
                    self.expect_tag(b")", "')'")?;
                    self.end_node()?;
                }
                State::Directory => return self.directory_item().map(Some),
            }
        }
    }

    fn read_magic(&mut self) -> Result<(), NarError> {
        let start = self.pos;
        let len = self.read_u64()?;
        let mut magic = [0u8; NAR_VERSION_MAGIC.len()];
        let magic = match usize::try_from(len).ok().and_then(|l| magic.get_mut(..l)) {
            Some(magic) => magic,
            None => return Err(self.bad_at(Malformation::NotANar, start)),
        };
        self.read_exact(magic)?;
        self.read_padding(len, "magic")?;
        if magic != NAR_VERSION_MAGIC {
            return Err(self.bad_at(Malformation::NotANar, start));
        }
        Ok(())
    }

    /// `"(" "type" body`, up to the point where the node's first event is known.
    fn node(&mut self) -> Result<NarEvent, NarError> {
        // The root is depth 1 and each open directory adds one.
        if self.dirs.len() + 1 > MAX_DEPTH {
            return Err(self.bad(Malformation::TooDeep));
        }
        self.expect_tag(b"(", "'('")?;
        self.expect_tag(b"type", "'type'")?;
        let start = self.pos;
        let node_type = self.read_tag()?;
        match node_type.as_slice() {
            b"regular" => {
                let mut executable = false;
                let mut start = self.pos;
                let mut tag = self.read_tag()?;
                if tag == b"executable" {
                    start = self.pos;
                    if self.read_u64()? != 0 {
                        return Err(self.bad_at(Malformation::ExecutableMarkerNotEmpty, start));
                    }
                    executable = true;
                    start = self.pos;
                    tag = self.read_tag()?;
                }
                if tag != b"contents" {
                    let problem = Malformation::UnexpectedTag {
                        expected: if executable {
                            "'contents'"
                        } else {
                            "'executable' or 'contents'"
                        },
                        got: tag,
                    };
                    return Err(self.bad_at(problem, start));
                }
                let size = self.read_u64()?;
                self.state = State::Contents {
                    remaining: size,
                    size,
                };
                Ok(NarEvent::Regular { executable, size })
            }
            b"symlink" => {
                self.expect_tag(b"target", "'target'")?;
                let start = self.pos;
                let target = self.read_string("symlink target", MAX_TARGET_LEN)?;
                if let Some(problem) = check_target(&target) {
                    return Err(self.bad_at(problem, start));
                }
                self.expect_tag(b")", "')'")?;
                self.end_node()?;
                Ok(NarEvent::Symlink { target })
            }
            b"directory" => {
                self.dirs.push(OpenDir::default());
                self.state = State::Directory;
                Ok(NarEvent::Directory)
            }
            _ => Err(self.bad_at(Malformation::UnknownType(node_type), start)),
        }
    }

    /// Inside a directory: `"entry" "(" "name" <name> "node"` or the closing `")"`.
    fn directory_item(&mut self) -> Result<NarEvent, NarError> {
        let start = self.pos;
        let tag = self.read_tag()?;
        if tag == b")" {
            self.dirs.pop();
            self.end_node()?;
            return Ok(NarEvent::End);
        }
        if tag != b"entry" {
            let problem = Malformation::UnexpectedTag {
                expected: "'entry' or ')'",
                got: tag,
            };
            return Err(self.bad_at(problem, start));
        }
        self.expect_tag(b"(", "'('")?;
        self.expect_tag(b"name", "'name'")?;
        let start = self.pos;
        let name = self.read_string("entry name", MAX_NAME_LEN)?;
        let previous = self.dirs.last().and_then(|d| d.last.as_deref());
        if let Some(problem) = check_name(&name).or_else(|| check_order(previous, &name)) {
            return Err(self.bad_at(problem, start));
        }
        if let Some(dir) = self.dirs.last_mut() {
            dir.last = Some(name.clone());
            dir.in_entry = true;
        }
        self.expect_tag(b"node", "'node'")?;
        self.state = State::Node;
        Ok(NarEvent::Entry { name })
    }

    /// After a node's closing `)`: close the entry holding it, or finish the archive.
    fn end_node(&mut self) -> Result<(), NarError> {
        if self.dirs.is_empty() {
            self.state = State::Done;
            return Ok(());
        }
        self.expect_tag(b")", "')'")?;
        if let Some(dir) = self.dirs.last_mut() {
            dir.in_entry = false;
        }
        self.state = State::Directory;
        Ok(())
    }

    fn contents_step(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        let (remaining, size) = match self.state {
            State::Contents { remaining, size } => (remaining, size),
            State::Failed => return Err(NarError::ReaderFailed),
            _ => return Ok(0),
        };
        if remaining == 0 {
            self.read_padding(size, "file contents")?;
            self.state = State::RegularEnd;
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = loop {
            match self.input.read(chunk) {
                Ok(0) => return Err(self.eof()),
                // A misbehaving `Read` must not make us count bytes we never got.
                Ok(n) => break n.min(want),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(NarError::Read {
                        offset: self.pos,
                        source,
                    });
                }
            }
        };
        self.pos += n as u64;
        self.state = State::Contents {
            remaining: remaining - n as u64,
            size,
        };
        Ok(n)
    }

    fn skip_contents(&mut self) -> Result<(), NarError> {
        let mut buf = [0u8; CHUNK / 8];
        while self.contents_step(&mut buf)? != 0 {}
        // The final call saw `remaining == 0`, checked the padding and moved on.
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.eof()),
            Err(source) => Err(NarError::Read {
                offset: self.pos,
                source,
            }),
        }
    }

    fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut word = [0u8; 8];
        self.read_exact(&mut word)?;
        Ok(u64::from_le_bytes(word))
    }

    fn read_padding(&mut self, len: u64, what: &'static str) -> Result<(), NarError> {
        let mut padding = [0u8; 8];
        let padding = padding.get_mut(..padding_len(len)).unwrap_or_default();
        let start = self.pos;
        self.read_exact(padding)?;
        if padding.iter().any(|&b| b != 0) {
            return Err(self.bad_at(Malformation::NonZeroPadding { what }, start));
        }
        Ok(())
    }

    /// A length-prefixed, padded string of at most `max` bytes. The bound is checked
    /// before allocating.
    fn read_string(&mut self, what: &'static str, max: u64) -> Result<Vec<u8>, NarError> {
        let start = self.pos;
        let len = self.read_u64()?;
        if len > max {
            return Err(self.bad_at(
                Malformation::TooLong {
                    what,
                    len,
                    limit: max,
                },
                start,
            ));
        }
        // `len <= max`, and every bound is far below `usize::MAX`.
        let mut s = vec![0u8; usize::try_from(len).unwrap_or_default()];
        self.read_exact(&mut s)?;
        self.read_padding(len, what)?;
        Ok(s)
    }

    fn read_tag(&mut self) -> Result<Vec<u8>, NarError> {
        self.read_string("tag", MAX_TAG_LEN)
    }

    fn expect_tag(&mut self, tag: &[u8], expected: &'static str) -> Result<(), NarError> {
        let start = self.pos;
        let got = self.read_tag()?;
        if got != tag {
            return Err(self.bad_at(Malformation::UnexpectedTag { expected, got }, start));
        }
        Ok(())
    }

    /// Path of the entry being parsed.
    fn path(&self) -> NarPath {
        NarPath::from_names(
            self.dirs
                .iter()
                .filter(|d| d.in_entry)
                .filter_map(|d| d.last.as_deref()),
        )
    }

    fn bad(&self, problem: Malformation) -> NarError {
        self.bad_at(problem, self.pos)
    }

    fn bad_at(&self, problem: Malformation, offset: u64) -> NarError {
        NarError::BadArchive {
            problem,
            offset,
            path: self.path(),
        }
    }

    fn eof(&self) -> NarError {
        NarError::UnexpectedEof {
            offset: self.pos,
            path: self.path(),
        }
    }
}

/// The contents of the current regular file, as a `Read` (see [`NarReader::contents`]).
#[derive(Debug)]
pub struct Contents<'a, R> {
    nar: &'a mut NarReader<R>,
}

impl<R: Read> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.nar.read_contents(buf).map_err(NarError::into_io)
    }
}
