//! Upstream Nix's golden derivation vectors (`shared/vectors/nix/libstore/derivation/`):
//! ATerm parse / byte-identical print, the `bad-*` files rejected, hash modulo intermediate
//! texts, fill-in-output-paths invariants, and the JSON forms mapped onto our types.
//! Skips cleanly when the vectors are absent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use nixnest_core::derivation::{DrvHashKind, hash_placeholder};
use nixnest_core::{
    ContentAddress, ContentAddressMethod, Derivation, DerivationOutput, DrvHashes, Error, Hash,
    HashAlgo, StoreDir, StorePath,
};
use serde_json::Value;

fn method(s: &str) -> ContentAddressMethod {
    match s {
        "flat" => ContentAddressMethod::Flat,
        "nar" => ContentAddressMethod::NixArchive,
        "text" => ContentAddressMethod::Text,
        other => panic!("unmodelled method {other}"),
    }
}

fn output_from_json(j: &Value) -> DerivationOutput {
    let o = j.as_object().unwrap();
    if let Some(p) = o.get("path") {
        return DerivationOutput::InputAddressed(
            StorePath::from_base_name(p.as_str().unwrap()).unwrap(),
        );
    }
    if let Some(h) = o.get("hash") {
        let hash = Hash::parse_sri(h.as_str().unwrap()).unwrap();
        return DerivationOutput::CAFixed(
            ContentAddress::new(method(o["method"].as_str().unwrap()), hash).unwrap(),
        );
    }
    if let Some(a) = o.get("hashAlgo") {
        let m = method(o["method"].as_str().unwrap());
        let algo = HashAlgo::parse(a.as_str().unwrap()).unwrap();
        if o.get("impure") == Some(&Value::Bool(true)) {
            return DerivationOutput::Impure { method: m, algo };
        }
        return DerivationOutput::CAFloating { method: m, algo };
    }
    assert!(o.is_empty(), "unexpected output {j}");
    DerivationOutput::Deferred
}

/// Upstream's JSON (format version 4) as our type; `None` for features we do not model.
fn drv_from_json(j: &Value) -> Option<Derivation> {
    assert_eq!(j["version"], 4);
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().into())
            .collect()
    };
    let mut input_drvs = BTreeMap::new();
    for (path, node) in j["inputs"]["drvs"].as_object().unwrap() {
        if !node["dynamicOutputs"].as_object().unwrap().is_empty() {
            return None;
        }
        input_drvs.insert(
            StorePath::from_base_name(path).unwrap(),
            strs(&node["outputs"]).into_iter().collect(),
        );
    }
    let mut env: BTreeMap<String, String> = j["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
        .collect();
    if let Some(sa) = j.get("structuredAttrs") {
        // Nix keeps structured attrs in the `__json` variable: compact JSON, keys sorted.
        env.insert("__json".into(), serde_json::to_string(sa).unwrap());
    }
    Some(Derivation {
        name: j["name"].as_str().unwrap().into(),
        outputs: j["outputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), output_from_json(v)))
            .collect(),
        input_drvs,
        input_srcs: strs(&j["inputs"]["srcs"])
            .iter()
            .map(|s| StorePath::from_base_name(s).unwrap())
            .collect(),
        platform: j["system"].as_str().unwrap().into(),
        builder: j["builder"].as_str().unwrap().into(),
        args: strs(&j["args"]),
        env,
    })
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Parses, checks the byte-identical print, and returns the derivation.
fn parse_round_trip(sd: &StoreDir, path: &Path, name: &str) -> Derivation {
    let text = read(path);
    let drv =
        Derivation::parse(sd, &text, name).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        drv.to_aterm(sd).unwrap().as_bytes(),
        &text[..],
        "{} does not print identically",
        path.display()
    );
    drv
}

#[test]
fn simple_and_real_world_drvs() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let dir = v.join("libstore/derivation");
    let sd = StoreDir::default();
    let simple = parse_round_trip(&sd, &dir.join("simple-derivation.drv"), "simple-derivation");
    let want = drv_from_json(&common::read_json(&dir.join("simple-derivation.json"))).unwrap();
    assert_eq!(simple, want);
    // No outputs: parses and prints, but is not a valid derivation to hash or build.
    assert!(simple.derivation_type().is_err());

    // Real nixpkgs derivations whose hash parts upstream replaced by `aaaa…`: input paths
    // that sorted by hash before now tie, so the file is no longer in canonical order and
    // cannot print byte-identically. Check the parse, and that printing is lossless.
    for (file, name) in [
        ("hello.drv", "hello-2.12.2"),
        ("firefox.drv", "firefox-140.0.4"),
    ] {
        let text = read(&dir.join(file));
        let drv = Derivation::parse(&sd, &text, name).unwrap();
        assert_eq!(drv.outputs.len(), 1);
        assert!(drv.input_drvs.len() >= 4, "{file}");
        let printed = drv.to_aterm(&sd).unwrap();
        assert_eq!(printed.len(), text.len(), "{file}");
        assert_eq!(
            Derivation::parse(&sd, printed.as_bytes(), name).unwrap(),
            drv
        );
        let mut a = printed.into_bytes();
        let mut b = text.clone();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "{file}: same bytes, other order");
    }
}

