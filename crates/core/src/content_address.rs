//! Content addresses: how a store object's path follows from its contents.
//!
//! | form | meaning |
//! |---|---|
//! | `text:sha256:<hash>` | sha256 of the file bytes ("text" hashing: `.drv`, `builtins.toFile`); sha256 only |
//! | `fixed:<algo>:<hash>` | flat: the single regular file's bytes hashed directly |
//! | `fixed:r:<algo>:<hash>` | the NAR serialisation hashed ("recursive") |
//!
//! Writers emit the digest in nix32; readers accept nix32, base16 or base64 by length.
//! `<algo>` is `md5`, `sha1`, `sha256` or `sha512`. Nix's experimental `fixed:git:` method
//! (git-hashing) is rejected with an explicit message.
//!
//! The "method with algorithm" form (worker protocol `camStr` in AddToStore ≥1.25) drops the
//! digest: `text:sha256`, `fixed:<algo>`, `fixed:r:<algo>`. Derivation outputs use a third
//! spelling in their `hashAlgo` field: `<algo>`, `r:<algo>`, `text:<algo>`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result, excerpt};
use crate::hash::{Hash, HashAlgo};

/// How the contents are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContentAddressMethod {
    /// `text:` — hash of the file bytes; the object may refer to other paths but not itself.
    Text,
    /// `fixed:` — hash of a single regular file's bytes.
    Flat,
    /// `fixed:r:` — hash of the NAR serialisation.
    NixArchive,
}

fn git_unsupported(input: &str) -> Error {
    Error::BadContentAddress {
        input: excerpt(input),
        reason: "the 'git' method (experimental git-hashing) is not supported".into(),
    }
}

impl ContentAddressMethod {
    /// The prefix of a derivation output's `hashAlgo` field: `""`, `r:` or `text:`.
    pub const fn drv_prefix(self) -> &'static str {
        match self {
            ContentAddressMethod::Text => "text:",
            ContentAddressMethod::Flat => "",
            ContentAddressMethod::NixArchive => "r:",
        }
    }

    /// The prefix of a full content address: `text:`, `fixed:` or `fixed:r:`.
    pub const fn ca_prefix(self) -> &'static str {
        match self {
            ContentAddressMethod::Text => "text:",
            ContentAddressMethod::Flat => "fixed:",
            ContentAddressMethod::NixArchive => "fixed:r:",
        }
    }

    /// `text:sha256`, `fixed:<algo>` or `fixed:r:<algo>`.
    pub fn render_with_algo(self, algo: HashAlgo) -> String {
        format!("{}{algo}", self.ca_prefix())
    }

    /// `<algo>`, `r:<algo>` or `text:<algo>` as in a `.drv` output.
    pub fn render_drv_algo(self, algo: HashAlgo) -> String {
        format!("{}{algo}", self.drv_prefix())
    }

    /// Strips a `text:`/`fixed:`/`fixed:r:` prefix.
    fn split_ca_prefix(s: &str) -> Result<(ContentAddressMethod, &str)> {
        if let Some(rest) = s.strip_prefix("text:") {
            Ok((ContentAddressMethod::Text, rest))
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            if let Some(rest) = rest.strip_prefix("r:") {
                Ok((ContentAddressMethod::NixArchive, rest))
            } else if rest.starts_with("git:") {
                Err(git_unsupported(s))
            } else {
                Ok((ContentAddressMethod::Flat, rest))
            }
        } else {
            Err(Error::BadContentAddress {
                input: excerpt(s),
                reason: "expected a 'text:' or 'fixed:' prefix".into(),
            })
        }
    }

    /// Parses `text:sha256`, `fixed:<algo>`, `fixed:r:<algo>`.
    pub fn parse_with_algo(s: &str) -> Result<(ContentAddressMethod, HashAlgo)> {
        let (method, algo) = Self::split_ca_prefix(s)?;
        let algo = HashAlgo::parse(algo)?;
        check_text_algo(s, method, algo)?;
        Ok((method, algo))
    }

    /// Parses a `.drv` output `hashAlgo` field: `<algo>`, `r:<algo>`, `text:<algo>`.
    pub fn parse_drv_algo(s: &str) -> Result<(ContentAddressMethod, HashAlgo)> {
        let (method, algo) = if let Some(rest) = s.strip_prefix("r:") {
            (ContentAddressMethod::NixArchive, rest)
        } else if let Some(rest) = s.strip_prefix("text:") {
            (ContentAddressMethod::Text, rest)
        } else if s.starts_with("git:") {
            return Err(git_unsupported(s));
        } else {
            (ContentAddressMethod::Flat, s)
        };
        let algo = HashAlgo::parse(algo)?;
        check_text_algo(s, method, algo)?;
        Ok((method, algo))
    }
}

