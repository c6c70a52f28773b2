//! Streams inside operations.
//!
//! Framed stream (AddToStore ≥ 1.25, AddToStoreNar ≥ 1.23, AddMultipleToStore,
//! AddBuildLog, AddToStoreScanning):
//!
//! ```text
//! frames = { u64 len (> 0), len raw bytes }   -- no padding after the bytes
//!          u64 0                              -- terminator
//! ```
//!
//! `STDERR_READ` tunnelling (ImportPaths, AddToStoreNar 1.21–1.22): the daemon writes
//! `STDERR_READ, u64 n`, flushes, and the client answers with one padded string of at
//! most `n` bytes; an empty answer is end of data.
//!
//! Both readers are `AsyncRead`s so a NAR parser or a store import can consume them
//! without knowing the transport; the framed reader can be drained to its terminator
//! so the connection stays in sync when the consumer fails half-way.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::Error;
use crate::stderr::STDERR_READ;
use crate::wire::WireWriter;
use crate::wire::reader::padding_len;

/// Frame size used by our writers (Nix's client uses 32 KiB-ish chunks too).
pub const FRAME_SIZE: usize = 32 * 1024;

fn eof() -> std::io::Error {
    Error::Eof.into()
}

#[derive(Debug)]
enum FrameState {
    Header { word: [u8; 8], filled: usize },
    Data { remaining: u64 },
    Done,
}

/// Reads the payload of a framed stream as a plain byte stream; EOF at the terminator.
#[derive(Debug)]
pub struct FramedReader<R> {
    inner: R,
    state: FrameState,
    total: u64,
}

impl<R> FramedReader<R> {
    pub fn new(inner: R) -> Self {
        FramedReader {
            inner,
            state: FrameState::Header {
                word: [0; 8],
                filled: 0,
            },
            total: 0,
        }
    }

