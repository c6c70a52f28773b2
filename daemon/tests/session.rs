//! The session, driven precisely with nixnest's own client (and by hand where a client
//! would never misbehave): every op group, errors that keep or end a session, clients
//! that disappear mid-upload, per-session options, trust limits, concurrency, `--stdio`.
//! Every connection sends two or more requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use nixnest_core::derivation::DrvHashes;
use nixnest_core::{
    ContentAddressMethod, Derivation, DerivationOutput, DerivedPath, HashAlgo, OutputsSpec,
    StorePath,
};
use nixnest_protocol::Error as ProtoError;
use nixnest_protocol::handshake::TrustLevel;
use nixnest_protocol::request::{AddToStoreRequest, RealisationKey, RegisterDrvOutput, Request};
use nixnest_protocol::response::Response;
use nixnest_protocol::stderr::{ActivityType, NixError, ResultType, StderrMessage, Verbosity};
use nixnest_protocol::types::{
    BuildMode, BuildStatus, ClientSettings, DrvOutput, GcAction, GcOptions, GcPaths, Realisation,
};
use nixnest_protocol::{ProtocolVersion, WireType};
use nixnest_testkit::TestStore;

use common::*;

fn remote(e: ProtoError) -> NixError {
    match e {
        ProtoError::Remote(e) => e,
        other => panic!("expected an error from the daemon, got {other}"),
    }
}

fn gc(action: GcAction, paths: BTreeSet<StorePath>) -> GcOptions {
    GcOptions {
        action,
        paths: GcPaths::Specific {
            paths,
            delete_referrers: false,
        },
        ignore_liveness: false,
        max_freed: u64::MAX,
    }
}

/// A one-output input-addressed derivation with no inputs, ready to be written.
fn simple_drv(store: &TestStore, name: &str, script: &str) -> (Derivation, StorePath) {
    let sd = store_dir(store);
    let mut drv = Derivation {
        name: name.to_owned(),
        outputs: [("out".to_owned(), DerivationOutput::Deferred)].into(),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".to_owned(),
        builder: "/bin/sh".to_owned(),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: [
            ("name".to_owned(), name.to_owned()),
            ("builder".to_owned(), "/bin/sh".to_owned()),
            ("system".to_owned(), "x86_64-linux".to_owned()),
            // The evaluator hashes with the output variable present and empty.
            ("out".to_owned(), String::new()),
        ]
        .into(),
    };
    drv.fill_in_output_paths(&sd, |_| panic!("no inputs"))
        .unwrap();
    let path = drv.drv_path(&sd).unwrap();
    (drv, path)
}

