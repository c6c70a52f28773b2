//! Property tests: every request, reply and stderr message round-trips at every
//! protocol version (1.21–1.38, with and without the 1.38 features) where its form
//! exists, leaving no trailing bytes, and re-encodes to the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;

use nixnest_core::{
    BasicDerivation, ContentAddress, ContentAddressMethod, DerivationOutput, DerivedPath, Hash,
    HashAlgo, OutputsSpec, StoreDir, StorePath, ValidPathInfo,
};

use crate::request::{AddToStoreRequest, RealisationKey, RegisterDrvOutput, Request};
use crate::response::Response;
use crate::stderr::{
    ActivityType, Field, NixError, ResultType, StartActivity, StderrMessage, Verbosity,
};
use crate::types::*;
use crate::version::{FeatureSet, ProtocolVersion, feature};
use crate::wire::testing::block_on;
use crate::wire::{WireReader, WireType, WireWriter};

fn versions() -> impl Iterator<Item = ProtocolVersion> {
    (21..=38).map(|m| ProtocolVersion::new(1, m))
}

fn all_features() -> FeatureSet {
    [
        feature::REALISATION_WITH_PATH_NOT_HASH,
        feature::DELETE_DEAD_SPECIFIC_REFERRERS,
        feature::ADD_TO_STORE_SCANNING,
        feature::SUBMIT_OUTPUT,
    ]
    .into_iter()
    .collect()
}

/// (version, features) pairs to try: every version without features, 1.38 with all.
fn contexts() -> Vec<(ProtocolVersion, FeatureSet)> {
    let mut c: Vec<_> = versions().map(|v| (v, FeatureSet::new())).collect();
    c.push((ProtocolVersion::LATEST, all_features()));
    c
}

fn writer(v: ProtocolVersion, f: &FeatureSet) -> WireWriter {
    let mut w = WireWriter::new(v, StoreDir::default());
    w.set_features(f.clone());
    w
}

fn reader<'a>(b: &'a [u8], v: ProtocolVersion, f: &FeatureSet) -> WireReader<&'a [u8]> {
    let mut r = WireReader::new(b, v, StoreDir::default());
    r.set_features(f.clone());
    r
}

// --- strategies -----------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-zA-Z0-9+._?=-]{0,20}"
}

fn store_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), name()).prop_map(|(d, n)| StorePath::new(d, &n).unwrap())
}

fn drv_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), name()).prop_map(|(d, n)| StorePath::new(d, &format!("{n}.drv")).unwrap())
}

fn paths() -> impl Strategy<Value = BTreeSet<StorePath>> {
    btree_set(store_path(), 0..4)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn sha256() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(|d| Hash::new(HashAlgo::Sha256, &d).unwrap())
}

fn algo() -> impl Strategy<Value = HashAlgo> {
    prop::sample::select(HashAlgo::ALL.to_vec())
}

fn method_algo() -> impl Strategy<Value = (ContentAddressMethod, HashAlgo)> {
    prop_oneof![
        Just((ContentAddressMethod::Text, HashAlgo::Sha256)),
        algo().prop_map(|a| (ContentAddressMethod::Flat, a)),
        algo().prop_map(|a| (ContentAddressMethod::NixArchive, a)),
    ]
}

fn content_address() -> impl Strategy<Value = ContentAddress> {
    (method_algo(), vec(any::<u8>(), 64)).prop_map(|((m, a), bytes)| {
        let digest = &bytes[..a.digest_len()];
        ContentAddress::new(m, Hash::new(a, digest).unwrap()).unwrap()
    })
}

fn sigs() -> impl Strategy<Value = BTreeSet<String>> {
    btree_set("[a-z0-9-]{1,10}:[A-Za-z0-9+/]{8,20}={0,2}", 0..3)
}

fn path_info() -> impl Strategy<Value = ValidPathInfo> {
    (
        store_path(),
        proptest::option::of(drv_path()),
        sha256(),
        paths(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        sigs(),
        proptest::option::of(content_address()),
    )
        .prop_map(
            |(path, deriver, nar_hash, references, t, size, ultimate, sigs, ca)| ValidPathInfo {
                path,
                deriver,
                nar_hash,
                references,
                registration_time: t,
                nar_size: size,
                ultimate,
                sigs,
                ca,
            },
        )
}

fn output_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}"
}

