//! Garbage collection and GC roots, compared between the real `nix-daemon` and nixnest for the
//! 2.8, 2.26 and 2.34 clients (see `common` for the harness).
//!
//! Ops exercised (worker-protocol.md §10): BuildPaths (9) and BuildPathsWithResults (46) on
//! valid outputs, EnsurePath (10),
//! AddTempRoot (11), AddIndirectRoot (12), FindRoots (14), CollectGarbage (20) with every
//! action, QueryMissing (40), QueryDerivationOutputMap (41), AddPermRoot (47, 2.34), and the
//! AddToStore calls of `nix-build`'s evaluation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::fixture::build_closure;
use common::snapshot::tree;
use common::*;

#[test]
fn roots_and_garbage_collection() {
    compare("gc", plain_store, |side| {
        let closure = build_closure(side);
        side.store.write("in/garbage1", "garbage one\n");
        side.store.write("in/garbage2", "garbage two\n");
        side.store.write("in/garbage3", "garbage three\n");
        side.store.write("in/rooted", "kept by a root\n");
        std::fs::create_dir_all(side.path("roots")).unwrap();
        side.start_daemon();

        // Roots, each made by the client through the daemon.
        side.step(
            "realise with --add-root --indirect",
            side.cmd(
                "nix-store",
                ["-r", &closure.app, "--add-root", "roots/app", "--indirect"],
            ),
        )
        .ok()
        .run();
        side.step(
            "nix-build out-link (nothing to build)",
            side.cmd("nix-build", ["closure.nix", "-A", "dep", "-o", "roots/dep"]),
        )
        .ok()
        .run();
        side.step(
            "nix build (new CLI) out-link, nothing to build",
            side.cmd(
                "nix",
                [
                    "build",
                    "-f",
                    "closure.nix",
                    "app",
                    "--out-link",
                    "roots/nix-build",
                ],
            ),
        )
        .ok()
        .run();
        let rooted = side
            .step("add a file", side.cmd("nix-store", ["--add", "in/rooted"]))
            .ok()
            .run();
        side.step(
            "--add-root without --indirect",
            side.cmd("nix-store", ["--add-root", "roots/file", "-r", &rooted]),
        )
        .ok()
        .run();
        let garbage = side
            .step(
                "add garbage",
                side.cmd(
                    "nix-store",
                    ["--add", "in/garbage1", "in/garbage2", "in/garbage3"],
                ),
            )
            .ok()
            .run();
        let garbage: Vec<String> = garbage.lines().map(str::to_owned).collect();
        side.observe(
            "gcroots",
            tree(&side.store.state_dir().join("gcroots"), false, &|_| false),
        );
        side.observe("roots dir", tree(&side.path("roots"), false, &|_| false));

        side.step(
            "--gc --print-roots",
            side.cmd("nix-store", ["--gc", "--print-roots"]),
        )
        .norm(Norm::Pids)
        .norm(Norm::SortLines)
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--gc --print-live",
            side.cmd("nix-store", ["--gc", "--print-live"]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--gc --print-dead",
            side.cmd("nix-store", ["--gc", "--print-dead"]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "-q --roots app",
            side.cmd("nix-store", ["-q", "--roots", &closure.app]),
        )
        .norm(Norm::SortLines)
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "-q --roots dep",
            side.cmd("nix-store", ["-q", "--roots", &closure.dep]),
        )
        .norm(Norm::SortLines)
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--delete a rooted path fails",
            side.cmd("nix-store", ["--delete", &closure.app]),
        )
        .norms(norm::gc())
        .fails()
        .run();
        side.step(
            "--delete a path referenced by a live path fails",
            side.cmd("nix-store", ["--delete", &closure.dep]),
        )
        .norms(norm::gc())
        .fails()
        .run();
        side.step(
            "--delete a dead path",
            side.cmd("nix-store", ["--delete", &garbage[0]]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--check-validity of the deleted path fails",
            side.cmd("nix-store", ["--check-validity", &garbage[0]]),
        )
        .fails()
        .run();
        side.step(
            "nix store delete (new CLI) of a dead path",
            side.cmd("nix", ["store", "delete", &garbage[2]]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "nix store gc --dry-run",
            side.cmd("nix", ["store", "gc", "--dry-run"]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--gc --max-freed 1 (one dead path left)",
            side.cmd("nix-store", ["--gc", "--max-freed", "1"]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step("--gc", side.cmd("nix-store", ["--gc"]))
            .norms(norm::gc())
            .ok()
            .run();
        side.step(
            "--check-validity of the rooted paths",
            side.cmd(
                "nix-store",
                ["--check-validity", &closure.app, &closure.dep, &rooted],
            ),
        )
        .ok()
        .run();
        side.snapshot("after --gc");

        // Drop the roots of app and dep; a second collection takes them (and whatever
        // kept only them alive).
        std::fs::remove_file(side.path("roots/app")).unwrap();
        std::fs::remove_file(side.path("roots/dep")).unwrap();
        std::fs::remove_file(side.path("roots/nix-build")).unwrap();
        side.step(
            "--gc --print-dead without the roots",
            side.cmd("nix-store", ["--gc", "--print-dead"]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "nix-collect-garbage",
            side.cmd("nix-collect-garbage", [] as [&str; 0]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--gc with nothing left to delete",
            side.cmd("nix-store", ["--gc"]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.snapshot("after nix-collect-garbage");
        side.observe(
            "gcroots at the end",
            tree(&side.store.state_dir().join("gcroots"), false, &|_| false),
        );
    });
}

/// Runtime roots: a running process whose working directory is a store path, or that holds a
/// store file open, keeps it alive; the daemon finds it in `/proc` (so here the daemons share
/// the test's PID namespace). Only this test's processes can name this store's paths.
#[test]
fn runtime_roots() {
    compare("gc runtime roots", plain_store, |side| {
        let closure = build_closure(side);
        side.start_daemon_with(|spec| spec.isolate_pids(false));
        let mut holder = std::process::Command::new("sh")
            .args(["-c", "exec 3< \"$1\"; exec sleep 300", "sh", &closure.dep])
            .current_dir(&closure.app)
            .spawn()
            .unwrap();
        // Wait until the shell has opened the file and become `sleep` (whose environment,
        // with the shell's PWD, is then fixed).
        let comm = format!("/proc/{}/comm", holder.id());
        let start = std::time::Instant::now();
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{comm} never became sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        side.step(
            "--gc --print-roots with a process in app holding dep open",
            side.cmd("nix-store", ["--gc", "--print-roots"]),
        )
        .norm(Norm::Pids)
        .norm(Norm::SortLines)
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--gc --print-dead",
            side.cmd("nix-store", ["--gc", "--print-dead"]),
        )
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "-q --roots dep",
            side.cmd("nix-store", ["-q", "--roots", &closure.dep]),
        )
        .norm(Norm::Pids)
        .norm(Norm::SortLines)
        .norms(norm::gc())
        .ok()
        .run();
        side.step(
            "--delete app fails while the process runs in it",
            side.cmd("nix-store", ["--delete", &closure.app]),
        )
        .norms(norm::gc())
        .fails()
        .run();
        holder.kill().unwrap();
        holder.wait().unwrap();
        side.step(
            "--gc --print-dead after the process ended",
            side.cmd("nix-store", ["--gc", "--print-dead"]),
        )
        .norms(norm::gc())
        .ok()
        .run();
    });
}
