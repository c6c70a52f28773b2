//! The daemon-wide part of building: one [`Scheduler`] shared by every session, holding
//! the build slots, the build users and the map of builds in flight.
//!
//! ```text
//!  request (a session's BuildPaths…)          in-flight build (one per .drv)
//!  ─────────────────────────────────          ─────────────────────────────────────────
//!  attach(drv) ──► new? spawn its driver ──►  driver task: slot → build user → thread
//!       │           else join it (dedupe)         build thread: Builder::build,
//!       ▼                                          log file, BuildEvents → every inbox
//!  Inbox ◄── Started / log lines / Finished ◄──┘
//!  drop(Attachment) ──► last one gone? cancel: the builder kills everything, the
//!                       slot and the build user are released
//! ```
//!
//! * **Dedupe.** Builds are keyed by their `.drv` path: a derivation wanted by two
//!   sessions, or twice in one request, runs once. Whoever attaches later receives the log
//!   from that point on and the same outcome. The first requester's settings (sandbox,
//!   timeouts, cores, …) are the ones the build runs with. (BuildDerivation's in-memory
//!   derivations are never shared: a client may send any text under a path.)
//! * **Slots.** A build needs one of the daemon's `max-jobs` slots (a semaphore). CppNix
//!   runs one worker per connection, each allowed its client's `max-jobs`, so N clients can
//!   run N × max-jobs builds; nixnest bounds the machine instead: the daemon's own
//!   `max-jobs` (at least 1) limits all builds together, and a client's `-j` only limits
//!   how many builds its own request has going at once (see `realise`).
//! * **Build users** are taken after the slot, without blocking a thread: a free one, or
//!   wait until one of our builds ends (or `build-poll-interval` passes, for users taken
//!   by another daemon on the same store), showing CppNix's
//!   "waiting for UID to build '…'" activity meanwhile.
//! * **Cancellation.** An `Attachment` is a request's interest in a build. When the last
//!   one is dropped (the client went away, or its request stopped after a failure without
//!   `keep-going`) before the build finished, the build is cancelled: if it is still
//!   waiting it never starts; if it runs, the builder kills it (MiscFailure "interrupted by
//!   the user") and its build user and slot are released. A build some other live request
//!   still waits for goes on.
//! * Each running build is listed in the [`Registry`] (`nixnest-daemon status`) with its
//!   build user's uid, so a connection from that uid can be mapped to its build.
//! * The build log (`keep-build-log`) is written by the build thread, raw, to
//!   `<log dir>/drvs/<2>/<rest>.bz2` (replacing an older log of the derivation, failed
//!   builds included), where `nix log` and `nix-store -l` read it. It is always
//!   bzip2-compressed: `compress-build-log = false` is not honoured (readers take both).
//! * Log lines reach a request through its `Inbox`: control events (started, finished)
//!   are never dropped; log lines beyond [`INBOX_LINE_BYTES`] queued for a client that
//!   reads too slowly are dropped for that client only (and counted), so one stalled
//!   client never stalls a build others wait for. The log file gets everything.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use nixnest_build::{
    BuildEvents, BuildJob, BuildOutcome, BuildSettings, BuildStarted, Builder, HelperCommand,
    UserLease, UserPool,
};
use nixnest_core::{Derivation, StorePath};
use nixnest_protocol::types::BuildStatus;
use nixnest_store::{BuildLogWriter, LocalStore};

use crate::config::Settings;
use crate::control::{NewBuild, Registry};
use crate::recursive::{BuildHooks, BuildInfo, BuildView, Recursive, RecursiveConfig};

/// Log bytes a request may have queued before lines are dropped for it.
pub const INBOX_LINE_BYTES: usize = 8 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How the scheduler is set up (daemon-wide, from `nix.conf`).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// The program the builder starts as its helper.
    pub helper: HelperCommand,
    /// Builds running at once, daemon-wide (`max-jobs`, at least 1).
    pub max_jobs: usize,
    /// The build users, when the daemon uses them (root and `build-users-group`).
    pub build_users: Option<UserPool>,
    /// How often to look for a free build user taken by someone else.
    pub poll_interval: Duration,
    /// Recursive Nix (see [`crate::recursive`]).
    pub recursive: RecursiveConfig,
}