#[test]
fn bad_drvs_are_rejected() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let dir = v.join("libstore/derivation");
    let sd = StoreDir::default();
    for (file, name, why) in [
        (
            "bad-ca-fixed-path.drv",
            "fixed",
            "does not match its content address",
        ),
        (
            "bad-version.drv",
            "whatever",
            "unknown derivation ATerm format version",
        ),
        (
            "bad-old-version-dyn-deps.drv",
            "dyn-dep-derivation",
            "dynamic derivation input",
        ),
        // Not "bad" upstream, but it needs the experimental dynamic-derivations format.
        ("dyn-dep-derivation.drv", "dyn-dep-derivation", "xp-dyn-drv"),
    ] {
        match Derivation::parse(&sd, &read(&dir.join(file)), name) {
            Err(e @ Error::DrvParse { .. }) => assert!(e.to_string().contains(why), "{file}: {e}"),
            other => panic!("{file}: expected a parse error, got {other:?}"),
        }
    }
    eprintln!(
        "note: dyn-dep-derivation.{{drv,json}} use dynamic derivations (xp-dyn-drv), not modelled"
    );
    let dyn_json = common::read_json(&dir.join("dyn-dep-derivation.json"));
    assert!(drv_from_json(&dyn_json).is_none());
}

#[test]
fn hash_modulo_vectors() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let dir = v.join("libstore/derivation/hash-modulo");
    let sd = StoreDir::default();
    let stems = [
        "source-first",
        "source-second",
        "intermediate-first",
        "intermediate-second",
        "parent-split",
        "parent-joined",
    ];
    let mut by_stem = BTreeMap::new();
    let mut by_path = HashMap::new();
    for stem in stems {
        let want = drv_from_json(&common::read_json(&dir.join(format!("{stem}.json")))).unwrap();
        let drv = parse_round_trip(&sd, &dir.join(format!("{stem}.drv")), &want.name);
        assert_eq!(drv, want, "{stem}: ATerm and JSON disagree");
        let path = drv.drv_path(&sd).unwrap();
        by_path.insert(path.clone(), drv.clone());
        by_stem.insert(stem, (path, drv));
    }
    // The input paths in the files are the paths we compute for the inputs.
    let path_of = |stem: &str| by_stem[stem].0.clone();
    let inputs = |stem: &str| {
        by_stem[stem]
            .1
            .input_drvs
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        inputs("intermediate-first"),
        BTreeSet::from([path_of("source-first")])
    );
    assert_eq!(
        inputs("intermediate-second"),
        BTreeSet::from([path_of("source-second")])
    );
    assert_eq!(
        inputs("parent-split"),
        BTreeSet::from([
            path_of("intermediate-first"),
            path_of("intermediate-second")
        ])
    );
    assert_eq!(
        inputs("parent-joined"),
        BTreeSet::from([path_of("intermediate-second")])
    );

    let mut hashes = DrvHashes::new(sd.clone(), |p: &StorePath| {
        by_path.get(p).cloned().ok_or_else(|| Error::DrvHash {
            name: p.to_string(),
            reason: "not in vectors".into(),
        })
    });
    for stem in [
        "intermediate-first",
        "intermediate-second",
        "parent-split",
        "parent-joined",
    ] {
        let drv = &by_stem[stem].1;
        let (text, kind) = drv.modulo_aterm(&sd, true, hashes.lookup()).unwrap();
        assert_eq!(kind, DrvHashKind::Regular);
        let want = String::from_utf8(read(&dir.join(format!("{stem}-modulo.drv")))).unwrap();
        assert_eq!(text, want, "{stem}: modulo ATerm differs");
    }
    // Equal modulo: FODs regardless of builder, and everything downstream of them.
    let h = |stem: &str, hs: &mut DrvHashes<_>| {
        by_stem[stem].1.hash_modulo(&sd, true, hs.lookup()).unwrap()
    };
    assert_eq!(
        h("source-first", &mut hashes),
        h("source-second", &mut hashes)
    );
    assert_eq!(
        h("intermediate-first", &mut hashes),
        h("intermediate-second", &mut hashes)
    );
    assert_eq!(
        h("parent-split", &mut hashes),
        h("parent-joined", &mut hashes)
    );
    // The sources are consistent fixed-output .drvs.
    for stem in ["source-first", "source-second"] {
        let (path, drv) = &by_stem[stem];
        drv.check_at(&sd, path, hashes.lookup())
            .unwrap_or_else(|e| panic!("{stem}: {e}"));
    }
    // Upstream made the intermediates from deferred outputs and an empty env, then filled in
    // the output paths: doing the same must give exactly the outputs and env in the files.
    for stem in ["intermediate-first", "intermediate-second"] {
        let (_, drv) = &by_stem[stem];
        let mut fresh = drv.clone();
        fresh.env.clear();
        for out in fresh.outputs.values_mut() {
            *out = DerivationOutput::Deferred;
        }
        fresh.fill_in_output_paths(&sd, hashes.lookup()).unwrap();
        assert_eq!(&fresh, drv, "{stem}");
    }
    // The parents' deferred output becomes input-addressed once filled in.
    let mut parent = by_stem["parent-split"].1.clone();
    parent.fill_in_output_paths(&sd, hashes.lookup()).unwrap();
    assert!(matches!(
        parent.outputs["out"],
        DerivationOutput::InputAddressed(_)
    ));
}

