//! Which part of the store a session sees, and which operations it may use: the
//! restricted store of recursive Nix.
//!
//! Every operation asks the session's [`StoreView`] before it runs
//! ([`StoreView::permission`]) and filters the paths it reports or accepts through it
//! ([`StoreView::is_visible`], [`StoreView::visible`], [`StoreView::censor`]); paths a
//! session adds or builds join the view ([`StoreView::note_added`],
//! [`StoreView::note_built`]). Ordinary clients get [`StoreView::Full`], for which all of
//! this is the identity. A build's own sessions (per-build socket or seed style, see
//! [`crate::recursive`]) get [`StoreView::Build`]: the build's [`BuildView`].
//!
//! # The restricted op table (CppNix's `RestrictedStore`, store-and-build spec §6.3)
//!
//! Visible = the build's input closure ∪ what its sessions added or built.
//!
//! | operation | in a build's view |
//! |---|---|
//! | IsValidPath, QueryValidPaths, QueryAllValidPaths | visible paths only |
//! | QueryPathInfo, QueryPathHash, QueryReferences, QueryDeriver | visible paths only (else "not valid"); censored: no deriver, registration time 0, not ultimate, no signatures |
//! | QueryReferrers | always empty |
//! | QueryValidDerivers | unsupported (derivers are censored) |
//! | QueryDerivationOutputs/OutputNames/OutputMap | visible derivations only |
//! | QueryPathFromHashPart | refused (an error; the session goes on) |
//! | AddToStore, AddTextToStore, AddToStoreNar, AddMultipleToStore, ImportPaths | allowed, as an untrusted client (signatures checked; content-addressed paths pass); references must be visible (checked before adding, and again when the path joins the view: an import naming a hidden path is refused and stays hidden); the new path joins the view and appears in the sandbox before the reply |
//! | NarFromPath, ExportPath | visible paths only |
//! | EnsurePath | visible paths only ("cannot substitute unknown path … in recursive Nix"), then a no-op |
//! | BuildPaths, BuildPathsWithResults | every path named must be visible ("cannot build '…' in recursive Nix because path is unknown"), normal mode only ("unsupported build mode"), depth limit; built as nested builds; the closure of the built outputs joins the view |
//! | BuildDerivation | unsupported |
//! | QueryMissing | invisible targets are reported unknown |
//! | RegisterDrvOutput, AddSignatures, AddBuildLog | refused (errors) |
//! | AddTempRoot, AddIndirectRoot, SyncWithGC | no-ops: the build's temp roots keep what it added |
//! | FindRoots | empty |
//! | CollectGarbage | nothing deleted (ignoreLiveness is still refused) |
//! | OptimiseStore, VerifyStore | no-ops (verify reports no errors) |
//! | SetOptions | read, nothing applied; each setting sent is answered with a warning |
//! | AddPermRoot, builder RPC | refused by the trust policy, as for untrusted clients |

use std::collections::BTreeSet;
use std::sync::Arc;

use nixnest_core::{DerivedPath, StorePath, ValidPathInfo};
use nixnest_protocol::request::Opcode;
use nixnest_protocol::types::BuildMode;

use crate::error::{OpError, OpResult};
use crate::recursive::BuildView;

/// What a session may see and do.
#[derive(Clone, Debug)]
pub enum StoreView {
    /// The whole store (trusted and allowed clients).
    Full,
    /// The session of a running build (recursive Nix).
    Build(Arc<BuildView>),
}

/// Whether an operation may run in a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Permission {
    Run,
    /// Answer as if it succeeded without doing anything.
    Skip,
    /// Fail with this message after reading the request; the session goes on.
    Fail(String),
    /// Refuse, closing the session.
    Refuse(String),
}

/// CppNix's wording for store methods a restricted store does not have.
fn unsupported(what: &str) -> Permission {
    Permission::Fail(format!(
        "operation '{what}' is not supported by the store of a build (recursive Nix)"
    ))
}

/// The restricted op table (see the module docs).
fn restricted(op: Opcode) -> Permission {
    use Opcode as O;
    match op {
        O::AddTempRoot
        | O::AddIndirectRoot
        | O::FindRoots
        | O::CollectGarbage
        | O::OptimiseStore
        | O::VerifyStore
        | O::QueryReferrers => Permission::Skip,
        O::QueryPathFromHashPart => unsupported("queryPathFromHashPart"),
        O::QueryValidDerivers => unsupported("queryValidDerivers"),
        O::BuildDerivation => unsupported("buildDerivation"),
        O::RegisterDrvOutput => unsupported("registerDrvOutput"),
        O::AddSignatures => unsupported("addSignatures"),
        O::AddBuildLog => unsupported("addBuildLog"),
        _ => Permission::Run,
    }
}

impl StoreView {
    /// Whether `op` runs, is skipped, fails or is refused.
    pub fn permission(&self, op: Opcode) -> Permission {
        match self {
            StoreView::Full => Permission::Run,
            StoreView::Build(_) => restricted(op),
        }
    }

