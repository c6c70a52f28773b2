//! Store maintenance: OptimiseStore, VerifyStore, AddSignatures, AddBuildLog.
//!
//! * OptimiseStore: the store reports like CppNix — an `actOptimiseStore` activity with
//!   progress, one `optimising path '…'` activity per path with `resFileLinked` results,
//!   then "… freed by hard-linking N files".
//! * VerifyStore: progress lines as CppNix ("reading the Nix store...", "checking path
//!   existence...", …); repairing needs a trusted client.
//! * AddSignatures: allowed for every client, as in CppNix ≥ 2.17 (2.8–2.16 refused
//!   untrusted clients; signatures only matter when they verify against trusted keys).
//! * AddBuildLog: trusted clients only; the framed log is drained either way.

use std::collections::BTreeSet;
use std::io::Write;

use tokio::io::{AsyncRead, AsyncWrite};

use nixnest_core::StorePath;
use nixnest_protocol::request::Request;
use nixnest_protocol::response::Response;

use super::{Outcome, not_valid, reply, require_info};
use crate::error::{OpError, OpResult};
use crate::session::Session;

/// OptimiseStore (34).
pub async fn optimise_store<S>(s: &mut Session<S>) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.run(|job| {
        job.store.optimise_store(&job.log)?;
        Ok(())
    })
    .await?;
    reply(Response::Ack)
}

/// VerifyStore (35): whether errors remain.
pub async fn verify_store<S>(
    s: &mut Session<S>,
    check_contents: bool,
    repair: bool,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.policy.check_verify_repair(repair)?;
    let result = s
        .run(move |job| Ok(job.store.verify_store(check_contents, repair, &job.log)?))
        .await?;
    reply(Response::Bool(result.errors))
}

/// AddSignatures (37).
pub async fn add_signatures<S>(
    s: &mut Session<S>,
    path: StorePath,
    sigs: BTreeSet<String>,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.run(move |job| {
        require_info(job, &path)?;
        job.store.add_signatures(&path, &sigs)?;
        Ok(())
    })
    .await?;
    reply(Response::Ack)
}

/// AddBuildLog (45): the log arrives framed and is stored bzip2-compressed where
/// clients read it (`<log dir>/drvs/xx/…drv.bz2`); the first log of a derivation wins.
pub async fn add_build_log<S>(
    s: &mut Session<S>,
    req: &Request,
    drv: StorePath,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = s.policy.check_add_build_log() {
        s.skip_payload(req).await?;
        return Err(e);
    }
    s.run_with_payload(req, move |job| {
        if !job.view.is_visible(&drv) {
            return Err(not_valid(job, &drv));
        }
        if let Some(mut writer) = job.store.build_log_writer(&drv)? {
            std::io::copy(&mut job.input, &mut writer)
                .map_err(|e| OpError::failed(format!("storing the build log: {e}")))?;
            writer.flush()?;
            writer.finish()?;
        }
        Ok(())
    })
    .await?;
    reply(Response::Ack)
}
