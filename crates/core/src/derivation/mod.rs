//! Derivations: the `.drv` data model, its path, and how output paths are computed.
//!
//! * [`Derivation`] is a parsed `.drv` (ATerm grammar in [`aterm`]); [`BasicDerivation`] is
//!   the same without input derivations, as sent by the worker protocol's BuildDerivation.
//! * A derivation's own path is the *text* store path of its ATerm with references =
//!   input sources ∪ input derivation paths, named `<name>.drv`.
//! * Output kinds ([`DerivationOutput`]), by the ATerm output tuple `(name, path, hashAlgo, hash)`:
//!
//! | kind | path | hashAlgo | hash |
//! |---|---|---|---|
//! | input-addressed | `/nix/store/…` | `""` | `""` |
//! | fixed-output (CA fixed) | its CA path | `<algo>`, `r:<algo>` or `text:<algo>` | base16 digest |
//! | floating CA | `""` | `[r:\|text:]<algo>` | `""` |
//! | deferred input-addressed | `""` | `""` | `""` |
//! | impure | `""` | `[r:\|text:]<algo>` | `impure` |
//!
//! * **Hash modulo** (`hashDerivationModulo`): a fixed-output derivation hashes to
//!   `sha256("fixed:out:<hashAlgo field>:<base16>:<output path>")`, independent of how it is
//!   built; any other derivation hashes to sha256 of its ATerm with every input derivation
//!   path replaced by the base16 of *that input's* hash modulo (outputs requested from
//!   inputs with equal hashes are merged), and — when masking — output paths and the
//!   environment variables named like outputs blanked. Input-addressed output `o` lives at
//!   `makeStorePath("output:o", masked hash, <name> or <name>-<o>)`.
//!
//! Core does no I/O: hashing a derivation with input derivations asks the caller for each
//! input's hash modulo ([`Derivation::hash_modulo`]), or for the input derivations
//! themselves through [`DrvHashes`], which memoises.

pub mod aterm;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::error::{Error, Result, excerpt};
use crate::hash::{Hash, HashAlgo};
use crate::nixbase32;
use crate::store_path::{DRV_EXTENSION, StoreDir, StorePath, output_path_name, validate_name};

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivationOutput {
    /// Path fixed by the derivation's inputs (hash modulo).
    InputAddressed(StorePath),
    /// Content known in advance (`outputHash`): a fixed-output derivation.
    CAFixed(ContentAddress),
    /// Content-addressed, hash known only after the build (`ca-derivations`).
    CAFloating {
        method: ContentAddressMethod,
        algo: HashAlgo,
    },
    /// Input-addressed, but the path is not known yet (an input is floating CA).
    Deferred,
    /// Impure derivation output (`impure-derivations`).
    Impure {
        method: ContentAddressMethod,
        algo: HashAlgo,
    },
}

impl DerivationOutput {
    /// The statically known path of output `output` of derivation `drv_name`, if any.
    pub fn path(
        &self,
        store_dir: &StoreDir,
        drv_name: &str,
        output: &str,
    ) -> Result<Option<StorePath>> {
        match self {
            DerivationOutput::InputAddressed(p) => Ok(Some(p.clone())),
            DerivationOutput::CAFixed(ca) => store_dir
                .make_path_from_ca(
                    &output_path_name(drv_name, output),
                    ca,
                    &BTreeSet::new(),
                    false,
                )
                .map(Some),
            _ => Ok(None),
        }
    }

