//! The streamed part of a request, as one `AsyncRead` the daemon hands to the store.
//!
//! | transport | ops | end of data |
//! |---|---|---|
//! | framed | AddToStore ≥1.25, AddToStoreNar ≥1.23, AddMultipleToStore, AddBuildLog, AddToStoreScanning | the `u64 0` frame |
//! | inline NAR | AddToStore < 1.25 (AddToStoreNar < 1.21) | the NAR's last byte |
//! | `STDERR_READ` pulls | ImportPaths, AddToStoreNar 1.21–1.22 | whatever the consumer stops asking for |
//!
//! The daemon reads the request's fixed fields, starts the work phase, builds a
//! [`Payload`] and lets the store consume it. Whatever happens, it then calls
//! [`Payload::drain`], which skips what the store did not read so that the next request
//! starts at the right byte. (Pulled data needs no draining: the client sends only what
//! it is asked for.) Flush any buffered stderr messages before reading a pulled payload:
//! its `STDERR_READ` requests go straight to the socket.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::Result;
use crate::framed::{FramedReader, StderrReadSource};
use crate::nar::NarReader;
use crate::request::{PayloadKind, Request};
use crate::wire::WireReader;

/// What each `STDERR_READ` asks for (Nix 2.8 asks for 32 KiB).
pub const PULL_CHUNK: u64 = 32 * 1024;

pub enum Payload<'a, R, W> {
    None,
    Framed(FramedReader<&'a mut WireReader<R>>),
    InlineNar(NarReader<&'a mut WireReader<R>>),
    Pulled(StderrReadSource<'a, WireReader<R>, W>),
}

impl<'a, R, W> Payload<'a, R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    /// The payload of `req` at the reader's negotiated version.
    pub fn new(req: &Request, r: &'a mut WireReader<R>, w: &'a mut W) -> Self {
        match req.payload(r.version()) {
            PayloadKind::None => Payload::None,
            PayloadKind::Framed => Payload::Framed(FramedReader::new(r)),
            PayloadKind::InlineNar => Payload::InlineNar(NarReader::new(r)),
            PayloadKind::StderrRead => Payload::Pulled(StderrReadSource::new(r, w, PULL_CHUNK)),
        }
    }

    /// Skips the rest of the payload; returns how many bytes were skipped.
    pub async fn drain(&mut self) -> Result<u64> {
        Ok(match self {
            Payload::None | Payload::Pulled(_) => 0,
            Payload::Framed(f) => f.drain().await?,
            Payload::InlineNar(n) => n.drain().await?,
        })
    }
}

impl<R, W> AsyncRead for Payload<'_, R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Payload::None => Poll::Ready(Ok(())),
            Payload::Framed(f) => Pin::new(f).poll_read(cx, buf),
            Payload::InlineNar(n) => Pin::new(n).poll_read(cx, buf),
            Payload::Pulled(p) => Pin::new(p).poll_read(cx, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framed::encode_framed;
    use crate::request::AddToStoreRequest;
    use crate::version::ProtocolVersion;
    use crate::wire::testing::block_on;
    use crate::wire::{StoreDir, WireWriter};
    use nixnest_core::{ContentAddressMethod, HashAlgo};
    use tokio::io::AsyncReadExt;

    fn nar() -> Vec<u8> {
        let mut w = WireWriter::new(ProtocolVersion::LATEST, StoreDir::default());
        for t in [
            "nix-archive-1",
            "(",
            "type",
            "regular",
            "contents",
            "abc",
            ")",
        ] {
            w.write_str(t);
        }
        w.take().to_vec()
    }

    /// Two requests back to back; the consumer of the first stops after 3 bytes and
    /// the drain puts the stream at the second request.
    fn check(version: ProtocolVersion, first: Request, payload: &[u8]) {
        let mut w = WireWriter::new(version, StoreDir::default());
        first.encode(&mut w);
        w.write_raw(payload);
        Request::IsValidPath(
            StoreDir::default()
                .parse_path("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo")
                .unwrap(),
        )
        .encode(&mut w);
        let bytes = w.take();
        block_on(async {
            let mut r = WireReader::new(&bytes[..], version, StoreDir::default());
            let mut sink = Vec::new();
            let req = Request::decode(&mut r).await.unwrap();
            let mut p = Payload::new(&req, &mut r, &mut sink);
            let mut three = [0u8; 3];
            p.read_exact(&mut three).await.unwrap();
            assert!(p.drain().await.unwrap() > 0);
            let next = Request::decode(&mut r).await.unwrap();
            assert!(matches!(next, Request::IsValidPath(_)));
            assert!(r.get_ref().is_empty());
        });
    }

    #[test]
    fn framed_payload_drains() {
        let v = ProtocolVersion::LATEST;
        let mut w = WireWriter::new(v, StoreDir::default());
        encode_framed(&mut w, &[5u8; 1000], 100);
        let req = Request::AddToStore(AddToStoreRequest::ContentAddressed {
            name: "x".into(),
            method: ContentAddressMethod::Flat,
            algo: HashAlgo::Sha256,
            references: Default::default(),
            repair: false,
        });
        check(v, req, &w.take());
    }

    #[test]
    fn inline_nar_payload_drains() {
        let req = Request::AddToStore(AddToStoreRequest::Legacy {
            name: "x".into(),
            fixed: true,
            recursive: true,
            hash_algo: "sha256".into(),
        });
        check(ProtocolVersion::new(1, 21), req, &nar());
    }
}