impl SchedulerConfig {
    /// The daemon's configuration, with `helper`.
    pub fn from_settings(settings: &Settings, helper: HelperCommand) -> Self {
        let euid = rustix::process::geteuid().as_raw();
        let build_users = UserPool::applies(&settings.build_users_group, euid)
            .then(|| UserPool::new(&settings.build_users_group, &settings.state_dir));
        SchedulerConfig {
            helper,
            max_jobs: settings.max_jobs.0 as usize,
            build_users,
            poll_interval: Duration::from_secs(settings.build_poll_interval.clamp(1, 60)),
            recursive: RecursiveConfig::from_settings(settings),
        }
    }
}

/// Counters, for `status` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Builders started since the daemon started.
    pub builds_started: u64,
    /// Builders running now.
    pub running: usize,
    /// The most builders that ever ran at once.
    pub peak_running: usize,
    /// Builds in flight (waiting or running).
    pub in_flight: usize,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    running: AtomicUsize,
    peak: AtomicUsize,
}

/// The daemon's build scheduler; see the module docs.
pub struct Scheduler {
    pub(crate) store: Arc<LocalStore>,
    registry: Arc<Registry>,
    pub(crate) helper: HelperCommand,
    slots: Arc<Semaphore>,
    users: Option<UserPool>,
    users_freed: Notify,
    poll_interval: Duration,
    inflight: Mutex<HashMap<StorePath, Arc<Inflight>>>,
    counters: Arc<Counters>,
    recursive: Arc<Recursive>,
}

impl Scheduler {
    pub fn new(
        store: Arc<LocalStore>,
        registry: Arc<Registry>,
        config: SchedulerConfig,
    ) -> Arc<Self> {
        Arc::new(Scheduler {
            store,
            registry,
            helper: config.helper,
            slots: Arc::new(Semaphore::new(config.max_jobs.max(1))),
            users: config.build_users,
            users_freed: Notify::new(),
            poll_interval: config.poll_interval,
            inflight: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
            recursive: Recursive::new(config.recursive),
        })
    }

    /// Recursive Nix: the views of the running builds.
    pub fn recursive(&self) -> &Arc<Recursive> {
        &self.recursive
    }

