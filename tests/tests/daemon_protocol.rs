//! Operations the 2.8 / 2.26 / 2.34 clients do not send over `unix://` (or send only in
//! corners), sent with `nixnest_protocol`'s `DaemonClient` and compared between the real
//! daemon and nixnest (see `common`): at 1.34 against the host's 2.8 daemon, at 1.38 against
//! the sid 2.34 daemon, one connection for everything.
//!
//! Among them AddPermRoot (47), trusted and — with `--force-untrusted`, which the 2.34 daemon
//! and nixnest both take with the `daemon-trust-override` experimental feature — untrusted,
//! with the other trust-dependent ops of worker-protocol.md §4.9.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::os::unix::net::UnixStream as StdStream;

use common::fixture::build_closure;
use common::*;
use nixnest_core::{DerivedPath, Hash, OutputsSpec, StoreDir, StorePath, ValidPathInfo};
use nixnest_protocol::client::{DaemonClient, UnixDaemonClient};
use nixnest_protocol::request::Request;
use nixnest_protocol::types::{BuildMode, ClientSettings, GcAction, GcOptions, GcPaths};
use nixnest_protocol::{FeatureSet, ProtocolVersion};
use nixnest_testkit::{Client, TestStore};
use tokio::io::BufReader;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(side: &Side<'_>) -> UnixDaemonClient {
    let std = StdStream::connect(side.daemon().socket()).unwrap();
    std.set_nonblocking(true).unwrap();
    let (rd, wr) = tokio::net::UnixStream::from_std(std).unwrap().into_split();
    let dir = StoreDir::new(side.store.store_dir().display().to_string()).unwrap();
    let version = ProtocolVersion::new(1, side.client.protocol_minor());
    let mut client =
        DaemonClient::handshake(BufReader::new(rd), wr, dir, version, &FeatureSet::new())
            .await
            .unwrap_or_else(|e| panic!("handshake with {}: {e}", side.server));
    client
        .set_options(&ClientSettings::default())
        .await
        .unwrap();
    client
}

/// A result as text: `Ok` values by `Debug` (with the registration time normalised),
/// errors by their message (without colour escapes).
fn show<T: Debug>(r: &nixnest_protocol::Result<T>) -> String {
    let text = match r {
        Ok(v) => format!("{v:#?}"),
        Err(e) => format!("error: {e}"),
    };
    Norm::StripAnsi.apply(&Norm::RegistrationTime.apply(&text))
}

/// The temp roots FindRoots reports (`{temp:…}` entries only), sorted.
async fn temp_roots(c: &mut UnixDaemonClient) -> String {
    let roots = c.find_roots().await.map(|r| {
        let mut temp: Vec<String> = r
            .into_iter()
            .filter(|(link, _)| link.starts_with("{temp:"))
            .map(|(_, p)| p.to_base_name())
            .collect();
        temp.sort();
        temp
    });
    show(&roots)
}

fn path(side: &Side, abs: &str) -> StorePath {
    StoreDir::new(side.store.store_dir().display().to_string())
        .unwrap()
        .parse_path(abs)
        .unwrap()
}

fn options() -> impl Fn(Client) -> nixnest_testkit::TestStoreBuilder {
    |_| TestStore::builder().conf("experimental-features = nix-command daemon-trust-override")
}