    /// The `(path, hashAlgo, hash)` strings of the ATerm tuple (and of BuildDerivation).
    pub fn to_aterm_fields(
        &self,
        store_dir: &StoreDir,
        drv_name: &str,
        output: &str,
    ) -> Result<(String, String, String)> {
        Ok(match self {
            DerivationOutput::InputAddressed(p) => {
                (store_dir.print(p), String::new(), String::new())
            }
            DerivationOutput::CAFixed(ca) => {
                let path = self
                    .path(store_dir, drv_name, output)?
                    .map(|p| store_dir.print(&p))
                    .unwrap_or_default();
                (
                    path,
                    ca.method().render_drv_algo(ca.hash().algo()),
                    ca.hash().to_base16(),
                )
            }
            DerivationOutput::CAFloating { method, algo } => {
                (String::new(), method.render_drv_algo(*algo), String::new())
            }
            DerivationOutput::Deferred => (String::new(), String::new(), String::new()),
            DerivationOutput::Impure { method, algo } => (
                String::new(),
                method.render_drv_algo(*algo),
                "impure".to_owned(),
            ),
        })
    }

    /// Reads the ATerm tuple strings. A fixed-output path must be the one its content
    /// address gives (as in current Nix; otherwise two files meaning the same derivation
    /// would hash differently).
    pub fn from_aterm_fields(
        store_dir: &StoreDir,
        drv_name: &str,
        output: &str,
        path: &str,
        hash_algo: &str,
        hash: &str,
    ) -> Result<Self> {
        let bad = |reason: String| Error::BadDerivation {
            name: excerpt(drv_name),
            reason,
        };
        if hash_algo.is_empty() {
            if !hash.is_empty() {
                return Err(bad(format!(
                    "output '{output}' has a hash but no hash algorithm"
                )));
            }
            if path.is_empty() {
                return Ok(DerivationOutput::Deferred);
            }
            return Ok(DerivationOutput::InputAddressed(
                store_dir.parse_path(path)?,
            ));
        }
        let (method, algo) = ContentAddressMethod::parse_drv_algo(hash_algo)?;
        if hash == "impure" {
            if !path.is_empty() {
                return Err(bad(format!(
                    "impure output '{output}' must not specify a path"
                )));
            }
            return Ok(DerivationOutput::Impure { method, algo });
        }
        if hash.is_empty() {
            if !path.is_empty() {
                return Err(bad(format!(
                    "floating content-addressed output '{output}' must not specify a path"
                )));
            }
            return Ok(DerivationOutput::CAFloating { method, algo });
        }
        let stated = store_dir.parse_path(path)?;
        let ca = ContentAddress::new(method, Hash::parse_digest(hash, algo)?)?;
        let out = DerivationOutput::CAFixed(ca);
        let expected = out.path(store_dir, drv_name, output)?;
        if expected.as_ref() != Some(&stated) {
            return Err(bad(format!(
                "output '{output}' has path '{path}', which does not match its content address (expected '{}')",
                expected.map(|p| store_dir.print(&p)).unwrap_or_default()
            )));
        }
        Ok(out)
    }
}

/// The kind of a derivation, from the kinds of its outputs (Nix's `DerivationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivationType {
    /// All outputs input-addressed (`deferred`: their paths are not known yet).
    InputAddressed {
        deferred: bool,
    },
    /// Content-addressed: one fixed output `out` (`fixed`), or floating outputs.
    ContentAddressed {
        fixed: bool,
    },
    Impure,
}

impl DerivationType {
    pub fn is_fixed(self) -> bool {
        self == DerivationType::ContentAddressed { fixed: true }
    }

    /// Whether the build runs in the network-less sandbox (all but fixed-output and impure).
    pub fn is_sandboxed(self) -> bool {
        !matches!(
            self,
            DerivationType::ContentAddressed { fixed: true } | DerivationType::Impure
        )
    }
}

