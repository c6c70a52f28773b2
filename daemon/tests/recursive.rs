//! Recursive Nix in process: a build's view served to nixnest's own client, without a real
//! build (no sandbox handle: additions are bookkeeping only; nothing is built, so the
//! scheduler never starts a builder), so every row of the
//! restricted op table can be checked precisely and fast. Real builds, both channels and
//! the real `nix` client are in `tests/tests/recursive_*.rs`.
//!
//! * the restricted op table, request by request on one connection;
//! * the depth limit; the view closing ends its sessions;
//! * seed-style admission (build user → running build; none: rejected; session cap);
//! * the per-build socket: mode, refusals after the builder exited, and a flood of
//!   connections and garbage on one build's socket leaving another build's session alone;
//! * the build-user deadlock rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use nixnest_core::{DerivedPath, OutputsSpec, StoreDir, StorePath};
use nixnest_daemon::auth::Access;
use nixnest_daemon::builds::{Scheduler, SchedulerConfig};
use nixnest_daemon::config::{ConfigEnv, Settings};
use nixnest_daemon::control::Registry;
use nixnest_daemon::listener::{Connection, ShutdownTrigger, shutdown_channel};
use nixnest_daemon::recursive::{
    BuildView, MAX_SESSIONS_PER_BUILD, NewView, Recursive, RecursiveConfig, ServeContext, server,
};
use nixnest_daemon::session::{self, Shared, Worker};
use nixnest_protocol::Error as ProtoError;
use nixnest_protocol::client::DaemonClient;
use nixnest_protocol::request::{RegisterDrvOutput, Request};
use nixnest_protocol::stderr::NixError;
use nixnest_protocol::types::{BuildMode, ClientSettings, GcAction, GcOptions, GcPaths};
use nixnest_protocol::version::feature;
use nixnest_protocol::{FeatureSet, ProtocolVersion};
use nixnest_store::{LocalStore, NullLogger, StoreConfig, TempRoots};

use common::{info_for, nar_of};

type Client = DaemonClient<BufReader<OwnedReadHalf>, OwnedWriteHalf>;

fn remote(e: ProtoError) -> NixError {
    match e {
        ProtoError::Remote(e) => e,
        other => panic!("expected an error from the daemon, got {other}"),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<LocalStore>,
    shared: Arc<Shared>,
    recursive: Arc<Recursive>,
    settings: Arc<Settings>,
    registry: Arc<Registry>,
    trigger: ShutdownTrigger,
    /// Keeps what the fixture itself adds.
    roots: TempRoots,
}

fn fixture_with(config: RecursiveConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(StoreConfig::under(dir.path()), &NullLogger).unwrap());
    let registry = Registry::new();
    // No build in these tests runs a builder (no build users, no helper needed).
    let scheduler = Scheduler::new(
        Arc::clone(&store),
        Arc::clone(&registry),
        SchedulerConfig {
            helper: nixnest_build::HelperCommand::new("/bin/false"),
            max_jobs: 1,
            build_users: None,
            poll_interval: Duration::from_secs(1),
            recursive: config,
        },
    );
    let recursive = Arc::clone(scheduler.recursive());
    let worker = Worker::new(Arc::clone(&store), scheduler);
    let env = ConfigEnv::from_vars(|_| None, None).unwrap();
    let (trigger, _) = shutdown_channel();
    let roots = store.temp_roots_session();
    Fixture {
        _dir: dir,
        shared: Arc::clone(worker.shared()),
        store,
        recursive,
        settings: Arc::new(Settings::defaults(&env)),
        registry,
        trigger,
        roots,
    }
}

fn fixture() -> Fixture {
    fixture_with(RecursiveConfig {
        per_build: true,
        seed: true,
        max_depth: 3,
        nested_jobs: 1,
    })
}

impl Fixture {
    fn sd(&self) -> StoreDir {
        self.store.store_dir().clone()
    }

