//! Ed25519 signing keys and detached signatures in Nix's text forms.
//!
//! | item | form |
//! |---|---|
//! | secret key file | `<name>:<base64 of 64 bytes: seed ‖ public key>` |
//! | public key | `<name>:<base64 of 32 bytes>` |
//! | signature | `<name>:<base64 of 64 bytes>` (detached, over a path's fingerprint) |
//!
//! A signature is checked against the public key with the same name; a signature by an
//! unknown key is simply not valid (Nix counts valid signatures, it does not fail on others).

use std::collections::BTreeMap;
use std::fmt;

use data_encoding::BASE64;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

use crate::error::{Error, Result, excerpt};

/// Splits `<name>:<base64>` and decodes the payload to exactly `N` bytes.
fn split_key<const N: usize>(kind: &'static str, s: &str) -> Result<(String, [u8; N])> {
    let s = s.trim();
    let (name, b64) = s.split_once(':').ok_or_else(|| Error::BadKey {
        kind,
        name: excerpt(s),
        reason: "expected '<name>:<base64>'".into(),
    })?;
    let bad = |reason: String| Error::BadKey {
        kind,
        name: excerpt(name),
        reason,
    };
    if name.is_empty() {
        return Err(bad("the key name is empty".into()));
    }
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|e| bad(format!("invalid base64: {e}")))?;
    let arr: [u8; N] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| bad(format!("expected {N} bytes, got {}", b.len())))?;
    Ok((name.to_owned(), arr))
}

/// A named Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `<name>:<base64 of 32 bytes>` (surrounding whitespace ignored, as in key files).
    pub fn parse(s: &str) -> Result<Self> {
        let (name, bytes) = split_key::<32>("public", s)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| Error::BadKey {
            kind: "public",
            name: excerpt(&name),
            reason: format!("not an Ed25519 public key: {e}"),
        })?;
        Ok(PublicKey { name, key })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a `<name>:<base64>` signature over `data`. Returns false for a signature by
    /// another key name or a malformed signature.
    pub fn verify(&self, data: &[u8], sig: &str) -> bool {
        let Ok(sig) = Signature::parse(sig) else {
            return false;
        };
        sig.key_name == self.name
            && self
                .key
                .verify(data, &ed25519_dalek::Signature::from_bytes(&sig.bytes))
                .is_ok()
    }
}

impl fmt::Display for PublicKey {
    /// The `<name>:<base64>` form Nix puts in `trusted-public-keys`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A named Ed25519 secret key (a `secret-key-files` entry).
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Parses `<name>:<base64 of 64 bytes (seed ‖ public)>`; the public half must match.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, bytes) = split_key::<64>("secret", s)?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|e| Error::BadKey {
            kind: "secret",
            name: excerpt(&name),
            reason: format!("the public half does not match the seed: {e}"),
        })?;
        Ok(SecretKey { name, key })
    }

    /// A key from a 32-byte seed (for tests and key generation by a caller with randomness).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self> {
        if name.is_empty() || name.contains(':') {
            return Err(Error::BadKey {
                kind: "secret",
                name: excerpt(name),
                reason: "the key name must be non-empty and contain no ':'".into(),
            });
        }
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn to_public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The `<name>:<base64>` signature over `data`.
    pub fn sign(&self, data: &[u8]) -> String {
        let sig = self.key.sign(data);
        format!("{}:{}", self.name, BASE64.encode(&sig.to_bytes()))
    }

    /// The key file contents `<name>:<base64 of 64 bytes>`.
    pub fn to_key_file_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(&self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:…)", self.name)
    }
}

/// A parsed detached signature `<key name>:<base64 of 64 bytes>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_name: String,
    pub bytes: [u8; 64],
}

impl Signature {
    pub fn parse(s: &str) -> Result<Self> {
        let (key_name, bytes) = split_key::<64>("signature", s)?;
        Ok(Signature { key_name, bytes })
    }
}

/// Trusted public keys by name.
pub type PublicKeys = BTreeMap<String, PublicKey>;

/// Collects keys into a by-name map (a later key with the same name wins, as in Nix).
pub fn public_keys(keys: impl IntoIterator<Item = PublicKey>) -> PublicKeys {
    keys.into_iter().map(|k| (k.name.clone(), k)).collect()
}

/// Whether `sig` is a valid signature over `data` by one of `keys` (by name).
pub fn verify_detached(data: &[u8], sig: &str, keys: &PublicKeys) -> bool {
    let Some((name, _)) = sig.split_once(':') else {
        return false;
    };
    keys.get(name).is_some_and(|k| k.verify(data, sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated by `nix-store --generate-binary-cache-key test-key-1 sk pk` (Nix 2.8).
    pub(crate) const SK: &str = "test-key-1:mJeScU/LBm/Blf9208mC9kUHPiVJjK8TuNOM1qP77OdhhqeysgsKLVE+B3YjCphcvvT5OnUSfquHeyffg0QfEQ==";
    pub(crate) const PK: &str = "test-key-1:YYansrILCi1RPgd2IwqYXL70+Tp1En6rh3sn34NEHxE=";

    #[test]
    fn key_files() {
        let sk = SecretKey::parse(SK).unwrap();
        assert_eq!(sk.name(), "test-key-1");
        assert_eq!(sk.to_public_key().to_string(), PK);
        assert_eq!(sk.to_key_file_string(), SK);
        assert_eq!(
            PublicKey::parse(&format!("{PK}\n")).unwrap(),
            sk.to_public_key()
        );
    }

    #[test]
    fn sign_and_verify() {
        let sk = SecretKey::parse(SK).unwrap();
        let pk = sk.to_public_key();
        let sig = sk.sign(b"data");
        assert!(sig.starts_with("test-key-1:"));
        assert!(pk.verify(b"data", &sig));
        assert!(!pk.verify(b"other", &sig));
        let keys = public_keys([pk.clone()]);
        assert!(verify_detached(b"data", &sig, &keys));
        // Same key bytes under another name: not trusted.
        let renamed = sig.replacen("test-key-1", "test-key-2", 1);
        assert!(!verify_detached(b"data", &renamed, &keys));
        assert!(!pk.verify(b"data", &renamed));
        assert!(!verify_detached(b"data", "garbage", &keys));
    }

    #[test]
    fn rfc8032_test_1() {
        // RFC 8032 §7.1 TEST 1: empty message.
        let seed = data_encoding::HEXLOWER
            .decode(b"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let sk = SecretKey::from_seed("k", &seed.try_into().unwrap()).unwrap();
        let sig = Signature::parse(&sk.sign(b"")).unwrap();
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sig.bytes),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn bad_keys() {
        for bad in [
            "",
            "nocolon",
            ":YYansrILCi1RPgd2IwqYXL70+Tp1En6rh3sn34NEHxE=",
            "k:!!!!",
            "k:YYansrILCi1RPgd2IwqYXL70+Tp1En6rh3sn34NEHxE=", // 32 bytes for a secret key
        ] {
            assert!(SecretKey::parse(bad).is_err(), "{bad}");
        }
        assert!(PublicKey::parse("k:AAAA").is_err());
        // Seed and public half that do not belong together.
        let mut bytes = BASE64
            .decode(SK.split_once(':').unwrap().1.as_bytes())
            .unwrap();
        bytes[40] ^= 1;
        assert!(SecretKey::parse(&format!("k:{}", BASE64.encode(&bytes))).is_err());
    }
}
