//! Adding to the store and querying it, compared between the real `nix-daemon` and nixnest
//! for the 2.8, 2.26 and 2.34 clients (see `common` for the harness).
//!
//! Ops exercised (worker-protocol.md §10): AddToStore (7, NAR and flat, text with references
//! through the evaluator), AddToStoreNar (39, `--add-fixed`), IsValidPath (1), QueryPathInfo
//! (26), QueryReferrers (6), FindRoots (14), QueryValidPaths (31), QueryPathFromHashPart (29).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

/// Input files: a text file, a binary file, and a tree with a subdirectory, an executable
/// and a symlink.
pub fn write_inputs(side: &Side) {
    side.store.write("in/hello.txt", "hello world\n");
    side.store.write(
        "in/data.bin",
        (0u8..=255).cycle().take(3000).collect::<Vec<u8>>(),
    );
    side.store.write("in/tree/sub/file", "x\n");
    side.store.write("in/tree/exec.sh", "#!/bin/sh\necho hi\n");
    std::os::unix::fs::symlink("file", side.path("in/tree/sub/link")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        side.path("in/tree/exec.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

/// Three text files referring to each other (`c → b → a`, `c → a`), made by the evaluator
/// (AddToStore `text:sha256` with references).
const CLOSURE: &str = r#"
let a = builtins.toFile "a" "leaf\n";
    b = builtins.toFile "b" "b uses ${a}\n";
    c = builtins.toFile "c" "c uses ${b} and ${a}\n";
in c
"#;

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_owned()
}

#[test]
fn add_and_query() {
    compare("add and query", plain_store, |side| {
        write_inputs(side);
        side.start_daemon();
        let root = side.store.root().to_owned();
        let nix_store = |side: &Side| {
            let mut cmd = side.nix().command("nix-store");
            cmd.current_dir(&root);
            cmd
        };

        let added = side
            .step("add a file and a tree", {
                let mut c = nix_store(side);
                c.args(["--add", "in/hello.txt", "in/tree"]);
                c
            })
            .ok()
            .run();
        side.step("add-fixed sha256 (flat), two files", {
            let mut c = nix_store(side);
            c.args(["--add-fixed", "sha256", "in/hello.txt", "in/data.bin"]);
            c
        })
        .ok()
        .run();
        side.step("add-fixed --recursive sha256", {
            let mut c = nix_store(side);
            c.args(["--add-fixed", "--recursive", "sha256", "in/tree"]);
            c
        })
        .ok()
        .run();
        side.step("add-fixed --recursive sha1", {
            let mut c = nix_store(side);
            c.args([
                "--add-fixed",
                "--recursive",
                "sha1",
                "in/tree",
                "in/data.bin",
            ]);
            c
        })
        .ok()
        .run();
        side.step("add again (already valid)", {
            let mut c = nix_store(side);
            c.args(["--add", "in/hello.txt"]);
            c
        })
        .ok()
        .run();
        side.step("nix store add-file", {
            let mut c = side.nix().command("nix");
            c.current_dir(&root).args([
                "store",
                "add-file",
                "in/data.bin",
                "--name",
                "renamed.bin",
            ]);
            c
        })
        .ok()
        .run();
        side.step("nix store add-path", {
            let mut c = side.nix().command("nix");
            c.current_dir(&root).args(["store", "add-path", "in/tree"]);
            c
        })
        .ok()
        .run();

        // A large file: NARs of many frames, hashed while streaming.
        let big: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        side.store.write("in/big.bin", &big);
        let big_paths = side
            .step(
                "add an 8 MiB file",
                side.cmd("nix-store", ["--add", "in/big.bin"]),
            )
            .ok()
            .run();
        side.step(
            "add-fixed sha256 of the 8 MiB file",
            side.cmd("nix-store", ["--add-fixed", "sha256", "in/big.bin"]),
        )
        .ok()
        .run();
        side.step(
            "-q --hash of the 8 MiB file",
            side.cmd("nix-store", ["-q", "--hash", &big_paths]),
        )
        .ok()
        .run();
        side.step(
            "--verify-path of the 8 MiB file",
            side.cmd("nix-store", ["--verify-path", &big_paths]),
        )
        .ok()
        .run();

        // The store lives in the database, not in the daemon: a restarted daemon knows every
        // path, and sees what Nix wrote meanwhile without a daemon (root in local mode).
        side.start_daemon();
        side.store
            .write("in/local.txt", "written without the daemon\n");
        let local = side.prep({
            let mut c = side.local("nix-store");
            c.arg("--add").arg(side.path("in/local.txt"));
            c
        });
        side.step(
            "after a restart and a local-mode add",
            side.cmd(
                "nix-store",
                ["--check-validity", "--print-invalid", &big_paths, &local],
            ),
        )
        .ok()
        .run();
        side.step(
            "-q --hash of the locally added path",
            side.cmd("nix-store", ["-q", "--hash", &local]),
        )
        .ok()
        .run();

        side.store.write("closure.nix", CLOSURE);
        let c = unquote(
            &side
                .step("evaluate a closure of text files", {
                    let mut c = side.nix().command("nix-instantiate");
                    c.current_dir(&root)
                        .args(["--eval", "--read-write-mode", "closure.nix"]);
                    c
                })
                .ok()
                .run(),
        );
        let requisites = side
            .step("-q --requisites", {
                let mut cmd = nix_store(side);
                cmd.args(["-q", "--requisites", &c]);
                cmd
            })
            .ok()
            .run();
        let a = requisites
            .lines()
            .find(|l| l.ends_with("-a"))
            .unwrap_or("")
            .to_owned();
        let b = requisites
            .lines()
            .find(|l| l.ends_with("-b"))
            .unwrap_or("")
            .to_owned();
        for (label, args) in [
            ("-q --references c", vec!["-q", "--references", &c]),
            (
                "-q --references c b a (one connection)",
                vec!["-q", "--references", &c, &b, &a],
            ),
            ("-q --referrers a", vec!["-q", "--referrers", &a]),
            (
                "-q --referrers-closure a",
                vec!["-q", "--referrers-closure", &a],
            ),
            ("-q --tree c", vec!["-q", "--tree", &c]),
            ("-q --graph c", vec!["-q", "--graph", &c]),
            ("-q --deriver c", vec!["-q", "--deriver", &c]),
            ("-q --hash c b a", vec!["-q", "--hash", &c, &b, &a]),
            ("-q --size c b a", vec!["-q", "--size", &c, &b, &a]),
            ("--check-validity", vec!["--check-validity", &c, &b, &a]),
        ] {
            side.step(label, {
                let mut cmd = nix_store(side);
                cmd.args(args);
                cmd
            })
            .ok()
            .run();
        }
        side.step("-q --roots c", side.cmd("nix-store", ["-q", "--roots", &c]))
            .norms(norm::gc())
            .ok()
            .run();
        let first_added = added.lines().next().unwrap_or("").to_owned();
        for (label, args) in [
            ("-q --hash of added paths", vec!["-q", "--hash"]),
            ("-q --size of added paths", vec!["-q", "--size"]),
        ] {
            side.step(label, {
                let mut cmd = nix_store(side);
                cmd.args(args).args(added.lines());
                cmd
            })
            .ok()
            .run();
        }

        // Invalid paths: a well-formed store path that is not in the store.
        let missing = side.store_path("00000000000000000000000000000000-missing");
        side.step("--check-validity --print-invalid", {
            let mut cmd = nix_store(side);
            cmd.args([
                "--check-validity",
                "--print-invalid",
                &missing,
                &first_added,
            ]);
            cmd
        })
        .ok()
        .run();
        side.step("--check-validity of an invalid path fails", {
            let mut cmd = nix_store(side);
            cmd.args(["--check-validity", &missing]);
            cmd
        })
        .fails()
        .run();
        side.step("-q --hash of an invalid path fails", {
            let mut cmd = nix_store(side);
            cmd.args(["-q", "--hash", &missing]);
            cmd
        })
        .fails()
        .run();
        side.step("-q --references of a path outside the store fails", {
            let mut cmd = nix_store(side);
            cmd.args(["-q", "--references", "/etc/passwd"]);
            cmd
        })
        .fails()
        .run();
        side.step("nix path-info of an invalid path fails", {
            let mut cmd = side.nix().command("nix");
            cmd.args(["path-info", &missing]);
            cmd
        })
        .fails()
        .run();
        side.snapshot("after adding");
    });
}
