//! The restorer's security property (a NAR never writes outside its target), the
//! permissions it creates, metadata canonicalisation, and what `dump_path` refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nar_support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nar_support::{Tree, encode, list_tree, make_writable, materialise, toks};
use nixnest_core::nar::{
    MAX_DEPTH, Malformation, NarError, canonicalise_path_metadata, dump_path, restore,
};

/// A temporary directory holding `sandbox/` (where targets go) and `outside/` (which must
/// stay exactly as it was).
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("sandbox")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/precious"), b"keep me").unwrap();
        Fixture { tmp }
    }

    fn target(&self) -> std::path::PathBuf {
        self.tmp.path().join("sandbox/out")
    }

    fn outside(&self) -> std::path::PathBuf {
        self.tmp.path().join("outside")
    }

    /// Nothing was created or changed outside `sandbox/out`.
    fn assert_contained(&self, what: &str) {
        let all = list_tree(self.tmp.path());
        for path in &all {
            let ok = path.starts_with("sandbox/out")
                || path == Path::new("sandbox")
                || path == Path::new("outside")
                || path == Path::new("outside/precious");
            assert!(ok, "{what}: created {}", path.display());
        }
        assert_eq!(
            fs::read(self.outside().join("precious")).unwrap(),
            b"keep me",
            "{what}"
        );
    }
}

/// A directory NAR with the given raw entries: (name, node tokens).
fn dir_nar(entries: &[(&[u8], Vec<&[u8]>)]) -> Vec<u8> {
    let mut tokens: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    for (name, node) in entries {
        tokens.extend([&b"entry"[..], b"(", b"name", name, b"node"]);
        tokens.extend(node.iter().copied());
        tokens.push(b")");
    }
    tokens.push(b")");
    toks(&tokens)
}

fn file_node(contents: &[u8]) -> Vec<&[u8]> {
    vec![b"(", b"type", b"regular", b"contents", contents, b")"]
}

fn symlink_node(target: &[u8]) -> Vec<&[u8]> {
    vec![b"(", b"type", b"symlink", b"target", target, b")"]
}

#[test]
fn hostile_entry_names_never_escape() {
    let f = Fixture::new();
    let outside = f.outside().into_os_string().into_encoded_bytes();
    let up = b"../../outside/pwned".to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", dir_nar(&[(b"..", file_node(b"pwned"))])),
        ("dot", dir_nar(&[(b".", file_node(b"pwned"))])),
        ("relative climb", dir_nar(&[(&up, file_node(b"pwned"))])),
        ("absolute", dir_nar(&[(&outside, file_node(b"pwned"))])),
        ("slash", dir_nar(&[(b"a/b", file_node(b"pwned"))])),
        (
            // A symlink to the outside, then an entry of the same name as a directory
            // with a file in it: rejected as a duplicate before anything is written.
            "through a symlink (duplicate name)",
            dir_nar(&[
                (b"link", symlink_node(&outside)),
                (b"link", {
                    let mut node: Vec<&[u8]> = vec![b"(", b"type", b"directory"];
                    node.extend([&b"entry"[..], b"(", b"name", b"precious", b"node"]);
                    node.extend(file_node(b"pwned"));
                    node.extend([&b")"[..], b")"]);
                    node
                }),
            ]),
        ),
        (
            "duplicate file over a symlink",
            dir_nar(&[
                (b"link", symlink_node(b"../../outside/precious")),
                (b"link", file_node(b"pwned")),
            ]),
        ),
        (
            "unsorted",
            dir_nar(&[
                (b"b", symlink_node(b"../../outside")),
                (b"a", file_node(b"x")),
            ]),
        ),
    ];
    for (what, nar) in cases {
        let result = restore(nar.as_slice(), &f.target());
        let err = result.expect_err(what);
        assert!(err.malformation().is_some(), "{what}: {err}");
        f.assert_contained(what);
        // Only entries before the bad one exist.
        let inside = list_tree(&f.target());
        assert!(inside.len() <= 1, "{what}: {inside:?}");
        fs::remove_dir_all(f.target()).unwrap();
    }
}

