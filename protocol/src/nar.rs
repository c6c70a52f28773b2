//! Finding the end of a NAR inside a stream, asynchronously.
//!
//! ```text
//! nar   = "nix-archive-1" node
//! node  = "(" "type" ( "regular" [ "executable" "" ] "contents" <data>
//!                    | "symlink" "target" <target>
//!                    | "directory" { "entry" "(" "name" <name> "node" node ")" } ) ")"
//! ```
//! (every token a padded string). Some operations carry a NAR with no length in front of
//! it (AddToStore < 1.25, NarFromPath's reply, AddMultipleToStore items, the export
//! format), so a reader must follow the grammar to know where it ends.
//! [`NarReader`] does only that: it passes the NAR's bytes through unchanged, reports
//! end of file right after its last byte (never reading beyond it), and bounds what it
//! tracks (keywords ≤ 32 bytes, names and targets ≤ 4096, depth ≤ 64, zero padding).
//! File contents stream through without being held. Full validation (entry order,
//! name rules) is the store's NAR parser's job; this is what lets it — or a drain —
//! consume an unframed NAR from the socket.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::Error;
use crate::wire::reader::padding_len;

/// Deepest directory nesting accepted (as in Nix ≥ 2.24).
pub const MAX_DEPTH: usize = 64;
/// Longest name or symlink target.
const MAX_VALUE: u64 = 4096;
/// Longest keyword token.
const MAX_KEYWORD: usize = 32;

/// The next token the grammar expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Magic,
    NodeOpen,
    TypeKw,
    TypeVal,
    RegularAttr,
    ExecutableEmpty,
    Contents,
    TargetKw,
    Target,
    SymlinkClose,
    DirEntry,
    EntryOpen,
    NameKw,
    Name,
    NodeKw,
    EntryClose,
    Done,
}

impl Expect {
    /// Tokens whose value the grammar needs (the rest are passed through unread).
    fn is_keyword(self) -> bool {
        !matches!(self, Expect::Contents | Expect::Target | Expect::Name)
    }
}

#[derive(Debug)]
enum Unit {
    /// Reading a token's length word.
    Len { word: [u8; 8], filled: usize },
    /// Reading a token's bytes.
    Body { remaining: u64, len: u64 },
    /// Reading the zero padding after it.
    Pad { remaining: usize },
}

/// An `AsyncRead` over exactly one NAR read from `inner` (see the module docs).
pub struct NarReader<R> {
    inner: R,
    expect: Expect,
    unit: Unit,
    depth: usize,
    keyword: [u8; MAX_KEYWORD],
    keyword_len: usize,
    total: u64,
}

fn bad(reason: impl Into<String>) -> std::io::Error {
    Error::invalid("NAR", reason).into()
}

impl<R> NarReader<R> {
    pub fn new(inner: R) -> Self {
        NarReader {
            inner,
            expect: Expect::Magic,
            unit: Unit::Len {
                word: [0; 8],
                filled: 0,
            },
            depth: 0,
            keyword: [0; MAX_KEYWORD],
            keyword_len: 0,
            total: 0,
        }
    }

    /// True once the NAR's last byte has been read.
    pub fn is_done(&self) -> bool {
        self.expect == Expect::Done
    }

    /// Bytes of NAR read so far.
    pub fn bytes_read(&self) -> u64 {
        self.total
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// A token is complete: move the grammar on.
    fn token_done(&mut self) -> std::io::Result<()> {
        use Expect as E;
        let kw = self.keyword.get(..self.keyword_len).unwrap_or_default();
        let want = |s: &str| -> std::io::Result<()> {
            if kw == s.as_bytes() {
                Ok(())
            } else {
                Err(bad(format!(
                    "expected '{s}', got '{}'",
                    String::from_utf8_lossy(kw)
                )))
            }
        };
        self.expect = match self.expect {
            E::Magic => want("nix-archive-1").map(|_| E::NodeOpen)?,
            E::NodeOpen => want("(").map(|_| E::TypeKw)?,
            E::TypeKw => want("type").map(|_| E::TypeVal)?,
            E::TypeVal => match kw {
                b"regular" => E::RegularAttr,
                b"symlink" => E::TargetKw,
                b"directory" => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(bad(format!("directories nested deeper than {MAX_DEPTH}")));
                    }
                    E::DirEntry
                }
                other => {
                    return Err(bad(format!(
                        "unknown node type '{}'",
                        String::from_utf8_lossy(other)
                    )));
                }
            },
            E::RegularAttr => match kw {
                b"executable" => E::ExecutableEmpty,
                b"contents" => E::Contents,
                b")" => self.after_node(),
                other => {
                    return Err(bad(format!(
                        "unexpected '{}' in a regular file",
                        String::from_utf8_lossy(other)
                    )));
                }
            },
            E::ExecutableEmpty => want("").map(|_| E::RegularAttr)?,
            E::Contents => E::RegularAttr,
            E::TargetKw => want("target").map(|_| E::Target)?,
            E::Target => E::SymlinkClose,
            E::SymlinkClose => want(")").map(|_| self.after_node())?,
            E::DirEntry => match kw {
                b"entry" => E::EntryOpen,
                b")" => {
                    self.depth -= 1;
                    self.after_node()
                }
                other => {
                    return Err(bad(format!(
                        "unexpected '{}' in a directory",
                        String::from_utf8_lossy(other)
                    )));
                }
            },
            E::EntryOpen => want("(").map(|_| E::NameKw)?,
            E::NameKw => want("name").map(|_| E::Name)?,
            E::Name => E::NodeKw,
            E::NodeKw => want("node").map(|_| E::NodeOpen)?,
            E::EntryClose => want(")").map(|_| E::DirEntry)?,
            E::Done => E::Done,
        };
        self.keyword_len = 0;
        Ok(())
    }

    /// Where the grammar goes after a node's closing ")".
    fn after_node(&self) -> Expect {
        if self.depth == 0 {
            Expect::Done
        } else {
            Expect::EntryClose
        }
    }
}

