//! Replies: what follows `STDERR_LAST` for each operation.
//!
//! One variant per reply shape an operation has; the negotiated version decides the
//! layout inside `encode`/`decode`, next to the field that changes:
//!
//! | reply | layout |
//! |---|---|
//! | `Unit` | nothing (SetOptions, AddToStoreNar, AddMultipleToStore, RegisterDrvOutput; NarFromPath's raw NAR is not a reply value) |
//! | `Ack` | u64 1, read and ignored by clients |
//! | `AddToStore` | < 1.25 path; ≥ 1.25 ValidPathInfo with path |
//! | `QueryPathInfo` | [≥1.17] bool valid; if valid: ValidPathInfo without path |
//! | `FindRoots` | u64 n, n × (string link, path target) |
//! | `QuerySubstitutablePathInfo` | u64 found (0/1); if found: SubstitutablePathInfo |
//! | `QuerySubstitutablePathInfos` | u64 n, n × (path, SubstitutablePathInfo) |
//! | `QueryRealisation` | < 1.31 `set<path>` (0/1); ≥ 1.31 `list<string JSON>` (0/1); feature: `opt<UnkeyedRealisation>` |
//! | others | the single value named by the variant |

use std::collections::{BTreeMap, BTreeSet};

use tokio::io::AsyncRead;

use nixnest_core::{Hash, HashAlgo, StorePath, ValidPathInfo};

use crate::error::{Error, Result};
use crate::request::{Opcode, RealisationKey, Request};
use crate::types::{
    BuildResult, GcResult, KeyedBuildResult, Missing, Realisation, SubstitutablePathInfo,
    UnkeyedRealisation, UnkeyedValidPathInfo, placeholder_drv_output, read_path, write_path,
};
use crate::version::feature;
use crate::wire::{Tagged, WireReader, WireType, WireWriter, limits};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// No reply body.
    Unit,
    /// `u64 1`.
    Ack,
    /// IsValidPath, HasSubstitutes, VerifyStore (errors found).
    Bool(bool),
    /// QueryPathHash: the NAR hash, written base16 without prefix.
    NarHash(Hash),
    /// QueryReferences, QueryReferrers, QueryDerivationOutputs, QueryAllValidPaths,
    /// QueryValidPaths, QuerySubstitutablePaths, QueryValidDerivers.
    Paths(BTreeSet<StorePath>),
    /// AddTextToStore; AddToStore < 1.25 when decoded.
    Path(StorePath),
    /// QueryDeriver, QueryPathFromHashPart.
    OptPath(Option<StorePath>),
    /// AddToStore (written as just the path before 1.25), AddToStoreScanning.
    PathInfo(Box<ValidPathInfo>),
    QueryPathInfo(Option<Box<UnkeyedValidPathInfo>>),
    FindRoots(Vec<(String, StorePath)>),
    CollectGarbage(GcResult),
    QuerySubstitutablePathInfo(Option<SubstitutablePathInfo>),
    QuerySubstitutablePathInfos(BTreeMap<StorePath, SubstitutablePathInfo>),
    /// ImportPaths: the imported paths.
    PathList(Vec<StorePath>),
    /// QueryDerivationOutputNames.
    Strings(BTreeSet<String>),
    BuildResult(Box<BuildResult>),
    KeyedBuildResults(Vec<KeyedBuildResult>),
    Missing(Missing),
    /// QueryDerivationOutputMap: output name → path (none for unknown floating outputs).
    OutputMap(BTreeMap<String, Option<StorePath>>),
    QueryRealisation(Option<Box<Realisation>>),
    /// AddPermRoot: the absolute root path.
    Text(String),
}

impl Response {
    /// Encodes the reply body at the writer's version and features.
    pub fn encode(&self, w: &mut WireWriter) {
        let v = w.version();
        match self {
            Response::Unit => {}
            Response::Ack => w.write_u64(1),
            Response::Bool(b) => w.write_bool(*b),
            Response::NarHash(h) => w.write_str(&h.to_base16()),
            Response::Paths(p) => p.encode(w),
            Response::Path(p) => write_path(w, p),
            Response::OptPath(p) => p.encode(w),
            Response::PathInfo(info) => {
                if v.at_least(25) {
                    info.encode(w);
                } else {
                    write_path(w, &info.path);
                }
            }
            Response::QueryPathInfo(info) => {
                if v.at_least(17) {
                    w.write_bool(info.is_some());
                }
                if let Some(info) = info {
                    info.encode(w);
                }
            }
            Response::FindRoots(roots) => {
                w.write_u64(roots.len() as u64);
                for (link, target) in roots {
                    w.write_str(link);
                    write_path(w, target);
                }
            }
            Response::CollectGarbage(r) => r.encode(w),
            Response::QuerySubstitutablePathInfo(info) => {
                w.write_bool(info.is_some());
                if let Some(info) = info {
                    info.encode(w);
                }
            }
            Response::QuerySubstitutablePathInfos(m) => m.encode(w),
            Response::PathList(p) => p.encode(w),
            Response::Strings(s) => s.encode(w),
            Response::BuildResult(r) => r.encode(w),
            Response::KeyedBuildResults(r) => r.encode(w),
            Response::Missing(m) => m.encode(w),
            Response::OutputMap(m) => m.encode(w),
            Response::QueryRealisation(real) => {
                if w.has_feature(feature::REALISATION_WITH_PATH_NOT_HASH) {
                    Tagged(real.as_ref().map(|r| r.unkeyed())).encode(w);
                } else if v.at_least(31) {
                    let list: Vec<Realisation> = real.iter().map(|r| (**r).clone()).collect();
                    list.encode(w);
                } else {
                    let paths: BTreeSet<StorePath> =
                        real.iter().map(|r| r.out_path.clone()).collect();
                    paths.encode(w);
                }
            }
            Response::Text(s) => w.write_str(s),
        }
    }

