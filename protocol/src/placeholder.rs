//! Temporary stand-ins for `nixnest-core` types that are still being written.
//! Replaced by the real types as soon as core lands; nothing here is public API.

/// The logical store directory (e.g. `/nix/store`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreDir(String);

impl StoreDir {
    pub fn new(path: impl Into<String>) -> Self {
        StoreDir(path.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".into())
    }
}
