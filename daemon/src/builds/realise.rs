//! One build request, from its plan to its results: BuildPaths (9),
//! BuildPathsWithResults (46), BuildDerivation (36), EnsurePath (10).
//!
//! The plan's Build nodes run in dependency order. A node is *ready* when all its
//! dependencies succeeded; ready nodes start in CppNix's order (by derivation name), at
//! most the session's `max-jobs` at a time, by attaching to the daemon-wide in-flight
//! build (see [`super::scheduler`]). When a node ends:
//!
//! | outcome | effect (CppNix 2.8's `Goal::waiteeDone` / `Worker::removeGoal`) |
//! |---|---|
//! | success | its dependents whose dependencies are all done start (or fail, below) |
//! | failure, `keep-going` | a dependent whose dependencies are all done fails with DependencyFailed "N dependencies of derivation '…' failed to build" (N = failed inputs + missing sources) |
//! | failure, no `keep-going` | its dependents fail at once with DependencyFailed, and the request stops: no new builds, its other builds are detached (and so killed unless another request waits for them); top-level paths cut short report MiscFailure |
//!
//! A failure of a node that others in the request wait for is logged as
//! `error: <message>` when it happens (CppNix logs the error of a goal that has waiters;
//! a top-level goal keeps it instead).
//!
//! Results (statuses and texts as a 2.8 daemon sends them):
//!
//! | path | result |
//! |---|---|
//! | opaque, valid | AlreadyValid |
//! | opaque, invalid | NoSubstituters, "path '…' is required, but there is no substituter that can build it" |
//! | `drv!…`, drv invalid | MiscFailure, "cannot build missing derivation '…'" |
//! | `drv!…`, wanted outputs valid | AlreadyValid, `builtOutputs` = the wanted outputs |
//! | built | the builder's status, timesBuilt, start/stop times, `builtOutputs` = the wanted outputs |
//!
//! `builtOutputs` keys are DrvOutput ids (`sha256:<masked hash modulo>!<output>`), values
//! realisations `{"dependentRealisations":{},"id":…,"outPath":"<base name>","signatures":[]}`.
//!
//! BuildPaths turns failures into one error as CppNix's `Store::buildPaths` does: over the
//! top-level goals in CppNix's goal order, the first one with an error of its own is *the*
//! error and later ones are logged; if exactly one path failed and it has its error, that
//! error is the reply; otherwise the error (if any) is logged and the reply is
//! "build of '…', '…' failed" (paths sorted).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nixnest_core::{BasicDerivation, DerivedPath, StorePath};
use nixnest_protocol::stderr::Verbosity;
use nixnest_protocol::types::{BuildMode, BuildResult, BuildStatus, KeyedBuildResult, Realisation};
use nixnest_store::TempRoots;

use super::activity::{BuildActivity, Reporter, Sink, format_error};
use super::error::{Error, Result};
use super::plan::{self, Node, NodeState, Plan, Target};
use super::scheduler::{Attached, Attachment, Event, Finished, Inbox, JobSpec, Scheduler};
use super::settings::build_settings;
use crate::config::Settings;

/// A build request of one session.
#[derive(Clone)]
pub struct BuildRequest {
    pub targets: Vec<DerivedPath>,
    pub mode: BuildMode,
    /// The session's settings (`max-jobs`, `keep-going`, timeouts, sandbox, …).
    pub settings: Arc<Settings>,
    /// Filters `STDERR_NEXT`.
    pub verbosity: Verbosity,
    /// The session id, for `nixnest-daemon status`.
    pub session: Option<u64>,
    /// The session's temp roots: every path the request touches is added.
    pub roots: Option<Arc<TempRoots>>,
    /// The view of the build whose recursive-Nix session asks: the builds are nested.
    pub view: Option<Arc<crate::recursive::BuildView>>,
}

