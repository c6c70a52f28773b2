//! Registering derivations: read a `.drv` from the store dir, check it the way CppNix
//! does on registration (`nixnest_core::derivation::Derivation::check_at`: output kinds,
//! input-addressed output paths equal to those the hash modulo gives — input derivations
//! are loaded from the store — and one environment variable per output holding its path),
//! and produce the `DerivationOutputs` rows: one per output whose path is known statically.

use nixnest_core::StorePath;
use nixnest_core::derivation::{Derivation, DrvHashes};

use crate::error::{Error, Result};
use crate::store::LocalStore;

/// Largest `.drv` file we parse (real ones are kilobytes).
const MAX_DRV_SIZE: u64 = 64 << 20;

/// Reads and parses the derivation at `path` from the store dir.
pub fn read_derivation(store: &LocalStore, path: &StorePath) -> Result<Derivation> {
    use std::io::Read;
    let real = store.real_store_dir().join(path.to_base_name());
    let f = std::fs::File::open(&real).map_err(|e| Error::io_at("opening derivation", &real, e))?;
    let mut buf = Vec::new();
    f.take(MAX_DRV_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io_at("reading derivation", &real, e))?;
    if buf.len() as u64 > MAX_DRV_SIZE {
        return Err(Error::BadInput(format!(
            "derivation '{}' is larger than {MAX_DRV_SIZE} bytes",
            real.display()
        )));
    }
    Ok(Derivation::parse_at(store.store_dir(), path, &buf)?)
}

/// Checks the derivation at `drv_path` and returns (output name, printed output path)
/// for every statically known output.
pub(crate) fn checked_outputs(
    store: &LocalStore,
    drv_path: &StorePath,
) -> Result<Vec<(String, String)>> {
    let sd = store.store_dir();
    let drv = read_derivation(store, drv_path)?;
    let mut hashes = DrvHashes::new(sd.clone(), |p: &StorePath| {
        read_derivation(store, p).map_err(|e| nixnest_core::Error::DrvHash {
            name: p.to_string(),
            reason: e.to_string(),
        })
    });
    drv.check_at(sd, drv_path, hashes.lookup())?;
    Ok(drv
        .output_paths(sd)?
        .into_iter()
        .filter_map(|(name, p)| p.map(|p| (name, sd.print(&p))))
        .collect())
}
