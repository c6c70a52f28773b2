//! The builder's environment, arguments and the files Nix puts into the build directory
//! (CppNix 2.8 `initEnv`, `initTmpDir`, `writeStructuredAttrs`, `exportReferencesGraph`;
//! structured-attrs variables as fixed in Nix ≥ 2.18).
//!
//! The environment starts empty, then (later entries override earlier ones):
//!
//! | variable | value |
//! |---|---|
//! | `PATH` | `/path-not-set` |
//! | `HOME` | `/homeless-shelter` |
//! | `NIX_STORE` | the store dir |
//! | `NIX_BUILD_CORES` | the `cores` setting, verbatim |
//! | every derivation variable | plain (non-structured) mode only; a name listed in `passAsFile` becomes `<name>Path=<build dir>/.attr-<nix32(sha256(name))>` and its value goes to that file |
//! | `NIX_BUILD_TOP`, `TMPDIR`, `TEMPDIR`, `TMP`, `TEMP`, `PWD` | the build dir as the builder sees it (`/build` in the sandbox) |
//! | `NIX_OUTPUT_CHECKED` | `1` for fixed-output derivations |
//! | each `impureEnvVars` name | fixed-output/impure only: the daemon's value, or "" |
//! | `NIX_LOG_FD` | `2` |
//! | `TERM` | `xterm-256color` |
//! | `NIX_ATTRS_SH_FILE`, `NIX_ATTRS_JSON_FILE` | structured mode: `<build dir>/.attrs.sh`, `.attrs.json` (in-sandbox paths) |
//! | `NIX_REMOTE` | recursive Nix: `unix://<build dir>/.nix-socket` |
//!
//! Finally every `name=value` string and every argument has the *input rewrites* applied:
//! each output placeholder (`/` + nix32(sha256(`"nix-output:<name>"`))) becomes the output
//! path. `argv[0]` is the builder's base name.
//!
//! Files (all created by the caller in the host build dir, owned by the build user):
//! `.attr-*` for `passAsFile`; `.attrs.json` (the `__json` object plus `outputs` = {name:
//! path}, and for each `exportReferencesGraph` entry the path-info list of that closure)
//! and `.attrs.sh` (bash `declare` lines, see [`attrs_sh`]) in structured mode; one file
//! per `exportReferencesGraph` name in plain mode, in `nix-store --register-validity`
//! format without derivers.

use std::collections::{BTreeMap, BTreeSet};

use nixnest_core::derivation::hash_placeholder;
use nixnest_core::{Derivation, Hash, StorePath, nixbase32};
use nixnest_store::LocalStore;
use serde_json::{Map, Value};

use crate::drvattrs::{DrvAttrs, tokenize};
use crate::error::{Error, Result};

/// Where `NIX_REMOTE` points for recursive Nix, relative to the build dir.
pub const RECURSIVE_SOCKET_NAME: &str = ".nix-socket";

/// What the environment depends on besides the derivation.
pub struct EnvContext<'a> {
    pub store: &'a LocalStore,
    pub drv_path: &'a StorePath,
    /// The input closure (for `exportReferencesGraph`).
    pub input_paths: &'a BTreeSet<StorePath>,
    /// Output name → the path the builder must produce.
    pub output_paths: &'a BTreeMap<String, StorePath>,
    /// The build dir as the builder sees it: `sandbox-build-dir` or the host path.
    pub build_dir_in_sandbox: &'a str,
    pub cores: u64,
    /// Looks up the daemon's environment for `impureEnvVars`.
    pub impure_env: &'a dyn Fn(&str) -> Option<String>,
    /// Set `NIX_REMOTE` to the per-build socket.
    pub recursive_nix: bool,
}

/// The builder's program, arguments (with `argv[0]`), environment and build-dir files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderEnv {
    pub builder: String,
    pub args: Vec<String>,
    /// Sorted by name; values already rewritten.
    pub env: BTreeMap<String, String>,
    /// `(file name in the build dir, contents)`.
    pub files: Vec<(String, Vec<u8>)>,
}

