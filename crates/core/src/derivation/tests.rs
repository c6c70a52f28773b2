use super::*;
use proptest::prelude::*;

/// worker-protocol.md Appendix B: a `.drv` written by the real Nix 2.8.
const BD_TEST: &str = r#"Derive([("out","/nix/store/pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test","","")],[],["/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir"],"x86_64-linux","/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir/sh",["-c","echo built by BuildDerivation; echo bd > $out"],[("builder","/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir/sh"),("name","bd-test"),("out","/nix/store/pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test"),("outputs","out"),("system","x86_64-linux")])"#;

fn sd() -> StoreDir {
    StoreDir::default()
}

fn no_inputs(p: &StorePath) -> Result<DrvHashModulo> {
    Err(Error::DrvHash {
        name: p.to_string(),
        reason: "unexpected input".into(),
    })
}

#[test]
fn spec_bd_test() {
    let sd = sd();
    let drv = Derivation::parse(&sd, BD_TEST.as_bytes(), "bd-test").unwrap();
    assert_eq!(drv.to_aterm(&sd).unwrap(), BD_TEST);
    assert_eq!(drv.env_name(), Some("bd-test"));
    assert_eq!(
        sd.print(&drv.drv_path(&sd).unwrap()),
        "/nix/store/6i28kfn6gd6nqplfnn48gq6bkkaybx0l-bd-test.drv"
    );
    let (masked, kind) = drv.modulo_aterm(&sd, true, no_inputs).unwrap();
    assert_eq!(kind, DrvHashKind::Regular);
    assert_eq!(
        masked,
        BD_TEST.replace("/nix/store/pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test", "")
    );
    let h = drv.hash_modulo(&sd, true, no_inputs).unwrap();
    assert_eq!(
        h.get("out").unwrap().to_base16(),
        "74efd719692c7f72ff4d4b686c40b57a304729d410709eefee2bef7b545b4783"
    );
    drv.check_invariants(&sd, no_inputs).unwrap();
    let drv_path = drv.drv_path(&sd).unwrap();
    drv.check_at(&sd, &drv_path, no_inputs).unwrap();
    assert_eq!(
        drv.derivation_type().unwrap(),
        DerivationType::InputAddressed { deferred: false }
    );
    // From the drv path.
    assert_eq!(
        Derivation::parse_at(&sd, &drv_path, BD_TEST.as_bytes()).unwrap(),
        drv
    );
}

#[test]
fn spec_fod_output_paths() {
    // Appendix B: flat and recursive sha256 FODs.
    let sd = sd();
    let flat = ContentAddress::new(
        ContentAddressMethod::Flat,
        Hash::parse_digest(
            "0c3071418e6356e614898c84ed064ca95e88551bc0811b534bdf1952ecdae534",
            HashAlgo::Sha256,
        )
        .unwrap(),
    )
    .unwrap();
    let p = DerivationOutput::CAFixed(flat)
        .path(&sd, "fod-test", "out")
        .unwrap()
        .unwrap();
    assert_eq!(
        sd.print(&p),
        "/nix/store/wv6lq8ci18zccnlqlk9p3j0va0lm5fdq-fod-test"
    );
}

fn fod(name: &str, builder: &str) -> Derivation {
    let ca =
        ContentAddress::new(ContentAddressMethod::NixArchive, Hash::sha256("contents")).unwrap();
    let mut d = Derivation {
        name: name.into(),
        outputs: BTreeMap::from([("out".into(), DerivationOutput::CAFixed(ca))]),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: builder.into(),
        args: vec![],
        env: BTreeMap::new(),
    };
    d.fill_in_output_paths(&sd(), no_inputs).unwrap();
    d
}

#[test]
fn fixed_output_hash_ignores_builder() {
    let sd = sd();
    let a = fod("src", "/bin/a");
    let b = fod("src", "/bin/b");
    assert_ne!(a.drv_path(&sd).unwrap(), b.drv_path(&sd).unwrap());
    assert_eq!(
        a.hash_modulo(&sd, false, no_inputs).unwrap(),
        b.hash_modulo(&sd, false, no_inputs).unwrap()
    );
    assert_eq!(
        a.env["out"],
        sd.print(&a.output_paths(&sd).unwrap()["out"].clone().unwrap())
    );
    a.check_invariants(&sd, no_inputs).unwrap();
}

