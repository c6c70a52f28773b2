//! Hashes as Nix writes and reads them.
//!
//! A [`Hash`] is an algorithm plus a digest of exactly that algorithm's length. Textual forms:
//!
//! | form | example | where Nix uses it |
//! |---|---|---|
//! | base16 | `6af7…5e6b` (64 chars for sha256) | wire `narHash`, `.drv` fixed-output hashes |
//! | nix32 | `0ssy…3xva` (52 chars) | content addresses, fingerprints, store path hash parts |
//! | base64 | `avc…aw=` (44 chars) | inside SRI |
//! | typed | `sha256:<base16 or nix32>` | db `ValidPaths.hash` (`sha256:<base16>`), narinfo |
//! | SRI | `sha256-<base64>` | new CLI, JSON, error messages |
//!
//! Readers accept base16, nix32 or base64 for the digest part and tell them apart by length
//! (for each algorithm the three lengths differ): md5 32/26/24, sha1 40/32/28,
//! sha256 64/52/44, sha512 128/103/88. Base16 may be upper or lower case (Nix accepts both);
//! base64 must be canonical with padding.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use md5::Digest as _;

use crate::error::{Error, Result, excerpt};
use crate::nixbase32;

/// The hash algorithms Nix stores paths with. (BLAKE3 exists in new Nix behind an
/// experimental flag; no store object of a stable Nix uses it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// All supported algorithms.
    pub const ALL: [HashAlgo; 4] = [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
    ];

    /// The name Nix prints (`md5`, `sha1`, `sha256`, `sha512`).
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// Parses an algorithm name (exact, lower case, as Nix does).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "md5" => Ok(HashAlgo::Md5),
            "sha1" => Ok(HashAlgo::Sha1),
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            _ => Err(Error::UnknownHashAlgo(excerpt(s))),
        }
    }

    /// Length of the base16 form of a digest.
    pub const fn base16_len(self) -> usize {
        self.digest_len() * 2
    }

    /// Length of the nix32 form of a digest.
    pub const fn nix32_len(self) -> usize {
        nixbase32::encoded_len(self.digest_len())
    }

    /// Length of the (padded) base64 form of a digest.
    pub const fn base64_len(self) -> usize {
        self.digest_len().div_ceil(3) * 4
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        HashAlgo::parse(s)
    }
}

const MAX_DIGEST: usize = 64;

/// An algorithm and a digest of exactly [`HashAlgo::digest_len`] bytes.
///
/// Built only through checked constructors; bytes past the digest length are always zero, so
/// the derived comparisons are meaningful.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; MAX_DIGEST],
}

impl Hash {
    /// Wraps a digest, checking its length against `algo`.
    pub fn new(algo: HashAlgo, digest: &[u8]) -> Result<Self> {
        if digest.len() != algo.digest_len() {
            return Err(Error::DigestLength {
                algo,
                expected: algo.digest_len(),
                found: digest.len(),
            });
        }
        let mut bytes = [0u8; MAX_DIGEST];
        bytes[..digest.len()].copy_from_slice(digest);
        Ok(Hash { algo, bytes })
    }

    /// Hashes `data` in one go.
    pub fn compute(algo: HashAlgo, data: impl AsRef<[u8]>) -> Self {
        let mut h = Hasher::new(algo);
        h.update(data.as_ref());
        h.finish()
    }