fn derived_path() -> impl Strategy<Value = DerivedPath> {
    prop_oneof![
        store_path().prop_map(DerivedPath::Opaque),
        drv_path().prop_map(DerivedPath::Opaque),
        drv_path().prop_map(|d| DerivedPath::Built {
            drv_path: d,
            outputs: OutputsSpec::All
        }),
        (drv_path(), btree_set(output_name(), 1..3)).prop_map(|(d, o)| DerivedPath::Built {
            drv_path: d,
            outputs: OutputsSpec::names(o).unwrap()
        }),
    ]
}

fn drv_output() -> impl Strategy<Value = DrvOutput> {
    (sha256(), output_name()).prop_map(|(drv_hash, output)| DrvOutput { drv_hash, output })
}

fn realisation() -> impl Strategy<Value = Realisation> {
    (
        drv_output(),
        store_path(),
        sigs(),
        btree_map(drv_output(), store_path(), 0..2),
    )
        .prop_map(
            |(id, out_path, signatures, dependent_realisations)| Realisation {
                id,
                out_path,
                signatures,
                dependent_realisations,
            },
        )
}

fn unkeyed_realisation() -> impl Strategy<Value = UnkeyedRealisation> {
    (store_path(), sigs()).prop_map(|(out_path, signatures)| UnkeyedRealisation {
        out_path,
        signatures,
    })
}

fn drv_output_with_path() -> impl Strategy<Value = DrvOutputWithPath> {
    (drv_path(), output_name())
        .prop_map(|(drv_path, output)| DrvOutputWithPath { drv_path, output })
}

fn build_result() -> impl Strategy<Value = BuildResult> {
    (
        prop::sample::select(BuildStatus::ALL.to_vec()),
        text(),
        any::<u64>(),
        any::<bool>(),
        any::<i64>(),
        any::<i64>(),
        proptest::option::of(any::<i64>()),
        proptest::option::of(any::<i64>()),
        btree_map(output_name(), realisation(), 0..3),
    )
        .prop_map(
            |(status, error_msg, times_built, nd, start, stop, cu, cs, outs)| {
                // The map key names the output; keep the realisation's id consistent with it.
                let built_outputs = outs
                    .into_iter()
                    .map(|(name, mut r)| {
                        r.id.output = name.clone();
                        (name, r)
                    })
                    .collect();
                BuildResult {
                    status,
                    error_msg,
                    times_built,
                    is_non_deterministic: nd,
                    start_time: start,
                    stop_time: stop,
                    cpu_user: cu,
                    cpu_system: cs,
                    built_outputs,
                }
            },
        )
}

fn build_mode() -> impl Strategy<Value = BuildMode> {
    prop::sample::select(vec![BuildMode::Normal, BuildMode::Repair, BuildMode::Check])
}

fn verbosity() -> impl Strategy<Value = Verbosity> {
    prop::sample::select(Verbosity::ALL.to_vec())
}

fn settings() -> impl Strategy<Value = ClientSettings> {
    (
        any::<[bool; 4]>(),
        verbosity(),
        verbosity(),
        any::<[u64; 6]>(),
        vec((name(), text()), 0..3),
    )
        .prop_map(
            |(b, verbosity, verbose_build, n, overrides)| ClientSettings {
                keep_failed: b[0],
                keep_going: b[1],
                try_fallback: b[2],
                verbosity,
                max_build_jobs: n[0],
                max_silent_time: n[1],
                use_build_hook: n[2],
                verbose_build,
                log_type: n[3],
                print_build_trace: n[4],
                build_cores: n[5],
                use_substitutes: b[3],
                overrides,
            },
        )
}

fn gc_options() -> impl Strategy<Value = GcOptions> {
    (
        prop::sample::select(vec![
            GcAction::ReturnLive,
            GcAction::ReturnDead,
            GcAction::DeleteDead,
            GcAction::DeleteSpecific,
        ]),
        prop_oneof![
            (paths(), any::<bool>()).prop_map(|(paths, delete_referrers)| GcPaths::Specific {
                paths,
                delete_referrers
            }),
            Just(GcPaths::WholeStore),
        ],
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(action, paths, ignore_liveness, max_freed)| GcOptions {
            action,
            paths,
            ignore_liveness,
            max_freed,
        })
}