fn check_text_algo(input: &str, method: ContentAddressMethod, algo: HashAlgo) -> Result<()> {
    if method == ContentAddressMethod::Text && algo != HashAlgo::Sha256 {
        return Err(Error::BadContentAddress {
            input: excerpt(input),
            reason: format!("text content addresses must use sha256, not {algo}"),
        });
    }
    Ok(())
}

/// A method and the hash of the contents under that method.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentAddress {
    method: ContentAddressMethod,
    hash: Hash,
}

impl ContentAddress {
    /// Checked constructor: text content addresses must use sha256.
    pub fn new(method: ContentAddressMethod, hash: Hash) -> Result<Self> {
        if method == ContentAddressMethod::Text && hash.algo() != HashAlgo::Sha256 {
            return Err(Error::BadContentAddress {
                input: format!("text:{}", hash.to_typed_nix32()),
                reason: format!(
                    "text content addresses must use sha256, not {}",
                    hash.algo()
                ),
            });
        }
        Ok(ContentAddress { method, hash })
    }

    pub fn method(&self) -> ContentAddressMethod {
        self.method
    }

    pub fn hash(&self) -> &Hash {
        &self.hash
    }

    /// Parses `text:sha256:<h>`, `fixed:<algo>:<h>`, `fixed:r:<algo>:<h>`.
    pub fn parse(s: &str) -> Result<Self> {
        let (method, rest) = ContentAddressMethod::split_ca_prefix(s)?;
        let (algo, digest) = rest
            .split_once(':')
            .ok_or_else(|| Error::BadContentAddress {
                input: excerpt(s),
                reason: "expected '<algo>:<hash>' after the method".into(),
            })?;
        let algo = HashAlgo::parse(algo)?;
        check_text_algo(s, method, algo)?;
        let hash = Hash::parse_digest(digest, algo).map_err(|e| Error::BadContentAddress {
            input: excerpt(s),
            reason: e.to_string(),
        })?;
        Ok(ContentAddress { method, hash })
    }

    /// Parses the optional form used on the wire and in the db: `""` means none.
    pub fn parse_opt(s: &str) -> Result<Option<Self>> {
        if s.is_empty() {
            Ok(None)
        } else {
            Self::parse(s).map(Some)
        }
    }

    /// `text:sha256`, `fixed:<algo>` or `fixed:r:<algo>`.
    pub fn render_method_algo(&self) -> String {
        self.method.render_with_algo(self.hash.algo())
    }
}

impl fmt::Display for ContentAddress {
    /// `<method prefix><algo>:<nix32>`, as Nix writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.method.ca_prefix(),
            self.hash.to_typed_nix32()
        )
    }
}

impl fmt::Debug for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentAddress({self})")
    }
}

