//! Smoke tests with the real Nix clients (host 2.8, and the 2.26 / 2.34 chroots when
//! prepared) pointed at nixnest: one scenario per client that touches every op group a
//! client uses for non-build work. The detailed comparison with the real `nix-daemon`
//! lives in the end-to-end suite (`tests/tests/daemon_*.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use nixnest_testkit::{Client, Daemon, Derivation, RunExt, TestStore};

use common::*;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every non-build op group through one client.
fn smoke(client: Client) {
    if !have_host_nix() {
        return;
    }
    if !client.is_available() {
        eprintln!("skipping {client}: its chroot is not prepared (tests/prepare-clients)");
        return;
    }
    let store = TestStore::new();
    let d: Daemon = nixnest(&store);
    let nix = store.client(client).daemon(&d);
    let run = |program: &str, args: &[&str]| nix.command(program).args(args).run();

    // Adds (AddToStore, AddToStoreNar) and the queries behind nix-store -q.
    let file = store.write("hello.txt", "hello world\n");
    let hello = run("nix-store", &["--add", file.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hello world\n");
    let flat = store.write("flat.txt", "flat content\n");
    let fixed = run(
        "nix-store",
        &["--add-fixed", "sha256", flat.to_str().unwrap()],
    );
    assert!(fixed.ends_with("-flat.txt"), "{fixed}");
    assert_eq!(
        run("nix-store", &["-q", "--hash", &hello]),
        "sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil"
    );
    assert_eq!(run("nix-store", &["-q", "--size", &hello]), "128");
    assert_eq!(run("nix-store", &["-q", "--references", &hello]), "");
    assert_eq!(
        run("nix-store", &["-q", "--deriver", &hello]),
        "unknown-deriver"
    );
    let all = run("nix", &["path-info", "--all"]);
    assert!(all.contains(&hello) && all.contains(&fixed), "{all}");

    // Export, delete (GC), import.
    let export = nix
        .command("nix-store")
        .args(["--export", &hello])
        .run_output();
    let gone = run("nix-store", &["--delete", &hello]);
    assert!(
        gone.is_empty() || gone.contains("1 store paths deleted"),
        "{gone}"
    );
    assert!(!std::path::Path::new(&hello).exists());
    let imported = nix
        .command("nix-store")
        .arg("--import")
        .run_with_input(&export.stdout);
    assert_eq!(String::from_utf8_lossy(&imported.stdout).trim(), hello);

    // A derivation: instantiate (AddToStore of the .drv), query it, build it.
    let expr = store.write_expr(
        "simple.nix",
        &Derivation::new("simple", "echo built > $out").to_nix(),
    );
    let drv = run("nix-instantiate", &[expr.to_str().unwrap()]);
    assert!(drv.ends_with("-simple.drv"), "{drv}");
    let out = run("nix-store", &["-q", "--outputs", &drv]);
    assert!(out.ends_with("-simple"), "{out}");
    let missing = nix
        .command("nix-store")
        .args(["--realise", "--dry-run", &drv])
        .run_output();
    assert!(text(&missing).contains(&drv), "{}", text(&missing));
    let built = nix
        .command("nix-build")
        .args([expr.to_str().unwrap(), "--no-out-link"])
        .run();
    assert_eq!(built, out);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "built\n");
    // Valid paths are realised as they are.
    assert_eq!(run("nix-store", &["--realise", &hello]), hello);

    // Copying out (BuildPathsWithResults on valid paths, NARs read from disk).
    let cache = store.path("cache");
    run(
        "nix",
        &[
            "copy",
            "--to",
            &format!("file://{}", cache.display()),
            &hello,
        ],
    );
    assert!(cache.join("nix-cache-info").exists());

    // Maintenance and GC.
    let optimise = nix.command("nix-store").arg("--optimise").run_output();
    assert!(
        text(&optimise).contains("freed by hard-linking"),
        "{}",
        text(&optimise)
    );
    let verify = nix
        .command("nix-store")
        .args(["--verify", "--check-contents"])
        .run_output();
    assert!(
        text(&verify).contains("checking store hashes..."),
        "{}",
        text(&verify)
    );
    let dead = run("nix-store", &["--gc", "--print-dead"]);
    assert!(dead.contains(&hello) && dead.contains(&drv), "{dead}");
    let gc = nix.command("nix-store").arg("--gc").run_output();
    assert!(text(&gc).contains("store paths deleted"), "{}", text(&gc));
    assert!(!std::path::Path::new(&hello).exists());

    // Copying in (QueryValidPaths, then AddMultipleToStore or AddToStoreNar).
    run(
        "nix",
        &[
            "copy",
            "--no-check-sigs",
            "--from",
            &format!("file://{}", cache.display()),
            &hello,
        ],
    );
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hello world\n");
    assert_eq!(run("nix-store", &["--check-validity", &hello]), "");

    // The daemon's identity.
    let ping = nix.command("nix").args(["store", "ping"]).run_output();
    assert!(
        text(&ping).contains(nixnest_daemon::DAEMON_VERSION_STRING),
        "{}",
        text(&ping)
    );
}

#[test]
fn host_nix_2_8() {
    smoke(Client::Host);
}

#[test]
fn trixie_nix_2_26() {
    smoke(Client::Trixie);
}

#[test]
fn sid_nix_2_34() {
    smoke(Client::Sid);
}