    fn print(&self, p: &StorePath) -> String {
        self.store.print(p)
    }

    /// Adds a text file as an ordinary client would (outside any view).
    fn add_text(&self, name: &str, text: &str, refs: &[&StorePath]) -> StorePath {
        let refs = refs.iter().map(|p| (*p).clone()).collect();
        self.store
            .add_text(name, text.as_bytes(), &refs, &self.roots, &NullLogger)
            .unwrap()
            .path
    }

    /// A derivation (with no inputs) added outside any view: its path and text.
    fn add_drv_text(&self, name: &str) -> (StorePath, String) {
        use nixnest_core::{Derivation, DerivationOutput};
        let sd = self.sd();
        let mut drv = Derivation {
            name: name.to_owned(),
            outputs: [("out".to_owned(), DerivationOutput::Deferred)].into(),
            input_drvs: Default::default(),
            input_srcs: BTreeSet::new(),
            platform: "x86_64-linux".to_owned(),
            builder: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), "echo > $out".to_owned()],
            env: [
                ("name".to_owned(), name.to_owned()),
                ("builder".to_owned(), "/bin/sh".to_owned()),
                ("system".to_owned(), "x86_64-linux".to_owned()),
                ("out".to_owned(), String::new()),
            ]
            .into(),
        };
        drv.fill_in_output_paths(&sd, |_| panic!("no inputs"))
            .unwrap();
        let aterm = drv.to_aterm(&sd).unwrap();
        (self.add_text(&format!("{name}.drv"), &aterm, &[]), aterm)
    }

    fn add_drv(&self, name: &str) -> StorePath {
        self.add_drv_text(name).0
    }

    fn view(&self, inputs: &[&StorePath], parent: Option<Arc<BuildView>>) -> Arc<BuildView> {
        let inputs: BTreeSet<StorePath> = inputs.iter().map(|p| (*p).clone()).collect();
        let closure = self
            .store
            .compute_closure(&inputs, false, false, false)
            .unwrap();
        let n = self.recursive.registered();
        let drv = self.add_text(&format!("outer-{n}"), "stands for the derivation", &[]);
        BuildView::new(
            Arc::clone(&self.store),
            NewView {
                drv_path: drv,
                inputs: closure,
                build_uid: None,
                parent,
                nested_jobs: 1,
            },
        )
    }

    fn connection(&self, stream: UnixStream, access: Access) -> Connection<UnixStream> {
        self.connection_with(stream, access, Arc::clone(&self.settings))
    }

    fn connection_with(
        &self,
        stream: UnixStream,
        access: Access,
        settings: Arc<Settings>,
    ) -> Connection<UnixStream> {
        static ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);
        let id = ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Connection {
            id,
            stream,
            peer: None,
            access,
            settings,
            shutdown: self.trigger.subscribe(),
            session: self.registry.register_session(id, None, access),
        }
    }

    /// A client in `view`'s session (the session runs on its own task).
    async fn connect(&self, view: &Arc<BuildView>, features: &FeatureSet) -> Client {
        self.connect_with(view, features, Arc::clone(&self.settings))
            .await
    }

    /// The same, with other daemon settings.
    async fn connect_with(
        &self,
        view: &Arc<BuildView>,
        features: &FeatureSet,
        settings: Arc<Settings>,
    ) -> Client {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let permit = view.try_session().expect("a session slot");
        let conn = self.connection_with(theirs, Access::BuildUser { uid: 30001 }, settings);
        tokio::spawn(session::serve_in_view(
            Arc::clone(&self.shared),
            conn,
            Arc::clone(view),
            permit,
        ));
        client(ours, self.sd(), features).await
    }

    fn serve_context(&self) -> ServeContext {
        ServeContext {
            shared: Arc::downgrade(&self.shared),
            settings: Arc::clone(&self.settings),
            registry: Arc::clone(&self.registry),
            shutdown: self.trigger.subscribe(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

async fn client(stream: UnixStream, sd: StoreDir, features: &FeatureSet) -> Client {
    let (rd, wr) = stream.into_split();
    DaemonClient::handshake(
        BufReader::new(rd),
        wr,
        sd,
        ProtocolVersion::LATEST,
        features,
    )
    .await
    .unwrap()
}

fn gc(action: GcAction) -> GcOptions {
    GcOptions {
        action,
        paths: GcPaths::Specific {
            paths: BTreeSet::new(),
            delete_referrers: false,
        },
        ignore_liveness: false,
        max_freed: u64::MAX,
    }
}

/// Every row of the restricted op table, on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restricted_op_table() {
    let fx = fixture();
    let dep = fx.add_text("dep", "a dependency", &[]);
    let input = fx.add_text("input", "an input", &[&dep]);
    let hidden = fx.add_text("hidden", "not for the build", &[]);
    let hidden_drv_path = fx.add_drv("hidden");
    // A visible path with metadata to censor: a deriver, a signature, ultimate.
    let signed = common::fresh_path("signed");
    let nar = nar_of(b"signed contents");
    let mut info = info_for(&signed, &nar, &[]);
    info.deriver = Some(common::fresh_path("signed.drv"));
    info.ultimate = true;
    info.sigs = ["cache.example.org-1:c2lnbmF0dXJl".to_owned()].into();
    fx.store
        .add_to_store_nar(&info, &mut &nar[..], false, false, &fx.roots, &NullLogger)
        .unwrap();
    // A path outside the view that refers to an input: its referrer must stay hidden.
    fx.add_text("referrer", "refers", &[&input]);

    let view = fx.view(&[&input, &signed], None);
    let mut c = fx
        .connect(&view, &[feature::DISABLE_SET_OPTIONS].into_iter().collect())
        .await;
    // Offered in a build's session only (spec §2.4).
    assert!(
        c.negotiated()
            .features
            .contains(feature::DISABLE_SET_OPTIONS)
    );

    // Settings from inside: nothing applied, each one answered with a warning.
    let seen = common::record(&mut c);
    let settings = ClientSettings {
        overrides: [
            ("sandbox".to_owned(), "false".to_owned()),
            ("timeout".to_owned(), "5".to_owned()),
        ]
        .into(),
        ..ClientSettings::default()
    };
    c.set_options(&settings).await.unwrap();
    assert_eq!(
        common::lines(&seen.lock().unwrap()),
        [
            "warning: ignoring setting 'sandbox' sent from inside a build",
            "warning: ignoring setting 'timeout' sent from inside a build",
        ]
    );

    // Queries see the input closure only.
    let visible: BTreeSet<StorePath> = [&dep, &input, &signed].into_iter().cloned().collect();
    assert_eq!(c.query_all_valid_paths().await.unwrap(), visible);
    assert!(c.is_valid_path(&input).await.unwrap());
    assert!(!c.is_valid_path(&hidden).await.unwrap());
    assert_eq!(c.query_path_info(&hidden).await.unwrap(), None);
    assert_eq!(
        c.query_valid_paths(&[hidden.clone(), dep.clone()].into(), false)
            .await
            .unwrap(),
        [dep.clone()].into()
    );
    let e = remote(
        c.call(&Request::QueryPathHash(hidden.clone()))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.msg, format!("path '{}' is not valid", fx.print(&hidden)));
    let e = remote(c.query_deriver(&hidden).await.unwrap_err());
    assert!(e.msg.ends_with("is not valid"), "{e}");

    // Censored metadata.
    let got = c.query_path_info(&signed).await.unwrap().unwrap();
    assert_eq!(got.nar_hash, info.nar_hash);
    assert_eq!(
        (got.deriver, got.registration_time, got.ultimate, got.sigs),
        (None, 0, false, BTreeSet::new())
    );
    assert_eq!(c.query_deriver(&signed).await.unwrap(), None);
    assert_eq!(
        c.query_path_info(&input).await.unwrap().unwrap().references,
        [dep.clone()].into()
    );

    // Referrers: always empty; hash-part lookups and derivers: refused, session goes on.
    assert_eq!(c.query_referrers(&dep).await.unwrap(), BTreeSet::new());
    assert_eq!(c.query_referrers(&input).await.unwrap(), BTreeSet::new());
    let e = remote(
        c.query_path_from_hash_part(&input.to_string()[..32])
            .await
            .unwrap_err(),
    );
    assert!(e.msg.contains("queryPathFromHashPart"), "{e}");
    let e = remote(c.query_valid_derivers(&input).await.unwrap_err());
    assert!(e.msg.contains("queryValidDerivers"), "{e}");

    // NARs: inside the view only.
    let mut nar_out = Vec::new();
    c.nar_from_path(&signed, &mut nar_out).await.unwrap();
    assert_eq!(nar_out, nar);
    let e = remote(c.nar_from_path(&hidden, &mut Vec::new()).await.unwrap_err());
    assert!(e.msg.ends_with("is not valid"), "{e}");
    let e = remote(c.export_path(&hidden).await.unwrap_err());
    assert!(e.msg.ends_with("is not valid"), "{e}");

    // Adds: allowed; references must be visible; the new path joins the view, the
    // build's temp roots, and the list of additions.
    let added = c
        .add_text_to_store("added", b"made inside", &[input.clone()].into())
        .await
        .unwrap();
    assert!(c.is_valid_path(&added).await.unwrap());
    assert!(c.query_all_valid_paths().await.unwrap().contains(&added));
    assert_eq!(view.added(), [added.clone()].into());
    let roots_file = view.temp_roots().unwrap().file_path().to_owned();
    let rooted = std::fs::read_to_string(&roots_file).unwrap();
    assert!(
        rooted.split('\0').any(|r| r == fx.print(&added)),
        "{rooted:?}"
    );
    let e = remote(
        c.add_text_to_store("bad", b"names a hidden path", &[hidden.clone()].into())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.msg, format!("path '{}' is not valid", fx.print(&hidden)));
    // An unsigned input-addressed NAR is refused (the session is never trusted).
    let unsigned = common::fresh_path("unsigned");
    let nar2 = nar_of(b"unsigned");
    let e = remote(
        c.add_to_store_nar(
            &info_for(&unsigned, &nar2, &[]),
            false,
            true,
            &mut &nar2[..],
        )
        .await
        .unwrap_err(),
    );
    assert!(e.msg.contains("lacks a signature"), "{e}");
    assert!(!c.is_valid_path(&unsigned).await.unwrap());

    // An import naming a hidden path (export records carry no signatures, so only a daemon
    // with `require-sigs = false` lets the import through): in the store, but it does not
    // join the view.
    let sneaky = fx.add_text("sneaky", "refers to the hidden path", &[&hidden]);
    let mut export = Vec::new();
    fx.store
        .export_paths(std::slice::from_ref(&sneaky), &mut export)
        .unwrap();
    let e = remote(
        c.call_pulled(&Request::ImportPaths, &mut &export[..])
            .await
            .unwrap_err(),
    );
    assert!(e.msg.contains("lacks a signature"), "{e}");
    let mut lax = (*fx.settings).clone();
    lax.require_sigs = false;
    let mut c2 = fx
        .connect_with(&view, &FeatureSet::new(), Arc::new(lax))
        .await;
    let e = remote(
        c2.call_pulled(&Request::ImportPaths, &mut &export[..])
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.msg,
        format!(
            "path '{}' refers to '{}', which this build cannot see (recursive Nix)",
            fx.print(&sneaky),
            fx.print(&hidden)
        )
    );
    assert!(!c2.is_valid_path(&sneaky).await.unwrap());
    assert!(!view.is_visible(&sneaky));

    // Roots and the collector: no-ops.
    c.add_temp_root(&hidden).await.unwrap();
    assert!(
        !c.is_valid_path(&hidden).await.unwrap(),
        "rooting must not reveal"
    );
    c.add_indirect_root("/build/result").await.unwrap();
    let auto = fx.store.state_dir().join("gcroots/auto");
    assert_eq!(
        std::fs::read_dir(&auto).map(|d| d.count()).unwrap_or(0),
        0,
        "no indirect root registered"
    );
    assert_eq!(c.find_roots().await.unwrap(), Vec::new());
    let r = c.collect_garbage(&gc(GcAction::DeleteDead)).await.unwrap();
    assert_eq!((r.paths.len(), r.bytes_freed), (0, 0));
    let mut all = gc(GcAction::DeleteSpecific);
    all.paths = GcPaths::Specific {
        paths: [hidden.clone()].into(),
        delete_referrers: false,
    };
    let r = c.collect_garbage(&all).await.unwrap();
    assert!(r.paths.is_empty());
    assert!(fx.store.is_valid_path(&hidden).unwrap(), "nothing deleted");
    let mut live = gc(GcAction::DeleteDead);
    live.ignore_liveness = true;
    let e = remote(c.collect_garbage(&live).await.unwrap_err());
    assert_eq!(e.msg, "you are not allowed to ignore liveness");
    assert!(!c.verify_store(true, false).await.unwrap());
    c.optimise_store().await.unwrap();

    // Refused store methods.
    let e = remote(
        c.add_signatures(&input, &["k:c2ln".to_owned()].into())
            .await
            .unwrap_err(),
    );
    assert!(e.msg.contains("addSignatures"), "{e}");
    let e = remote(
        c.register_drv_output(&RegisterDrvOutput::Json(
            nixnest_protocol::types::Realisation {
                id: nixnest_protocol::types::placeholder_drv_output("out"),
                out_path: input.clone(),
                signatures: BTreeSet::new(),
                dependent_realisations: Default::default(),
            },
        ))
        .await
        .unwrap_err(),
    );
    assert!(e.msg.contains("registerDrvOutput"), "{e}");

    // Building: named paths must be visible, normal mode only.
    let hidden_drv = DerivedPath::Built {
        drv_path: hidden_drv_path.clone(),
        outputs: OutputsSpec::All,
    };
    let e = remote(
        c.build_paths(std::slice::from_ref(&hidden_drv), BuildMode::Normal)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.msg,
        format!(
            "cannot build '{}' in recursive Nix because path is unknown",
            fx.print(&hidden_drv_path)
        )
    );
    let e = remote(
        c.build_paths_with_results(&[DerivedPath::Opaque(hidden.clone())], BuildMode::Normal)
            .await
            .unwrap_err(),
    );
    assert!(e.msg.contains("because path is unknown"), "{e}");
    let e = remote(
        c.build_paths(&[DerivedPath::Opaque(input.clone())], BuildMode::Check)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.msg, "unsupported build mode");
    c.build_paths(&[DerivedPath::Opaque(input.clone())], BuildMode::Normal)
        .await
        .unwrap();
    let e = remote(c.ensure_path(&hidden).await.unwrap_err());
    assert_eq!(
        e.msg,
        format!(
            "cannot substitute unknown path '{}' in recursive Nix",
            fx.print(&hidden)
        )
    );
    c.ensure_path(&input).await.unwrap();
    let m = c
        .query_missing(&[
            DerivedPath::Opaque(hidden.clone()),
            DerivedPath::Opaque(input.clone()),
            hidden_drv,
        ])
        .await
        .unwrap();
    assert_eq!(m.unknown, [hidden.clone(), hidden_drv_path.clone()].into());
    assert!(m.will_build.is_empty());

    // Still the same session, still working.
    assert!(c.is_valid_path(&added).await.unwrap());
}

/// A session of a build at the depth limit may query and add, not build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_stops_at_the_depth_limit() {
    let fx = fixture();
    let input = fx.add_text("input", "x", &[]);
    let level1 = fx.view(&[&input], None);
    let level2 = fx.view(&[&input], Some(Arc::clone(&level1)));
    let level3 = fx.view(&[&input], Some(Arc::clone(&level2)));
    assert_eq!((level1.depth(), level2.depth(), level3.depth()), (1, 2, 3));
    let opaque = [DerivedPath::Opaque(input.clone())];

    let mut c2 = fx.connect(&level2, &FeatureSet::new()).await;
    c2.build_paths(&opaque, BuildMode::Normal).await.unwrap();

    let mut c3 = fx.connect(&level3, &FeatureSet::new()).await;
    let e = remote(
        c3.build_paths(&opaque, BuildMode::Normal)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.msg,
        format!(
            "recursive Nix is nested too deeply: '{}' runs at depth 3 and 'recursive-nix-max-depth' is 3, so it cannot start builds",
            level3.printed()
        )
    );
    let added = c3
        .add_text_to_store("deep", b"ok", &BTreeSet::new())
        .await
        .unwrap();
    assert!(c3.is_valid_path(&added).await.unwrap());
    assert!(level3.is_visible(&added));
    assert!(!level2.is_visible(&added), "views are per build");
}

/// A build cannot be asked for from inside itself (it would wait for itself), even when
/// the session makes its derivation visible by adding the same text again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_cannot_build_itself() {
    let fx = fixture();
    let (drv_path, aterm) = fx.add_drv_text("outer");
    let view = BuildView::new(
        Arc::clone(&fx.store),
        NewView {
            drv_path: drv_path.clone(),
            inputs: BTreeSet::new(),
            build_uid: None,
            parent: None,
            nested_jobs: 1,
        },
    );
    let mut c = fx.connect(&view, &FeatureSet::new()).await;
    let again = c
        .add_text_to_store("outer.drv", aterm.as_bytes(), &BTreeSet::new())
        .await
        .unwrap();
    assert_eq!(again, drv_path);
    let wanted = [DerivedPath::Built {
        drv_path: drv_path.clone(),
        outputs: OutputsSpec::All,
    }];
    let e = remote(c.build_paths(&wanted, BuildMode::Normal).await.unwrap_err());
    assert_eq!(
        e.msg,
        format!(
            "cannot build '{}' in recursive Nix: it is being built already, by a build this one runs inside of",
            fx.print(&drv_path)
        )
    );
    assert!(c.is_valid_path(&drv_path).await.unwrap());
}

