//! `nix path-info` and `nix copy` to and from a binary cache, compared between the real
//! `nix-daemon` and nixnest for the 2.8, 2.26 and 2.34 clients (see `common`).
//!
//! Ops exercised (worker-protocol.md §10): QueryMissing (40), QueryPathInfo (26),
//! QueryAllValidPaths (23), BuildPathsWithResults (46) on valid paths, QueryValidPaths (31),
//! AddMultipleToStore (44) / AddToStoreNar (39) with and without signature checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::fixture::build_closure;
use common::snapshot::tree;
use common::*;
use nixnest_core::Hash;

/// The files of a binary cache: the listing, then the text of every `.narinfo` and
/// `nix-cache-info`, and the SHA-256 of everything else.
fn cache_contents(dir: &Path) -> String {
    let mut out = tree(dir, false, &|_| false);
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    for file in files {
        let rel = file.strip_prefix(dir).unwrap().display().to_string();
        let bytes = std::fs::read(&file).unwrap();
        if rel.ends_with(".narinfo") || rel == "nix-cache-info" {
            out.push_str(&format!("--- {rel}\n{}", String::from_utf8_lossy(&bytes)));
        } else {
            out.push_str(&format!(
                "--- {rel}: sha256 {}\n",
                Hash::sha256(&bytes).to_base16()
            ));
        }
    }
    out
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn path_info_and_copy() {
    compare("path-info and copy", plain_store, |side| {
        let closure = build_closure(side);
        side.store.write("in/hello.txt", "hello world\n");
        side.start_daemon();
        let app = closure.app.clone();
        let hello = side
            .step(
                "add a file",
                side.cmd("nix-store", ["--add", "in/hello.txt"]),
            )
            .ok()
            .run();

        side.step(
            "path-info -r -s -S --json",
            side.cmd("nix", ["path-info", "-r", "-s", "-S", "--json", &app]),
        )
        .norm(Norm::RegistrationTime)
        .ok()
        .run();
        side.step(
            "path-info -r -s -S (text)",
            side.cmd("nix", ["path-info", "-r", "-s", "-S", &app, &hello]),
        )
        .ok()
        .run();
        side.step(
            "path-info --sigs",
            side.cmd("nix", ["path-info", "--sigs", &app, &hello]),
        )
        .ok()
        .run();
        side.step("path-info --all", side.cmd("nix", ["path-info", "--all"]))
            .ok()
            .run();
        side.step(
            "path-info --json of a .drv",
            side.cmd("nix", ["path-info", "--json", &closure.app_drv]),
        )
        .norm(Norm::RegistrationTime)
        .ok()
        .run();

        let cache = side.path("cache");
        let cache_url = format!("file://{}", cache.display());
        side.step(
            "copy --to file://",
            side.cmd("nix", ["copy", "--to", &cache_url, &app, &hello]),
        )
        .norms(norm::copy())
        .ok()
        .run();
        side.observe("the binary cache", cache_contents(&cache));

        side.step(
            "--delete what was copied",
            side.cmd("nix-store", ["--delete", &app, &closure.dep, &hello]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        let uri = side.daemon().uri();
        side.step(
            "copy --from file:// of unsigned paths fails",
            side.cmd("nix", ["copy", "--from", &cache_url, "--to", &uri, &app]),
        )
        .norms(norm::copy())
        .fails()
        .run();
        side.step(
            "nothing was added by the refused copy",
            side.cmd(
                "nix-store",
                ["--check-validity", "--print-invalid", &app, &closure.dep],
            ),
        )
        .ok()
        .run();
        side.step(
            "copy --from file:// --no-check-sigs",
            side.cmd(
                "nix",
                [
                    "copy",
                    "--from",
                    &cache_url,
                    "--to",
                    &uri,
                    "--no-check-sigs",
                    &app,
                    &hello,
                ],
            ),
        )
        .norms(norm::copy())
        .ok()
        .run();
        side.step(
            "path-info -r --json after the copy",
            side.cmd("nix", ["path-info", "-r", "--json", &app, &hello]),
        )
        .norm(Norm::RegistrationTime)
        .ok()
        .run();
        side.step(
            "copy again (all valid)",
            side.cmd(
                "nix",
                [
                    "copy",
                    "--from",
                    &cache_url,
                    "--to",
                    &uri,
                    "--no-check-sigs",
                    &app,
                ],
            ),
        )
        .norms(norm::copy())
        .ok()
        .run();
        side.snapshot("after copying back");
    });
}