    pub fn store(&self) -> &Arc<LocalStore> {
        &self.store
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            builds_started: self.counters.started.load(Ordering::SeqCst),
            running: self.counters.running.load(Ordering::SeqCst),
            peak_running: self.counters.peak.load(Ordering::SeqCst),
            in_flight: lock(&self.inflight).len(),
        }
    }

    /// Joins the build of `spec.drv_path` (or starts it). `tag` comes back with every
    /// event in `inbox`. With `dedupe` false the build is private to this attachment.
    pub(crate) fn attach(
        self: &Arc<Self>,
        spec: JobSpec,
        inbox: &Arc<Inbox>,
        tag: usize,
        dedupe: bool,
    ) -> Attached {
        let mut map = lock(&self.inflight);
        // A cancelled build is being killed: a new request gets a new build (which waits
        // for the old one's output locks).
        if dedupe
            && let Some(entry) = map.get(&spec.drv_path)
            && !entry.cancel.is_cancelled()
        {
            let mut sh = lock(&entry.shared);
            if let Some(f) = &sh.finished {
                return Attached::Finished(Arc::clone(f));
            }
            sh.waiters += 1;
            sh.subscribers.push((Arc::clone(inbox), tag));
            if let Some(w) = &sh.waiting {
                inbox.push(tag, Event::Waiting(Some(w.clone())));
            }
            if sh.started {
                inbox.push(tag, Event::Started);
            }
            drop(sh);
            return Attached::Pending(Attachment {
                sched: Arc::clone(self),
                entry: Arc::clone(entry),
                inbox: Arc::clone(inbox),
                tag,
            });
        }
        let entry = Arc::new(Inflight {
            drv_path: spec.drv_path.clone(),
            printed: self.store.print(&spec.drv_path),
            cancel_flag: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            shared: Mutex::new(Shared {
                waiters: 1,
                subscribers: vec![(Arc::clone(inbox), tag)],
                started: false,
                waiting: None,
                finished: None,
            }),
            deduped: dedupe,
        });
        if dedupe {
            map.insert(spec.drv_path.clone(), Arc::clone(&entry));
        }
        drop(map);
        tokio::spawn(Arc::clone(self).drive(Arc::clone(&entry), spec));
        Attached::Pending(Attachment {
            sched: Arc::clone(self),
            entry,
            inbox: Arc::clone(inbox),
            tag,
        })
    }

    fn detach(&self, entry: &Arc<Inflight>, inbox: &Arc<Inbox>, tag: usize) {
        let cancel = {
            let mut sh = lock(&entry.shared);
            if let Some(pos) = sh
                .subscribers
                .iter()
                .position(|(i, t)| Arc::ptr_eq(i, inbox) && *t == tag)
            {
                sh.subscribers.swap_remove(pos);
            }
            sh.waiters = sh.waiters.saturating_sub(1);
            // Decided under the lock `attach` takes too, so nobody joins a doomed build.
            let cancel = sh.waiters == 0 && sh.finished.is_none();
            if cancel {
                entry.cancel_flag.store(true, Ordering::SeqCst);
                entry.cancel.cancel();
            }
            cancel
        };
        if cancel {
            tracing::info!(
                "nobody waits for '{}' any more: cancelling its build",
                entry.printed
            );
            self.forget(entry);
        }
    }

    /// Removes `entry` from the map (if it is still the one there).
    fn forget(&self, entry: &Arc<Inflight>) {
        if !entry.deduped {
            return;
        }
        let mut map = lock(&self.inflight);
        if map
            .get(&entry.drv_path)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            map.remove(&entry.drv_path);
        }
    }

    /// The driver of one build: slot, build user, the build thread, then the outcome to
    /// every subscriber.
    async fn drive(self: Arc<Self>, entry: Arc<Inflight>, spec: JobSpec) {
        // One span per build: every line logged for it (slot, build user, builder, outcome),
        // on this task and on its build thread, carries the derivation in the journal.
        let span = tracing::info_span!("build", drv = %entry.printed);
        let finished = Arc::new(self.run(&entry, spec).instrument(span).await);
        let subscribers = {
            let mut sh = lock(&entry.shared);
            sh.finished = Some(Arc::clone(&finished));
            sh.waiting = None;
            std::mem::take(&mut sh.subscribers)
        };
        // Out of the map before anyone hears of the end, so that a request that saw it
        // finish never finds it still in flight.
        self.forget(&entry);
        for (inbox, tag) in subscribers {
            inbox.push(tag, Event::Finished(Arc::clone(&finished)));
        }
    }

    async fn run(&self, entry: &Arc<Inflight>, spec: JobSpec) -> Finished {
        let t0 = std::time::Instant::now();
        // A nested build (recursive Nix) uses its parent build's slots: the parent holds
        // a daemon slot while it waits for it (see `crate::recursive`).
        let slots = match &spec.parent {
            Some(parent) => parent.nested_jobs(),
            None => Arc::clone(&self.slots),
        };
        let mut nested_wait = None;
        let permit = tokio::select! {
            biased;
            () = entry.cancel.cancelled() => return Finished::cancelled(),
            p = slots.acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Finished::failure(BuildStatus::MiscFailure, "the build scheduler has shut down".into()),
            },
        };
        let lease = match &self.users {
            None => None,
            Some(pool) => loop {
                let notified = self.users_freed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let p = pool.clone();
                match tokio::task::spawn_blocking(move || p.try_acquire()).await {
                    Ok(Ok(Some(lease))) => break Some(lease),
                    Ok(Ok(None)) => {
                        entry.set_waiting(Some(format!(
                            "waiting for UID to build '{}'",
                            entry.printed
                        )));
                        if let Some(parent) = &spec.parent
                            && let Some(msg) =
                                self.nested_user_wait(parent, pool, &mut nested_wait).await
                        {
                            return Finished::failure(BuildStatus::MiscFailure, msg);
                        }
                    }
                    Ok(Err(e)) => {
                        return Finished::failure(BuildStatus::MiscFailure, e.to_string());
                    }
                    Err(e) => {
                        return Finished::failure(
                            BuildStatus::MiscFailure,
                            format!("taking a build user failed: {e}"),
                        );
                    }
                }
                tokio::select! {
                    () = entry.cancel.cancelled() => return Finished::cancelled(),
                    () = &mut notified => {}
                    () = tokio::time::sleep(self.poll_interval) => {}
                }
            },
        };
        drop(nested_wait);
        entry.set_waiting(None);
        if entry.cancel.is_cancelled() {
            return Finished::cancelled();
        }
        tracing::debug!(
            "'{}': slot and build user after {:?}",
            entry.printed,
            t0.elapsed()
        );

        let (tx, rx) = oneshot::channel();
        let thread = BuildThread {
            store: Arc::clone(&self.store),
            registry: Arc::clone(&self.registry),
            counters: Arc::clone(&self.counters),
            recursive: Arc::clone(&self.recursive),
            entry: Arc::clone(entry),
            spec,
            lease,
        };
        let span = tracing::Span::current();
        let spawned = std::thread::Builder::new()
            .name(format!("build {}", entry.drv_path.name()))
            .spawn(move || {
                let _entered = span.enter();
                let _ = tx.send(thread.run());
            });
        let finished = match spawned {
            Err(e) => Finished::failure(
                BuildStatus::MiscFailure,
                format!("cannot start a build thread: {e}"),
            ),
            Ok(_) => rx.await.unwrap_or_else(|_| {
                Finished::failure(
                    BuildStatus::MiscFailure,
                    format!("the build of '{}' ended without a result", entry.printed),
                )
            }),
        };
        tracing::debug!("'{}': done after {:?}", entry.printed, t0.elapsed());
        drop(permit);
        // The build user (if any) was released when the thread's job ended.
        self.users_freed.notify_waiters();
        finished
    }
}

