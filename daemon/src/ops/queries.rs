//! Queries: path validity and metadata, referrers, derivers, derivation outputs,
//! substitutes.
//!
//! Semantics follow CppNix's `LocalStore` (spec §4.4):
//! * an invalid path is `valid = 0` in QueryPathInfo (≥ 1.17; older clients get
//!   "path '…' is not valid"), an error in QueryPathHash, QueryReferences and
//!   QueryDeriver, and an empty set in QueryReferrers;
//! * derivation queries read the `.drv` file of a valid derivation: the statically known
//!   output paths (input-addressed and fixed-output); floating content-addressed outputs
//!   have none (nixnest records no realisations);
//! * there are no substituters, so every substitute query answers "nothing"
//!   (CppNix with `substituters =` answers the same).
//!
//! QueryReferences (5) hung the Debian 2.8.0 daemon; here it answers the references.

use std::collections::{BTreeMap, BTreeSet};

use tokio::io::{AsyncRead, AsyncWrite};

use nixnest_core::StorePath;
use nixnest_protocol::response::Response;

use super::{Outcome, is_valid, path_info, read_drv, reply, require_info};
use crate::error::{OpError, OpResult};
use crate::session::Session;

/// IsValidPath (1).
pub async fn is_valid_path<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let valid = s.run(move |job| is_valid(job, &path)).await?;
    reply(Response::Bool(valid))
}

/// HasSubstitutes (3): no substituters.
pub fn has_substitutes() -> OpResult<Outcome> {
    reply(Response::Bool(false))
}

/// QueryPathHash (4): the NAR hash.
pub async fn query_path_hash<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = s.run(move |job| require_info(job, &path)).await?;
    reply(Response::NarHash(info.nar_hash))
}

/// QueryReferences (5).
pub async fn query_references<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let refs = s
        .run(move |job| Ok(job.view.visible(require_info(job, &path)?.references)))
        .await?;
    reply(Response::Paths(refs))
}

/// QueryReferrers (6): valid paths referring to `path` (empty for an invalid path).
pub async fn query_referrers<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let refs = s
        .run(move |job| {
            if !job.view.is_visible(&path) {
                return Ok(BTreeSet::new());
            }
            Ok(job.view.visible(job.store.query_referrers(&path)?))
        })
        .await?;
    reply(Response::Paths(refs))
}

/// QueryDeriver (18): the deriver recorded for a valid path.
pub async fn query_deriver<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = s.run(move |job| require_info(job, &path)).await?;
    reply(Response::OptPath(info.deriver))
}

/// QuerySubstitutablePathInfo (21): nothing is substitutable.
pub fn query_substitutable_path_info() -> OpResult<Outcome> {
    reply(Response::QuerySubstitutablePathInfo(None))
}

/// Output name → statically known path of a valid derivation.
fn output_map(
    job: &crate::work::Job,
    drv_path: &StorePath,
) -> OpResult<BTreeMap<String, Option<StorePath>>> {
    let drv = read_drv(job, drv_path)?;
    Ok(drv.output_paths(job.store.store_dir())?)
}

/// QueryDerivationOutputs (22): every output path; an output without a known path is an
/// error, as in CppNix's `queryDerivationOutputs`.
pub async fn query_derivation_outputs<S>(s: &mut Session<S>, drv: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let paths = s
        .run(move |job| {
            let mut paths = BTreeSet::new();
            for (name, path) in output_map(job, &drv)? {
                let path = path.ok_or_else(|| {
                    OpError::failed(format!(
                        "output '{name}' of derivation '{}' has no store path mapped to it",
                        job.store.print(&drv)
                    ))
                })?;
                paths.insert(path);
            }
            Ok(paths)
        })
        .await?;
    reply(Response::Paths(paths))
}

/// QueryAllValidPaths (23).
pub async fn query_all_valid_paths<S>(s: &mut Session<S>) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let paths = s
        .run(|job| Ok(job.view.visible(job.store.query_all_valid_paths()?)))
        .await?;
    reply(Response::Paths(paths))
}

/// QueryPathInfo (26).
pub async fn query_path_info<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let wanted = path.clone();
    let info = s.run(move |job| path_info(job, &wanted)).await?;
    if info.is_none() && !s.out.version().at_least(17) {
        // Before 1.17 the reply has no `valid` flag: an invalid path is an error.
        let printed = s.shared.store.print(&path);
        return Err(nixnest_store::Error::InvalidPath(printed).into());
    }
    reply(Response::QueryPathInfo(info.map(|i| Box::new(i.into()))))
}

/// QueryDerivationOutputNames (28).
pub async fn query_derivation_output_names<S>(
    s: &mut Session<S>,
    drv: StorePath,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let names = s
        .run(move |job| Ok(read_drv(job, &drv)?.outputs.into_keys().collect()))
        .await?;
    reply(Response::Strings(names))
}

/// QueryPathFromHashPart (29).
pub async fn query_path_from_hash_part<S>(s: &mut Session<S>, hash: String) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let found = s
        .run(move |job| {
            Ok(job
                .store
                .query_path_from_hash_part(&hash)?
                .filter(|p| job.view.is_visible(p)))
        })
        .await?;
    reply(Response::OptPath(found))
}

/// QuerySubstitutablePathInfos (30): nothing is substitutable.
pub fn query_substitutable_path_infos() -> OpResult<Outcome> {
    reply(Response::QuerySubstitutablePathInfos(BTreeMap::new()))
}

/// QueryValidPaths (31). With `substitute` CppNix first substitutes the missing paths;
/// there are no substituters, so the flag changes nothing.
pub async fn query_valid_paths<S>(
    s: &mut Session<S>,
    paths: BTreeSet<StorePath>,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let valid = s
        .run(move |job| Ok(job.store.query_valid_paths(&job.view.visible(paths))?))
        .await?;
    reply(Response::Paths(valid))
}

/// QuerySubstitutablePaths (32): nothing is substitutable.
pub fn query_substitutable_paths() -> OpResult<Outcome> {
    reply(Response::Paths(BTreeSet::new()))
}

/// QueryValidDerivers (33): valid derivations that list `path` as an output.
pub async fn query_valid_derivers<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drvs = s
        .run(move |job| Ok(job.view.visible(job.store.query_valid_derivers(&path)?)))
        .await?;
    reply(Response::Paths(drvs))
}

/// QueryDerivationOutputMap (41): output name → statically known path (none for
/// floating content-addressed outputs).
pub async fn query_derivation_output_map<S>(s: &mut Session<S>, drv: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let map = s.run(move |job| output_map(job, &drv)).await?;
    reply(Response::OutputMap(map))
}