fn derivation_output() -> impl Strategy<Value = DerivationOutput> {
    prop_oneof![
        store_path().prop_map(DerivationOutput::InputAddressed),
        content_address().prop_map(DerivationOutput::CAFixed),
        method_algo().prop_map(|(method, algo)| DerivationOutput::CAFloating { method, algo }),
        Just(DerivationOutput::Deferred),
        method_algo().prop_map(|(method, algo)| DerivationOutput::Impure { method, algo }),
    ]
}

/// A drv path and a BasicDerivation named after it.
fn basic_derivation() -> impl Strategy<Value = (StorePath, BasicDerivation)> {
    (
        drv_path(),
        btree_map(output_name(), derivation_output(), 0..3),
        paths(),
        text(),
        text(),
        vec(text(), 0..3),
        btree_map(text(), text(), 0..3),
    )
        .prop_map(
            |(drv_path, outputs, input_srcs, platform, builder, args, env)| {
                let name = drv_path.derivation_name().unwrap().to_owned();
                let drv = BasicDerivation {
                    name,
                    outputs,
                    input_srcs,
                    platform,
                    builder,
                    args,
                    env,
                };
                (drv_path, drv)
            },
        )
}

fn single_derived_path() -> impl Strategy<Value = SingleDerivedPath> {
    let leaf = store_path().prop_map(SingleDerivedPath::Opaque);
    leaf.prop_recursive(3, 4, 1, |inner| {
        (inner, output_name()).prop_map(|(d, output)| SingleDerivedPath::Built {
            drv_path: Box::new(d),
            output,
        })
    })
}

