//! Which part of the store a session sees, and which operations it may use: the seam
//! for recursive Nix.
//!
//! Every operation asks the session's [`StoreView`] before it runs
//! ([`StoreView::permission`]) and filters the paths it reports or accepts through it
//! ([`StoreView::is_visible`], [`StoreView::visible`]); paths a session adds are reported
//! back ([`StoreView::note_added`]). The session's [`Policy`](crate::policy::Policy)
//! picks the view; ordinary clients get [`StoreView::Full`], for which all of this is
//! the identity.
//!
//! A later issue adds the restricted view of a build's own session (a recursive-Nix
//! client connecting as the build user, or on a per-build socket): it sees only the
//! build's input closure plus what it added itself — paths outside answer as invalid —
//! and some operations become no-ops (temp and indirect roots) or are refused (GC,
//! optimise, verify). Until that exists such sessions are refused outright
//! ([`StoreView::Build`]), so no build can ever see more than it should.

use std::collections::BTreeSet;

use nixnest_core::StorePath;
use nixnest_protocol::request::Opcode;

/// What a session may see and do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreView {
    /// The whole store (trusted and allowed clients).
    Full,
    /// The session of a build running as `uid`. Not implemented yet: every operation is
    /// refused.
    Build { uid: u32 },
}

/// Whether an operation may run in a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Permission {
    Run,
    /// Answer as if it succeeded without doing anything.
    Skip,
    /// Refuse, closing the session.
    Refuse(String),
}

impl StoreView {
    /// Whether `op` runs, is skipped, or is refused.
    pub fn permission(&self, op: Opcode) -> Permission {
        match self {
            StoreView::Full => Permission::Run,
            StoreView::Build { uid } => Permission::Refuse(format!(
                "operation {} from build user {uid}: recursive Nix (a build talking to the daemon) is not supported by nixnest yet",
                op.name()
            )),
        }
    }

    /// Whether `path` exists for this session (an invisible path answers as invalid).
    pub fn is_visible(&self, _path: &StorePath) -> bool {
        match self {
            StoreView::Full => true,
            StoreView::Build { .. } => false,
        }
    }

    /// The visible subset of `paths`.
    pub fn visible(&self, paths: BTreeSet<StorePath>) -> BTreeSet<StorePath> {
        match self {
            StoreView::Full => paths,
            StoreView::Build { .. } => paths.into_iter().filter(|p| self.is_visible(p)).collect(),
        }
    }

    /// Records that the session added (or registered a root for) `path`, which a
    /// restricted view must then show.
    pub fn note_added(&self, _path: &StorePath) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_view_sees_and_runs_everything() {
        let view = StoreView::Full;
        let p = StorePath::from_base_name("00000000000000000000000000000000-x").unwrap();
        assert!(view.is_visible(&p));
        assert_eq!(view.visible([p.clone()].into()), [p].into());
        for op in Opcode::ALL {
            assert_eq!(view.permission(*op), Permission::Run);
        }
    }

    #[test]
    fn build_sessions_are_refused_until_the_restricted_view_exists() {
        let view = StoreView::Build { uid: 30001 };
        let p = StorePath::from_base_name("00000000000000000000000000000000-x").unwrap();
        assert!(!view.is_visible(&p));
        assert!(view.visible([p].into()).is_empty());
        assert!(matches!(
            view.permission(Opcode::IsValidPath),
            Permission::Refuse(m) if m.contains("recursive Nix")
        ));
    }
}
