//! Golden tests over upstream's `worker-protocol/` and `common-protocol/` vectors: each
//! `.bin` holds several values one after another; they must decode to the values in the
//! matching `.json` and re-encode to the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::Path;

use serde_json::Value;

use nixnest_core::{
    ContentAddress, ContentAddressMethod, DerivedPath, Hash, OutputsSpec, StoreDir, StorePath,
    ValidPathInfo,
};

use super::*;
use crate::testutil::vectors_dir;
use crate::version::{FeatureSet, ProtocolVersion, feature};
use crate::wire::testing::block_on;
use crate::wire::{WireReader, WireType, WireWriter};

fn v(minor: u8) -> ProtocolVersion {
    ProtocolVersion::new(1, minor)
}

fn with_path_feature() -> FeatureSet {
    [feature::REALISATION_WITH_PATH_NOT_HASH]
        .into_iter()
        .collect()
}

/// Decodes `expected.len()` values from `file`, compares them, checks nothing is left,
/// and re-encodes them to the file's exact bytes (unless `reencode` is false).
fn check<T: WireType + PartialEq + Debug>(
    dir: &Path,
    file: &str,
    version: ProtocolVersion,
    features: &FeatureSet,
    expected: &[T],
    reencode: bool,
) {
    let bytes = std::fs::read(dir.join(file)).unwrap();
    block_on(async {
        let mut r = WireReader::new(&bytes[..], version, StoreDir::default());
        r.set_features(features.clone());
        for (i, want) in expected.iter().enumerate() {
            let got = T::decode(&mut r)
                .await
                .unwrap_or_else(|e| panic!("{file} value {i}: {e}"));
            assert_eq!(&got, want, "{file} value {i}");
        }
        assert!(r.get_ref().is_empty(), "{file}: trailing bytes");
    });
    if reencode {
        let mut w = WireWriter::new(version, StoreDir::default());
        w.set_features(features.clone());
        for value in expected {
            value.encode(&mut w);
        }
        assert_eq!(w.take().to_vec(), bytes, "{file}: re-encoding differs");
    }
}

fn json(dir: &Path, file: &str) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap()
}

fn items(v: &Value) -> &Vec<Value> {
    v.as_array().expect("json list")
}

fn base(v: &Value) -> StorePath {
    StorePath::from_base_name(v.as_str().unwrap()).unwrap()
}

fn opt_base(v: &Value) -> Option<StorePath> {
    if v.is_null() { None } else { Some(base(v)) }
}

/// Signatures appear as `"key:sig"` strings or `{"keyName":…,"sig":…}` objects.
fn sig(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => format!(
            "{}:{}",
            other["keyName"].as_str().unwrap(),
            other["sig"].as_str().unwrap()
        ),
    }
}

fn sigs(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(sig).collect())
        .unwrap_or_default()
}

fn ca(v: &Value) -> ContentAddress {
    let method = match v["method"].as_str().unwrap() {
        "text" => ContentAddressMethod::Text,
        "flat" => ContentAddressMethod::Flat,
        "nar" => ContentAddressMethod::NixArchive,
        m => panic!("method {m}"),
    };
    ContentAddress::new(
        method,
        Hash::parse_sri(v["hash"].as_str().unwrap()).unwrap(),
    )
    .unwrap()
}

fn opt_ca(v: &Value) -> Option<ContentAddress> {
    if v.is_null() { None } else { Some(ca(v)) }
}

