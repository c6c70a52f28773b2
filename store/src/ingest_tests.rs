//! Tests of adding paths: formats of the rows written, round trips, bad input.

use std::collections::BTreeSet;
use std::io::Read;

use nixnest_core::nar::NarWriter;
use nixnest_core::{ContentAddressMethod, Hash, HashAlgo, StorePath, ValidPathInfo};

use crate::logger::NullLogger;
use crate::testutil::*;
use crate::{Error, LocalStore};

/// The 128-byte NAR of a regular file "hello world\n" (spec §4.6).
fn hello_nar() -> Vec<u8> {
    nar_of_file(b"hello world\n", false)
}

pub(crate) fn nar_of_file(contents: &[u8], exec: bool) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.regular(exec, contents.len() as u64, contents).unwrap();
    w.finish().unwrap()
}

/// A directory NAR with a file, an executable and a symlink.
pub(crate) fn dir_nar(tag: &str) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).unwrap();
    w.directory().unwrap();
    w.entry(b"bin").unwrap();
    w.regular(true, 3, &b"#!x"[..]).unwrap();
    w.entry(b"data").unwrap();
    w.regular(false, tag.len() as u64, tag.as_bytes()).unwrap();
    w.entry(b"link").unwrap();
    w.symlink(b"data").unwrap();
    w.end().unwrap();
    w.finish().unwrap()
}

pub(crate) fn info_for(s: &LocalStore, name: &str, nar: &[u8]) -> ValidPathInfo {
    let h = Hash::sha256(nar);
    let p = s
        .store_dir()
        .make_store_path("output:out", &h, name)
        .unwrap();
    let mut i = ValidPathInfo::new(p, h);
    i.nar_size = nar.len() as u64;
    i
}

fn no_sigs(s: &mut crate::StoreConfig) {
    s.require_sigs = false;
}

/// Entries of the store dir other than `.links`.
pub(crate) fn store_entries(s: &LocalStore) -> BTreeSet<String> {
    std::fs::read_dir(s.real_store_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".links")
        .collect()
}

fn raw_row(s: &LocalStore, p: &StorePath) -> Vec<Option<String>> {
    s.db
        .read(|c| {
            Ok(c.query_row(
                "select hash, deriver, narSize, ultimate, sigs, ca, typeof(deriver), typeof(ultimate), typeof(sigs), typeof(ca) from ValidPaths where path = ?",
                [s.print(p)],
                |r| {
                    (0..10)
                        .map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| match v {
                            rusqlite::types::Value::Null => None,
                            rusqlite::types::Value::Integer(i) => Some(i.to_string()),
                            rusqlite::types::Value::Text(t) => Some(t),
                            _ => Some("?".into()),
                        }))
                        .collect()
                },
            )?)
        })
        .unwrap()
}

#[test]
fn add_ca_nar_matches_cppnix() {
    let (_d, s) = new_store();
    let tr = s.temp_roots_session();
    let nar = hello_nar();
    assert_eq!(nar.len(), 128);
    let info = s
        .add_to_store_ca(
            "hello.txt",
            ContentAddressMethod::NixArchive,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            &mut &nar[..],
            false,
            &tr,
            &NullLogger,
        )
        .unwrap();
    assert_eq!(
        info.nar_hash.to_base16(),
        "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603"
    );
    assert_eq!(info.nar_size, 128);
    assert_eq!(
        info.ca.as_ref().unwrap().to_string(),
        "fixed:r:sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil"
    );
    let row = raw_row(&s, &info.path);
    assert_eq!(
        row,
        vec![
            Some("sha256:34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603".into()),
            None,
            Some("128".into()),
            None,
            None,
            Some("fixed:r:sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil".into()),
            Some("null".into()),
            Some("null".into()),
            Some("null".into()),
            Some("text".into()),
        ]
    );
    // On disk: canonical, and the NAR round-trips byte for byte.
    let real = s.real_store_dir().join(info.path.to_base_name());
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&real).unwrap();
    assert_eq!((md.mode() & 0o7777, md.mtime()), (0o444, 1));
    let mut out = Vec::new();
    s.nar_from_path(&info.path, &mut out).unwrap();
    assert_eq!(out, nar);
    // Adding again returns the same info (same registration time) and leaves no temp.
    let again = s
        .add_to_store_ca(
            "hello.txt",
            ContentAddressMethod::NixArchive,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            &mut &nar[..],
            false,
            &tr,
            &NullLogger,
        )
        .unwrap();
    assert_eq!(again, info);
    assert_eq!(
        store_entries(&s),
        BTreeSet::from([info.path.to_base_name()])
    );
}

