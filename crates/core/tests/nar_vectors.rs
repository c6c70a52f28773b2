//! Upstream Nix's golden and malicious NARs (`vectors/nix/libutil/nars/`): the good one is
//! accepted (and no byte past it is read), every bad one is rejected with an error naming
//! its problem, and restoring a bad one never creates anything outside the target.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nar_support;

use std::fs;

use nar_support::{Tree, decode, list_tree, vectors_dir};
use nixnest_core::nar::{Malformation, NarError, NarReader, restore};

/// What each vector must do: `Ok(tree)` or the error's expected message fragment (the
/// wording of upstream's own test where it applies) and a check of the typed error.
enum Expect {
    Accept(Tree),
    Reject(&'static str, fn(&NarError) -> bool),
}

fn expectation(name: &str) -> Option<Expect> {
    use Expect::{Accept, Reject};
    let invalid_name =
        |e: &NarError| matches!(e.malformation(), Some(Malformation::InvalidName(_)));
    Some(match name {
        "regular-one-byte-zero-padding.nar" => Accept(Tree::File {
            executable: false,
            contents: b"x".to_vec(),
        }),
        "dot.nar" => Reject("NAR contains invalid file name '.'", invalid_name),
        "dotdot.nar" => Reject("NAR contains invalid file name '..'", invalid_name),
        "slash.nar" => Reject("NAR contains invalid file name 'x/y'", invalid_name),
        "empty.nar" => Reject("NAR contains invalid file name ''", invalid_name),
        "nul-character.nar" => Reject("NAR contains invalid file name 'f", invalid_name),
        "executable-after-contents.nar" => Reject("expected tag ')', got 'executable'", |e| {
            matches!(e.malformation(), Some(Malformation::UnexpectedTag { .. }))
        }),
        "invalid-tag-instead-of-contents.nar" => Reject("got 'AAAAAAAA'", |e| {
            matches!(e.malformation(), Some(Malformation::UnexpectedTag { .. }))
        }),
        "name-after-node.nar" => Reject("expected tag 'name'", |e| {
            matches!(e.malformation(), Some(Malformation::UnexpectedTag { .. }))
        }),
        "regular-one-byte-non-zero-padding.nar" => Reject("non-zero padding", |e| {
            matches!(e.malformation(), Some(Malformation::NonZeroPadding { .. }))
        }),
        "regular-truncated-large-contents.nar" | "regular-truncated-padding.nar" => {
            Reject("unexpected end-of-file", |e| {
                matches!(e, NarError::UnexpectedEof { .. })
            })
        }
        _ => return None,
    })
}

#[test]
fn upstream_vectors_are_classified_correctly() {
    let Some(dir) = vectors_dir() else { return };
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = fs::read(&path).unwrap();
        let expect = expectation(&name)
            .unwrap_or_else(|| panic!("vector {name} is not classified in this test; add it"));
        seen += 1;
        match expect {
            Expect::Accept(tree) => {
                let (decoded, size) = decode(bytes.as_slice()).unwrap();
                assert_eq!(decoded, tree, "{name}");
                assert_eq!(size, bytes.len() as u64, "{name}");
                // Upstream's "trailing bytes remain unread" check.
                let mut input = bytes.clone();
                input.extend_from_slice(b"sentinel");
                let mut reader = NarReader::new(input.as_slice());
                reader.skip_to_end().unwrap();
                assert_eq!(reader.into_inner(), b"sentinel", "{name}");
            }
            Expect::Reject(message, typed) => {
                // Both with contents read and with contents skipped.
                let err = decode(bytes.as_slice()).unwrap_err();
                assert!(err.to_string().contains(message), "{name}: {err}");
                assert!(typed(&err), "{name}: {err:?}");
                let err = NarReader::new(bytes.as_slice()).skip_to_end().unwrap_err();
                assert!(err.to_string().contains(message), "{name}: {err}");
            }
        }
    }
    assert_eq!(
        seen,
        12,
        "expected upstream's 12 NAR vectors in {}",
        dir.display()
    );
}

#[test]
fn restoring_upstream_vectors_never_escapes_the_target() {
    let Some(dir) = vectors_dir() else { return };
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let bytes = fs::read(&path).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = tmp.path().join("sandbox");
        fs::create_dir(&sandbox).unwrap();
        let target = sandbox.join("out");
        let result = restore(bytes.as_slice(), &target);
        match expectation(&name) {
            Some(Expect::Accept(_)) => {
                result.unwrap();
                assert_eq!(fs::read(&target).unwrap(), b"x");
            }
            _ => assert!(result.is_err(), "{name} restored"),
        }
        // Whatever was created lies under `out`: nothing beside it, nothing above it.
        for created in list_tree(tmp.path()) {
            assert!(
                created.starts_with("sandbox/out") || created == std::path::Path::new("sandbox"),
                "{name} created {}",
                created.display()
            );
        }
        // The entries with evil names (`.`, `..`, `x/y`, …) are not created inside `out`
        // either: the directory stays empty.
        let evil_name = [
            "dot.nar",
            "dotdot.nar",
            "slash.nar",
            "empty.nar",
            "nul-character.nar",
        ];
        if evil_name.contains(&name.as_str()) {
            let inside = list_tree(&target);
            assert!(inside.is_empty(), "{name} created {inside:?} in the target");
        }
    }
}
