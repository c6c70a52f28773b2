//! `ValidPathInfo`: what the store knows about a valid path, and its signature fingerprint.
//!
//! The fields are those of the db's `ValidPaths` row plus its `Refs`, and of the worker
//! protocol's ValidPathInfo. Signatures sign the fingerprint
//! ```text
//! 1;<full store path>;sha256:<narHash in nix32>;<narSize>;<references as full paths, sorted, comma-separated>
//! ```
//! (Nix's `ValidPathInfo::fingerprint`). A content-addressed path is trusted without
//! signatures when its path really follows from its `ca` and references.

use std::collections::BTreeSet;

use crate::content_address::ContentAddress;
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::signature::{PublicKeys, SecretKey, verify_detached};
use crate::store_path::{StoreDir, StorePath};

/// Everything known about a valid store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    pub path: StorePath,
    /// The derivation that produced it, if known.
    pub deriver: Option<StorePath>,
    /// SHA-256 of the NAR serialisation (Nix requires sha256 here).
    pub nar_hash: Hash,
    /// Paths this one refers to; may include `path` itself.
    pub references: BTreeSet<StorePath>,
    /// Unix seconds.
    pub registration_time: u64,
    /// Length of the NAR serialisation in bytes.
    pub nar_size: u64,
    /// Built locally ("ultimately trusted").
    pub ultimate: bool,
    /// `<key name>:<base64 signature>` strings.
    pub sigs: BTreeSet<String>,
    pub ca: Option<ContentAddress>,
}

impl ValidPathInfo {
    /// A path info with everything else empty / zero.
    pub fn new(path: StorePath, nar_hash: Hash) -> Self {
        ValidPathInfo {
            path,
            deriver: None,
            nar_hash,
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size: 0,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        }
    }

    /// The references other than the path itself, and whether it refers to itself.
    pub fn references_split(&self) -> (BTreeSet<StorePath>, bool) {
        let mut others = self.references.clone();
        let self_ref = others.remove(&self.path);
        (others, self_ref)
    }