/// A NAR content address reuses the NAR's SHA-256 when it is SHA-256 and is hashed on
/// its own otherwise; an import checks either kind, through both entry points.
#[test]
fn nar_content_address_of_every_algorithm_is_checked() {
    let nar = dir_nar("ca");
    let sha1_of_nar = {
        let mut h = nixnest_core::Hasher::new(HashAlgo::Sha1);
        h.update(&nar);
        h.finish()
    };
    for (algo, want) in [
        (HashAlgo::Sha256, Hash::sha256(&nar)),
        (HashAlgo::Sha1, sha1_of_nar),
    ] {
        let (_d, s) = new_store();
        let tr = s.temp_roots_session();
        let info = s
            .add_to_store_ca(
                "ca",
                ContentAddressMethod::NixArchive,
                algo,
                &BTreeSet::new(),
                &mut &nar[..],
                false,
                &tr,
                &NullLogger,
            )
            .unwrap();
        assert_eq!(info.nar_hash, Hash::sha256(&nar), "{algo:?}");
        assert_eq!(info.ca.as_ref().unwrap().hash(), &want, "{algo:?}");

        // The same path imported as a NAR into another store: accepted with its true
        // content address, refused with a false one of the same algorithm.
        let (_d2, other) = new_store_with(no_sigs);
        let tr2 = other.temp_roots_session();
        let mut lie = info.clone();
        let mut wrong = nixnest_core::Hasher::new(algo);
        wrong.update(b"not the nar");
        lie.ca = Some(
            nixnest_core::ContentAddress::new(ContentAddressMethod::NixArchive, wrong.finish())
                .unwrap(),
        );
        let e = other
            .add_to_store_nar(&lie, &mut &nar[..], false, true, &tr2, &NullLogger)
            .unwrap_err();
        assert!(matches!(e, Error::CaMismatch { .. }), "{algo:?}: {e}");
        other
            .add_to_store_nar(&info, &mut &nar[..], false, true, &tr2, &NullLogger)
            .unwrap();
        assert!(other.is_valid_path(&info.path).unwrap(), "{algo:?}");
    }
}

#[test]
fn add_flat_and_text() {
    let (_d, s) = new_store();
    let tr = s.temp_roots_session();
    let flat = s
        .add_to_store_ca(
            "flat.txt",
            ContentAddressMethod::Flat,
            HashAlgo::Sha256,
            &BTreeSet::new(),
            &mut &b"flat content\n"[..],
            false,
            &tr,
            &NullLogger,
        )
        .unwrap();
    assert_eq!(
        flat.ca.as_ref().unwrap().to_string(),
        "fixed:sha256:0hxx6wyswf9fj3z81yr0810i8k5lx3jbp4xw8ipwamswn1smxkr9"
    );
    let md5 = s
        .add_to_store_ca(
            "ca-test",
            ContentAddressMethod::Flat,
            HashAlgo::Md5,
            &BTreeSet::new(),
            &mut &b"md5 flat"[..],
            false,
            &tr,
            &NullLogger,
        )
        .unwrap();
    assert_eq!(
        md5.ca.unwrap().to_string(),
        "fixed:md5:00j42jqzbdxclsxj8f0z9iqf37"
    );
    let refs = BTreeSet::from([flat.path.clone()]);
    let text = s
        .add_text(
            "t",
            format!("see {}", s.print(&flat.path)).as_bytes(),
            &refs,
            &tr,
            &NullLogger,
        )
        .unwrap();
    assert!(
        text.ca
            .as_ref()
            .unwrap()
            .to_string()
            .starts_with("text:sha256:")
    );
    assert_eq!(s.query_references(&text.path).unwrap(), refs);
    assert_eq!(
        s.query_referrers(&flat.path).unwrap(),
        BTreeSet::from([text.path.clone()])
    );
    // The same text through AddToStore's pipeline is the same path.
    let again = s
        .add_to_store_ca(
            "t",
            ContentAddressMethod::Text,
            HashAlgo::Sha256,
            &refs,
            &mut format!("see {}", s.print(&flat.path)).as_bytes(),
            false,
            &tr,
            &NullLogger,
        )
        .unwrap();
    assert_eq!(again, text);
    // Flat paths cannot have references; text needs sha256.
    assert!(
        s.add_to_store_ca(
            "x",
            ContentAddressMethod::Flat,
            HashAlgo::Sha256,
            &refs,
            &mut &b""[..],
            false,
            &tr,
            &NullLogger
        )
        .is_err()
    );
    assert!(
        s.add_to_store_ca(
            "x",
            ContentAddressMethod::Text,
            HashAlgo::Sha1,
            &BTreeSet::new(),
            &mut &b""[..],
            false,
            &tr,
            &NullLogger
        )
        .is_err()
    );
}