impl<R: AsyncRead + Unpin> NarReader<R> {
    /// Reads and discards the rest of the NAR.
    pub async fn drain(&mut self) -> std::io::Result<u64> {
        tokio::io::copy(self, &mut tokio::io::sink()).await
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for NarReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.expect == Expect::Done || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let want = match &this.unit {
            Unit::Len { filled, .. } => 8 - *filled,
            Unit::Body { remaining, .. } => (*remaining).min(buf.remaining() as u64) as usize,
            Unit::Pad { remaining } => *remaining,
        }
        .min(buf.remaining());
        let dst = buf.initialize_unfilled_to(want);
        let mut part = ReadBuf::new(dst);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
        let got = part.filled();
        let n = got.len();
        if n == 0 {
            return Poll::Ready(Err(Error::Eof.into()));
        }
        match &mut this.unit {
            Unit::Len { word, filled } => {
                if let Some(slot) = word.get_mut(*filled..*filled + n) {
                    slot.copy_from_slice(got);
                }
                *filled += n;
                if *filled == 8 {
                    let len = u64::from_le_bytes(*word);
                    if this.expect.is_keyword() && len > MAX_KEYWORD as u64 {
                        return Poll::Ready(Err(Error::StringTooLong {
                            field: "NAR keyword",
                            len,
                            max: MAX_KEYWORD as u64,
                        }
                        .into()));
                    }
                    if matches!(this.expect, Expect::Name | Expect::Target) && len > MAX_VALUE {
                        return Poll::Ready(Err(Error::StringTooLong {
                            field: "NAR name or target",
                            len,
                            max: MAX_VALUE,
                        }
                        .into()));
                    }
                    this.unit = Unit::Body {
                        remaining: len,
                        len,
                    };
                }
            }
            Unit::Body { remaining, .. } => {
                if this.expect.is_keyword() {
                    let at = this.keyword_len;
                    if let Some(slot) = this.keyword.get_mut(at..at + n) {
                        slot.copy_from_slice(got);
                    }
                    this.keyword_len += n;
                }
                *remaining -= n as u64;
            }
            Unit::Pad { remaining } => {
                if got.iter().any(|&b| b != 0) {
                    return Poll::Ready(Err(Error::NonZeroPadding { field: "NAR" }.into()));
                }
                *remaining -= n;
            }
        }
        // Complete units move on (a zero-length body completes at once).
        loop {
            match this.unit {
                Unit::Body { remaining: 0, len } => {
                    let pad = padding_len(len);
                    if pad > 0 {
                        this.unit = Unit::Pad { remaining: pad };
                    } else {
                        this.unit = Unit::Len {
                            word: [0; 8],
                            filled: 0,
                        };
                        this.token_done()?;
                    }
                }
                Unit::Pad { remaining: 0 } => {
                    this.unit = Unit::Len {
                        word: [0; 8],
                        filled: 0,
                    };
                    this.token_done()?;
                }
                _ => break,
            }
        }
        buf.advance(n);
        this.total += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Copies one NAR from `r` to `w` byte for byte and returns its size. Stops exactly
/// at the NAR's last byte.
pub async fn copy_nar<R, W>(r: &mut R, w: &mut W) -> crate::error::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut nar = NarReader::new(r);
    let n = tokio::io::copy(&mut nar, w).await?;
    if !nar.is_done() {
        return Err(Error::Eof);
    }
    w.flush().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::block_on;
    use tokio::io::AsyncReadExt;

    fn s(b: &[u8]) -> Vec<u8> {
        let mut out = (b.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
        out
    }

    fn nar(tokens: &[&[u8]]) -> Vec<u8> {
        tokens.iter().flat_map(|t| s(t)).collect()
    }

    #[rustfmt::skip]
    fn tree() -> Vec<u8> {
        nar(&[
            b"nix-archive-1", b"(", b"type", b"directory",
            b"entry", b"(", b"name", b"bin", b"node",
              b"(", b"type", b"directory",
              b"entry", b"(", b"name", b"sh", b"node",
                b"(", b"type", b"regular", b"executable", b"", b"contents", b"#!x", b")",
              b")",
              b")",
            b")",
            b"entry", b"(", b"name", b"link", b"node",
              b"(", b"type", b"symlink", b"target", b"bin/sh", b")",
            b")",
            b")",
        ])
    }

    fn nars() -> Vec<Vec<u8>> {
        vec![
            tree(),
            nar(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"hello world\n",
                b")",
            ]),
            nar(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"",
                b")",
            ]),
            nar(&[b"nix-archive-1", b"(", b"type", b"directory", b")"]),
        ]
    }