    /// The string signatures sign. Fails when the NAR size is unknown (0), as in Nix.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> Result<String> {
        if self.nar_size == 0 {
            return Err(Error::BadPathInfo {
                path: store_dir.print(&self.path),
                reason: "cannot compute the fingerprint because the NAR size is not known".into(),
            });
        }
        let refs: Vec<String> = self.references.iter().map(|r| store_dir.print(r)).collect();
        Ok(format!(
            "1;{};{};{};{}",
            store_dir.print(&self.path),
            self.nar_hash.to_typed_nix32(),
            self.nar_size,
            refs.join(",")
        ))
    }

    /// Adds a signature by `key` over the fingerprint.
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SecretKey) -> Result<()> {
        let fp = self.fingerprint(store_dir)?;
        self.sigs.insert(key.sign(fp.as_bytes()));
        Ok(())
    }

    /// Whether `sig` is a valid signature of this path by one of `keys`.
    pub fn check_signature(&self, store_dir: &StoreDir, keys: &PublicKeys, sig: &str) -> bool {
        self.fingerprint(store_dir)
            .is_ok_and(|fp| verify_detached(fp.as_bytes(), sig, keys))
    }

    /// How many of `sigs` are valid by `keys`.
    pub fn count_valid_signatures(&self, store_dir: &StoreDir, keys: &PublicKeys) -> usize {
        let Ok(fp) = self.fingerprint(store_dir) else {
            return 0;
        };
        self.sigs
            .iter()
            .filter(|s| verify_detached(fp.as_bytes(), s, keys))
            .count()
    }

    /// Whether the path is exactly what its `ca` and references make it (Nix's
    /// `isContentAddressed`), which makes it trustworthy without signatures.
    pub fn is_content_addressed(&self, store_dir: &StoreDir) -> bool {
        let Some(ca) = &self.ca else { return false };
        let (others, self_ref) = self.references_split();
        store_dir
            .make_path_from_ca(self.path.name(), ca, &others, self_ref)
            .is_ok_and(|p| p == self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{PublicKey, public_keys};

    const PK: &str = "test-key-1:YYansrILCi1RPgd2IwqYXL70+Tp1En6rh3sn34NEHxE=";
    const SK: &str = "test-key-1:mJeScU/LBm/Blf9208mC9kUHPiVJjK8TuNOM1qP77OdhhqeysgsKLVE+B3YjCphcvvT5OnUSfquHeyffg0QfEQ==";

    /// `nix store sign` + `nix path-info --json --sigs` output from Nix 2.8 on a store at
    /// `/tmp/sigtest/store`: a text path with two references.
    fn withref() -> (StoreDir, ValidPathInfo, &'static str) {
        let sd = StoreDir::new("/tmp/sigtest/store").unwrap();
        let path = sd
            .parse_path("/tmp/sigtest/store/8nc2h6wqbpin1vdbkf1b8qdqfrd110qg-withref")
            .unwrap();
        let mut info = ValidPathInfo::new(
            path,
            Hash::parse_sri("sha256-SR8eRsJAiY9Iw39rI5F2IVLmcTm6yTp0Ux6GdSpomy8=").unwrap(),
        );
        info.nar_size = 240;
        info.references = [
            "/tmp/sigtest/store/59jqadabv2kyiqca8za9x8dla82c1gc7-hello.txt",
            "/tmp/sigtest/store/kgm4m6wqbaw8ydy1r6nw7x9m4xjyh27z-dep",
        ]
        .iter()
        .map(|p| sd.parse_path(p).unwrap())
        .collect();
        info.ca = Some(
            ContentAddress::parse(
                "text:sha256:1xxjyd7crdnancjzy7c0ykx6r5n2x6zix6v1bqwx648hv1q3ywn1",
            )
            .unwrap(),
        );
        let sig = "test-key-1:JPjWrqBJ9uxTxypZv05XmkPnSd6XhD7+Aei8vXJDu4eQ59++9MgFedmxiHfS2EmCpPyUpXGleO6ig9WaYBAnDw==";
        (sd, info, sig)
    }

    #[test]
    fn fingerprint_and_real_signature() {
        let (sd, mut info, sig) = withref();
        let fp = info.fingerprint(&sd).unwrap();
        assert_eq!(
            fp,
            format!(
                "1;/tmp/sigtest/store/8nc2h6wqbpin1vdbkf1b8qdqfrd110qg-withref;{};240;\
                 /tmp/sigtest/store/59jqadabv2kyiqca8za9x8dla82c1gc7-hello.txt,\
                 /tmp/sigtest/store/kgm4m6wqbaw8ydy1r6nw7x9m4xjyh27z-dep",
                info.nar_hash.to_typed_nix32()
            )
        );
        let keys = public_keys([PublicKey::parse(PK).unwrap()]);
        assert!(info.check_signature(&sd, &keys, sig));
        // Ed25519 is deterministic: our signature is byte-identical to Nix's.
        info.sign(&sd, &SecretKey::parse(SK).unwrap()).unwrap();
        assert!(info.sigs.contains(sig));
        assert_eq!(info.count_valid_signatures(&sd, &keys), 1);
        // A changed field breaks it.
        info.nar_size = 241;
        assert!(!info.check_signature(&sd, &keys, sig));
    }

    #[test]
    fn real_nar_path_signature() {
        let sd = StoreDir::new("/tmp/sigtest/store").unwrap();
        let path = sd
            .parse_path("/tmp/sigtest/store/59jqadabv2kyiqca8za9x8dla82c1gc7-hello.txt")
            .unwrap();
        let mut info = ValidPathInfo::new(
            path,
            Hash::parse_sri("sha256-NMo6xjCU0dV1H3QRAWkqePle7fEHRLCIEp/DJN/Q9gM=").unwrap(),
        );
        info.nar_size = 128;
        info.ca = Some(
            ContentAddress::parse(
                "fixed:r:sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil",
            )
            .unwrap(),
        );
        let keys = public_keys([PublicKey::parse(PK).unwrap()]);
        let sig = "test-key-1:TU+8hpSBcZGHG3P+tLNVfgMsx/rOoA7mt7Bee8Q4iH7F7KaTY0wj2WCll9iUNT9nfumY3ZFCqlPMZ8OrPSveAA==";
        assert!(info.check_signature(&sd, &keys, sig));
        assert!(info.is_content_addressed(&sd));
    }

    #[test]
    fn content_addressed_check() {
        let (sd, mut info, _) = withref();
        assert!(info.is_content_addressed(&sd));
        // Dropping a reference changes the text path.
        let first = info.references.iter().next().unwrap().clone();
        info.references.remove(&first);
        assert!(!info.is_content_addressed(&sd));
        info.ca = None;
        assert!(!info.is_content_addressed(&sd));
    }

    #[test]
    fn fingerprint_needs_size() {
        let (sd, mut info, _) = withref();
        info.nar_size = 0;
        assert!(matches!(
            info.fingerprint(&sd),
            Err(Error::BadPathInfo { .. })
        ));
    }
}