#[test]
fn add_nar_round_trip_and_queries() {
    let (_d, s) = new_store_with(no_sigs);
    let tr = s.temp_roots_session();
    let nar_a = dir_nar("a");
    let a = info_for(&s, "a", &nar_a);
    s.add_to_store_nar(&a, &mut &nar_a[..], false, true, &tr, &NullLogger)
        .unwrap();
    let nar_b = dir_nar("b");
    let mut b = info_for(&s, "b", &nar_b);
    b.references = BTreeSet::from([a.path.clone(), b.path.clone()]);
    b.deriver = Some(s.parse_path(&fake_store_path(&s, "b.drv")).unwrap());
    b.ultimate = true;
    b.registration_time = 1234;
    s.add_to_store_nar(&b, &mut &nar_b[..], false, true, &tr, &NullLogger)
        .unwrap();
    let got = s.path_info(&b.path).unwrap();
    assert_eq!(got, b);
    let mut out = Vec::new();
    s.nar_from_path(&b.path, &mut out).unwrap();
    assert_eq!(out, nar_b);
    assert!(s.is_valid_path(&a.path).unwrap());
    assert_eq!(
        s.query_path_from_hash_part(&b.path.hash_part()).unwrap(),
        Some(b.path.clone())
    );
    assert_eq!(s.query_path_from_hash_part(&"0".repeat(32)).unwrap(), None);
    assert_eq!(s.query_all_valid_paths().unwrap().len(), 2);
    let closure = s
        .compute_closure(&BTreeSet::from([b.path.clone()]), false, false, false)
        .unwrap();
    assert_eq!(closure, BTreeSet::from([a.path.clone(), b.path.clone()]));
    let referrers = s
        .compute_closure(&BTreeSet::from([a.path.clone()]), true, false, false)
        .unwrap();
    assert_eq!(referrers, closure);
    assert_eq!(
        s.topo_sort_paths(&closure).unwrap(),
        vec![a.path.clone(), b.path.clone()]
    );
    // Deleting a referenced path from the db is refused.
    assert!(matches!(
        s.invalidate_path(&a.path),
        Err(Error::InUse { .. })
    ));
    // Already valid: the NAR is consumed exactly, trailing bytes stay in the reader.
    let mut stream = nar_b.clone();
    stream.extend_from_slice(b"TRAILER");
    let mut r = &stream[..];
    s.add_to_store_nar(&b, &mut r, false, true, &tr, &NullLogger)
        .unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"TRAILER");
}

#[test]
fn signatures_required_for_input_addressed_imports() {
    let sk = nixnest_core::SecretKey::from_seed("k1", &[7u8; 32]).unwrap();
    let (_d, s) = new_store_with(|c| c.trusted_public_keys = vec![sk.to_public_key()]);
    let tr = s.temp_roots_session();
    let nar = dir_nar("s");
    let mut info = info_for(&s, "signed", &nar);
    let e = s
        .add_to_store_nar(&info, &mut &nar[..], false, true, &tr, &NullLogger)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "cannot add path '{}' because it lacks a signature by a trusted key",
            s.print(&info.path)
        )
    );
    // A signature by an untrusted key does not help; waiving the check does.
    let other = nixnest_core::SecretKey::from_seed("k2", &[8u8; 32]).unwrap();
    info.sign(s.store_dir(), &other).unwrap();
    assert!(
        s.add_to_store_nar(&info, &mut &nar[..], false, true, &tr, &NullLogger)
            .is_err()
    );
    info.sign(s.store_dir(), &sk).unwrap();
    s.add_to_store_nar(&info, &mut &nar[..], false, true, &tr, &NullLogger)
        .unwrap();
    let got = s.path_info(&info.path).unwrap();
    assert_eq!(got.sigs.len(), 2);
    let row = raw_row(&s, &info.path);
    let sigs = row[4].clone().unwrap();
    assert_eq!(sigs.split(' ').count(), 2, "space-separated: {sigs}");
}

fn assert_nothing_left(s: &LocalStore, before: &BTreeSet<String>) {
    assert_eq!(&store_entries(s), before, "store dir changed");
}

