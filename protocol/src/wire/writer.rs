//! The writing half of the codec. Encoding is synchronous into a `BytesMut`; the owner
//! decides when the buffer goes to the socket (`flush_into`), which is how the flush
//! discipline of the protocol is kept: after magic+version, after every stderr message,
//! after `STDERR_READ`, and at the end of an operation.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::version::{FeatureSet, ProtocolVersion};
use crate::wire::StoreDir;
use crate::wire::reader::padding_len;

const ZEROS: [u8; 8] = [0; 8];

/// Encodes wire primitives into a buffer, knowing the negotiated version, features and
/// store dir.
#[derive(Debug)]
pub struct WireWriter {
    buf: BytesMut,
    version: ProtocolVersion,
    features: FeatureSet,
    store_dir: StoreDir,
}

impl WireWriter {
    pub fn new(version: ProtocolVersion, store_dir: StoreDir) -> Self {
        WireWriter {
            buf: BytesMut::with_capacity(4096),
            version,
            features: FeatureSet::new(),
            store_dir,
        }
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

    pub fn write_u64(&mut self, v: u64) {
        self.buf.put_u64_le(v);
    }

    pub fn write_bool(&mut self, v: bool) {
        self.write_u64(u64::from(v));
    }

    pub fn write_i64(&mut self, v: i64) {
        self.write_u64(v as u64);
    }

    /// A padded byte string.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.buf.put_slice(bytes);
        let pad = padding_len(bytes.len() as u64);
        self.buf.put_slice(ZEROS.get(..pad).unwrap_or_default());
    }

    pub fn write_str(&mut self, s: &str) {
        self.write_bytes(s.as_bytes());
    }

    /// Raw bytes with no length and no padding (frame contents, NAR data).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
    }

    /// Bytes encoded so far and not yet taken.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes the encoded bytes, leaving the buffer empty.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// Writes everything encoded so far to `w` and flushes it.
    pub async fn flush_into<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        let bytes = self.take();
        w.write_all(&bytes).await?;
        w.flush().await
    }
}