impl BuilderEnv {
    /// `name=value` strings for `execve`.
    pub fn env_strings(&self) -> Vec<String> {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// CppNix's `rewriteStrings`: each rewrite (in key order) replaces all occurrences.
pub fn rewrite(s: &str, rewrites: &BTreeMap<String, String>) -> String {
    let mut s = s.to_owned();
    for (from, to) in rewrites {
        if !from.is_empty() && s.contains(from.as_str()) {
            s = s.replace(from.as_str(), to);
        }
    }
    s
}

/// The name of the `passAsFile` file for attribute `name`.
pub fn pass_as_file_name(name: &str) -> String {
    format!(".attr-{}", nixbase32::encode(Hash::sha256(name).digest()))
}

/// Computes everything the builder gets; see the module docs.
pub fn builder_env(attrs: &DrvAttrs<'_>, cx: &EnvContext<'_>) -> Result<BuilderEnv> {
    let drv = attrs.drv();
    let ty = drv.derivation_type()?;
    let store_dir = cx.store.store_dir();
    let rewrites: BTreeMap<String, String> = cx
        .output_paths
        .iter()
        .map(|(o, p)| (hash_placeholder(o), store_dir.print(p)))
        .collect();
    let top = cx.build_dir_in_sandbox;

    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    env.insert("PATH".into(), "/path-not-set".into());
    env.insert("HOME".into(), "/homeless-shelter".into());
    env.insert("NIX_STORE".into(), store_dir.as_str().to_owned());
    env.insert("NIX_BUILD_CORES".into(), cx.cores.to_string());

    if attrs.structured().is_none() {
        let pass_as_file: BTreeSet<String> = drv
            .env
            .get("passAsFile")
            .map(|v| tokenize(v).into_iter().collect())
            .unwrap_or_default();
        for (k, v) in &drv.env {
            if pass_as_file.contains(k) {
                let file = pass_as_file_name(k);
                env.insert(format!("{k}Path"), format!("{top}/{file}"));
                files.push((file, rewrite(v, &rewrites).into_bytes()));
            } else {
                env.insert(k.clone(), v.clone());
            }
        }
    }
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        env.insert(k.into(), top.to_owned());
    }
    if ty.is_fixed() {
        env.insert("NIX_OUTPUT_CHECKED".into(), "1".into());
    }
    if !ty.is_sandboxed() {
        for k in attrs.get_strings("impureEnvVars")?.unwrap_or_default() {
            let v = (cx.impure_env)(&k).unwrap_or_default();
            env.insert(k, v);
        }
    }
    env.insert("NIX_LOG_FD".into(), "2".into());
    env.insert("TERM".into(), "xterm-256color".into());

    if let Some(structured) = attrs.structured() {
        let json = structured_json(structured, cx, &rewrites)?;
        let sh = attrs_sh(&json);
        files.push((".attrs.sh".into(), rewrite(&sh, &rewrites).into_bytes()));
        env.insert("NIX_ATTRS_SH_FILE".into(), format!("{top}/.attrs.sh"));
        let dumped = canonical_json(&Value::Object(json));
        files.push((
            ".attrs.json".into(),
            rewrite(&dumped, &rewrites).into_bytes(),
        ));
        env.insert("NIX_ATTRS_JSON_FILE".into(), format!("{top}/.attrs.json"));
    } else if let Some(spec) = drv.env.get("exportReferencesGraph") {
        let tokens = tokenize(spec);
        if !tokens.len().is_multiple_of(2) {
            return Err(Error::BadDerivation(format!(
                "odd number of tokens in 'exportReferencesGraph': '{spec}'"
            )));
        }
        for pair in tokens.chunks(2) {
            let [file, path] = pair else { continue };
            if !is_export_file_name(file) {
                return Err(Error::BadDerivation(format!(
                    "invalid file name '{file}' in 'exportReferencesGraph'"
                )));
            }
            let sp = store_path_of(cx.store, path).ok_or_else(|| {
                Error::BadDerivation(format!(
                    "'exportReferencesGraph' contains a non-store path '{path}'"
                ))
            })?;
            let closure = export_references(cx, &[sp])?;
            files.push((
                file.clone(),
                validity_registration(cx.store, &closure)?.into_bytes(),
            ));
        }
    }
    if cx.recursive_nix {
        env.insert(
            "NIX_REMOTE".into(),
            format!("unix://{top}/{RECURSIVE_SOCKET_NAME}"),
        );
    }

    // Rewrite whole `name=value` strings, as CppNix does (a name may contain a placeholder).
    let env = env
        .into_iter()
        .map(|(k, v)| {
            let s = rewrite(&format!("{k}={v}"), &rewrites);
            match s.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (s, String::new()),
            }
        })
        .collect();
    let mut args = vec![builder_basename(&drv.builder)];
    args.extend(drv.args.iter().map(|a| rewrite(a, &rewrites)));
    Ok(BuilderEnv {
        builder: drv.builder.clone(),
        args,
        env,
        files,
    })
}

/// `baseNameOf(builder)`.
fn builder_basename(builder: &str) -> String {
    let trimmed = builder.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(i) => trimmed.get(i + 1..).unwrap_or_default().to_owned(),
        None => trimmed.to_owned(),
    }
}

/// `[A-Za-z_][A-Za-z0-9_.-]*`.
fn is_export_file_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The store path a path string is in (`<store>/<hash>-<name>[/sub…]`).
fn store_path_of(store: &LocalStore, s: &str) -> Option<StorePath> {
    store.store_dir().split_path(s).ok().map(|(p, _)| p)
}