/// What a driver needs to build one derivation.
pub(crate) struct JobSpec {
    pub drv_path: StorePath,
    pub drv: Arc<Derivation>,
    pub settings: BuildSettings,
    /// `keep-build-log`.
    pub keep_build_log: bool,
    /// The session that asked first (for `status`).
    pub session: Option<u64>,
    /// How messages name the build (CppNix's goal name).
    pub goal_name: String,
    /// The view of the build whose recursive-Nix session asked for this one.
    pub parent: Option<Arc<BuildView>>,
}

/// What a request hears about a build it is attached to.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    /// Waiting for something (a build user): the activity text, or `None` when it ends.
    Waiting(Option<String>),
    /// The builder runs.
    Started,
    /// A line of output (no newline).
    Line(Vec<u8>),
    /// An `@nix {…}` line's JSON.
    Json(String),
    /// A note from the builder ("keeping build directory …").
    Note(String),
    /// The outcome.
    Finished(Arc<Finished>),
}

/// A request's mailbox for the builds it waits for; see the module docs.
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
}

#[derive(Default)]
struct InboxState {
    queue: VecDeque<(usize, Event)>,
    line_bytes: usize,
    dropped: u64,
}

impl Inbox {
    fn push(&self, tag: usize, ev: Event) {
        {
            let mut st = lock(&self.state);
            if let Event::Line(l) = &ev {
                if st.line_bytes + l.len() > INBOX_LINE_BYTES {
                    st.dropped += 1;
                    return;
                }
                st.line_bytes += l.len();
            } else if let Event::Json(j) = &ev {
                if st.line_bytes + j.len() > INBOX_LINE_BYTES {
                    st.dropped += 1;
                    return;
                }
                st.line_bytes += j.len();
            }
            st.queue.push_back((tag, ev));
        }
        self.notify.notify_one();
    }

