//! Helpers shared by the `nar_*` integration tests: an in-memory file tree model, its NAR
//! encoding and decoding, materialising it on disk, and proptest strategies for it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nixnest_core::nar::{NarError, NarEvent, NarReader, NarWriter};
use proptest::prelude::*;

/// A file-system object as NAR sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tree {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Tree>),
}

/// One NAR token: length word, bytes, zero padding.
pub fn tok(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out.resize(out.len().div_ceil(8) * 8, 0);
    out
}

/// Concatenated tokens, for hand-built (possibly malicious) archives.
pub fn toks(tokens: &[&[u8]]) -> Vec<u8> {
    tokens.iter().flat_map(|t| tok(t)).collect()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encode with our writer.
pub fn encode(tree: &Tree) -> Vec<u8> {
    fn go(w: &mut NarWriter<Vec<u8>>, tree: &Tree) {
        match tree {
            Tree::File {
                executable,
                contents,
            } => w
                .regular(*executable, contents.len() as u64, contents.as_slice())
                .unwrap(),
            Tree::Symlink(target) => w.symlink(target).unwrap(),
            Tree::Dir(entries) => {
                w.directory().unwrap();
                for (name, child) in entries {
                    w.entry(name).unwrap();
                    go(w, child);
                }
                w.end().unwrap();
            }
        }
    }
    let mut w = NarWriter::new(Vec::new()).unwrap();
    go(&mut w, tree);
    w.finish().unwrap()
}

/// Decode with our reader; returns the tree and the number of bytes consumed.
pub fn decode(input: impl Read) -> Result<(Tree, u64), NarError> {
    let mut reader = NarReader::new(input);
    // Stack of (directory being built, name of the entry whose node comes next).
    type Building = (BTreeMap<Vec<u8>, Tree>, Option<Vec<u8>>);
    let mut stack: Vec<Building> = Vec::new();
    let mut root = None;
    while let Some(event) = reader.next()? {
        let done = match event {
            NarEvent::Directory => {
                stack.push((BTreeMap::new(), None));
                None
            }
            NarEvent::Entry { name } => {
                stack.last_mut().unwrap().1 = Some(name);
                None
            }
            NarEvent::Regular { executable, size } => {
                let mut contents = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = reader.read_contents(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    contents.extend_from_slice(&buf[..n]);
                }
                assert_eq!(contents.len() as u64, size);
                Some(Tree::File {
                    executable,
                    contents,
                })
            }
            NarEvent::Symlink { target } => Some(Tree::Symlink(target)),
            NarEvent::End => Some(Tree::Dir(stack.pop().unwrap().0)),
        };
        if let Some(node) = done {
            match stack.last_mut() {
                Some((entries, name)) => {
                    entries.insert(name.take().unwrap(), node);
                }
                None => root = Some(node),
            }
        }
    }
    Ok((root.unwrap(), reader.position()))
}

/// Create `tree` at `path` (which must not exist).
pub fn materialise(tree: &Tree, path: &Path) {
    match tree {
        Tree::File {
            executable,
            contents,
        } => {
            fs::write(path, contents).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        Tree::Symlink(target) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path).unwrap();
        }
        Tree::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (name, child) in entries {
                materialise(child, &path.join(OsStr::from_bytes(name)));
            }
        }
    }
}

/// Make everything under `path` writable again so a `TempDir` can delete it after a test
/// canonicalised it (only matters when the tests do not run as root).
pub fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                make_writable(&entry.path());
            }
        }
    } else if meta.is_file() {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o644));
    }
}

/// Every path below `root` (not following symlinks), relative to it, sorted.
pub fn list_tree(root: &Path) -> Vec<PathBuf> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                go(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, root, &mut out);
    out.sort();
    out
}

/// Where upstream's golden data lives, or `None` (with a message) if it is absent.
pub fn vectors_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("NIXNEST_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
    };
    let nars = base.join("nix/libutil/nars");
    if nars.is_dir() {
        Some(nars)
    } else {
        eprintln!(
            "skipping: upstream NAR vectors not found at {} (set NIXNEST_VECTORS)",
            nars.display()
        );
        None
    }
}

// ---- proptest strategies ------------------------------------------------------------

/// Entry names: plain, unicode, odd ASCII, non-UTF-8 bytes, case variants, long.
pub fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[a-zA-Z0-9_.-]{1,12}".prop_map(String::into_bytes),
        2 => "[^/\u{0}]{1,16}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..24),
        1 => prop::sample::select(vec![
            "README", "readme", "ReadMe", " ", "  leading", "trailing ", "new\nline", "tab\there",
            "-", "--", "...", ".hidden", "a\\b", "*", "?", "'quote\"", "~nix~case~hack~1",
            "日本語", "ÅÄÖ", "e\u{301}", "\u{1F600}", "\u{7f}", "\u{1b}[31m",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => (200usize..=255).prop_map(|n| vec![b'L'; n]),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

/// Symlink targets: relative, absolute, dangling, odd bytes, up to the 4095-byte limit.
pub fn target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[a-z./]{1,40}".prop_map(String::into_bytes),
        1 => "[^\u{0}]{1,30}".prop_map(String::into_bytes),
        1 => prop::collection::vec(1u8..=255, 1..64),
        1 => prop::sample::select(vec!["/", ".", "..", "../../../../etc/passwd", "/nix/store/x"])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => (4000usize..=4095).prop_map(|n| vec![b'x'; n]),
    ]
}

pub fn contents() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop::collection::vec(any::<u8>(), 0..70_000),
    ]
}

pub fn leaf() -> impl Strategy<Value = Tree> {
    prop_oneof![
        4 => (any::<bool>(), contents()).prop_map(|(executable, contents)| Tree::File {
            executable,
            contents
        }),
        2 => target().prop_map(Tree::Symlink),
        1 => Just(Tree::Dir(BTreeMap::new())),
    ]
}

/// Random trees, nesting up to `depth` directories.
pub fn tree(depth: u32) -> impl Strategy<Value = Tree> {
    leaf().prop_recursive(depth, 64, 6, |inner| {
        prop::collection::btree_map(name(), inner, 0..6).prop_map(Tree::Dir)
    })
}
