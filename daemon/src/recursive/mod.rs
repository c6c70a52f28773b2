//! Recursive Nix: builds that talk to the daemon, in both of nixnest's styles, with one
//! restricted store view per running build.
//!
//! # The two channels
//!
//! | | per-build socket | seed style |
//! |---|---|---|
//! | enabled by | `experimental-features = recursive-nix` **and** the derivation's `requiredSystemFeatures = [ "recursive-nix" ]` | `allow-build-user-connections = true`, the daemon socket's directory in `extra-sandbox-paths` |
//! | socket | `<build dir>/.nix-socket`, 0600, owned by the build user; `NIX_REMOTE=unix:///build/.nix-socket` in the sandbox | the daemon's own socket (its directory is made 0755 so build users can reach it) |
//! | admission | whoever can open the socket (the builder) | `SO_PEERCRED` uid → the running build holding that build user ([`Recursive::admit_build_user`]); none: rejected |
//! | served by | a listener task per build ([`server`]) | the daemon's listener |
//!
//! Both serve the same worker protocol through the same session code, with the session's
//! [`StoreView`](crate::view::StoreView) set to the build's [`BuildView`]: never trusted,
//! the restricted op table of [`crate::view`], settings from `SetOptions` ignored (with a
//! warning per setting).
//!
//! # A build's view ([`BuildView`])
//!
//! * **Visible paths** = the build's input closure ∪ every path added or built during the
//!   build by any of its sessions. Invisible paths answer as invalid. The set is closed
//!   under references (a path joins only when its references are visible; built outputs
//!   join with their closure), so no visible path leads to a hidden one. (CppNix does not
//!   check the references of additions: there a text path naming any store path, then a
//!   derivation depending on it, brings that path into a nested sandbox.)
//! * **New paths appear in the running sandbox** (the builder crate's
//!   [`SandboxHandle::make_visible`](nixnest_build::SandboxHandle::make_visible)) before the
//!   operation that added them replies, so the client can read them at once.
//! * **They are real dependencies**: each joins the build's own temp-roots session (which
//!   also roots the build's `.drv` and outputs) until the build ends, and is a reference
//!   candidate of the outputs' scan (the sandbox handle records them).
//! * **Lifetime**: the view closes when the builder exits, before the outputs are
//!   registered: the per-build listener stops, every session of the build (either style)
//!   is closed — which detaches, and so cancels, the nested builds they wait for — and
//!   nothing more can be added. The temp roots go when the build ends.
//!
//! # Limits
//!
//! * **Depth**: the build a normal client asks for is at depth 1; a build asked for by a
//!   session of a depth-d build is at depth d + 1. A session of a build at depth
//!   `recursive-nix-max-depth` may add and query but not build ("recursive Nix is nested
//!   too deeply …").
//! * **Sessions**: at most [`MAX_SESSIONS_PER_BUILD`] open at once per build (both styles
//!   together); more are closed unanswered, so a connection flood costs only that build.
//! * **Nested builds do not take a daemon build slot**: their ancestor already holds one
//!   and only waits, so with `max-jobs = 1` a nested build would otherwise wait forever.
//!   Instead each build lends its sessions [`BuildView::nested_jobs`] slots (`max-jobs`,
//!   at least 1) for the builds they start.
//! * **Build users**: nesting depth N needs N build users at once. A nested build waits for
//!   a free one like any build, but when every user of the pool is held by a build that is
//!   itself waiting for a nested build's user, nothing can ever be freed: the waiting
//!   nested build fails at once ([`Recursive::user_deadlock`]) instead of hanging, which
//!   lets its ancestor's `nix-build` fail and the users go back to the pool.

pub mod build_view;
pub mod hooks;
pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use tokio::sync::OwnedSemaphorePermit;

use crate::config::Settings;
use crate::control::Registry;
use crate::listener::Shutdown;
use crate::session;

pub use build_view::{BuildView, NewView, ViewError, WaitingForUser};
pub use hooks::{BuildHooks, BuildInfo};

/// Sessions one build may have open at once (per-build socket and seed style together).
pub const MAX_SESSIONS_PER_BUILD: usize = 32;

/// The experimental feature (and system feature) name.
pub const FEATURE: &str = "recursive-nix";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the daemon's configuration says about recursive Nix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecursiveConfig {
    /// `recursive-nix` is in `experimental-features`: derivations that require the
    /// `recursive-nix` system feature get a per-build socket.
    pub per_build: bool,
    /// `allow-build-user-connections`: build users may use the daemon socket.
    pub seed: bool,
    /// `recursive-nix-max-depth`.
    pub max_depth: u32,
    /// Builds the sessions of one build may run at once (`max-jobs`, at least 1).
    pub nested_jobs: usize,
}

impl RecursiveConfig {
    pub fn from_settings(settings: &Settings) -> Self {
        RecursiveConfig {
            per_build: settings.has_experimental_feature(FEATURE),
            seed: settings.allow_build_user_connections,
            max_depth: settings.recursive_nix_max_depth,
            nested_jobs: (settings.max_jobs.0 as usize).max(1),
        }
    }

