//! Realising paths: BuildPaths, BuildPathsWithResults, EnsurePath, BuildDerivation,
//! QueryMissing, and the realisation ops of content-addressed derivations.
//!
//! **Building itself is not implemented yet**: the sandboxed builder lands in a later
//! issue and plugs in as a [`BuildBackend`]. Until then [`NoBuilder`] answers every
//! derivation that would need building with a `MiscFailure` saying so. Everything that
//! needs no build behaves as CppNix 2.34 with `substituters =`:
//!
//! | request | answer |
//! |---|---|
//! | opaque path, valid | AlreadyValid (BuildPaths: success) |
//! | opaque path, invalid (or any opaque path with repair) | NoSubstituters, "path '…' is required, but there is no substituter that can build it" |
//! | `drv!outputs`, drv invalid | DependencyFailed, "failed to obtain derivation of '…'" |
//! | `drv!outputs`, all wanted outputs valid | AlreadyValid, `builtOutputs` = the outputs' realisations (id = the derivation's masked hash modulo) |
//! | `drv!outputs`, something missing, or check/repair mode | the backend builds (today: MiscFailure, "… building derivations is not implemented …") |
//!
//! BuildPaths turns failures into one error: a single failure's own message, or each
//! message logged and "build of '…', '…' failed". BuildPathsWithResults reports them as
//! statuses. EnsurePath of an invalid path fails with "path '…' does not exist and
//! cannot be created". Every path named is temp-rooted for the session, as CppNix does.
//!
//! QueryMissing reports what a building daemon without substituters would do: valid
//! paths need nothing, invalid opaque paths (and invalid derivations) are `unknown`,
//! derivations with missing outputs — and, recursively, their input derivations with
//! missing outputs — are `willBuild`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tokio::io::{AsyncRead, AsyncWrite};

use nixnest_core::derivation::DrvHashes;
use nixnest_core::{
    BasicDerivation, Derivation, DerivationType, DerivedPath, DrvOutput, OutputsSpec, StorePath,
};
use nixnest_protocol::request::Request;
use nixnest_protocol::response::Response;
use nixnest_protocol::types::{
    BuildMode, BuildResult, BuildStatus, KeyedBuildResult, Missing, Realisation,
    placeholder_drv_output,
};

use super::{Outcome, is_valid, read_drv, reply};
use crate::error::{OpError, OpResult};
use crate::session::Session;
use crate::work::Job;

/// Builds derivations for the session. Implemented by the sandboxed builder (a later
/// issue); called on the blocking pool, with the session's store, temp roots and log in
/// `job`. Only derivations whose wanted outputs are not all valid — or that must be
/// checked or repaired — reach it.
pub trait BuildBackend: Send + Sync + 'static {
    /// Produces the outputs `wanted` of the valid derivation `drv_path` (parsed: `drv`).
    fn build(
        &self,
        job: &Job,
        drv_path: &StorePath,
        drv: &Derivation,
        wanted: &BTreeSet<String>,
        mode: BuildMode,
    ) -> BuildResult;

    /// Builds a derivation sent whole by a remote-build client (BuildDerivation); its
    /// inputs are store paths, and `drv_path` need not exist.
    fn build_basic(
        &self,
        job: &Job,
        drv_path: &StorePath,
        drv: &BasicDerivation,
        mode: BuildMode,
    ) -> BuildResult;

    /// Paths being produced right now: a garbage collection must keep them.
    fn extra_roots(&self) -> BTreeSet<StorePath> {
        BTreeSet::new()
    }
}

/// The backend until the builder exists: every build fails, honestly.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBuilder;

fn not_implemented(job: &Job, drv_path: &StorePath) -> BuildResult {
    BuildResult::failure(
        BuildStatus::MiscFailure,
        format!(
            "cannot build '{}': building derivations is not implemented in nixnest-daemon yet",
            job.store.print(drv_path)
        ),
    )
}

impl BuildBackend for NoBuilder {
    fn build(
        &self,
        job: &Job,
        drv_path: &StorePath,
        _drv: &Derivation,
        _wanted: &BTreeSet<String>,
        _mode: BuildMode,
    ) -> BuildResult {
        not_implemented(job, drv_path)
    }

    fn build_basic(
        &self,
        job: &Job,
        drv_path: &StorePath,
        _drv: &BasicDerivation,
        _mode: BuildMode,
    ) -> BuildResult {
        not_implemented(job, drv_path)
    }
}

/// Temp-roots a path the client asked about; a failure only costs that protection.
fn root(job: &Job, path: &StorePath) {
    if let Err(e) = job.roots.add_path(path) {
        tracing::warn!("cannot add a temporary root for '{path}': {e}");
    }
}

