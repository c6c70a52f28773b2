//! Compiles the cargo-fuzz targets that exercise this crate as ordinary code and runs
//! them over their corpus plus every truncation and some byte flips of each corpus file,
//! so a target cannot stop compiling (or start failing on its own corpus) unnoticed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

/// Stand-in for `libfuzzer_sys::fuzz_target!`: turns the target body into `run`.
macro_rules! fuzz_target {
    (|$data:ident: &[u8]| $body:block) => {
        pub fn run($data: &[u8]) $body
    };
}

#[path = "../../fuzz/fuzz_targets/nix_conf.rs"]
mod nix_conf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus in {}", dir.display());
    files
}

#[test]
fn nix_conf_target_over_corpus_truncations_and_flips() {
    let mut runs = 0;
    for (_path, bytes) in corpus("nix_conf") {
        for end in 0..=bytes.len() {
            nix_conf::run(&bytes[..end]);
            runs += 1;
        }
        // Deterministic byte flips: each position gets a separator, '=', '#', NUL, 0xff.
        for (i, replacement) in
            (0..bytes.len()).flat_map(|i| [b' ', b'=', b'#', 0, 0xff].map(|r| (i, r)))
        {
            let mut mutated = bytes.clone();
            mutated[i] = replacement;
            nix_conf::run(&mutated);
            runs += 1;
        }
    }
    assert!(runs > 1000);
}