    /// Nothing enabled (tests, `--stdio`).
    pub fn disabled() -> Self {
        RecursiveConfig {
            per_build: false,
            seed: false,
            max_depth: 0,
            nested_jobs: 1,
        }
    }

    /// Whether builds need a view at all.
    pub fn enabled(&self) -> bool {
        self.per_build || self.seed
    }
}

/// What the per-build listeners need to start sessions like the daemon's own.
#[derive(Clone)]
pub struct ServeContext {
    /// The sessions' shared state (weak: it owns this context).
    pub shared: Weak<session::Shared>,
    /// The daemon's settings (each session applies nothing of its client's to them).
    pub settings: Arc<Settings>,
    /// Where sessions are listed for `nixnest-daemon status`.
    pub registry: Arc<Registry>,
    /// Fires when the daemon shuts down.
    pub shutdown: Shutdown,
    /// Runs the listener tasks (build threads are not runtime threads).
    pub runtime: tokio::runtime::Handle,
}

/// The daemon-wide part: configuration, the views of running builds by build user, and
/// how per-build sockets are served.
pub struct Recursive {
    config: RecursiveConfig,
    by_uid: Mutex<HashMap<u32, Arc<BuildView>>>,
    serve: OnceLock<ServeContext>,
}

impl Recursive {
    pub fn new(config: RecursiveConfig) -> Arc<Self> {
        Arc::new(Recursive {
            config,
            by_uid: Mutex::new(HashMap::new()),
            serve: OnceLock::new(),
        })
    }

    pub fn disabled() -> Arc<Self> {
        Self::new(RecursiveConfig::disabled())
    }

    pub fn config(&self) -> &RecursiveConfig {
        &self.config
    }

    /// Lets per-build sockets be served (the daemon's `main` calls it once it listens).
    /// Without it, a derivation that needs a per-build socket fails to start.
    pub fn install(&self, ctx: ServeContext) {
        if self.serve.set(ctx).is_err() {
            tracing::warn!("recursive Nix: serving context installed twice; keeping the first");
        }
    }

    pub(crate) fn serve_context(&self) -> Option<&ServeContext> {
        self.serve.get()
    }

    /// Registers `view` as the view of its build user's sessions until the guard drops
    /// (which also ends the view: see [`BuildView::finish`]).
    pub fn register(self: &Arc<Self>, view: Arc<BuildView>) -> ViewGuard {
        if let Some(uid) = view.build_uid() {
            let old = lock(&self.by_uid).insert(uid, Arc::clone(&view));
            if let Some(old) = old {
                // A lease is exclusive, so this is a leftover of a build that did not
                // unregister; its sessions must not see the new build's paths either way.
                tracing::warn!(
                    "build user {uid} was still registered for '{}'; replacing it",
                    old.printed()
                );
                old.close();
            }
        }
        ViewGuard {
            recursive: Arc::clone(self),
            view,
        }
    }

    /// The view of the running build holding build user `uid`, with a session slot for a
    /// connection from it; `Err` is the reason to reject the connection.
    pub fn admit_build_user(
        &self,
        uid: u32,
        user: &str,
    ) -> Result<(Arc<BuildView>, OwnedSemaphorePermit), String> {
        let view = lock(&self.by_uid).get(&uid).cloned();
        let Some(view) = view.filter(|v| !v.is_closed()) else {
            return Err(crate::auth::no_build_message(user));
        };
        match view.try_session() {
            Some(permit) => Ok((view, permit)),
            None => Err(format!(
                "user '{user}': the build of '{}' already has {MAX_SESSIONS_PER_BUILD} recursive-Nix connections open",
                view.printed()
            )),
        }
    }

    /// Number of builds registered by build user (tests, `status`).
    pub fn registered(&self) -> usize {
        lock(&self.by_uid).len()
    }

    /// Whether a nested build of `parent` waiting for a build user (marked with
    /// [`BuildView::waiting_for_user`]) can never get one: every one of the pool's
    /// `pool_size` users is held by a build of ours that is itself waiting — through its
    /// nested builds — for a nested build's user. Nothing can then be freed (short of a
    /// builder giving up on its own), so `Some(message)`: fail the waiting build now.
    /// Users held by builds without a view, or by another daemon, may still come free.
    pub fn user_deadlock(&self, parent: &BuildView, pool_size: usize) -> Option<String> {
        let held: Vec<Arc<BuildView>> = lock(&self.by_uid).values().cloned().collect();
        if pool_size == 0 || held.len() < pool_size {
            return None;
        }
        // Builds some waiting nested build runs inside of (the waiter's chain of
        // ancestors): they cannot end before it gets a user.
        let mut waiting_chains: Vec<*const BuildView> = Vec::new();
        for v in &held {
            if v.children_waiting_for_user() > 0 {
                let mut at = Some(&**v);
                while let Some(a) = at {
                    waiting_chains.push(a as *const BuildView);
                    at = a.parent().map(|p| &**p);
                }
            }
        }
        let all_blocked = held
            .iter()
            .all(|v| waiting_chains.contains(&Arc::as_ptr(v)));
        if !all_blocked {
            return None;
        }
        Some(format!(
            "no build user can become free for a nested build of '{}': all {pool_size} build users \
             are held by builds that wait for nested builds ({} by this build and the builds it runs \
             inside); recursive Nix nested N deep needs N build users free at once",
            parent.printed(),
            parent.ancestors_with_users()
        ))
    }
}

