//! Against the real Nix on this machine (Debian's `nix-bin`): derivations instantiated by
//! `nix-instantiate`, paths added by `nix-store --add`/`--add-fixed`, and signatures made by
//! `nix store sign`, all in a throw-away store under /tmp whose store dir is not
//! `/nix/store`. Skips with a message when `nix-store` is not on PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use nixnest_core::derivation::DrvHashes;
use nixnest_core::signature::public_keys;
use nixnest_core::{
    ContentAddress, ContentAddressMethod, Derivation, DerivationOutput, DerivedPath, Hash,
    HashAlgo, PublicKey, SecretKey, StoreDir, StorePath, ValidPathInfo,
};

/// A throw-away Nix store: `<tmp>/store`, with state, logs and config beside it.
struct TestStore {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store_dir: StoreDir,
}

impl TestStore {
    fn new() -> Option<Self> {
        if Command::new("nix-store").arg("--version").output().is_err() {
            eprintln!("SKIP: nix-store is not on PATH; the real-Nix comparison did not run");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("nixnest-core-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_path_buf();
        for sub in ["state", "log", "conf", "cache", "work"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(
            root.join("conf/nix.conf"),
            "build-users-group =\nsubstituters =\n",
        )
        .unwrap();
        let store_dir = StoreDir::new(root.join("store").to_str().unwrap()).unwrap();
        Some(TestStore {
            _dir: dir,
            root,
            store_dir,
        })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("NIX_STORE_DIR", self.store_dir.as_str())
            .env("NIX_STATE_DIR", self.root.join("state"))
            .env("NIX_LOG_DIR", self.root.join("log"))
            .env("NIX_CONF_DIR", self.root.join("conf"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("NIX_REMOTE", "local")
            .env_remove("NIX_PATH")
            .current_dir(self.root.join("work"));
        c
    }

    /// Runs and returns stdout lines; panics with stderr on failure.
    fn run(&self, program: &str, args: &[&str]) -> Vec<String> {
        let out = self.cmd(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn work(&self, rel: &str) -> PathBuf {
        self.root.join("work").join(rel)
    }

    fn read_drv(&self, p: &StorePath) -> nixnest_core::Result<Derivation> {
        let bytes =
            std::fs::read(self.store_dir.print(p)).map_err(|e| nixnest_core::Error::DrvHash {
                name: p.to_string(),
                reason: e.to_string(),
            })?;
        Derivation::parse_at(&self.store_dir, p, &bytes)
    }
}

/// A Nix expression for many derivations: fixed-output ones of every method and algorithm,
/// and a chain of input-addressed ones with several outputs, input derivations, input
/// sources, a text file with a reference, `passAsFile`, `__structuredAttrs`, and strings
/// that need escaping.
fn expression() -> String {
    let h = |algo, i: u32| Hash::compute(algo, format!("fixed output {i}"));
    let fods = [
        ("fod-flat-sha256", "flat", h(HashAlgo::Sha256, 0).to_sri()),
        ("fod-flat-sha1", "flat", h(HashAlgo::Sha1, 1).to_base16()),
        ("fod-flat-md5", "flat", h(HashAlgo::Md5, 2).to_nix32()),
        (
            "fod-rec-sha256",
            "recursive",
            h(HashAlgo::Sha256, 3).to_nix32(),
        ),
        (
            "fod-rec-sha512",
            "recursive",
            h(HashAlgo::Sha512, 4).to_sri(),
        ),
        (
            "fod-rec-sha1",
            "recursive",
            h(HashAlgo::Sha1, 5).to_base16(),
        ),
    ];
    let algo_of = |name: &str| name.rsplit('-').next().unwrap().to_owned();
    let fod_exprs: Vec<String> = fods
        .iter()
        .map(|(name, mode, hash)| {
            format!(
                r#"(mk {{ name = "{name}"; outputHashMode = "{mode}"; outputHashAlgo = "{}"; outputHash = "{hash}"; args = ["-c" "echo {name} > $out"]; }})"#,
                algo_of(name)
            )
        })
        .collect();
    format!(
        r#"
let
  sys = builtins.currentSystem;
  mod = a: b: a - (a / b) * b;
  mk = attrs: derivation ({{ system = sys; builder = "/bin/sh"; }} // attrs);
  src = ./src.txt;
  note = builtins.toFile "note.txt" "text mentioning ${{src}}\n";
  fods = [ {fods} ];
  gen = i: prev: mk ({{
    name = "gen-${{toString i}}";
    args = [ "-c" "echo ${{toString i}} > $out" "tab\t\"quote\" back\\slash\nnewline\r ünïcödé ${{toString (i * i)}}" ];
    outputs = if mod i 4 == 0 then [ "out" "dev" ] else if mod i 4 == 1 then [ "bin" "out" "lib" ] else [ "out" ];
    fod = builtins.elemAt fods (mod i 6);
    deps = if prev == null then [ src ] else [ prev ] ++ (if prev ? dev then [ prev.dev ] else [ ]);
    inherit note;
    big = "payload ${{toString i}}";
    passAsFile = if mod i 5 == 0 then [ "big" ] else [ ];
    flag = mod i 2 == 0;
  }} // (if mod i 7 == 3 then {{ __structuredAttrs = true; nested = {{ list = [ 1 "two" i ]; }}; }} else {{ }})
     // (if mod i 9 == 4 then {{ builder = "${{src}}"; }} else {{ }}));
  chain = builtins.genList (i: gen i (if i == 0 then null else builtins.elemAt chain (i - 1))) 46;
  wide = mk {{ name = "wide"; deps = chain ++ fods; }};
in fods ++ chain ++ [ wide ]
"#,
        fods = fod_exprs.join("\n    ")
    )
}

#[test]
fn instantiated_derivations_match() {
    let Some(ts) = TestStore::new() else { return };
    let sd = &ts.store_dir;
    std::fs::write(ts.work("src.txt"), "source file\n").unwrap();
    std::fs::write(ts.work("e.nix"), expression()).unwrap();
    // nix-instantiate prints `<drv>!<output>` when the default output is not `out`.
    let drv_paths: Vec<StorePath> = ts
        .run("nix-instantiate", &["e.nix"])
        .iter()
        .map(|p| match DerivedPath::parse(sd, p).unwrap() {
            DerivedPath::Opaque(p) | DerivedPath::Built { drv_path: p, .. } => p,
        })
        .collect();
    assert!(
        drv_paths.len() >= 50,
        "only {} derivations",
        drv_paths.len()
    );

    let mut hashes = DrvHashes::new(sd.clone(), |p: &StorePath| ts.read_drv(p));
    let mut kinds = BTreeMap::<&str, usize>::new();
    let mut our_outputs = BTreeSet::new();
    for path in &drv_paths {
        let bytes = std::fs::read(sd.print(path)).unwrap();
        let drv = Derivation::parse_at(sd, path, &bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
        // Byte-identical print, same .drv path, consistent by Nix's read-time checks.
        assert_eq!(
            drv.to_aterm(sd).unwrap().as_bytes(),
            &bytes[..],
            "{path}: print differs"
        );
        assert_eq!(&drv.drv_path(sd).unwrap(), path, "{path}: drv path differs");
        drv.check_at(sd, path, hashes.lookup())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        // Recompute input-addressed output paths from scratch, as the evaluator does.
        if drv.derivation_type().unwrap().is_fixed() {
            *kinds.entry("fixed-output").or_default() += 1;
        } else {
            let mut fresh = drv.clone();
            for (name, out) in fresh.outputs.iter_mut() {
                *out = DerivationOutput::Deferred;
                if let Some(v) = fresh.env.get_mut(name) {
                    v.clear();
                }
            }
            fresh.fill_in_output_paths(sd, hashes.lookup()).unwrap();
            assert_eq!(fresh, drv, "{path}: recomputed outputs differ");
            *kinds.entry("input-addressed").or_default() += 1;
        }
        if drv.outputs.len() > 1 {
            *kinds.entry("multi-output").or_default() += 1;
        }
        if !drv.input_drvs.is_empty() {
            *kinds.entry("with input drvs").or_default() += 1;
        }
        if drv.env.contains_key("__json") {
            *kinds.entry("structured attrs").or_default() += 1;
        }
        if drv.env.get("passAsFile").is_some_and(|v| !v.is_empty()) {
            *kinds.entry("passAsFile").or_default() += 1;
        }
        for p in drv.output_paths(sd).unwrap().into_values() {
            our_outputs.insert(sd.print(&p.unwrap()));
        }
    }
    eprintln!("checked {} derivations: {kinds:?}", drv_paths.len());
    for k in [
        "fixed-output",
        "input-addressed",
        "multi-output",
        "with input drvs",
        "structured attrs",
        "passAsFile",
    ] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) > 0,
            "no {k} derivation was covered"
        );
    }

    // Nix's own reading of the output paths.
    let printed: Vec<String> = drv_paths.iter().map(|p| sd.print(p)).collect();
    let mut args = vec!["-q", "--outputs"];
    args.extend(printed.iter().map(String::as_str));
    let nix_outputs: BTreeSet<String> = ts.run("nix-store", &args).into_iter().collect();
    assert_eq!(nix_outputs, our_outputs);

    // The text file with a reference: a `text` path.
    let note = ts.run(
        "nix-instantiate",
        &[
            "--eval",
            "--read-write-mode",
            "-E",
            "builtins.toFile \"note.txt\" \"text mentioning ${./src.txt}\\n\"",
        ],
    );
    let note_path = sd.parse_path(note[0].trim_matches('"')).unwrap();
    let refs: BTreeSet<StorePath> = ts
        .run("nix-store", &["-q", "--references", &sd.print(&note_path)])
        .iter()
        .map(|p| sd.parse_path(p).unwrap())
        .collect();
    assert_eq!(refs.len(), 1);
    let contents = std::fs::read(sd.print(&note_path)).unwrap();
    assert_eq!(
        sd.make_text_path("note.txt", &Hash::sha256(&contents), &refs)
            .unwrap(),
        note_path
    );
}

fn nix_hash(ts: &TestStore, algo: &str, path: &Path) -> Hash {
    let out = ts.run("nix-hash", &["--type", algo, path.to_str().unwrap()]);
    Hash::parse_digest(&out[0], HashAlgo::parse(algo).unwrap()).unwrap()
}

#[test]
fn added_paths_match() {
    let Some(ts) = TestStore::new() else { return };
    let sd = &ts.store_dir;
    let none = BTreeSet::new();
    let file = ts.work("hello.txt");
    std::fs::write(&file, "hello world\n").unwrap();
    let dir = ts.work("tree");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/data"), vec![0u8, 1, 2, 255]).unwrap();
    std::fs::write(dir.join("script"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        dir.join("script"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/data", dir.join("link")).unwrap();

    let add = |args: &[&str]| sd.parse_path(&ts.run("nix-store", args)[0]).unwrap();

    // `--add`: NAR + sha256 ("source"); the NAR hash comes from nix-hash (the NAR module is
    // another crate's business).
    for (p, name) in [(&file, "hello.txt"), (&dir, "tree")] {
        let got = add(&["--add", p.to_str().unwrap()]);
        let nar = nix_hash(&ts, "sha256", p);
        let want = sd
            .make_fixed_output_path(name, ContentAddressMethod::NixArchive, &nar, &none, false)
            .unwrap();
        assert_eq!(got, want, "--add {name}");
    }
    // The spec's vector in another store dir: same NAR hash as Appendix B.
    assert_eq!(
        nix_hash(&ts, "sha256", &file).to_base16(),
        "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603"
    );

    // `--add-fixed` flat: we hash the bytes ourselves.
    for algo in ["sha256", "sha1", "md5", "sha512"] {
        let got = add(&["--add-fixed", algo, file.to_str().unwrap()]);
        let h = Hash::compute(
            HashAlgo::parse(algo).unwrap(),
            std::fs::read(&file).unwrap(),
        );
        let want = sd
            .make_fixed_output_path("hello.txt", ContentAddressMethod::Flat, &h, &none, false)
            .unwrap();
        assert_eq!(got, want, "--add-fixed {algo}");
        let ca = ContentAddress::new(ContentAddressMethod::Flat, h).unwrap();
        assert_eq!(
            sd.make_path_from_ca("hello.txt", &ca, &none, false)
                .unwrap(),
            got
        );
    }
    // `--add-fixed --recursive`: sha256 is a "source" path, others `output:out`.
    for algo in ["sha256", "sha1", "sha512"] {
        for (p, name) in [(&file, "hello.txt"), (&dir, "tree")] {
            let got = add(&["--add-fixed", "--recursive", algo, p.to_str().unwrap()]);
            let nar = nix_hash(&ts, algo, p);
            let want = sd
                .make_fixed_output_path(name, ContentAddressMethod::NixArchive, &nar, &none, false)
                .unwrap();
            assert_eq!(got, want, "--add-fixed --recursive {algo} {name}");
        }
    }
}

#[test]
fn signatures_match() {
    let Some(ts) = TestStore::new() else { return };
    let sd = &ts.store_dir;
    ts.run(
        "nix-store",
        &["--generate-binary-cache-key", "nixnest-test-1", "sk", "pk"],
    );
    let sk = SecretKey::parse(&std::fs::read_to_string(ts.work("sk")).unwrap()).unwrap();
    let pk = PublicKey::parse(&std::fs::read_to_string(ts.work("pk")).unwrap()).unwrap();
    assert_eq!(sk.to_public_key(), pk);

    std::fs::write(ts.work("a.txt"), "a\n").unwrap();
    let a = ts.run("nix-store", &["--add", "a.txt"])[0].clone();
    let t = ts.run(
        "nix-instantiate",
        &[
            "--eval",
            "--read-write-mode",
            "-E",
            "builtins.toFile \"t\" \"see ${./a.txt}\\n\"",
        ],
    )[0]
    .trim_matches('"')
    .to_owned();
    let nix = |args: &[&str]| {
        let mut v = vec!["--option", "experimental-features", "nix-command"];
        v.extend_from_slice(args);
        ts.run("nix", &v)
    };
    nix(&["store", "sign", "--key-file", "sk", &a, &t]);
    let json: serde_json::Value =
        serde_json::from_str(&nix(&["path-info", "--json", "--sigs", &a, &t]).join("\n")).unwrap();
    let keys = public_keys([pk]);
    for entry in json.as_array().unwrap() {
        let path = sd.parse_path(entry["path"].as_str().unwrap()).unwrap();
        let mut info = ValidPathInfo::new(
            path,
            Hash::parse_any(entry["narHash"].as_str().unwrap(), None).unwrap(),
        );
        info.nar_size = entry["narSize"].as_u64().unwrap();
        info.references = entry["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| sd.parse_path(r.as_str().unwrap()).unwrap())
            .collect();
        info.ca = Some(ContentAddress::parse(entry["ca"].as_str().unwrap()).unwrap());
        assert!(info.is_content_addressed(sd), "{}", entry["path"]);
        let sigs: Vec<&str> = entry["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(sigs.len(), 1);
        assert!(
            info.check_signature(sd, &keys, sigs[0]),
            "{}",
            entry["path"]
        );
        info.sign(sd, &sk).unwrap();
        assert!(
            info.sigs.contains(sigs[0]),
            "our signature differs from Nix's"
        );
    }
}
