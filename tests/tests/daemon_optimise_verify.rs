//! `nix-store --optimise`, `--verify` and `--verify-path`, including a corrupted and a
//! vanished store path, compared between the real `nix-daemon` and nixnest for the 2.8, 2.26
//! and 2.34 clients (see `common`). Ops: OptimiseStore (34), VerifyStore (35), QueryPathInfo.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

/// Overwrites a store file (read-only, mtime 1) with other contents of the same length, in
/// place: a file that `--optimise` hard-linked changes in `.links` too.
fn corrupt_in_place(file: &Path) {
    let len = std::fs::metadata(file).unwrap().len() as usize;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(file, "X".repeat(len)).unwrap();
    canonical(file);
}

/// Replaces a store file by a new one (a new inode, so `.links` keeps the old contents).
fn corrupt_by_replacing(file: &Path) {
    std::fs::remove_file(file).unwrap();
    std::fs::write(file, "replaced\n").unwrap();
    canonical(file);
}

/// Read-only and mtime 1, as every file in the store.
fn canonical(file: &Path) {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let one = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
    std::fs::File::open(file)
        .unwrap()
        .set_modified(one)
        .unwrap();
}

#[test]
fn optimise_and_verify() {
    compare("optimise and verify", plain_store, |side| {
        let same = "the same contents\n".repeat(300);
        side.store.write("in/one.txt", &same);
        side.store.write("in/two.txt", &same);
        side.store.write("in/tree/a", &same);
        side.store.write("in/tree/b", "something else\n");
        side.store.write("in/unique.txt", "only here\n");
        side.store.write("in/vanishing.txt", "soon gone\n");
        side.start_daemon();

        let added = side
            .step(
                "add files with equal contents",
                side.cmd(
                    "nix-store",
                    [
                        "--add",
                        "in/one.txt",
                        "in/two.txt",
                        "in/tree",
                        "in/unique.txt",
                        "in/vanishing.txt",
                    ],
                ),
            )
            .ok()
            .run();
        let added: Vec<String> = added.lines().map(str::to_owned).collect();
        let [one, two, tree, unique, vanishing] = added.as_slice() else {
            panic!("five paths expected, got {added:?}")
        };

        side.step(
            "--verify --check-contents of a sound store",
            side.cmd("nix-store", ["--verify", "--check-contents"]),
        )
        .ok()
        .run();
        side.step("--optimise", side.cmd("nix-store", ["--optimise"]))
            .ok()
            .run();
        side.snapshot("after --optimise");
        side.step("--optimise again", side.cmd("nix-store", ["--optimise"]))
            .ok()
            .run();
        side.step(
            "--verify-path of sound paths",
            side.cmd("nix-store", ["--verify-path", one, two, tree]),
        )
        .ok()
        .run();

        corrupt_by_replacing(Path::new(unique));
        corrupt_in_place(&Path::new(tree).join("b"));
        side.step(
            "--verify --check-contents finds the corrupted path",
            side.cmd("nix-store", ["--verify", "--check-contents"]),
        )
        .fails()
        .run();
        side.step(
            "--verify-path of the corrupted paths fails",
            side.cmd("nix-store", ["--verify-path", unique, tree, one]),
        )
        .fails()
        .run();
        side.step(
            "--verify without --check-contents",
            side.cmd("nix-store", ["--verify"]),
        )
        .ok()
        .run();
        side.step(
            "--verify --check-contents --repair cannot repair without a substituter",
            side.cmd("nix-store", ["--verify", "--check-contents", "--repair"]),
        )
        .fails()
        .run();

        std::fs::remove_file(vanishing).unwrap();
        side.step(
            "--verify notices a vanished path",
            side.cmd("nix-store", ["--verify"]),
        )
        .ok()
        .run();
        side.step(
            "the vanished path is no longer valid",
            side.cmd(
                "nix-store",
                ["--check-validity", "--print-invalid", vanishing, one],
            ),
        )
        .ok()
        .run();
        side.snapshot("after verifying");
    });
}
