//! Planning a build request: from the requested [`DerivedPath`]s to the derivation DAG
//! that has to run (CppNix's goal tree, computed up front).
//!
//! ```text
//! target  = opaque path          → valid: AlreadyValid, else NoSubstituters
//!         | drv!outputs | drv!*  → node(drv, wanted outputs)
//! node    = drv not valid        → Missing ("cannot build missing derivation '…'")
//!         | wanted outputs valid → Valid (AlreadyValid; its inputs are not looked at)
//!         | otherwise            → Build: input derivations (with the outputs it uses)
//!                                  become nodes, input sources must be valid
//! ```
//!
//! A derivation reached several times (from two targets, or twice in one DAG) is one node
//! whose wanted outputs are the union; a node first found Valid becomes Build when a later
//! path wants one of its missing outputs. A Build node depends on every input node that is
//! not Valid; a missing input source counts as a failed dependency (CppNix: a substitution
//! goal ending in NoSubstituters). The walk is iterative (deep chains cannot overflow the
//! stack) and every derivation, output and source it touches is added to the session's
//! temp roots, as CppNix's goals do.
//!
//! Asking for an output a derivation does not have fails the whole request, with CppNix's
//! message "derivation '…' does not have wanted outputs '…'".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use nixnest_core::derivation::DrvHashes;
use nixnest_core::{Derivation, DerivedPath, DrvOutput, Hash, OutputsSpec, StorePath};
use nixnest_store::{LocalStore, TempRoots};

use super::error::{Error, Result};

/// What a node needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Every wanted output is valid.
    Valid,
    /// Something wanted is missing: build it (after its dependencies).
    Build,
    /// The `.drv` itself is not valid.
    Missing,
}

/// One derivation of the plan.
#[derive(Debug)]
pub struct Node {
    pub drv_path: StorePath,
    /// The parsed `.drv` (absent for `Missing`).
    pub drv: Option<Arc<Derivation>>,
    /// Statically known output paths.
    pub outputs: BTreeMap<String, StorePath>,
    /// The union of the outputs wanted from it.
    pub wanted: BTreeSet<String>,
    pub state: NodeState,
    /// Input nodes that are not `Valid` (only for `Build`).
    pub deps: BTreeSet<usize>,
    /// Nodes that depend on this one.
    pub dependents: BTreeSet<usize>,
    /// Input sources that are not valid.
    pub missing_srcs: usize,
    /// `(masked hash modulo, per output)`, for the DrvOutput ids of top-level results.
    pub hash: Option<BTreeMap<String, Hash>>,
}

impl Node {
    /// The DrvOutput id of `output` (an all-zero hash if it could not be computed).
    pub fn drv_output(&self, output: &str) -> DrvOutput {
        match self.hash.as_ref().and_then(|h| h.get(output)) {
            Some(h) => DrvOutput {
                drv_hash: *h,
                output: output.to_owned(),
            },
            None => nixnest_protocol::types::placeholder_drv_output(output),
        }
    }
}

/// The store paths a build of `drv` starts its input closure from: the input sources and
/// the outputs of the input derivations it uses (which must be valid by then).
pub fn input_roots(
    store: &LocalStore,
    drv_path: &StorePath,
    drv: &Derivation,
) -> Result<BTreeSet<StorePath>> {
    let sd = store.store_dir();
    let mut start = drv.input_srcs.clone();
    for (input, outs) in &drv.input_drvs {
        let idrv = nixnest_store::drv::read_derivation(store, input)?;
        let paths = idrv.output_paths(sd)?;
        let names: Vec<&String> = if outs.is_empty() {
            paths.keys().collect()
        } else {
            outs.iter().collect()
        };
        for o in names {
            match paths.get(o) {
                Some(Some(p)) => {
                    start.insert(p.clone());
                }
                _ => {
                    return Err(Error::Refused(format!(
                        "derivation '{}' requires non-existent output '{o}' from input derivation '{}'",
                        sd.print(drv_path),
                        sd.print(input)
                    )));
                }
            }
        }
    }
    Ok(start)
}