    /// Shorthand for `Hash::compute(HashAlgo::Sha256, data)`.
    pub fn sha256(data: impl AsRef<[u8]>) -> Self {
        Hash::compute(HashAlgo::Sha256, data)
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The raw digest bytes.
    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.digest_len()]
    }

    /// Lower-case hex of the digest, no prefix.
    pub fn to_base16(&self) -> String {
        data_encoding::HEXLOWER.encode(self.digest())
    }

    /// Nix32 of the digest, no prefix.
    pub fn to_nix32(&self) -> String {
        nixbase32::encode(self.digest())
    }

    /// Padded standard base64 of the digest, no prefix.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.digest())
    }

    /// `<algo>-<base64>` (Subresource Integrity).
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// `<algo>:<base16>`, the form of `ValidPaths.hash` in the store database.
    pub fn to_typed_base16(&self) -> String {
        format!("{}:{}", self.algo, self.to_base16())
    }

    /// `<algo>:<nix32>`, the form in signature fingerprints and narinfo files.
    pub fn to_typed_nix32(&self) -> String {
        format!("{}:{}", self.algo, self.to_nix32())
    }

    /// Parses a bare digest of a known algorithm, telling base16, nix32 and base64 apart by
    /// length (Nix's `Hash::parseNonSRIUnprefixed`).
    pub fn parse_digest(s: &str, algo: HashAlgo) -> Result<Self> {
        let bad = |reason: String| Error::BadHash {
            input: excerpt(s),
            reason,
        };
        let b = s.as_bytes();
        let digest = if b.len() == algo.base16_len() {
            HEXLOWER_PERMISSIVE
                .decode(b)
                .map_err(|e| bad(format!("invalid base16: {e}")))?
        } else if b.len() == algo.nix32_len() {
            nixbase32::decode(b).map_err(|e| bad(e.to_string()))?
        } else if b.len() == algo.base64_len() {
            BASE64
                .decode(b)
                .map_err(|e| bad(format!("invalid base64: {e}")))?
        } else {
            return Err(bad(format!(
                "wrong length {} for a {algo} hash (expected {} base16, {} nix32 or {} base64 characters)",
                b.len(),
                algo.base16_len(),
                algo.nix32_len(),
                algo.base64_len()
            )));
        };
        Hash::new(algo, &digest)
    }

    /// Parses `<algo>-<base64>`.
    pub fn parse_sri(s: &str) -> Result<Self> {
        let (algo, rest) = s.split_once('-').ok_or_else(|| Error::BadHash {
            input: excerpt(s),
            reason: "not an SRI hash (no '-')".into(),
        })?;
        let algo = HashAlgo::parse(algo)?;
        Self::parse_sri_digest(s, algo, rest)
    }

    fn parse_sri_digest(whole: &str, algo: HashAlgo, digest: &str) -> Result<Self> {
        if digest.len() != algo.base64_len() {
            return Err(Error::BadHash {
                input: excerpt(whole),
                reason: format!(
                    "SRI {algo} hash must have {} base64 characters, got {}",
                    algo.base64_len(),
                    digest.len()
                ),
            });
        }
        let bytes = BASE64
            .decode(digest.as_bytes())
            .map_err(|e| Error::BadHash {
                input: excerpt(whole),
                reason: format!("invalid base64: {e}"),
            })?;
        Hash::new(algo, &bytes)
    }

    /// Splits off the algorithm of `<algo>:<digest>` or `<algo>-<base64>` (Nix checks `:`
    /// first). Returns `None` when there is neither.
    fn split_prefix(s: &str) -> Option<(&str, &str, bool)> {
        if let Some((a, rest)) = s.split_once(':') {
            Some((a, rest, false))
        } else {
            s.split_once('-').map(|(a, rest)| (a, rest, true))
        }
    }

    /// Parses a hash that names its algorithm: `<algo>:<base16|nix32|base64>` or SRI
    /// (Nix's `Hash::parseAnyPrefixed`).
    pub fn parse_prefixed(s: &str) -> Result<Self> {
        let (algo, rest, sri) = Self::split_prefix(s).ok_or_else(|| Error::BadHash {
            input: excerpt(s),
            reason: "does not include a hash algorithm".into(),
        })?;
        let algo = HashAlgo::parse(algo)?;
        if sri {
            Self::parse_sri_digest(s, algo, rest)
        } else {
            Self::parse_digest(rest, algo)
        }
    }

    /// Parses any form Nix accepts (`Hash::parseAny`): prefixed or SRI, or a bare digest when
    /// `algo` is known from context. A prefix that contradicts `algo` is an error.
    pub fn parse_any(s: &str, algo: Option<HashAlgo>) -> Result<Self> {
        match Self::split_prefix(s) {
            Some((name, _, _)) if HashAlgo::parse(name).is_ok() || algo.is_none() => {
                let h = Self::parse_prefixed(s)?;
                match algo {
                    Some(want) if want != h.algo => Err(Error::BadHash {
                        input: excerpt(s),
                        reason: format!("expected a {want} hash, got {}", h.algo),
                    }),
                    _ => Ok(h),
                }
            }
            // Base64 digests may contain neither ':' nor '-', but an unknown "prefix" with a
            // known algorithm is still best reported as a bad digest.
            _ => match algo {
                Some(algo) => Self::parse_digest(s, algo),
                None => Err(Error::BadHash {
                    input: excerpt(s),
                    reason: "does not include a hash algorithm, nor is one known from context"
                        .into(),
                }),
            },
        }
    }
}

impl fmt::Display for Hash {
    /// SRI, as modern Nix prints hashes in messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.algo, self.to_base64())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_typed_base16())
    }
}

