//! ValidPathInfo on the wire.
//!
//! ```text
//! [path]                       only in the "with path" form (AddToStore ≥ 1.25 reply,
//!                              AddToStoreNar, AddMultipleToStore items, op 1001 reply)
//! optpath   deriver            "" if unknown
//! string    narHash            written lowercase base16 without "sha256:"; read in any form
//! set<path> references
//! u64       registrationTime
//! u64       narSize
//! [≥1.16] bool ultimate, set<string> sigs, string ca ("" = none)
//! ```

use std::collections::BTreeSet;

use tokio::io::AsyncRead;

use nixnest_core::{ContentAddress, Hash, HashAlgo, StorePath, ValidPathInfo};

use crate::error::{Error, Result};
use crate::types::{read_opt_path, read_path, write_opt_path, write_path};
use crate::wire::{WireReader, WireType, WireWriter, limits};

/// A ValidPathInfo without its path (QueryPathInfo's reply; upstream's
/// `UnkeyedValidPathInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnkeyedValidPathInfo {
    pub deriver: Option<StorePath>,
    pub nar_hash: Hash,
    pub references: BTreeSet<StorePath>,
    pub registration_time: u64,
    pub nar_size: u64,
    pub ultimate: bool,
    pub sigs: BTreeSet<String>,
    pub ca: Option<ContentAddress>,
}

impl UnkeyedValidPathInfo {
    pub fn with_path(self, path: StorePath) -> ValidPathInfo {
        ValidPathInfo {
            path,
            deriver: self.deriver,
            nar_hash: self.nar_hash,
            references: self.references,
            registration_time: self.registration_time,
            nar_size: self.nar_size,
            ultimate: self.ultimate,
            sigs: self.sigs,
            ca: self.ca,
        }
    }
}

impl From<ValidPathInfo> for UnkeyedValidPathInfo {
    fn from(i: ValidPathInfo) -> Self {
        UnkeyedValidPathInfo {
            deriver: i.deriver,
            nar_hash: i.nar_hash,
            references: i.references,
            registration_time: i.registration_time,
            nar_size: i.nar_size,
            ultimate: i.ultimate,
            sigs: i.sigs,
            ca: i.ca,
        }
    }
}

impl From<&ValidPathInfo> for UnkeyedValidPathInfo {
    fn from(i: &ValidPathInfo) -> Self {
        i.clone().into()
    }
}

impl WireType for UnkeyedValidPathInfo {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let deriver = read_opt_path(r, "deriver").await?;
        let hash_str = r.read_string(limits::SHORT, "narHash").await?;
        let nar_hash =
            Hash::parse_any(&hash_str, Some(HashAlgo::Sha256)).map_err(Error::value("narHash"))?;
        let references = BTreeSet::<StorePath>::decode(r).await?;
        let registration_time = r.read_u64().await?;
        let nar_size = r.read_u64().await?;
        let (mut ultimate, mut sigs, mut ca) = (false, BTreeSet::new(), None);
        if r.version().at_least(16) {
            ultimate = r.read_bool("ultimate").await?;
            let n = r.read_count(limits::ITEMS, "sigs").await?;
            for _ in 0..n {
                sigs.insert(r.read_string(limits::SHORT, "signature").await?);
            }
            ca = Option::<ContentAddress>::decode(r).await?;
        }
        Ok(UnkeyedValidPathInfo {
            deriver,
            nar_hash,
            references,
            registration_time,
            nar_size,
            ultimate,
            sigs,
            ca,
        })
    }

    fn encode(&self, w: &mut WireWriter) {
        write_opt_path(w, self.deriver.as_ref());
        w.write_str(&self.nar_hash.to_base16());
        self.references.encode(w);
        w.write_u64(self.registration_time);
        w.write_u64(self.nar_size);
        if w.version().at_least(16) {
            w.write_bool(self.ultimate);
            self.sigs.encode(w);
            self.ca.encode(w);
        }
    }
}

/// The "with path" form.
impl WireType for ValidPathInfo {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let path = read_path(r, "path").await?;
        Ok(UnkeyedValidPathInfo::decode(r).await?.with_path(path))
    }

    fn encode(&self, w: &mut WireWriter) {
        write_path(w, &self.path);
        UnkeyedValidPathInfo::from(self).encode(w);
    }
}
