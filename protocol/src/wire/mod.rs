//! The wire codec: two primitives (u64 little-endian and padded byte strings), a
//! [`WireType`] trait that every protocol value implements once, and the generic
//! containers.
//!
//! ```text
//! list<T> = u64 count, count × T
//! set<T>  = list<T>, written sorted and unique
//! map<K,V>= u64 count, count × (K, V), written with sorted keys
//! opt<T>  = u64 0 | u64 1, T          (the ≥1.37 "tagged" form)
//! ```
//!
//! The older "empty string means none" optional is a property of the string-typed value
//! (store path, content address) and is implemented next to it.

pub mod reader;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use tokio::io::AsyncRead;

pub use nixnest_core::StoreDir;
pub use reader::WireReader;
pub use writer::WireWriter;

use crate::error::Result;

/// Upper bounds for values read from a peer.
pub mod limits {
    /// General strings: messages, option values, JSON, log lines.
    pub const STRING: u64 = 16 * 1024 * 1024;
    /// Short identifiers: setting names, feature names, hash strings, output names,
    /// content-address strings, signatures.
    pub const SHORT: u64 = 64 * 1024;
    /// A printed store path (`<storeDir>/<32>-<211 name>`), with room for long store dirs.
    pub const STORE_PATH: u64 = 4096 + 1 + 32 + 1 + 211;
    /// A derived path (`<drv>!out1,out2,…`).
    pub const DERIVED_PATH: u64 = 1024 * 1024;
    /// Whole file contents sent as one string (AddTextToStore, `.drv` text).
    pub const FILE_CONTENTS: u64 = 256 * 1024 * 1024;
    /// String bytes one request may carry in total (its streamed payload aside).
    pub const REQUEST: u64 = 512 * 1024 * 1024;
    /// Items in one list/set/map. The wire needs ≥ 8 bytes per item, so memory still
    /// only grows as data arrives; this bounds the time a bogus count can waste.
    pub const ITEMS: u64 = 1 << 24;
}

/// A value with one encoding on the worker protocol. Version and feature differences
/// are decided inside `decode`/`encode` from the reader's/writer's negotiated state.
pub trait WireType: Sized + Send {
    fn decode<R: AsyncRead + Unpin + Send>(
        r: &mut WireReader<R>,
    ) -> impl Future<Output = Result<Self>> + Send;

    fn encode(&self, w: &mut WireWriter);
}

impl WireType for u64 {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        r.read_u64().await
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(*self);
    }
}

impl WireType for bool {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        r.read_bool("bool").await
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_bool(*self);
    }
}

impl WireType for i64 {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        r.read_i64().await
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_i64(*self);
    }
}

impl WireType for String {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        r.read_string(limits::STRING, "string").await
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_str(self);
    }
}

impl<T: WireType> WireType for Vec<T> {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let count = r.read_count(limits::ITEMS, "list").await?;
        let mut items = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            items.push(T::decode(r).await?);
        }
        Ok(items)
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(self.len() as u64);
        for item in self {
            item.encode(w);
        }
    }
}

impl<T: WireType + Ord> WireType for BTreeSet<T> {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let count = r.read_count(limits::ITEMS, "set").await?;
        let mut items = BTreeSet::new();
        for _ in 0..count {
            items.insert(T::decode(r).await?);
        }
        Ok(items)
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(self.len() as u64);
        for item in self {
            item.encode(w);
        }
    }
}

impl<K: WireType + Ord, V: WireType> WireType for BTreeMap<K, V> {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let count = r.read_count(limits::ITEMS, "map").await?;
        let mut items = BTreeMap::new();
        for _ in 0..count {
            let k = K::decode(r).await?;
            let v = V::decode(r).await?;
            items.insert(k, v);
        }
        Ok(items)
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_u64(self.len() as u64);
        for (k, v) in self {
            k.encode(w);
            v.encode(w);
        }
    }
}

impl<A: WireType, B: WireType> WireType for (A, B) {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let a = A::decode(r).await?;
        let b = B::decode(r).await?;
        Ok((a, b))
    }
    fn encode(&self, w: &mut WireWriter) {
        self.0.encode(w);
        self.1.encode(w);
    }
}

/// The ≥1.37 tagged optional: `u64 0` = none, `u64 1` followed by the value = some.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tagged<T>(pub Option<T>);

impl<T: WireType> WireType for Tagged<T> {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        match r.read_u64().await? {
            0 => Ok(Tagged(None)),
            1 => Ok(Tagged(Some(T::decode(r).await?))),
            value => Err(crate::error::Error::BadEnum {
                field: "optional tag",
                kind: "optional tag (0 or 1)",
                value,
            }),
        }
    }
    fn encode(&self, w: &mut WireWriter) {
        match &self.0 {
            None => w.write_u64(0),
            Some(v) => {
                w.write_u64(1);
                v.encode(w);
            }
        }
    }
}