fn derivation_type_of(
    name: &str,
    outputs: &BTreeMap<String, DerivationOutput>,
) -> Result<DerivationType> {
    let bad = |reason: &str| Error::BadDerivation {
        name: excerpt(name),
        reason: reason.into(),
    };
    let (mut ia, mut fixed, mut floating, mut deferred, mut impure) = (0, 0, 0, 0, 0);
    let mut floating_algo = None;
    for o in outputs.values() {
        match o {
            DerivationOutput::InputAddressed(_) => ia += 1,
            DerivationOutput::CAFixed(_) => fixed += 1,
            DerivationOutput::CAFloating { algo, .. } => {
                if floating_algo.is_some_and(|a| a != *algo) {
                    return Err(bad("all floating outputs must use the same hash algorithm"));
                }
                floating_algo = Some(*algo);
                floating += 1;
            }
            DerivationOutput::Deferred => deferred += 1,
            DerivationOutput::Impure { .. } => impure += 1,
        }
    }
    let total = outputs.len();
    if total == 0 {
        return Err(bad("a derivation must have at least one output"));
    }
    if ia == total {
        Ok(DerivationType::InputAddressed { deferred: false })
    } else if fixed == total {
        if fixed > 1 {
            return Err(bad("only one fixed output is allowed"));
        }
        if !outputs.contains_key("out") {
            return Err(bad("a single fixed output must be named \"out\""));
        }
        Ok(DerivationType::ContentAddressed { fixed: true })
    } else if floating == total {
        Ok(DerivationType::ContentAddressed { fixed: false })
    } else if deferred == total {
        Ok(DerivationType::InputAddressed { deferred: true })
    } else if impure == total {
        Ok(DerivationType::Impure)
    } else {
        Err(bad("can't mix derivation output types"))
    }
}

/// A parsed `.drv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// The derivation name: the `.drv` store path name without `.drv` (normally also
    /// `env["name"]`). Needed to compute output paths; not part of the ATerm.
    pub name: String,
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// Input derivation paths and the outputs wanted from each.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    pub input_srcs: BTreeSet<StorePath>,
    /// `system`, e.g. `x86_64-linux`.
    pub platform: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// A derivation without input derivations (BuildDerivation, op 36): its inputs are all
/// store paths already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicDerivation {
    pub name: String,
    pub outputs: BTreeMap<String, DerivationOutput>,
    pub input_srcs: BTreeSet<StorePath>,
    pub platform: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl BasicDerivation {
    pub fn derivation_type(&self) -> Result<DerivationType> {
        derivation_type_of(&self.name, &self.outputs)
    }

    /// Statically known output paths (`None` for floating, deferred and impure outputs).
    pub fn output_paths(
        &self,
        store_dir: &StoreDir,
    ) -> Result<BTreeMap<String, Option<StorePath>>> {
        output_paths_of(store_dir, &self.name, &self.outputs)
    }

    /// As a [`Derivation`] with no input derivations.
    pub fn into_derivation(self) -> Derivation {
        Derivation {
            name: self.name,
            outputs: self.outputs,
            input_drvs: BTreeMap::new(),
            input_srcs: self.input_srcs,
            platform: self.platform,
            builder: self.builder,
            args: self.args,
            env: self.env,
        }
    }
}

impl From<Derivation> for BasicDerivation {
    /// Drops the input derivations.
    fn from(d: Derivation) -> Self {
        BasicDerivation {
            name: d.name,
            outputs: d.outputs,
            input_srcs: d.input_srcs,
            platform: d.platform,
            builder: d.builder,
            args: d.args,
            env: d.env,
        }
    }
}

fn output_paths_of(
    store_dir: &StoreDir,
    name: &str,
    outputs: &BTreeMap<String, DerivationOutput>,
) -> Result<BTreeMap<String, Option<StorePath>>> {
    outputs
        .iter()
        .map(|(o, out)| Ok((o.clone(), out.path(store_dir, name, o)?)))
        .collect()
}

/// The placeholder Nix puts in a derivation for an output whose path is not known at
/// evaluation time: `/` + nix32(sha256("nix-output:<output>")). Builders see it replaced by
/// the real path.
pub fn hash_placeholder(output: &str) -> String {
    format!(
        "/{}",
        nixbase32::encode(Hash::sha256(format!("nix-output:{output}")).digest())
    )
}

/// Whether a derivation's hash modulo is final, or depends on a floating/impure output not
/// built yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DrvHashKind {
    Regular,
    Deferred,
}

