//! The build scheduler through its API (as the session calls it), on real sandboxed
//! builds: a DAG under `max-jobs`, dedupe of concurrent requests, `keep-going`,
//! cancellation, and QueryMissing compared with the real `nix-daemon` 2.8.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builds_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use builds_support::*;
use nixnest_core::{DerivedPath, OutputsSpec, StorePath};
use nixnest_daemon::builds::Error;
use nixnest_protocol::client::UnixDaemonClient;
use nixnest_protocol::stderr::{ActivityType, StderrMessage};
use nixnest_protocol::types::{BuildMode, BuildStatus};
use nixnest_testkit::Client;

/// `builds` layers of 4 derivations; each one after the first layer depends on two of
/// the layer before. Every builder sleeps a little and writes its deps' outputs plus its
/// own name, so the contents prove what it saw.
fn layered_dag(layers: usize) -> (String, Vec<String>) {
    let mut lets = String::from("let\n");
    let mut names = Vec::new();
    for l in 0..layers {
        for k in 0..4 {
            let name = format!("n{}", l * 4 + k);
            let deps: Vec<String> = if l == 0 {
                Vec::new()
            } else {
                vec![
                    format!("n{}", (l - 1) * 4 + k),
                    format!("n{}", (l - 1) * 4 + (k + 1) % 4),
                ]
            };
            let script = format!(
                "echo building {name}; sleep 0.2; for d in $dep0 $dep1; do cat $d; done > $out; echo {name} >> $out"
            );
            lets.push_str(&format!(
                "  {name} = {};\n",
                drv_expr(&name, &script, &deps)
            ));
            names.push(name);
        }
    }
    lets.push_str(&format!("in [ {} ]\n", names.join(" ")));
    (lets, names)
}

/// What node `i` of [`layered_dag`] writes.
fn layered_content(i: usize) -> String {
    if i < 4 {
        return format!("n{i}\n");
    }
    let (l, k) = (i / 4, i % 4);
    format!(
        "{}{}n{i}\n",
        layered_content((l - 1) * 4 + k),
        layered_content((l - 1) * 4 + (k + 1) % 4)
    )
}

