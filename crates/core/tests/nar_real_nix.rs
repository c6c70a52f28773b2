//! Our NARs against the real Nix client: for hundreds of generated trees on disk, the bytes
//! of `dump_path` equal `nix-store --dump PATH` and our `narHash` equals
//! `nix-hash --type sha256 PATH`; `nix-store --restore` accepts our NARs and we accept
//! its dumps. Skips (with a message) when `nix-store` or `nix-hash` is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod nar_support;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nar_support::{Tree, hex, materialise, tree};
use nixnest_core::nar::{MAX_DEPTH, NarHasher, dump_path, nar_hash_and_size, restore};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

fn nix_available() -> bool {
    let works = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = works("nix-store") && works("nix-hash");
    if !ok {
        eprintln!("skipping: nix-store / nix-hash not installed");
    }
    ok
}

fn nix_dump(path: &Path) -> Vec<u8> {
    let out = Command::new("nix-store")
        .arg("--dump")
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "nix-store --dump {}", path.display());
    out.stdout
}

/// `nix-hash --type sha256` of many paths at once (one process per batch).
fn nix_hashes(paths: &[PathBuf]) -> Vec<String> {
    let mut hashes = Vec::new();
    for batch in paths.chunks(64) {
        let out = Command::new("nix-hash")
            .args(["--type", "sha256"])
            .args(batch)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nix-hash: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        hashes.extend(text.lines().map(str::to_owned));
    }
    assert_eq!(hashes.len(), paths.len());
    hashes
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Hand-picked trees for the corners random generation may miss.
fn special_trees() -> Vec<Tree> {
    let file = |executable, contents: Vec<u8>| Tree::File {
        executable,
        contents,
    };
    let dir = |entries: Vec<(Vec<u8>, Tree)>| Tree::Dir(entries.into_iter().collect());
    let mut trees = vec![
        file(false, b"hello world\n".to_vec()),
        file(true, Vec::new()),
        file(false, Vec::new()),
        Tree::Symlink(b"/nix/store/dangling".to_vec()),
        Tree::Symlink(vec![b'x'; 4095]),
        Tree::Dir(BTreeMap::new()),
    ];
    // Sizes around the padding and chunk boundaries.
    let mut sizes = Vec::new();
    for size in (0..=17).chain([4095, 4096, 4097, 65535, 65536, 65537, 200_003]) {
        let contents = (0..size).map(|i| (i * 7 + size) as u8).collect();
        sizes.push((
            format!("f{size:06}").into_bytes(),
            file(size % 2 == 0, contents),
        ));
    }
    trees.push(dir(sizes));
    // Byte order of odd names: case, punctuation, UTF-8, invalid UTF-8, control bytes.
    let names: Vec<&[u8]> = vec![
        b"a",
        b"A",
        b"_",
        b"Z",
        b"z",
        b"a b",
        b"ab",
        b"a.b",
        b"aa",
        b"a-",
        b"0",
        b"~",
        "é".as_bytes(),
        "e\u{301}".as_bytes(),
        "日本".as_bytes(),
        b"\xff",
        b"\xfe\xff",
        b"\x01",
        b"\x7f",
        b"new\nline",
        b"tab\t",
        b" ",
        b"...",
        b".hidden",
        b"-rf",
        b"~nix~case~hack~1",
        &[b'L'; 255],
    ];
    trees.push(dir(names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n.to_vec(), file(i % 3 == 0, n.to_vec())))
        .collect()));
    // The deepest tree a NAR may hold: MAX_DEPTH nodes.
    let mut deep = file(true, b"bottom".to_vec());
    for i in 1..MAX_DEPTH {
        deep = dir(vec![
            (format!("level{i}").into_bytes(), deep),
            (b"sibling".to_vec(), Tree::Symlink(b"..".to_vec())),
        ]);
    }
    trees.push(deep);
    trees
}

