//! `nix-build` of a DAG of 100 busybox derivations through nixnest-daemon with
//! `max-jobs = 2`, by the host's Nix 2.8 and by Nix 2.34: every output right, its
//! references right (`nix-store -q --references`), never more than 2 builds at once
//! (watched on the control socket) — and the same, plus the sandbox's basic promises,
//! with the daemon running as an unprivileged user on a store it owns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builds_support;

use std::time::Instant;

use builds_support::*;
use nixnest_testkit::{BuildUsers, Client, Daemon, RunExt, TestStore};

fn build_dag(store: &TestStore, client: Client, daemon: &Daemon, tag: &str, watch: bool) {
    let expr = store.write_expr(&format!("{tag}.nix"), &dag_expr(tag, 100));
    let monitor = watch.then(|| BuildMonitor::start(store));
    let t = Instant::now();
    let out = nix_build(store, client, daemon, &expr, &[]);
    let took = t.elapsed();
    let peak = monitor.map(BuildMonitor::finish);
    assert!(out.status.success(), "{client}: {}", stderr(&out));
    let paths: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(paths.len(), 100, "{client}");
    assert!(
        stderr(&out).contains("these 100 derivations will be built"),
        "{}",
        stderr(&out)
    );
    check_dag(store, client, daemon, tag, &paths);
    if let Some(peak) = peak {
        assert_eq!(peak, 2, "{client}: builds seen running at once");
    }
    eprintln!("{client}: 100 derivations built in {took:.1?}");
}

#[test]
fn dag_of_100_with_max_jobs_2() {
    require_env!();
    let store = TestStore::builder()
        .sandbox(true)
        .build_users(BuildUsers::private(2))
        .conf("max-jobs = 2")
        .build();
    let daemon = nixnest(&store);
    for client in clients() {
        build_dag(
            &store,
            client,
            &daemon,
            &format!("d{}", client.name()),
            true,
        );
    }
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}

#[test]
fn dag_and_sandbox_with_an_unprivileged_daemon() {
    require_env!();
    if !nixnest_build::run::user_namespaces_enabled() {
        eprintln!("SKIPPED: user namespaces are disabled");
        return;
    }
    let store = TestStore::builder()
        .sandbox(true)
        .conf("max-jobs = 2")
        .build();
    store.busybox();
    let nobody = 65534;
    let daemon = nixnest_as(&store, nobody, nobody);
    for client in clients() {
        let tag = format!("u{}", client.name());
        build_dag(&store, client, &daemon, &tag, false);

        let outside_file = store.write(format!("outside-{tag}"), "not an input\n");
        let outside = store
            .client(client)
            .daemon(&daemon)
            .command("nix-store")
            .arg("--add")
            .arg(&outside_file)
            .run();
        let bb = store.root().join("bb").display().to_string();
        let expr = store.write_expr(
            &format!("probe-{tag}.nix"),
            &probe_expr(&tag, &[outside.clone(), bb.clone()]),
        );
        let out = nix_build(&store, client, &daemon, &expr, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        for path in stdout(&out).lines() {
            let (obs, host_uid) = split_probe(&std::fs::read_to_string(path).unwrap());
            // The builder runs as the daemon's uid, seen as 1000 in its user namespace.
            assert_eq!(host_uid, nobody);
            for want in [
                "== id\nuid=1000(nixbld) gid=100(nixbld)\n",
                "== hostname\nlocalhost\n",
                "== passwd\nroot:x:0:0:Nix build user:/build:/noshell\nnixbld:x:1000:100:Nix build user:/build:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n",
                "== group\nroot:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n",
                &format!(
                    "{outside} invisible\n{bb} invisible\n/etc/shadow invisible\n/usr invisible\n"
                ),
                "Network is unreachable",
                "== links\nlo:\n",
            ] {
                assert!(obs.contains(want), "{client}: missing {want:?} in\n{obs}");
            }
        }
    }
    // Everything in the store belongs to the daemon's user.
    let meta = std::fs::metadata(store.db_path()).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), nobody);
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));
}
