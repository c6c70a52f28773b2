//! The recursive-Nix side of running one build, for the code that runs it (the
//! scheduler's build thread): [`Recursive::begin_build`] before `Builder::build`, the
//! returned [`BuildHooks`] fed the builder's events, dropped when the build is over.
//!
//! ```text
//! begin_build  ─ a view? (per-build socket wanted and enabled, or seed style with a
//!                build user); registered by build user; its temp roots go to the job
//! prepare      ─ per-build socket: bind <build dir>/.nix-socket, start its listener
//! started      ─ the sandbox handle: added paths appear in the running sandbox
//! builder_exited ─ close the view: listener and sessions stop (joined, bounded)
//! drop         ─ unregistered; the build's temp roots are released
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nixnest_build::{BuildStarted, PreparedBuild};
use nixnest_core::{Derivation, StorePath};
use nixnest_store::{LocalStore, TempRoots};

use super::{BuildView, FEATURE, NewView, Recursive, ViewGuard, server};

/// How long `builder_exited` waits for the build's sessions to end.
pub const SESSION_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`Recursive::begin_build`] needs to know about a build.
pub struct BuildInfo<'a> {
    pub drv_path: &'a StorePath,
    pub drv: &'a Derivation,
    /// The input closure (what the sandbox holds).
    pub inputs: &'a BTreeSet<StorePath>,
    pub build_uid: Option<u32>,
    /// The view of the build whose session asked for this build, if any.
    pub parent: Option<Arc<BuildView>>,
}

/// A build's recursive-Nix state while it runs; see the module docs.
pub struct BuildHooks {
    guard: ViewGuard,
    recursive: Arc<Recursive>,
    /// The derivation requires `recursive-nix`: it gets a per-build socket.
    per_build: bool,
}

/// Whether `drv` lists `recursive-nix` in `requiredSystemFeatures`.
pub fn wants_recursive_nix(drv: &Derivation, printed: &str) -> bool {
    nixnest_build::drvattrs::DrvAttrs::new(drv, printed)
        .and_then(|a| a.required_system_features())
        .is_ok_and(|f| f.contains(FEATURE))
}

impl Recursive {
    /// The hooks of a build about to start, or `None` when no style of recursive Nix
    /// applies to it (no view, nothing to do).
    pub fn begin_build(
        self: &Arc<Self>,
        store: &Arc<LocalStore>,
        build: BuildInfo<'_>,
    ) -> Option<BuildHooks> {
        let per_build = wants_recursive_nix(build.drv, &store.print(build.drv_path));
        let seed = self.config.seed && build.build_uid.is_some();
        // Without the experimental feature a derivation asking for recursive-nix is
        // refused by `prepare` (as CppNix does once `system-features` lets it through).
        if !per_build && !seed {
            return None;
        }
        let view = BuildView::new(
            Arc::clone(store),
            NewView {
                drv_path: build.drv_path.clone(),
                inputs: build.inputs.clone(),
                build_uid: build.build_uid,
                parent: build.parent,
                nested_jobs: self.config.nested_jobs,
            },
        );
        Some(BuildHooks {
            guard: self.register(view),
            recursive: Arc::clone(self),
            per_build,
        })
    }
}

impl BuildHooks {
    pub fn view(&self) -> &Arc<BuildView> {
        self.guard.view()
    }

    /// `BuildJob::recursive_nix`: the builder gets `NIX_REMOTE` for the per-build socket.
    pub fn recursive_nix(&self) -> bool {
        self.per_build && self.recursive.config.per_build
    }

    /// `BuildJob::temp_roots`: the build's own session, which also keeps what its
    /// recursive-Nix sessions add until the build ends.
    pub fn temp_roots(&self) -> Option<Arc<TempRoots>> {
        self.view().temp_roots()
    }

    /// `BuildEvents::prepare`: binds and serves the per-build socket.
    pub fn prepare(&self, build: &PreparedBuild<'_>) -> nixnest_build::Result<()> {
        if !self.per_build {
            return Ok(());
        }
        if !self.recursive.config.per_build {
            return Err(nixnest_build::Error::Other(format!(
                "experimental Nix feature '{FEATURE}' is disabled; use '--extra-experimental-features {FEATURE}' to override"
            )));
        }
        let Some(ctx) = self.recursive.serve_context() else {
            return Err(nixnest_build::Error::Other(
                "recursive Nix is not available in this mode of nixnest-daemon (no daemon socket is served)".into(),
            ));
        };
        let setup = |what: &str, e: std::io::Error| {
            nixnest_build::Error::Other(format!(
                "{what} the recursive-Nix socket in '{}': {e}",
                build.host_dir.display()
            ))
        };
        let listener = server::bind_build_socket(build.dir_fd, build.owner)
            .map_err(|e| setup("creating", e))?;
        server::spawn_listener(ctx, Arc::clone(self.view()), listener)
            .map_err(|e| setup("serving", e))?;
        Ok(())
    }

    /// `BuildEvents::started`.
    pub fn started(&self, started: &BuildStarted) {
        self.view().attach_sandbox(started.handle.clone());
    }

    /// `BuildEvents::builder_exited`: nothing more is served or added; the sessions end
    /// (waited for, within [`SESSION_JOIN_TIMEOUT`]) before the outputs are registered.
    pub fn builder_exited(&self) {
        self.view().close_and_wait(SESSION_JOIN_TIMEOUT);
    }
}