/// The builder exited: the view closes, its sessions end, nothing more can be added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_view_ends_its_sessions() {
    let fx = fixture();
    let input = fx.add_text("input", "x", &[]);
    let view = fx.view(&[&input], None);
    let mut c = fx.connect(&view, &FeatureSet::new()).await;
    assert!(c.is_valid_path(&input).await.unwrap());
    let late = fx.add_text("late", "added by someone else", &[]);

    let closer = Arc::clone(&view);
    let joined =
        tokio::task::spawn_blocking(move || closer.close_and_wait(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(joined, "sessions ended");
    let e = c.is_valid_path(&input).await.unwrap_err();
    assert!(
        matches!(e, ProtoError::Eof | ProtoError::Io(_)),
        "the connection is closed: {e}"
    );
    let e = view.add(&late).unwrap_err();
    assert!(e.to_string().contains("has finished"), "{e}");
    assert!(view.try_session().is_some(), "slots were given back");
    view.finish();
    assert!(view.temp_roots().is_none(), "roots released");
}

/// Seed style: a build user is served only while a build runs as that user, and only so
/// many sessions at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_admission() {
    let fx = fixture();
    let input = fx.add_text("input", "x", &[]);
    let e = fx.recursive.admit_build_user(30001, "nixbld1").unwrap_err();
    assert_eq!(
        e,
        "user 'nixbld1' is a build user, but no build is running as that user"
    );

    let drv = fx.add_text("seed", "x", &[]);
    let view = BuildView::new(
        Arc::clone(&fx.store),
        NewView {
            drv_path: drv,
            inputs: [input.clone()].into(),
            build_uid: Some(30001),
            parent: None,
            nested_jobs: 1,
        },
    );
    let guard = fx.recursive.register(Arc::clone(&view));
    let mut permits = Vec::new();
    for _ in 0..MAX_SESSIONS_PER_BUILD {
        let (v, p) = fx.recursive.admit_build_user(30001, "nixbld1").unwrap();
        assert!(Arc::ptr_eq(&v, &view));
        permits.push(p);
    }
    let e = fx.recursive.admit_build_user(30001, "nixbld1").unwrap_err();
    assert!(
        e.contains("already has 32 recursive-Nix connections open"),
        "{e}"
    );
    assert!(fx.recursive.admit_build_user(30002, "nixbld2").is_err());
    permits.clear();

    // Through the session's own entry point: served with the build's view.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let conn = fx.connection(theirs, Access::BuildUser { uid: 30001 });
    tokio::spawn(session::serve(Arc::clone(&fx.shared), conn));
    let mut c = client(ours, fx.sd(), &FeatureSet::new()).await;
    assert_eq!(
        c.query_all_valid_paths().await.unwrap(),
        [input.clone()].into()
    );

    // The build ended: the session closes, and the user is rejected again.
    drop(guard);
    assert!(view.is_closed());
    let e = c.query_all_valid_paths().await.unwrap_err();
    assert!(matches!(e, ProtoError::Eof | ProtoError::Io(_)), "{e}");
    assert_eq!(fx.recursive.registered(), 0);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let conn = fx.connection(theirs, Access::BuildUser { uid: 30001 });
    tokio::spawn(session::serve(Arc::clone(&fx.shared), conn));
    let mut ours = ours;
    let mut buf = Vec::new();
    // (The write may already fail: the daemon side is closed.)
    let _ = ours.write_all(&0x6e697863u64.to_le_bytes()).await;
    let _ = ours.read_to_end(&mut buf).await;
    assert!(buf.is_empty(), "closed without a protocol byte");
}

