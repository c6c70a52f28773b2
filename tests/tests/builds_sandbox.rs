//! Builds through nixnest-daemon compared with the real `nix-daemon` 2.8 (`sandbox =
//! true`, build users) building the same expressions on a store of its own, with the
//! host's 2.8 client and the 2.34 client: what a builder sees (ids, `/etc`, paths outside
//! its closure, the network), two concurrent builds as different users, fixed-output
//! derivations, a failing builder (and its log through `nix log` / `nix-store -l`), a
//! timeout that must kill the builder's children. Client output is compared after
//! replacing each store's dir, root and hash parts by placeholders. Both stores set
//! `log-lines = 10`: nixnest's configuration follows 2.34's default of 25, 2.8's was 10.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builds_support;

use std::process::Output;

use builds_support::*;
use nixnest_testkit::{BuildUsers, Client, Daemon, Derivation, RunExt, TestStore};

/// nixnest's store and daemon, and nix-daemon 2.8's.
struct Pair {
    ours: TestStore,
    ours_daemon: Daemon,
    theirs: TestStore,
    theirs_daemon: Daemon,
}

impl Pair {
    fn new() -> Pair {
        let ours = TestStore::builder()
            .sandbox(true)
            .build_users(BuildUsers::private(2))
            .conf("max-jobs = 2")
            .conf("log-lines = 10")
            .build();
        let theirs = TestStore::builder()
            .sandbox(true)
            .build_users(BuildUsers::nixbld())
            .conf("max-jobs = 2")
            .conf("log-lines = 10")
            .build();
        ours.busybox();
        theirs.busybox();
        let ours_daemon = nixnest(&ours);
        let theirs_daemon = theirs.nix_daemon(Client::Host).start();
        Pair {
            ours,
            ours_daemon,
            theirs,
            theirs_daemon,
        }
    }

    /// `nix-build` of `expr` in both stores; the two outputs.
    fn build(&self, client: Client, file: &str, expr: &str, args: &[&str]) -> (Output, Output) {
        let run = |store: &TestStore, daemon: &Daemon| {
            let path = store.write_expr(file, expr);
            nix_build(store, client, daemon, &path, args)
        };
        (
            run(&self.ours, &self.ours_daemon),
            run(&self.theirs, &self.theirs_daemon),
        )
    }

    /// Both failed, with the same exit status and the same normalised error output.
    fn same_failure(&self, client: Client, what: &str, ours: &Output, theirs: &Output) -> String {
        assert!(!theirs.status.success(), "{what}: nix-daemon succeeded");
        let (a, b) = (
            normalise(&self.ours, &stderr(ours)),
            normalise(&self.theirs, &stderr(theirs)),
        );
        if a != b {
            eprintln!("--- nixnest ---\n{a}\n--- nix-daemon 2.8 ---\n{b}");
        }
        assert_eq!(a, b, "{client}, {what}: the client printed something else");
        assert_eq!(
            ours.status.code(),
            theirs.status.code(),
            "{client}, {what}: exit status"
        );
        a
    }
}

#[test]
fn sandbox_matches_nix_daemon_2_8() {
    require_env!();
    let p = Pair::new();
    for client in clients() {
        let tag = client.name();
        let probe = |store: &TestStore, daemon: &Daemon| {
            let file = store.write(format!("outside-{tag}"), "not an input\n");
            let outside = store
                .client(client)
                .daemon(daemon)
                .command("nix-store")
                .arg("--add")
                .arg(&file)
                .run();
            let bb = store.root().join("bb").display().to_string();
            let expr = store.write_expr(
                &format!("probe-{tag}.nix"),
                &probe_expr(tag, &[outside, bb]),
            );
            let out = nix_build(store, client, daemon, &expr, &[]);
            assert!(out.status.success(), "{client}: {}", stderr(&out));
            stdout(&out)
                .lines()
                .map(|path| {
                    let (obs, uid) = split_probe(&std::fs::read_to_string(path).unwrap());
                    (normalise(store, &obs), uid)
                })
                .collect::<Vec<_>>()
        };
        let ours = probe(&p.ours, &p.ours_daemon);
        let theirs = probe(&p.theirs, &p.theirs_daemon);
        for ((a, _), (b, _)) in ours.iter().zip(&theirs) {
            if a != b {
                eprintln!("--- nixnest ---\n{a}\n--- nix-daemon 2.8 ---\n{b}");
            }
            assert_eq!(a, b, "{client}: the sandbox differs from nix-daemon 2.8's");
            for want in [
                "uid=1000(nixbld) gid=100(nixbld)",
                "nixbld:x:1000:100:Nix build user:/build:/noshell",
                "/STORE/HASH-outside-",
                "/ROOT/bb invisible",
                "Network is unreachable",
            ] {
                assert!(a.contains(want), "{client}: missing {want:?} in\n{a}");
            }
            assert!(!a.contains(" visible"), "{client}: {a}");
        }
        // The two probes ran at the same time, as two different build users.
        for (store, obs) in [(&p.ours, &ours), (&p.theirs, &theirs)] {
            let (a, b) = (obs[0].1, obs[1].1);
            assert_ne!(a, b, "{client}: both builds ran as uid {a}");
            let users = store.build_users().unwrap();
            assert!(users.contains_uid(a) && users.contains_uid(b));
        }
    }
}