impl BuildRequest {
    pub fn new(targets: Vec<DerivedPath>, settings: Arc<Settings>) -> Self {
        BuildRequest {
            targets,
            mode: BuildMode::Normal,
            settings,
            verbosity: Verbosity::Info,
            session: None,
            roots: None,
            view: None,
        }
    }
}

/// How one node of the plan ended (or did not).
#[derive(Clone, Debug)]
enum Outcome {
    Valid,
    Finished(Arc<Finished>),
    DepFailed(usize),
    Missing,
}

impl Outcome {
    fn success(&self) -> bool {
        match self {
            Outcome::Valid => true,
            Outcome::Finished(f) => f.status.is_success(),
            Outcome::DepFailed(_) | Outcome::Missing => false,
        }
    }
}

enum Run {
    Pending,
    Active {
        _attachment: Attachment,
        activity: BuildActivity,
    },
    Done(Outcome),
}

/// CppNix's `Worker::exitStatus` inputs.
#[derive(Default, Clone, Copy)]
struct Flags {
    permanent_failure: bool,
    timed_out: bool,
    hash_mismatch: bool,
}

impl Flags {
    fn exit_status(self) -> u64 {
        let mut mask = 0;
        if self.permanent_failure || self.timed_out || self.hash_mismatch {
            mask |= 0x04;
        }
        if self.timed_out {
            mask |= 0x01;
        }
        if self.hash_mismatch {
            mask |= 0x02;
        }
        if mask != 0 { mask | 0x60 } else { 1 }
    }
}

/// One top-level result with what BuildPaths needs to know about it.
struct TopResult {
    path: DerivedPath,
    result: BuildResult,
    /// CppNix's goal key: substitution goals ("a$") before derivation goals ("b$"),
    /// then by name, then by path.
    key: String,
    /// The path BuildPaths names when it failed.
    failed_path: StorePath,
    /// The error this goal kept (a failed derivation nobody else in the request waited for).
    ex: Option<String>,
}

struct Exec<'a> {
    sched: &'a Arc<Scheduler>,
    req: &'a BuildRequest,
    plan: Plan,
    runs: Vec<Run>,
    remaining: Vec<usize>,
    failed_deps: Vec<usize>,
    ready: BTreeSet<(String, usize)>,
    active: usize,
    stopping: bool,
    inbox: Arc<Inbox>,
    flags: Flags,
    /// BuildDerivation: private builds, its own failure texts.
    basic: bool,
}

impl<'a> Exec<'a> {
    fn new(sched: &'a Arc<Scheduler>, req: &'a BuildRequest, plan: Plan, basic: bool) -> Self {
        let n = plan.nodes.len();
        let mut runs = Vec::with_capacity(n);
        let mut remaining = vec![0; n];
        for (i, node) in plan.nodes.iter().enumerate() {
            runs.push(match node.state {
                NodeState::Valid => Run::Done(Outcome::Valid),
                NodeState::Missing | NodeState::Build => Run::Pending,
            });
            remaining[i] = node.deps.len();
        }
        Exec {
            sched,
            req,
            plan,
            runs,
            remaining,
            failed_deps: vec![0; n],
            ready: BTreeSet::new(),
            active: 0,
            stopping: false,
            inbox: Arc::new(Inbox::default()),
            flags: Flags::default(),
            basic,
        }
    }

    fn printed(&self, i: usize) -> String {
        self.sched.store.print(&self.plan.nodes[i].drv_path)
    }

    async fn run(&mut self, rep: &mut Reporter<'_>) -> Result<()> {
        rep.expected = self
            .plan
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Build)
            .count() as u64;
        rep.progress().await?;