fn request() -> impl Strategy<Value = Request> {
    let p = store_path;
    prop_oneof![
        p().prop_map(Request::IsValidPath),
        p().prop_map(Request::HasSubstitutes),
        p().prop_map(Request::QueryPathHash),
        p().prop_map(Request::QueryReferences),
        p().prop_map(Request::QueryReferrers),
        (name(), any::<bool>(), any::<bool>(), "[a-z0-9]{0,8}").prop_map(
            |(name, fixed, recursive, hash_algo)| {
                Request::AddToStore(AddToStoreRequest::Legacy {
                    name,
                    fixed,
                    recursive,
                    hash_algo,
                })
            }
        ),
        (name(), method_algo(), paths(), any::<bool>()).prop_map(
            |(name, (method, algo), references, repair)| {
                Request::AddToStore(AddToStoreRequest::ContentAddressed {
                    name,
                    method,
                    algo,
                    references,
                    repair,
                })
            }
        ),
        (name(), vec(any::<u8>(), 0..40), paths()).prop_map(|(name, text, references)| {
            Request::AddTextToStore {
                name,
                text,
                references,
            }
        }),
        (vec(derived_path(), 0..3), build_mode())
            .prop_map(|(paths, mode)| Request::BuildPaths { paths, mode }),
        p().prop_map(Request::EnsurePath),
        p().prop_map(Request::AddTempRoot),
        "/[a-z/]{0,20}".prop_map(Request::AddIndirectRoot),
        Just(Request::SyncWithGC),
        Just(Request::FindRoots),
        p().prop_map(Request::ExportPath),
        p().prop_map(Request::QueryDeriver),
        settings().prop_map(Request::SetOptions),
        gc_options().prop_map(Request::CollectGarbage),
        p().prop_map(Request::QuerySubstitutablePathInfo),
        drv_path().prop_map(Request::QueryDerivationOutputs),
        Just(Request::QueryAllValidPaths),
        p().prop_map(Request::QueryPathInfo),
        Just(Request::ImportPaths),
        drv_path().prop_map(Request::QueryDerivationOutputNames),
        "[0-9a-z]{32}".prop_map(Request::QueryPathFromHashPart),
        btree_map(p(), proptest::option::of(content_address()), 0..3)
            .prop_map(Request::QuerySubstitutablePathInfos),
        (paths(), any::<bool>())
            .prop_map(|(paths, substitute)| Request::QueryValidPaths { paths, substitute }),
        paths().prop_map(Request::QuerySubstitutablePaths),
        p().prop_map(Request::QueryValidDerivers),
        Just(Request::OptimiseStore),
        (any::<bool>(), any::<bool>()).prop_map(|(c, r)| Request::VerifyStore {
            check_contents: c,
            repair: r
        }),
        (basic_derivation(), build_mode()).prop_map(|((drv_path, drv), mode)| {
            Request::BuildDerivation {
                drv_path,
                drv,
                mode,
            }
        }),
        (p(), sigs()).prop_map(|(path, sigs)| Request::AddSignatures { path, sigs }),
        p().prop_map(Request::NarFromPath),
        (path_info(), any::<bool>(), any::<bool>()).prop_map(|(info, repair, dont_check_sigs)| {
            Request::AddToStoreNar {
                info,
                repair,
                dont_check_sigs,
            }
        }),
        vec(derived_path(), 0..3).prop_map(Request::QueryMissing),
        drv_path().prop_map(Request::QueryDerivationOutputMap),
        (drv_output(), p()).prop_map(|(id, out_path)| Request::RegisterDrvOutput(
            RegisterDrvOutput::Legacy { id, out_path }
        )),
        realisation().prop_map(|r| Request::RegisterDrvOutput(RegisterDrvOutput::Json(r))),
        (drv_output_with_path(), unkeyed_realisation()).prop_map(|(key, value)| {
            Request::RegisterDrvOutput(RegisterDrvOutput::WithPath { key, value })
        }),
        drv_output().prop_map(|d| Request::QueryRealisation(RealisationKey::Id(d))),
        drv_output_with_path().prop_map(|d| Request::QueryRealisation(RealisationKey::WithPath(d))),
        (any::<bool>(), any::<bool>()).prop_map(|(repair, dont_check_sigs)| {
            Request::AddMultipleToStore {
                repair,
                dont_check_sigs,
            }
        }),
        drv_path().prop_map(Request::AddBuildLog),
        (vec(derived_path(), 0..3), build_mode())
            .prop_map(|(paths, mode)| Request::BuildPathsWithResults { paths, mode }),
        (p(), "/[a-z/]{1,20}").prop_map(|(path, gc_root)| Request::AddPermRoot { path, gc_root }),
        (single_derived_path(), output_name())
            .prop_map(|(path, output)| Request::SubmitOutput { path, output }),
        (name(), method_algo()).prop_map(|(name, (method, algo))| Request::AddToStoreScanning {
            name,
            method,
            algo
        }),
    ]
}

fn no_opaque_drv(paths: &[DerivedPath]) -> bool {
    !paths
        .iter()
        .any(|p| matches!(p, DerivedPath::Opaque(p) if p.is_derivation()))
}

/// Whether `req` has a wire form at this version and feature set that decodes back to
/// exactly `req`.
fn representable(req: &Request, v: ProtocolVersion, f: &FeatureSet) -> bool {
    let with_path = f.contains(feature::REALISATION_WITH_PATH_NOT_HASH);
    match req {
        Request::AddToStore(AddToStoreRequest::Legacy { .. }) => !v.at_least(25),
        Request::AddToStore(AddToStoreRequest::ContentAddressed { .. }) => v.at_least(25),
        Request::QueryValidPaths { substitute, .. } => v.at_least(27) || !substitute,
        Request::QuerySubstitutablePathInfos(m) => {
            v.at_least(22) || m.values().all(Option::is_none)
        }
        Request::BuildPaths { paths, .. }
        | Request::BuildPathsWithResults { paths, .. }
        | Request::QueryMissing(paths) => v.at_least(30) || no_opaque_drv(paths),
        Request::RegisterDrvOutput(RegisterDrvOutput::Legacy { .. }) => {
            !with_path && !v.at_least(31)
        }
        Request::RegisterDrvOutput(RegisterDrvOutput::Json(_)) => !with_path && v.at_least(31),
        Request::RegisterDrvOutput(RegisterDrvOutput::WithPath { .. }) => with_path,
        Request::QueryRealisation(RealisationKey::Id(_)) => !with_path,
        Request::QueryRealisation(RealisationKey::WithPath(_)) => with_path,
        Request::CollectGarbage(o) => {
            f.contains(feature::DELETE_DEAD_SPECIFIC_REFERRERS)
                || matches!(
                    &o.paths,
                    GcPaths::Specific {
                        delete_referrers: false,
                        ..
                    }
                )
        }
        Request::SubmitOutput { .. } => f.contains(feature::SUBMIT_OUTPUT),
        Request::AddToStoreScanning { .. } => f.contains(feature::ADD_TO_STORE_SCANNING),
        _ => true,
    }
}

