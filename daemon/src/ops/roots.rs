//! Garbage-collector roots and the collector itself.
//!
//! * AddTempRoot: the root lives in the session's temp-roots file until the connection
//!   closes (CppNix's `{temp:<pid>}` roots, one file per session here).
//! * AddIndirectRoot: `<state>/gcroots/auto/<nix32(sha1(link))>` → the client's link.
//! * AddPermRoot (≥ 1.36): trusted clients only; the symlink plus its indirect root.
//! * FindRoots: every root and where it was found; runtime and temp roots are
//!   `{censored}` for untrusted clients.
//! * CollectGarbage: every action; `ignoreLiveness` is refused. Live sessions' temp roots
//!   are files like CppNix's, so the collector (ours or CppNix's) sees them; paths a
//!   build backend is producing are passed as extra roots.
//! * SyncWithGC: a no-op (CppNix ≥ 2.0).

use std::collections::BTreeSet;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite};

use nixnest_core::StorePath;
use nixnest_protocol::response::Response;
use nixnest_protocol::types::{GcAction, GcOptions, GcPaths, GcResult};

use super::{Outcome, reply};
use crate::error::{OpError, OpResult};
use crate::session::Session;

fn absolute(path: &str, what: &str) -> OpResult<()> {
    if !path.starts_with('/') {
        return Err(OpError::failed(format!(
            "{what} '{path}' is not an absolute path"
        )));
    }
    Ok(())
}

/// AddTempRoot (11).
pub async fn add_temp_root<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.run(move |job| {
        // Rooting a path never makes it visible (a build's view skips this op anyway).
        job.roots.add_path(&path)?;
        Ok(())
    })
    .await?;
    reply(Response::Ack)
}

/// AddIndirectRoot (12).
pub async fn add_indirect_root<S>(s: &mut Session<S>, link: String) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    absolute(&link, "garbage collector root")?;
    s.run(move |job| {
        job.store.add_indirect_root(Path::new(&link))?;
        Ok(())
    })
    .await?;
    reply(Response::Ack)
}

/// SyncWithGC (13).
pub fn sync_with_gc() -> OpResult<Outcome> {
    reply(Response::Ack)
}

/// FindRoots (14): one (link, target) pair per place a root was found.
pub async fn find_roots<S>(s: &mut Session<S>) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let censor = s.policy.censor_roots();
    let roots = s
        .run(move |job| Ok(job.store.find_roots(censor, &job.log)?))
        .await?;
    let mut pairs = Vec::new();
    for (target, links) in roots {
        if !s.view.is_visible(&target) {
            continue;
        }
        for link in links {
            pairs.push((link, target.clone()));
        }
    }
    reply(Response::FindRoots(pairs))
}

/// CollectGarbage (20).
pub async fn collect_garbage<S>(s: &mut Session<S>, opts: GcOptions) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.policy.check_ignore_liveness(opts.ignore_liveness)?;
    let action = match opts.action {
        GcAction::ReturnLive => nixnest_store::GcAction::ReturnLive,
        GcAction::ReturnDead => nixnest_store::GcAction::ReturnDead,
        GcAction::DeleteDead => nixnest_store::GcAction::DeleteDead,
        GcAction::DeleteSpecific => nixnest_store::GcAction::DeleteSpecific,
    };
    // Without the `delete-dead-specific-referrers` feature (never offered) the paths are
    // a plain set, empty for "the whole store".
    let paths_to_delete = match opts.paths {
        GcPaths::Specific { paths, .. } => paths,
        GcPaths::WholeStore => BTreeSet::new(),
    };
    let store_opts = nixnest_store::GcOptions {
        action,
        paths_to_delete,
        ignore_liveness: false,
        max_freed: opts.max_freed,
        extra_roots: s.shared.scheduler.extra_roots(),
    };
    let results = s
        .run(move |job| Ok(job.store.collect_garbage(&store_opts, &job.log)?))
        .await?;
    reply(Response::CollectGarbage(GcResult {
        paths: results.paths,
        bytes_freed: results.bytes_freed,
    }))
}

/// AddPermRoot (47): trusted clients only; returns the root's absolute path.
pub async fn add_perm_root<S>(
    s: &mut Session<S>,
    path: StorePath,
    gc_root: String,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.policy.check_add_perm_root()?;
    absolute(&gc_root, "garbage collector root")?;
    let root = s
        .run(move |job| {
            let root = job
                .store
                .add_perm_root(&path, Path::new(&gc_root), &job.roots)?;
            Ok(root)
        })
        .await?;
    reply(Response::Text(root.display().to_string()))
}