/// The per-build socket: 0600, served until the view closes, then refused; a flood of
/// connections and garbage on one build's socket costs that build only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_build_sockets_and_floods() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;
    let fx = fixture();
    let ctx = fx.serve_context();
    let input = fx.add_text("input", "x", &[]);
    let dirs = tempfile::tempdir().unwrap();
    let mut sockets = Vec::new();
    let mut views = Vec::new();
    for name in ["flooded", "quiet"] {
        let dir = dirs.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        let listener = server::bind_build_socket(fd.as_fd(), None).unwrap();
        let path = dir.join(".nix-socket");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let view = fx.view(&[&input], None);
        server::spawn_listener(&ctx, Arc::clone(&view), listener).unwrap();
        sockets.push(path);
        views.push(view);
    }
    let (flooded, quiet) = (&sockets[0], &sockets[1]);

    // The quiet build's client, connected before the flood and used during it.
    let mut q = client(
        UnixStream::connect(quiet).await.unwrap(),
        fx.sd(),
        &FeatureSet::new(),
    )
    .await;
    assert!(q.is_valid_path(&input).await.unwrap());

    // The flood, first of garbage: 150 connections at once, each sending junk instead of
    // a greeting (their sessions fail and end; a full backlog refuses connects, which is
    // the kernel bounding it). The quiet build's client is served all along.
    let mut held = Vec::new();
    for _ in 0..150 {
        if let Ok(mut s) = UnixStream::connect(flooded).await {
            let _ = s.write_all(&[0xff; 4096]).await;
            held.push(s);
        }
    }
    for _ in 0..20 {
        assert!(q.is_valid_path(&input).await.unwrap());
    }
    common::eventually("the garbage sessions to end", || {
        views[0].open_sessions() == 0
    })
    .await;
    // Then silent connections that never greet (connected until the build is full; late
    // junk from the backlog may still take a slot for a moment): the build holds its cap
    // of sessions, no more, and further connections are closed.
    let mut tries = 0;
    while views[0].open_sessions() < MAX_SESSIONS_PER_BUILD && tries < 5000 {
        if let Ok(s) = UnixStream::connect(flooded).await {
            held.push(s);
        }
        tries += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(views[0].open_sessions(), MAX_SESSIONS_PER_BUILD);
    for _ in 0..50 {
        if let Ok(s) = UnixStream::connect(flooded).await {
            held.push(s);
        }
    }
    for _ in 0..20 {
        assert!(q.is_valid_path(&input).await.unwrap());
    }
    assert_eq!(views[0].open_sessions(), MAX_SESSIONS_PER_BUILD);
    assert!(views[0].try_session().is_none());
    assert_eq!(views[1].open_sessions(), 1);
    drop(held);

    // After the flood, the flooded build serves a proper client again.
    common::eventually("slots to come back", || views[0].open_sessions() == 0).await;
    let mut f = client(
        UnixStream::connect(flooded).await.unwrap(),
        fx.sd(),
        &FeatureSet::new(),
    )
    .await;
    assert!(f.is_valid_path(&input).await.unwrap());

    // The quiet build's builder exits: its socket stops accepting.
    views[1].close();
    let e = q.is_valid_path(&input).await.unwrap_err();
    assert!(matches!(e, ProtoError::Eof | ProtoError::Io(_)), "{e}");
    common::eventually("the listener to close", || {
        std::os::unix::net::UnixStream::connect(quiet).is_err()
    })
    .await;
    assert!(f.is_valid_path(&input).await.unwrap());
}

