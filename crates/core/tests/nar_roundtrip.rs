//! Property tests: encode → decode → encode identity, dump → restore → dump identity on
//! real trees, and robustness against truncated and corrupted archives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nar_support;

use std::path::Path;

use nar_support::{Tree, decode, encode, materialise, toks, tree};
use nixnest_core::nar::{NarError, NarReader, copy_nar, dump_path, nar_hash_and_size, restore};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn write_read_write_is_identity(t in tree(6)) {
        let nar = encode(&t);
        let mut input = nar.clone();
        input.extend_from_slice(b"trailer");
        let mut source = input.as_slice();
        let (decoded, size) = decode(&mut source).unwrap();
        prop_assert_eq!(&decoded, &t);
        prop_assert_eq!(size, nar.len() as u64);
        prop_assert_eq!(source, b"trailer", "no byte after the NAR is consumed");
        prop_assert_eq!(encode(&decoded), nar.clone());

        let mut copied = Vec::new();
        prop_assert_eq!(copy_nar(nar.as_slice(), &mut copied).unwrap(), nar.len() as u64);
        prop_assert_eq!(copied, nar);
    }
}

proptest! {
    // Each case touches the disk three times; fewer cases keep this in seconds.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn dump_restore_dump_is_identity(t in tree(5)) {
        let tmp = tempfile::tempdir().unwrap();
        let original = tmp.path().join("original");
        materialise(&t, &original);

        let mut nar = Vec::new();
        let size = dump_path(&original, &mut nar).unwrap();
        prop_assert_eq!(size, nar.len() as u64);
        prop_assert_eq!(&nar, &encode(&t), "dump agrees with the writer (order, exec bit)");

        let restored = tmp.path().join("restored");
        let mut input = nar.clone();
        input.extend_from_slice(b"next message");
        let mut source = input.as_slice();
        prop_assert_eq!(restore(&mut source, &restored).unwrap(), nar.len() as u64);
        prop_assert_eq!(source, b"next message");

        let mut again = Vec::new();
        dump_path(&restored, &mut again).unwrap();
        prop_assert_eq!(&again, &nar);

        let hash = nar_hash_and_size(&restored).unwrap();
        prop_assert_eq!(hash.size, nar.len() as u64);
        prop_assert_eq!(hash.sha256, <[u8; 32]>::from(Sha256::digest(&nar)));
    }
}

/// A few archives covering every token kind.
fn samples() -> Vec<Vec<u8>> {
    use std::collections::BTreeMap;
    let file = |executable, contents: &[u8]| Tree::File {
        executable,
        contents: contents.to_vec(),
    };
    let mut inner = BTreeMap::new();
    inner.insert(b"x".to_vec(), file(true, b"#!/bin/sh\nexit 0\n"));
    inner.insert(b"y".to_vec(), Tree::Dir(BTreeMap::new()));
    let mut outer = BTreeMap::new();
    outer.insert(b"a".to_vec(), file(false, b"hello world\n"));
    outer.insert(b"b".to_vec(), Tree::Symlink(b"../target".to_vec()));
    outer.insert(b"c".to_vec(), Tree::Dir(inner));
    outer.insert("é".as_bytes().to_vec(), file(false, b""));
    vec![
        encode(&file(false, b"hello world\n")),
        encode(&Tree::Symlink(b"/nix/store/abc".to_vec())),
        encode(&Tree::Dir(outer)),
    ]
}

#[test]
fn every_truncation_is_a_clean_error() {
    for nar in samples() {
        for len in 0..nar.len() {
            let prefix = &nar[..len];
            match decode(prefix) {
                Err(NarError::UnexpectedEof { offset, .. }) => {
                    assert!(
                        offset <= len as u64,
                        "offset {offset} past the {len} bytes given"
                    );
                }
                other => panic!("prefix of {len} bytes: expected end-of-file, got {other:?}"),
            }
            // Skipping the contents instead of reading them must fail the same way.
            let mut reader = NarReader::new(prefix);
            assert!(matches!(
                reader.skip_to_end(),
                Err(NarError::UnexpectedEof { .. })
            ));
        }
        assert!(decode(nar.as_slice()).is_ok());
    }
}

#[test]
fn every_truncation_fails_to_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let nar = samples().pop().unwrap();
    for len in 0..nar.len() {
        let target = tmp.path().join(format!("t{len}"));
        let err = restore(&nar[..len], &target).unwrap_err();
        assert!(
            matches!(err, NarError::UnexpectedEof { .. }),
            "prefix of {len}: {err}"
        );
    }
}

#[test]
fn corrupting_any_byte_never_panics() {
    for nar in samples() {
        for i in 0..nar.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = nar.clone();
                bad[i] ^= flip;
                let mut reader = NarReader::new(bad.as_slice());
                // Either a clean error or, when the byte was file contents, a valid NAR.
                if let Ok(size) = reader.skip_to_end() {
                    let accepted = &bad[..size as usize];
                    let (decoded, _) = decode(accepted).unwrap();
                    assert_eq!(
                        encode(&decoded),
                        accepted,
                        "an accepted NAR re-encodes to itself"
                    );
                }
            }
        }
    }
}

#[test]
fn huge_length_words_do_not_allocate() {
    // Every string position gets a length word of u64::MAX or 2^40; parsing must fail
    // fast with a bound error or end-of-file, not try to allocate.
    for len in [u64::MAX, 1 << 40, 1 << 20] {
        let word = len.to_le_bytes();
        let prefixes: Vec<Vec<u8>> = vec![
            Vec::new(),
            toks(&[b"nix-archive-1"]),
            toks(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target"]),
            toks(&[
                b"nix-archive-1",
                b"(",
                b"type",
                b"directory",
                b"entry",
                b"(",
                b"name",
            ]),
            toks(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]),
        ];
        for prefix in prefixes {
            let mut nar = prefix.clone();
            nar.extend_from_slice(&word);
            nar.extend_from_slice(&[0u8; 64]);
            assert!(decode(nar.as_slice()).is_err());
        }
    }
}

#[test]
fn hash_of_a_path_matches_its_dump() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    std::fs::write(&path, b"hello world\n").unwrap();
    let hash = nar_hash_and_size(Path::new(&path)).unwrap();
    assert_eq!(hash.size, 128);
    assert_eq!(
        nar_support::hex(&hash.sha256),
        "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603"
    );
}