/// CppNix's `exportReferences`: the closures of `paths` (each must be an input), plus the
/// closures of the outputs of any derivation in them.
fn export_references(cx: &EnvContext<'_>, paths: &[StorePath]) -> Result<BTreeSet<StorePath>> {
    let store_dir = cx.store.store_dir();
    for p in paths {
        if !cx.input_paths.contains(p) {
            return Err(Error::BadDerivation(format!(
                "cannot export references of path '{}' because it is not in the input closure of the derivation",
                store_dir.print(p)
            )));
        }
    }
    let start: BTreeSet<StorePath> = paths.iter().cloned().collect();
    let mut closure = cx.store.compute_closure(&start, false, false, false)?;
    let drvs: Vec<StorePath> = closure
        .iter()
        .filter(|p| p.is_derivation())
        .cloned()
        .collect();
    for d in drvs {
        let real = cx.store.real_store_dir().join(d.to_string());
        let text = std::fs::read(&real).map_err(|e| Error::io_at("reading", &real, e))?;
        let drv = Derivation::parse_at(store_dir, &d, &text)?;
        for (name, out) in drv.output_paths(store_dir)? {
            let out = out.ok_or_else(|| {
                Error::BadDerivation(format!(
                    "exportReferences on CA derivations is not yet implemented (output '{name}' of '{}')",
                    store_dir.print(&d)
                ))
            })?;
            let more = cx
                .store
                .compute_closure(&[out].into(), false, false, false)?;
            closure.extend(more);
        }
    }
    Ok(closure)
}

/// `makeValidityRegistration(paths, showDerivers = false, showHash = false)`.
fn validity_registration(store: &LocalStore, paths: &BTreeSet<StorePath>) -> Result<String> {
    let sd = store.store_dir();
    let mut s = String::new();
    for p in paths {
        let info = store.path_info(p)?;
        s.push_str(&sd.print(p));
        s.push('\n');
        s.push('\n');
        s.push_str(&format!("{}\n", info.references.len()));
        for r in &info.references {
            s.push_str(&sd.print(r));
            s.push('\n');
        }
    }
    Ok(s)
}

/// `pathInfoToJSON(paths, includeImpureInfo = false, showClosureSize = true)`.
fn path_info_json(store: &LocalStore, paths: &BTreeSet<StorePath>) -> Result<Value> {
    let sd = store.store_dir();
    let mut list = Vec::new();
    for p in paths {
        let info = store.path_info(p)?;
        let mut o = Map::new();
        o.insert("path".into(), Value::String(sd.print(p)));
        o.insert(
            "narHash".into(),
            Value::String(info.nar_hash.to_typed_nix32()),
        );
        o.insert("narSize".into(), Value::from(info.nar_size));
        o.insert(
            "references".into(),
            Value::Array(
                info.references
                    .iter()
                    .map(|r| Value::String(sd.print(r)))
                    .collect(),
            ),
        );
        if let Some(ca) = &info.ca {
            o.insert("ca".into(), Value::String(ca.to_string()));
        }
        let closure = store.compute_closure(&[p.clone()].into(), false, false, false)?;
        let mut size = 0u64;
        for q in &closure {
            size = size.saturating_add(store.path_info(q)?.nar_size);
        }
        o.insert("closureSize".into(), Value::from(size));
        list.push(Value::Object(o));
    }
    Ok(Value::Array(list))
}

/// The `.attrs.json` object: `__json` plus `outputs` and the exported reference graphs.
fn structured_json(
    structured: &Map<String, Value>,
    cx: &EnvContext<'_>,
    rewrites: &BTreeMap<String, String>,
) -> Result<Map<String, Value>> {
    let mut json = structured.clone();
    let outputs: Map<String, Value> = cx
        .output_paths
        .keys()
        .map(|o| {
            (
                o.clone(),
                Value::String(rewrite(&hash_placeholder(o), rewrites)),
            )
        })
        .collect();
    json.insert("outputs".into(), Value::Object(outputs));
    if let Some(Value::Object(graphs)) = structured.get("exportReferencesGraph") {
        for (key, paths) in graphs {
            let mut start = Vec::new();
            let items: Vec<&Value> = match paths {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                let s = item.as_str().ok_or_else(|| {
                    Error::BadDerivation(format!(
                        "'exportReferencesGraph.{key}' must be a list of store paths"
                    ))
                })?;
                let p =
                    cx.store.store_dir().parse_path(s).map_err(|_| {
                        Error::BadDerivation(format!("path '{s}' is not a store path"))
                    })?;
                start.push(p);
            }
            let closure = export_references(cx, &start)?;
            json.insert(key.clone(), path_info_json(cx.store, &closure)?);
        }
    }
    Ok(json)
}

