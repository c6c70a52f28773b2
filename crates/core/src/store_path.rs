//! Store directories, store paths, and how Nix computes store paths.
//!
//! A printed store path is `<store dir>/<hash part>-<name>`:
//! * `<store dir>`: an absolute canonical directory, `/nix/store` by default — a value
//!   ([`StoreDir`]), never a global, so every test can use a temporary store;
//! * `<hash part>`: 32 nix32 characters encoding a 20-byte digest;
//! * `<name>`: 1–211 bytes of `[A-Za-z0-9+-._?=]`, not `.` or `..`, not starting with `.-`
//!   or `..-` (so the base name can never be confused with a dot entry).
//!
//! A [`StorePath`] holds the digest and the name only; printing it with a store dir is
//! [`StoreDir::display`]. Store paths order like their base names (hash part first), which is
//! the order Nix writes references in fingerprints and `.drv` files.
//!
//! Path computation (`makeStorePath`):
//! ```text
//! fingerprint = <type> ":sha256:" <base16 inner digest> ":" <store dir> ":" <name>
//! digest      = XOR-fold(sha256(fingerprint)) to 20 bytes
//! ```
//! | case | `<type>` | inner digest |
//! |---|---|---|
//! | text (`text:sha256`, every `.drv`) | `text` + `:<ref>`… | sha256 of the contents |
//! | NAR + sha256 ("source") | `source` + `:<ref>`… + `:self` if self-referencing | sha256 of the NAR |
//! | any other fixed CA | `output:out` | sha256 of `fixed:out:<r:|>`<algo>`:`<base16>`:` |
//! | input-addressed drv output `o` | `output:<o>` | the derivation's hash modulo |
//!
//! References in `<type>` are full printed paths in store-path order.

use std::collections::BTreeSet;
use std::fmt;

use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::error::{Error, Result, excerpt};
use crate::hash::{Hash, HashAlgo, compress_hash};
use crate::nixbase32;

/// Length of a store path's digest in bytes.
pub const DIGEST_LEN: usize = 20;
/// Length of a store path's hash part in characters.
pub const HASH_PART_LEN: usize = 32;
/// Maximum length of a store path name in bytes.
pub const MAX_NAME_LEN: usize = 211;
/// The name suffix that marks a derivation.
pub const DRV_EXTENSION: &str = ".drv";

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

/// Why `name` is not a valid store path name, if it is not.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("name must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!(
            "name is {} bytes long, the maximum is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name.bytes().find(|&c| !is_name_char(c)) {
        return Some(format!(
            "character '{}' is not allowed (only A-Z a-z 0-9 + - . _ ? =)",
            char::from(c).escape_default()
        ));
    }
    if name == "." || name == ".." {
        return Some("name must not be '.' or '..'".into());
    }
    if name.starts_with(".-") || name.starts_with("..-") {
        return Some("name must not start with '.-' or '..-'".into());
    }
    None
}

/// Checks a store path name against Nix's rules.
pub fn validate_name(name: &str) -> Result<()> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(Error::BadStorePathName {
            name: excerpt(name),
            reason,
        }),
    }
}

/// Checks a derivation output name. Output names become part of store path names
/// (`<drv name>-<output>`), so Nix holds them to the same rules.
pub fn validate_output_name(name: &str) -> Result<()> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(Error::BadOutputName {
            name: excerpt(name),
            reason,
        }),
    }
}

/// The store path name of output `output` of a derivation named `drv_name`:
/// `<drv_name>` for `out`, else `<drv_name>-<output>`.
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output}")
    }
}

/// A store path without its store directory: a 20-byte digest and a validated name.
///
/// Equality, ordering and hashing follow the base name `<hash part>-<name>`, so a
/// `BTreeSet<StorePath>` iterates in the order Nix sorts paths in.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StorePath {
    digest: [u8; DIGEST_LEN],
    name: Box<str>,
}

impl StorePath {
    /// Builds a store path from its digest and a name (checked).
    pub fn new(digest: [u8; DIGEST_LEN], name: &str) -> Result<Self> {
        validate_name(name)?;
        Ok(StorePath {
            digest,
            name: name.into(),
        })
    }