    /// Everything queued, waiting until there is something.
    pub async fn next_batch(&self) -> Vec<(usize, Event)> {
        loop {
            {
                let mut st = lock(&self.state);
                if !st.queue.is_empty() {
                    st.line_bytes = 0;
                    return st.queue.drain(..).collect();
                }
            }
            self.notify.notified().await;
        }
    }

    /// Log lines dropped so far (and resets the count).
    pub fn take_dropped(&self) -> u64 {
        std::mem::take(&mut lock(&self.state).dropped)
    }
}

/// Result of [`Scheduler::attach`].
pub(crate) enum Attached {
    /// Events will come to the inbox; drop the attachment to stop waiting.
    Pending(Attachment),
    /// It had just finished.
    Finished(Arc<Finished>),
}

/// A request's interest in an in-flight build; dropping it detaches (see the module docs).
pub(crate) struct Attachment {
    sched: Arc<Scheduler>,
    entry: Arc<Inflight>,
    inbox: Arc<Inbox>,
    tag: usize,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.sched.detach(&self.entry, &self.inbox, self.tag);
    }
}

/// One build in flight.
pub(crate) struct Inflight {
    drv_path: StorePath,
    printed: String,
    /// The builder's cancel flag.
    cancel_flag: AtomicBool,
    /// Wakes the driver while it waits for a slot or a user.
    cancel: CancellationToken,
    shared: Mutex<Shared>,
    /// In the scheduler's map (false for BuildDerivation's private builds).
    deduped: bool,
}

struct Shared {
    waiters: usize,
    subscribers: Vec<(Arc<Inbox>, usize)>,
    started: bool,
    waiting: Option<String>,
    finished: Option<Arc<Finished>>,
}

impl Inflight {
    fn publish(&self, ev: Event) {
        let sh = lock(&self.shared);
        for (inbox, tag) in &sh.subscribers {
            inbox.push(*tag, ev.clone());
        }
    }

    fn set_waiting(&self, text: Option<String>) {
        let mut sh = lock(&self.shared);
        if sh.waiting == text {
            return;
        }
        sh.waiting.clone_from(&text);
        for (inbox, tag) in &sh.subscribers {
            inbox.push(*tag, Event::Waiting(text.clone()));
        }
    }

    fn mark_started(&self) {
        let mut sh = lock(&self.shared);
        sh.started = true;
        for (inbox, tag) in &sh.subscribers {
            inbox.push(*tag, Event::Started);
        }
    }
}

