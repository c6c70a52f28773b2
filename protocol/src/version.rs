//! Protocol versions and feature sets.
//!
//! A version is one u64 on the wire: `major << 8 | minor` (always major 1, so `0x1NN`).
//! Both peers send theirs and use the minimum. From 1.38 on, new capabilities are
//! negotiated as *feature strings* instead of version bumps: the client sends its list,
//! the daemon answers with its own, and both use the intersection.

use std::collections::BTreeSet;
use std::fmt;

/// A worker-protocol version (`1.NN`), ordered by `(major, minor)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    pub major: u8,
    pub minor: u8,
}

impl ProtocolVersion {
    pub const fn new(major: u8, minor: u8) -> Self {
        ProtocolVersion { major, minor }
    }

    /// Oldest version nixnest serves (Nix 2.3 clients speak 1.21).
    pub const MIN_SUPPORTED: ProtocolVersion = ProtocolVersion::new(1, 21);
    /// Newest version on the wire (Nix 2.24 … HEAD; 1.39 is never sent).
    pub const LATEST: ProtocolVersion = ProtocolVersion::new(1, 38);

    /// The wire form `major << 8 | minor`.
    pub const fn to_wire(self) -> u64 {
        ((self.major as u64) << 8) | self.minor as u64
    }

    /// Splits a wire number. Numbers above `0xffff` cannot be a version at all; they are
    /// mapped to major 255 so that the major-version check rejects them.
    pub const fn from_wire(v: u64) -> Self {
        if v > 0xffff {
            return ProtocolVersion::new(0xff, 0xff);
        }
        ProtocolVersion::new((v >> 8) as u8, (v & 0xff) as u8)
    }

    /// True when this (negotiated) version is at least `1.minor`.
    pub const fn at_least(self, minor: u8) -> bool {
        self.major > 1 || (self.major == 1 && self.minor >= minor)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Feature strings known to Nix (§2.4 of the spec).
pub mod feature {
    /// DrvOutput/Realisation/builtOutputs use store paths instead of hash-modulo JSON.
    pub const REALISATION_WITH_PATH_NOT_HASH: &str = "realisation-with-path-not-hash";
    /// CollectGarbage's `pathsToDelete` becomes a tagged GCPaths value.
    pub const DELETE_DEAD_SPECIFIC_REFERRERS: &str = "delete-dead-specific-referrers";
    /// The client does not send SetOptions.
    pub const DISABLE_SET_OPTIONS: &str = "disable-set-options";
    /// Builder-RPC op 1001.
    pub const ADD_TO_STORE_SCANNING: &str = "add-to-store-scanning";
    /// Builder-RPC op 1000.
    pub const SUBMIT_OUTPUT: &str = "submit-output";
}

/// A set of feature strings. Sorted so that it is written in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureSet(BTreeSet<String>);

impl FeatureSet {
    pub fn new() -> Self {
        FeatureSet(BTreeSet::new())
    }

    pub fn contains(&self, feature: &str) -> bool {
        self.0.contains(feature)
    }

    pub fn insert(&mut self, feature: impl Into<String>) {
        self.0.insert(feature.into());
    }

    /// The features both sides offered: what a connection may use.
    pub fn intersection(&self, other: &FeatureSet) -> FeatureSet {
        FeatureSet(self.0.intersection(&other.0).cloned().collect())
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<S: Into<String>> FromIterator<S> for FeatureSet {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        FeatureSet(iter.into_iter().map(Into::into).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_and_order() {
        assert_eq!(
            ProtocolVersion::from_wire(0x122),
            ProtocolVersion::new(1, 34)
        );
        assert_eq!(ProtocolVersion::new(1, 38).to_wire(), 0x126);
        assert!(ProtocolVersion::new(1, 21) < ProtocolVersion::new(1, 38));
        assert!(ProtocolVersion::new(2, 0) > ProtocolVersion::new(1, 255));
        assert!(ProtocolVersion::new(1, 26).at_least(26));
        assert!(!ProtocolVersion::new(1, 25).at_least(26));
        assert_eq!(ProtocolVersion::from_wire(1 << 40).major, 0xff);
        assert_eq!(ProtocolVersion::new(1, 34).to_string(), "1.34");
    }

    #[test]
    fn feature_intersection() {
        let a: FeatureSet = ["x", "y", "z"].into_iter().collect();
        let b: FeatureSet = ["y", "z", "w"].into_iter().collect();
        let i = a.intersection(&b);
        assert_eq!(i.iter().collect::<Vec<_>>(), ["y", "z"]);
    }
}