/// The build-user rule: a nested build waiting for a user fails at once when every
/// user is held by a build waiting, through its nested builds, for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_user_deadlocks_are_detected() {
    let fx = fixture();
    let new = |uid: u32, parent: Option<Arc<BuildView>>| {
        let drv = fx.add_text(&format!("b{uid}"), &uid.to_string(), &[]);
        BuildView::new(
            Arc::clone(&fx.store),
            NewView {
                drv_path: drv,
                inputs: BTreeSet::new(),
                build_uid: Some(uid),
                parent,
                nested_jobs: 1,
            },
        )
    };
    // A chain: outer (user 1) runs middle (user 2), whose nested build waits.
    let outer = new(1, None);
    let middle = new(2, Some(Arc::clone(&outer)));
    let _g1 = fx.recursive.register(Arc::clone(&outer));
    let _g2 = fx.recursive.register(Arc::clone(&middle));
    let waiting = middle.waiting_for_user();
    let msg = fx.recursive.user_deadlock(&middle, 2).unwrap();
    assert!(msg.contains("all 2 build users"), "{msg}");
    assert!(msg.contains("(2 by this build"), "{msg}");
    // A third user exists (free, or held by someone else): keep waiting.
    assert_eq!(fx.recursive.user_deadlock(&middle, 3), None);
    drop(waiting);

    // Two independent outer builds, each with a nested build waiting: the second to
    // look sees the deadlock; while only one waits, the other outer build may still end.
    let other = new(3, None);
    let _g3 = fx.recursive.register(Arc::clone(&other));
    drop(_g2);
    let w1 = outer.waiting_for_user();
    assert_eq!(fx.recursive.user_deadlock(&outer, 2), None);
    let _w2 = other.waiting_for_user();
    assert!(fx.recursive.user_deadlock(&other, 2).is_some());
    drop(w1);
    assert_eq!(fx.recursive.user_deadlock(&other, 2), None);
}