    /// Parses `<32 nix32 chars>-<name>`.
    pub fn from_base_name(base_name: &str) -> Result<Self> {
        let bad = |reason: &str| Error::BadStorePath {
            path: excerpt(base_name),
            reason: reason.into(),
        };
        let b = base_name.as_bytes();
        let (hash, rest) = match (b.get(..HASH_PART_LEN), b.get(HASH_PART_LEN..)) {
            (Some(h), Some(r)) => (h, r),
            _ => return Err(bad("shorter than a 32-character hash part")),
        };
        let name = match rest.split_first() {
            Some((b'-', name)) => name,
            _ => return Err(bad("the hash part must be followed by '-'")),
        };
        let mut digest = [0u8; DIGEST_LEN];
        nixbase32::decode_into(hash, &mut digest).map_err(|e| Error::BadStorePath {
            path: excerpt(base_name),
            reason: format!("bad hash part: {e}"),
        })?;
        // The name is ASCII if valid; checking bytes first keeps the error message specific.
        let name = std::str::from_utf8(name).map_err(|_| bad("name is not valid UTF-8"))?;
        StorePath::new(digest, name)
    }

    /// The 20-byte digest.
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// The 32-character nix32 hash part.
    pub fn hash_part(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// The name after `<hash part>-`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the name ends in `.drv`.
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(DRV_EXTENSION)
    }

    /// For a `.drv` path, the derivation name (the store path name without `.drv`).
    pub fn derivation_name(&self) -> Option<&str> {
        self.name
            .strip_suffix(DRV_EXTENSION)
            .filter(|n| !n.is_empty())
    }

    /// `<hash part>-<name>`.
    pub fn to_base_name(&self) -> String {
        self.to_string()
    }
}

impl Ord for StorePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Equal-length nix32 strings compare like the digests read from the last byte to the
        // first (the last byte drives the first characters; the alphabet is in ASCII order),
        // and the '-' separator sits at the same offset in both, so this is base-name order.
        self.digest
            .iter()
            .rev()
            .cmp(other.digest.iter().rev())
            .then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for StorePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for StorePath {
    /// The base name `<hash part>-<name>` (no store dir).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", nixbase32::encode(&self.digest), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

/// A store directory: absolute, canonical (no `//`, `.`, `..` or trailing slash), not `/`,
/// no NUL. The default is `/nix/store`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreDir(Box<str>);

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".into())
    }
}

impl fmt::Debug for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreDir({})", self.0)
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store path printed with its store dir; see [`StoreDir::display`].
pub struct DisplayStorePath<'a> {
    dir: &'a StoreDir,
    path: &'a StorePath,
}

impl fmt::Display for DisplayStorePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dir.0, self.path)
    }
}

