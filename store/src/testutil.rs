//! Helpers for unit tests: temporary stores and fake registered paths.

use std::path::Path;

use crate::config::StoreConfig;
use crate::logger::NullLogger;
use crate::queries::PathRow;
use crate::store::LocalStore;

pub fn new_store() -> (tempfile::TempDir, LocalStore) {
    new_store_with(|_| {})
}

pub fn new_store_with(f: impl FnOnce(&mut StoreConfig)) -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::under(dir.path());
    f(&mut c);
    let s = LocalStore::open(c, &NullLogger).unwrap();
    (dir, s)
}

/// A store path name for `name` with a hash part derived from `name`.
pub fn fake_store_path(store: &LocalStore, name: &str) -> String {
    let h = nixnest_core::Hash::sha256(name.as_bytes()).to_nix32();
    format!("{}/{}-{name}", store.store_dir_str(), &h[..32])
}

/// Creates `<path>/file` with `size` bytes on disk (a directory store object).
pub fn make_on_disk(path: &str, size: usize) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::write(Path::new(path).join("file"), vec![b'x'; size]).unwrap();
}

/// Creates and registers a fake path (not a real NAR hash).
pub fn fake_path(store: &LocalStore, name: &str, refs: &[&str], deriver: Option<&str>) -> String {
    let p = fake_store_path(store, name);
    make_on_disk(&p, 100);
    store
        .register_rows(&[PathRow {
            path: p.clone(),
            nar_hash: format!("sha256:{}", "00".repeat(32)),
            nar_size: 100,
            references: refs.iter().map(|s| s.to_string()).collect(),
            deriver: deriver.map(str::to_owned),
            ..PathRow::default()
        }])
        .unwrap();
    p
}

/// Registers a fake `.drv` with output rows.
pub fn fake_drv(store: &LocalStore, name: &str, outputs: &[(&str, &str)]) -> String {
    let p = fake_store_path(store, &format!("{name}.drv"));
    make_on_disk(&p, 10);
    store
        .register_rows(&[PathRow {
            path: p.clone(),
            nar_hash: format!("sha256:{}", "00".repeat(32)),
            nar_size: 10,
            drv_outputs: outputs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            ..PathRow::default()
        }])
        .unwrap();
    p
}