#[test]
fn failures_match_nix_daemon_2_8() {
    require_env!();
    let p = Pair::new();
    for client in clients() {
        let tag = client.name();

        // A fixed-output derivation: the right hash builds, a wrong one fails alike.
        let fod = |hash: &str| {
            Derivation::new(&format!("fod-{tag}"), "echo hello > $out")
                .env("outputHashMode", "flat")
                .env("outputHashAlgo", "sha256")
                .env("outputHash", hash)
                .to_nix()
        };
        let good = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let (ours, theirs) = p.build(client, &format!("fod-{tag}.nix"), &fod(good), &[]);
        assert!(ours.status.success(), "{client}: {}", stderr(&ours));
        assert!(theirs.status.success(), "{client}: {}", stderr(&theirs));
        assert_eq!(std::fs::read_to_string(stdout(&ours)).unwrap(), "hello\n");
        assert_eq!(
            normalise(&p.ours, &stdout(&ours)),
            normalise(&p.theirs, &stdout(&theirs))
        );
        let (ours, theirs) = p.build(
            client,
            &format!("fod-bad-{tag}.nix"),
            &fod(&"0".repeat(64)),
            &[],
        );
        let err = p.same_failure(client, "fixed-output hash mismatch", &ours, &theirs);
        assert!(
            err.contains("hash mismatch in fixed-output derivation"),
            "{err}"
        );

        // A failing builder; its log is stored for `nix log` and `nix-store -l`.
        let fail = Derivation::new(
            &format!("fail-{tag}"),
            "for i in $(seq 1 15); do echo line $i; done; exit 3",
        )
        .to_nix();
        let (ours, theirs) = p.build(client, &format!("fail-{tag}.nix"), &fail, &[]);
        let err = p.same_failure(client, "failing builder", &ours, &theirs);
        assert!(err.contains("failed with exit code 3"), "{err}");
        assert!(err.contains("> line 15"), "{err}");
        let nix = p.ours.client(client).daemon(&p.ours_daemon);
        let drv = nix
            .command("nix-instantiate")
            .arg(p.ours.path(format!("fail-{tag}.nix")))
            .run();
        let lines: String = (1..=15).map(|i| format!("line {i}\n")).collect();
        for cmd in [&["nix-store", "-l"][..], &["nix", "log"][..]] {
            let log = nix.command(cmd[0]).args(&cmd[1..]).arg(&drv).run_output();
            assert_eq!(
                String::from_utf8_lossy(&log.stdout),
                lines,
                "{client}: {cmd:?}"
            );
        }

        // A timeout kills the builder and everything it started.
        let marker = format!("nixnest-timeout-marker-{tag}");
        let slow = Derivation::new(
            &format!("slow-{tag}"),
            &format!(
                "echo started; (sh -c 'sleep 1000; : {marker}-a' &); sh -c 'sleep 1000; : {marker}-b' & sleep 1000"
            ),
        )
        .to_nix();
        let (ours, theirs) = p.build(
            client,
            &format!("slow-{tag}.nix"),
            &slow,
            &["--timeout", "2"],
        );
        let err = p.same_failure(client, "timeout", &ours, &theirs);
        assert!(err.contains("timed out after 2 seconds"), "{err}");
        let left = processes_with(&marker);
        assert!(left.is_empty(), "{client}: processes left: {left:?}");
        let quiet = Derivation::new(&format!("quiet-{tag}"), "echo started; sleep 1000").to_nix();
        let (ours, theirs) = p.build(
            client,
            &format!("quiet-{tag}.nix"),
            &quiet,
            &["--max-silent-time", "1"],
        );
        let err = p.same_failure(client, "max-silent-time", &ours, &theirs);
        assert!(
            err.contains("timed out after 1 seconds of silence"),
            "{err}"
        );
        assert!(leftovers(&p.ours).is_empty(), "{:?}", leftovers(&p.ours));
    }
}