fn out_path(store: &TestStore, drv: &Derivation) -> StorePath {
    drv.output_paths(&store_dir(store)).unwrap()["out"]
        .clone()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_and_adds_on_one_connection() {
    let store = TestStore::new();
    let d = nixnest(&store);
    let mut c = connect(&d, &store).await;
    assert_eq!(c.negotiated().info.trust, TrustLevel::Trusted);
    assert_eq!(
        c.negotiated().info.daemon_nix_version.as_deref(),
        Some(nixnest_daemon::DAEMON_VERSION_STRING)
    );
    // The peer's per-user directories exist, as CppNix creates them on connect.
    for dir in ["profiles/per-user/root", "gcroots/per-user/root"] {
        assert!(store.state_dir().join(dir).is_dir(), "{dir}");
    }
    let none = BTreeSet::new();

    // AddToStore ≥ 1.25: spec appendix B's `nix-store --add hello.txt`.
    let nar = nar_of(b"hello world\n");
    let hello = c
        .add_to_store(
            "hello.txt",
            ContentAddressMethod::NixArchive,
            HashAlgo::Sha256,
            &none,
            false,
            &mut &nar[..],
        )
        .await
        .unwrap();
    assert_eq!(
        hello.ca.as_ref().unwrap().to_string(),
        "fixed:r:sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil"
    );
    assert_eq!(hello.nar_size, 128);
    assert_eq!(
        hello.nar_hash.to_base16(),
        "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603"
    );
    assert_eq!(
        std::fs::read(store.store_dir().join(hello.path.to_base_name())).unwrap(),
        b"hello world\n"
    );
    // Adding it again answers the existing info (same registration time).
    let again = c
        .add_to_store(
            "hello.txt",
            ContentAddressMethod::NixArchive,
            HashAlgo::Sha256,
            &none,
            false,
            &mut &nar[..],
        )
        .await
        .unwrap();
    assert_eq!(again, hello);
    // Flat, raw bytes.
    let flat = c
        .add_to_store(
            "flat.txt",
            ContentAddressMethod::Flat,
            HashAlgo::Sha256,
            &none,
            false,
            &mut &b"flat content\n"[..],
        )
        .await
        .unwrap();
    assert_eq!(
        flat.ca.unwrap().to_string(),
        "fixed:sha256:0hxx6wyswf9fj3z81yr0810i8k5lx3jbp4xw8ipwamswn1smxkr9"
    );

    // AddTextToStore with a reference.
    let text = c
        .add_text_to_store("ref", b"refers to hello", &[hello.path.clone()].into())
        .await
        .unwrap();

    // Queries.
    assert!(c.is_valid_path(&text).await.unwrap());
    let info = c.query_path_info(&text).await.unwrap().unwrap();
    assert_eq!(info.references, [hello.path.clone()].into());
    assert!(info.ca.unwrap().to_string().starts_with("text:sha256:"));
    assert_eq!(
        c.query_referrers(&hello.path).await.unwrap(),
        [text.clone()].into()
    );
    let missing = fresh_path("missing");
    assert_eq!(
        c.query_valid_paths(&[text.clone(), missing.clone()].into(), true)
            .await
            .unwrap(),
        [text.clone()].into()
    );
    let all = c.query_all_valid_paths().await.unwrap();
    assert!(all.contains(&text) && all.contains(&hello.path) && all.contains(&flat.path));
    assert_eq!(
        c.query_path_from_hash_part(&text.hash_part())
            .await
            .unwrap(),
        Some(text.clone())
    );
    assert_eq!(
        c.query_path_from_hash_part(&missing.hash_part())
            .await
            .unwrap(),
        None
    );
    assert_eq!(c.query_deriver(&text).await.unwrap(), None);
    assert_eq!(
        c.call(&Request::QueryReferences(text.clone()))
            .await
            .unwrap(),
        Response::Paths([hello.path.clone()].into())
    );
    assert_eq!(
        c.call(&Request::QueryPathHash(hello.path.clone()))
            .await
            .unwrap(),
        Response::NarHash(hello.nar_hash)
    );
    assert_eq!(
        c.call(&Request::HasSubstitutes(missing.clone()))
            .await
            .unwrap(),
        Response::Bool(false)
    );
    assert_eq!(
        c.call(&Request::QuerySubstitutablePaths([missing.clone()].into()))
            .await
            .unwrap(),
        Response::Paths(BTreeSet::new())
    );
    assert_eq!(
        c.call(&Request::QuerySubstitutablePathInfos(
            [(missing.clone(), None)].into()
        ))
        .await
        .unwrap(),
        Response::QuerySubstitutablePathInfos(BTreeMap::new())
    );
    assert!(!c.is_valid_path(&missing).await.unwrap());
    assert_eq!(c.query_path_info(&missing).await.unwrap(), None);

    // NarFromPath: STDERR_LAST, then the NAR; the session goes on.
    let mut got = Vec::new();
    c.nar_from_path(&hello.path, &mut got).await.unwrap();
    assert_eq!(got, nar);
    // ExportPath: the record through STDERR_WRITE.
    let record = c.export_path(&hello.path).await.unwrap();
    assert!(record.starts_with(&nar));
    assert!(c.is_valid_path(&hello.path).await.unwrap());

    // AddToStoreNar (framed at 1.38) of an unsigned input-addressed path: a trusted
    // client may waive the signature check.
    let dep = fresh_path("dep");
    let dep_nar = nar_of(b"dep\n");
    c.add_to_store_nar(
        &info_for(&dep, &dep_nar, &[]),
        false,
        true,
        &mut &dep_nar[..],
    )
    .await
    .unwrap();
    let dep_info = c.query_path_info(&dep).await.unwrap().unwrap();
    assert_eq!(dep_info.nar_hash, info_for(&dep, &dep_nar, &[]).nar_hash);

    // AddMultipleToStore: two paths in one stream, the second referring to the first.
    let (a, b) = (fresh_path("multi-a"), fresh_path("multi-b"));
    let (a_nar, b_nar) = (nar_of(b"a\n"), nar_of(b"b\n"));
    let mut stream =
        nixnest_protocol::WireWriter::new(ProtocolVersion::new(1, 16), store_dir(&store));
    stream.write_u64(2);
    let mut a_info = info_for(&a, &a_nar, &[]);
    a_info.ultimate = true;
    a_info.encode(&mut stream);
    stream.write_raw(&a_nar);
    info_for(&b, &b_nar, &[&a]).encode(&mut stream);
    stream.write_raw(&b_nar);
    let bytes = stream.take();
    c.add_multiple_to_store(false, true, &mut &bytes[..])
        .await
        .unwrap();
    let b_info = c.query_path_info(&b).await.unwrap().unwrap();
    assert_eq!(b_info.references, [a.clone()].into());
    // AddMultipleToStore never keeps `ultimate`.
    assert!(!c.query_path_info(&a).await.unwrap().unwrap().ultimate);
    assert_eq!(
        std::fs::read(store.store_dir().join(b.to_base_name())).unwrap(),
        b"b\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn derivations_and_build_ops() {
    let store = TestStore::new();
    let d = nixnest(&store);
    let mut c = connect(&d, &store).await;
    let sd = store_dir(&store);

    let (drv, drv_path) = simple_drv(&store, "simple", "echo hi > $out");
    let out = out_path(&store, &drv);
    let written = c
        .add_text_to_store(
            "simple.drv",
            drv.to_aterm(&sd).unwrap().as_bytes(),
            &BTreeSet::new(),
        )
        .await
        .unwrap();
    assert_eq!(written, drv_path);

    // What the .drv says.
    assert_eq!(
        c.query_derivation_output_map(&drv_path).await.unwrap(),
        [("out".to_owned(), Some(out.clone()))].into()
    );
    assert_eq!(
        c.call(&Request::QueryDerivationOutputNames(drv_path.clone()))
            .await
            .unwrap(),
        Response::Strings(["out".to_owned()].into())
    );
    assert_eq!(
        c.call(&Request::QueryDerivationOutputs(drv_path.clone()))
            .await
            .unwrap(),
        Response::Paths([out.clone()].into())
    );
    assert_eq!(
        c.query_valid_derivers(&out).await.unwrap(),
        [drv_path.clone()].into()
    );
    let missing_drv = fresh_path("nothing.drv");
    let e = remote(
        c.query_derivation_output_map(&missing_drv)
            .await
            .unwrap_err(),
    );
    assert!(e.msg.ends_with("is not valid"), "{e}");

    // The output is missing: it is built (no sandbox in this store; /bin/sh is there).
    let wanted = DerivedPath::Built {
        drv_path: drv_path.clone(),
        outputs: OutputsSpec::All,
    };
    let m = c
        .query_missing(std::slice::from_ref(&wanted))
        .await
        .unwrap();
    assert_eq!(m.will_build, [drv_path.clone()].into());
    assert!(m.unknown.is_empty() && m.will_substitute.is_empty());
    let r = c
        .build_paths_with_results(std::slice::from_ref(&wanted), BuildMode::Normal)
        .await
        .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].result.status, BuildStatus::Built, "{r:?}");
    assert_eq!(r[0].result.times_built, 1);
    assert_eq!(
        std::fs::read(store.store_dir().join(out.to_base_name())).unwrap(),
        b"hi\n"
    );

    // Once the output exists (adding it again is a no-op), everything is already valid.
    let out_nar = nar_of(b"hi\n");
    let mut info = info_for(&out, &out_nar, &[]);
    info.deriver = Some(drv_path.clone());
    c.add_to_store_nar(&info, false, true, &mut &out_nar[..])
        .await
        .unwrap();
    let m = c
        .query_missing(std::slice::from_ref(&wanted))
        .await
        .unwrap();
    assert!(m.will_build.is_empty() && m.unknown.is_empty());
    let r = c
        .build_paths_with_results(
            &[wanted.clone(), DerivedPath::Opaque(out.clone())],
            BuildMode::Normal,
        )
        .await
        .unwrap();
    let by_path: BTreeMap<_, _> = r.into_iter().map(|k| (k.path, k.result)).collect();
    let built = &by_path[&wanted];
    assert_eq!(built.status, BuildStatus::AlreadyValid);
    let mut no_inputs = DrvHashes::new(
        sd.clone(),
        |p: &StorePath| -> nixnest_core::Result<Derivation> {
            panic!("unexpected input derivation {p}")
        },
    );
    let masked = drv.hash_modulo(&sd, true, no_inputs.lookup()).unwrap();
    assert_eq!(
        built.built_outputs["out"],
        Realisation {
            id: DrvOutput {
                drv_hash: *masked.get("out").unwrap(),
                output: "out".into()
            },
            out_path: out.clone(),
            signatures: BTreeSet::new(),
            dependent_realisations: BTreeMap::new(),
        }
    );
    let opaque = &by_path[&DerivedPath::Opaque(out.clone())];
    assert_eq!(opaque.status, BuildStatus::AlreadyValid);
    assert!(opaque.built_outputs.is_empty());
    c.build_paths(std::slice::from_ref(&wanted), BuildMode::Normal)
        .await
        .unwrap();
    assert_eq!(c.query_deriver(&out).await.unwrap(), Some(drv_path.clone()));
    c.ensure_path(&out).await.unwrap();

    // Nothing can be substituted.
    let nothing = fresh_path("nothing");
    let e = remote(c.ensure_path(&nothing).await.unwrap_err());
    assert_eq!(
        e.msg,
        format!(
            "path '{}' does not exist and cannot be created",
            sd.print(&nothing)
        )
    );
    let e = remote(
        c.build_paths(&[DerivedPath::Opaque(nothing.clone())], BuildMode::Normal)
            .await
            .unwrap_err(),
    );
    // CppNix 2.8: the substitution goal keeps no error of its own.
    assert_eq!(e.msg, format!("build of '{}' failed", sd.print(&nothing)));
    let log = record(&mut c);
    let bad_drv = DerivedPath::Built {
        drv_path: missing_drv.clone(),
        outputs: OutputsSpec::All,
    };
    let e = remote(
        c.build_paths(
            &[DerivedPath::Opaque(nothing.clone()), bad_drv.clone()],
            BuildMode::Normal,
        )
        .await
        .unwrap_err(),
    );
    let mut quoted = [sd.print(&nothing), sd.print(&missing_drv)];
    quoted.sort_by_key(|p| p.rsplit('/').next().unwrap().to_owned());
    assert_eq!(
        e.msg,
        format!("build of '{}', '{}' failed", quoted[0], quoted[1])
    );
    assert!(
        lines(&log.lock().unwrap())
            .iter()
            .any(|l| l.starts_with("error: cannot build missing derivation")),
        "{:?}",
        log.lock().unwrap()
    );
    let r = c
        .build_paths_with_results(std::slice::from_ref(&bad_drv), BuildMode::Normal)
        .await
        .unwrap();
    // CppNix 2.8: the substitution of the .drv fails, then the goal, with MiscFailure.
    assert_eq!(r[0].result.status, BuildStatus::MiscFailure);
    let m = c
        .query_missing(&[DerivedPath::Opaque(nothing.clone()), bad_drv])
        .await
        .unwrap();
    assert_eq!(m.unknown, [nothing.clone(), missing_drv].into());

    // BuildDerivation: valid outputs are already valid; anything else is built.
    let basic: nixnest_core::BasicDerivation = drv.clone().into();
    let r = c
        .build_derivation(&drv_path, &basic, BuildMode::Normal)
        .await
        .unwrap();
    assert_eq!(r.status, BuildStatus::AlreadyValid);
    assert_eq!(r.built_outputs["out"].out_path, out);
    let (fresh, fresh_path_) = simple_drv(&store, "fresh", "echo new > $out");
    let r = c
        .build_derivation(&fresh_path_, &fresh.into(), BuildMode::Normal)
        .await
        .unwrap();
    assert_eq!(r.status, BuildStatus::Built, "{r:?}");
    assert_eq!(r.times_built, 1);

    // Realisations: none, and registering one is refused; the session goes on.
    let key = RealisationKey::Id(DrvOutput {
        drv_hash: *masked.get("out").unwrap(),
        output: "out".into(),
    });
    assert_eq!(c.query_realisation(&key).await.unwrap(), None);
    let e = remote(
        c.register_drv_output(&RegisterDrvOutput::Json(Realisation {
            id: DrvOutput {
                drv_hash: *masked.get("out").unwrap(),
                output: "out".into(),
            },
            out_path: out.clone(),
            signatures: BTreeSet::new(),
            dependent_realisations: BTreeMap::new(),
        }))
        .await
        .unwrap_err(),
    );
    assert!(e.msg.contains("content-addressed derivations"), "{e}");
    assert!(c.is_valid_path(&out).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn roots_gc_and_maintenance() {
    let store = TestStore::new();
    let d = nixnest(&store);
    let mut keeper = connect(&d, &store).await;
    let mut other = connect(&d, &store).await;
    let none = BTreeSet::new();

    // `other` adds three paths and roots one that `keeper` will also root; then leaves.
    let p1 = keeper.add_text_to_store("p1", b"one", &none).await.unwrap();
    let p2 = other.add_text_to_store("p2", b"two", &none).await.unwrap();
    let p3 = other
        .add_text_to_store("p3", b"three", &none)
        .await
        .unwrap();
    keeper.add_temp_root(&p2).await.unwrap();
    // Live sessions' temp roots (in this very process) protect their paths.
    let dead = keeper
        .collect_garbage(&gc(GcAction::ReturnDead, none.clone()))
        .await
        .unwrap();
    assert!(dead.paths.is_empty(), "{dead:?}");
    drop(other);
    eventually("the other session's temp roots to go", || {
        temproots_files(&store).len() == 1
    })
    .await;
    let dead = keeper
        .collect_garbage(&gc(GcAction::ReturnDead, none.clone()))
        .await
        .unwrap();
    let printed = |p: &StorePath| store_dir(&store).print(p);
    assert_eq!(dead.paths, [printed(&p3)].into());
    let live = keeper
        .collect_garbage(&gc(GcAction::ReturnLive, none.clone()))
        .await
        .unwrap();
    assert!(live.paths.contains(&printed(&p1)) && live.paths.contains(&printed(&p2)));

    // Deleting a live path is an error; the session goes on.
    let e = remote(
        keeper
            .collect_garbage(&gc(GcAction::DeleteSpecific, [p1.clone()].into()))
            .await
            .unwrap_err(),
    );
    assert!(e.msg.starts_with("Cannot delete path"), "{e}");
    let mut ignore = gc(GcAction::DeleteDead, none.clone());
    ignore.ignore_liveness = true;
    let e = remote(keeper.collect_garbage(&ignore).await.unwrap_err());
    assert_eq!(e.msg, "you are not allowed to ignore liveness");

    let log = record(&mut keeper);
    keeper
        .set_options(&ClientSettings {
            verbosity: Verbosity::Info,
            ..ClientSettings::default()
        })
        .await
        .unwrap();
    let deleted = keeper
        .collect_garbage(&gc(GcAction::DeleteDead, none.clone()))
        .await
        .unwrap();
    assert_eq!(deleted.paths, [printed(&p3)].into());
    assert!(deleted.bytes_freed > 0);
    assert!(!store.store_dir().join(p3.to_base_name()).exists());
    let shown = lines(&log.lock().unwrap());
    assert!(
        shown.contains(&"finding garbage collector roots...".to_owned())
            && shown.contains(&format!("deleting '{}'", printed(&p3))),
        "{shown:?}"
    );

    // Roots: temp (labelled for a trusted client), indirect, permanent.
    let roots = keeper.find_roots().await.unwrap();
    assert!(
        roots
            .iter()
            .any(|(link, target)| *target == p1 && link.starts_with("{temp:")),
        "{roots:?}"
    );
    let link = store.path("result");
    std::os::unix::fs::symlink(printed(&p2), &link).unwrap();
    keeper
        .add_indirect_root(link.to_str().unwrap())
        .await
        .unwrap();
    let auto = std::fs::read_dir(store.state_dir().join("gcroots/auto"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(auto, vec![link.clone()]);
    let perm = store.path("perm-root");
    let root = keeper
        .add_perm_root(&p1, perm.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(root, perm.to_str().unwrap());
    assert_eq!(
        std::fs::read_link(&perm).unwrap().to_str().unwrap(),
        printed(&p1)
    );
    let e = remote(keeper.add_indirect_root("relative/link").await.unwrap_err());
    assert!(e.msg.contains("is not an absolute path"), "{e}");
    keeper.call(&Request::SyncWithGC).await.unwrap();
    drop(keeper);

    // A new session: the indirect and permanent roots keep both paths.
    let mut c = connect(&d, &store).await;
    c.collect_garbage(&gc(GcAction::DeleteDead, none.clone()))
        .await
        .unwrap();
    assert!(c.is_valid_path(&p1).await.unwrap() && c.is_valid_path(&p2).await.unwrap());

    // OptimiseStore reports CppNix's activities: two identical files get linked.
    let x = c.add_text_to_store("x", b"same\n", &none).await.unwrap();
    let y = c.add_text_to_store("y", b"same\n", &none).await.unwrap();
    let log = record(&mut c);
    c.optimise_store().await.unwrap();
    let msgs = log.lock().unwrap().clone();
    assert!(
        msgs.iter()
            .any(|m| matches!(m, StderrMessage::StartActivity(a)
            if a.activity_type == ActivityType::OptimiseStore)),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| matches!(m, StderrMessage::Result { result_type, .. }
            if *result_type == ResultType::FileLinked)),
        "{msgs:?}"
    );
    let started = msgs
        .iter()
        .filter(|m| matches!(m, StderrMessage::StartActivity(_)))
        .count();
    let stopped = msgs
        .iter()
        .filter(|m| matches!(m, StderrMessage::StopActivity { .. }))
        .count();
    assert_eq!(started, stopped);
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &StorePath| {
        std::fs::metadata(store.store_dir().join(p.to_base_name()))
            .unwrap()
            .ino()
    };
    assert_eq!(ino(&x), ino(&y));

    // VerifyStore finds a modified path.
    assert!(!c.verify_store(true, false).await.unwrap());
    let victim = store.store_dir().join(p2.to_base_name());
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&victim, "tampered").unwrap();
    let log = record(&mut c);
    assert!(c.verify_store(true, false).await.unwrap());
    assert!(
        lines(&log.lock().unwrap())
            .iter()
            .any(|l| l.contains("was modified!")),
        "{:?}",
        log.lock().unwrap()
    );

    // AddSignatures, then the signature is in the path's info.
    c.add_signatures(&p1, &["test-key:c2lnbmF0dXJl".to_owned()].into())
        .await
        .unwrap();
    assert!(
        c.query_path_info(&p1)
            .await
            .unwrap()
            .unwrap()
            .sigs
            .contains("test-key:c2lnbmF0dXJl")
    );

    // AddBuildLog: stored where `nix log` reads it.
    let (_, drv_path) = simple_drv(&store, "logged", "true");
    c.add_build_log(&drv_path, &mut &b"build output\n"[..])
        .await
        .unwrap();
    let base = drv_path.to_base_name();
    let file = store
        .log_dir()
        .join("drvs")
        .join(&base[..2])
        .join(format!("{}.bz2", &base[2..]));
    assert_eq!(&std::fs::read(&file).unwrap()[..3], b"BZh");
    assert!(c.is_valid_path(&p1).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_after_a_whole_request_keep_the_session() {
    let store = TestStore::new();
    let d = nixnest(&store);
    let mut c = connect(&d, &store).await;
    let none = BTreeSet::new();
    let before = store_entries(&store);

    // A corrupt NAR in a framed AddToStore: drained, reported, the session goes on.
    let mut bad = nar_of(b"data");
    bad[8] = b'X';
    let e = remote(
        c.add_to_store(
            "bad",
            ContentAddressMethod::NixArchive,
            HashAlgo::Sha256,
            &none,
            false,
            &mut &bad[..],
        )
        .await
        .unwrap_err(),
    );
    assert!(e.msg.contains("archive") || e.msg.contains("NAR"), "{e}");
    assert!(!c.is_valid_path(&fresh_path("x")).await.unwrap());

    // A NAR whose hash is not the claimed one.
    let p = fresh_path("mismatch");
    let nar = nar_of(b"real");
    let mut info = info_for(&p, &nar, &[]);
    info.nar_hash = nixnest_core::Hash::sha256(b"something else");
    let e = remote(
        c.add_to_store_nar(&info, false, true, &mut &nar[..])
            .await
            .unwrap_err(),
    );
    assert!(e.msg.starts_with("hash mismatch importing path"), "{e}");
    assert!(!c.is_valid_path(&p).await.unwrap());

    // References that are not allowed or not valid.
    let text = c.add_text_to_store("t", b"t", &none).await.unwrap();
    let e = remote(
        c.add_to_store(
            "flat",
            ContentAddressMethod::Flat,
            HashAlgo::Sha256,
            &[text.clone()].into(),
            false,
            &mut &b"x"[..],
        )
        .await
        .unwrap_err(),
    );
    assert!(e.msg.contains("cannot have references"), "{e}");
    let e = remote(
        c.add_text_to_store("t2", b"t2", &[fresh_path("gone")].into())
            .await
            .unwrap_err(),
    );
    assert!(e.msg.ends_with("is not valid"), "{e}");
    let e = remote(
        c.call(&Request::QueryPathHash(fresh_path("gone")))
            .await
            .unwrap_err(),
    );
    assert!(e.msg.ends_with("is not valid"), "{e}");
    // A bad name is an error after the request was read.
    let e = remote(
        c.add_to_store(
            "bad name!",
            ContentAddressMethod::Flat,
            HashAlgo::Sha256,
            &none,
            false,
            &mut &b"x"[..],
        )
        .await
        .unwrap_err(),
    );
    assert!(e.msg.contains("bad name!"), "{e}");

    // Still in sync: a normal add works, and nothing was left behind.
    let ok = c.add_text_to_store("ok", b"ok", &none).await.unwrap();
    assert!(c.is_valid_path(&ok).await.unwrap());
    let mut after = store_entries(&store);
    after.remove(&ok.to_base_name());
    after.remove(&text.to_base_name());
    assert_eq!(after, before);
}

/// Sends `bytes` after a handshake; the daemon must answer with exactly one
/// `STDERR_ERROR` containing `expected`, then close.
async fn expect_error_then_close(
    store: &TestStore,
    d: &nixnest_testkit::Daemon,
    bytes: &[u8],
    expected: &str,
) {
    let mut raw = Raw::handshake(d, store, ProtocolVersion::LATEST).await;
    raw.w.write_raw(bytes);
    raw.flush().await;
    let msgs = raw.messages_until_eof().await;
    match msgs.as_slice() {
        [StderrMessage::Error(e)] => assert!(e.msg.contains(expected), "{e} vs {expected}"),
        other => panic!("expected one STDERR_ERROR ({expected}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_close_only_their_connection() {
    let store = TestStore::new();
    let d = nixnest(&store);
    // A well-behaved client stays connected throughout.
    let mut good = connect(&d, &store).await;
    let p = good
        .add_text_to_store("p", b"p", &BTreeSet::new())
        .await
        .unwrap();
    let word = |v: u64| v.to_le_bytes().to_vec();
    let string = |s: &[u8]| {
        let mut out = word(s.len() as u64);
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
        out
    };

    expect_error_then_close(&store, &d, &word(999), "invalid operation 999").await;
    expect_error_then_close(&store, &d, &word(24), "invalid operation 24").await;
    // A path outside the store fails while the request is read.
    let mut req = word(1);
    req.extend(string(b"/tmp/x"));
    expect_error_then_close(&store, &d, &req, "path '/tmp/x' is not in the Nix store").await;
    // A length word of 2^60 is refused before anything is allocated.
    let mut req = word(1);
    req.extend(word(1 << 60));
    expect_error_then_close(&store, &d, &req, "longer than the limit").await;
    // Non-zero padding.
    let mut req = word(29);
    req.extend(word(1));
    req.extend(b"a\x01\0\0\0\0\0\0");
    expect_error_then_close(&store, &d, &req, "padding").await;
    // A bool that is not 0 or 1.
    let mut req = word(35);
    req.extend(word(2));
    req.extend(word(0));
    expect_error_then_close(&store, &d, &req, "expected a boolean").await;

    // A client below 1.21 gets the daemon's magic and version, then EOF.
    let mut raw = Raw::open(&d, &store).await;
    raw.w.write_u64(nixnest_protocol::handshake::WORKER_MAGIC_1);
    raw.w.write_u64(ProtocolVersion::new(1, 20).to_wire());
    raw.flush().await;
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(raw.r.get_mut(), &mut rest)
        .await
        .unwrap();
    assert_eq!(rest.len(), 16, "{rest:?}");
    // A wrong magic: closed without a byte.
    let mut raw = Raw::open(&d, &store).await;
    raw.w.write_u64(0xdead_beef);
    raw.flush().await;
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(raw.r.get_mut(), &mut rest)
        .await
        .unwrap();
    assert!(rest.is_empty());
    // A client that stops in the middle of a request.
    let mut raw = Raw::handshake(&d, &store, ProtocolVersion::LATEST).await;
    raw.w.write_raw(&word(1));
    raw.w.write_raw(&word(60));
    raw.w.write_raw(b"/tmp/nixnest-");
    raw.flush().await;
    drop(raw);

    assert!(good.is_valid_path(&p).await.unwrap());
    assert!(!good.is_valid_path(&fresh_path("nope")).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_vanishing_mid_upload_leave_the_store_untouched() {
    let store = TestStore::new();
    let d = nixnest(&store);
    let mut good = connect(&d, &store).await;
    let kept = good
        .add_text_to_store("kept", b"kept", &BTreeSet::new())
        .await
        .unwrap();
    let before = store_entries(&store);
    let big = nar_of(&vec![b'z'; 1 << 20]);

    // Framed AddToStore (≥ 1.25): half the NAR, then gone.
    let mut raw = Raw::handshake(&d, &store, ProtocolVersion::LATEST).await;
    Request::AddToStore(AddToStoreRequest::ContentAddressed {
        name: "half".into(),
        method: ContentAddressMethod::NixArchive,
        algo: HashAlgo::Sha256,
        references: BTreeSet::new(),
        repair: false,
    })
    .encode(&mut raw.w);
    raw.w.write_u64(big.len() as u64);
    raw.w.write_raw(&big[..big.len() / 2]);
    raw.flush().await;
    // The daemon is restoring into a temporary object in the store when the client goes.
    eventually("a temporary object", || store_entries(&store) != before).await;
    drop(raw);
    eventually("the temporary object to go", || {
        store_entries(&store) == before
    })
    .await;

    // Framed AddToStoreNar, cut inside a frame header.
    let p = fresh_path("half-nar");
    let mut raw = Raw::handshake(&d, &store, ProtocolVersion::LATEST).await;
    Request::AddToStoreNar {
        info: info_for(&p, &big, &[]),
        repair: false,
        dont_check_sigs: true,
    }
    .encode(&mut raw.w);
    raw.w.write_u64(4096);
    raw.w.write_raw(&big[..4096]);
    raw.w.write_raw(&[1, 2, 3]);
    raw.flush().await;
    // The daemon is restoring into a temporary object in the store when the client goes.
    eventually("a temporary object", || store_entries(&store) != before).await;
    drop(raw);
    eventually("the temporary object to go", || {
        store_entries(&store) == before
    })
    .await;

    // Inline NAR (AddToStore < 1.25 at 1.21).
    let mut raw = Raw::handshake(&d, &store, ProtocolVersion::new(1, 21)).await;
    Request::AddToStore(AddToStoreRequest::Legacy {
        name: "inline".into(),
        fixed: true,
        recursive: true,
        hash_algo: "sha256".into(),
    })
    .encode(&mut raw.w);
    raw.w.write_raw(&big[..big.len() / 3]);
    raw.flush().await;
    // The daemon is restoring into a temporary object in the store when the client goes.
    eventually("a temporary object", || store_entries(&store) != before).await;
    drop(raw);
    eventually("the temporary object to go", || {
        store_entries(&store) == before
    })
    .await;

    eventually("the sessions to end and drop their temp roots", || {
        temproots_files(&store).len() == 1
    })
    .await;
    assert_eq!(store_entries(&store), before);
    assert!(!good.is_valid_path(&p).await.unwrap());
    assert!(good.is_valid_path(&kept).await.unwrap());
    assert_eq!(good.query_all_valid_paths().await.unwrap(), [kept].into());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_clients_fifty_queries_each() {
    let store = TestStore::new();
    let d = nixnest(&store);
    let mut setup = connect(&d, &store).await;
    let p = setup
        .add_text_to_store("shared", b"shared", &BTreeSet::new())
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let socket = d.socket().to_owned();
    for i in 0..200u32 {
        let (socket, sd, p) = (socket.clone(), store_dir(&store), p.clone());
        tasks.spawn(async move {
            let mut c = nixnest_protocol::client::UnixDaemonClient::connect(&socket, sd)
                .await
                .unwrap();
            c.set_options(&ClientSettings::default()).await.unwrap();
            let missing = fresh_path(&format!("missing-{i}"));
            for q in 0..50 {
                if q % 2 == 0 {
                    assert!(c.is_valid_path(&p).await.unwrap());
                } else {
                    assert!(c.query_path_info(&missing).await.unwrap().is_none());
                }
            }
            50
        });
    }
    let mut answered = 0;
    while let Some(n) = tasks.join_next().await {
        answered += n.unwrap();
    }
    assert_eq!(answered, 200 * 50);
    assert!(setup.is_valid_path(&p).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn set_options_is_per_session() {
    let store = TestStore::new();
    let d = nixnest(&store);
    let mut quiet = connect(&d, &store).await;
    let mut chatty = connect(&d, &store).await;
    quiet
        .set_options(&ClientSettings {
            verbosity: Verbosity::Error,
            ..ClientSettings::default()
        })
        .await
        .unwrap();
    let chatty_log = record(&mut chatty);
    chatty
        .set_options(&ClientSettings {
            verbosity: Verbosity::Talkative,
            overrides: vec![
                ("require-sigs".into(), "false".into()),
                ("no-such-setting".into(), "1".into()),
            ],
            ..ClientSettings::default()
        })
        .await
        .unwrap();
    assert_eq!(
        lines(&chatty_log.lock().unwrap()),
        vec!["warning: unknown setting 'no-such-setting'"]
    );
    let quiet_log = record(&mut quiet);
    chatty_log.lock().unwrap().clear();
    quiet.verify_store(false, false).await.unwrap();
    chatty.verify_store(false, false).await.unwrap();
    assert!(lines(&quiet_log.lock().unwrap()).is_empty());
    assert_eq!(
        lines(&chatty_log.lock().unwrap()),
        vec!["reading the Nix store...", "checking path existence..."]
    );

    // `require-sigs = false` applies to the session that set it, and only to it.
    let nar = nar_of(b"unsigned");
    let a = fresh_path("unsigned-a");
    chatty
        .add_to_store_nar(&info_for(&a, &nar, &[]), false, false, &mut &nar[..])
        .await
        .unwrap();
    let b = fresh_path("unsigned-b");
    let e = remote(
        quiet
            .add_to_store_nar(&info_for(&b, &nar, &[]), false, false, &mut &nar[..])
            .await
            .unwrap_err(),
    );
    assert!(e.msg.contains("lacks a signature by a trusted key"), "{e}");
    assert!(chatty.is_valid_path(&a).await.unwrap());
    assert!(!quiet.is_valid_path(&b).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_clients_get_cppnix_limits() {
    let store = TestStore::builder().conf("trusted-users =").build();
    let d = nixnest(&store);
    let mut c = connect(&d, &store).await;
    assert_eq!(c.negotiated().info.trust, TrustLevel::NotTrusted);
    let none = BTreeSet::new();
    // Restricted settings are ignored with CppNix's warning; whitelisted ones apply.
    let log = record(&mut c);
    c.set_options(&ClientSettings {
        overrides: vec![
            ("sandbox".into(), "false".into()),
            ("timeout".into(), "7".into()),
        ],
        ..ClientSettings::default()
    })
    .await
    .unwrap();
    assert_eq!(
        lines(&log.lock().unwrap()),
        vec![
            "warning: ignoring the client-specified setting 'sandbox', because it is a \
             restricted setting and you are not a trusted user"
        ]
    );
    let p = c.add_text_to_store("p", b"p", &none).await.unwrap();

    // Refused with an error; the session goes on.
    let e = remote(c.verify_store(false, true).await.unwrap_err());
    assert_eq!(e.msg, "you are not privileged to repair paths");
    let e = remote(
        c.add_build_log(&fresh_path("x.drv"), &mut &b"log"[..])
            .await
            .unwrap_err(),
    );
    assert_eq!(e.msg, "you are not privileged to add logs");
    let nar = nar_of(b"unsigned");
    let unsigned = fresh_path("unsigned");
    let e = remote(
        c.add_to_store_nar(&info_for(&unsigned, &nar, &[]), false, true, &mut &nar[..])
            .await
            .unwrap_err(),
    );
    assert!(e.msg.contains("lacks a signature by a trusted key"), "{e}");
    // Content-addressed uploads need no signature.
    let hello = nar_of(b"hello world\n");
    let ca_path = store_dir(&store)
        .make_path_from_ca(
            "hello.txt",
            &nixnest_core::ContentAddress::parse(
                "fixed:r:sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil",
            )
            .unwrap(),
            &none,
            false,
        )
        .unwrap();
    let mut info = info_for(&ca_path, &hello, &[]);
    info.ca = Some(
        nixnest_core::ContentAddress::parse(
            "fixed:r:sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil",
        )
        .unwrap(),
    );
    info.ultimate = true;
    c.add_to_store_nar(&info, false, false, &mut &hello[..])
        .await
        .unwrap();
    assert!(!c.query_path_info(&ca_path).await.unwrap().unwrap().ultimate);
    let (drv, drv_path) = simple_drv(&store, "ia", "true");
    let r = remote(
        c.build_derivation(&drv_path, &drv.into(), BuildMode::Normal)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        r.msg,
        "you are not privileged to build input-addressed derivations"
    );
    let mut ignore = gc(GcAction::ReturnDead, none.clone());
    ignore.ignore_liveness = true;
    assert_eq!(
        remote(c.collect_garbage(&ignore).await.unwrap_err()).msg,
        "you are not allowed to ignore liveness"
    );
    // Allowed: signatures (CppNix ≥ 2.17), GC, temp roots; roots are censored.
    c.add_signatures(&p, &["k:c2ln".to_owned()].into())
        .await
        .unwrap();
    c.add_temp_root(&p).await.unwrap();
    let roots = c.find_roots().await.unwrap();
    assert!(
        roots
            .iter()
            .filter(|(_, t)| *t == p)
            .all(|(l, _)| l == "{censored}"),
        "{roots:?}"
    );
    assert!(roots.iter().any(|(_, t)| *t == p));
    c.collect_garbage(&gc(GcAction::DeleteDead, none.clone()))
        .await
        .unwrap();
    assert!(c.is_valid_path(&p).await.unwrap());

    // Refused before work begins: one error, then the connection is closed.
    let e = remote(
        c.build_paths(&[DerivedPath::Opaque(p.clone())], BuildMode::Repair)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.msg,
        "repairing is not allowed because you are not in 'trusted-users'"
    );
    assert!(c.is_valid_path(&p).await.is_err());
    let mut c = connect(&d, &store).await;
    let e = remote(
        c.add_perm_root(&p, store.path("perm").to_str().unwrap())
            .await
            .unwrap_err(),
    );
    assert!(
        e.msg
            .starts_with("you are not privileged to create perm roots")
    );
    assert!(c.is_valid_path(&p).await.is_err());
    assert!(!store.path("perm").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_protocol_1_21_session() {
    let store = TestStore::new();
    let d = nixnest(&store);
    let mut c = connect_at(&d, &store, ProtocolVersion::new(1, 21)).await;
    assert_eq!(c.version(), ProtocolVersion::new(1, 21));
    let sd = store_dir(&store);

    // AddToStore < 1.25: inline NARs; flat data is a NAR of one regular file.
    let nar = nar_of(b"old add contents\n");
    let req = Request::AddToStore(AddToStoreRequest::Legacy {
        name: "old-add".into(),
        fixed: true,
        recursive: true,
        hash_algo: "sha256".into(),
    });
    let r = c.call_inline(&req, &nar).await.unwrap();
    let ca = |method, algo, data: &[u8]| {
        nixnest_core::ContentAddress::new(method, nixnest_core::Hash::compute(algo, data)).unwrap()
    };
    let expected = sd
        .make_path_from_ca(
            "old-add",
            &ca(ContentAddressMethod::NixArchive, HashAlgo::Sha256, &nar),
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    assert_eq!(r, Response::Path(expected));
    let req = Request::AddToStore(AddToStoreRequest::Legacy {
        name: "old-flat".into(),
        fixed: true,
        recursive: false,
        hash_algo: "sha1".into(),
    });
    let flat = match c
        .call_inline(&req, &nar_of(b"old flat contents\n"))
        .await
        .unwrap()
    {
        Response::Path(p) => p,
        other => panic!("{other:?}"),
    };
    let expected = sd
        .make_path_from_ca(
            "old-flat",
            &ca(
                ContentAddressMethod::Flat,
                HashAlgo::Sha1,
                b"old flat contents\n",
            ),
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    assert_eq!(flat, expected);
    assert_eq!(
        std::fs::read(store.store_dir().join(flat.to_base_name())).unwrap(),
        b"old flat contents\n"
    );
    // A flat add whose NAR is not a regular file is an error; the session goes on.
    let req_dir = Request::AddToStore(AddToStoreRequest::Legacy {
        name: "not-flat".into(),
        fixed: true,
        recursive: false,
        hash_algo: "sha256".into(),
    });
    let mut w = nixnest_protocol::WireWriter::new(ProtocolVersion::new(1, 21), sd.clone());
    for t in ["nix-archive-1", "(", "type", "directory", ")"] {
        w.write_str(t);
    }
    let e = remote(c.call_inline(&req_dir, &w.take()).await.unwrap_err());
    assert_eq!(e.msg, "error: regular file expected");

    // AddToStoreNar pulled with STDERR_READ.
    let p = fresh_path("pulled");
    let pulled = nar_of(&vec![b'p'; 100_000]);
    c.add_to_store_nar(&info_for(&p, &pulled, &[]), false, true, &mut &pulled[..])
        .await
        .unwrap();
    assert!(c.is_valid_path(&p).await.unwrap());

    // ExportPath, then ImportPaths of that record after deleting the path.
    let record = c.export_path(&p).await.unwrap();
    c.collect_garbage(&gc(GcAction::DeleteSpecific, [p.clone()].into()))
        .await
        .unwrap_err();
    let mut stream = 1u64.to_le_bytes().to_vec();
    stream.extend_from_slice(&record);
    stream.extend_from_slice(&0u64.to_le_bytes());
    let imported = c
        .call_pulled(&Request::ImportPaths, &mut &stream[..])
        .await
        .unwrap();
    assert_eq!(imported, Response::PathList(vec![p.clone()]));
    let e = remote(c.ensure_path(&fresh_path("gone")).await.unwrap_err());
    assert!(
        e.msg.starts_with("error: path '") && e.msg.ends_with("cannot be created"),
        "{e}"
    );
    assert!(c.is_valid_path(&p).await.unwrap());
}

#[test]
fn stdio_serves_one_session() {
    let store = TestStore::new();
    let mut child = std::process::Command::new(BIN)
        .arg("--stdio")
        .env_clear()
        .envs(store.nix_env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let stdin = tokio::process::ChildStdin::from_std(child.stdin.take().unwrap()).unwrap();
        let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
        let mut c = nixnest_protocol::client::DaemonClient::handshake(
            tokio::io::BufReader::new(stdout),
            stdin,
            store_dir(&store),
            ProtocolVersion::LATEST,
            &nixnest_protocol::FeatureSet::new(),
        )
        .await
        .unwrap();
        assert_eq!(c.negotiated().info.trust, TrustLevel::Trusted);
        c.set_options(&ClientSettings::default()).await.unwrap();
        let p = c
            .add_text_to_store("via-stdio", b"hi", &BTreeSet::new())
            .await
            .unwrap();
        assert!(c.is_valid_path(&p).await.unwrap());
        let mut nar = Vec::new();
        c.nar_from_path(&p, &mut nar).await.unwrap();
        assert_eq!(nar, nar_of(b"hi"));
    });
    // Closing stdin ends the session and the process.
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
