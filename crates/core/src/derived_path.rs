//! `DerivedPath`: "this store path" or "these outputs of this derivation", as clients ask
//! for them in BuildPaths, QueryMissing, BuildPathsWithResults.
//!
//! Protocol ≥ 1.30:
//! ```text
//! <store path>                    Opaque: the path itself (a .drv means the file)
//! <drv path>!<out1>,<out2>,…      Built: those outputs (written sorted)
//! <drv path>!*                    Built: all outputs
//! ```
//! Protocol < 1.30 ("StorePathWithOutputs"): `<path>` or `<path>!<out1>,…`; a bare `.drv`
//! path means *all outputs*, there is no `*`, and an opaque `.drv` cannot be expressed.
//!
//! New Nix's dynamic derivations (`<drv>!<out>!<out>`) are rejected with an explicit message.

use std::collections::BTreeSet;
use std::fmt;

use crate::error::{Error, Result, excerpt};
use crate::store_path::{StoreDir, StorePath, validate_output_name};

/// Which outputs of a derivation are wanted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputsSpec {
    /// `*`
    All,
    /// A non-empty set of output names (use [`OutputsSpec::names`] to build one checked).
    Names(BTreeSet<String>),
}

impl OutputsSpec {
    /// A checked, non-empty set of output names.
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Result<Self> {
        let names: BTreeSet<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() {
            return Err(Error::BadDerivedPath {
                input: String::new(),
                reason: "no output names".into(),
            });
        }
        for n in &names {
            validate_output_name(n)?;
        }
        Ok(OutputsSpec::Names(names))
    }

    /// Parses `*` or `out1,out2,…`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "*" {
            return Ok(OutputsSpec::All);
        }
        if s.is_empty() {
            return Err(Error::BadDerivedPath {
                input: String::new(),
                reason: "empty output list".into(),
            });
        }
        Self::names(s.split(','))
    }

    /// Whether `output` is included.
    pub fn contains(&self, output: &str) -> bool {
        match self {
            OutputsSpec::All => true,
            OutputsSpec::Names(n) => n.contains(output),
        }
    }
}

impl fmt::Display for OutputsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputsSpec::All => f.write_str("*"),
            OutputsSpec::Names(names) => {
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(n)?;
                }
                Ok(())
            }
        }
    }
}

/// A path to realise: an existing store object or outputs of a derivation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DerivedPath {
    Opaque(StorePath),
    Built {
        drv_path: StorePath,
        outputs: OutputsSpec,
    },
}

fn parse_built(store_dir: &StoreDir, whole: &str, drv: &str, outputs: &str) -> Result<DerivedPath> {
    let bad = |reason: String| Error::BadDerivedPath {
        input: excerpt(whole),
        reason,
    };
    if drv.contains('!') {
        return Err(bad(
            "nested derivation outputs (dynamic derivations) are not supported".into(),
        ));
    }
    let drv_path = store_dir.parse_path(drv)?;
    if !drv_path.is_derivation() {
        return Err(bad(format!(
            "'{drv}' is not a derivation, so it has no outputs"
        )));
    }
    let outputs = OutputsSpec::parse(outputs).map_err(|e| bad(e.to_string()))?;
    Ok(DerivedPath::Built { drv_path, outputs })
}

impl DerivedPath {
    /// Parses the protocol ≥ 1.30 form.
    pub fn parse(store_dir: &StoreDir, s: &str) -> Result<Self> {
        match s.rsplit_once('!') {
            None => Ok(DerivedPath::Opaque(store_dir.parse_path(s)?)),
            Some((drv, outputs)) => parse_built(store_dir, s, drv, outputs),
        }
    }

    /// Prints the protocol ≥ 1.30 form.
    pub fn print(&self, store_dir: &StoreDir) -> String {
        match self {
            DerivedPath::Opaque(p) => store_dir.print(p),
            DerivedPath::Built { drv_path, outputs } => {
                format!("{}!{outputs}", store_dir.display(drv_path))
            }
        }
    }

    /// Parses the protocol < 1.30 "StorePathWithOutputs" form (bare `.drv` = all outputs).
    pub fn parse_legacy(store_dir: &StoreDir, s: &str) -> Result<Self> {
        match s.rsplit_once('!') {
            None => {
                let p = store_dir.parse_path(s)?;
                if p.is_derivation() {
                    Ok(DerivedPath::Built {
                        drv_path: p,
                        outputs: OutputsSpec::All,
                    })
                } else {
                    Ok(DerivedPath::Opaque(p))
                }
            }
            Some((_, "*")) => Err(Error::BadDerivedPath {
                input: excerpt(s),
                reason:
                    "'*' is not valid before protocol 1.30 (a bare .drv path means all outputs)"
                        .into(),
            }),
            Some((drv, outputs)) => parse_built(store_dir, s, drv, outputs),
        }
    }