fn realisation(v: &Value) -> Realisation {
    Realisation {
        id: DrvOutput::parse(v["id"].as_str().unwrap()).unwrap(),
        out_path: base(&v["outPath"]),
        signatures: sigs(&v["signatures"]),
        dependent_realisations: v["dependentRealisations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, p)| (DrvOutput::parse(k).unwrap(), base(p)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn unkeyed_realisation(v: &Value) -> UnkeyedRealisation {
    UnkeyedRealisation {
        out_path: base(&v["outPath"]),
        signatures: sigs(&v["signatures"]),
    }
}

fn status(name: &str) -> BuildStatus {
    BuildStatus::ALL
        .into_iter()
        .find(|s| format!("{s:?}") == name)
        .unwrap_or_else(|| panic!("status {name}"))
}

/// `with_path`: builtOutputs carry only outPath/signatures (feature or compat form).
fn build_result(v: &Value, with_path: bool) -> BuildResult {
    let mut built_outputs = BTreeMap::new();
    if let Some(outs) = v["builtOutputs"].as_object() {
        for (name, r) in outs {
            let real = if with_path {
                let u = unkeyed_realisation(r);
                Realisation {
                    id: placeholder_drv_output(name),
                    out_path: u.out_path,
                    signatures: u.signatures,
                    dependent_realisations: BTreeMap::new(),
                }
            } else {
                realisation(r)
            };
            built_outputs.insert(name.clone(), real);
        }
    }
    BuildResult {
        status: status(v["status"].as_str().unwrap()),
        error_msg: v["errorMsg"].as_str().unwrap_or("").to_owned(),
        times_built: v["timesBuilt"].as_u64().unwrap_or(0),
        is_non_deterministic: v["isNonDeterministic"].as_bool().unwrap_or(false),
        start_time: v["startTime"].as_i64().unwrap_or(0),
        stop_time: v["stopTime"].as_i64().unwrap_or(0),
        cpu_user: v["cpuUser"].as_i64(),
        cpu_system: v["cpuSystem"].as_i64(),
        built_outputs,
    }
}

fn derived_path(v: &Value) -> DerivedPath {
    match v {
        Value::String(_) => DerivedPath::Opaque(base(v)),
        obj => {
            let outs: Vec<&str> = items(&obj["outputs"])
                .iter()
                .map(|o| o.as_str().unwrap())
                .collect();
            DerivedPath::Built {
                drv_path: base(&obj["drvPath"]),
                outputs: if outs == ["*"] {
                    OutputsSpec::All
                } else {
                    OutputsSpec::names(outs).unwrap()
                },
            }
        }
    }
}

fn unkeyed_path_info(v: &Value) -> UnkeyedValidPathInfo {
    UnkeyedValidPathInfo {
        deriver: opt_base(&v["deriver"]),
        nar_hash: Hash::parse_sri(v["narHash"].as_str().unwrap()).unwrap(),
        references: items(&v["references"]).iter().map(base).collect(),
        registration_time: v["registrationTime"].as_u64().unwrap(),
        nar_size: v["narSize"].as_u64().unwrap(),
        ultimate: v["ultimate"].as_bool().unwrap(),
        sigs: sigs(&v["signatures"]),
        ca: opt_ca(&v["ca"]),
    }
}

fn strings(v: &Value) -> Vec<String> {
    items(v)
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The value types that `common-protocol/` and `worker-protocol/` share.
fn check_common(dir: &Path) {
    let none = FeatureSet::new();
    let latest = ProtocolVersion::LATEST;
    let j = json(dir, "string.json");
    check(dir, "string.bin", latest, &none, &strings(&j), true);

    let j = json(dir, "vector.json");
    let vs = items(&j);
    // three string lists then a list of lists, one after another
    let bytes = std::fs::read(dir.join("vector.bin")).unwrap();
    block_on(async {
        let mut r = WireReader::new(&bytes[..], latest, StoreDir::default());
        for want in &vs[..3] {
            assert_eq!(Vec::<String>::decode(&mut r).await.unwrap(), strings(want));
        }
        let nested: Vec<Vec<String>> = items(&vs[3]).iter().map(strings).collect();
        assert_eq!(Vec::<Vec<String>>::decode(&mut r).await.unwrap(), nested);
        assert!(r.get_ref().is_empty());
    });
    let mut w = WireWriter::new(latest, StoreDir::default());
    for want in &vs[..3] {
        strings(want).encode(&mut w);
    }
    items(&vs[3])
        .iter()
        .map(strings)
        .collect::<Vec<_>>()
        .encode(&mut w);
    assert_eq!(w.take().to_vec(), bytes, "vector.bin re-encoding");

    let j = json(dir, "set.json");
    let vs = items(&j);
    let bytes = std::fs::read(dir.join("set.bin")).unwrap();
    let mut w = WireWriter::new(latest, StoreDir::default());
    block_on(async {
        let mut r = WireReader::new(&bytes[..], latest, StoreDir::default());
        for want in &vs[..3] {
            let want: BTreeSet<String> = strings(want).into_iter().collect();
            assert_eq!(BTreeSet::<String>::decode(&mut r).await.unwrap(), want);
            want.encode(&mut w);
        }
        let nested: BTreeSet<BTreeSet<String>> = items(&vs[3])
            .iter()
            .map(|s| strings(s).into_iter().collect())
            .collect();
        assert_eq!(
            BTreeSet::<BTreeSet<String>>::decode(&mut r).await.unwrap(),
            nested
        );
        nested.encode(&mut w);
        assert!(r.get_ref().is_empty());
    });
    assert_eq!(w.take().to_vec(), bytes, "set.bin re-encoding");

    let j = json(dir, "store-path.json");
    let want: Vec<StorePath> = items(&j).iter().map(base).collect();
    check(dir, "store-path.bin", latest, &none, &want, true);

    let j = json(dir, "optional-store-path.json");
    let want: Vec<Option<StorePath>> = items(&j).iter().map(opt_base).collect();
    check(dir, "optional-store-path.bin", latest, &none, &want, true);

    let j = json(dir, "content-address.json");
    let want: Vec<ContentAddress> = items(&j).iter().map(ca).collect();
    check(dir, "content-address.bin", latest, &none, &want, true);

    let j = json(dir, "optional-content-address.json");
    let want: Vec<Option<ContentAddress>> = items(&j).iter().map(opt_ca).collect();
    check(
        dir,
        "optional-content-address.bin",
        latest,
        &none,
        &want,
        true,
    );

    let j = json(dir, "drv-output.json");
    let want: Vec<DrvOutput> = items(&j)
        .iter()
        .map(|s| DrvOutput::parse(s.as_str().unwrap()).unwrap())
        .collect();
    check(dir, "drv-output.bin", latest, &none, &want, true);

    let j = json(dir, "realisation-with-deps.json");
    let want: Vec<Realisation> = items(&j).iter().map(realisation).collect();
    check(dir, "realisation-with-deps.bin", latest, &none, &want, true);

    // realisation.bin was written by Nix HEAD, whose JSON spells signatures as
    // {"keyName","sig"} objects. We read that, but write the "key:sig" strings that
    // Nix ≤ 2.34 clients expect, so only the first value (no signatures) re-encodes
    // to the same bytes.
    let j = json(dir, "realisation.json");
    let want: Vec<Realisation> = items(&j).iter().map(realisation).collect();
    check(dir, "realisation.bin", latest, &none, &want, false);
    let bytes = std::fs::read(dir.join("realisation.bin")).unwrap();
    let first = crate::wire::testing::encode(&want[0], latest);
    assert_eq!(&bytes[..first.len()], &first[..]);
}

#[test]
fn common_protocol_vectors() {
    let Some(dir) = vectors_dir("common-protocol") else {
        return;
    };
    check_common(&dir);
}

#[test]
fn worker_protocol_shared_vectors() {
    let Some(dir) = vectors_dir("worker-protocol") else {
        return;
    };
    check_common(&dir);
}

#[test]
fn worker_protocol_build_vectors() {
    let Some(dir) = vectors_dir("worker-protocol") else {
        return;
    };
    let none = FeatureSet::new();
    let j = json(&dir, "build-mode.json");
    let modes = [BuildMode::Normal, BuildMode::Repair, BuildMode::Check];
    assert_eq!(items(&j).len(), 3);
    check(&dir, "build-mode.bin", v(38), &none, &modes, true);

    for (file, minor) in [
        ("build-result-1.27", 27),
        ("build-result-1.28", 28),
        ("build-result-1.29", 29),
        ("build-result-1.37", 37),
    ] {
        let j = json(&dir, &format!("{file}.json"));
        let want: Vec<BuildResult> = items(&j).iter().map(|r| build_result(r, false)).collect();
        check(&dir, &format!("{file}.bin"), v(minor), &none, &want, true);
    }

    // HEAD's form for old clients when it has no drv hash: an all-zero id and JSON with
    // only "id" and "outPath". We decode it; we write the full 2.8-style JSON instead,
    // so the bytes are not expected to match.
    let j = json(&dir, "build-result-1.29-compat.json");
    let want: Vec<BuildResult> = items(&j).iter().map(|r| build_result(r, true)).collect();
    check(
        &dir,
        "build-result-1.29-compat.bin",
        v(29),
        &none,
        &want,
        false,
    );

    let j = json(&dir, "build-result-realisation-with-path-not-hash.json");
    let want: Vec<BuildResult> = items(&j).iter().map(|r| build_result(r, true)).collect();
    check(
        &dir,
        "build-result-realisation-with-path-not-hash.bin",
        v(38),
        &with_path_feature(),
        &want,
        true,
    );

    let j = json(&dir, "keyed-build-result-1.29.json");
    let want: Vec<KeyedBuildResult> = items(&j)
        .iter()
        .map(|r| KeyedBuildResult {
            path: derived_path(&r["path"]),
            result: build_result(r, false),
        })
        .collect();
    check(
        &dir,
        "keyed-build-result-1.29.bin",
        v(29),
        &none,
        &want,
        true,
    );

    for (file, minor) in [("derived-path-1.29", 29), ("derived-path-1.30", 30)] {
        let j = json(&dir, &format!("{file}.json"));
        let want: Vec<DerivedPath> = items(&j).iter().map(derived_path).collect();
        check(&dir, &format!("{file}.bin"), v(minor), &none, &want, true);
    }
}

#[test]
fn worker_protocol_realisation_feature_vectors() {
    let Some(dir) = vectors_dir("worker-protocol") else {
        return;
    };
    let f = with_path_feature();
    let j = json(&dir, "drv-output-realisation-with-path-not-hash.json");
    let want: Vec<DrvOutputWithPath> = items(&j)
        .iter()
        .map(|d| DrvOutputWithPath {
            drv_path: base(&d["drvPath"]),
            output: d["outputName"].as_str().unwrap().to_owned(),
        })
        .collect();
    check(
        &dir,
        "drv-output-realisation-with-path-not-hash.bin",
        v(38),
        &f,
        &want,
        true,
    );

    let j = json(
        &dir,
        "unkeyed-realisation-realisation-with-path-not-hash.json",
    );
    check(
        &dir,
        "unkeyed-realisation-realisation-with-path-not-hash.bin",
        v(38),
        &f,
        &[unkeyed_realisation(&j)],
        true,
    );

    // A keyed realisation in the feature form is the key followed by the value.
    let j = json(&dir, "realisation-realisation-with-path-not-hash.json");
    let key = DrvOutputWithPath {
        drv_path: base(&j["key"]["drvPath"]),
        output: j["key"]["outputName"].as_str().unwrap().to_owned(),
    };
    let value = unkeyed_realisation(&j["value"]);
    check(
        &dir,
        "realisation-realisation-with-path-not-hash.bin",
        v(38),
        &f,
        &[(key, value)],
        true,
    );
}

#[test]
fn worker_protocol_path_info_vectors() {
    let Some(dir) = vectors_dir("worker-protocol") else {
        return;
    };
    let none = FeatureSet::new();
    let j = json(&dir, "unkeyed-valid-path-info-1.15.json");
    let want: Vec<UnkeyedValidPathInfo> = items(&j).iter().map(unkeyed_path_info).collect();
    check(
        &dir,
        "unkeyed-valid-path-info-1.15.bin",
        v(15),
        &none,
        &want,
        true,
    );

    for (file, minor) in [("valid-path-info-1.15", 15), ("valid-path-info-1.16", 16)] {
        let j = json(&dir, &format!("{file}.json"));
        let want: Vec<ValidPathInfo> = items(&j)
            .iter()
            .map(|i| unkeyed_path_info(i).with_path(base(&i["path"])))
            .collect();
        check(&dir, &format!("{file}.bin"), v(minor), &none, &want, true);
    }
}

/// Every vector file must be used by some test here (or be a handshake vector, tested
/// in `handshake.rs`), so a new upstream vector is noticed.
#[test]
fn every_worker_vector_is_covered() {
    let Some(dir) = vectors_dir("worker-protocol") else {
        return;
    };
    let src = [include_str!("tests.rs"), include_str!("../handshake.rs")].concat();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name.trim_end_matches(".bin").trim_end_matches(".json");
        assert!(
            src.contains(&format!("\"{stem}")),
            "vector {name} is not covered by any test"
        );
    }
}
