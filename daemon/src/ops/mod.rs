//! The operations: [`dispatch`] maps each request to its handler, one module per group.
//!
//! | module | operations |
//! |---|---|
//! | [`queries`] | IsValidPath 1, HasSubstitutes 3, QueryPathHash 4, QueryReferences 5, QueryReferrers 6, QueryDeriver 18, QuerySubstitutablePathInfo 21, QueryDerivationOutputs 22, QueryAllValidPaths 23, QueryPathInfo 26, QueryDerivationOutputNames 28, QueryPathFromHashPart 29, QuerySubstitutablePathInfos 30, QueryValidPaths 31, QuerySubstitutablePaths 32, QueryValidDerivers 33, QueryDerivationOutputMap 41 |
//! | [`adds`] | AddToStore 7, AddTextToStore 8, ExportPath 16, ImportPaths 27, NarFromPath 38, AddToStoreNar 39, AddMultipleToStore 44 |
//! | [`roots`] | AddTempRoot 11, AddIndirectRoot 12, SyncWithGC 13, FindRoots 14, CollectGarbage 20, AddPermRoot 47 |
//! | [`maintenance`] | OptimiseStore 34, VerifyStore 35, AddSignatures 37, AddBuildLog 45 |
//! | [`settings`] | SetOptions 19 |
//! | [`builds`] | BuildPaths 9, EnsurePath 10, BuildDerivation 36, QueryMissing 40, RegisterDrvOutput 42, QueryRealisation 43, BuildPathsWithResults 46, builder RPC 1000/1001 |
//!
//! Every store call runs on the blocking pool through `Session::run` and friends; the
//! helpers below apply the session's [`StoreView`](crate::view::StoreView), so a path
//! the view hides answers exactly like an invalid one.

pub mod adds;
pub mod builds;
pub mod maintenance;
pub mod queries;
pub mod roots;
pub mod settings;

use tokio::io::{AsyncRead, AsyncWrite};

use nixnest_core::{Derivation, StorePath, ValidPathInfo};
use nixnest_protocol::request::Request;
use nixnest_protocol::response::Response;

use crate::error::{OpError, OpResult};
use crate::session::Session;
use crate::view::Permission;
use crate::work::Job;

/// How an operation ended successfully.
#[derive(Debug)]
pub enum Outcome {
    /// Send `STDERR_LAST` and this reply.
    Reply(Response),
    /// The operation already wrote everything (NarFromPath).
    Sent,
}

/// Runs one request. Arms are sorted by opcode.
pub async fn dispatch<S>(s: &mut Session<S>, req: Request) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match s.view.permission(req.opcode()) {
        Permission::Run => {}
        Permission::Skip => return skip(s, &req).await,
        Permission::Fail(msg) => {
            s.skip_payload(&req).await?;
            return Err(OpError::failed(msg));
        }
        Permission::Refuse(msg) => {
            s.skip_payload(&req).await?;
            return Err(OpError::refused(msg));
        }
    }
    use Request as R;
    match &req {
        R::IsValidPath(p) => queries::is_valid_path(s, p.clone()).await,
        R::HasSubstitutes(_) => queries::has_substitutes(),
        R::QueryPathHash(p) => queries::query_path_hash(s, p.clone()).await,
        R::QueryReferences(p) => queries::query_references(s, p.clone()).await,
        R::QueryReferrers(p) => queries::query_referrers(s, p.clone()).await,
        R::AddToStore(a) => adds::add_to_store(s, &req, a.clone()).await,
        R::AddTextToStore {
            name,
            text,
            references,
        } => adds::add_text_to_store(s, name.clone(), text.clone(), references.clone()).await,
        R::BuildPaths { paths, mode } => builds::build_paths(s, paths.clone(), *mode).await,
        R::EnsurePath(p) => builds::ensure_path(s, p.clone()).await,
        R::AddTempRoot(p) => roots::add_temp_root(s, p.clone()).await,
        R::AddIndirectRoot(link) => roots::add_indirect_root(s, link.clone()).await,
        R::SyncWithGC => roots::sync_with_gc(),
        R::FindRoots => roots::find_roots(s).await,
        R::ExportPath(p) => adds::export_path(s, p.clone()).await,
        R::QueryDeriver(p) => queries::query_deriver(s, p.clone()).await,
        R::SetOptions(o) => settings::set_options(s, o.clone()).await,
        R::CollectGarbage(o) => roots::collect_garbage(s, o.clone()).await,
        R::QuerySubstitutablePathInfo(_) => queries::query_substitutable_path_info(),
        R::QueryDerivationOutputs(p) => queries::query_derivation_outputs(s, p.clone()).await,
        R::QueryAllValidPaths => queries::query_all_valid_paths(s).await,
        R::QueryPathInfo(p) => queries::query_path_info(s, p.clone()).await,
        R::ImportPaths => adds::import_paths(s, &req).await,
        R::QueryDerivationOutputNames(p) => {
            queries::query_derivation_output_names(s, p.clone()).await
        }
        R::QueryPathFromHashPart(h) => queries::query_path_from_hash_part(s, h.clone()).await,
        R::QuerySubstitutablePathInfos(_) => queries::query_substitutable_path_infos(),
        R::QueryValidPaths { paths, .. } => queries::query_valid_paths(s, paths.clone()).await,
        R::QuerySubstitutablePaths(_) => queries::query_substitutable_paths(),
        R::QueryValidDerivers(p) => queries::query_valid_derivers(s, p.clone()).await,
        R::OptimiseStore => maintenance::optimise_store(s).await,
        R::VerifyStore {
            check_contents,
            repair,
        } => maintenance::verify_store(s, *check_contents, *repair).await,
        R::BuildDerivation {
            drv_path,
            drv,
            mode,
        } => builds::build_derivation(s, drv_path.clone(), drv.clone(), *mode).await,
        R::AddSignatures { path, sigs } => {
            maintenance::add_signatures(s, path.clone(), sigs.clone()).await
        }
        R::NarFromPath(p) => adds::nar_from_path(s, p.clone()).await,
        R::AddToStoreNar {
            info,
            repair,
            dont_check_sigs,
        } => adds::add_to_store_nar(s, &req, info.clone(), *repair, *dont_check_sigs).await,
        R::QueryMissing(paths) => builds::query_missing(s, paths.clone()).await,
        R::QueryDerivationOutputMap(p) => queries::query_derivation_output_map(s, p.clone()).await,
        R::RegisterDrvOutput(_) => builds::register_drv_output(),
        R::QueryRealisation(_) => builds::query_realisation(),
        R::AddMultipleToStore {
            repair,
            dont_check_sigs,
        } => adds::add_multiple_to_store(s, &req, *repair, *dont_check_sigs).await,
        R::AddBuildLog(drv) => maintenance::add_build_log(s, &req, drv.clone()).await,
        R::BuildPathsWithResults { paths, mode } => {
            builds::build_paths_with_results(s, paths.clone(), *mode).await
        }
        R::AddPermRoot { path, gc_root } => {
            roots::add_perm_root(s, path.clone(), gc_root.clone()).await
        }
        R::SubmitOutput { .. } | R::AddToStoreScanning { .. } => builds::builder_rpc(s, &req).await,
    }
}