fn activities(msgs: &[StderrMessage], ty: ActivityType) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            StderrMessage::StartActivity(a) if a.activity_type == ty => {
                Some(String::from_utf8_lossy(&a.text).into_owned())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dag_of_20_with_max_jobs_2_builds_each_once() {
    require_env!();
    // The daemon would allow 4; the session asks for 2.
    let fx = Fx::new(4, 4);
    let (expr, _) = layered_dag(5);
    let drvs = fx.instantiate("dag.nix", &expr);
    assert_eq!(drvs.len(), 20);
    // The last layer, plus a node in the middle that the DAG also reaches.
    let mut targets: Vec<&StorePath> = drvs[16..].iter().collect();
    targets.push(&drvs[9]);
    let req = fx.request(&targets, |s| s.set("max-jobs", "2").map(|_| ()).unwrap());
    let (res, msgs) = results(&fx, req.clone()).await;

    let stats = fx.sched.stats();
    assert_eq!(
        stats.builds_started, 20,
        "every derivation built exactly once"
    );
    assert_eq!(
        stats.peak_running, 2,
        "max-jobs = 2 was both used and respected"
    );
    assert_eq!(stats.running, 0);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(res.len(), 5);
    for d in &targets {
        let r = &res[&built(d).print(fx.store.store_dir())];
        assert_eq!(r.status, BuildStatus::Built, "{d}: {}", r.error_msg);
        assert_eq!(r.times_built, 1);
        assert!(r.start_time > 0 && r.stop_time >= r.start_time);
        let real = &r.built_outputs["out"];
        assert_eq!(real.out_path, fx.out_path(d));
        assert!(real.id.to_string().starts_with("sha256:"));
        assert!(real.id.to_string().ends_with("!out"));
    }
    for (i, d) in drvs.iter().enumerate() {
        assert_eq!(fx.read_out(d), layered_content(i), "contents of n{i}");
        let log = fx
            .store
            .read_build_log(d, 1 << 20)
            .unwrap()
            .expect("a build log");
        assert_eq!(String::from_utf8_lossy(&log), format!("building n{i}\n"));
    }
    // The client saw 20 builds with their output.
    let builds = activities(&msgs, ActivityType::Build);
    assert_eq!(builds.len(), 20, "{builds:?}");
    let lines = texts(&msgs);
    for i in 0..20 {
        assert!(lines.contains(&format!("building n{i}")), "{lines:?}");
    }
    // n0 < n1 < …: each layer waits for the one before.
    let pos = |name: &str| {
        builds
            .iter()
            .position(|b| b.ends_with(&format!("-{name}.drv'")))
            .unwrap()
    };
    for i in 4..20 {
        let (l, k) = (i / 4, i % 4);
        assert!(pos(&format!("n{i}")) > pos(&format!("n{}", (l - 1) * 4 + k)));
    }

    // Again: everything is valid, nothing runs.
    let (res, _) = results(&fx, req).await;
    assert!(res.values().all(|r| r.status == BuildStatus::AlreadyValid));
    assert!(res.values().all(|r| r.built_outputs.contains_key("out")));
    assert_eq!(fx.sched.stats().builds_started, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_derivation_requested_twice_concurrently_builds_once() {
    require_env!();
    let fx = Fx::new(2, 2);
    let drvs = fx.instantiate(
        "shared.nix",
        &format!(
            "[ ({}) ]",
            drv_expr(
                "shared",
                "echo early; sleep 1.5; echo late; echo x > $out",
                &[]
            )
        ),
    );
    let d = &drvs[0];

    // A and B at once.
    let (a, b) = tokio::join!(
        results(&fx, fx.request(&[d], |_| {})),
        results(&fx, fx.request(&[d], |_| {}))
    );
    assert_eq!(fx.sched.stats().builds_started, 1);
    for (res, msgs) in [&a, &b] {
        let r = res.values().next().unwrap();
        assert_eq!(r.status, BuildStatus::Built, "{}", r.error_msg);
        assert_eq!(r.built_outputs["out"].out_path, fx.out_path(d));
        let lines = texts(msgs);
        assert!(lines.contains(&"early".to_owned()) && lines.contains(&"late".to_owned()));
    }

    // C joins a build already running: it gets the log from then on.
    let drvs = fx.instantiate(
        "shared2.nix",
        &format!(
            "[ ({}) ]",
            drv_expr(
                "shared2",
                "echo early; sleep 1.5; echo late; echo x > $out",
                &[]
            )
        ),
    );
    let d = drvs[0].clone();
    let first = tokio::spawn({
        let sched = Arc::clone(&fx.sched);
        let req = fx.request(&[&d], |_| {});
        async move {
            collect(|tx| async move {
                let r = sched.build_paths_with_results(&req, &tx).await;
                drop(tx);
                r
            })
            .await
        }
    });
    wait_for("the build to start", Duration::from_secs(20), || {
        fx.sched.stats().running == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c, c_msgs) = results(&fx, fx.request(&[&d], |_| {})).await;
    let (a, a_msgs) = first.await.unwrap();
    assert_eq!(fx.sched.stats().builds_started, 2);
    assert_eq!(a.unwrap()[0].result.status, BuildStatus::Built);
    assert_eq!(c.values().next().unwrap().status, BuildStatus::Built);
    assert_eq!(texts(&a_msgs), ["early", "late"]);
    assert_eq!(texts(&c_msgs), ["late"]);
    assert_eq!(activities(&c_msgs, ActivityType::Build).len(), 1);
}

/// `fail` fails at once, `slow` takes a while, `top` needs both; `indep` needs neither.
fn keep_going_fixture(fx: &Fx, tag: &str) -> BTreeMap<&'static str, StorePath> {
    let expr = format!(
        "let\n  fail = {};\n  slow = {};\n  top = {};\n  indep = {};\nin [ fail slow top indep ]",
        drv_expr(&format!("fail-{tag}"), "echo failing; exit 3", &[]),
        drv_expr(&format!("slow-{tag}"), "sleep 2; echo ok > $out", &[]),
        drv_expr(
            &format!("top-{tag}"),
            "cat $dep0 $dep1 > $out",
            &["fail".into(), "slow".into()]
        ),
        drv_expr(&format!("indep-{tag}"), "sleep 1; echo ind > $out", &[]),
    );
    let drvs = fx.instantiate(&format!("kg-{tag}.nix"), &expr);
    ["fail", "slow", "top", "indep"]
        .into_iter()
        .zip(drvs)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_going_or_not() {
    require_env!();
    let fx = Fx::new(4, 4);
    let sd = fx.store.store_dir().clone();

    // Without keep-going: the first failure stops the request; `slow` is killed.
    let d = keep_going_fixture(&fx, "a");
    let req = fx.request(&[&d["top"], &d["indep"]], |s| {
        s.set("max-jobs", "3").unwrap();
    });
    let (res, msgs) = results(&fx, req.clone()).await;
    let top = &res[&built(&d["top"]).print(&sd)];
    assert_eq!(top.status, BuildStatus::DependencyFailed);
    assert_eq!(
        top.error_msg,
        format!(
            "1 dependencies of derivation '{}' failed to build",
            fx.store.print(&d["top"])
        )
    );
    let indep = &res[&built(&d["indep"]).print(&sd)];
    assert_eq!(
        indep.status,
        BuildStatus::MiscFailure,
        "{}",
        indep.error_msg
    );
    let fail = fx.store.print(&d["fail"]);
    let expected_error = format!(
        "error: builder for '{fail}' failed with exit code 3;\n       last 1 log lines:\n       > failing\n       For full logs, run 'nix log {fail}'."
    );
    assert!(texts(&msgs).contains(&expected_error), "{:?}", texts(&msgs));
    wait_for(
        "the other builds to be killed",
        Duration::from_secs(10),
        || {
            let s = fx.sched.stats();
            s.running == 0 && s.in_flight == 0 && fx.registry.status().builds.is_empty()
        },
    )
    .await;
    assert!(!fx.valid(&fx.out_path(&d["slow"])));
    assert!(!fx.valid(&fx.out_path(&d["indep"])));

    // BuildPaths: the error of `top` is logged, the reply names both failed paths.
    let d = keep_going_fixture(&fx, "b");
    let req = fx.request(&[&d["top"], &d["indep"]], |s| {
        s.set("max-jobs", "3").unwrap();
    });
    let sched = Arc::clone(&fx.sched);
    let (r, msgs) = collect(|tx| async move {
        let r = sched.build_paths(&req, &tx).await;
        drop(tx);
        r
    })
    .await;
    let Err(Error::Failed { msg, exit_status }) = r else {
        panic!("{r:?}")
    };
    let mut failed = [d["top"].clone(), d["indep"].clone()];
    failed.sort();
    assert_eq!(
        msg,
        format!(
            "build of '{}', '{}' failed",
            fx.store.print(&failed[0]),
            fx.store.print(&failed[1])
        )
    );
    assert_eq!(exit_status, 100);
    assert!(texts(&msgs).contains(&format!(
        "error: 1 dependencies of derivation '{}' failed to build",
        fx.store.print(&d["top"])
    )));

    // With keep-going: everything that can be built is.
    let d = keep_going_fixture(&fx, "c");
    let req = fx.request(&[&d["top"], &d["indep"]], |s| {
        s.set("max-jobs", "3").unwrap();
        s.set("keep-going", "true").unwrap();
    });
    let (res, _) = results(&fx, req).await;
    let top = &res[&built(&d["top"]).print(&sd)];
    assert_eq!(top.status, BuildStatus::DependencyFailed);
    assert_eq!(
        top.error_msg,
        format!(
            "1 dependencies of derivation '{}' failed to build",
            fx.store.print(&d["top"])
        )
    );
    assert_eq!(
        res[&built(&d["indep"]).print(&sd)].status,
        BuildStatus::Built
    );
    assert!(fx.valid(&fx.out_path(&d["slow"])));
    assert!(fx.valid(&fx.out_path(&d["indep"])));
    // The failed build's log is stored too.
    let log = fx
        .store
        .read_build_log(&d["fail"], 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(log, b"failing\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_kills_the_build_and_frees_its_user() {
    require_env!();
    // One build user: the next build can only run once the first one gave it back.
    let fx = Fx::new(1, 2);
    let (only_uid, _locks) = fx.single_user();
    let drvs = fx.instantiate(
        "cancel.nix",
        &format!(
            "[ ({}) ({}) ({}) ]",
            drv_expr(
                "long",
                "echo started; sleep 300 & sleep 300; echo x > $out",
                &[]
            ),
            drv_expr("other", "echo y > $out", &[]),
            drv_expr("shared", "echo s; sleep 2; echo s > $out", &[]),
        ),
    );
    let (long, other, shared) = (&drvs[0], &drvs[1], &drvs[2]);

    let task = tokio::spawn({
        let sched = Arc::clone(&fx.sched);
        let req = fx.request(&[long], |_| {});
        async move { collect(|tx| async move { sched.build_paths_with_results(&req, &tx).await }).await }
    });
    wait_for("the build to run", Duration::from_secs(20), || {
        fx.sched.stats().running == 1
    })
    .await;
    let status = fx.registry.status();
    assert_eq!(status.builds.len(), 1);
    assert_eq!(status.builds[0].drv_path, fx.store.print(long));
    let uid = status.builds[0].build_uid.expect("a build user");
    assert_eq!(uid, only_uid);
    assert!(!processes_of_uid(uid).is_empty());

    // The client goes away.
    task.abort();
    let _ = task.await;
    wait_for("the build to be killed", Duration::from_secs(10), || {
        let s = fx.sched.stats();
        s.running == 0 && s.in_flight == 0 && fx.registry.status().builds.is_empty()
    })
    .await;
    assert!(
        processes_of_uid(uid).is_empty(),
        "processes of uid {uid} left"
    );
    assert!(!fx.valid(&fx.out_path(long)));
    let build_dir = fx.settings.build_dir();
    let left: Vec<_> = std::fs::read_dir(&build_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "build dirs left: {left:?}");

    // The user is free again.
    let (res, _) = tokio::time::timeout(
        Duration::from_secs(30),
        results(&fx, fx.request(&[other], |_| {})),
    )
    .await
    .expect("the single build user was released");
    assert_eq!(res.values().next().unwrap().status, BuildStatus::Built);

    // A build someone else still waits for goes on when one of its waiters leaves.
    let a = tokio::spawn({
        let sched = Arc::clone(&fx.sched);
        let req = fx.request(&[shared], |_| {});
        async move { collect(|tx| async move { sched.build_paths_with_results(&req, &tx).await }).await }
    });
    wait_for("the shared build to run", Duration::from_secs(20), || {
        fx.sched.stats().running == 1
    })
    .await;
    let b = tokio::spawn({
        let sched = Arc::clone(&fx.sched);
        let req = fx.request(&[shared], |_| {});
        async move { collect(|tx| async move { sched.build_paths_with_results(&req, &tx).await }).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.abort();
    let _ = a.await;
    let (r, _) = b.await.unwrap();
    let r = r.unwrap();
    assert_eq!(
        r[0].result.status,
        BuildStatus::Built,
        "{}",
        r[0].result.error_msg
    );
    assert!(fx.valid(&fx.out_path(shared)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_wait_for_a_free_build_user() {
    require_env!();
    // Two slots, one build user: the second build waits for the user, not a thread.
    let fx = Fx::new(1, 2);
    let (_uid, _locks) = fx.single_user();
    let drvs = fx.instantiate(
        "uid.nix",
        &format!(
            "[ ({}) ({}) ]",
            drv_expr("u1", "sleep 1; echo 1 > $out", &[]),
            drv_expr("u2", "sleep 1; echo 2 > $out", &[]),
        ),
    );
    let req = fx.request(&[&drvs[0], &drvs[1]], |s| {
        s.set("max-jobs", "2").unwrap();
    });
    let (res, msgs) = results(&fx, req).await;
    assert!(
        res.values().all(|r| r.status == BuildStatus::Built),
        "{res:?}"
    );
    let stats = fx.sched.stats();
    assert_eq!(stats.builds_started, 2);
    assert_eq!(stats.peak_running, 1, "two builds ran as one build user");
    let waiting = activities(&msgs, ActivityType::BuildWaiting);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert!(
        waiting[0].starts_with("waiting for UID to build '"),
        "{waiting:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_be_served() {
    require_env!();
    let fx = Fx::new(0, 1);
    let drvs = fx.instantiate(
        "refuse.nix",
        &format!("[ ({}) ]", drv_expr("r", "echo > $out", &[])),
    );
    let sched = Arc::clone(&fx.sched);
    let run = |req: nixnest_daemon::builds::BuildRequest| {
        let sched = Arc::clone(&sched);
        async move {
            collect(|tx| async move { sched.build_paths_with_results(&req, &tx).await })
                .await
                .0
        }
    };
    let mut req = fx.request(&[&drvs[0]], |_| {});
    req.targets = vec![DerivedPath::Built {
        drv_path: drvs[0].clone(),
        outputs: OutputsSpec::names(["dev", "out"]).unwrap(),
    }];
    let Err(e) = run(req).await else { panic!() };
    assert_eq!(
        e.to_string(),
        format!(
            "derivation '{}' does not have wanted outputs 'dev'",
            fx.store.print(&drvs[0])
        )
    );
    let mut req = fx.request(&[&drvs[0]], |_| {});
    req.mode = BuildMode::Check;
    assert!(matches!(run(req).await, Err(Error::Refused(_))));
    let req = fx.request(&[&drvs[0]], |s| s.set("max-jobs", "0").map(|_| ()).unwrap());
    let Err(e) = run(req).await else { panic!() };
    assert!(
        e.to_string()
            .starts_with("unable to start any build; either increase '--max-jobs'")
    );
    assert_eq!(fx.sched.stats().builds_started, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_missing_equals_nix_daemon_2_8() {
    require_env!();
    let fx = Fx::new(0, 2);
    let expr = format!(
        "let\n  a = {};\n  b = {};\n  c = {};\n  d = {};\n  e = {};\nin [ a b c d e ]",
        drv_expr("a", "echo a > $out", &[]),
        drv_expr("b", "cat $dep0 > $out", &["a".into()]),
        drv_expr("c", "cat $dep0 > $out", &["b".into()]),
        nixnest_testkit::Derivation::new("d", "echo o > $out; echo d > $dev")
            .attr("outputs", r#"[ "out" "dev" ]"#)
            .to_nix(),
        drv_expr("e", "cat $dep0 > $out", &["d.dev".into()]),
    );
    let drvs = fx.instantiate("qm.nix", &expr);
    let (a, b, c, d, e) = (&drvs[0], &drvs[1], &drvs[2], &drvs[3], &drvs[4]);
    // Build `a` only, so some of the graph is valid.
    let (res, _) = results(&fx, fx.request(&[a], |_| {})).await;
    assert!(res.values().all(|r| r.status == BuildStatus::Built));

    let sd = fx.store.store_dir().clone();
    let p = |s: String| DerivedPath::parse(&sd, &s).unwrap();
    let pr = |x: &StorePath| fx.store.print(x);
    let out_a = pr(&fx.out_path(a));
    let out_c = pr(&fx.out_path(c));
    let cases: Vec<Vec<DerivedPath>> = vec![
        vec![p(format!("{}!out", pr(c)))],
        vec![p(format!("{}!*", pr(c)))],
        vec![p(format!("{}!out", pr(a)))],
        vec![p(format!("{}!out", pr(e)))],
        vec![p(format!("{}!dev", pr(d)))],
        vec![p(format!("{}!dev,out", pr(d))), p(format!("{}!*", pr(d)))],
        vec![p(format!("{}!nonexistent", pr(b)))],
        vec![p(out_a.clone()), p(out_c.clone())],
        vec![p(format!("{}/00000000000000000000000000000000-gone", sd))],
        vec![p(format!(
            "{}/00000000000000000000000000000000-gone.drv!out",
            sd
        ))],
        vec![p(pr(c))],
        vec![
            p(format!("{}!out", pr(c))),
            p(format!("{}!out", pr(e))),
            p(out_a),
            p(out_c),
        ],
    ];

    let daemon = fx.ts.nix_daemon(Client::Host).start();
    let mut client = UnixDaemonClient::connect(daemon.socket(), sd.clone())
        .await
        .unwrap();
    for targets in cases {
        let theirs = client.query_missing(&targets).await.unwrap();
        let ours = fx.sched.query_missing(targets.clone()).await.unwrap();
        assert_eq!(ours, theirs, "QueryMissing {targets:?}");
    }

    // What needs no build is answered alike too: statuses, texts, DrvOutput ids,
    // realisations, and the order of the results.
    let targets = vec![
        p(format!("{}!out", pr(a))),
        p(format!("{}!*", pr(a))),
        p(pr(&fx.out_path(a))),
        p(format!("{}/00000000000000000000000000000000-gone", sd)),
    ];
    let theirs = client
        .build_paths_with_results(&targets, BuildMode::Normal)
        .await
        .unwrap();
    let mut req = fx.request(&[], |_| {});
    req.targets = targets;
    let sched = Arc::clone(&fx.sched);
    let (ours, _) =
        collect(|tx| async move { sched.build_paths_with_results(&req, &tx).await }).await;
    assert_eq!(ours.unwrap(), theirs);
}