/// A requested path.
#[derive(Clone, Debug)]
pub enum Target {
    Opaque {
        path: StorePath,
        valid: bool,
    },
    Built {
        node: usize,
        wanted: BTreeSet<String>,
    },
}

/// The whole request, planned.
#[derive(Debug, Default)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub index: HashMap<StorePath, usize>,
    /// One per requested path, in request order.
    pub targets: Vec<(DerivedPath, Target)>,
}

impl Plan {
    /// Nodes that have to be built.
    pub fn needs_building(&self) -> bool {
        self.nodes.iter().any(|n| n.state == NodeState::Build)
    }
}

struct Planner<'a> {
    store: &'a LocalStore,
    roots: Option<&'a TempRoots>,
    plan: Plan,
    /// Nodes whose inputs still have to be walked.
    expand: Vec<usize>,
}

impl Planner<'_> {
    fn root(&self, path: &StorePath) {
        if let Some(r) = self.roots
            && let Err(e) = r.add_path(path)
        {
            tracing::warn!("cannot add a temporary root for '{path}': {e}");
        }
    }

    /// Adds `wanted` outputs of `drv_path` to the plan; returns its node.
    fn visit(&mut self, drv_path: &StorePath, wanted: &OutputsSpec) -> Result<usize> {
        let sd = self.store.store_dir();
        let idx = match self.plan.index.get(drv_path) {
            Some(&i) => i,
            None => {
                self.root(drv_path);
                let node = if self.store.is_valid_path(drv_path)? {
                    let drv = nixnest_store::drv::read_derivation(self.store, drv_path)?;
                    let mut outputs = BTreeMap::new();
                    for (name, p) in drv.output_paths(sd)? {
                        if let Some(p) = p {
                            self.root(&p);
                            outputs.insert(name, p);
                        }
                    }
                    Node {
                        drv_path: drv_path.clone(),
                        drv: Some(Arc::new(drv)),
                        outputs,
                        wanted: BTreeSet::new(),
                        state: NodeState::Valid,
                        deps: BTreeSet::new(),
                        dependents: BTreeSet::new(),
                        missing_srcs: 0,
                        hash: None,
                    }
                } else {
                    Node {
                        drv_path: drv_path.clone(),
                        drv: None,
                        outputs: BTreeMap::new(),
                        wanted: BTreeSet::new(),
                        state: NodeState::Missing,
                        deps: BTreeSet::new(),
                        dependents: BTreeSet::new(),
                        missing_srcs: 0,
                        hash: None,
                    }
                };
                self.plan.nodes.push(node);
                let i = self.plan.nodes.len() - 1;
                self.plan.index.insert(drv_path.clone(), i);
                i
            }
        };
        let node = &mut self.plan.nodes[idx];
        let Some(drv) = node.drv.clone() else {
            return Ok(idx);
        };
        let names: BTreeSet<String> = match wanted {
            OutputsSpec::All => drv.outputs.keys().cloned().collect(),
            OutputsSpec::Names(n) => n.clone(),
        };
        let unknown: Vec<String> = names
            .iter()
            .filter(|o| !drv.outputs.contains_key(*o))
            .map(|o| format!("'{o}'"))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Refused(format!(
                "derivation '{}' does not have wanted outputs {}",
                sd.print(drv_path),
                unknown.join(", ")
            )));
        }
        let new: Vec<String> = names.difference(&node.wanted).cloned().collect();
        if new.is_empty() {
            return Ok(idx);
        }
        node.wanted.extend(new.iter().cloned());
        if node.state == NodeState::Valid {
            let mut all_valid = true;
            for o in &new {
                match node.outputs.get(o) {
                    Some(p) if self.store.is_valid_path(p)? => {}
                    _ => all_valid = false,
                }
            }
            if !all_valid {
                node.state = NodeState::Build;
                self.expand.push(idx);
            }
        }
        Ok(idx)
    }

    /// Walks the inputs of the Build node `idx`.
    fn expand_node(&mut self, idx: usize) -> Result<()> {
        let Some(drv) = self.plan.nodes[idx].drv.clone() else {
            return Ok(());
        };
        let mut missing = 0;
        for src in &drv.input_srcs {
            self.root(src);
            if !self.store.is_valid_path(src)? {
                missing += 1;
            }
        }
        self.plan.nodes[idx].missing_srcs = missing;
        for (input, outs) in &drv.input_drvs {
            // An empty list means every output (CppNix 2.8's `StringSet` convention).
            let spec = if outs.is_empty() {
                OutputsSpec::All
            } else {
                OutputsSpec::names(outs.iter().cloned())?
            };
            self.visit(input, &spec)?;
        }
        Ok(())
    }
}

