//! One running build's view of the store (see the [module docs](super)): the set of
//! visible paths, the sandbox they must appear in, the temp roots that keep them, and the
//! build's session and nested-build budgets.
//!
//! Every method that touches the store or the sandbox blocks; call them from the
//! blocking pool or the build's own thread.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use nixnest_build::SandboxHandle;
use nixnest_core::{StorePath, ValidPathInfo};
use nixnest_store::{LocalStore, TempRoots};

use super::{MAX_SESSIONS_PER_BUILD, lock};

/// Why a path could not join a view.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("the build of '{0}' has finished; nothing more can be added to its sandbox")]
    Closed(String),
    #[error("cannot make '{path}' visible in the sandbox of '{drv}': {reason}")]
    Sandbox {
        path: String,
        drv: String,
        reason: String,
    },
    #[error("path '{path}' refers to '{reference}', which this build cannot see (recursive Nix)")]
    HiddenReference { path: String, reference: String },
    #[error("path '{0}' is not valid")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] nixnest_store::Error),
}

/// What a new view is made of.
pub struct NewView {
    pub drv_path: StorePath,
    /// The build's input closure: visible from the start (already in the sandbox).
    pub inputs: BTreeSet<StorePath>,
    /// The build user's uid, if the build runs as one (seed-style sessions find the view
    /// by it).
    pub build_uid: Option<u32>,
    /// The view of the build whose session asked for this one (nested builds).
    pub parent: Option<Arc<BuildView>>,
    /// Builds this build's sessions may run at once.
    pub nested_jobs: usize,
}

struct State {
    /// Inputs ∪ added: what the build's sessions see.
    visible: BTreeSet<StorePath>,
    /// Added during the build (a subset of `visible`).
    added: BTreeSet<StorePath>,
    /// The running sandbox; `None` before the builder starts.
    handle: Option<SandboxHandle>,
    /// The build's temp roots; `None` once the build ended.
    roots: Option<Arc<TempRoots>>,
}

/// One running build's restricted view of the store.
pub struct BuildView {
    drv_path: StorePath,
    printed: String,
    depth: u32,
    build_uid: Option<u32>,
    parent: Option<Arc<BuildView>>,
    store: Arc<LocalStore>,
    state: Mutex<State>,
    /// Serialises making paths visible: a path is listed as visible only after it is in the
    /// sandbox, and two sessions adding it at once make it appear once.
    materialise: Mutex<()>,
    closed: watch::Sender<bool>,
    sessions: Arc<Semaphore>,
    nested_jobs: Arc<Semaphore>,
    children_waiting_for_user: AtomicUsize,
}

impl std::fmt::Debug for BuildView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildView")
            .field("drv", &self.printed)
            .field("depth", &self.depth)
            .field("build_uid", &self.build_uid)
            .finish_non_exhaustive()
    }
}