#[test]
fn bad_input_is_rejected_without_traces() {
    let (_d, s) = new_store_with(no_sigs);
    let tr = s.temp_roots_session();
    let before = store_entries(&s);
    let nar = dir_nar("x");
    let info = info_for(&s, "x", &nar);
    let add = |info: &ValidPathInfo, bytes: &[u8]| {
        s.add_to_store_nar(info, &mut &bytes[..], false, true, &tr, &NullLogger)
    };
    // Truncated at many points.
    for cut in [0, 10, 64, nar.len() / 2, nar.len() - 1] {
        let e = add(&info, &nar[..cut]).unwrap_err();
        assert!(matches!(e, Error::Nar(_)), "cut {cut}: {e}");
    }
    // Lying hash.
    let mut lie = info.clone();
    lie.nar_hash = Hash::sha256(b"something else");
    let e = add(&lie, &nar).unwrap_err();
    assert!(
        e.to_string().starts_with("hash mismatch importing path"),
        "{e}"
    );
    // Lying size.
    let mut lie = info.clone();
    lie.nar_size += 8;
    let e = add(&lie, &nar).unwrap_err();
    assert!(
        e.to_string().starts_with("size mismatch importing path"),
        "{e}"
    );
    // Lying content address.
    let mut lie = info.clone();
    lie.ca = Some(
        nixnest_core::ContentAddress::new(ContentAddressMethod::NixArchive, Hash::sha256(b"no"))
            .unwrap(),
    );
    let e = add(&lie, &nar).unwrap_err();
    assert!(
        e.to_string().starts_with("ca hash mismatch importing path"),
        "{e}"
    );
    // Escape attempts: names "..", "a/b" crafted into the byte stream.
    for evil in [&b".."[..], b"a/b"] {
        let mut w = NarWriter::new(Vec::new()).unwrap();
        w.directory().unwrap();
        w.entry(b"zz").unwrap();
        w.regular(false, 1, &b"x"[..]).unwrap();
        w.end().unwrap();
        let mut bytes = w.finish().unwrap();
        // Replace the name token "zz" (len 2) with the evil name of the same padded size.
        let pos = bytes
            .windows(8)
            .position(|w| w == b"zz\0\0\0\0\0\0")
            .unwrap();
        let mut tok = evil.to_vec();
        tok.resize(8, 0);
        bytes.splice(pos..pos + 8, tok);
        bytes.splice(pos - 8..pos, (evil.len() as u64).to_le_bytes());
        let evil_info = info_for(&s, "evil", &bytes);
        let e = add(&evil_info, &bytes).unwrap_err();
        assert!(matches!(e, Error::Nar(_)), "{e}");
    }
    // A dangling reference.
    let mut dangling = info.clone();
    dangling.references = BTreeSet::from([s.parse_path(&fake_store_path(&s, "nope")).unwrap()]);
    let e = add(&dangling, &nar).unwrap_err();
    assert!(matches!(e, Error::InvalidPath(_)), "{e}");
    assert!(s.query_all_valid_paths().unwrap().is_empty());
    assert_nothing_left(&s, &before);
    // And a good add still works afterwards.
    add(&info, &nar).unwrap();
}

#[test]
fn dangling_reference_in_batch_registration_fails_whole_batch() {
    let (_d, s) = new_store();
    let a = s.parse_path(&fake_store_path(&s, "a")).unwrap();
    let b = s.parse_path(&fake_store_path(&s, "b")).unwrap();
    let ghost = s.parse_path(&fake_store_path(&s, "ghost")).unwrap();
    let mut ia = ValidPathInfo::new(a.clone(), Hash::sha256(b"a"));
    ia.nar_size = 1;
    let mut ib = ValidPathInfo::new(b.clone(), Hash::sha256(b"b"));
    ib.references = BTreeSet::from([a.clone()]);
    // b refers to a in the same batch: fine.
    s.register_valid_paths(&[ib.clone(), ia.clone()]).unwrap();
    let c = s.parse_path(&fake_store_path(&s, "c")).unwrap();
    let mut ic = ValidPathInfo::new(c.clone(), Hash::sha256(b"c"));
    ic.references = BTreeSet::from([ghost]);
    let e = s.register_valid_paths(&[ic]).unwrap_err();
    assert!(matches!(e, Error::InvalidPath(_)));
    assert!(!s.is_valid_path(&c).unwrap());
    // Cycles are refused.
    let d = s.parse_path(&fake_store_path(&s, "d")).unwrap();
    let e2 = s.parse_path(&fake_store_path(&s, "e")).unwrap();
    let mut id = ValidPathInfo::new(d.clone(), Hash::sha256(b"d"));
    id.references = BTreeSet::from([e2.clone()]);
    let mut ie = ValidPathInfo::new(e2.clone(), Hash::sha256(b"e"));
    ie.references = BTreeSet::from([d.clone()]);
    let e = s.register_valid_paths(&[id, ie]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cycle detected in the references of"),
        "{e}"
    );
    assert!(!s.is_valid_path(&d).unwrap());
}