    #[test]
    fn finds_the_end_of_nars() {
        for nar in nars() {
            let mut stream = nar.clone();
            stream.extend_from_slice(b"TRAILER!");
            let (n, out, rest) = block_on(async {
                let mut r: &[u8] = &stream;
                let mut out = Vec::new();
                let n = copy_nar(&mut r, &mut out).await.unwrap();
                (n, out, r.to_vec())
            });
            assert_eq!(n as usize, nar.len());
            assert_eq!(out, nar);
            assert_eq!(rest, b"TRAILER!");
        }
    }

    /// One byte at a time: every unit boundary falls inside a read.
    #[test]
    fn tiny_reads() {
        for nar in nars() {
            let mut stream = nar.clone();
            stream.extend_from_slice(b"TRAILER!");
            let out = block_on(async {
                let mut r: &[u8] = &stream;
                let mut reader = NarReader::new(&mut r);
                let mut out = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    let n = reader.read(&mut byte).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    out.push(byte[0]);
                }
                assert!(reader.is_done());
                assert_eq!(r, b"TRAILER!");
                out
            });
            assert_eq!(out, nar);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let t = tree();
        for cut in 0..t.len() {
            let r = block_on(async {
                let mut r: &[u8] = &t[..cut];
                copy_nar(&mut r, &mut tokio::io::sink()).await
            });
            assert!(r.is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn grammar_errors() {
        for bad in [
            nar(&[b"nix-archive-2"]),
            nar(&[b"nix-archive-1", b"(", b"type", b"fifo"]),
            nar(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"x",
                b"name",
            ]),
            nar(&[b"nix-archive-1", b"(", b"type", b"directory", b"file"]),
            nar(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"executable",
                b"x",
            ]),
        ] {
            let r = block_on(async {
                let mut r: &[u8] = &bad;
                copy_nar(&mut r, &mut tokio::io::sink()).await
            });
            assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
        }
        let mut padded = nar(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
        padded.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b'x', 0, 0, 1, 0, 0, 0, 0]);
        let r = block_on(async {
            let mut r: &[u8] = &padded;
            copy_nar(&mut r, &mut tokio::io::sink()).await
        });
        assert!(r.is_err());
    }

    #[test]
    fn depth_is_bounded() {
        let mut tokens: Vec<&[u8]> = vec![b"nix-archive-1"];
        for _ in 0..=MAX_DEPTH {
            tokens.extend_from_slice(&[
                b"(",
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
                b"d",
                b"node",
            ]);
        }
        let bytes = nar(&tokens);
        let r = block_on(async {
            let mut r: &[u8] = &bytes;
            copy_nar(&mut r, &mut tokio::io::sink()).await
        });
        let e = r.unwrap_err();
        assert!(e.to_string().contains("nested deeper"), "{e}");
    }

    #[test]
    fn huge_tokens_allocate_nothing() {
        let mut bytes = s(b"nix-archive-1");
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let r = block_on(async {
            let mut r: &[u8] = &bytes;
            copy_nar(&mut r, &mut tokio::io::sink()).await
        });
        assert!(r.unwrap_err().to_string().contains("longer than the limit"));
        // A huge file is streamed, not held: it just runs out of input here.
        let mut bytes = nar(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        bytes.extend_from_slice(&[7; 100]);
        let r = block_on(async {
            let mut r: &[u8] = &bytes;
            copy_nar(&mut r, &mut tokio::io::sink()).await
        });
        assert!(matches!(r, Err(Error::Eof)), "{r:?}");
    }
}