impl FromStr for ContentAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ContentAddress::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_vectors_round_trip() {
        for s in [
            "fixed:md5:00j42jqzbdxclsxj8f0z9iqf37",
            "fixed:r:sha1:cisdx6w3x58bip9nj5xalzmbw4y1wa1r",
            "text:sha256:01drs1vvy2m2ss6xs3gh39wmj87jchm09griippqkpp6hgnf8c46",
            "fixed:r:sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil",
            "fixed:sha256:0hxx6wyswf9fj3z81yr0810i8k5lx3jbp4xw8ipwamswn1smxkr9",
        ] {
            let ca = ContentAddress::parse(s).unwrap();
            assert_eq!(ca.to_string(), s);
        }
        let ca = ContentAddress::parse("fixed:r:sha1:cisdx6w3x58bip9nj5xalzmbw4y1wa1r").unwrap();
        assert_eq!(ca.method(), ContentAddressMethod::NixArchive);
        assert_eq!(ca.render_method_algo(), "fixed:r:sha1");
    }

    #[test]
    fn readers_accept_other_encodings() {
        let h = Hash::sha256("x");
        let want = ContentAddress::new(ContentAddressMethod::Flat, h).unwrap();
        for digest in [h.to_base16(), h.to_nix32(), h.to_base64()] {
            assert_eq!(
                ContentAddress::parse(&format!("fixed:sha256:{digest}")).unwrap(),
                want
            );
        }
    }

    #[test]
    fn method_with_algo() {
        let cases = [
            ("text:sha256", ContentAddressMethod::Text, HashAlgo::Sha256),
            ("fixed:sha1", ContentAddressMethod::Flat, HashAlgo::Sha1),
            (
                "fixed:r:sha256",
                ContentAddressMethod::NixArchive,
                HashAlgo::Sha256,
            ),
            (
                "fixed:r:md5",
                ContentAddressMethod::NixArchive,
                HashAlgo::Md5,
            ),
        ];
        for (s, m, a) in cases {
            assert_eq!(ContentAddressMethod::parse_with_algo(s).unwrap(), (m, a));
            assert_eq!(m.render_with_algo(a), s);
        }
        let drv = [
            ("sha256", ContentAddressMethod::Flat),
            ("r:sha256", ContentAddressMethod::NixArchive),
            ("text:sha256", ContentAddressMethod::Text),
        ];
        for (s, m) in drv {
            assert_eq!(
                ContentAddressMethod::parse_drv_algo(s).unwrap(),
                (m, HashAlgo::Sha256)
            );
            assert_eq!(m.render_drv_algo(HashAlgo::Sha256), s);
        }
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "sha256:abc",
            "text:sha1:cisdx6w3x58bip9nj5xalzmbw4y1wa1r",
            "fixed:git:sha1:cisdx6w3x58bip9nj5xalzmbw4y1wa1r",
            "fixed:sha256",
            "fixed:blake3:abc",
            "fixed:sha256:tooshort",
            "nar:sha256:0hxx6wyswf9fj3z81yr0810i8k5lx3jbp4xw8ipwamswn1smxkr9",
        ] {
            assert!(ContentAddress::parse(bad).is_err(), "{bad}");
        }
        for bad in [
            "text:sha1",
            "fixed:",
            "fixed:git:sha1",
            "r:sha256",
            "sha256",
        ] {
            assert!(ContentAddressMethod::parse_with_algo(bad).is_err(), "{bad}");
        }
        assert!(ContentAddressMethod::parse_drv_algo("text:md5").is_err());
        assert!(ContentAddressMethod::parse_drv_algo("git:sha1").is_err());
        assert!(
            ContentAddress::new(
                ContentAddressMethod::Text,
                Hash::compute(HashAlgo::Sha1, "")
            )
            .is_err()
        );
        assert_eq!(ContentAddress::parse_opt("").unwrap(), None);
    }

    fn any_ca() -> impl Strategy<Value = ContentAddress> {
        (
            prop::sample::select(vec![
                ContentAddressMethod::Text,
                ContentAddressMethod::Flat,
                ContentAddressMethod::NixArchive,
            ]),
            prop::sample::select(HashAlgo::ALL.to_vec()),
            any::<[u8; 64]>(),
        )
            .prop_map(|(m, a, b)| {
                let a = if m == ContentAddressMethod::Text {
                    HashAlgo::Sha256
                } else {
                    a
                };
                ContentAddress::new(m, Hash::new(a, &b[..a.digest_len()]).unwrap()).unwrap()
            })
    }

    proptest! {
        #[test]
        fn round_trip(ca in any_ca()) {
            prop_assert_eq!(ContentAddress::parse(&ca.to_string()).unwrap(), ca);
            let (m, a) = ContentAddressMethod::parse_with_algo(&ca.render_method_algo()).unwrap();
            prop_assert_eq!((m, a), (ca.method(), ca.hash().algo()));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,120}") {
            let _ = ContentAddress::parse(&s);
            let _ = ContentAddressMethod::parse_with_algo(&s);
            let _ = ContentAddressMethod::parse_drv_algo(&s);
        }
    }
}