/// Helpers for tests: encode a value at a version, decode it back.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::version::ProtocolVersion;

    pub fn writer(version: ProtocolVersion) -> WireWriter {
        WireWriter::new(version, StoreDir::default())
    }

    pub fn reader(bytes: &[u8], version: ProtocolVersion) -> WireReader<&[u8]> {
        WireReader::new(bytes, version, StoreDir::default())
    }

    pub fn encode<T: WireType>(v: &T, version: ProtocolVersion) -> Vec<u8> {
        let mut w = writer(version);
        v.encode(&mut w);
        w.take().to_vec()
    }

    /// Decodes one value and insists every byte was used.
    pub fn decode_all<T: WireType>(bytes: &[u8], version: ProtocolVersion) -> Result<T> {
        block_on(async {
            let mut r = reader(bytes, version);
            let v = T::decode(&mut r).await?;
            if !r.get_ref().is_empty() {
                return Err(crate::error::Error::invalid(
                    "test",
                    format!("{} trailing bytes", r.get_ref().len()),
                ));
            }
            Ok(v)
        })
    }

    pub fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::error::Error;
    use crate::version::ProtocolVersion;

    const V: ProtocolVersion = ProtocolVersion::LATEST;

    #[test]
    fn u64_is_little_endian() {
        assert_eq!(
            encode(&0x0102_0304_0506_0708u64, V),
            [8, 7, 6, 5, 4, 3, 2, 1]
        );
    }

    #[test]
    fn string_padding() {
        assert_eq!(encode(&String::new(), V), [0; 8]);
        assert_eq!(
            encode(&"hi".to_string(), V),
            [2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', 0, 0, 0, 0, 0, 0]
        );
        let eight = encode(&"abcdefgh".to_string(), V);
        assert_eq!(eight.len(), 16);
    }

    #[test]
    fn nonzero_padding_rejected() {
        let bytes = [2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', 0, 0, 0, 1, 0, 0];
        assert!(matches!(
            decode_all::<String>(&bytes, V),
            Err(Error::NonZeroPadding { .. })
        ));
    }

    #[test]
    fn bool_above_one_rejected() {
        let bytes = 2u64.to_le_bytes();
        assert!(matches!(
            decode_all::<bool>(&bytes, V),
            Err(Error::BadBool { value: 2, .. })
        ));
    }

    #[test]
    fn huge_length_allocates_nothing() {
        // A length word of 2^60 followed by nothing: rejected by the limit before any
        // allocation, and for a large-limit read, stopped by EOF after what arrived.
        let bytes = (1u64 << 60).to_le_bytes();
        assert!(matches!(
            decode_all::<String>(&bytes, V),
            Err(Error::StringTooLong { len, .. }) if len == 1 << 60
        ));
        let r = block_on(async {
            let mut r = reader(&bytes, V);
            r.read_bytes(u64::MAX, "test").await
        });
        assert!(matches!(r, Err(Error::Eof)));
        assert!(matches!(
            decode_all::<Vec<u64>>(&bytes, V),
            Err(Error::TooManyItems { .. })
        ));
    }

    #[test]
    fn budget_bounds_a_whole_message() {
        let mut w = testing::writer(V);
        for _ in 0..3 {
            w.write_bytes(&[1; 100]);
        }
        let bytes = w.take();
        let r = block_on(async {
            let mut r = reader(&bytes, V);
            r.set_budget(250);
            r.read_bytes(1000, "a").await?;
            r.read_bytes(1000, "b").await?;
            r.read_bytes(1000, "c").await
        });
        assert!(
            matches!(r, Err(Error::MessageTooLarge { max: 250 })),
            "{r:?}"
        );
        let r = block_on(async {
            let mut r = reader(&bytes, V);
            r.set_budget(250);
            r.read_bytes(1000, "a").await?;
            r.clear_budget();
            r.read_bytes(1000, "b").await?;
            r.read_bytes(1000, "c").await
        });
        assert!(r.is_ok());
    }

    #[test]
    fn truncated_string_is_eof() {
        let bytes = [5, 0, 0, 0, 0, 0, 0, 0, b'a', b'b'];
        assert!(matches!(decode_all::<String>(&bytes, V), Err(Error::Eof)));
    }

    #[test]
    fn containers_round_trip() {
        let v: Vec<String> = vec!["".into(), "foo".into(), "bar".into()];
        assert_eq!(decode_all::<Vec<String>>(&encode(&v, V), V).unwrap(), v);
        let s: BTreeSet<String> = ["b", "a"].iter().map(|s| s.to_string()).collect();
        let bytes = encode(&s, V);
        // sets are written sorted
        assert_eq!(
            &bytes[8..24],
            &[1, 0, 0, 0, 0, 0, 0, 0, b'a', 0, 0, 0, 0, 0, 0, 0]
        );
        let m: BTreeMap<String, u64> = [("x".to_string(), 1), ("a".to_string(), 2)].into();
        assert_eq!(
            decode_all::<BTreeMap<String, u64>>(&encode(&m, V), V).unwrap(),
            m
        );
        let t = Tagged(Some(-5i64));
        assert_eq!(encode(&t, V)[..8], [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_all::<Tagged<i64>>(&encode(&t, V), V).unwrap(), t);
        assert_eq!(encode(&Tagged::<i64>(None), V), [0; 8]);
        assert!(decode_all::<Tagged<i64>>(&2u64.to_le_bytes(), V).is_err());
    }
}
