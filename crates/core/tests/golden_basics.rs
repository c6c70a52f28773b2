//! Upstream Nix's golden vectors for hashes, store paths, content addresses and derived
//! paths (`shared/vectors/nix/{libutil/hash,libstore/store-path,libstore/content-address,
//! libstore/derived-path,libstore/outputs-spec}`). Skips cleanly when the vectors are absent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use nixnest_core::{
    ContentAddress, ContentAddressMethod, DerivedPath, Hash, OutputsSpec, StoreDir, StorePath,
};
use serde_json::Value;

#[test]
fn hash_sri_vectors() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let mut checked = 0;
    for entry in std::fs::read_dir(v.join("libutil/hash")).unwrap() {
        let path = entry.unwrap().path();
        let Value::String(sri) = common::read_json(&path) else {
            panic!("{}: not a string", path.display())
        };
        if sri.starts_with("blake3-") {
            eprintln!(
                "skip {}: BLAKE3 is experimental in Nix and not modelled",
                path.display()
            );
            continue;
        }
        let h = Hash::parse_sri(&sri).unwrap();
        assert_eq!(h.to_sri(), sri, "{}", path.display());
        assert_eq!(Hash::parse_any(&sri, None).unwrap(), h);
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn store_path_vector() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let Value::String(base) = common::read_json(&v.join("libstore/store-path/simple.json")) else {
        panic!()
    };
    let p = StorePath::from_base_name(&base).unwrap();
    assert_eq!(p.to_string(), base);
    assert!(p.is_derivation());
    let sd = StoreDir::default();
    assert_eq!(sd.parse_path(&sd.print(&p)).unwrap(), p);
}

fn method_from_json(s: &str) -> Option<ContentAddressMethod> {
    match s {
        "text" => Some(ContentAddressMethod::Text),
        "flat" => Some(ContentAddressMethod::Flat),
        "nar" => Some(ContentAddressMethod::NixArchive),
        _ => None,
    }
}

#[test]
fn content_address_vectors() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    for (file, method) in [
        ("nar.json", ContentAddressMethod::NixArchive),
        ("text.json", ContentAddressMethod::Text),
    ] {
        let j = common::read_json(&v.join("libstore/content-address").join(file));
        let m = method_from_json(j["method"].as_str().unwrap()).unwrap();
        assert_eq!(m, method);
        let hash = Hash::parse_sri(j["hash"].as_str().unwrap()).unwrap();
        let ca = ContentAddress::new(m, hash).unwrap();
        let printed = ca.to_string();
        assert!(printed.starts_with(if m == ContentAddressMethod::Text {
            "text:sha256:"
        } else {
            "fixed:r:sha256:"
        }));
        assert_eq!(ContentAddress::parse(&printed).unwrap(), ca);
    }
}

/// Derived paths in upstream JSON use base names; nested `drvPath` objects are dynamic
/// derivations, which nixnest does not model.
#[test]
fn derived_path_vectors() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let sd = StoreDir::default();
    let mut checked = 0;
    for entry in std::fs::read_dir(v.join("libstore/derived-path")).unwrap() {
        let path = entry.unwrap().path();
        let j = common::read_json(&path);
        let want = match &j {
            Value::String(base) => DerivedPath::Opaque(StorePath::from_base_name(base).unwrap()),
            Value::Object(o) => {
                let Some(Value::String(drv)) = o.get("drvPath") else {
                    eprintln!(
                        "skip {}: dynamic derivation (nested drvPath) not modelled",
                        path.display()
                    );
                    continue;
                };
                let outputs = match (o.get("outputs"), o.get("output")) {
                    (Some(Value::Array(names)), _) => {
                        OutputsSpec::names(names.iter().map(|n| n.as_str().unwrap())).unwrap()
                    }
                    (_, Some(Value::String(one))) => OutputsSpec::names([one.as_str()]).unwrap(),
                    _ => panic!("{}: unexpected shape", path.display()),
                };
                DerivedPath::Built {
                    drv_path: StorePath::from_base_name(drv).unwrap(),
                    outputs,
                }
            }
            _ => panic!("{}: unexpected JSON", path.display()),
        };
        let printed = want.print(&sd);
        assert_eq!(
            DerivedPath::parse(&sd, &printed).unwrap(),
            want,
            "{}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} derived-path vectors checked");
}

#[test]
fn outputs_spec_vectors() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    for dir in ["libstore/outputs-spec", "libstore/outputs-spec/extended"] {
        for entry in std::fs::read_dir(v.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue;
            }
            let spec = match common::read_json(&path) {
                Value::Array(names) if names == [Value::String("*".into())] => OutputsSpec::All,
                Value::Array(names) => {
                    OutputsSpec::names(names.iter().map(|n| n.as_str().unwrap())).unwrap()
                }
                Value::Null => {
                    eprintln!(
                        "skip {}: 'default outputs' exists only in the CLI, not on the wire",
                        path.display()
                    );
                    continue;
                }
                other => panic!("{}: unexpected {other}", path.display()),
            };
            assert_eq!(OutputsSpec::parse(&spec.to_string()).unwrap(), spec);
        }
    }
}
