//! Wire forms of Nix's values.
//!
//! ```text
//! StorePath            string: the full printed path <storeDir>/<hash>-<name>
//! optional StorePath   string, "" = none
//! ContentAddress       string text:sha256:<nix32> | fixed:[r:]<algo>:<nix32>; optional: "" = none
//! ```
//!
//! The value types come from `nixnest-core`; this module only adds their encodings.
//! Composite types live in the submodules, each with the version gates of its fields.

mod build;
mod misc;
mod path_info;
mod realisation;

pub use build::{
    BuildMode, BuildResult, BuildStatus, KeyedBuildResult, read_basic_derivation,
    write_basic_derivation,
};
pub use misc::{
    ClientSettings, GcAction, GcOptions, GcPaths, GcResult, Missing, SingleDerivedPath,
    SubstitutablePathInfo,
};
pub use nixnest_core::DrvOutput;
pub use path_info::UnkeyedValidPathInfo;
pub use realisation::{DrvOutputWithPath, Realisation, UnkeyedRealisation, placeholder_drv_output};

use tokio::io::AsyncRead;

use nixnest_core::{ContentAddress, DerivedPath, StorePath};

use crate::error::{Error, Result};
use crate::wire::{WireReader, WireType, WireWriter, limits};

/// Reads a full store path, naming the field in errors.
pub async fn read_path<R: AsyncRead + Unpin + Send>(
    r: &mut WireReader<R>,
    field: &'static str,
) -> Result<StorePath> {
    let s = r.read_string(limits::STORE_PATH, field).await?;
    r.store_dir().parse_path(&s).map_err(Error::value(field))
}

/// Reads an optional store path (`""` = none).
pub async fn read_opt_path<R: AsyncRead + Unpin + Send>(
    r: &mut WireReader<R>,
    field: &'static str,
) -> Result<Option<StorePath>> {
    let s = r.read_string(limits::STORE_PATH, field).await?;
    if s.is_empty() {
        return Ok(None);
    }
    r.store_dir()
        .parse_path(&s)
        .map(Some)
        .map_err(Error::value(field))
}

/// Reads a store path sent as its base name `<hash>-<name>` (AddBuildLog,
/// RegisterDrvOutput < 1.31).
pub async fn read_base_name<R: AsyncRead + Unpin + Send>(
    r: &mut WireReader<R>,
    field: &'static str,
) -> Result<StorePath> {
    let s = r.read_string(limits::STORE_PATH, field).await?;
    StorePath::from_base_name(&s).map_err(Error::value(field))
}

pub fn write_path(w: &mut WireWriter, path: &StorePath) {
    let printed = w.store_dir().print(path);
    w.write_str(&printed);
}

pub fn write_opt_path(w: &mut WireWriter, path: Option<&StorePath>) {
    match path {
        Some(p) => write_path(w, p),
        None => w.write_str(""),
    }
}

impl WireType for StorePath {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        read_path(r, "store path").await
    }
    fn encode(&self, w: &mut WireWriter) {
        write_path(w, self);
    }
}

/// The "empty string = none" optional.
impl WireType for Option<StorePath> {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        read_opt_path(r, "optional store path").await
    }
    fn encode(&self, w: &mut WireWriter) {
        write_opt_path(w, self.as_ref());
    }
}

impl WireType for ContentAddress {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let s = r.read_string(limits::SHORT, "content address").await?;
        ContentAddress::parse(&s).map_err(Error::value("content address"))
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_str(&self.to_string());
    }
}

/// The "empty string = none" optional.
impl WireType for Option<ContentAddress> {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let s = r.read_string(limits::SHORT, "content address").await?;
        ContentAddress::parse_opt(&s).map_err(Error::value("content address"))
    }
    fn encode(&self, w: &mut WireWriter) {
        match self {
            Some(ca) => ca.encode(w),
            None => w.write_str(""),
        }
    }
}

/// DerivedPath: ≥ 1.30 `<path>` / `<drv>!<outputs>` / `<drv>!*`; < 1.30 the
/// StorePathWithOutputs form where a bare `.drv` means all outputs.
impl WireType for DerivedPath {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let s = r.read_string(limits::DERIVED_PATH, "derived path").await?;
        let parsed = if r.version().at_least(30) {
            DerivedPath::parse(r.store_dir(), &s)
        } else {
            DerivedPath::parse_legacy(r.store_dir(), &s)
        };
        parsed.map_err(Error::value("derived path"))
    }

    /// An opaque `.drv` cannot be written before 1.30 (Nix clients refuse to send one);
    /// the modern form is written instead, which an old peer will read as "all outputs".
    fn encode(&self, w: &mut WireWriter) {
        let s = if w.version().at_least(30) {
            self.print(w.store_dir())
        } else {
            self.print_legacy(w.store_dir())
                .unwrap_or_else(|_| self.print(w.store_dir()))
        };
        w.write_str(&s);
    }
}

#[cfg(test)]
pub(crate) mod tests;
