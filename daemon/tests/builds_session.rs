//! The build ops through the daemon binary and our protocol client: the activity stream a
//! client receives, one build for two sessions asking at once, and a client that hangs
//! up in the middle of a build (the build is killed, its build user freed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builds_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use builds_support::{drv_expr, processes_of_uid, single_user, skip_reason, wait_for};
use nixnest_core::{DerivedPath, OutputsSpec, StoreDir, StorePath};
use nixnest_protocol::client::UnixDaemonClient;
use nixnest_protocol::stderr::{ActivityType, Field, ResultType, StderrMessage};
use nixnest_protocol::types::{BuildMode, BuildStatus, ClientSettings};
use nixnest_testkit::{BuildUsers, Client, Daemon, RunExt, TestStore};

/// `status`' builds: (drv path, build uid).
fn builds(store: &TestStore) -> Vec<(String, Option<u64>)> {
    let socket = store.state_dir().join("nixnest/control");
    let Ok(mut s) = UnixStream::connect(socket) else {
        return Vec::new();
    };
    s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["status"]["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["drv_path"].as_str().unwrap().to_owned(),
                b["build_uid"].as_u64(),
            )
        })
        .collect()
}

struct Fx {
    store: TestStore,
    daemon: Daemon,
    sd: StoreDir,
}

impl Fx {
    fn new(users: usize) -> Fx {
        let store = TestStore::builder()
            .sandbox(true)
            .build_users(BuildUsers::private(users))
            .conf("max-jobs = 2")
            .build();
        store.busybox();
        let daemon = store
            .daemon("nixnest", env!("CARGO_BIN_EXE_nixnest-daemon"))
            .start();
        let sd = StoreDir::new(store.store_dir().to_str().unwrap().to_owned()).unwrap();
        Fx { store, daemon, sd }
    }

    /// Instantiates a list of derivations through the daemon.
    fn instantiate(&self, file: &str, exprs: &[String]) -> Vec<StorePath> {
        let path = self
            .store
            .write_expr(file, &format!("[ {} ]", exprs.join(" ")));
        self.store
            .client(Client::Host)
            .daemon(&self.daemon)
            .command("nix-instantiate")
            .arg(path)
            .run()
            .lines()
            .map(|l| self.sd.parse_path(l).unwrap())
            .collect()
    }

    async fn client(&self) -> (UnixDaemonClient, Arc<Mutex<Vec<StderrMessage>>>) {
        let mut c = UnixDaemonClient::connect(self.daemon.socket(), self.sd.clone())
            .await
            .unwrap();
        c.set_options(&ClientSettings::default()).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        c.set_logger(move |m| sink.lock().unwrap().push(m.clone()));
        (c, seen)
    }
}