/// How a build ended, as every attached request sees it.
#[derive(Clone, Debug)]
pub(crate) struct Finished {
    pub status: BuildStatus,
    pub error_msg: String,
    /// Output name → path, on success.
    pub outputs: BTreeMap<String, StorePath>,
    pub times_built: u64,
    pub start_time: i64,
    pub stop_time: i64,
    /// A fixed-output hash mismatch (CppNix's exit status 102).
    pub hash_mismatch: bool,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Finished {
    pub fn failure(status: BuildStatus, error_msg: String) -> Self {
        Finished {
            status,
            error_msg,
            outputs: BTreeMap::new(),
            times_built: 0,
            start_time: 0,
            stop_time: 0,
            hash_mismatch: false,
        }
    }

    fn cancelled() -> Self {
        Finished::failure(BuildStatus::MiscFailure, "interrupted by the user".into())
    }

    fn from_outcome(o: BuildOutcome) -> Self {
        let status =
            BuildStatus::from_u64(u64::from(o.status.code())).unwrap_or(BuildStatus::MiscFailure);
        let ok = status.is_success();
        Finished {
            status,
            error_msg: o.error_msg.unwrap_or_default(),
            outputs: if ok {
                o.built_outputs
                    .into_iter()
                    .map(|(name, info)| (name, info.path))
                    .collect()
            } else {
                BTreeMap::new()
            },
            times_built: u64::from(o.times_built),
            start_time: if o.times_built > 0 {
                unix(o.start_time)
            } else {
                0
            },
            stop_time: if o.times_built > 0 {
                unix(o.stop_time)
            } else {
                0
            },
            hash_mismatch: o.hash_mismatch,
        }
    }
}

/// The part of a build that runs on its own thread (the builder is synchronous).
struct BuildThread {
    store: Arc<LocalStore>,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    recursive: Arc<Recursive>,
    entry: Arc<Inflight>,
    spec: JobSpec,
    lease: Option<UserLease>,
}

impl BuildThread {
    fn run(self) -> Finished {
        let BuildThread {
            store,
            registry,
            counters,
            recursive,
            entry,
            spec,
            lease,
        } = self;
        let _listed = registry.register_build(NewBuild {
            drv_path: entry.printed.clone(),
            build_uid: lease.as_ref().map(|l| l.uid),
            session: spec.session,
        });
        let inputs = match super::plan::input_roots(&store, &spec.drv_path, &spec.drv)
            .and_then(|start| Ok(store.compute_closure(&start, false, false, false)?))
        {
            Ok(i) => i,
            Err(e) => return Finished::failure(BuildStatus::MiscFailure, e.to_string()),
        };
        let hooks = recursive.begin_build(
            &store,
            BuildInfo {
                drv_path: &spec.drv_path,
                drv: &spec.drv,
                inputs: &inputs,
                build_uid: lease.as_ref().map(|l| l.uid),
                parent: spec.parent.clone(),
            },
        );
        let roots = hooks.as_ref().and_then(BuildHooks::temp_roots);
        let mut events = ThreadEvents {
            store: &store,
            entry: &entry,
            counters: &counters,
            keep_log: spec.keep_build_log,
            log: None,
            started: false,
            hooks: hooks.as_ref(),
        };
        let mut job = BuildJob::new(spec.drv_path.clone(), &spec.drv, inputs);
        job.build_user = lease.as_ref();
        job.cancel = Some(&entry.cancel_flag);
        job.goal_name = Some(spec.goal_name.clone());
        job.recursive_nix = hooks.as_ref().is_some_and(BuildHooks::recursive_nix);
        job.temp_roots = roots.as_deref();
        tracing::info!(
            build_uid = lease.as_ref().map(|l| l.uid),
            recursive_nix = job.recursive_nix,
            "starting build"
        );
        let t0 = std::time::Instant::now();
        let outcome = Builder::new(&store, &spec.settings).build(&job, &mut events);
        events.close();
        // The build is over: its recursive-Nix view ends and its temp roots go (what the
        // outputs refer to is kept by those references from now on).
        drop(job);
        drop(roots);
        drop(hooks);
        drop(lease);
        if let Ok(o) = &outcome {
            tracing::info!(
                "build of '{}' ended: {:?} after {:?} (prepare {:?}, sandbox {:?}, run {:?}, finish {:?})",
                entry.printed,
                o.status,
                t0.elapsed(),
                o.timings.prepare,
                o.timings.sandbox_setup,
                o.timings.run,
                o.timings.finish
            );
        }
        match outcome {
            Ok(o) => Finished::from_outcome(o),
            Err(e) => Finished::failure(BuildStatus::MiscFailure, e.to_string()),
        }
    }
}

/// The builder's events: the log file, and every attached request's inbox.
struct ThreadEvents<'a> {
    store: &'a LocalStore,
    entry: &'a Inflight,
    counters: &'a Counters,
    keep_log: bool,
    log: Option<BuildLogWriter>,
    started: bool,
    /// Recursive Nix, when the build has a view.
    hooks: Option<&'a BuildHooks>,
}