#[test]
fn input_drvs_through_memo() {
    let sd = sd();
    let src = fod("src", "/bin/a");
    let src_path = src.drv_path(&sd).unwrap();
    let mut child = Derivation {
        name: "child".into(),
        outputs: BTreeMap::from([
            ("out".into(), DerivationOutput::Deferred),
            ("dev".into(), DerivationOutput::Deferred),
        ]),
        input_drvs: BTreeMap::from([(src_path.clone(), BTreeSet::from(["out".to_string()]))]),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: "/bin/sh".into(),
        args: vec!["-c".into(), "x".into()],
        env: BTreeMap::from([("out".into(), String::new()), ("dev".into(), String::new())]),
    };
    let store: HashMap<StorePath, Derivation> = HashMap::from([(src_path.clone(), src.clone())]);
    let mut hashes = DrvHashes::new(sd.clone(), |p: &StorePath| {
        store.get(p).cloned().ok_or_else(|| Error::DrvHash {
            name: p.to_string(),
            reason: "missing".into(),
        })
    });
    child.fill_in_output_paths(&sd, hashes.lookup()).unwrap();
    assert!(matches!(
        child.outputs["out"],
        DerivationOutput::InputAddressed(_)
    ));
    assert!(child.env["dev"].ends_with("-child-dev"));
    child.check_invariants(&sd, hashes.lookup()).unwrap();
    // Tampering with a path or env var is caught.
    let mut bad = child.clone();
    bad.env.insert("out".into(), "/nix/store/x".into());
    assert!(bad.check_invariants(&sd, hashes.lookup()).is_err());
    let mut bad = child.clone();
    bad.outputs
        .insert("dev".into(), child.outputs["out"].clone());
    assert!(bad.check_invariants(&sd, hashes.lookup()).is_err());
    // Asking for an output the input does not have.
    let mut bad = child.clone();
    bad.input_drvs
        .insert(src_path, BTreeSet::from(["nope".to_string()]));
    assert!(matches!(
        bad.check_invariants(&sd, hashes.lookup()),
        Err(Error::DrvHash { .. })
    ));
}

#[test]
fn type_rules() {
    let sd = sd();
    let mut d = fod("f", "/bin/sh");
    d.outputs.insert("dev".into(), d.outputs["out"].clone());
    assert!(d.derivation_type().is_err(), "two fixed outputs");
    let mut d = fod("f", "/bin/sh");
    let out = d.outputs.remove("out").unwrap();
    d.outputs.insert("bin".into(), out);
    assert!(d.derivation_type().is_err(), "fixed output not named out");
    let mut d = fod("f", "/bin/sh");
    d.outputs.insert("dev".into(), DerivationOutput::Deferred);
    assert!(d.derivation_type().is_err(), "mixed");
    d.outputs.clear();
    assert!(d.derivation_type().is_err(), "no outputs");
    assert!(d.hash_modulo(&sd, true, no_inputs).is_err());
    let floating = DerivationOutput::CAFloating {
        method: ContentAddressMethod::NixArchive,
        algo: HashAlgo::Sha256,
    };
    d.outputs.insert("out".into(), floating.clone());
    assert_eq!(
        d.derivation_type().unwrap(),
        DerivationType::ContentAddressed { fixed: false }
    );
    assert_eq!(
        d.hash_modulo(&sd, true, no_inputs).unwrap().kind,
        DrvHashKind::Deferred
    );
    d.outputs.insert(
        "dev".into(),
        DerivationOutput::CAFloating {
            method: ContentAddressMethod::NixArchive,
            algo: HashAlgo::Sha1,
        },
    );
    assert!(d.derivation_type().is_err(), "floating algos differ");
    d.outputs.clear();
    d.outputs.insert(
        "out".into(),
        DerivationOutput::Impure {
            method: ContentAddressMethod::Flat,
            algo: HashAlgo::Sha256,
        },
    );
    assert_eq!(d.derivation_type().unwrap(), DerivationType::Impure);
    assert!(!DerivationType::Impure.is_sandboxed());
}