/// A derivation's hash modulo, per output (all equal except for fixed-output derivations,
/// whose only output has its fixed hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvHashModulo {
    pub hashes: BTreeMap<String, Hash>,
    pub kind: DrvHashKind,
}

impl DrvHashModulo {
    /// The hash of one output.
    pub fn get(&self, output: &str) -> Option<&Hash> {
        self.hashes.get(output)
    }
}

impl Derivation {
    /// Parses a `.drv` whose derivation name is `name` (its path's name without `.drv`).
    pub fn parse(store_dir: &StoreDir, text: &[u8], name: &str) -> Result<Self> {
        validate_name(&format!("{name}{DRV_EXTENSION}"))?;
        aterm::parse(store_dir, text, name)
    }

    /// Parses the `.drv` stored at `drv_path`, taking the name from the path.
    pub fn parse_at(store_dir: &StoreDir, drv_path: &StorePath, text: &[u8]) -> Result<Self> {
        let name = drv_path
            .derivation_name()
            .ok_or_else(|| Error::BadDerivation {
                name: drv_path.to_string(),
                reason: "not a derivation path (no '.drv' suffix)".into(),
            })?;
        aterm::parse(store_dir, text, name)
    }

    /// The canonical ATerm text.
    pub fn to_aterm(&self, store_dir: &StoreDir) -> Result<String> {
        aterm::print(self, store_dir, false, aterm::Inputs::Paths)
    }

    /// `env["name"]`, which the evaluator sets to the derivation name.
    pub fn env_name(&self) -> Option<&str> {
        self.env.get("name").map(String::as_str)
    }

    /// Input sources and input derivation paths: the references of the `.drv` file.
    pub fn references(&self) -> BTreeSet<StorePath> {
        let mut refs = self.input_srcs.clone();
        refs.extend(self.input_drvs.keys().cloned());
        refs
    }

    /// The store path the `.drv` is (or would be) written to.
    pub fn drv_path(&self, store_dir: &StoreDir) -> Result<StorePath> {
        let text = self.to_aterm(store_dir)?;
        store_dir.make_text_path(
            &format!("{}{DRV_EXTENSION}", self.name),
            &Hash::sha256(text),
            &self.references(),
        )
    }

    pub fn derivation_type(&self) -> Result<DerivationType> {
        derivation_type_of(&self.name, &self.outputs)
    }

    /// Statically known output paths (`None` for floating, deferred and impure outputs).
    pub fn output_paths(
        &self,
        store_dir: &StoreDir,
    ) -> Result<BTreeMap<String, Option<StorePath>>> {
        output_paths_of(store_dir, &self.name, &self.outputs)
    }

    /// The text hashed by [`Derivation::hash_modulo`] for a non-fixed-output derivation:
    /// input derivation paths replaced by the base16 hash modulo of the outputs used.
    /// `input_hash` returns each input derivation's (unmasked) hash modulo.
    pub fn modulo_aterm(
        &self,
        store_dir: &StoreDir,
        mask_outputs: bool,
        mut input_hash: impl FnMut(&StorePath) -> Result<DrvHashModulo>,
    ) -> Result<(String, DrvHashKind)> {
        let mut kind = match self.derivation_type()? {
            DerivationType::ContentAddressed { fixed: false } | DerivationType::Impure => {
                DrvHashKind::Deferred
            }
            _ => DrvHashKind::Regular,
        };
        let mut replaced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (drv_path, outputs) in &self.input_drvs {
            let h = input_hash(drv_path)?;
            if h.kind == DrvHashKind::Deferred {
                kind = DrvHashKind::Deferred;
            }
            for o in outputs {
                let oh = h.get(o).ok_or_else(|| Error::DrvHash {
                    name: excerpt(&self.name),
                    reason: format!(
                        "input derivation '{}' has no output '{o}'",
                        store_dir.print(drv_path)
                    ),
                })?;
                replaced
                    .entry(oh.to_base16())
                    .or_default()
                    .insert(o.clone());
            }
        }
        let text = aterm::print(
            self,
            store_dir,
            mask_outputs,
            aterm::Inputs::Replaced(&replaced),
        )?;
        Ok((text, kind))
    }