impl FromStr for Hash {
    type Err = Error;
    /// Same as [`Hash::parse_prefixed`].
    fn from_str(s: &str) -> Result<Self> {
        Hash::parse_prefixed(s)
    }
}

/// XOR-folds `digest` into `len` bytes: `out[i % len] ^= digest[i]` (Nix's `compressHash`,
/// used to shorten sha256 to the 20-byte store path digest).
pub fn compress_hash(digest: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if len == 0 {
        return out;
    }
    for (i, b) in digest.iter().enumerate() {
        out[i % len] ^= b;
    }
    out
}

/// A streaming hash over one of the four algorithms.
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Hasher::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        match self {
            Hasher::Md5(_) => HashAlgo::Md5,
            Hasher::Sha1(_) => HashAlgo::Sha1,
            Hasher::Sha256(_) => HashAlgo::Sha256,
            Hasher::Sha512(_) => HashAlgo::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        let algo = self.algo();
        let mut bytes = [0u8; MAX_DIGEST];
        match self {
            Hasher::Md5(h) => bytes[..16].copy_from_slice(&h.finalize()),
            Hasher::Sha1(h) => bytes[..20].copy_from_slice(&h.finalize()),
            Hasher::Sha256(h) => bytes[..32].copy_from_slice(&h.finalize()),
            Hasher::Sha512(h) => bytes[..64].copy_from_slice(&h.finalize()),
        }
        Hash { algo, bytes }
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes and counts every byte the inner writer accepted. With
/// [`std::io::sink`] as the inner writer it is a plain hashing sink (e.g. for a NAR dump).
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, algo: HashAlgo) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(algo),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, the hash of everything written, and its length.
    pub fn finish(self) -> (W, Hash, u64) {
        (self.inner, self.hasher.finish(), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = buf.get(..n).unwrap_or(buf);
        self.hasher.update(written);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, algo: HashAlgo) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(algo),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The inner reader, the hash of everything read, and its length.
    pub fn finish(self) -> (R, Hash, u64) {
        (self.inner, self.hasher.finish(), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = buf.get(..n).unwrap_or(buf);
        self.hasher.update(got);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HELLO_SHA256: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";

    #[test]
    fn known_digests() {
        // "hello world" under every algorithm (coreutils' md5sum/sha*sum).
        let cases = [
            (HashAlgo::Md5, "5eb63bbbe01eeed093cb22bb8f5acdc3"),
            (HashAlgo::Sha1, "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"),
            (HashAlgo::Sha256, HELLO_SHA256),
            (
                HashAlgo::Sha512,
                "309ecc489c12d6eb4cc40f50c902f2b4d0ed77ee511a7c7a9bcd3ca86d4cd86f\
                 989dd35bc5ff499670da34255b45b0cfd830e81f605dcf7dc5542e93ae9cd76f",
            ),
        ];
        for (algo, hex) in cases {
            let h = Hash::compute(algo, "hello world");
            assert_eq!(h.to_base16(), hex);
            assert_eq!(h.digest().len(), algo.digest_len());
        }
    }

    #[test]
    fn forms() {
        let h = Hash::sha256("hello world");
        assert_eq!(h.to_typed_base16(), format!("sha256:{HELLO_SHA256}"));
        assert_eq!(
            h.to_sri(),
            "sha256-uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
        );
        assert_eq!(h.to_string(), h.to_sri());
        for s in [
            h.to_typed_base16(),
            h.to_typed_nix32(),
            format!("sha256:{}", h.to_base64()),
            h.to_sri(),
            format!("sha256:{}", HELLO_SHA256.to_uppercase()),
        ] {
            assert_eq!(Hash::parse_prefixed(&s).unwrap(), h, "{s}");
            assert_eq!(Hash::parse_any(&s, None).unwrap(), h, "{s}");
            assert_eq!(
                Hash::parse_any(&s, Some(HashAlgo::Sha256)).unwrap(),
                h,
                "{s}"
            );
            assert_eq!(s.parse::<Hash>().unwrap(), h);
        }
        for s in [h.to_base16(), h.to_nix32(), h.to_base64()] {
            assert_eq!(Hash::parse_digest(&s, HashAlgo::Sha256).unwrap(), h);
            assert_eq!(Hash::parse_any(&s, Some(HashAlgo::Sha256)).unwrap(), h);
            assert!(Hash::parse_any(&s, None).is_err(), "{s} has no algorithm");
        }
    }

    #[test]
    fn spec_nar_hash_vector() {
        let h = Hash::parse_digest(
            "6af7914a359948903c64b4d071e48a438c7b6c43cd0852e1137939bcc0e95e6b",
            HashAlgo::Sha256,
        )
        .unwrap();
        assert_eq!(
            h.to_typed_nix32(),
            "sha256:0ssyx70bqfbr2ghm426d8dn7p323ibj73l5lchy90j4r6m593xva"
        );
    }

    #[test]
    fn rejects() {
        let h = Hash::sha256("x");
        assert!(matches!(
            Hash::new(HashAlgo::Sha1, &[0; 32]),
            Err(Error::DigestLength { .. })
        ));
        assert!(matches!(
            HashAlgo::parse("blake3"),
            Err(Error::UnknownHashAlgo(_))
        ));
        assert!(matches!(
            Hash::parse_prefixed("blake3:abcd"),
            Err(Error::UnknownHashAlgo(_))
        ));
        // Contradicting prefix.
        assert!(Hash::parse_any(&h.to_typed_base16(), Some(HashAlgo::Sha1)).is_err());
        // Wrong lengths.
        assert!(Hash::parse_digest("abcd", HashAlgo::Sha256).is_err());
        assert!(Hash::parse_prefixed(&format!("sha256:{}0", h.to_base16())).is_err());
        // SRI must be base64 of the right length.
        assert!(Hash::parse_sri(&format!("sha256-{}", h.to_base16())).is_err());
        // Bad characters.
        let mut hex = h.to_base16();
        hex.replace_range(0..1, "g");
        assert!(Hash::parse_digest(&hex, HashAlgo::Sha256).is_err());
        assert!(Hash::parse_prefixed("nocolon").is_err());
    }

    #[test]
    fn algo_lengths_are_distinct_per_algo() {
        for a in HashAlgo::ALL {
            let l = [a.base16_len(), a.nix32_len(), a.base64_len()];
            assert!(l[0] != l[1] && l[1] != l[2] && l[0] != l[2], "{a}");
            assert_eq!(HashAlgo::parse(a.name()).unwrap(), a);
        }
        assert_eq!(HashAlgo::Sha512.nix32_len(), 103);
        assert_eq!(HashAlgo::Sha512.base64_len(), 88);
        assert_eq!(HashAlgo::Md5.base64_len(), 24);
    }

    #[test]
    fn compress() {
        assert_eq!(compress_hash(&[1, 2, 3, 4], 2), vec![1 ^ 3, 2 ^ 4]);
        assert_eq!(compress_hash(&[1, 2, 3], 5), vec![1, 2, 3, 0, 0]);
        assert!(compress_hash(&[1, 2], 0).is_empty());
    }

    #[test]
    fn streaming_adaptors() {
        let mut w = HashingWriter::new(Vec::new(), HashAlgo::Sha256);
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (inner, h, n) = w.finish();
        assert_eq!(inner, b"hello world");
        assert_eq!(n, 11);
        assert_eq!(h, Hash::sha256("hello world"));

        let mut r = HashingReader::new(&b"hello world"[..], HashAlgo::Md5);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let (_, h, n) = r.finish();
        assert_eq!(n, 11);
        assert_eq!(h, Hash::compute(HashAlgo::Md5, "hello world"));

        let mut hasher = Hasher::new(HashAlgo::Sha1);
        hasher.write_all(b"hello world").unwrap();
        assert_eq!(
            hasher.finish(),
            Hash::compute(HashAlgo::Sha1, "hello world")
        );
    }

    fn any_hash() -> impl Strategy<Value = Hash> {
        (
            prop::sample::select(HashAlgo::ALL.to_vec()),
            any::<[u8; 64]>(),
        )
            .prop_map(|(a, b)| Hash::new(a, &b[..a.digest_len()]).unwrap())
    }

    proptest! {
        #[test]
        fn textual_round_trips(h in any_hash()) {
            prop_assert_eq!(Hash::parse_prefixed(&h.to_typed_base16()).unwrap(), h);
            prop_assert_eq!(Hash::parse_prefixed(&h.to_typed_nix32()).unwrap(), h);
            prop_assert_eq!(Hash::parse_sri(&h.to_sri()).unwrap(), h);
            prop_assert_eq!(Hash::parse_any(&h.to_base64(), Some(h.algo())).unwrap(), h);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,140}") {
            let _ = Hash::parse_any(&s, None);
            let _ = Hash::parse_any(&s, Some(HashAlgo::Sha256));
        }
    }
}