/// Compact JSON with object keys in byte order (what nlohmann's `dump()` produces).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_json(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// CppNix's `shellEscape`: single quotes, `'` written as `'\''`.
pub fn shell_escape(s: &str) -> String {
    let mut r = String::with_capacity(s.len() + 2);
    r.push('\'');
    for c in s.chars() {
        if c == '\'' {
            r.push_str("'\\''");
        } else {
            r.push(c);
        }
    }
    r.push('\'');
    r
}

/// A scalar as bash sees it in `.attrs.sh`: strings escaped, integral numbers as (C `int`)
/// integers, null as `''`, true as `1`, false as empty; anything else has no form.
fn sh_scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(shell_escape(s)),
        Value::Number(n) => {
            // nlohmann: `get<float>()`, integral → `std::to_string(get<int>())`.
            let f = n.as_f64()? as f32;
            if f.ceil() != f {
                return None;
            }
            let i = if let Some(i) = n.as_i64() {
                i as i32
            } else if let Some(u) = n.as_u64() {
                u as i32
            } else {
                n.as_f64()? as i32
            };
            Some(i.to_string())
        }
        Value::Null => Some("''".to_owned()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.to_owned()),
        _ => None,
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_sh_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `.attrs.sh` (CppNix's `writeStructuredAttrsShell`): for every key that is a shell
/// variable name, in key order: `declare k=<scalar>`, `declare -a k=(<scalar> …)` for lists
/// of scalars, `declare -A k=([<key>]=<scalar> …)` for objects of scalars; anything nested
/// is left out.
pub fn attrs_sh(json: &Map<String, Value>) -> String {
    let sorted: BTreeMap<&String, &Value> = json.iter().collect();
    let mut out = String::new();
    for (key, value) in sorted {
        if !is_sh_var_name(key) {
            continue;
        }
        if let Some(s) = sh_scalar(value) {
            out.push_str(&format!("declare {key}={s}\n"));
        } else if let Value::Array(items) = value {
            let parts: Option<Vec<String>> = items.iter().map(sh_scalar).collect();
            if let Some(parts) = parts {
                let body: String = parts.iter().map(|p| format!("{p} ")).collect();
                out.push_str(&format!("declare -a {key}=({body})\n"));
            }
        } else if let Value::Object(m) = value {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            let parts: Option<Vec<String>> = sorted
                .iter()
                .map(|(k, v)| sh_scalar(v).map(|s| format!("[{}]={s} ", shell_escape(k))))
                .collect();
            if let Some(parts) = parts {
                out.push_str(&format!("declare -A {key}=({})\n", parts.concat()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_as_file_names_are_nix32_sha256() {
        // nix-hash --type sha256 --to-base32 $(echo -n bigattr | sha256sum)
        assert_eq!(
            pass_as_file_name("bigattr"),
            format!(
                ".attr-{}",
                nixbase32::encode(Hash::sha256("bigattr").digest())
            )
        );
        assert_eq!(pass_as_file_name("bigattr").len(), ".attr-".len() + 52);
    }

    #[test]
    fn shell_escaping() {
        assert_eq!(shell_escape("a b"), "'a b'");
        assert_eq!(shell_escape("it's"), "'it'\\''s'");
        assert_eq!(shell_escape(""), "''");
    }

    #[test]
    fn attrs_sh_table() {
        let json: Map<String, Value> = serde_json::from_str(
            r#"{
                "str": "hello 'world'",
                "int": 42,
                "float": 1.5,
                "whole": 3.0,
                "yes": true,
                "no": false,
                "nul": null,
                "list": ["a", 1, true],
                "nested": [["x"]],
                "obj": {"b": "2", "a": 1},
                "deep": {"a": {"b": 1}},
                "bad-name": "x",
                "outputs": {"out": "/nix/store/abc-x"}
            }"#,
        )
        .unwrap();
        assert_eq!(
            attrs_sh(&json),
            "declare int=42\n\
             declare -a list=('a' 1 1 )\n\
             declare no=\n\
             declare nul=''\n\
             declare -A obj=(['a']=1 ['b']='2' )\n\
             declare -A outputs=(['out']='/nix/store/abc-x' )\n\
             declare str='hello '\\''world'\\'''\n\
             declare whole=3\n\
             declare yes=1\n"
        );
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,"x"],"c":null}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn rewrites_apply_to_all_occurrences() {
        let r: BTreeMap<String, String> = [("/ph".to_string(), "/nix/store/x".to_string())].into();
        assert_eq!(
            rewrite("a=/ph:/ph/bin", &r),
            "a=/nix/store/x:/nix/store/x/bin"
        );
        assert_eq!(builder_basename("/nix/store/x-bb/bin/sh"), "sh");
        assert_eq!(builder_basename("sh"), "sh");
        assert!(is_export_file_name("closure-1.txt"));
        assert!(!is_export_file_name("1abc"));
        assert!(!is_export_file_name("a/b"));
    }
}