#[test]
fn derivations_get_output_rows_and_wrong_outputs_are_refused() {
    let (_d, s) = new_store();
    let tr = s.temp_roots_session();
    let sd = s.store_dir();
    let text = |out: &str| {
        format!(
            r#"Derive([("out","{out}","","")],[],[],"x86_64-linux","/bin/sh",["-c","true"],[("builder","/bin/sh"),("name","thing"),("out","{out}"),("outputs","out"),("system","x86_64-linux")])"#
        )
    };
    // The right output path: hash modulo of the masked derivation (core's computation;
    // core checks it against upstream's vectors).
    let mut d =
        nixnest_core::derivation::Derivation::parse(sd, text("").as_bytes(), "thing").unwrap();
    d.fill_in_output_paths(sd, |_| unreachable!()).unwrap();
    let out = sd.print(&d.output_paths(sd).unwrap()["out"].clone().unwrap());
    let info = s
        .add_text(
            "thing.drv",
            text(&out).as_bytes(),
            &BTreeSet::new(),
            &tr,
            &NullLogger,
        )
        .unwrap();
    let outs = s.query_derivation_outputs(&info.path).unwrap();
    assert_eq!(outs["out"], s.parse_path(&out).unwrap());
    assert_eq!(
        s.query_valid_derivers(&s.parse_path(&out).unwrap())
            .unwrap(),
        BTreeSet::from([info.path.clone()])
    );
    let before = store_entries(&s);
    let wrong = fake_store_path(&s, "thing");
    let e = s
        .add_text(
            "thing.drv",
            text(&wrong).as_bytes(),
            &BTreeSet::new(),
            &tr,
            &NullLogger,
        )
        .unwrap_err();
    assert!(e.to_string().contains("incorrect output"), "{e}");
    assert_eq!(store_entries(&s), before);
}

#[test]
fn concurrent_adds_of_the_same_and_different_paths() {
    let (_d, s) = new_store_with(no_sigs);
    let s = &s;
    std::thread::scope(|sc| {
        for t in 0..4 {
            sc.spawn(move || {
                let tr = s.temp_roots_session();
                for i in 0..20 {
                    // Half shared between threads, half private.
                    let tag = if i % 2 == 0 {
                        format!("shared{i}")
                    } else {
                        format!("t{t}-{i}")
                    };
                    let nar = dir_nar(&tag);
                    let info = info_for(s, &tag, &nar);
                    s.add_to_store_nar(&info, &mut &nar[..], false, true, &tr, &NullLogger)
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(s.query_all_valid_paths().unwrap().len(), 10 + 4 * 10);
    // No leftovers: every entry is a valid path (locks and temps are gone).
    assert_eq!(store_entries(s).len(), 50);
}

/// The temp roots a session holds after adding (CppNix holds exactly the added path).
fn roots_of(s: &LocalStore) -> BTreeSet<String> {
    let (roots, _fds) =
        crate::temproots::read_temp_roots(&s.temproots_dir(), false, &NullLogger).unwrap();
    roots.into_keys().collect()
}

#[test]
fn adds_with_a_known_path_root_only_that_path() {
    let (_d, s) = new_store_with(no_sigs);
    let tr = s.temp_roots_session();
    let nar = dir_nar("rooted");
    let info = info_for(&s, "rooted", &nar);
    s.add_to_store_nar(&info, &mut &nar[..], false, false, &tr, &NullLogger)
        .unwrap();
    let refs = BTreeSet::from([info.path.clone()]);
    let text = s
        .add_text("rooted-text", b"refers", &refs, &tr, &NullLogger)
        .unwrap();
    assert_eq!(
        roots_of(&s),
        BTreeSet::from([s.print(&info.path), s.print(&text.path)])
    );
    // No temporary object is left behind either.
    assert_eq!(
        store_entries(&s),
        BTreeSet::from([info.path.to_base_name(), text.path.to_base_name()])
    );
}