fn stderr_message() -> impl Strategy<Value = StderrMessage> {
    let fields = vec(
        prop_oneof![
            any::<u64>().prop_map(Field::Int),
            vec(any::<u8>(), 0..20).prop_map(Field::String)
        ],
        0..4,
    );
    prop_oneof![
        vec(any::<u8>(), 0..40).prop_map(StderrMessage::Next),
        any::<u64>().prop_map(StderrMessage::Read),
        vec(any::<u8>(), 0..40).prop_map(StderrMessage::Write),
        Just(StderrMessage::Last),
        (verbosity(), text(), vec(text(), 0..3)).prop_map(|(level, msg, traces)| {
            StderrMessage::Error(NixError {
                level,
                msg,
                traces,
                exit_status: 1,
            })
        }),
        (text(), any::<u64>()).prop_map(|(msg, exit_status)| StderrMessage::Error(NixError {
            level: Verbosity::Error,
            msg,
            traces: Vec::new(),
            exit_status
        })),
        (
            any::<u64>(),
            verbosity(),
            any::<u64>(),
            vec(any::<u8>(), 0..30),
            fields.clone(),
            any::<u64>()
        )
            .prop_map(|(id, level, t, text, fields, parent)| {
                StderrMessage::StartActivity(StartActivity {
                    id,
                    level,
                    activity_type: ActivityType::from_u64(t),
                    text,
                    fields,
                    parent,
                })
            }),
        any::<u64>().prop_map(|id| StderrMessage::StopActivity { id }),
        (any::<u64>(), any::<u64>(), fields).prop_map(|(id, t, fields)| StderrMessage::Result {
            id,
            result_type: ResultType::from_u64(t),
            fields
        }),
    ]
}

fn error_representable(m: &StderrMessage, v: ProtocolVersion) -> bool {
    match m {
        StderrMessage::Error(e) if v.at_least(26) => e.exit_status == 1,
        StderrMessage::Error(e) => e.level == Verbosity::Error && e.traces.is_empty(),
        _ => true,
    }
}