fn out(drv: &StorePath) -> DerivedPath {
    DerivedPath::Built {
        drv_path: drv.clone(),
        outputs: OutputsSpec::names(["out"]).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sees_cppnix_activities() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let fx = Fx::new(1);
    let drvs = fx.instantiate(
        "acts.nix",
        &[format!(
            "({})",
            drv_expr(
                "acts",
                r#"echo one; echo '@nix {"action":"setPhase","phase":"buildPhase"}'; echo '@nix {"action":"msg","level":0,"msg":"said in JSON"}'; echo two; echo x > $out"#,
                &[]
            )
        )],
    );
    let (mut c, seen) = fx.client().await;
    c.build_paths(&[out(&drvs[0])], BuildMode::Normal)
        .await
        .unwrap();
    let msgs = seen.lock().unwrap().clone();
    let starts: Vec<(ActivityType, String, Vec<Field>)> = msgs
        .iter()
        .filter_map(|m| match m {
            StderrMessage::StartActivity(a) => Some((
                a.activity_type,
                String::from_utf8_lossy(&a.text).into_owned(),
                a.fields.clone(),
            )),
            _ => None,
        })
        .collect();
    let drv = fx.sd.print(&drvs[0]);
    assert_eq!(
        starts,
        [
            (ActivityType::Realise, String::new(), vec![]),
            (ActivityType::Builds, String::new(), vec![]),
            (ActivityType::CopyPaths, String::new(), vec![]),
            (
                ActivityType::Build,
                format!("building '{drv}'"),
                vec![
                    Field::String(drv.clone().into_bytes()),
                    Field::String(vec![]),
                    Field::Int(1),
                    Field::Int(1)
                ]
            ),
        ]
    );
    let lines: Vec<Vec<Field>> = msgs
        .iter()
        .filter_map(|m| match m {
            StderrMessage::Result {
                result_type: ResultType::BuildLogLine,
                fields,
                ..
            } => Some(fields.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines,
        [
            vec![Field::String(b"one".to_vec())],
            vec![Field::String(b"two".to_vec())]
        ]
    );
    // `@nix` lines: a phase on the build's activity, a message as a log line.
    assert!(msgs.iter().any(|m| matches!(
        m,
        StderrMessage::Result { result_type: ResultType::SetPhase, fields, .. }
            if fields == &[Field::String(b"buildPhase".to_vec())]
    )));
    assert!(
        msgs.contains(&StderrMessage::Next(b"said in JSON\n".to_vec())),
        "{msgs:?}"
    );
    let stops = msgs
        .iter()
        .filter(|m| matches!(m, StderrMessage::StopActivity { .. }))
        .count();
    assert_eq!(stops, 4);
    // The last progress says: one built, nothing running or failed.
    let progress: Vec<&Vec<Field>> = msgs
        .iter()
        .filter_map(|m| match m {
            StderrMessage::Result {
                result_type: ResultType::Progress,
                fields,
                ..
            } if fields.iter().any(|f| *f != Field::Int(0)) => Some(fields),
            _ => None,
        })
        .collect();
    assert_eq!(
        progress.last().unwrap(),
        &&[1, 1, 0, 0].map(Field::Int).to_vec()
    );
    // The session goes on.
    assert!(c.is_valid_path(&drvs[0]).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_share_one_build_and_a_hang_up_cancels() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    // One build user: what the hung-up build held must come back.
    let fx = Fx::new(1);
    let (only_uid, _locks) = single_user(&fx.store);
    let drvs = fx.instantiate(
        "share.nix",
        &[
            format!(
                "({})",
                drv_expr("shared", "echo hi; sleep 2; echo x > $out", &[])
            ),
            format!(
                "({})",
                drv_expr(
                    "long",
                    "echo started; sleep 1000 & sleep 1000; echo x > $out",
                    &[]
                )
            ),
            format!("({})", drv_expr("after", "echo y > $out", &[])),
        ],
    );
    let (shared, long, after) = (&drvs[0], &drvs[1], &drvs[2]);

    // Two sessions, one build.
    let (mut a, _) = fx.client().await;
    let (mut b, _) = fx.client().await;
    let seen_two = Arc::new(Mutex::new(0usize));
    let watch = tokio::spawn({
        let store = fx.store.clone();
        let seen_two = Arc::clone(&seen_two);
        async move {
            loop {
                let n = builds(&store).len();
                {
                    let mut m = seen_two.lock().unwrap();
                    *m = (*m).max(n);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let wanted = [out(shared)];
    let (ra, rb) = tokio::join!(
        a.build_paths_with_results(&wanted, BuildMode::Normal),
        b.build_paths_with_results(&wanted, BuildMode::Normal)
    );
    watch.abort();
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra[0].result.status, BuildStatus::Built);
    assert_eq!(rb[0].result.status, BuildStatus::Built);
    assert_eq!(
        ra[0].result.built_outputs["out"].out_path,
        rb[0].result.built_outputs["out"].out_path
    );
    assert_eq!(
        *seen_two.lock().unwrap(),
        1,
        "the derivation was built twice"
    );

    // A client that hangs up mid-build.
    let task = tokio::spawn({
        let long = long.clone();
        async move { a.build_paths(&[out(&long)], BuildMode::Normal).await }
    });
    wait_for("the build to run", Duration::from_secs(20), || {
        builds(&fx.store).len() == 1
    })
    .await;
    let listed = builds(&fx.store);
    assert_eq!(listed[0].0, fx.sd.print(long));
    let uid = u32::try_from(listed[0].1.expect("a build user")).unwrap();
    assert_eq!(uid, only_uid);
    wait_for("the builder's processes", Duration::from_secs(20), || {
        !processes_of_uid(uid).is_empty()
    })
    .await;
    task.abort();
    let _ = task.await;
    wait_for("the build to be cancelled", Duration::from_secs(15), || {
        builds(&fx.store).is_empty() && processes_of_uid(uid).is_empty()
    })
    .await;
    let long_out = fx
        .store
        .client(Client::Host)
        .daemon(&fx.daemon)
        .command("nix-store")
        .args(["-q", "--outputs", &fx.sd.print(long)])
        .run();
    let long_out = fx.sd.parse_path(&long_out).unwrap();
    assert!(!b.is_valid_path(&long_out).await.unwrap());
    // The build user is free: the other session builds.
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        b.build_paths_with_results(&[out(after)], BuildMode::Normal),
    )
    .await
    .expect("the build user was released")
    .unwrap();
    assert_eq!(
        r[0].result.status,
        BuildStatus::Built,
        "{}",
        r[0].result.error_msg
    );
}