    /// Nix's `hashDerivationModulo`. Inputs are hashed *unmasked* by the caller, normally
    /// through [`DrvHashes`]; output paths of input-addressed derivations use `mask = true`.
    pub fn hash_modulo(
        &self,
        store_dir: &StoreDir,
        mask_outputs: bool,
        input_hash: impl FnMut(&StorePath) -> Result<DrvHashModulo>,
    ) -> Result<DrvHashModulo> {
        if self.derivation_type()?.is_fixed() {
            let mut hashes = BTreeMap::new();
            for (o, out) in &self.outputs {
                if let DerivationOutput::CAFixed(ca) = out {
                    let path = out
                        .path(store_dir, &self.name, o)?
                        .map(|p| store_dir.print(&p))
                        .unwrap_or_default();
                    let fp = format!(
                        "fixed:out:{}:{}:{path}",
                        ca.method().render_drv_algo(ca.hash().algo()),
                        ca.hash().to_base16()
                    );
                    hashes.insert(o.clone(), Hash::sha256(fp));
                }
            }
            return Ok(DrvHashModulo {
                hashes,
                kind: DrvHashKind::Regular,
            });
        }
        let (text, kind) = self.modulo_aterm(store_dir, mask_outputs, input_hash)?;
        let h = Hash::sha256(text);
        Ok(DrvHashModulo {
            hashes: self.outputs.keys().map(|o| (o.clone(), h)).collect(),
            kind,
        })
    }

    fn env_problem(&self, store_dir: &StoreDir, output: &str, path: &StorePath) -> Option<String> {
        let want = store_dir.print(path);
        match self.env.get(output) {
            None => Some(format!(
                "missing environment variable '{output}', should be '{want}'"
            )),
            Some(v) if *v != want => Some(format!(
                "incorrect environment variable '{output}': is '{}', should be '{want}'",
                excerpt(v)
            )),
            Some(_) => None,
        }
    }

