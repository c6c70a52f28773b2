//! `nix store ping` / `nix store info`, and build logs (`nix log`, `nix-store -l`,
//! `nix store copy-log`), compared between the real `nix-daemon` and nixnest for the 2.8, 2.26
//! and 2.34 clients (see `common`).
//!
//! Clients read logs from the log dir themselves (worker-protocol.md §0.3); the daemon's part
//! is QueryPathInfo (the deriver of an output) and AddBuildLog (45), which must write the log
//! where clients look for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

use common::fixture::build_closure;
use common::*;
use nixnest_testkit::{Client, RunExt};

/// The log dir's files by name, with their text (`.bz2` decompressed: compressors may
/// differ in their bytes, not in what a client reads).
fn logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    for file in files {
        let rel = file.strip_prefix(dir).unwrap().display().to_string();
        let text = if rel.ends_with(".bz2") {
            let out = Command::new("bzip2").arg("-dc").arg(&file).run_output();
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            let mut s = String::new();
            std::fs::File::open(&file)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            s
        };
        out.push_str(&format!("--- {rel}\n{text}"));
    }
    out
}

#[test]
fn store_info_and_logs() {
    compare("store info and logs", plain_store, |side| {
        let closure = build_closure(side);
        side.start_daemon();

        side.step("nix store ping", side.cmd("nix", ["store", "ping"]))
            .norm(Norm::DaemonVersion)
            .ok()
            .run();
        if side.client != Client::Host {
            side.step("nix store info", side.cmd("nix", ["store", "info"]))
                .norm(Norm::DaemonVersion)
                .ok()
                .run();
            side.step(
                "nix store info --json",
                side.cmd("nix", ["store", "info", "--json"]),
            )
            .norm(Norm::DaemonVersion)
            .ok()
            .run();
        }

        for (label, program, args) in [
            (
                "nix log <drv>",
                "nix",
                vec!["log", closure.app_drv.as_str()],
            ),
            ("nix log <output>", "nix", vec!["log", closure.app.as_str()]),
            (
                "nix-store -l <drv>",
                "nix-store",
                vec!["-l", closure.dep_drv.as_str()],
            ),
            (
                "nix-store --read-log <output>",
                "nix-store",
                vec!["--read-log", closure.dep.as_str()],
            ),
        ] {
            side.step(label, side.cmd(program, args)).ok().run();
        }
        side.step(
            "nix log of a path without a log fails",
            side.cmd("nix", ["log", &closure.bb]),
        )
        .fails()
        .run();

        // Move app's log into a binary cache (made by the host client without a daemon),
        // then have the client under test copy it to the daemon.
        let cache = format!("file://{}", side.path("logcache").display());
        side.prep({
            let mut c = side.local("nix");
            c.args([
                "store",
                "copy-log",
                "--from",
                "local",
                "--to",
                &cache,
                &closure.app_drv,
            ]);
            c
        });
        let base = Path::new(&closure.app_drv)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let log_file = side
            .store
            .log_dir()
            .join("drvs")
            .join(&base[..2])
            .join(format!("{}.bz2", &base[2..]));
        std::fs::remove_file(&log_file)
            .unwrap_or_else(|e| panic!("removing {}: {e}", log_file.display()));
        side.step(
            "nix log after removing the log fails",
            side.cmd("nix", ["log", &closure.app_drv]),
        )
        .fails()
        .run();
        let uri = side.daemon().uri();
        side.step(
            "nix store copy-log --to the daemon",
            side.cmd(
                "nix",
                [
                    "store",
                    "copy-log",
                    "--from",
                    &cache,
                    "--to",
                    &uri,
                    &closure.app_drv,
                ],
            ),
        )
        .ok()
        .run();
        side.step(
            "nix log reads the copied log",
            side.cmd("nix", ["log", &closure.app_drv]),
        )
        .ok()
        .run();
        side.observe("the log dir", logs(&side.store.log_dir()));
    });
}