#[test]
fn operations_no_cli_client_sends() {
    let mut comparison = Comparison::new("protocol ops");
    for client in [Client::Host, Client::Sid] {
        comparison.run_one(client, options(), |side| {
            let closure = build_closure(side);
            std::fs::create_dir_all(side.path("roots")).unwrap();
            side.start_daemon();
            let (app, dep, app_drv) = (
                path(side, &closure.app),
                path(side, &closure.dep),
                path(side, &closure.app_drv),
            );
            let missing = StorePath::new([9; 20], "missing").unwrap();
            let rt = runtime();
            let mut seen: Vec<(String, String)> = Vec::new();
            rt.block_on(async {
                let mut c = connect(side).await;
                let info = &c.negotiated().info;
                seen.push(("handshake trust".into(), format!("{:?}", info.trust)));
                let mut obs = |label: &str, text: String| seen.push((label.into(), text));

                obs(
                    "QueryPathFromHashPart",
                    show(&c.query_path_from_hash_part(&app.hash_part()).await),
                );
                obs(
                    "QueryPathFromHashPart (unknown)",
                    show(&c.query_path_from_hash_part(&missing.hash_part()).await),
                );
                obs(
                    "QueryValidDerivers",
                    show(&c.query_valid_derivers(&app).await),
                );
                obs(
                    "QueryDerivationOutputMap",
                    show(&c.query_derivation_output_map(&app_drv).await),
                );
                obs(
                    "QueryDerivationOutputNames (28)",
                    show(
                        &c.call(&Request::QueryDerivationOutputNames(app_drv.clone()))
                            .await,
                    ),
                );
                obs(
                    "QueryDerivationOutputs (22)",
                    show(
                        &c.call(&Request::QueryDerivationOutputs(app_drv.clone()))
                            .await,
                    ),
                );
                obs("QueryDeriver (18)", show(&c.query_deriver(&app).await));
                obs(
                    "QuerySubstitutablePaths",
                    show(
                        &c.call(&Request::QuerySubstitutablePaths([app.clone()].into()))
                            .await,
                    ),
                );
                obs("temp roots after the queries", temp_roots(&mut c).await);
                let mut nar = Vec::new();
                let n = c.nar_from_path(&app, &mut nar).await;
                obs(
                    "NarFromPath app",
                    format!("{} -> sha256 {}", show(&n), Hash::sha256(&nar).to_base16()),
                );
                let mut nar = Vec::new();
                let n = c.nar_from_path(&dep, &mut nar).await;
                obs(
                    "NarFromPath dep",
                    format!("{} -> sha256 {}", show(&n), Hash::sha256(&nar).to_base16()),
                );
                obs("temp roots after NarFromPath", temp_roots(&mut c).await);
                obs(
                    "AddTextToStore (8) with a reference",
                    show(
                        &c.add_text_to_store("proto-text", b"refers to dep", &[dep.clone()].into())
                            .await,
                    ),
                );
                obs("temp roots after AddTextToStore", temp_roots(&mut c).await);
                obs(
                    "AddSignatures",
                    show(
                        &c.add_signatures(&dep, &["test-key-1:c2lnbmF0dXJl".to_owned()].into())
                            .await,
                    ),
                );
                let signed = c.query_path_info(&dep).await;
                obs("QueryPathInfo after AddSignatures", show(&signed));
                obs("temp roots after AddSignatures", temp_roots(&mut c).await);
                obs("EnsurePath (valid)", show(&c.ensure_path(&dep).await));
                obs("temp roots after EnsurePath", temp_roots(&mut c).await);
                obs("AddTempRoot", show(&c.add_temp_root(&app).await));
                std::os::unix::fs::symlink(&closure.dep, side.path("roots/indirect")).unwrap();
                let link = side.path("roots/indirect").display().to_string();
                obs("AddIndirectRoot", show(&c.add_indirect_root(&link).await));
                let roots = c.find_roots().await.map(|mut r| {
                    r.sort();
                    r.into_iter()
                        .map(|(l, p)| format!("{l} -> {p:?}"))
                        .collect::<Vec<_>>()
                });
                obs("FindRoots", Norm::Pids.apply(&show(&roots)));
                obs(
                    "BuildPaths of a valid output",
                    show(
                        &c.build_paths(&[DerivedPath::Opaque(app.clone())], BuildMode::Normal)
                            .await,
                    ),
                );
                let built = c
                    .build_paths_with_results(
                        &[DerivedPath::Built {
                            drv_path: app_drv.clone(),
                            outputs: OutputsSpec::All,
                        }],
                        BuildMode::Normal,
                    )
                    .await
                    .map(|rs| {
                        rs.into_iter()
                            .map(|r| {
                                format!(
                                    "{:?}: {:?} {:?}",
                                    r.path, r.result.status, r.result.error_msg
                                )
                            })
                            .collect::<Vec<_>>()
                    });
                obs("BuildPathsWithResults of a built derivation", show(&built));
                let dead = c
                    .collect_garbage(&GcOptions {
                        action: GcAction::ReturnDead,
                        paths: GcPaths::Specific {
                            paths: BTreeSet::new(),
                            delete_referrers: false,
                        },
                        ignore_liveness: false,
                        max_freed: u64::MAX,
                    })
                    .await;
                obs("CollectGarbage ReturnDead", show(&dead));
                obs(
                    "CollectGarbage with ignoreLiveness",
                    show(
                        &c.collect_garbage(&GcOptions {
                            action: GcAction::ReturnDead,
                            paths: GcPaths::Specific {
                                paths: BTreeSet::new(),
                                delete_referrers: false,
                            },
                            ignore_liveness: true,
                            max_freed: u64::MAX,
                        })
                        .await,
                    ),
                );
                obs("VerifyStore", show(&c.verify_store(true, false).await));
                if c.version().at_least(36) {
                    let root = side.path("roots/perm").display().to_string();
                    obs(
                        "AddPermRoot (trusted)",
                        show(&c.add_perm_root(&dep, &root).await),
                    );
                    obs(
                        "the perm root",
                        format!("{:?}", std::fs::read_link(side.path("roots/perm"))),
                    );
                }
                obs(
                    "the session is still usable",
                    show(&c.is_valid_path(&dep).await),
                );
                // An error on a connection of its own, and that connection still answers.
                // (NarFromPath of an invalid path is left out: CppNix sends STDERR_LAST and
                // then the error, which no client can parse.)
                let mut e = connect(side).await;
                obs("EnsurePath (invalid)", show(&e.ensure_path(&missing).await));
                obs("then IsValidPath", show(&e.is_valid_path(&dep).await));
            });
            for (label, text) in seen {
                side.observe(label, text);
            }
            side.snapshot("after the protocol ops");
        });
    }
    comparison.finish();
}

