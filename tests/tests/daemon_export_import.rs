//! `nix-store --export`, `--import` and `--dump`, compared between the real `nix-daemon` and
//! nixnest for the 2.8, 2.26 and 2.34 clients (see `common` for the harness).
//!
//! The export is made by the client from the store the daemon serves (clients read NARs from
//! disk, worker-protocol.md §0.3), the paths are deleted, and the export is imported again
//! through the daemon: AddToStoreNar (39) per path with `dontCheckSigs`, then QueryPathInfo
//! (26) on the result; then the same exports go into a second, empty store at the same paths
//! (store paths depend on the store dir) served by a new daemon of the same kind. Also:
//! importing what is already valid, and importing garbage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::build_closure;
use common::*;

#[test]
fn export_delete_import() {
    compare("export/import", plain_store, |side| {
        let closure = build_closure(side);
        side.store.write("in/hello.txt", "hello world\n");
        side.start_daemon();
        let (dep, app) = (closure.dep.as_str(), closure.app.as_str());

        let hello = side
            .step(
                "add a file",
                side.cmd("nix-store", ["--add", "in/hello.txt"]),
            )
            .ok()
            .run();
        let (_, export) = side
            .step(
                "--export dep app",
                side.cmd("nix-store", ["--export", dep, app]),
            )
            .norm(Norm::Digest)
            .ok()
            .run_output();
        let export = export.map(|o| o.stdout).unwrap_or_default();
        let (_, hello_export) = side
            .step(
                "--export hello",
                side.cmd("nix-store", ["--export", &hello]),
            )
            .norm(Norm::Digest)
            .ok()
            .run_output();
        let hello_export = hello_export.map(|o| o.stdout).unwrap_or_default();
        side.step(
            "--dump app (a directory)",
            side.cmd("nix-store", ["--dump", app]),
        )
        .norm(Norm::Digest)
        .ok()
        .run();
        side.step(
            "--dump dep (a file)",
            side.cmd("nix-store", ["--dump", dep]),
        )
        .norm(Norm::Digest)
        .ok()
        .run();
        side.step(
            "--dump bb (with symlinks and an executable)",
            side.cmd("nix-store", ["--dump", &closure.bb]),
        )
        .norm(Norm::Digest)
        .ok()
        .run();

        side.step(
            "--delete the closure",
            side.cmd("nix-store", ["--delete", app, dep, &hello]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--check-validity after deleting fails",
            side.cmd("nix-store", ["--check-validity", app]),
        )
        .fails()
        .run();

        let second_export = export.clone();
        let second_hello_export = hello_export.clone();
        side.step("--import the closure", side.cmd("nix-store", ["--import"]))
            .input(export.clone())
            .ok()
            .run();
        for (label, args) in [
            ("-q --references app", vec!["-q", "--references", app]),
            ("-q --deriver app dep", vec!["-q", "--deriver", app, dep]),
            ("-q --hash app dep", vec!["-q", "--hash", app, dep]),
            ("-q --size app dep", vec!["-q", "--size", app, dep]),
            ("-q --requisites app", vec!["-q", "--requisites", app]),
        ] {
            side.step(label, side.cmd("nix-store", args)).ok().run();
        }
        side.step(
            "nix path-info --json of the imported paths",
            side.cmd("nix", ["path-info", "--json", app, dep]),
        )
        .norm(Norm::RegistrationTime)
        .ok()
        .run();
        side.step(
            "--import again (already valid)",
            side.cmd("nix-store", ["--import"]),
        )
        .input(export)
        .ok()
        .run();
        side.step("--import hello", side.cmd("nix-store", ["--import"]))
            .input(hello_export)
            .ok()
            .run();
        side.step(
            "-q --hash hello after import",
            side.cmd("nix-store", ["-q", "--hash", &hello]),
        )
        .ok()
        .run();
        side.snapshot("after importing");

        // A second, empty store at the same paths, served by a new daemon of the same kind:
        // the exports go in as paths it never had (app's deriver is not in it).
        side.fresh_store();
        side.start_daemon();
        side.step(
            "second store: --import the closure",
            side.cmd("nix-store", ["--import"]),
        )
        .input(second_export)
        .ok()
        .run();
        side.step(
            "second store: --import hello",
            side.cmd("nix-store", ["--import"]),
        )
        .input(second_hello_export)
        .ok()
        .run();
        side.step(
            "second store: -q --requisites app",
            side.cmd("nix-store", ["-q", "--requisites", app]),
        )
        .ok()
        .run();
        side.step(
            "second store: path-info --json",
            side.cmd("nix", ["path-info", "--json", "-r", app, &hello]),
        )
        .norm(Norm::RegistrationTime)
        .ok()
        .run();
        side.step(
            "second store: --verify-path",
            side.cmd("nix-store", ["--verify-path", app, dep, &hello]),
        )
        .ok()
        .run();
        side.snapshot("second store after importing");

        side.step(
            "--import garbage fails",
            side.cmd("nix-store", ["--import"]),
        )
        .input(b"this is not an export\n".to_vec())
        .fails()
        .run();
        side.step(
            "the daemon still answers after the failed import",
            side.cmd("nix-store", ["--check-validity", app, dep]),
        )
        .ok()
        .run();
    });
}