impl ThreadEvents<'_> {
    /// Opens the log file (replacing an older log of this derivation: `nix log` shows
    /// the latest build, as with CppNix, which truncates it).
    fn open_log(&mut self) {
        if !self.keep_log {
            return;
        }
        let base = self.entry.drv_path.to_base_name();
        let (a, b) = base.split_at(2.min(base.len()));
        let dir = self.store.config().log_dir.join("drvs").join(a);
        for old in [dir.join(b), dir.join(format!("{b}.bz2"))] {
            let _ = std::fs::remove_file(old);
        }
        match self.store.build_log_writer(&self.entry.drv_path) {
            Ok(w) => self.log = w,
            Err(e) => tracing::warn!(
                "cannot write the build log of '{}': {e}",
                self.entry.printed
            ),
        }
    }

    /// The builder runs: its first output may be read before the helper's "started"
    /// message, so either one marks the start.
    fn ensure_started(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        self.counters.started.fetch_add(1, Ordering::SeqCst);
        let now = self.counters.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters.peak.fetch_max(now, Ordering::SeqCst);
        self.open_log();
        self.entry.mark_started();
    }

    fn close(&mut self) {
        if self.started {
            self.counters.running.fetch_sub(1, Ordering::SeqCst);
            self.started = false;
        }
        if let Some(w) = self.log.take()
            && let Err(e) = w.finish()
        {
            tracing::warn!(
                "cannot write the build log of '{}': {e}",
                self.entry.printed
            );
        }
    }
}

impl BuildEvents for ThreadEvents<'_> {
    fn prepare(&mut self, build: &nixnest_build::PreparedBuild<'_>) -> nixnest_build::Result<()> {
        match self.hooks {
            Some(h) => h.prepare(build),
            None => Ok(()),
        }
    }

    fn started(&mut self, s: &BuildStarted) {
        if let Some(h) = self.hooks {
            h.started(s);
        }
        self.ensure_started();
    }

    fn builder_exited(&mut self) {
        if let Some(h) = self.hooks {
            h.builder_exited();
        }
    }

    fn log_chunk(&mut self, data: &[u8]) {
        self.ensure_started();
        if let Some(w) = &mut self.log
            && let Err(e) = w.write_all(data)
        {
            tracing::warn!(
                "cannot write the build log of '{}': {e}",
                self.entry.printed
            );
            self.log = None;
        }
    }

    fn log_line(&mut self, line: &[u8]) {
        self.ensure_started();
        self.entry.publish(Event::Line(line.to_vec()));
    }

    fn structured_log(&mut self, json: &str) {
        self.ensure_started();
        self.entry.publish(Event::Json(json.to_owned()));
    }

    fn note(&mut self, msg: &str) {
        self.entry.publish(Event::Note(msg.to_owned()));
    }
}

impl Scheduler {
    /// A nested build (recursive Nix) found no free build user: marks its parent as
    /// waiting (once, in `marker`, until the user is had), wakes the other waiters to look
    /// again, and says whether it must fail because no user can ever come free
    /// ([`Recursive::user_deadlock`]).
    async fn nested_user_wait(
        &self,
        parent: &Arc<BuildView>,
        pool: &UserPool,
        marker: &mut Option<crate::recursive::WaitingForUser>,
    ) -> Option<String> {
        if marker.is_none() {
            *marker = Some(parent.waiting_for_user());
            self.users_freed.notify_waiters();
        }
        let p = pool.clone();
        let size = match tokio::task::spawn_blocking(move || p.members()).await {
            Ok(Ok((_, users))) => users.len(),
            _ => return None,
        };
        self.recursive.user_deadlock(parent, size)
    }

    /// The derivations of the builds in flight, for a garbage collection to keep (their
    /// outputs are in the builder's own temp roots, and the requests' in their sessions').
    pub fn extra_roots(&self) -> BTreeSet<StorePath> {
        lock(&self.inflight).keys().cloned().collect()
    }
}
