//! Entry points for the cargo-fuzz targets in `fuzz/` (one function per target).
//!
//! They live here, not in `fuzz/`, so that stable `cargo test` compiles and runs them on the
//! seed corpus: the fuzz crate only forwards bytes. Each function parses arbitrary input
//! and, when parsing succeeds, asserts the round-trip invariants; a panic is a finding.

use crate::content_address::ContentAddress;
use crate::derivation::Derivation;
use crate::derived_path::DerivedPath;
use crate::hash::Hash;
use crate::store_path::{StoreDir, StorePath};

/// Store paths, derived paths, content addresses and hashes from one string.
pub fn store_path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let sd = StoreDir::default();
    if let Ok(p) = sd.parse_path(s) {
        assert_eq!(
            sd.print(&p),
            s,
            "printed store path differs from the parsed one"
        );
        assert_eq!(StorePath::from_base_name(&p.to_string()).ok(), Some(p));
    }
    if let Ok(p) = StorePath::from_base_name(s) {
        assert_eq!(p.to_string(), s);
    }
    if let Ok((p, rest)) = sd.split_path(s) {
        assert_eq!(format!("{}{rest}", sd.display(&p)), s);
    }
    let parsed = [
        DerivedPath::parse(&sd, s),
        DerivedPath::parse_legacy(&sd, s),
    ];
    for dp in parsed.into_iter().flatten() {
        assert_eq!(
            DerivedPath::parse(&sd, &dp.print(&sd)).ok(),
            Some(dp.clone())
        );
        if let Ok(legacy) = dp.print_legacy(&sd) {
            assert_eq!(DerivedPath::parse_legacy(&sd, &legacy).ok(), Some(dp));
        }
    }
    if let Ok(ca) = ContentAddress::parse(s) {
        assert_eq!(ContentAddress::parse(&ca.to_string()).ok(), Some(ca));
    }
    if let Ok(h) = Hash::parse_any(s, None) {
        assert_eq!(Hash::parse_sri(&h.to_sri()).ok(), Some(h));
        assert_eq!(Hash::parse_prefixed(&h.to_typed_nix32()).ok(), Some(h));
    }
}

/// `.drv` ATerm text: parse, then print → parse is the identity and print is idempotent;
/// hashing and checking never panic.
pub fn derivation(data: &[u8]) {
    let sd = StoreDir::default();
    let Ok(drv) = Derivation::parse(&sd, data, "fuzz") else {
        return;
    };
    let Ok(text) = drv.to_aterm(&sd) else { return };
    let back = Derivation::parse(&sd, text.as_bytes(), "fuzz");
    assert_eq!(
        back.as_ref().ok(),
        Some(&drv),
        "printed derivation does not parse back equal"
    );
    if let Ok(back) = back {
        assert_eq!(back.to_aterm(&sd).ok().as_deref(), Some(text.as_str()));
    }
    let no_inputs = |p: &StorePath| {
        Err(crate::Error::DrvHash {
            name: p.to_string(),
            reason: "fuzzing has no store".into(),
        })
    };
    let _ = drv.drv_path(&sd);
    let _ = drv.hash_modulo(&sd, true, no_inputs);
    let _ = drv.check_invariants(&sd, no_inputs);
    let mut filled = drv.clone();
    let _ = filled.fill_in_output_paths(&sd, no_inputs);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Runs both entry points over the seed corpora in `fuzz/corpus/`.
    #[test]
    fn seed_corpora() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let mut n = 0;
        for (target, f) in [
            ("store_path", super::store_path as fn(&[u8])),
            ("derivation", super::derivation),
        ] {
            let dir = root.join(target);
            for entry in
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            {
                let data = std::fs::read(entry.unwrap().path()).unwrap();
                f(&data);
                n += 1;
            }
        }
        assert!(n >= 10, "only {n} seeds");
    }

    #[test]
    fn mutated_seeds_do_not_panic() {
        // A poor man's fuzzer for stable: truncate and flip bytes of each derivation seed.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/derivation");
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            for i in (0..data.len()).step_by(7) {
                super::derivation(&data[..i]);
                let mut m = data.clone();
                for b in [b'"', b'\\', b',', b')', b'x', 0xff] {
                    m[i] = b;
                    super::derivation(&m);
                }
            }
        }
    }
}
