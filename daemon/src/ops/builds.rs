//! Realising paths: BuildPaths (9), EnsurePath (10), BuildDerivation (36),
//! QueryMissing (40), BuildPathsWithResults (46) — handed to the daemon's build
//! [`Scheduler`](crate::builds::Scheduler), which plans, builds and answers them as
//! CppNix 2.8 does (see [`crate::builds`]) — and the realisation ops of
//! content-addressed derivations, which nixnest does not support.
//!
//! While a build request runs, its stderr messages (activities, build output) are
//! written to the client as they come, and the connection is watched: a client that
//! hangs up (or is interrupted) ends the request, which detaches it from its builds —
//! a build nobody else waits for is then killed.
//!
//! In a build's view (recursive Nix, [`crate::view`]) the paths named must be visible
//! and the mode normal, checked before anything runs; the builds are nested builds of
//! that build; afterwards the closure of the outputs built joins the view. QueryMissing
//! reports invisible targets as unknown.

use std::future::Future;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use std::collections::BTreeSet;

use nixnest_core::{BasicDerivation, DerivationType, DerivedPath, OutputsSpec, StorePath};
use nixnest_protocol::request::Request;
use nixnest_protocol::response::Response;
use nixnest_protocol::stderr::NixError;
use nixnest_protocol::types::BuildMode;

use super::{Outcome, reply};
use crate::builds::{self, BuildRequest, Sink};
use crate::error::{OpError, OpResult};
use crate::session::Session;

/// How a build request that failed as a whole reaches the client.
fn op_error(e: builds::Error) -> OpError {
    match e {
        builds::Error::ClientGone => OpError::Disconnected(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the client went away during a build",
        )),
        e => {
            let mut err = NixError::new(e.to_string());
            err.exit_status = e.exit_status();
            OpError::Failed(err)
        }
    }
}

/// The session's build request for `targets`.
fn request<S>(s: &Session<S>, targets: Vec<DerivedPath>, mode: BuildMode) -> BuildRequest
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    BuildRequest {
        targets,
        mode,
        settings: std::sync::Arc::clone(&s.settings),
        verbosity: s.out.verbosity(),
        session: Some(s.id),
        roots: Some(std::sync::Arc::clone(&s.roots)),
        view: s.view.build().cloned(),
    }
}

/// A build's view: the paths named must be visible, the mode normal, the depth within
/// `recursive-nix-max-depth`.
fn check_view<S>(s: &Session<S>, paths: &[DerivedPath], mode: BuildMode) -> OpResult<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let store = std::sync::Arc::clone(&s.shared.store);
    s.view.check_build(
        paths,
        mode,
        s.daemon_settings.recursive_nix_max_depth,
        |p| store.print(p),
    )
}

/// A build's view: the closure of the valid outputs of `paths` joins it.
async fn note_built<S>(s: &mut Session<S>, paths: Vec<DerivedPath>) -> OpResult<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !s.view.is_restricted() {
        return Ok(());
    }
    s.run(move |job| {
        let mut built = BTreeSet::new();
        for path in paths {
            let DerivedPath::Built { drv_path, outputs } = path else {
                continue;
            };
            let drv = nixnest_store::drv::read_derivation(&job.store, &drv_path)?;
            for (name, out) in drv.output_paths(job.store.store_dir())? {
                let wanted = match &outputs {
                    OutputsSpec::All => true,
                    OutputsSpec::Names(names) => names.contains(&name),
                };
                if let Some(out) = out.filter(|_| wanted)
                    && job.store.is_valid_path(&out)?
                {
                    built.insert(out);
                }
            }
        }
        job.view.note_built(&built)
    })
    .await
}