#[test]
fn symlinks_are_created_not_followed() {
    let f = Fixture::new();
    // A symlink pointing outside, then other entries: all land inside the target, and the
    // symlink itself is just a symlink.
    let outside = f
        .outside()
        .join("precious")
        .into_os_string()
        .into_encoded_bytes();
    let nar = dir_nar(&[
        (b"a-link", symlink_node(&outside)),
        (b"b", file_node(b"inside")),
        (b"c-dir-link", symlink_node(b"../../outside")),
    ]);
    restore(nar.as_slice(), &f.target()).unwrap();
    f.assert_contained("symlink entries");
    let target = f.target();
    assert!(
        fs::symlink_metadata(target.join("a-link"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(target.join("a-link"))
            .unwrap()
            .as_os_str()
            .as_encoded_bytes(),
        outside
    );
    assert_eq!(fs::read(target.join("b")).unwrap(), b"inside");

    // Canonicalising must not touch what the symlinks point to.
    let before = fs::metadata(f.outside().join("precious")).unwrap();
    canonicalise_path_metadata(&target).unwrap();
    let after = fs::metadata(f.outside().join("precious")).unwrap();
    assert_eq!(before.mode(), after.mode());
    assert_eq!(before.mtime(), after.mtime());
    make_writable(&target);
}

#[test]
fn an_existing_target_is_never_written_through() {
    let f = Fixture::new();
    let nar = encode(&Tree::File {
        executable: false,
        contents: b"pwned".to_vec(),
    });
    let dir_nar = encode(&Tree::Dir(Default::default()));

    // Target is a symlink to a file outside.
    std::os::unix::fs::symlink(f.outside().join("precious"), f.target()).unwrap();
    for nar in [&nar, &dir_nar] {
        let err = restore(nar.as_slice(), &f.target()).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
    }
    fs::remove_file(f.target()).unwrap();

    // Target is a symlink to the outside directory.
    std::os::unix::fs::symlink(f.outside(), f.target()).unwrap();
    for nar in [&nar, &dir_nar] {
        assert!(restore(nar.as_slice(), &f.target()).is_err());
    }
    fs::remove_file(f.target()).unwrap();

    // Target is an existing directory or file.
    fs::create_dir(f.target()).unwrap();
    assert!(restore(nar.as_slice(), &f.target()).is_err());
    fs::remove_dir(f.target()).unwrap();
    fs::write(f.target(), b"old").unwrap();
    assert!(restore(dir_nar.as_slice(), &f.target()).is_err());
    assert_eq!(fs::read(f.target()).unwrap(), b"old");
    fs::remove_file(f.target()).unwrap();

    f.assert_contained("existing target");

    // Targets that are not a name.
    for bad in ["/", "..", "sandbox/.."] {
        let err = restore(nar.as_slice(), Path::new(bad)).unwrap_err();
        assert!(matches!(err, NarError::BadTarget { .. }), "{bad}: {err}");
    }
}

#[test]
fn restore_creates_owner_writable_objects_and_canonicalise_freezes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut sub = std::collections::BTreeMap::new();
    sub.insert(
        b"tool".to_vec(),
        Tree::File {
            executable: true,
            contents: b"#!/bin/sh\n".to_vec(),
        },
    );
    let mut top = std::collections::BTreeMap::new();
    top.insert(
        b"data".to_vec(),
        Tree::File {
            executable: false,
            contents: b"d".to_vec(),
        },
    );
    top.insert(b"link".to_vec(), Tree::Symlink(b"data".to_vec()));
    top.insert(b"bin".to_vec(), Tree::Dir(sub));
    top.insert(b"empty".to_vec(), Tree::Dir(Default::default()));
    let tree = Tree::Dir(top);
    materialise(&tree, &src);
    let mut nar = Vec::new();
    dump_path(&src, &mut nar).unwrap();

    let out = tmp.path().join("out");
    restore(nar.as_slice(), &out).unwrap();
    let mode = |p: &str| fs::symlink_metadata(out.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode(""), 0o755);
    assert_eq!(mode("bin"), 0o755);
    assert_eq!(mode("empty"), 0o755);
    assert_eq!(mode("bin/tool"), 0o755);
    assert_eq!(mode("data"), 0o644);

    canonicalise_path_metadata(&out).unwrap();
    assert_eq!(mode(""), 0o555);
    assert_eq!(mode("bin"), 0o555);
    assert_eq!(mode("empty"), 0o555);
    assert_eq!(mode("bin/tool"), 0o555);
    assert_eq!(mode("data"), 0o444);
    for p in ["", "bin", "empty", "bin/tool", "data", "link"] {
        let meta = fs::symlink_metadata(out.join(p)).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1, 0), "mtime of '{p}'");
    }
    // The link's target file was canonicalised as itself, not through the link: its
    // mode is 0444 either way, so check the link is still a link.
    assert!(fs::symlink_metadata(out.join("link")).unwrap().is_symlink());

    // Canonicalisation does not change the NAR.
    let mut again = Vec::new();
    dump_path(&out, &mut again).unwrap();
    assert_eq!(again, nar);
    make_writable(&out);
}

#[test]
fn dump_refuses_other_file_types_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tree");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("ok"), b"").unwrap();
    let fifo = dir.join("pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let err = dump_path(&dir, std::io::sink()).unwrap_err();
    match &err {
        NarError::UnsupportedType { path, kind } => {
            assert_eq!(path, &fifo);
            assert_eq!(*kind, "FIFO");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("has an unsupported type"), "{err}");
    let err = canonicalise_path_metadata(&dir).unwrap_err();
    assert!(matches!(err, NarError::UnsupportedType { .. }), "{err}");
    fs::remove_file(&fifo).unwrap();

    let sock = dir.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = dump_path(&sock, std::io::sink()).unwrap_err();
    assert!(
        matches!(err, NarError::UnsupportedType { kind: "socket", .. }),
        "{err}"
    );

    let err = dump_path(&tmp.path().join("missing"), std::io::sink()).unwrap_err();
    assert!(matches!(err, NarError::Fs { .. }), "{err}");
}

#[test]
fn dump_and_restore_respect_the_depth_limit() {
    let tmp = tempfile::tempdir().unwrap();
    // MAX_DEPTH nodes: the root plus MAX_DEPTH - 1 nested directories.
    let root = tmp.path().join("deep");
    let mut path = root.clone();
    fs::create_dir(&path).unwrap();
    for _ in 1..MAX_DEPTH {
        path.push("d");
        fs::create_dir(&path).unwrap();
    }
    let mut nar = Vec::new();
    dump_path(&root, &mut nar).unwrap();
    restore(nar.as_slice(), &tmp.path().join("restored")).unwrap();

    path.push("one-too-many");
    fs::write(&path, b"").unwrap();
    match dump_path(&root, std::io::sink()) {
        Err(NarError::TooDeep { path: p }) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
    let err = canonicalise_path_metadata(&root).unwrap_err();
    assert!(matches!(err, NarError::TooDeep { .. }), "{err}");
}

#[test]
fn restore_reports_format_errors_with_their_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let nar = dir_nar(&[(b"a", symlink_node(b""))]);
    let err = restore(nar.as_slice(), &tmp.path().join("x")).unwrap_err();
    assert!(
        matches!(
            err.malformation(),
            Some(Malformation::InvalidSymlinkTarget { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("'/a'"), "{err}");
}