impl BuildView {
    /// A view over `store` for the build described by `new`; its temp roots are a fresh
    /// session of the store (give them to the builder: [`BuildView::temp_roots`]).
    pub fn new(store: Arc<LocalStore>, new: NewView) -> Arc<Self> {
        let depth = new.parent.as_ref().map_or(1, |p| p.depth.saturating_add(1));
        let roots = Arc::new(store.temp_roots_session());
        let (closed, _) = watch::channel(false);
        Arc::new(BuildView {
            printed: store.print(&new.drv_path),
            drv_path: new.drv_path,
            depth,
            build_uid: new.build_uid,
            parent: new.parent,
            state: Mutex::new(State {
                visible: new.inputs,
                added: BTreeSet::new(),
                handle: None,
                roots: Some(roots),
            }),
            store,
            materialise: Mutex::new(()),
            closed,
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS_PER_BUILD)),
            nested_jobs: Arc::new(Semaphore::new(new.nested_jobs.max(1))),
            children_waiting_for_user: AtomicUsize::new(0),
        })
    }

    pub fn drv_path(&self) -> &StorePath {
        &self.drv_path
    }

    /// The derivation's path as clients see it.
    pub fn printed(&self) -> &str {
        &self.printed
    }

    /// 1 for a build a normal client asked for, parent + 1 for nested builds.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    pub fn build_uid(&self) -> Option<u32> {
        self.build_uid
    }

    pub fn parent(&self) -> Option<&Arc<BuildView>> {
        self.parent.as_ref()
    }

    /// The build's temp roots, while it runs.
    pub fn temp_roots(&self) -> Option<Arc<TempRoots>> {
        lock(&self.state).roots.clone()
    }

    pub fn is_visible(&self, path: &StorePath) -> bool {
        lock(&self.state).visible.contains(path)
    }

    /// Every visible path.
    pub fn visible_paths(&self) -> BTreeSet<StorePath> {
        lock(&self.state).visible.clone()
    }

    /// The paths added during the build so far.
    pub fn added(&self) -> BTreeSet<StorePath> {
        lock(&self.state).added.clone()
    }

    /// Makes the valid path `path` part of the view: temp-rooted for the rest of the build,
    /// present in the sandbox, then visible. A no-op for a visible path. Its references
    /// must be visible already: the view stays closed under references, so nothing the
    /// build cannot see is reachable from what it can (a path a session imported that
    /// names a hidden one stays hidden, though it is in the store).
    pub fn add(&self, path: &StorePath) -> Result<(), ViewError> {
        if self.is_visible(path) {
            return Ok(());
        }
        let info = self
            .store
            .query_path_info(path)?
            .ok_or_else(|| ViewError::Invalid(self.store.print(path)))?;
        if let Some(hidden) = info
            .references
            .iter()
            .find(|r| *r != path && !self.is_visible(r))
        {
            return Err(ViewError::HiddenReference {
                path: self.store.print(path),
                reference: self.store.print(hidden),
            });
        }
        self.add_checked(path)
    }

    /// [`Self::add`] for a path whose references are known to be (or become) visible.
    fn add_checked(&self, path: &StorePath) -> Result<(), ViewError> {
        let _serial = lock(&self.materialise);
        let (handle, roots) = {
            let st = lock(&self.state);
            if st.visible.contains(path) {
                return Ok(());
            }
            if self.is_closed() {
                return Err(ViewError::Closed(self.printed.clone()));
            }
            (st.handle.clone(), st.roots.clone())
        };
        if let Some(roots) = roots {
            roots.add_path(path)?;
        }
        if let Some(handle) = handle {
            handle
                .make_visible(path)
                .map_err(|e| self.sandbox_error(path, &e))?;
        }
        let mut st = lock(&self.state);
        st.visible.insert(path.clone());
        st.added.insert(path.clone());
        Ok(())
    }

    /// Adds every path of the closure of `paths` (built outputs); a closure is closed
    /// under references by definition.
    pub fn add_closure(&self, paths: &BTreeSet<StorePath>) -> Result<(), ViewError> {
        let closure = self.store.compute_closure(paths, false, false, false)?;
        for p in &closure {
            self.add_checked(p)?;
        }
        Ok(())
    }

    fn sandbox_error(&self, path: &StorePath, e: &nixnest_build::Error) -> ViewError {
        ViewError::Sandbox {
            path: self.store.print(path),
            drv: self.printed.clone(),
            reason: e.to_string(),
        }
    }

    /// The builder started: paths added before (none, normally: nothing in the sandbox can
    /// connect earlier) are made visible now, and later ones as they come.
    pub fn attach_sandbox(&self, handle: SandboxHandle) {
        let _serial = lock(&self.materialise);
        let pending = {
            let mut st = lock(&self.state);
            st.handle = Some(handle.clone());
            st.added.clone()
        };
        for p in pending {
            if let Err(e) = handle.make_visible(&p) {
                tracing::warn!("{}", self.sandbox_error(&p, &e));
            }
        }
    }

    /// The builder exited: stop serving (listener and sessions watch [`Self::closed`]).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// [`Self::close`], then waits (blocking, at most `timeout`) until every session of the
    /// build has ended — CppNix joins its recursive-Nix threads at this point, before the
    /// outputs are registered. Returns whether they all ended.
    pub fn close_and_wait(&self, timeout: std::time::Duration) -> bool {
        self.close();
        let start = std::time::Instant::now();
        while self.open_sessions() > 0 {
            if start.elapsed() >= timeout {
                tracing::warn!(
                    "recursive Nix: sessions of '{}' still open {timeout:?} after its builder exited",
                    self.printed
                );
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the view is closed.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The build is over: closed, and its temp roots released (what its outputs refer to
    /// is now kept by those references).
    pub fn finish(&self) {
        self.close();
        let roots = lock(&self.state).roots.take();
        drop(roots);
    }

    /// A session slot, or `None` when the build has [`MAX_SESSIONS_PER_BUILD`] open.
    pub fn try_session(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.sessions).try_acquire_owned().ok()
    }

    /// How many sessions of the build are open.
    pub fn open_sessions(&self) -> usize {
        MAX_SESSIONS_PER_BUILD.saturating_sub(self.sessions.available_permits())
    }

    /// The slots for builds started by this build's sessions (see the module docs).
    pub fn nested_jobs(&self) -> Arc<Semaphore> {
        Arc::clone(&self.nested_jobs)
    }

    /// Marks a nested build of this build as waiting for a build user until the guard
    /// drops.
    pub fn waiting_for_user(self: &Arc<Self>) -> WaitingForUser {
        self.children_waiting_for_user
            .fetch_add(1, Ordering::SeqCst);
        WaitingForUser(Arc::clone(self))
    }

    pub(crate) fn children_waiting_for_user(&self) -> usize {
        self.children_waiting_for_user.load(Ordering::SeqCst)
    }

    /// Why building `drv` for a session of this build cannot work: it is this build or
    /// one it runs inside of, so it would wait for itself (CppNix would wait forever for
    /// the output locks).
    pub fn cycle_message(&self, drv: &StorePath) -> Option<String> {
        let mut at = Some(self);
        while let Some(v) = at {
            if v.drv_path == *drv {
                return Some(format!(
                    "cannot build '{}' in recursive Nix: it is being built already, by a build this one runs inside of",
                    v.printed
                ));
            }
            at = v.parent.as_deref();
        }
        None
    }

    /// How many builds of this chain (this one and its ancestors) hold a build user.
    pub fn ancestors_with_users(&self) -> usize {
        let mut n = 0;
        let mut at = Some(self);
        while let Some(v) = at {
            n += usize::from(v.build_uid.is_some());
            at = v.parent.as_deref();
        }
        n
    }

    /// `info` as the build's sessions see it: no deriver, registration time 0, not
    /// ultimate, no signatures (CppNix's RestrictedStore). Its references need no
    /// filtering: the view is closed under references (inputs are a closure, additions
    /// must name visible references, built outputs join with their closure).
    pub fn censor(&self, mut info: ValidPathInfo) -> ValidPathInfo {
        info.deriver = None;
        info.registration_time = 0;
        info.ultimate = false;
        info.sigs.clear();
        info
    }
}

/// See [`BuildView::waiting_for_user`].
pub struct WaitingForUser(Arc<BuildView>);

impl Drop for WaitingForUser {
    fn drop(&mut self) {
        self.0
            .children_waiting_for_user
            .fetch_sub(1, Ordering::SeqCst);
    }
}