fn no_substituter(job: &Job, path: &StorePath) -> String {
    format!(
        "path '{}' is required, but there is no substituter that can build it",
        job.store.print(path)
    )
}

/// The realisations CppNix reports for valid outputs: keyed by the derivation's masked
/// hash modulo (`sha256:<hex>!<output>`).
fn realisations(
    job: &Job,
    drv: &Derivation,
    outputs: &BTreeMap<String, StorePath>,
) -> BTreeMap<String, Realisation> {
    let sd = job.store.store_dir();
    let store = &job.store;
    let mut inputs = DrvHashes::new(sd.clone(), |p: &StorePath| {
        nixnest_store::drv::read_derivation(store, p).map_err(|e| nixnest_core::Error::DrvHash {
            name: p.to_string(),
            reason: e.to_string(),
        })
    });
    let hashes = match drv.hash_modulo(sd, true, inputs.lookup()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::debug!("no hash modulo for '{}': {e}", drv.name);
            None
        }
    };
    outputs
        .iter()
        .map(|(name, path)| {
            let id = match hashes.as_ref().and_then(|h| h.get(name)) {
                Some(hash) => DrvOutput {
                    drv_hash: *hash,
                    output: name.clone(),
                },
                None => placeholder_drv_output(name),
            };
            let real = Realisation {
                id,
                out_path: path.clone(),
                signatures: BTreeSet::new(),
                dependent_realisations: BTreeMap::new(),
            };
            (name.clone(), real)
        })
        .collect()
}

/// The outcome of realising one derived path (see the module table).
fn realise(
    job: &Job,
    backend: &dyn BuildBackend,
    path: &DerivedPath,
    mode: BuildMode,
) -> BuildResult {
    match path {
        DerivedPath::Opaque(p) => {
            root(job, p);
            match is_valid(job, p) {
                Ok(true) if mode != BuildMode::Repair => {
                    BuildResult::new(BuildStatus::AlreadyValid)
                }
                Ok(_) => BuildResult::failure(BuildStatus::NoSubstituters, no_substituter(job, p)),
                Err(e) => BuildResult::failure(BuildStatus::MiscFailure, e.to_string()),
            }
        }
        DerivedPath::Built { drv_path, outputs } => {
            root(job, drv_path);
            match is_valid(job, drv_path) {
                Ok(true) => {}
                Ok(false) => {
                    return BuildResult::failure(
                        BuildStatus::DependencyFailed,
                        format!(
                            "failed to obtain derivation of '{}'",
                            job.store.print(drv_path)
                        ),
                    );
                }
                Err(e) => return BuildResult::failure(BuildStatus::MiscFailure, e.to_string()),
            }
            match realise_drv(job, backend, drv_path, outputs, mode) {
                Ok(r) => r,
                Err(e) => BuildResult::failure(BuildStatus::MiscFailure, e.to_string()),
            }
        }
    }
}

fn realise_drv(
    job: &Job,
    backend: &dyn BuildBackend,
    drv_path: &StorePath,
    outputs: &OutputsSpec,
    mode: BuildMode,
) -> OpResult<BuildResult> {
    let drv = read_drv(job, drv_path)?;
    let wanted: BTreeSet<String> = match outputs {
        OutputsSpec::All => drv.outputs.keys().cloned().collect(),
        OutputsSpec::Names(names) => names.clone(),
    };
    let unknown: Vec<String> = wanted
        .iter()
        .filter(|o| !drv.outputs.contains_key(*o))
        .map(|o| format!("'{o}'"))
        .collect();
    if !unknown.is_empty() {
        return Err(OpError::failed(format!(
            "derivation '{}' does not have wanted outputs {}",
            job.store.print(drv_path),
            unknown.join(", ")
        )));
    }
    let paths = drv.output_paths(job.store.store_dir())?;
    let mut valid = BTreeMap::new();
    for name in &wanted {
        if let Some(Some(p)) = paths.get(name) {
            root(job, p);
            if is_valid(job, p)? {
                valid.insert(name.clone(), p.clone());
            }
        }
    }
    if mode == BuildMode::Normal && valid.len() == wanted.len() {
        let mut r = BuildResult::new(BuildStatus::AlreadyValid);
        r.built_outputs = realisations(job, &drv, &valid);
        return Ok(r);
    }
    Ok(backend.build(job, drv_path, &drv, &wanted, mode))
}

/// The path CppNix names when a derived path fails.
fn failed_path(path: &DerivedPath) -> &StorePath {
    match path {
        DerivedPath::Opaque(p) => p,
        DerivedPath::Built { drv_path, .. } => drv_path,
    }
}

