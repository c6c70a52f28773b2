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
use nixnest_testkit::{RunExt, TestStore};

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

/// A signing key pair made by the host's `nix key`: (secret, public).
fn key_pair(name: &str) -> (String, String) {
    let store = TestStore::new();
    let secret = store
        .nix("nix")
        .args(["key", "generate-secret", "--key-name", name])
        .run();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("nix --extra-experimental-features nix-command key convert-secret-to-public")
        .env("NIX_CONF_DIR", store.conf_dir())
        .run_with_input(secret.as_bytes());
    (
        secret,
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}

/// Signatures: `nix store sign` (AddSignatures 37), and copies into the daemon that the daemon
/// accepts only when signed by a key in its `trusted-public-keys` (AddMultipleToStore /
/// AddToStoreNar with signature checks on).
#[test]
fn signed_copies() {
    let (trusted_secret, trusted_public) = key_pair("test-trusted-1");
    let (other_secret, _) = key_pair("test-other-1");
    let store =
        move |_| TestStore::builder().conf(format!("trusted-public-keys = {trusted_public}"));
    compare("signatures", store, |side| {
        let closure = build_closure(side);
        side.store.write("keys/trusted", &trusted_secret);
        side.store.write("keys/other", &other_secret);
        side.start_daemon();
        let (app, dep) = (closure.app.as_str(), closure.dep.as_str());
        let uri = side.daemon().uri();
        for (key, cache) in [("trusted", "signed-cache"), ("other", "other-cache")] {
            let cache_url = format!("file://{}", side.path(cache).display());
            side.step(
                format!("nix store sign with the {key} key"),
                side.cmd(
                    "nix",
                    [
                        "store",
                        "sign",
                        "--key-file",
                        &format!("keys/{key}"),
                        "-r",
                        app,
                    ],
                ),
            )
            .ok()
            .run();
            side.step(
                format!("path-info --sigs after signing with the {key} key"),
                side.cmd("nix", ["path-info", "--sigs", "-r", app]),
            )
            .ok()
            .run();
            side.step(
                format!("copy --to the {cache}"),
                side.cmd("nix", ["copy", "--to", &cache_url, app]),
            )
            .norms(norm::copy())
            .ok()
            .run();
        }
        side.observe(
            "the cache signed with the trusted key",
            cache_contents(&side.path("signed-cache")),
        );

        // Remove the signatures the store has, then the paths.
        side.step(
            "--delete the signed paths",
            side.cmd("nix-store", ["--delete", app, dep]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        let other_url = format!("file://{}", side.path("other-cache").display());
        // The other cache's narinfos carry both signatures; strip the trusted one so only the
        // untrusted key vouches for the paths.
        strip_signatures(&side.path("other-cache"), "test-trusted-1:");
        side.step(
            "copy --from a cache signed by an untrusted key fails",
            side.cmd("nix", ["copy", "--from", &other_url, "--to", &uri, app]),
        )
        .norms(norm::copy())
        .fails()
        .run();
        let signed_url = format!("file://{}", side.path("signed-cache").display());
        side.step(
            "copy --from a cache signed by the trusted key",
            side.cmd("nix", ["copy", "--from", &signed_url, "--to", &uri, app]),
        )
        .norms(norm::copy())
        .ok()
        .run();
        side.step(
            "path-info --sigs of the copied paths",
            side.cmd("nix", ["path-info", "--sigs", "-r", app]),
        )
        .ok()
        .run();
        side.snapshot("after the signed copy");
    });
}

/// Removes `Sig:` lines starting with `prefix` from every `.narinfo` in `cache`.
fn strip_signatures(cache: &Path, prefix: &str) {
    for entry in std::fs::read_dir(cache).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let text = std::fs::read_to_string(&path).unwrap();
            let kept: String = text
                .lines()
                .filter(|l| !l.starts_with(&format!("Sig: {prefix}")))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&path, kept).unwrap();
        }
    }
}