/// Builds a reply for `req` of the right shape (or `None` if it has no reply value).
fn response_for() -> impl Strategy<Value = (Request, Response)> {
    let p = store_path;
    prop_oneof![
        p().prop_map(|x| (Request::IsValidPath(x), Response::Bool(true))),
        (p(), sha256()).prop_map(|(x, h)| (Request::QueryPathHash(x), Response::NarHash(h))),
        (p(), paths()).prop_map(|(x, s)| (Request::QueryReferrers(x), Response::Paths(s))),
        (name(), method_algo(), path_info()).prop_map(|(name, (method, algo), info)| (
            Request::AddToStore(AddToStoreRequest::ContentAddressed {
                name,
                method,
                algo,
                references: BTreeSet::new(),
                repair: false
            }),
            Response::PathInfo(Box::new(info))
        )),
        (name(), p()).prop_map(|(name, x)| (
            Request::AddTextToStore {
                name,
                text: vec![],
                references: BTreeSet::new()
            },
            Response::Path(x)
        )),
        p().prop_map(|x| (Request::EnsurePath(x), Response::Ack)),
        (p(), proptest::option::of(p()))
            .prop_map(|(x, d)| (Request::QueryDeriver(x), Response::OptPath(d))),
        (p(), proptest::option::of(path_info())).prop_map(|(x, i)| (
            Request::QueryPathInfo(x),
            Response::QueryPathInfo(i.map(|i| Box::new(UnkeyedValidPathInfo::from(i))))
        )),
        vec(("/[a-z]{1,10}", p()), 0..3).prop_map(|r| (Request::FindRoots, Response::FindRoots(r))),
        (gc_options(), btree_set("/[a-z]{1,10}", 0..3), any::<u64>()).prop_map(
            |(o, paths, bytes_freed)| (
                Request::CollectGarbage(o),
                Response::CollectGarbage(GcResult { paths, bytes_freed })
            )
        ),
        (
            p(),
            proptest::option::of((
                proptest::option::of(p()),
                paths(),
                any::<u64>(),
                any::<u64>()
            ))
        )
            .prop_map(|(x, i)| (
                Request::QuerySubstitutablePathInfo(x),
                Response::QuerySubstitutablePathInfo(i.map(
                    |(deriver, references, download_size, nar_size)| {
                        SubstitutablePathInfo {
                            deriver,
                            references,
                            download_size,
                            nar_size,
                        }
                    }
                ))
            )),
        btree_map(
            p(),
            (
                proptest::option::of(p()),
                paths(),
                any::<u64>(),
                any::<u64>()
            ),
            0..3
        )
        .prop_map(|m| (
            Request::QuerySubstitutablePathInfos(BTreeMap::new()),
            Response::QuerySubstitutablePathInfos(
                m.into_iter()
                    .map(|(k, (deriver, references, download_size, nar_size))| {
                        (
                            k,
                            SubstitutablePathInfo {
                                deriver,
                                references,
                                download_size,
                                nar_size,
                            },
                        )
                    })
                    .collect()
            )
        )),
        vec(p(), 0..3).prop_map(|v| (Request::ImportPaths, Response::PathList(v))),
        (drv_path(), btree_set(output_name(), 0..3))
            .prop_map(|(d, s)| (Request::QueryDerivationOutputNames(d), Response::Strings(s))),
        (basic_derivation(), build_result()).prop_map(|((drv_path, drv), r)| (
            Request::BuildDerivation {
                drv_path,
                drv,
                mode: BuildMode::Normal
            },
            Response::BuildResult(Box::new(r))
        )),
        vec((derived_path(), build_result()), 0..3).prop_map(|v| (
            Request::BuildPathsWithResults {
                paths: vec![],
                mode: BuildMode::Normal
            },
            Response::KeyedBuildResults(
                v.into_iter()
                    .map(|(path, result)| KeyedBuildResult { path, result })
                    .collect()
            )
        )),
        (paths(), paths(), paths(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d, n)| (
            Request::QueryMissing(vec![]),
            Response::Missing(Missing {
                will_build: a,
                will_substitute: b,
                unknown: c,
                download_size: d,
                nar_size: n
            })
        )),
        (
            drv_path(),
            btree_map(output_name(), proptest::option::of(p()), 0..3)
        )
            .prop_map(|(d, m)| (Request::QueryDerivationOutputMap(d), Response::OutputMap(m))),
        (drv_output(), proptest::option::of(realisation())).prop_map(|(id, r)| (
            Request::QueryRealisation(RealisationKey::Id(id.clone())),
            Response::QueryRealisation(r.map(|mut r| {
                r.id = id;
                Box::new(r)
            }))
        )),
        (p(), "/[a-z]{1,10}").prop_map(|(path, root)| (
            Request::AddPermRoot {
                path,
                gc_root: root.clone()
            },
            Response::Text(root)
        )),
        Just((
            Request::SetOptions(ClientSettings::default()),
            Response::Unit
        )),
    ]
}

/// What survives the wire at `v`/`f` (fields a version does not carry come back as
/// their defaults).
fn normalise_response(
    req: &Request,
    resp: &Response,
    v: ProtocolVersion,
    f: &FeatureSet,
) -> Response {
    let with_path = f.contains(feature::REALISATION_WITH_PATH_NOT_HASH);
    let norm_result = |r: &BuildResult| {
        let mut r = r.clone();
        if !v.at_least(29) {
            r.times_built = 0;
            r.is_non_deterministic = false;
            r.start_time = 0;
            r.stop_time = 0;
        }
        if !v.at_least(37) {
            r.cpu_user = None;
            r.cpu_system = None;
        }
        if !v.at_least(28) {
            r.built_outputs.clear();
        }
        if with_path {
            for (name, real) in r.built_outputs.iter_mut() {
                real.id = placeholder_drv_output(name);
                real.dependent_realisations.clear();
            }
        }
        r
    };
    match resp {
        Response::PathInfo(i) if !v.at_least(25) => Response::Path(i.path.clone()),
        Response::BuildResult(r) => Response::BuildResult(Box::new(norm_result(r))),
        Response::KeyedBuildResults(rs) => Response::KeyedBuildResults(
            rs.iter()
                .map(|k| KeyedBuildResult {
                    path: k.path.clone(),
                    result: norm_result(&k.result),
                })
                .collect(),
        ),
        Response::QueryRealisation(Some(r)) => {
            let mut r = (**r).clone();
            if with_path || !v.at_least(31) {
                r.signatures = if with_path {
                    r.signatures
                } else {
                    BTreeSet::new()
                };
                r.dependent_realisations.clear();
                if with_path {
                    r.id = placeholder_drv_output(match req {
                        Request::QueryRealisation(k) => k.output(),
                        _ => "",
                    });
                }
            }
            Response::QueryRealisation(Some(Box::new(r)))
        }
        other => other.clone(),
    }
}