async fn realise_all<S>(
    s: &mut Session<S>,
    paths: Vec<DerivedPath>,
    mode: BuildMode,
) -> OpResult<Vec<KeyedBuildResult>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.policy.check_build_repair(mode == BuildMode::Repair)?;
    let backend = std::sync::Arc::clone(&s.shared.builder);
    s.run(move |job| {
        Ok(paths
            .into_iter()
            .map(|path| {
                let result = realise(job, &*backend, &path, mode);
                KeyedBuildResult { path, result }
            })
            .collect())
    })
    .await
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
    let results = realise_all(s, paths, mode).await?;
    let failed: Vec<&KeyedBuildResult> = results
        .iter()
        .filter(|r| !r.result.status.is_success())
        .collect();
    match failed.as_slice() {
        [] => reply(Response::Ack),
        [only] => Err(OpError::failed(only.result.error_msg.clone())),
        several => {
            for f in several {
                s.out
                    .log(
                        nixnest_protocol::stderr::Verbosity::Error,
                        &format!("error: {}", f.result.error_msg),
                    )
                    .await?;
            }
            let names: BTreeSet<&StorePath> =
                several.iter().map(|f| failed_path(&f.path)).collect();
            let quoted: Vec<String> = names
                .into_iter()
                .map(|p| format!("'{}'", s.shared.store.print(p)))
                .collect();
            Err(OpError::failed(format!(
                "build of {} failed",
                quoted.join(", ")
            )))
        }
    }
}

/// BuildPathsWithResults (46): one result per requested path; failures are statuses.
pub async fn build_paths_with_results<S>(
    s: &mut Session<S>,
    paths: Vec<DerivedPath>,
    mode: BuildMode,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let results = realise_all(s, paths, mode).await?;
    reply(Response::KeyedBuildResults(results))
}

/// EnsurePath (10): a valid path, or the error (no substituters).
pub async fn ensure_path<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.run(move |job| {
        root(job, &path);
        if is_valid(job, &path)? {
            Ok(())
        } else {
            Err(OpError::failed(format!(
                "path '{}' does not exist and cannot be created",
                job.store.print(&path)
            )))
        }
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
    let backend = std::sync::Arc::clone(&s.shared.builder);
    let result = s
        .run(move |job| {
            let paths = drv.output_paths(job.store.store_dir())?;
            let mut valid = BTreeMap::new();
            for (name, path) in &paths {
                if let Some(p) = path {
                    root(job, p);
                    if is_valid(job, p)? {
                        valid.insert(name.clone(), p.clone());
                    }
                }
            }
            if mode == BuildMode::Normal && valid.len() == paths.len() {
                let mut r = BuildResult::new(BuildStatus::AlreadyValid);
                r.built_outputs = realisations(job, &drv.clone().into_derivation(), &valid);
                return Ok(r);
            }
            Ok(backend.build_basic(job, &drv_path, &drv, mode))
        })
        .await?;
    reply(Response::BuildResult(Box::new(result)))
}

/// What QueryMissing reports (see the module docs).
fn missing(job: &Job, targets: Vec<DerivedPath>) -> OpResult<Missing> {
    let mut out = Missing {
        will_build: BTreeSet::new(),
        will_substitute: BTreeSet::new(),
        unknown: BTreeSet::new(),
        download_size: 0,
        nar_size: 0,
    };
    let mut seen = HashSet::new();
    let mut todo = targets;
    while let Some(target) = todo.pop() {
        if !seen.insert(target.clone()) {
            continue;
        }
        match target {
            DerivedPath::Opaque(p) => {
                if !is_valid(job, &p)? {
                    out.unknown.insert(p);
                }
            }
            DerivedPath::Built { drv_path, outputs } => {
                if !is_valid(job, &drv_path)? {
                    out.unknown.insert(drv_path);
                    continue;
                }
                let drv = read_drv(job, &drv_path)?;
                let paths = drv.output_paths(job.store.store_dir())?;
                let mut complete = true;
                for (name, path) in &paths {
                    match path {
                        // Floating outputs: only a build can tell.
                        None => complete = false,
                        Some(p) if outputs.contains(name) && !is_valid(job, p)? => {
                            complete = false;
                        }
                        Some(_) => {}
                    }
                }
                if complete {
                    continue;
                }
                out.will_build.insert(drv_path);
                for (input, wanted) in drv.input_drvs {
                    if let Ok(outputs) = OutputsSpec::names(wanted) {
                        todo.push(DerivedPath::Built {
                            drv_path: input,
                            outputs,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// QueryMissing (40).
pub async fn query_missing<S>(s: &mut Session<S>, paths: Vec<DerivedPath>) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let m = s.run(move |job| missing(job, paths)).await?;
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
