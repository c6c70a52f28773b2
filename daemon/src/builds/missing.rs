//! QueryMissing (40): what realising some paths would take — CppNix 2.8's
//! `Store::queryMissing` for a store without substituters.
//!
//! ```text
//! doPath(opaque p):   valid → nothing;   else → unknown (no substituter has it)
//! doPath(drv!outs):   drv not valid → unknown ∋ drv
//!                     outputs from the db's DerivationOutputs rows; a wanted output
//!                     that is invalid → willBuild ∋ drv, and doPath(input!outs) for
//!                     every input derivation (whatever its state)
//!                     all wanted outputs valid (or none known) → nothing
//! ```
//!
//! Each derived path is visited once (CppNix keys its `done` set by the printed path, so
//! `drv!out` and `drv!*` are separate visits). Input sources are not looked at, and
//! output names a derivation does not have are ignored, as in CppNix. With no
//! substituters `willSubstitute` stays empty and both sizes are 0.

use std::collections::BTreeSet;

use nixnest_core::{DerivedPath, OutputsSpec};
use nixnest_protocol::types::Missing;
use nixnest_store::LocalStore;

use super::error::Result;

/// Answers QueryMissing for `targets` (see the module docs). Blocking.
pub fn query_missing(store: &LocalStore, targets: &[DerivedPath]) -> Result<Missing> {
    let mut out = Missing {
        will_build: BTreeSet::new(),
        will_substitute: BTreeSet::new(),
        unknown: BTreeSet::new(),
        download_size: 0,
        nar_size: 0,
    };
    let mut done: BTreeSet<DerivedPath> = BTreeSet::new();
    let mut todo: Vec<DerivedPath> = targets.iter().rev().cloned().collect();
    while let Some(req) = todo.pop() {
        if !done.insert(req.clone()) {
            continue;
        }
        match req {
            DerivedPath::Opaque(p) => {
                if !store.is_valid_path(&p)? {
                    out.unknown.insert(p);
                }
            }
            DerivedPath::Built { drv_path, outputs } => {
                if !store.is_valid_path(&drv_path)? {
                    out.unknown.insert(drv_path);
                    continue;
                }
                let mut invalid = false;
                for (name, path) in store.query_derivation_outputs(&drv_path)? {
                    if outputs.contains(&name) && !store.is_valid_path(&path)? {
                        invalid = true;
                    }
                }
                if !invalid {
                    continue;
                }
                let drv = nixnest_store::drv::read_derivation(store, &drv_path)?;
                out.will_build.insert(drv_path);
                for (input, outs) in drv.input_drvs {
                    let outputs = if outs.is_empty() {
                        OutputsSpec::All
                    } else {
                        OutputsSpec::Names(outs)
                    };
                    todo.push(DerivedPath::Built {
                        drv_path: input,
                        outputs,
                    });
                }
            }
        }
    }
    Ok(out)
}

impl super::scheduler::Scheduler {
    /// QueryMissing (40), off the async runtime.
    pub async fn query_missing(&self, targets: Vec<DerivedPath>) -> Result<Missing> {
        let store = std::sync::Arc::clone(self.store());
        tokio::task::spawn_blocking(move || query_missing(&store, &targets))
            .await
            .map_err(|e| super::error::Error::Internal(e.to_string()))?
    }
}