#[test]
fn output_field_forms() {
    let sd = sd();
    let cases = [
        ("", "", "", DerivationOutput::Deferred),
        (
            "",
            "r:sha256",
            "",
            DerivationOutput::CAFloating {
                method: ContentAddressMethod::NixArchive,
                algo: HashAlgo::Sha256,
            },
        ),
        (
            "",
            "sha1",
            "impure",
            DerivationOutput::Impure {
                method: ContentAddressMethod::Flat,
                algo: HashAlgo::Sha1,
            },
        ),
        (
            "",
            "text:sha256",
            "",
            DerivationOutput::CAFloating {
                method: ContentAddressMethod::Text,
                algo: HashAlgo::Sha256,
            },
        ),
    ];
    for (path, algo, hash, want) in cases {
        let got = DerivationOutput::from_aterm_fields(&sd, "x", "out", path, algo, hash).unwrap();
        assert_eq!(got, want);
        assert_eq!(
            got.to_aterm_fields(&sd, "x", "out").unwrap(),
            (path.into(), algo.into(), hash.into())
        );
    }
    let p = "/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir";
    for (path, algo, hash) in [
        (p, "", "abc"),
        (p, "r:sha256", ""),
        (p, "sha256", "impure"),
        (
            "",
            "sha256",
            "0c3071418e6356e614898c84ed064ca95e88551bc0811b534bdf1952ecdae534",
        ),
        (
            p,
            "sha256",
            "0c3071418e6356e614898c84ed064ca95e88551bc0811b534bdf1952ecdae534",
        ),
        (p, "sha256", "tooshort"),
        (p, "blake3", "x"),
        ("/tmp/x", "", ""),
    ] {
        assert!(
            DerivationOutput::from_aterm_fields(&sd, "x", "out", path, algo, hash).is_err(),
            "{path} {algo} {hash}"
        );
    }
    // A nix32 fixed hash is accepted and printed back as base16.
    let h = Hash::sha256("x");
    let ca = ContentAddress::new(ContentAddressMethod::Flat, h).unwrap();
    let path = DerivationOutput::CAFixed(ca)
        .path(&sd, "x", "out")
        .unwrap()
        .unwrap();
    let got = DerivationOutput::from_aterm_fields(
        &sd,
        "x",
        "out",
        &sd.print(&path),
        "sha256",
        &h.to_nix32(),
    )
    .unwrap();
    assert_eq!(
        got.to_aterm_fields(&sd, "x", "out").unwrap().2,
        h.to_base16()
    );
}