/// Keeps a build's view registered; ends it on drop.
pub struct ViewGuard {
    recursive: Arc<Recursive>,
    view: Arc<BuildView>,
}

impl ViewGuard {
    pub fn view(&self) -> &Arc<BuildView> {
        &self.view
    }
}

impl Drop for ViewGuard {
    fn drop(&mut self) {
        if let Some(uid) = self.view.build_uid() {
            let mut map = lock(&self.recursive.by_uid);
            if map.get(&uid).is_some_and(|v| Arc::ptr_eq(v, &self.view)) {
                map.remove(&uid);
            }
        }
        self.view.finish();
    }
}

/// Seed style: makes the daemon socket reachable for build users, and says what else
/// stands in the way. The socket's own directory gets `o+x` (CppNix's socket is 0666 but
/// distributions put it in a 0770 directory, which build users cannot traverse); every
/// other directory on the way must already be searchable, and the directory must be in
/// `sandbox-paths`/`extra-sandbox-paths` for sandboxed builds to see it. Returns warnings
/// for the daemon's log.
pub fn prepare_seed_socket(settings: &Settings) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut warnings = Vec::new();
    let socket = &settings.daemon_socket;
    let Some(dir) = socket.parent() else {
        return warnings;
    };
    match std::fs::metadata(dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o001 == 0 {
                let wanted = mode | 0o011;
                match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(wanted)) {
                    Ok(()) => tracing::info!(
                        "allow-build-user-connections: made '{}' searchable by build users ({:o} → {:o})",
                        dir.display(),
                        mode,
                        wanted
                    ),
                    Err(e) => warnings.push(format!(
                        "allow-build-user-connections: cannot make '{}' searchable by build users: {e}",
                        dir.display()
                    )),
                }
            }
        }
        Err(e) => warnings.push(format!(
            "allow-build-user-connections: '{}': {e}",
            dir.display()
        )),
    }
    for ancestor in dir.ancestors().skip(1) {
        if let Ok(meta) = std::fs::metadata(ancestor)
            && meta.permissions().mode() & 0o001 == 0
        {
            warnings.push(format!(
                "allow-build-user-connections: build users cannot reach the daemon socket: \
                 '{}' is not searchable by others",
                ancestor.display()
            ));
        }
    }
    let dir_s = dir.to_string_lossy();
    let exposed = settings.sandbox_paths.0.iter().any(|(inside, p)| {
        let covers =
            |a: &str| dir_s == a || dir_s.starts_with(&format!("{}/", a.trim_end_matches('/')));
        covers(inside) && covers(&p.source)
    });
    if settings.sandbox != crate::config::SandboxMode::Disabled && !exposed {
        warnings.push(format!(
            "allow-build-user-connections is on, but the daemon socket's directory '{}' is not \
             in 'extra-sandbox-paths': sandboxed builds cannot reach the socket",
            dir.display()
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigEnv;

    fn settings(lines: &[(&str, &str)]) -> Settings {
        let env = ConfigEnv::from_vars(|_| None, None).unwrap();
        let mut s = Settings::defaults(&env);
        for (k, v) in lines {
            s.set(k, v).unwrap();
        }
        s
    }

    #[test]
    fn configuration() {
        let off = RecursiveConfig::from_settings(&settings(&[]));
        assert_eq!(
            off,
            RecursiveConfig {
                per_build: false,
                seed: false,
                max_depth: 3,
                nested_jobs: 1
            }
        );
        assert!(!off.enabled());
        let on = RecursiveConfig::from_settings(&settings(&[
            ("experimental-features", "nix-command recursive-nix"),
            ("allow-build-user-connections", "true"),
            ("recursive-nix-max-depth", "5"),
            ("max-jobs", "4"),
        ]));
        assert_eq!(
            on,
            RecursiveConfig {
                per_build: true,
                seed: true,
                max_depth: 5,
                nested_jobs: 4
            }
        );
    }

    /// CppNix offers the `recursive-nix` system feature exactly when the experimental
    /// feature is on.
    #[test]
    fn system_feature_follows_the_experimental_feature() {
        let helper = nixnest_build::HelperCommand::new("/bin/false");
        let has = |s: &Settings| {
            crate::builds::build_settings(s, &helper)
                .system_features
                .contains(FEATURE)
        };
        assert!(!has(&settings(&[])));
        assert!(has(&settings(&[(
            "extra-experimental-features",
            "recursive-nix"
        )])));
    }
}