/// A view said "skip": consume the payload, answer as if done (roots and maintenance
/// no-ops, empty answers to what a build's view hides).
async fn skip<S>(s: &mut Session<S>, req: &Request) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.skip_payload(req).await?;
    use nixnest_protocol::request::Opcode as O;
    match req {
        // Refused for everyone, even where collecting is a no-op.
        Request::CollectGarbage(o) => {
            s.policy.check_ignore_liveness(o.ignore_liveness)?;
            return Ok(Outcome::Reply(Response::CollectGarbage(
                nixnest_protocol::types::GcResult {
                    paths: Default::default(),
                    bytes_freed: 0,
                },
            )));
        }
        Request::VerifyStore { repair, .. } => {
            s.policy.check_verify_repair(*repair)?;
            return Ok(Outcome::Reply(Response::Bool(false)));
        }
        _ => {}
    }
    match req.opcode() {
        O::BuildPaths
        | O::EnsurePath
        | O::AddTempRoot
        | O::AddIndirectRoot
        | O::SyncWithGC
        | O::OptimiseStore
        | O::AddSignatures
        | O::AddBuildLog => Ok(Outcome::Reply(Response::Ack)),
        O::SetOptions | O::RegisterDrvOutput => Ok(Outcome::Reply(Response::Unit)),
        O::QueryReferrers | O::QueryValidDerivers => {
            Ok(Outcome::Reply(Response::Paths(Default::default())))
        }
        O::FindRoots => Ok(Outcome::Reply(Response::FindRoots(Vec::new()))),
        op => Err(OpError::refused(format!(
            "operation {} cannot be skipped",
            op.name()
        ))),
    }
}

/// `Ok(reply)` as an [`Outcome`].
pub(crate) fn reply(r: Response) -> OpResult<Outcome> {
    Ok(Outcome::Reply(r))
}

/// CppNix's "path '…' is not valid".
pub(crate) fn not_valid(job: &Job, path: &StorePath) -> OpError {
    nixnest_store::Error::InvalidPath(job.store.print(path)).into()
}

/// The info of a valid path the session can see (censored for a build's view), or
/// `None`.
pub(crate) fn path_info(job: &Job, path: &StorePath) -> OpResult<Option<ValidPathInfo>> {
    if !job.view.is_visible(path) {
        return Ok(None);
    }
    Ok(job.store.query_path_info(path)?.map(|i| job.view.censor(i)))
}

/// The info of a valid path the session can see, or "path '…' is not valid".
pub(crate) fn require_info(job: &Job, path: &StorePath) -> OpResult<ValidPathInfo> {
    path_info(job, path)?.ok_or_else(|| not_valid(job, path))
}

/// Whether `path` is valid and visible.
pub(crate) fn is_valid(job: &Job, path: &StorePath) -> OpResult<bool> {
    Ok(job.view.is_visible(path) && job.store.is_valid_path(path)?)
}

/// Paths a request names as references must be visible (they must also be valid,
/// which the store checks).
pub(crate) fn require_visible<'a>(
    job: &Job,
    paths: impl IntoIterator<Item = &'a StorePath>,
) -> OpResult<()> {
    match paths.into_iter().find(|p| !job.view.is_visible(p)) {
        Some(p) => Err(not_valid(job, p)),
        None => Ok(()),
    }
}

/// Reads a valid, visible derivation from the store.
pub(crate) fn read_drv(job: &Job, path: &StorePath) -> OpResult<Derivation> {
    if !is_valid(job, path)? {
        return Err(not_valid(job, path));
    }
    Ok(nixnest_store::drv::read_derivation(&job.store, path)?)
}