/// Plans `targets` (see the module docs). Blocking: call it off the async runtime.
pub fn plan(
    store: &LocalStore,
    targets: &[DerivedPath],
    roots: Option<&TempRoots>,
) -> Result<Plan> {
    let mut p = Planner {
        store,
        roots,
        plan: Plan::default(),
        expand: Vec::new(),
    };
    for t in targets {
        let target = match t {
            DerivedPath::Opaque(path) => {
                p.root(path);
                Target::Opaque {
                    path: path.clone(),
                    valid: store.is_valid_path(path)?,
                }
            }
            DerivedPath::Built { drv_path, outputs } => {
                let node = p.visit(drv_path, outputs)?;
                let wanted = match (outputs, &p.plan.nodes[node].drv) {
                    (OutputsSpec::Names(n), _) => n.clone(),
                    (OutputsSpec::All, Some(d)) => d.outputs.keys().cloned().collect(),
                    (OutputsSpec::All, None) => BTreeSet::new(),
                };
                Target::Built { node, wanted }
            }
        };
        p.plan.targets.push((t.clone(), target));
        while let Some(i) = p.expand.pop() {
            p.expand_node(i)?;
        }
    }
    let mut plan = p.plan;

    // Edges: a Build node waits for each input node that is not Valid.
    for i in 0..plan.nodes.len() {
        if plan.nodes[i].state != NodeState::Build {
            continue;
        }
        let inputs: Vec<StorePath> = plan.nodes[i]
            .drv
            .as_ref()
            .map(|d| d.input_drvs.keys().cloned().collect())
            .unwrap_or_default();
        for input in inputs {
            if let Some(&j) = plan.index.get(&input)
                && plan.nodes[j].state != NodeState::Valid
            {
                plan.nodes[i].deps.insert(j);
                plan.nodes[j].dependents.insert(i);
            }
        }
    }

    // DrvOutput ids of the requested derivations (CppNix's `staticOutputHashes`: the
    // masked hash modulo).
    let sd = store.store_dir().clone();
    let mut hashes = DrvHashes::new(sd.clone(), |p: &StorePath| {
        nixnest_store::drv::read_derivation(store, p).map_err(|e| nixnest_core::Error::DrvHash {
            name: p.to_string(),
            reason: e.to_string(),
        })
    });
    let tops: BTreeSet<usize> = plan
        .targets
        .iter()
        .filter_map(|(_, t)| match t {
            Target::Built { node, .. } => Some(*node),
            Target::Opaque { .. } => None,
        })
        .collect();
    for i in tops {
        if let Some(drv) = plan.nodes[i].drv.clone() {
            match drv.hash_modulo(&sd, true, hashes.lookup()) {
                Ok(h) => plan.nodes[i].hash = Some(h.hashes),
                Err(e) => tracing::debug!("no hash modulo for '{}': {e}", plan.nodes[i].drv_path),
            }
        }
    }
    Ok(plan)
}

/// The masked hash modulo of a derivation sent by BuildDerivation (no input derivations).
pub fn basic_hash(store: &LocalStore, drv: &Derivation) -> Option<BTreeMap<String, Hash>> {
    let sd = store.store_dir();
    drv.hash_modulo(sd, true, |p: &StorePath| {
        Err(nixnest_core::Error::DrvHash {
            name: p.to_string(),
            reason: "a BuildDerivation derivation has no input derivations".into(),
        })
    })
    .ok()
    .map(|h| h.hashes)
}