impl StoreDir {
    /// Validates a store directory.
    pub fn new(dir: impl Into<String>) -> Result<Self> {
        let dir: String = dir.into();
        let bad = |reason: &str| Error::BadStoreDir {
            dir: excerpt(&dir),
            reason: reason.into(),
        };
        if !dir.starts_with('/') {
            return Err(bad("must be an absolute path"));
        }
        if dir == "/" {
            return Err(bad("must not be the root directory"));
        }
        if dir.ends_with('/') {
            return Err(bad("must not end with '/'"));
        }
        if dir.contains('\0') {
            return Err(bad("must not contain NUL"));
        }
        if dir
            .split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("must be canonical (no empty, '.' or '..' components)"));
        }
        Ok(StoreDir(dir.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a printed store path: exactly `<store dir>/<hash part>-<name>`.
    pub fn parse_path(&self, path: &str) -> Result<StorePath> {
        let base = path
            .strip_prefix(&*self.0)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|base| !base.is_empty() && !base.contains('/'))
            .ok_or_else(|| Error::NotInStore {
                path: excerpt(path),
            })?;
        StorePath::from_base_name(base)
    }

    /// Splits a path inside the store into the store path and the rest (`""` or starting with
    /// `/`), e.g. `/nix/store/…-bash/bin/sh` → (`…-bash`, `/bin/sh`) — Nix's `toStorePath`.
    pub fn split_path<'a>(&self, path: &'a str) -> Result<(StorePath, &'a str)> {
        let rest = path
            .strip_prefix(&*self.0)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| Error::NotInStore {
                path: excerpt(path),
            })?;
        let (base, sub) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        Ok((StorePath::from_base_name(base)?, sub))
    }

    /// Whether `path` is syntactically `<store dir>/<valid base name>`.
    pub fn is_store_path(&self, path: &str) -> bool {
        self.parse_path(path).is_ok()
    }

    /// A `Display` value printing `<store dir>/<base name>`.
    pub fn display<'a>(&'a self, path: &'a StorePath) -> DisplayStorePath<'a> {
        DisplayStorePath { dir: self, path }
    }

    /// `<store dir>/<base name>` as a `String`.
    pub fn print(&self, path: &StorePath) -> String {
        self.display(path).to_string()
    }

    /// Nix's `makeStorePath(type, hash, name)`.
    pub fn make_store_path(&self, path_type: &str, inner: &Hash, name: &str) -> Result<StorePath> {
        validate_name(name)?;
        let fingerprint = format!("{path_type}:{}:{}:{name}", inner.to_typed_base16(), self.0);
        let folded = compress_hash(Hash::sha256(fingerprint).digest(), DIGEST_LEN);
        let mut digest = [0u8; DIGEST_LEN];
        digest.copy_from_slice(&folded);
        StorePath::new(digest, name)
    }

    /// `<type>` followed by `:<printed path>` for each reference, then `:self`.
    fn make_type(&self, base: &str, refs: &BTreeSet<StorePath>, self_ref: bool) -> String {
        let mut t = base.to_owned();
        for r in refs {
            t.push(':');
            t.push_str(&self.print(r));
        }
        if self_ref {
            t.push_str(":self");
        }
        t
    }

    /// The path of a text object (`text:sha256`): `builtins.toFile`, `addTextToStore`, `.drv`
    /// files. `text_hash` is the sha256 of the contents; references may not include the path
    /// itself.
    pub fn make_text_path(
        &self,
        name: &str,
        text_hash: &Hash,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath> {
        if text_hash.algo() != HashAlgo::Sha256 {
            return Err(Error::BadPathComputation {
                name: excerpt(name),
                reason: format!("text paths need a sha256 hash, got {}", text_hash.algo()),
            });
        }
        self.make_store_path(&self.make_type("text", refs, false), text_hash, name)
    }

    /// The path of a fixed-output object (flat or NAR, any algorithm). Only NAR+sha256
    /// ("source") paths may have references, including to themselves.
    pub fn make_fixed_output_path(
        &self,
        name: &str,
        method: ContentAddressMethod,
        hash: &Hash,
        refs: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> Result<StorePath> {
        match method {
            ContentAddressMethod::NixArchive if hash.algo() == HashAlgo::Sha256 => {
                self.make_store_path(&self.make_type("source", refs, self_ref), hash, name)
            }
            ContentAddressMethod::Text => self.make_fixed_text_path(name, hash, refs, self_ref),
            ContentAddressMethod::Flat | ContentAddressMethod::NixArchive => {
                if !refs.is_empty() || self_ref {
                    return Err(Error::BadPathComputation {
                        name: excerpt(name),
                        reason: format!(
                            "a fixed-output path of method '{}' cannot have references",
                            method.render_with_algo(hash.algo())
                        ),
                    });
                }
                let inner = Hash::sha256(format!(
                    "fixed:out:{}{}:",
                    method.drv_prefix(),
                    hash.to_typed_base16()
                ));
                self.make_store_path("output:out", &inner, name)
            }
        }
    }

    fn make_fixed_text_path(
        &self,
        name: &str,
        hash: &Hash,
        refs: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> Result<StorePath> {
        if self_ref {
            return Err(Error::BadPathComputation {
                name: excerpt(name),
                reason: "a text path cannot refer to itself".into(),
            });
        }
        self.make_text_path(name, hash, refs)
    }

    /// The path of a content-addressed object with the given references (`self_ref`: the
    /// object also refers to itself, allowed for NAR+sha256 only).
    pub fn make_path_from_ca(
        &self,
        name: &str,
        ca: &ContentAddress,
        refs: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> Result<StorePath> {
        self.make_fixed_output_path(name, ca.method(), ca.hash(), refs, self_ref)
    }

    /// The path of output `output` of an input-addressed derivation named `drv_name` whose
    /// hash modulo is `drv_hash` (name `<drv_name>` or `<drv_name>-<output>`).
    pub fn make_output_path(
        &self,
        output: &str,
        drv_hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath> {
        validate_output_name(output)?;
        self.make_store_path(
            &format!("output:{output}"),
            drv_hash,
            &output_path_name(drv_name, output),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store() -> StoreDir {
        StoreDir::default()
    }

    fn hex_hash(s: &str) -> Hash {
        Hash::parse_digest(s, HashAlgo::Sha256).unwrap()
    }

    #[test]
    fn parse_and_print() {
        let sd = store();
        let s = "/nix/store/z45ailnkm27lnvhimqkhy08f6sh5m17d-hello.txt";
        let p = sd.parse_path(s).unwrap();
        assert_eq!(p.name(), "hello.txt");
        assert_eq!(p.hash_part(), "z45ailnkm27lnvhimqkhy08f6sh5m17d");
        assert_eq!(sd.print(&p), s);
        assert_eq!(sd.display(&p).to_string(), s);
        assert_eq!(p.to_string(), "z45ailnkm27lnvhimqkhy08f6sh5m17d-hello.txt");
        assert!(!p.is_derivation());
        let d = StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo.drv").unwrap();
        assert!(d.is_derivation());
        assert_eq!(d.derivation_name(), Some("foo"));
    }

    #[test]
    fn not_in_store() {
        let sd = store();
        for bad in [
            "/nix/store",
            "/nix/store/",
            "/nix/storez45ailnkm27lnvhimqkhy08f6sh5m17d-hello",
            "/tmp/z45ailnkm27lnvhimqkhy08f6sh5m17d-hello",
            "/nix/store/z45ailnkm27lnvhimqkhy08f6sh5m17d-hello/bin",
            "nix/store/z45ailnkm27lnvhimqkhy08f6sh5m17d-hello",
        ] {
            let err = sd.parse_path(bad).unwrap_err();
            assert!(matches!(err, Error::NotInStore { .. }), "{bad}: {err}");
            assert_eq!(
                err.to_string(),
                format!("path '{bad}' is not in the Nix store")
            );
        }
    }

    #[test]
    fn bad_base_names() {
        for bad in [
            "z45ailnkm27lnvhimqkhy08f6sh5m17d",        // no name
            "z45ailnkm27lnvhimqkhy08f6sh5m17d-",       // empty name
            "z45ailnkm27lnvhimqkhy08f6sh5m17dxhello",  // no dash
            "e45ailnkm27lnvhimqkhy08f6sh5m17d-hello",  // 'e' not nix32
            "Z45ailnkm27lnvhimqkhy08f6sh5m17d-hello",  // upper case
            "z45ailnkm27lnvhimqkhy08f6sh5m17d-hel lo", // space
            "z45ailnkm27lnvhimqkhy08f6sh5m17d-hel/lo", // slash
            "z45ailnkm27lnvhimqkhy08f6sh5m17d-.",
            "z45ailnkm27lnvhimqkhy08f6sh5m17d-..",
            "z45ailnkm27lnvhimqkhy08f6sh5m17d-.-foo",
            "z45ailnkm27lnvhimqkhy08f6sh5m17d-..-foo",
            "z45ailnkm",
        ] {
            assert!(StorePath::from_base_name(bad).is_err(), "{bad}");
        }
        let ok = ["..foo", ".foo", "-foo", "a?b=c+d_e", "foo.drv"];
        for name in ok {
            validate_name(name).unwrap();
        }
        validate_name(&"a".repeat(211)).unwrap();
        assert!(validate_name(&"a".repeat(212)).is_err());
    }

    #[test]
    fn store_dir_validation() {
        for ok in ["/nix/store", "/tmp/x/store", "/a"] {
            assert_eq!(StoreDir::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "/",
            "nix/store",
            "/nix/store/",
            "/nix//store",
            "/nix/./store",
            "/nix/../store",
            "/a\0b",
        ] {
            assert!(StoreDir::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn split_path() {
        let sd = store();
        let (p, rest) = sd
            .split_path("/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir/sh")
            .unwrap();
        assert_eq!(p.name(), "bbdir");
        assert_eq!(rest, "/sh");
        let (_, rest) = sd
            .split_path("/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir")
            .unwrap();
        assert_eq!(rest, "");
        assert!(
            sd.split_path("/nix/storex/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir")
                .is_err()
        );
    }

    // Vectors from worker-protocol.md Appendix B (produced by the real 2.8 daemon).
    #[test]
    fn spec_fixed_paths() {
        let sd = store();
        let none = BTreeSet::new();
        let nar = hex_hash("34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603");
        let p = sd
            .make_fixed_output_path(
                "hello.txt",
                ContentAddressMethod::NixArchive,
                &nar,
                &none,
                false,
            )
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/z45ailnkm27lnvhimqkhy08f6sh5m17d-hello.txt"
        );

        let flat = Hash::sha256("flat content\n");
        let p = sd
            .make_fixed_output_path("flat.txt", ContentAddressMethod::Flat, &flat, &none, false)
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/a9g0x6sd3ncdcmdy8kk6ks9l3a0m042a-flat.txt"
        );

        let md5 = Hash::compute(HashAlgo::Md5, "md5 flat");
        assert_eq!(md5.to_nix32(), "00j42jqzbdxclsxj8f0z9iqf37");
        let p = sd
            .make_fixed_output_path("ca-test", ContentAddressMethod::Flat, &md5, &none, false)
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/60md1xl4js9h347a7h04zfz2asj2z8s9-ca-test"
        );

        let sha1 = Hash::parse_digest("cisdx6w3x58bip9nj5xalzmbw4y1wa1r", HashAlgo::Sha1).unwrap();
        let p = sd
            .make_fixed_output_path(
                "flat.txt",
                ContentAddressMethod::NixArchive,
                &sha1,
                &none,
                false,
            )
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/lggcap1syff2xqzzv9m369mbjg90db6i-flat.txt"
        );

        let old_flat = Hash::compute(HashAlgo::Sha1, "old flat contents\n");
        let p = sd
            .make_fixed_output_path(
                "old-flat",
                ContentAddressMethod::Flat,
                &old_flat,
                &none,
                false,
            )
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/k8vdrf0j1lmm89qdb6av9bki2q6wk1g4-old-flat"
        );

        let fod = hex_hash("0c3071418e6356e614898c84ed064ca95e88551bc0811b534bdf1952ecdae534");
        let p = sd
            .make_fixed_output_path("fod-test", ContentAddressMethod::Flat, &fod, &none, false)
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/wv6lq8ci18zccnlqlk9p3j0va0lm5fdq-fod-test"
        );

        let fodr = hex_hash("532e714badd6fa79bc370aafc32ded27fff4b785e985cf85f47d9f701fa0e8d6");
        let p = sd
            .make_fixed_output_path(
                "fodr-test",
                ContentAddressMethod::NixArchive,
                &fodr,
                &none,
                false,
            )
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/gby3fmld4bsy8g0ixlw9p2w1wmwfy00w-fodr-test"
        );
    }

    #[test]
    fn spec_text_paths() {
        let sd = store();
        let p = sd
            .make_text_path(
                "hello-text",
                &Hash::sha256("hello world\n"),
                &BTreeSet::new(),
            )
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/0nblvv9yf6ffiw3dj9mbcqw5hxfc617g-hello-text"
        );

        let bbdir = sd
            .parse_path("/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir")
            .unwrap();
        let text = "text with ref /nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir\n";
        let h = Hash::sha256(text);
        assert_eq!(
            h.to_nix32(),
            "01drs1vvy2m2ss6xs3gh39wmj87jchm09griippqkpp6hgnf8c46"
        );
        let p = sd
            .make_text_path("ca-test", &h, &BTreeSet::from([bbdir]))
            .unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/wshwdacj4a9iq01c6l1cyix73z87qpni-ca-test"
        );
    }

    #[test]
    fn spec_output_path() {
        let sd = store();
        let h = hex_hash("74efd719692c7f72ff4d4b686c40b57a304729d410709eefee2bef7b545b4783");
        let p = sd.make_output_path("out", &h, "bd-test").unwrap();
        assert_eq!(
            sd.print(&p),
            "/nix/store/pfl02xndixxz8jvc0ahax7qsz5c2nlix-bd-test"
        );
        let dev = sd.make_output_path("dev", &h, "bd-test").unwrap();
        assert_eq!(dev.name(), "bd-test-dev");
    }

    #[test]
    fn references_rules() {
        let sd = store();
        let r = sd
            .parse_path("/nix/store/h8v50zwdsfhidk5zbcmzg82db28md31c-bbdir")
            .unwrap();
        let refs = BTreeSet::from([r]);
        let h = Hash::sha256("x");
        assert!(
            sd.make_fixed_output_path("a", ContentAddressMethod::Flat, &h, &refs, false)
                .is_err()
        );
        assert!(
            sd.make_fixed_output_path("a", ContentAddressMethod::Flat, &h, &BTreeSet::new(), true)
                .is_err()
        );
        let sha1 = Hash::compute(HashAlgo::Sha1, "x");
        assert!(
            sd.make_fixed_output_path("a", ContentAddressMethod::NixArchive, &sha1, &refs, false)
                .is_err()
        );
        assert!(
            sd.make_fixed_output_path("a", ContentAddressMethod::Text, &h, &refs, true)
                .is_err()
        );
        let with_self = sd
            .make_fixed_output_path("a", ContentAddressMethod::NixArchive, &h, &refs, true)
            .unwrap();
        let without = sd
            .make_fixed_output_path("a", ContentAddressMethod::NixArchive, &h, &refs, false)
            .unwrap();
        assert_ne!(with_self, without);
        // Text via the CA entry point equals the text path.
        let t = sd
            .make_fixed_output_path("a", ContentAddressMethod::Text, &h, &refs, false)
            .unwrap();
        assert_eq!(t, sd.make_text_path("a", &h, &refs).unwrap());
        assert!(sd.make_text_path("a", &sha1, &refs).is_err());
    }

    #[test]
    fn store_dir_changes_paths() {
        let other = StoreDir::new("/tmp/store").unwrap();
        let h = Hash::sha256("x");
        let a = store().make_text_path("a", &h, &BTreeSet::new()).unwrap();
        let b = other.make_text_path("a", &h, &BTreeSet::new()).unwrap();
        assert_ne!(a, b);
        assert!(other.print(&b).starts_with("/tmp/store/"));
    }

    fn any_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9+._?=-]{1,40}".prop_filter("valid", |n| validate_name(n).is_ok())
    }

    proptest! {
        #[test]
        fn print_parse_round_trip(digest in any::<[u8; 20]>(), name in any_name()) {
            let p = StorePath::new(digest, &name).unwrap();
            let sd = store();
            let printed = sd.print(&p);
            prop_assert_eq!(sd.parse_path(&printed).unwrap(), p.clone());
            prop_assert_eq!(StorePath::from_base_name(&p.to_string()).unwrap(), p);
        }

        #[test]
        fn order_is_base_name_order(
            a in any::<[u8; 20]>(), b in any::<[u8; 20]>(), na in any_name(), nb in any_name(), same in any::<bool>()
        ) {
            let b = if same { a } else { b };
            let pa = StorePath::new(a, &na).unwrap();
            let pb = StorePath::new(b, &nb).unwrap();
            prop_assert_eq!(pa.cmp(&pb), pa.to_string().cmp(&pb.to_string()));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = store().parse_path(&s);
            let _ = StorePath::from_base_name(&s);
            let _ = store().split_path(&s);
        }
    }
}