#[test]
fn fill_in_invariants() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let dir = v.join("libstore/derivation/invariants");
    let sd = StoreDir::default();
    let load = |f: &str| drv_from_json(&common::read_json(&dir.join(f))).unwrap();
    let no_inputs = |p: &StorePath| -> nixnest_core::Result<_> {
        Err(Error::DrvHash {
            name: p.to_string(),
            reason: "no inputs expected".into(),
        })
    };

    for stem in [
        "filled-in-deferred-empty-env-var",
        "filled-in-deferred-no-env-var",
    ] {
        let mut pre = load(&format!("{stem}-pre.json"));
        pre.fill_in_output_paths(&sd, no_inputs).unwrap();
        assert_eq!(pre, load(&format!("{stem}-post.json")), "{stem}");
    }
    // With the env var present (empty) while hashing, the filled-in derivation is also
    // consistent by Nix's read-time check. (Without it, the masked text changes once the
    // variable is added, so the check rejects it — as Nix's does.)
    load("filled-in-deferred-empty-env-var-post.json")
        .check_invariants(&sd, no_inputs)
        .unwrap();
    assert!(
        load("filled-in-deferred-no-env-var-post.json")
            .check_invariants(&sd, no_inputs)
            .is_err()
    );
    let already = load("filled-in-idempotent.json");
    let mut again = already.clone();
    again.fill_in_output_paths(&sd, no_inputs).unwrap();
    assert_eq!(again, already);

    let mut bad = load("bad-path.json");
    assert!(bad.fill_in_output_paths(&sd, no_inputs).is_err());
    assert!(bad.check_invariants(&sd, no_inputs).is_err());

    // A wrong env var on a deferred output is corrected (current Nix warns and fixes it).
    let mut env = load("bad-env-var.json");
    env.fill_in_output_paths(&sd, no_inputs).unwrap();
    env.check_invariants(&sd, no_inputs).unwrap();

    // The floating-CA dependency upstream builds in its test: its path must match the one
    // the vectors reference, and it keeps its dependants deferred.
    let dep = Derivation {
        name: "dependency".into(),
        outputs: BTreeMap::from([(
            "out".into(),
            DerivationOutput::CAFloating {
                method: ContentAddressMethod::NixArchive,
                algo: HashAlgo::Sha256,
            },
        )]),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: "/bin/sh".into(),
        args: vec![],
        env: BTreeMap::from([("out".into(), String::new())]),
    };
    let dep_path = dep.drv_path(&sd).unwrap();
    assert_eq!(
        dep_path.to_string(),
        "lg4c4b8r9hlczwprl6kgnzfd9mc1xmkk-dependency.drv"
    );
    let mut hashes = DrvHashes::new(sd.clone(), |p: &StorePath| {
        if *p == dep_path {
            Ok(dep.clone())
        } else {
            Err(Error::DrvHash {
                name: p.to_string(),
                reason: "?".into(),
            })
        }
    });
    let pre = load("depends-on-drv-pre.json");
    let mut filled = pre.clone();
    filled.fill_in_output_paths(&sd, hashes.lookup()).unwrap();
    assert_eq!(filled, pre, "stays deferred");
    filled.check_invariants(&sd, hashes.lookup()).unwrap();
    let mut bad = load("bad-depends-on-drv-pre.json");
    assert!(bad.fill_in_output_paths(&sd, hashes.lookup()).is_err());
    assert!(bad.check_invariants(&sd, hashes.lookup()).is_err());
}

