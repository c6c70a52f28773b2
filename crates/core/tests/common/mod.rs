//! Helpers shared by the integration tests: locating upstream's golden vectors.

#![allow(dead_code)]

use std::path::PathBuf;

/// `<vectors>/nix`, from `$NIXNEST_VECTORS` or `<project root>/../shared/vectors`; `None`
/// (with a message on stderr) when absent, so tests skip instead of failing.
pub fn nix_vectors() -> Option<PathBuf> {
    let base = match std::env::var_os("NIXNEST_VECTORS") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
    };
    let dir = base.join("nix");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: upstream vectors not found at {} (set NIXNEST_VECTORS)",
            dir.display()
        );
        None
    }
}

/// Reads a JSON vector.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