        // What is decided before anything runs: missing derivations fail, nodes without
        // dependencies are ready (or fail for their missing sources).
        let mut initial = Vec::new();
        for (i, node) in self.plan.nodes.iter().enumerate() {
            match node.state {
                NodeState::Missing => initial.push((i, Outcome::Missing)),
                NodeState::Build if node.deps.is_empty() => {
                    if node.missing_srcs > 0 {
                        initial.push((i, Outcome::DepFailed(node.missing_srcs)));
                    } else {
                        self.ready.insert((node.drv_path.name().to_owned(), i));
                    }
                }
                _ => {}
            }
        }
        for (i, o) in initial {
            if matches!(self.runs[i], Run::Pending) {
                self.finish(rep, i, o).await?;
            }
        }

        let max_jobs = (self.req.settings.max_jobs.0 as usize).max(1);
        loop {
            while !self.stopping && self.active < max_jobs {
                let Some((_, i)) = self.ready.pop_first() else {
                    break;
                };
                self.start(rep, i).await?;
            }
            if self.active == 0 || self.stopping {
                break;
            }
            for (i, ev) in self.inbox.next_batch().await {
                self.handle(rep, i, ev).await?;
            }
            let dropped = self.inbox.take_dropped();
            if dropped > 0 {
                rep.log(
                    Verbosity::Warn,
                    &format!(
                        "warning: {dropped} lines of build output were not shown because they were read too slowly; the stored build logs are complete"
                    ),
                )
                .await?;
            }
        }
        // Stopping (a failure without keep-going): detach from what still runs.
        for i in 0..self.runs.len() {
            if let Run::Active { activity, .. } = &mut self.runs[i] {
                let mut activity = std::mem::take(activity);
                if activity.act.is_some() {
                    rep.running = rep.running.saturating_sub(1);
                }
                self.runs[i] = Run::Pending;
                self.active -= 1;
                activity.finish(rep).await?;
            }
        }
        rep.progress().await?;
        Ok(())
    }

    async fn start(&mut self, rep: &mut Reporter<'_>, i: usize) -> Result<()> {
        let node = &self.plan.nodes[i];
        let Some(drv) = node.drv.clone() else {
            return self.finish(rep, i, Outcome::Missing).await;
        };
        let outputs = node.wanted.iter().cloned().collect::<Vec<_>>().join(",");
        let goal_name = format!(
            "building of '{}!{outputs}' from {}",
            self.printed(i),
            if self.basic {
                "in-memory derivation"
            } else {
                ".drv file"
            }
        );
        // Recursive Nix: a build asked for (directly or as a dependency) from inside its
        // own build would wait for itself.
        if let Some(msg) = self
            .req
            .view
            .as_ref()
            .and_then(|v| v.cycle_message(&node.drv_path))
        {
            let failed = Finished::failure(BuildStatus::MiscFailure, msg);
            return self
                .finish(rep, i, Outcome::Finished(Arc::new(failed)))
                .await;
        }
        let spec = JobSpec {
            drv_path: node.drv_path.clone(),
            drv,
            settings: build_settings(&self.req.settings, &self.sched.helper),
            keep_build_log: self.req.settings.keep_build_log,
            session: self.req.session,
            goal_name,
            parent: self.req.view.clone(),
        };
        match self.sched.attach(spec, &self.inbox, i, !self.basic) {
            Attached::Pending(attachment) => {
                self.runs[i] = Run::Active {
                    _attachment: attachment,
                    activity: BuildActivity::default(),
                };
                self.active += 1;
                Ok(())
            }
            Attached::Finished(f) => self.finish(rep, i, Outcome::Finished(f)).await,
        }
    }

    async fn handle(&mut self, rep: &mut Reporter<'_>, i: usize, ev: Event) -> Result<()> {
        let printed = self.printed(i);
        let Some(Run::Active { activity, .. }) = self.runs.get_mut(i) else {
            return Ok(());
        };
        match ev {
            Event::Waiting(text) => activity.waiting(rep, text).await?,
            Event::Started => {
                if activity.act.is_none() {
                    activity.started(rep, &printed).await?;
                    rep.running += 1;
                    rep.progress().await?;
                }
            }
            Event::Line(l) => activity.line(rep, l).await?,
            Event::Json(j) => activity.json(rep, &j).await?,
            Event::Note(n) => rep.log(Verbosity::Error, &n).await?,
            Event::Finished(f) => {
                let mut activity = std::mem::take(activity);
                if activity.act.is_some() {
                    rep.running = rep.running.saturating_sub(1);
                }
                self.active -= 1;
                // Progress first, then the error, then the build's STOP (CppNix's order).
                self.runs[i] = Run::Pending;
                self.finish_with(rep, i, Outcome::Finished(f), Some(&mut activity))
                    .await?;
            }
        }
        Ok(())
    }

    async fn finish(&mut self, rep: &mut Reporter<'_>, i: usize, o: Outcome) -> Result<()> {
        self.finish_with(rep, i, o, None).await
    }

    /// Records how node `i` ended and what that means for its dependents (see the
    /// module docs).
    async fn finish_with(
        &mut self,
        rep: &mut Reporter<'_>,
        i: usize,
        o: Outcome,
        mut activity: Option<&mut BuildActivity>,
    ) -> Result<()> {
        let mut todo = vec![(i, o)];
        while let Some((i, o)) = todo.pop() {
            if matches!(self.runs[i], Run::Done(_)) {
                continue;
            }
            let success = o.success();
            if let Outcome::Finished(f) = &o {
                match f.status {
                    BuildStatus::Built => rep.done += 1,
                    BuildStatus::PermanentFailure | BuildStatus::InputRejected => {
                        self.flags.permanent_failure = true;
                    }
                    BuildStatus::TimedOut => self.flags.timed_out = true,
                    _ => {}
                }
                if f.hash_mismatch {
                    self.flags.hash_mismatch = true;
                }
            }
            if !success && !matches!(o, Outcome::DepFailed(_)) {
                rep.failed += 1;
            }
            if self.plan.nodes[i].state == NodeState::Build {
                rep.expected = rep.expected.saturating_sub(1);
            }
            rep.progress().await?;
            if !success && !self.plan.nodes[i].dependents.is_empty() {
                let msg = self.error_text(i, &o);
                rep.log(Verbosity::Error, &format_error(&msg)).await?;
            }
            if let Some(a) = activity.take() {
                a.finish(rep).await?;
            }
            let dependents: Vec<usize> = self.plan.nodes[i].dependents.iter().copied().collect();
            self.runs[i] = Run::Done(o);
            if !success && !self.req.settings.keep_going {
                self.stopping = true;
            }
            for d in dependents {
                if !matches!(self.runs[d], Run::Pending) {
                    continue;
                }
                self.remaining[d] = self.remaining[d].saturating_sub(1);
                if !success {
                    self.failed_deps[d] += 1;
                }
                if self.remaining[d] == 0 || (!success && !self.req.settings.keep_going) {
                    let failed = self.failed_deps[d] + self.plan.nodes[d].missing_srcs;
                    if failed > 0 {
                        todo.push((d, Outcome::DepFailed(failed)));
                    } else {
                        let name = self.plan.nodes[d].drv_path.name().to_owned();
                        self.ready.insert((name, d));
                    }
                }
            }
        }
        Ok(())
    }

    /// The error text of a failed node.
    fn error_text(&self, i: usize, o: &Outcome) -> String {
        let drv = self.printed(i);
        match o {
            Outcome::Valid => String::new(),
            Outcome::Finished(f) => f.error_msg.clone(),
            Outcome::DepFailed(_) if self.basic => {
                format!("some dependencies of '{drv}' are missing")
            }
            Outcome::DepFailed(n) => {
                format!("{n} dependencies of derivation '{drv}' failed to build")
            }
            Outcome::Missing => format!("cannot build missing derivation '{drv}'"),
        }
    }

    fn realisations(
        &self,
        node: &Node,
        outputs: &BTreeMap<String, StorePath>,
        wanted: &BTreeSet<String>,
    ) -> BTreeMap<String, Realisation> {
        outputs
            .iter()
            .filter(|(name, _)| wanted.contains(*name))
            .map(|(name, path)| {
                (
                    name.clone(),
                    Realisation {
                        id: node.drv_output(name),
                        out_path: path.clone(),
                        signatures: BTreeSet::new(),
                        dependent_realisations: BTreeMap::new(),
                    },
                )
            })
            .collect()
    }

    fn results(&self) -> Vec<TopResult> {
        let store = &self.sched.store;
        let mut out = Vec::new();
        for (dp, target) in &self.plan.targets {
            let r = match target {
                Target::Opaque { path, valid } => {
                    let result = if *valid {
                        BuildResult::new(BuildStatus::AlreadyValid)
                    } else {
                        BuildResult::failure(
                            BuildStatus::NoSubstituters,
                            format!(
                                "path '{}' is required, but there is no substituter that can build it",
                                store.print(path)
                            ),
                        )
                    };
                    TopResult {
                        path: dp.clone(),
                        result,
                        key: format!("a${}${}", path.name(), store.print(path)),
                        failed_path: path.clone(),
                        ex: None,
                    }
                }
                Target::Built { node: i, wanted } => {
                    let node = &self.plan.nodes[*i];
                    let (result, ex) = match &self.runs[*i] {
                        Run::Done(Outcome::Valid) => {
                            let mut r = BuildResult::new(BuildStatus::AlreadyValid);
                            r.built_outputs = self.realisations(node, &node.outputs, wanted);
                            (r, None)
                        }
                        Run::Done(o @ Outcome::Finished(f)) => {
                            let mut r = BuildResult::failure(f.status, f.error_msg.clone());
                            r.times_built = f.times_built;
                            r.start_time = f.start_time;
                            r.stop_time = f.stop_time;
                            if f.status.is_success() {
                                r.error_msg.clear();
                                r.built_outputs = self.realisations(node, &f.outputs, wanted);
                            }
                            let ex = (!o.success() && node.dependents.is_empty())
                                .then(|| f.error_msg.clone());
                            (r, ex)
                        }
                        Run::Done(o) => {
                            let msg = self.error_text(*i, o);
                            let status = match o {
                                Outcome::DepFailed(_) if !self.basic => {
                                    BuildStatus::DependencyFailed
                                }
                                _ => BuildStatus::MiscFailure,
                            };
                            let ex = node.dependents.is_empty().then(|| msg.clone());
                            (BuildResult::failure(status, msg), ex)
                        }
                        Run::Pending | Run::Active { .. } => (
                            BuildResult::failure(
                                BuildStatus::MiscFailure,
                                format!(
                                    "the build of '{}' was not completed because another build failed (use '--keep-going' to build what can be built)",
                                    store.print(&node.drv_path)
                                ),
                            ),
                            None,
                        ),
                    };
                    TopResult {
                        path: dp.clone(),
                        result,
                        key: format!("b${}${}", node.drv_path.name(), store.print(&node.drv_path)),
                        failed_path: node.drv_path.clone(),
                        ex,
                    }
                }
            };
            out.push(r);
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

impl Scheduler {
    /// Plans and runs `req`; the top-level results in CppNix's goal order.
    async fn realise(
        self: &Arc<Self>,
        req: &BuildRequest,
        sink: &Sink,
    ) -> Result<(Vec<TopResult>, Flags)> {
        if req.mode != BuildMode::Normal {
            return Err(Error::Refused(format!(
                "{} is not supported by nixnest yet",
                if req.mode == BuildMode::Repair {
                    "repairing paths"
                } else {
                    "checking outputs ('--check')"
                }
            )));
        }
        let store = Arc::clone(&self.store);
        let targets = req.targets.clone();
        let roots = req.roots.clone();
        let plan =
            tokio::task::spawn_blocking(move || plan::plan(&store, &targets, roots.as_deref()))
                .await
                .map_err(|e| Error::Internal(format!("planning failed: {e}")))??;
        if plan.needs_building() && req.settings.max_jobs.0 == 0 {
            return Err(Error::Refused(
                "unable to start any build; either increase '--max-jobs' or enable remote builds.\nhttps://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html"
                    .into(),
            ));
        }
        let mut rep = Reporter::begin(sink, req.verbosity).await?;
        let mut exec = Exec::new(self, req, plan, false);
        exec.run(&mut rep).await?;
        let results = exec.results();
        let flags = exec.flags;
        drop(exec);
        rep.end().await?;
        Ok((results, flags))
    }

    /// BuildPathsWithResults (46): one result per CppNix goal, in goal order; failures
    /// are statuses. As in CppNix, paths naming the same derivation are one goal: its
    /// result carries the first path asked for and the outputs all of them wanted.
    pub async fn build_paths_with_results(
        self: &Arc<Self>,
        req: &BuildRequest,
        sink: &Sink,
    ) -> Result<Vec<KeyedBuildResult>> {
        let (results, _) = self.realise(req, sink).await?;
        let mut out: Vec<(String, KeyedBuildResult)> = Vec::new();
        for r in results {
            match out.last_mut() {
                Some((key, merged)) if *key == r.key => {
                    merged.result.built_outputs.extend(r.result.built_outputs);
                }
                _ => out.push((
                    r.key,
                    KeyedBuildResult {
                        path: r.path,
                        result: r.result,
                    },
                )),
            }
        }
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// BuildPaths (9): `Ok` if everything is valid now; otherwise CppNix's error (see
    /// the module docs), other errors logged to `sink` first.
    pub async fn build_paths(self: &Arc<Self>, req: &BuildRequest, sink: &Sink) -> Result<()> {
        let (results, flags) = self.realise(req, sink).await?;
        let verbosity = req.verbosity;
        let log = |msg: &str| {
            let text = format_error(msg);
            async move {
                if (Verbosity::Error as u64) <= (verbosity as u64) {
                    let mut line = text.into_bytes();
                    line.push(b'\n');
                    sink.send(nixnest_protocol::stderr::StderrMessage::Next(line))
                        .await
                        .map_err(|_| Error::ClientGone)?;
                }
                Ok::<(), Error>(())
            }
        };
        let mut ex: Option<String> = None;
        let mut failed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for r in &results {
            if !seen.insert(r.key.clone()) {
                continue;
            }
            if let Some(e) = &r.ex {
                if ex.is_none() {
                    ex = Some(e.clone());
                } else {
                    log(e).await?;
                }
            }
            if !r.result.status.is_success() {
                failed.insert(r.failed_path.clone());
            }
        }
        let exit_status = flags.exit_status();
        match (failed.len(), ex) {
            (0, _) => Ok(()),
            (1, Some(msg)) => Err(Error::Failed { msg, exit_status }),
            (_, ex) => {
                if let Some(e) = ex {
                    log(&e).await?;
                }
                let names: Vec<String> = failed
                    .iter()
                    .map(|p| format!("'{}'", self.store.print(p)))
                    .collect();
                Err(Error::Failed {
                    msg: format!("build of {} failed", names.join(", ")),
                    exit_status,
                })
            }
        }
    }

    /// BuildDerivation (36): builds `drv` as sent (its inputs must be valid; the `.drv`
    /// need not exist). Like CppNix, every failure is a status, never an error. Who may
    /// send it (trusted clients; untrusted ones only for content-addressed derivations)
    /// is the session's decision.
    pub async fn build_derivation(
        self: &Arc<Self>,
        drv_path: StorePath,
        drv: BasicDerivation,
        req: &BuildRequest,
        sink: &Sink,
    ) -> Result<BuildResult> {
        let misc = |msg: String| BuildResult::failure(BuildStatus::MiscFailure, msg);
        if req.mode != BuildMode::Normal {
            return Ok(misc(
                "repairing or checking is not supported by nixnest yet".into(),
            ));
        }
        let store = Arc::clone(&self.store);
        let roots = req.roots.clone();
        let path = drv_path.clone();
        let planned =
            tokio::task::spawn_blocking(move || basic_plan(&store, path, drv, roots.as_deref()))
                .await
                .map_err(|e| Error::Internal(format!("planning failed: {e}")))?;
        let plan = match planned {
            Ok(p) => p,
            Err(e) => return Ok(misc(e.to_string())),
        };
        if plan.needs_building() && req.settings.max_jobs.0 == 0 {
            return Ok(misc(
                "unable to start any build; either increase '--max-jobs' or enable remote builds.\nhttps://nixos.org/manual/nix/stable/advanced-topics/distributed-builds.html".into(),
            ));
        }
        let mut rep = Reporter::begin(sink, req.verbosity).await?;
        let mut exec = Exec::new(self, req, plan, true);
        exec.run(&mut rep).await?;
        let result = exec
            .results()
            .into_iter()
            .next()
            .map(|r| r.result)
            .unwrap_or_else(|| misc("no result".into()));
        drop(exec);
        rep.end().await?;
        Ok(result)
    }

    /// EnsurePath (10): the path is valid, or CppNix's error (there are no substituters).
    pub async fn ensure_path(&self, path: &StorePath, roots: Option<&TempRoots>) -> Result<()> {
        if let Some(r) = roots {
            r.add_path(path)?;
        }
        let store = Arc::clone(&self.store);
        let p = path.clone();
        let valid = tokio::task::spawn_blocking(move || store.is_valid_path(&p))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        if valid {
            Ok(())
        } else {
            Err(Error::Failed {
                msg: format!(
                    "path '{}' does not exist and cannot be created",
                    self.store.print(path)
                ),
                exit_status: 1,
            })
        }
    }
}

/// The plan of a BuildDerivation: one node, no input derivations.
fn basic_plan(
    store: &nixnest_store::LocalStore,
    drv_path: StorePath,
    drv: BasicDerivation,
    roots: Option<&TempRoots>,
) -> Result<Plan> {
    let root = |p: &StorePath| {
        if let Some(r) = roots
            && let Err(e) = r.add_path(p)
        {
            tracing::warn!("cannot add a temporary root for '{p}': {e}");
        }
    };
    root(&drv_path);
    let drv = drv.into_derivation();
    let sd = store.store_dir();
    let mut outputs = BTreeMap::new();
    let mut all_valid = true;
    for (name, p) in drv.output_paths(sd)? {
        match p {
            Some(p) => {
                root(&p);
                if !store.is_valid_path(&p)? {
                    all_valid = false;
                }
                outputs.insert(name, p);
            }
            None => all_valid = false,
        }
    }
    let mut missing_srcs = 0;
    for src in &drv.input_srcs {
        root(src);
        if !store.is_valid_path(src)? {
            missing_srcs += 1;
        }
    }
    let wanted: BTreeSet<String> = drv.outputs.keys().cloned().collect();
    let hash = plan::basic_hash(store, &drv);
    let node = Node {
        drv_path: drv_path.clone(),
        drv: Some(Arc::new(drv)),
        outputs,
        wanted: wanted.clone(),
        state: if all_valid {
            NodeState::Valid
        } else {
            NodeState::Build
        },
        deps: BTreeSet::new(),
        dependents: BTreeSet::new(),
        missing_srcs,
        hash,
    };
    let mut plan = Plan::default();
    plan.index.insert(drv_path.clone(), 0);
    plan.nodes.push(node);
    plan.targets.push((
        DerivedPath::Built {
            drv_path,
            outputs: nixnest_core::OutputsSpec::All,
        },
        Target::Built { node: 0, wanted },
    ));
    Ok(plan)
}