/// Runs a scheduler call: forwards its stderr messages to the client in order, and
/// gives up (dropping the call, so its builds are detached) when the client hangs up.
async fn drive<S, T, F, Fut>(s: &mut Session<S>, call: F) -> OpResult<T>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(Sink) -> Fut,
    Fut: Future<Output = builds::Result<T>>,
{
    let (tx, mut rx) = mpsc::channel(64);
    let call = call(tx);
    tokio::pin!(call);
    let Session { reader, out, .. } = s;
    // The client sends nothing while it waits for the reply: end-of-file (or an error)
    // means it is gone. Bytes it might send are left for the request loop.
    let hangup = async {
        match reader.get_mut().fill_buf().await {
            Ok([]) | Err(_) => {}
            Ok(_) => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(hangup);
    let result = loop {
        tokio::select! {
            biased;
            Some(msg) = rx.recv() => out.send(&msg).await?,
            r = &mut call => break r,
            () = &mut hangup => {
                tracing::info!("the client hung up during a build request");
                return Err(OpError::Disconnected(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during a build request",
                )));
            }
        }
    };
    while let Ok(msg) = rx.try_recv() {
        out.send(&msg).await?;
    }
    result.map_err(op_error)
}

/// BuildPaths (9).
pub async fn build_paths<S>(
    s: &mut Session<S>,
    paths: Vec<DerivedPath>,
    mode: BuildMode,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.policy.check_build_repair(mode == BuildMode::Repair)?;
    check_view(s, &paths, mode)?;
    let req = request(s, paths.clone(), mode);
    let sched = std::sync::Arc::clone(&s.shared.scheduler);
    drive(
        s,
        |sink| async move { sched.build_paths(&req, &sink).await },
    )
    .await?;
    note_built(s, paths).await?;
    reply(Response::Ack)
}

/// BuildPathsWithResults (46): failures are statuses.
pub async fn build_paths_with_results<S>(
    s: &mut Session<S>,
    paths: Vec<DerivedPath>,
    mode: BuildMode,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.policy.check_build_repair(mode == BuildMode::Repair)?;
    check_view(s, &paths, mode)?;
    let req = request(s, paths, mode);
    let sched = std::sync::Arc::clone(&s.shared.scheduler);
    let results = drive(s, |sink| async move {
        sched.build_paths_with_results(&req, &sink).await
    })
    .await?;
    let built = results
        .iter()
        .filter(|r| r.result.status.is_success())
        .map(|r| r.path.clone())
        .collect();
    note_built(s, built).await?;
    reply(Response::KeyedBuildResults(results))
}

/// EnsurePath (10): a valid path, or CppNix's error (no substituters).
pub async fn ensure_path<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.view.check_ensure(&path, &s.shared.store.print(&path))?;
    let sched = std::sync::Arc::clone(&s.shared.scheduler);
    let roots = std::sync::Arc::clone(&s.roots);
    drive(s, |_sink| async move {
        sched.ensure_path(&path, Some(&roots)).await
    })
    .await?;
    reply(Response::Ack)
}

/// BuildDerivation (36): untrusted clients may only build content-addressed derivations.
pub async fn build_derivation<S>(
    s: &mut Session<S>,
    drv_path: StorePath,
    drv: BasicDerivation,
    mode: BuildMode,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let content_addressed = matches!(
        drv.derivation_type()?,
        DerivationType::ContentAddressed { .. } | DerivationType::Impure
    );
    s.policy.check_build_derivation(content_addressed)?;
    s.policy.check_build_repair(mode == BuildMode::Repair)?;
    let req = request(s, Vec::new(), mode);
    let sched = std::sync::Arc::clone(&s.shared.scheduler);
    let result = drive(s, |sink| async move {
        sched.build_derivation(drv_path, drv, &req, &sink).await
    })
    .await?;
    reply(Response::BuildResult(Box::new(result)))
}

/// QueryMissing (40).
pub async fn query_missing<S>(s: &mut Session<S>, paths: Vec<DerivedPath>) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A build's view: what it cannot see is unknown to it, whatever the store holds.
    let (paths, hidden): (Vec<DerivedPath>, Vec<DerivedPath>) = paths.into_iter().partition(|p| {
        s.view.is_visible(match p {
            DerivedPath::Opaque(p) => p,
            DerivedPath::Built { drv_path, .. } => drv_path,
        })
    });
    let sched = std::sync::Arc::clone(&s.shared.scheduler);
    let mut m = drive(s, |_sink| async move { sched.query_missing(paths).await }).await?;
    m.unknown.extend(hidden.into_iter().map(|p| match p {
        DerivedPath::Opaque(p) => p,
        DerivedPath::Built { drv_path, .. } => drv_path,
    }));
    reply(Response::Missing(m))
}

/// RegisterDrvOutput (42): content-addressed derivations are not supported.
pub fn register_drv_output() -> OpResult<Outcome> {
    Err(OpError::failed(
        "cannot register a realisation: nixnest-daemon does not support content-addressed \
         derivations (experimental feature 'ca-derivations')",
    ))
}

/// QueryRealisation (43): nixnest records no realisations, so there is none.
pub fn query_realisation() -> OpResult<Outcome> {
    reply(Response::QueryRealisation(None))
}

/// Builder RPC (1000, 1001): only for builds talking to their daemon, whose features are
/// never offered to ordinary sessions (so the request cannot even be decoded there).
pub async fn builder_rpc<S>(s: &mut Session<S>, req: &Request) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.skip_payload(req).await?;
    Err(OpError::refused(format!(
        "operation {} is only available to builds",
        req.opcode().name()
    )))
}