    /// Decodes the reply to `req` (client side and the wiretap). NarFromPath gives
    /// `Unit`: its raw NAR follows and is the caller's to read.
    pub async fn decode<R: AsyncRead + Unpin + Send>(
        req: &Request,
        r: &mut WireReader<R>,
    ) -> Result<Response> {
        use Opcode as O;
        let v = r.version();
        Ok(match req.opcode() {
            O::SetOptions
            | O::AddToStoreNar
            | O::AddMultipleToStore
            | O::RegisterDrvOutput
            | O::NarFromPath => Response::Unit,
            O::BuildPaths
            | O::EnsurePath
            | O::AddTempRoot
            | O::AddIndirectRoot
            | O::SyncWithGC
            | O::ExportPath
            | O::OptimiseStore
            | O::AddSignatures
            | O::AddBuildLog
            | O::SubmitOutput => {
                r.read_u64().await?;
                Response::Ack
            }
            O::IsValidPath | O::HasSubstitutes | O::VerifyStore => {
                Response::Bool(r.read_bool("reply").await?)
            }
            O::QueryPathHash => {
                let s = r.read_string(limits::SHORT, "narHash").await?;
                Response::NarHash(
                    Hash::parse_any(&s, Some(HashAlgo::Sha256)).map_err(Error::value("narHash"))?,
                )
            }
            O::QueryReferences
            | O::QueryReferrers
            | O::QueryDerivationOutputs
            | O::QueryAllValidPaths
            | O::QueryValidPaths
            | O::QuerySubstitutablePaths
            | O::QueryValidDerivers => Response::Paths(BTreeSet::decode(r).await?),
            O::AddTextToStore => Response::Path(read_path(r, "path").await?),
            O::AddToStore if !v.at_least(25) => Response::Path(read_path(r, "path").await?),
            O::AddToStore | O::AddToStoreScanning => {
                Response::PathInfo(Box::new(ValidPathInfo::decode(r).await?))
            }
            O::QueryDeriver | O::QueryPathFromHashPart => {
                Response::OptPath(Option::<StorePath>::decode(r).await?)
            }
            O::QueryPathInfo => {
                let valid = !v.at_least(17) || r.read_bool("valid").await?;
                Response::QueryPathInfo(if valid {
                    Some(Box::new(UnkeyedValidPathInfo::decode(r).await?))
                } else {
                    None
                })
            }
            O::FindRoots => {
                let n = r.read_count(limits::ITEMS, "roots").await?;
                let mut roots = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let link = r.read_text("root link").await?;
                    roots.push((link, read_path(r, "root target").await?));
                }
                Response::FindRoots(roots)
            }
            O::CollectGarbage => Response::CollectGarbage(GcResult::decode(r).await?),
            O::QuerySubstitutablePathInfo => {
                Response::QuerySubstitutablePathInfo(if r.read_bool("found").await? {
                    Some(SubstitutablePathInfo::decode(r).await?)
                } else {
                    None
                })
            }
            O::QuerySubstitutablePathInfos => {
                Response::QuerySubstitutablePathInfos(BTreeMap::decode(r).await?)
            }
            O::ImportPaths => Response::PathList(Vec::decode(r).await?),
            O::QueryDerivationOutputNames => {
                let n = r.read_count(limits::ITEMS, "output names").await?;
                let mut names = BTreeSet::new();
                for _ in 0..n {
                    names.insert(r.read_string(limits::SHORT, "output name").await?);
                }
                Response::Strings(names)
            }
            O::BuildDerivation => Response::BuildResult(Box::new(BuildResult::decode(r).await?)),
            O::BuildPathsWithResults => Response::KeyedBuildResults(Vec::decode(r).await?),
            O::QueryMissing => Response::Missing(Missing::decode(r).await?),
            O::QueryDerivationOutputMap => {
                let n = r.read_count(limits::ITEMS, "outputs").await?;
                let mut map = BTreeMap::new();
                for _ in 0..n {
                    let name = r.read_string(limits::SHORT, "output name").await?;
                    map.insert(name, Option::<StorePath>::decode(r).await?);
                }
                Response::OutputMap(map)
            }
            O::QueryRealisation => {
                let output = match req {
                    Request::QueryRealisation(k) => k.output().to_owned(),
                    _ => String::new(),
                };
                let id = match req {
                    Request::QueryRealisation(RealisationKey::Id(id)) => id.clone(),
                    _ => placeholder_drv_output(&output),
                };
                let from_unkeyed = |u: UnkeyedRealisation| Realisation {
                    id: id.clone(),
                    out_path: u.out_path,
                    signatures: u.signatures,
                    dependent_realisations: BTreeMap::new(),
                };
                let real = if r.has_feature(feature::REALISATION_WITH_PATH_NOT_HASH) {
                    Tagged::<UnkeyedRealisation>::decode(r)
                        .await?
                        .0
                        .map(from_unkeyed)
                } else if v.at_least(31) {
                    Vec::<Realisation>::decode(r).await?.into_iter().next()
                } else {
                    BTreeSet::<StorePath>::decode(r)
                        .await?
                        .into_iter()
                        .next()
                        .map(|out_path| {
                            from_unkeyed(UnkeyedRealisation {
                                out_path,
                                signatures: BTreeSet::new(),
                            })
                        })
                };
                Response::QueryRealisation(real.map(Box::new))
            }
            O::AddPermRoot => Response::Text(r.read_text("gcRoot").await?),
        })
    }
}