fn response_representable(
    req: &Request,
    resp: &Response,
    v: ProtocolVersion,
    f: &FeatureSet,
) -> bool {
    let with_path = f.contains(feature::REALISATION_WITH_PATH_NOT_HASH);
    match (req, resp) {
        // The key of a feature-form QueryRealisation is a DrvOutputWithPath.
        (Request::QueryRealisation(RealisationKey::Id(_)), _) if with_path => false,
        (_, Response::KeyedBuildResults(rs)) => {
            v.at_least(30) || no_opaque_drv(&rs.iter().map(|k| k.path.clone()).collect::<Vec<_>>())
        }
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(req in request()) {
        for (v, f) in contexts() {
            if !representable(&req, v, &f) {
                continue;
            }
            let mut w = writer(v, &f);
            req.encode(&mut w);
            let bytes = w.take();
            let back = block_on(async {
                let mut r = reader(&bytes, v, &f);
                let back = Request::decode(&mut r).await;
                (back, r.get_ref().len())
            });
            let (back, left) = back;
            let back = back.map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
            prop_assert_eq!(left, 0, "trailing bytes at {}", v);
            prop_assert_eq!(&back, &req, "at {}", v);
        }
    }

    #[test]
    fn responses_round_trip((req, resp) in response_for()) {
        for (v, f) in contexts() {
            if !response_representable(&req, &resp, v, &f) {
                continue;
            }
            let mut w = writer(v, &f);
            resp.encode(&mut w);
            let bytes = w.take();
            let (back, left) = block_on(async {
                let mut r = reader(&bytes, v, &f);
                let back = Response::decode(&req, &mut r).await;
                (back, r.get_ref().len())
            });
            let back = back.map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
            prop_assert_eq!(left, 0, "trailing bytes at {}", v);
            prop_assert_eq!(&back, &normalise_response(&req, &resp, v, &f), "at {}", v);
            let mut w = writer(v, &f);
            back.encode(&mut w);
            prop_assert_eq!(&w.take()[..], &bytes[..], "re-encoding at {}", v);
        }
    }

    #[test]
    fn stderr_messages_round_trip(m in stderr_message()) {
        for v in versions() {
            if !error_representable(&m, v) {
                continue;
            }
            let mut w = writer(v, &FeatureSet::new());
            m.encode(&mut w);
            let bytes = w.take();
            let (back, left) = block_on(async {
                let mut r = reader(&bytes, v, &FeatureSet::new());
                let back = StderrMessage::decode(&mut r).await;
                (back, r.get_ref().len())
            });
            let back = back.map_err(|e| TestCaseError::fail(format!("{v}: {e}")))?;
            prop_assert_eq!(left, 0);
            prop_assert_eq!(&back, &m, "at {}", v);
        }
    }

    /// Whatever bytes arrive, decoding a request ends in a value or an error.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), op in 0u64..50) {
        let mut input = op.to_le_bytes().to_vec();
        input.extend_from_slice(&bytes);
        for (v, f) in [(ProtocolVersion::new(1, 21), FeatureSet::new()), (ProtocolVersion::LATEST, all_features())] {
            let _ = block_on(async {
                let mut r = reader(&input, v, &f);
                Request::decode(&mut r).await
            });
        }
    }
}