    /// Prints the protocol < 1.30 form; an opaque `.drv` has none.
    pub fn print_legacy(&self, store_dir: &StoreDir) -> Result<String> {
        match self {
            DerivedPath::Opaque(p) if p.is_derivation() => Err(Error::BadDerivedPath {
                input: store_dir.print(p),
                reason: "an opaque .drv path cannot be expressed before protocol 1.30".into(),
            }),
            DerivedPath::Opaque(p) => Ok(store_dir.print(p)),
            DerivedPath::Built {
                drv_path,
                outputs: OutputsSpec::All,
            } => Ok(store_dir.print(drv_path)),
            DerivedPath::Built { .. } => Ok(self.print(store_dir)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DRV: &str = "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo.drv";
    const SRC: &str = "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-x";

    #[test]
    fn modern_forms() {
        let sd = StoreDir::default();
        let cases = [
            (
                SRC.to_string(),
                DerivedPath::Opaque(sd.parse_path(SRC).unwrap()),
            ),
            (
                DRV.to_string(),
                DerivedPath::Opaque(sd.parse_path(DRV).unwrap()),
            ),
            (
                format!("{DRV}!*"),
                DerivedPath::Built {
                    drv_path: sd.parse_path(DRV).unwrap(),
                    outputs: OutputsSpec::All,
                },
            ),
            (
                format!("{DRV}!bar,baz"),
                DerivedPath::Built {
                    drv_path: sd.parse_path(DRV).unwrap(),
                    outputs: OutputsSpec::names(["baz", "bar"]).unwrap(),
                },
            ),
        ];
        for (s, want) in cases {
            let got = DerivedPath::parse(&sd, &s).unwrap();
            assert_eq!(got, want, "{s}");
            assert_eq!(got.print(&sd), s);
        }
        // Output names are printed sorted.
        let p = DerivedPath::parse(&sd, &format!("{DRV}!out,dev")).unwrap();
        assert_eq!(p.print(&sd), format!("{DRV}!dev,out"));
    }

    #[test]
    fn legacy_forms() {
        let sd = StoreDir::default();
        let all = DerivedPath::parse_legacy(&sd, DRV).unwrap();
        assert_eq!(
            all,
            DerivedPath::Built {
                drv_path: sd.parse_path(DRV).unwrap(),
                outputs: OutputsSpec::All
            }
        );
        assert_eq!(all.print_legacy(&sd).unwrap(), DRV);
        let some = DerivedPath::parse_legacy(&sd, &format!("{DRV}!out")).unwrap();
        assert_eq!(some.print_legacy(&sd).unwrap(), format!("{DRV}!out"));
        let src = DerivedPath::parse_legacy(&sd, SRC).unwrap();
        assert_eq!(src, DerivedPath::Opaque(sd.parse_path(SRC).unwrap()));
        assert!(
            DerivedPath::Opaque(sd.parse_path(DRV).unwrap())
                .print_legacy(&sd)
                .is_err()
        );
        assert!(DerivedPath::parse_legacy(&sd, &format!("{DRV}!*")).is_err());
    }

    #[test]
    fn rejects() {
        let sd = StoreDir::default();
        for bad in [
            format!("{DRV}!"),
            format!("{DRV}!out,"),
            format!("{DRV}!a b"),
            format!("{SRC}!out"),
            format!("{DRV}!bar!baz"),
            "/tmp/x!out".to_string(),
            String::new(),
        ] {
            assert!(DerivedPath::parse(&sd, &bad).is_err(), "{bad}");
        }
        assert!(OutputsSpec::names(Vec::<String>::new()).is_err());
    }

    #[test]
    fn outputs_spec_vectors() {
        // libstore/outputs-spec/{all,name,names}.json hold these sets as JSON lists.
        assert_eq!(OutputsSpec::parse("*").unwrap(), OutputsSpec::All);
        assert_eq!(OutputsSpec::parse("a").unwrap().to_string(), "a");
        assert_eq!(OutputsSpec::parse("b,a").unwrap().to_string(), "a,b");
        assert!(OutputsSpec::All.contains("x"));
        assert!(!OutputsSpec::parse("a").unwrap().contains("b"));
    }

    proptest! {
        #[test]
        fn round_trip(digest in any::<[u8; 20]>(), names in proptest::collection::btree_set("[a-z]{1,8}", 0..4)) {
            let sd = StoreDir::default();
            let drv_path = StorePath::new(digest, "x.drv").unwrap();
            let p = if names.is_empty() {
                DerivedPath::Built { drv_path, outputs: OutputsSpec::All }
            } else {
                DerivedPath::Built { drv_path, outputs: OutputsSpec::Names(names) }
            };
            prop_assert_eq!(DerivedPath::parse(&sd, &p.print(&sd)).unwrap(), p.clone());
            prop_assert_eq!(DerivedPath::parse_legacy(&sd, &p.print_legacy(&sd).unwrap()).unwrap(), p);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,100}") {
            let sd = StoreDir::default();
            let _ = DerivedPath::parse(&sd, &s);
            let _ = DerivedPath::parse_legacy(&sd, &s);
        }
    }
}
