//! Shared pieces of the scheduler tests (`builds*.rs`): a throwaway store with the busybox
//! toolchain, derivations instantiated by the real `nix-instantiate`, a [`Scheduler`] on
//! the same store whose build helper is `nixnest-daemon __build-helper`, and helpers to run
//! requests and collect what a client would have received.
//!
//! The tests need root (sandboxes for every uid, build users) and the host's Nix 2.8;
//! without them they print why and pass without checking anything.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use nixnest_build::HelperCommand;
use nixnest_core::{DerivedPath, OutputsSpec, StorePath};
use nixnest_daemon::builds::{BuildRequest, HELPER_SUBCOMMAND, Scheduler, SchedulerConfig};
use nixnest_daemon::config::{ConfigEnv, Settings};
use nixnest_daemon::control::Registry;
use nixnest_protocol::stderr::{Field, StderrMessage};
use nixnest_protocol::types::{BuildResult, KeyedBuildResult};
use nixnest_store::{LocalStore, NullLogger, StoreConfig};
use nixnest_testkit::{BuildUsers, RunExt, TestStore};

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not running as root".into());
    }
    for p in ["/usr/bin/nix-instantiate", "/usr/bin/nix-daemon"] {
        if !Path::new(p).exists() {
            return Some(format!("{p} is missing (Debian's nix-bin)"));
        }
    }
    if !nixnest_testkit::busybox::source().exists() {
        return Some("no static busybox (busybox-static)".into());
    }
    None
}

/// Returns early from a test (passing) with a message when it cannot run here.
#[macro_export]
macro_rules! require_env {
    () => {
        if let Some(why) = builds_support::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// `nixnest-daemon __build-helper`.
pub fn helper() -> HelperCommand {
    HelperCommand::new(env!("CARGO_BIN_EXE_nixnest-daemon")).arg(HELPER_SUBCOMMAND)
}

/// A store, its scheduler and the daemon settings.
pub struct Fx {
    pub ts: TestStore,
    pub store: Arc<LocalStore>,
    pub registry: Arc<Registry>,
    pub settings: Settings,
    pub sched: Arc<Scheduler>,
}

impl Fx {
    /// A sandboxed store with `users` private build users (0 = none) and a daemon-wide
    /// `max-jobs` of `max_jobs`.
    pub fn new(users: usize, max_jobs: usize) -> Fx {
        let mut b = TestStore::builder().sandbox(true);
        if users > 0 {
            b = b.build_users(BuildUsers::private(users));
        }
        let ts = b.build();
        ts.busybox();
        let env = ConfigEnv::from_vars(
            |name| match name {
                "NIX_STORE_DIR" => Some(ts.store_dir().display().to_string()),
                "NIX_STATE_DIR" => Some(ts.state_dir().display().to_string()),
                "NIX_LOG_DIR" => Some(ts.log_dir().display().to_string()),
                "NIX_CONF_DIR" => Some(ts.conf_dir().display().to_string()),
                _ => None,
            },
            None,
        )
        .unwrap();
        let mut settings = Settings::defaults(&env);
        settings.build_users_group = ts
            .build_users()
            .map(|u| u.group().to_owned())
            .unwrap_or_default();
        settings.set("sandbox-fallback", "false").unwrap();
        settings.set("max-jobs", &max_jobs.to_string()).unwrap();
        let config = StoreConfig {
            store_dir: ts.store_dir(),
            state_dir: ts.state_dir(),
            log_dir: ts.log_dir(),
            build_users_gid: ts.build_users().map(|u| u.gid()),
            ..StoreConfig::default()
        };
        let store = Arc::new(LocalStore::open(config, &NullLogger).expect("opening the store"));
        let registry = Registry::new();
        let mut sc = SchedulerConfig::from_settings(&settings, helper());
        sc.poll_interval = Duration::from_millis(200);
        let sched = Scheduler::new(Arc::clone(&store), Arc::clone(&registry), sc);
        Fx {
            ts,
            store,
            registry,
            settings,
            sched,
        }
    }

    /// See [`single_user`].
    pub fn single_user(&self) -> (u32, Vec<std::fs::File>) {
        single_user(&self.ts)
    }

    /// Instantiates `expr` (a derivation or a list of them) with the real
    /// `nix-instantiate`; the `.drv` paths in order.
    pub fn instantiate(&self, file: &str, expr: &str) -> Vec<StorePath> {
        let path = self.ts.write_expr(file, expr);
        let out = self.ts.nix("nix-instantiate").arg(&path).run();
        out.lines()
            .map(|l| self.store.parse_path(l.trim()).unwrap())
            .collect()
    }

    /// The path of output `out` of `drv`.
    pub fn out_path(&self, drv: &StorePath) -> StorePath {
        let d = nixnest_store::drv::read_derivation(&self.store, drv).unwrap();
        d.output_paths(self.store.store_dir()).unwrap()["out"]
            .clone()
            .unwrap()
    }

    pub fn real(&self, p: &StorePath) -> std::path::PathBuf {
        self.store.real_store_dir().join(p.to_string())
    }

    pub fn read_out(&self, drv: &StorePath) -> String {
        std::fs::read_to_string(self.real(&self.out_path(drv))).unwrap()
    }

    pub fn valid(&self, p: &StorePath) -> bool {
        self.store.is_valid_path(p).unwrap()
    }

    /// A request for `drv!out` of each of `drvs`, with the daemon's settings changed by
    /// `tweak`.
    pub fn request(&self, drvs: &[&StorePath], tweak: impl FnOnce(&mut Settings)) -> BuildRequest {
        let mut s = self.settings.clone();
        tweak(&mut s);
        BuildRequest::new(drvs.iter().map(|d| built(d)).collect(), Arc::new(s))
    }
}

/// Leaves the daemon exactly one build user: the group may list more members than
/// asked for (a group made by an earlier run for more users), so every member but the
/// first is taken here, by holding its lock in this store's `userpool` (as a build
/// would). Returns the free user's uid and the locks to keep.
pub fn single_user(ts: &TestStore) -> (u32, Vec<std::fs::File>) {
    use rustix::fs::{FlockOperation, flock};
    let group = ts.build_users().expect("a store with build users").group();
    let (_, members) = nixnest_testkit::users::lookup_group(group).unwrap();
    let uids: Vec<u32> = members
        .iter()
        .map(|m| nixnest_testkit::users::lookup_user(m).unwrap().uid)
        .collect();
    let dir = ts.state_dir().join("userpool");
    std::fs::create_dir_all(&dir).unwrap();
    let locks = uids[1..]
        .iter()
        .map(|uid| {
            let f = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(uid.to_string()))
                .unwrap();
            flock(&f, FlockOperation::NonBlockingLockExclusive).unwrap();
            f
        })
        .collect();
    (uids[0], locks)
}

/// `drv!out`.
pub fn built(drv: &StorePath) -> DerivedPath {
    DerivedPath::Built {
        drv_path: drv.clone(),
        outputs: OutputsSpec::names(["out"]).unwrap(),
    }
}

/// Runs `f` with a sink whose messages are collected.
pub async fn collect<T, F, Fut>(f: F) -> (T, Vec<StderrMessage>)
where
    F: FnOnce(mpsc::Sender<StderrMessage>) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (tx, mut rx) = mpsc::channel(256);
    let drain = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(m) = rx.recv().await {
            v.push(m);
        }
        v
    });
    let r = f(tx).await;
    let msgs = drain.await.unwrap();
    (r, msgs)
}