#[test]
fn escapes_round_trip() {
    let sd = sd();
    let mut d = fod("esc", "/bin/sh");
    d.args = vec![
        "tab\there".into(),
        "nl\nq\"b\\cr\r".into(),
        "ünïcödé €".into(),
        String::new(),
    ];
    d.env.insert("weird key \"\\".into(), "v\n".into());
    let text = d.to_aterm(&sd).unwrap();
    assert!(text.contains(r#""tab\there","nl\nq\"b\\cr\r""#), "{text}");
    let back = Derivation::parse(&sd, text.as_bytes(), "esc").unwrap();
    assert_eq!(back, d);
    // The reader takes any other escaped character as itself.
    let odd = text.replace(r#""tab\there""#, r#""\a\b\$""#);
    let back = Derivation::parse(&sd, odd.as_bytes(), "esc").unwrap();
    assert_eq!(back.args[0], "ab$");
}

#[test]
fn parse_errors_have_offsets() {
    let sd = sd();
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "expected 'Derive('"),
        ("Derive(", 7, "expected '['"),
        (
            "Derive([(\"out\",\"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-foo",
            15,
            "unterminated string",
        ),
        (
            "Derive([],[],[],\"x\",\"b\",[],[])junk",
            30,
            "trailing data",
        ),
        (
            "Derive([],[],[],\"x\",\"b\",[\"a\",],[])",
            29,
            "expected '\"'",
        ),
        (
            "Derive([],[],[],\"x\",\"b\",[\"a\" \"b\"],[])",
            28,
            "expected ',' or ']'",
        ),
        (
            "Derive([],[],[],\"x\",\"b\",[],[(\"a\",\"1\"),(\"a\",\"2\")])",
            38,
            "duplicate environment variable",
        ),
        (
            "Derive([],[],[\"/tmp/x\"],\"x\",\"b\",[],[])",
            14,
            "not in the Nix store",
        ),
        (
            "Derive([],[(\"/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-a.drv\",[])],[],\"x\",\"b\",[],[])",
            11,
            "names no outputs",
        ),
        ("DrvWithVersion(\"xp-dyn-drv\",[])", 15, "xp-dyn-drv"),
        (
            "DrvWithVersion(\"foo\",[])",
            15,
            "unknown derivation ATerm format version",
        ),
    ];
    for (text, offset, msg) in cases {
        match Derivation::parse(&sd, text.as_bytes(), "x") {
            Err(Error::DrvParse { offset: o, reason }) => {
                assert!(reason.contains(msg), "{text}: {reason}");
                assert_eq!(o, *offset, "{text}: {reason}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let err = Derivation::parse(&sd, b"Derive([],[],[],\"\xff\",\"b\",[],[])", "x").unwrap_err();
    assert!(matches!(err, Error::DrvParse { offset: 17, .. }), "{err}");
    assert!(err.to_string().contains("UTF-8"));
    assert!(Derivation::parse(&sd, b"Derive([],[],[],\"x\",\"b\",[],[])", "bad name").is_err());
}

#[test]
fn platform_with_quote_is_refused() {
    let mut d = fod("p", "/bin/sh");
    d.platform = "x\"y".into();
    assert!(matches!(
        d.to_aterm(&sd()),
        Err(Error::BadDerivation { .. })
    ));
}

#[test]
fn placeholders() {
    // From upstream's ca/*.json vectors.
    assert_eq!(
        hash_placeholder("out"),
        "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
    );
    assert_eq!(
        hash_placeholder("dev"),
        "/02qcpld1y6xhs5gz9bchpxaw0xdhmsp5dv88lh25r2ss44kh8dxz"
    );
}

#[test]
fn cycle_is_an_error_not_a_hang() {
    let sd = sd();
    let a = StorePath::from_base_name("h8v50zwdsfhidk5zbcmzg82db28md31c-a.drv").unwrap();
    let mk = |input: &StorePath| Derivation {
        name: "a".into(),
        outputs: BTreeMap::from([("out".into(), DerivationOutput::Deferred)]),
        input_drvs: BTreeMap::from([(input.clone(), BTreeSet::from(["out".to_string()]))]),
        input_srcs: BTreeSet::new(),
        platform: "x".into(),
        builder: "b".into(),
        args: vec![],
        env: BTreeMap::new(),
    };
    let a2 = a.clone();
    let mut hashes = DrvHashes::new(sd, move |_p: &StorePath| Ok(mk(&a2)));
    assert!(matches!(hashes.get(&a), Err(Error::DrvHash { .. })));
}

#[test]
fn basic_derivation_conversion() {
    let sd = sd();
    let drv = Derivation::parse(&sd, BD_TEST.as_bytes(), "bd-test").unwrap();
    let basic = BasicDerivation::from(drv.clone());
    assert_eq!(
        basic.derivation_type().unwrap(),
        DerivationType::InputAddressed { deferred: false }
    );
    assert_eq!(
        basic.output_paths(&sd).unwrap(),
        drv.output_paths(&sd).unwrap()
    );
    assert_eq!(basic.into_derivation(), drv);
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/ ._-]{0,12}",
        "\\PC{0,8}",
        proptest::collection::vec(
            prop::sample::select(vec!['"', '\\', '\n', '\r', '\t', 'a', 'é']),
            0..6
        )
        .prop_map(|v| v.into_iter().collect())
    ]
}

fn arb_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[a-z][a-z0-9.-]{0,10}").prop_map(|(d, n)| StorePath::new(d, &n).unwrap())
}

fn arb_drv_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[a-z][a-z0-9-]{0,10}")
        .prop_map(|(d, n)| StorePath::new(d, &format!("{n}.drv")).unwrap())
}

fn arb_output() -> impl Strategy<Value = DerivationOutput> {
    let method = prop::sample::select(vec![
        ContentAddressMethod::Flat,
        ContentAddressMethod::NixArchive,
    ]);
    let algo = prop::sample::select(HashAlgo::ALL.to_vec());
    prop_oneof![
        arb_path().prop_map(DerivationOutput::InputAddressed),
        Just(DerivationOutput::Deferred),
        (method.clone(), algo.clone())
            .prop_map(|(method, algo)| DerivationOutput::CAFloating { method, algo }),
        (method.clone(), algo.clone())
            .prop_map(|(method, algo)| DerivationOutput::Impure { method, algo }),
        (method, algo, any::<[u8; 64]>()).prop_map(|(m, a, b)| DerivationOutput::CAFixed(
            ContentAddress::new(m, Hash::new(a, &b[..a.digest_len()]).unwrap()).unwrap()
        )),
    ]
}

fn arb_derivation() -> impl Strategy<Value = Derivation> {
    (
        "[a-z][a-z0-9-]{0,12}",
        proptest::collection::btree_map("[a-z]{1,5}", arb_output(), 0..4),
        proptest::collection::btree_map(
            arb_drv_path(),
            proptest::collection::btree_set("[a-z]{1,4}", 1..3),
            0..3,
        ),
        proptest::collection::btree_set(arb_path(), 0..3),
        "[a-z0-9_-]{0,12}",
        arb_string(),
        proptest::collection::vec(arb_string(), 0..4),
        proptest::collection::btree_map(arb_string(), arb_string(), 0..5),
    )
        .prop_map(
            |(name, outputs, input_drvs, input_srcs, platform, builder, args, env)| Derivation {
                name,
                outputs,
                input_drvs,
                input_srcs,
                platform,
                builder,
                args,
                env,
            },
        )
}

proptest! {
    #[test]
    fn print_parse_print_identity(d in arb_derivation()) {
        let sd = sd();
        let text = d.to_aterm(&sd).unwrap();
        let back = Derivation::parse(&sd, text.as_bytes(), &d.name).unwrap();
        prop_assert_eq!(&back, &d);
        prop_assert_eq!(back.to_aterm(&sd).unwrap(), text);
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Derivation::parse(&sd(), &bytes, "x");
    }

    #[test]
    fn truncations_are_errors(d in arb_derivation(), cut in any::<prop::sample::Index>()) {
        let sd = sd();
        let text = d.to_aterm(&sd).unwrap();
        let at = cut.index(text.len());
        if text.is_char_boundary(at) {
            prop_assert!(Derivation::parse(&sd, &text.as_bytes()[..at], &d.name).is_err());
        }
    }
}

#[test]
fn drv_output_ids() {
    // worker-protocol.md §5.6: the id the 2.8 daemon sent for bd-test.
    let s = "sha256:74efd719692c7f72ff4d4b686c40b57a304729d410709eefee2bef7b545b4783!out";
    let id = DrvOutput::parse(s).unwrap();
    assert_eq!(id.output, "out");
    assert_eq!(id.to_string(), s);
    let drv = Derivation::parse(&sd(), BD_TEST.as_bytes(), "bd-test").unwrap();
    let h = drv.hash_modulo(&sd(), true, no_inputs).unwrap();
    assert_eq!(
        DrvOutput {
            drv_hash: h.get("out").copied().unwrap(),
            output: "out".into()
        },
        id
    );
    for bad in [
        "",
        "sha256:74ef!out",
        "74efd719692c7f72ff4d4b686c40b57a304729d410709eefee2bef7b545b4783!out",
        &s.replace("!out", "!"),
        &s.replace("!out", ""),
    ] {
        assert!(DrvOutput::parse(bad).is_err(), "{bad}");
    }
}