#[test]
fn our_nars_equal_nix_store_dump_and_nix_hash() {
    if !nix_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut runner = TestRunner::deterministic();
    let strategy = tree(6);
    let mut trees = special_trees();
    while trees.len() < 240 {
        trees.push(strategy.new_tree(&mut runner).unwrap().current());
    }

    let mut paths = Vec::new();
    let mut ours = Vec::new();
    for (i, t) in trees.iter().enumerate() {
        let path = tmp.path().join(format!("t{i}"));
        materialise(t, &path);
        let mut nar = Vec::new();
        dump_path(&path, &mut nar).unwrap();
        let theirs = nix_dump(&path);
        assert!(
            nar == theirs,
            "tree {i}: our NAR ({} bytes) differs from nix-store --dump ({} bytes) at byte {}",
            nar.len(),
            theirs.len(),
            first_difference(&nar, &theirs)
        );
        paths.push(path);
        ours.push(nar);
    }

    let hashes = nix_hashes(&paths);
    for (i, (path, theirs)) in paths.iter().zip(&hashes).enumerate() {
        let ours = nar_hash_and_size(path).unwrap();
        assert_eq!(&hex(&ours.sha256), theirs, "tree {i}");
    }

    // Cross-restores on a sample: nix-store --restore takes our NAR, and our restore of a
    // nix dump dumps back to the same bytes.
    for (i, nar) in ours.iter().enumerate().step_by(8) {
        let nix_restored = tmp.path().join(format!("nix-restored{i}"));
        let mut child = Command::new("nix-store")
            .arg("--restore")
            .arg(&nix_restored)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(nar).unwrap();
        assert!(
            child.wait().unwrap().success(),
            "nix-store --restore of tree {i}"
        );
        assert_eq!(&nix_dump(&nix_restored), nar, "tree {i} restored by nix");

        let ours_restored = tmp.path().join(format!("ours-restored{i}"));
        restore(nar.as_slice(), &ours_restored).unwrap();
        assert_eq!(&nix_dump(&ours_restored), nar, "tree {i} restored by us");
    }

    // Make sure the generated set really covers what it claims to.
    let mut stats = Stats::default();
    trees.iter().for_each(|t| stats.count(t, 1));
    assert!(stats.executables > 20 && stats.plain > 20, "{stats:?}");
    assert!(stats.symlinks > 20 && stats.empty_dirs > 10, "{stats:?}");
    assert!(
        stats.non_ascii_names > 20 && stats.max_depth >= MAX_DEPTH,
        "{stats:?}"
    );
}

#[derive(Debug, Default)]
struct Stats {
    executables: usize,
    plain: usize,
    symlinks: usize,
    empty_dirs: usize,
    non_ascii_names: usize,
    max_depth: usize,
}

impl Stats {
    fn count(&mut self, tree: &Tree, depth: usize) {
        self.max_depth = self.max_depth.max(depth);
        match tree {
            Tree::File {
                executable: true, ..
            } => self.executables += 1,
            Tree::File { .. } => self.plain += 1,
            Tree::Symlink(_) => self.symlinks += 1,
            Tree::Dir(entries) if entries.is_empty() => self.empty_dirs += 1,
            Tree::Dir(entries) => {
                for (name, child) in entries {
                    if !name.is_ascii() {
                        self.non_ascii_names += 1;
                    }
                    self.count(child, depth + 1);
                }
            }
        }
    }
}

#[test]
fn permission_bits_other_than_owner_execute_are_ignored_like_nix() {
    if !nix_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("modes");
    fs::create_dir(&root).unwrap();
    for mode in [
        0o600, 0o644, 0o700, 0o744, 0o611, 0o655, 0o100, 0o4755, 0o2711, 0o1777,
    ] {
        let path = root.join(format!("m{mode:o}"));
        fs::write(&path, format!("{mode:o}")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    let sub = root.join("readonly-dir");
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o555)).unwrap();
    let mut nar = Vec::new();
    dump_path(&root, &mut nar).unwrap();
    assert_eq!(nar, nix_dump(&root));
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A 100 MiB file, dumped by us and by Nix, compared by hash without holding it in memory.
#[test]
fn hundred_mib_file_matches_nix() {
    if !nix_available() {
        return;
    }
    const SIZE: usize = 100 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("big");
    fs::create_dir(&root).unwrap();
    let big = root.join("blob");
    {
        let mut file = fs::File::create(&big).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        for i in 0..SIZE / chunk.len() {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = (i * 131 + j * 7 + j / 251) as u8;
            }
            file.write_all(&chunk).unwrap();
        }
    }
    fs::set_permissions(&big, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("small"), b"next to a big file").unwrap();

    let ours = nar_hash_and_size(&root).unwrap();
    assert!(ours.size > SIZE as u64);

    let mut child = Command::new("nix-store")
        .arg("--dump")
        .arg(&root)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut theirs = NarHasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        theirs.update(&buf[..n]);
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(ours, theirs.finish());
    assert_eq!(nix_hashes(&[root])[0], hex(&ours.sha256));
}