    /// The checks Nix applies when it reads or registers a `.drv`: a valid combination of
    /// output kinds (a fixed-output derivation has exactly one output, `out`), input-addressed
    /// output paths equal to the ones the hash modulo gives, and an environment variable per
    /// output holding its path. `input_hash` supplies input derivations' hashes modulo.
    pub fn check_invariants(
        &self,
        store_dir: &StoreDir,
        input_hash: impl FnMut(&StorePath) -> Result<DrvHashModulo>,
    ) -> Result<()> {
        let bad = |reason: String| Error::BadDerivation {
            name: excerpt(&self.name),
            reason,
        };
        let ty = self.derivation_type()?;
        let needs_hash = matches!(ty, DerivationType::InputAddressed { deferred: false });
        let modulo = if needs_hash {
            Some(self.hash_modulo(store_dir, true, input_hash)?)
        } else {
            None
        };
        for (o, out) in &self.outputs {
            match out {
                DerivationOutput::InputAddressed(path) => {
                    let Some(m) = &modulo else { continue };
                    if m.kind == DrvHashKind::Deferred {
                        return Err(bad(format!(
                            "output '{o}' has path '{}' but should be deferred (an input is not input-addressed)",
                            store_dir.print(path)
                        )));
                    }
                    let h = m
                        .get(o)
                        .ok_or_else(|| bad(format!("no hash for output '{o}'")))?;
                    let want = store_dir.make_output_path(o, h, &self.name)?;
                    if *path != want {
                        return Err(bad(format!(
                            "incorrect output '{}', should be '{}'",
                            store_dir.print(path),
                            store_dir.print(&want)
                        )));
                    }
                    if let Some(p) = self.env_problem(store_dir, o, path) {
                        return Err(bad(p));
                    }
                }
                DerivationOutput::CAFixed(_) => {
                    if let Some(path) = out.path(store_dir, &self.name, o)?
                        && let Some(p) = self.env_problem(store_dir, o, &path)
                    {
                        return Err(bad(p));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Like [`Derivation::check_invariants`], and also that `drv_path` names this
    /// derivation and is the path its text hashes to.
    pub fn check_at(
        &self,
        store_dir: &StoreDir,
        drv_path: &StorePath,
        input_hash: impl FnMut(&StorePath) -> Result<DrvHashModulo>,
    ) -> Result<()> {
        if drv_path.derivation_name() != Some(self.name.as_str()) {
            return Err(Error::BadDerivation {
                name: excerpt(&self.name),
                reason: format!(
                    "name does not match its path '{}'",
                    store_dir.print(drv_path)
                ),
            });
        }
        self.check_invariants(store_dir, input_hash)
    }

    /// What the evaluator does before writing a `.drv`: turns deferred outputs into
    /// input-addressed ones when the hash modulo is known (not when an input is floating or
    /// impure), and fills in empty or missing output environment variables. An
    /// input-addressed output with a wrong path is an error; a wrong environment variable of
    /// a formerly deferred output is corrected (as current Nix does, for old `.drv`s).
    pub fn fill_in_output_paths(
        &mut self,
        store_dir: &StoreDir,
        input_hash: impl FnMut(&StorePath) -> Result<DrvHashModulo>,
    ) -> Result<()> {
        let ty = self.derivation_type()?;
        let modulo = match ty {
            DerivationType::InputAddressed { .. } => {
                Some(self.hash_modulo(store_dir, true, input_hash)?)
            }
            _ => None,
        };
        let names: Vec<String> = self.outputs.keys().cloned().collect();
        for o in names {
            let Some(out) = self.outputs.get(&o).cloned() else {
                continue;
            };
            let (path, overwrite_env) = match (&out, &modulo) {
                (DerivationOutput::Deferred, Some(m)) if m.kind == DrvHashKind::Regular => {
                    let h = m.get(&o).ok_or_else(|| Error::BadDerivation {
                        name: excerpt(&self.name),
                        reason: format!("no hash for output '{o}'"),
                    })?;
                    let p = store_dir.make_output_path(&o, h, &self.name)?;
                    self.outputs
                        .insert(o.clone(), DerivationOutput::InputAddressed(p.clone()));
                    (p, true)
                }
                (DerivationOutput::InputAddressed(p), Some(m)) => {
                    if m.kind == DrvHashKind::Deferred {
                        return Err(Error::BadDerivation {
                            name: excerpt(&self.name),
                            reason: format!("output '{}' should be deferred", store_dir.print(p)),
                        });
                    }
                    let h = m.get(&o).ok_or_else(|| Error::BadDerivation {
                        name: excerpt(&self.name),
                        reason: format!("no hash for output '{o}'"),
                    })?;
                    let want = store_dir.make_output_path(&o, h, &self.name)?;
                    if *p != want {
                        return Err(Error::BadDerivation {
                            name: excerpt(&self.name),
                            reason: format!(
                                "incorrect output '{}', should be '{}'",
                                store_dir.print(p),
                                store_dir.print(&want)
                            ),
                        });
                    }
                    (want, false)
                }
                (DerivationOutput::CAFixed(_), _) => match out.path(store_dir, &self.name, &o)? {
                    Some(p) => (p, false),
                    None => continue,
                },
                _ => continue,
            };
            let printed = store_dir.print(&path);
            match self.env.get_mut(&o) {
                None => {
                    self.env.insert(o.clone(), printed);
                }
                Some(v) if v.is_empty() || overwrite_env => *v = printed,
                Some(v) if *v != printed => {
                    return Err(Error::BadDerivation {
                        name: excerpt(&self.name),
                        reason: format!(
                            "incorrect environment variable '{o}': is '{}', should be '{printed}'",
                            excerpt(v)
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A derivation output identified by the derivation's (masked) hash modulo, as in
/// realisations and BuildResult's `builtOutputs` before the `realisation-with-path-not-hash`
/// feature: `sha256:<base16>!<output>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DrvOutput {
    pub drv_hash: Hash,
    pub output: String,
}

impl DrvOutput {
    /// Parses `<algo>:<digest>!<output>`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadDrvOutput {
            input: excerpt(s),
            reason,
        };
        let (hash, output) = s
            .rsplit_once('!')
            .ok_or_else(|| bad("expected '<hash>!<output>'".into()))?;
        let drv_hash = Hash::parse_prefixed(hash).map_err(|e| bad(e.to_string()))?;
        crate::store_path::validate_output_name(output).map_err(|e| bad(e.to_string()))?;
        Ok(DrvOutput {
            drv_hash,
            output: output.to_owned(),
        })
    }
}

impl std::fmt::Display for DrvOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}!{}", self.drv_hash.to_typed_base16(), self.output)
    }
}

/// Memoised hashes modulo of derivations in a store, loaded through a caller-supplied
/// function (core does no I/O). Walks input derivations iteratively, so deep graphs cannot
/// overflow the stack; a cycle (impossible in a real store) is reported as an error.
pub struct DrvHashes<F> {
    store_dir: StoreDir,
    load: F,
    memo: HashMap<StorePath, DrvHashModulo>,
}

impl<F: FnMut(&StorePath) -> Result<Derivation>> DrvHashes<F> {
    pub fn new(store_dir: StoreDir, load: F) -> Self {
        DrvHashes {
            store_dir,
            load,
            memo: HashMap::new(),
        }
    }

    /// The unmasked hash modulo of the derivation at `drv_path` (the value used when it is
    /// an input of another derivation).
    pub fn get(&mut self, drv_path: &StorePath) -> Result<DrvHashModulo> {
        if let Some(h) = self.memo.get(drv_path) {
            return Ok(h.clone());
        }
        let mut stack: Vec<(StorePath, Derivation)> =
            vec![(drv_path.clone(), (self.load)(drv_path)?)];
        let mut in_progress: HashSet<StorePath> = HashSet::from([drv_path.clone()]);
        while let Some((_, drv)) = stack.last() {
            let next = drv
                .input_drvs
                .keys()
                .find(|p| !self.memo.contains_key(*p))
                .cloned();
            if let Some(next) = next {
                if !in_progress.insert(next.clone()) {
                    return Err(Error::DrvHash {
                        name: next.to_string(),
                        reason: "cycle in input derivations".into(),
                    });
                }
                let d = (self.load)(&next)?;
                stack.push((next, d));
                continue;
            }
            let Some((path, drv)) = stack.pop() else {
                break;
            };
            let memo = &self.memo;
            let h = drv.hash_modulo(&self.store_dir, false, |p| {
                memo.get(p).cloned().ok_or_else(|| Error::DrvHash {
                    name: p.to_string(),
                    reason: "input derivation hash missing".into(),
                })
            })?;
            in_progress.remove(&path);
            self.memo.insert(path, h);
        }
        self.memo
            .get(drv_path)
            .cloned()
            .ok_or_else(|| Error::DrvHash {
                name: drv_path.to_string(),
                reason: "hash was not computed".into(),
            })
    }

    /// Adds a known hash (e.g. of a derivation the caller just wrote).
    pub fn insert(&mut self, drv_path: StorePath, hash: DrvHashModulo) {
        self.memo.insert(drv_path, hash);
    }

    /// A closure suitable for the `input_hash` parameters of [`Derivation`]'s methods.
    pub fn lookup(&mut self) -> impl FnMut(&StorePath) -> Result<DrvHashModulo> + '_ {
        move |p| self.get(p)
    }
}

#[cfg(test)]
mod tests;
