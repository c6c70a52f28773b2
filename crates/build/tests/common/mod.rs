//! Shared pieces of the end-to-end build tests: a throwaway store (from `nixnest-testkit`)
//! with the busybox toolchain, derivations instantiated by the real `nix-instantiate`,
//! nixnest's `LocalStore` on the same store, and an event collector.
//!
//! Tests need root (namespaces for every uid, build users) and the host's Nix 2.8; without
//! them they print why and pass without checking anything.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nixnest_build::{
    BuildEvents, BuildJob, BuildOutcome, BuildSettings, BuildStarted, Builder, HelperCommand,
    UserLease, UserPool,
};
use nixnest_core::{Derivation, StorePath};
use nixnest_store::{LocalStore, NullLogger, StoreConfig};
use nixnest_testkit::{BuildUsers, RunExt, TestStore, TestStoreBuilder};

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not running as root".into());
    }
    for p in [
        "/usr/bin/nix-store",
        "/usr/bin/nix-instantiate",
        "/usr/bin/nix-daemon",
    ] {
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
        if let Some(why) = common::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// The helper program built with these tests.
pub fn helper() -> HelperCommand {
    HelperCommand::new(env!("CARGO_BIN_EXE_nixnest-build-helper"))
}

/// Settings for tests: sandbox on, no fallback.
pub fn settings() -> BuildSettings {
    let mut s = BuildSettings::new(helper());
    s.sandbox_fallback = false;
    s
}

/// A throwaway store seen by both the real Nix (for instantiation and comparisons) and
/// nixnest.
pub struct Fx {
    pub ts: TestStore,
    pub store: LocalStore,
    pub pool: Option<UserPool>,
}

impl Fx {
    /// A store with a private build-users group of `users` members (0 = none).
    pub fn new(users: usize) -> Fx {
        let mut b: TestStoreBuilder = TestStore::builder();
        if users > 0 {
            b = b.build_users(BuildUsers::private(users));
        }
        let ts = b.build();
        ts.busybox();
        let gid = ts.build_users().map(|u| u.gid());
        let config = StoreConfig {
            store_dir: ts.store_dir(),
            state_dir: ts.state_dir(),
            log_dir: ts.log_dir(),
            build_users_gid: gid,
            ..StoreConfig::default()
        };
        let store = LocalStore::open(config, &NullLogger).expect("opening the test store");
        let pool = ts
            .build_users()
            .map(|u| UserPool::new(u.group(), &ts.state_dir()));
        Fx { ts, store, pool }
    }

    /// Writes `expr` next to `bb/` and instantiates it with the real `nix-instantiate`.
    pub fn instantiate(&self, file: &str, expr: &str) -> (StorePath, Derivation) {
        let path = self.ts.write_expr(file, expr);
        let drv_path = self.ts.nix("nix-instantiate").arg(&path).run();
        let sp = self.store.parse_path(drv_path.trim()).unwrap();
        let text = std::fs::read(self.store.real_store_dir().join(sp.to_string())).unwrap();
        let drv = Derivation::parse_at(self.store.store_dir(), &sp, &text).unwrap();
        (sp, drv)
    }

    /// The input closure of `drv` (its input sources and the outputs of its input
    /// derivations, which must be valid, with their closures).
    pub fn inputs(&self, drv: &Derivation) -> BTreeSet<StorePath> {
        let mut start: BTreeSet<StorePath> = drv.input_srcs.clone();
        for (d, outs) in &drv.input_drvs {
            let text = std::fs::read(self.store.real_store_dir().join(d.to_string())).unwrap();
            let dd = Derivation::parse_at(self.store.store_dir(), d, &text).unwrap();
            for (name, p) in dd.output_paths(self.store.store_dir()).unwrap() {
                if outs.contains(&name) {
                    start.insert(p.unwrap());
                }
            }
        }
        self.store
            .compute_closure(&start, false, false, false)
            .unwrap()
    }

    /// A build user from the pool.
    pub fn lease(&self) -> UserLease {
        self.pool
            .as_ref()
            .expect("store without build users")
            .try_acquire()
            .unwrap()
            .expect("a free build user")
    }

    /// Builds with `settings`, a fresh build user if the store has them, and `events`.
    pub fn build_with(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        settings: &BuildSettings,
        events: &mut dyn BuildEvents,
    ) -> BuildOutcome {
        let lease = self.pool.as_ref().map(|_| self.lease());
        self.build_as(drv_path, drv, settings, lease.as_ref(), events)
    }

    /// Builds as `lease` (or as ourselves).
    pub fn build_as(
        &self,
        drv_path: &StorePath,
        drv: &Derivation,
        settings: &BuildSettings,
        lease: Option<&UserLease>,
        events: &mut dyn BuildEvents,
    ) -> BuildOutcome {
        let mut job = BuildJob::new(drv_path.clone(), drv, self.inputs(drv));
        job.build_user = lease;
        Builder::new(&self.store, settings)
            .build(&job, events)
            .unwrap()
    }

    /// Instantiates and builds `expr` with default settings.
    pub fn build_expr(&self, file: &str, expr: &str) -> (StorePath, BuildOutcome, Collect) {
        let (drv_path, drv) = self.instantiate(file, expr);
        let mut ev = Collect::default();
        let out = self.build_with(&drv_path, &drv, &settings(), &mut ev);
        (drv_path, out, ev)
    }

    /// Reads a (file) output.
    pub fn read_output(&self, outcome: &BuildOutcome, name: &str) -> String {
        let p = &outcome.built_outputs[name].path;
        std::fs::read_to_string(self.store.real_store_dir().join(p.to_string())).unwrap()
    }

    pub fn print(&self, p: &StorePath) -> String {
        self.store.print(p)
    }
}

/// A callback run when the builder starts.
pub type OnStarted = Box<dyn FnMut(&BuildStarted)>;

/// Everything a build said.
#[derive(Default)]
pub struct Collect {
    pub lines: Vec<String>,
    pub structured: Vec<String>,
    pub notes: Vec<String>,
    pub started: Option<(i32, PathBuf, bool)>,
    pub setup_ms: f64,
    pub exited: bool,
    /// Run when the builder starts (e.g. to request path visibility from another thread).
    pub on_started: Option<OnStarted>,
}

impl BuildEvents for Collect {
    fn started(&mut self, s: &BuildStarted) {
        self.started = Some((s.pid, s.host_build_dir.clone(), s.user_namespace));
        self.setup_ms = s.setup_time.as_secs_f64() * 1000.0;
        if let Some(f) = &mut self.on_started {
            f(s);
        }
    }
    fn log_line(&mut self, line: &[u8]) {
        self.lines.push(String::from_utf8_lossy(line).into_owned());
    }
    fn structured_log(&mut self, json: &str) {
        self.structured.push(json.to_owned());
    }
    fn builder_exited(&mut self) {
        self.exited = true;
    }
    fn note(&mut self, msg: &str) {
        self.notes.push(msg.to_owned());
    }
}

/// Replaces the store dir by `/STORE` and every 32-character hash part by `HASH`, so
/// observations from two stores can be compared.
pub fn normalise(s: &str, store_dir: &str) -> String {
    let s = s.replace(store_dir, "/STORE");
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let window = bytes.get(i..i + 33);
        let is_hash = window.is_some_and(|w| {
            w[..32]
                .iter()
                .all(|c| nixnest_core::nixbase32::is_nix32_char(*c))
                && w[32] == b'-'
        }) && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if is_hash {
            out.push_str("HASH-");
            i += 33;
        } else {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// uids of all processes, from `/proc/*/status`.
pub fn processes_of_uid(uid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let mut name = String::new();
        let mut state = String::new();
        let mut matches = false;
        for line in status.lines() {
            if let Some(n) = line.strip_prefix("Name:") {
                name = n.trim().to_owned();
            }
            if let Some(s) = line.strip_prefix("State:") {
                state = s.trim().to_owned();
            }
            if let Some(u) = line.strip_prefix("Uid:") {
                matches = u.split_whitespace().any(|x| x == uid.to_string());
            }
        }
        if matches && !state.starts_with('Z') {
            found.push((pid, name));
        }
    }
    found
}

/// A shared log for callbacks that run on other threads.
pub type Shared<T> = Arc<Mutex<T>>;