/// BuildPathsWithResults for `req`, keyed by the printed derived path.
pub async fn results(
    fx: &Fx,
    req: BuildRequest,
) -> (BTreeMap<String, BuildResult>, Vec<StderrMessage>) {
    let sched = Arc::clone(&fx.sched);
    let sd = fx.store.store_dir().clone();
    let (r, msgs) = collect(|tx| async move {
        let r = sched.build_paths_with_results(&req, &tx).await;
        drop(tx);
        r
    })
    .await;
    let map = r
        .unwrap()
        .into_iter()
        .map(|KeyedBuildResult { path, result }| (path.print(&sd), result))
        .collect();
    (map, msgs)
}

/// The text of every `STDERR_NEXT`, and of every build log line, in order.
pub fn texts(msgs: &[StderrMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            StderrMessage::Next(l) => Some(String::from_utf8_lossy(l).trim_end().to_owned()),
            StderrMessage::Result { fields, .. } => match fields.first() {
                Some(Field::String(s)) if fields.len() == 1 => {
                    Some(String::from_utf8_lossy(s).into_owned())
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Waits until `cond` holds (panics after `timeout`).
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Processes running as `uid` (from `/proc/*/status`).
pub fn processes_of_uid(uid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if real_uid == Some(uid) {
            found.push(pid);
        }
    }
    found
}

/// A busybox derivation named `name` running `script`, with `deps` (names of `let`
/// bindings) as attributes `dep0`, `dep1`, … .
pub fn drv_expr(name: &str, script: &str, deps: &[String]) -> String {
    let mut d = nixnest_testkit::Derivation::new(name, script);
    for (i, dep) in deps.iter().enumerate() {
        d = d.attr(&format!("dep{i}"), dep);
    }
    d.to_nix()
}
