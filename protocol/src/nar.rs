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
//! format), so a reader must follow the grammar to know where it ends. This module does
//! only that — it copies the exact bytes to a sink, streaming file contents, with the
//! depth and token sizes bounded — and leaves validation (entry order, names) to the
//! store's NAR reader.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::wire::reader::padding_len;

/// Deepest directory nesting accepted (as in Nix ≥ 2.24).
pub const MAX_DEPTH: usize = 64;
/// Longest token other than file contents (names ≤ 255, symlink targets ≤ 4095).
const MAX_TOKEN: u64 = 4096;

const ZEROS: [u8; 8] = [0; 8];

struct Copier<'a, R, W> {
    r: &'a mut R,
    w: &'a mut W,
    total: u64,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Copier<'_, R, W> {
    async fn word(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b).await?;
        self.w.write_all(&b).await?;
        self.total += 8;
        Ok(u64::from_le_bytes(b))
    }

    async fn padding(&mut self, len: u64) -> Result<()> {
        let pad = padding_len(len);
        let mut b = [0u8; 8];
        let slot = b.get_mut(..pad).unwrap_or_default();
        self.r.read_exact(slot).await?;
        if slot.iter().any(|&x| x != 0) {
            return Err(Error::NonZeroPadding { field: "NAR" });
        }
        self.w
            .write_all(ZEROS.get(..pad).unwrap_or_default())
            .await?;
        self.total += pad as u64;
        Ok(())
    }

    async fn token(&mut self) -> Result<Vec<u8>> {
        let len = self.word().await?;
        if len > MAX_TOKEN {
            return Err(Error::StringTooLong {
                field: "NAR token",
                len,
                max: MAX_TOKEN,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.r.read_exact(&mut buf).await?;
        self.w.write_all(&buf).await?;
        self.total += len;
        self.padding(len).await?;
        Ok(buf)
    }

    async fn expect(&mut self, want: &str) -> Result<()> {
        let got = self.token().await?;
        if got != want.as_bytes() {
            return Err(Error::invalid(
                "NAR",
                format!(
                    "expected '{want}', got '{}'",
                    String::from_utf8_lossy(&got)
                        .chars()
                        .take(64)
                        .collect::<String>()
                ),
            ));
        }
        Ok(())
    }

    async fn contents(&mut self) -> Result<()> {
        let len = self.word().await?;
        let copied = tokio::io::copy(&mut (&mut *self.r).take(len), self.w).await?;
        if copied != len {
            return Err(Error::Eof);
        }
        self.total += len;
        self.padding(len).await
    }
}

/// Copies one NAR from `r` to `w` byte for byte and returns its size. Stops exactly
/// at the NAR's last byte.
pub async fn copy_nar<R, W>(r: &mut R, w: &mut W) -> Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut c = Copier { r, w, total: 0 };
    c.expect("nix-archive-1").await?;
    let mut depth = 0usize;
    loop {
        // At the start of a node.
        c.expect("(").await?;
        c.expect("type").await?;
        let ty = c.token().await?;
        match ty.as_slice() {
            b"regular" => loop {
                match c.token().await?.as_slice() {
                    b"executable" => c.expect("").await?,
                    b"contents" => c.contents().await?,
                    b")" => break,
                    other => return Err(unexpected("regular file", other)),
                }
            },
            b"symlink" => {
                c.expect("target").await?;
                c.token().await?;
                c.expect(")").await?;
            }
            b"directory" => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Error::invalid(
                        "NAR",
                        format!("directories nested deeper than {MAX_DEPTH}"),
                    ));
                }
            }
            other => return Err(unexpected("node type", other)),
        }
        let leaf = ty.as_slice() != b"directory";
        if leaf {
            if depth == 0 {
                break;
            }
            c.expect(")").await?; // closes the "entry ("
        }
        // Inside a directory: the next entry, or the directory's end.
        loop {
            match c.token().await?.as_slice() {
                b"entry" => {
                    c.expect("(").await?;
                    c.expect("name").await?;
                    c.token().await?;
                    c.expect("node").await?;
                    break;
                }
                b")" => {
                    depth -= 1;
                    if depth == 0 {
                        c.w.flush().await?;
                        return Ok(c.total);
                    }
                    c.expect(")").await?; // closes the parent's "entry ("
                }
                other => return Err(unexpected("directory", other)),
            }
        }
    }
    c.w.flush().await?;
    Ok(c.total)
}

fn unexpected(ctx: &str, tok: &[u8]) -> Error {
    Error::invalid(
        "NAR",
        format!(
            "unexpected '{}' in {ctx}",
            String::from_utf8_lossy(tok)
                .chars()
                .take(64)
                .collect::<String>()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::block_on;

    fn s(b: &[u8]) -> Vec<u8> {
        let mut out = (b.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
        out
    }

    fn nar(tokens: &[&[u8]]) -> Vec<u8> {
        tokens.iter().flat_map(|t| s(t)).collect()
    }

    fn tree() -> Vec<u8> {
        nar(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"bin",
            b"node",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"sh",
            b"node",
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"",
            b"contents",
            b"#!x",
            b")",
            b")",
            b")",
            b")",
            b"entry",
            b"(",
            b"name",
            b"link",
            b"node",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"bin/sh",
            b")",
            b")",
            b")",
        ])
    }

    #[test]
    fn finds_the_end_of_nars() {
        for nar in [
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
            nar(&[b"nix-archive-1", b"(", b"type", b"directory", b")"]),
        ] {
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
        assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
    }

    #[test]
    fn huge_token_allocates_nothing() {
        let mut bytes = s(b"nix-archive-1");
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let r = block_on(async {
            let mut r: &[u8] = &bytes;
            copy_nar(&mut r, &mut tokio::io::sink()).await
        });
        assert!(matches!(r, Err(Error::StringTooLong { .. })));
    }
}
