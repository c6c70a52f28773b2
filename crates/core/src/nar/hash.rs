//! `narHash` / `narSize` and validated copying.
//!
//! `narHash` is the SHA-256 of the complete NAR byte string and `narSize` its length. The
//! helpers here are deliberately minimal (SHA-256 only, raw digest bytes); the crate's
//! general hash types can wrap [`NarHashAndSize::sha256`].

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::dump::dump_path;
use super::error::NarError;
use super::reader::{NarEvent, NarReader};
use super::writer::NarWriter;

/// SHA-256 digest and length of a NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarHashAndSize {
    /// SHA-256 of the NAR bytes (`narHash`).
    pub sha256: [u8; 32],
    /// Length of the NAR in bytes (`narSize`).
    pub size: u64,
}

/// A `Write` sink that hashes and counts what it is given.
#[derive(Debug, Clone, Default)]
pub struct NarHasher {
    sha256: Sha256,
    size: u64,
}

impl NarHasher {
    /// An empty hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// The digest and count of everything fed so far.
    pub fn finish(self) -> NarHashAndSize {
        NarHashAndSize {
            sha256: self.sha256.finalize().into(),
            size: self.size,
        }
    }
}

impl Write for NarHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Read` adapter that hashes and counts every byte read through it. Wrapped around the
/// input of a [`NarReader`] (or [`restore`](super::restore)), it yields the `narHash` and
/// `narSize` of exactly the NAR, since the parser never reads past its end.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: NarHasher,
}

impl<R: Read> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: NarHasher::new(),
        }
    }

    /// The input and the digest and count of the bytes read so far.
    pub fn into_parts(self) -> (R, NarHashAndSize) {
        (self.inner, self.hasher.finish())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// `narHash` and `narSize` of the file-system object at `path` (see [`dump_path`]).
pub fn nar_hash_and_size(path: &Path) -> Result<NarHashAndSize, NarError> {
    let mut hasher = NarHasher::new();
    dump_path(path, &mut hasher)?;
    Ok(hasher.finish())
}

/// Copy one NAR from `input` to `output`, validating it on the way: it is parsed with
/// [`NarReader`] and re-encoded with [`NarWriter`]. A valid NAR has a single encoding, so
/// the output is byte-identical to the input; the copy stops exactly at the end of the
/// NAR. Returns its size. On error, part of the NAR may already have been written.
pub fn copy_nar(input: impl Read, output: impl Write) -> Result<u64, NarError> {
    let mut nar = NarReader::new(input);
    let mut out = NarWriter::new(output)?;
    while let Some(event) = nar.next()? {
        match event {
            NarEvent::Regular { executable, size } => {
                out.regular(executable, size, nar.contents())?;
                // Check the padding after the contents now rather than at the next event.
                nar.read_contents(&mut [])?;
            }
            NarEvent::Symlink { target } => out.symlink(&target)?,
            NarEvent::Directory => out.directory()?,
            NarEvent::Entry { name } => out.entry(&name)?,
            NarEvent::End => out.end()?,
        }
    }
    let size = nar.position();
    out.finish()?;
    Ok(size)
}