#[test]
fn output_json_vectors() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let dir = v.join("libstore/derivation");
    let sd = StoreDir::default();
    let cases = [
        (
            "output-inputAddressed.json",
            (
                "/nix/store/c015dhfh5l0lp6wxyvdn7bmwhbbr6hr9-drv-name-output-name",
                "",
                "",
            ),
        ),
        (
            "output-caFixedFlat.json",
            (
                "*",
                "sha256",
                "894517c9163c896ec31a2adbd33c0681fd5f45b2c0ef08a64c92a03fb97f390f",
            ),
        ),
        (
            "output-caFixedNAR.json",
            (
                "*",
                "r:sha256",
                "894517c9163c896ec31a2adbd33c0681fd5f45b2c0ef08a64c92a03fb97f390f",
            ),
        ),
        (
            "output-caFixedText.json",
            (
                "*",
                "text:sha256",
                "894517c9163c896ec31a2adbd33c0681fd5f45b2c0ef08a64c92a03fb97f390f",
            ),
        ),
        ("output-caFloating.json", ("", "r:sha256", "")),
        ("output-deferred.json", ("", "", "")),
        ("output-impure.json", ("", "r:sha256", "impure")),
    ];
    for (file, (path, algo, hash)) in cases {
        let out = output_from_json(&common::read_json(&dir.join(file)));
        let (p, a, h) = out.to_aterm_fields(&sd, "drv-name", "output-name").unwrap();
        if path == "*" {
            assert!(sd.parse_path(&p).is_ok(), "{file}: {p}");
        } else {
            assert_eq!(p, path, "{file}");
        }
        assert_eq!((a.as_str(), h.as_str()), (algo, hash), "{file}");
        let back = DerivationOutput::from_aterm_fields(&sd, "drv-name", "output-name", &p, &a, &h)
            .unwrap();
        assert_eq!(back, out, "{file}");
    }
}

/// `ca/` and `ia/`: only the JSON is usable here — the `.drv` files are symlinks into
/// upstream's functional tests, which the vectors do not include.
#[test]
fn advanced_attributes_json() {
    let Some(v) = common::nix_vectors() else {
        return;
    };
    let sd = StoreDir::default();
    let mut checked = 0;
    for sub in ["ca", "ia"] {
        let dir = v.join("libstore/derivation").join(sub);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "drv") {
                let target = String::from_utf8_lossy(&read(&path)).into_owned();
                if target.starts_with("../") {
                    eprintln!(
                        "skip {}: symlink to {target} (not in the vectors)",
                        path.display()
                    );
                    continue;
                }
            }
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let drv = drv_from_json(&common::read_json(&path)).unwrap();
            let text = drv.to_aterm(&sd).unwrap();
            assert_eq!(
                Derivation::parse(&sd, text.as_bytes(), &drv.name).unwrap(),
                drv,
                "{}",
                path.display()
            );
            if sub == "ca" {
                // Floating CA outputs appear in env as placeholders.
                for o in drv.outputs.keys() {
                    assert_eq!(
                        drv.env
                            .get(o)
                            .cloned()
                            .unwrap_or_else(|| hash_placeholder(o)),
                        hash_placeholder(o)
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
}