#[test]
fn untrusted_session_with_force_untrusted() {
    let mut comparison = Comparison::new("untrusted protocol ops");
    comparison.run_one(Client::Sid, options(), |side| {
        let closure = build_closure(side);
        std::fs::create_dir_all(side.path("roots")).unwrap();
        side.store.write("logs/app.log", "a log line\n");
        side.start_daemon_with(|spec| {
            spec.arg("--force-untrusted")
                .option("extra-experimental-features", "daemon-trust-override")
        });
        let dep = path(side, &closure.dep);
        let app_drv = path(side, &closure.app_drv);
        let rt = runtime();
        let mut seen: Vec<(String, String)> = Vec::new();
        rt.block_on(async {
            // Each refusal on a connection of its own: CppNix refuses some before its work
            // phase, sends the error twice and closes the connection (spec §11.2).
            let c = connect(side).await;
            seen.push((
                "handshake trust".into(),
                format!("{:?}", c.negotiated().info.trust),
            ));
            let mut obs = |label: &str, text: String| seen.push((label.into(), text));
            let root = side.path("roots/perm").display().to_string();
            obs(
                "AddPermRoot (untrusted)",
                show(&connect(side).await.add_perm_root(&dep, &root).await),
            );
            obs(
                "no root was made",
                format!("{}", side.path("roots/perm").exists()),
            );
            obs(
                "AddSignatures (untrusted)",
                show(
                    &connect(side)
                        .await
                        .add_signatures(&dep, &["test-key-1:c2lnbmF0dXJl".to_owned()].into())
                        .await,
                ),
            );
            obs(
                "AddBuildLog (untrusted)",
                show(
                    &connect(side)
                        .await
                        .add_build_log(&app_drv, &mut &b"a log line\n"[..])
                        .await,
                ),
            );
            obs(
                "VerifyStore repair (untrusted)",
                show(&connect(side).await.verify_store(false, true).await),
            );
            let roots = connect(side).await.find_roots().await.map(|mut r| {
                r.sort();
                r.into_iter()
                    .map(|(l, p)| format!("{l} -> {p:?}"))
                    .collect::<Vec<_>>()
            });
            obs("FindRoots (untrusted)", Norm::Pids.apply(&show(&roots)));
            // An input-addressed upload without signatures, dontCheckSigs ignored.
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("f"), b"unsigned\n").unwrap();
            let mut nar = Vec::new();
            nixnest_core::nar::dump_path(&dir.path().join("f"), &mut nar).unwrap();
            let p = StorePath::new([6; 20], "unsigned").unwrap();
            let mut info = ValidPathInfo::new(p.clone(), Hash::sha256(&nar));
            info.nar_size = nar.len() as u64;
            let mut c = connect(side).await;
            obs(
                "AddToStoreNar unsigned with dontCheckSigs (untrusted)",
                show(
                    &c.add_to_store_nar(&info, false, true, &mut nar.as_slice())
                        .await,
                ),
            );
            obs(
                "the unsigned path is not valid",
                show(&c.is_valid_path(&p).await),
            );
            let mut c = connect(side).await;
            obs(
                "BuildPaths repair (untrusted)",
                show(
                    &c.build_paths(&[DerivedPath::Opaque(dep.clone())], BuildMode::Repair)
                        .await,
                ),
            );
        });
        for (label, text) in seen {
            side.observe(label, text);
        }
    });
    comparison.finish();
}