    /// True once the terminator has been read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, FrameState::Done)
    }

    /// Payload bytes delivered so far.
    pub fn bytes_read(&self) -> u64 {
        self.total
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    /// Skips whatever is left up to and including the terminator. Call it after the
    /// consumer stopped early (error or not) so the next request starts in sync.
    pub async fn drain(&mut self) -> std::io::Result<u64> {
        let mut skipped = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(skipped);
            }
            skipped += n as u64;
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FramedReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                FrameState::Done => return Poll::Ready(Ok(())),
                FrameState::Header { word, filled } => {
                    let mut part = ReadBuf::new(word.get_mut(*filled..).unwrap_or_default());
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(eof()));
                    }
                    *filled += n;
                    if *filled == 8 {
                        let len = u64::from_le_bytes(*word);
                        this.state = if len == 0 {
                            FrameState::Done
                        } else {
                            FrameState::Data { remaining: len }
                        };
                    }
                }
                FrameState::Data { remaining } => {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let want = (*remaining).min(buf.remaining() as u64) as usize;
                    let dst = buf.initialize_unfilled_to(want);
                    let mut part = ReadBuf::new(dst);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(eof()));
                    }
                    buf.advance(n);
                    this.total += n as u64;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        this.state = FrameState::Header {
                            word: [0; 8],
                            filled: 0,
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Writes everything written to it as frames of at most [`FRAME_SIZE`] bytes;
/// [`FramedWriter::finish`] writes the terminator. Dropping it without `finish` leaves
/// the stream unterminated (the peer will wait for more).
#[derive(Debug)]
pub struct FramedWriter<W> {
    inner: W,
    /// Payload collected for the next frame.
    frame: Vec<u8>,
    /// Encoded bytes (header + payload) not yet accepted by `inner`.
    out: Vec<u8>,
    out_pos: usize,
    finished: bool,
}

impl<W: AsyncWrite + Unpin> FramedWriter<W> {
    pub fn new(inner: W) -> Self {
        FramedWriter {
            inner,
            frame: Vec::with_capacity(FRAME_SIZE),
            out: Vec::new(),
            out_pos: 0,
            finished: false,
        }
    }

    fn seal_frame(&mut self) {
        if self.frame.is_empty() {
            return;
        }
        self.out.clear();
        self.out_pos = 0;
        self.out
            .extend_from_slice(&(self.frame.len() as u64).to_le_bytes());
        self.out.append(&mut self.frame);
    }

    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.out_pos < self.out.len() {
            let rest = self.out.get(self.out_pos..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes the last partial frame and the terminator, flushes, returns the inner writer.
    pub async fn finish(mut self) -> std::io::Result<W> {
        std::future::poll_fn(|cx| Pin::new(&mut self).poll_flush(cx)).await?;
        if !self.finished {
            self.inner.write_all(&0u64.to_le_bytes()).await?;
            self.inner.flush().await?;
            self.finished = true;
        }
        Ok(self.inner)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for FramedWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        if this.frame.len() >= FRAME_SIZE {
            this.seal_frame();
            ready!(this.poll_out(cx))?;
        }
        let n = (FRAME_SIZE - this.frame.len()).min(data.len());
        this.frame
            .extend_from_slice(data.get(..n).unwrap_or_default());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        this.seal_frame();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// Flushes the data but does not write the terminator or shut `inner` down; use
    /// [`FramedWriter::finish`].
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Encodes `data` as a complete framed stream (frames of at most `frame_size` bytes,
/// then the terminator) into a wire buffer.
pub fn encode_framed(w: &mut WireWriter, data: &[u8], frame_size: usize) {
    for chunk in data.chunks(frame_size.max(1)) {
        w.write_u64(chunk.len() as u64);
        w.write_raw(chunk);
    }
    w.write_u64(0);
}

/// Copies `src` to `dst` as a framed stream, terminator included; returns the payload size.
pub async fn copy_framed<S, W>(src: &mut S, dst: &mut W) -> std::io::Result<u64>
where
    S: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut framed = FramedWriter::new(dst);
    let n = tokio::io::copy(src, &mut framed).await?;
    framed.finish().await?;
    Ok(n)
}

#[derive(Debug)]
enum PullState {
    Idle,
    Sending {
        request: [u8; 16],
        sent: usize,
    },
    Flushing,
    Header {
        word: [u8; 8],
        filled: usize,
    },
    Data {
        remaining: u64,
        pad: usize,
    },
    Padding {
        word: [u8; 8],
        need: usize,
        filled: usize,
    },
    Eof,
}

/// The daemon side of `STDERR_READ` tunnelling: an `AsyncRead` that, whenever it needs
/// bytes, asks the client for up to `chunk` bytes and hands the reply on. An empty reply
/// is end of data.
pub struct StderrReadSource<'a, R, W> {
    reader: &'a mut R,
    writer: &'a mut W,
    chunk: u64,
    state: PullState,
}

impl<'a, R, W> StderrReadSource<'a, R, W> {
    /// `chunk` is the `n` of each `STDERR_READ n` (Nix 2.8 asks for 32768; the client
    /// allocates that much per request, so keep it modest).
    pub fn new(reader: &'a mut R, writer: &'a mut W, chunk: u64) -> Self {
        StderrReadSource {
            reader,
            writer,
            chunk: chunk.max(1),
            state: PullState::Idle,
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> AsyncRead for StderrReadSource<'_, R, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                PullState::Eof => return Poll::Ready(Ok(())),
                PullState::Idle => {
                    let mut request = [0u8; 16];
                    request[..8].copy_from_slice(&STDERR_READ.to_le_bytes());
                    request[8..].copy_from_slice(&this.chunk.to_le_bytes());
                    this.state = PullState::Sending { request, sent: 0 };
                }
                PullState::Sending { request, sent } => {
                    while *sent < request.len() {
                        let rest = request.get(*sent..).unwrap_or_default();
                        let n = ready!(Pin::new(&mut *this.writer).poll_write(cx, rest))?;
                        if n == 0 {
                            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                        }
                        *sent += n;
                    }
                    this.state = PullState::Flushing;
                }
                PullState::Flushing => {
                    ready!(Pin::new(&mut *this.writer).poll_flush(cx))?;
                    this.state = PullState::Header {
                        word: [0; 8],
                        filled: 0,
                    };
                }
                PullState::Header { word, filled } => {
                    let mut part = ReadBuf::new(word.get_mut(*filled..).unwrap_or_default());
                    ready!(Pin::new(&mut *this.reader).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(eof()));
                    }
                    *filled += n;
                    if *filled == 8 {
                        let len = u64::from_le_bytes(*word);
                        if len > this.chunk {
                            return Poll::Ready(Err(Error::StringTooLong {
                                field: "STDERR_READ reply",
                                len,
                                max: this.chunk,
                            }
                            .into()));
                        }
                        this.state = if len == 0 {
                            PullState::Eof
                        } else {
                            PullState::Data {
                                remaining: len,
                                pad: padding_len(len),
                            }
                        };
                    }
                }
                PullState::Data { remaining, pad } => {
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let want = (*remaining).min(buf.remaining() as u64) as usize;
                    let dst = buf.initialize_unfilled_to(want);
                    let mut part = ReadBuf::new(dst);
                    ready!(Pin::new(&mut *this.reader).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(eof()));
                    }
                    buf.advance(n);
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        this.state = if *pad == 0 {
                            PullState::Idle
                        } else {
                            PullState::Padding {
                                word: [0; 8],
                                need: *pad,
                                filled: 0,
                            }
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                PullState::Padding { word, need, filled } => {
                    let slot = word.get_mut(*filled..*need).unwrap_or_default();
                    let mut part = ReadBuf::new(slot);
                    ready!(Pin::new(&mut *this.reader).poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(eof()));
                    }
                    *filled += n;
                    if *filled == *need {
                        if word.iter().any(|&b| b != 0) {
                            return Poll::Ready(Err(Error::NonZeroPadding {
                                field: "STDERR_READ reply",
                            }
                            .into()));
                        }
                        this.state = PullState::Idle;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::hex;
    use crate::version::ProtocolVersion;
    use crate::wire::testing::{block_on, writer};

    #[test]
    fn framed_reader_joins_frames() {
        let mut w = writer(ProtocolVersion::LATEST);
        w.write_u64(3);
        w.write_raw(b"abc");
        w.write_u64(1);
        w.write_raw(b"d");
        w.write_u64(0);
        w.write_raw(b"after");
        let bytes = w.take();
        block_on(async {
            let mut src: &[u8] = &bytes;
            let mut fr = FramedReader::new(&mut src);
            let mut out = Vec::new();
            fr.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, b"abcd");
            assert!(fr.is_done());
            assert_eq!(src, b"after");
        });
    }

    #[test]
    fn framed_reader_drain_after_partial_read() {
        let mut w = writer(ProtocolVersion::LATEST);
        encode_framed(&mut w, &[7u8; 100_000], 4096);
        w.write_raw(b"next");
        let bytes = w.take();
        block_on(async {
            let mut src: &[u8] = &bytes;
            let mut fr = FramedReader::new(&mut src);
            let mut first = [0u8; 10];
            fr.read_exact(&mut first).await.unwrap();
            assert_eq!(fr.drain().await.unwrap(), 100_000 - 10);
            assert_eq!(src, b"next");
        });
    }

    #[test]
    fn framed_reader_truncated_is_eof() {
        let bytes = hex("05 00 00 00 00 00 00 00 61 62");
        block_on(async {
            let mut src: &[u8] = &bytes;
            let mut fr = FramedReader::new(&mut src);
            let err = fr.drain().await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        });
    }

    #[test]
    fn huge_frame_length_allocates_nothing() {
        let bytes = (1u64 << 60).to_le_bytes();
        block_on(async {
            let mut src: &[u8] = &bytes;
            let mut fr = FramedReader::new(&mut src);
            assert!(fr.drain().await.is_err());
        });
    }

    #[test]
    fn framed_writer_round_trip() {
        let data: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
        block_on(async {
            let mut out = Vec::new();
            let mut src: &[u8] = &data;
            let n = copy_framed(&mut src, &mut out).await.unwrap();
            assert_eq!(n, data.len() as u64);
            assert_eq!(&out[out.len() - 8..], &[0; 8]);
            let mut rd: &[u8] = &out;
            let mut back = Vec::new();
            FramedReader::new(&mut rd)
                .read_to_end(&mut back)
                .await
                .unwrap();
            assert_eq!(back, data);
            assert!(rd.is_empty());
        });
        // empty payload: just the terminator
        block_on(async {
            let mut out = Vec::new();
            copy_framed(&mut &b""[..], &mut out).await.unwrap();
            assert_eq!(out, [0; 8]);
        });
    }

    #[test]
    fn stderr_read_source_pulls_until_empty_reply() {
        // Client replies: "hello" (5 bytes, padded), "!" , then "" (EOF).
        let replies = hex("05 00 00 00 00 00 00 00 68 65 6c 6c 6f 00 00 00
             01 00 00 00 00 00 00 00 21 00 00 00 00 00 00 00
             00 00 00 00 00 00 00 00");
        block_on(async {
            let mut rd: &[u8] = &replies;
            let mut sent = Vec::new();
            let mut src = StderrReadSource::new(&mut rd, &mut sent, 8);
            let mut got = Vec::new();
            src.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello!");
            let req = hex("61 74 61 64 00 00 00 00 08 00 00 00 00 00 00 00");
            assert_eq!(sent, [req.clone(), req.clone(), req].concat());
        });
    }

    #[test]
    fn stderr_read_source_rejects_oversized_reply() {
        let replies = hex("09 00 00 00 00 00 00 00");
        block_on(async {
            let mut rd: &[u8] = &replies;
            let mut sent = Vec::new();
            let mut src = StderrReadSource::new(&mut rd, &mut sent, 8);
            let mut got = Vec::new();
            let err = src.read_to_end(&mut got).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        });
    }
}