    /// The build's view, for a restricted session.
    pub fn build(&self) -> Option<&Arc<BuildView>> {
        match self {
            StoreView::Full => None,
            StoreView::Build(v) => Some(v),
        }
    }

    pub fn is_restricted(&self) -> bool {
        matches!(self, StoreView::Build(_))
    }

    /// Whether `path` exists for this session (an invisible path answers as invalid).
    pub fn is_visible(&self, path: &StorePath) -> bool {
        match self {
            StoreView::Full => true,
            StoreView::Build(v) => v.is_visible(path),
        }
    }

    /// The visible subset of `paths`.
    pub fn visible(&self, paths: BTreeSet<StorePath>) -> BTreeSet<StorePath> {
        match self {
            StoreView::Full => paths,
            StoreView::Build(v) => paths.into_iter().filter(|p| v.is_visible(p)).collect(),
        }
    }

    /// A path's info as this session may see it.
    pub fn censor(&self, info: ValidPathInfo) -> ValidPathInfo {
        match self {
            StoreView::Full => info,
            StoreView::Build(v) => v.censor(info),
        }
    }

    /// The session added (or imported) the valid path `path`: in a build's view it joins
    /// the view and appears in the sandbox before this returns (blocking).
    pub fn note_added(&self, path: &StorePath) -> OpResult<()> {
        match self {
            StoreView::Full => Ok(()),
            StoreView::Build(v) => v.add(path).map_err(|e| OpError::failed(e.to_string())),
        }
    }

    /// The session built `outputs`: their closure joins a build's view (blocking).
    pub fn note_built(&self, outputs: &BTreeSet<StorePath>) -> OpResult<()> {
        match self {
            StoreView::Full => Ok(()),
            StoreView::Build(v) => v
                .add_closure(outputs)
                .map_err(|e| OpError::failed(e.to_string())),
        }
    }

    /// BuildPaths / BuildPathsWithResults in a build's view: every path named must be
    /// visible, the mode must be normal, and the nested build must stay within
    /// `max_depth` (`recursive-nix-max-depth`). Checked before any work, as CppNix's
    /// RestrictedStore does; `printed` renders a path for the message.
    pub fn check_build(
        &self,
        paths: &[DerivedPath],
        mode: BuildMode,
        max_depth: u32,
        printed: impl Fn(&StorePath) -> String,
    ) -> OpResult<()> {
        let StoreView::Build(v) = self else {
            return Ok(());
        };
        for path in paths {
            let named = match path {
                DerivedPath::Opaque(p) => p,
                DerivedPath::Built { drv_path, .. } => drv_path,
            };
            if !v.is_visible(named) {
                return Err(OpError::failed(format!(
                    "cannot build '{}' in recursive Nix because path is unknown",
                    printed(named)
                )));
            }
        }
        if mode != BuildMode::Normal {
            return Err(OpError::failed("unsupported build mode"));
        }
        if v.depth() >= max_depth {
            return Err(OpError::failed(format!(
                "recursive Nix is nested too deeply: '{}' runs at depth {} and \
                 'recursive-nix-max-depth' is {max_depth}, so it cannot start builds",
                v.printed(),
                v.depth()
            )));
        }
        Ok(())
    }

    /// EnsurePath in a build's view: only visible paths (then a no-op).
    pub fn check_ensure(&self, path: &StorePath, printed: &str) -> OpResult<()> {
        match self {
            StoreView::Build(v) if !v.is_visible(path) => Err(OpError::failed(format!(
                "cannot substitute unknown path '{printed}' in recursive Nix"
            ))),
            _ => Ok(()),
        }
    }
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
        assert!(
            view.check_build(&[], BuildMode::Repair, 0, |p| p.to_string())
                .is_ok()
        );
    }

    /// The table of the module docs, opcode by opcode.
    #[test]
    fn restricted_table() {
        use Opcode as O;
        let mut skip = Vec::new();
        let mut fail = Vec::new();
        for op in Opcode::ALL {
            match restricted(*op) {
                Permission::Run => {}
                Permission::Skip => skip.push(op.name()),
                Permission::Fail(m) => {
                    assert!(m.contains("recursive Nix"), "{m}");
                    fail.push(op.name())
                }
                Permission::Refuse(m) => panic!("{}: {m}", op.name()),
            }
        }
        let names = |ops: &[O]| ops.iter().map(|o| o.name()).collect::<Vec<_>>();
        assert_eq!(
            skip,
            names(&[
                O::QueryReferrers,
                O::AddTempRoot,
                O::AddIndirectRoot,
                O::FindRoots,
                O::CollectGarbage,
                O::OptimiseStore,
                O::VerifyStore,
            ])
        );
        assert_eq!(
            fail,
            names(&[
                O::QueryPathFromHashPart,
                O::QueryValidDerivers,
                O::BuildDerivation,
                O::AddSignatures,
                O::RegisterDrvOutput,
                O::AddBuildLog,
            ])
        );
    }
}
