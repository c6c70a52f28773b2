//! The reading half of the codec: u64 little-endian words and padded byte strings.
//!
//! ```text
//! u64     = 8 bytes, little-endian
//! bytes   = u64 n, n raw bytes, (8 - n % 8) % 8 zero bytes
//! ```
//!
//! Every read of a length-prefixed value takes a caller-given maximum and checks it
//! *before* allocating; the buffer then grows only as bytes actually arrive, so a length
//! word of 2^60 costs nothing. Padding must be zero: a non-zero pad byte means the
//! stream is out of sync and the connection is done for.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::error::{Error, Result};
use crate::version::{FeatureSet, ProtocolVersion};
use crate::wire::{StoreDir, limits};

/// Initial allocation for a string whose length word is large: the rest is
/// allocated as the peer actually sends bytes.
const INITIAL_STRING_ALLOC: u64 = 64 * 1024;

/// Reads wire primitives from an async byte source, knowing the negotiated version,
/// features and store dir. Wrap sockets in a `tokio::io::BufReader` first: every
/// primitive is a small `read_exact`.
pub struct WireReader<R> {
    inner: R,
    version: ProtocolVersion,
    features: FeatureSet,
    store_dir: StoreDir,
    /// String bytes the current message may still carry (see [`WireReader::set_budget`]).
    budget: u64,
    budget_max: u64,
}

impl<R> WireReader<R> {
    pub fn new(inner: R, version: ProtocolVersion, store_dir: StoreDir) -> Self {
        WireReader {
            inner,
            version,
            features: FeatureSet::new(),
            store_dir,
            budget: u64::MAX,
            budget_max: u64::MAX,
        }
    }

    /// Limits the total string bytes read until [`WireReader::clear_budget`]: one
    /// message may not keep more than `bytes` in memory, however its fields add up.
    pub fn set_budget(&mut self, bytes: u64) {
        self.budget = bytes;
        self.budget_max = bytes;
    }

    pub fn clear_budget(&mut self) {
        self.set_budget(u64::MAX);
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    pub fn features(&self) -> &FeatureSet {
        &self.features
    }

    pub fn set_features(&mut self, features: FeatureSet) {
        self.features = features;
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin + Send> WireReader<R> {
    pub async fn read_u64(&mut self) -> Result<u64> {
        let mut word = [0u8; 8];
        self.inner.read_exact(&mut word).await?;
        Ok(u64::from_le_bytes(word))
    }

    /// A u64 that must be 0 or 1.
    pub async fn read_bool(&mut self, field: &'static str) -> Result<bool> {
        match self.read_u64().await? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(Error::BadBool { field, value }),
        }
    }

    /// A two's-complement i64 (times, durations).
    pub async fn read_i64(&mut self) -> Result<i64> {
        Ok(self.read_u64().await? as i64)
    }

    /// A list/set/map count, checked against `max` before anything is allocated.
    pub async fn read_count(&mut self, max: u64, field: &'static str) -> Result<usize> {
        let count = self.read_u64().await?;
        if count > max {
            return Err(Error::TooManyItems { field, count, max });
        }
        usize::try_from(count).map_err(|_| Error::TooManyItems { field, count, max })
    }

    /// A padded byte string of at most `max` bytes.
    pub async fn read_bytes(&mut self, max: u64, field: &'static str) -> Result<Vec<u8>> {
        let len = self.read_u64().await?;
        if len > max {
            return Err(Error::StringTooLong { field, len, max });
        }
        if len > self.budget {
            return Err(Error::MessageTooLarge {
                max: self.budget_max,
            });
        }
        self.budget -= len;
        let mut buf = Vec::with_capacity(len.min(INITIAL_STRING_ALLOC) as usize);
        (&mut self.inner).take(len).read_to_end(&mut buf).await?;
        if buf.len() as u64 != len {
            return Err(Error::Eof);
        }
        self.read_padding(len, field).await?;
        Ok(buf)
    }

    /// A padded string that must be UTF-8.
    pub async fn read_string(&mut self, max: u64, field: &'static str) -> Result<String> {
        let bytes = self.read_bytes(max, field).await?;
        String::from_utf8(bytes).map_err(|_| Error::NotUtf8 { field })
    }

    /// A string with the general limit.
    pub async fn read_text(&mut self, field: &'static str) -> Result<String> {
        self.read_string(limits::STRING, field).await
    }

    /// Skips a padded string of at most `max` bytes without keeping it.
    pub async fn skip_bytes(&mut self, max: u64, field: &'static str) -> Result<u64> {
        let len = self.read_u64().await?;
        if len > max {
            return Err(Error::StringTooLong { field, len, max });
        }
        let copied =
            tokio::io::copy(&mut (&mut self.inner).take(len), &mut tokio::io::sink()).await?;
        if copied != len {
            return Err(Error::Eof);
        }
        self.read_padding(len, field).await?;
        Ok(len)
    }

    async fn read_padding(&mut self, len: u64, field: &'static str) -> Result<()> {
        let pad = padding_len(len);
        if pad == 0 {
            return Ok(());
        }
        let mut word = [0u8; 8];
        let pad_bytes = word.get_mut(..pad).ok_or(Error::NonZeroPadding { field })?;
        self.inner.read_exact(pad_bytes).await?;
        if pad_bytes.iter().any(|&b| b != 0) {
            return Err(Error::NonZeroPadding { field });
        }
        Ok(())
    }

    /// Reads an exact number of raw (unpadded) bytes into `buf`.
    pub async fn read_raw(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).await?;
        Ok(())
    }
}

/// Number of zero bytes after a string of `len` bytes.
pub(crate) fn padding_len(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Lets adapters (framed streams, NAR parsers) read the raw stream after the fixed
/// fields of a request.
impl<R: AsyncRead + Unpin> AsyncRead for WireReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}
